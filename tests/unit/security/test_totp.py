"""TOTP codes, secret encryption and recovery codes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyotp

from gateway.security.totp import (
    TotpCipher,
    hash_recovery_code,
    matching_step,
    new_recovery_codes,
    new_secret,
    provisioning_uri,
)
from gateway.settings import Settings

NOW = datetime(2026, 11, 22, 12, 0, 10, tzinfo=UTC)


def test_codes_match_their_step_within_one_step_either_side() -> None:
    secret = new_secret()
    totp = pyotp.TOTP(secret)
    step = int(NOW.timestamp()) // 30
    assert matching_step(secret, totp.at(NOW), now=NOW) == step
    assert matching_step(secret, totp.at(NOW - timedelta(seconds=30)), now=NOW) == step - 1
    assert matching_step(secret, totp.at(NOW + timedelta(seconds=30)), now=NOW) == step + 1
    assert matching_step(secret, totp.at(NOW + timedelta(seconds=90)), now=NOW) is None
    assert matching_step(secret, "abcdef", now=NOW) is None
    assert matching_step(secret, "", now=NOW) is None


def test_secret_encryption_round_trip_and_wrong_key(make_settings: Callable[..., Settings]) -> None:
    cipher = TotpCipher(make_settings())
    secret = new_secret()
    token = cipher.encrypt(secret)
    assert secret not in token
    assert cipher.decrypt(token) == secret
    other = TotpCipher(make_settings(totp_encryption_key="ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="))
    assert other.decrypt(token) is None


def test_development_key_is_derived_when_unset(make_settings: Callable[..., Settings]) -> None:
    cipher = TotpCipher(make_settings(totp_encryption_key=None))
    assert cipher.decrypt(cipher.encrypt("ABC")) == "ABC"


def test_provisioning_uri_names_issuer_and_user() -> None:
    uri = provisioning_uri(new_secret(), "carol")
    assert uri.startswith("otpauth://totp/")
    assert "carol" in uri
    assert "issuer=" in uri


def test_recovery_codes_are_ten_distinct_and_hash_ignores_format() -> None:
    codes = new_recovery_codes()
    assert len(set(codes)) == 10
    assert all(len(code.replace("-", "")) == 24 for code in codes)
    assert hash_recovery_code(codes[0]) == hash_recovery_code(codes[0].upper().replace("-", " "))
    assert hash_recovery_code(codes[0]) != hash_recovery_code(codes[1])
