"""Read-only SQL for people: what may run, and running it on its own cursor.

Three fences, so that a hole in one is not a way in:

1. This module's allowlist (`check_readonly`): only SELECT-like statements (SELECT, FROM,
   WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN of one; only table functions that
   read the catalog or make rows (no read_csv, glob, checkpoint, query, ...); no
   nextval/setval/write_log. Every refusal is one line ending "tidemill query is read-only".
2. Each statement runs on a cursor of its own in a READ ONLY transaction that is rolled
   back: DuckDB itself refuses any write in it (INSERT, DDL, nextval, ...), also on a
   cursor of the writer's connection, which cannot be opened read-only.
3. Every connection is locked down (warehouse/connection.py): no file or extension
   access, configuration frozen.

`run_readonly` can also stop a query after `timeout` seconds (interrupting it) and refuse
results over `max_rows`, so SQL in the owner's process cannot hold a core or its memory.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from tidemill.errors import TidemillError

READ_ONLY = "tidemill query is read-only"
_ALLOWED_KINDS = "(SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
# Table functions that make rows or read the catalog; every other one (files, checkpoint,
# query(), logging, extensions, external resources, ...) is refused, new ones included.
_ROW_FUNCTIONS = frozenset(
    {
        "generate_series",
        "histogram",
        "histogram_values",
        "icu_calendar_names",
        "json_each",
        "json_tree",
        "pg_timezone_names",
        "range",
        "repeat",
        "repeat_row",
        "summary",
        "test_all_types",
        "test_vector_types",
        "unnest",
    }
)
_CATALOG_PREFIXES = ("duckdb_", "pragma_")
_NOT_CATALOG = frozenset({"duckdb_secrets", "duckdb_logs", "duckdb_log_contexts"})
_WRITING_FUNCTIONS = frozenset({"nextval", "setval", "write_log"})
# SQL texts that passed: the check parses only (no catalog), so a text passes or fails
# for good. Callers repeat the same few statements (status, reports, pollers), and the
# check costs as much CPU as a small query.
_PASSED: set[str] = set()
_PASSED_MAX = 1024


class ReadOnlyViolation(TidemillError, ValueError):
    """A statement that would change something; the message says which."""


class QueryLimitExceeded(TidemillError, ValueError):
    """A query ran longer or returned more rows than allowed; the message says which."""


class QueryFailed(TidemillError, ValueError):
    """DuckDB could not run a read-only query (a missing table, a type error, ...); the
    message is DuckDB's, on one line."""

    def __init__(self, error: duckdb.Error) -> None:
        super().__init__(" ".join(line.strip() for line in str(error).splitlines() if line.strip()))


@dataclass(frozen=True)
class QueryResult:
    """Columns, their DuckDB types and the rows of a query."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def check_readonly(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ReadOnlyViolation unless every statement in `sql` only reads."""
    if sql in _PASSED:
        return
    statements = _statements(con, sql)
    if not statements:
        raise ReadOnlyViolation("no SQL statement given")
    for statement in statements:
        _check_statement(con, statement, explained=False)
    if len(_PASSED) < _PASSED_MAX:
        _PASSED.add(sql)


def _statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    try:
        return con.extract_statements(sql)
    except duckdb.Error as error:
        raise ReadOnlyViolation(str(error).splitlines()[0]) from None


def _check_statement(
    con: duckdb.DuckDBPyConnection, statement: duckdb.Statement, *, explained: bool
) -> None:
    try:
        kind = statement.type
    except ValueError:  # a statement type the Python client has no name for
        kind = None
    if kind is None or not kind.name.isidentifier():  # DuckDB 1.5 names such a type "???"
        raise ReadOnlyViolation(
            f"statements of an unknown kind are refused: {READ_ONLY} {_ALLOWED_KINDS}"
        )
    if kind == duckdb.StatementType.EXPLAIN and not explained:
        inner = _statements(con, explained_query(statement.query))
        if len(inner) != 1:
            raise ReadOnlyViolation(f"EXPLAIN of more than one statement is refused: {READ_ONLY}")
        _check_statement(con, inner[0], explained=True)
        return
    if kind != duckdb.StatementType.SELECT:
        name = str(kind).rsplit(".", 1)[-1]
        raise ReadOnlyViolation(f"{name} statements are refused: {READ_ONLY} {_ALLOWED_KINDS}")
    _check_functions(con, statement.query)


def explained_query(query: str) -> str:
    """The statement an EXPLAIN explains (checked like any statement: EXPLAIN ANALYZE runs
    it): what follows `EXPLAIN`, `EXPLAIN ANALYZE` or `EXPLAIN (options)`, found with
    DuckDB's own tokenizer, so no quoted parenthesis or comment in the options can hide
    where it starts."""
    tokens = duckdb.tokenize(query)
    ends = [start for start, _ in tokens[1:]] + [len(query)]
    words = [query[start:end].strip().upper() for (start, _), end in zip(tokens, ends, strict=True)]
    at = 1  # tokens[0] is EXPLAIN: the parser said so
    if at < len(words) and words[at] in ("ANALYZE", "ANALYSE"):
        at += 1
    elif at < len(words) and words[at] == "(":
        depth = 0
        for index in range(at, len(words)):
            if tokens[index][1] == duckdb.token_type.operator:
                depth += words[index].count("(") - words[index].count(")")
            at = index + 1
            if depth <= 0:
                break
    return query[tokens[at][0] :] if at < len(tokens) else ""


