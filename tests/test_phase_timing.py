"""serving/phase_timing.py: the labels a timed call is counted under, the totals a server writes
and the benchmark reads back, and that nothing is hooked unless HASS_PHASE_TIMING asks for it."""

import os
import threading
from types import SimpleNamespace

import pytest
import torch

from hass_sglang.serving import phase_timing as P


def _batch(mode):
    return SimpleNamespace(forward_mode=SimpleNamespace(name=mode))


def test_labels_split_forwards_by_model_and_mode_and_logits_by_vocabulary():
    target, draft = SimpleNamespace(is_draft_worker=False), SimpleNamespace(is_draft_worker=True)
    assert P.phase_label("forward", (target, _batch("TARGET_VERIFY"))) == "target.target_verify"
    assert P.phase_label("forward", (draft, _batch("DRAFT_EXTEND_V2"))) == "draft.draft_extend_v2"
    assert P.phase_label("batch", (None, _batch("DECODE"))) == "batch.decode"
    head = SimpleNamespace(weight=torch.empty(8192, 4))
    assert P.phase_label("logits", (None, None, None, head)) == "logits.8192"
    assert P.phase_label("verify", (None,)) == "verify"


def test_a_hook_counts_calls_and_time_and_the_totals_come_back_by_pid(tmp_path):
    prefix = tmp_path / "server"
    totals = P.PhaseTotals(f"{prefix}.{os.getpid()}.json", period=0.01)
    hook = P.timing_hook("batch", totals)
    calls = []

    def run_batch(self, batch):
        calls.append(batch.forward_mode.name)
        return 7

    assert hook(run_batch, None, _batch("DECODE")) == 7  # the original's result, untouched
    assert hook(run_batch, None, _batch("DECODE")) == 7
    with pytest.raises(ZeroDivisionError):  # a call that raises is still counted, and still raises
        P.timing_hook("verify", totals)(lambda self: 1 / 0, None)
    totals.write()
    got = P.read_totals(prefix)
    assert list(got) == [os.getpid()] and calls == ["DECODE", "DECODE"]
    assert got[os.getpid()]["batch.decode"]["calls"] == 2 and got[os.getpid()]["verify"]["calls"] == 1
    assert got[os.getpid()]["batch.decode"]["seconds"] >= 0


def test_the_last_write_holds_the_latest_totals(tmp_path, monkeypatch):
    """The background writer holding an older snapshot cannot land it after a later write()
    (CI once read 1 call of 2 this way)."""
    import hass_sglang.io as io

    real = io.write_json_atomic
    entered, release, landed = threading.Event(), threading.Event(), threading.Event()

    def slow_in_background(path, obj, **kw):
        if threading.current_thread().name != "hass-phase-timing" or entered.is_set():
            return real(path, obj, **kw)
        entered.set()
        release.wait(5)  # the writer thread sits on its 1-call snapshot
        real(path, obj, **kw)
        landed.set()

    monkeypatch.setattr(io, "write_json_atomic", slow_in_background)
    totals = P.PhaseTotals(tmp_path / "server.1.json", period=10)
    totals.add("verify", 0.1)  # starts the writer thread
    assert entered.wait(5)
    totals.add("verify", 0.1)
    direct = threading.Thread(target=totals.write)
    direct.start()
    direct.join(0.2)  # blocks behind the writer thread now; before the fix it finished first
    release.set()
    direct.join(5)
    assert landed.wait(5)
    assert P.read_totals(tmp_path / "server")[1]["verify"]["calls"] == 2


def test_nothing_is_hooked_without_the_variable():
    from sglang.srt.plugins.hook_registry import HookRegistry

    before = {k: list(v) for k, v in HookRegistry._hooks.items()}
    assert P.register_hooks({}) is False
    assert {k: list(v) for k, v in HookRegistry._hooks.items()} == before


def test_a_call_whose_sync_declines_runs_untimed(tmp_path):
    """CUDA hosts: while a graph is captured the sync says no; the call runs, nothing is counted."""
    totals = P.PhaseTotals(tmp_path / "t.json")
    assert P.timing_hook("verify", totals, sync=lambda: False)(lambda self: 3, None) == 3
    assert totals.totals == {}
    assert P.timing_hook("verify", totals, sync=lambda: True)(lambda self: 4, None) == 4
    assert totals.totals["verify"][0] == 1
