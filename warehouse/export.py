"""Exports for other engines: a pipeline's rows as Parquet, partitioned by event date.

`export_sql` says what to read (it runs wherever the warehouse is read: on the owner,
live, or on the file); `write_parquet` writes the rows it streams with DuckDB's
`COPY ... (FORMAT parquet, PARTITION_BY (event_date))` into `<dir>/event_date=YYYY-MM-DD/`,
in a DuckDB of this process (the owner's has no file access). Encrypted exports use
Parquet modular encryption (AES-GCM, DuckDB's `ENCRYPTION_CONFIG`, which needs httpfs's
crypto module); any DuckDB reads them after
`PRAGMA add_parquet_key('tidemill', '<key>')` (docs/operations.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from tidemill.config.pipeline import PipelineConfig
from tidemill.warehouse import extensions
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.quoting import lit, q

ExportTable = Literal["raw", "clean", "predictions", "metrics"]
PARQUET_KEY_NAME = "tidemill"
MANIFEST = "_tidemill_export.json"


def export_sql(config: PipelineConfig, table: ExportTable, since: datetime, until: datetime) -> str:
    """The rows of `table` with event time in [since, until), plus their `event_date`
    (for metrics: the end of the window of the batch they scored)."""
    t = PipelineTables(config.name)
    start, end = lit(since.isoformat()), lit(until.isoformat())

    def within(column: str) -> str:
        return f"{column} >= {start}::TIMESTAMP AND {column} < {end}::TIMESTAMP"

    if table == "metrics":
        return (
            "SELECT m.*, b.window_end_at, CAST(b.window_end_at AS DATE) AS event_date "
            "FROM ml.batch_metrics m JOIN _batches b USING (batch_id) "
            f"WHERE m.pipeline = {lit(config.name)} AND {within('b.window_end_at')}"
        )
    source = {"raw": t.raw, "clean": t.clean, "predictions": t.predictions}[table]
    when = q(config.event_time)
    return f"SELECT *, CAST({when} AS DATE) AS event_date FROM {source} WHERE {within(when)}"


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    folder: Path
    rows: int
    files: int
    encrypted: bool


def parquet_key(key_text: str) -> str:
    """The Parquet key: base64 of SHA-256 of the state folder's encryption key text."""
    return base64.b64encode(hashlib.sha256(key_text.encode()).digest()).decode()


def write_parquet(
    rows: pa.RecordBatchReader, folder: Path, *, key: str | None, describe: dict[str, str]
) -> Exported:
    """Write the streamed `rows` (with an `event_date` column) under `folder`, encrypted
    with Parquet key `key` (base64) unless it is None, and a manifest without the key."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:", config=extensions.settings())
    try:
        extensions.load(con, ["httpfs"])
        options = "FORMAT parquet, PARTITION_BY (event_date), OVERWRITE_OR_IGNORE true"
        if key is not None:
            con.execute(f"PRAGMA add_parquet_key({lit(PARQUET_KEY_NAME)}, {lit(key)})")
            options += f", ENCRYPTION_CONFIG {{footer_key: {lit(PARQUET_KEY_NAME)}}}"
        con.register("_export", rows)
        counted = con.execute(f"COPY (FROM _export) TO {lit(str(folder))} ({options})").fetchall()
    finally:
        con.close()
    written = sum(1 for _ in folder.rglob("*.parquet"))
    total = int(counted[0][0]) if counted else 0
    manifest = {
        **describe,
        "rows": total,
        "encrypted": key is not None,
        "read_with": (
            f"PRAGMA add_parquet_key('{PARQUET_KEY_NAME}', '<key>'); SELECT * FROM read_parquet("
            f"'{folder}/**/*.parquet', hive_partitioning = true"
            + (f", encryption_config = {{footer_key: '{PARQUET_KEY_NAME}'}})" if key else ")")
        ),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return Exported(folder, total, written, key is not None)
