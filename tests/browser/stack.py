"""The browser suite's gateway: a real ``gateway serve`` process on PostgreSQL, with accounts and patients.

    uv run python -m tests.browser.stack --port 25501 --web-origin http://localhost:25502 \
        --state var/browser/stack.json

Started by ``tests/browser/run.sh`` after ``tests/e2e/infra/up.sh`` (whose ``E2E_*`` exports give the
PostgreSQL cluster, HAPI FHIR, EHRbase and Keycloak). It

- recreates the auth database ``gateway_browser`` and migrates it (``gateway db upgrade``),
- makes sure the letter template is in EHRbase (``gateway templates sync``),
- creates the first administrator (``gateway users create-admin``),
- starts ``gateway serve`` as in production (``GATEWAY_ENV=production``, ``__Host-`` cookies, which
  browsers accept from ``http://localhost``) with ``CORS_ALLOW_ORIGINS`` set to the web client's origin,
- configures single sign-on with the ``hospital`` realm of the e2e Keycloak (``E2E_KEYCLOAK_URL``; realm
  file ``tests/e2e/infra/keycloak/hospital-realm.json``): ``OIDC_PROVIDERS``, ``GATEWAY_PUBLIC_URL`` (the
  gateway as the browser reaches it, ``http://localhost:<port>``) and ``FRONTEND_URL`` (the web client's
  origin); through Keycloak's admin API it registers this run's callback and post-logout redirect URIs and
  its back-channel logout URL with the realm's ``gateway`` client (taken out again when the stack stops),
- through the HTTP API: creates two clinicians (``carol`` with TOTP enrolled, ``dave`` without), each of
  whom changes the temporary password, and registers four patients of this run's family name as ``dave``
  (so the search in the browser has pages to follow); creates two SSO-only accounts linked to Keycloak users
  (``sso.clinician`` to ``dr.sso``, with a care-team link to one of dave's patients; ``sso.noroles`` to
  ``nurse.noroles``, whose Keycloak roles map to no gateway role),
- writes what the Playwright specs need (addresses, passwords, the TOTP secret, the Keycloak users and the
  Keycloak administrator's credentials) to ``--state``,

then waits until it is stopped (SIGTERM or SIGINT) and stops the gateway. Logs: ``var/browser/logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pyotp

from tests.e2e.gateway_process import (
    gateway_env,
    nhs_number,
    recreate_database,
    run_cli,
    stop,
    wait_until_serving,
)
from tests.e2e.keycloak import KeycloakAdmin

ROOT = Path(__file__).resolve().parents[2]
AUTH_DB = "gateway_browser"
ADMIN = "browser.admin"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
#: The identity provider: the ``hospital`` realm of the e2e Keycloak, and the gateway's client there.
SSO_PROVIDER = "hospital"
SSO_REALM = "hospital"
SSO_CLIENT = "gateway"
SSO_CLIENT_SECRET = "gateway-e2e-secret"
SSO_BUTTON = "Sign in with the hospital"
#: Keycloak's separator of the values of a multi-valued client attribute.
KC_LIST_SEPARATOR = "##"
#: How the browser reaches the gateway and the web client (the Keycloak client's URIs of this suite).
LOCALHOST = "http://localhost:"
#: The SSO-only accounts: state key -> (Keycloak user and password of the realm file, gateway account).
SSO_USERS = {
    "clinician": ("dr.sso", "Sso-Clinician-1", "sso.clinician", "Dr Sso Browser"),
    "noRoles": ("nurse.noroles", "Sso-Noroles-1", "sso.noroles", "Nurse Noroles Browser"),
}


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response.json() if response.content else None


def token(http: httpx.Client, username: str, password: str) -> dict[str, str]:
    body = expect(http.post("/auth/token", data={"username": username, "password": password}), 200)
    return {"Authorization": f"Bearer {body['access_token']}"}


def clinician(
    http: httpx.Client, admin: dict[str, str], username: str, display_name: str, password: str
) -> None:
    """Create a clinician as the administrator; the clinician replaces the temporary password."""
    created = expect(
        http.post(
            "/admin/users",
            json={"username": username, "display_name": display_name, "roles": ["clinician"]},
            headers=admin,
        ),
        201,
    )
    first = token(http, username, created["temporary_password"])
    expect(
        http.post(
            "/auth/password",
            json={"current_password": created["temporary_password"], "new_password": password},
            headers=first,
        ),
        204,
    )


def enrol_totp(http: httpx.Client, username: str, password: str) -> tuple[str, int]:
    """Enrol and confirm TOTP for ``username``; returns the secret and the time step used to confirm."""
    headers = token(http, username, password)
    secret = expect(http.post("/auth/totp/enrol", json={"password": password}, headers=headers), 200)[
        "secret"
    ]
    now = time.time()
    expect(http.post("/auth/totp/confirm", json={"code": pyotp.TOTP(secret).at(now)}, headers=headers), 200)
    return secret, int(now // 30)


def register(
    http: httpx.Client, headers: dict[str, str], family: str, given: str, birth_date: str, nhs: str
) -> str:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth_date,
    }
    body = expect(http.post("/patients", json=patient, headers=headers), 201)
    return str(body["id"])


def sso_env(gateway_url: str, web_origin: str) -> dict[str, str]:
    """Single sign-on with the ``hospital`` realm, accounts pre-provisioned (docs/sso.md)."""
    provider = {
        "id": SSO_PROVIDER,
        "display_name": SSO_BUTTON,
        "issuer": f"{os.environ['E2E_KEYCLOAK_URL'].rstrip('/')}/realms/{SSO_REALM}",
        "client_id": SSO_CLIENT,
        "client_secret": SSO_CLIENT_SECRET,
        "roles_claim": "realm_access.roles",
        "role_map": {"gateway-clinician": ["clinician"], "gateway-admin": ["admin"]},
    }
    return {
        "OIDC_PROVIDERS": json.dumps([provider]),
        "GATEWAY_PUBLIC_URL": gateway_url,
        "FRONTEND_URL": web_origin,
    }


def _update_client(
    keycloak: KeycloakAdmin, *, callback: str | None, post_logout: str | None, backchannel: str | None
) -> str:
    """Set the ``gateway`` client's ``localhost`` URIs (this suite's only) and back-channel logout URL.

    Every ``http://localhost:…`` redirect and post-logout URI goes (the realm file and the e2e suite use
    127.0.0.1 only, so these are this suite's, maybe left by an earlier run); ``callback`` and ``post_logout``
    are added when given; ``backchannel.logout.url`` becomes ``backchannel`` when given. Returns the
    back-channel logout URL the client had before.
    """
    rep = keycloak.client(SSO_REALM, SSO_CLIENT)
    attributes: dict[str, str] = rep.setdefault("attributes", {})
    redirects = [uri for uri in rep.get("redirectUris") or [] if not uri.startswith(LOCALHOST)]
    post = [
        uri
        for uri in (attributes.get("post.logout.redirect.uris") or "").split(KC_LIST_SEPARATOR)
        if uri and not uri.startswith(LOCALHOST)
    ]
    rep["redirectUris"] = [*redirects, *([callback] if callback else [])]
    attributes["post.logout.redirect.uris"] = KC_LIST_SEPARATOR.join(
        [*post, *([post_logout] if post_logout else [])]
    )
    previous = attributes.get("backchannel.logout.url", "")
    if backchannel is not None:
        attributes["backchannel.logout.url"] = backchannel
    keycloak.request("PUT", f"/{SSO_REALM}/clients/{rep['id']}", json=rep)
    return previous


@contextmanager
def keycloak_registration(keycloak: KeycloakAdmin, port: int, web_origin: str) -> Iterator[str]:
    """Register this run's gateway with the realm's ``gateway`` client for as long as the stack runs.

    The realm file allows ``http://127.0.0.1/*`` (any port on that address); the browser reaches the gateway
    and the web client as ``localhost``, so the exact callback and the web client's post-logout address are
    added. Keycloak posts back-channel logout tokens from its own process, to 127.0.0.1. Afterwards the
    client is put back as it was (the back-channel URL only if nobody changed it meanwhile). Yields the
    back-channel logout URL.
    """
    backchannel = f"http://127.0.0.1:{port}/auth/sso/{SSO_PROVIDER}/backchannel-logout"
    before = _update_client(
        keycloak,
        callback=f"http://localhost:{port}/auth/sso/{SSO_PROVIDER}/callback",
        post_logout=f"{web_origin}/*",
        backchannel=backchannel,
    )
    try:
        yield backchannel
    finally:
        still_ours = (
            keycloak.client_attributes(SSO_REALM, SSO_CLIENT).get("backchannel.logout.url") == backchannel
        )
        _update_client(keycloak, callback=None, post_logout=None, backchannel=before if still_ours else None)


def sso_account(
    http: httpx.Client, admin: dict[str, str], username: str, display_name: str, subject: str
) -> str:
    """An SSO-only clinician account linked to ``subject`` at the provider (pre-provisioning); its id."""
    created = expect(
        http.post(
            "/admin/users",
            json={
                "username": username,
                "display_name": display_name,
                "roles": ["clinician"],
                "sso_only": True,
            },
            headers=admin,
        ),
        201,
    )
    user_id = str(created["user"]["id"])
    expect(
        http.post(
            f"/admin/users/{user_id}/identities",
            json={"provider": SSO_PROVIDER, "subject": subject},
            headers=admin,
        ),
        201,
    )
    return user_id


def prepare_sso(
    http: httpx.Client, admin: dict[str, str], keycloak: KeycloakAdmin, patient: str
) -> dict[str, Any]:
    """The SSO-only accounts, and a care-team link that lets the clinician read ``patient``."""
    users: dict[str, Any] = {}
    for key, (idp_username, idp_password, username, display_name) in SSO_USERS.items():
        subject = keycloak.user_id(SSO_REALM, idp_username)
        account_id = sso_account(http, admin, username, display_name, subject)
        users[key] = {
            "username": idp_username,
            "password": idp_password,
            "subject": subject,
            "account": username,
            "accountId": account_id,
            "displayName": display_name,
        }
    expect(
        http.post(
            "/admin/care-team",
            json={"user_id": users["clinician"]["accountId"], "patient_id": patient},
            headers=admin,
        ),
        201,
    )
    return {
        "provider": SSO_PROVIDER,
        "button": SSO_BUTTON,
        "realm": SSO_REALM,
        "keycloakUrl": keycloak.base_url,
        # For the specs' own calls to Keycloak's admin API (a back-channel logout of a user).
        "keycloakAdmin": {
            "username": os.environ["E2E_KEYCLOAK_ADMIN_USER"],
            "password": os.environ["E2E_KEYCLOAK_ADMIN_PASSWORD"],
        },
        "patient": patient,
        **users,
    }


def prepare(url: str, run_id: str, keycloak: KeycloakAdmin) -> dict[str, Any]:
    """Accounts and patients through the HTTP API; returns what the specs need."""
    rng = secrets.SystemRandom()
    passwords = {name: f"Browser-{name}-{secrets.token_urlsafe(12)}" for name in ("carol", "dave")}
    family = f"Browser{run_id.upper()}"
    with httpx.Client(base_url=url, timeout=60.0) as http:
        admin = token(http, ADMIN, os.environ["BROWSER_ADMIN_PASSWORD"])
        clinician(http, admin, "carol", "Dr Carol Browser", passwords["carol"])
        clinician(http, admin, "dave", "Dr Dave Browser", passwords["dave"])
        secret, step = enrol_totp(http, "carol", passwords["carol"])
        dave = token(http, "dave", passwords["dave"])
        patients = [
            register(http, dave, family, given, f"19{50 + i}-0{i + 1}-1{i}", nhs_number(rng))
            for i, given in enumerate(["Ada", "Bea", "Cleo", "Dora"])
        ]
        # The other specs use dave's first three patients; the SSO clinician reads the fourth.
        sso = prepare_sso(http, admin, keycloak, patients[3])
    return {
        "runId": run_id,
        "family": family,
        "carol": {
            "username": "carol",
            "password": passwords["carol"],
            "totpSecret": secret,
            "totpStep": step,
        },
        "dave": {"username": "dave", "password": passwords["dave"]},
        "admin": {"username": ADMIN, "password": os.environ["BROWSER_ADMIN_PASSWORD"]},
        "davePatients": patients,
        "newNhsNumber": nhs_number(rng),
        "sso": sso,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the gateway's port on 127.0.0.1")
    parser.add_argument("--web-origin", required=True, help="the web client's origin (CORS_ALLOW_ORIGINS)")
    parser.add_argument("--state", type=Path, required=True, help="where to write the JSON the specs read")
    args = parser.parse_args()
    args.state.unlink(missing_ok=True)
    os.environ.setdefault("BROWSER_ADMIN_PASSWORD", "Admin-browser-" + secrets.token_urlsafe(12))
    env = gateway_env(
        recreate_database(os.environ["E2E_GATEWAY_ADMIN_DB_URL"], AUTH_DB),
        CORS_ALLOW_ORIGINS=args.web_origin,
        **sso_env(f"http://localhost:{args.port}", args.web_origin),
    )
    workdir = tempfile.mkdtemp(prefix="gateway-browser-")  # no stray .env is read
    run_cli(env, workdir, "db", "upgrade")
    run_cli(env, workdir, "templates", "sync")
    run_cli(
        env,
        workdir,
        "users",
        "create-admin",
        "--username",
        ADMIN,
        "--display-name",
        "Browser Administrator",
        "--password-stdin",
        stdin=os.environ["BROWSER_ADMIN_PASSWORD"] + "\n",
    )
    log_dir = ROOT / "var" / "browser" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "gateway.log"
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(args.port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(serve, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # `uv run` passes the signal on, and run.sh signals the whole process group: ignore the second one,
        # which would otherwise interrupt the clean-up (the Keycloak client, the gateway process).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_until_serving(url, process, log_path)
        with (
            KeycloakAdmin() as keycloak,
            keycloak_registration(keycloak, args.port, args.web_origin) as backchannel,
        ):
            state = prepare(url, secrets.token_hex(3), keycloak)
            state["gatewayUrl"] = f"http://localhost:{args.port}"
            # The e2e suite points the same Keycloak client at its own gateway: the spec checks it first.
            state["sso"]["backchannelLogoutUrl"] = backchannel
            args.state.write_text(json.dumps(state, indent=2))
            print(f"browser stack: gateway on {state['gatewayUrl']}, state in {args.state}", flush=True)
            while process.poll() is None:
                time.sleep(0.5)
            raise RuntimeError(f"the gateway stopped:\n{log_path.read_text()[-4000:]}")
    finally:
        stop(process)


if __name__ == "__main__":
    main()
