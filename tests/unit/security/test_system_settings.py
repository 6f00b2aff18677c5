"""The settings registry: strict typing, bounds and choices."""

from __future__ import annotations

import pytest

from gateway.errors import UnprocessableEntity
from gateway.system_settings import SYSTEM_SETTINGS, USER_SETTINGS, definition_of


def test_every_definition_has_a_valid_default_and_description() -> None:
    for registry in (SYSTEM_SETTINGS, USER_SETTINGS):
        for definition in registry.values():
            assert definition.validate(definition.default) == definition.default
            assert definition.description


def test_keys_other_features_rely_on_exist() -> None:
    assert SYSTEM_SETTINGS["break_glass_duration_minutes"].default == 480
    assert SYSTEM_SETTINGS["require_2fa_for_admins"].type == "bool"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lockout_threshold", "5"),
        ("lockout_threshold", True),
        ("lockout_threshold", 5.0),
        ("lockout_threshold", 0),
        ("require_2fa_for_admins", 1),
        ("require_2fa_for_admins", "true"),
    ],
)
def test_wrong_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(UnprocessableEntity) as raised:
        SYSTEM_SETTINGS[key].validate(value)
    assert raised.value.code == "invalid_setting_value"


def test_unknown_key() -> None:
    with pytest.raises(UnprocessableEntity) as raised:
        definition_of(USER_SETTINGS, "nope")
    assert raised.value.code == "unknown_setting"


def test_time_zone_must_exist() -> None:
    definition = USER_SETTINGS["timezone"]
    assert definition.validate("Europe/Berlin") == "Europe/Berlin"
    for bad in ["Mars/Olympus", "../../etc/passwd", "", "Europe/"]:
        with pytest.raises(UnprocessableEntity):
            definition.validate(bad)
