"""``/auth``: login (cookies or bearer tokens), refresh, logout, the own account, password and TOTP.

See ``docs/auth.md`` for the flows, cookie and header names, and every error code.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, Form, Request, Response, status
from pydantic import BaseModel, Field

from auth_db.types import utcnow
from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionDep, SessionFactoryDep, SettingsDep
from gateway.errors import ApiError, Forbidden, NotAuthenticated, problem_responses
from gateway.schemas.accounts import (
    PRINTABLE,
    EndOwnSessions,
    LoginRequest,
    LoginResponse,
    MeResponse,
    PasswordChange,
    PasswordConfirmation,
    ProfileUpdate,
    RecoveryCodes,
    RefreshRequest,
    RefreshResponse,
    SessionInfo,
    SessionsEnded,
    TokenResponse,
    TotpConfirm,
    TotpEnrolment,
)
from gateway.security.authn import Credentials, IssuedTokens, invalid_refresh_token
from gateway.security.csrf import (
    check_csrf,
    clear_auth_cookies,
    cookie_names,
    session_csrf_token,
    set_auth_cookies,
)
from gateway.security.deps import (
    AuthenticatedPrincipal,
    AuthenticatorDep,
    ClientInfoDep,
    CurrentPrincipal,
    PasswordsDep,
    TotpCipherDep,
    principal_for,
)
from gateway.security.principal import Principal
from gateway.services import profile
from gateway.services.accounts import get_user, public, roles_of, session_infos
from gateway.settings import Settings

router = APIRouter(prefix="/auth", tags=["auth"])
AUTH_ERRORS = problem_responses(401, 403, 422, 429)


async def me_of(session: SessionDep, principal: Principal) -> MeResponse:
    """The MeResponse of ``principal`` read fresh from the database."""
    user = await get_user(session, principal.user_id)
    roles = await roles_of(session, user.id)
    return MeResponse(
        **public(user, roles).model_dump(),
        permissions=sorted(principal.permissions),
        totp_enrolment_required=principal.totp_enrolment_required,
    )


def set_session_cookies(response: Response, settings: Settings, issued: IssuedTokens) -> str:
    """Set the session's access, refresh and CSRF cookies (password and SSO logins alike); the CSRF token."""
    csrf = session_csrf_token(settings, issued.session_family)
    refresh_age = max(1, int((issued.refresh_expires_at - utcnow()).total_seconds()))
    set_auth_cookies(
        response,
        settings,
        access_token=issued.access_token,
        # The cookie outlives the JWT inside it, so an expired token reaches the API and gets the
        # clear answer `401 token_expired` (refresh) instead of a missing cookie.
        access_max_age=refresh_age,
        refresh_token=issued.refresh_token,
        refresh_max_age=refresh_age,
        csrf_token=csrf,
    )
    return csrf


def _no_password_change_pending(principal: Principal) -> None:
    if principal.must_change_password:
        raise Forbidden("Change your password first (POST /auth/password).", code="password_change_required")


@router.post("/login", response_model=LoginResponse, responses=AUTH_ERRORS)
async def login(
    body: LoginRequest,
    response: Response,
    request: Request,
    authenticator: AuthenticatorDep,
    client: ClientInfoDep,
    settings: SettingsDep,
    session: SessionDep,
) -> LoginResponse:
    """Browser login: sets the access, refresh and CSRF cookies (see docs/auth.md)."""
    issued = await authenticator.login(
        Credentials(body.username, body.password, body.totp_code, body.recovery_code), client
    )
    csrf = set_session_cookies(response, settings, issued)
    principal = await _principal_after_login(request, session, issued)
    return LoginResponse(user=await me_of(session, principal), expires_in=issued.expires_in, csrf_token=csrf)


async def _principal_after_login(request: Request, session: SessionDep, issued: IssuedTokens) -> Principal:
    request.state.user_id = str(issued.user_id)
    return await principal_for(session, issued.user_id, issued.session_family, "cookie")


@router.post("/token", response_model=TokenResponse, responses=AUTH_ERRORS)
async def token(
    authenticator: AuthenticatorDep,
    client: ClientInfoDep,
    username: Annotated[str, Form(min_length=1, max_length=64, pattern=PRINTABLE)],
    password: Annotated[str, Form(min_length=1, max_length=128, json_schema_extra={"format": "password"})],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
    scope: Annotated[str, Form(max_length=200)] = "",
    totp_code: Annotated[str | None, Form(min_length=6, max_length=10)] = None,
    recovery_code: Annotated[str | None, Form(min_length=8, max_length=64)] = None,
) -> TokenResponse:
    """OAuth2 password grant for tools and the OpenAPI "Authorize" button: returns bearer tokens."""
    issued = await authenticator.login(Credentials(username, password, totp_code, recovery_code), client)
    return TokenResponse(
        access_token=issued.access_token, expires_in=issued.expires_in, refresh_token=issued.refresh_token
    )


