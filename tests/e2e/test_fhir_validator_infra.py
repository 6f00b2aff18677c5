"""The FHIR R4 validator of the e2e stack (``tests/e2e/fhir_validator.py``), without the gateway.

Needs only ``E2E_FHIR_URL`` (``eval "$(E2E_SERVICES=hapi bash tests/e2e/infra/up.sh)"``). Proves that the
validator is real and usable as the judge of the gateway's FHIR: HAPI FHIR's ``$validate`` on the e2e HAPI
server, with the HL7 core validator and the R4 core definitions, offline. Valid resources of the kinds the
gateway returns (Patient, DocumentReference, a searchset Bundle, OperationOutcome, CapabilityStatement,
and HAPI's own answers of those kinds) give no errors; broken ones give errors that name the problem; codes
of code systems the server does not hold (SNOMED CT, LOINC) are no errors; unknown profiles are not
fetched; an answer that is no verdict raises instead of passing. Nothing here writes to HAPI.
"""

from __future__ import annotations

import copy
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.e2e.fhir_validator import (
    FhirValidator,
    FhirValidatorError,
    validation_errors,
    validation_errors_async,
)

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SNOMED = "http://snomed.info/sct"
LETTER_TYPE = {"system": SNOMED, "code": "823691000000103", "display": "Clinical letter"}


@pytest.fixture(scope="module")
def validator() -> Iterator[FhirValidator]:
    """One validator (one HTTP client) for the module."""
    with FhirValidator() as v:
        yield v


@pytest.fixture(scope="module")
def fhir_url() -> str:
    """HAPI's FHIR base URL."""
    return os.environ["E2E_FHIR_URL"].rstrip("/")


def patient() -> dict[str, Any]:
    """A valid Patient as the gateway would return it."""
    return {
        "resourceType": "Patient",
        "id": "e2e-validator-patient",
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T10:00:00.000+00:00"},
        "identifier": [{"system": NHS, "value": "9000000009"}],
        "name": [{"use": "official", "family": "Validator", "given": ["Vera"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
    }


def document_reference() -> dict[str, Any]:
    """A valid clinical letter as a DocumentReference (SNOMED CT type from the UK edition)."""
    return {
        "resourceType": "DocumentReference",
        "id": "e2e-validator-letter",
        "meta": {"versionId": "3", "lastUpdated": "2024-05-01T10:00:00.000+00:00"},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.UUID(int=1)}"}],
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [LETTER_TYPE], "text": "Clinical letter"},
        "subject": {"reference": "Patient/e2e-validator-patient"},
        "date": "2024-05-01T10:00:00+00:00",
        "author": [{"display": "Dr A Clinician"}],
        "description": "Discharge letter",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "language": "en-GB",
                    "data": "RGVhciBEciBTbWl0aCwgdGhlIHBhdGllbnQgaXMgd2VsbC4=",
                    "title": "Discharge letter",
                    "creation": "2024-05-01T09:00:00+00:00",
                }
            }
        ],
    }


def searchset(fhir_url: str) -> dict[str, Any]:
    """A searchset Bundle with a match, an include and paging links."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.UUID(int=2)),
        "meta": {"lastUpdated": "2024-05-01T10:00:00.000+00:00"},
        "type": "searchset",
        "total": 1,
        "link": [
            {"relation": "self", "url": f"{fhir_url}/DocumentReference?subject=Patient/e2e-validator"},
            {"relation": "next", "url": f"{fhir_url}?_getpages=abc&_getpagesoffset=20&_count=20"},
        ],
        "entry": [
            {
                "fullUrl": f"{fhir_url}/DocumentReference/e2e-validator-letter",
                "resource": document_reference(),
                "search": {"mode": "match"},
            },
            {
                "fullUrl": f"{fhir_url}/Patient/e2e-validator-patient",
                "resource": patient(),
                "search": {"mode": "include"},
            },
        ],
    }


def operation_outcome() -> dict[str, Any]:
    """An OperationOutcome as an error answer carries it."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "not-found",
                "details": {"text": "Patient not found"},
                "diagnostics": "No Patient with id e2e-missing",
            }
        ],
    }


