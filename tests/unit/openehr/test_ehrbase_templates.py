"""Template sync through the EHRbase client: admin credentials, 201/409, admin replace (respx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import respx

from gateway.errors import UnprocessableEntity
from gateway.openehr.templates import SyncAction, load_opt, sync_all, sync_template
from gateway.settings import Settings
from gateway.upstream.ehrbase import EhrbaseClient, create_ehrbase_client
from tests import ehrbase_payloads as eb
from tests.conftest import running_app

TEMPLATE_ID = "gateway.clinical_letter.v1"
ADMIN_AUTH = httpx.BasicAuth("ehrbase-admin", "ehrbase-admin-secret")._auth_header
USER_AUTH = httpx.BasicAuth("ehrbase-user", "ehrbase-user-secret")._auth_header
TEMPLATE_URL = f"{eb.BASE}/definition/template/adl1.4"


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[EhrbaseClient]:
    ehrbase = create_ehrbase_client(make_settings())
    try:
        yield ehrbase
    finally:
        await ehrbase.aclose()


def created() -> httpx.Response:
    return httpx.Response(
        201, headers={"Location": f"{TEMPLATE_URL}/{TEMPLATE_ID}", "ETag": f'"{TEMPLATE_ID}"'}
    )


def already_there() -> httpx.Response:
    return eb.xml_error(409, f"Operational template with this template ID already exists: {TEMPLATE_ID}")


async def test_missing_template_is_uploaded_as_xml_with_admin_credentials(
    client: EhrbaseClient, upstream_mock: respx.MockRouter
) -> None:
    upload = upstream_mock.post(TEMPLATE_URL).mock(return_value=created())
    [result] = await sync_all(client)
    assert (result.template_id, result.action) == (TEMPLATE_ID, SyncAction.created)
    request = upload.calls.last.request
    assert request.headers["Content-Type"] == "application/xml"
    assert request.headers["Authorization"] == ADMIN_AUTH
    assert request.content == load_opt(TEMPLATE_ID).content


async def test_existing_equal_template_is_left_alone(
    client: EhrbaseClient, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(return_value=already_there())
    content = load_opt(TEMPLATE_ID).content
    stored = content.replace(b"  ", b"").replace(b"<!--", b"<!-- re-serialised ")
    fetch = upstream_mock.get(f"{TEMPLATE_URL}/{TEMPLATE_ID}").mock(
        return_value=httpx.Response(200, content=stored, headers={"Content-Type": "application/xml"})
    )
    replace = upstream_mock.put(f"{eb.ADMIN}/template/{TEMPLATE_ID}")
    result = await sync_template(client, load_opt(TEMPLATE_ID))
    assert result.action is SyncAction.unchanged
    assert fetch.calls.last.request.headers["Accept"] == "application/xml"
    assert replace.call_count == 0


async def test_changed_template_is_replaced_through_the_admin_api(
    client: EhrbaseClient, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(return_value=already_there())
    old = load_opt(TEMPLATE_ID).content.replace(b"<list>final</list>", b"<list>signed</list>")
    upstream_mock.get(f"{TEMPLATE_URL}/{TEMPLATE_ID}").mock(return_value=httpx.Response(200, content=old))
    replace = upstream_mock.put(f"{eb.ADMIN}/template/{TEMPLATE_ID}").mock(
        return_value=httpx.Response(200, content=load_opt(TEMPLATE_ID).content)
    )
    result = await sync_template(client, load_opt(TEMPLATE_ID))
    assert result.action is SyncAction.replaced
    request = replace.calls.last.request
    assert request.headers["Authorization"] == ADMIN_AUTH
    assert request.headers["Content-Type"] == "application/xml"


async def test_a_used_template_that_cannot_be_replaced_reports_ehrbase_message(
    client: EhrbaseClient, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(return_value=already_there())
    upstream_mock.get(f"{TEMPLATE_URL}/{TEMPLATE_ID}").mock(
        return_value=httpx.Response(200, content=b"<template/>")
    )
    upstream_mock.put(f"{eb.ADMIN}/template/{TEMPLATE_ID}").mock(
        return_value=eb.xml_error(
            422, f"Cannot update template {TEMPLATE_ID} since it is used by at least one composition"
        )
    )
    with pytest.raises(UnprocessableEntity) as caught:
        await sync_template(client, load_opt(TEMPLATE_ID))
    assert caught.value.upstream_issues is not None
    assert "used by at least one composition" in (caught.value.upstream_issues[0].diagnostics or "")


async def test_an_upload_refused_by_ehrbase_carries_its_xml_error(
    client: EhrbaseClient, upstream_mock: respx.MockRouter
) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(return_value=eb.xml_error(400, "Could not parse input template"))
    with pytest.raises(UnprocessableEntity) as caught:
        await sync_template(client, load_opt(TEMPLATE_ID))
    [issue] = caught.value.upstream_issues or []
    assert (issue.code, issue.diagnostics) == ("Bad Request", "Could not parse input template")


async def test_a_malformed_xml_error_body_gives_no_issues(
    client: EhrbaseClient, upstream_mock: respx.MockRouter
) -> None:
    broken = httpx.Response(400, text="<HashMap><error>", headers={"Content-Type": "application/xml"})
    upstream_mock.post(TEMPLATE_URL).mock(return_value=broken)
    with pytest.raises(UnprocessableEntity) as caught:
        await sync_template(client, load_opt(TEMPLATE_ID))
    assert caught.value.upstream_issues is None


@pytest.mark.parametrize("status_inline", [True, False], ids=["ehrbase-2.16", "ehrbase-2.30+"])
async def test_clinical_calls_use_the_user_credentials(
    client: EhrbaseClient, status_inline: bool, upstream_mock: respx.MockRouter
) -> None:
    route = upstream_mock.get(f"{eb.BASE}/ehr").mock(return_value=eb.ehr(status_inline=status_inline))
    found = await client.find_ehr_by_subject("p1", "fhir-patient")
    assert found is not None
    assert found.ehr_id == eb.EHR_ID
    assert route.calls.last.request.headers["Authorization"] == USER_AUTH
    assert dict(route.calls.last.request.url.params) == {
        "subject_id": "p1",
        "subject_namespace": "fhir-patient",
    }


async def test_startup_sync_uploads_when_enabled(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    upstream_mock: respx.MockRouter,
) -> None:
    upload = upstream_mock.post(TEMPLATE_URL).mock(return_value=created())
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db", ehrbase_sync_templates_on_startup=True)
    async with running_app(settings):
        assert upload.call_count == 1


async def test_startup_sync_failure_does_not_stop_the_gateway(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    upstream_mock: respx.MockRouter,
) -> None:
    upstream_mock.post(TEMPLATE_URL).mock(return_value=eb.xml_error(400, "Could not parse input template"))
    settings = make_settings(auth_db_sqlite_path=tmp_path / "auth.db", ehrbase_sync_templates_on_startup=True)
    async with running_app(settings) as http:
        assert (await http.get("/patients/p1/letters")).status_code == 401
