"""Account linking for single sign-on: which (issuer, subject) at which provider is which local user.

An identity is bound to a user by an administrator (pre-provisioning, the default), by the user's own
signed-in session after re-entering the password (``POST /auth/sso/{provider}/link``), or, where a provider
opted in, by just-in-time creation at the first login. Never by email: an address at the provider proves
nothing about who owns an account here.
"""

from __future__ import annotations

import uuid

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import AuthSession, UserIdentity
from auth_db.types import utcnow
from gateway.errors import Conflict, NotFound, UnprocessableEntity
from gateway.security.sessions import revoke_family
from gateway.settings import Settings
from gateway.sso.config import OidcProvider


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
    now = utcnow()
    families = (
        await session.exec(
            select(AuthSession.family_id)
            .where(
                col(AuthSession.user_id) == user_id,
                col(AuthSession.idp_issuer) == identity.issuer,
                col(AuthSession.idp_subject) == identity.subject,
                col(AuthSession.revoked_at).is_(None),
                col(AuthSession.used_at).is_(None),
                AuthSession.expires_at > now,
            )
            .distinct()
        )
    ).all()
    for family in families:
        await revoke_family(session, family, reason="identity_unlinked", now=now)
    await session.delete(identity)
    await session.flush()
    return identity, len(families)
