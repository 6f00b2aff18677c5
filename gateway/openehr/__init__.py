"""openEHR artefacts of the gateway: our letter template (OPT), composition building, AQL, template sync."""
