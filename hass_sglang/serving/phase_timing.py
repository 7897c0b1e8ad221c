"""Where a decode step and a speculative cycle go: wall time of SGLang's own methods, on request.

A server started with `HASS_PHASE_TIMING=<prefix>` in its environment gets AROUND hooks (SGLang's
hook registry, installed by the plugin in every process) on the methods in `PHASES`; in the
process that runs them (the scheduler) each call's `time.perf_counter` interval is added to a
running total per phase, and the totals go to `<prefix>.<pid>.json` (atomically, at most every
0.5 s, from a daemon thread). A phase's label names what ran: the model runner's forwards are split
into target and draft and by forward mode (`target.decode`, `target.target_verify`,
`draft.draft_extend_v2`, ...), scheduler batches by mode, the logits processor by the rows of its
lm_head (the target's vocabulary or the draft's hot one). Without the variable nothing is
registered. Times are host wall time: on a CUDA host kernels run asynchronously, so the hooks
synchronize the device before reading the clock (slower: a diagnostic, not a serving mode), and
skip calls made while a CUDA graph is captured; a replayed graph runs none of the methods inside it
(the logits processor of a captured decode, the draft steps), so there only the outer phases show.
`benchmarks/cpu_cycle_phases.py` turns the totals into milliseconds per plain step and per cycle.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

ENV = "HASS_PHASE_TIMING"

# label -> (SGLang callable as module:qualname, its leading parameters, self first: the labels read them)
PHASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "batch": ("sglang.srt.managers.scheduler:Scheduler.run_batch", ("self", "batch")),
    "cycle": ("sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.forward_batch_generation", ("self",)),
    "verify": ("sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.verify", ("self", "batch")),
    "drafting": ("sglang.srt.speculative.eagle_worker_v2:EagleDraftWorker.draft", ("self", "batch")),
    "draft_extend": ("sglang.srt.speculative.eagle_worker_v2:EagleDraftWorker._draft_extend_for_decode", ("self",)),
    "forward": ("sglang.srt.model_executor.model_runner:ModelRunner.forward", ("self", "forward_batch")),
    "logits": ("sglang.srt.layers.logits_processor:LogitsProcessor.forward",
               ("self", "input_ids", "hidden_states", "lm_head")),
}


class PhaseTotals:
    """Running (calls, seconds) per label, written to `path` at most every `period` seconds."""

    def __init__(self, path: str | Path, period: float = 0.5):
        self.path, self.period = Path(path), period
        self.totals: dict[str, list] = {}
        self._lock = threading.Lock()
        # One write at a time, snapshot taken inside: the writer thread and a direct write() could
        # otherwise rename their files in the wrong order and leave an older snapshot last.
        self._write_lock = threading.Lock()
        self._changed = threading.Event()
        self._writer: threading.Thread | None = None

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            t = self.totals.setdefault(label, [0, 0.0])
            t[0] += 1
            t[1] += seconds
        self._changed.set()
        if self._writer is None:  # started by the first timed call: only the process that runs them writes
            self._writer = threading.Thread(target=self._write_loop, daemon=True, name="hass-phase-timing")
            self._writer.start()

    def write(self) -> None:
        from hass_sglang.io import write_json_atomic

        with self._write_lock:
            with self._lock:
                snapshot = {k: {"calls": v[0], "seconds": v[1]} for k, v in self.totals.items()}
            write_json_atomic(self.path, snapshot)

    def _write_loop(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            self.write()
            time.sleep(self.period)


def _mode(batch) -> str:
    mode = getattr(batch, "forward_mode", None)
    return mode.name.lower() if mode is not None else "none"


def phase_label(phase: str, args: tuple) -> str:
    """The label one call is counted under (`args` as the hooked method got them, self first)."""
    if phase == "batch":
        return f"batch.{_mode(args[1])}"
    if phase == "forward":
        return f"{'draft' if getattr(args[0], 'is_draft_worker', False) else 'target'}.{_mode(args[1])}"
    if phase == "logits":
        weight = getattr(args[3], "weight", None)
        return f"logits.{weight.shape[0] if weight is not None else 'none'}"
    return phase


def cuda_sync() -> bool:
    """Wait for the device; False (no wait) while a CUDA graph is being captured, where a
    synchronize is an error and a captured call's time means nothing (at replay it is not called)."""
    import torch

    if torch.cuda.is_current_stream_capturing():
        return False
    torch.cuda.synchronize()
    return True


def timing_hook(phase: str, totals: PhaseTotals, sync=None):
    """An AROUND hook counting each call of `phase` into `totals`. `sync()` runs before each clock
    read (CUDA hosts); when it returns False the call runs untimed."""
    def around(original, *args, **kwargs):
        if sync and not sync():
            return original(*args, **kwargs)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if sync:
                sync()
            totals.add(phase_label(phase, args), time.perf_counter() - start)

    return around


def register_hooks(environ=os.environ) -> bool:
    """Install the timing hooks when `HASS_PHASE_TIMING` is set (called by the plugin); True if so."""
    prefix = environ.get(ENV)
    if not prefix:
        return False
    import torch
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    totals = PhaseTotals(f"{prefix}.{os.getpid()}.json")
    sync = cuda_sync if torch.cuda.is_available() else None
    for phase, (path, _) in PHASES.items():
        HookRegistry.register(path.replace(":", "."), timing_hook(phase, totals, sync), HookType.AROUND)
    return True


def read_totals(prefix: str | Path) -> dict[int, dict[str, dict]]:
    """The totals every process of servers started with this prefix has written, by pid."""
    prefix = Path(prefix)
    out = {}
    for f in prefix.parent.glob(f"{prefix.name}.*.json"):
        pid = f.name[len(prefix.name) + 1:-len(".json")]
        if pid.isdigit():
            out[int(pid)] = json.loads(f.read_text())
    return out
