"""Rewrite the warehouse file so deleted rows leave no bytes behind.

DuckDB reuses the blocks of deleted rows but does not wipe them: after a DELETE and a
CHECKPOINT (even after rewriting a table) the old values are still in the file,
measured with uncompressed storage. An erasure must not leave a subject readable with a
hex editor, so after one the file is copied object by object into a fresh file (COPY
FROM DATABASE keeps schemas, tables, constraints, comments and sequences), sequences are
moved to where they were, and the fresh file replaces the old one atomically.

The same copy changes how the file is encrypted (`key_from` -> `key_to`: encrypt a
plaintext warehouse, decrypt one, or re-encrypt it under a new key for a key rotation);
the fresh file is written under `key_to` from its first byte.

The caller must have closed every connection to the file (the owner reopens it after).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tidemill.warehouse import extensions
from tidemill.warehouse.encryption import attach
from tidemill.warehouse.quoting import lit, q


@dataclass(frozen=True)
class Compacted:
    """What a compaction did."""

    bytes_before: int
    bytes_after: int
    seconds: float


def compact(
    path: Path,
    storage_version: str,
    settings: dict[str, str] | None = None,
    *,
    key_from: str | None = None,
    key_to: str | None = None,
) -> Compacted:
    """Rewrite `path` into a fresh file and swap it in (see module docstring). `settings`:
    extra DuckDB settings for the copy (a test forces uncompressed storage so it can
    search the bytes). `key_from` opens an encrypted file; `key_to` encrypts the copy."""
    started = time.perf_counter()
    fresh = path.with_name(path.name + ".compact")
    fresh.unlink(missing_ok=True)
    before = path.stat().st_size
    crypto = key_from is not None or key_to is not None
    config: dict[str, extensions.Setting] = {**(settings or {})}
    if crypto:
        config |= {**extensions.settings(), "temp_file_encryption": True}
    con = duckdb.connect(":memory:" if key_from else str(path), config=config)
    try:
        if crypto:
            extensions.load(con, ["httpfs"])
        if key_from is not None:
            attach(con, path, key_from, storage_version=storage_version)
        con.execute("CHECKPOINT")
        source = con.sql("SELECT current_database()").fetchall()[0][0]
        # Each sequence's next value, drawn from the old file (which is replaced below).
        # Not last_value + 1: DuckDB 1.5 reports a sequence read back from a file with
        # last_value = its next value, so last_value + 1 skips one.
        sequences: list[tuple[str, str, int]] = []
        for schema, name in con.sql(
            "SELECT schema_name, sequence_name FROM duckdb_sequences() "
            "WHERE database_name = current_database()"
        ).fetchall():
            drawn = con.sql(f"SELECT nextval({lit(f'{q(schema)}.{q(name)}')})").fetchall()
            sequences.append((schema, name, drawn[0][0]))
        defaults = con.sql(
            "SELECT schema_name, table_name, column_name, column_default FROM duckdb_columns() "
            "WHERE database_name = current_database() AND column_default LIKE 'nextval(%'"
        ).fetchall()
        encrypted = f", ENCRYPTION_KEY {lit(key_to)}" if key_to is not None else ""
        con.execute(
            f"ATTACH {lit(str(fresh))} AS _fresh (STORAGE_VERSION {lit(storage_version)}{encrypted})"
        )
        con.execute(f"COPY FROM DATABASE {q(source)} TO _fresh")
        con.execute("USE _fresh")  # unqualified names in defaults now resolve in the copy
        for schema, table, column, _ in defaults:
            con.execute(f"ALTER TABLE {q(schema)}.{q(table)} ALTER COLUMN {q(column)} DROP DEFAULT")
        for schema, name, following in sequences:
            con.execute(f"DROP SEQUENCE {q(schema)}.{q(name)}")
            con.execute(f"CREATE SEQUENCE {q(schema)}.{q(name)} START WITH {int(following)}")
        for schema, table, column, default in defaults:
            con.execute(
                f"ALTER TABLE {q(schema)}.{q(table)} ALTER COLUMN {q(column)} SET DEFAULT {default}"
            )
        con.execute("CHECKPOINT")
        con.execute(f"USE {q(source)}")
        con.execute("DETACH _fresh")
    except BaseException:
        con.close()
        fresh.unlink(missing_ok=True)
        raise
    con.close()
    with fresh.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(fresh, path)
    Path(str(path) + ".wal").unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return Compacted(before, path.stat().st_size, time.perf_counter() - started)
