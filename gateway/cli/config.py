"""``gateway config …``, and :func:`settings_or_exit`, the way every command reads the configuration."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from gateway.settings import ConfigError, Settings, load_settings, redacted

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


def settings_or_exit() -> Settings:
    """Load the settings, or print the problem and exit with status 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """Print the effective configuration; secrets are redacted."""
    values = redacted(settings_or_exit())
    if as_json:
        typer.echo(json.dumps(values, indent=2, default=str))
        return
    width = max(len(name) for name in values)
    for name, value in values.items():
        typer.echo(f"{name.ljust(width)}  {value}")
