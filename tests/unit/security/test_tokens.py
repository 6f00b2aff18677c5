"""Access-token issuing and verification; refresh tokens are opaque and stored hashed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from gateway.security.keys import derive_key
from gateway.security.tokens import (
    AccessTokenVerifier,
    InvalidToken,
    decode_access_token,
    hash_token,
    issue_access_token,
    new_refresh_token,
)
from gateway.settings import Settings


def test_round_trip(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    user, family = uuid.uuid4(), uuid.uuid4()
    token, ttl = issue_access_token(settings, user_id=user, session_family=family, now=datetime.now(UTC))
    claims = decode_access_token(settings, token)
    assert (claims.user_id, claims.session_family, ttl) == (user, family, 900)


def test_key_is_derived_per_purpose(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert derive_key(settings, "jwt") != derive_key(settings, "other")
    assert derive_key(settings, "jwt") != settings.gateway_secret_key.get_secret_value().encode()  # type: ignore[union-attr]
    other = make_settings(gateway_secret_key="another-secret-key-0123456789abcdefghijklmnop")
    token, _ = issue_access_token(
        settings, user_id=uuid.uuid4(), session_family=uuid.uuid4(), now=datetime.now(UTC)
    )
    with pytest.raises(InvalidToken):
        decode_access_token(other, token)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_other_issuer_or_algorithm_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    token, _ = issue_access_token(
        settings, user_id=uuid.uuid4(), session_family=uuid.uuid4(), now=datetime.now(UTC)
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    key = derive_key(settings, "jwt")
    for forged in [
        jwt.encode({**claims, "iss": "elsewhere"}, key, algorithm="HS256"),
        jwt.encode(claims, key, algorithm="HS512"),
        jwt.encode({k: v for k, v in claims.items() if k != "sid"}, key, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims.items() if k != "typ"}, key, algorithm="HS256"),
        jwt.encode({**claims, "sub": "not-a-uuid"}, key, algorithm="HS256"),
    ]:
        with pytest.raises(InvalidToken):
            decode_access_token(settings, forged)


def test_expired_token_names_the_reason(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    past = datetime.now(UTC) - timedelta(hours=1)
    token, _ = issue_access_token(settings, user_id=uuid.uuid4(), session_family=uuid.uuid4(), now=past)
    with pytest.raises(InvalidToken, match="ExpiredSignatureError"):
        decode_access_token(settings, token)


def test_refresh_tokens_are_random_and_hashed() -> None:
    first, second = new_refresh_token(), new_refresh_token()
    assert first != second
    assert len(first) >= 43
    assert hash_token(first) != first
    assert len(hash_token(first)) == 64
    assert hash_token(first) == hash_token(first)


def test_the_verifier_remembers_only_valid_tokens(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    verifier = AccessTokenVerifier(settings)
    user, family = uuid.uuid4(), uuid.uuid4()
    token, _ = issue_access_token(settings, user_id=user, session_family=family, now=datetime.now(UTC))
    first, again = verifier.verify(token), verifier.verify(token)
    assert first == again == decode_access_token(settings, token)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    foreign, _ = issue_access_token(
        make_settings(gateway_secret_key="another-secret-key-0123456789abcdefghijklmnop"),
        user_id=user,
        session_family=family,
        now=datetime.now(UTC),
    )
    for bad in (forged, foreign, forged):
        with pytest.raises(InvalidToken):
            verifier.verify(bad)


def test_a_remembered_token_is_refused_once_expired(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(access_token_ttl_seconds=30)
    verifier = AccessTokenVerifier(settings)
    # expired 8 s ago: still inside decoding's 10 s leeway for about 2 s more
    expires = int(time.time()) - 8
    token, _ = issue_access_token(
        settings,
        user_id=uuid.uuid4(),
        session_family=uuid.uuid4(),
        now=datetime.fromtimestamp(expires - 30, UTC),
    )
    verifier.verify(token)
    time.sleep(max(0.0, expires + 10.2 - time.time()))
    with pytest.raises(InvalidToken, match="ExpiredSignatureError"):
        verifier.verify(token)
