#!/usr/bin/env bash
# `just e2e-replicas`: scale-out proven. Three `gateway serve` replicas on one PostgreSQL auth DB behind HAProxy
# (docker/haproxy/haproxy.cfg, the file compose.dev.yml uses), against the real HAPI FHIR and EHRbase of
# tests/e2e/infra (Keycloak is not needed). Extra arguments go to pytest. See docs/e2e.md.
#   E2E_KEEP=1                      leave the servers running afterwards. Servers that were already running
#                                   when the suite started are always left running.
#   E2E_REPLICAS_SUITE_TIMEOUT=1200 seconds the pytest run may take before it is stopped
#   E2E_REPLICA_START_TIMEOUT=180   seconds one replica has to become ready
# HAProxy comes from Debian (`apt-get install haproxy`); as root it is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/../../.."
infra=tests/e2e/infra
t0=$(date +%s)
log() { printf '[e2e-replicas %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

export PATH="$PATH:/usr/sbin:/sbin"   # Debian installs haproxy in /usr/sbin
if ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing HAProxy from Debian packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq haproxy >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
    else
        log "haproxy not found: install it first (Debian: apt-get install haproxy)"
        exit 1
    fi
fi
log "$(haproxy -v | head -n 1)"

# Reuse the servers of an earlier `E2E_KEEP=1 just e2e` (or of another suite running now), and leave them be.
. "$infra/common.sh"
already=0
if e2e_pid_alive ehrbase && e2e_pid_alive hapi; then already=1; fi

cleanup() {
    local rc=$?
    if [ "$already" = 1 ]; then
        log "servers were running before this suite: left running"
    elif [ "${E2E_KEEP:-0}" = 1 ]; then
        log "servers left running (stop them with: bash $infra/down.sh)"
    else
        bash "$infra/down.sh" >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

env_lines="$(E2E_SERVICES="ehrbase hapi" bash "$infra/up.sh")"
eval "$env_lines"
t1=$(date +%s)
log "servers ready in $((t1 - t0))s"

set +e
timeout --signal=TERM --kill-after=30 "${E2E_REPLICAS_SUITE_TIMEOUT:-1200}" \
    uv run pytest tests/e2e/replicas -o addopts="-ra --strict-markers" -p no:cacheprovider "$@"
rc=$?
set -e
log "suite took $(( $(date +%s) - t1 ))s (servers and suite: $(( $(date +%s) - t0 ))s); logs: var/e2e/logs/replica-gw*.log, haproxy.log"
exit "$rc"
