"""The uvicorn server behind ``gateway serve``: a graceful stop, and one view of the metrics of every worker.

**Stopping.** On SIGTERM (or SIGINT) a worker

1. marks its :class:`~gateway.shutdown.ShutdownState`, so ``GET /ready`` answers 503 from then on;
2. goes on accepting and serving for ``SHUTDOWN_DELAY_SECONDS`` (default 0): time for a load balancer that
   polls ``/ready`` to take it out before connections are refused;
3. stops accepting (the listening socket is closed, so new connections are refused), closes its idle
   keep-alive connections and lets the requests in flight finish, for at most ``SHUTDOWN_DRAIN_SECONDS``
   (uvicorn's ``timeout_graceful_shutdown``; requests still running then are cancelled);
4. runs the app's lifespan shutdown (:mod:`gateway.main`): the audit writer commits every row handed to
   it, then the upstream clients and the auth DB pools close;
5. exits with status 0 (uvicorn would end the process by raising the signal again).

With ``--workers N`` uvicorn's supervisor gets the signal and forwards SIGTERM to each worker;
:class:`GatewaySupervisor` also closes its own copy of the listening socket first (otherwise the kernel
would go on queueing connections that no worker accepts any more), and makes every worker it starts,
restarts included, a :class:`GatewayServer`.

**Metrics.** With several workers (or when the operator sets ``PROMETHEUS_MULTIPROC_DIR``) the workers run
prometheus-client's multiprocess mode (see :mod:`gateway.metrics`): :func:`prepare_metrics_dir` gives them
a clean directory before they start, and the supervisor marks the files of each worker that has ended
(:func:`prometheus_client.multiprocess.mark_process_dead`), so that the ``live`` gauges leave it out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from socket import socket
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import HANDLED_SIGNALS
from uvicorn.supervisors import ChangeReload, multiprocess

from gateway.shutdown import SHUTDOWN_STATE_KEY, ShutdownState

if TYPE_CHECKING:
    from gateway.settings import Settings

# A worker process imports this module (it holds the class of the worker) before it answers the supervisor's
# health checks, so it imports little: uvicorn and the standard library; the rest where it is used.

logger = logging.getLogger("gateway.server")

#: The variable prometheus-client reads to run in multiprocess mode (it must be set before it is imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files prometheus-client writes there: ``counter_<pid>.db``, ``gauge_<mode>_<pid>.db``, …
_METRIC_FILE = re.compile(r"^(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db$")
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


class GatewayConfig(uvicorn.Config):
    """uvicorn's configuration, plus how long to go on accepting after a stop signal."""

    def __init__(self, app: str, *, shutdown_delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.shutdown_delay = shutdown_delay


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the stop sequence of this module's docstring."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.shutdown_state = ShutdownState()
        self._announced = False

    @property
    def shutdown_delay(self) -> float:
        """Seconds to go on accepting after a stop signal (``SHUTDOWN_DELAY_SECONDS``)."""
        return float(getattr(self.config, "shutdown_delay", 0.0))

    async def startup(self, sockets: list[socket] | None = None) -> None:
        # The lifespan state is copied into every request's scope["state"]: the app reads the flag there.
        self.lifespan.state[SHUTDOWN_STATE_KEY] = self.shutdown_state
        await super().startup(sockets=sockets)
        if self.started:
            from gateway.metrics import worker_started  # loaded with the app by now

            worker_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: mark the process as stopping, then let uvicorn begin its shutdown."""
        self.shutdown_state.begin()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s); once told to stop, it goes on serving for the shutdown delay."""
        stop = await super().on_tick(counter)
        if not (stop and self.should_exit) or self.force_exit:
            return stop
        if not self._announced:
            self._announced = True
            logger.info(
                "stopping: /ready answers 503; accepting for %g s more, then finishing the requests in "
                "flight within %s s",
                self.shutdown_delay,
                self.config.timeout_graceful_shutdown,
            )
        since = self.shutdown_state.since
        return since is None or time.monotonic() - since >= self.shutdown_delay

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM while serving; unlike uvicorn, do not raise them again afterwards.

        The shutdown they asked for is done by then: the process ends normally, with status 0.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class GatewayProcess(multiprocess.Process):
    """A worker of the supervisor that runs a :class:`GatewayServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GatewayServer(config=self.config)
        return self._server


@contextlib.contextmanager
def _workers_are(process_class: type[multiprocess.Process]) -> Iterator[None]:
    # uvicorn's supervisor creates each worker (at start, on a restart after a crash, on SIGHUP and SIGTTIN)
    # from its module's name `Process`; pointing the name at a subclass for the supervisor's run is the one
    # way in that keeps the supervisor's own logic as it is.
    original = multiprocess.Process
    multiprocess.Process = process_class  # type: ignore[misc]
    try:
        yield
    finally:
        multiprocess.Process = original  # type: ignore[misc]


class GatewaySupervisor(multiprocess.Multiprocess):
    """uvicorn's worker supervisor, with workers that stop gracefully and metrics files kept in order."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket], metrics_dir: Path | None) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir

    def run(self) -> None:
        """Supervise the workers until a stop signal, then wait for them to finish."""
        with _workers_are(GatewayProcess):
            super().run()
        self._mark_ended_workers()
        if any(process.exitcode == STARTUP_FAILURE for process in self.processes):
            sys.exit(STARTUP_FAILURE)

    def handle_term(self) -> None:
        self._stop_accepting()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_accepting()
        super().handle_int()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._mark_ended_workers()

    def _stop_accepting(self) -> None:
        # The workers close their copies when they stop accepting; the socket is closed (connections
        # refused) once this one is closed too.
        for sock in self.sockets:
            sock.close()

    def _mark_ended_workers(self) -> None:
        if self.metrics_dir is None:
            return
        from prometheus_client.multiprocess import mark_process_dead

        running = {process.pid for process in self.processes if process.exitcode is None}
        for pid in live_gauge_pids(self.metrics_dir) - running:
            mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]


