#!/usr/bin/env bash
# Create ./.venv and install IdGlow with the app, training, PostgreSQL and Ray Serve extras at the exact versions of
# requirements.txt (add --dev for the test tools of requirements-dev.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24" "setuptools<81" wheel
extras=app,train,postgres,serve
constraints=(-c requirements.txt)
if [ "${1:-}" = "--dev" ]; then
  extras=$extras,dev
  constraints+=(-c requirements-dev.txt)
fi
.venv/bin/python -m pip install -q "${constraints[@]}" -e ".[$extras]"
