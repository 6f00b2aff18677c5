"""Roles from each provider's claims (Keycloak, Entra ID, NHS CIS2), provider settings, private_key_jwt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.security.principal import Role
from gateway.settings import ConfigError, load_settings
from gateway.sso.provider import ProviderClient, create_idp_http_client
from gateway.sso.roles import mapped_roles
from tests.oidc_fake import FakeIdp
from tests.unit.sso.providers import ISSUER, provider


class TestRoleMapping:
    def test_keycloak_realm_roles(self) -> None:
        claims = {"realm_access": {"roles": ["offline_access", "gateway-clinician"]}}
        assert mapped_roles(provider(), claims) == {Role.clinician}

    def test_keycloak_client_roles(self) -> None:
        claims = {"resource_access": {"gateway": {"roles": ["gateway-admin"]}}}
        assert mapped_roles(provider(roles_claim="resource_access.gateway.roles"), claims) == {Role.admin}

    def test_entra_app_roles(self) -> None:
        entra = provider(roles_claim="roles", role_map={"Gateway.Clinician": ["clinician"]})
        assert mapped_roles(entra, {"roles": ["Gateway.Clinician", "Other"]}) == {Role.clinician}
        assert mapped_roles(entra, {"roles": "Gateway.Clinician"}) == {Role.clinician}

    def test_unmapped_missing_and_odd_shapes_give_nothing(self) -> None:
        for claims in (
            {},
            {"realm_access": None},
            {"realm_access": {"roles": [1, None]}},
            {"realm_access": "x"},
        ):
            assert mapped_roles(provider(), claims) == frozenset()

    def test_cis2_selected_role(self) -> None:
        cis2 = provider(
            roles_claim="nhsid_nrbac_roles",
            roles_claim_format="cis2_nrbac",
            role_map={"R8000": ["clinician"], "S8000:G8000:R8001": ["admin"]},
        )
        claims = {
            "selected_roleid": "555021935107",
            "nhsid_nrbac_roles": [
                {"person_roleid": "555021935107", "org_code": "RX1", "role_code": "S8000:G8000:R8000"},
                {"person_roleid": "555021936108", "org_code": "RX1", "role_code": "S8000:G8000:R8001"},
            ],
        }
        # Only the role chosen at sign-in counts, not every role the person holds.
        assert mapped_roles(cis2, claims) == {Role.clinician}
        assert mapped_roles(cis2, claims | {"selected_roleid": "555021936108"}) == {Role.admin}
        assert mapped_roles(cis2, claims | {"selected_roleid": "999"}) == frozenset()
        assert mapped_roles(cis2, {k: v for k, v in claims.items() if k != "selected_roleid"}) == frozenset()


class TestProviderSettings:
    def load(self, monkeypatch: pytest.MonkeyPatch, providers: Any, **env: str) -> Any:
        monkeypatch.chdir(Path(__file__).parent)  # no stray .env
        monkeypatch.setenv(
            "OIDC_PROVIDERS", providers if isinstance(providers, str) else json.dumps(providers)
        )
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return load_settings()

    def test_a_valid_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        config = provider().model_dump(mode="json") | {"client_secret": "s"}
        settings = self.load(monkeypatch, [config], GATEWAY_PUBLIC_URL="https://gw.example")
        assert settings.oidc_provider("hospital").client_secret.get_secret_value() == "s"

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"client_secret": None}, "needs client_secret"),
            ({"issuer": "http://idp.example/realms/x"}, "issuer must be https"),
            ({"issuer": "https://idp.example/x?tenant=1"}, "without query"),
            ({"role_map": {}}, "role_map is empty"),
            ({"scopes": ["profile"]}, "must include 'openid'"),
            ({"algorithms": ["none"]}, "asymmetric"),
            ({"id": "Bad Id"}, "lowercase"),
            ({"token_auth_method": "private_key_jwt"}, "needs private_key_file"),
            ({"role_map": {"x": ["superuser"]}}, "should be 'admin' or 'clinician'"),
            ({"leeway_seconds": 3600}, "LEEWAY_SECONDS"),
        ],
    )
    def test_broken_configuration_stops_start_up_with_a_clear_message(
        self, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], message: str
    ) -> None:
        config = {
            "id": "hospital",
            "display_name": "Hospital",
            "issuer": ISSUER,
            "client_id": "gateway",
            "client_secret": "s",
            "role_map": {"a": ["clinician"]},
        } | change
        with pytest.raises(ConfigError) as caught:
            self.load(monkeypatch, [config], GATEWAY_PUBLIC_URL="https://gw.example")
        text = str(caught.value)
        assert "OIDC_PROVIDERS" in text
        assert message.lower() in text.lower()
        assert '"s"' not in text

    def test_not_json(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ConfigError, match="not a JSON list"):
            self.load(monkeypatch, "[{id: hospital}]")

    def test_needs_the_public_url_and_unique_ids_and_issuers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        config = provider().model_dump(mode="json") | {"client_secret": "s"}
        with pytest.raises(ConfigError, match="GATEWAY_PUBLIC_URL"):
            self.load(monkeypatch, [config])
        with pytest.raises(ConfigError, match="share an id"):
            self.load(
                monkeypatch, [config, config | {"issuer": ISSUER + "2"}], GATEWAY_PUBLIC_URL="https://g.x"
            )
        with pytest.raises(ConfigError, match="share an issuer"):
            self.load(monkeypatch, [config, config | {"id": "other"}], GATEWAY_PUBLIC_URL="https://g.x")

    def test_production_refuses_plain_http(self, monkeypatch: pytest.MonkeyPatch) -> None:
        config = provider().model_dump(mode="json") | {"client_secret": "s"}
        with pytest.raises(ConfigError, match="GATEWAY_PUBLIC_URL must be https"):
            self.load(
                monkeypatch,
                [config],
                GATEWAY_ENV="production",
                GATEWAY_SECRET_KEY="k" * 40,
                TOTP_ENCRYPTION_KEY="q1YQ8o1cM7O1HxH0Bf2gWgUu3lKQ0xZbq6l2v3J0c1E=",
                GATEWAY_PUBLIC_URL="http://gw.example",
            )


class TestPrivateKeyJwt:
    async def test_the_token_request_carries_a_signed_client_assertion(self, tmp_path: Path) -> None:
        key = RSAKey.generate_key(2048, parameters={"kid": "gw-1"})
        pem = tmp_path / "gateway-cis2.pem"
        pem.write_bytes(key.as_pem(private=True))
        cis2 = provider(
            token_auth_method="private_key_jwt",
            private_key_file=str(pem),
            private_key_kid="gw-1",
            client_secret=None,
        )
        seen: dict[str, str] = {}
        async with create_idp_http_client() as http:
            with respx.mock(using="httpcore", assert_all_called=False) as router:
                idp = FakeIdp(router)

                def token(request: httpx.Request) -> httpx.Response:
                    seen.update({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
                    seen["authorization"] = request.headers.get("authorization", "")
                    return httpx.Response(400, json={"error": "invalid_grant"})

                idp.token.mock(side_effect=token)
                client = ProviderClient(cis2, http)
                with pytest.raises(Exception, match="code_rejected"):
                    await client.exchange_code(code="c", code_verifier="v" * 43, redirect_uri="https://gw/cb")
        assert seen["authorization"] == ""  # no secret in a Basic header
        assert seen["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        assertion = jwt.decode(seen["client_assertion"], RSAKey.import_key(key.as_dict(private=False)))
        assert assertion.header["kid"] == "gw-1"
        assert assertion.claims["iss"] == assertion.claims["sub"] == "gateway"
        assert assertion.claims["aud"] == f"{ISSUER}/protocol/openid-connect/token"
        assert assertion.claims["jti"]
        assert seen["code_verifier"] == "v" * 43
