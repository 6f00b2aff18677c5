"""``gateway serve``: run the gateway with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.config import settings_or_exit


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development).")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the gateway with uvicorn (uvloop event loop, httptools HTTP parser)."""
    import uvicorn

    settings_or_exit()
    uvicorn.run(
        "gateway.main:create_app",
        factory=True,
        host=host,
        port=port,
        reload=reload,
        workers=None if reload else workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,  # the gateway logs each request itself, at DEBUG (gateway.middleware)
        proxy_headers=True,
        server_header=False,
    )
