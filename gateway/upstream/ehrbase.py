"""EHRbase 2.x client: EHRs, compositions and AQL with the user credentials; templates with the admin ones.

Least privilege: clinical reads and writes authenticate as ``EHRBASE_API_USER``; template upload and
replacement authenticate as ``EHRBASE_API_ADMIN_USER``. Every call goes through the shared resilience
policy (:class:`gateway.upstream.resilience.Upstream`: timeouts, retries of idempotent calls only,
circuit breaker). EHRbase error bodies (``{"error": reason, "message": text}``) are carried into the
problem's ``upstream_issues``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from gateway.errors import UpstreamError
from gateway.settings import Settings
from gateway.upstream.ehrbase_errors import (
    CompositionGone,
    EhrSubjectInUse,
    issues_of,
    strip_etag,
    upstream_failure,
)
from gateway.upstream.transport import Credentials, UpstreamResponse

__all__ = ["CompositionGone", "EhrSubjectInUse", "EhrbaseClient", "strip_etag"]

JSON = "application/json"
XML = "application/xml"


class Upstream(Protocol):
    """The resilience policy's interface (:class:`gateway.upstream.resilience.Upstream`)."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        auth: Credentials | None = None,
        operation: str,
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EhrRef:
    """An EHR as EHRbase returns it (ids only)."""

    ehr_id: str
    system_id: str


@dataclass(frozen=True, slots=True)
class VersionRef:
    """The version uid (``<uuid>::<system>::<n>``) EHRbase reported in ``ETag``, and the body if any."""

    version_uid: str
    body: dict[str, Any] | None = None


def _basic(user: str | None, password: Any) -> Credentials | None:
    if not user or password is None:
        return None
    return Credentials.basic(user, password.get_secret_value())


