"""The HTTP transport to HAPI FHIR and EHRbase: one pooled aiohttp session per store and process.

This is the only module that imports aiohttp. Everything above it (the resilience policy, the store
clients, readiness) sees :class:`UpstreamResponse` and the transport errors below, never aiohttp's types.

One :class:`AiohttpTransport` per store and process:

- a **pool** of keep-alive connections (``UPSTREAM_MAX_CONNECTIONS``; an idle one is closed after
  ``UPSTREAM_KEEPALIVE_SECONDS``, or after every call when that is 0);
- **no cookie jar**: cookies an upstream sets are never kept or sent back, so nothing one user's call
  provoked can ride along on another user's call;
- **redirects are not followed** (a 3xx is returned to the caller);
- **timeouts** per call: connecting (including the wait for a pooled connection) bounded by
  ``UPSTREAM_CONNECT_TIMEOUT``, each read by ``UPSTREAM_READ_TIMEOUT``, the whole call by the time the
  caller has left (its ``time_left`` argument);
- the **body** read fully, refusing more than ``UPSTREAM_MAX_RESPONSE_BYTES`` (on ``Content-Length``
  and while streaming, never buffered whole); a gzip or deflate body is decoded.

The aiohttp session is created inside the running event loop on the first call, and closed by
:meth:`AiohttpTransport.aclose`.

URLs are passed already encoded (the clients quote path segments and build query strings with
:func:`urllib.parse.urlencode`); they are sent as given. Credentials travel as a precomputed
``Authorization`` value (:class:`Credentials`), which no ``repr`` or error message shows. Error
messages name the kind of failure only, never a URL, header or body.

Failures are reported as four exceptions, each the policy's outcome of the same name:

- :class:`ConnectFailed` — no connection could be made (refused, unknown host): *unreachable*;
- :class:`TimedOut` — no complete answer in time, including a connection that could not be made in
  time or a pooled one not free in time: *timeout* (as the policy mapped connect timeouts before);
- :class:`Broken` — the connection broke mid-answer or the answer was not valid HTTP: *broken*;
- :class:`TooLarge` — the body exceeded ``UPSTREAM_MAX_RESPONSE_BYTES``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.settings import Settings

__all__ = [
    "AiohttpTransport",
    "Broken",
    "ConnectFailed",
    "Credentials",
    "TimedOut",
    "TooLarge",
    "TransportError",
    "UpstreamResponse",
]

#: Headers that describe the encoded body; dropped once aiohttp has decoded it.
_ENCODING_HEADERS = ("Content-Encoding", "Content-Length")


class TransportError(Exception):
    """No usable HTTP answer came back (base class of the transport's errors)."""


class ConnectFailed(TransportError):
    """No connection could be made: refused, unknown host, TLS handshake refused."""


class TimedOut(TransportError):
    """No complete answer in time (connecting, waiting for a pooled connection, or reading)."""


class Broken(TransportError):
    """The connection broke mid-answer, or the answer was not valid HTTP."""


class TooLarge(TransportError):
    """The body exceeded the configured maximum (``UPSTREAM_MAX_RESPONSE_BYTES``)."""


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A precomputed ``Authorization`` header value; never shown by ``repr`` or ``str``."""

    header: str

    @classmethod
    def basic(cls, username: str, password: str) -> Credentials:
        """HTTP Basic credentials (user and password encoded as UTF-8)."""
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return cls(f"Basic {token}")

    @classmethod
    def bearer(cls, token: str) -> Credentials:
        """A bearer token."""
        return cls(f"Bearer {token}")

    def __repr__(self) -> str:
        return "Credentials(***)"


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamResponse:
    """An upstream answer, fully read: status, headers (case-insensitive, multi-valued) and body."""

    status_code: int
    headers: CIMultiDictProxy[str]
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON (orjson).

        Raises:
            orjson.JSONDecodeError: not JSON (a :class:`json.JSONDecodeError`, hence a ``ValueError``).
        """
        return orjson.loads(self.content)

    @property
    def text(self) -> str:
        """The body decoded with the charset of ``Content-Type`` (UTF-8 when none is given)."""
        return self.content.decode(_charset(self.headers.get("Content-Type")), errors="replace")

    def __repr__(self) -> str:  # the body may be patient data: never in a repr
        return f"UpstreamResponse(status_code={self.status_code}, {len(self.content)} bytes)"


def _charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
            try:
                "".encode(charset)
            except LookupError:
                break
            return charset
    return "utf-8"


class AiohttpTransport:
    """One store's pooled HTTP connections (see the module docstring)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive_seconds: float,
        max_response_bytes: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self.max_response_bytes = max_response_bytes
        #: Sent on every call (per-call headers of the same name win).
        self.default_headers: Mapping[str, str] = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, headers: Mapping[str, str] | None = None
    ) -> AiohttpTransport:
        """A transport with the pool, timeouts and size limit of ``settings``."""
        return cls(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            max_connections=settings.upstream_max_connections,
            keepalive_seconds=settings.upstream_keepalive_seconds,
            max_response_bytes=settings.upstream_max_response_bytes,
            headers=headers,
        )

    def __repr__(self) -> str:
        return (
            f"AiohttpTransport(max_connections={self.max_connections}, "
            f"keepalive_seconds={self.keepalive_seconds:g}, open={self._session is not None})"
        )

    def _open(self) -> aiohttp.ClientSession:
        """The session, created on first use (it must be created inside the running event loop)."""
        if self._closed:
            raise RuntimeError("the upstream transport is closed")
        keepalive = self.keepalive_seconds
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=0,
            force_close=keepalive == 0,
            keepalive_timeout=keepalive if keepalive > 0 else None,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self.default_headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            raise_for_status=False,
            trust_env=False,
        )
        return self._session

    async def aclose(self) -> None:
        """Close the pooled connections; the transport refuses calls afterwards."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        time_left: float,
    ) -> UpstreamResponse:
        """Send one request and read its whole answer.

        Args:
            method: the HTTP method.
            url: the absolute URL, already percent-encoded (sent as given).
            headers: this call's headers (credentials as ``Authorization``), on top of the defaults.
            body: the request body, already serialised.
            time_left: seconds the whole call may take (connect, send, read): what is left of the
                logical call's ``UPSTREAM_TOTAL_TIMEOUT``.

        Raises:
            ConnectFailed, TimedOut, Broken, TooLarge: see the module docstring.
        """
        session = self._session or self._open()
        try:
            async with session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=time_left,
                    connect=self.connect_timeout,
                    sock_connect=self.connect_timeout,
                    sock_read=self.read_timeout,
                ),
            ) as response:
                content = await self._read_body(response)
                response_headers = response.headers
                if "Content-Encoding" in response_headers:
                    response_headers = _decoded_headers(response_headers)
                return UpstreamResponse(response.status, response_headers, content)
        except TooLarge:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect: {_reason(exc)}") from None
        except TimeoutError as exc:  # includes aiohttp's connect, pool and read timeouts
            raise TimedOut(f"no complete answer in time: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Broken(f"connection broken or answer malformed: {type(exc).__name__}") from None

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, refusing more than ``max_response_bytes`` (the connection is then closed)."""
        limit = self.max_response_bytes
        declared = response.content_length
        if declared is not None:
            if declared > limit:
                response.close()
                raise TooLarge(f"Content-Length {declared} over {limit} bytes")
            if "Content-Encoding" not in response.headers:
                return await response.read()  # exactly `declared` bytes: bounded
        chunks: list[bytes] = []
        size = 0
        stream = response.content
        while chunk := await stream.readany():
            size += len(chunk)
            if size > limit:
                response.close()
                raise TooLarge(f"body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _decoded_headers(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """``headers`` without those describing the encoded body (aiohttp has decoded it)."""
    kept: CIMultiDict[str] = CIMultiDict(headers)
    for name in _ENCODING_HEADERS:
        kept.popall(name, None)
    return CIMultiDictProxy(kept)


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    """The operating system's reason (e.g. ``Connection refused``), without host or URL."""
    reason = exc.os_error.strerror if exc.os_error is not None else None
    return reason or type(exc).__name__
