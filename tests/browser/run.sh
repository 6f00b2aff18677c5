#!/usr/bin/env bash
# `just browser`: the reference web client in headless Chromium against a real gateway.
#   1. checks the typed client: regenerates the TypeScript types from the OpenAPI document and fails if
#      they differ from the committed ones, then `tsc` (the client, its compile-time contract checks, the specs)
#   2. starts PostgreSQL, HAPI FHIR and EHRbase with tests/e2e/infra/up.sh (reused when already running)
#   3. starts the gateway (tests/browser/stack.py) and the web client's origin, then runs the Playwright specs
# Screenshots: var/browser/screenshots/; logs: var/browser/logs/; a failed spec's trace: var/browser/test-results/.
#   E2E_KEEP=1                  leave the upstream servers running afterwards (as `just e2e` does)
#   BROWSER_SUITE_TIMEOUT=900   seconds the Playwright run may take
#   CHROMIUM_PATH=/usr/bin/chromium
# Extra arguments go to `playwright test` (e.g. `just browser tabs` runs specs/tabs.spec.ts only).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
infra=tests/e2e/infra
web=tests/browser
out=var/browser
t0=$(date +%s)
log() { printf '[browser %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
[ -x "$chromium" ] || { log "Chromium not found at $chromium (Debian: apt-get install chromium)"; exit 1; }
command -v node >/dev/null || { log "Node.js not found"; exit 1; }

stack_pid=""
cleanup() {
    local rc=$?
    if [ -n "$stack_pid" ]; then kill -TERM -- "-$stack_pid" 2>/dev/null || true; wait "$stack_pid" 2>/dev/null || true; fi
    if [ "${E2E_KEEP:-0}" = 1 ]; then
        log "upstream servers left running (stop them with: bash $infra/down.sh)"
    else
        bash "$infra/down.sh" >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$out/logs"
rm -rf "$out/screenshots" "$out/test-results" "$out/stack.json"

# ------------------------------------------------------------------ the typed client
if [ ! -f "$web/node_modules/.package-lock.json" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    log "npm ci ($web)"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
uv run python -m tests.browser.openapi "$out/openapi.json" >/dev/null
(cd "$web" && npx openapi-typescript "$root/$out/openapi.json" --output "$root/$out/api.d.ts" >/dev/null 2>&1)
if ! diff -u "$web/app/src/api.d.ts" "$out/api.d.ts" > "$out/api-types.diff"; then
    log "the committed TypeScript types differ from the OpenAPI document ($out/api-types.diff): run \`uv run just web-types\`"
    exit 1
fi
(cd "$web" && npm run --silent typecheck && npm run --silent build) >&2
log "typed client: types match the OpenAPI document, tsc passed, web client built"

# ------------------------------------------------------------------ servers
eval "$(bash "$infra/up.sh")"
free_port() { # free_port FROM -> the first port from FROM on that nothing listens on and that was not handed out
    local port
    for port in $(seq "$1" 25599); do
        case " ${taken:-} " in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then taken="${taken:-} $port"; echo "$port"; return 0; fi
    done
    return 1
}
taken=""
gateway_port="$(free_port 25500)"; taken="$taken $gateway_port"
web_port="$(free_port 25500)"; taken="$taken $web_port"
third_port="$(free_port 25500)"
export BROWSER_GATEWAY_URL="http://localhost:$gateway_port" BROWSER_WEB_PORT="$web_port" BROWSER_THIRD_PORT="$third_port"

log "gateway on $BROWSER_GATEWAY_URL, web client on http://localhost:$web_port, third party on :$third_port"
setsid uv run python -m tests.browser.stack --port "$gateway_port" --web-origin "http://localhost:$web_port" \
    --state "$out/stack.json" > "$out/logs/stack.log" 2>&1 < /dev/null &
stack_pid=$!
deadline=$(( $(date +%s) + 180 ))
until [ -f "$out/stack.json" ]; do
    if ! kill -0 "$stack_pid" 2>/dev/null; then tail -n 40 "$out/logs/stack.log" >&2; log "the gateway did not start"; exit 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then tail -n 40 "$out/logs/stack.log" >&2; log "the gateway was not ready in 180s"; exit 1; fi
    sleep 1
done
t1=$(date +%s)
log "ready in $((t1 - t0))s"

# ------------------------------------------------------------------ the suite
set +e
(cd "$web" && CHROMIUM_PATH="$chromium" timeout --signal=TERM --kill-after=30 "${BROWSER_SUITE_TIMEOUT:-900}" \
    npx playwright test "$@")
rc=$?
set -e
log "suite took $(( $(date +%s) - t1 ))s (everything: $(( $(date +%s) - t0 ))s); screenshots in $out/screenshots/"
exit "$rc"
