import json

import pytest

from hass_sglang.errors import DataError
from hass_sglang.train.data import (
    Conversation,
    convert,
    iter_json_array,
    load_sharegpt,
    to_conversation,
    tokenize_conversation,
)
from hass_sglang.eval_sets import shared_data_dir


def test_truncated_json_array_yields_complete_records(tmp_path):
    f = tmp_path / "t.json"
    f.write_text('[{"id": "a", "x": 1}, {"id": "b", "x": [1, 2]}, {"id": "c", "x": "unfinish')
    got = []
    with pytest.raises(Exception, match="truncated"):
        for rec in iter_json_array(f):
            got.append(rec["id"])
    assert got == ["a", "b"]
    out = tmp_path / "o.json"
    f.write_text('[{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, {"id": "b", "conv')
    report = convert(str(f), "sharegpt", out)
    assert report.kept == 1 and report.truncated_source
    assert json.loads(out.read_text())[0]["id"] == "a"


def test_presets_map_records_and_count_skips(tmp_path):
    src = tmp_path / "mixed.jsonl"
    rows = [
        {"question": "1+1?", "answer": "2"},
        {"question": "", "answer": "x"},
        {"question": "no answer", "answer": ""},
        "not an object",
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = convert(str(src), "gsm8k", tmp_path / "out.json")
    assert report.kept == 1
    assert report.skipped == {"empty message": 2, "not an object": 1}
    conv = json.loads((tmp_path / "out.json").read_text())[0]["conversations"]
    assert conv == [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2"}]
    alpaca = to_conversation({"instruction": "Translate", "input": "hola", "output": "hello"}, "alpaca", 0)
    assert alpaca.messages[0]["content"] == "Translate\n\nhola"
    with pytest.raises(Exception, match="no assistant turn"):
        to_conversation({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt", 0)
    with pytest.raises(Exception, match="alternate"):
        to_conversation({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, "ultrachat", 0)
    with pytest.raises(DataError, match="data file not found"):
        convert(str(tmp_path / "missing.jsonl"), "gsm8k", tmp_path / "x.json")


def test_shared_sharegpt_and_gsm8k_convert(tmp_path):
    data = shared_data_dir()
    r = convert(str(data / "sharegpt_sample" / "sharegpt_v3_sample_full.json"), "sharegpt", tmp_path / "s.json", limit=50)
    assert r.kept == 50
    r = convert(str(data / "gsm8k" / "train.jsonl"), "gsm8k", tmp_path / "g.json", limit=20)
    assert r.kept == 20 and len(load_sharegpt(tmp_path / "g.json")) == 20


def test_loss_mask_covers_exactly_the_assistant_turns(target):
    tok = target.tokenizer
    conv = Conversation("x", [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
    ])
    ids, mask, truncated = tokenize_conversation(tok, conv, 4096)
    assert not truncated and len(ids) == len(mask)
    text = tok.decode([t for t, m in zip(ids, mask) if m])
    assert text == "Hello! How can I help?<|im_end|>\n5<|im_end|>\n"
    assert tok.decode(ids).startswith("<|im_start|>system")
    short_ids, short_mask, truncated = tokenize_conversation(tok, conv, 10)
    assert truncated and short_ids == ids[:10] and short_mask == mask[:10]
