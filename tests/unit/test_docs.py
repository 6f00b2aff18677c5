"""The reference docs stay complete: every setting and every error code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CODE_PATTERNS = (
    re.compile(r"\bcode\s*=\s*\"([a-z][a-z0-9_]+)\""),  # raise X(..., code="...") and class attributes
    re.compile(r"\bstatus, code, title = \d+, \"([a-z][a-z0-9_]+)\""),  # error classes
    re.compile(r"(?m)^\s*\d{3}: StatusText\(\"([a-z][a-z0-9_]+)\","),  # the status table in errors.py
    re.compile(r"\"code\": \"([a-z][a-z0-9_]+)\""),  # problem bodies written by hand (middleware)
)
#: FHIR codings, not API error codes (AuditEvent, CapabilityStatement interactions, an IssueType).
NOT_ERROR_CODES = {"rest", "read", "vread", "invalid"}


def error_codes() -> set[str]:
    codes = {"internal_error", "http_error"}
    for path in (ROOT / "gateway").rglob("*.py"):
        text = path.read_text()
        for pattern in CODE_PATTERNS:
            codes |= set(pattern.findall(text))
    return codes - NOT_ERROR_CODES


def test_every_error_code_is_in_the_catalogue() -> None:
    catalogue = (ROOT / "docs" / "api" / "errors.md").read_text()
    documented = set(re.findall(r"`([a-z][a-z0-9_]+)`", catalogue))
    missing = sorted(error_codes() - documented)
    assert not missing, f"add these codes to docs/api/errors.md: {missing}"


def test_every_setting_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", reference, re.M))
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in documented)
    assert not missing, f"add these variables to docs/configuration.md: {missing}"


def test_every_compose_variable_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    lines = (ROOT / "compose.dev.yml").read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", code))
    missing = sorted(name for name in used if f"`{name}`" not in reference)
    assert not missing, f"add these compose variables to docs/configuration.md: {missing}"
