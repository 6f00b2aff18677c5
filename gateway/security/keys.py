"""Keys derived from the master secret (``GATEWAY_SECRET_KEY``), one per purpose.

Each purpose gets its own key (HKDF-SHA256 with the purpose as ``info``), so a key leaked from one
use does not open another. In development without a secret, a random per-process key is used and a
warning logged: tokens then stop working when the process restarts and are not shared by replicas.
"""

from __future__ import annotations

import base64
import logging
import secrets
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.settings import Settings

logger = logging.getLogger("gateway.security")

_PROCESS_SECRET = secrets.token_bytes(32)
_warned = False


def master_secret(settings: Settings) -> bytes:
    """The configured master secret, or (development only) this process's random one."""
    global _warned
    if settings.gateway_secret_key is not None and settings.gateway_secret_key.get_secret_value():
        return settings.gateway_secret_key.get_secret_value().encode()
    if not _warned:
        logger.warning(
            "GATEWAY_SECRET_KEY is not set: using a random per-process key; sessions end on restart"
        )
        _warned = True
    return _PROCESS_SECRET


@lru_cache(maxsize=32)
def _hkdf(secret: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"gateway-key-derivation", info=purpose.encode()
    ).derive(secret)


def derive_key(settings: Settings, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (e.g. ``"jwt"``), derived from the master secret."""
    return _hkdf(master_secret(settings), purpose)


def totp_fernet_key(settings: Settings) -> bytes:
    """The Fernet key encrypting TOTP secrets: ``TOTP_ENCRYPTION_KEY``, else derived (development)."""
    if settings.totp_encryption_key is not None:
        return settings.totp_encryption_key.get_secret_value().encode()
    return base64.urlsafe_b64encode(derive_key(settings, "totp-fernet"))
