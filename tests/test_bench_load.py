"""Load-test request logs: exactly-once accounting and per-phase numbers (hass_sglang.bench.load)."""

import json

from hass_sglang.bench.load import exactly_once_problems, phase_stats, phase_table, read_requests, retryable


def _r(rid, start, end, status=200, answer=None, tokens=10, error=None):
    return {"rid": rid, "start": start, "end": end, "status": status, "id": rid if answer is None else answer,
            "tokens": tokens, "error": error}


def test_exactly_once_names_duplicates_wrong_answers_and_non_retryable_failures():
    ok = [_r("a", 0, 1), _r("b", 0, 2), _r("c", 1, 3, status=502, answer="", error="HTTP 502: bad gateway")]
    assert exactly_once_problems(ok) == []
    bad = ok + [_r("a", 2, 3, answer="a2"), _r("d", 2, 3, answer="z"), _r("e", 2, 3, status=400, error="HTTP 400"),
                _r("f", 2, 3, status=0, error="connection reset")]
    problems = exactly_once_problems(bad)
    assert any("request a logged 2 times" in p for p in problems)
    assert any("request d got the answer of 'z'" in p for p in problems)
    assert any(p.startswith("request e failed without a retryable status: 400") for p in problems)
    assert any(p.startswith("request f failed without a retryable status: 0") for p in problems)
    assert any("request a got the answer of 'a2'" in p for p in problems)  # the second record of a
    assert len(problems) == 5
    # A stream that began (200) and broke is a failure the client sees; a 200 with an error is not.
    cut = dict(_r("g", 2, 3, error="Response ended prematurely"), cut=True)
    assert exactly_once_problems(ok + [cut]) == []
    assert exactly_once_problems(ok + [dict(cut, cut=False)])[0].startswith("request g failed without")
    # A front that assigns its own answer ids: only a shared or missing id is a problem.
    routed = [_r("a", 0, 1, answer="x"), _r("b", 0, 1, answer="y")]
    assert exactly_once_problems(routed, ids_echo_rid=False) == []
    assert any("request a got the answer of 'x'" in p for p in exactly_once_problems(routed))
    mixed = exactly_once_problems(routed + [_r("c", 1, 2, answer="x")], ids_echo_rid=False)
    assert len(mixed) == 2 and all("answer id 'x', which 2 requests got" in p for p in mixed)
    assert [retryable(s) for s in (None, 0, 200, 400, 408, 429, 500, 503)] == [False, False, False, False, True,
                                                                                True, True, True]


def test_phase_stats_count_requests_by_end_time_and_latency_of_successes_only():
    records = [_r("a", 0, 1), _r("b", 0, 3), _r("c", 4, 5, status=503, error="HTTP 503"), _r("d", 5, 9, tokens=4)]
    before, during, after = phase_stats(records, [("before", 0, 4), ("during", 4, 6), ("after", 6, 10)])
    assert (before.requests, before.failures, before.answered_per_s) == (2, 0, 0.5)
    assert (before.p50_s, before.p95_s, before.output_tok_s) == (2.0, 2.9, 5.0)
    assert (during.requests, during.failures, during.p50_s) == (1, 1, None)
    assert (after.requests, after.p50_s, after.output_tok_s) == (1, 4.0, 1.0)
    table = phase_table([before, during, after])
    assert table.splitlines()[3].startswith("| during | 2 | 1 | 1 | 0.00 | - | - |")


def test_read_requests_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(_r("a", 0, 1)) + "\n" + '{"rid": "b", "sta')
    assert [r["rid"] for r in read_requests(path)] == ["a"]
