"""Password hashing (argon2id, rehash on parameter change, dummy hash) and the password policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.errors import UnprocessableEntity
from gateway.security.passwords import PasswordService, check_password_policy, password_problems
from gateway.settings import Settings

GOOD = "Correct-Horse-Battery-Staple-9"


async def test_hash_is_argon2id_and_verifies(make_settings: Callable[..., Settings]) -> None:
    service = PasswordService(make_settings())
    hashed = await service.hash(GOOD)
    assert hashed.startswith("$argon2id$")
    assert "m=8192,t=1,p=1" in hashed
    assert await service.verify_and_update(GOOD, hashed) == (True, None)
    assert (await service.verify_and_update("wrong", hashed))[0] is False


async def test_changed_parameters_rehash_on_the_next_successful_login(
    make_settings: Callable[..., Settings],
) -> None:
    old = await PasswordService(make_settings()).hash(GOOD)
    stronger = PasswordService(make_settings(argon2_time_cost=2))
    valid, new_hash = await stronger.verify_and_update(GOOD, old)
    assert valid
    assert new_hash is not None
    assert "t=2" in new_hash
    assert await stronger.verify_and_update("wrong", old) == (False, None)


async def test_unknown_account_and_corrupt_hash_never_match(make_settings: Callable[..., Settings]) -> None:
    service = PasswordService(make_settings())
    assert await service.verify_and_update(GOOD, None) == (False, None)
    assert await service.verify_and_update(GOOD, "not-a-hash") == (False, None)
    assert await service.verify(GOOD, "$2b$12$bcrypt-looking") is False


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least 12"),
        ("a" * 129, "at most 128"),
        ("password1234", "too easy"),
        ("qwertyuiop12", "too easy"),
        ("aaaaaaaaaaaaaaaa", "too easy"),
    ],
)
def test_policy_refuses(password: str, reason: str) -> None:
    problems = password_problems(password)
    assert problems
    assert reason in problems[0]


def test_long_user_inputs_are_fine() -> None:
    assert password_problems(GOOD, ["x" * 200]) == []


def test_policy_considers_the_users_own_data() -> None:
    assert password_problems("dr.carolsmith", ["carolsmith"])
    with pytest.raises(UnprocessableEntity) as raised:
        check_password_policy("dr.carolsmith", ["carolsmith"])
    assert raised.value.code == "weak_password"


@pytest.mark.parametrize(
    "password",
    [
        GOOD,
        "lowercase only passphrase with words",
        "Zx81-spectrum-ql-C64!",
        "long passphrase " * 8,
        "é" * 2 + GOOD,
    ],
)
def test_policy_accepts_long_uncommon_passwords_without_composition_rules(password: str) -> None:
    assert password_problems(password) == []
