"""Access tokens (JWT, HS256) and opaque refresh tokens.

Access tokens carry ``iss``, ``aud``, ``sub`` (user id), ``exp``, ``iat``, ``jti``, ``typ`` (always
``"access"``) and ``sid`` (the session family id). Only HS256 is accepted, with a key derived from
the master secret for the purpose ``"jwt"``. Refresh tokens are random strings, never JWTs: the
database keeps only their SHA-256 hash, so they can neither be decoded nor be used as access tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cachetools import LRUCache

from gateway.security.keys import derive_key
from gateway.settings import Settings

ALGORITHM = "HS256"
ALLOWED_ALGORITHMS = [ALGORITHM]
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti", "typ", "sid"]


class InvalidToken(Exception):
    """The token is malformed, forged, expired, of the wrong type or for another audience."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified claims of an access token."""

    user_id: uuid.UUID
    session_family: uuid.UUID
    jti: str
    expires_at: datetime


def issue_access_token(
    settings: Settings, *, user_id: uuid.UUID, session_family: uuid.UUID, now: datetime
) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds."""
    ttl = settings.access_token_ttl_seconds
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl)).timestamp()),
        "jti": uuid.uuid4().hex,
        "typ": ACCESS_TYPE,
        "sid": str(session_family),
    }
    return jwt.encode(claims, derive_key(settings, "jwt"), algorithm=ALGORITHM), ttl


def decode_access_token(settings: Settings, token: str) -> AccessClaims:
    """Verify signature, algorithm, issuer, audience, expiry and type of an access token.

    Raises:
        InvalidToken: for any problem; the reason is deliberately not told to clients.
    """
    try:
        claims = jwt.decode(
            token,
            derive_key(settings, "jwt"),
            algorithms=ALLOWED_ALGORITHMS,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": REQUIRED_CLAIMS},
            leeway=10,
        )
        if claims.get("typ") != ACCESS_TYPE:
            raise InvalidToken("not an access token")
        return AccessClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            session_family=uuid.UUID(str(claims["sid"])),
            jti=str(claims["jti"]),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(type(exc).__name__) from None


class AccessTokenVerifier:
    """:func:`decode_access_token` with a bounded memo of the tokens this process has already verified.

    A token string and the key decide the outcome of the signature, algorithm, issuer, audience and type
    checks once and for all, so a token seen before is not verified again until its ``exp``; after that
    it goes through :func:`decode_access_token` (which applies the leeway and says ``token_expired``).
    Only tokens that passed are remembered; one verifier per app (its settings hold the key).
    """

    def __init__(self, settings: Settings, *, max_entries: int = 4096) -> None:
        self.settings = settings
        self._verified: LRUCache[str, tuple[float, AccessClaims]] = LRUCache(maxsize=max_entries)

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid access token.

        Raises:
            InvalidToken: as :func:`decode_access_token`.
        """
        known = self._verified.get(token)
        if known is not None and time.time() < known[0]:
            return known[1]
        claims = decode_access_token(self.settings, token)
        self._verified[token] = (claims.expires_at.timestamp(), claims)
        return claims


def new_refresh_token() -> str:
    """A fresh opaque refresh token (256 bits of randomness)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a refresh token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()
