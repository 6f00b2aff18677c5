"""Named dependencies shared by the routers (``SettingsDep``, ``SessionDep``, ``AuditDep`` …).

Everything here reads from ``request.app.state``, which the lifespan in :mod:`gateway.main`
fills; tests override these dependencies instead of patching modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.engine import SessionFactory, transaction
from gateway.audit import AuditLog
from gateway.settings import Settings


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_session_factory(request: Request) -> SessionFactory:
    """The auth database session factory opened by the lifespan."""
    factory: SessionFactory = request.app.state.session_factory
    return factory


async def get_autocommit_session_factory(request: Request) -> SessionFactory:
    """Sessions without a transaction, for single-statement reads on the hot path (see auth_db.engine)."""
    factory: SessionFactory = request.app.state.autocommit_session_factory
    return factory


async def get_session(
    factory: Annotated[SessionFactory, Depends(get_session_factory)],
) -> AsyncIterator[AsyncSession]:
    """A session whose transaction the request owns: committed when the route returns, else rolled back.

    The commit happens before the response is sent (``scope="function"``), so a client never sees
    success for a write that did not commit.
    """
    async with transaction(factory) as session:
        yield session


async def get_audit(request: Request) -> AuditLog:
    """The audit log bound to this request (client address and request id filled in)."""
    audit: AuditLog = request.app.state.audit
    return audit.for_request(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionFactoryDep = Annotated[SessionFactory, Depends(get_session_factory)]
AutocommitSessionFactoryDep = Annotated[SessionFactory, Depends(get_autocommit_session_factory)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
AuditDep = Annotated[AuditLog, Depends(get_audit)]