@router.post("/refresh", response_model=RefreshResponse, responses=AUTH_ERRORS)
async def refresh(
    request: Request,
    response: Response,
    authenticator: AuthenticatorDep,
    settings: SettingsDep,
    body: Annotated[RefreshRequest | None, Body()] = None,
) -> RefreshResponse:
    """Rotate the refresh token: from the refresh cookie (browser, needs X-CSRF-Token) or the body."""
    if body is not None:
        issued = await authenticator.refresh(body.refresh_token)
        return RefreshResponse(
            expires_in=issued.expires_in,
            access_token=issued.access_token,
            token_type="bearer",  # noqa: S106 - the OAuth2 token type
            refresh_token=issued.refresh_token,
        )
    cookie = request.cookies.get(cookie_names(settings).refresh)
    if not cookie:
        raise invalid_refresh_token()
    check_csrf(request, settings)
    issued = await authenticator.refresh(cookie)
    csrf = set_session_cookies(response, settings, issued)
    return RefreshResponse(expires_in=issued.expires_in, csrf_token=csrf)


class CsrfToken(BaseModel):
    """The CSRF token of the browser's session, for a tab that did not log in itself."""

    csrf_token: str = Field(description="Send it as X-CSRF-Token on every POST/PUT/PATCH/DELETE.")


#: The form of every CSRF token the gateway issues (43 characters of base64url).
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


@router.get("/csrf", response_model=CsrfToken, responses=problem_responses(401))
async def read_csrf_token(request: Request, settings: SettingsDep) -> CsrfToken:
    """The session's CSRF token, from the CSRF cookie (see docs/frontend.md, several tabs).

    A frontend on another host cannot read the gateway's cookies; a tab opened after the login asks
    here instead. Only the frontend's own origin (``CORS_ALLOW_ORIGINS``) can read the answer.
    """
    cookie = request.cookies.get(cookie_names(settings).csrf, "")
    if not _CSRF_TOKEN.fullmatch(cookie):
        raise NotAuthenticated("There is no browser session; sign in.")
    return CsrfToken(csrf_token=cookie)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(401, 403))
async def logout(
    principal: AuthenticatedPrincipal,
    authenticator: AuthenticatorDep,
    settings: SettingsDep,
    response: Response,
) -> None:
    """End this session server-side and clear the cookies."""
    await authenticator.logout(
        user_id=principal.user_id, username=principal.username, session_family=principal.session_id
    )
    clear_auth_cookies(response, settings)


@router.get("/me", response_model=MeResponse, responses=problem_responses(401))
async def read_me(principal: AuthenticatedPrincipal, session: SessionDep) -> MeResponse:
    """The signed-in user (allowed even when the password must be changed first)."""
    return await me_of(session, principal)


@router.patch("/me", response_model=MeResponse, responses=problem_responses(401, 403, 409, 422))
async def update_me(
    body: ProfileUpdate, principal: CurrentPrincipal, session: SessionDep, audit: AuditDep
) -> MeResponse:
    """Change the own display name or email (send ``"email": null`` to remove it)."""
    await profile.update_profile(
        session,
        principal,
        display_name=body.display_name,
        email=body.email,
        email_set="email" in body.model_fields_set,
    )
    audit.stage(
        session,
        action="auth.profile_update",
        outcome=Outcome.success,
        actor=principal.actor,
        target_type="user",
        target_id=str(principal.user_id),
        details={"fields": sorted(body.model_fields_set)},
    )
    return await me_of(session, principal)


@router.get("/sessions", response_model=list[SessionInfo], responses=problem_responses(401, 403))
async def list_own_sessions(principal: CurrentPrincipal, session: SessionDep) -> list[SessionInfo]:
    """The caller's live sessions (browsers and tools), the current one marked."""
    return await session_infos(session, principal.user_id, current=principal.session_id)


