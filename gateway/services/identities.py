"""Account linking for single sign-on: which (issuer, subject) at which provider is which local user.

An identity is bound to a user by an administrator (pre-provisioning, the default), by the user's own
signed-in session after re-entering the password (``POST /auth/sso/{provider}/link``), or, where a provider
opted in, by just-in-time creation at the first login. Never by email: an address at the provider proves
nothing about who owns an account here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import SsoInvite, User, UserIdentity
from auth_db.types import utcnow
from gateway.errors import Conflict, NotFound, UnprocessableEntity
from gateway.security.principal import Role
from gateway.security.sessions import revoke_idp_sessions
from gateway.settings import Settings
from gateway.sso.config import OidcProvider, Provisioning

#: The password hash of an account that has never had a local password (no password ever matches it).
NO_LOCAL_PASSWORD = "!sso-only"  # noqa: S105 - a marker, not a hash of anything


class LinkRefused(Exception):
    """An identity cannot be bound to an account; ``code`` is stable (docs/sso.md)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def provider_or_422(settings: Settings, provider_id: str) -> OidcProvider:
    """The configured provider ``provider_id``.

    Raises:
        UnprocessableEntity: ``sso_provider_unknown``.
    """
    provider = settings.oidc_provider(provider_id)
    if provider is None:
        raise UnprocessableEntity("No identity provider has this id.", code="sso_provider_unknown")
    return provider


async def identities_of(session: AsyncSession, user_id: uuid.UUID) -> list[UserIdentity]:
    """The identities linked to ``user_id``, oldest first."""
    statement = select(UserIdentity).where(UserIdentity.user_id == user_id).order_by(col(UserIdentity.id))
    return list((await session.exec(statement)).all())


async def link_identity(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    provider: OidcProvider,
    subject: str,
    created_by: uuid.UUID | None,
) -> UserIdentity:
    """Bind (provider's issuer, ``subject``) to ``user_id``.

    Raises:
        Conflict: ``identity_taken`` — that identity already belongs to an account (this one or another).
    """
    existing = (
        await session.exec(
            select(UserIdentity).where(
                UserIdentity.issuer == provider.issuer, UserIdentity.subject == subject
            )
        )
    ).first()
    if existing is not None:
        raise Conflict("This identity is already linked to an account.", code="identity_taken")
    identity = UserIdentity(
        user_id=user_id,
        provider_id=provider.id,
        issuer=provider.issuer,
        subject=subject,
        created_by=created_by,
        created_at=utcnow(),
    )
    session.add(identity)
    await session.flush()
    return identity


async def unlink_identity(
    session: AsyncSession, *, user_id: uuid.UUID, identity_id: int
) -> tuple[UserIdentity, int]:
    """Remove an identity of ``user_id`` and end the sessions it started; returns it and how many ended.

    Raises:
        NotFound: ``identity_not_found``.
    """
    identity = await session.get(UserIdentity, identity_id)
    if identity is None or identity.user_id != user_id:
        raise NotFound("This account has no such identity.", code="identity_not_found")
    ended = await revoke_idp_sessions(
        session,
        issuer=identity.issuer,
        sid=None,
        subject=identity.subject,
        reason="identity_unlinked",
        now=utcnow(),
        user_id=user_id,
    )
    await session.delete(identity)
    await session.flush()
    return identity, len(ended)


async def create_jit_user(session: AsyncSession, provider: OidcProvider, claims: dict[str, Any]) -> User:
    """A new SSO-only account for an unknown identity (provider opted in to just-in-time creation)."""
    preferred = claims.get("preferred_username")
    base = f"{provider.id}.{preferred if isinstance(preferred, str) and preferred else claims['sub']}"
    base = "".join(ch for ch in base.lower() if ch.isalnum() or ch in "._-@")[:56]
    username = base
    for _ in range(5):
        taken = (await session.exec(select(User.id).where(User.username == username))).first()
        if taken is None:
            break
        username = f"{base}-{uuid.uuid4().hex[:6]}"
    name = claims.get("name")
    user = User(
        username=username,
        display_name=(name if isinstance(name, str) and name.strip() else username)[:200],
        email=None,  # never taken from the provider: an email is not an identity (docs/sso.md)
        password_hash=NO_LOCAL_PASSWORD,
        sso_only=True,
    )
    session.add(user)
    await session.flush()
    return user


async def resolve_account(
    session: AsyncSession,
    provider: OidcProvider,
    identity: UserIdentity | None,
    claims: dict[str, Any],
    *,
    link_user_id: uuid.UUID | None,
    roles: frozenset[Role],
    now: datetime,
    invite_hash: str | None = None,
) -> User:
    """The local account of an identity: linked, being linked by its signed-in owner, or created just in time.

    Raises:
        LinkRefused: ``identity_taken``, ``account_not_linked``, ``invite_invalid`` or ``no_roles``.
    """
    if invite_hash is not None and link_user_id is None:
        link_user_id = await _spend_invite(session, invite_hash, now)
    if identity is not None:
        if link_user_id is not None and identity.user_id != link_user_id:
            raise LinkRefused("identity_taken", "this identity is linked to another account")
        identity.last_login_at = now
        session.add(identity)
        user = await session.get(User, identity.user_id)
        assert user is not None
        return user
    if link_user_id is not None:
        user = await session.get(User, link_user_id)
        if user is None:
            raise LinkRefused("account_not_linked")
    elif provider.provisioning is Provisioning.jit:
        if not roles:
            raise LinkRefused("no_roles", "the provider's claims map to no gateway role")
        user = await create_jit_user(session, provider, claims)
    else:
        raise LinkRefused("account_not_linked", "no account is linked to this identity")
    session.add(
        UserIdentity(
            user_id=user.id,
            provider_id=provider.id,
            issuer=provider.issuer,
            subject=str(claims["sub"]),
            created_at=now,
            last_login_at=now,
        )
    )
    await session.flush()
    return user


async def _spend_invite(session: AsyncSession, invite_hash: str, now: datetime) -> uuid.UUID:
    """The invited user; the invite is marked used in the sign-in's transaction (single use under races)."""
    spent = await session.exec(
        update(SsoInvite)
        .where(
            col(SsoInvite.token_hash) == invite_hash,
            col(SsoInvite.used_at).is_(None),
            col(SsoInvite.expires_at) > now,
        )
        .values(used_at=now)
        .returning(col(SsoInvite.user_id))
    )
    row = spent.first()
    if row is None:
        raise LinkRefused("invite_invalid", "the invite is used, expired or unknown")
    user_id: uuid.UUID = row[0]
    return user_id
