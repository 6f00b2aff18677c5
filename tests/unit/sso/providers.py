"""The identity provider the SSO unit tests configure (overrides per test)."""

from __future__ import annotations

from typing import Any

from gateway.sso.config import OidcProvider

ISSUER = "https://idp.test/realms/hospital"


def provider(**overrides: Any) -> OidcProvider:
    """A valid ``OIDC_PROVIDERS`` entry for ``ISSUER``, with ``overrides`` applied."""
    values: dict[str, Any] = {
        "id": "hospital",
        "display_name": "Hospital",
        "issuer": ISSUER,
        "client_id": "gateway",
        "client_secret": "secret",
        "role_map": {"gateway-clinician": ["clinician"], "gateway-admin": ["admin"]},
    }
    values.update(overrides)
    return OidcProvider.model_validate(values)