def capability_statement() -> dict[str, Any]:
    """A minimal server CapabilityStatement (cpb-1, cpb-2, cpb-3 hold)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-05-01",
        "kind": "instance",
        "implementation": {"description": "FHIR gateway", "url": "http://127.0.0.1:8000/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [{"name": "identifier", "type": "token"}],
                    },
                    {"type": "DocumentReference", "interaction": [{"code": "read"}, {"code": "create"}]},
                ],
            }
        ],
    }


# ---------------------------------------------------------------- valid resources


def test_valid_patient_has_no_errors(validator: FhirValidator) -> None:
    issues = validator.issues(patient())
    assert [str(i) for i in issues if i.is_error] == []
    # The R4 core definitions were applied: DomainResource's dom-6 (narrative) is a best-practice warning.
    assert any(i.severity == "warning" and "dom-6" in i.diagnostics for i in issues), issues


def test_valid_document_reference_with_snomed_type_has_no_errors(validator: FhirValidator) -> None:
    issues = validator.issues(document_reference())
    assert [str(i) for i in issues if i.is_error] == []
    # SNOMED CT is not in the server: at most a note that the code is outside the (preferred) LOINC value set.
    about_type = [i for i in issues if i.location.startswith("DocumentReference.type")]
    assert all(i.severity in {"information", "warning"} for i in about_type), about_type


def test_searchset_bundle_has_no_errors(validator: FhirValidator, fhir_url: str) -> None:
    validator.assert_valid(searchset(fhir_url))


def test_operation_outcome_has_no_errors(validator: FhirValidator) -> None:
    validator.assert_valid(operation_outcome())


def test_capability_statement_has_no_errors(validator: FhirValidator) -> None:
    validator.assert_valid(capability_statement())


def test_hapis_own_answers_have_no_errors(validator: FhirValidator, fhir_url: str) -> None:
    """HAPI's own searchset, CapabilityStatement and 404 OperationOutcome pass its validator."""
    with httpx.Client(timeout=60.0, headers={"Accept": "application/fhir+json"}) as client:
        bundle = client.get(f"{fhir_url}/Patient", params={"_count": "2"})
        metadata = client.get(f"{fhir_url}/metadata")
        missing = client.get(f"{fhir_url}/Patient/e2e-validator-{uuid.uuid4().hex[:12]}")
    assert bundle.status_code == 200, bundle.text
    assert bundle.json()["type"] == "searchset"
    assert metadata.status_code == 200, metadata.text
    assert missing.status_code == 404, missing.text
    for resource in (bundle.json(), metadata.json(), missing.json()):
        validator.assert_valid(resource)


def test_parameters_body_is_validated_too(validator: FhirValidator) -> None:
    assert validator.errors(document_reference(), as_parameters=True) == []
    broken = document_reference()
    del broken["content"]
    errors = validator.errors(broken, as_parameters=True)
    assert any("DocumentReference.content" in e and "minimum required = 1" in e for e in errors), errors


def test_plain_function_with_url_and_with_client(fhir_url: str) -> None:
    assert validation_errors(fhir_url, patient()) == []
    assert validation_errors(None, patient()) == []  # E2E_FHIR_URL
    with httpx.Client(base_url=fhir_url, timeout=60.0) as client:
        assert validation_errors(client, patient()) == []
        assert validation_errors(client, {**patient(), "gender": "x"}) != []


async def test_async_function(fhir_url: str) -> None:
    assert await validation_errors_async(None, document_reference()) == []
    async with httpx.AsyncClient(base_url=fhir_url, timeout=60.0) as client:
        errors = await validation_errors_async(client, {**document_reference(), "status": "bogus"})
    assert any("bogus" in e for e in errors), errors


# ---------------------------------------------------------------- invalid resources


def _without(resource: dict[str, Any], key: str) -> dict[str, Any]:
    broken = copy.deepcopy(resource)
    del broken[key]
    return broken


