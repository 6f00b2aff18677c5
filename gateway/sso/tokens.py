"""Validation of the tokens an identity provider sends: the ID token and the back-channel logout token.

Signatures and claims are checked with joserfc; nothing here parses JOSE by hand. Both functions are pure
(the keys and the time come in as arguments) so that clock skew, algorithm confusion and every claim rule
are tested without a provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from joserfc.jwt import ClaimsOption

from gateway.sso.config import OidcProvider

#: A token larger than this is refused before any parsing (ID tokens are a few kilobytes).
MAX_TOKEN_BYTES = 16_384
#: The event a back-channel logout token must carry (OpenID Connect Back-Channel Logout 1.0, 2.4).
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


class TokenRejected(Exception):
    """A token failed validation; ``reason`` is a stable code for the audit trail and the error page."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UnknownKey(TokenRejected):
    """The token names a ``kid`` the cached key set lacks: refetch the keys once, then retry."""

    def __init__(self, kid: str | None) -> None:
        super().__init__("unknown_key", f"kid {kid!r} is not in the provider's key set")
        self.kid = kid


@dataclass(frozen=True, slots=True)
class TokenHeader:
    """The unverified protected header: only used to pick the key and refuse bad algorithms early."""

    alg: str
    kid: str | None
    typ: str | None


def read_header(token: str, provider: OidcProvider) -> TokenHeader:
    """The token's header, after the size, form and algorithm allow-list checks.

    Raises:
        TokenRejected: ``malformed`` or ``algorithm_not_allowed`` (``none``, HMAC, anything not listed).
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected("malformed", "token too large")
    if token.count(".") != 2:
        raise TokenRejected("malformed", "not a compact JWS")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError) as exc:
        raise TokenRejected("malformed", type(exc).__name__) from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in provider.algorithms:
        raise TokenRejected("algorithm_not_allowed", f"alg {alg!r}")
    kid = header.get("kid")
    typ = header.get("typ")
    return TokenHeader(alg, kid if isinstance(kid, str) else None, typ if isinstance(typ, str) else None)


def _verify_signature(
    token: str, header: TokenHeader, keys: KeySet, provider: OidcProvider
) -> dict[str, Any]:
    if header.kid is not None and header.kid not in {key.kid for key in keys}:
        raise UnknownKey(header.kid)
    try:
        decoded = jwt.decode(token, keys, algorithms=provider.algorithms)
    except BadSignatureError:
        raise TokenRejected("bad_signature") from None
    except JoseError as exc:
        raise TokenRejected("malformed", type(exc).__name__) from None
    return decoded.claims


def _registry(provider: OidcProvider, now: int, *essential: str) -> jwt.JWTClaimsRegistry:
    """Claims rules for a token of ``provider``: exact ``iss``, ``aud`` naming the client, ``essential``."""
    return jwt.JWTClaimsRegistry(
        now=now,
        leeway=provider.leeway_seconds,
        iss={"essential": True, "value": provider.issuer},
        aud={"essential": True, "value": provider.client_id},
        **{name: ClaimsOption(essential=True) for name in essential},
    )


def _check_claims(registry: jwt.JWTClaimsRegistry, claims: dict[str, Any]) -> None:
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise TokenRejected("expired") from None
    except MissingClaimError as exc:
        raise TokenRejected("missing_claim", exc.claim) from None
    except InvalidClaimError as exc:
        reason = {
            "iss": "wrong_issuer",
            "aud": "wrong_audience",
            "iat": "issued_in_future",
            "nbf": "not_yet_valid",
        }
        raise TokenRejected(reason.get(exc.claim, "invalid_claim"), exc.claim) from None


def _check_azp(claims: dict[str, Any], client_id: str) -> None:
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if azp is not None and azp != client_id:
        raise TokenRejected("wrong_audience", "azp is another client")
    if len(audiences) > 1 and azp is None:
        raise TokenRejected("wrong_audience", "several audiences and no azp")


def validate_id_token(
    token: str, keys: KeySet, *, provider: OidcProvider, nonce: str, now: int
) -> dict[str, Any]:
    """The claims of a valid ID token (OpenID Connect Core 1.0, 3.1.3.7).

    Checks: size and form; the algorithm allow-list; the signature with the provider's keys; exact
    ``iss``; ``aud`` contains the client and ``azp`` (when present, or when there are several audiences)
    is the client; ``exp``, ``iat`` and ``nbf`` within ``provider.leeway_seconds``; ``sub``; ``nonce``
    equal to the one this login sent; ``acr`` among ``provider.required_acr`` when that is set.

    Raises:
        UnknownKey: the ``kid`` is not in ``keys`` (refresh the key set, then call again).
        TokenRejected: any other failure, with a stable ``reason``.
    """
    header = read_header(token, provider)
    claims = _verify_signature(token, header, keys, provider)
    _check_claims(_registry(provider, now, "sub", "exp", "iat"), claims)
    _check_azp(claims, provider.client_id)
    if claims.get("nonce") != nonce:
        raise TokenRejected("nonce_mismatch")
    if provider.required_acr and claims.get("acr") not in provider.required_acr:
        raise TokenRejected("acr_not_met", f"acr {claims.get('acr')!r}")
    return claims


def validate_logout_token(token: str, keys: KeySet, *, provider: OidcProvider, now: int) -> dict[str, Any]:
    """The claims of a valid back-channel logout token (Back-Channel Logout 1.0, 2.6).

    Checks, beyond the signature, ``iss`` and ``aud`` as for an ID token: ``typ`` is ``logout+jwt`` when
    present; ``iat`` and ``exp`` (when present) within the leeway; ``jti``; the logout event in
    ``events``; a ``sid`` or a ``sub``; no ``nonce``. The ``jti`` replay guard is the caller's.

    Raises:
        UnknownKey: the ``kid`` is not in ``keys``.
        TokenRejected: any other failure.
    """
    header = read_header(token, provider)
    if header.typ is not None and header.typ.lower() not in {"logout+jwt", "application/logout+jwt"}:
        raise TokenRejected("malformed", f"typ {header.typ!r}")
    claims = _verify_signature(token, header, keys, provider)
    _check_claims(_registry(provider, now, "iat", "jti"), claims)
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise TokenRejected("invalid_claim", "events lacks the back-channel logout event")
    if "nonce" in claims:
        raise TokenRejected("invalid_claim", "a logout token must not carry a nonce")
    sid, sub = claims.get("sid"), claims.get("sub")
    if not isinstance(sid, str) and not isinstance(sub, str):
        raise TokenRejected("missing_claim", "sid or sub")
    return claims
