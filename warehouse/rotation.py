"""Re-encrypting a state folder under a new key (`tidemill keys rotate`): the warehouse
file is copied into a fresh file under the new key (warehouse/serving/compact.py), every
model artifact is sealed again, and the published snapshot is copied anew. Each step can
run again: a rotation cut short finishes when it is run a second time. The caller keeps
the new key staged until this returns (tidemill/keys.py) and stops every owner first."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tidemill.warehouse import artifacts
from tidemill.warehouse.connection import STORAGE_VERSION, database_path, open_readonly
from tidemill.warehouse.encryption import Key, WrongKey, is_encrypted
from tidemill.warehouse.serving.compact import compact
from tidemill.warehouse.serving.snapshot import publish_snapshot, snapshot_path


@dataclass(frozen=True)
class Rotated:
    """What a rotation did."""

    warehouse_bytes: int  # size of the re-encrypted file (0: there is no warehouse yet)
    artifacts: int  # artifacts sealed anew
    snapshot: bool  # whether a snapshot was published again under the new key
    seconds: float


def rotate(state_dir: Path, old: Key, new: Key) -> Rotated:
    """Put `state_dir`'s warehouse, artifacts and snapshot under `new`. Raises
    OwnedElsewhere while an owner holds the file, WrongKey when neither key opens it."""
    started = time.perf_counter()
    path = database_path(state_dir)
    size = 0
    if path.exists():
        if not is_encrypted(path):
            raise WrongKey(f"{path} is not encrypted: set [state] encryption = true first")
        current = _opening(path, old, new)
        if current is old:
            compact(path, STORAGE_VERSION, key_from=old.text, key_to=new.text)
        size = path.stat().st_size
    sealed = artifacts.reseal(state_dir, old.text, new.text)
    published = snapshot_path(state_dir)
    republished = published.exists() and path.exists()
    if republished:  # older copies are under the old key: replaced, not kept
        publish_snapshot(path, published, keep_previous=False)
    return Rotated(size, sealed, republished, time.perf_counter() - started)


def _opening(path: Path, *keys: Key) -> Key:
    """The first of `keys` that opens `path`."""
    for key in keys:
        try:
            open_readonly(path, key).close()
        except WrongKey:
            continue
        return key
    raise WrongKey(f"{path} opens with neither {keys[0].source} nor the new key")
