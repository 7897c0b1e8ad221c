"""What loading the plugin costs each SGLang process (launcher, detokenizer, DP controller, scheduler).

SGLang runs `load_plugins()` in every process it starts. Until issue 14 the plugin registered its
Llama MTP class eagerly, which imports `sglang.srt.models.registry` and with it every SGLang model;
now it registers right after SGLang's own first import of the registry (only schedulers build
models). Both variants are timed here in fresh interpreters, alternating, side by side:

    lazy   load_plugins()                                      (what every process pays now)
    eager  load_plugins(); import sglang.srt.models.registry   (what each paid before)

  .venv/bin/python benchmarks/plugin_startup.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "lazy": "from sglang.srt.plugins import load_plugins; load_plugins()",
    "eager": "from sglang.srt.plugins import load_plugins; load_plugins(); import sglang.srt.models.registry",
}


def timed(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    timed(VARIANTS["eager"])  # warm the file cache
    runs = {k: [] for k in VARIANTS}
    for _ in range(a.reps):
        for name, code in VARIANTS.items():
            runs[name].append(timed(code))
    print("| variant | median s | min s |\n|---|---|---|")
    for name, xs in runs.items():
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} |")
    print(f"\nlazy / eager (median): {statistics.median(runs['lazy']) / statistics.median(runs['eager']):.2f}x; "
          f"saved per process: {statistics.median(runs['eager']) - statistics.median(runs['lazy']):.2f} s")


if __name__ == "__main__":
    main()
