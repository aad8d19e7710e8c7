"""Sealed files: bytes encrypted and authenticated with AES-256-GCM (the model artifacts
of an encrypted state folder). A sealed file starts with `MAGIC`, then a random 96-bit
nonce, then the ciphertext and its tag; anything else is taken as unsealed."""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidemill.errors import TidemillError

MAGIC = b"TIDEMILL-SEALED\x01"
_NONCE = 12
_CONTEXT = b"tidemill sealed file v1"


class SealBroken(TidemillError, ValueError):
    """A sealed file that its key does not open (another key, or altered bytes)."""


def file_key(secret: str) -> bytes:
    """The 256-bit key for sealed files, derived from the state folder's encryption key
    (its own domain: never the key DuckDB derives from the same text)."""
    return hashlib.sha256(_CONTEXT + b"\0" + secret.encode()).digest()


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def seal(key: bytes, data: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, _CONTEXT)


def unseal(key: bytes, sealed: bytes) -> bytes:
    """The plaintext of `sealed`; SealBroken when `key` does not open it."""
    body = sealed[len(MAGIC) :]
    try:
        return AESGCM(key).decrypt(body[:_NONCE], body[_NONCE:], _CONTEXT)
    except InvalidTag:
        raise SealBroken("does not open with this key, or its bytes were altered") from None
