#!/usr/bin/env bash
# `just e2e`: start real PostgreSQL, EHRbase 2.x and HAPI FHIR JPA (tests/e2e/infra/up.sh), run tests/e2e
# against the gateway, and stop everything it started, whatever happens. Extra arguments go to pytest.
# The scale-out suite tests/e2e/replicas has a command of its own: `just e2e-replicas` (it needs HAProxy).
#   E2E_KEEP=1                 leave the servers running afterwards (a second run then starts in seconds)
#   E2E_SUITE_TIMEOUT=1200     seconds the pytest run may take before it is stopped
set -euo pipefail
cd "$(dirname "$0")/../.."
infra=tests/e2e/infra
t0=$(date +%s)

cleanup() {
    local rc=$?
    if [ "${E2E_KEEP:-0}" = 1 ]; then
        echo "e2e: servers left running (stop them with: bash $infra/down.sh)" >&2
    else
        bash "$infra/down.sh" >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

env_lines="$(bash "$infra/up.sh")"
eval "$env_lines"
t1=$(date +%s)
echo "e2e: servers ready in $((t1 - t0))s" >&2

set +e
timeout --signal=TERM --kill-after=30 "${E2E_SUITE_TIMEOUT:-1200}" \
    uv run pytest tests/e2e --ignore=tests/e2e/replicas -o addopts="-ra --strict-markers" -p no:cacheprovider "$@"
rc=$?
set -e
echo "e2e: suite took $(( $(date +%s) - t1 ))s (servers and suite: $(( $(date +%s) - t0 ))s)" >&2
exit "$rc"
