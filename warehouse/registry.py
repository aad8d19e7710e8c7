"""The model registry: `ml.model_versions` rows (lineage, rows seen, hash, metrics,
status), the champion and its changes (`ml.model_events`). The artifact files behind the
rows, and why one may be unpickled, are artifacts.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from tidemill.errors import TidemillError
from tidemill.tasks.learn.prequential import ShardRecord
from tidemill.warehouse.transaction import transaction


@dataclass(frozen=True)
class ModelVersion:
    """One row of ml.model_versions."""

    pipeline: str
    version: int
    parent_version: int | None
    batch_id: int
    rows_seen: int
    batches_seen: int
    created_at: datetime
    artifact_path: str
    sha256: str
    estimator: str
    params_json: str
    library_versions: str
    feature_names: list[str]
    status: str
    metrics_json: str
    candidate: str = "main"
    params_sha256: str | None = None
    artifact_pruned_at: datetime | None = None
    artifact_signature: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """Prequential metrics recorded with this version."""
        return dict(json.loads(self.metrics_json))


COLUMNS = [f for f in ModelVersion.__dataclass_fields__]


def _rows(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> list[ModelVersion]:
    rows = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM ml.model_versions WHERE {where} ORDER BY version",
        params,
    ).fetchall()
    return [ModelVersion(*row) for row in rows]


def versions(con: duckdb.DuckDBPyConnection, pipeline: str) -> list[ModelVersion]:
    """Every version of `pipeline`, oldest first."""
    return _rows(con, "pipeline = ?", [pipeline])


def get_version(con: duckdb.DuckDBPyConnection, pipeline: str, version: int) -> ModelVersion | None:
    """One version, or None."""
    found = _rows(con, "pipeline = ? AND version = ?", [pipeline, version])
    return found[0] if found else None


def champion(con: duckdb.DuckDBPyConnection, pipeline: str) -> ModelVersion | None:
    """The version serving predictions, or None before the first one."""
    found = _rows(con, "pipeline = ? AND status = 'champion'", [pipeline])
    return found[-1] if found else None


def next_version(con: duckdb.DuckDBPyConnection, pipeline: str) -> int:
    """The number the next version of `pipeline` gets."""
    row = con.execute(
        "SELECT coalesce(max(version), 0) + 1 FROM ml.model_versions WHERE pipeline = ?",
        [pipeline],
    ).fetchall()
    return int(row[0][0])


def record_heads(con: duckdb.DuckDBPyConnection, new: list[ModelVersion]) -> None:
    """Insert a batch's new versions, one per candidate, retiring the versions they
    continue (caller's transaction). Exactly one of them has status champion."""
    if not new:
        return
    con.execute(
        "UPDATE ml.model_versions SET status = 'retired' WHERE pipeline = ? "
        "AND status IN ('champion', 'challenger') AND candidate IN (SELECT unnest(?))",
        [new[0].pipeline, [v.candidate for v in new]],
    )
    for version in new:
        record(con, version)


def record_shards(
    con: duckdb.DuckDBPyConnection, pipeline: str, version: int, shards: Sequence[ShardRecord]
) -> None:
    """The shards `version` was learned in (caller's transaction)."""
    con.executemany(
        "INSERT INTO ml.model_version_shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                pipeline,
                version,
                s.index,
                s.first_row,
                s.last_row,
                s.rows_learned,
                s.sha256,
                s.cpu_seconds,
            ]
            for s in shards
        ],
    )


def shard_counts(
    con: duckdb.DuckDBPyConnection, pipeline: str, versions: Sequence[int]
) -> dict[int, int]:
    """Version -> how many shards it was learned in (absent: in one piece)."""
    if not versions:
        return {}
    rows = con.execute(
        "SELECT version, count(*) FROM ml.model_version_shards WHERE pipeline = ? "
        "AND version IN (SELECT unnest(?::BIGINT[])) GROUP BY version",
        [pipeline, list(versions)],
    ).fetchall()
    return {int(v): int(n) for v, n in rows}


def heads(con: duckdb.DuckDBPyConnection, pipeline: str) -> dict[str, ModelVersion]:
    """Candidate -> its latest serving version (status champion or challenger)."""
    found = _rows(con, "pipeline = ? AND status IN ('champion', 'challenger')", [pipeline])
    return {v.candidate: v for v in found}


