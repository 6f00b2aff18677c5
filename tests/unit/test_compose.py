"""``compose.dev.yml``, the Dockerfile and ``.env.example``: structure checked without Docker.

Docker is not available where the tests run, so this validates what a broken file would get
wrong: the eight services, real healthchecks, resource limits, pinned images, no inline secrets,
start order on healthy dependencies, the stores kept on an internal network, and two gateway replicas
behind HAProxy with the configuration the scale-out e2e suite proves (docker/haproxy/haproxy.cfg).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = {"gateway-1", "gateway-2"}
SERVICES = {"postgres-auth", "postgres-fhir", "postgres-ehrbase", "hapi", "ehrbase", "haproxy", *GATEWAYS}
DATABASES = {"postgres-auth": (1, 1), "postgres-fhir": (2, 2), "postgres-ehrbase": (2, 3)}
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|_pass$|^pass$|key$)")
VARIABLE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.dev.yml").read_text())
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def memory_gb(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([mMgG])", value).groups()  # type: ignore[union-attr]
    return float(number) / (1024 if unit.lower() == "m" else 1)


def test_the_eight_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_real_healthcheck(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert not check.get("disable")
    test = check["test"]
    command = " ".join(test) if isinstance(test, list) else str(test)
    assert command.split()[0] in {"CMD", "CMD-SHELL"}, command
    body = command.split(None, 1)[1]
    trivial = {"true", "exit 0", "/bin/true", "echo ok", ":"}
    assert body.strip() not in trivial, f"{name}: trivially true healthcheck"
    assert "|| true" not in body, f"{name}: failures are swallowed"
    assert "|| exit 0" not in body, f"{name}: failures are swallowed"
    assert check.get("interval"), f"{name}: interval"
    assert check.get("retries"), f"{name}: retries"


def test_healthchecks_probe_what_each_service_is(compose: dict[str, Any]) -> None:
    def command(name: str) -> str:
        return " ".join(compose["services"][name]["healthcheck"]["test"])

    for database in DATABASES:
        assert "pg_isready" in command(database)
    assert "HealthCheck" in command("hapi")  # the distroless image's own check (actuator health)
    assert "curl" not in command("hapi")  # no curl in a distroless image
    assert "/ehrbase/management/health" in command("ehrbase")
    for gateway in GATEWAYS:
        assert "/health" in command(gateway)
    assert "/haproxy/health" in command("haproxy")  # 503 when no replica is in rotation


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_resource_limits(compose: dict[str, Any], name: str) -> None:
    limits = compose["services"][name]["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0
    assert memory_gb(limits["memory"]) > 0


@pytest.mark.parametrize(("name", "cpus", "memory"), [(n, c, m) for n, (c, m) in DATABASES.items()])
def test_database_limits(compose: dict[str, Any], name: str, cpus: int, memory: int) -> None:
    limits = compose["services"][name]["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == cpus
    assert memory_gb(limits["memory"]) == memory


@pytest.mark.parametrize("name", sorted(SERVICES - GATEWAYS))
def test_images_are_pinned(compose: dict[str, Any], name: str) -> None:
    image = compose["services"][name]["image"]
    repository, _, tag = image.rpartition(":")
    assert repository, f"{name}: {image} has no repository"
    assert tag, f"{name}: {image} has no tag"
    assert tag not in {"latest", "next", "develop", "edge"}, f"{name}: {image} is not pinned"
    assert re.search(r"\d+\.\d+", tag), f"{name}: {image} names no version"


def test_official_upstream_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["hapi"]["image"].startswith("hapiproject/hapi:v")
    assert re.fullmatch(r"ehrbase/ehrbase:2\.\d+\.\d+", services["ehrbase"]["image"])
    # The HAProxy branch the e2e suite runs (Debian 12's haproxy 2.6).
    assert re.fullmatch(r"haproxy:2\.6\.\d+-alpine", services["haproxy"]["image"])
    for gateway in GATEWAYS:
        assert services[gateway]["build"]["dockerfile"] == "Dockerfile"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_inline_secrets(compose: dict[str, Any], name: str) -> None:
    for key, value in environment(compose["services"][name]).items():
        if SECRET_NAME.search(key):
            assert VARIABLE.fullmatch(value), f"{name}: {key} must come from .env as ${{VARIABLE}}"
            assert ":-" not in value, f"{name}: {key} must not have a default value"


def test_secrets_are_required_variables(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.dev.yml").read_text()
    for variable in ("AUTH_DB_PASSWORD", "FHIR_DB_PASSWORD", "EHRBASE_DB_PASSWORD", "EHRBASE_API_PASSWORD"):
        assert re.search(r"\$\{" + variable + r":\?", text), f"{variable} must be required (:?)"
    for gateway in GATEWAYS:
        assert compose["services"][gateway]["env_file"] == [".env"]


def test_dependencies_wait_for_healthy(compose: dict[str, Any]) -> None:
    expected = {
        "hapi": {"postgres-fhir"},
        "ehrbase": {"postgres-ehrbase"},
        "gateway-1": {"postgres-auth", "hapi", "ehrbase"},
        # The second replica starts once the first has migrated the auth DB and serves.
        "gateway-2": {"postgres-auth", "hapi", "ehrbase", "gateway-1"},
        "haproxy": GATEWAYS,
    }
    for name, needs in expected.items():
        depends = compose["services"][name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        assert set(depends) == needs
        for dependency, condition in depends.items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"


def test_stores_are_on_an_internal_network_and_only_haproxy_is_published(compose: dict[str, Any]) -> None:
    networks = compose["networks"]
    internal = {name for name, spec in networks.items() if (spec or {}).get("internal") is True}
    assert internal
    services = compose["services"]
    for name in SERVICES - GATEWAYS - {"haproxy"}:
        assert set(services[name]["networks"]) <= internal, f"{name} must only be on internal networks"
        assert "ports" not in services[name], f"{name} must not be published"
    for gateway in GATEWAYS:
        assert "ports" not in services[gateway], f"{gateway}: clients go through haproxy"
        assert set(services[gateway]["networks"]) & internal, f"{gateway} must reach the stores"
        # A route out (an SSO provider) and the network haproxy reaches the replicas on.
        assert set(services[gateway]["networks"]) - internal
    haproxy = services["haproxy"]
    assert not set(haproxy["networks"]) & internal, "haproxy has no business with the stores"
    assert set(haproxy["networks"]) <= set(services["gateway-1"]["networks"])
    assert all(str(port).startswith("127.0.0.1:") for port in haproxy["ports"])


def test_the_gateway_replicas_are_one_configuration(compose: dict[str, Any]) -> None:
    first, second = (compose["services"][name] for name in sorted(GATEWAYS))
    for key in ("build", "image", "env_file", "healthcheck", "networks", "deploy", "stop_grace_period"):
        assert first[key] == second[key], key
    # Time to drain on SIGTERM (SHUTDOWN_DRAIN_SECONDS, 20 s by default) before Docker's SIGKILL.
    assert first["stop_grace_period"] == "30s"
    # Same settings (and, from the same .env, the same secrets); only the first migrates the auth DB.
    assert {**environment(first), "GATEWAY_SKIP_MIGRATIONS": "true"} == environment(second)
    assert "GATEWAY_SKIP_MIGRATIONS" not in environment(first)


def test_haproxy_runs_the_configuration_the_replicas_suite_proves(compose: dict[str, Any]) -> None:
    haproxy = compose["services"]["haproxy"]
    mounts = [v for v in haproxy["volumes"] if v.endswith(":/usr/local/etc/haproxy/haproxy.cfg:ro")]
    assert mounts == ["./docker/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    env = environment(haproxy)
    assert {env["GATEWAY_1"], env["GATEWAY_2"]} == {f"{name}:8000" for name in GATEWAYS}
    assert env["HAPROXY_BIND"] == ":8000"
    assert all(str(port).endswith(":8000") for port in haproxy["ports"])
    # The replicas trust X-Forwarded-For from haproxy's fixed address only: per-address login throttling
    # and the audit trail see the client, not the load balancer.
    ((network, spec),) = haproxy["networks"].items()
    address = spec["ipv4_address"]
    for gateway in GATEWAYS:
        assert environment(compose["services"][gateway])["FORWARDED_ALLOW_IPS"] == address
    (pool,) = compose["networks"][network]["ipam"]["config"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(pool["subnet"])
    assert ipaddress.ip_address(address) not in ipaddress.ip_network(pool["ip_range"])  # never given out


def test_haproxy_configuration_routes_on_ready_and_retries_only_what_is_safe() -> None:
    config = (ROOT / "docker" / "haproxy" / "haproxy.cfg").read_text()
    lines = [line.split("#", 1)[0].strip() for line in config.splitlines()]
    directives = [line for line in lines if line]
    assert "http-check send meth GET uri /ready ver HTTP/1.1 hdr Host gateway" in directives
    assert "http-check expect status 200" in directives
    assert "option redispatch 1" in directives
    assert "retry-on conn-failure empty-response 503" in directives
    assert "option http-buffer-request" in directives  # else a POST body is never repeated
    assert (
        "http-request disable-l7-retry unless safe_method || conditional has_if_match || has_idempotency_key"
        in directives
    )
    assert "option forwardfor" in directives
    servers = [line for line in directives if line.startswith("server ")]
    assert servers == ['server gw1 "${GATEWAY_1}"', 'server gw2 "${GATEWAY_2}"', 'server gw3 "${GATEWAY_3}"']


def test_ehrbase_requires_basic_auth_with_separate_admin_and_admin_api(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["ehrbase"])
    assert env["SECURITY_AUTHTYPE"] == "BASIC"
    assert env["ADMINAPI_ACTIVE"] == "true"
    assert env["SECURITY_AUTHUSER"] != env["SECURITY_AUTHADMINUSER"]
    assert env["SECURITY_AUTHPASSWORD"] != env["SECURITY_AUTHADMINPASSWORD"]
    assert env["MANAGEMENT_ENDPOINT_HEALTH_ACCESS"] == "read-only"
    assert env["MANAGEMENT_ENDPOINTS_WEB_EXPOSURE_INCLUDE"] == "health"
    assert env["DB_USER"] != env["DB_USER_ADMIN"]


def test_ehrbase_database_is_prepared_by_the_mounted_script(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["postgres-ehrbase"]["volumes"]
    mounts = [v for v in volumes if "docker-entrypoint-initdb.d" in v]
    assert mounts
    source = ROOT / mounts[0].split(":")[0]
    script = source.read_text()
    for needed in (
        "CREATE ROLE",
        "CREATE SCHEMA IF NOT EXISTS ehr",
        "CREATE SCHEMA IF NOT EXISTS ext",
        "uuid-ossp",
    ):
        assert needed in script
    assert not re.search(r"PASSWORD '[^:]", script), "no literal passwords in the init script"


def test_hapi_uses_its_postgres_and_r4(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["hapi"])
    assert env["SPRING_DATASOURCE_URL"].startswith("jdbc:postgresql://postgres-fhir:5432/")
    assert env["HAPI_FHIR_FHIR_VERSION"] == "R4"


@pytest.mark.parametrize("name", sorted(GATEWAYS))
def test_gateway_points_at_the_compose_services(compose: dict[str, Any], name: str) -> None:
    env = environment(compose["services"][name])
    assert env["AUTH_DB_HOST"] == "postgres-auth"
    assert env["FHIR_SERVER_URL"].startswith("http://hapi:8080/")
    assert env["EHRBASE_URL"].startswith("http://ehrbase:8080/")


def test_dockerfile_is_multi_stage_uv_non_root_and_migrates() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 3
    assert "uv sync --frozen --no-dev" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users
    assert not users[-1].startswith(("root", "0"))
    assert "latest" not in dockerfile
    entrypoint = (ROOT / "docker" / "gateway-entrypoint.sh").read_text()
    assert "gateway db upgrade" in entrypoint
    assert '"--host", "0.0.0.0"' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored
    assert ".git" in ignored


def test_env_example_lists_every_setting_and_every_compose_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.M))
    assert {name.upper() for name in Settings.model_fields} <= listed
    lines = (ROOT / "compose.dev.yml").read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", code))  # $${X} is the container's own
    assert used <= listed, used - listed
    assert not any(
        value for value in dotenv_values(ROOT / ".env.example").values() if value and "PASSWORD" in value
    )
