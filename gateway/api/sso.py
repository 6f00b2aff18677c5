"""``/auth/sso``: sign-in through the hospital's identity provider (OpenID Connect), and its logouts.

Browser navigations (``…/login``, ``…/callback``) answer with redirects: on success to the frontend's
return path with the gateway's session cookies set, on failure to ``FRONTEND_URL/?sso_error=<code>``.
See ``docs/sso.md`` for the flow, the configuration of each provider and every error code.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import set_session_cookies
from gateway.audit import Outcome
from gateway.deps import AuditDep, SessionDep, SessionFactoryDep, SettingsDep
from gateway.errors import NotFound, ServiceUnavailable, problem_responses
from gateway.security.csrf import clear_auth_cookies
from gateway.security.deps import (
    AuthenticatedPrincipal,
    AuthenticatorDep,
    ClientInfoDep,
    CurrentPrincipal,
    PasswordsDep,
)
from gateway.services.accounts import get_user
from gateway.services.profile import reauthenticate
from gateway.services.sso import CallbackParams, SsoFailed, SsoService
from gateway.settings import Settings
from gateway.sso.provider import IdpUnavailable, ProviderClient

router = APIRouter(prefix="/auth/sso", tags=["sso"])

#: No page of the flow may be cached or leak its URL (state, code) to another site.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}


class SsoProvider(BaseModel):
    """One identity provider the login page offers."""

    id: str
    display_name: str
    login_url: str = Field(description="Navigate the browser here (add ?return_to=/path to come back there).")


class OidcErrorBody(BaseModel):
    """The error answer Back-Channel Logout 1.0 prescribes (HTTP 400), not a problem document."""

    error: str = Field(examples=["invalid_request"])
    error_description: str


#: The OpenAPI of the browser navigations: a redirect, no body.
REDIRECT: dict[int | str, dict[str, Any]] = {
    303: {
        "description": "Redirect: to the identity provider, or back to the frontend (see docs/sso.md).",
        "headers": {"Location": {"schema": {"type": "string"}, "description": "Where the browser goes."}},
    }
}


BACKCHANNEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The sessions of that provider session have ended (or there were none)."},
    400: {"description": "The logout token is not valid.", "model": OidcErrorBody},
}


class SsoLinkStart(BaseModel):
    """Re-enter the password to link an identity at a provider to the signed-in account."""

    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=128, json_schema_extra={"format": "password"})
    return_to: str | None = Field(default=None, max_length=512)


class SsoAuthorization(BaseModel):
    """Navigate the browser to ``authorize_url``; the provider sends it back to the gateway's callback."""

    authorize_url: str


class SsoLogoutResult(BaseModel):
    """The gateway session has ended; navigate to ``end_session_url`` to end the provider's session too."""

    end_session_url: str | None = Field(
        description="Navigate the browser here (a plain navigation): a link of the gateway's that redirects "
        "to the provider's logout page and back to the frontend; valid for two minutes. Null for a "
        "session that was not started by single sign-on."
    )


def _service(request: Request) -> SsoService:
    service: SsoService | None = getattr(request.app.state, "sso", None)
    if service is None:
        raise NotFound("Single sign-on is not configured.", code="sso_not_configured")
    return service


def _client(request: Request, provider_id: str) -> ProviderClient:
    client = _service(request).client(provider_id)
    if client is None:
        raise NotFound("No identity provider has this id.", code="sso_provider_unknown")
    return client


def _set_binding_cookie(response: Response, settings: Settings, binding: str) -> None:
    response.set_cookie(
        binding_cookie_name(settings),
        binding,
        max_age=settings.oidc_login_ttl_seconds,
        path="/",
        httponly=True,
        secure=settings.cookie_secure,
        samesite="lax",  # it must come back on the provider's top-level redirect to the callback
    )


def binding_cookie_name(settings: Settings) -> str:
    """``__Host-gw_sso`` on HTTPS (this host only), ``gw_sso`` on plain-http development."""
    return "__Host-gw_sso" if settings.cookie_secure else "gw_sso"


def _error_redirect(settings: Settings, code: str) -> RedirectResponse:
    # The binding cookie stays: a forged callback must not break the login this browser has in flight
    # (the cookie expires with its transaction anyway).
    return RedirectResponse(f"{settings.frontend_base}/?{urlencode({'sso_error': code})}", 303, NO_STORE)


@router.get("/providers", response_model=list[SsoProvider])
async def list_providers(settings: SettingsDep) -> list[SsoProvider]:
    """The identity providers for the login page's "Sign in with …" buttons (empty: local accounts only)."""
    return [
        SsoProvider(
            id=p.id, display_name=p.display_name, login_url=f"{settings.public_base}/auth/sso/{p.id}/login"
        )
        for p in settings.oidc_providers
    ]


@router.get(
    "/{provider_id}/login",
    status_code=303,
    response_class=RedirectResponse,
    responses=REDIRECT | problem_responses(404, 422),
)
async def start_login(
    provider_id: str,
    request: Request,
    settings: SettingsDep,
    audit: AuditDep,
    return_to: Annotated[str | None, Query(max_length=512)] = None,
    invite: Annotated[str | None, Query(max_length=128, description="An administrator's invite.")] = None,
) -> RedirectResponse:
    """Start signing in at the provider: redirects the browser to its authorization endpoint.

    With ``invite`` (the link an administrator handed out), the identity that signs in is bound to the
    invited account, once.
    """
    service = _service(request)
    client = _client(request, provider_id)
    try:
        url, binding = await service.start(client, return_to=return_to, invite=invite)
    except IdpUnavailable:
        return _error_redirect(settings, "idp_unavailable")
    except SsoFailed as failed:
        await audit.record(
            action="auth.sso_login_failed",
            outcome=Outcome.denied,
            reason=failed.code,
            details={"provider": provider_id},
        )
        return _error_redirect(settings, failed.code)
    response = RedirectResponse(url, 303, NO_STORE)
    _set_binding_cookie(response, settings, binding)
    return response


