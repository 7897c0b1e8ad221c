"""Side-by-side evaluation runs (evaluate.run_side_by_side) with a journal: a long tau benchmark
killed part-way resumes where it stopped, every prompt decoded and recorded exactly once, and the
resumed results equal an uninterrupted run's. Real target (fp32), the shipped HASS draft, T=1 so
the per-prompt seeds matter too."""

import pytest

from hass_sglang.drafts import resolve_draft
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

    journal, key = tmp_path / "tau.jsonl", {"drafts": "hass@test"}
    real, calls = SpeculativeDecoder.generate, {"n": 0}

    def dies_on_the_second_prompt(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(SpeculativeDecoder, "generate", dies_on_the_second_prompt)
    with pytest.raises(KeyboardInterrupt):
        run_side_by_side(target, decoders, prompts, NEW_TOKENS, sampling, seed=3, progress=False,
                         journal=journal, journal_key=key)
    assert len(read_records(journal)) == 1
    with journal.open("a") as fh:  # a kill in the middle of the next write
        fh.write('{"key": {"drafts": "hass@te')

    calls["n"], seen = 10, []

    def counted(self, ids, *a, **k):
        seen.append(tuple(ids))
        return real(self, ids, *a, **k)

    monkeypatch.setattr(SpeculativeDecoder, "generate", counted)
    resumed = run_side_by_side(target, decoders, prompts, NEW_TOKENS, sampling, seed=3, progress=False,
                               journal=journal, journal_key=key)
    assert seen == [tuple(prompts[1][2])]  # only the prompt the kill lost is decoded again
    for a, b in zip(full, resumed):
        assert {m: r.tokens for m, r in a.results.items()} == {m: r.tokens for m, r in b.results.items()}
        assert a.results["hass"].target_forwards == b.results["hass"].target_forwards
    records = read_records(journal)
    assert [r["index"] for r in records] == [0, 1]  # the torn line dropped, nothing twice
    taus = {(s.method, s.eval_set): s.tau for s in summarize(full)}
    assert taus == {(s.method, s.eval_set): s.tau for s in summarize(resumed)}

    # other settings (another draft, seed or token budget) never reuse these records
    seen.clear()
    run_side_by_side(target, decoders, prompts[:1], NEW_TOKENS, sampling, seed=3, progress=False,
                     journal=journal, journal_key={"drafts": "retrained@test"})
    run_side_by_side(target, decoders, prompts[:1], NEW_TOKENS, sampling, seed=4, progress=False,
                     journal=journal, journal_key=key)
    assert len(seen) == 2 and len(read_records(journal)) == 4
