"""Bytes of a landing file -> a frame of text fields, one row per record.

Readers never trust the input: every record keeps its raw text and line number, and a
record the format cannot make sense of (ragged, bad UTF-8, a field too large, a JSON
line that is not an object) becomes a row with a `_reject` reason instead of an
exception. Typing happens later, in :mod:`tasks.validate`, so one bad value rejects
one row, never the file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import polars as pl

MAX_FIELD_BYTES = 1 << 20
META_COLUMNS = ("_line", "_raw", "_reject")
csv.field_size_limit(MAX_FIELD_BYTES)


def empty_records(columns: list[str]) -> pl.DataFrame:
    """A zero-row frame of the parsed shape (text fields + meta columns)."""
    schema: dict[str, Any] = {c: pl.Utf8 for c in columns}
    schema.update({"_line": pl.Int64, "_raw": pl.Utf8, "_reject": pl.Utf8})
    return pl.DataFrame(schema=schema)


def _records_frame(
    columns: list[str],
    rows: list[list[str | None]],
    lines: list[int],
    raws: list[str],
    rejects: list[str | None],
) -> pl.DataFrame:
    data: dict[str, list[Any]] = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    data.update({"_line": lines, "_raw": raws, "_reject": rejects})
    schema: dict[str, Any] = {c: pl.Utf8 for c in columns}
    schema.update({"_line": pl.Int64, "_raw": pl.Utf8, "_reject": pl.Utf8})
    return pl.DataFrame(data, schema=schema)


def _strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


class _LineFeed:
    """Feeds decoded physical lines to csv.reader and remembers which ones it consumed."""

    def __init__(self, data: bytes) -> None:
        self._lines = data.splitlines(keepends=True)
        self._next = 0
        self.consumed: list[str] = []
        self.bad_utf8 = False
        self.first_line = 1

    def start_record(self) -> None:
        self.consumed = []
        self.bad_utf8 = False
        self.first_line = self._next + 1

    def __iter__(self) -> Iterator[str]:
        while self._next < len(self._lines):
            raw = self._lines[self._next]
            self._next += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                self.bad_utf8 = True
            self.consumed.append(text)
            yield text


def parse_csv(data: bytes, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse CSV bytes; returns (header, records) with one text column per `required` name.

    Columns of the file that are not required are not kept. A file lacking a required
    column yields every record rejected with that reason (nothing is silently lost).
    """
    feed = _LineFeed(_strip_bom(data))
    reader = csv.reader(iter(feed))
    header: list[str] | None = None
    rows: list[list[str | None]] = []
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[str | None] = []
    positions: list[int] = []
    missing: list[str] = []
    while True:
        feed.start_record()
        reason: str | None = None
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            fields, reason = [], f"unreadable CSV record: {error}"
        raw = "".join(feed.consumed).rstrip("\r\n")
        if feed.bad_utf8:
            reason = "invalid UTF-8 bytes"
        if not fields and reason is None:
            continue  # a blank line holds no record
        if header is None:
            if reason is not None:
                raise ValueError(f"unreadable CSV header: {reason}")
            header = [h.strip() for h in fields]
            positions = [header.index(c) if c in header else -1 for c in required]
            missing = [c for c, p in zip(required, positions, strict=True) if p < 0]
            continue
        if reason is None and len(fields) != len(header):
            reason = f"expected {len(header)} fields, found {len(fields)}"
        if reason is None and missing:
            reason = f"file lacks column(s) {', '.join(missing)}"
        values: list[str | None] = (
            [None] * len(required) if reason else [fields[p] for p in positions]
        )
        rows.append(values)
        lines.append(feed.first_line)
        raws.append(raw)
        rejects.append(reason)
    if header is None:
        return [], empty_records(required)
    return header, _records_frame(required, rows, lines, raws, rejects)


def _json_scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise TypeError("nested value")
    return str(value)


def parse_ndjson(data: bytes, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse newline-delimited JSON; returns (keys seen, records) like :func:`parse_csv`."""
    rows: list[list[str | None]] = []
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[str | None] = []
    seen: dict[str, None] = {}
    for number, raw_line in enumerate(_strip_bom(data).splitlines(), start=1):
        if not raw_line.strip():
            continue
        reason: str | None = None
        values: list[str | None] = [None] * len(required)
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            text, reason = raw_line.decode("utf-8", errors="replace"), "invalid UTF-8 bytes"
        if reason is None:
            try:
                obj = json.loads(text)
            except ValueError as error:
                obj, reason = None, f"invalid JSON: {error}"
            if reason is None and not isinstance(obj, dict):
                reason = "JSON line is not an object"
            if reason is None:
                assert isinstance(obj, dict)
                seen.update(dict.fromkeys(obj))
                absent = [c for c in required if c not in obj]
                if absent:
                    reason = f"record lacks field(s) {', '.join(absent)}"
                else:
                    try:
                        values = [_json_scalar(obj[c]) for c in required]
                    except TypeError:
                        nested = [c for c in required if isinstance(obj[c], dict | list)]
                        reason = f"nested value in field(s) {', '.join(nested)}"
        rows.append(values)
        lines.append(number)
        raws.append(text)
        rejects.append(reason)
    return list(seen), _records_frame(required, rows, lines, raws, rejects)


def parse_parquet(data: bytes, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse Parquet bytes; every value becomes text (validated later like CSV fields)."""
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as error:  # a corrupt file is data, not a crash
        raise ValueError(f"unreadable Parquet: {error}") from None
    header = frame.columns
    missing = [c for c in required if c not in header]
    n = frame.height
    raw = frame.select(pl.struct(pl.all()).struct.json_encode().alias("_raw"))["_raw"]
    out = pl.DataFrame(
        {
            c: (pl.Series(c, [None] * n, dtype=pl.Utf8) if c in missing else _as_text(frame[c]))
            for c in required
        }
    )
    reject = f"file lacks column(s) {', '.join(missing)}" if missing else None
    return header, out.with_columns(
        pl.Series("_line", range(1, n + 1), dtype=pl.Int64),
        raw,
        pl.lit(reject, dtype=pl.Utf8).alias("_reject"),
    )


def _as_text(series: pl.Series) -> pl.Series:
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        utc = series.dt.convert_time_zone("UTC") if dtype.time_zone else series
        return utc.dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
    if dtype == pl.Boolean:
        return series.replace_strict({True: "true", False: "false"}, return_dtype=pl.Utf8)
    if dtype.is_nested():
        return series.cast(pl.Utf8, strict=False)
    return series.cast(pl.Utf8)


PARSERS = {"csv": parse_csv, "ndjson": parse_ndjson, "parquet": parse_parquet}


def parse_records(data: bytes, fmt: str, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Dispatch on the source format; returns (file columns, records)."""
    return PARSERS[fmt](data, required)
