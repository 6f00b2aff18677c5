"""Self-service on one's own account: profile, password change, TOTP enrolment and recovery codes.

Re-authentication with the current password guards every change of a credential. Wrong current
passwords count towards the account's login throttle, so these endpoints cannot be used to guess
passwords faster than the login.
"""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.engine import SessionFactory, transaction
from auth_db.models import User
from auth_db.types import utcnow
from gateway.audit import Actor, AuditLog, Outcome
from gateway.errors import Conflict, Forbidden, UnprocessableEntity
from gateway.security import throttle
from gateway.security.passwords import PasswordService, check_password_policy
from gateway.security.principal import Principal
from gateway.security.sessions import active_sessions, revoke_family, revoke_user_sessions
from gateway.security.totp import (
    TotpCipher,
    clear_totp,
    matching_step,
    new_secret,
    provisioning_uri,
    replace_recovery_codes,
)
from gateway.services.accounts import ensure_email_free, get_user


class ReauthFailed(Forbidden):
    code = "invalid_current_password"
    title = "Current password is wrong"


async def reauthenticate(
    factory: SessionFactory,
    passwords: PasswordService,
    audit: AuditLog,
    *,
    user: User,
    password: str,
    action: str,
) -> None:
    """Check the user's current password (throttled like a login).

    Raises:
        TooManyAttempts: the account is locked out.
        ReauthFailed: ``invalid_current_password``; counted as a failed login.
    """
    now = utcnow()
    async with transaction(factory) as session:
        policy = await throttle.throttle_policy(session)
        limits = [(throttle.account_key(user.username), policy.account_threshold)]
        locked = await throttle.begin_attempt(session, limits, policy=policy, now=now)
    actor = Actor(user.id, user.username)
    if locked is not None:
        await audit.record(action=action, outcome=Outcome.denied, actor=actor, reason="locked out")
        raise throttle.TooManyAttempts("Too many failed attempts; try again later.", retry_after=locked)
    if await passwords.verify(password, user.password_hash):
        async with transaction(factory) as session:
            await throttle.attempt_succeeded(session, reset=limits[0][0], release=[])
        return
    async with transaction(factory) as session:
        became_locked = await throttle.attempt_failed(session, limits, policy=policy, now=utcnow())
    await audit.record(action=action, outcome=Outcome.failure, actor=actor, reason="wrong current password")
    if became_locked:
        await audit.record(
            action="auth.lockout", outcome=Outcome.denied, actor=actor, reason="threshold reached: account"
        )
    raise ReauthFailed("The current password is wrong.")


async def update_profile(
    session: AsyncSession,
    principal: Principal,
    *,
    display_name: str | None,
    email: str | None,
    email_set: bool,
) -> User:
    """Change the caller's display name and/or email (``email_set`` distinguishes "clear" from "keep")."""
    user = await get_user(session, principal.user_id)
    if display_name is not None:
        user.display_name = display_name
    if email_set:
        await ensure_email_free(session, email, except_id=user.id)
        user.email = email.lower() if email else None
    user.updated_at = utcnow()
    session.add(user)
    await session.flush()
    return user


async def change_password(
    session: AsyncSession,
    factory: SessionFactory,
    passwords: PasswordService,
    audit: AuditLog,
    principal: Principal,
    *,
    current_password: str,
    new_password: str,
) -> int:
    """Set a new password after checking the current one; ends every session of the user.

    Returns:
        How many sessions were ended (the caller's included: it signs in again).

    Raises:
        ReauthFailed, TooManyAttempts: see :func:`reauthenticate`.
        UnprocessableEntity: ``weak_password`` or ``password_unchanged``.
    """
    user = await get_user(session, principal.user_id)
    await reauthenticate(
        factory, passwords, audit, user=user, password=current_password, action="auth.password_change"
    )
    if new_password == current_password:
        raise UnprocessableEntity(
            "The new password must differ from the current one.", code="password_unchanged"
        )
    check_password_policy(new_password, [user.username, user.display_name, user.email or ""])
    now = utcnow()
    user.password_hash = await passwords.hash(new_password)
    user.must_change_password = False
    user.password_changed_at = user.updated_at = now
    session.add(user)
    ended = await revoke_user_sessions(session, user.id, reason="password_change", now=now)
    await session.flush()
    return ended


