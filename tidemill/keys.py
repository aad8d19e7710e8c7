"""Secret keys tidemill uses, kept OUT of the warehouse.

- `pii`: the HMAC key that pseudonymises personal fields (`pii = { email = "hash" }`).
- `artifact`: the HMAC key that signs model artifacts, so a file the registry did not
  write is never unpickled.
- `quack`: the token a client gives to read an owner's warehouse live (Quack).
- `encryption`: what encrypts data at rest (Parquet exports: `tidemill export`).
`quack` and `encryption` are text (64 hex characters), since other programs use them.

Each comes from the environment (`TIDEMILL_PII_KEY`, `TIDEMILL_ARTIFACT_KEY`: hex or any
text of at least 32 bytes) or, when unset, from a key file `<state_dir>/keys/<name>.key`
generated on first use (32 random bytes, mode 0600, in a 0700 folder). Neither DuckDB
nor a snapshot nor a Prefect artifact ever holds a key. Rotation: see docs/operations.md
(set the new key in the environment; pseudonyms made with the old key stay as they are).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from tidemill.errors import TidemillError
from tidemill.private import check_private

KeyName = Literal["pii", "artifact", "quack", "encryption"]
MIN_BYTES = 32
_TEXT: frozenset[KeyName] = frozenset({"quack", "encryption"})  # given to other programs as text


class WeakKey(TidemillError, ValueError):
    """A key given in the environment that is too short to be safe."""


def key_file(state_dir: Path, name: KeyName) -> Path:
    """Where the generated key `name` lives."""
    return state_dir / "keys" / f"{name}.key"


def get_key(state_dir: Path, name: KeyName) -> bytes:
    """The key `name`: from TIDEMILL_<NAME>_KEY, else the state folder's key file (made on
    first use)."""
    given = os.environ.get(f"TIDEMILL_{name.upper()}_KEY")
    if given:
        key = bytes.fromhex(given) if _is_hex(given) and name not in _TEXT else given.encode()
        if len(key) < MIN_BYTES:
            raise WeakKey(
                f"TIDEMILL_{name.upper()}_KEY is {len(key)} bytes; use at least {MIN_BYTES} "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        return key
    return _key_in_file(key_file(state_dir, name), text=name in _TEXT)


def _key_in_file(path: Path, *, text: bool) -> bytes:
    """The key in `path`, checked to be private; made when missing (32 random bytes, or
    64 hex characters for a text key), mode 0600 in a 0700 folder."""
    check_private(path.parent, "key folder")
    if path.exists() or path.is_symlink():
        check_private(path, "key file")
        return path.read_bytes()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_hex(MIN_BYTES).encode() if text else secrets.token_bytes(MIN_BYTES)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return path.read_bytes()
    try:
        os.write(descriptor, key)
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        path.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    return key


def key_source(state_dir: Path, name: KeyName) -> str:
    """Where key `name` comes from, naming the variable and the key file, for messages
    (never the key itself)."""
    variable, path = f"TIDEMILL_{name.upper()}_KEY", key_file(state_dir, name)
    if os.environ.get(variable):
        return f"the key in {variable} (set: it wins over {path})"
    return f"the key in {path} ({variable} is not set)"


def staged_key_file(state_dir: Path, name: KeyName) -> Path:
    """Where a rotation keeps the new key until the data is under it (`rotate_key`)."""
    return key_file(state_dir, name).with_suffix(".key.new")


def stage_new_key(state_dir: Path, name: KeyName) -> str:
    """The new text key of a rotation, written (0600) beside the current one before any
    data is re-encrypted, so a rotation cut short can finish; kept if already staged."""
    assert name in _TEXT, f"{name} is a binary key"
    return _key_in_file(staged_key_file(state_dir, name), text=True).decode()


def commit_new_key(state_dir: Path, name: KeyName) -> None:
    """Make the staged key the key (an atomic rename)."""
    os.replace(staged_key_file(state_dir, name), key_file(state_dir, name))


def existing_token(state_dir: Path, name: KeyName) -> str | None:
    """A text key as `get_token` gives it, or None when neither the variable nor the key
    file is there (nothing is made)."""
    if os.environ.get(f"TIDEMILL_{name.upper()}_KEY") or key_file(state_dir, name).exists():
        return get_token(state_dir, name)
    return None


def get_token(state_dir: Path, name: KeyName) -> str:
    """A text key (`quack`) as the text clients give."""
    assert name in _TEXT, f"{name} is a binary key"
    return get_key(state_dir, name).decode()


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return len(text) % 2 == 0
