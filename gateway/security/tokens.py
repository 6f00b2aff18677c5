"""Access tokens (JWT, HS256) and opaque refresh tokens.

Access tokens carry ``iss``, ``aud``, ``sub`` (user id), ``exp``, ``iat``, ``jti``, ``typ`` (always
``"access"``) and ``sid`` (the session family id). Only HS256 is accepted, with a key derived from
the master secret for the purpose ``"jwt"``. Refresh tokens are random strings, never JWTs: the
database keeps only their SHA-256 hash, so they can neither be decoded nor be used as access tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

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


def new_refresh_token() -> str:
    """A fresh opaque refresh token (256 bits of randomness)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a refresh token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()
