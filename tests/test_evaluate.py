"""Side-by-side evaluation runs (evaluate.run_side_by_side) with a journal: a long tau benchmark
killed part-way resumes where it stopped, every prompt decoded and recorded exactly once, and the
resumed results equal an uninterrupted run's. Real target (fp32), the shipped HASS draft, T=1 so
the per-prompt seeds matter too."""

import pytest

from hass_sglang.drafts import resolve_draft
from hass_sglang import evaluate
from hass_sglang.evaluate import eval_prompts, run_side_by_side, summarize
from hass_sglang.io import read_jsonl as read_records
from hass_sglang.sampling import make_sampling
from hass_sglang.speculative import SpeculativeDecoder
from hass_sglang.tree import TreeShape

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def setup(target):
    head = resolve_draft("smollm2-135m-hass-eagle").load(target)
    prompts = eval_prompts(target, ["gsm8k", "qa"], per_set=1)
    return {"hass": SpeculativeDecoder(target, head, TreeShape.chain(3))}, prompts


def test_a_killed_run_resumes_from_its_journal_exactly_once(tmp_path, target, setup, monkeypatch):
    decoders, prompts = setup
    sampling = make_sampling(1.0)
    full = run_side_by_side(target, decoders, prompts, NEW_TOKENS, sampling, seed=3, progress=False)

    journal, key = tmp_path / "tau.jsonl", {"target": "smollm2@test"}
    ids = {"hass": "hass@test"}
    real, calls = SpeculativeDecoder.generate, {"n": 0}

    def dies_on_the_second_prompt(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(SpeculativeDecoder, "generate", dies_on_the_second_prompt)
    with pytest.raises(KeyboardInterrupt):
        run_side_by_side(target, decoders, prompts, NEW_TOKENS, sampling, seed=3, progress=False,
                         journal=journal, journal_key=key, draft_ids=ids)
    # prompt 1 both methods, prompt 2 vanilla: the kill lost only prompt 2's HASS result
    assert [(r["eval_set"], r["method"]) for r in read_records(journal)] == [
        ("gsm8k", "vanilla"), ("gsm8k", "hass"), ("qa", "vanilla")]
    with journal.open("a") as fh:  # a kill in the middle of the next write
        fh.write('{"key": {"target": "smollm2@te')

    calls["n"], seen = 10, []

    def counted(self, ids, *a, **k):
        seen.append(tuple(ids))
        return real(self, ids, *a, **k)

    vanilla_calls = []
    real_vanilla = evaluate.generate_vanilla
    monkeypatch.setattr(SpeculativeDecoder, "generate", counted)
    monkeypatch.setattr(evaluate, "generate_vanilla", lambda *a, **k: vanilla_calls.append(1) or real_vanilla(*a, **k))
    resumed = run_side_by_side(target, decoders, prompts, NEW_TOKENS, sampling, seed=3, progress=False,
                               journal=journal, journal_key=key, draft_ids=ids)
    assert seen == [tuple(prompts[1][2])] and vanilla_calls == []  # only what the kill lost
    for a, b in zip(full, resumed):
        assert {m: r.tokens for m, r in a.results.items()} == {m: r.tokens for m, r in b.results.items()}
        assert a.results["hass"].target_forwards == b.results["hass"].target_forwards
    records = read_records(journal)
    assert len(records) == 4  # the torn line dropped, nothing twice
    taus = {(s.method, s.eval_set): s.tau for s in summarize(full)}
    assert taus == {(s.method, s.eval_set): s.tau for s in summarize(resumed)}

    # another draft (a retrained head), seed or token budget never reuses these records ...
    seen.clear()
    run_side_by_side(target, decoders, prompts[:1], NEW_TOKENS, sampling, seed=3, progress=False,
                     journal=journal, journal_key=key, draft_ids={"hass": "retrained@test"})
    run_side_by_side(target, decoders, prompts[:1], NEW_TOKENS, sampling, seed=4, progress=False,
                     journal=journal, journal_key=key, draft_ids=ids)
    assert len(seen) == 2 and len(vanilla_calls) == 1 and len(read_records(journal)) == 7

    # ... while a run that adds a draft decodes only that draft, and the draws of a question do not
    # depend on its place in the run (prompt 2 alone = prompt 2 after prompt 1)
    seen.clear()
    vanilla_calls.clear()
    chain2 = SpeculativeDecoder(target, decoders["hass"].head, TreeShape.chain(2))
    more = run_side_by_side(target, {**decoders, "chain2": chain2}, prompts, NEW_TOKENS, sampling, seed=3,
                            progress=False, journal=journal, journal_key=key, draft_ids=ids)
    assert len(seen) == 2 and vanilla_calls == []
    alone = run_side_by_side(target, {"chain2": chain2}, prompts[1:], NEW_TOKENS, sampling, seed=3, progress=False)
    assert alone[0].results["chain2"].tokens == more[1].results["chain2"].tokens
    assert alone[0].results["vanilla"].tokens == full[1].results["vanilla"].tokens


def _runs(counts):
    """PromptRuns from per-prompt {method: (tokens, target forwards)}."""
    from hass_sglang.evaluate import PromptRun
    from hass_sglang.vanilla import GenerationResult

    return [PromptRun("qa", str(i), 5, {m: GenerationResult(list(range(t)), f, 1.0) for m, (t, f) in c.items()})
            for i, c in enumerate(counts)]


def test_the_tau_ratio_interval_is_a_paired_bootstrap_over_prompts():
    from hass_sglang.evaluate import tau_ratio_interval

    # b decodes every prompt at 2 tokens per forward, a at 2.2: 1.1x on every prompt, however drawn
    same_gain = _runs([{"a": (110 * k, 50 * k), "b": (100 * k, 50 * k)} for k in (1, 2, 3, 4)])
    r, lo, hi = tau_ratio_interval(same_gain, "a", "b")
    assert r == pytest.approx(1.1) and lo == pytest.approx(1.1) and hi == pytest.approx(1.1)
    # the gain comes from one prompt of eight: the pooled ratio is 1.125, but a draw without that
    # prompt gives 1.0, so the interval reaches down to 1
    one_prompt = _runs([{"a": (100, 50), "b": (100, 50)}] * 7 + [{"a": (200, 50), "b": (100, 50)}])
    r, lo, hi = tau_ratio_interval(one_prompt, "a", "b")
    assert r == pytest.approx(1.125) and lo == pytest.approx(1.0) and 1.125 < hi <= 1.5
    with pytest.raises(Exception, match="no prompts"):
        tau_ratio_interval([], "a", "b")
