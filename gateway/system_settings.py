"""The registry of system and per-user settings: each key declared once, with type, default and description.

Stored overrides live in the ``system_setting`` and ``user_setting`` tables; the effective value of a
key is the stored override when there is one, else the declared default. Values are validated
strictly (``5`` is an int, ``"5"`` and ``true`` are not), so an unknown key or a value of the wrong
type is refused with ``422`` before anything is stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import SystemSetting, UserSetting
from auth_db.types import utcnow
from gateway.errors import UnprocessableEntity

SettingValue = int | bool | str
SettingType = Literal["int", "bool", "str"]


@dataclass(frozen=True, slots=True)
class SettingDefinition:
    """One declared setting: its key, type, default, description and allowed values."""

    key: str
    type: SettingType
    default: SettingValue
    description: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] | None = None
    max_length: int = 200
    #: An extra check of string values: returns an error message, or None when the value is fine.
    check: Callable[[str], str | None] | None = None

    def validate(self, value: object) -> SettingValue:
        """Return ``value`` if it fits this definition.

        Raises:
            UnprocessableEntity: ``invalid_setting_value`` with the reason.
        """
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            raise _invalid(self.key, "expected true or false")
        if self.type == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _invalid(self.key, "expected an integer")
            if self.minimum is not None and value < self.minimum:
                raise _invalid(self.key, f"must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise _invalid(self.key, f"must be at most {self.maximum}")
            return value
        if not isinstance(value, str):
            raise _invalid(self.key, "expected a string")
        if self.choices is not None and value not in self.choices:
            raise _invalid(self.key, f"must be one of {', '.join(self.choices)}")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise _invalid(self.key, "must not contain control characters")
        if len(value) > self.max_length:
            raise _invalid(self.key, f"must be at most {self.max_length} characters")
        problem = self.check(value) if self.check is not None else None
        if problem is not None:
            raise _invalid(self.key, problem)
        return value


def _time_zone_problem(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        return "must be an IANA time zone such as Europe/Berlin"
    return None


def _invalid(key: str, reason: str) -> UnprocessableEntity:
    return UnprocessableEntity(f"Invalid value for setting '{key}': {reason}.", code="invalid_setting_value")


def _registry(*definitions: SettingDefinition) -> dict[str, SettingDefinition]:
    return {definition.key: definition for definition in definitions}


#: System settings (admins read and write them through ``/settings/system``).
SYSTEM_SETTINGS: dict[str, SettingDefinition] = _registry(
    SettingDefinition(
        "session_idle_timeout_minutes",
        "int",
        60,
        "A session ends when it has not been refreshed for this many minutes.",
        minimum=5,
        maximum=24 * 60,
    ),
    SettingDefinition(
        "session_absolute_lifetime_minutes",
        "int",
        12 * 60,
        "A session ends this many minutes after login, however active it is.",
        minimum=15,
        maximum=30 * 24 * 60,
    ),
    SettingDefinition(
        "refresh_reuse_grace_seconds",
        "int",
        5,
        "A refresh token presented again this many seconds after it was used (two tabs refreshing at "
        "once) gets the same successor instead of ending the session; 0 disables the grace.",
        minimum=0,
        maximum=60,
    ),
    SettingDefinition(
        "lockout_threshold",
        "int",
        5,
        "Failed logins for one account within the window before further attempts are refused.",
        minimum=1,
        maximum=1000,
    ),
    SettingDefinition(
        "lockout_ip_threshold",
        "int",
        50,
        "Failed logins from one client address within the window before it is refused.",
        minimum=1,
        maximum=100_000,
    ),
    SettingDefinition(
        "lockout_window_minutes",
        "int",
        15,
        "The window in which failed logins are counted.",
        minimum=1,
        maximum=24 * 60,
    ),
    SettingDefinition(
        "lockout_duration_minutes",
        "int",
        15,
        "How long login attempts are refused once a threshold is reached.",
        minimum=1,
        maximum=24 * 60,
    ),
    SettingDefinition(
        "require_2fa_for_admins",
        "bool",
        False,
        "Administrators must enrol TOTP two-factor authentication before using anything but "
        "their own account endpoints.",
    ),
    SettingDefinition(
        "break_glass_duration_minutes",
        "int",
        480,
        "How long an emergency (break-glass) access grant lasts.",
        minimum=5,
        maximum=7 * 24 * 60,
    ),
)

#: Per-user settings (every user reads and writes their own through ``/settings/user``).
USER_SETTINGS: dict[str, SettingDefinition] = _registry(
    SettingDefinition(
        "language", "str", "en", "Preferred interface language.", choices=("en", "de", "fr", "nl")
    ),
    SettingDefinition(
        "timezone",
        "str",
        "UTC",
        "IANA time zone for displaying times.",
        max_length=64,
        check=_time_zone_problem,
    ),
    SettingDefinition(
        "theme", "str", "system", "Colour theme of the frontend.", choices=("system", "light", "dark")
    ),
    SettingDefinition("page_size", "int", 25, "Rows per page in lists.", minimum=5, maximum=200),
)

IntSystemKey = Literal[
    "session_idle_timeout_minutes",
    "session_absolute_lifetime_minutes",
    "refresh_reuse_grace_seconds",
    "lockout_threshold",
    "lockout_ip_threshold",
    "lockout_window_minutes",
    "lockout_duration_minutes",
    "break_glass_duration_minutes",
]
BoolSystemKey = Literal["require_2fa_for_admins"]


def definition_of(registry: dict[str, SettingDefinition], key: str) -> SettingDefinition:
    """The definition of ``key``.

    Raises:
        UnprocessableEntity: ``unknown_setting`` when the key is not declared.
    """
    definition = registry.get(key)
    if definition is None:
        raise UnprocessableEntity(f"There is no setting named '{key}'.", code="unknown_setting")
    return definition


def effective_system_setting(key: str, stored: object) -> SettingValue:
    """The effective value of system setting ``key`` given its stored override (None: not stored)."""
    return _effective(definition_of(SYSTEM_SETTINGS, key), stored)


def _effective(definition: SettingDefinition, stored: object) -> SettingValue:
    """The stored value if it still fits the definition (rules may have tightened), else the default."""
    if stored is None:
        return definition.default
    try:
        return definition.validate(stored)
    except UnprocessableEntity:
        return definition.default


@overload
async def get_system_setting(session: AsyncSession, key: IntSystemKey) -> int: ...
@overload
async def get_system_setting(session: AsyncSession, key: BoolSystemKey) -> bool: ...
@overload
async def get_system_setting(session: AsyncSession, key: str) -> SettingValue: ...
async def get_system_setting(session: AsyncSession, key: str) -> SettingValue:
    """The effective value of the system setting ``key`` (stored override, else the default).

    Raises:
        UnprocessableEntity: ``unknown_setting`` when the key is not declared.
    """
    definition = definition_of(SYSTEM_SETTINGS, key)
    row = await session.get(SystemSetting, key)
    return _effective(definition, row.value if row is not None else None)


async def system_settings(session: AsyncSession) -> dict[str, tuple[SettingValue, bool]]:
    """Every system setting as ``key -> (effective value, is it a stored override)``."""
    rows = {row.key: row.value for row in (await session.exec(select(SystemSetting))).all()}
    return {key: (_effective(d, rows.get(key)), key in rows) for key, d in SYSTEM_SETTINGS.items()}


async def set_system_setting(
    session: AsyncSession, key: str, value: object, *, updated_by: uuid.UUID | None
) -> SettingValue:
    """Validate and store an override of a system setting; returns the stored value."""
    checked = definition_of(SYSTEM_SETTINGS, key).validate(value)
    row = await session.get(SystemSetting, key)
    if row is None:
        session.add(SystemSetting(key=key, value=checked, updated_by=updated_by))
    else:
        row.value, row.updated_at, row.updated_by = checked, utcnow(), updated_by
        session.add(row)
    await session.flush()
    return checked


async def reset_system_setting(session: AsyncSession, key: str) -> SettingValue:
    """Remove the override of a system setting; returns the default now in effect."""
    definition = definition_of(SYSTEM_SETTINGS, key)
    row = await session.get(SystemSetting, key)
    if row is not None:
        await session.delete(row)
        await session.flush()
    return definition.default


async def user_settings(session: AsyncSession, user_id: uuid.UUID) -> dict[str, tuple[SettingValue, bool]]:
    """Every per-user setting of ``user_id`` as ``key -> (effective value, is it a stored override)``."""
    statement = select(UserSetting).where(UserSetting.user_id == user_id)
    rows = {row.key: row.value for row in (await session.exec(statement)).all()}
    return {key: (_effective(d, rows.get(key)), key in rows) for key, d in USER_SETTINGS.items()}


async def set_user_setting(
    session: AsyncSession, user_id: uuid.UUID, key: str, value: object
) -> SettingValue:
    """Validate and store one of the user's own settings; returns the stored value."""
    checked = definition_of(USER_SETTINGS, key).validate(value)
    row = await session.get(UserSetting, (user_id, key))
    if row is None:
        session.add(UserSetting(user_id=user_id, key=key, value=checked))
    else:
        row.value, row.updated_at = checked, utcnow()
        session.add(row)
    await session.flush()
    return checked


async def reset_user_setting(session: AsyncSession, user_id: uuid.UUID, key: str) -> SettingValue:
    """Remove the user's override of ``key``; returns the default now in effect."""
    definition = definition_of(USER_SETTINGS, key)
    row = await session.get(UserSetting, (user_id, key))
    if row is not None:
        await session.delete(row)
        await session.flush()
    return definition.default
