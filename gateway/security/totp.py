"""TOTP two-factor authentication (RFC 6238 via pyotp) and single-use recovery codes.

The TOTP secret is stored encrypted with Fernet (``TOTP_ENCRYPTION_KEY``). A code is accepted for
the current 30-second step and one step either side, and never twice: the step of the last accepted
code is stored and only a later step is accepted (a conditional update, safe across replicas).
Recovery codes carry about 119 bits of randomness each (ASVS asks for 112), so a SHA-256 hash
is enough to store them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import datetime
from typing import Any, cast

import pyotp
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import CursorResult, delete, or_, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from auth_db.models import RecoveryCode, User
from gateway.security.keys import totp_fernet_key
from gateway.settings import Settings

ISSUER = "FHIR-openEHR gateway"
STEP_SECONDS = 30
VALID_WINDOW = 1
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_CODE_RE = re.compile(r"^\d{6}$")


class TotpCipher:
    """Encrypts and decrypts TOTP secrets at rest."""

    def __init__(self, settings: Settings) -> None:
        self._fernet = Fernet(totp_fernet_key(settings))

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str | None:
        """The secret, or ``None`` if it cannot be decrypted (wrong key)."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            return None


def new_secret() -> str:
    """A new random base32 TOTP secret (160 bits)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans (as a QR code) or imports."""
    return str(pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER))


def matching_step(secret: str, code: str, *, now: datetime) -> int | None:
    """The time step whose code equals ``code`` (current step ± 1), or ``None``."""
    code = code.strip().replace(" ", "")
    if not _CODE_RE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // STEP_SECONDS
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        if secrets.compare_digest(str(totp.at(step * STEP_SECONDS)), code):
            return step
    return None


async def claim_step(session: AsyncSession, user_id: uuid.UUID, step: int) -> bool:
    """Record ``step`` as used; False if that step (or a later one) was already used (a replay)."""
    result = await session.exec(
        update(User)
        .where(
            col(User.id) == user_id,
            or_(col(User.totp_last_step).is_(None), col(User.totp_last_step) < step),
        )
        .values(totp_last_step=step)
    )
    return int(cast(CursorResult[Any], result).rowcount) == 1


async def verify_code(
    session: AsyncSession, cipher: TotpCipher, user: User, code: str, *, now: datetime
) -> bool:
    """Check a TOTP code of ``user`` and mark its step used. False on a wrong or replayed code."""
    if not user.totp_secret_encrypted:
        return False
    secret = cipher.decrypt(user.totp_secret_encrypted)
    if secret is None:
        return False
    step = matching_step(secret, code, now=now)
    return step is not None and await claim_step(session, user.id, step)


def _normalise_recovery(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def hash_recovery_code(code: str) -> str:
    """The stored form of a recovery code (dashes, spaces and case ignored)."""
    return hashlib.sha256(_normalise_recovery(code).encode()).hexdigest()


def new_recovery_codes() -> list[str]:
    """Ten new recovery codes like ``k7dm-x3qp-…`` (24 characters of a 31-letter alphabet)."""
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(24))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 24, 4)))
    return codes


async def replace_recovery_codes(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    """Discard the user's recovery codes and store ten new ones; returns them (shown once)."""
    await session.exec(delete(RecoveryCode).where(col(RecoveryCode.user_id) == user_id))
    codes = new_recovery_codes()
    for code in codes:
        session.add(RecoveryCode(user_id=user_id, code_hash=hash_recovery_code(code)))
    await session.flush()
    return codes


async def use_recovery_code(session: AsyncSession, user_id: uuid.UUID, code: str, *, now: datetime) -> bool:
    """Spend one recovery code; False if it is unknown or was already used."""
    if len(code) > 64:
        return False
    result = await session.exec(
        update(RecoveryCode)
        .where(
            col(RecoveryCode.user_id) == user_id,
            col(RecoveryCode.code_hash) == hash_recovery_code(code),
            col(RecoveryCode.used_at).is_(None),
        )
        .values(used_at=now)
    )
    return int(cast(CursorResult[Any], result).rowcount) == 1


async def clear_totp(session: AsyncSession, user: User) -> None:
    """Switch TOTP off for ``user`` and discard the secret and the recovery codes."""
    user.totp_enabled = False
    user.totp_secret_encrypted = None
    user.totp_last_step = None
    session.add(user)
    await session.exec(delete(RecoveryCode).where(col(RecoveryCode.user_id) == user.id))
    await session.flush()
