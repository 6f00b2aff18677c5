"""Cookie names follow the cookie settings (``__Host-`` prefix only where browsers accept it)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.security.csrf import cookie_names
from gateway.settings import Settings


def test_cookie_names(make_settings: Callable[..., Settings]) -> None:
    plain = cookie_names(make_settings(cookie_secure=False))
    assert (plain.access, plain.refresh, plain.csrf) == ("gw_access", "gw_refresh", "gw_csrf")
    host = cookie_names(make_settings(cookie_secure=True))
    assert (host.access, host.refresh, host.csrf) == (
        "__Host-gw_access",
        "__Secure-gw_refresh",
        "__Host-gw_csrf",
    )
    shared = cookie_names(make_settings(cookie_secure=True, cookie_domain="example.org"))
    assert shared.access == "__Secure-gw_access"