def record(con: duckdb.DuckDBPyConnection, version: ModelVersion) -> None:
    """Insert `version` as it is (a candidate leaves the champion alone)."""
    placeholders = ", ".join("?" for _ in COLUMNS)
    con.execute(
        f"INSERT INTO ml.model_versions ({', '.join(COLUMNS)}) VALUES ({placeholders})",
        [getattr(version, c) for c in COLUMNS],
    )


class RegistryError(TidemillError, ValueError):
    """A registry change that cannot be made; the message says why."""


def change_champion(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    to_version: int,
    *,
    action: str,
    actor: str,
    reason: str,
) -> ModelVersion:
    """Make `to_version` the champion and record who, when and why in ml.model_events, in
    one transaction; returns the new champion.

    The version becomes the head of its candidate's lineage (the head it replaces is
    retired); the previous champion, when it belongs to another candidate, goes on
    learning as a challenger."""
    target = get_version(con, pipeline, to_version)
    if target is None:
        raise RegistryError(f"{pipeline} has no version {to_version}")
    current = champion(con, pipeline)
    if current is not None and current.version == to_version:
        raise RegistryError(f"{pipeline} v{to_version} is already the champion")
    with transaction(con):
        con.execute(
            "UPDATE ml.model_versions SET status = 'retired' WHERE pipeline = ? "
            "AND status IN ('champion', 'challenger') AND candidate = ?",
            [pipeline, target.candidate],
        )
        con.execute(
            "UPDATE ml.model_versions SET status = 'challenger' WHERE pipeline = ? "
            "AND status = 'champion'",
            [pipeline],
        )
        con.execute(
            "UPDATE ml.model_versions SET status = 'champion' WHERE pipeline = ? AND version = ?",
            [pipeline, to_version],
        )
        record_event(
            con, pipeline, action, current.version if current else None, to_version, actor, reason
        )
    changed = get_version(con, pipeline, to_version)
    assert changed is not None
    return changed


def rollback_target(con: duckdb.DuckDBPyConnection, pipeline: str) -> int:
    """The version a rollback returns to: the champion the current one was promoted over,
    else (it was never promoted, or was itself reached by a rollback) its parent."""
    current = champion(con, pipeline)
    if current is None:
        raise RegistryError(f"{pipeline} has no champion to roll back")
    rows = con.execute(
        "SELECT from_version FROM ml.model_events WHERE pipeline = ? AND to_version = ? "
        "AND action IN ('promote', 'auto_promote') ORDER BY event_id DESC LIMIT 1",
        [pipeline, current.version],
    ).fetchall()
    if rows and rows[0][0] is not None:
        return int(rows[0][0])
    if current.parent_version is None:
        raise RegistryError(f"{pipeline} v{current.version} has no parent to roll back to")
    return current.parent_version


def record_event(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    action: str,
    from_version: int | None,
    to_version: int,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
) -> None:
    """Append one ml.model_events row (caller's transaction)."""
    con.execute(
        "INSERT INTO ml.model_events (pipeline, event_id, changed_at, action, from_version, "
        "to_version, actor, reason, evidence_json) SELECT ?, coalesce(max(event_id), 0) + 1, "
        "now()::TIMESTAMP, ?, ?, ?, ?, ?, ? FROM ml.model_events WHERE pipeline = ?",
        [
            pipeline,
            action,
            from_version,
            to_version,
            actor,
            reason,
            json.dumps(evidence, sort_keys=True) if evidence is not None else None,
            pipeline,
        ],
    )


def recent_scores(
    con: duckdb.DuckDBPyConnection, pipeline: str, metric: str, limit: int
) -> list[tuple[str, int, int, float]]:
    """(candidate, batch_id, n_scored, value) of the latest `limit` scores of `metric`, oldest
    first, since the pipeline's last champion change (scores before it compared lineages
    that no longer serve)."""
    rows = con.execute(
        "SELECT m.candidate, m.batch_id, m.n_scored, m.value FROM ml.batch_metrics m "
        "JOIN _batches b USING (batch_id) WHERE m.pipeline = ? AND m.metric = ? "
        "AND b.finished_at >= coalesce((SELECT max(changed_at) FROM ml.model_events "
        "WHERE pipeline = ?), TIMESTAMP '1970-01-01') ORDER BY m.batch_id DESC LIMIT ?",
        [pipeline, metric, pipeline, limit],
    ).fetchall()
    return [(str(c), int(b), int(n), float(v)) for c, b, n, v in reversed(rows)]