def _check_functions(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse table functions that are not row makers or catalog readers, and functions
    that write, wherever they sit in the statement (CTEs, subqueries, DESCRIBE (...))."""
    try:
        serialized = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchall()
    except duckdb.Error as error:
        raise ReadOnlyViolation(str(error).splitlines()[0]) from None
    tree = json.loads(serialized[0][0])
    if tree.get("error"):
        raise ReadOnlyViolation(
            f"a statement DuckDB cannot serialize for checking is refused: {READ_ONLY} "
            f"({tree.get('error_message')})"
        )
    tables: set[str] = set()
    scalars: set[str] = set()
    _collect_functions(tree, tables, scalars)
    for name in sorted(tables):
        catalog = name.startswith(_CATALOG_PREFIXES) and name not in _NOT_CATALOG
        if name not in _ROW_FUNCTIONS and not catalog:
            raise ReadOnlyViolation(
                f"table function {name}() is refused: {READ_ONLY} (it reads the warehouse's "
                "tables, not files or anything else)"
            )
    writing = sorted(scalars & _WRITING_FUNCTIONS)
    if writing:
        raise ReadOnlyViolation(f"{writing[0]}() is refused: {READ_ONLY}")


def _collect_functions(node: Any, tables: set[str], scalars: set[str]) -> None:
    """Names of the table functions and of the other functions in a serialized statement."""
    if isinstance(node, list):
        for item in node:
            _collect_functions(item, tables, scalars)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
        function = node["function"]
        tables.add(str(function.get("function_name", "")).lower())
        _collect_functions(function.get("arguments"), tables, scalars)
        node = {key: value for key, value in node.items() if key != "function"}
    elif node.get("class") == "FUNCTION":
        scalars.add(str(node.get("function_name", "")).lower())
    for value in node.values():
        _collect_functions(value, tables, scalars)


def run_readonly(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    timeout: float | None = None,
    max_rows: int | None = None,
) -> QueryResult:
    """Run read-only `sql` on `cursor` (a cursor of its own) and return the last result.

    Raises ReadOnlyViolation before running anything if a statement could write, and
    QueryLimitExceeded when the statements run longer than `timeout` seconds (they are
    interrupted) or the last one returns more than `max_rows` rows.
    """
    check_readonly(cursor, sql)
    statements = cursor.extract_statements(sql)
    cursor.execute("BEGIN TRANSACTION READ ONLY")
    try:
        with _deadline(cursor, timeout):
            for statement in statements[:-1]:
                cursor.execute(statement.query).fetchall()
            relation = cursor.execute(statements[-1].query)
            description = relation.description or []
            rows = relation.fetchall() if max_rows is None else relation.fetchmany(max_rows + 1)
    except duckdb.Error as error:
        raise QueryFailed(error) from None
    finally:
        cursor.execute("ROLLBACK")
    if max_rows is not None and len(rows) > max_rows:
        raise QueryLimitExceeded(
            f"the result has more than {max_rows:,} rows: add a LIMIT or an aggregate, or "
            "read the snapshot (tidemill query --snapshot)"
        )
    return QueryResult(
        columns=[d[0] for d in description],
        types=[str(d[1]) for d in description],
        rows=rows,
    )


def stream_readonly(con: duckdb.DuckDBPyConnection, sql: str) -> pa.RecordBatchReader:
    """Read-only `sql`'s rows as an Arrow stream, read while `con` stays open (exports:
    no row or time limit). Raises ReadOnlyViolation, QueryFailed."""
    check_readonly(con, sql)
    try:
        return con.execute(sql).to_arrow_reader(8192)
    except duckdb.Error as error:
        raise QueryFailed(error) from None


@contextmanager
def _deadline(cursor: duckdb.DuckDBPyConnection, seconds: float | None) -> Iterator[None]:
    """Interrupt what `cursor` runs inside the block once `seconds` have passed; the
    interruption surfaces as QueryLimitExceeded. No interrupt can land after the block."""
    if seconds is None:
        yield
        return
    ticket = _WATCHDOG.arm(cursor, seconds)
    try:
        yield
    except duckdb.InterruptException:
        if not _WATCHDOG.disarm(ticket):
            raise
        raise QueryLimitExceeded(
            f"the query was stopped after {seconds:g} s: a query may run {seconds:g} s here; "
            "narrow it, or read the snapshot (tidemill query --snapshot)"
        ) from None
    finally:
        _WATCHDOG.disarm(ticket)


class _Watchdog:
    """One daemon thread that interrupts cursors past their deadline (a thread per query
    cost as much CPU as the query). Interrupts happen under the lock `disarm` takes, so
    none lands after it."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}
        self._fired: set[int] = set()
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, cursor: duckdb.DuckDBPyConnection, seconds: float) -> int:
        """Watch `cursor` for `seconds`; returns the ticket to disarm it with."""
        with self._wake:
            ticket = next(self._tickets)
            deadline = time.monotonic() + seconds
            if not self._due or deadline < min(due for due, _ in self._due.values()):
                self._wake.notify()
            self._due[ticket] = (deadline, cursor)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tidemill-query-deadline", daemon=True
                )
                self._thread.start()
        return ticket

    def disarm(self, ticket: int) -> bool:
        """Stop watching; returns whether the cursor was interrupted."""
        with self._wake:
            self._due.pop(ticket, None)
            if ticket in self._fired:
                self._fired.discard(ticket)
                return True
            return False

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for ticket, (deadline, cursor) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[ticket]
                        self._fired.add(ticket)
                        cursor.interrupt()
                next_due = min((due for due, _ in self._due.values()), default=None)
                self._wake.wait(None if next_due is None else next_due - now)


_WATCHDOG = _Watchdog()
