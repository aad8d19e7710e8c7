"""The SQL a `duckdb` shell runs to see every owner's warehouse live, as one database.

Each owner is ATTACHed over Quack under its name (`live`, or `w1`, `w2`, ... with several
workers), so `FROM <name>.query('any read-only SQL')` runs a statement on that owner
whole; `tidemill sql -c` sends its statement that way. DuckDB 1.5.5's Quack client drops
the schema of an attached table (`live.raw.flights` fails) and scans one remote table
per statement ("Multiple streaming scans ... not currently supported"), so each table
of one owner is also a view under its usual name (`raw.flights`, `_batches`, ...), for
statements that read one table; joins and aggregates over big tables go through
`<name>.query(...)`, which runs them on the owner. A table several owners have
(`_batches`, `ml.model_versions`, ...) is reached per owner: `FROM w1.query('...')`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tidemill.warehouse import extensions
from tidemill.warehouse.quoting import lit, q
from tidemill.warehouse.serving.quack import Endpoint

TABLES_SQL = (
    "SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT internal "
    "UNION SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal "
    "ORDER BY ALL"
)
"""The tables and views an owner has (asked of each owner before the shell starts)."""


@dataclass(frozen=True)
class Owner:
    """One owner as the shell sees it."""

    name: str
    endpoint: Endpoint
    tables: list[tuple[str, str]]  # (schema, table)


def init_sql(owners: list[Owner]) -> str:
    """The shell's init script: extensions by name from this environment, each owner
    attached, and a view per table."""
    lines = _preamble("every owner's warehouse, live over Quack", extensions.EXTENSIONS)
    holders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for owner in owners:
        lines.append(
            f"ATTACH {lit(owner.endpoint.uri)} AS {q(owner.name)} "
            f"(TOKEN {lit(owner.endpoint.token)});"
        )
        for held in owner.tables:
            holders[held].append(owner.name)
    views = {table: names[0] for table, names in sorted(holders.items()) if len(names) == 1}
    for schema in sorted({schema for schema, _ in views} - {"main"}):
        lines.append(f"CREATE SCHEMA IF NOT EXISTS {q(schema)};")
    for (schema, table), name in views.items():
        remote = lit(f"FROM {q(schema)}.{q(table)}")
        lines.append(f"CREATE VIEW {q(schema)}.{q(table)} AS FROM {q(name)}.query({remote});")
    return "\n".join(lines) + "\n"


def snapshot_sql(snapshots: list[tuple[str, Path, str | None]]) -> str:
    """An init script that attaches published snapshots read-only, each `(name, path of
    the copy, its encryption key or None)`, and uses the first: a file, fixed at the
    moment it was published, for readers that need one."""
    encrypted = any(key is not None for _, _, key in snapshots)
    lines = _preamble("published snapshots, read-only", ["httpfs"] if encrypted else [])
    for name, path, key in snapshots:
        options = "READ_ONLY" + (f", ENCRYPTION_KEY {lit(key)}" if key is not None else "")
        lines.append(f"ATTACH {lit(str(path))} AS {q(name)} ({options});")
    lines.append(f"USE {q(snapshots[0][0])};")
    return "\n".join(lines) + "\n"


def _preamble(what: str, load: Sequence[str]) -> list[str]:
    """An init script's first lines: what it is, then extensions loaded by name from this
    environment's folder (nothing installed or loaded on its own)."""
    return [
        f"-- tidemill: {what} (warehouse/serving/shell.py)",
        f"SET extension_directory = {lit(str(extensions.extension_dir()))};",
        "SET autoinstall_known_extensions = false;",
        "SET autoload_known_extensions = false;",
        *[f"LOAD {name};" for name in load],
    ]


def on_owner(name: str, sql: str) -> str:
    """`sql` as the shell sends it to owner `name` to run there whole."""
    return f"FROM {q(name)}.query({lit(sql)})"


def write_init(path: Path, text: str) -> Path:
    """Write an init script (it holds tokens or keys: mode 0600) and return its path."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(text)
    return path
