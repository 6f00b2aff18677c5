#!/bin/sh
# Prepares the EHRbase database on the first start of postgres-ehrbase (run by the postgres image
# from /docker-entrypoint-initdb.d as the superuser). EHRbase's Flyway migrations create the tables;
# this creates what needs superuser rights: the two roles, the database, the `ehr` and `ext`
# schemas, the uuid-ossp extension and the database defaults EHRbase expects.
#
#   EHRBASE_DB_ADMIN_USER / EHRBASE_DB_ADMIN_PASSWORD  owner of the schemas (EHRbase's Flyway user)
#   EHRBASE_DB_USER / EHRBASE_DB_PASSWORD              restricted role EHRbase serves requests with
#   EHRBASE_DB_NAME                                    the database
#
# Passwords come from the environment (compose reads them from .env); none is written here.
set -eu

: "${EHRBASE_DB_NAME:?}" "${EHRBASE_DB_ADMIN_USER:?}" "${EHRBASE_DB_ADMIN_PASSWORD:?}"
: "${EHRBASE_DB_USER:?}" "${EHRBASE_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v db="$EHRBASE_DB_NAME" \
    -v admin="$EHRBASE_DB_ADMIN_USER" -v admin_password="$EHRBASE_DB_ADMIN_PASSWORD" \
    -v restricted="$EHRBASE_DB_USER" -v restricted_password="$EHRBASE_DB_PASSWORD" <<'SQL'
CREATE ROLE :"admin" WITH LOGIN PASSWORD :'admin_password';
CREATE ROLE :"restricted" WITH LOGIN PASSWORD :'restricted_password';
CREATE DATABASE :"db" ENCODING 'UTF-8' LOCALE 'C' TEMPLATE template0 OWNER :"admin";
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"restricted";
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$EHRBASE_DB_NAME" \
    -v db="$EHRBASE_DB_NAME" -v admin="$EHRBASE_DB_ADMIN_USER" -v restricted="$EHRBASE_DB_USER" <<'SQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS ehr AUTHORIZATION :"admin";
GRANT USAGE ON SCHEMA ehr TO :"restricted";
ALTER DEFAULT PRIVILEGES FOR ROLE :"admin" IN SCHEMA ehr
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"restricted";
ALTER DEFAULT PRIVILEGES FOR ROLE :"admin" IN SCHEMA ehr
    GRANT SELECT ON SEQUENCES TO :"restricted";
CREATE SCHEMA IF NOT EXISTS ext AUTHORIZATION :"admin";
GRANT USAGE ON SCHEMA ext TO :"restricted";
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" SCHEMA ext;
ALTER DATABASE :"db" SET search_path TO ext;
ALTER DATABASE :"db" SET intervalstyle = 'iso_8601';
ALTER FUNCTION jsonb_path_query(jsonb, jsonpath, jsonb, boolean) ROWS 1;
SQL
