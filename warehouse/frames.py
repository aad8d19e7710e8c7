"""Writing a Polars frame into a table: the one way rows reach a pipeline table."""

from __future__ import annotations

import duckdb
import polars as pl

from tidemill.warehouse.quoting import q


def insert_frame(
    con: duckdb.DuckDBPyConnection,
    table: str,
    frame: pl.DataFrame,
    *,
    numbered: tuple[str, str] | None = None,
) -> None:
    """Insert `frame`'s columns (by name) into `table`. `numbered` = (column, sequence)
    fills that column from the sequence in the insert itself: tables keep no function
    DEFAULT, which DuckDB 1.5.5's Quack clients cannot attach (docs/duckdb-1.5.md)."""
    if frame.height == 0:
        return
    con.register("_frame", frame.to_arrow())
    try:
        names = [q(c) for c in frame.columns]
        values = list(names)
        if numbered is not None:
            column, sequence = numbered
            names.insert(0, q(column))
            values.insert(0, f"nextval('{sequence}')")
        con.execute(
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} FROM _frame"
        )
    finally:
        con.unregister("_frame")
