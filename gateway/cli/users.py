"""``gateway users``: account commands for operators (the first administrator, above all).

There are no default accounts. ``gateway users create-admin --username alice`` prompts for the
password (twice, hidden), or reads it from standard input with ``--password-stdin``; a password is
never taken from the command line, where other users could see it in the process list.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from auth_db.engine import create_engine, create_session_factory, transaction
from auth_db.types import utcnow
from gateway.audit import AuditLog, Outcome
from gateway.cli.config import settings_or_exit
from gateway.errors import ApiError
from gateway.schemas.accounts import UserCreate
from gateway.security import throttle
from gateway.security.passwords import PasswordService, password_problems
from gateway.security.principal import Role
from gateway.security.sessions import purge_dead_sessions, session_policy
from gateway.services.accounts import create_user
from gateway.settings import Settings

users_app = typer.Typer(help="Manage accounts.", no_args_is_help=True)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first: str = typer.prompt("Password", hide_input=True)
    second: str = typer.prompt("Repeat password", hide_input=True)
    if first != second:
        typer.echo("gateway: the passwords differ", err=True)
        raise typer.Exit(1)
    return first


async def _create_admin(
    settings: Settings,
    *,
    username: str,
    display_name: str,
    email: str | None,
    roles: list[Role],
    password: str,
) -> str:
    url = settings.computed_auth_database_url
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        if settings.auto_migrate:
            from auth_db import migrate

            await asyncio.to_thread(migrate.upgrade, url)
        factory = create_session_factory(engine)
        password_hash = await PasswordService(settings).hash(password)
        async with transaction(factory) as session:
            user = await create_user(
                session,
                username=username,
                display_name=display_name,
                email=email,
                roles=roles,
                password_hash=password_hash,
                must_change_password=False,
            )
        await AuditLog(factory, client_addr="cli").record(
            action="admin.user_create",
            outcome=Outcome.success,
            target_type="user",
            target_id=str(user.id),
            details={"roles": sorted(roles), "via": "cli"},
        )
        return str(user.id)
    finally:
        await engine.dispose()


@users_app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(help="Login name (lower case letters, digits, . _ -).")],
    display_name: Annotated[str | None, typer.Option(help="Name shown in the frontend.")] = None,
    email: Annotated[str | None, typer.Option(help="Email address (optional).")] = None,
    clinician: Annotated[
        bool,
        typer.Option(
            "--clinician/--no-clinician",
            help="Also give the clinician role (an admin can only grant roles they hold).",
        ),
    ] = True,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input (one line).")
    ] = False,
) -> None:
    """Create an administrator account (there are no default accounts)."""
    settings = settings_or_exit()
    roles = [Role.admin, Role.clinician] if clinician else [Role.admin]
    try:
        checked = UserCreate(
            username=username, display_name=display_name or username, email=email, roles=roles
        )
    except ValueError as exc:
        typer.echo(f"gateway: invalid account details: {exc}", err=True)
        raise typer.Exit(2) from None
    password = _read_password(password_stdin)
    problems = password_problems(password, [checked.username, checked.display_name, checked.email or ""])
    if problems:
        typer.echo(f"gateway: the password {problems[0]}", err=True)
        raise typer.Exit(2)
    try:
        user_id = asyncio.run(
            _create_admin(
                settings,
                username=checked.username,
                display_name=checked.display_name,
                email=checked.email,
                roles=roles,
                password=password,
            )
        )
    except ApiError as exc:
        typer.echo(f"gateway: {exc.detail or exc.title} ({exc.code})", err=True)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        typer.echo(
            f"gateway: the auth database cannot be used ({type(exc).__name__}); is it migrated "
            "(`gateway db upgrade`) and reachable?",
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(f"created administrator {checked.username} ({user_id}) with roles {', '.join(roles)}")


async def _purge(settings: Settings) -> tuple[int, int]:
    engine = create_engine(settings.computed_auth_database_url, pool_size=1, max_overflow=0)
    try:
        factory = create_session_factory(engine)
        now = utcnow()
        async with transaction(factory) as session:
            sessions = await purge_dead_sessions(session, policy=await session_policy(session), now=now)
            counters = await throttle.purge_stale(
                session, policy=await throttle.throttle_policy(session), now=now
            )
        return sessions, counters
    finally:
        await engine.dispose()


@users_app.command("purge")
def purge() -> None:
    """Delete dead session rows and stale login-throttle counters (run daily, e.g. from cron)."""
    try:
        sessions, counters = asyncio.run(_purge(settings_or_exit()))
    except SQLAlchemyError as exc:
        typer.echo(f"gateway: the auth database cannot be used ({type(exc).__name__})", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"deleted {sessions} session rows and {counters} throttle counters")
