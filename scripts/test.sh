#!/usr/bin/env bash
# Install MarginFace with the cpu, train and dev extras into .venv, fetch the models, lint, test.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The console's browser tests drive Debian's Chromium (browsers are never downloaded by Playwright);
# the distributed gallery's tests start Debian's PostgreSQL server on a free port (and stop it).
NEED=()
command -v chromium >/dev/null 2>&1 || NEED+=(chromium)
# CompreFace's JavaScript SDK (tests/compreface) runs on Debian's Node.js; the SDKs themselves come
# from npm and PyPI (scripts/compreface_sdks.sh, run by the tests, into .cache/)
command -v npm >/dev/null 2>&1 || NEED+=(nodejs npm)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || NEED+=(postgresql)
if [ ${#NEED[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${NEED[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check 'torch==2.13.0'
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[cpu,train,dev]'
.venv/bin/marginface models fetch
.venv/bin/ruff check service training tests scripts bench
.venv/bin/mypy service training
# pytest exits 5 when no test ran; set -e turns that (like any failure) into a failed run.
exec .venv/bin/python -m pytest "$@"
