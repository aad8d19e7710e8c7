"""The read-only snapshot the owner publishes for SQL tools.

DuckDB lets no second process open a file another process is writing, not even
read-only. So after a CHECKPOINT (the main file then holds every committed batch and
the WAL is empty) the owner copies the file to a new, numbered file that never changes
again (`snapshots/000042/snapshot.duckdb`: same file name, so SQL still sees the catalog
`snapshot`) and points the symlink `snapshot.duckdb` at it atomically:
`duckdb -readonly .tidemill/snapshot.duckdb` always opens a complete, consistent database.

Why not rename each copy over `snapshot.duckdb`: DuckDB opens a database file three
times while connecting (magic bytes, headers, then the handle it reads blocks through;
strace of DuckDB 2.0.1). A file replaced between the second and the third open gives a
connection the headers of one copy and the blocks of the other ("Could not read enough
bytes", "Metadata block index exceeds metadata block count"), and Python's instance
cache hands that broken database to every later connect of the same path while one
connection stays open. Numbered files close the hole for whoever opens the resolved
path (`open_snapshot`, `tidemill query`, `Path.resolve()` in a program); a one-off
`duckdb` shell on the symlink still has a window of microseconds per publication. The
newest file and the one before it are kept, so a reader that resolved the link just
before a publication still finds its file.

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

import duckdb

from tidemill.warehouse.connection import open_readonly
from tidemill.warehouse.encryption import Key

log = logging.getLogger("tidemill")
COPY_DUTY = 10
"""Publications are at least COPY_DUTY times the last copy's duration apart."""

SNAPSHOT_FILE = "snapshot.duckdb"
SNAPSHOT_DIR = "snapshots"


def snapshot_path(state_dir: Path) -> Path:
    """The symlink to the newest published copy (what SQL tools open)."""
    return state_dir / SNAPSHOT_FILE


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    """The numbered folders of published copies in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((int(p.name), p) for p in folder.iterdir() if p.name.isdigit())


def publish_snapshot(database: Path, snapshot: Path, *, keep_previous: bool = True) -> Path:
    """Copy a checkpointed `database` to the next numbered folder beside `snapshot` and
    point the symlink `snapshot` at the copy; returns the new file.

    Copies older than the previous one are deleted (all older ones when not
    `keep_previous`, e.g. after an erasure: they hold what was erased). Readers that
    already opened a deleted copy keep reading their (unlinked) file.
    """
    folder = snapshot.parent / SNAPSHOT_DIR
    existing = _numbered(folder)
    number = existing[-1][0] + 1 if existing else 1
    target = folder / f"{number:06d}" / snapshot.name
    target.parent.mkdir(parents=True)
    partial = target.with_name(f".{target.name}.part")
    try:
        shutil.copyfile(database, partial)
    except OSError:  # e.g. a full disk: leave no half copy behind
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    os.replace(partial, target)
    link = snapshot.with_name(f".{snapshot.name}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(target.relative_to(snapshot.parent))
    os.replace(link, snapshot)  # a regular file left by an older tidemill is replaced too
    # a tool that opened the link for writing left a WAL that would be replayed on the next copy
    snapshot.with_name(f"{snapshot.name}.wal").unlink(missing_ok=True)
    for _, old in existing[:-1] if keep_previous else existing:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_snapshots(snapshot: Path) -> None:
    """Delete the link `snapshot` and every published copy beside it."""
    snapshot.unlink(missing_ok=True)
    shutil.rmtree(snapshot.parent / SNAPSHOT_DIR, ignore_errors=True)


def open_snapshot(
    snapshot: Path, key: Key | None = None, attempts: int = 5
) -> duckdb.DuckDBPyConnection:
    """Open the newest published copy read-only (see open_readonly) by its resolved name,
    so a publication meanwhile cannot mix two copies (see the module docstring).
    Raises FileNotFoundError when nothing was published yet."""
    for _ in range(attempts - 1):
        try:
            return open_readonly(snapshot.resolve(strict=True), key)
        except (FileNotFoundError, duckdb.IOException):  # deleted by two publications since
            if not snapshot.exists():
                raise
    return open_readonly(snapshot.resolve(strict=True), key)


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
