"""The gateway's FHIR R4 face (``/fhir``): CapabilityStatement, Patient, DocumentReference, Binary.

Letters (openEHR compositions in EHRbase) are mapped to ``DocumentReference`` with fhir.resources
models; patients are HAPI FHIR's own resources passed through. Errors are ``OperationOutcome``.
See ``docs/fhir.md``.
"""
