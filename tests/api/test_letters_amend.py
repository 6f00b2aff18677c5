"""``PUT``/``DELETE /patients/{id}/letters/{letter_id}``: versions, If-Match, reasons and drafts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.openehr.composition import Composer, LetterContent, build_composition
from tests import ehrbase_payloads as eb
from tests.api.test_letters import PATIENT, LetterEnv, cache_ehr, env

__all__ = ["env"]

AMENDED = {"title": "Discharge letter", "body": "Corrected text.", "status": "final", "recipients": []}
ITEM = f"/patients/{PATIENT}/letters/{eb.LETTER_UUID}"
COMPOSITION_URL = f"/ehr/{eb.EHR_ID}/composition/{eb.LETTER_UUID}"


def stored_letter(env: LetterEnv, status: str) -> dict[str, Any]:
    return build_composition(
        LetterContent(title="Discharge letter", body="Original text.", status=status),  # type: ignore[arg-type]
        composer=Composer(env.principal.user_id, env.principal.display_name),
        template_id="gateway.clinical_letter.v1",
        time=datetime(2026, 11, 20, 8, 0, tzinfo=UTC),
    )


async def current(env: LetterEnv, status: str = "draft", version: str = eb.VERSION_1) -> None:
    await cache_ehr(env)
    env.ehrbase.get(COMPOSITION_URL).mock(
        return_value=eb.composition_read(eb.EHR_ID, stored_letter(env, status), version)
    )


def echo_update(request: httpx.Request) -> httpx.Response:
    return eb.composition_written(eb.EHR_ID, json.loads(request.content), eb.VERSION_2, status_code=200)


class TestAmend:
    async def test_missing_if_match_is_428(self, env: LetterEnv) -> None:
        response = await env.client.put(ITEM, json=AMENDED)
        assert response.status_code == 428
        assert response.json()["code"] == "if_match_required"

    async def test_amend_sends_the_version_uid_unquoted_and_returns_the_new_etag(
        self, env: LetterEnv
    ) -> None:
        await current(env)
        update = env.ehrbase.put(COMPOSITION_URL).mock(side_effect=echo_update)
        response = await env.client.put(ITEM, json=AMENDED, headers={"If-Match": f'"{eb.VERSION_1}"'})
        assert response.status_code == 200, response.text
        assert response.headers["ETag"] == f'"{eb.VERSION_2}"'
        assert response.json()["body"] == "Corrected text."
        assert update.calls.last.request.headers["If-Match"] == eb.VERSION_1
        [event] = await env.audit("letter.amend")
        assert event.resource_ids == [eb.VERSION_2, eb.VERSION_1]

    async def test_a_stale_if_match_is_412_with_the_current_version(self, env: LetterEnv) -> None:
        await current(env, version=eb.VERSION_2)
        update = env.ehrbase.put(COMPOSITION_URL)
        response = await env.client.put(ITEM, json=AMENDED, headers={"If-Match": f'"{eb.VERSION_1}"'})
        assert response.status_code == 412
        assert response.json()["code"] == "stale_version"
        assert response.json()["current_version"] == eb.VERSION_2
        assert update.call_count == 0

    async def test_ehrbase_412_on_a_concurrent_amend_is_412(self, env: LetterEnv) -> None:
        await current(env)
        env.ehrbase.put(COMPOSITION_URL).mock(
            return_value=eb.error(412, "If-Match version_uid does not match latest version")
        )
        response = await env.client.put(ITEM, json=AMENDED, headers={"If-Match": eb.VERSION_1})
        assert response.status_code == 412
        problem = response.json()
        assert problem["code"] == "stale_version"
        assert (
            problem["upstream_issues"][0]["diagnostics"]
            == "If-Match version_uid does not match latest version"
        )

    async def test_a_final_letter_needs_a_reason(self, env: LetterEnv) -> None:
        await current(env, status="final")
        update = env.ehrbase.put(COMPOSITION_URL).mock(side_effect=echo_update)
        refused = await env.client.put(ITEM, json=AMENDED, headers={"If-Match": eb.VERSION_1})
        assert refused.status_code == 422
        assert refused.json()["code"] == "amend_reason_required"
        assert update.call_count == 0
        accepted = await env.client.put(
            ITEM, json={**AMENDED, "reason": "Wrong dose corrected"}, headers={"If-Match": eb.VERSION_1}
        )
        assert accepted.status_code == 200, accepted.text
        events = await env.audit("letter.amend")
        assert [(e.outcome, e.reason) for e in events] == [
            ("failure", None),
            ("success", "Wrong dose corrected"),
        ]

    async def test_a_final_letter_cannot_go_back_to_draft(self, env: LetterEnv) -> None:
        await current(env, status="final")
        update = env.ehrbase.put(COMPOSITION_URL)
        response = await env.client.put(
            ITEM, json={**AMENDED, "status": "draft", "reason": "Reopen"}, headers={"If-Match": eb.VERSION_1}
        )
        assert response.status_code == 422
        assert response.json()["code"] == "letter_already_final"
        assert update.call_count == 0

    async def test_amending_a_letter_of_another_patient_is_404(self, env: LetterEnv) -> None:
        await cache_ehr(env)
        env.ehrbase.get(COMPOSITION_URL).mock(return_value=eb.composition_not_found(eb.LETTER_UUID))
        update = env.ehrbase.put(COMPOSITION_URL)
        response = await env.client.put(ITEM, json=AMENDED, headers={"If-Match": eb.VERSION_1})
        assert response.status_code == 404
        assert update.call_count == 0

    @pytest.mark.parametrize("if_match", ["*", "v1", '"abc::x"'])
    async def test_an_if_match_that_is_not_a_version_uid_is_422(self, env: LetterEnv, if_match: str) -> None:
        response = await env.client.put(ITEM, json=AMENDED, headers={"If-Match": if_match})
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_if_match"


class TestDelete:
    async def test_a_draft_is_deleted(self, env: LetterEnv) -> None:
        await current(env)
        deletion = env.ehrbase.delete(f"/ehr/{eb.EHR_ID}/composition/{eb.VERSION_1}").mock(
            return_value=httpx.Response(204, headers={"ETag": f'"{eb.VERSION_2}"'})
        )
        response = await env.client.delete(ITEM, headers={"If-Match": f'"{eb.VERSION_1}"'})
        assert response.status_code == 204
        assert deletion.call_count == 1
        [event] = await env.audit("letter.delete")
        assert event.resource_ids == [eb.VERSION_1]

    async def test_a_final_letter_is_not_deleted(self, env: LetterEnv) -> None:
        await current(env, status="final")
        response = await env.client.delete(ITEM, headers={"If-Match": eb.VERSION_1})
        assert response.status_code == 409
        assert response.json()["code"] == "letter_not_draft"

    async def test_ehrbase_409_on_a_stale_delete_is_412(self, env: LetterEnv) -> None:
        await current(env)
        env.ehrbase.delete(f"/ehr/{eb.EHR_ID}/composition/{eb.VERSION_1}").mock(
            return_value=eb.error(409, "If-Match version_uid does not match latest version")
        )
        response = await env.client.delete(ITEM, headers={"If-Match": eb.VERSION_1})
        assert response.status_code == 412
        assert response.json()["code"] == "stale_version"
