"""One EHR per patient: find or create the EHR whose subject is the FHIR Patient id.

The EHR's ``EHR_STATUS.subject.external_ref`` is ``{id: <FHIR Patient id>, namespace:
EHRBASE_SUBJECT_NAMESPACE}``. The mapping is cached in the auth database (``patient_ehr``: two opaque
ids, no PHI). Creation is race-safe: EHRbase refuses a second EHR for the same subject with 409
("…used by a different EHR…"), and the loser re-reads by subject. An EHR is only created after HAPI
FHIR confirmed the patient exists, so no EHR exists for a patient that does not.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from auth_db.engine import SessionFactory
from auth_db.models import PatientEhr
from gateway.errors import UpstreamError
from gateway.upstream.ehrbase import EhrbaseClient, EhrSubjectInUse


class PatientReader(Protocol):
    """What the EHR service needs from the FHIR client: a read that raises NotFound/Gone."""

    async def read_patient(self, patient_id: str) -> Any: ...


async def cached_ehr_id(factory: SessionFactory, patient_id: str) -> str | None:
    """The EHR id cached for ``patient_id``, if any."""
    async with factory() as session:
        row = (await session.exec(select(PatientEhr).where(PatientEhr.patient_id == patient_id))).first()
        return row.ehr_id if row else None


async def _remember(factory: SessionFactory, patient_id: str, ehr_id: str) -> None:
    async with factory() as session:
        session.add(PatientEhr(patient_id=patient_id, ehr_id=ehr_id))
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()  # another request cached it first


async def find_ehr_id(
    factory: SessionFactory, ehrbase: EhrbaseClient, *, patient_id: str, namespace: str
) -> str | None:
    """The patient's EHR id without creating one (cache first, then EHRbase by subject)."""
    cached = await cached_ehr_id(factory, patient_id)
    if cached is not None:
        return cached
    found = await ehrbase.find_ehr_by_subject(patient_id, namespace)
    if found is None:
        return None
    await _remember(factory, patient_id, found.ehr_id)
    return found.ehr_id


async def get_or_create_ehr_id(
    factory: SessionFactory,
    ehrbase: EhrbaseClient,
    fhir: PatientReader,
    *,
    patient_id: str,
    namespace: str,
) -> str:
    """The patient's EHR id, creating the EHR when the patient has none yet.

    Raises:
        NotFound / Gone: HAPI FHIR does not know the patient (nothing is created).
        UpstreamError: EHRbase refused creation and no EHR can be found for the subject.
    """
    existing = await find_ehr_id(factory, ehrbase, patient_id=patient_id, namespace=namespace)
    if existing is not None:
        return existing
    await fhir.read_patient(patient_id)
    try:
        created = await ehrbase.create_ehr(patient_id, namespace)
        ehr_id = created.ehr_id
    except EhrSubjectInUse:
        raced = await ehrbase.find_ehr_by_subject(patient_id, namespace)
        if raced is None:
            raise UpstreamError("EHRbase reported an EHR for this patient but cannot find it.") from None
        ehr_id = raced.ehr_id
    await _remember(factory, patient_id, ehr_id)
    return ehr_id
