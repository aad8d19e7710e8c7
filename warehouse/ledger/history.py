"""The warehouse as a batch saw it: reads of past batches for `replay-model`.

A model version is its parent plus one batch. To learn that batch again we need the
batch's clean rows and what its features read at the time: the aggregate windows
and the lag histories as they stood before it. Both are rebuilt from clean.P, whose
rows carry the batch that wrote them, so nothing but the rows themselves has to be
kept. These reads scan clean.P: replay is an audit, not the batch path.
"""

from __future__ import annotations

import duckdb
import polars as pl

from tidemill.config.pipeline import AggregateSpec, LagSpec, PipelineConfig
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import q


def batch_clean_rows(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, batch_id: int
) -> pl.DataFrame:
    """The clean rows batch `batch_id` wrote (without batch_id; any order)."""
    t = PipelineTables(config.name)
    return con.sql(
        f"SELECT * EXCLUDE (batch_id) FROM {t.clean} WHERE batch_id = ?", params=[batch_id]
    ).pl()


def batch_rows_learned(
    con: duckdb.DuckDBPyConnection, config: PipelineConfig, batch_id: int
) -> int:
    """Rows of batch `batch_id` a model learns as they are now: labelled clean rows (every
    row when clustering); an erasure lowers it."""
    t = PipelineTables(config.name)
    labelled = f"{q(config.target)} IS NOT NULL" if config.target else "true"
    found = con.sql(
        f"SELECT count(*) FILTER ({labelled}) FROM {t.clean} WHERE batch_id = ?",
        params=[batch_id],
    ).fetchall()
    return int(found[0][0])


def window_rows_before(
    con: duckdb.DuckDBPyConnection,
    config: PipelineConfig,
    spec: AggregateSpec,
    wanted: pl.DataFrame,
    batch_id: int,
) -> pl.DataFrame:
    """Clean rows (with batch_id) of batches before `batch_id` that fall in the windows
    `wanted` (window_start, *by) of aggregate `spec`."""
    t = PipelineTables(config.name)
    if wanted.height == 0:
        return con.sql(f"SELECT * FROM {t.clean} LIMIT 0").pl()
    con.register("_wanted", wanted.to_arrow())
    try:
        on = " AND ".join(
            [
                f"time_bucket(INTERVAL '{spec.every_seconds} seconds', c.{q(config.event_time)}, "
                f"TIMESTAMP '1970-01-01') = w.window_start"
            ]
            + [f"c.{q(b)} IS NOT DISTINCT FROM w.{q(b)}" for b in spec.by]
        )
        return con.sql(
            f"SELECT c.* FROM {t.clean} c SEMI JOIN _wanted w ON {on} WHERE c.batch_id < ?",
            params=[batch_id],
        ).pl()
    finally:
        con.unregister("_wanted")


def lag_rows_before(
    con: duckdb.DuckDBPyConnection,
    config: PipelineConfig,
    spec: LagSpec,
    series: pl.DataFrame,
    batch_id: int,
) -> pl.DataFrame:
    """Labelled clean rows of the series in `series` written before `batch_id`: *by,
    event time and target, `spec.n` per series at most, the latest ones."""
    t = PipelineTables(config.name)
    assert config.target is not None  # the config refuses lags without a target
    by = [q(b) for b in spec.by]
    ts, target = q(config.event_time), q(config.target)
    con.register("_series", series.unique().to_arrow())
    try:
        on = " AND ".join(f"c.{b} IS NOT DISTINCT FROM s.{b}" for b in by)
        return con.sql(
            f"SELECT {', '.join(by)}, {ts}, {target} FROM (SELECT c.*, row_number() OVER "
            f"(PARTITION BY {', '.join('c.' + b for b in by)} ORDER BY c.{ts} DESC, c.{target} DESC) AS _r "
            f"FROM {t.clean} c SEMI JOIN _series s ON {on} "
            f"WHERE c.batch_id < ? AND c.{target} IS NOT NULL) WHERE _r <= ?",
            params=[batch_id, spec.n],
        ).pl()
    finally:
        con.unregister("_series")


def delete_lag_series(
    con: duckdb.DuckDBPyConnection, table: str, by: list[str], series: pl.DataFrame
) -> None:
    """Delete the stored lag history (`table`) of every series in `series` (its `by`
    columns): series that have no label left."""
    if series.height == 0:
        return
    con.register("_emptied", series.to_arrow())
    try:
        on = " AND ".join(f"h.{q(c)} IS NOT DISTINCT FROM e.{q(c)}" for c in by)
        con.execute(f"DELETE FROM {table} h WHERE EXISTS (SELECT 1 FROM _emptied e WHERE {on})")
    finally:
        con.unregister("_emptied")
