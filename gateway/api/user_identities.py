"""``/admin/users/{user_id}/identities``: link an account to its identity at a provider (pre-provisioning).

Needs ``user:admin``; every change is audited (``admin.identity_link`` / ``admin.identity_unlink``). See
``docs/sso.md`` (account linking) and ``docs/admin-guide.md``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from auth_db.models import UserIdentity
from auth_db.types import utcnow
from gateway.api.users import Admin, refusal_audited, stage_success
from gateway.deps import AuditDep, SessionDep, SessionFactoryDep, SettingsDep
from gateway.errors import problem_responses
from gateway.schemas.accounts import Strict
from gateway.services import accounts
from gateway.services.identities import identities_of, link_identity, provider_or_422, unlink_identity
from gateway.sso.logins import create_invite

router = APIRouter(prefix="/admin/users", tags=["admin: users"])
ERRORS = problem_responses(401, 403, 404, 422)


class IdentityLink(Strict):
    """Bind an identity at a configured provider to this account."""

    provider: str = Field(min_length=1, max_length=32, description="The provider's id (OIDC_PROVIDERS).")
    subject: str = Field(
        min_length=1,
        max_length=255,
        description="The user's `sub` at that provider (Keycloak user id, Entra object id, CIS2 UUID).",
    )


class InviteRequest(Strict):
    """Invite an account to bind its identity at a provider at its first sign-in there."""

    provider: str = Field(min_length=1, max_length=32, description="The provider's id (OIDC_PROVIDERS).")
    valid_days: int = Field(default=7, ge=1, le=30)


class InviteCreated(BaseModel):
    """Hand ``invite_url`` to the user (shown once): opening it signs in at the provider and binds."""

    invite_url: str
    expires_at: datetime


class IdentityPublic(BaseModel):
    """An identity at a provider, linked to an account."""

    id: int
    provider: str
    issuer: str
    subject: str
    created_at: datetime
    last_login_at: datetime | None


def _public(identity: UserIdentity) -> IdentityPublic:
    assert identity.id is not None
    return IdentityPublic(
        id=identity.id,
        provider=identity.provider_id,
        issuer=identity.issuer,
        subject=identity.subject,
        created_at=identity.created_at,
        last_login_at=identity.last_login_at,
    )


@router.get("/{user_id}/identities", response_model=list[IdentityPublic], responses=ERRORS)
async def list_identities(user_id: uuid.UUID, admin: Admin, session: SessionDep) -> list[IdentityPublic]:
    """The identities linked to an account."""
    await accounts.get_user(session, user_id)
    return [_public(identity) for identity in await identities_of(session, user_id)]


@router.post(
    "/{user_id}/identities",
    response_model=IdentityPublic,
    status_code=status.HTTP_201_CREATED,
    responses=ERRORS | problem_responses(409),
)
async def add_identity(
    user_id: uuid.UUID,
    body: IdentityLink,
    admin: Admin,
    session: SessionDep,
    audit: AuditDep,
    settings: SettingsDep,
) -> IdentityPublic:
    """Link an identity: at its first SSO login through that provider, it signs in as this account."""
    details: dict[str, object] = {"provider": body.provider}
    async with refusal_audited(audit, admin, "admin.identity_link", user_id, details=details):
        provider = provider_or_422(settings, body.provider)
        await accounts.get_user(session, user_id)
        identity = await link_identity(
            session, user_id=user_id, provider=provider, subject=body.subject, created_by=admin.user_id
        )
    stage_success(audit, session, admin, "admin.identity_link", user_id, details)
    return _public(identity)


@router.delete(
    "/{user_id}/identities/{identity_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS
)
async def remove_identity(
    user_id: uuid.UUID,
    identity_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    admin: Admin,
    session: SessionDep,
    audit: AuditDep,
) -> None:
    """Unlink an identity; the sessions it started end at once."""
    identity, ended = await unlink_identity(session, user_id=user_id, identity_id=identity_id)
    stage_success(
        audit,
        session,
        admin,
        "admin.identity_unlink",
        user_id,
        {"provider": identity.provider_id, "sessions_ended": ended},
    )


@router.post(
    "/{user_id}/sso-invites",
    response_model=InviteCreated,
    status_code=status.HTTP_201_CREATED,
    responses=ERRORS,
)
async def create_sso_invite(
    user_id: uuid.UUID,
    body: InviteRequest,
    admin: Admin,
    session: SessionDep,
    factory: SessionFactoryDep,
    audit: AuditDep,
    settings: SettingsDep,
) -> InviteCreated:
    """A single-use link: the first sign-in through that provider that follows it binds to this account.

    For when the user's subject at the provider is not known beforehand. The link holds a random token
    (only its hash is stored) and expires after ``valid_days``.
    """
    details: dict[str, object] = {"provider": body.provider, "valid_days": body.valid_days}
    async with refusal_audited(audit, admin, "admin.sso_invite", user_id, details=details):
        provider = provider_or_422(settings, body.provider)
        await accounts.get_user(session, user_id)
    token, invite = await create_invite(
        factory,
        user_id=user_id,
        provider_id=provider.id,
        created_by=admin.user_id,
        ttl=timedelta(days=body.valid_days),
        now=utcnow(),
    )
    stage_success(audit, session, admin, "admin.sso_invite", user_id, details)
    url = f"{settings.public_base}/auth/sso/{provider.id}/login?{urlencode({'invite': token})}"
    return InviteCreated(invite_url=url, expires_at=invite.expires_at)
