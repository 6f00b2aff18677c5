"""``gateway templates …``: manage our operational templates in EHRbase (admin credentials)."""

from __future__ import annotations

import asyncio

import typer

from gateway.cli.config import settings_or_exit
from gateway.errors import ApiError
from gateway.openehr.templates import SyncResult, sync_all
from gateway.settings import Settings

templates_app = typer.Typer(help="openEHR templates in EHRbase.", no_args_is_help=True)


async def run_sync(settings: Settings) -> list[SyncResult]:
    """Upload missing templates and replace changed ones; returns what was done per template."""
    from gateway.upstream.ehrbase import create_ehrbase_client

    client = create_ehrbase_client(settings)
    try:
        return await sync_all(client)
    finally:
        await client.aclose()


@templates_app.command("sync")
def sync() -> None:
    """Upload our OPTs that EHRbase lacks; replace those whose content changed (admin API)."""
    settings = settings_or_exit()
    if not settings.ehrbase_api_admin_user:
        typer.echo("gateway: set EHRBASE_API_ADMIN_USER and EHRBASE_API_ADMIN_PASSWORD first", err=True)
        raise typer.Exit(2)
    try:
        results = asyncio.run(run_sync(settings))
    except ApiError as exc:
        typer.echo(f"gateway: template sync failed: {exc.detail or exc.title} ({exc.code})", err=True)
        for issue in exc.upstream_issues or []:
            typer.echo(f"  EHRbase: {issue.code}: {issue.diagnostics}", err=True)
        raise typer.Exit(1) from None
    for result in results:
        typer.echo(f"{result.template_id}: {result.action}")
