"""On a machine with PostgreSQL installed but nothing configured, `just test` runs the PostgreSQL tests.

A fresh clone has no ``TEST_AUTH_DATABASE_URL``; the fixtures then start a throwaway server themselves
(tests/conftest.py, also as root). This runs one PostgreSQL test in a pytest of its own, with that variable
and ``CI`` removed, and checks it ran instead of being skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, postgres_bindir

PG_TEST = "tests/db/test_migrations.py::test_round_trip_on_postgres"


def test_postgres_tests_run_without_a_configured_server() -> None:
    if postgres_bindir() is None:
        message = "PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    env = {name: value for name, value in os.environ.items() if name not in {"TEST_AUTH_DATABASE_URL", "CI"}}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q", "-rs", PG_TEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "1 passed" in output, output[-3000:]
    assert "skipped" not in output, output[-3000:]
