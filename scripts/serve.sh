#!/usr/bin/env bash
# Install MarginFace (CPU extra) into .venv, fetch the default models, and serve the API.
# Usage: bash scripts/serve.sh [--host 0.0.0.0] [--port 8000]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[cpu]'
.venv/bin/marginface models fetch
if [ ! -f .env ]; then
  key=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
  printf "MARGINFACE_AUTH__API_KEYS='[\"%s\"]'\n" "$key" > .env
  chmod 600 .env
  echo "Created .env with a new API key: $key  (send it as the X-API-Key header)"
fi
set -a; . ./.env; set +a
exec .venv/bin/marginface serve "$@"
