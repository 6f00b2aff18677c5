"""Response headers that describe a resource's version, built in one place for every router.

Patients carry FHIR's weak ETag (``W/"3"``) and the ``Last-Modified`` HAPI FHIR reported; letters carry
EHRbase's version uid as a strong ETag (``"<uuid>::<system id>::<version>"``). Clients send the ETag back
unchanged as ``If-Match``.
"""

from __future__ import annotations


def etag(version: str, *, weak: bool) -> str:
    """The ``ETag`` value of ``version``: ``W/"<version>"`` when ``weak``, else ``"<version>"``."""
    return f'W/"{version}"' if weak else f'"{version}"'


def version_headers(
    version: str | None,
    *,
    weak: bool,
    last_modified: str | None = None,
    location: str | None = None,
) -> dict[str, str]:
    """``ETag``, ``Last-Modified`` and ``Location`` for a resource; each only when its value is known.

    Args:
        version: the resource's version id (``None`` or empty: no ``ETag``).
        weak: whether the ETag is weak (FHIR versions) or strong (openEHR version uids).
        last_modified: the ``Last-Modified`` value as the store sent it (HTTP date).
        location: the resource's URL, for a create.
    """
    headers: dict[str, str] = {}
    if version:
        headers["ETag"] = etag(version, weak=weak)
    if last_modified:
        headers["Last-Modified"] = last_modified
    if location:
        headers["Location"] = location
    return headers
