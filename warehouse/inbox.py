"""The landing-file ledger and the inbox: records wait here, exactly once, for a batch.

A file version is read into the inbox in ONE transaction with its `_files` ledger row,
so a crash either reads it fully or not at all. A batch takes the oldest records (by
event time) and deletes them in its own commit, so a record is in exactly one place at
any moment: a landing file not yet in the ledger, the inbox, raw.P, or quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

from tasks.landing import Arrival
from warehouse.pipeline_tables import PipelineTables, q


@dataclass(frozen=True)
class FileVersion:
    """What the ledger knows about one version of a landing file."""

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str


def ledger(con: duckdb.DuckDBPyConnection, pipeline: str) -> dict[str, FileVersion]:
    """Latest ledger entry per path for `pipeline`."""
    rows = con.execute(
        "SELECT path, size_bytes, mtime_ns, sha256 FROM _files WHERE pipeline = ? "
        "QUALIFY row_number() OVER (PARTITION BY path ORDER BY ingested_at DESC, size_bytes DESC) = 1",
        [pipeline],
    ).fetchall()
    return {r[0]: FileVersion(*r) for r in rows}


def headers(con: duckdb.DuckDBPyConnection, pipeline: str) -> dict[str, list[str]]:
    """CSV header recorded per path (the first version read), for reading grown files."""
    rows = con.execute(
        "SELECT path, arg_min(header, ingested_at) FROM _files WHERE pipeline = ? GROUP BY path",
        [pipeline],
    ).fetchall()
    return {path: header.split(",") for path, header in rows if header}


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
    con.begin()
    try:
        if records.height:
            frame = records.with_columns(pl.lit(version.path).alias("_file"))
            con.register("_incoming", frame.to_arrow())
            columns = ", ".join(q(c) for c in frame.columns)
            con.execute(f"INSERT INTO {t.inbox} ({columns}) SELECT {columns} FROM _incoming")
            con.unregister("_incoming")
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
        con.commit()
    except BaseException:
        con.rollback()
        raise


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
