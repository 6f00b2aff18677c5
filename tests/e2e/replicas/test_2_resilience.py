"""Replicas leaving and rejoining HAProxy's rotation while clients keep working through it.

- a replica cut off from the auth database answers 503 (never 500), turns not-ready and is taken out by
  HAProxy; through HAProxy no request fails with a server error; it comes back when the link heals;
- a letter write cut off from the auth DB between claiming its Idempotency-Key and completing it: 503, the
  letter stored once, and (expected to fail until the gateway changes) the client's retry is served;
- a rolling restart (each replica in turn: SIGTERM, exit, start, ready) under a bounded load through
  HAProxy: no failed client request, no successful PHI request without its audit row, no letter written
  twice.

The client behaviour is that of :mod:`tests.e2e.replicas.load`: reads are sent once; a letter write is
repeated with the same Idempotency-Key only after a broken connection or ``409 idempotency_in_progress``.
These tests restart replicas: they come after the scenarios of ``test_1_shared_state.py``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection
from typing import Any

import httpx
import pytest

from tests.e2e.gateway_process import nhs_number
from tests.e2e.replicas.cluster import wait_for
from tests.e2e.replicas.conftest import Cluster, request_id
from tests.e2e.replicas.load import AUDIT_ACTION, WRITE_PATIENCE, Load, Outcome, summary

#: Load before the first and after the last change, so that both sides of it are exercised (seconds).
STEADY = 3.0


@pytest.fixture(scope="module")
def load_user(cluster: Cluster) -> tuple[str, str]:
    """A clinician with a patient of their own: (token, patient id)."""
    _, token = cluster.onboard(f"load.{cluster.run_id}", "Dr Load", via=cluster.replicas[0].url)
    patient_id = cluster.register_patient(
        cluster.replicas[1].url, token, "Load", nhs_number(random.Random(cluster.run_id + "load"))
    )
    return token, patient_id


def failures(outcomes: list[Outcome]) -> list[str]:
    return [
        f"{o.kind} {o.status} (request {o.request_id}, {o.attempts} attempts, errors {o.errors}) {o.body}"
        for o in outcomes
        if not o.ok
    ]


def assert_audited(cluster: Cluster, outcomes: list[Outcome]) -> str:
    """Every successful request has its audit row (same request id, action, success); a short report."""
    done = [o for o in outcomes if o.ok]
    rows = cluster.audit_rows([o.request_id for o in done])
    recorded = {(rid, action) for rid, action, outcome in rows if outcome == "success"}
    lost = [o for o in done if (o.request_id, AUDIT_ACTION[o.kind]) not in recorded]
    missing = [(o.kind, o.request_id) for o in lost[:10]]
    assert not lost, f"{len(lost)} successful PHI requests have no audit row: {missing}"
    return f"{len(done)} successful PHI requests, {len(rows)} audit rows with their request ids"


def assert_written_once(
    cluster: Cluster,
    patient_id: str,
    before: set[str],
    outcomes: list[Outcome],
    *,
    unsettled: Collection[str] = (),
) -> str:
    """EHRbase holds each letter the writers were told about once, with its uid, and no other letter.

    Every write has a title of its own, so a title found twice is a letter written twice. ``before``: the
    patient's compositions before the load; ``unsettled``: titles of writes whose client got no final
    answer (they may or may not be stored, once).
    """
    writes = [o for o in outcomes if o.kind == "write" and o.ok]
    assert len({o.version_uid for o in writes}) == len({o.key for o in writes}) == len(writes), (
        "two keys got the same letter"
    )
    new = [(uid, title) for uid, title in cluster.letters(patient_id) if uid not in before]
    titles = Counter(title for _, title in new)
    doubled = sorted(title for title, n in titles.items() if n > 1)
    assert not doubled, f"letters written twice: {doubled}"
    stored = dict((title, uid) for uid, title in new)
    wrong = [
        (o.title, o.version_uid, stored.get(str(o.title)))
        for o in writes
        if stored.get(str(o.title)) != o.version_uid
    ]
    assert not wrong, (
        f"letters answered 201 but not stored as answered (title, answered, stored): {wrong[:10]}"
    )
    told = {str(o.title) for o in writes}
    unknown = sorted(set(titles) - told - set(unsettled))
    assert not unknown, f"{len(unknown)} letters in EHRbase that no client was told about: {unknown}"
    return f"{len(writes)} letters written, {len(new)} new compositions in EHRbase"


def test_a_replica_cut_off_from_the_auth_db_is_taken_out(
    cluster: Cluster, load_user: tuple[str, str]
) -> None:
    token, patient_id = load_user
    gw3 = cluster.replica("gw3")
    before = set(cluster.compositions(patient_id))
    load = Load(cluster.lb_url, token, patient_id, readers=2, writers=1, label=f"cut-{cluster.run_id}")
    prober = DirectProber(gw3.url, token, patient_id)
    load.start()
    try:
        time.sleep(STEADY)
        cluster.relay.cut()
        prober.start()  # directly at gw3, until HAProxy has taken it out
        taken_out = cluster.haproxy.wait_state("gw3", "DOWN", timeout=30)
        prober.stop(after_round=True)
        ready = httpx.get(f"{gw3.url}/ready", timeout=30)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["auth_db"]["status"] == "down", ready.json()
        assert ready.json()["checks"]["fhir"]["status"] == "up"
        time.sleep(STEADY)  # load with gw3 out of rotation
        cluster.relay.restore()
        healed_at = time.monotonic()
        gw3.wait_ready()
        cluster.haproxy.wait_state("gw3", "UP", timeout=60)
        back = time.monotonic() - healed_at
        time.sleep(STEADY)
    finally:
        prober.stop()
        if cluster.relay.is_cut:
            cluster.relay.restore()
        outcomes = load.stop()
    print(
        f"\nauth DB cut off gw3 at +{STEADY:.0f}s: out of HAProxy's rotation {taken_out:.1f}s later, back in "
        f"{back:.1f}s after the link healed\n  gw3's own answers while cut off: {prober.summary()}"
        f"\n  through HAProxy: {summary(outcomes)}"
    )
    wrong = [answer for answer in prober.answers if answer[1] != 503]
    assert not wrong, f"gw3 without its auth DB answered something else than 503: {wrong}"
    # A write whose key gw3 had claimed when it lost the auth DB stays `in_progress` in the shared DB until
    # the claim expires (UPSTREAM_TOTAL_TIMEOUT + SHUTDOWN_DRAIN_SECONDS, 40 s by default; see
    # test_a_key_left_in_progress_by_a_cut_off_replica_can_be_retried); its client's retries get 409 until a
    # retry takes the key over. Within the client's patience that settles; if not, it is reported, as a
    # 409 is not a server error.
    unsettled = [o for o in outcomes if o.kind == "write" and o.status == 409]
    if unsettled:
        print(
            f"  KNOWN LIMITATION: {len(unsettled)} write(s) still 409 idempotency_in_progress after "
            f"{WRITE_PATIENCE:.0f}s (key claimed by gw3 before the cut): {[o.key for o in unsettled]}"
        )
    failed = failures([o for o in outcomes if o not in unsettled])
    assert not failed, f"{len(failed)} failed client requests:\n" + "\n".join(failed[:20])
    print("  " + assert_audited(cluster, outcomes))
    print(
        "  "
        + assert_written_once(
            cluster, patient_id, before, outcomes, unsettled={str(o.title) for o in unsettled}
        )
    )
    with cluster.client(gw3.url, token) as client:
        assert client.get(f"/patients/{patient_id}").status_code == 200


class DirectProber:
    """Requests of every kind sent straight to one replica, one after the other, until :meth:`stop`."""

    def __init__(self, base_url: str, token: str, patient_id: str) -> None:
        self.base_url = base_url
        self.token = token
        self.patient_id = patient_id
        #: (request, status, problem code)
        self.answers: list[tuple[str, int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="direct-prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, after_round: bool = False) -> None:
        """Stop (once every kind of request has been sent at least once, with ``after_round``)."""
        if after_round and self._thread.is_alive():
            wait_for(lambda: len(self.answers) >= len(self._requests), "one round of direct requests", 90)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=90)

    def summary(self) -> str:
        return ", ".join(
            f"{what} {status} {code}: {n}" for (what, status, code), n in Counter(self.answers).items()
        )

    @property
    def _requests(self) -> list[tuple[str, str, dict[str, Any]]]:
        bearer = {"Authorization": f"Bearer {self.token}"}
        letters = f"/patients/{self.patient_id}/letters"
        return [
            ("GET", f"/patients/{self.patient_id}", {"headers": bearer}),
            ("GET", letters, {"headers": bearer}),
            ("GET", "/auth/me", {"headers": bearer}),
            (
                "POST",
                letters,
                {
                    "headers": bearer,
                    "json": {"title": "Cut", "body": "x", "status": "draft", "recipients": ["GP"]},
                },
            ),
            ("POST", "/auth/token", {"data": {"username": "nobody.here", "password": "not-a-password"}}),
        ]

    def _run(self) -> None:
        requests = self._requests
        letters = f"/patients/{self.patient_id}/letters"
        n = 0
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self._stop.is_set():
                method, path, kwargs = requests[n % len(requests)]
                n += 1
                headers = {"X-Request-ID": request_id(), **kwargs.get("headers", {})}
                if method == "POST" and path == letters:
                    headers["Idempotency-Key"] = f"cut-{request_id()}"
                response = client.request(method, path, **{**kwargs, "headers": headers})
                problem = response.headers.get("content-type", "").startswith("application/problem+json")
                code = response.json().get("code") if problem else None
                self.answers.append((f"{method} {path}", response.status_code, code))
                time.sleep(0.1)


def test_a_write_cut_off_between_claim_and_completion_answers_503_and_is_stored_once(
    cluster: Cluster, load_user: tuple[str, str]
) -> None:
    """gw3 claims the key, EHRbase stalls, gw3 loses the auth DB, EHRbase answers: the letter is stored."""
    token, patient_id = load_user
    gw3 = cluster.replica("gw3")
    key = f"stuck-{uuid.uuid4()}"
    body = {
        "title": f"Cut mid-write {cluster.run_id}",
        "body": "Dear colleague,",
        "status": "draft",
        "recipients": ["GP"],
    }
    answer: dict[str, httpx.Response] = {}
    # The patient's EHR exists (and its id is cached in the auth DB): gw3's write goes straight to EHRbase.
    with cluster.client(cluster.replicas[0].url, token) as gw1:
        assert (
            gw1.post(f"/patients/{patient_id}/letters", json={**body, "title": "EHR first"}).status_code
            == 201
        )

    def write() -> None:
        answer["first"] = httpx.post(
            f"{gw3.url}/patients/{patient_id}/letters",
            json=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": key,
                "X-Request-ID": request_id(),
            },
            timeout=90,
        )

    cluster.ehrbase_relay.stall()  # gw3's calls to EHRbase hang (its /ready too: HAProxy takes it out)
    writer = threading.Thread(target=write, name="cut-mid-write")
    try:
        writer.start()
        wait_for(lambda: cluster.idempotency_state(key) == "in_progress", "gw3 claimed the key", 30)
        cluster.relay.cut()
        cluster.ehrbase_relay.resume()  # EHRbase stores the letter; gw3 cannot record that it did
        writer.join(timeout=90)
    finally:
        cluster.ehrbase_relay.resume()
        if cluster.relay.is_cut:
            cluster.relay.restore()
    gw3.wait_ready()
    cluster.haproxy.wait_state("gw3", "UP", timeout=60)
    first = answer["first"]
    print(
        f"\nwrite cut off mid-way on gw3: {first.status_code} {first.text[:200]}; "
        f"its key now {cluster.idempotency_state(key)}"
    )
    assert first.status_code == 503, first.text
    stored = [uid for uid, title in cluster.letters(patient_id) if title == body["title"]]
    assert len(stored) == 1, f"the letter cut off mid-way is stored {len(stored)} times: {stored}"
    cluster.state["cut_mid_write"] = (key, body, stored[0])


def test_a_key_left_in_progress_by_a_cut_off_replica_can_be_retried(
    cluster: Cluster, load_user: tuple[str, str]
) -> None:
    token, patient_id = load_user
    key, body, stored_uid = cluster.state["cut_mid_write"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    give_up = time.monotonic() + WRITE_PATIENCE
    with cluster.client(cluster.lb_url) as lb:
        while True:
            retry = lb.post(
                f"/patients/{patient_id}/letters",
                json=body,
                headers={**headers, "X-Request-ID": request_id()},
            )
            if retry.status_code != 409 or time.monotonic() > give_up:
                break
            time.sleep(float(retry.headers.get("retry-after", "1")))
    assert retry.status_code == 201, (
        f"after {WRITE_PATIENCE:.0f}s of retries: {retry.status_code} {retry.text}"
    )
    assert retry.json()["version_uid"] == stored_uid
    assert [uid for uid, title in cluster.letters(patient_id) if title == body["title"]] == [stored_uid]


def test_rolling_restart_under_load_loses_nothing(cluster: Cluster, load_user: tuple[str, str]) -> None:
    token, patient_id = load_user
    before = set(cluster.compositions(patient_id))
    load = Load(cluster.lb_url, token, patient_id, readers=3, writers=2, label=f"roll-{cluster.run_id}")
    timeline: list[str] = []
    started = time.monotonic()
    load.start()
    try:
        time.sleep(STEADY)
        for replica in cluster.replicas:
            assert replica.process is not None
            old_pid = replica.process.pid
            code, stopped_in = replica.stop()
            assert code == 0, f"{replica.name} exited with {code} after SIGTERM:\n{replica.log_tail()}"
            replica.start()
            ready_in = replica.wait_ready()
            in_rotation = cluster.haproxy.wait_state(replica.name, "UP", timeout=60)
            assert replica.process.pid != old_pid
            timeline.append(
                f"{replica.name}: exited {stopped_in:.1f}s after SIGTERM, ready {ready_in:.1f}s after start, "
                f"in rotation {in_rotation:.1f}s later"
            )
        time.sleep(STEADY)
    finally:
        outcomes = load.stop()
    took = time.monotonic() - started
    print(
        f"\nrolling restart under load ({took:.0f}s):\n  "
        + "\n  ".join(timeline)
        + f"\n  {summary(outcomes)}"
    )
    assert len(outcomes) > 100, f"the load was too thin to prove anything: {summary(outcomes)}"
    assert not failures(outcomes), f"{len(failures(outcomes))} failed client requests:\n" + "\n".join(
        failures(outcomes)[:20]
    )
    print("  " + assert_audited(cluster, outcomes))
    print("  " + assert_written_once(cluster, patient_id, before, outcomes))
    # HAProxy's view: every replica served the load, and what it repeated on another replica.
    lines = [line for line in cluster.haproxy.log() if line.request_id in {o.request_id for o in outcomes}]
    served = {line.server for line in lines}
    assert served == {"gw1", "gw2", "gw3"}, served
    print(
        f"  HAProxy: {sum(line.retries > 0 for line in lines)} requests retried by HAProxy "
        f"({sum(line.redispatched for line in lines)} on another replica)"
    )


def test_haproxy_never_answered_a_server_error(cluster: Cluster) -> None:
    """Over the whole run (replicas cut off, restarted): no client of HAProxy ever got a 5xx."""
    lines = cluster.haproxy.log()
    assert len(lines) > 100, f"HAProxy logged {len(lines)} requests only"
    errors = [line for line in lines if line.status >= 500]
    assert not errors, f"{len(errors)} answers >= 500 through HAProxy: {errors[:10]}"
