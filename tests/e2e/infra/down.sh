#!/usr/bin/env bash
# Stop what tests/e2e/infra/up.sh started: EHRbase, HAPI, then the e2e PostgreSQL cluster.
#   down.sh            everything
#   down.sh ehrbase    only the servers named (ehrbase, hapi); PostgreSQL keeps running
#   down.sh --wipe     everything, then delete the PostgreSQL data (next up.sh starts from empty databases)
# Safe after a partial or failed up.sh, and when nothing runs.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

wipe=0
only=()
for arg in "$@"; do
    case "$arg" in
    --wipe) wipe=1 ;;
    ehrbase | hapi) only+=("$arg") ;;
    *) e2e_log "usage: down.sh [--wipe] [ehrbase] [hapi]"; exit 2 ;;
    esac
done

stop_java() { # stop_java NAME
    local name="$1" pidfile="$E2E_RUN_DIR/$1.pid" pid i
    if ! e2e_pid_alive "$name"; then
        rm -f "$pidfile" "$E2E_RUN_DIR/$name.started"
        e2e_log "$name: not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    e2e_log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 60); do           # up to 30 s for a graceful Spring shutdown
        [ -d "/proc/$pid" ] || break
        sleep 0.5
    done
    if [ -d "/proc/$pid" ]; then
        e2e_log "$name: still alive after 30s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        sleep 1
    fi
    rm -f "$pidfile" "$E2E_RUN_DIR/$name.started"
}

if [ "${#only[@]}" -gt 0 ]; then
    for name in "${only[@]}"; do stop_java "$name"; done
    exit 0
fi
stop_java ehrbase
stop_java hapi

if [ -f "$E2E_PGDATA/PG_VERSION" ] && e2e_as_pg "$E2E_PG_BIN/pg_ctl" -D "$E2E_PGDATA" status >/dev/null 2>&1; then
    e2e_log "postgres: stopping"
    e2e_as_pg "$E2E_PG_BIN/pg_ctl" -D "$E2E_PGDATA" -m fast -w -t 60 stop >/dev/null \
        || e2e_as_pg "$E2E_PG_BIN/pg_ctl" -D "$E2E_PGDATA" -m immediate -w -t 30 stop >/dev/null
else
    e2e_log "postgres: not running"
fi

if [ "$wipe" = 1 ]; then
    e2e_log "wiping $E2E_PGDATA"
    rm -rf "$E2E_PGDATA" "$E2E_RUN_DIR/env.sh"
fi
exit 0
