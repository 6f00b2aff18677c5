# Developer tasks. `just --list` explains each; run them through `uv run just <recipe>`.

set dotenv-load := false

# `python3 -m uv run just …` works where `pip install uv` left uv off PATH: uv tells its children where it
# is (UV), and the recipes (which call `uv run`) find it there.
export PATH := if env("UV", "") == "" { env("PATH") } else { parent_directory(env("UV")) + ":" + env("PATH") }

# List the recipes
default:
    @just --list

# Run the gateway on http://127.0.0.1:8000 (embedded SQLite auth DB under ./var unless AUTH_DB_HOST is set)
dev *args:
    uv run gateway serve --reload {{args}}

# PostgreSQL tests use TEST_AUTH_DATABASE_URL, else start a throwaway server from the installed binaries.
# Run the whole test suite (see docs/development.md)
test *args:
    uv run pytest {{args}}

# Lint and type-check: ruff and mypy --strict
lint:
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy gateway auth_db

# Format the code
fmt:
    uv run ruff check --fix .
    uv run ruff format .

# Autogenerate a migration from the models and apply it: just migrate "add a column"
migrate message:
    uv run alembic -c auth_db/alembic.ini revision --autogenerate -m "{{message}}"
    uv run alembic -c auth_db/alembic.ini upgrade head

# Upgrade the auth database to the latest revision
upgrade:
    uv run alembic -c auth_db/alembic.ini upgrade head

# Downgrade the auth database (one revision, or to the given one)
downgrade rev="-1":
    uv run alembic -c auth_db/alembic.ini downgrade {{rev}}

# Fail if the models and the migrations disagree
migrations-check:
    uv run alembic -c auth_db/alembic.ini upgrade head
    uv run alembic -c auth_db/alembic.ini check

# Print the effective configuration (secrets redacted)
config:
    uv run gateway config show

# Create an administrator (prompts for the password): just create-admin alice [--email a@example.org]
create-admin username *args:
    uv run gateway users create-admin --username {{username}} {{args}}

# Upload our openEHR templates to EHRbase (missing ones) and replace changed ones (admin credentials)
templates-sync:
    uv run gateway templates sync

# Check the FHIR<->openEHR links, read-only: exit 1 on problems, 2 when it cannot check (args: --json, --page-size N)
check-links *args:
    uv run gateway check links {{args}}

# Start the whole stack with Docker (needs .env; see docs/operations.md) and wait until healthy
stack-up *args:
    docker compose -f compose.dev.yml --env-file .env up -d --build --wait {{args}}

# Stop the stack (volumes are kept; add -v to delete the data)
stack-down *args:
    docker compose -f compose.dev.yml --env-file .env down {{args}}

# Follow the stack's logs (all services, or the ones named: just stack-logs gateway ehrbase)
stack-logs *services:
    docker compose -f compose.dev.yml --env-file .env logs -f --tail=200 {{services}}

# End-to-end against real PostgreSQL, EHRbase 2.x and HAPI FHIR JPA run as JVM processes (Maven, Java); a few minutes
# (first run: Maven downloads about 500 MB). E2E_KEEP=1 leaves the servers running. Args go to pytest.
e2e *args:
    bash tests/e2e/run.sh {{args}}

# Proves sessions, revocation, throttling and idempotency keys shared, an auth-DB partition and a rolling restart under load.
# Scale-out e2e: three gateway replicas on one auth DB behind HAProxy (apt-get install haproxy); a few minutes. Args go to pytest.
e2e-replicas *args:
    bash tests/e2e/replicas/run.sh {{args}}

# Stop the end-to-end servers left running by `E2E_KEEP=1 just e2e` (add --wipe to delete their data)
e2e-down *args:
    bash tests/e2e/infra/down.sh {{args}}

# Starts the upstreams like `just e2e` (E2E_KEEP=1 leaves them running); args go to `playwright test`.
# Browser suite: the reference web client in headless Chromium against the real stack (screenshots: var/browser/)
browser *args:
    bash tests/browser/run.sh {{args}}

# Regenerate the reference web client's TypeScript types from the OpenAPI document (after an API change)
web-types:
    uv run python -m tests.browser.openapi var/browser/openapi.json
    cd tests/browser && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run --silent api:generate

# Serve the reference web client on http://localhost:5173 for a gateway (CORS_ALLOW_ORIGINS must list it)
web gateway="http://localhost:8000" port="5173":
    cd tests/browser && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run --silent build
    cd tests/browser && BROWSER_GATEWAY_URL={{gateway}} BROWSER_WEB_PORT={{port}} node serve.mjs

# A longer schemathesis run against the app's own OpenAPI (examples per operation: FUZZ_EXAMPLES, default 200)
fuzz examples="200":
    SCHEMATHESIS_MAX_EXAMPLES={{examples}} uv run pytest tests/reliability/test_schemathesis.py -q

# Benchmark the gateway against stub upstreams on loopback (needs wrk; vegeta for the open-loop points, installed with Go when present; writes var/bench/); a few minutes
bench:
    @command -v wrk >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || { echo "install wrk first (apt-get install wrk)"; exit 1; }
    @command -v vegeta >/dev/null || [ -x var/bench/bin/vegeta ] || ! command -v go >/dev/null || GOBIN="$PWD/var/bench/bin" go install github.com/tsenart/vegeta/v12@v12.13.0 || echo "vegeta could not be installed: no open-loop points"
    uv run --group bench python -m tests.bench.run
