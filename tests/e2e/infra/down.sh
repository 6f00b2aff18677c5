#!/usr/bin/env bash
# Stop what tests/e2e/infra/up.sh started: EHRbase, HAPI, Keycloak, then the e2e PostgreSQL cluster.
#   down.sh            everything
#   down.sh ehrbase    only the servers named (ehrbase, hapi, keycloak); PostgreSQL keeps running
#   down.sh --wipe     everything, then delete the PostgreSQL data (next up.sh starts from empty databases)
# Safe after a partial or failed up.sh, and when nothing runs.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

wipe=0
only=()
for arg in "$@"; do
    case "$arg" in
    --wipe) wipe=1 ;;
    ehrbase | hapi | keycloak) only+=("$arg") ;;
    *) e2e_log "usage: down.sh [--wipe] [ehrbase] [hapi] [keycloak]"; exit 2 ;;
    esac
done

group_alive() { # group_alive PGID -> 0 while a process of that process group lives
    [ -n "$(ps -o pid= -g "$1" 2>/dev/null)" ]
}

stop_java() { # stop_java NAME
    local name="$1" pidfile="$E2E_RUN_DIR/$1.pid" pid target i
    if ! e2e_pid_alive "$name"; then
        rm -f "$pidfile" "$E2E_RUN_DIR/$name.started"
        e2e_log "$name: not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    # up.sh starts each server with setsid, as the leader of its own process group: stop the whole group
    # (Keycloak's kc.sh runs its JVM as a child, except after the first start's build step, when it execs it).
    target="$pid"
    if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then target="-$pid"; fi
    if [ "$target" = "$pid" ]; then e2e_log "$name: stopping pid $pid"; else e2e_log "$name: stopping process group $pid"; fi
    kill -TERM -- "$target" 2>/dev/null
    for i in $(seq 1 60); do           # up to 30 s for a graceful shutdown
        if [ "$target" = "$pid" ]; then [ -d "/proc/$pid" ] || break; else group_alive "$pid" || break; fi
        sleep 0.5
    done
    if [ -d "/proc/$pid" ] || { [ "$target" != "$pid" ] && group_alive "$pid"; }; then
        e2e_log "$name: still alive after 30s, sending SIGKILL"
        kill -KILL -- "$target" 2>/dev/null
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
stop_java keycloak

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
