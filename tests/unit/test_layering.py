"""The layers only import downwards: services never import routers, upstream clients never import HTTP.

Each check imports every module of one package in a fresh interpreter (what an earlier test imported
cannot hide anything) and lists the forbidden modules that came in, directly or through another module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The top: the app factory and the command line, which import everything.
TOP = ("gateway.main", "gateway.cli")
#: package → what importing it (or any module under it) must never bring in.
FORBIDDEN = {
    "gateway.services": ("gateway.api", *TOP),
    "gateway.upstream": ("gateway.middleware", "gateway.api", "gateway.services", *TOP),
    "gateway.schemas": ("gateway.api", "gateway.services", *TOP),
}

#: Imports each module in turn and prints, per module, the forbidden modules its import added.
PROBE = """
import importlib, json, sys
modules, forbidden = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
found = {}
for name in modules:
    importlib.import_module(name)
    bad = sorted(m for m in sys.modules if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))
    new = [m for m in bad if not any(m in seen for seen in found.values())]
    if new:
        found[name] = new
print(json.dumps(found))
"""


def modules_of(package: str) -> list[str]:
    """The package and every module under it, from the source tree."""
    folder = ROOT.joinpath(*package.split("."))
    names = [package]
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name != package:
            names.append(name)
    return names


def forbidden_imports(modules: list[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """For each module whose import brought in a forbidden module: which ones (in a fresh interpreter)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules), json.dumps(forbidden)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(package: str) -> None:
    modules = modules_of(package)
    assert len(modules) > 1, f"no modules found under {package}"
    found = forbidden_imports(modules, FORBIDDEN[package])
    assert not found, f"{package} imports a layer above it (module → what came in with it): {found}"


def test_the_probe_names_the_module_that_brought_a_forbidden_import_in() -> None:
    # The probe must see what a module pulls in, directly or not, or the checks above prove nothing:
    # gateway.logs imports structlog, which imports structlog.processors; gateway.context imports neither.
    found = forbidden_imports(["gateway.context", "gateway.logs"], ("structlog",))
    assert list(found) == ["gateway.logs"]
    assert {"structlog", "structlog.processors"} <= set(found["gateway.logs"])
