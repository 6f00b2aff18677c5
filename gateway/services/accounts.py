"""Account administration: create, list, read, update, disable/enable, reset password, sessions.

Two rules protect the system from its administrators:

* an administrator can only give roles they hold themselves, and can only take over accounts
  (password or two-factor reset) whose roles they hold too (``403 role_escalation``);
* the last active administrator can be neither disabled nor demoted (``409 last_admin``); the
  check locks the administrators' rows, so two concurrent requests cannot both pass it.

Functions work in the caller's transaction and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import delete, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import AuthSession, User, UserRole
from auth_db.types import utcnow
from gateway.errors import Conflict, Forbidden, NotFound
from gateway.schemas.accounts import SessionInfo, UserPublic
from gateway.security.principal import Principal, Role
from gateway.security.sessions import active_sessions

SORTED_ROLES = [Role.admin, Role.clinician]


async def roles_of(session: AsyncSession, user_id: uuid.UUID) -> frozenset[Role]:
    """The roles ``user_id`` holds."""
    rows = (await session.exec(select(UserRole.role).where(UserRole.user_id == user_id))).all()
    return frozenset(Role(name) for name in rows if name in Role.__members__)


def public(user: User, roles: Iterable[Role]) -> UserPublic:
    """The public view of an account."""
    held = set(roles)
    return UserPublic(
        id=user.id,
        username=user.username,
        email=user.email,
        display_name=user.display_name,
        roles=[role for role in SORTED_ROLES if role in held],
        is_active=user.is_active,
        must_change_password=user.must_change_password,
        totp_enabled=user.totp_enabled,
        sso_only=user.sso_only,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


def check_grantable(actor: Principal, roles: Iterable[Role]) -> None:
    """Refuse with ``403 role_escalation`` unless ``actor`` holds every role in ``roles``."""
    beyond = sorted(set(roles) - set(actor.roles))
    if beyond:
        raise Forbidden(
            f"You cannot give roles you do not hold yourself: {', '.join(beyond)}.", code="role_escalation"
        )


def check_takeover(actor: Principal, target_roles: Iterable[Role]) -> None:
    """Refuse with ``403 role_escalation`` when the target holds roles ``actor`` lacks."""
    beyond = sorted(set(target_roles) - set(actor.roles))
    if beyond:
        raise Forbidden(
            f"This account holds roles you do not hold ({', '.join(beyond)}); you cannot reset its "
            "credentials.",
            code="role_escalation",
        )


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    """The account ``user_id``.

    Raises:
        NotFound: ``user_not_found``.
    """
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("There is no such user.", code="user_not_found")
    return user


async def ensure_email_free(session: AsyncSession, email: str | None, *, except_id: uuid.UUID | None) -> None:
    """Refuse with ``409 email_taken`` when another account uses ``email`` (case-insensitive)."""
    if email is None:
        return
    statement = select(User.id).where(func.lower(User.email) == email.lower())
    if except_id is not None:
        statement = statement.where(User.id != except_id)
    if (await session.exec(statement)).first() is not None:
        raise Conflict("Another account uses this email address.", code="email_taken")


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    display_name: str,
    email: str | None,
    roles: Iterable[Role],
    password_hash: str,
    must_change_password: bool,
    sso_only: bool = False,
) -> User:
    """Insert an account with its roles.

    Raises:
        Conflict: ``username_taken`` or ``email_taken``.
    """
    existing = (await session.exec(select(User.id).where(User.username == username))).first()
    if existing is not None:
        raise Conflict("This username is taken.", code="username_taken")
    await ensure_email_free(session, email, except_id=None)
    user = User(
        username=username,
        display_name=display_name,
        email=email.lower() if email else None,
        password_hash=password_hash,
        must_change_password=must_change_password,
        sso_only=sso_only,
    )
    session.add(user)
    await session.flush()
    for role in set(roles):
        session.add(UserRole(user_id=user.id, role=role.value))
    await session.flush()
    return user


async def set_roles(session: AsyncSession, user_id: uuid.UUID, roles: Iterable[Role]) -> None:
    """Replace the roles of ``user_id``."""
    await session.exec(delete(UserRole).where(col(UserRole.user_id) == user_id))
    for role in set(roles):
        session.add(UserRole(user_id=user_id, role=role.value))
    await session.flush()


async def ensure_not_last_admin(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Refuse with ``409 last_admin`` if ``user_id`` is the only active administrator.

    The active administrators' rows are locked until the transaction ends (PostgreSQL), so a
    concurrent request disabling another administrator waits and then sees this change.
    """
    statement = (
        select(User.id)
        .join(UserRole, col(UserRole.user_id) == col(User.id))
        .where(UserRole.role == Role.admin.value, col(User.is_active).is_(True))
        .with_for_update(of=User)
    )
    admins = set((await session.exec(statement)).all())
    if user_id in admins and len(admins) <= 1:
        raise Conflict(
            "This is the last active administrator; make another administrator first.", code="last_admin"
        )


async def list_users(
    session: AsyncSession,
    *,
    query: str | None,
    role: Role | None,
    active: bool | None,
    limit: int,
    offset: int,
) -> tuple[list[UserPublic], int]:
    """A page of accounts ordered by username, filtered by text, role and status; and the total."""
    conditions = []
    if query:
        pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(
            or_(
                func.lower(User.username).like(pattern, escape="\\"),
                func.lower(User.display_name).like(pattern, escape="\\"),
                func.lower(func.coalesce(User.email, "")).like(pattern, escape="\\"),
            )
        )
    if role is not None:
        conditions.append(col(User.id).in_(select(UserRole.user_id).where(UserRole.role == role.value)))
    if active is not None:
        conditions.append(col(User.is_active).is_(active))
    total = (await session.exec(select(func.count()).select_from(User).where(*conditions))).one()
    statement = select(User).where(*conditions).order_by(col(User.username)).limit(limit).offset(offset)
    users = list((await session.exec(statement)).all())
    roles: dict[uuid.UUID, set[Role]] = {user.id: set() for user in users}
    if users:
        rows = await session.exec(select(UserRole).where(col(UserRole.user_id).in_(list(roles))))
        for row in rows.all():
            if row.role in Role.__members__:
                roles[row.user_id].add(Role(row.role))
    return [public(user, roles[user.id]) for user in users], int(total)


async def session_infos(
    session: AsyncSession, user_id: uuid.UUID, *, current: uuid.UUID | None = None
) -> list[SessionInfo]:
    """The live sessions of ``user_id`` (``current`` marks the caller's own)."""
    rows: list[AuthSession] = await active_sessions(session, user_id, now=utcnow())
    return [
        SessionInfo(
            id=row.family_id,
            started_at=row.family_created_at,
            last_refreshed_at=row.created_at,
            expires_at=row.expires_at,
            client_addr=row.client_addr,
            user_agent=row.user_agent,
            current=row.family_id == current,
        )
        for row in rows
    ]
