"""``gateway check links``: FHIR↔openEHR link integrity, read-only, for a cron job.

Exit status: 0 when every link is sound, 1 when problems were found (listed), 2 when the check could not
run to the end (configuration, HAPI FHIR, EHRbase or the auth database failed): cron can tell "problems
found" from "could not check". What is checked: :mod:`gateway.services.link_check`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from gateway.cli.config import settings_or_exit
from gateway.errors import ApiError
from gateway.openehr.aql import ResultSetError
from gateway.services.link_check import (
    MAX_FHIR_BATCH,
    MAX_PAGE_SIZE,
    LinkCheckError,
    LinkReport,
    OrphanReason,
    StaleReason,
    check_links,
)
from gateway.settings import Settings

check_app = typer.Typer(help="Consistency checks across the stores (read-only).", no_args_is_help=True)

#: Exit statuses.
OK, PROBLEMS, NOT_CHECKED = 0, 1, 2

ORPHAN_TEXT = {
    OrphanReason.not_found: "is not in HAPI FHIR (404)",
    OrphanReason.deleted: "was deleted in HAPI FHIR (410)",
    OrphanReason.invalid_id: "is no FHIR id",
}


async def run_check(
    settings: Settings, *, page_size: int, fhir_batch: int, count_compositions: bool, cache: bool
) -> LinkReport:
    """Open the clients (and the auth database), run the check, close everything."""
    from auth_db.engine import create_engine, create_session_factory
    from gateway.upstream.ehrbase import create_ehrbase_client
    from gateway.upstream.fhir import FhirClient

    fhir = FhirClient(settings)
    ehrbase = create_ehrbase_client(settings)
    engine = (
        create_engine(settings.computed_auth_database_url, pool_size=1, max_overflow=0) if cache else None
    )
    try:
        return await check_links(
            ehrbase,
            fhir,
            create_session_factory(engine) if engine is not None else None,
            namespace=settings.ehrbase_subject_namespace,
            page_size=page_size,
            fhir_batch=fhir_batch,
            count_compositions=count_compositions,
        )
    finally:
        await ehrbase.aclose()
        await fhir.aclose()
        if engine is not None:
            await engine.dispose()


def _fail(message: str, *, as_json: bool, details: list[str] | None = None) -> typer.Exit:
    typer.echo(f"gateway: link check could not complete: {message}", err=True)
    for line in details or []:
        typer.echo(f"  {line}", err=True)
    if as_json:
        typer.echo(json.dumps({"status": "error", "error": message}, indent=2))
    return typer.Exit(NOT_CHECKED)


def _print_lines(report: LinkReport) -> None:
    typer.echo(
        f"checked {report.ehrs_checked} EHRs of {report.subjects_checked} subjects in namespace "
        f"{report.namespace!r} and {report.cache_rows_checked} patient_ehr rows "
        "(EHRs with a subject in another namespace are not checked)"
    )
    for orphan in report.orphans:
        held = "" if orphan.compositions is None else f", holds {orphan.compositions} compositions"
        subject = f"subject {orphan.subject_id!r} {ORPHAN_TEXT[orphan.reason]}"
        typer.echo(f"orphan EHR {orphan.ehr_id}: {subject}{held}")
    for duplicate in report.duplicates:
        typer.echo(f"duplicate EHRs for subject {duplicate.subject_id!r}: {', '.join(duplicate.ehr_ids)}")
    for stale in report.stale_cache:
        if stale.reason is StaleReason.ehr_missing:
            what = "EHR does not exist in EHRbase"
        else:
            what = (
                f"EHR belongs to subject {stale.actual_subject_id!r} in namespace {stale.actual_namespace!r}"
            )
        current = f"; the patient's EHR: {', '.join(stale.patient_ehr_ids)}" if stale.patient_ehr_ids else ""
        typer.echo(f"stale cache row: patient {stale.patient_id!r} -> EHR {stale.ehr_id}: {what}{current}")
    if report.ok:
        typer.echo("ok: no problems found")
    else:
        typer.echo(
            f"problems: {len(report.orphans)} orphan EHRs, {len(report.duplicates)} duplicated subjects, "
            f"{len(report.stale_cache)} stale cache rows"
        )


@check_app.command("links")
def links(
    page_size: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_PAGE_SIZE,
            help="EHRs per AQL page and cache rows per read (at most EHRbase's ehrbase.rest.aql.max-fetch).",
        ),
    ] = 500,
    fhir_batch: Annotated[
        int, typer.Option(min=1, max=MAX_FHIR_BATCH, help="Patient ids per HAPI FHIR `_id` search.")
    ] = 50,
    counts: Annotated[
        bool,
        typer.Option(
            "--counts/--no-counts", help="Count the compositions of each orphan EHR (one AQL each)."
        ),
    ] = True,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Also check the patient_ehr cache rows (auth DB).")
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of lines.")
    ] = False,
) -> None:
    """Report EHRs without a FHIR patient, subjects with several EHRs and stale patient_ehr rows.

    Read-only. Exit status 0: all links sound; 1: problems found; 2: the check could not complete.
    """
    settings = settings_or_exit()
    if cache and settings.uses_embedded_db and not Path(settings.auth_db_sqlite_path).exists():
        raise _fail(
            f"no auth database at {settings.auth_db_sqlite_path} (set AUTH_DB_HOST / AUTH_DATABASE_URL, "
            "or pass --no-cache)",
            as_json=as_json,
        )
    try:
        report = asyncio.run(
            run_check(
                settings, page_size=page_size, fhir_batch=fhir_batch, count_compositions=counts, cache=cache
            )
        )
    except ApiError as exc:
        issues = [f"upstream: {issue.code}: {issue.diagnostics}" for issue in exc.upstream_issues or []]
        raise _fail(f"{exc.detail or exc.title} ({exc.code})", as_json=as_json, details=issues) from None
    except (ResultSetError, LinkCheckError) as exc:
        raise _fail(f"unexpected answer from EHRbase: {exc}", as_json=as_json) from None
    except SQLAlchemyError as exc:
        raise _fail(
            f"the auth database cannot be read ({type(exc).__name__}); is it migrated and reachable?",
            as_json=as_json,
        ) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_lines(report)
    raise typer.Exit(OK if report.ok else PROBLEMS)
