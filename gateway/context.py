"""Values that belong to the request being served, readable anywhere below the HTTP layer.

The middleware (:mod:`gateway.middleware`) sets them for each request; logging (:mod:`gateway.logs`) and the
upstream clients (:mod:`gateway.upstream.resilience`) read them. Living here, below all three, they let
``gateway.upstream`` stay free of any HTTP-server import.
"""

from __future__ import annotations

from contextvars import ContextVar

#: The current request id (``X-Request-ID``), or ``None`` outside a request; sent on to the upstream stores.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
