# syntax=docker/dockerfile:1
# The gateway image: uv builds a virtual environment from the lock file in a builder stage; the
# runtime stage holds only Python, that environment and the code, and runs as a non-root user.
#
#   docker build -t fhir-openehr-gateway .
#   docker run --env-file .env -p 8000:8000 fhir-openehr-gateway
#
# The entrypoint upgrades the auth database (`gateway db upgrade`), then serves on 0.0.0.0:8000.
# Set GATEWAY_SKIP_MIGRATIONS=true when migrations run as a separate release step (several replicas).

ARG PYTHON_VERSION=3.11.10

# The same uv release as the one that wrote uv.lock.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY auth_db ./auth_db
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway
WORKDIR /app
# The project is installed into the environment (not editable): the code lives in site-packages.
COPY --from=builder --chown=root:root /app/.venv /app/.venv
COPY --chown=root:root --chmod=0755 docker/gateway-entrypoint.sh /usr/local/bin/gateway-entrypoint
RUN mkdir -p /app/var && chown gateway:gateway /app/var
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/app/var
USER gateway:gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3).status != 200)"]
ENTRYPOINT ["gateway-entrypoint"]
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
