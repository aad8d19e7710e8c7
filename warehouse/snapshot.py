"""The read-only snapshot the owner publishes for SQL tools.

DuckDB lets no second process open a file another process is writing, not even
read-only. So after a CHECKPOINT (the main file then holds every committed batch and
the WAL is empty) the owner copies the file and renames the copy into place
atomically: `duckdb -readonly .tidemill/snapshot.duckdb` always opens a complete,
consistent database.

A copy costs the file's size (about 1 s per GB here), so it runs on a thread of its own
while batches go on: between two checkpoints DuckDB appends commits to the WAL and
writes the main file only into blocks the checkpointed state does not use, so the copy
reads a consistent state as long as the owner does not checkpoint meanwhile (it skips
its checkpoints while a copy runs). And publications are spaced so that copying takes at
most 1/COPY_DUTY of the time: the snapshot of a 5 GB file is about a minute old, not a
batch old. Owner queries (`tidemill query` while a worker runs) are always fresh.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger("tidemill")
COPY_DUTY = 10
"""Publications are at least COPY_DUTY times the last copy's duration apart."""

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


class SnapshotPublisher:
    """Publishes snapshots of `database` on a background thread (see module docstring)."""

    def __init__(self, database: Path, snapshot: Path) -> None:
        self.database = database
        self.snapshot = snapshot
        self.last_started = float("-inf")  # time.monotonic() of the last copy's start
        self.last_seconds = 0.0  # how long the last copy took
        self.published = 0
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """A copy is running: the owner must not checkpoint."""
        return self._thread is not None and self._thread.is_alive()

    def due(self, every_seconds: float) -> bool:
        """Whether a publication may start now."""
        spacing = max(every_seconds, COPY_DUTY * self.last_seconds)
        return not self.busy and time.monotonic() - self.last_started >= spacing

    def start(self) -> None:
        """Copy the (just checkpointed) file in the background."""
        self.last_started = time.monotonic()
        self._thread = threading.Thread(target=self._copy, name="tidemill-snapshot", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        clock = time.monotonic()
        try:
            publish_snapshot(self.database, self.snapshot)
        except OSError as error:  # e.g. a full disk: the batches are committed; next time
            log.warning("snapshot not published: %s", error)
            return
        self.last_seconds = time.monotonic() - clock
        self.published += 1

    def wait(self) -> None:
        """Until the running copy (if any) is done."""
        if self._thread is not None:
            self._thread.join()
