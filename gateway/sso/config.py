"""Configuration of the OpenID Connect identity providers (``OIDC_PROVIDERS``).

Each provider is one JSON object in the ``OIDC_PROVIDERS`` list (see ``docs/sso.md`` for Keycloak, Entra ID
and NHS CIS2 examples). The model checks what can be checked without the network; the discovery document is
checked against ``issuer`` when the gateway first talks to the provider.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.security.principal import Role

#: Signature algorithms an ID token may use. ``none`` and the HMAC family are never allowed: an HMAC
#: "signature" keyed with the provider's public key is the classic algorithm-confusion forgery.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class Provisioning(StrEnum):
    """How a first SSO login finds its local account."""

    #: Only identities an administrator linked beforehand (the default).
    pre_provisioned = "pre_provisioned"
    #: An unknown identity gets a new account, with at most the ``jit_roles``.
    jit = "jit"


class ClientAuthMethod(StrEnum):
    """How the gateway authenticates at the provider's token endpoint."""

    client_secret_basic = "client_secret_basic"  # noqa: S105 - method names, not secrets
    client_secret_post = "client_secret_post"  # noqa: S105
    #: A JWT signed with the gateway's private key (RFC 7523); NHS CIS2 requires it.
    private_key_jwt = "private_key_jwt"


class RoleClaimFormat(StrEnum):
    """How the provider states roles."""

    #: A list of strings (or one string) at ``roles_claim``: Keycloak ``realm_access.roles``, Entra ``roles``.
    strings = "strings"
    #: NHS CIS2: the entry of ``nhsid_nrbac_roles`` whose ``person_roleid`` is the ``selected_roleid``;
    #: its ``role_code`` (``S…:G…:R…``) and each of its colon-separated parts are the values mapped.
    cis2_nrbac = "cis2_nrbac"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"}


class OidcProvider(BaseModel):
    """One identity provider the gateway trusts for sign-in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Short name used in URLs, e.g. `hospital` (lowercase letters, digits, -).")
    display_name: str = Field(min_length=1, max_length=80, description="Shown on the login page.")
    issuer: str = Field(description="The exact `iss` of the provider's tokens; discovery is read from here.")
    client_id: str = Field(min_length=1, max_length=200)
    client_secret: SecretStr | None = None
    token_auth_method: ClientAuthMethod = ClientAuthMethod.client_secret_basic
    private_key_file: Path | None = Field(
        default=None, description="PEM private key for `private_key_jwt` (NHS CIS2 needs it)."
    )
    private_key_kid: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    roles_claim: str = Field(default="realm_access.roles", description="Dotted path of the role claim.")
    roles_claim_format: RoleClaimFormat = RoleClaimFormat.strings
    role_map: dict[str, list[Role]] = Field(
        default_factory=dict, description="Claim value -> gateway roles. Unmapped values give nothing."
    )
    required_acr: list[str] = Field(
        default_factory=list, description="If set, sent as `acr_values` and the ID token's `acr` must be one."
    )
    provisioning: Provisioning = Provisioning.pre_provisioned
    jit_roles: list[Role] = Field(
        default_factory=lambda: [Role.clinician],
        description="The most a just-in-time account may hold (mapped roles outside it are dropped).",
    )
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256"])
    leeway_seconds: int = Field(default=120, ge=0, le=300, description="Clock skew allowed on exp/iat/nbf.")
    use_userinfo: bool = True
    session_max_minutes: int | None = Field(
        default=None,
        ge=5,
        description="Cap of a session started here (minutes after the IdP authenticated the user).",
    )
    allow_insecure_http: bool = Field(
        default=False, description="Allow an http:// issuer that is not loopback (never in production)."
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not PROVIDER_ID.fullmatch(value):
            raise ValueError(f"{value!r}: use 1-32 lowercase letters, digits and '-'")
        return value

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"https", "http"} or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"issuer {value!r} must be an https URL without query or fragment")
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"algorithms must be asymmetric signature algorithms; refused: {bad or 'none'}")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> OidcProvider:
        problems: list[str] = []
        if "openid" not in self.scopes:
            problems.append("scopes must include 'openid'")
        if self.token_auth_method is ClientAuthMethod.private_key_jwt:
            if self.private_key_file is None:
                problems.append("token_auth_method private_key_jwt needs private_key_file")
        elif self.client_secret is None or not self.client_secret.get_secret_value():
            problems.append(f"token_auth_method {self.token_auth_method} needs client_secret")
        if self.issuer.startswith("http://") and not (_is_loopback(self.issuer) or self.allow_insecure_http):
            problems.append("issuer must be https (http only for a loopback test provider)")
        if not self.role_map:
            problems.append("role_map is empty: nobody could sign in (map claim values to admin/clinician)")
        if self.provisioning is Provisioning.jit and not self.jit_roles:
            problems.append("provisioning jit needs at least one jit_roles entry")
        if problems:
            raise ValueError(f"OIDC provider {self.id!r}: " + "; ".join(problems))
        return self

    def private_key_pem(self) -> bytes:
        """The ``private_key_jwt`` signing key, read from ``private_key_file``."""
        assert self.private_key_file is not None
        return self.private_key_file.read_bytes()
