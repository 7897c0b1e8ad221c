"""Cost of a `hass train` step on this host: fp32 against `--precision bf16`, per objective, side by side.

Features of a few real GSM8K conversations are extracted once (or `--features` names a finished
folder); then `train()` itself runs one epoch per configuration, the configurations taking turns
`--rounds` times so that this machine's noise hits them alike. Printed: seconds per step (median
over rounds), the bf16 / fp32 ratio, and the last-epoch loss of each (bf16 must still learn).

  .venv/bin/python benchmarks/train_step_cost.py --conversations 32 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from hass_sglang.checkpoint import read_draft_metadata
from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.target import EMBEDDED_TARGET, load_target_parts
from hass_sglang.train.data import convert
from hass_sglang.train.features import FeatureConfig, FeatureSet, extract_features
from hass_sglang.train.trainer import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", help="a finished feature folder (default: extract --conversations GSM8K ones)")
    p.add_argument("--conversations", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--objectives", nargs="+", default=["eagle2", "hass"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="train_step_cost-"))
    feats = args.features
    if feats is None:
        from hass_sglang.target import load_target

        convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", work / "d.json", limit=args.conversations)
        feats = str(work / "f")
        extract_features(load_target(dtype=torch.bfloat16),
                         FeatureConfig(data=str(work / "d.json"), target="smollm2", max_length=384), feats, progress=False)
    parts = load_target_parts(EMBEDDED_TARGET)
    samples = len(FeatureSet(feats, int(parts.config.hidden_size)))
    steps = -(-samples // args.batch_size)
    configs = [(o, prec) for o in args.objectives for prec in ("fp32", "bf16")]
    seconds: dict[tuple, list[float]] = {c: [] for c in configs}
    loss: dict[tuple, float] = {}
    for r in range(args.rounds):
        for objective, precision in configs:
            cfg = TrainConfig(features=feats, out=str(work / f"{objective}-{precision}-{r}"), objective=objective,
                              precision=precision, batch_size=args.batch_size, draft_vocab=8192, lr=1e-3)
            meta = read_draft_metadata(train(cfg, parts, progress=False))
            seconds[(objective, precision)].append(meta["train_seconds_last_session"] / steps)
            loss[(objective, precision)] = meta["history"][-1]["loss"]
    print(f"\n{samples} conversations, batch {args.batch_size}, {steps} steps per epoch, {args.rounds} rounds, "
          f"{args.threads} threads; {torch.__config__.parallel_info().splitlines()[0]}")
    print("| objective | fp32 s/step | bf16 s/step | bf16 / fp32 | fp32 loss | bf16 loss |\n|---|---:|---:|---:|---:|---:|")
    for objective in args.objectives:
        f32 = statistics.median(seconds[(objective, "fp32")])
        b16 = statistics.median(seconds[(objective, "bf16")])
        print(f"| {objective} | {f32:.3f} | {b16:.3f} | {b16 / f32:.2f} | {loss[(objective, 'fp32')]:.3f} | "
              f"{loss[(objective, 'bf16')]:.3f} |")


if __name__ == "__main__":
    main()
