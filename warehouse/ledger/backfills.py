"""The SQL of manual backfills: the `_backfills` ledger, what is already stored, and the
one-transaction commit of each chunk a backfill inserts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from tidemill.config.pipeline import AggregateSpec, PipelineConfig
from tidemill.errors import TidemillError
from tidemill.warehouse.frames import insert_frame
from tidemill.warehouse.ledger.batches import (
    BatchRecord,
    insert_quarantined,
    record_batch,
    replace_lag_history,
)
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import q
from tidemill.warehouse.transaction import transaction


class BackfillRefused(TidemillError, RuntimeError):
    """Another backfill of the pipeline is running; the message names it."""


@dataclass(frozen=True)
class BackfillRow:
    """One row of `_backfills`."""

    backfill_id: int
    pipeline: str
    start_at: datetime
    end_at: datetime
    retrain: bool
    status: str
    rows_in_window: int
    rows_done: int
    rows_inserted: int
    rows_present: int
    rows_quarantined: int
    windows_recomputed: int
    candidate_version: int | None
    requested_by: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None


COLUMNS = list(BackfillRow.__dataclass_fields__)


def begin(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    start: datetime,
    end: datetime,
    retrain: bool,
    requested_by: str,
) -> int:
    """Record a running backfill and return its id, or raise BackfillRefused when one of
    the same pipeline is running (checked and recorded in one transaction)."""
    with transaction(con):
        running = con.execute(
            "SELECT backfill_id, start_at, end_at FROM _backfills WHERE pipeline = ? AND status = 'running'",
            [pipeline],
        ).fetchall()
        if running:
            other, other_start, other_end = running[0]
            raise BackfillRefused(
                f"backfill {other} of {pipeline} ({other_start:%Y-%m-%d %H:%M} .. "
                f"{other_end:%Y-%m-%d %H:%M}) is still running; wait for it to finish "
                '(tidemill query "SELECT * FROM _backfills")'
            )
        backfill_id = int(
            con.sql("SELECT coalesce(max(backfill_id), 0) + 1 FROM _backfills").fetchall()[0][0]
        )
        con.execute(
            "INSERT INTO _backfills VALUES (?, ?, ?, ?, ?, 'running', 0, 0, 0, 0, 0, 0, NULL, ?, "
            "now()::TIMESTAMP, NULL, NULL)",
            [backfill_id, pipeline, start, end, retrain, requested_by],
        )
    return backfill_id


def running(con: duckdb.DuckDBPyConnection, pipeline: str) -> BackfillRow | None:
    """The backfill of `pipeline` that is running, if any."""
    rows = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM _backfills WHERE pipeline = ? AND status = 'running'",
        [pipeline],
    ).fetchall()
    return BackfillRow(*rows[0]) if rows else None


def refusal(row: BackfillRow) -> str:
    """Why a new backfill of the same pipeline cannot start while `row` runs."""
    return (
        f"backfill {row.backfill_id} of {row.pipeline} ({row.start_at:%Y-%m-%d %H:%M} .. "
        f"{row.end_at:%Y-%m-%d %H:%M}) is still running; wait for it to finish "
        '(tidemill query "SELECT * FROM _backfills")'
    )


def get(con: duckdb.DuckDBPyConnection, backfill_id: int) -> BackfillRow:
    """The `_backfills` row of `backfill_id`."""
    row = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM _backfills WHERE backfill_id = ?", [backfill_id]
    ).fetchall()[0]
    return BackfillRow(*row)


def set_total(con: duckdb.DuckDBPyConnection, backfill_id: int, rows_in_window: int) -> None:
    """Record how many source records fall in the window."""
    con.execute(
        "UPDATE _backfills SET rows_in_window = ? WHERE backfill_id = ?",
        [rows_in_window, backfill_id],
    )


def count_present(con: duckdb.DuckDBPyConnection, backfill_id: int, rows: int) -> None:
    """Count `rows` of the window as done and already present (still in the inbox or
    quarantined: left to their owners)."""
    con.execute(
        "UPDATE _backfills SET rows_done = rows_done + ?, rows_present = rows_present + ? "
        "WHERE backfill_id = ?",
        [rows, rows, backfill_id],
    )


def finish(
    con: duckdb.DuckDBPyConnection,
    backfill_id: int,
    status: str,
    *,
    candidate_version: int | None = None,
    error: str | None = None,
) -> None:
    """Close a backfill as done or failed."""
    con.execute(
        "UPDATE _backfills SET status = ?, candidate_version = ?, error = ?, "
        "finished_at = now()::TIMESTAMP WHERE backfill_id = ?",
        [status, candidate_version, error, backfill_id],
    )


def interrupt_running(con: duckdb.DuckDBPyConnection) -> int:
    """Mark backfills left running by a dead process as interrupted; returns how many."""
    rows = con.execute(
        "UPDATE _backfills SET status = 'interrupted', finished_at = now()::TIMESTAMP "
        "WHERE status = 'running' RETURNING backfill_id"
    ).fetchall()
    return len(rows)


def stored_identities(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, identities: pl.Series
) -> pl.Series:
    """Which of `identities` (keys, or content hashes without a key) raw.P already holds."""
    t = PipelineTables(config.name)
    column = q(config.key) if config.key else "_row_hash"
    con.register("_probe", pl.DataFrame({"k": identities.drop_nulls().unique()}).to_arrow())
    try:
        return con.sql(
            f"SELECT r.{column} AS k FROM {t.raw} r JOIN _probe p ON r.{column} = p.k"
        ).pl()["k"]
    finally:
        con.unregister("_probe")


def waiting_or_quarantined(con: duckdb.DuckDBPyConnection, pipeline: str) -> pl.DataFrame:
    """(_file, _line) of records in the inbox or in quarantine: a backfill leaves them be."""
    t = PipelineTables(pipeline)
    return con.sql(
        f"SELECT _file, _line FROM {t.inbox} UNION SELECT _file, _line FROM {t.quarantine}"
    ).pl()


def clean_rows_between(
    con: duckdb.DuckDBPyConnection, pipeline: str, event_time: str, start: datetime, end: datetime
) -> pl.DataFrame:
    """clean.P rows with event time in [start, end), oldest first."""
    t = PipelineTables(pipeline)
    ts = q(event_time)
    return con.sql(
        f"SELECT * EXCLUDE (batch_id) FROM {t.clean} WHERE {ts} >= ? AND {ts} < ? ORDER BY {ts}",
        params=[start, end],
    ).pl()


@dataclass(frozen=True)
class ChunkWrite:
    """What one backfill chunk commits."""

    record: BatchRecord
    raw: pl.DataFrame
    clean: pl.DataFrame
    quarantine: pl.DataFrame
    present: int
    lags: dict[str, pl.DataFrame] = field(default_factory=dict)  # lag name -> new history


def commit_chunk(
    con: duckdb.DuckDBPyConnection,
    config: PipelineConfig,
    backfill_id: int,
    write: ChunkWrite,
    recompute: dict[str, tuple[pl.DataFrame, pl.DataFrame]],
) -> int:
    """Insert a chunk's rows, replace the aggregate windows it touched and move the
    backfill's counters, in one transaction. `recompute` maps an aggregate name to
    (windows to delete: window_start + group columns, their recomputed stats); the stats
    must have been computed from clean.P rows plus this chunk's clean rows. Returns the
    number of windows replaced."""
    t = PipelineTables(config.name)
    batch_id = write.record.batch_id
    stamp = pl.lit(batch_id, dtype=pl.Int64).alias("batch_id")
    replaced = 0
    with transaction(con):
        insert_frame(
            con,
            t.raw,
            write.raw.with_columns(stamp, pl.lit(write.record.finished_at).alias("_loaded_at")),
        )
        insert_frame(con, t.clean, write.clean.with_columns(stamp))
        insert_quarantined(con, t, write.quarantine, batch_id, write.record.finished_at)
        for spec in config.aggregates:
            windows, stats = recompute[spec.name]
            replaced += replace_windows(con, t.aggregate(spec.name), spec, windows, stats, batch_id)
        for lag in config.lags:
            replace_lag_history(con, t.lags(lag.name), lag, write.lags[lag.name])
        record_batch(con, write.record)
        con.execute(
            "UPDATE _backfills SET rows_done = rows_done + ?, rows_inserted = rows_inserted + ?, "
            "rows_present = rows_present + ?, rows_quarantined = rows_quarantined + ?, "
            "windows_recomputed = windows_recomputed + ? WHERE backfill_id = ?",
            [
                write.record.rows_in,
                write.raw.height,
                write.present,
                write.quarantine.height,
                replaced,
                backfill_id,
            ],
        )
    return replaced


def replace_windows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    spec: AggregateSpec,
    windows: pl.DataFrame,
    stats: pl.DataFrame,
    batch_id: int,
) -> int:
    """Replace the aggregate rows of `windows` (window_start + group columns) by `stats`,
    recomputed from clean rows (caller's transaction); returns how many windows."""
    if windows.height == 0:
        return 0
    keys = ["window_start", *spec.by]
    con.register("_windows", windows.select(keys).to_arrow())
    try:
        match = " AND ".join(f"a.{q(c)} IS NOT DISTINCT FROM w.{q(c)}" for c in keys)
        con.execute(f"DELETE FROM {table} a WHERE EXISTS (SELECT 1 FROM _windows w WHERE {match})")
    finally:
        con.unregister("_windows")
    insert_frame(
        con,
        table,
        stats.select(
            *keys,
            "n_rows",
            "n_labelled",
            pl.col("target_sum").fill_null(0.0),
            pl.lit(batch_id, dtype=pl.Int64).alias("updated_batch_id"),
        ),
    )
    return windows.height
