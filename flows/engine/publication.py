"""When the owner checkpoints and publishes the read-only snapshot (the copy itself is
warehouse/serving/snapshot.py): a checkpoint every N cycles (an idle pipeline's heartbeats would
otherwise pile up in the WAL), and a publication once it is due and something committed
since. No checkpoint while a copy runs: the copy needs the main file unchanged."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tidemill.warehouse.connection import CheckpointFailed, Connection, checkpoint, database_path
from tidemill.warehouse.serving.snapshot import SnapshotPublisher, publish_snapshot, snapshot_path

log = logging.getLogger("tidemill")


@dataclass
class Publication:
    """The snapshot publication of one warehouse (the caller holds the owner's lock)."""

    state_dir: Path
    every_seconds: float = 0.0  # a publication at most this often (0: after every commit)
    checkpoint_every_cycles: int = 50
    cycles_since_checkpoint: int = 0
    unpublished: bool = False  # something committed since the last publication
    publisher: SnapshotPublisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = SnapshotPublisher(
            database_path(self.state_dir), snapshot_path(self.state_dir)
        )

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
        due = self.unpublished and self.publisher.due(self.every_seconds)
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
        erased)."""
        self.publisher.wait()
        checkpoint(con)
        publish_snapshot(
            database_path(self.state_dir),
            snapshot_path(self.state_dir),
            keep_previous=keep_previous,
        )
        self.unpublished = False