async def enrol_totp(
    session: AsyncSession,
    factory: SessionFactory,
    passwords: PasswordService,
    audit: AuditLog,
    cipher: TotpCipher,
    principal: Principal,
    *,
    password: str,
) -> tuple[str, str]:
    """Store a new, not yet active TOTP secret; returns ``(secret, otpauth URI)``.

    Raises:
        Conflict: ``totp_already_enabled`` (disable it first).
    """
    user = await get_user(session, principal.user_id)
    await reauthenticate(factory, passwords, audit, user=user, password=password, action="auth.totp_enrol")
    if user.totp_enabled:
        raise Conflict(
            "Two-factor authentication is already on; disable it first.", code="totp_already_enabled"
        )
    secret = new_secret()
    user.totp_secret_encrypted = cipher.encrypt(secret)
    user.totp_last_step = None
    user.updated_at = utcnow()
    session.add(user)
    await session.flush()
    return secret, provisioning_uri(secret, user.username)


async def confirm_totp(
    session: AsyncSession, cipher: TotpCipher, principal: Principal, *, code: str
) -> list[str]:
    """Activate the enrolled secret with a code from the app; returns ten new recovery codes.

    Raises:
        Conflict: ``totp_not_enrolled`` or ``totp_already_enabled``.
        UnprocessableEntity: ``invalid_totp_code``.
    """
    user = await get_user(session, principal.user_id)
    if user.totp_enabled:
        raise Conflict("Two-factor authentication is already on.", code="totp_already_enabled")
    secret = cipher.decrypt(user.totp_secret_encrypted) if user.totp_secret_encrypted else None
    if secret is None:
        raise Conflict("Start with POST /auth/totp/enrol.", code="totp_not_enrolled")
    step = matching_step(secret, code, now=utcnow())
    if step is None:
        raise UnprocessableEntity("The code is wrong; check the device clock.", code="invalid_totp_code")
    user.totp_enabled = True
    user.totp_last_step = step
    user.updated_at = utcnow()
    session.add(user)
    codes = await replace_recovery_codes(session, user.id)
    await session.flush()
    return codes


async def disable_totp(
    session: AsyncSession,
    factory: SessionFactory,
    passwords: PasswordService,
    audit: AuditLog,
    principal: Principal,
    *,
    password: str,
) -> None:
    """Switch TOTP off after checking the password.

    Raises:
        Conflict: ``totp_not_enabled``.
    """
    user = await get_user(session, principal.user_id)
    await reauthenticate(factory, passwords, audit, user=user, password=password, action="auth.totp_disable")
    if not user.totp_enabled and not user.totp_secret_encrypted:
        raise Conflict("Two-factor authentication is not on.", code="totp_not_enabled")
    await clear_totp(session, user)


async def regenerate_recovery_codes(
    session: AsyncSession,
    factory: SessionFactory,
    passwords: PasswordService,
    audit: AuditLog,
    principal: Principal,
    *,
    password: str,
) -> list[str]:
    """Replace the recovery codes after checking the password.

    Raises:
        Conflict: ``totp_not_enabled``.
    """
    user = await get_user(session, principal.user_id)
    await reauthenticate(
        factory, passwords, audit, user=user, password=password, action="auth.recovery_codes"
    )
    if not user.totp_enabled:
        raise Conflict("Two-factor authentication is not on.", code="totp_not_enabled")
    return await replace_recovery_codes(session, user.id)


async def end_own_sessions(
    session: AsyncSession,
    factory: SessionFactory,
    passwords: PasswordService,
    audit: AuditLog,
    principal: Principal,
    *,
    password: str,
    family_id: uuid.UUID | None,
) -> int:
    """End one own session (``family_id``) or all but the current one, after checking the password.

    Returns:
        How many sessions ended (0 when ``family_id`` is not a live session of this user).
    """
    user = await get_user(session, principal.user_id)
    await reauthenticate(factory, passwords, audit, user=user, password=password, action="auth.sessions_end")
    now = utcnow()
    live = {row.family_id for row in await active_sessions(session, user.id, now=now)}
    targets = [family_id] if family_id is not None else sorted(live - {principal.session_id}, key=str)
    ended = 0
    for target in targets:
        if target in live:
            await revoke_family(session, target, reason="ended_by_user", now=now)
            ended += 1
    return ended
