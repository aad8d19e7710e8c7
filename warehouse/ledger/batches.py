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

from tidemill.config.pipeline import AggregateSpec, LagSpec, PipelineConfig
from tidemill.tasks.judge.verdict import DriftEvent, Promotion, Scored
from tidemill.tasks.learn.prequential import ShardRecord
from tidemill.warehouse.frames import insert_frame
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import lit, q
from tidemill.warehouse.registry import ModelVersion, record_event, record_heads, record_shards
from tidemill.warehouse.transaction import transaction


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
    batch_rows_limit: int | None = None


@dataclass(frozen=True)
class BatchWrite:
    """Everything one batch commits."""

    record: BatchRecord
    taken: pl.Series  # inbox _seq values consumed
    raw: pl.DataFrame  # declared columns + _file, _line
    quarantine: pl.DataFrame  # _file, _line, _raw, reason
    clean: pl.DataFrame
    aggregates: dict[str, pl.DataFrame]  # aggregate name -> window partials
    lags: dict[str, pl.DataFrame]  # lag name -> new history of the series the batch touched
    predictions: pl.DataFrame | None  # key?, event time, prediction, score (the champion's)
    scored_by: int | None  # champion version that made the predictions
    scored: list[Scored] = field(default_factory=list)
    versions: list[ModelVersion] = field(default_factory=list)  # one per candidate
    drift: list[DriftEvent] = field(default_factory=list)
    shift: list[dict[str, float]] = field(default_factory=list)  # feature -> PSI per window
    events: list[Promotion] = field(default_factory=list)
    shards: dict[int, list[ShardRecord]] = field(default_factory=dict)  # version -> its shards

    @property
    def metrics(self) -> dict[str, float]:
        """The champion's prequential metrics on the batch."""
        for scored in self.scored:
            if scored.version == self.scored_by:
                return scored.metrics
        return {}


def next_batch_id(con: duckdb.DuckDBPyConnection) -> int:
    """The id the next batch gets (ids increase across all pipelines)."""
    return int(con.sql("SELECT coalesce(max(batch_id), 0) + 1 FROM _batches").fetchall()[0][0])


INDEX_PROBE_KEYS = 2048


def known_keys(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, keys: pl.Series
) -> pl.Series:
    """The subset of `keys` already stored in raw.P."""
    if not config.key or keys.len() == 0:
        return pl.Series(config.key or "key", [], dtype=pl.Utf8)
    t = PipelineTables(config.name)
    wanted = keys.drop_nulls().unique().cast(pl.Utf8).to_list()
    found: list[str] = []
    # Constant IN lists are answered by the primary key's ART index (a lookup per key,
    # flat as raw.P grows); a join or a list parameter scans the whole key column.
    # DuckDB scans the index for at most `index_scan_max_count` (2048) values at a time.
    for start in range(0, len(wanted), INDEX_PROBE_KEYS):
        values = ", ".join(lit(k) for k in wanted[start : start + INDEX_PROBE_KEYS])
        found += [
            r[0]
            for r in con.sql(
                f"SELECT {q(config.key)} FROM {t.raw} WHERE {q(config.key)} IN ({values})"
            ).fetchall()
        ]
    return pl.Series("k", found, dtype=pl.Utf8)


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


def lag_history(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, spec: LagSpec, series: pl.DataFrame
) -> pl.DataFrame:
    """Stored history (by..., event_at, value) of the series in `series` (by...)."""
    t = PipelineTables(config.name)
    by = [q(c) for c in spec.by]
    select = (
        f"SELECT {', '.join('h.' + c for c in by)}, h.event_at, h.value FROM {t.lags(spec.name)} h"
    )
    if series.height == 0:
        return con.sql(f"{select} LIMIT 0").pl()
    con.register("_series", series.unique().to_arrow())
    try:
        on = " AND ".join(f"h.{c} IS NOT DISTINCT FROM s.{c}" for c in by)
        return con.sql(f"{select} JOIN _series s ON {on}").pl()
    finally:
        con.unregister("_series")


