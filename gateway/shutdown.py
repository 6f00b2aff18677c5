"""Whether this process has been told to stop: the one piece of state the server shares with the app.

``gateway serve`` (:mod:`gateway.server`) puts a :class:`ShutdownState` in the ASGI lifespan state, which the
server copies into every request's ``scope["state"]`` (so a route finds it as
``request.state.gateway_shutdown``), and marks it from its SIGTERM/SIGINT handler before it stops
accepting connections. ``GET /ready`` answers 503 from then on (:mod:`gateway.api.health`). An app served
otherwise (the in-process tests) has no such state and is never stopping.

Only the standard library here: a worker process imports this before it answers its supervisor's
health checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: The key of the :class:`ShutdownState` in the ASGI lifespan state (``request.state.gateway_shutdown``).
SHUTDOWN_STATE_KEY = "gateway_shutdown"


@dataclass
class ShutdownState:
    """Set once a stop signal has arrived.

    A signal handler runs between two bytecodes of the main thread, at any point of the event loop: it only
    stores a number here, and readers only compare it.
    """

    #: ``time.monotonic()`` of the first stop signal; None while the process serves normally.
    since: float | None = None

    def begin(self) -> None:
        """Mark the process as stopping (the first call counts; later ones change nothing)."""
        if self.since is None:
            self.since = time.monotonic()

    @property
    def stopping(self) -> bool:
        """True once a stop signal arrived: the process finishes what it has and must get nothing new."""
        return self.since is not None


def shutdown_state(request_state: object) -> ShutdownState | None:
    """The :class:`ShutdownState` in a request's ``request.state``, if the server provided one."""
    found = getattr(request_state, SHUTDOWN_STATE_KEY, None)
    return found if isinstance(found, ShutdownState) else None
