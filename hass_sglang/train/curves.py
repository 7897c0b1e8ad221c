"""Validation curves of training runs: read from a draft folder or from a run still training.

A draft folder (`hass train`'s `draft/` or `best/`, or a shipped draft) keeps its run's curve in
config.json (`hass.curve`: one point per checkpoint; drafts from before `--save-every` only have
the per-epoch `hass.history`). A run folder (`hass train --out`) that is still training has the
curve in checkpoint.pt; `read_curve` takes the newest of the two, so `hass curves runs/v3/*` can
be watched while the runs go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hass_sglang.errors import HassError


@dataclass(frozen=True)
class TrainingCurve:
    name: str
    points: tuple[dict, ...]  # step, epoch, metrics since the previous point, val_tau when validated
    objective: str | None
    init_from: str | None
    source: str  # the file the points were read from

    @property
    def best(self) -> dict | None:
        return max((p for p in self.points if "val_tau" in p), key=lambda p: p["val_tau"], default=None)


def _from_metadata(meta: dict) -> list[dict]:
    if meta.get("curve"):
        return list(meta["curve"])
    # older drafts: one point per epoch, no step count
    return [{"epoch": float(h["epoch"]), **{k: v for k, v in h.items() if k != "epoch"}} for h in meta.get("history", [])]


def read_curve(folder: str | Path, name: str | None = None) -> TrainingCurve:
    """The curve of a draft folder or a `hass train --out` folder (its checkpoint while training)."""
    from hass_sglang.checkpoint import read_draft_metadata

    folder = Path(folder)
    name = name or folder.name
    candidates = []
    for draft in (folder, folder / "draft"):
        if (draft / "config.json").is_file():
            meta = read_draft_metadata(draft)
            candidates.append((_from_metadata(meta), meta, str(draft / "config.json")))
    ckpt = folder / "checkpoint.pt"
    if ckpt.is_file():
        import torch

        state = torch.load(ckpt, weights_only=False, map_location="cpu", mmap=True)
        meta = {k: state.get(k) for k in ("curve", "history")}
        candidates.append((_from_metadata(meta), {}, str(ckpt)))
    if not candidates:
        raise HassError(f"{folder}: neither a draft folder (config.json) nor a training run (checkpoint.pt, draft/)")
    points, meta, source = max(candidates, key=lambda c: len(c[0]))
    if not meta:  # the checkpoint's run: objective and init from an exported draft when there is one
        meta = next((c[1] for c in candidates if c[1]), {})
    return TrainingCurve(name, tuple(points), meta.get("objective"), meta.get("init_from"), source)


def curve_table(curves: list[TrainingCurve]) -> str:
    """One markdown row per curve point: run, step, epoch, loss, step-1 top-1, validation tau (best: *)."""
    rows = ["| run | step | epoch | loss | step1 top-1 | val tau |", "|---|---:|---:|---:|---:|---:|"]
    for c in curves:
        best = c.best
        for p in c.points:
            tau = f"{p['val_tau']:.2f}" + (" *" if p is best else "") if "val_tau" in p else "-"
            rows.append(f"| {c.name} | {p.get('step', '-')} | {p['epoch']:.2f} | {p.get('loss', float('nan')):.3f} | "
                        f"{p.get('step1/top1', float('nan')):.3f} | {tau} |")
    return "\n".join(rows)
