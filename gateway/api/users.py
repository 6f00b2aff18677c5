"""``/admin/users``: account administration (needs the ``user:admin`` permission).

Every change is audited (``admin.*`` actions). See ``docs/admin-guide.md``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.types import utcnow
from gateway.audit import AuditLog, Outcome
from gateway.deps import AuditDep, SessionDep, SettingsDep
from gateway.errors import ApiError, Conflict, UnprocessableEntity, problem_responses
from gateway.schemas.accounts import (
    PRINTABLE,
    PasswordReset,
    PasswordResetResult,
    SessionInfo,
    SessionsEnded,
    UserCreate,
    UserCreated,
    UserPage,
    UserPublic,
    UserUpdate,
)
from gateway.security import throttle
from gateway.security.deps import PasswordsDep, require
from gateway.security.passwords import check_password_policy, generate_password
from gateway.security.principal import Permission, Principal, Role
from gateway.security.sessions import revoke_user_sessions
from gateway.security.totp import clear_totp
from gateway.services import accounts
from gateway.services.cursors import SignedCursor, invalid_cursor
from gateway.services.identities import NO_LOCAL_PASSWORD, identities_of

router = APIRouter(prefix="/admin/users", tags=["admin: users"])
Admin = Annotated[Principal, Depends(require(Permission.user_admin))]
ERRORS = problem_responses(401, 403, 404, 422)


def stage_success(
    audit: AuditLog,
    session: AsyncSession,
    admin: Principal,
    action: str,
    user_id: uuid.UUID,
    details: dict[str, object] | None = None,
) -> None:
    """Record a successful change to an account in the request's transaction."""
    audit.stage(
        session,
        action=action,
        outcome=Outcome.success,
        actor=admin.actor,
        target_type="user",
        target_id=str(user_id),
        details=details,
    )


@asynccontextmanager
async def refusal_audited(
    audit: AuditLog,
    admin: Principal,
    action: str,
    user_id: uuid.UUID,
    *,
    reason: str | None = None,
    details: dict[str, object] | None = None,
) -> AsyncIterator[None]:
    """Record a ``denied`` event (in its own transaction) when the checks inside refuse the change."""
    try:
        yield
    except ApiError:
        await audit.record(
            action=action,
            outcome=Outcome.denied,
            actor=admin.actor,
            target_type="user",
            target_id=str(user_id),
            reason=reason,
            details=details,
        )
        raise


@router.post(
    "",
    response_model=UserCreated,
    status_code=status.HTTP_201_CREATED,
    responses=ERRORS | problem_responses(409),
)
async def create_user(
    body: UserCreate, admin: Admin, session: SessionDep, passwords: PasswordsDep, audit: AuditDep
) -> UserCreated:
    """Create an account; it must change its password at first login."""
    try:
        accounts.check_grantable(admin, body.roles)
    except ApiError:
        await audit.record(
            action="admin.user_create",
            outcome=Outcome.denied,
            actor=admin.actor,
            reason="role escalation",
            details={"roles": sorted(body.roles)},
        )
        raise
    temporary = None
    if body.sso_only:
        if body.initial_password is not None:
            raise UnprocessableEntity(
                "An SSO-only account has no local password; omit initial_password.", code="validation_error"
            )
        password_hash = NO_LOCAL_PASSWORD
    else:
        if body.initial_password is None:
            temporary = generate_password()
        else:
            check_password_policy(body.initial_password, [body.username, body.display_name, body.email or ""])
        password_hash = await passwords.hash(body.initial_password or temporary or "")
    user = await accounts.create_user(
        session,
        username=body.username,
        display_name=body.display_name,
        email=body.email,
        roles=body.roles,
        password_hash=password_hash,
        must_change_password=not body.sso_only,
        sso_only=body.sso_only,
    )
    audit.stage(
        session,
        action="admin.user_create",
        outcome=Outcome.success,
        actor=admin.actor,
        target_type="user",
        target_id=str(user.id),
        details={"roles": sorted(body.roles), "sso_only": body.sso_only},
    )
    return UserCreated(user=accounts.public(user, body.roles), temporary_password=temporary)


