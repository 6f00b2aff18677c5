"""The values every replica must share, checked against the auth database at start-up.

Replicas sharing one auth database must run with the same ``GATEWAY_SECRET_KEY`` (every signing and
encryption key is derived from it: access and CSRF tokens, refresh-token successors, paging cursors, FHIR
document ids, the SSO ID tokens kept for logout), the same ``TOTP_ENCRYPTION_KEY`` (enrolled TOTP secrets) and
the same ``JWT_ISSUER``/``JWT_AUDIENCE`` (checked in every access token). A replica that differs refuses what
the others issue, and users see 401s that depend on which replica answers.

So each value gets a fingerprint, an HMAC-SHA256 of a fixed label under a key derived from the value
(HKDF-SHA256 with a salt and info of this check only): never the value, nor a plain hash of it. The first
replica to start records the fingerprints in ``secret_fingerprint`` (insert-if-absent, so two replicas
starting at once agree on one row per value); every later start compares its own and refuses to start on a
difference, naming it and what to do. After a deliberate rotation, ``gateway secrets accept-new`` records
the new values.

A process without ``GATEWAY_SECRET_KEY`` (development: a random key per process) records nothing for it, or
two such processes would refuse each other; it only warns when the database names a shared key. When the
auth database does not answer at start-up (the gateway starts while PostgreSQL is still coming up), the check
is retried in the background until it does, and a process that differs then stops itself (SIGTERM); its
restart is then refused with the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col

from auth_db.engine import create_engine
from auth_db.models import SecretFingerprint, User
from auth_db.types import utcnow
from gateway.security.keys import totp_fernet_key
from gateway.security.totp import TotpCipher
from gateway.settings import Settings

logger = logging.getLogger("gateway.security")

MASTER = "GATEWAY_SECRET_KEY"
TOTP = "TOTP_ENCRYPTION_KEY"
JWT = "JWT_ISSUER/JWT_AUDIENCE"
VIA_STARTUP = "start-up"
VIA_ACCEPT = "secrets accept-new"
ROTATION_DOCS = "docs/operations.md#replicas-must-share-their-secrets"

_SALT = b"gateway-shared-secret-fingerprint"
_LABEL = b"the replicas sharing this auth database share this value (v1)"
_TABLE = str(SecretFingerprint.__tablename__)
_WHAT = {
    MASTER: "keys access and CSRF tokens, paging cursors, FHIR document ids and stored SSO ID tokens",
    TOTP: "encrypts the enrolled TOTP secrets",
    JWT: "are checked in every access token",
}


class NotMigrated(Exception):
    """The auth database has no ``secret_fingerprint`` table yet (``gateway db upgrade`` has not run)."""


class SecretsDiffer(Exception):
    """This process's shared values differ from those the auth database recorded: it must not start."""

    def __init__(self, differences: Sequence[Difference]) -> None:
        self.differences = list(differences)
        super().__init__(describe(self.differences))


@dataclass(frozen=True)
class Fingerprint:
    """What this process records, or compares, for one shared value."""

    name: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class Recorded:
    """A fingerprint held by the auth database, with when, by which host and how it was recorded."""

    name: str
    fingerprint: str
    recorded_at: datetime
    recorded_by: str
    recorded_via: str


@dataclass(frozen=True)
class Difference:
    """One shared value whose fingerprint differs from the recorded one."""

    ours: Fingerprint
    recorded: Recorded


def _fingerprint(material: bytes, name: str) -> str:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=name.encode()).derive(material)
    return hmac.new(key, _LABEL, hashlib.sha256).hexdigest()


def fingerprints(settings: Settings) -> list[Fingerprint]:
    """This configuration's fingerprints; none for a value that is random per process (no secret key)."""
    master = settings.gateway_secret_key.get_secret_value() if settings.gateway_secret_key else ""
    result: list[Fingerprint] = []
    if master:
        result.append(Fingerprint(MASTER, _fingerprint(master.encode(), MASTER)))
        issuer_audience = json.dumps([settings.jwt_issuer, settings.jwt_audience]).encode()
        result.append(Fingerprint(JWT, _fingerprint(issuer_audience, JWT)))
    if settings.totp_encryption_key is not None or master:
        derived = settings.totp_encryption_key is None
        note = "unset here: derived from GATEWAY_SECRET_KEY" if derived else ""
        result.append(Fingerprint(TOTP, _fingerprint(totp_fernet_key(settings), TOTP), note))
    return result


