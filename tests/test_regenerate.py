"""Self-distillation data: the target rewrites answers, batched, resumable, equal to its own greedy."""

import json

import pytest

import hass_sglang.train.regenerate as regen
from hass_sglang.errors import DataError
from hass_sglang.io import read_json, write_json_atomic
from hass_sglang.train.data import convert, load_sharegpt
from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.vanilla import generate_vanilla
from hass_sglang.sampling import SamplingParams


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("regen") / "gsm8k.json"
    convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", out, limit=5)
    return out


def cfg(data, **kw):
    return regen.RegenerateConfig(data=[data], **{"max_new_tokens": 24, "batch_size": 2, **kw})


def test_answers_are_the_targets_greedy_output_and_resume(tmp_path, target, data, monkeypatch):
    out = tmp_path / "r.json"
    real, calls = regen._generate_batch, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(regen, "_generate_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        regen.regenerate(target, cfg(data), out, progress=False)
    assert not out.exists() and len(list((tmp_path / "r.json.parts").glob("part-*.json.gz"))) == 1
    monkeypatch.setattr(regen, "_generate_batch", real)
    report = regen.regenerate(target, cfg(data), out, progress=False)
    assert report.kept == 5 and calls["n"] == 2  # the finished batch was not redone
    convs = load_sharegpt(out)
    src = {c.id: c for c in load_sharegpt(data)}
    for conv in convs[:2]:
        assert conv.messages[0] == src[conv.id].messages[0] and conv.messages[1]["role"] == "assistant"
        prompt = target.chat_prompt_ids(conv.messages[0]["content"])
        want = generate_vanilla(target, prompt, 24, SamplingParams()).tokens
        assert conv.messages[1]["content"] == target.tokenizer.decode(want, skip_special_tokens=True).strip()
    # a smaller cap keeps the finished batches of the shortest prompts and generates nothing new
    monkeypatch.setattr(regen, "_generate_batch", dying)
    small = regen.regenerate(target, cfg(data, max_conversations=2), tmp_path / "r.json", progress=False)
    assert small.kept == 2 and small.skipped["beyond max_conversations"] == 3 and calls["n"] == 2
    with pytest.raises(DataError, match="different settings"):
        regen.regenerate(target, cfg(data, max_new_tokens=25), out, progress=False)
    assert json.loads((tmp_path / "r.json.parts" / "settings.json").read_text())["max_new_tokens"] == 24
    # a finished part that belongs to other conversations (the input changed under the same path) is named
    first = tmp_path / "r.json.parts" / "part-00000.json.gz"
    rows = read_json(first)
    write_json_atomic(first, rows[::-1])
    with pytest.raises(DataError, match="part-00000.json.gz holds other conversations"):
        regen.regenerate(target, cfg(data), out, progress=False)


def test_a_stopped_endpoint_run_does_not_wait_for_the_answers_in_flight():
    """A failure or a kill (the consumer stops) cancels what has not started and returns at once:
    the answers in flight can take a whole generation each; they end when the server is stopped."""
    import time

    from support.bench_stub_server import StubServer

    msgs = [{"role": "user", "content": "hi"}]
    pending = [(b, [(f"c{b}{i}", msgs, [1, 2]) for i in range(2)]) for b in range(3)]
    with StubServer(tokens=3, delay_s=4.0) as stub:
        endpoint = regen.Endpoint(stub.url, tokenizer=None, concurrency=2, retries=0)
        answers = regen._endpoint_answers(endpoint, pending, regen.RegenerateConfig(data=["x"], max_new_tokens=3))
        b, first = next(answers)  # batch 0 answered; batch 1's two requests are now in flight (4 s each)
        assert b == 0 and [a["tokens"] for a in first] == [3, 3]
        t0 = time.perf_counter()
        answers.close()  # what a kill or a failed write does to the generator
        assert time.perf_counter() - t0 < 2.0
        time.sleep(0.5)
        assert len(stub.chat_requests()) == 4  # batch 2 was never sent
