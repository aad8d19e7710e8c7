"""Opening the warehouse file: one writer process, settings applied, schema migrated."""

from __future__ import annotations

from pathlib import Path

import duckdb

from warehouse.migrate import migrate

DATABASE_FILE = "warehouse.duckdb"
# New files are written in the 1.5 storage format so SQL tools built on DuckDB 1.5 (the
# duckdb CLI from PyPI, DBeaver, ...) can open the published snapshot; DuckDB 2.0 reads
# and writes it as well.
STORAGE_VERSION = "v1.5.0"


def database_path(state_dir: Path) -> Path:
    """Where the pipeline warehouse lives inside the state folder."""
    return state_dir / DATABASE_FILE


def open_warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the warehouse for writing and bring its schema up to date.

    Automatic checkpoints are pushed far out (1 GB of WAL): they cause 40-100 ms spikes
    after a few hundred small inserts, so the owner runs CHECKPOINT at quiet moments.
    Raises duckdb.IOException when another process holds the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET checkpoint_threshold = '1GB'")
    migrate(con)
    return con


def open_readonly(path: Path) -> duckdb.DuckDBPyConnection:
    """Open a warehouse (or a published snapshot) read-only."""
    con = duckdb.connect(str(path), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    return con
