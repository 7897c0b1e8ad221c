#!/usr/bin/env bash
# The first thing to run on a GPU host (and what CI runs on its CPU): `hass doctor`.
# Contract check; plain SGLang, HASS (shipped EAGLE-2-shaped draft) and HASS (shipped Llama MTP
# draft) servers on the embedded SmolLM2 target in bf16 (CUDA graphs on a GPU); /server_info,
# T=0 answers vs plain, accept length, tok/s, CUDA contexts per process; one table; exit 0 = pass.
#
#   bash scripts/gpu_check.sh                          # about 3-8 minutes
#   bash scripts/gpu_check.sh --per-set 1 --out doctor.json
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
exec timeout "${HASS_DOCTOR_TIMEOUT:-900}" .venv/bin/hass doctor "$@"
