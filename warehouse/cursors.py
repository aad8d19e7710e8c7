"""Incremental read state of database sources, moved atomically with the records read.

A read's records go into the pipeline's inbox and its new position into `_cursors` in
ONE transaction: a crash before COMMIT leaves both as they were (the same rows are read
again), after COMMIT both have moved (the rows are not read again). Like the `_files`
ledger for landing files.
"""

from __future__ import annotations

import duckdb
import polars as pl

from tidemill.tasks.sources.base import CursorPosition
from tidemill.warehouse.frames import insert_frame
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.transaction import transaction


def position(
    con: duckdb.DuckDBPyConnection, pipeline: str, source: str, cursor_column: str
) -> CursorPosition:
    """Where `pipeline` stopped reading `source` (the start when it never read it)."""
    rows = con.execute(
        "SELECT last_value, keys_at_last FROM _cursors "
        "WHERE pipeline = ? AND source = ? AND cursor_column = ?",
        [pipeline, source, cursor_column],
    ).fetchall()
    if not rows:
        return CursorPosition()
    last_value, keys = rows[0]
    return CursorPosition(last_value, tuple(keys))


def add_read(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    source: str,
    cursor_column: str,
    records: pl.DataFrame,
    moved: CursorPosition,
) -> None:
    """Put a read's records in the inbox and move the cursor to `moved`, atomically.

    `records` has the declared text columns plus `_line`, `_raw`, `_reject`,
    `_event_at` and `_file`.
    """
    t = PipelineTables(pipeline)
    with transaction(con):
        insert_frame(con, t.inbox, records, numbered=("_seq", t.inbox_seq))
        con.execute(
            "INSERT INTO _cursors VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP) "
            "ON CONFLICT (pipeline, source, cursor_column) DO UPDATE SET "
            "last_value = EXCLUDED.last_value, keys_at_last = EXCLUDED.keys_at_last, "
            "rows_read = _cursors.rows_read + EXCLUDED.rows_read, read_at = EXCLUDED.read_at",
            [
                pipeline,
                source,
                cursor_column,
                moved.last_value,
                list(moved.keys_at_last),
                records.height,
            ],
        )
