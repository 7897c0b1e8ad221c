"""Cost of a `hass train` epoch on this host, side by side: batches mixed at random in fp32 (how the
shipped drafts were trained), batches grouped by length (`FeatureSet.batches`, the default now), and
grouped with `--precision bf16`.

Features come from conversations of the committed corpus (`--parts`: finished parts of
`scripts/build_corpus.sh`, spread over its prompt lengths; answers written by the target) and are
extracted once; then `train()` itself runs one epoch per configuration, the configurations taking
turns `--rounds` times so that this machine's noise hits them alike. Printed: seconds per epoch
(median over rounds), the ratio to the first configuration, and the epoch's loss (each must learn).

  .venv/bin/python benchmarks/train_step_cost.py --parts 0 30 60 90 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from hass_sglang.checkpoint import read_draft_metadata
from hass_sglang.io import write_json_atomic
from hass_sglang.target import EMBEDDED_TARGET, load_target, load_target_parts
from hass_sglang.train.features import FeatureConfig, extract_features
from hass_sglang.train.regenerate import merged_conversations
from hass_sglang.train.trainer import TrainConfig, train

CORPUS_PARTS = Path(__file__).resolve().parents[1] / "data" / "smollm2-135m-instruct" / "answers.json.gz.parts"
CONFIGS = {  # name: TrainConfig fields
    "random fp32": dict(length_grouped=False, precision="fp32"),
    "grouped fp32": dict(length_grouped=True, precision="fp32"),
    "grouped bf16": dict(length_grouped=True, precision="bf16"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=int, nargs="+", default=[0, 30, 60, 90], help="corpus part numbers (64 each)")
    p.add_argument("--per-part", type=int, default=16, help="conversations taken from each part")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--objectives", nargs="+", default=["eagle2", "hass"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(dtype=torch.bfloat16)
    files = [CORPUS_PARTS / f"part-{n:05d}.json.gz" for n in args.parts]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        p.error(f"no such corpus part: {', '.join(missing)} (scripts/build_corpus.sh writes them)")
    convs = [c for f in files for c in merged_conversations([f], target.tokenizer, 256)[: args.per_part]]
    work = Path(tempfile.mkdtemp(prefix="train_step_cost-"))
    write_json_atomic(work / "d.json", convs)
    feats = str(work / "f")
    extract_features(target, FeatureConfig(data=str(work / "d.json"), target=EMBEDDED_TARGET, max_length=768,
                                           shard_size=args.per_part), feats, progress=False)
    del target
    parts = load_target_parts(EMBEDDED_TARGET)
    seconds: dict[tuple, list[float]] = {}
    loss: dict[tuple, float] = {}
    for r in range(args.rounds):
        for objective in args.objectives:
            for name, fields in CONFIGS.items():
                cfg = TrainConfig(features=feats, out=str(work / f"{objective}-{name.replace(' ', '-')}-{r}"),
                                  objective=objective, batch_size=args.batch_size, draft_vocab=8192, lr=1e-3, **fields)
                meta = read_draft_metadata(train(cfg, parts, progress=False))
                seconds.setdefault((objective, name), []).append(meta["train_seconds_last_session"])
                loss[(objective, name)] = meta["history"][-1]["loss"]
    print(f"\n{len(convs)} conversations from corpus parts {args.parts}, batch {args.batch_size}, {args.rounds} rounds, "
          f"{args.threads} threads")
    base = next(iter(CONFIGS))
    print("| objective | batches, precision | s / epoch | vs " + base + " | loss |\n|---|---|---:|---:|---:|")
    for objective in args.objectives:
        ref = statistics.median(seconds[(objective, base)])
        for name in CONFIGS:
            t = statistics.median(seconds[(objective, name)])
            print(f"| {objective} | {name} | {t:.1f} | {ref / t:.2f}x | {loss[(objective, name)]:.3f} |")


if __name__ == "__main__":
    main()
