#!/usr/bin/env bash
# One-shot pipeline for the shipped SmolLM2-135M-Instruct drafts: data -> self-distillation ->
# features -> four trainings (same data, same epochs) -> tau table. Every step is resumable:
# re-run the script after a kill and finished work is skipped.
#
#   bash scripts/setup_env.sh && bash scripts/train_drafts.sh            # RUN=runs/v2 by default
#   SHIP=1 bash scripts/train_drafts.sh                                   # also copy drafts into hass_sglang/drafts/
#   SHIP_ONLY=1 bash scripts/train_drafts.sh                              # only copy finished drafts
#   ENGINE=sglang bash scripts/train_drafts.sh                            # answers and features from an SGLang server
#   ENGINE=sglang RUN=/tmp/smoke CONVERSATIONS=16 STOP_AFTER=features bash scripts/train_drafts.sh   # a smoke run
#   RUN=/tmp/smoke CONVERSATIONS=16 EPOCHS=1 CONT_EPOCHS=1 SAVE_EVERY=1 VAL_PROMPTS=1 STORAGE=bfloat16 \
#     STOP_AFTER=train bash scripts/train_drafts.sh                   # a smoke run of everything up to the five trainings
#   CORPUS="data/smollm2-135m-instruct/answers.json.gz data/smollm2-135m-instruct/answers-2.json.gz" \
#     RUN=runs/v3 EPOCHS=2 MAX_LENGTH=768 STORAGE=bfloat16 SAVE_EVERY=400 bash scripts/train_drafts.sh
#                                     # train on the committed corpus (scripts/build_corpus.sh), skipping steps 1-2
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
RUN="${RUN:-runs/v2}"
DATA="${HASS_DATA_DIR:-$root/../shared/data}"
EPOCHS="${EPOCHS:-5}"          # epochs of every from-scratch draft
CONT_EPOCHS="${CONT_EPOCHS:-2}" # HASS continued from a finished head: MTP (the DeepSeek-R1 recipe) and EAGLE-2
VAL_PROMPTS="${VAL_PROMPTS:-6}" # validation tau at every checkpoint on this many eval prompts
SAVE_EVERY="${SAVE_EVERY:-0}"   # also checkpoint + validate every N steps inside an epoch (the corpus: 400)
PRECISION="${PRECISION:-auto}"  # hass train --precision (auto: bf16 autocast on CUDA, fp32 on CPU)
RANDOM_BATCHES="${RANDOM_BATCHES:-0}"  # 1: hass train --random-batches (how the shipped drafts were trained)
VOCAB="${VOCAB:-8192}"          # reduced draft vocabulary
LR="${LR:-1e-3}"
CONVERSATIONS="${CONVERSATIONS:-544}"  # self-distilled conversations (the shipped drafts: 544)
MAX_LENGTH="${MAX_LENGTH:-384}" # tokens per conversation in the features (the corpus: prompts <= 512 + answers <= 256 -> 768)
STORAGE="${STORAGE:-float32}"   # feature storage dtype (the shipped drafts: float32; bfloat16 halves the bytes)
hass=".venv/bin/hass"
mkdir -p "$RUN"
step() { local t=$SECONDS; echo "[pipeline] $*" >&2; "$@"; echo "[pipeline] done in $((SECONDS - t)) s: $1 $2" >&2; }
# ship: bf16 copies of the four drafts (half the size; drafts run in bf16 anyway) into the package: each
# run's best validated head (best/, else the final draft/); the HASS EAGLE slot takes the better of
# HASS from scratch and HASS continued from EAGLE-2 (by validation tau); a draft with no finished
# run in $RUN stays as shipped; HASS_EAGLE_RUNS / HASS_MTP_RUNS name the candidate run folders of the
# two HASS slots (e.g. a further HASS epoch continued by hand: HASS_EAGLE_RUNS=hass,hass-from-eagle2,hass-from-eagle2-2)
ship() {
    for d in eagle2:smollm2-135m-eagle2 "${HASS_EAGLE_RUNS:-hass,hass-from-eagle2}:smollm2-135m-hass-eagle" mtp:smollm2-135m-mtp \
             "${HASS_MTP_RUNS:-hass-mtp}:smollm2-135m-hass-mtp"; do
        .venv/bin/python - "$RUN" "${d%%:*}" "hass_sglang/drafts/${d#*:}" <<'PY'
import sys
from pathlib import Path
import torch
from hass_sglang.checkpoint import load_draft, read_draft_metadata, save_draft
from hass_sglang.target import load_target_config
run, names, dest = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
def chosen(name):
    folder = run / name / "best" if (run / name / "best").is_dir() else run / name / "draft"
    return folder, (read_draft_metadata(folder).get("best") or {}).get("val_tau", 0.0)
found = [chosen(n) for n in names if (run / n / "draft").is_dir()]
if not found:  # a partial run (e.g. only the EAGLE-head drafts retrained) ships what it has
    print(f"ship: no finished run among {names} in {run}: {dest} stays as it is", file=sys.stderr)
    sys.exit(0)
src = max(found, key=lambda f: f[1])[0]
print(f"ship: {src} -> {dest}", file=sys.stderr)
config = load_target_config("smollm2-135m-instruct")
meta = {k: v for k, v in read_draft_metadata(src).items() if k not in ("format_version", "head_type", "hot_vocab_size")}
save_draft(load_draft(src, config), dest, config, metadata={**meta, "shipped_from": str(src)}, dtype=torch.bfloat16)
PY
    done
}
if [ "${SHIP_ONLY:-0}" = 1 ]; then ship; exit 0; fi

