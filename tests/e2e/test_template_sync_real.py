"""Template sync against real EHRbase: create, recognise, replace through the admin API, refuse when used.

The bundled letter template is already in EHRbase (the harness syncs it twice). Here copies of it with
template ids of their own (so the real one is never touched) are taken through every branch of
``sync_template``: the admin API's replace is seen working, and its refusal of a template that a
composition uses is seen carried into the error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gateway.errors import ApiError
from gateway.openehr.composition import Composer, LetterContent, build_composition
from gateway.openehr.templates import Opt, SyncAction, load_opt, sync_template
from gateway.settings import load_settings
from gateway.upstream.ehrbase import EhrbaseClient, create_ehrbase_client

LETTER_TEMPLATE = "gateway.clinical_letter.v1"


@pytest.fixture
async def ehrbase() -> AsyncIterator[EhrbaseClient]:
    settings = load_settings(
        gateway_env="development",
        ehrbase_url=os.environ["E2E_EHRBASE_URL"],
        ehrbase_api_user=os.environ["E2E_EHRBASE_USER"],
        ehrbase_api_password=os.environ["E2E_EHRBASE_PASSWORD"],
        ehrbase_api_admin_user=os.environ["E2E_EHRBASE_ADMIN_USER"],
        ehrbase_api_admin_password=os.environ["E2E_EHRBASE_ADMIN_PASSWORD"],
    )
    client = create_ehrbase_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


def probe_template(marker: str = "final") -> Opt:
    """Our letter OPT under a template id of its own (so nothing else uses it)."""
    letter = load_opt(LETTER_TEMPLATE)
    template_id = f"gateway.e2e_probe_{uuid.uuid4().hex[:8]}.v1"
    content = letter.content.replace(LETTER_TEMPLATE.encode(), template_id.encode())
    content = content.replace(b"<list>final</list>", f"<list>{marker}</list>".encode())
    return Opt(template_id=template_id, path=letter.path, content=content)


async def test_a_template_is_created_recognised_and_replaced(ehrbase: EhrbaseClient) -> None:
    first = probe_template()
    assert (await sync_template(ehrbase, first)).action is SyncAction.created
    assert (await sync_template(ehrbase, first)).action is SyncAction.unchanged

    changed = Opt(
        first.template_id, first.path, first.content.replace(b"<list>final</list>", b"<list>signed</list>")
    )
    assert (await sync_template(ehrbase, changed)).action is SyncAction.replaced
    stored = await ehrbase.fetch_template(first.template_id)
    assert stored is not None
    assert b"<list>signed</list>" in stored
    assert (await sync_template(ehrbase, changed)).action is SyncAction.unchanged


async def test_replacing_a_template_in_use_is_refused_with_ehrbase_reason(ehrbase: EhrbaseClient) -> None:
    probe = probe_template()
    assert (await sync_template(ehrbase, probe)).action is SyncAction.created
    ehr = await ehrbase.create_ehr(f"e2e-probe-{uuid.uuid4().hex[:8]}", "e2e-probe")
    letter = build_composition(
        LetterContent(title="Probe", body="Uses the probe template.", status="draft"),
        composer=Composer(uuid.uuid4(), "E2E probe"),
        template_id=probe.template_id,
        time=datetime.now(UTC),
    )
    await ehrbase.create_composition(ehr.ehr_id, letter, idempotent=False)

    changed = Opt(
        probe.template_id, probe.path, probe.content.replace(b"<list>final</list>", b"<list>x</list>")
    )
    with pytest.raises(ApiError) as caught:
        await sync_template(ehrbase, changed)
    issues = caught.value.upstream_issues or []
    assert issues, "EHRbase's reason is carried into the error"
    print(f"e2e: EHRbase refused to replace a used template: {caught.value.status} {issues[0].diagnostics}")
    stored = await ehrbase.fetch_template(probe.template_id)
    assert stored is not None
    assert b"<list>x</list>" not in stored
