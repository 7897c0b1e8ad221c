"""Peak memory of `hass train` against the size of the feature set: 1x and 10x the shards.

Features of a few real conversations are extracted once; the 10x set repeats that shard file ten
times (real files, listed in a real manifest). `hass train` runs one epoch on each, in a fresh
process, one after the other; its peak RSS (ru_maxrss) is printed beside the bytes of features.
Streaming (`FeatureSet`: memory-mapped safetensors slices) keeps the peak flat; a loader that
reads every shard into RAM grows by the feature bytes.

  .venv/bin/python benchmarks/train_memory.py --conversations 32 --repeat 10
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.target import EMBEDDED_TARGET, load_target
from hass_sglang.train.data import convert
from hass_sglang.train.features import MANIFEST, FeatureConfig, extract_features


def repeated(src: Path, dst: Path, times: int) -> int:
    """A feature folder whose manifest lists `times` copies of every shard of `src`; its bytes."""
    manifest = json.loads((src / MANIFEST).read_text())
    dst.mkdir(parents=True, exist_ok=True)
    shards = []
    for r in range(times):
        for e in manifest["shards"]:
            name = f"rep{r:02d}-{e['file']}"
            shutil.copy(src / e["file"], dst / name)
            shards.append({**e, "index": len(shards), "file": name})
    for key in ("samples", "tokens", "loss_tokens"):
        manifest[key] *= times
    (dst / MANIFEST).write_text(json.dumps({**manifest, "shards": shards}))
    return sum(f.stat().st_size for f in dst.glob("*.safetensors"))


def peak_rss_mib(features: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "hass_sglang.cli", "train", "--features", str(features), "--out", str(out),
           "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--objective", "hass"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert after >= before  # ru_maxrss of children is the max over them: run the larger set second
    return after / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hass-train-mem-"))
    data = root / "d.json"
    convert(str(shared_data_dir() / "sharegpt_sample" / "sharegpt_v3_sample_first_exchange.json"), "sharegpt", data,
            limit=a.conversations)
    target = load_target(EMBEDDED_TARGET)
    extract_features(target, FeatureConfig(data=str(data), target=EMBEDDED_TARGET, max_length=384,
                                           shard_size=a.conversations), root / "f", progress=False)
    del target
    sizes = {1: repeated(root / "f", root / "x1", 1), a.repeat: repeated(root / "f", root / f"x{a.repeat}", a.repeat)}
    peaks = {n: peak_rss_mib(root / f"x{n}", root / f"run{n}") for n in sorted(sizes)}
    print("| feature set | feature MiB | peak RSS of hass train (MiB) |\n|---|---:|---:|")
    for n in sorted(sizes):
        print(f"| {n}x | {sizes[n] / 2**20:.1f} | {peaks[n]:.0f} |")
    n = max(sizes)
    print(f"RSS growth {peaks[n] - peaks[1]:.0f} MiB for {(sizes[n] - sizes[1]) / 2**20:.0f} MiB more features")


if __name__ == "__main__":
    main()
