#!/usr/bin/env bash
# Debian packages the full test suite needs: PostgreSQL (store tests) and Chromium (browser tests).
# Runs only as root on a Debian-like system and only installs what is missing.
set -euo pipefail
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || { echo "system_deps: not root/Debian, skipping" >&2; exit 0; }
need=()
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
