"""Numbered SQL migrations (migrations/NNNN_name.sql), applied once each, in order."""

from __future__ import annotations

import re
from importlib import resources

import duckdb

from tidemill.warehouse.transaction import transaction

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def applied_versions(con: duckdb.DuckDBPyConnection) -> set[int]:
    """Versions recorded in _schema_versions."""
    return {row[0] for row in con.sql("SELECT version FROM _schema_versions").fetchall()}


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this file lacks, each in its own transaction; returns their names."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _schema_versions ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    con.execute(
        "COMMENT ON TABLE _schema_versions IS "
        "'Warehouse migrations applied to this file (warehouse/migrations/NNNN_*.sql).'"
    )
    for column, text in (
        ("version", "Migration number (NNNN of the file name)."),
        ("name", "Migration file name."),
        ("applied_at", "When it was applied (UTC)."),
    ):
        con.execute(f"COMMENT ON COLUMN _schema_versions.{column} IS '{text}'")
    done = applied_versions(con)
    applied = []
    for version, name, sql in available_migrations():
        if version in done:
            continue
        with transaction(con):
            con.execute(sql)
            con.execute(
                "INSERT INTO _schema_versions VALUES (?, ?, now()::TIMESTAMP)", [version, name]
            )
        applied.append(name)
    return applied