def compare(ours: Sequence[Fingerprint], recorded: Sequence[Recorded]) -> list[Difference]:
    """The values of ``ours`` whose recorded fingerprint differs (those not recorded yet are not listed)."""
    by_name = {record.name: record for record in recorded}
    return [
        Difference(mine, by_name[mine.name])
        for mine in ours
        if mine.name in by_name and not hmac.compare_digest(mine.value, by_name[mine.name].fingerprint)
    ]


def recorded_on(record: Recorded) -> str:
    """When, by which host and how ``record`` was recorded."""
    return f"{record.recorded_at:%Y-%m-%d %H:%M:%S} UTC by {record.recorded_by} ({record.recorded_via})"


def describe(differences: Sequence[Difference]) -> str:
    """The start-up refusal: what differs, why it matters and what to do."""
    lines = [
        "This gateway's secrets differ from those of the other replicas sharing its auth database, so it "
        "does not start (tokens one replica issues would be refused by the others: random 401s):"
    ]
    for difference in differences:
        ours, recorded = difference.ours, difference.recorded
        note = f" ({ours.note})" if ours.note else ""
        lines.append(
            f"  - {ours.name}{note}, which {_WHAT.get(ours.name, 'must be the same everywhere')}: "
            f"recorded {recorded.fingerprint[:8]}… on {recorded_on(recorded)}, this process {ours.value[:8]}…"
        )
    lines.append(
        "Give every replica the same values (compare with `gateway secrets check` on each host). After a "
        "deliberate rotation, once every replica has the new values, record them with "
        f"`gateway secrets accept-new` ({ROTATION_DOCS})."
    )
    return "\n".join(lines)


def host_name() -> str:
    """This host's name as recorded (no secret material)."""
    return socket.gethostname()[:255] or "unknown"


async def _require_table(connection: AsyncConnection) -> None:
    present = await connection.run_sync(lambda sync: inspect(sync).has_table(_TABLE))
    if not present:
        raise NotMigrated(
            f"the auth database has no {_TABLE} table: it is not migrated to this release "
            "(run `gateway db upgrade`: docs/operations.md#run-migrations)"
        )


async def _read(connection: AsyncConnection) -> list[Recorded]:
    columns = (
        col(SecretFingerprint.name),
        col(SecretFingerprint.fingerprint),
        col(SecretFingerprint.recorded_at),
        col(SecretFingerprint.recorded_by),
        col(SecretFingerprint.recorded_via),
    )
    rows = (await connection.execute(select(*columns).order_by(col(SecretFingerprint.name)))).all()
    return [Recorded(*row) for row in rows]


async def _insert_absent(
    connection: AsyncConnection, ours: Sequence[Fingerprint], *, host: str, via: str
) -> int:
    insert = sqlite_insert if connection.dialect.name == "sqlite" else pg_insert
    now = utcnow()
    values = [
        {"name": f.name, "fingerprint": f.value, "recorded_at": now, "recorded_by": host, "recorded_via": via}
        for f in ours
    ]
    result = await connection.execute(
        insert(SecretFingerprint).values(values).on_conflict_do_nothing(index_elements=["name"])
    )
    return max(result.rowcount, 0)


async def recorded(engine: AsyncEngine) -> list[Recorded]:
    """The fingerprints the auth database holds.

    Raises:
        NotMigrated: the database is not migrated to this release.
    """
    async with engine.connect() as connection:
        await _require_table(connection)
        return await _read(connection)


async def check(engine: AsyncEngine, settings: Settings, *, host: str | None = None) -> list[Recorded]:
    """Compare this configuration's fingerprints with the recorded ones, recording those still absent.

    Insert-if-absent and the read that follows run in one transaction, so concurrent first starts agree:
    one row wins and every process compares with it. Nothing is written when something differs.

    Returns:
        The fingerprints held once the check passed.

    Raises:
        SecretsDiffer: a value differs from the recorded one.
        NotMigrated: the database is not migrated to this release.
    """
    ours = fingerprints(settings)
    async with engine.begin() as connection:
        await _require_table(connection)
        host = host or host_name()
        written = await _insert_absent(connection, ours, host=host, via=VIA_STARTUP) if ours else 0
        held = await _read(connection)
        differences = compare(ours, held)
        if differences:
            raise SecretsDiffer(differences)  # leaving the block rolls the insert back
    if written:
        logger.info("shared secrets: recorded %d fingerprint(s) for the replicas to come", written)
    if not settings.gateway_secret_key and any(record.name == MASTER for record in held):
        logger.warning(
            "GATEWAY_SECRET_KEY is not set, but the auth database is shared with replicas that have one: "
            "this process's tokens are refused by them, and theirs by it"
        )
    return held


