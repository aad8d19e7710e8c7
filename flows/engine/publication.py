"""When the owner checkpoints and publishes the read-only snapshot (the copy itself is
warehouse/serving/snapshot.py): a checkpoint every N cycles (an idle pipeline's heartbeats would
otherwise pile up in the WAL), and a publication once it is due and something committed
since. No checkpoint while a copy runs: the copy needs the main file unchanged."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tidemill.warehouse.connection import CheckpointFailed, Connection, checkpoint, database_path
from tidemill.warehouse.serving.snapshot import (
    SnapshotPublisher,
    publish_snapshot,
    remove_snapshots,
    snapshot_path,
)

log = logging.getLogger("tidemill")


@dataclass
class Publication:
    """The snapshot publication of one warehouse (the caller holds the owner's lock)."""

    state_dir: Path
    every_seconds: float = 0.0  # a publication at most this often (0: none)
    checkpoint_every_cycles: int = 50
    cycles_since_checkpoint: int = 0
    unpublished: bool = False  # something committed since the last publication
    publisher: SnapshotPublisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = SnapshotPublisher(
            database_path(self.state_dir), snapshot_path(self.state_dir)
        )

    @property
    def enabled(self) -> bool:
        """Whether snapshots are published at all (`[serving] snapshot_every_seconds`)."""
        return self.every_seconds > 0

    def changed(self) -> None:
        """Something committed outside a cycle (a backfill, a champion change, ...): the
        next due publication copies it."""
        self.unpublished = True

    def after_cycle(self, con: Connection, *, committed: bool) -> None:
        """Checkpoint every N cycles, and start a publication once it is due and a batch
        committed since (empty cycles too, so the last batch of a burst is published)."""
        self.cycles_since_checkpoint += 1
        if committed:
            self.unpublished = True
        if self.publisher.busy:
            return
        due = self.enabled and self.unpublished and self.publisher.due(self.every_seconds)
        if self.cycles_since_checkpoint < self.checkpoint_every_cycles and not due:
            return
        try:
            checkpoint(con)
        except CheckpointFailed as error:  # a reader holds a transaction: try next cycle
            log.debug("checkpoint skipped: %s", error)
            return
        self.cycles_since_checkpoint = 0
        if due:
            self.unpublished = False
            self.publisher.start()

    def publish_now(self, con: Connection, *, keep_previous: bool = True) -> None:
        """Checkpoint and publish before returning (after an erasure, at close). Without
        `keep_previous`, every older copy is deleted (after an erasure: they hold what was
        erased). With snapshots off, only checkpoint, and delete every copy left from when
        they were on unless `keep_previous`."""
        self.publisher.wait()
        checkpoint(con)
        self.unpublished = False
        if not self.enabled:
            if not keep_previous:
                remove_snapshots(snapshot_path(self.state_dir))
            return
        publish_snapshot(
            database_path(self.state_dir),
            snapshot_path(self.state_dir),
            keep_previous=keep_previous,
        )
        self.unpublished = False
