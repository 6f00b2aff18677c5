# Shared settings for up.sh / down.sh. Sourced, not executed.
# Every value can be overridden from the environment before calling the scripts.

E2E_INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_REPO_ROOT="$(cd "$E2E_INFRA_DIR/../../.." && pwd)"

: "${E2E_VAR_DIR:=$E2E_REPO_ROOT/var/e2e}"
E2E_LOG_DIR="$E2E_VAR_DIR/logs"
E2E_RUN_DIR="$E2E_VAR_DIR/run"          # pid files, env.sh
# PostgreSQL data and socket: owned by the postgres OS user when run as root, so they live where that user can
# reach them (a checkout in a private directory would not do); under var/e2e otherwise.
if [ "$(id -u)" = 0 ]; then
    : "${E2E_PGDATA:=/var/tmp/gateway-e2e-pg/data}"
    : "${E2E_PG_SOCKET_DIR:=/var/tmp/gateway-e2e-pg/sock}"
else
    : "${E2E_PGDATA:=$E2E_VAR_DIR/pgdata}"
    : "${E2E_PG_SOCKET_DIR:=$E2E_VAR_DIR/pgsock}"
fi
: "${E2E_PG_LOG:=$(dirname "$E2E_PGDATA")/postgres.log}"

# --- PostgreSQL (one dedicated instance for both servers) ---
: "${E2E_PG_BIN:=$(pg_config --bindir 2>/dev/null || true)}"
if [ -z "$E2E_PG_BIN" ] || [ ! -x "$E2E_PG_BIN/pg_ctl" ]; then
    E2E_PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
fi
: "${E2E_PG_HOST:=127.0.0.1}"
: "${E2E_PG_PORT:=25432}"            # outside the ephemeral range (32768–60999) that client sockets use
: "${E2E_PG_OS_USER:=postgres}"          # OS user that owns/runs the cluster when we are root

# --- EHRbase ---
: "${E2E_EHRBASE_PORT:=8085}"
: "${E2E_EHRBASE_USER:=ehrbase-user}"
: "${E2E_EHRBASE_PASSWORD:=SuperSecretPassword}"
: "${E2E_EHRBASE_ADMIN_USER:=ehrbase-admin}"
: "${E2E_EHRBASE_ADMIN_PASSWORD:=EvenMoreSecretPassword}"
: "${E2E_EHRBASE_DB_NAME:=ehrbase}"
: "${E2E_EHRBASE_DB_ADMIN_USER:=ehrbase}"                # schema owner, Flyway user
: "${E2E_EHRBASE_DB_ADMIN_PASSWORD:=ehrbase}"
: "${E2E_EHRBASE_DB_USER:=ehrbase_restricted}"           # runtime user
: "${E2E_EHRBASE_DB_PASSWORD:=ehrbase_restricted}"
: "${E2E_EHRBASE_NODE_NAME:=local.ehrbase.org}"
: "${E2E_EHRBASE_JAVA_OPTS:=-Xms256m -Xmx1g}"
# Java 21+ for EHRbase 2.x; auto-detected from /usr/lib/jvm when unset.
: "${E2E_EHRBASE_JAVA_HOME:=}"

# --- HAPI FHIR ---
: "${E2E_HAPI_PORT:=8090}"
: "${E2E_HAPI_DB_NAME:=hapi}"
: "${E2E_HAPI_DB_USER:=hapi}"
: "${E2E_HAPI_DB_PASSWORD:=hapi}"
: "${E2E_HAPI_JAVA_OPTS:=-Xms256m -Xmx1536m}"
: "${E2E_HAPI_JAVA_HOME:=}"                              # Java 17+; default: java on PATH
: "${E2E_HAPI_DEFAULT_PAGE_SIZE:=20}"
: "${E2E_HAPI_MAX_PAGE_SIZE:=200}"

# --- Keycloak (the OpenID provider of the SSO tests; realms in keycloak/*.json, imported on every start) ---
: "${E2E_KEYCLOAK_VERSION:=26.7.3}"
: "${E2E_KEYCLOAK_PORT:=8095}"
: "${E2E_KEYCLOAK_ADMIN_USER:=admin}"                     # bootstrap administrator of the master realm
: "${E2E_KEYCLOAK_ADMIN_PASSWORD:=Keycloak-e2e-admin}"
# Added to kc.sh's own JVM options (as its JAVA_OPTS_KC_HEAP). C1 only: starts ~25% faster on 2 cores.
: "${E2E_KEYCLOAK_JAVA_OPTS:=-Xms128m -Xmx512m -XX:TieredStopAtLevel=1}"
: "${E2E_KEYCLOAK_JAVA_HOME:=}"                          # Java 17+; default: java on PATH
E2E_KEYCLOAK_HOME="$E2E_VAR_DIR/keycloak-$E2E_KEYCLOAK_VERSION"   # the unpacked distribution

# --- the gateway's auth database (the e2e harness recreates database gateway_e2e on each run) ---
: "${E2E_GATEWAY_DB_USER:=gateway}"
: "${E2E_GATEWAY_DB_PASSWORD:=gateway-e2e}"

# --- behaviour ---
: "${E2E_SERVICES:=ehrbase hapi keycloak}"   # which servers up.sh starts (PostgreSQL always)
: "${E2E_START_TIMEOUT:=420}"           # seconds to wait for each server's health
: "${E2E_BUILD_TIMEOUT:=1800}"          # seconds for one Maven build (first one downloads ~300 MB)
: "${E2E_MVN_ARGS:=-B -q}"              # add -o to build offline from ~/.m2

E2E_EHRBASE_URL="http://127.0.0.1:${E2E_EHRBASE_PORT}/ehrbase"
E2E_FHIR_URL="http://127.0.0.1:${E2E_HAPI_PORT}/fhir"
E2E_KEYCLOAK_URL="http://127.0.0.1:${E2E_KEYCLOAK_PORT}"

E2E_EHRBASE_JAR="$E2E_INFRA_DIR/ehrbase/target/ehrbase-e2e.jar"
E2E_HAPI_JAR="$E2E_INFRA_DIR/hapi/target/hapi-e2e.jar"

e2e_log() { printf '[e2e-infra %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Run a PostgreSQL server binary as the cluster owner (PostgreSQL refuses to run as root).
e2e_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$E2E_PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

e2e_psql() { # e2e_psql DB [psql args...]  -- superuser over the private unix socket
    local db="$1"; shift
    e2e_as_pg "$E2E_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$E2E_PG_SOCKET_DIR" -p "$E2E_PG_PORT" \
        -U postgres -d "$db" "$@"
}

# e2e_pid_marker NAME -> what the command line of NAME's process contains: its jar, or for Keycloak the
# distribution's directory (kc.sh, then the JVM it runs, both name it)
e2e_pid_marker() {
    case "$1" in
    keycloak) echo "$E2E_KEYCLOAK_HOME/" ;;
    *) echo "${1}-e2e.jar" ;;
    esac
}

# pid_alive NAME -> 0 if run/NAME.pid names a live process whose command line mentions NAME's marker
e2e_pid_alive() {
    local name="$1" pidfile="$E2E_RUN_DIR/$1.pid" pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(e2e_pid_marker "$name")"
}

e2e_http_code() { # e2e_http_code URL [curl args...]
    local url="$1"; shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" 2>/dev/null || true
}

e2e_port_busy() { # 0 if something listens on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