@router.get("", response_model=UserPage, responses=problem_responses(401, 403, 422))
async def list_users(
    admin: Admin,
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[
        str | None, Query(max_length=100, pattern=PRINTABLE, description="Part of username, name or email.")
    ] = None,
    role: Role | None = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048, description="From `next`.")] = None,
    offset: Annotated[
        int | None, Query(ge=0, le=1_000_000, deprecated=True, description="Deprecated: use `cursor`.")
    ] = None,
) -> UserPage:
    """List accounts ordered by username, with optional filters."""
    codec = SignedCursor(settings, "users")
    bound_to = str(admin.user_id)
    start = offset or 0
    if cursor is not None:
        start = codec.decode(cursor, bound_to=bound_to).get("o", -1)
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise invalid_cursor()
    items, total = await accounts.list_users(
        session, query=q, role=role, active=active, limit=limit, offset=start
    )
    more = start + len(items) < total and bool(items)
    next_cursor = codec.encode({"o": start + len(items)}, bound_to=bound_to) if more else None
    return UserPage(items=items, next=next_cursor, total=total, limit=limit, offset=start)


@router.get("/{user_id}", response_model=UserPublic, responses=ERRORS)
async def read_user(user_id: uuid.UUID, admin: Admin, session: SessionDep) -> UserPublic:
    """One account."""
    user = await accounts.get_user(session, user_id)
    return accounts.public(user, await accounts.roles_of(session, user_id))


@router.patch("/{user_id}", response_model=UserPublic, responses=ERRORS | problem_responses(409))
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, admin: Admin, session: SessionDep, audit: AuditDep
) -> UserPublic:
    """Change name, email or roles (only roles you hold; never demote the last admin)."""
    user = await accounts.get_user(session, user_id)
    roles = await accounts.roles_of(session, user_id)
    details: dict[str, object] = {"fields": sorted(body.model_fields_set)}
    if body.roles is not None and set(body.roles) != set(roles):
        new_roles = frozenset(body.roles)
        async with refusal_audited(
            audit, admin, "admin.user_update", user_id, details={"roles": sorted(new_roles)}
        ):
            accounts.check_grantable(admin, new_roles - roles)
            if Role.admin in roles and Role.admin not in new_roles:
                await accounts.ensure_not_last_admin(session, user_id)
        await accounts.set_roles(session, user_id, new_roles)
        details["roles"] = {"from": sorted(roles), "to": sorted(new_roles)}
        roles = new_roles
    if body.display_name is not None:
        user.display_name = body.display_name
    if body.sso_only is not None and body.sso_only != user.sso_only:
        if body.sso_only:
            async with refusal_audited(
                audit, admin, "admin.user_update", user_id, reason="no identity linked"
            ):
                if not await identities_of(session, user_id):
                    raise Conflict(
                        "Link an identity first (POST /admin/users/{id}/identities); the account could "
                        "not sign in at all.",
                        code="no_identity_linked",
                    )
        user.sso_only = body.sso_only
        details["sso_only"] = body.sso_only
    if "email" in body.model_fields_set:
        await accounts.ensure_email_free(session, body.email, except_id=user_id)
        user.email = body.email.lower() if body.email else None
    user.updated_at = utcnow()
    session.add(user)
    await session.flush()
    stage_success(audit, session, admin, "admin.user_update", user_id, details)
    return accounts.public(user, roles)


@router.post("/{user_id}/disable", response_model=UserPublic, responses=ERRORS | problem_responses(409))
async def disable_user(user_id: uuid.UUID, admin: Admin, session: SessionDep, audit: AuditDep) -> UserPublic:
    """Disable an account and end all its sessions (never the last active admin)."""
    user = await accounts.get_user(session, user_id)
    roles = await accounts.roles_of(session, user_id)
    if Role.admin in roles and user.is_active:
        async with refusal_audited(
            audit, admin, "admin.user_disable", user_id, reason="last active administrator"
        ):
            await accounts.ensure_not_last_admin(session, user_id)
    user.is_active = False
    user.updated_at = utcnow()
    session.add(user)
    ended = await revoke_user_sessions(session, user_id, reason="account_disabled", now=utcnow())
    stage_success(audit, session, admin, "admin.user_disable", user_id, {"sessions_ended": ended})
    return accounts.public(user, roles)


