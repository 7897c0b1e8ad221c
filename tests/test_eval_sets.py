import pytest

from hass_sglang.eval_sets import EVAL_SETS, DatasetError, load_questions, validation_questions


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


def test_validation_questions_are_held_out_from_the_benchmarked_ones():
    got = validation_questions(12)
    assert [name for name, _ in got] == list(EVAL_SETS) * 2  # each set in turn
    for name in EVAL_SETS:
        benchmarked = {q.question_id for q in load_questions(name, limit=40)}  # `--per-set 40` and below
        held_out = [q.question_id for n, q in got if n == name]
        assert len(held_out) == 2 and not benchmarked & set(held_out)
        assert held_out[0] == load_questions(name)[-1].question_id
    with pytest.raises(DatasetError, match="validation: 600 prompts need more than"):
        validation_questions(600)
