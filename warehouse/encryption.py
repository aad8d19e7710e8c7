"""The warehouse encrypted at rest: DuckDB's database encryption (AES-GCM), with httpfs's
crypto module (docs/duckdb-1.5.md has what was measured: no plaintext in the file or
its WAL, a missing or wrong key refused).

DuckDB takes the key only in `ATTACH path AS warehouse (ENCRYPTION_KEY ...)`, so an
encrypted warehouse is attached to an in-memory database and made the connection's
default with `USE warehouse`. A cursor, or a fresh connection of the Quack server,
starts in `memory` again, so `mirror` keeps a view there for every table of the
warehouse, under the same schema and name: unqualified reads work from anywhere, and a
write that is not the owner's lands on a view and fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from tidemill.errors import TidemillError
from tidemill.keys import existing_token, key_source
from tidemill.warehouse.quoting import lit, q

ATTACHED = "warehouse"
_MAGIC_AT, _FLAGS_AT = 8, 20  # DuckDB's main header: "DUCK" at 8, the flags at 20


@dataclass(frozen=True)
class Key:
    """An encryption key and where it came from (named in errors, never the key)."""

    text: str
    source: str


def key_for(path: Path, state_dir: Path) -> Key | None:
    """The key that opens the DuckDB file `path` of state folder `state_dir`: None when it
    is not encrypted; WrongKey when it is and no key is set (none is made up here)."""
    if not is_encrypted(path):
        return None
    text = existing_token(state_dir, "encryption")
    if text is None:
        raise WrongKey(
            f"{path} is encrypted and no key is set: {key_source(state_dir, 'encryption')}"
        )
    return Key(text, key_source(state_dir, "encryption"))


class WrongKey(TidemillError, PermissionError):
    """The encryption key given does not open the warehouse (or none was given)."""


def is_encrypted(path: Path) -> bool:
    """Whether the DuckDB file at `path` is encrypted (its header's flag, bit 0)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(_FLAGS_AT + 8)
    except FileNotFoundError:
        return False
    return header[_MAGIC_AT : _MAGIC_AT + 4] == b"DUCK" and bool(header[_FLAGS_AT] & 1)


def attach(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    key: str,
    *,
    storage_version: str,
    read_only: bool = False,
    where_key: str = "the encryption key",
) -> None:
    """Attach the encrypted warehouse at `path` as `warehouse` and make it the default.
    Raises WrongKey (naming `where_key`, where the key came from) when it does not open."""
    options = f"ENCRYPTION_KEY {lit(key)}" + (
        ", READ_ONLY" if read_only else f", STORAGE_VERSION {lit(storage_version)}"
    )
    try:  # the key is quoted into the text (ATTACH takes no parameters): never log it
        con.execute(f"ATTACH {lit(str(path))} AS {ATTACHED} ({options})")
    except (duckdb.InvalidInputException, duckdb.CatalogException) as error:
        if "key" not in str(error).lower():
            raise
        raise WrongKey(
            f"{path} does not open with {where_key}: set the key it was written with"
        ) from None
    con.execute(f"USE {ATTACHED}")


def mirror(con: duckdb.DuckDBPyConnection) -> None:
    """Keep a view in `memory` for every table and view of the attached warehouse (no-op
    for a warehouse that is the database itself), made anew each time: a view keeps the
    columns its table had when it was made. Each statement writes one database only
    (DuckDB writes one database per transaction)."""
    attached = con.sql(
        "SELECT count(*) FROM duckdb_databases() WHERE database_name = 'memory'"
    ).fetchall()
    if not attached[0][0]:  # the warehouse file is the database itself (plaintext)
        return
    wanted = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
        "UNION ALL SELECT schema_name, view_name FROM duckdb_views() "
        "WHERE database_name = ? AND NOT internal",
        [ATTACHED, ATTACHED],
    ).fetchall()
    for schema, table in sorted(set(wanted)):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS memory.{q(schema)}")
        con.execute(
            f"CREATE OR REPLACE VIEW memory.{q(schema)}.{q(table)} "
            f"AS FROM {ATTACHED}.{q(schema)}.{q(table)}"
        )