@router.post("/{user_id}/enable", response_model=UserPublic, responses=ERRORS)
async def enable_user(user_id: uuid.UUID, admin: Admin, session: SessionDep, audit: AuditDep) -> UserPublic:
    """Enable a disabled account."""
    user = await accounts.get_user(session, user_id)
    user.is_active = True
    user.updated_at = utcnow()
    session.add(user)
    stage_success(audit, session, admin, "admin.user_enable", user_id)
    return accounts.public(user, await accounts.roles_of(session, user_id))


@router.post("/{user_id}/reset-password", response_model=PasswordResetResult, responses=ERRORS)
async def reset_password(
    user_id: uuid.UUID,
    body: PasswordReset,
    admin: Admin,
    session: SessionDep,
    passwords: PasswordsDep,
    audit: AuditDep,
) -> PasswordResetResult:
    """Set a temporary password (to be changed at next login) and end all sessions."""
    user = await accounts.get_user(session, user_id)
    async with refusal_audited(audit, admin, "admin.password_reset", user_id, reason="role escalation"):
        accounts.check_takeover(admin, await accounts.roles_of(session, user_id))
    temporary = None
    if body.new_password is None:
        temporary = generate_password()
    else:
        check_password_policy(body.new_password, [user.username, user.display_name, user.email or ""])
    now = utcnow()
    user.password_hash = await passwords.hash(body.new_password or temporary or "")
    user.must_change_password = True
    user.password_changed_at = user.updated_at = now
    session.add(user)
    ended = await revoke_user_sessions(session, user_id, reason="password_reset", now=now)
    stage_success(audit, session, admin, "admin.password_reset", user_id, {"sessions_ended": ended})
    return PasswordResetResult(temporary_password=temporary, sessions_ended=ended)


@router.post("/{user_id}/totp/reset", response_model=UserPublic, responses=ERRORS)
async def reset_totp(user_id: uuid.UUID, admin: Admin, session: SessionDep, audit: AuditDep) -> UserPublic:
    """Switch off two-factor authentication of an account that lost its device; ends its sessions."""
    user = await accounts.get_user(session, user_id)
    roles = await accounts.roles_of(session, user_id)
    async with refusal_audited(audit, admin, "admin.totp_reset", user_id, reason="role escalation"):
        accounts.check_takeover(admin, roles)
    await clear_totp(session, user)
    ended = await revoke_user_sessions(session, user_id, reason="totp_reset", now=utcnow())
    stage_success(audit, session, admin, "admin.totp_reset", user_id, {"sessions_ended": ended})
    return accounts.public(user, roles)


@router.post("/{user_id}/unlock", response_model=UserPublic, responses=ERRORS)
async def unlock_user(user_id: uuid.UUID, admin: Admin, session: SessionDep, audit: AuditDep) -> UserPublic:
    """Lift a login lockout of the account now (address lockouts still expire by themselves)."""
    user = await accounts.get_user(session, user_id)
    await throttle.reset(session, throttle.account_key(user.username))
    stage_success(audit, session, admin, "admin.user_unlock", user_id)
    return accounts.public(user, await accounts.roles_of(session, user_id))


@router.get("/{user_id}/sessions", response_model=list[SessionInfo], responses=ERRORS)
async def list_sessions(user_id: uuid.UUID, admin: Admin, session: SessionDep) -> list[SessionInfo]:
    """The live sessions of an account."""
    await accounts.get_user(session, user_id)
    return await accounts.session_infos(session, user_id)


@router.delete("/{user_id}/sessions", response_model=SessionsEnded, responses=ERRORS)
async def end_sessions(
    user_id: uuid.UUID, admin: Admin, session: SessionDep, audit: AuditDep
) -> SessionsEnded:
    """End every session of an account at once (its access tokens stop working immediately)."""
    await accounts.get_user(session, user_id)
    ended = await revoke_user_sessions(session, user_id, reason="ended_by_admin", now=utcnow())
    stage_success(audit, session, admin, "admin.sessions_end", user_id, {"sessions_ended": ended})
    return SessionsEnded(sessions_ended=ended)
