"""The pieces of the scale-out suite: gateway replicas, HAProxy in front of them, and a cuttable DB link.

- :class:`Replica`: one ``gateway serve`` process on a fixed loopback port, which can be stopped with SIGTERM
  and started again on the same port (a rolling restart);
- :class:`HAProxy`: ``haproxy`` running ``docker/haproxy/haproxy.cfg`` (the file compose.dev.yml uses),
  configured through its environment, with its statistics page (which replica is in rotation) and its log
  (which replica served what, and how often HAProxy retried);
- :class:`TcpRelay`: a TCP relay between one replica and a store; :meth:`TcpRelay.cut` is a network
  partition (open connections reset, new ones refused), :meth:`TcpRelay.stall` a store that stops answering
  (nothing is forwarded until :meth:`TcpRelay.resume`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[3]
HAPROXY_CFG = ROOT / "docker" / "haproxy" / "haproxy.cfg"
LOG_DIR = ROOT / "var" / "e2e" / "logs"
#: Seconds a replica has to answer /ready after its start (importing the gateway takes seconds of CPU, and
#: far longer on a busy machine), and to exit after SIGTERM.
START_TIMEOUT = float(os.environ.get("E2E_REPLICA_START_TIMEOUT", "180"))
STOP_TIMEOUT = 40.0


def free_ports(count: int, start: int = 25600, end: int = 25800) -> list[int]:
    """``count`` loopback ports nothing listens on, outside Linux's ephemeral range (32768-60999).

    A replica is restarted on its port, so the port must not be taken by a client socket in between, which
    an ephemeral port could be.
    """
    ports: list[int] = []
    for port in range(start, end):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free loopback ports in {start}-{end}")


def wait_for(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns a truthy value; that value.

    Raises:
        AssertionError: not within ``timeout`` seconds (``what`` says what was awaited).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


@dataclass
class Replica:
    """One ``gateway serve`` process; the same name, port and environment across restarts."""

    name: str
    port: int
    env: dict[str, str]
    workdir: str
    process: subprocess.Popen[bytes] | None = None
    #: (pid, exit code, seconds from SIGTERM to exit) of every stop.
    stops: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"replica-{self.name}.log"

    def start(self) -> None:
        """Start the process (its log is appended to, across restarts)."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {self.name}: start at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until ``GET /ready`` answers 200; the seconds it took.

        Raises:
            RuntimeError: the process exited, or it was not ready in time (the end of its log is in the
                message).
        """
        assert self.process is not None
        started = time.monotonic()
        last = "no answer"
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/ready", timeout=5.0)
                if response.status_code == 200:
                    return time.monotonic() - started
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s (last: {last}):\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """SIGTERM, then wait for the exit; (exit code, seconds it took). SIGKILL only past ``timeout``.

        Raises:
            AssertionError: the process did not exit within ``timeout`` seconds (it was then killed).
        """
        assert self.process is not None
        process = self.process
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f}s of SIGTERM:\n{self.log_tail()}"
            ) from None
        took = time.monotonic() - started
        self.stops.append((process.pid, code, took))
        return code, took

    def kill(self) -> None:
        """Stop without waiting for good manners (harness clean-up)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


#: One line of HAProxy's `option httplog` format with the captured X-Request-ID:
#: client [date] frontend backend/server Tq/Tw/Tc/Tr/Ta status bytes - - flags conns queues {rid} "request"
HTTPLOG = re.compile(
    r"^\S+ \[[^\]]+\] (?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) \S+ (?P<status>-?\d+) "
    r"\S+ \S+ \S+ (?P<flags>\S+) \d+/\d+/\d+/\d+/(?P<retries>\+?\d+) \S+ "
    r"\{(?P<rid>[^}]*)\} \"(?P<request>[^\"]*)\""
)


@dataclass(frozen=True)
class LogLine:
    """One request as HAProxy logged it."""

    server: str
    status: int
    retries: int
    redispatched: bool
    request_id: str
    request: str


class HAProxy:
    """``haproxy`` with the shared configuration, in the foreground, its log in ``var/e2e/logs``."""

    def __init__(self, servers: list[str], *, check_inter: str = "1s") -> None:
        self.port, self.stats_port = free_ports(2, start=25800, end=25900)
        self.binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError("haproxy not found (Debian: apt-get install haproxy)")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HAPROXY_BIND": f"127.0.0.1:{self.port}",
            "HAPROXY_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            "HAPROXY_CHECK_INTER": check_inter,
            **{f"GATEWAY_{n}": server for n, server in enumerate(servers, start=1)},
        }
        self.log_path = LOG_DIR / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        check = subprocess.run(
            [self.binary, "-c", "-f", str(HAPROXY_CFG)],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, f"haproxy -c refused {HAPROXY_CFG}:\n{check.stdout}\n{check.stderr}"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(HAPROXY_CFG)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def states(self) -> dict[str, str]:
        """The check state of every replica in HAProxy's rotation: ``{"gw1": "UP", "gw2": "DOWN", ...}``.

        ``UP 1/2`` and ``DOWN 1/2`` are transitions (one check of the ``rise``/``fall`` count seen): the
        server is still in its old state. Empty while HAProxy does not answer yet.
        """
        try:
            response = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5.0)
        except httpx.TransportError:
            return {}
        response.raise_for_status()
        rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "gateways" and row["svname"] not in {"BACKEND", "FRONTEND"}
        }

    def wait_state(self, server: str, state: str, timeout: float = 30.0) -> float:
        """Wait until HAProxy reports ``server`` in ``state`` (``UP`` or ``DOWN``); the seconds it took."""
        started = time.monotonic()
        wait_for(lambda: self.states().get(server) == state, f"haproxy: {server} {state}", timeout)
        return time.monotonic() - started

    def log(self) -> list[LogLine]:
        """Every request HAProxy has logged so far."""
        lines: list[LogLine] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            match = HTTPLOG.match(raw)
            if match is None:
                continue
            retries = match["retries"]
            lines.append(
                LogLine(
                    server=match["server"],
                    status=int(match["status"]),
                    retries=int(retries.lstrip("+")),
                    redispatched=retries.startswith("+"),
                    request_id=match["rid"],
                    request=match["request"],
                )
            )
        return lines

    def log_for(self, request_ids: set[str], timeout: float = 5.0) -> dict[str, LogLine]:
        """The log lines of these request ids (HAProxy writes a line when the answer has been sent)."""

        def found() -> dict[str, LogLine] | None:
            by_id = {line.request_id: line for line in self.log() if line.request_id in request_ids}
            return by_id if set(by_id) == request_ids else None

        result: dict[str, LogLine] = wait_for(found, "haproxy log lines of the requests", timeout)
        return result


class TcpRelay:
    """A TCP relay on a loopback port to ``target``; :meth:`cut` partitions, :meth:`restore` heals."""

    def __init__(self, target_host: str, target_port: int, *, port: int) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._flowing = threading.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="relay-accept", daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            open_sockets, self._sockets = self._sockets, set()
        for sock in open_sockets:
            # Linger 0: the close that follows sends an RST, as when a firewall drops the connection;
            # the shutdown wakes the relay's threads blocked on it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def stall(self) -> None:
        """Forward nothing more (in either direction) until :meth:`resume`; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
                self.connections += 1
            threading.Thread(
                target=self._pair, args=(client, upstream), name="relay-pair", daemon=True
            ).start()

    def _pair(self, client: socket.socket, upstream: socket.socket) -> None:
        back = threading.Thread(target=self._pump, args=(upstream, client), name="relay-pump", daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._sockets -= {client, upstream}
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
