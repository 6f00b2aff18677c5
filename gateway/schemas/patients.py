"""Request and response bodies of the patient routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.schemas.paging import Page


class HumanName(BaseModel):
    use: str | None = None
    text: str | None = None
    family: str | None = None
    given: list[str] | None = None
    prefix: list[str] | None = None


class Identifier(BaseModel):
    system: str | None = None
    value: str | None = None


class PatientResource(BaseModel):
    """A FHIR R4 ``Patient`` resource (https://hl7.org/fhir/R4/patient.html).

    Only the commonest elements are listed here; every element of the FHIR specification is accepted
    and the whole resource is validated against FHIR R4 before anything is sent to the FHIR server.
    """

    model_config = ConfigDict(extra="allow")

    resourceType: Literal["Patient"]
    id: str | None = None
    meta: dict[str, Any] | None = None
    identifier: list[Identifier] | None = None
    active: bool | None = None
    name: list[HumanName] | None = None
    telecom: list[dict[str, Any]] | None = None
    gender: Literal["male", "female", "other", "unknown"] | None = None
    birthDate: str | None = None
    address: list[dict[str, Any]] | None = None


class PatientSummary(BaseModel):
    """Just enough to identify a patient in a search result."""

    id: str
    name: list[HumanName] = Field(default_factory=list)
    birthDate: str | None = None
    gender: str | None = None
    identifier: list[Identifier] = Field(default_factory=list)


class PatientPage(Page[PatientSummary]):
    """One page of search results; pass ``next`` back as ``cursor`` for the following page."""

    total: int | None = Field(default=None, description="Matches in all, when the FHIR server says.")
