#!/usr/bin/env bash
# The seed-002 recipe on a tiny random DeepSeek-V3 (hass_sglang/tiny_deepseek.py): its own MTP layer
# trained with the plain objective ("MTP"), the same layer continued with HASS ("HASS-MTP"), same
# data, same number of epochs after the common start; then tau and tok/s side by side (reference
# decoder, T=0 and T=1) and SGLang's accept length and throughput (hass bench, CPU servers).
# Every step is resumable: re-run after a kill and finished work is skipped.
#
#   bash scripts/setup_env.sh && bash scripts/train_deepseek_tiny.sh        # RUN=runs/deepseek-tiny
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
RUN="${RUN:-runs/deepseek-tiny}"
DATA="${HASS_DATA_DIR:-$root/../shared/data}"
T=tiny-deepseek-v3
E1="${E1:-3}"   # plain epochs from the target's own MTP layer (the common start)
E2="${E2:-2}"   # then: MTP = E2 more plain epochs, HASS-MTP = E2 HASS epochs
hass=".venv/bin/hass"
mkdir -p "$RUN"
step() { local t=$SECONDS; echo "[pipeline] $*" >&2; "$@"; echo "[pipeline] done in $((SECONDS - t)) s: $1 $2" >&2; }

[ -f "$RUN/sharegpt.json" ] || step $hass data --source "$DATA/sharegpt_sample/sharegpt_v3_sample_first_exchange.json" \
    --preset sharegpt --out "$RUN/sharegpt.json" --limit 400
# self-distillation: the tiny target answers the prompts itself (greedy), so acceptance means something
[ -f "$RUN/regen.json" ] || step $hass regenerate --target $T --data "$RUN/sharegpt.json" --out "$RUN/regen.json" \
    --max-prompt-tokens 192 --max-new-tokens 64 --batch-size 32 --target-dtype float32
step $hass features --target $T --data "$RUN/regen.json" --out "$RUN/features" --max-length 320
common=(--target $T --features "$RUN/features" --head mtp --lr 1e-3 --batch-size 8 --val-prompts 6)
step $hass train "${common[@]}" --objective eagle2 --init-from target --epochs "$E1" --out "$RUN/start"
step $hass train "${common[@]}" --objective eagle2 --init-from "$RUN/start/draft" --epochs "$E2" --out "$RUN/mtp"
step $hass train "${common[@]}" --objective hass --init-from "$RUN/start/draft" --epochs "$E2" --out "$RUN/hass-mtp"
# tau and tok/s in the reference decoder: SGLang's MTP tree (3-step chain), T=0 and T=1
step .venv/bin/python benchmarks/bench_drafts.py --target $T --target-dtype float32 --per-set 3 --max-new-tokens 64 \
    --num-steps 3 --topk 1 --num-draft-tokens 4 --json "$RUN/tau.json" \
    --drafts untrained=target mtp="$RUN/mtp/draft" hass-mtp="$RUN/hass-mtp/draft" --compare hass-mtp:mtp \
    | tee "$RUN/tau.md"
# SGLang on this CPU (project CPU backend, the CPU tree 3/1/4): seed 002's table on the tiny model
step $hass bench run --out "$RUN/bench" --model-path $T --no-progress --questions 4 --max-tokens 48 \
    --launch vanilla=none untrained=target mtp="$RUN/mtp/draft" hass-mtp="$RUN/hass-mtp/draft"
