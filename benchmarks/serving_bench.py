"""Seed 002's benchmark against SGLang (or any OpenAI-compatible) endpoints; see docs/benchmarks.md.

    python benchmarks/serving_bench.py run --out runs/bench/smoke --launch vanilla=none \
        hass=smollm2-135m-hass-eagle --datasets gsm8k --questions 2 --max-tokens 32

Same as `python -m hass_sglang.bench ...` (run | report | compare).
"""

import sys

from hass_sglang.bench.commands import main

if __name__ == "__main__":
    sys.exit(main())
