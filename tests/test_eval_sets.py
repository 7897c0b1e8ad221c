import pytest

from hass_sglang.eval_sets import EVAL_SETS, DatasetError, load_questions


def test_six_sets_have_80_questions():
    for name in EVAL_SETS:
        qs = load_questions(name)
        assert len(qs) == 80, name
        assert all(q.turns and q.turns[0].strip() for q in qs)
    assert len(load_questions("mt_bench")[0].turns) == 2


def test_missing_and_malformed_files_name_file_and_line(tmp_path):
    with pytest.raises(DatasetError, match="question file not found"):
        load_questions(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["hi"]}\n{"question_id": 2, "turns": [}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        load_questions(str(bad))
    bad.write_text('{"question_id": 1, "turns": []}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: 'turns'"):
        load_questions(str(bad))
