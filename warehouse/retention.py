"""Artifact maintenance: prune files by the retention policy, and sweep up leftovers.

Two steps, for one pipeline at a time:

- **prune**: the versions `tasks.judge.retention` lets go are marked `artifact_pruned_at` in a
  committed transaction, THEN their files are deleted. A crash in between leaves files no
  kept version names, which the sweep removes next time; never a kept row without its
  file. A pruned row is never loaded (the champion and every head are always kept; loading
  a missing file raises ArtifactIntegrityError).
- **sweep** (the janitor): files under `artifacts/<pipeline>/` that no kept version names
  (a batch wrote its artifact, then crashed before its commit) and unfinished atomic writes
  (`*.joblib.part`, see tidemill/durable.py), once they are older than a grace period. The
  owning process writes and registers an artifact under its runtime lock, which the caller
  passes here, so the grace period is a second guard: a file just written by a batch about
  to commit is never taken for an orphan. Files whose names are not artifact names are
  left alone.

Pruning goes in chunks of `chunk` versions, each its own transaction under the lock, so a
first run over months of history does not hold up the micro-batches for long.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import duckdb
import polars as pl

from tidemill import utc
from tidemill.tasks.judge.retention import (
    HEAD_STATUSES,
    VERSION_SCHEMA,
    RetentionPolicy,
    prunable_versions,
)
from tidemill.warehouse.artifacts import ARTIFACTS_DIR
from tidemill.warehouse.transaction import transaction

log = logging.getLogger("tidemill")

GRACE = timedelta(minutes=10)
"""Least age of a file before the sweep may remove it."""
CHUNK = 2000
"""Versions pruned per transaction (and per hold of the lock)."""
_ARTIFACT_NAME = re.compile(r"^v\d+-b\d+\.joblib(?P<part>\.part)?$")
_HEADS = ", ".join(f"'{s}'" for s in HEAD_STATUSES)
_NAMED_BY_EVENT = (
    "v.version IN (SELECT to_version FROM ml.model_events WHERE pipeline = $pipeline "
    "UNION SELECT from_version FROM ml.model_events "
    "WHERE pipeline = $pipeline AND from_version IS NOT NULL)"
)


@dataclass(frozen=True)
class MaintenanceReport:
    """What one maintenance run of a pipeline did (its _maintenance_runs row)."""

    run_id: int
    pipeline: str
    artifacts_pruned: int
    artifacts_kept: int
    orphans_removed: int
    temp_files_removed: int
    bytes_freed: int
    started_at: datetime
    finished_at: datetime


class Pruned(NamedTuple):
    versions: int
    bytes_freed: int
    more: bool  # prunable versions are left for another chunk


class Swept(NamedTuple):
    orphans: int
    temp_files: int
    bytes_freed: int


def _has_candidates(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ml.model_versions has the candidate column (migration 0005)."""
    rows = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'ml' "
        "AND database_name = current_database() "
        "AND table_name = 'model_versions' AND column_name = 'candidate'"
    ).fetchall()
    return bool(rows[0][0])


def retention_input(con: duckdb.DuckDBPyConnection, pipeline: str) -> pl.LazyFrame:
    """The versions of `pipeline` whose artifact file is kept, with the columns the
    retention policy reads (VERSION_SCHEMA, plus `candidate` when the registry has it)."""
    candidate = ", v.candidate" if _has_candidates(con) else ""
    frame = con.sql(
        "SELECT v.version, v.parent_version, v.created_at, v.status, "
        f"coalesce({_NAMED_BY_EVENT}, false) AS named_by_event{candidate} "
        "FROM ml.model_versions v "
        "WHERE v.pipeline = $pipeline AND v.artifact_pruned_at IS NULL ORDER BY v.version",
        params={"pipeline": pipeline},
    ).pl()
    return frame.lazy().cast(pl.Schema(VERSION_SCHEMA))


def _artifact_file(state_dir: Path, pipeline: str, relpath: str) -> Path | None:
    """The file a registry path names, if it lies in the pipeline's artifacts folder."""
    parts = PurePosixPath(relpath).parts
    if len(parts) != 3 or parts[:2] != (ARTIFACTS_DIR, pipeline) or parts[2] in ("..", "."):
        return None
    return state_dir.joinpath(*parts)


