"""HAPI FHIR R4 client: Patient read, search (with safe paging), conditional create, update.

Every call goes through the shared resilience policy (:mod:`gateway.upstream.resilience`). The
client never follows a URL it did not build: a paging link from HAPI is checked against the
configured base (``FHIR_SERVER_URL``) and reduced to HAPI's page id and offset, which the gateway
then requests itself. HAPI's OperationOutcome issues are carried into the API's problems.

The hot read path, :meth:`FhirClient.read_patient_raw`, checks HAPI's answer and hands its body bytes
on unchanged (no re-serialisation); :meth:`FhirClient.read_patient` returns the parsed resource.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Depends, Request

from gateway.errors import (
    ApiError,
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
    UpstreamError,
    UpstreamIssue,
)
from gateway.settings import FhirAuthMode, Settings
from gateway.upstream.resilience import CONDITIONAL_CREATE_REPEATS, Upstream, UpstreamObserver
from gateway.upstream.transport import AiohttpTransport, Credentials, UpstreamResponse

FHIR_JSON = "application/fhir+json"
STORE = "HAPI FHIR"


@dataclass(frozen=True, slots=True)
class FhirResource:
    """A resource as HAPI returned it, with the validators of its version."""

    body: dict[str, Any]
    etag: str | None
    last_modified: str | None

    @property
    def id(self) -> str:
        return str(self.body.get("id", ""))

    @property
    def version_id(self) -> str | None:
        meta = self.body.get("meta") or {}
        version = meta.get("versionId")
        return str(version) if version is not None else None


@dataclass(frozen=True, slots=True, repr=False)
class RawResource:
    """A resource's body exactly as HAPI sent it (checked, not re-serialised), with its validators."""

    content: bytes
    etag: str | None
    last_modified: str | None
    version_id: str | None

    def __repr__(self) -> str:  # the body is patient data: never in a repr
        return f"RawResource({len(self.content)} bytes, version_id={self.version_id!r})"


@dataclass(frozen=True, slots=True)
class PageRef:
    """Where HAPI keeps the rest of a search: its page id and the next offset (no URL)."""

    search_id: str
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class SearchPage:
    resources: list[dict[str, Any]]
    next: PageRef | None
    total: int | None


def issues_of(response: UpstreamResponse) -> list[UpstreamIssue]:
    """The issues of an OperationOutcome body (empty when the body is not one)."""
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    issues = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict):
            issues.append(
                UpstreamIssue(
                    severity=_str(issue.get("severity")),
                    code=_str(issue.get("code")),
                    diagnostics=_str(issue.get("diagnostics")),
                    location=[str(x) for x in issue.get("location") or issue.get("expression") or []] or None,
                )
            )
    return issues


def _str(value: Any) -> str | None:
    return str(value)[:2000] if value is not None else None


def _auth(settings: Settings) -> Credentials | None:
    """The service credentials of ``FHIR_AUTH_MODE`` (basic or bearer), or None."""
    if settings.fhir_auth_mode is FhirAuthMode.basic:
        assert settings.fhir_username
        assert settings.fhir_password
        return Credentials.basic(settings.fhir_username, settings.fhir_password.get_secret_value())
    if settings.fhir_auth_mode is FhirAuthMode.bearer:
        assert settings.fhir_bearer_token
        return Credentials.bearer(settings.fhir_bearer_token.get_secret_value())
    return None


