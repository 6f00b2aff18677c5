"""FastAPI dependencies for authentication and permissions: ``CurrentPrincipal`` and ``require``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from gateway.errors import Forbidden, NotAuthenticated
from gateway.security.principal import Permission, Principal


async def current_principal(request: Request) -> Principal:
    """The authenticated user of this request (bearer token or session cookie).

    Raises:
        NotAuthenticated: no valid credentials were presented.
    """
    raise NotAuthenticated("Sign in or present a bearer token.")


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that passes the principal through when it holds ``permission``, else 403."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if not principal.has(permission):
            raise Forbidden(f"This needs the '{permission}' permission.", code="permission_denied")
        return principal

    dependency.__name__ = f"require_{permission.name}"
    return dependency
