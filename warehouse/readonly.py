"""Read-only SQL for people: what may run, and running it on its own cursor.

Only SELECT-like statements (SELECT, FROM, WITH, DESCRIBE, SHOW, SUMMARIZE) and
EXPLAIN of those are allowed; each runs in a transaction that is rolled back, on a
cursor of its own, so it sees one consistent snapshot and cannot disturb a batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import duckdb

_EXPLAIN = re.compile(r"^\s*explain\s+(analyze\s+)?", re.IGNORECASE)


class ReadOnlyViolation(ValueError):
    """A statement that would change something; the message says which."""


@dataclass(frozen=True)
class QueryResult:
    """Columns, their DuckDB types and the rows of a query."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def check_readonly(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ReadOnlyViolation unless every statement in `sql` only reads."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise ReadOnlyViolation(str(error).splitlines()[0]) from None
    if not statements:
        raise ReadOnlyViolation("no SQL statement given")
    for statement in statements:
        kind = statement.type
        if kind == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN.sub("", statement.query, count=1)
            check_readonly(con, inner)
            continue
        if kind != duckdb.StatementType.SELECT:
            name = str(kind).rsplit(".", 1)[-1]
            raise ReadOnlyViolation(
                f"{name} statements are refused: tidemill query is read-only "
                "(SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
            )


def run_readonly(cursor: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
    """Run read-only `sql` on `cursor` (a cursor of its own) and return the last result."""
    check_readonly(cursor, sql)
    statements = cursor.extract_statements(sql)
    cursor.begin()
    try:
        for statement in statements[:-1]:
            cursor.execute(statement.query).fetchall()
        relation = cursor.execute(statements[-1].query)
        description = relation.description or []
        rows = relation.fetchall()
    finally:
        cursor.rollback()
    return QueryResult(
        columns=[d[0] for d in description],
        types=[str(d[1]) for d in description],
        rows=rows,
    )
