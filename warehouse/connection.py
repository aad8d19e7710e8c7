"""Opening the warehouse file: one writer process, settings applied, schema migrated.

Every connection is locked down before anyone's SQL reaches it. Query users' SQL runs on
cursors of the writer's connection (the owner socket) or on read-only connections (the
file, the snapshot), and DuckDB's safety settings belong to the database instance, not
to a cursor: so the writer's own connection closes what a query user must not reach.
The writer gives up nothing by it: landing files are read by Polars and reach DuckDB as
Arrow tables through `register()`, and artifacts and snapshots are written by Python.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb

from tidemill.errors import TidemillError
from tidemill.warehouse import encryption, extensions
from tidemill.warehouse.encryption import Key
from tidemill.warehouse.migrate import migrate


class _PandasAbsent(importlib.abc.MetaPathFinder):
    """DuckDB 1.5.5's Python binding imports pandas for every query parameter it converts
    (to recognise pandas' missing values) and does not remember that pandas is not
    installed: each attempt searched all of sys.path, 150 ms of a 250 ms micro-batch of
    500 rows (benchmarks/cycle.py, profiled). Installed only when pandas cannot be
    imported, this finder says so at once."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return None


if importlib.util.find_spec("pandas") is None:
    sys.meta_path.insert(0, _PandasAbsent())

Connection = duckdb.DuckDBPyConnection
"""An open DuckDB connection or cursor: the type the layers above hold without importing
duckdb (only warehouse/ does)."""

DATABASE_FILE = "warehouse.duckdb"
# The 1.5 storage format: what tidemill wrote under DuckDB 2.0.1 before 1.5.5 was pinned
# (tests/flows/test_upgrade.py opens such a state folder), and what the duckdb shell of
# the same version and other SQL tools built on DuckDB 1.5 read.
STORAGE_VERSION = "v1.5.0"

# No files (read_csv, read_text, glob, COPY, ATTACH, EXPORT DATABASE, secrets), no
# Python-variable replacement scans, no extensions beyond the built-in ones and those
# loaded by name before the lock (INSTALL, LOAD and autoloading refuse afterwards).
# Measured on DuckDB 1.5.5: each refuses with a PermissionException. A connection that
# loads extensions turns external access off with SET after its LOADs (LOAD needs it on).
LOCKED_DOWN: dict[str, extensions.Setting] = {
    "enable_external_access": False,
    **extensions.SETTINGS,
}

Prepare = Callable[[duckdb.DuckDBPyConnection], None]
"""What a connection does after its extensions are loaded and before its configuration
is frozen (serving registers its authorization function there)."""


class OwnedElsewhere(TidemillError, RuntimeError):
    """The warehouse file is held by another process (DuckDB lets one process write a
    file, and no other open it meanwhile, not even read-only)."""


def database_path(state_dir: Path) -> Path:
    """Where the pipeline warehouse lives inside the state folder."""
    return state_dir / DATABASE_FILE


def lock_configuration(con: duckdb.DuckDBPyConnection) -> None:
    """Set the time zone to UTC for every cursor, then freeze every setting of `con`'s
    database (SET, RESET, PRAGMA and the setting table functions refuse from now on).

    Idempotent: a second connection to a database this process already opened shares
    its (already frozen) settings.
    """
    if _frozen(con):
        return
    try:
        # GLOBAL: a plain SET is this connection's only, and cursors would keep local time
        con.execute("SET GLOBAL TimeZone = 'UTC'")
        con.execute("SET lock_configuration = true")
    except duckdb.InvalidInputException:
        if not _frozen(con):  # else another thread froze the shared database first
            raise


def _frozen(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.sql("SELECT current_setting('lock_configuration')").fetchall()[0][0])


def open_warehouse(
    path: Path,
    memory_limit: str | None = None,
    *,
    key: Key | None = None,
    load: Sequence[str] = (),
    prepare: Prepare | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the warehouse for writing and bring its schema up to date.

    Automatic checkpoints are pushed far out (1 GB of WAL): they cause 40-100 ms spikes
    after a few hundred small inserts, so the owner runs CHECKPOINT at quiet moments.
    The connection is locked down (see LOCKED_DOWN) and its configuration frozen.
    `memory_limit` (e.g. "2GB") bounds DuckDB's buffer pool, which otherwise keeps every
    block it wrote or read cached up to 80 % of RAM: a soak of 10,000 batches grew a
    worker by 330 MB, most of it cached table blocks.
    `key` opens (or creates) it encrypted (warehouse/encryption.py); `load` names
    extensions (warehouse/extensions.py) to LOAD first; `prepare` runs after them, before
    the lock. Raises OwnedElsewhere when another process holds the file, WrongKey when
    `key` does not open it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    settings: dict[str, extensions.Setting] = {
        "storage_compatibility_version": STORAGE_VERSION,
        "checkpoint_threshold": "1GB",
        **({"memory_limit": memory_limit} if memory_limit else {}),
        **(extensions.settings() if load or key else LOCKED_DOWN),
    }
    with _owned_elsewhere(path):
        if key is None:
            con = duckdb.connect(str(path), config=settings)
        else:
            con = duckdb.connect(":memory:", config={**settings, "temp_file_encryption": True})
            load = ["httpfs", *[name for name in load if name != "httpfs"]]
    if not _frozen(con):  # else this process opened (and locked) it already
        if load:
            extensions.load(con, load)
        if key is not None:
            with _owned_elsewhere(path):
                encryption.attach(
                    con, path, key.text, storage_version=STORAGE_VERSION, where_key=key.source
                )
        if prepare is not None:
            prepare(con)
        con.execute("SET enable_external_access = false")
    lock_configuration(con)
    migrate(con)
    encryption.mirror(con)
    return con


def open_readonly(path: Path, key: Key | None = None) -> duckdb.DuckDBPyConnection:
    """Open a warehouse (or a published snapshot) read-only, locked down and frozen; an
    encrypted one with `key`. Raises OwnedElsewhere when a writing process holds the
    file, WrongKey when it is encrypted and `key` does not open it."""
    if key is None and encryption.is_encrypted(path):
        raise encryption.WrongKey(f"{path} is encrypted: set its key (TIDEMILL_ENCRYPTION_KEY)")
    with _owned_elsewhere(path, "for writing "):
        if key is None:
            con = duckdb.connect(str(path), read_only=True, config=dict(LOCKED_DOWN))
        else:
            con = duckdb.connect(":memory:", config=extensions.settings())
            extensions.load(con, ["httpfs"])
            encryption.attach(
                con,
                path,
                key.text,
                storage_version=STORAGE_VERSION,
                read_only=True,
                where_key=key.source,
            )
            con.execute("SET enable_external_access = false")
    lock_configuration(con)
    return con


@contextmanager
def _owned_elsewhere(path: Path, how: str = "") -> Iterator[None]:
    """DuckDB's lock error as OwnedElsewhere."""
    try:
        yield
    except duckdb.IOException as error:
        if not _held_by_another_process(error):
            raise
        raise OwnedElsewhere(
            f"{path} is open {how}in another process (a running `tidemill up`/`run`?); "
            "stop it or use `tidemill query`"
        ) from error


def _held_by_another_process(error: duckdb.IOException) -> bool:
    """DuckDB's "Could not set lock on file" (another process has it open), as opposed to
    a missing file or a disk error."""
    return "lock" in str(error).lower()


class CheckpointFailed(TidemillError, RuntimeError):
    """DuckDB refused a CHECKPOINT (a reader holds a transaction, the disk is full)."""


def checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write the WAL into the main file now (the owner does it at quiet moments, and
    before a snapshot copy). Raises CheckpointFailed when DuckDB refuses."""
    try:
        con.execute("CHECKPOINT")
    except duckdb.Error as error:
        raise CheckpointFailed(f"checkpoint failed: {error}") from error
