"""The landing-file ledger and the inbox: records wait here, exactly once, for a batch.

A file version is read into the inbox in ONE transaction with its `_files` ledger row,
so a crash either reads it fully or not at all. A batch takes the oldest records (by
event time) and deletes them in its own commit, so a record is in exactly one place at
any moment: a landing file not yet in the ledger, the inbox, raw.P, or quarantine.
"""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl

from tidemill.tasks.sources.base import Arrival, Arrived, Known
from tidemill.warehouse import cursors
from tidemill.warehouse.frames import insert_frame
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.transaction import transaction


def ledger(con: duckdb.DuckDBPyConnection, pipeline: str, paths: list[str]) -> dict[str, Known]:
    """Latest ledger entry of each of `paths` (the files in the landing folder now): a
    cycle reads the entries of the files still there, not of every file ever read."""
    rows = _of_paths(
        con,
        paths,
        "SELECT f.path, f.size_bytes, f.mtime_ns, f.sha256 FROM _files f "
        "JOIN _paths p ON f.path = p.path WHERE f.pipeline = ? "
        "QUALIFY row_number() OVER (PARTITION BY f.path "
        "ORDER BY f.ingested_at DESC, f.size_bytes DESC) = 1",
        pipeline,
    )
    return {r[0]: Known(*r[1:]) for r in rows}


def headers(
    con: duckdb.DuckDBPyConnection, pipeline: str, paths: list[str]
) -> dict[str, list[str]]:
    """CSV header recorded for each of `paths` (the first version read), for reading
    grown files."""
    rows = _of_paths(
        con,
        paths,
        "SELECT f.path, arg_min(f.header, f.ingested_at) FROM _files f "
        "JOIN _paths p ON f.path = p.path WHERE f.pipeline = ? GROUP BY f.path",
        pipeline,
    )
    return {path: header.split(",") for path, header in rows if header}


def _of_paths(
    con: duckdb.DuckDBPyConnection, paths: list[str], sql: str, pipeline: str
) -> list[tuple[Any, ...]]:
    if not paths:
        return []
    con.register("_paths", pl.DataFrame({"path": paths}, schema={"path": pl.Utf8}).to_arrow())
    try:
        return con.execute(sql, [pipeline]).fetchall()
    finally:
        con.unregister("_paths")


def add_file(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    version: Arrival,
    header: list[str],
    records: pl.DataFrame,
) -> None:
    """Put a file version's records in the inbox and its ledger row in `_files`, atomically.

    `records` has the declared text columns plus `_line`, `_raw`, `_reject`, `_event_at`.
    """
    t = PipelineTables(pipeline)
    with transaction(con):
        if records.height:
            frame = records.with_columns(pl.lit(version.path).alias("_file"))
            insert_frame(con, t.inbox, frame, numbered=("_seq", t.inbox_seq))
        con.execute(
            "INSERT INTO _files VALUES (?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
            [
                pipeline,
                version.path,
                version.size_bytes,
                version.mtime_ns,
                version.sha256,
                ",".join(header),
                records.height,
                version.disposition,
            ],
        )


def take(con: duckdb.DuckDBPyConnection, pipeline: str, limit: int) -> pl.DataFrame:
    """Up to `limit` waiting records, unparseable event times first, then by event time."""
    t = PipelineTables(pipeline)
    return con.sql(
        f"SELECT * FROM {t.inbox} ORDER BY _event_at NULLS FIRST, _seq LIMIT {int(limit)}"
    ).pl()


def backlog(con: duckdb.DuckDBPyConnection, pipeline: str) -> int:
    """Records waiting in the inbox."""
    t = PipelineTables(pipeline)
    return int(con.sql(f"SELECT count(*) FROM {t.inbox}").fetchall()[0][0])


def add_arrived(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    arrived: Arrived,
    records: pl.DataFrame,
    header: list[str],
) -> None:
    """Put the records of one source read in the inbox with what the read moves, in one
    transaction: the landing file's ledger row (`header` as it may be shown), or the
    source's cursor. `records` are `arrived.records` as they may be stored (personal
    fields protected, erased subjects left out)."""
    if arrived.file is not None:
        add_file(con, pipeline, arrived.file, header, records)
    elif arrived.cursor is not None:
        move = arrived.cursor
        cursors.add_read(con, pipeline, move.source, move.column, records, move.position)
