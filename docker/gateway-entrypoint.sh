#!/bin/sh
# Container entrypoint: bring the auth database to the latest revision, then run the command
# (by default `gateway serve --host 0.0.0.0 --port 8000`). With several replicas, run
# `gateway db upgrade` once as a release step and set GATEWAY_SKIP_MIGRATIONS=true here.
set -eu
if [ "${GATEWAY_SKIP_MIGRATIONS:-false}" != "true" ]; then
    gateway db upgrade
fi
exec "$@"