@router.post("/sessions/end", response_model=SessionsEnded, responses=AUTH_ERRORS)
async def end_own_sessions(
    body: EndOwnSessions,
    principal: CurrentPrincipal,
    session: SessionDep,
    factory: SessionFactoryDep,
    passwords: PasswordsDep,
    audit: AuditDep,
) -> SessionsEnded:
    """End one of the own sessions, or every one except the current (needs the password again)."""
    ended = await profile.end_own_sessions(
        session, factory, passwords, audit, principal, password=body.password, family_id=body.session_id
    )
    audit.stage(
        session,
        action="auth.sessions_end",
        outcome=Outcome.success,
        actor=principal.actor,
        target_type="user",
        target_id=str(principal.user_id),
        details={"sessions_ended": ended},
    )
    return SessionsEnded(sessions_ended=ended)


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT, responses=AUTH_ERRORS)
async def change_password(
    body: PasswordChange,
    principal: AuthenticatedPrincipal,
    session: SessionDep,
    factory: SessionFactoryDep,
    passwords: PasswordsDep,
    audit: AuditDep,
    settings: SettingsDep,
    response: Response,
) -> None:
    """Change the own password; ends every session of the account (sign in again)."""
    ended = await profile.change_password(
        session,
        factory,
        passwords,
        audit,
        principal,
        current_password=body.current_password,
        new_password=body.new_password,
    )
    audit.stage(
        session,
        action="auth.password_change",
        outcome=Outcome.success,
        actor=principal.actor,
        target_type="user",
        target_id=str(principal.user_id),
        details={"sessions_ended": ended},
    )
    clear_auth_cookies(response, settings)


@router.post("/totp/enrol", response_model=TotpEnrolment, responses=AUTH_ERRORS | problem_responses(409))
async def enrol_totp(
    body: PasswordConfirmation,
    principal: AuthenticatedPrincipal,
    session: SessionDep,
    factory: SessionFactoryDep,
    passwords: PasswordsDep,
    audit: AuditDep,
    cipher: TotpCipherDep,
) -> TotpEnrolment:
    """Start TOTP enrolment: returns a new secret and its ``otpauth://`` URI (not active yet)."""
    _no_password_change_pending(principal)
    secret, uri = await profile.enrol_totp(
        session, factory, passwords, audit, cipher, principal, password=body.password
    )
    audit.stage(
        session,
        action="auth.totp_enrol",
        outcome=Outcome.success,
        actor=principal.actor,
    )
    return TotpEnrolment(secret=secret, otpauth_uri=uri)


@router.post("/totp/confirm", response_model=RecoveryCodes, responses=AUTH_ERRORS | problem_responses(409))
async def confirm_totp(
    body: TotpConfirm,
    principal: AuthenticatedPrincipal,
    session: SessionDep,
    audit: AuditDep,
    cipher: TotpCipherDep,
) -> RecoveryCodes:
    """Activate TOTP with a code from the app; returns ten single-use recovery codes (shown once)."""
    _no_password_change_pending(principal)
    actor = principal.actor
    try:
        codes = await profile.confirm_totp(session, cipher, principal, code=body.code)
    except ApiError:
        await audit.record(action="auth.totp_enable", outcome=Outcome.failure, actor=actor)
        raise
    audit.stage(session, action="auth.totp_enable", outcome=Outcome.success, actor=actor)
    return RecoveryCodes(recovery_codes=codes)


@router.post(
    "/totp/disable", status_code=status.HTTP_204_NO_CONTENT, responses=AUTH_ERRORS | problem_responses(409)
)
async def disable_totp(
    body: PasswordConfirmation,
    principal: AuthenticatedPrincipal,
    session: SessionDep,
    factory: SessionFactoryDep,
    passwords: PasswordsDep,
    audit: AuditDep,
) -> None:
    """Switch TOTP off (needs the password)."""
    _no_password_change_pending(principal)
    await profile.disable_totp(session, factory, passwords, audit, principal, password=body.password)
    audit.stage(
        session,
        action="auth.totp_disable",
        outcome=Outcome.success,
        actor=principal.actor,
    )


@router.post(
    "/totp/recovery-codes", response_model=RecoveryCodes, responses=AUTH_ERRORS | problem_responses(409)
)
async def regenerate_recovery_codes(
    body: PasswordConfirmation,
    principal: CurrentPrincipal,
    session: SessionDep,
    factory: SessionFactoryDep,
    passwords: PasswordsDep,
    audit: AuditDep,
) -> RecoveryCodes:
    """Replace the recovery codes (the old ones stop working)."""
    codes = await profile.regenerate_recovery_codes(
        session, factory, passwords, audit, principal, password=body.password
    )
    audit.stage(
        session,
        action="auth.recovery_codes",
        outcome=Outcome.success,
        actor=principal.actor,
    )
    return RecoveryCodes(recovery_codes=codes)
