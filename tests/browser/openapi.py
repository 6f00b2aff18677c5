"""Write the gateway's OpenAPI document (what ``GET /openapi.json`` serves) for the typed web client.

    uv run python -m tests.browser.openapi var/browser/openapi.json

The reference web client's types (``tests/browser/app/src/api.d.ts``) are generated from this file with
openapi-typescript; ``tests/browser/run.sh`` regenerates them and fails when they differ from the committed
ones (``just web-types`` updates them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.main import create_app
from gateway.settings import Settings


def openapi_document() -> dict[str, object]:
    """The OpenAPI document of an app with default settings (no environment, no ``.env``)."""
    settings = Settings(_env_file=None)
    document: dict[str, object] = create_app(settings).openapi()
    return document


def main(argv: list[str]) -> None:
    target = Path(argv[1]) if len(argv) > 1 else Path("var/browser/openapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    print(f"openapi: wrote {target}")


if __name__ == "__main__":
    main(sys.argv)
