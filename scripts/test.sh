#!/usr/bin/env bash
# Set up everything (./.venv, Debian packages when root) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/setup.sh --dev
# axe-core (npm) for the browser tests' accessibility check
if command -v npm >/dev/null && [ ! -f node_modules/axe-core/axe.min.js ]; then
  npm install --no-save --no-audit --no-fund --silent axe-core@4.14.1 >/dev/null 2>&1 \
    || echo "test: axe-core could not be installed; the accessibility check will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# torch's OpenMP threads sleep when they run out of work instead of spinning: the two workers and the processes
# they start share the cores, and spinning threads starved the others (docs/internals.md, "The test suite").
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ -z "${IDGLOW_TEST_PG_URL:-}" ] && [ -f scripts/start_postgres.sh ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  pg_env=$(bash scripts/start_postgres.sh)
  eval "$pg_env"
fi
# Two workers (IDGLOW_TEST_WORKERS), a module at a time each; tests/conftest.py keeps the Ray and the PostgreSQL
# modules on one worker. `bash scripts/test.sh -n 0` runs everything in this process.
.venv/bin/python -m pytest -q --timeout=1200 -n "${IDGLOW_TEST_WORKERS:-2}" "$@"