def replace_lag_history(
    con: duckdb.DuckDBPyConnection, table: str, spec: LagSpec, history: pl.DataFrame
) -> None:
    """Replace the stored history of the series in `history` by it (caller's transaction)."""
    if history.height == 0:
        return
    by = [q(c) for c in spec.by]
    con.register("_history", history.select(*spec.by, "event_at", "value").to_arrow())
    try:
        on = " AND ".join(f"{table}.{c} IS NOT DISTINCT FROM s.{c}" for c in by)
        con.execute(
            f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM (SELECT DISTINCT {', '.join(by)} "
            f"FROM _history) s WHERE {on})"
        )
        con.execute(f"INSERT INTO {table} SELECT * FROM _history")
    finally:
        con.unregister("_history")


def insert_quarantined(
    con: duckdb.DuckDBPyConnection,
    t: PipelineTables,
    quarantine: pl.DataFrame,
    batch_id: int,
    at: datetime,
) -> None:
    """Store a batch's rejected records (`_file`, `_line`, `_raw`, `reason`), each with a
    new quarantine id."""
    insert_frame(
        con,
        t.quarantine,
        quarantine.select(
            pl.lit(batch_id, dtype=pl.Int64).alias("batch_id"),
            "_file",
            "_line",
            pl.col("_raw").alias("raw_text"),
            "reason",
            pl.lit(at).alias("quarantined_at"),
        ),
        numbered=("quarantine_id", t.quarantine_seq),
    )


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


def _insert_ml(
    con: duckdb.DuckDBPyConnection, pipeline: str, batch_id: int, write: BatchWrite
) -> None:
    """Metrics of every candidate, drift, feature shift, new versions, champion changes."""
    for scored in write.scored:
        if not scored.metrics:
            continue
        insert_frame(
            con,
            "ml.batch_metrics",
            pl.DataFrame(
                {
                    "pipeline": pipeline,
                    "batch_id": batch_id,
                    "model_version": scored.version,
                    "n_scored": scored.n_scored,
                    "metric": list(scored.metrics),
                    "value": list(scored.metrics.values()),
                    "candidate": scored.candidate,
                },
                schema_overrides={
                    "batch_id": pl.Int64,
                    "model_version": pl.Int64,
                    "n_scored": pl.Int64,
                },
            ),
        )
    at = write.record.finished_at
    for event in write.drift:
        con.execute(
            "INSERT INTO ml.drift_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                pipeline,
                batch_id,
                event.candidate,
                event.detector,
                event.feature,
                event.value,
                at,
                event.action,
            ],
        )
    largest: dict[str, float] = {}  # a big batch can complete several windows: one row each
    for window in write.shift:
        for feature, psi in window.items():
            largest[feature] = max(psi, largest.get(feature, psi))
    if largest:
        insert_frame(
            con,
            "ml.feature_shift",
            pl.DataFrame(
                {
                    "pipeline": pipeline,
                    "batch_id": batch_id,
                    "feature": list(largest),
                    "psi": list(largest.values()),
                },
                schema_overrides={"batch_id": pl.Int64},
            ),
        )
    record_heads(con, write.versions)
    for version, shards in write.shards.items():
        record_shards(con, pipeline, version, shards)
    for change in write.events:
        record_event(
            con,
            pipeline,
            change.action,
            change.from_version,
            change.to_version,
            "tidemill",
            change.reason,
            change.evidence,
        )


def record_batch(con: duckdb.DuckDBPyConnection, record: BatchRecord) -> None:
    con.execute(
        "INSERT INTO _batches (batch_id, pipeline, status, window_start_at, window_end_at, "
        "rows_in, rows_accepted, rows_quarantined, rows_learned, model_version, started_at, "
        "finished_at, timings_json, flow_run_id, error, batch_rows_limit) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            record.batch_rows_limit,
        ],
    )


def commit_batch(con: duckdb.DuckDBPyConnection, config: PipelineConfig, write: BatchWrite) -> None:
    """Write a whole batch in one transaction (see module docstring)."""
    t = PipelineTables(config.name)
    batch_id = write.record.batch_id
    with transaction(con):
        con.register("_taken", pl.DataFrame({"_seq": write.taken}).to_arrow())
        con.execute(f"DELETE FROM {t.inbox} WHERE _seq IN (SELECT _seq FROM _taken)")
        con.unregister("_taken")
        stamp = [pl.lit(batch_id, dtype=pl.Int64).alias("batch_id")]
        insert_frame(
            con,
            t.raw,
            write.raw.with_columns(*stamp, pl.lit(write.record.finished_at).alias("_loaded_at")),
        )
        insert_quarantined(con, t, write.quarantine, batch_id, write.record.finished_at)
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
        for lag in config.lags:
            replace_lag_history(con, t.lags(lag.name), lag, write.lags[lag.name])
        _insert_ml(con, config.name, batch_id, write)
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


def record_failure(con: duckdb.DuckDBPyConnection, record: BatchRecord) -> None:
    """Record a failed batch (nothing else of it was written)."""
    with transaction(con):
        record_batch(con, record)


def heartbeat(con: duckdb.DuckDBPyConnection, pipeline: str, at: datetime) -> None:
    """Mark that a cycle ran and found nothing to do."""
    con.execute("UPDATE _watermarks SET heartbeat_at = ? WHERE pipeline = ?", [at, pipeline])
