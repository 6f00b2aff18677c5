"""Browser cookies and the CSRF double-submit check.

After ``POST /auth/login`` the browser holds three cookies:

* the access cookie (HttpOnly, path ``/``) with the short-lived access token;
* the refresh cookie (HttpOnly, path ``/auth/refresh`` only) with the opaque refresh token;
* the CSRF cookie (readable by JavaScript, path ``/``) with the session's CSRF token.

Every unsafe request (POST, PUT, PATCH, DELETE) authenticated by the access cookie must send the
CSRF token back in the ``X-CSRF-Token`` header; a cross-site page can make the browser send the
cookies but cannot read the CSRF cookie to copy it into a header.

The token is one per session: an HMAC of the session family id under a key derived from the master
secret. Every refresh of a session sets the same value, so several tabs sharing the browser's
cookies never hold a token the cookie no longer matches, while each login gets a new one.

With ``COOKIE_SECURE=true`` and no ``COOKIE_DOMAIN`` the names carry the ``__Host-`` prefix
(``__Secure-`` for the refresh cookie, whose path is not ``/``), which browsers only accept from a
secure origin for this exact host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass

from fastapi import Request, Response

from gateway.errors import Forbidden
from gateway.security.keys import derive_key
from gateway.settings import Settings

CSRF_HEADER = "X-CSRF-Token"
REFRESH_PATH = "/auth/refresh"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class CookieNames:
    """The names of the three auth cookies under the current settings."""

    access: str
    refresh: str
    csrf: str


def cookie_names(settings: Settings) -> CookieNames:
    """``__Host-gw_access`` / ``__Secure-gw_refresh`` / ``__Host-gw_csrf`` on HTTPS, else unprefixed."""
    if not settings.cookie_secure:
        return CookieNames("gw_access", "gw_refresh", "gw_csrf")
    if settings.cookie_domain:
        return CookieNames("__Secure-gw_access", "__Secure-gw_refresh", "__Secure-gw_csrf")
    return CookieNames("__Host-gw_access", "__Secure-gw_refresh", "__Host-gw_csrf")


def session_csrf_token(settings: Settings, session_family: uuid.UUID) -> str:
    """The CSRF token of a session: the same for every refresh of the family, unguessable without the key."""
    digest = hmac.new(derive_key(settings, "csrf"), session_family.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def set_auth_cookies(
    response: Response,
    settings: Settings,
    *,
    access_token: str,
    access_max_age: int,
    refresh_token: str,
    refresh_max_age: int,
    csrf_token: str,
) -> None:
    """Set the access, refresh and CSRF cookies on ``response``."""
    names = cookie_names(settings)
    response.set_cookie(
        names.access,
        access_token,
        max_age=access_max_age,
        path="/",
        httponly=True,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        domain=settings.cookie_domain,
    )
    response.set_cookie(
        names.refresh,
        refresh_token,
        max_age=refresh_max_age,
        path=REFRESH_PATH,
        httponly=True,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        domain=settings.cookie_domain,
    )
    response.set_cookie(
        names.csrf,
        csrf_token,
        max_age=refresh_max_age,
        path="/",
        httponly=False,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        domain=settings.cookie_domain,
    )


def clear_auth_cookies(response: Response, settings: Settings) -> None:
    """Expire the three auth cookies."""
    names = cookie_names(settings)
    response.delete_cookie(
        names.access,
        path="/",
        httponly=True,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        domain=settings.cookie_domain,
    )
    response.delete_cookie(
        names.refresh,
        path=REFRESH_PATH,
        httponly=True,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        domain=settings.cookie_domain,
    )
    response.delete_cookie(
        names.csrf,
        path="/",
        httponly=False,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        domain=settings.cookie_domain,
    )


def check_csrf(request: Request, settings: Settings) -> None:
    """Refuse an unsafe cookie-authenticated request whose ``X-CSRF-Token`` does not match the cookie.

    Raises:
        Forbidden: ``csrf_failed``.
    """
    if request.method.upper() in SAFE_METHODS:
        return
    cookie = request.cookies.get(cookie_names(settings).csrf, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not header or not hmac.compare_digest(cookie.encode(), header.encode()):
        raise Forbidden(
            f"This request is authenticated by cookie and needs the {CSRF_HEADER} header "
            "equal to the CSRF cookie.",
            code="csrf_failed",
        )
