#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the `postgres` tests and print the variable that points at it.
#
# Run as root on Debian with the `postgresql` package installed:
#     eval "$(bash scripts/start_postgres.sh)"
# The cluster lives in a temporary folder owned by the postgres user, listens on 127.0.0.1 only (port
# $PGPORT, default 55432) and trusts local connections; stop it with the pg_ctl command printed on stderr.
set -euo pipefail

PGPORT=${PGPORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PGDB=${PGDB:-idglow_test}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    echo "start_postgres.sh: PostgreSQL server binaries not found; install the 'postgresql' package" >&2
    exit 1
fi
if [ "$(id -u)" = "0" ]; then
    RUN=(runuser -u postgres --)
else
    RUN=()
fi

DATA=$(mktemp -d /tmp/idglow-pg.XXXXXX)
chmod 0755 "$DATA"
[ "$(id -u)" = "0" ] && chown postgres:postgres "$DATA"
"${RUN[@]}" "$BIN/initdb" -D "$DATA/data" -U postgres -A trust --encoding=UTF8 --locale=C.UTF-8 >"$DATA/initdb.log" 2>&1 \
    || { cat "$DATA/initdb.log" >&2; exit 1; }
"${RUN[@]}" "$BIN/pg_ctl" -D "$DATA/data" -l "$DATA/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $DATA -c fsync=on -c max_connections=200" start >&2 \
    || { cat "$DATA/server.log" >&2; exit 1; }
"${RUN[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$PGDB"
echo "start_postgres.sh: cluster in $DATA; stop with: ${RUN[*]} $BIN/pg_ctl -D $DATA/data stop" >&2
echo "export IDGLOW_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$PGPORT/$PGDB"
