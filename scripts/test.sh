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
# pytest exits 5 when no test ran: that (like any failure) fails the run.
t=$(date +%s); rc=0
.venv/bin/python -m pytest "$@" || rc=$?
echo "pytest: exit $rc in $(( $(date +%s) - t )) s"
# The Docker deployment test (scripts/test_docker.sh), timed on its own: run with no pytest
# arguments (the README's and CI's command) or MARGINFACE_DOCKER_TEST=1; =0 leaves it out.
# Where no Docker daemon can be started it reports SKIPPED, loudly, and never counts as passed.
if [ "${MARGINFACE_DOCKER_TEST:-$([ $# -eq 0 ] && echo 1 || echo 0)}" = 1 ]; then
    t=$(date +%s); drc=0
    bash scripts/test_docker.sh || drc=$?
    case $drc in
        0) echo "docker deployment test: PASSED in $(( $(date +%s) - t )) s" ;;
        77) echo "docker deployment test: SKIPPED, NOT PASSED (the reason is above), $(( $(date +%s) - t )) s" ;;
        *) echo "docker deployment test: FAILED (exit $drc) in $(( $(date +%s) - t )) s"; rc=1 ;;
    esac
fi
exit $rc
