"""Rows of a table (or entries of a stream) as records: every value as the text the CSV
reader would hold, a stable line number from the key, the raw row as JSON, and the cursor
position after a read. Pure: no connection (postgres.py and redis_stream.py read)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import polars as pl

from tidemill.tasks.records.validate import parse_timestamp
from tidemill.tasks.sources.base import CursorPosition

_TEXT_LIKE: tuple[type, ...] = (
    UUID,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)


@dataclass(frozen=True)
class Unreadable:
    """A value the driver could not turn into a Python object (e.g. timestamp 'infinity',
    a year past 9999): its text as the server sent it."""

    text: str
    type_name: str


@dataclass(frozen=True)
class Read:
    """One incremental read: its records and the position after it."""

    records: pl.DataFrame
    position: CursorPosition


# ----------------------------------------------------------------- pure conversion


class _NoText(ValueError):
    """A value that has no text form; the message says what it is."""


def value_text(value: object) -> str | None:
    """The text a CSV field would hold for a fetched value (None for NULL).

    Raises _NoText for values with no scalar text form.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo else value
        fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
        return f"{utc:%Y-%m-%dT%H:%M:%S}{fraction}Z"
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value.total_seconds())
    if isinstance(value, _TEXT_LIKE):
        return str(value)
    if isinstance(value, Unreadable):
        raise _NoText(f"'{value.text}' is not a readable {value.type_name}")
    if isinstance(value, dict | list | tuple):
        raise _NoText("is a nested value")
    if isinstance(value, bytes | bytearray | memoryview):
        raise _NoText("is binary")
    raise _NoText(f"has no text form ({type(value).__name__})")


def _raw_value(value: object) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, Unreadable):
        return value.text
    try:
        return value_text(value)
    except _NoText:
        return value  # dict/list: json.dumps shows it; anything else via default=str


def row_line(key_text: str | None) -> int:
    """A stable positive 63-bit number for a key: the row's `_line` in every read."""
    digest = hashlib.blake2b((key_text or "").encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def records_from_rows(
    columns: list[str],
    rows: Sequence[Sequence[object]],
    key_texts: Sequence[str | None],
    label: str,
    event_time: str,
) -> pl.DataFrame:
    """Fetched rows (values in `columns` order) -> records shaped like a landing file's:
    one text column per name in `columns`, `_line` (from `key_texts`), `_raw` (the row as
    JSON), `_reject`, `_event_at` and `_file` = `label`. A row with any value that has no
    text form is rejected whole, naming every such column."""
    texts: list[list[str | None]] = []
    raws: list[str] = []
    rejects: list[str | None] = []
    for row in rows:
        values: list[str | None] = []
        problems = []
        for name, value in zip(columns, row, strict=True):
            try:
                values.append(value_text(value))
            except _NoText as error:
                values.append(None)
                problems.append(f"{name} {error}")
        texts.append([None] * len(columns) if problems else values)
        rejects.append("; ".join(problems) if problems else None)
        raw = {name: _raw_value(value) for name, value in zip(columns, row, strict=True)}
        raws.append(json.dumps(raw, default=str, ensure_ascii=False))
    data: dict[str, Any] = {c: [t[i] for t in texts] for i, c in enumerate(columns)}
    data.update(
        {
            "_line": [row_line(k) for k in key_texts],
            "_raw": raws,
            "_reject": rejects,
        }
    )
    schema: dict[str, Any] = {c: pl.Utf8 for c in columns}
    schema.update({"_line": pl.Int64, "_raw": pl.Utf8, "_reject": pl.Utf8})
    frame = pl.DataFrame(data, schema=schema)
    return frame.with_columns(
        parse_timestamp(pl.col(event_time)).alias("_event_at"),
        pl.lit(label, dtype=pl.Utf8).alias("_file"),
    )


def next_position(
    position: CursorPosition,
    cursor_values: Sequence[object],
    cursor_texts: Sequence[str],
    key_texts: Sequence[str],
    at_last: Sequence[bool],
) -> CursorPosition:
    """The position after a read of rows ordered by (cursor, key): the greatest cursor
    value read, with the keys read at it (added to those already recorded when it is the
    value the read started from). `at_last[i]` says the server found row i's cursor equal
    to `position.last_value`; values are compared as the driver's objects, so numerics of
    different scale (1.0, 1.00) count as one value."""
    if not cursor_values:
        return position
    top = cursor_values[-1]
    keys = [k for v, k in zip(cursor_values, key_texts, strict=True) if v == top]
    if at_last[-1]:
        merged = dict.fromkeys([*position.keys_at_last, *keys])
        return CursorPosition(position.last_value, tuple(merged))
    return CursorPosition(cursor_texts[-1], tuple(dict.fromkeys(keys)))
