"""One micro-batch's reads and its single commit.

Everything a batch changes — inbox records taken, raw rows, quarantine, clean rows,
aggregate windows, predictions, metrics, the model version and the ledger row — is
written by :func:`commit_batch` in ONE transaction. A crash before COMMIT leaves the
warehouse exactly as it was (the inbox still holds the records), so the batch simply
runs again; after COMMIT the records are gone from the inbox, so nothing runs twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from tidemill.config import AggregateSpec, PipelineConfig
from warehouse.pipeline_tables import PipelineTables, q
from warehouse.registry import ModelVersion, record_champion


@dataclass(frozen=True)
class BatchRecord:
    """The `_batches` row of a batch."""

    batch_id: int
    pipeline: str
    status: str
    window_start_at: datetime | None
    window_end_at: datetime | None
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    rows_learned: int
    model_version: int | None
    started_at: datetime
    finished_at: datetime
    timings_ms: dict[str, float] = field(default_factory=dict)
    flow_run_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchWrite:
    """Everything one batch commits."""

    record: BatchRecord
    taken: pl.Series  # inbox _seq values consumed
    raw: pl.DataFrame  # declared columns + _file, _line
    quarantine: pl.DataFrame  # _file, _line, _raw, reason
    clean: pl.DataFrame
    aggregates: dict[str, pl.DataFrame]  # aggregate name -> window partials
    predictions: pl.DataFrame | None  # key?, event time, prediction, score
    scored_by: int | None  # model version that made the predictions
    metrics: dict[str, float]
    n_scored: int
    version: ModelVersion | None  # new champion, when the batch learned


def next_batch_id(con: duckdb.DuckDBPyConnection) -> int:
    """The id the next batch gets (ids increase across all pipelines)."""
    return int(con.sql("SELECT coalesce(max(batch_id), 0) + 1 FROM _batches").fetchall()[0][0])


def known_keys(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, keys: pl.Series
) -> pl.Series:
    """The subset of `keys` already stored in raw.P."""
    if not config.key or keys.len() == 0:
        return pl.Series(config.key or "key", [], dtype=pl.Utf8)
    t = PipelineTables(config.name)
    con.register("_probe", pl.DataFrame({"k": keys.drop_nulls().unique()}).to_arrow())
    try:
        found = con.sql(
            f"SELECT r.{q(config.key)} AS k FROM {t.raw} r JOIN _probe p ON r.{q(config.key)} = p.k"
        ).pl()
    finally:
        con.unregister("_probe")
    return found["k"]


def window_stats(
    con: duckdb.DuckDBPyConnection,
    config: PipelineConfig,
    spec: AggregateSpec,
    wanted: pl.DataFrame,
) -> pl.DataFrame:
    """Stored stats of the windows in `wanted` (window_start, *by); absent ones omitted."""
    t = PipelineTables(config.name)
    by = [q(c) for c in spec.by]
    if wanted.height == 0:
        return con.sql(
            f"SELECT window_start, {', '.join(by)}, n_rows, n_labelled, target_sum "
            f"FROM {t.aggregate(spec.name)} LIMIT 0"
        ).pl()
    con.register("_wanted", wanted.to_arrow())
    try:
        on = " AND ".join(f"a.{c} = w.{c}" for c in ["window_start", *by])
        return con.sql(
            f"SELECT a.window_start, {', '.join('a.' + c for c in by)}, a.n_rows, a.n_labelled, "
            f"a.target_sum FROM {t.aggregate(spec.name)} a JOIN _wanted w ON {on}"
        ).pl()
    finally:
        con.unregister("_wanted")


def insert_frame(
    con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, extra: str = ""
) -> None:
    if frame.height == 0:
        return
    con.register("_frame", frame.to_arrow())
    try:
        columns = ", ".join(q(c) for c in frame.columns)
        con.execute(f"INSERT INTO {table} ({columns}{extra}) SELECT * FROM _frame")
    finally:
        con.unregister("_frame")


def _upsert_window(
    con: duckdb.DuckDBPyConnection,
    table: str,
    spec: AggregateSpec,
    partials: pl.DataFrame,
    batch_id: int,
) -> None:
    if partials.height == 0:
        return
    frame = partials.with_columns(
        pl.col("target_sum").fill_null(0.0), pl.lit(batch_id).alias("updated_batch_id")
    )
    keys = ", ".join(q(c) for c in ["window_start", *spec.by])
    con.register("_partials", frame.to_arrow())
    try:
        columns = ", ".join(q(c) for c in frame.columns)
        con.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _partials "
            f"ON CONFLICT ({keys}) DO UPDATE SET n_rows = n_rows + EXCLUDED.n_rows, "
            "n_labelled = n_labelled + EXCLUDED.n_labelled, "
            "target_sum = target_sum + EXCLUDED.target_sum, "
            "updated_batch_id = EXCLUDED.updated_batch_id"
        )
    finally:
        con.unregister("_partials")


def record_batch(con: duckdb.DuckDBPyConnection, record: BatchRecord) -> None:
    con.execute(
        "INSERT INTO _batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            record.batch_id,
            record.pipeline,
            record.status,
            record.window_start_at,
            record.window_end_at,
            record.rows_in,
            record.rows_accepted,
            record.rows_quarantined,
            record.rows_learned,
            record.model_version,
            record.started_at,
            record.finished_at,
            json.dumps({k: round(v, 3) for k, v in record.timings_ms.items()}),
            record.flow_run_id,
            record.error,
        ],
    )


def commit_batch(con: duckdb.DuckDBPyConnection, config: PipelineConfig, write: BatchWrite) -> None:
    """Write a whole batch in one transaction (see module docstring)."""
    t = PipelineTables(config.name)
    batch_id = write.record.batch_id
    con.begin()
    try:
        con.register("_taken", pl.DataFrame({"_seq": write.taken}).to_arrow())
        con.execute(f"DELETE FROM {t.inbox} WHERE _seq IN (SELECT _seq FROM _taken)")
        con.unregister("_taken")
        stamp = [pl.lit(batch_id, dtype=pl.Int64).alias("batch_id")]
        insert_frame(
            con,
            t.raw,
            write.raw.with_columns(*stamp, pl.lit(write.record.finished_at).alias("_loaded_at")),
        )
        insert_frame(
            con,
            t.quarantine,
            write.quarantine.select(
                *stamp,
                "_file",
                "_line",
                pl.col("_raw").alias("raw_text"),
                "reason",
                pl.lit(write.record.finished_at).alias("quarantined_at"),
            ),
        )
        insert_frame(con, t.clean, write.clean.with_columns(*stamp))
        for spec in config.aggregates:
            _upsert_window(con, t.aggregate(spec.name), spec, write.aggregates[spec.name], batch_id)
        if write.predictions is not None and write.scored_by is not None:
            insert_frame(
                con,
                t.predictions,
                write.predictions.with_columns(
                    *stamp, pl.lit(write.scored_by, dtype=pl.Int64).alias("model_version")
                ),
            )
        if write.metrics and write.scored_by is not None:
            insert_frame(
                con,
                "ml.batch_metrics",
                pl.DataFrame(
                    {
                        "pipeline": config.name,
                        "batch_id": batch_id,
                        "model_version": write.scored_by,
                        "n_scored": write.n_scored,
                        "metric": list(write.metrics),
                        "value": list(write.metrics.values()),
                    },
                    schema_overrides={
                        "batch_id": pl.Int64,
                        "model_version": pl.Int64,
                        "n_scored": pl.Int64,
                    },
                ),
            )
        if write.version is not None:
            record_champion(con, write.version)
        record_batch(con, write.record)
        con.execute(
            "UPDATE _watermarks SET event_time_at = greatest(coalesce(event_time_at, ?), ?), "
            "last_batch_id = ?, rows_total = rows_total + ?, heartbeat_at = ? WHERE pipeline = ?",
            [
                write.record.window_end_at,
                write.record.window_end_at,
                batch_id,
                write.record.rows_accepted,
                write.record.finished_at,
                config.name,
            ],
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise


def record_failure(con: duckdb.DuckDBPyConnection, record: BatchRecord) -> None:
    """Record a failed batch (nothing else of it was written)."""
    con.begin()
    try:
        record_batch(con, record)
        con.commit()
    except BaseException:
        con.rollback()
        raise


def heartbeat(con: duckdb.DuckDBPyConnection, pipeline: str, at: datetime) -> None:
    """Mark that a cycle ran and found nothing to do."""
    con.execute("UPDATE _watermarks SET heartbeat_at = ? WHERE pipeline = ?", [at, pipeline])
