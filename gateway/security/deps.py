"""FastAPI dependencies for authentication, permissions and the account routes.

``CurrentPrincipal`` and ``require`` guard the routes; ``PasswordsDep``, ``AuthenticatorDep``,
``TotpCipherDep`` and ``ClientInfoDep`` serve the account routes.

A request authenticates with ``Authorization: Bearer <access token>`` or, from a browser, with the
access cookie; cookie-authenticated unsafe requests must also pass the CSRF check. Every request
checks in the auth database that the token's session is still alive and the account active (one
statement, :mod:`gateway.security.authz`), so logout, password change, disabling an account and "end
sessions" take effect within ``AUTHZ_CACHE_MS`` on every worker, and at once on the worker that made
the change.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.hotpath import REQUIRE_2FA_KEY, AuthzRow, HotStoreUnavailable
from auth_db.models import SystemSetting
from auth_db.types import utcnow
from gateway.audit import AuditLog, Outcome
from gateway.deps import AuditDep, SessionFactoryDep, SettingsDep
from gateway.errors import ApiError, AuthDatabaseUnavailable, Forbidden, NotAuthenticated
from gateway.r4.search import patient_reference
from gateway.security.authn import Authenticator, ClientInfo
from gateway.security.authz import Authoriser
from gateway.security.csrf import check_csrf, cookie_names
from gateway.security.passwords import PasswordService
from gateway.security.principal import Permission, Principal, Role
from gateway.security.sessions import load_session_user
from gateway.security.tokens import AccessTokenVerifier, InvalidToken
from gateway.security.totp import TotpCipher
from gateway.settings import Settings
from gateway.system_settings import effective_system_setting

logger = logging.getLogger("gateway.security")

#: FHIR logical ids: https://hl7.org/fhir/R4/datatypes.html#id
FHIR_ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"
FHIR_ID = re.compile(FHIR_ID_PATTERN)

bearer_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/token",
    auto_error=False,
    scheme_name="bearer",
    description="Access token from POST /auth/token (or the access cookie set by POST /auth/login).",
)


async def authenticated_principal(
    request: Request, bearer: Annotated[str | None, Depends(bearer_scheme)]
) -> Principal:
    """The authenticated user, including accounts that must first change their password or enrol TOTP.

    Only the account's own endpoints (``/auth/me``, password, TOTP, logout) use this directly;
    everything else uses :data:`CurrentPrincipal`. The check is one statement on the auth database
    (:mod:`gateway.security.authz`, positive answers reused for at most ``AUTHZ_CACHE_MS``); when the
    route names a patient (``{patient_id}``), the same statement also answers whether the user may
    touch that patient, which :func:`gateway.security.access.patient_access` then uses.

    Raises:
        NotAuthenticated: ``not_authenticated`` (no credentials), ``token_expired``, ``invalid_token``
            or ``session_ended`` (logged out, revoked, idle/absolute timeout, or account disabled).
        Forbidden: ``csrf_failed`` for a cookie-authenticated unsafe request without a matching
            ``X-CSRF-Token`` header.
        AuthDatabaseUnavailable: the auth database did not answer (503).
    """
    # Read from the app's state directly (not as dependencies of their own): this runs on every request.
    state = request.app.state
    settings: Settings = state.settings
    method: Literal["bearer", "cookie"]
    if bearer:
        token, method = bearer, "bearer"
    else:
        cookie = request.cookies.get(cookie_names(settings).access)
        if not cookie:
            raise NotAuthenticated("Sign in or present a bearer token.")
        token, method = cookie, "cookie"
    verifier: AccessTokenVerifier = state.token_verifier
    try:
        claims = verifier.verify(token)
    except InvalidToken as exc:
        if str(exc) == "ExpiredSignatureError":
            raise NotAuthenticated(
                "The access token has expired; refresh it.", code="token_expired"
            ) from None
        audit: AuditLog = state.audit
        await audit.for_request(request).record(
            action="auth.token_rejected", outcome=Outcome.denied, reason=str(exc)
        )
        raise NotAuthenticated("The access token is not valid.", code="invalid_token") from None
    if method == "cookie":
        check_csrf(request, settings)
    patient_id = request.path_params.get("patient_id")
    if patient_id is None and request.scope["path"] == FHIR_DOCUMENT_SEARCH:
        patient_id = _searched_patient(request, settings)
    if patient_id is not None and not FHIR_ID.fullmatch(patient_id):
        patient_id = None  # not a patient id at all: the route's own validation answers 422
    authoriser: Authoriser = state.authoriser
    try:
        row = await authoriser.check(
            user_id=claims.user_id, family_id=claims.session_family, patient_id=patient_id
        )
    except HotStoreUnavailable:
        logger.warning("auth database unavailable for the authorisation check")
        raise AuthDatabaseUnavailable("The auth database cannot be reached.", retry_after=5) from None
    if row is None:
        raise NotAuthenticated("This session has ended; sign in again.", code="session_ended")
    principal = principal_from(row, claims.user_id, claims.session_family, method)
    request.state.user_id = str(principal.user_id)
    if patient_id is not None:
        request.state.relationship = Relationship(
            principal.user_id, patient_id, row.care_team, row.break_glass, row.ehr_id
        )
    return principal


#: The FHIR search that names its patient in the query (``patient``/``subject``), not in the path.
FHIR_DOCUMENT_SEARCH = "/fhir/DocumentReference"


def _searched_patient(request: Request, settings: Settings) -> str | None:
    """The patient a DocumentReference search names, so the one statement also answers for it."""
    value = request.query_params.get("patient") or request.query_params.get("subject")
    if value is None:
        return None
    try:
        return patient_reference(value, f"{settings.public_base}/fhir")
    except ApiError:
        return None  # the route refuses it with a precise message


@dataclass(frozen=True, slots=True)
class Relationship:
    """What the authorisation statement found about the user and the patient named in the path."""

    user_id: uuid.UUID
    patient_id: str
    care_team: bool
    break_glass: bool
    ehr_id: str | None


async def principal_for(
    session: AsyncSession, user_id: uuid.UUID, family_id: uuid.UUID, method: Literal["bearer", "cookie"]
) -> Principal:
    """The principal of ``user_id`` in session ``family_id``, read through the ORM (after a login).

    Raises:
        NotAuthenticated: ``session_ended``.
    """
    loaded = await load_session_user(session, user_id=user_id, family_id=family_id, now=utcnow())
    if loaded is None:
        raise NotAuthenticated("This session has ended; sign in again.", code="session_ended")
    user, role_names = loaded
    stored = await session.get(SystemSetting, REQUIRE_2FA_KEY)
    row = AuthzRow(
        username=user.username,
        display_name=user.display_name,
        must_change_password=user.must_change_password,
        totp_enabled=user.totp_enabled,
        roles=frozenset(name for name in role_names if name in Role.__members__),
        require_2fa_for_admins=stored.value if stored is not None else None,
        care_team=False,
        break_glass=False,
        ehr_id=None,
    )
    return principal_from(row, user_id, family_id, method)


def principal_from(
    row: AuthzRow, user_id: uuid.UUID, family_id: uuid.UUID, method: Literal["bearer", "cookie"]
) -> Principal:
    """The principal described by an authorisation answer."""
    roles = frozenset(Role(name) for name in row.roles)
    enrolment = (
        Role.admin in roles
        and not row.totp_enabled
        and bool(effective_system_setting(REQUIRE_2FA_KEY, row.require_2fa_for_admins))
    )
    return Principal(
        user_id=user_id,
        username=row.username,
        display_name=row.display_name,
        roles=roles,
        session_id=family_id,
        auth_method=method,
        must_change_password=row.must_change_password,
        totp_enrolment_required=enrolment,
    )


AuthenticatedPrincipal = Annotated[Principal, Depends(authenticated_principal)]


async def current_principal(principal: AuthenticatedPrincipal) -> Principal:
    """The authenticated user of this request (bearer token or session cookie).

    Raises:
        NotAuthenticated: no valid credentials were presented (see :func:`authenticated_principal`).
        Forbidden: ``password_change_required`` or ``totp_enrolment_required`` until the account
            has done that.
    """
    if principal.must_change_password:
        raise Forbidden("Change your password first (POST /auth/password).", code="password_change_required")
    if principal.totp_enrolment_required:
        raise Forbidden(
            "Administrators must enrol two-factor authentication first (POST /auth/totp/enrol).",
            code="totp_enrolment_required",
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def check_permission(principal: Principal, permission: Permission) -> None:
    """Refuse a principal without ``permission``.

    Raises:
        Forbidden: ``permission_denied``.
    """
    if not principal.has(permission):
        raise Forbidden(f"This needs the '{permission}' permission.", code="permission_denied")


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that passes the principal through when it holds ``permission``, else 403."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        check_permission(principal, permission)
        return principal

    dependency.__name__ = f"require_{permission.name}"
    return dependency


async def get_password_service(request: Request) -> PasswordService:
    """The app's password hasher, built by the lifespan (its dummy hash computed at start-up)."""
    service: PasswordService = request.app.state.password_service
    return service


PasswordsDep = Annotated[PasswordService, Depends(get_password_service)]


async def get_authenticator(
    settings: SettingsDep, factory: SessionFactoryDep, audit: AuditDep, passwords: PasswordsDep
) -> Authenticator:
    """The login/refresh/logout use-cases bound to this request."""
    return Authenticator(settings, factory, audit, passwords)


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


async def get_totp_cipher(settings: SettingsDep) -> TotpCipher:
    """Encrypts TOTP secrets with the configured key."""
    return TotpCipher(settings)


TotpCipherDep = Annotated[TotpCipher, Depends(get_totp_cipher)]


async def client_info(request: Request) -> ClientInfo:
    """The client address and user agent of this request."""
    return ClientInfo(
        addr=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


ClientInfoDep = Annotated[ClientInfo, Depends(client_info)]
