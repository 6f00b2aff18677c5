"""ID token and logout token validation: clock skew, algorithm confusion, hostile tokens, every claim rule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from gateway.sso.tokens import (
    MAX_TOKEN_BYTES,
    TokenRejected,
    UnknownKey,
    validate_id_token,
    validate_logout_token,
)
from tests.unit.sso.providers import ISSUER, provider

NOW = 1_800_000_000
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
KEYS = KeySet([RSAKey.import_key(KEY.as_dict(private=False))])
EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": "gateway", "sub": "u1", "iat": NOW, "exp": NOW + 300, "nonce": "n-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = KEY, **header: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": "k1", **header}, payload, key)


def check(token: str, now: int = NOW, **provider_overrides: Any) -> dict[str, Any]:
    return validate_id_token(token, KEYS, provider=provider(**provider_overrides), nonce="n-1", now=now)


def reason(token: str, now: int = NOW, **provider_overrides: Any) -> str:
    with pytest.raises(TokenRejected) as caught:
        check(token, now, **provider_overrides)
    return caught.value.reason


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class TestValidIdToken:
    def test_accepts_a_valid_token(self) -> None:
        assert check(sign(claims()))["sub"] == "u1"

    def test_audience_list_with_azp(self) -> None:
        assert check(sign(claims(aud=["gateway", "account"], azp="gateway")))["sub"] == "u1"


class TestClockSkew:
    """The default leeway is 120 s: a skew of 90 s either way passes, 150 s does not."""

    def test_provider_clock_90_s_ahead(self) -> None:
        assert check(sign(claims(iat=NOW + 90, exp=NOW + 390)))["sub"] == "u1"

    def test_provider_clock_90_s_behind(self) -> None:
        assert check(sign(claims(iat=NOW - 390, exp=NOW - 90)))["sub"] == "u1"

    def test_issued_150_s_in_the_future(self) -> None:
        assert reason(sign(claims(iat=NOW + 150, exp=NOW + 450))) == "issued_in_future"

    def test_expired_150_s_ago(self) -> None:
        assert reason(sign(claims(iat=NOW - 450, exp=NOW - 150))) == "expired"

    def test_leeway_zero_is_exact(self) -> None:
        assert reason(sign(claims(exp=NOW - 1)), leeway_seconds=0) == "expired"

    def test_not_before(self) -> None:
        assert reason(sign(claims(nbf=NOW + 200))) == "not_yet_valid"


class TestAlgorithmConfusion:
    def test_alg_none(self) -> None:
        header = b64({"alg": "none", "kid": "k1"})
        token = f"{header}.{b64(claims())}."
        assert reason(token) == "algorithm_not_allowed"

    def test_hs256_keyed_with_the_public_key(self) -> None:
        # The classic forgery: an HMAC whose secret is the provider's (public) key. joserfc refuses to make
        # such a key, so the token is made by hand.
        public_pem = KEY.as_pem(private=False)
        signing_input = f"{b64({'alg': 'HS256', 'kid': 'k1'})}.{b64(claims())}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        assert reason(forged) == "algorithm_not_allowed"

    def test_an_algorithm_outside_the_allow_list(self) -> None:
        token = jwt.encode({"alg": "RS512", "kid": "k1"}, claims(), KEY, algorithms=["RS512"])
        assert reason(token) == "algorithm_not_allowed"

    def test_hmac_cannot_be_configured(self) -> None:
        with pytest.raises(ValueError, match="asymmetric"):
            provider(algorithms=["HS256"])

    def test_a_key_of_another_type_under_the_same_kid(self) -> None:
        ec = ECKey.generate_key("P-256", parameters={"kid": "k1"})
        token = jwt.encode({"alg": "ES256", "kid": "k1"}, claims(), ec)
        assert reason(token) in {"bad_signature", "malformed"}


class TestHostileTokens:
    def test_oversized(self) -> None:
        token = sign(claims(padding="x" * MAX_TOKEN_BYTES))
        assert reason(token) == "malformed"

    @pytest.mark.parametrize(
        "token",
        ["", "garbage", "a.b", "a.b.c.d", "!!!.???.###", f"{b64({'alg': 'RS256'})}.%%%.sig", "é.é.é"],
    )
    def test_garbled(self, token: str) -> None:
        assert reason(token) in {"malformed", "algorithm_not_allowed", "bad_signature"}

    def test_tampered_payload(self) -> None:
        header, _, signature = sign(claims()).split(".")
        token = f"{header}.{b64(claims(sub='admin'))}.{signature}"
        assert reason(token) == "bad_signature"

    def test_signed_by_another_key_with_a_known_kid(self) -> None:
        other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        assert reason(sign(claims(), key=other)) == "bad_signature"

    def test_unknown_kid_asks_for_a_refetch(self) -> None:
        with pytest.raises(UnknownKey) as caught:
            check(sign(claims(), kid="k9"))
        assert caught.value.kid == "k9"


class TestClaims:
    @pytest.mark.parametrize(
        ("payload", "expected"),
        [
            (claims(iss="https://idp.test/realms/other"), "wrong_issuer"),
            (claims(iss=ISSUER + "/"), "wrong_issuer"),
            (claims(aud="other-service"), "wrong_audience"),
            (claims(aud=["gateway", "other"]), "wrong_audience"),  # several audiences need azp
            (claims(azp="other-service"), "wrong_audience"),
            (claims(nonce="n-2"), "nonce_mismatch"),
            (claims(nonce=None), "nonce_mismatch"),
            (claims(sub=None), "missing_claim"),
            (claims(exp=None), "missing_claim"),
            (claims(iat=None), "missing_claim"),
            (claims(exp="tomorrow"), "invalid_claim"),
        ],
    )
    def test_refused(self, payload: dict[str, Any], expected: str) -> None:
        assert reason(sign(payload)) == expected

    def test_required_acr(self) -> None:
        token = sign(claims(acr="1"))
        assert reason(token, required_acr=["AAL3_ANY"]) == "acr_not_met"
        assert check(sign(claims(acr="AAL3_ANY")), required_acr=["AAL3_ANY"])["acr"] == "AAL3_ANY"


class TestLogoutToken:
    def logout(self, **overrides: Any) -> dict[str, Any]:
        base = {"iss": ISSUER, "aud": "gateway", "iat": NOW, "exp": NOW + 120, "jti": "j1", "events": EVENT}
        base |= {"sid": "s1"}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def check(self, token: str) -> dict[str, Any]:
        return validate_logout_token(token, KEYS, provider=provider(), now=NOW)

    def test_valid(self) -> None:
        assert self.check(sign(self.logout(), typ="logout+jwt"))["sid"] == "s1"
        untyped = jwt.encode(
            {"alg": "RS256", "kid": "k1"}, self.logout(sid=None, sub="u1"), KEY, default_type=None
        )
        assert self.check(untyped)["sub"] == "u1"

    @pytest.mark.parametrize(
        ("payload", "header"),
        [
            ({"nonce": "n"}, {}),
            ({"events": {}}, {}),
            ({"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}, {}),
            ({"sid": None}, {}),
            ({"jti": None}, {}),
            ({"iat": None}, {}),
            ({"aud": "other"}, {}),
            ({"iss": "https://evil.test"}, {}),
            ({}, {"typ": "JWT"}),
            ({"exp": NOW - 600}, {}),
        ],
    )
    def test_refused(self, payload: dict[str, Any], header: dict[str, Any]) -> None:
        overrides = dict(payload)
        if overrides.get("sid", "keep") is None:
            overrides["sub"] = None
        with pytest.raises(TokenRejected):
            self.check(sign(self.logout(**overrides), **({"typ": "logout+jwt"} | header)))


def test_real_time_is_not_used() -> None:
    """The functions take ``now``: a token valid at NOW is expired at the real time of this run."""
    assert time.time() > NOW or check(sign(claims()))
