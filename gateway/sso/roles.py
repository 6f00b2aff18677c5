"""Gateway roles from an identity provider's claims, through the provider's ``role_map``.

Re-evaluated at every SSO login: the roles a user holds are those the claims map to, nothing kept from
before. Zero mapped roles means no access. Shapes handled (see ``docs/sso.md``):

- Keycloak: ``realm_access.roles`` (a list of strings), or ``resource_access.<client>.roles``;
- Microsoft Entra ID: ``roles`` (app roles, a list of strings);
- NHS CIS2: ``nhsid_nrbac_roles`` (a list of objects); the entry whose ``person_roleid`` equals the
  ``selected_roleid`` claim is the role the user chose at sign-in, and its ``role_code``
  (``S8000:G8000:R8000``) or any of the code's parts is looked up in ``role_map``.
"""

from __future__ import annotations

from typing import Any

from gateway.security.principal import Role
from gateway.sso.config import OidcProvider, RoleClaimFormat


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``), or ``None``; a literal key wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _claim_values(provider: OidcProvider, claims: dict[str, Any]) -> list[str]:
    value = claim_at(claims, provider.roles_claim)
    if provider.roles_claim_format is RoleClaimFormat.cis2_nrbac:
        selected = claims.get("selected_roleid")
        if not isinstance(value, list) or not isinstance(selected, str):
            return []
        for entry in value:
            if isinstance(entry, dict) and entry.get("person_roleid") == selected:
                code = entry.get("role_code")
                if isinstance(code, str):
                    return [code, *code.split(":")]
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def mapped_roles(provider: OidcProvider, claims: dict[str, Any]) -> frozenset[Role]:
    """The gateway roles the claims give under ``provider.role_map`` (may be empty)."""
    roles: set[Role] = set()
    for value in _claim_values(provider, claims):
        roles.update(provider.role_map.get(value, ()))
    return frozenset(roles)