@router.post(
    "/{provider_id}/link",
    response_model=SsoAuthorization,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def start_link(
    provider_id: str,
    body: SsoLinkStart,
    principal: CurrentPrincipal,
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    factory: SessionFactoryDep,
    passwords: PasswordsDep,
    audit: AuditDep,
) -> SsoAuthorization:
    """Link the signed-in local account to its identity at a provider (needs the password again).

    The answer's ``authorize_url`` starts a sign-in at the provider; when it comes back, the identity is
    bound to this account (refused if it belongs to another) and this browser is signed in through it.
    """
    service = _service(request)
    client = _client(request, provider_id)
    user = await get_user(session, principal.user_id)
    await reauthenticate(factory, passwords, audit, user=user, password=body.password, action="auth.sso_link")
    try:
        url, binding = await service.start(client, return_to=body.return_to, link_user_id=user.id)
    except IdpUnavailable:
        raise ServiceUnavailable(
            "The identity provider cannot be reached.", code="idp_unavailable", retry_after=30
        ) from None
    _set_binding_cookie(response, settings, binding)
    response.headers.update(NO_STORE)
    return SsoAuthorization(authorize_url=url)


@router.get(
    "/{provider_id}/callback",
    status_code=303,
    response_class=RedirectResponse,
    responses=REDIRECT | problem_responses(404, 422),
)
async def callback(
    provider_id: str,
    request: Request,
    settings: SettingsDep,
    audit: AuditDep,
    client_info: ClientInfoDep,
    state: Annotated[str | None, Query(max_length=256)] = None,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    iss: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """The provider's redirect back: validates everything, then sets the gateway's session cookies."""
    service = _service(request)
    client = _client(request, provider_id)
    binding = request.cookies.get(binding_cookie_name(settings))
    try:
        login = await service.complete(
            audit, client, CallbackParams(state, code, iss, error), binding, client_info
        )
    except SsoFailed as failed:
        return _error_redirect(settings, failed.code)
    request.state.user_id = str(login.issued.user_id)
    response = RedirectResponse(settings.frontend_base + login.return_to, 303, NO_STORE)
    set_session_cookies(response, settings, login.issued)
    response.delete_cookie(
        binding_cookie_name(settings), path="/", secure=settings.cookie_secure, httponly=True
    )
    return response


@router.post(
    "/{provider_id}/backchannel-logout",
    status_code=200,
    response_class=Response,
    responses=BACKCHANNEL_RESPONSES | problem_responses(404, 422),
)
async def backchannel_logout(
    provider_id: str,
    request: Request,
    audit: AuditDep,
    # No length or presence rule here: every bad token, an empty one too, gets the spec's 400 answer
    # (MAX_BODY_BYTES bounds the body; the token checks refuse anything over 16 kB unparsed).
    logout_token: Annotated[str, Form()] = "",
) -> Response:
    """OpenID Connect Back-Channel Logout 1.0: the provider ends every gateway session of its session.

    Called by the provider, server to server, without cookies; the logout token is the only credential.
    """
    service = _service(request)
    client = _client(request, provider_id)
    try:
        await service.backchannel_logout(audit, client, logout_token)
    except SsoFailed:
        return JSONResponse(
            {"error": "invalid_request", "error_description": "The logout token is not valid."}, 400, NO_STORE
        )
    return Response(status_code=200, headers=NO_STORE)


@router.post("/logout", response_model=SsoLogoutResult, responses=problem_responses(401, 403))
async def sso_logout(
    principal: AuthenticatedPrincipal,
    request: Request,
    authenticator: AuthenticatorDep,
    settings: SettingsDep,
    response: Response,
) -> SsoLogoutResult:
    """End this gateway session, and say where to send the browser to end the provider's session too."""
    family: uuid.UUID | None = principal.session_id
    service: SsoService | None = getattr(request.app.state, "sso", None)
    url = await service.logout_link(family) if service is not None and family is not None else None
    await authenticator.logout(user_id=principal.user_id, username=principal.username, session_family=family)
    clear_auth_cookies(response, settings)
    response.headers.update(NO_STORE)
    return SsoLogoutResult(end_session_url=url)


@router.get(
    "/logout/continue",
    status_code=303,
    response_class=RedirectResponse,
    responses=REDIRECT | problem_responses(404, 422),
)
async def continue_logout(
    request: Request,
    settings: SettingsDep,
    handle: Annotated[str, Query(max_length=2048)] = "",
) -> RedirectResponse:
    """On from ``POST /auth/sso/logout`` to the provider's logout page (with ``id_token_hint``).

    A redirect, so that the provider's ID token in it never reaches a page script. A forged or expired
    link, or a provider without a logout endpoint, goes straight back to the frontend.
    """
    service = _service(request)
    url = await service.provider_logout_url(handle)
    return RedirectResponse(url or f"{settings.frontend_base}/", 303, NO_STORE)
