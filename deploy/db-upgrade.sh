#!/bin/sh
# The entrypoint of compose's db-upgrade (distributed profile), mounted from the checkout.
# Without POSTGRES_PASSWORD PostgreSQL refuses to initialise and restarts forever, and `up` used
# to fail minutes later with "dependency failed to start"; this says why at once, then waits for
# PostgreSQL itself (db-upgrade no longer waits on its healthcheck) and runs the command.
set -eu
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "db-upgrade: POSTGRES_PASSWORD is not set: the distributed profile needs it in .env" \
        "(see .env.example); PostgreSQL refuses to initialise without it." >&2
    exit 2
fi
python - <<'PY'
import os
import sys
import time

import psycopg

dsn = os.environ["MARGINFACE_GALLERY__POSTGRES_DSN"]
deadline = time.monotonic() + float(os.environ.get("DB_UPGRADE_WAIT_S", "120"))
while True:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
        break
    except psycopg.OperationalError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"db-upgrade: PostgreSQL did not answer: {exc}")
        time.sleep(1)
PY
exec "$@"
