"""`tidemill keys rotate`: the state folder's data under a new encryption key."""

from __future__ import annotations

import os

from tidemill import layout
from tidemill.cli import session
from tidemill.cli.output import Format, print_result
from tidemill.errors import TidemillError
from tidemill.keys import commit_new_key, existing_token, key_source, stage_new_key
from tidemill.warehouse.encryption import Key

_GIVEN, _NEXT = "TIDEMILL_ENCRYPTION_KEY", "TIDEMILL_NEW_ENCRYPTION_KEY"


def keys_rotate() -> None:
    """Re-encrypt the warehouse, its model artifacts and its snapshot under a new key.

    Stop tidemill first (`tidemill down`): the warehouse is rewritten into a fresh file.
    With the key in keys/encryption.key, a new one is made there; with the key in
    TIDEMILL_ENCRYPTION_KEY, give the new one in TIDEMILL_NEW_ENCRYPTION_KEY, then make it
    TIDEMILL_ENCRYPTION_KEY. A rotation cut short finishes when run again. Exports written
    before keep the key they were written with.
    """
    from tidemill.warehouse import rotation

    from_environment = bool(os.environ.get(_GIVEN))
    rows = []
    for name, (owner, _) in layout.owners(session.config()).items():
        state = owner.state_dir
        current = existing_token(state, "encryption")
        if current is None:
            raise TidemillError(f"no encryption key for {state}: nothing is encrypted yet")
        if from_environment:
            new = os.environ.get(_NEXT)
            if not new or new == current:
                raise TidemillError(
                    f"the key comes from {_GIVEN}: set {_NEXT} to the new key and run again"
                )
        else:
            new = stage_new_key(state, "encryption")
        old = Key(current, key_source(state, "encryption"))
        done = rotation.rotate(state, old, Key(new, "the new key"))
        if not from_environment:
            commit_new_key(state, "encryption")
        rows.append(
            (
                name,
                f"{done.warehouse_bytes:,}",
                done.artifacts,
                done.snapshot,
                f"{done.seconds:.1f}",
            )
        )
    print_result(
        ["owner", "warehouse bytes", "artifacts", "snapshot", "seconds"],
        rows,
        Format.table,
        title="re-encrypted under the new key"
        + (f": now set {_GIVEN} to the value of {_NEXT}" if from_environment else ""),
    )