class FhirClient:
    """The gateway's only way to HAPI FHIR."""

    def __init__(
        self,
        settings: Settings,
        *,
        observer: UpstreamObserver | None = None,
        transport: AiohttpTransport | None = None,
    ) -> None:
        self.base = settings.fhir_base
        self._patient_url = f"{self.base}/Patient/"
        self._split = urlsplit(self.base)
        self.auth = _auth(settings)  # the service credentials (also used by the readiness probe)
        self.upstream = Upstream(
            name="fhir",
            display_name=STORE,
            settings=settings,
            observer=observer,
            headers={"Accept": FHIR_JSON},
            transport=transport,
            issues_of=issues_of,
        )

    async def aclose(self) -> None:
        await self.upstream.aclose()

    # --- reads --------------------------------------------------------------------------------
    async def read_patient(self, patient_id: str) -> FhirResource:
        """Read one Patient.

        Raises:
            NotFound: ``patient_not_found``. Gone: ``patient_deleted``. UpstreamError: bad answer.
        """
        return self._resource(await self._get_patient(patient_id), "Patient")

    async def _get_patient(self, patient_id: str) -> UpstreamResponse:
        """``GET /Patient/{id}``, its error statuses already turned into problems."""
        response = await self.upstream.request(
            "GET",
            self._patient_url + quote(patient_id, safe=""),
            idempotent=True,
            operation="patient.read",
            auth=self.auth,
        )
        self._raise_for_status(response, "patient.read")
        return response

    async def read_patient_raw(self, patient_id: str) -> RawResource:
        """Read one Patient and return HAPI's body bytes unchanged (the hot read path).

        The body is checked to be a JSON object with ``resourceType`` Patient and this ``id``; the
        statuses mean what they mean for :meth:`read_patient`.

        Raises:
            NotFound: ``patient_not_found``. Gone: ``patient_deleted``. UpstreamError: bad answer.
        """
        response = await self._get_patient(patient_id)
        body = self._json(response)
        if body.get("resourceType") != "Patient":
            raise UpstreamError(f"{STORE} sent a {body.get('resourceType')!r} where a Patient was expected.")
        if body.get("id") != patient_id:
            raise UpstreamError(f"{STORE} sent another Patient than the one asked for.")
        meta = body.get("meta")
        version = meta.get("versionId") if isinstance(meta, dict) else None
        headers = response.headers
        return RawResource(
            response.content,
            headers.get("ETag"),
            headers.get("Last-Modified"),
            str(version) if version is not None else None,
        )

    async def metadata(self) -> UpstreamResponse:
        """``GET /metadata`` (the readiness probe), returned as is."""
        return await self.upstream.request(
            "GET", f"{self.base}/metadata", idempotent=True, operation="metadata", auth=self.auth
        )

    async def search_patients(self, params: list[tuple[str, str]], count: int) -> SearchPage:
        """Search Patients; ``params`` are FHIR search parameters already checked by the caller."""
        query = [*params, ("_count", str(count))]
        response = await self.upstream.request(
            "GET",
            f"{self.base}/Patient",
            idempotent=True,
            operation="patient.search",
            params=query,
            auth=self.auth,
        )
        self._raise_for_status(response, "patient.search")
        return self._page(response)

    async def search_page(self, ref: PageRef) -> SearchPage:
        """The next page of an earlier search, requested by HAPI page id and offset (never a given URL)."""
        params = {
            "_getpages": ref.search_id,
            "_getpagesoffset": str(ref.offset),
            "_count": str(ref.count),
            "_bundletype": "searchset",
        }
        response = await self.upstream.request(
            "GET", self.base, idempotent=True, operation="patient.search_page", params=params, auth=self.auth
        )
        if response.status_code == 410:
            raise Gone(
                "This result page has expired on the FHIR server; search again.",
                code="search_expired",
                upstream_issues=issues_of(response) or None,
            )
        self._raise_for_status(response, "patient.search_page")
        return self._page(response)

    async def read_patients(self, patient_ids: list[str]) -> list[dict[str, Any]]:
        """Read several Patients in one search (``_id=a,b,c``); missing ones are simply absent."""
        if not patient_ids:
            return []
        page = await self.search_patients([("_id", ",".join(patient_ids))], count=len(patient_ids))
        return page.resources

    # --- writes -------------------------------------------------------------------------------
    async def create_patient(
        self, resource: dict[str, Any], *, if_none_exist: str
    ) -> tuple[FhirResource, bool]:
        """Conditional create; returns the resource and whether it was created (False: it existed).

        HAPI answers 409 when a concurrent create of the same match URL commits first (a unique
        constraint on its search-URL table). The winner's patient then exists, so the conditional create
        is repeated, which finds it. HAPI's 409 text (SQL, with the identifier in it) is never passed on.
        """
        for pause in (*CONDITIONAL_CREATE_REPEATS, None):
            response = await self.upstream.request(
                "POST",
                f"{self.base}/Patient",
                idempotent=True,  # conditional create: a repeat finds the first one
                operation="patient.create",
                headers={
                    "Content-Type": FHIR_JSON,
                    "If-None-Exist": if_none_exist,
                    "Prefer": "return=representation",
                },
                json=resource,
                auth=self.auth,
            )
            if response.status_code != 409 or pause is None:
                break
            await asyncio.sleep(pause)
        if response.status_code == 409:
            raise Conflict(
                "Another registration of this identifier is in progress on the FHIR server; retry.",
                code="registration_in_progress",
                retry_after=1,
            )
        if response.status_code == 412:
            raise Conflict(
                "More than one patient already carries this identifier on the FHIR server.",
                code="duplicate_identifier",
                upstream_issues=issues_of(response) or None,
            )
        self._raise_for_status(response, "patient.create")
        return self._resource(response, "Patient"), response.status_code == 201

    async def update_patient(
        self, patient_id: str, resource: dict[str, Any], *, version_id: str
    ) -> FhirResource:
        """Update with ``If-Match``; a stale version becomes 412 ``version_conflict``."""
        response = await self.upstream.request(
            "PUT",
            self._patient_url + quote(patient_id, safe=""),
            idempotent=True,  # guarded by If-Match
            operation="patient.update",
            headers={
                "Content-Type": FHIR_JSON,
                "If-Match": f'W/"{version_id}"',
                "Prefer": "return=representation",
            },
            json=resource,
            auth=self.auth,
        )
        if response.status_code in (409, 412):
            current = await self._current_version(patient_id)
            raise PreconditionFailed(
                "The patient was changed by someone else; read it again and re-apply your change.",
                code="version_conflict",
                current_version=f'W/"{current}"' if current else None,
                upstream_issues=issues_of(response) or None,
            )
        self._raise_for_status(response, "patient.update")
        return self._resource(response, "Patient")

    async def _current_version(self, patient_id: str) -> str | None:
        try:
            return (await self.read_patient(patient_id)).version_id
        except ApiError:
            return None

    # --- interpretation -----------------------------------------------------------------------
    def _raise_for_status(self, response: UpstreamResponse, operation: str) -> None:
        status = response.status_code
        if status < 400:
            return
        issues = issues_of(response) or None
        if status == 404:
            raise NotFound(
                "No patient with this id exists.", code="patient_not_found", upstream_issues=issues
            )
        if status == 410:
            raise Gone("This patient has been deleted.", code="patient_deleted", upstream_issues=issues)
        if status in (400, 422):
            raise UnprocessableEntity(
                "The FHIR server refused the resource.", code="fhir_validation_failed", upstream_issues=issues
            )
        raise UpstreamError(f"{STORE} answered HTTP {status} ({operation}).", upstream_issues=issues)

    def _json(self, response: UpstreamResponse) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise UpstreamError(f"{STORE} sent a body that is not JSON.") from None
        if not isinstance(body, dict):
            raise UpstreamError(f"{STORE} sent JSON that is not a resource.")
        return body

    def _resource(self, response: UpstreamResponse, resource_type: str) -> FhirResource:
        body = self._json(response)
        if body.get("resourceType") != resource_type or not isinstance(body.get("id"), str):
            raise UpstreamError(
                f"{STORE} sent a {body.get('resourceType')!r} where a {resource_type} was expected."
            )
        return FhirResource(body, response.headers.get("ETag"), response.headers.get("Last-Modified"))

    def _page(self, response: UpstreamResponse) -> SearchPage:
        body = self._json(response)
        if body.get("resourceType") != "Bundle" or body.get("type") != "searchset":
            raise UpstreamError(
                f"{STORE} sent a {body.get('resourceType')!r} where a searchset Bundle was expected."
            )
        resources = []
        for entry in body.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "Patient" and mode == "match":
                resources.append(resource)
        next_url = next(
            (
                link.get("url")
                for link in body.get("link") or []
                if isinstance(link, dict) and link.get("relation") == "next"
            ),
            None,
        )
        total = body.get("total")
        return SearchPage(
            resources,
            self.page_ref(next_url) if next_url else None,
            total if isinstance(total, int) else None,
        )

    def page_ref(self, url: str) -> PageRef:
        """HAPI's page id and offset from a ``next`` link, after checking it points at the configured base.

        Raises:
            UpstreamError: the link points at another scheme, host, port or path, or is not a HAPI page link.
        """
        parts = urlsplit(url)
        same_origin = (parts.scheme, parts.hostname, parts.port or _default_port(parts.scheme)) == (
            self._split.scheme,
            self._split.hostname,
            self._split.port or _default_port(self._split.scheme),
        )
        if not same_origin or parts.path.rstrip("/") != self._split.path.rstrip("/"):
            raise UpstreamError(
                f"{STORE} returned a paging link outside the configured FHIR_SERVER_URL; it was not followed "
                "(check that HAPI's server address matches FHIR_SERVER_URL)."
            )
        query = parse_qs(parts.query)
        try:
            search_id = query["_getpages"][0]
            offset = int(query["_getpagesoffset"][0])
            count = int(query.get("_count", ["20"])[0])
        except (KeyError, IndexError, ValueError):
            raise UpstreamError(f"{STORE} returned a paging link the gateway does not understand.") from None
        if not (0 < len(search_id) <= 128) or offset < 0 or not (0 < count <= 1000):
            raise UpstreamError(f"{STORE} returned a paging link with values out of range.")
        return PageRef(search_id, offset, count)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


async def get_fhir(request: Request) -> FhirClient:
    """The process's FHIR client (opened by the lifespan)."""
    client: FhirClient = request.app.state.fhir
    return client


FhirDep = Annotated[FhirClient, Depends(get_fhir)]