class EhrbaseClient:
    """The gateway's only way to EHRbase."""

    def __init__(self, upstream: Upstream, settings: Settings) -> None:
        self.upstream = upstream
        self.base = f"{settings.ehrbase_base}/rest/openehr/v1"
        self.admin_base = f"{settings.ehrbase_base}/rest/admin"
        self.user_auth = _basic(settings.ehrbase_api_user, settings.ehrbase_api_password)
        self.admin_auth = _basic(settings.ehrbase_api_admin_user, settings.ehrbase_api_admin_password)
        self._system_id: str | None = None

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.upstream.aclose()

    async def _call(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        idempotent: bool,
        admin: bool = False,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        return await self.upstream.request(
            method,
            url,
            idempotent=idempotent,
            headers={"Accept": JSON, **(headers or {})},
            json=json_body,
            content=content,
            params=params,
            auth=self.admin_auth if admin else self.user_auth,
            operation=operation,
        )

    @staticmethod
    def _json(response: UpstreamResponse, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UpstreamError(f"EHRbase sent an unreadable {what}.") from None
        if not isinstance(body, dict):
            raise UpstreamError(f"EHRbase sent an unexpected {what}.")
        return body

    def _ehr_ref(self, response: UpstreamResponse) -> EhrRef:
        body = self._json(response, "EHR")
        ehr_id = (body.get("ehr_id") or {}).get("value")
        system_id = (body.get("system_id") or {}).get("value")
        if not isinstance(ehr_id, str) or not isinstance(system_id, str):
            raise UpstreamError("EHRbase sent an EHR without ehr_id/system_id.")
        self._system_id = system_id
        return EhrRef(ehr_id=ehr_id, system_id=system_id)

    # --- EHR ------------------------------------------------------------------------------------
    async def find_ehr_by_subject(self, subject_id: str, namespace: str) -> EhrRef | None:
        """``GET /ehr?subject_id=&subject_namespace=``; None when no EHR has this subject."""
        response = await self._call(
            "GET",
            f"{self.base}/ehr",
            params={"subject_id": subject_id, "subject_namespace": namespace},
            operation="ehrbase.ehr.find",
            idempotent=True,
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise upstream_failure(response, "EHR")
        return self._ehr_ref(response)

    async def create_ehr(self, subject_id: str, namespace: str) -> EhrRef:
        """``POST /ehr`` with an EHR_STATUS whose subject is the FHIR Patient id.

        Raises:
            EhrSubjectInUse: a concurrent request created the EHR first (409).
        """
        status = {
            "_type": "EHR_STATUS",
            "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1",
            "name": {"_type": "DV_TEXT", "value": "EHR Status"},
            "subject": {
                "_type": "PARTY_SELF",
                "external_ref": {
                    "_type": "PARTY_REF",
                    "id": {"_type": "GENERIC_ID", "value": subject_id, "scheme": "fhir"},
                    "namespace": namespace,
                    "type": "PERSON",
                },
            },
            "is_modifiable": True,
            "is_queryable": True,
        }
        response = await self._call(
            "POST",
            f"{self.base}/ehr",
            json_body=status,
            headers={"Prefer": "return=representation", "Content-Type": JSON},
            operation="ehrbase.ehr.create",
            idempotent=False,
        )
        if response.status_code == 409:
            raise EhrSubjectInUse(
                "An EHR for this patient was created concurrently.", upstream_issues=issues_of(response)
            )
        if response.status_code not in (200, 201):
            raise upstream_failure(response, "EHR")
        return self._ehr_ref(response)

    async def system_id(self, ehr_id: str) -> str:
        """EHRbase's system id (needed for client-chosen version uids); read once from an EHR."""
        if self._system_id is None:
            response = await self._call(
                "GET", f"{self.base}/ehr/{quote(ehr_id)}", operation="ehrbase.ehr.read", idempotent=True
            )
            if response.status_code != 200:
                raise upstream_failure(response, "EHR")
            self._ehr_ref(response)
        assert self._system_id is not None
        return self._system_id

    # --- compositions ---------------------------------------------------------------------------
    def _composition_url(self, ehr_id: str, uid: str | None = None) -> str:
        url = f"{self.base}/ehr/{quote(ehr_id)}/composition"
        return f"{url}/{quote(uid, safe=':')}" if uid else url

    def _version(self, response: UpstreamResponse, *, with_body: bool) -> VersionRef:
        version_uid = strip_etag(response.headers.get("ETag"))
        body = self._json(response, "composition") if with_body and response.content else None
        if version_uid is None and body is not None:
            version_uid = (body.get("uid") or {}).get("value")
        if not version_uid:
            raise UpstreamError("EHRbase did not report the composition's version uid.")
        return VersionRef(version_uid=version_uid, body=body)

    async def create_composition(
        self, ehr_id: str, composition: dict[str, Any], *, idempotent: bool
    ) -> VersionRef:
        """``POST /ehr/{ehr_id}/composition`` (canonical JSON, ``Prefer: return=representation``).

        Args:
            idempotent: True when the composition carries a client-chosen uid, so a retry cannot
                create a second letter (EHRbase refuses a known uid with 412).
        """
        response = await self._call(
            "POST",
            self._composition_url(ehr_id),
            json_body=composition,
            headers={"Prefer": "return=representation", "Content-Type": JSON},
            operation="ehrbase.composition.create",
            idempotent=idempotent,
        )
        if response.status_code not in (200, 201, 204):
            raise upstream_failure(response, "letter")
        return self._version(response, with_body=response.status_code != 204)

    async def get_composition(self, ehr_id: str, uid: str) -> VersionRef | None:
        """``GET /ehr/{ehr_id}/composition/{uid}`` in canonical JSON; None when not in this EHR.

        Raises:
            CompositionGone: the composition was deleted (EHRbase answers 204).
        """
        response = await self._call(
            "GET",
            self._composition_url(ehr_id, uid),
            operation="ehrbase.composition.read",
            idempotent=True,
        )
        if response.status_code == 404:
            return None
        if response.status_code == 204:
            raise CompositionGone("This letter was deleted.")
        if response.status_code != 200:
            raise upstream_failure(response, "letter")
        return self._version(response, with_body=True)

    async def update_composition(
        self, ehr_id: str, versioned_object_id: str, *, if_match: str, composition: dict[str, Any]
    ) -> VersionRef:
        """``PUT /ehr/{ehr_id}/composition/{versioned_object_uid}`` with ``If-Match: <version uid>``.

        EHRbase wants the version uid without quotes. A stale one gives 412.
        """
        response = await self._call(
            "PUT",
            self._composition_url(ehr_id, versioned_object_id),
            json_body=composition,
            headers={"If-Match": if_match, "Prefer": "return=representation", "Content-Type": JSON},
            operation="ehrbase.composition.update",
            idempotent=True,
        )
        if response.status_code not in (200, 204):
            raise upstream_failure(response, "letter")
        return self._version(response, with_body=response.status_code == 200)

    async def delete_composition(self, ehr_id: str, preceding_version_uid: str) -> str | None:
        """``DELETE /ehr/{ehr_id}/composition/{preceding_version_uid}``; a stale uid gives 409.

        Returns:
            The version uid of the deletion (from ``ETag``), when EHRbase reports it.
        """
        response = await self._call(
            "DELETE",
            self._composition_url(ehr_id, preceding_version_uid),
            operation="ehrbase.composition.delete",
            idempotent=True,
        )
        if response.status_code != 204:
            raise upstream_failure(response, "letter")
        return strip_etag(response.headers.get("ETag"))

    # --- AQL ------------------------------------------------------------------------------------
    async def query(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /query/aql`` with ``q``, ``query_parameters``, ``offset``, ``fetch`` (read-only)."""
        response = await self._call(
            "POST",
            f"{self.base}/query/aql",
            json_body=body,
            headers={"Content-Type": JSON},
            operation="ehrbase.query.aql",
            idempotent=True,
        )
        if response.status_code != 200:
            raise upstream_failure(response, "query")
        return self._json(response, "result set")

    # --- templates (admin credentials) ----------------------------------------------------------
    async def upload_template(self, content: bytes) -> bool:
        """``POST /definition/template/adl1.4``; True when created, False when it exists (409)."""
        response = await self._call(
            "POST",
            f"{self.base}/definition/template/adl1.4",
            content=content,
            headers={"Content-Type": XML, "Accept": XML},
            operation="ehrbase.template.upload",
            idempotent=True,
            admin=True,
        )
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 201, 204):
            raise upstream_failure(response, "template")
        return True

    async def fetch_template(self, template_id: str) -> bytes | None:
        """``GET /definition/template/adl1.4/{template_id}`` as OPT XML; None when unknown."""
        response = await self._call(
            "GET",
            f"{self.base}/definition/template/adl1.4/{quote(template_id, safe='')}",
            headers={"Accept": XML},
            operation="ehrbase.template.read",
            idempotent=True,
            admin=True,
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise upstream_failure(response, "template")
        return response.content

    async def replace_template(self, template_id: str, content: bytes) -> None:
        """``PUT /rest/admin/template/{template_id}`` (EHRbase admin API; needs ``admin-api.active``).

        EHRbase refuses (422) to replace a template that compositions use unless
        ``system.allow-template-overwrite`` is on.
        """
        response = await self._call(
            "PUT",
            f"{self.admin_base}/template/{quote(template_id, safe='')}",
            content=content,
            headers={"Content-Type": XML, "Accept": XML},
            operation="ehrbase.template.replace",
            idempotent=True,
            admin=True,
        )
        if response.status_code != 200:
            raise upstream_failure(response, "template")


def create_ehrbase_client(settings: Settings) -> EhrbaseClient:
    """The EHRbase client with its own pooled connections and circuit breaker (closed by :meth:`aclose`)."""
    from gateway.upstream.resilience import Upstream as ResilientUpstream

    return EhrbaseClient(
        ResilientUpstream(name="ehrbase", display_name="EHRbase", settings=settings, issues_of=issues_of),
        settings,
    )