def _remove(path: Path) -> int:
    """Delete `path`; returns the bytes freed (0 when it was already gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def prune_artifacts(
    con: duckdb.DuckDBPyConnection,
    state_dir: Path,
    pipeline: str,
    policy: RetentionPolicy,
    now: datetime,
    *,
    limit: int = CHUNK,
) -> Pruned:
    """Mark up to `limit` prunable versions (oldest first) pruned in one transaction, then
    delete their files (already missing ones are fine). Call under the runtime lock."""
    prunable = sorted(prunable_versions(retention_input(con, pipeline), policy, now))
    chosen = prunable[:limit]
    if not chosen:
        return Pruned(0, 0, False)
    with transaction(con):
        marked = con.execute(
            "UPDATE ml.model_versions SET artifact_pruned_at = $now WHERE pipeline = $pipeline "
            "AND artifact_pruned_at IS NULL AND version IN (SELECT unnest($versions::BIGINT[])) "
            "RETURNING artifact_path",
            {"now": utc.now(), "pipeline": pipeline, "versions": chosen},
        ).fetchall()
    freed = 0
    for (relpath,) in marked:
        path = _artifact_file(state_dir, pipeline, relpath)
        if path is None:
            log.warning(
                "%s: not deleting %s, outside %s/%s/", pipeline, relpath, ARTIFACTS_DIR, pipeline
            )
            continue
        freed += _remove(path)
    return Pruned(len(marked), freed, len(prunable) > limit)


def sweep_artifacts(
    con: duckdb.DuckDBPyConnection, state_dir: Path, pipeline: str, *, grace: timedelta = GRACE
) -> Swept:
    """Remove the files under artifacts/<pipeline>/ that no kept version names (orphans of
    crashed batches, pruned files a crash left) and unfinished writes, once older than
    `grace`. Call under the runtime lock."""
    folder = state_dir / ARTIFACTS_DIR / pipeline
    if not folder.is_dir():
        return Swept(0, 0, 0)
    kept = {
        relpath
        for (relpath,) in con.execute(
            "SELECT v.artifact_path FROM ml.model_versions v WHERE v.pipeline = $pipeline "
            f"AND (v.artifact_pruned_at IS NULL OR v.status IN ({_HEADS}) OR {_NAMED_BY_EVENT})",
            {"pipeline": pipeline},
        ).fetchall()
    }
    kept_files = {os.path.normpath(state_dir / relpath) for relpath in kept}
    cutoff = time.time() - grace.total_seconds()
    orphans = temp_files = freed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _ARTIFACT_NAME.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            if os.path.normpath(entry.path) in kept_files:
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue  # may belong to a batch that has not committed yet
                freed += _remove(Path(entry.path))
                if match["part"]:
                    temp_files += 1
                else:
                    orphans += 1
    return Swept(orphans, temp_files, freed)


def run_maintenance(
    con: duckdb.DuckDBPyConnection,
    state_dir: Path,
    pipeline: str,
    policy: RetentionPolicy | None = None,
    *,
    requested_by: str,
    lock: AbstractContextManager[Any] | None = None,
    grace: timedelta = GRACE,
    now: datetime | None = None,
    chunk: int = CHUNK,
) -> MaintenanceReport:
    """Prune `pipeline`'s artifacts by `policy` (default RetentionPolicy()), sweep its
    artifacts folder, record the run in _maintenance_runs and return what it did.

    `lock` is the owner's runtime lock: the connection is only used while holding it, and
    it is released between chunks. `now` (naive UTC) is the policy's clock."""
    policy = policy or RetentionPolicy()
    guard = lock if lock is not None else contextlib.nullcontext()
    started = utc.now()
    now = now or started
    pruned = freed = 0
    while True:
        with guard:
            step = prune_artifacts(con, state_dir, pipeline, policy, now, limit=chunk)
        pruned, freed = pruned + step.versions, freed + step.bytes_freed
        if not (step.more and step.versions):
            break
    with guard:
        swept = sweep_artifacts(con, state_dir, pipeline, grace=grace)
        kept = con.execute(
            "SELECT count(*) FROM ml.model_versions "
            "WHERE pipeline = $pipeline AND artifact_pruned_at IS NULL",
            {"pipeline": pipeline},
        ).fetchall()[0][0]
        report = MaintenanceReport(
            run_id=con.execute(
                "SELECT coalesce(max(run_id), 0) + 1 FROM _maintenance_runs"
            ).fetchall()[0][0],
            pipeline=pipeline,
            artifacts_pruned=pruned,
            artifacts_kept=int(kept),
            orphans_removed=swept.orphans,
            temp_files_removed=swept.temp_files,
            bytes_freed=freed + swept.bytes_freed,
            started_at=started,
            finished_at=utc.now(),
        )
        con.execute(
            "INSERT INTO _maintenance_runs (run_id, pipeline, started_at, finished_at, "
            "policy_json, artifacts_pruned, artifacts_kept, orphans_removed, "
            "temp_files_removed, bytes_freed, requested_by) VALUES ($run_id, $pipeline, "
            "$started_at, $finished_at, $policy, $artifacts_pruned, $artifacts_kept, "
            "$orphans_removed, $temp_files_removed, $bytes_freed, $requested_by)",
            {
                **asdict(report),
                "policy": json.dumps(
                    {**asdict(policy), "grace_seconds": grace.total_seconds()}, sort_keys=True
                ),
                "requested_by": requested_by,
            },
        )
    return report
