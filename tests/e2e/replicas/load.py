"""A bounded load through HAProxy: clinicians reading a patient and writing letters, as a frontend would.

Readers alternate ``GET /patients/{id}`` and ``GET /patients/{id}/letters``; each read is sent **once** (the
client never repeats a read: any error is a failed request). Writers send ``POST /patients/{id}/letters``
with a fresh ``Idempotency-Key`` each; a writer repeats a write, with the **same key** and a new request id,
only when

- the connection failed or broke before an answer came (``httpx.TransportError``): the client cannot know
  whether the letter was written, and the key makes the repeat safe (the gateway replays the first result);
- the gateway answered ``409 idempotency_in_progress`` (the first attempt with this key is still being
  written): after its ``Retry-After``, for up to :data:`WRITE_PATIENCE` seconds.

Any other answer is final. Every request carries its own ``X-Request-ID``, so the audit trail can be matched
request by request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Client attempts of one write after broken connections at most (the first and its repeats).
WRITE_ATTEMPTS = 10
#: Seconds a client goes on repeating a write answered ``409 idempotency_in_progress``.
WRITE_PATIENCE = 60.0
#: The audit action each kind of request is recorded with.
AUDIT_ACTION = {"read": "patient.read", "list": "letter.list", "write": "letter.create"}


@dataclass
class Outcome:
    """One logical client request, after the client's own repeats (writes only)."""

    kind: str  # read, list or write
    status: int | None  # the final answer's status; None when the client gave up on transport errors
    request_id: str  # the X-Request-ID of the final attempt
    attempts: int = 1
    key: str | None = None
    title: str | None = None
    version_uid: str | None = None
    replayed: bool = False
    errors: list[str] = field(default_factory=list)
    body: str = ""

    @property
    def ok(self) -> bool:
        return self.status == (201 if self.kind == "write" else 200)


class Load:
    """``readers`` + ``writers`` client threads against ``base_url`` until :meth:`stop`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        patient_id: str,
        *,
        readers: int = 3,
        writers: int = 2,
        pause: float = 0.05,
        label: str = "load",
    ) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.patient_id = patient_id
        self.pause = pause
        self.label = label
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._reader, name=f"{label}-reader-{n}", daemon=True)
            for n in range(readers)
        ] + [
            threading.Thread(target=self._writer, name=f"{label}-writer-{n}", daemon=True)
            for n in range(writers)
        ]
        self._written = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 120.0) -> list[Outcome]:
        """Let every request in flight finish; every outcome."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
            assert not thread.is_alive(), f"{thread.name} did not finish within {timeout:.0f}s"
        return list(self.outcomes)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=httpx.Timeout(90.0, connect=10.0)
        )

    def _reader(self) -> None:
        paths = [("read", f"/patients/{self.patient_id}"), ("list", f"/patients/{self.patient_id}/letters")]
        n = 0
        with self._client() as client:
            while not self._stop.is_set():
                kind, path = paths[n % 2]
                n += 1
                rid = uuid.uuid4().hex
                try:
                    response = client.get(
                        path, params={"limit": 5} if kind == "list" else None, headers={"X-Request-ID": rid}
                    )
                    outcome = Outcome(kind, response.status_code, rid, body=_body(response))
                except httpx.TransportError as exc:
                    outcome = Outcome(kind, None, rid, errors=[repr(exc)])
                self._record(outcome)
                time.sleep(self.pause)

    def _writer(self) -> None:
        with self._client() as client:
            while not self._stop.is_set():
                with self._lock:
                    self._written += 1
                    n = self._written
                self._record(self._write(client, n))
                time.sleep(self.pause)

    def _write(self, client: httpx.Client, n: int) -> Outcome:
        key = f"{self.label}-{uuid.uuid4()}"
        title = f"{self.label} letter {n}"
        body = {
            "title": title,
            "body": "Dear colleague,\n\nWritten while replicas come and go.",
            "status": "draft",
            "recipients": ["GP"],
        }
        outcome = Outcome("write", None, "", attempts=0, key=key, title=title)
        broken = 0
        give_up = time.monotonic() + WRITE_PATIENCE
        while broken < WRITE_ATTEMPTS:
            outcome.attempts += 1
            outcome.request_id = uuid.uuid4().hex
            headers = {"Idempotency-Key": key, "X-Request-ID": outcome.request_id}
            try:
                response = client.post(f"/patients/{self.patient_id}/letters", json=body, headers=headers)
            except httpx.TransportError as exc:
                outcome.status = None
                outcome.errors.append(repr(exc))
                broken += 1
                time.sleep(0.5)
                continue
            outcome.status = response.status_code
            outcome.body = _body(response)
            if response.status_code == 409 and _code(response) == "idempotency_in_progress":
                if time.monotonic() > give_up:
                    return outcome
                if not outcome.errors or outcome.errors[-1] != "409 idempotency_in_progress":
                    outcome.errors.append("409 idempotency_in_progress")
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code == 201:
                outcome.version_uid = response.json()["version_uid"]
                outcome.replayed = response.headers.get("idempotent-replayed") == "true"
            return outcome
        return outcome


def _body(response: httpx.Response) -> str:
    return "" if response.is_success else response.text[:300]


def _code(response: httpx.Response) -> str | None:
    try:
        body: Any = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def summary(outcomes: list[Outcome]) -> str:
    """One line per kind: how many, their final statuses, and the client's repeats (writes)."""
    lines = []
    for kind in ("read", "list", "write"):
        mine = [o for o in outcomes if o.kind == kind]
        statuses = Counter(str(o.status) for o in mine)
        repeats = sum(o.attempts - 1 for o in mine)
        lines.append(
            f"{kind}: {len(mine)} requests, statuses {dict(statuses)}"
            + (
                f", {repeats} client repeats, {sum(o.replayed for o in mine)} replayed"
                if kind == "write"
                else ""
            )
        )
    return "; ".join(lines)
