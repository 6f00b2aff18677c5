"""Real network faults on loopback for the reliability tests.

- :class:`SilentServer` accepts TCP connections and never answers (a real read timeout).
- :class:`ResettingServer` answers with a status line and part of a body, then resets the connection.
- :class:`CannedServer` answers every request with the same raw bytes (an oversized body, malformed HTTP).
- :class:`TricklingServer` promises a body and sends it a byte at a time, never finishing.
- :class:`TcpProxy` forwards to a real server (e.g. the test PostgreSQL) and can be cut and restored,
  which looks to the gateway exactly like the database going away and coming back.
- :func:`closed_port` gives a loopback port nobody listens on (connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


def closed_port() -> int:
    """A loopback port with no listener (bind, read the port, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Server:
    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.connections = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def __aenter__(self) -> _Server:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


class SilentServer(_Server):
    """Accepts, reads the request, and never answers."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3600)


class ResettingServer(_Server):
    """Sends headers promising a body, part of it, then an RST (connection reset mid-body)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
            b"Content-Length: 5000\r\n\r\n"
            b'{"resourceType": "Patient", "id": "'
        )
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


class CannedServer(_Server):
    """Answers every request on a connection with ``answer`` (raw bytes), keeping the connection open."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.requests = 0

    @classmethod
    def http(cls, status: int, body: bytes, headers: dict[str, str] | None = None) -> CannedServer:
        """A server answering ``status`` with ``body`` (and its ``Content-Length``)."""
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return cls(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")  # requests without a body (GET)
            except asyncio.IncompleteReadError:
                return
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()


class TricklingServer(_Server):
    """Sends headers promising a body, then one byte every ``interval`` seconds, never finishing.

    Every read gets data well within a read timeout; only a bound on the whole call ends it.
    """

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__()
        self.interval = interval

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(self.interval)


class TcpProxy(_Server):
    """Forwards to ``target``; :meth:`cut` drops every connection and refuses new ones until restored."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.target = (host, port)
        self.cut_off = False
        self._writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        """Accept and forward connections again."""
        self.cut_off = False
