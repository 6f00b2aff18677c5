"""``gateway secrets …``: the secrets every replica must share, as the auth database records them.

``check`` compares this configuration with the recorded fingerprints and writes nothing (run it on each host
to find the one that differs); ``accept-new`` records this configuration's values after a deliberate
rotation, so that replicas with the new values start and those with the old ones no longer do.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from auth_db.engine import create_engine
from gateway.cli.config import settings_or_exit
from gateway.security import shared_secrets
from gateway.security.shared_secrets import Fingerprint, NotMigrated, Recorded
from gateway.settings import Settings

secrets_app = typer.Typer(
    help="The secrets every replica must share (checked at start-up).", no_args_is_help=True
)


def _fail(exc: Exception) -> typer.Exit:
    if isinstance(exc, NotMigrated):
        typer.echo(f"gateway: {exc}", err=True)
    else:
        typer.echo(
            f"gateway: the auth database cannot be used ({type(exc).__name__}); is it reachable?", err=True
        )
    return typer.Exit(2)


async def _recorded(settings: Settings) -> list[Recorded]:
    engine = create_engine(settings.computed_auth_database_url, pool_size=1, max_overflow=0)
    try:
        return await shared_secrets.recorded(engine)
    finally:
        await engine.dispose()


def _state(mine: Fingerprint, record: Recorded | None) -> str:
    if record is None:
        return "not recorded yet (the next start records it)"
    same = not shared_secrets.compare([mine], [record])
    return f"{'matches' if same else 'DIFFERS'}: recorded {record.fingerprint[:8]}…, here {mine.value[:8]}…"


@secrets_app.command("check")
def secrets_check() -> None:
    """Compare this configuration with the fingerprints the auth database holds (exit 1 on a difference)."""
    settings = settings_or_exit()
    try:
        held = asyncio.run(_recorded(settings))
    except (SQLAlchemyError, NotMigrated, OSError) as exc:
        raise _fail(exc) from None
    by_name = {record.name: record for record in held}
    ours = shared_secrets.fingerprints(settings)
    if not settings.gateway_secret_key:
        typer.echo("GATEWAY_SECRET_KEY is not set: this process has a random key of its own, never checked")
    for mine in ours:
        note = f" ({mine.note})" if mine.note else ""
        typer.echo(f"{mine.name}{note}: {_state(mine, by_name.get(mine.name))}")
        if mine.name in by_name:
            typer.echo(f"    recorded on {shared_secrets.recorded_on(by_name[mine.name])}")
    if shared_secrets.compare(ours, held):
        typer.echo(
            "gateway: this configuration differs from the recorded one: a gateway started with it refuses to "
            f"start ({shared_secrets.ROTATION_DOCS})",
            err=True,
        )
        raise typer.Exit(1)


async def _totp_check(settings: Settings) -> tuple[int, int]:
    engine = create_engine(settings.computed_auth_database_url, pool_size=1, max_overflow=0)
    try:
        return await shared_secrets.undecryptable_totp_secrets(engine, settings)
    finally:
        await engine.dispose()


async def _accept(settings: Settings) -> list[Recorded]:
    engine = create_engine(settings.computed_auth_database_url, pool_size=1, max_overflow=0)
    try:
        return await shared_secrets.accept_new(engine, settings)
    finally:
        await engine.dispose()


@secrets_app.command("accept-new")
def secrets_accept_new(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Record this configuration's secrets as the ones every replica must share (after a rotation)."""
    settings = settings_or_exit()
    if not settings.gateway_secret_key:
        typer.echo("gateway: GATEWAY_SECRET_KEY is not set: there is no shared secret to record", err=True)
        raise typer.Exit(2)
    try:
        held = asyncio.run(_recorded(settings))
        unreadable, enrolled = asyncio.run(_totp_check(settings))
    except (SQLAlchemyError, NotMigrated, OSError) as exc:
        raise _fail(exc) from None
    differences = shared_secrets.compare(shared_secrets.fingerprints(settings), held)
    if held and not differences:
        typer.echo("this configuration matches the recorded secrets: nothing to do")
        return
    for difference in differences:
        when = shared_secrets.recorded_on(difference.recorded)
        typer.echo(f"{difference.ours.name}: replaces the value recorded on {when}")
    typer.echo(
        "Replicas still running with the old values keep running, but no longer start; tokens they issued "
        "are refused by replicas with the new values (users sign in again)."
    )
    if unreadable:
        typer.echo(
            f"WARNING: {unreadable} of {enrolled} enrolled TOTP secrets cannot be decrypted with this "
            "configuration's TOTP_ENCRYPTION_KEY: those users cannot pass two-factor sign-in until an "
            "administrator resets their TOTP (POST /users/{id}/totp/reset) and they enrol again.",
            err=True,
        )
    if not yes and not typer.confirm("Record this configuration's secrets?", default=False):
        raise typer.Exit(1)
    try:
        now = asyncio.run(_accept(settings))
    except (SQLAlchemyError, NotMigrated, OSError) as exc:
        raise _fail(exc) from None
    typer.echo(f"recorded {', '.join(record.name for record in now)}: replicas with these values start")
