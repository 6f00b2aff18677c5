"""``gateway serve``'s server (gateway.server): the stop sequence's timing and the metrics directory.

The whole behaviour, on real processes, is in tests/process/.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from gateway.server import (
    MULTIPROC_ENV,
    GatewayConfig,
    GatewayServer,
    MetricsDirError,
    clean_metrics_dir,
    live_gauge_pids,
    prepare_metrics_dir,
)

PROMETHEUS_FILES = ("counter_101.db", "histogram_101.db", "gauge_livesum_101.db", "gauge_livemax_202.db")


def server(delay: float) -> GatewayServer:
    return GatewayServer(GatewayConfig("gateway.main:create_app", factory=True, shutdown_delay=delay))


async def test_serving_goes_on_for_the_shutdown_delay_after_a_stop_signal() -> None:
    gateway = server(delay=0.3)
    assert await gateway.on_tick(1) is False
    assert not gateway.shutdown_state.stopping
    gateway.handle_exit(signal.SIGTERM, None)
    assert gateway.shutdown_state.stopping, "/ready says 503 from the signal on"
    assert await gateway.on_tick(1) is False, "still accepting during the delay"
    await asyncio.sleep(0.35)
    assert await gateway.on_tick(1) is True


async def test_without_a_delay_the_server_stops_accepting_at_the_next_tick() -> None:
    gateway = server(delay=0)
    gateway.handle_exit(signal.SIGTERM, None)
    assert await gateway.on_tick(1) is True


async def test_a_second_ctrl_c_skips_the_delay() -> None:
    gateway = server(delay=60)
    gateway.handle_exit(signal.SIGINT, None)
    assert await gateway.on_tick(1) is False
    gateway.handle_exit(signal.SIGINT, None)  # uvicorn's force exit
    assert await gateway.on_tick(1) is True


def test_one_worker_keeps_its_metrics_in_memory() -> None:
    environ: dict[str, str] = {}
    assert prepare_metrics_dir(1, environ) == (None, False)
    assert environ == {}


def test_several_workers_get_a_fresh_temporary_directory() -> None:
    environ: dict[str, str] = {}
    directory, temporary = prepare_metrics_dir(3, environ)
    try:
        assert temporary
        assert directory is not None
        assert directory.is_dir()
        assert list(directory.iterdir()) == []
        assert environ[MULTIPROC_ENV] == str(directory), "the workers inherit it"
    finally:
        if directory is not None:
            directory.rmdir()


@pytest.mark.parametrize("workers", [1, 4])
def test_the_operators_directory_is_created_or_emptied_of_earlier_runs(tmp_path: Path, workers: int) -> None:
    existing = tmp_path / "metrics"
    existing.mkdir()
    for name in PROMETHEUS_FILES:
        (existing / name).write_bytes(b"\0" * 8)
    (existing / "README").write_text("not a metrics file")
    environ = {MULTIPROC_ENV: str(existing)}
    assert prepare_metrics_dir(workers, environ) == (existing, False)
    assert sorted(p.name for p in existing.iterdir()) == ["README"]

    missing = tmp_path / "new" / "metrics"
    assert prepare_metrics_dir(workers, {MULTIPROC_ENV: str(missing)}) == (missing, False)
    assert missing.is_dir()


def test_a_directory_holding_other_databases_is_refused_and_left_alone(tmp_path: Path) -> None:
    """e.g. PROMETHEUS_MULTIPROC_DIR=var, where the embedded auth database lives."""
    (tmp_path / "auth.db").write_text("the auth database")
    (tmp_path / "counter_7.db").write_bytes(b"\0" * 8)
    with pytest.raises(MetricsDirError, match=r"holds auth\.db"):
        clean_metrics_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auth.db", "counter_7.db"]


def test_live_gauge_pids(tmp_path: Path) -> None:
    for name in PROMETHEUS_FILES:
        (tmp_path / name).write_bytes(b"")
    assert live_gauge_pids(tmp_path) == {101, 202}
