"""``gateway serve``: run the gateway with uvicorn (the server itself: :mod:`gateway.server`)."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.config import settings_or_exit


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development).")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (several: metrics are merged across them).")
    ] = 1,
) -> None:
    """Run the gateway with uvicorn (uvloop event loop, httptools HTTP parser).

    On SIGTERM: /ready answers 503, new connections are refused (after SHUTDOWN_DELAY_SECONDS), the
    requests in flight finish (within SHUTDOWN_DRAIN_SECONDS), the audit trail is flushed, and the
    process exits with status 0.
    """
    settings = settings_or_exit()
    from gateway.logs import configure_logging

    configure_logging(level=settings.log_level, json_output=settings.log_json)
    from gateway import server  # uvicorn is imported only by this command

    try:
        server.run(settings, host=host, port=port, workers=workers, reload=reload)
    except server.MetricsDirError as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None
