"""Tables of the auth database.

The auth database never holds patient data: only opaque references (FHIR Patient ids, EHR ids,
composition uids) next to users, sessions, settings, access grants and the audit trail.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel

from auth_db.types import UTCDateTime, utcnow

#: Constraint names are deterministic so migrations can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata: MetaData = SQLModel.metadata


class User(SQLModel, table=True):
    """A person who uses the gateway: clinician or administrator."""

    __tablename__ = "user"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    email: str | None = Field(default=None, max_length=254, unique=True)
    display_name: str = Field(max_length=200)
    password_hash: str = Field(max_length=512)
    is_active: bool = Field(default=True)
    must_change_password: bool = Field(default=False)
    totp_secret_encrypted: str | None = Field(default=None, max_length=512)
    totp_enabled: bool = Field(default=False)
    totp_last_step: int | None = Field(default=None, sa_column=Column(BigInteger(), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    password_changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Signs in through an identity provider only: the local password is refused.
    sso_only: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class UserRole(SQLModel, table=True):
    """A role held by a user (``admin`` or ``clinician``)."""

    __tablename__ = "user_role"

    user_id: uuid.UUID = Field(foreign_key="user.id", primary_key=True, ondelete="CASCADE")
    role: str = Field(max_length=32, primary_key=True)


class RecoveryCode(SQLModel, table=True):
    """A single-use TOTP recovery code, stored hashed."""

    __tablename__ = "recovery_code"

    id: int | None = Field(default=None, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    code_hash: str = Field(max_length=512)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuthSession(SQLModel, table=True):
    """One refresh token of a login session. Rotation adds a row to the same family."""

    __tablename__ = "session"
    __table_args__ = (
        Index("ix_session_idp_sid", "idp_issuer", "idp_sid"),
        Index("ix_session_idp_subject", "idp_issuer", "idp_subject"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    family_id: uuid.UUID = Field(index=True)
    user_id: uuid.UUID = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    refresh_token_hash: str = Field(max_length=128, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    family_created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_reason: str | None = Field(default=None, max_length=64)
    client_addr: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=256)
    #: For a session started by single sign-on: the provider's issuer, session id (``sid``) and subject,
    #: which back-channel logout names, and the ID token (encrypted) for RP-initiated logout.
    idp_issuer: str | None = Field(default=None, max_length=255)
    idp_sid: str | None = Field(default=None, max_length=255)
    idp_subject: str | None = Field(default=None, max_length=255)
    id_token_encrypted: str | None = Field(default=None, sa_column=Column(String(12000), nullable=True))
    #: No refresh reaches past this instant (an SSO session never outlives the provider's cap).
    not_after: datetime | None = Field(default=None, sa_type=UTCDateTime)


class UserIdentity(SQLModel, table=True):
    """An identity at an OpenID Connect provider, (issuer, subject), bound to one local user."""

    __tablename__ = "user_identity"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_user_identity_issuer_subject"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    provider_id: str = Field(max_length=32)
    issuer: str = Field(max_length=255)
    subject: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: uuid.UUID | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OidcLogin(SQLModel, table=True):
    """One sign-in in flight at an identity provider: single use, short-lived, bound to one browser."""

    __tablename__ = "oidc_login"

    state_hash: str = Field(max_length=64, primary_key=True)
    binding_hash: str = Field(max_length=64)
    provider_id: str = Field(max_length=32)
    nonce: str = Field(max_length=128)
    code_verifier: str = Field(max_length=128)
    return_to: str = Field(max_length=512)
    #: Set when a signed-in local user links this identity to their own account.
    link_user_id: uuid.UUID | None = Field(default=None, foreign_key="user.id", ondelete="CASCADE")
    #: Set when the sign-in follows an administrator's invite (the hash of its token).
    invite_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SsoInvite(SQLModel, table=True):
    """An admin's invite: the first sign-in through ``provider_id`` presenting it binds to the user."""

    __tablename__ = "sso_invite"

    token_hash: str = Field(max_length=64, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    provider_id: str = Field(max_length=32)
    created_by: uuid.UUID | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OidcLogoutReplay(SQLModel, table=True):
    """The ``jti`` of a back-channel logout token already accepted (replay guard until it expires)."""

    __tablename__ = "oidc_logout_jti"

    issuer: str = Field(max_length=255, primary_key=True)
    jti: str = Field(max_length=255, primary_key=True)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class LoginThrottle(SQLModel, table=True):
    """Failed-login counter for one account or one client address, shared by all replicas."""

    __tablename__ = "login_throttle"

    key: str = Field(max_length=200, primary_key=True)
    failures: int = Field(default=0)
    window_started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SystemSetting(SQLModel, table=True):
    """A stored override of a system setting declared in code."""

    __tablename__ = "system_setting"

    key: str = Field(max_length=100, primary_key=True)
    value: Any = Field(sa_column=Column(JSON(), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_by: uuid.UUID | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")


class SecretFingerprint(SQLModel, table=True):
    """The fingerprint of a value every replica must share (``GATEWAY_SECRET_KEY``, ...), never the value.

    The first replica to start records it; every later start compares its own and refuses to start on a
    difference (:mod:`gateway.security.shared_secrets`). One row per checked value, keyed by its name.
    """

    __tablename__ = "secret_fingerprint"

    name: str = Field(max_length=64, primary_key=True)
    fingerprint: str = Field(max_length=64)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: The host name of the process that recorded it, and how (``start-up`` or ``secrets accept-new``).
    recorded_by: str = Field(max_length=255)
    recorded_via: str = Field(max_length=32)


class UserSetting(SQLModel, table=True):
    """A stored override of a per-user setting declared in code."""

    __tablename__ = "user_setting"

    user_id: uuid.UUID = Field(foreign_key="user.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(max_length=100, primary_key=True)
    value: Any = Field(sa_column=Column(JSON(), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """One entry of the append-only audit trail (ids only, never PHI)."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_occurred_at_id", "occurred_at", "id"),
        Index("ix_audit_event_actor_time", "actor_user_id", "occurred_at"),
        Index("ix_audit_event_patient_time", "patient_id", "occurred_at"),
        Index("ix_audit_event_action_time", "action", "occurred_at"),
        Index("ix_audit_event_outcome_time", "outcome", "occurred_at"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    actor_user_id: uuid.UUID | None = Field(default=None)
    actor_username: str | None = Field(default=None, max_length=64)
    action: str = Field(max_length=64)
    outcome: str = Field(max_length=16)
    target_type: str | None = Field(default=None, max_length=32)
    target_id: str | None = Field(default=None, max_length=200)
    patient_id: str | None = Field(default=None, max_length=64)
    ehr_id: str | None = Field(default=None, max_length=64)
    resource_ids: list[str] | None = Field(default=None, sa_column=Column(JSON(), nullable=True))
    reason: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
    break_glass: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    client_addr: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=128)
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(), nullable=True))


class CareTeamLink(SQLModel, table=True):
    """A legitimate relationship: this user may access this FHIR Patient."""

    __tablename__ = "care_team"
    __table_args__ = (
        Index(
            "uq_care_team_active",
            "user_id",
            "patient_id",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
        Index("ix_care_team_patient", "patient_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    patient_id: str = Field(max_length=64)
    granted_by: uuid.UUID | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")
    granted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_by: uuid.UUID | None = Field(default=None, foreign_key="user.id", ondelete="SET NULL")


class BreakGlassGrant(SQLModel, table=True):
    """Emergency, time-limited access of one user to one patient, with a mandatory reason."""

    __tablename__ = "break_glass_grant"
    __table_args__ = (Index("ix_break_glass_user_patient", "user_id", "patient_id", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="user.id", ondelete="CASCADE")
    patient_id: str = Field(max_length=64)
    reason: str = Field(sa_column=Column(String(1000), nullable=False))
    granted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class IdempotencyKey(SQLModel, table=True):
    """A client-chosen key making a write safe to retry; holds only ids of what was written."""

    __tablename__ = "idempotency_key"

    user_id: uuid.UUID = Field(foreign_key="user.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(max_length=128, primary_key=True)
    scope: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    state: str = Field(default="in_progress", max_length=16)
    response_status: int | None = Field(default=None)
    response_ref: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class PatientEhr(SQLModel, table=True):
    """Cache of the EHR id that EHRbase holds for a FHIR Patient id (both opaque references)."""

    __tablename__ = "patient_ehr"

    patient_id: str = Field(max_length=64, primary_key=True)
    ehr_id: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
