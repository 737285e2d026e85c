#!/usr/bin/env bash
# Create ./.venv and install IdGlow with everything it needs (add --dev for the test tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24" "setuptools<81" wheel
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
.venv/bin/python -m pip install -q -r "$req"
# face_recognition's own metadata pins dlib (a source build); dlib-bin already provides it.
.venv/bin/python -m pip install -q --no-deps "face_recognition==1.3.0"
.venv/bin/python -m pip install -q --no-deps -e .
