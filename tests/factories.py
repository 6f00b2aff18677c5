"""Test helpers shared by every test package: create accounts directly in the auth DB, log in.

``create_user`` hashes with the same cheap argon2 parameters as the ``make_settings`` fixture, so
logging in does not rehash. ``bearer_headers`` logs in through ``POST /auth/token`` like a tool.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from auth_db.engine import SessionFactory
from auth_db.models import User, UserRole
from gateway.security.principal import Role

DEFAULT_PASSWORD = "Correct-Horse-Battery-Staple-9"

_cheap_hash = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1),))


async def create_user(
    session_factory: SessionFactory,
    *,
    username: str,
    roles: Iterable[Role | str],
    password: str = DEFAULT_PASSWORD,
    display_name: str | None = None,
    email: str | None = None,
    is_active: bool = True,
    must_change_password: bool = False,
) -> User:
    """Insert an account with ``roles`` and commit it; returns the user."""
    user = User(
        username=username.lower(),
        display_name=display_name or username.title(),
        email=email,
        password_hash=_cheap_hash.hash(password),
        is_active=is_active,
        must_change_password=must_change_password,
    )
    async with session_factory() as session:
        session.add(user)
        await session.flush()
        for role in set(roles):
            session.add(UserRole(user_id=user.id, role=Role(role).value))
        await session.commit()
    return user


async def login_tokens(
    client: httpx.AsyncClient, username: str, password: str = DEFAULT_PASSWORD, **extra: str
) -> dict[str, str]:
    """``POST /auth/token`` and return its JSON body (fails the test on a non-200 answer)."""
    response = await client.post("/auth/token", data={"username": username, "password": password, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


async def bearer_headers(
    client: httpx.AsyncClient, username: str, password: str = DEFAULT_PASSWORD
) -> dict[str, str]:
    """``{"Authorization": "Bearer …"}`` for ``username``, obtained through ``POST /auth/token``."""
    tokens = await login_tokens(client, username, password)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def browser_login(
    client: httpx.AsyncClient, username: str, password: str = DEFAULT_PASSWORD, **extra: str
) -> dict[str, object]:
    """``POST /auth/login`` like the frontend; the client keeps the cookies. Returns the JSON body."""
    response = await client.post("/auth/login", json={"username": username, "password": password, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def audit_actions(session_factory: SessionFactory) -> list[tuple[str, str]]:
    """Every ``(action, outcome)`` of the audit trail, oldest first."""
    from sqlmodel import col, select

    from auth_db.models import AuditEvent

    async with session_factory() as session:
        rows = await session.exec(select(AuditEvent).order_by(col(AuditEvent.id)))
        return [(row.action, row.outcome) for row in rows.all()]
