#!/bin/sh
# STAND-IN for the official postgres image's entrypoint: the same variables (POSTGRES_USER,
# POSTGRES_DB, POSTGRES_PASSWORD, PGPORT) and the same refusal to initialise without a password.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}" "${PGPORT:=5432}"
PGDATA=/var/lib/postgresql/data
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "Error: Database is uninitialized and superuser password is not specified." >&2
        exit 1
    fi
    chown postgres "$PGDATA"
    pw=$(mktemp); printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"; chown postgres "$pw"
    as_pg initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" -E UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
            | as_pg postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses=127.0.0.1 -k /var/run/postgresql