def live_gauge_pids(directory: Path) -> set[int]:
    """The process ids that have ``live`` gauge files in the multiprocess directory."""
    found = (_LIVE_GAUGE_FILE.match(path.name) for path in directory.iterdir())
    return {int(match.group(1)) for match in found if match}


class MetricsDirError(Exception):
    """``PROMETHEUS_MULTIPROC_DIR`` cannot be used; the message says why."""


def clean_metrics_dir(directory: Path) -> None:
    """Delete prometheus-client's files from ``directory``.

    Raises:
        MetricsDirError: the directory also holds other ``*.db`` files. A scrape reads every ``*.db`` file
            there (and would fail on them); they are not deleted.
    """
    others = sorted(p.name for p in directory.glob("*.db") if not _METRIC_FILE.match(p.name))
    if others:
        raise MetricsDirError(
            f"{MULTIPROC_ENV}={directory} holds {', '.join(others[:3])}, which prometheus-client did not "
            "write (a scrape reads every *.db file there): give the metrics a directory of their own"
        )
    for path in directory.iterdir():
        if _METRIC_FILE.match(path.name) and path.is_file():
            path.unlink()


def prepare_metrics_dir(workers: int, environ: MutableMapping[str, str]) -> tuple[Path | None, bool]:
    """The multiprocess metrics directory for this run, and whether it is a temporary one of ours.

    ``PROMETHEUS_MULTIPROC_DIR`` if the operator set it (created if missing, emptied of earlier runs'
    files); else, with several workers, a new temporary directory, set in ``environ`` for the workers
    to inherit; else (one worker) none: the process keeps its metrics in memory.

    Raises:
        MetricsDirError: the operator's directory holds files that are not prometheus-client's.
    """
    configured = environ.get(MULTIPROC_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        clean_metrics_dir(directory)
        return directory, False
    if workers <= 1:
        return None, False
    directory = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    environ[MULTIPROC_ENV] = str(directory)
    return directory, True


def migrate_once(url: str) -> None:
    """Upgrade the auth database at ``url`` (making an SQLite file's directory, as the app's engine does)."""
    from sqlalchemy.engine import make_url

    from auth_db import migrate

    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(url)


def run(settings: Settings, *, host: str, port: int, workers: int, reload: bool) -> None:
    """Serve the gateway until a stop signal (see the module docstring)."""
    config = GatewayConfig(
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
        timeout_graceful_shutdown=settings.shutdown_drain_seconds,
        shutdown_delay=settings.shutdown_delay_seconds,
    )
    metrics_dir, temporary = prepare_metrics_dir(config.workers, os.environ)
    if metrics_dir is not None:
        logger.info("metrics: multiprocess mode, %s=%s", MULTIPROC_ENV, metrics_dir)
    supervised = not config.should_reload and (config.workers > 1 or metrics_dir is not None)
    if supervised and config.workers > 1 and settings.auto_migrate:
        # Each worker migrates at start-up (the embedded SQLite default): several at once would run the
        # same revisions side by side and all but one fail. Migrate here first; theirs then finds nothing.
        migrate_once(settings.computed_auth_database_url)
    try:
        if config.should_reload:
            ChangeReload(config, target=GatewayServer(config).run, sockets=[config.bind_socket()]).run()
        elif supervised:
            # Also one worker when the operator set PROMETHEUS_MULTIPROC_DIR: this process imported
            # prometheus-client before the directory was cleaned, so a fresh worker process writes the files.
            GatewaySupervisor(config, [config.bind_socket()], metrics_dir).run()
        else:
            server = GatewayServer(config)
            server.run()
            if not server.started:
                sys.exit(STARTUP_FAILURE)
    except KeyboardInterrupt:
        pass
    finally:
        if temporary and metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
