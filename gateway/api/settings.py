"""``/settings``: per-user settings (every user, their own) and system settings (``settings:admin``).

Each key is declared once in :mod:`gateway.system_settings` with type, default and description;
an unknown key is ``422 unknown_setting`` and a value of the wrong type ``422 invalid_setting_value``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionDep
from gateway.errors import problem_responses
from gateway.schemas.accounts import SettingItem, SettingWrite
from gateway.security.deps import CurrentPrincipal, require
from gateway.security.principal import Permission, Principal
from gateway.system_settings import (
    SYSTEM_SETTINGS,
    USER_SETTINGS,
    SettingDefinition,
    SettingValue,
    reset_system_setting,
    reset_user_setting,
    set_system_setting,
    set_user_setting,
    system_settings,
    user_settings,
)

router = APIRouter(prefix="/settings", tags=["settings"])
SettingsAdmin = Annotated[Principal, Depends(require(Permission.settings_admin))]
SettingKey = Annotated[str, Path(max_length=100, description="A declared setting key.")]
ERRORS = problem_responses(401, 403, 422)


def _item(definition: SettingDefinition, value: SettingValue, stored: bool) -> SettingItem:
    return SettingItem(
        key=definition.key,
        value=value,
        default=definition.default,
        type=definition.type,
        description=definition.description,
        is_default=not stored,
        minimum=definition.minimum,
        maximum=definition.maximum,
        choices=list(definition.choices) if definition.choices else None,
    )


@router.get("/user", response_model=list[SettingItem], responses=problem_responses(401, 403))
async def read_user_settings(principal: CurrentPrincipal, session: SessionDep) -> list[SettingItem]:
    """Every per-user setting of the caller: effective value, default, type and description."""
    values = await user_settings(session, principal.user_id)
    return [_item(USER_SETTINGS[key], value, stored) for key, (value, stored) in values.items()]


@router.put("/user/{key}", response_model=SettingItem, responses=ERRORS)
async def write_user_setting(
    key: SettingKey, body: SettingWrite, principal: CurrentPrincipal, session: SessionDep
) -> SettingItem:
    """Set one of the caller's own settings."""
    value = await set_user_setting(session, principal.user_id, key, body.value)
    return _item(USER_SETTINGS[key], value, True)


@router.delete("/user/{key}", response_model=SettingItem, responses=ERRORS)
async def delete_user_setting(
    key: SettingKey, principal: CurrentPrincipal, session: SessionDep
) -> SettingItem:
    """Return one of the caller's settings to its default."""
    value = await reset_user_setting(session, principal.user_id, key)
    return _item(USER_SETTINGS[key], value, False)


@router.get("/system", response_model=list[SettingItem], responses=problem_responses(401, 403))
async def read_system_settings(admin: SettingsAdmin, session: SessionDep) -> list[SettingItem]:
    """Every system setting: effective value, default, type and description."""
    values = await system_settings(session)
    return [_item(SYSTEM_SETTINGS[key], value, stored) for key, (value, stored) in values.items()]


@router.put("/system/{key}", response_model=SettingItem, responses=ERRORS)
async def write_system_setting(
    key: SettingKey, body: SettingWrite, admin: SettingsAdmin, session: SessionDep, audit: AuditDep
) -> SettingItem:
    """Override a system setting (takes effect at once on every replica)."""
    value = await set_system_setting(session, key, body.value, updated_by=admin.user_id)
    audit.stage(
        session,
        action="admin.setting_update",
        outcome=Outcome.success,
        actor=admin.actor,
        target_type="setting",
        target_id=key,
        details={"value": value},
    )
    return _item(SYSTEM_SETTINGS[key], value, True)


@router.delete("/system/{key}", response_model=SettingItem, responses=ERRORS)
async def delete_system_setting(
    key: SettingKey, admin: SettingsAdmin, session: SessionDep, audit: AuditDep
) -> SettingItem:
    """Remove the override of a system setting (its default applies again)."""
    value = await reset_system_setting(session, key)
    audit.stage(
        session,
        action="admin.setting_reset",
        outcome=Outcome.success,
        actor=admin.actor,
        target_type="setting",
        target_id=key,
    )
    return _item(SYSTEM_SETTINGS[key], value, False)
