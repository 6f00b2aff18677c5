"""Request and response bodies of the auth, account-administration and settings APIs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from gateway.schemas.paging import Page
from gateway.security.principal import Permission, Role

Username = Annotated[
    str,
    BeforeValidator(lambda value: value.strip().lower() if isinstance(value, str) else value),
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._\-]{2,63}$"),
]
#: No control characters (PostgreSQL text cannot even hold NUL): such input is a 422, never a 500.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=PRINTABLE)
]
Password = Annotated[str, Field(min_length=1, max_length=128, json_schema_extra={"format": "password"})]
OtpCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=6, max_length=10)]
RecoveryCodeStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=64)]


class Strict(BaseModel):
    """Request bodies refuse unknown fields."""

    model_config = ConfigDict(extra="forbid")


# --- auth ---------------------------------------------------------------------------------------
class LoginRequest(Strict):
    """Browser login. Accounts with two-factor authentication also send one of the codes."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PRINTABLE)]
    password: Password
    totp_code: OtpCode | None = Field(default=None, description="6-digit code of the authenticator app.")
    recovery_code: RecoveryCodeStr | None = Field(default=None, description="One of the recovery codes.")


class UserPublic(BaseModel):
    """An account as shown to its owner and to administrators."""

    id: uuid.UUID
    username: str
    email: str | None
    display_name: str
    roles: list[Role]
    is_active: bool
    must_change_password: bool
    totp_enabled: bool
    sso_only: bool = Field(description="Signs in through an identity provider only (no local password).")
    created_at: datetime
    last_login_at: datetime | None


class MeResponse(UserPublic):
    """The signed-in user, their permissions and what they must do first."""

    permissions: list[Permission]
    totp_enrolment_required: bool = Field(
        description="True when the system requires admins to use two-factor authentication and this "
        "admin has not enrolled yet."
    )


class LoginResponse(BaseModel):
    """Answer to a browser login or cookie refresh; the tokens themselves are in cookies."""

    user: MeResponse
    expires_in: int = Field(description="Seconds until the access cookie expires; refresh before then.")
    csrf_token: str = Field(description="Send it as X-CSRF-Token on every POST/PUT/PATCH/DELETE.")


class TokenResponse(BaseModel):
    """OAuth2 token response for tools (``POST /auth/token`` and ``POST /auth/refresh`` with a body)."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    refresh_token: str


class RefreshRequest(Strict):
    """A refresh token in the body (tools); browsers send the refresh cookie instead and no body."""

    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=PRINTABLE)]


class RefreshResponse(BaseModel):
    """New tokens. Cookie refresh: ``csrf_token`` set, tokens in cookies. Body refresh: tokens here."""

    expires_in: int
    csrf_token: str | None = None
    access_token: str | None = None
    token_type: str | None = None
    refresh_token: str | None = None


class ProfileUpdate(Strict):
    """Fields a user may change on their own account."""

    display_name: DisplayName | None = None
    email: EmailStr | None = None


class PasswordChange(Strict):
    current_password: Password
    new_password: Password


class PasswordConfirmation(Strict):
    password: Password


class TotpEnrolment(BaseModel):
    """A new TOTP secret, not yet active: confirm it with a code from the app."""

    secret: str = Field(description="Base32 secret for manual entry.")
    otpauth_uri: str = Field(description="otpauth:// URI to show as a QR code.")


class TotpConfirm(Strict):
    code: OtpCode


class RecoveryCodes(BaseModel):
    """Single-use recovery codes, shown once."""

    recovery_codes: list[str]


# --- admin --------------------------------------------------------------------------------------
class UserCreate(Strict):
    username: Username
    display_name: DisplayName
    email: EmailStr | None = None
    roles: list[Role] = Field(min_length=1)
    initial_password: Password | None = Field(
        default=None,
        description="Omit to have a random temporary password generated and returned once.",
    )
    sso_only: bool = Field(
        default=False,
        description="An account for single sign-on only: no local password (link its identity next, "
        "POST /admin/users/{id}/identities). initial_password must then be omitted.",
    )


class UserCreated(BaseModel):
    user: UserPublic
    temporary_password: str | None = Field(
        default=None, description="Only when no initial_password was given; shown once."
    )


class UserUpdate(Strict):
    display_name: DisplayName | None = None
    email: EmailStr | None = None
    roles: list[Role] | None = Field(default=None, min_length=1)
    sso_only: bool | None = Field(
        default=None,
        description="true: refuse the local password from now on (needs a linked identity); "
        "false: allow it again (then reset the password).",
    )


class UserPage(Page[UserPublic]):
    """A page of accounts, ordered by username."""

    total: int = Field(description="Accounts matching the filters, in all.")
    limit: int = Field(deprecated=True, description="Deprecated: the page size you asked for.")
    offset: int = Field(deprecated=True, description="Deprecated: page with `cursor`/`next` instead.")


class PasswordReset(Strict):
    new_password: Password | None = Field(
        default=None, description="Omit to have a random temporary password generated."
    )


class PasswordResetResult(BaseModel):
    temporary_password: str | None = None
    sessions_ended: int


class SessionInfo(BaseModel):
    """One live login session (a refresh-token family)."""

    id: uuid.UUID = Field(description="The session family id (the `sid` of its access tokens).")
    started_at: datetime
    last_refreshed_at: datetime
    expires_at: datetime
    client_addr: str | None
    user_agent: str | None
    current: bool = Field(default=False, description="True for the session making this request.")


class SessionsEnded(BaseModel):
    sessions_ended: int


class EndOwnSessions(Strict):
    """End one of the own sessions, or all but the current one (the password is asked again)."""

    password: Password
    session_id: uuid.UUID | None = Field(
        default=None, description="The session to end; omit to end every session except this one."
    )


# --- settings -----------------------------------------------------------------------------------
class SettingItem(BaseModel):
    key: str
    value: int | bool | str
    default: int | bool | str
    type: str
    description: str
    is_default: bool
    minimum: int | None = None
    maximum: int | None = None
    choices: list[str] | None = None


class SettingWrite(Strict):
    value: StrictBool | StrictInt | StrictStr = Field(
        description="Must match the setting's type exactly (no coercion)."
    )
