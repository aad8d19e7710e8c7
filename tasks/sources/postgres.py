"""Reading a PostgreSQL table incrementally by a cursor column, as records.

Like dlt's incremental loading: a read takes the rows whose cursor is >= the last cursor
value read (INCLUSIVE) and skips those at exactly that value whose key was already read,
ordered by (cursor, key) and at most `limit` of them. So rows written later with the same
cursor value as the last read's maximum (same timestamp, or a read cut off by `limit` in
the middle of one value) are neither missed nor read twice. Rows whose cursor is NULL are
never read.

A row whose cursor moves forward (an update) is read again; its key then repeats one
already stored, and validation quarantines it: updates are not merged.

Values become the text the CSV reader would hold: timestamps ISO-8601 UTC with `Z`
(a `timestamp` without time zone is taken as UTC), dates `YYYY-MM-DD`, booleans
`true`/`false`, numbers via `str`, NULL -> null. A row holding a value that has no text
form (JSON objects, arrays, binary, out-of-range timestamps) becomes a record with a
`_reject` reason, never an exception. `_line` is a stable number derived from the key, so
the same row is recognised across reads (backfills use it); `_raw` is the row as JSON.

The conversion (rows.py: `records_from_rows`, `next_position`) is pure; only
:func:`read_since` and :func:`read_window` talk to the server (psycopg 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from tidemill.errors import first_line
from tidemill.tasks.records.pii import RawFormat
from tidemill.tasks.sources.base import (
    Arrived,
    CursorMove,
    CursorPosition,
    Ledger,
    Sample,
    SourceError,
)
from tidemill.tasks.sources.rows import Read, Unreadable, next_position, records_from_rows

CONNECT_TIMEOUT_SECONDS = 5
_TIMESTAMP_OIDS = {1082, 1114, 1184}  # date, timestamp, timestamptz


def _quoted(name: str) -> Any:
    from psycopg import sql

    return sql.Identifier(*name.split("."))


def _connect(dsn: str, table: str) -> Any:
    """A read-only connection in UTC whose date/time values never fail to load."""
    import psycopg
    from psycopg.types import datetime as pgdt

    try:
        con = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.Error as error:
        raise SourceError(f"postgres:{table}: cannot connect: {first_line(error)}") from None
    con.read_only = True
    con.execute("SET TimeZone TO 'UTC'")
    con.execute("SET DateStyle TO 'ISO, YMD'")
    for name, base in (
        ("timestamptz", pgdt.TimestamptzLoader),
        ("timestamp", pgdt.TimestampLoader),
        ("date", pgdt.DateLoader),
    ):
        con.adapters.register_loader(name, _lenient(base, name))
    return con


def _lenient(base: Any, type_name: str) -> type:
    import psycopg

    def load(self: Any, data: Any) -> Any:
        try:
            return base.load(self, data)
        except psycopg.DataError:
            return Unreadable(bytes(data).decode(errors="replace"), type_name)

    return type(f"Lenient{base.__name__}", (base,), {"load": load})


def _select(
    con: Any, query: Any, params: dict[str, object], table: str
) -> tuple[list[Any], list[Any]]:
    import psycopg

    try:
        with con.cursor() as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
            return rows, list(cur.description or [])
    except psycopg.Error as error:
        raise SourceError(f"postgres:{table}: cannot read: {first_line(error)}") from None


def read_since(
    dsn: str,
    table: str,
    cursor: str,
    key: str,
    columns: list[str],
    position: CursorPosition,
    limit: int,
    event_time: str,
    label: str,
) -> Read:
    """At most `limit` rows of `table` after `position` (see module docstring), as
    records, with the position after them. Raises SourceError (one line)."""
    from psycopg import sql

    c, k = sql.Identifier(cursor), sql.Identifier(key)
    key_text = sql.SQL("coalesce({}::text, '')").format(k)
    after: Any = sql.SQL("")
    at_last: Any = sql.SQL("false")
    params: dict[str, object] = {"limit": limit}
    if position.last_value is not None:
        after = sql.SQL(
            " AND {c} >= %(last)s AND NOT ({c} = %(last)s AND {kt} = ANY(%(seen)s::text[]))"
        ).format(c=c, kt=key_text)
        at_last = sql.SQL("{} = %(last)s").format(c)
        params.update(last=position.last_value, seen=list(position.keys_at_last))
    query = sql.SQL(
        "SELECT {cols}, {c}, {c}::text, {kt}, {at_last} FROM {table} AS _t "
        "WHERE {c} IS NOT NULL{after} ORDER BY _t.{c}, _t.{k} LIMIT %(limit)s"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(n) for n in columns),
        c=c,
        k=k,
        kt=key_text,
        at_last=at_last,
        table=_quoted(table),
        after=after,
    )
    with _connect(dsn, table) as con:
        rows, _ = _select(con, query, params, table)
    n = len(columns)
    keys = [r[n + 2] for r in rows]
    records = records_from_rows(columns, [r[:n] for r in rows], keys, label, event_time)
    moved = next_position(
        position,
        [r[n] for r in rows],
        [r[n + 1] for r in rows],
        keys,
        [bool(r[n + 3]) for r in rows],
    )
    return Read(records=records, position=moved)


def read_window(
    dsn: str,
    table: str,
    key: str,
    columns: list[str],
    event_time: str,
    start: datetime,
    end: datetime,
    label: str,
) -> pl.DataFrame:
    """Every row of `table` with event time in [start, end) (naive = UTC), as records,
    ignoring the cursor. A date/time event column is filtered by the server; any other
    (text, epoch numbers) is filtered here after parsing, like landing files."""
    from psycopg import sql

    e, k = sql.Identifier(event_time), sql.Identifier(key)
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in columns)
    source = _quoted(table)
    with _connect(dsn, table) as con:
        _, description = _select(
            con,
            sql.SQL("SELECT {} FROM {} LIMIT 0").format(e, source),
            {},
            table,
        )
        by_server = description[0].type_code in _TIMESTAMP_OIDS
        where = sql.SQL(" WHERE {e} >= %(start)s AND {e} < %(end)s").format(e=e)
        query = sql.SQL(
            "SELECT {cols}, coalesce({k}::text, '') FROM {t} AS _t{w} ORDER BY _t.{e}, _t.{k}"
        )
        rows, _ = _select(
            con,
            query.format(cols=cols, k=k, t=source, w=where if by_server else sql.SQL(""), e=e),
            {"start": _utc(start), "end": _utc(end)},
            table,
        )
    n = len(columns)
    records = records_from_rows(
        columns, [r[:n] for r in rows], [r[n] for r in rows], label, event_time
    )
    inside = (pl.col("_event_at") >= start.replace(tzinfo=None)) & (
        pl.col("_event_at") < end.replace(tzinfo=None)
    )
    return records.filter(inside)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class PostgresTable:
    """A PostgreSQL table read incrementally by a cursor column (a `Source`): bounded
    pulls after the recorded position, de-duplicated on the key at the last value."""

    dsn: str
    table: str
    cursor: str
    key: str
    columns: list[str]
    event_time: str
    label: str
    read_rows: int
    raw_format: RawFormat = "json"
    record_format: str = "ndjson"
    pulled: bool = True

    def read_new(self, ledger: Ledger, *, drain: bool) -> Iterator[Arrived]:
        """The next at most `read_rows` rows after the recorded position, with the
        position after them."""
        at = ledger.position(self.label, self.cursor)
        read = read_since(
            self.dsn,
            self.table,
            self.cursor,
            self.key,
            self.columns,
            at,
            self.read_rows,
            self.event_time,
            self.label,
        )
        if read.records.height:
            yield Arrived(read.records, cursor=CursorMove(self.label, self.cursor, read.position))

    def read_window(self, start: datetime, end: datetime) -> Iterator[Arrived]:
        """Every row with event time in [start, end), whatever the cursor says."""
        yield Arrived(
            read_window(
                self.dsn,
                self.table,
                self.key,
                self.columns,
                self.event_time,
                start,
                end,
                self.label,
            )
        )

    def sample(self, target: str | None) -> Sample | None:
        """Nothing to infer from: a table pipeline declares its columns and classes."""
        return Sample(columns=[], target_values=None)