async def accept_new(engine: AsyncEngine, settings: Settings, *, host: str | None = None) -> list[Recorded]:
    """Replace every recorded fingerprint with this configuration's (after a deliberate rotation).

    Raises:
        ValueError: this configuration has nothing to record (``GATEWAY_SECRET_KEY`` is not set).
        NotMigrated: the database is not migrated to this release.
    """
    if not settings.gateway_secret_key:
        raise ValueError("GATEWAY_SECRET_KEY is not set: a process without it has no shared secret to record")
    async with engine.begin() as connection:
        await _require_table(connection)
        await connection.execute(delete(SecretFingerprint))
        await _insert_absent(connection, fingerprints(settings), host=host or host_name(), via=VIA_ACCEPT)
        return await _read(connection)


async def undecryptable_totp_secrets(engine: AsyncEngine, settings: Settings) -> tuple[int, int]:
    """How many stored TOTP secrets this configuration cannot decrypt, out of how many."""
    cipher = TotpCipher(settings)
    statement = select(col(User.totp_secret_encrypted)).where(col(User.totp_secret_encrypted).is_not(None))
    async with engine.connect() as connection:
        tokens = [str(token) for token in (await connection.execute(statement)).scalars()]
    return len([token for token in tokens if cipher.decrypt(token) is None]), len(tokens)


#: What makes the check wait and try again: the database does not answer, or is not migrated yet.
RETRY_ON: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    OSError,
    TimeoutError,
    NotMigrated,
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NotMigrated):
        return str(exc)
    return f"the auth database does not answer ({type(exc).__name__})"


class _HideStartupTraceback(logging.Filter):
    """Drops the server's traceback of a refusal whose message the gateway has already logged."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Traceback") and self.message in text)


def stop_process(_refusal: SecretsDiffer) -> None:
    """Stop this process as an orchestrator would (SIGTERM: the server shuts down gracefully)."""
    signal.raise_signal(signal.SIGTERM)


class StartupCheck:
    """The check of one starting process, retried in the background while the database cannot answer it.

    Args:
        settings: this process's configuration.
        on_late_refusal: what to do when the background retry finds a difference (default: stop the process).
        retry_seconds: the first and the longest wait between two background attempts.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_late_refusal: Callable[[SecretsDiffer], None] = stop_process,
        retry_seconds: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self.settings = settings
        self.on_late_refusal = on_late_refusal
        self.retry_seconds = retry_seconds
        self.task: asyncio.Task[None] | None = None

    async def _attempt(self) -> None:
        engine = create_engine(self.settings.computed_auth_database_url, pool_size=1, max_overflow=0)
        try:
            async with asyncio.timeout(max(5.0, 2 * self.settings.auth_db_pool_timeout)):
                await check(engine, self.settings)
        finally:
            await engine.dispose()

    async def run(self) -> None:
        """Check now; retry in the background if the database does not answer or is not migrated yet.

        Raises:
            SecretsDiffer: the process must not start; the message is logged, and the server's traceback
                of it suppressed.
        """
        try:
            await self._attempt()
        except SecretsDiffer as refusal:
            logger.critical("%s", refusal)
            logging.getLogger("uvicorn.error").addFilter(_HideStartupTraceback(str(refusal)))
            raise
        except RETRY_ON as exc:
            logger.warning(
                "shared secrets not checked yet: %s; checking again in the background until it can be done",
                _reason(exc),
            )
            self.task = asyncio.create_task(self._retry(), name="shared-secrets-check")

    async def _retry(self) -> None:
        delay, longest = self.retry_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                await self._attempt()
            except SecretsDiffer as refusal:
                logger.critical("%s\nThis process started before the check could run: it stops now", refusal)
                self.on_late_refusal(refusal)
                return
            except RETRY_ON as exc:
                logger.debug("shared secrets not checked yet: %s", _reason(exc))
                delay = min(delay * 2, longest)
            except Exception:  # a bug must not pass for a successful check
                logger.exception("shared secrets: the background check failed")
                return
            else:
                logger.info("shared secrets checked now that the auth database answers")
                return

    async def aclose(self) -> None:
        """Stop the background retry, if one runs."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def check_at_startup(settings: Settings) -> StartupCheck:
    """Run the start-up check (see :class:`StartupCheck`); the result holds any background retry."""
    startup = StartupCheck(settings)
    await startup.run()
    return startup
