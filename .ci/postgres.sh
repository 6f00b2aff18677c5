#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the test suite and print the URL tests should use.
#
#   eval "$(bash .ci/postgres.sh start)"   -> exports TEST_AUTH_DATABASE_URL
#   bash .ci/postgres.sh stop
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
# The data directory lives under var/test-pg (git-ignored) or, as root, under /var/tmp (the `postgres` user
# must be able to reach it, which a checkout in a private temporary directory does not allow).
# The port defaults to 25433 (outside Linux's ephemeral range 32768–60999, where a client socket of another
# process could hold it).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # runuser (as root), also from a shell whose PATH lacks the sbin directories

here="$(cd "$(dirname "$0")/.." && pwd)"
port="${TEST_PG_PORT:-25433}"
if [ "$(id -u)" = "0" ]; then
    datadir="${TEST_PG_DIR:-/var/tmp/gateway-test-pg-$port}"
else
    datadir="${TEST_PG_DIR:-$here/var/test-pg}"
fi
password="${TEST_PG_PASSWORD:-gateway-test}"

bindir="$(pg_config --bindir 2>/dev/null || true)"
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
    echo "postgres.sh: pg_ctl not found; install PostgreSQL server binaries" >&2
    exit 1
fi

as_owner() {
    if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
start)
    mkdir -p "$datadir"
    if [ "$(id -u)" = "0" ]; then chown -R postgres:postgres "$datadir"; fi
    if [ ! -f "$datadir/PG_VERSION" ]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$password" >"$pwfile"
        chmod 644 "$pwfile"
        as_owner "$bindir/initdb" -D "$datadir" -U postgres --pwfile="$pwfile" -A scram-sha-256 \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        rm -f "$pwfile"
    fi
    if ! as_owner "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
        as_owner "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 \
            -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start >/dev/null
    fi
    echo "export TEST_AUTH_DATABASE_URL=postgresql://postgres:${password}@127.0.0.1:${port}/postgres"
    echo "export TEST_PG_DATADIR=$datadir"
    ;;
stop)
    as_owner "$bindir/pg_ctl" -D "$datadir" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
