"""Password hashing (argon2id via pwdlib) and the password policy.

Hashing and verification run in a worker thread so the event loop keeps serving other requests.
Hashes made with older parameters are upgraded on the next successful login
(:meth:`PasswordService.verify_and_update`). Unknown usernames are checked against a dummy hash so
the response time does not reveal which accounts exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from anyio import to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from gateway.errors import UnprocessableEntity
from gateway.settings import Settings

MIN_LENGTH = 12
MAX_LENGTH = 128
#: zxcvbn scores 0..4; below this a password is "very guessable" (common words, patterns, names).
MIN_ZXCVBN_SCORE = 3
#: zxcvbn refuses longer input; the first 72 characters decide (a longer password is not weaker).
ZXCVBN_MAX_INPUT = 72


class PasswordService:
    """Hashes and verifies passwords with the argon2id parameters from the settings.

    Building one computes the dummy hash (one argon2 hash, CPU-bound): the app builds a single instance in its
    lifespan, off the event loop (:mod:`gateway.main`), and hands it out through
    :func:`gateway.security.deps.get_password_service`.
    """

    def __init__(self, settings: Settings) -> None:
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost=settings.argon2_memory_cost_kib,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        self._dummy_hash = self._hash.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (computed off the event loop)."""
        return await to_thread.run_sync(self._hash.hash, password)

    async def verify_and_update(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """Check ``password`` against ``stored_hash``.

        Args:
            password: what the user typed.
            stored_hash: the account's hash, or ``None`` for an unknown account (a dummy hash is
                checked instead so both cases take the same time; the answer is then ``False``).

        Returns:
            ``(valid, new_hash)``; ``new_hash`` is set when the stored hash used outdated parameters.
        """
        if stored_hash is None:
            await to_thread.run_sync(self._safe_verify, password, self._dummy_hash)
            return False, None
        return await to_thread.run_sync(self._safe_verify_and_update, password, stored_hash)

    async def verify(self, password: str, stored_hash: str) -> bool:
        """Whether ``password`` matches ``stored_hash`` (no rehash)."""
        return await to_thread.run_sync(self._safe_verify, password, stored_hash)

    def _safe_verify(self, password: str, stored_hash: str) -> bool:
        try:
            return self._hash.verify(password, stored_hash)
        except Exception:  # unknown or corrupt hash format: never a match
            return False

    def _safe_verify_and_update(self, password: str, stored_hash: str) -> tuple[bool, str | None]:
        try:
            return self._hash.verify_and_update(password, stored_hash)
        except Exception:  # unknown or corrupt hash format: never a match
            return False, None


def password_problems(password: str, user_inputs: Sequence[str] = ()) -> list[str]:
    """Reasons ``password`` is not acceptable (empty when it is).

    The rules: at least 12 and at most 128 characters, and not very guessable (zxcvbn score >= 3,
    taking the username, name and email into account). No composition rules.
    """
    if len(password) < MIN_LENGTH:
        return [f"must be at least {MIN_LENGTH} characters long"]
    if len(password) > MAX_LENGTH:
        return [f"must be at most {MAX_LENGTH} characters long"]
    from zxcvbn import zxcvbn  # imported on first use: its word lists cost ~11 MB per worker

    inputs = [item for item in user_inputs if item]
    result = zxcvbn(password[:ZXCVBN_MAX_INPUT], user_inputs=[item[:ZXCVBN_MAX_INPUT] for item in inputs])
    if int(result["score"]) < MIN_ZXCVBN_SCORE:
        warning = str(result.get("feedback", {}).get("warning") or "").strip()
        return [f"is too easy to guess{': ' + warning if warning else ''}"]
    return []


def check_password_policy(password: str, user_inputs: Sequence[str] = ()) -> None:
    """Raise ``422 weak_password`` when ``password`` breaks the policy of :func:`password_problems`."""
    problems = password_problems(password, user_inputs)
    if problems:
        raise UnprocessableEntity(f"The new password {problems[0]}.", code="weak_password")


def generate_password() -> str:
    """A random temporary password (about 130 bits), e.g. for an admin-created account."""
    return secrets.token_urlsafe(22)