INVALID = {
    # HAPI cannot parse these: 400 with an OperationOutcome naming the element
    "document status not a code": ({**document_reference(), "status": "bogus"}, ["status", "bogus"]),
    "patient gender not a code": ({**patient(), "gender": "x"}, ["gender", "AdministrativeGender", "'x'"]),
    "malformed date": ({**patient(), "birthDate": "1980-02-30x"}, ["birthDate", "1980-02-30x"]),
    "attachment data not base64": (
        {**document_reference(), "content": [{"attachment": {"contentType": "text/plain", "data": "!!"}}]},
        ["data"],
    ),
    # The validator proper
    "document without content": (
        _without(document_reference(), "content"),
        ["DocumentReference.content", "minimum required = 1"],
    ),
    "document without status": (
        _without(document_reference(), "status"),
        ["DocumentReference.status", "minimum required = 1"],
    ),
    "unknown element": ({**patient(), "nickname": "Vee"}, ["Unrecognized property 'nickname'"]),
    "two subjects": (
        {**document_reference(), "subject": [{"reference": "Patient/a"}, {"reference": "Patient/b"}]},
        ["subject"],
    ),
    "patient contact without details (pat-1)": ({**patient(), "contact": [{"gender": "male"}]}, ["pat-1"]),
    "attachment data without contentType (att-1)": (
        {**document_reference(), "content": [{"attachment": {"data": "SGVsbG8="}}]},
        ["att-1"],
    ),
    "searchset entry with a request (bdl-3)": (
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "fullUrl": "http://127.0.0.1/fhir/Patient/a",
                    "resource": {**patient(), "id": "a"},
                    "request": {"method": "POST", "url": "Patient"},
                }
            ],
        },
        ["bdl-3"],
    ),
    "operation outcome without issue": ({"resourceType": "OperationOutcome"}, ["OperationOutcome.issue"]),
    "capability statement without kind": (
        _without(capability_statement(), "kind"),
        ["CapabilityStatement.kind", "minimum required = 1"],
    ),
    "SNOMED code where a required binding wants another system": (
        {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": SNOMED, "code": "55561003"}]},
            "patient": {"reference": "Patient/a"},
        },
        ["AllergyIntolerance.clinicalStatus", "is required"],
    ),
}


@pytest.mark.parametrize(("resource", "expected"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_resources_give_errors_naming_the_problem(
    validator: FhirValidator, resource: dict[str, Any], expected: list[str]
) -> None:
    errors = validator.errors(resource)
    assert errors, f"no error for {resource}"
    assert any(all(word in e for word in expected) for e in errors), errors


def test_assert_valid_lists_the_errors(validator: FhirValidator) -> None:
    with pytest.raises(AssertionError, match=r"DocumentReference is not valid FHIR R4:\n  - error at "):
        validator.assert_valid(_without(document_reference(), "content"))


# ---------------------------------------------------------------- offline behaviour


def test_unknown_code_systems_are_not_errors(validator: FhirValidator) -> None:
    """LOINC and local code systems are not in the server: warnings that they cannot be checked."""
    doc = document_reference()
    doc["type"] = {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]}
    doc["category"] = [
        {"coding": [{"system": "https://example.org/CodeSystem/letter-types", "code": "discharge"}]},
        {"coding": [{"system": SNOMED, "code": "734163000", "display": "Care plan"}]},
    ]
    doc["securityLabel"] = [{"coding": [{"system": "https://example.org/CodeSystem/labels", "code": "x"}]}]
    issues = validator.issues(doc)
    assert [str(i) for i in issues if i.is_error] == []
    cannot_check = "CodeSystem is unknown and can't be validated"
    unknown = {i.location: i.severity for i in issues if cannot_check in i.diagnostics}
    assert unknown == {
        "DocumentReference.type": "warning",  # LOINC
        "DocumentReference.category[0]": "warning",
        "DocumentReference.securityLabel[0]": "warning",  # and a warning: not in the extensible value set
    }, issues


def test_unknown_profiles_are_not_fetched(validator: FhirValidator) -> None:
    """A profile the server does not hold is reported, not downloaded (the machine has no internet)."""
    resource = patient()
    resource["meta"]["profile"] = ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]
    errors = validator.errors(resource)
    assert any("not fetch unknown profiles" in e for e in errors), errors


def test_no_verdict_raises(validator: FhirValidator) -> None:
    """A validator that cannot answer must not read as 'no errors'."""
    with pytest.raises(FhirValidatorError, match="404"):
        validator.errors({"resourceType": "NoSuchType", "id": "a"})
    with pytest.raises(ValueError, match="resourceType"):
        validator.errors({"id": "a"})
    with closed_port_url() as url, pytest.raises(FhirValidatorError, match="failed"):
        validation_errors(url, patient())


@contextmanager
def closed_port_url() -> Iterator[str]:
    """A loopback URL on a port that is bound, so no one else takes it, but not listened on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
