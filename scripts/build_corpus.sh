#!/usr/bin/env bash
# The self-distillation corpus of the shipped SmolLM2 drafts (docs/training.md, "A corpus worth
# training on"): open prompts without the eval questions -> answers from a plain SGLang server of
# the target (bf16, continuous batching). Resumable: re-run after a kill; finished parts stay in
# data/smollm2-135m-instruct/answers.json.gz.parts/ (committed, so a new machine resumes too).
# Extra arguments go to `hass regenerate` (e.g. --concurrency 32).
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/smollm2-135m-instruct
regen=(--batch-size 64 --concurrency 64 --max-new-tokens 256 --target-dtype bfloat16)
# 1. 10,200 prompts (9,827 answered: 1.91M answer tokens)
.venv/bin/hass corpus --out "$out/prompts.json" --max-per-source sharegpt=5000 gsm8k=2600 code_alpaca=2600
.venv/bin/hass regenerate --serve --data "$out/prompts.json" --out "$out/answers.json.gz" "${regen[@]}" "$@"
# 2. 800 more (765 answered, 0.15M tokens: 2.07M in all), none of part 1's (a second file: new prompts in the first would reorder its batches
# and invalidate its finished parts); training reads both answer files
.venv/bin/hass corpus --out "$out/prompts-2.json" --exclude "$out/prompts.json" \
    --max-per-source sharegpt=500 gsm8k=150 code_alpaca=150
.venv/bin/hass regenerate --serve --data "$out/prompts-2.json" --out "$out/answers-2.json.gz" "${regen[@]}" "$@"