# ENGINE=sglang: the target runs in a plain SGLang server (as it would at scale, docs/training.md);
# regenerate talks to its OpenAI API, features read its hidden states. Default: transformers here.
regen_engine=() feat_engine=() FEATURES="$RUN/features"
if [ "${ENGINE:-transformers}" = sglang ]; then
    PORT="${PORT:-30123}"
    setsid $hass serve --vanilla --port "$PORT" -- --dtype bfloat16 --enable-return-hidden-states \
        --disable-radix-cache --chunked-prefill-size 4096 > "$RUN/sglang-server.log" 2>&1 &
    server=$!
    trap 'kill -- -$server 2>/dev/null || true' EXIT
    until curl -sf "http://127.0.0.1:$PORT/health_generate" > /dev/null; do
        kill -0 $server 2>/dev/null || { echo "SGLang server failed: $RUN/sglang-server.log" >&2; exit 1; }; sleep 3
    done
    regen_engine=(--endpoint "http://127.0.0.1:$PORT" --concurrency 16)
    feat_engine=(--engine sglang --endpoint "http://127.0.0.1:$PORT" --concurrency 8)
    FEATURES="$RUN/features-sglang"
fi

if [ -n "${CORPUS:-}" ]; then
    for f in $CORPUS; do
        [ -f "$f" ] || { echo "CORPUS: no such file: $f (build it with scripts/build_corpus.sh)" >&2; exit 2; }
    done
    ANSWERS="$RUN/corpus.json"  # the answer files as one ShareGPT list (features read one file)
    [ -f "$ANSWERS" ] || .venv/bin/python - "$ANSWERS" $CORPUS <<'PY'
import sys
from hass_sglang.io import read_json, write_json_atomic
write_json_atomic(sys.argv[1], [row for path in sys.argv[2:] for row in read_json(path)])
PY
else
    ANSWERS="$RUN/regen.json"
# 1. data: ShareGPT first exchanges + GSM8K train questions (answers are replaced below)
[ -f "$RUN/sharegpt.json" ] || step $hass data --source "$DATA/sharegpt_sample/sharegpt_v3_sample_first_exchange.json" \
    --preset sharegpt --out "$RUN/sharegpt.json"
[ -f "$RUN/gsm8k.json" ] || step $hass data --source "$DATA/gsm8k/train.jsonl" --preset gsm8k --out "$RUN/gsm8k.json" --limit 240
# 2. self-distillation: the target (bf16, greedy) answers every short prompt itself
[ -f "$RUN/regen.json" ] || step $hass regenerate --data "$RUN/sharegpt.json" "$RUN/gsm8k.json" --out "$RUN/regen.json" \
    --limit 1100 --max-prompt-tokens 160 --max-new-tokens 192 --batch-size 32 --max-conversations "$CONVERSATIONS" "${regen_engine[@]}"
fi
# 3. features: last hidden state + the target's top-10 next-token distribution per position
# (fp32 storage: how the shipped drafts were made; STORAGE=bfloat16 halves the bytes, for the corpus)
step $hass features --data "$ANSWERS" --out "$FEATURES" --max-length "$MAX_LENGTH" --target-dtype bfloat16 \
    --storage-dtype "$STORAGE" "${feat_engine[@]}"
[ -z "${server:-}" ] || { kill -- -$server; trap - EXIT; }  # the CPU is the trainer's from here
if [ "${STOP_AFTER:-}" = features ]; then exit 0; fi  # a smoke run of the data half
# 4. training: EAGLE-2 objective vs HASS, EAGLE head; plain MTP, then MTP continued with HASS
common=(--features "$FEATURES" --batch-size 8 --val-prompts "$VAL_PROMPTS" --save-every "$SAVE_EVERY" --precision "$PRECISION")
if [ "$RANDOM_BATCHES" = 1 ]; then common+=(--random-batches); fi
scratch=("${common[@]}" --epochs "$EPOCHS" --lr "$LR" --warmup-steps 20 --draft-vocab "$VOCAB")
cont=("${common[@]}" --epochs "$CONT_EPOCHS" --lr 3e-4 --objective hass)
best() { if [ -d "$RUN/$1/best" ]; then echo "$RUN/$1/best"; else echo "$RUN/$1/draft"; fi; }
step $hass train "${scratch[@]}" --head eagle --objective eagle2 --out "$RUN/eagle2"
step $hass train "${scratch[@]}" --head eagle --objective hass --out "$RUN/hass"
step $hass train "${scratch[@]}" --head mtp --objective eagle2 --out "$RUN/mtp"
step $hass train "${cont[@]}" --head mtp --init-from "$(best mtp)" --out "$RUN/hass-mtp"
# the reference recipe's HASS: continued from the EAGLE-2 head
step $hass train "${cont[@]}" --head eagle --init-from "$(best eagle2)" --out "$RUN/hass-from-eagle2"
if [ "${STOP_AFTER:-}" = train ]; then exit 0; fi
# 5. evaluation: tau at T=0 and T=1 on the six eval sets, all drafts side by side (best validated heads)
step .venv/bin/python benchmarks/bench_drafts.py --per-set 3 --max-new-tokens 64 --json "$RUN/tau.json" \
    --drafts eagle2="$(best eagle2)" hass="$(best hass)" hass-from-eagle2="$(best hass-from-eagle2)" \
    mtp="$(best mtp)" hass-mtp="$(best hass-mtp)" \
    --compare hass:eagle2 hass-from-eagle2:eagle2 hass-mtp:mtp | tee "$RUN/tau.md"
if [ "${SHIP:-0}" = 1 ]; then ship; fi
