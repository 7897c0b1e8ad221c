"""Prompt corpus (`hass corpus`): real sources from the shared data folder, eval questions kept out."""

import json
import subprocess
import sys

import pytest

from hass_sglang.errors import DataError
from hass_sglang.eval_sets import load_questions, shared_data_dir
from hass_sglang.train.corpus import (CorpusConfig, Source, build_corpus, eval_prompt_keys, normalise_prompt,
                                      report_table)
from hass_sglang.train.data import load_sharegpt
from hass_sglang.train.regenerate import first_exchange_prompt

HASS = [sys.executable, "-m", "hass_sglang.cli"]


def _hass(args: list[str]) -> int:
    return subprocess.run([*HASS, *args], capture_output=True, text=True, timeout=300).returncode


def test_normalised_prompts_ignore_case_punctuation_and_spacing():
    assert normalise_prompt("  Who played Anna in\n'Once Upon a Time'?") == normalise_prompt("who played anna in once upon a time")
    assert normalise_prompt("ｆｕｌｌ width") == "full width"  # NFKC
    assert normalise_prompt("a+b") != normalise_prompt("ab")


def test_source_specs_are_checked():
    assert Source.parse("mine=alpaca:/d/x.json") == Source(name="mine", path="/d/x.json", preset="alpaca")
    for bad in ("mine", "mine=alpaca", "=alpaca:/x", "mine=nosuch:/x.json"):
        with pytest.raises(DataError, match="source"):
            Source.parse(bad)


def test_corpus_drops_eval_questions_duplicates_and_non_english(tmp_path):
    data = shared_data_dir()
    mt = load_questions("mt_bench")[0].turns[1]  # a second turn counts too
    qa = load_questions("qa")[3].turns[0]
    extra = [
        {"instruction": mt.upper() + "!!", "input": "", "output": "x"},  # eval, case + punctuation changed
        {"instruction": qa, "input": "", "output": "x"},
        {"instruction": "Sort a list in Python.", "input": "", "output": "sorted(x)"},
        {"instruction": "sort a list   in python", "input": "", "output": "dup"},  # duplicate after normalising
        {"instruction": "Напишите функцию сортировки списка.", "input": "", "output": "x"},  # non-English
        {"instruction": "", "input": "", "output": "x"},  # no prompt: skipped by the preset
    ]
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    sources = [Source(name="gsm8k", path=str(data / "gsm8k" / "train.jsonl"), preset="gsm8k"),
               Source(name="share", path=str(data / "sharegpt_sample" / "sharegpt_v3_sample_full.json"), preset="sharegpt"),
               Source(name="extra", path=str(tmp_path / "extra.json"), preset="alpaca")]
    out = tmp_path / "corpus.json"
    reports = build_corpus(sources, out, CorpusConfig(max_per_source=300))
    assert reports["gsm8k"].kept == 300 and reports["share"].kept > 250
    ex = reports["extra"]
    assert ex.kept == 1 and ex.skipped["eval overlap: mt_bench"] == 1 and ex.skipped["eval overlap: qa"] == 1
    assert ex.skipped["duplicate prompt"] == 1 and ex.skipped["not English (non-ASCII share)"] == 1
    assert ex.skipped["empty message"] == 1
    convs = load_sharegpt(out)  # what `hass regenerate` reads
    assert len(convs) == sum(r.kept for r in reports.values())
    assert {c.id.split(":")[0] for c in convs} == {"gsm8k", "share", "extra"}
    assert all(first_exchange_prompt(c)[-1]["role"] == "user" and len(c.messages) <= 3 for c in convs)
    keys = [normalise_prompt(first_exchange_prompt(c)[-1]["content"]) for c in convs]
    assert len(keys) == len(set(keys))
    assert not set(keys) & set(eval_prompt_keys())
    assert "| extra | 6 | 1 | 2 " in report_table(reports)


def test_a_truncated_source_keeps_its_complete_records(tmp_path):
    whole = json.dumps([{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)])
    (tmp_path / "cut.json").write_text(whole[: whole.index("What is 3")])
    reports = build_corpus([Source(name="cut", path=str(tmp_path / "cut.json"), preset="gsm8k")],
                           tmp_path / "c.json", eval_keys={})
    assert reports["cut"].truncated and reports["cut"].kept == 3
    with pytest.raises(DataError, match="unique"):
        build_corpus([Source(name="a", path="x.json", preset="gsm8k")] * 2, tmp_path / "d.json", eval_keys={})


def test_per_source_caps():
    from hass_sglang.train.corpus import parse_caps

    assert parse_caps(["100", "sharegpt=5000"]) == (100, {"sharegpt": 5000})
    assert parse_caps(None) == (None, {})
    for bad in (["x"], ["=5"], ["a=b"], ["-3"]):
        with pytest.raises(DataError, match="max-per-source"):
            parse_caps(bad)
    with pytest.raises(DataError, match="unknown sources"):
        build_corpus([Source(name="a", path="x.json", preset="gsm8k")], "o.json", CorpusConfig(source_max={"b": 1}),
                     eval_keys={})


def test_a_second_corpus_file_skips_the_first_files_prompts_and_still_fills_its_caps(tmp_path):
    gsm8k = f"gsm8k=gsm8k:{shared_data_dir() / 'gsm8k' / 'train.jsonl'}"
    first, second = tmp_path / "prompts.json", tmp_path / "prompts-2.json"
    assert _hass(["corpus", "--out", str(first), "--source", gsm8k, "--max-per-source", "40"]) == 0
    assert _hass(["corpus", "--out", str(second), "--source", gsm8k, "--max-per-source", "25",
                 "--exclude", str(first)]) == 0
    one, two = load_sharegpt(first), load_sharegpt(second)
    assert len(one) == 40 and len(two) == 25  # the cap counts new prompts only
    assert not {c.id for c in one} & {c.id for c in two}
    # the source's next records after the 40 the first file took, in file order
    assert _hass(["corpus", "--out", str(tmp_path / "both.json"), "--source", gsm8k, "--max-per-source", "65"]) == 0
    assert [c.id for c in load_sharegpt(tmp_path / "both.json")] == [c.id for c in one + two]
    report = json.loads(second.with_suffix(".report.json").read_text())["gsm8k"]
    assert report["skipped"] == {"in an earlier corpus: prompts.json": 40} and report["kept"] == 25
    r = subprocess.run([*HASS, "corpus", "--out", str(tmp_path / "x.json"), "--source", gsm8k,
                        "--exclude", str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--exclude" in r.stderr and not (tmp_path / "x.json").exists()
