"""Artifact maintenance of one pipeline, in the owner: prune artifacts by the retention
policy and sweep leftovers of crashed batches (warehouse/retention.py does the work, in
chunks that each take the owner's lock, so micro-batches go on in between)."""

from __future__ import annotations

from datetime import timedelta

from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.warehouse.retention import GRACE, MaintenanceReport, run_maintenance


def maintain(
    runtime: Runtime,
    pipeline: str,
    *,
    requested_by: str,
    policy: RetentionPolicy | None = None,
    grace: timedelta = GRACE,
) -> MaintenanceReport:
    """Prune and sweep `pipeline`'s artifacts now; returns what was removed."""
    runtime.config.pipeline(pipeline)  # an unknown name fails here, naming the known ones
    return run_maintenance(
        runtime.con,
        runtime.state_dir,
        pipeline,
        policy,
        requested_by=requested_by,
        lock=runtime.lock,
        grace=grace,
    )
