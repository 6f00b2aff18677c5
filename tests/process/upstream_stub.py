"""HAPI FHIR and EHRbase as a small HTTP server on loopback, for the tests that run a real gateway process.

It runs in threads of the test process (independent of the test's event loop) and answers what the
gateway asks in these tests, shaped like the real servers (``tests/fhir_payloads.py``,
``tests/ops_payloads.py``):

- ``GET /fhir/metadata``: a CapabilityStatement (after ``metadata_delay`` seconds);
- ``GET /fhir/Patient/{id}``: that Patient (after ``patient_delay`` seconds);
- ``GET /ehrbase/rest/status``: EHRbase's status.

The events :attr:`UpstreamStub.patient_read` and :attr:`UpstreamStub.metadata_read` are set when such a
request arrives, so a test knows when the gateway has a request in flight.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests import fhir_payloads as fhir
from tests import ops_payloads as ops

_PATIENT = re.compile(r"^/fhir/Patient/([A-Za-z0-9\-.]{1,64})$")


class UpstreamStub:
    """The stub server; use it as a context manager (it listens on a free loopback port)."""

    def __init__(self, *, patient_delay: float = 0.0, metadata_delay: float = 0.0) -> None:
        self.patient_delay = patient_delay
        self.metadata_delay = metadata_delay
        self.patient_read = threading.Event()
        self.metadata_read = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="upstream-stub", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> UpstreamStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for ``GET path`` (sleeping first where a delay is set)."""
        if path == "/fhir/metadata":
            self.metadata_read.set()
            time.sleep(self.metadata_delay)
            return 200, json.loads(ops.capability_statement().content)
        if path == "/ehrbase/rest/status":
            return 200, json.loads(ops.ehrbase_status().content)
        match = _PATIENT.match(path)
        if match:
            self.patient_read.set()
            time.sleep(self.patient_delay)
            return 200, fhir.patient(pid=match.group(1))
        return 404, {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-found"}],
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real servers

            def do_GET(self) -> None:
                status, body = stub.answer(self.path.split("?", 1)[0])
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler
