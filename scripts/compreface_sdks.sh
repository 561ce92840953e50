#!/usr/bin/env bash
# Install CompreFace's official client libraries, for the tests only, into DIR (default
# .cache/compreface-sdks, git-ignored): the Python SDK in its own venv (compreface-sdk 0.6.0 pins
# requests-toolbelt==0.9.1, which needs urllib3<2: never in the project's venv) and the JavaScript
# SDK with npm. Idempotent: a finished install leaves DIR/.done and is not repeated.
# Needs only PyPI and the npm registry. Usage: bash scripts/compreface_sdks.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.cache/compreface-sdks}
PY=${PYTHON:-python3}
[ -f "$DIR/.done" ] && exit 0
mkdir -p "$DIR/js"
[ -x "$DIR/py/bin/python" ] || "$PY" -m venv "$DIR/py"
"$DIR/py/bin/python" -m pip install -q --disable-pip-version-check \
    'compreface-sdk==0.6.0' 'urllib3<2'
if ! command -v npm >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
[ -f "$DIR/js/package.json" ] || echo '{"name": "marginface-compreface-tests", "private": true, "type": "module"}' > "$DIR/js/package.json"
(cd "$DIR/js" && npm install --silent --no-audit --no-fund '@exadel/compreface-js-sdk@1.0.0')
touch "$DIR/.done"
