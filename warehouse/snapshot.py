"""The read-only snapshot the owner publishes for SQL tools.

DuckDB lets no second process open a file another process is writing, not even
read-only. So after a CHECKPOINT (the main file then holds every committed batch and
the WAL is empty) the owner copies the file and renames the copy into place
atomically: `duckdb -readonly .tidemill/snapshot.duckdb` always opens a complete,
consistent database, at most `snapshot_every_seconds` plus one batch behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SNAPSHOT_FILE = "snapshot.duckdb"


def snapshot_path(state_dir: Path) -> Path:
    """Where the owner publishes the read-only copy."""
    return state_dir / SNAPSHOT_FILE


def publish_snapshot(database: Path, snapshot: Path) -> None:
    """Copy a checkpointed `database` to `snapshot` via a temp file and atomic rename.

    Readers that already opened the old snapshot keep reading their (unlinked) copy.
    """
    partial = snapshot.with_name(f".{snapshot.name}.part")
    shutil.copyfile(database, partial)
    os.replace(partial, snapshot)
