"""What one replica does, every other replica knows: sessions, revocations, throttling, idempotency keys.

Each scenario acts on one replica and checks the others **directly** (so it is certain which process
answers), then through HAProxy. The state lives in the shared auth database only (docs/architecture.md,
"Stateless replicas"); these tests prove that nothing that must be shared is kept in one process.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.gateway_process import nhs_number
from tests.e2e.replicas.conftest import AUTHZ_CACHE_MS, PASSWORD, Cluster, request_id

#: docs/auth.md: failures per account before the login is locked (system setting lockout_threshold).
LOCKOUT_THRESHOLD = 5


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, f"{response.request.url}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def letter(title: str, status: str = "draft") -> dict[str, Any]:
    return {"title": title, "body": "Dear colleague,\n\nSeen today.", "status": status, "recipients": ["GP"]}


def after_authz_bound() -> None:
    """Wait out AUTHZ_CACHE_MS after a change: no process may still reuse an answer from before it.

    A process reuses a positive answer for at most AUTHZ_CACHE_MS counted from the moment its statement was
    sent, and every answer cached on the other replicas was asked for before the change was made.
    """
    time.sleep(AUTHZ_CACHE_MS / 1000)


@pytest.fixture(scope="module")
def rng(cluster: Cluster) -> random.Random:
    return random.Random(cluster.run_id)


def test_every_replica_is_in_rotation(cluster: Cluster) -> None:
    assert cluster.haproxy.states() == {"gw1": "UP", "gw2": "UP", "gw3": "UP"}
    for replica in cluster.replicas:
        assert httpx.get(f"{replica.url}/ready", timeout=10).status_code == 200, replica.name


# --- sessions ----------------------------------------------------------------------------------------


def test_a_bearer_token_from_one_replica_works_on_every_other(cluster: Cluster, rng: random.Random) -> None:
    gw1, gw2, gw3 = cluster.replicas
    user, token = cluster.onboard(f"sess.{cluster.run_id}", "Dr Session", via=gw1.url)
    # Two patients registered through two replicas; both are this clinician's (care-team links).
    first = cluster.register_patient(gw1.url, token, "Alpha", nhs_number(rng))
    second = cluster.register_patient(gw2.url, token, "Beta", nhs_number(rng))
    cluster.state.update(session_user=user, session_token=token, patients=[first, second])
    for replica in (gw1, gw2, gw3):
        with cluster.client(replica.url, token) as client:
            me = client.get("/auth/me")
            assert me.status_code == 200, f"{replica.name}: {me.text}"
            assert me.json()["id"] == user["id"]
            for patient_id in (first, second):
                read = client.get(f"/patients/{patient_id}")
                assert read.status_code == 200, f"{replica.name} reading {patient_id}: {read.text}"

    # A paging cursor signed by one replica is accepted by another (same GATEWAY_SECRET_KEY).
    with cluster.client(gw1.url, token) as on_gw1, cluster.client(gw3.url, token) as on_gw3:
        page = on_gw1.get("/patients", params={"family": f"Scale{cluster.run_id}", "limit": 1})
        assert page.status_code == 200, page.text
        cursor = page.json()["next"]
        assert cursor, page.json()
        rest = on_gw3.get("/patients", params={"cursor": cursor})
        assert rest.status_code == 200, rest.text
        seen = [item["id"] for item in page.json()["items"] + rest.json()["items"]]
        assert sorted(seen) == sorted([first, second])

    # Through HAProxy: consecutive requests go round the replicas, and each one accepts the token.
    ids = [request_id() for _ in range(6)]
    with cluster.client(cluster.lb_url, token) as lb:
        for rid in ids:
            response = lb.get("/auth/me", headers={"X-Request-ID": rid})
            assert response.status_code == 200, response.text
    served = {line.server for line in cluster.haproxy.log_for(set(ids)).values()}
    assert served == {"gw1", "gw2", "gw3"}, served


def test_a_browser_session_from_one_replica_works_on_every_other(cluster: Cluster) -> None:
    gw1, gw2, gw3 = cluster.replicas
    user = cluster.state["session_user"]
    login = httpx.post(
        f"{gw1.url}/auth/login", json={"username": user["username"], "password": PASSWORD}, timeout=30
    )
    assert login.status_code == 200, login.text
    csrf = login.json()["csrf_token"]

    def cookie_header(response: httpx.Response, previous: str = "") -> str:
        # The cookies are Secure (__Host-): a client on plain http keeps them by hand, as a browser would
        # on https. Cookies do not depend on the port, so a browser would send them to every replica.
        jar = dict(item.split("=", 1) for item in previous.split("; ") if item)
        jar.update(dict(response.cookies.items()))
        return "; ".join(f"{name}={value}" for name, value in jar.items())

    cookies = cookie_header(login)
    for replica in (gw2, gw3):
        me = httpx.get(f"{replica.url}/auth/me", headers={"Cookie": cookies}, timeout=30)
        assert me.status_code == 200, f"{replica.name}: {me.text}"
        assert me.json()["id"] == user["id"]
    # A change on gw2 with the CSRF token issued by gw1; gw3 sees it.
    changed = httpx.patch(
        f"{gw2.url}/auth/me",
        json={"display_name": "Dr Session (changed on gw2)"},
        headers={"Cookie": cookies, "X-CSRF-Token": csrf},
        timeout=30,
    )
    assert changed.status_code == 200, changed.text
    me = httpx.get(f"{gw3.url}/auth/me", headers={"Cookie": cookies}, timeout=30)
    assert me.json()["display_name"] == "Dr Session (changed on gw2)"
    # The refresh cookie of gw1's login rotated by gw3; the new access cookie works on gw1 and via HAProxy.
    refreshed = httpx.post(
        f"{gw3.url}/auth/refresh", headers={"Cookie": cookies, "X-CSRF-Token": csrf}, timeout=30
    )
    assert refreshed.status_code == 200, refreshed.text
    cookies = cookie_header(refreshed, cookies)
    for base in (gw1.url, cluster.lb_url):
        me = httpx.get(f"{base}/auth/me", headers={"Cookie": cookies}, timeout=30)
        assert me.status_code == 200, f"{base}: {me.text}"


# --- revocation --------------------------------------------------------------------------------------


def test_logout_on_one_replica_ends_the_session_on_all(cluster: Cluster) -> None:
    gw1, gw2, gw3 = cluster.replicas
    user = cluster.state["session_user"]
    token = cluster.token(gw1.url, user["username"], PASSWORD)
    for base in (gw2.url, gw3.url, cluster.lb_url):  # each replica now holds a positive answer in its cache
        assert httpx.get(
            f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).is_success
    logout = httpx.post(f"{gw1.url}/auth/logout", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert logout.status_code == 204, logout.text
    after_authz_bound()
    for base in (gw2.url, gw3.url, gw1.url, cluster.lb_url):
        response = httpx.get(f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        problem(response, 401, "session_ended")


def test_a_disabled_account_is_refused_by_all(cluster: Cluster) -> None:
    gw1, gw2, gw3 = cluster.replicas
    user, token = cluster.onboard(f"dis.{cluster.run_id}", "Dr Disabled", via=gw2.url)
    for base in (gw1.url, gw3.url, cluster.lb_url):
        assert httpx.get(
            f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).is_success
    with cluster.client(gw2.url, cluster.admin_token) as admin:
        disabled = admin.post(f"/admin/users/{user['id']}/disable")
        assert disabled.status_code == 200, disabled.text
    after_authz_bound()
    for base in (gw1.url, gw3.url, gw2.url, cluster.lb_url):
        response = httpx.get(f"{base}/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        problem(response, 401, "session_ended")
        login = httpx.post(
            f"{base}/auth/token", data={"username": user["username"], "password": PASSWORD}, timeout=30
        )
        problem(login, 401, "invalid_credentials")


def test_a_revoked_care_team_link_is_refused_by_all(cluster: Cluster) -> None:
    gw1, gw2, gw3 = cluster.replicas
    patient_id = cluster.state["patients"][0]
    user, token = cluster.onboard(f"team.{cluster.run_id}", "Dr Team", via=gw3.url)
    with cluster.client(gw3.url, cluster.admin_token) as admin:
        granted = admin.post("/admin/care-team", json={"user_id": user["id"], "patient_id": patient_id})
        assert granted.status_code == 201, granted.text
    link_id = granted.json()["id"]
    for base in (gw1.url, gw2.url, cluster.lb_url):
        read = httpx.get(
            f"{base}/patients/{patient_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert read.status_code == 200, f"{base}: {read.text}"
    with cluster.client(gw3.url, cluster.admin_token) as admin:
        revoked = admin.delete(f"/admin/care-team/{link_id}")
        assert revoked.status_code == 204, revoked.text
    after_authz_bound()
    for base in (gw1.url, gw2.url, gw3.url, cluster.lb_url):
        for path in (f"/patients/{patient_id}", f"/patients/{patient_id}/letters"):
            response = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            problem(response, 403, "no_patient_relationship")


# --- throttling --------------------------------------------------------------------------------------


def test_failed_logins_spread_over_replicas_still_lock(cluster: Cluster) -> None:
    gw1, gw2, gw3 = cluster.replicas
    user, _ = cluster.onboard(f"lock.{cluster.run_id}", "Dr Locked", via=gw1.url)
    order = [gw1, gw2, gw3, gw1, gw2]
    assert len(order) == LOCKOUT_THRESHOLD
    for n, replica in enumerate(order, start=1):
        wrong = httpx.post(
            f"{replica.url}/auth/token",
            data={"username": user["username"], "password": f"wrong-{n}"},
            timeout=30,
        )
        problem(wrong, 401, "invalid_credentials")
    # The sixth attempt, with the right password, on the replica that saw one failure only.
    for base in (gw3.url, gw1.url, cluster.lb_url):
        locked = httpx.post(
            f"{base}/auth/token", data={"username": user["username"], "password": PASSWORD}, timeout=30
        )
        body = problem(locked, 429, "too_many_attempts")
        assert int(locked.headers["retry-after"]) > 0
        assert body["retry_after"] == int(locked.headers["retry-after"])


def test_parallel_guesses_on_all_replicas_get_no_more_than_the_threshold(cluster: Cluster) -> None:
    user, _ = cluster.onboard(f"guess.{cluster.run_id}", "Dr Guessed", via=cluster.replicas[0].url)
    attempts = [(replica, n) for n in range(4) for replica in cluster.replicas]  # 12 at once, 4 per replica
    barrier = threading.Barrier(len(attempts))

    def guess(attempt: tuple[Any, int]) -> tuple[str, int]:
        replica, n = attempt
        barrier.wait(timeout=30)
        response = httpx.post(
            f"{replica.url}/auth/token",
            data={"username": user["username"], "password": f"guess-{replica.name}-{n}"},
            timeout=60,
        )
        return replica.name, response.status_code

    with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
        answers = list(pool.map(guess, attempts))
    statuses = sorted(status for _, status in answers)
    # Each attempt is counted before its password is checked, in the shared database: however the guesses
    # race across the replicas, no more than the threshold of them is ever checked.
    assert statuses == [401] * LOCKOUT_THRESHOLD + [429] * (len(attempts) - LOCKOUT_THRESHOLD), answers


# --- idempotency -------------------------------------------------------------------------------------


def test_a_letter_replayed_to_other_replicas_is_written_once(cluster: Cluster) -> None:
    gw1, gw2, gw3 = cluster.replicas
    token, patient_id = cluster.state["writer"] if "writer" in cluster.state else _writer(cluster)
    key = f"replica-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    url = f"/patients/{patient_id}/letters"
    first = httpx.post(f"{gw1.url}{url}", json=letter("Written once"), headers=headers, timeout=60)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    for base in (gw2.url, gw3.url, cluster.lb_url):
        replay = httpx.post(f"{base}{url}", json=letter("Written once"), headers=headers, timeout=60)
        assert replay.status_code == 201, f"{base}: {replay.text}"
        assert replay.headers.get("idempotent-replayed") == "true", f"{base}: {dict(replay.headers)}"
        assert replay.headers["etag"] == first.headers["etag"]
        assert replay.json()["version_uid"] == first.json()["version_uid"]
    reused = httpx.post(f"{gw3.url}{url}", json=letter("Another letter"), headers=headers, timeout=60)
    problem(reused, 422, "idempotency_key_reused")
    assert cluster.compositions(patient_id) == [first.json()["version_uid"]]


def test_one_key_sent_to_every_replica_at_once_writes_once(cluster: Cluster) -> None:
    token, patient_id = cluster.state["writer"]
    before = set(cluster.compositions(patient_id))
    key = f"race-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    url = f"/patients/{patient_id}/letters"
    barrier = threading.Barrier(len(cluster.replicas))

    def send(base: str) -> httpx.Response:
        barrier.wait(timeout=30)
        response = httpx.post(f"{base}{url}", json=letter("Raced"), headers=headers, timeout=60)
        # 409 idempotency_in_progress: the first is still writing; the client repeats after Retry-After.
        for _ in range(20):
            if response.status_code != 409:
                break
            problem(response, 409, "idempotency_in_progress")
            time.sleep(float(response.headers.get("retry-after", "1")))
            response = httpx.post(f"{base}{url}", json=letter("Raced"), headers=headers, timeout=60)
        return response

    with ThreadPoolExecutor(max_workers=len(cluster.replicas)) as pool:
        answers = list(pool.map(send, [r.url for r in cluster.replicas]))
    assert [a.status_code for a in answers] == [201] * len(answers), [a.text for a in answers]
    fresh = [a for a in answers if a.headers.get("idempotent-replayed") != "true"]
    assert len(fresh) == 1, [dict(a.headers) for a in answers]
    assert len({a.json()["version_uid"] for a in answers}) == 1
    written = set(cluster.compositions(patient_id)) - before
    assert written == {answers[0].json()["version_uid"]}


def _writer(cluster: Cluster) -> tuple[str, str]:
    """A clinician with a patient of their own, for the letter scenarios."""
    _, token = cluster.onboard(f"writer.{cluster.run_id}", "Dr Writer", via=cluster.replicas[1].url)
    patient_id = cluster.register_patient(
        cluster.replicas[2].url, token, "Writer", nhs_number(random.Random(cluster.run_id + "w"))
    )
    cluster.state["writer"] = (token, patient_id)
    return token, patient_id
