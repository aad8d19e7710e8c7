"""Finding what is new in a landing folder, and reading it as records.

A file version is identified by (path, size, mtime, SHA-256). What happens to a path
the ledger already knows:

- unchanged: skipped;
- **grown** (the old bytes are an exact prefix of the new ones, e.g. an appended log):
  only the appended records are read (CSV keeps the header recorded for the path);
- **replaced** (anything else): the whole file is read again; keys that were already
  stored are quarantined as duplicates, so nothing is counted twice or lost.

A file modified less than `settle_seconds` ago is left for a later cycle, so a writer
that does not rename atomically is not read half-written (drains pass 0).
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from tasks.parse import parse_records
from tasks.validate import parse_timestamp


@dataclass(frozen=True)
class Arrival:
    """A landing file version to read: which bytes, and why."""

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str
    disposition: str  # new | grown | replaced
    offset: int  # bytes already read (grown files), else 0
    data: bytes = field(repr=False, default=b"")  # the bytes hashed, read once


@dataclass(frozen=True)
class Known:
    """What the ledger holds for a path."""

    size_bytes: int
    mtime_ns: int
    sha256: str


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def discover(
    pattern: str, known: dict[str, Known], settle_seconds: float, now_ns: int
) -> list[Arrival]:
    """Landing files matching `pattern` that hold something the ledger has not read,
    oldest modification first."""
    arrivals = []
    for name in glob.glob(pattern):
        path = os.path.abspath(name)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue  # removed between glob and stat
        if not os.path.isfile(path):
            continue
        if now_ns - stat.st_mtime_ns < settle_seconds * 1e9:
            continue
        previous = known.get(path)
        if previous and (previous.size_bytes, previous.mtime_ns) == (
            stat.st_size,
            stat.st_mtime_ns,
        ):
            continue
        data = Path(path).read_bytes()
        digest = _sha256(data)
        if previous and previous.sha256 == digest:
            continue
        disposition, offset = "new", 0
        if previous:
            prefix = data[: previous.size_bytes]
            grown = len(data) > previous.size_bytes and _sha256(prefix) == previous.sha256
            disposition, offset = ("grown", previous.size_bytes) if grown else ("replaced", 0)
        arrivals.append(
            Arrival(path, len(data), stat.st_mtime_ns, digest, disposition, offset, data)
        )
    return sorted(arrivals, key=lambda a: (a.mtime_ns, a.path))


def read_arrival(
    arrival: Arrival, fmt: str, required: list[str], header: list[str] | None, event_time: str
) -> tuple[list[str], pl.DataFrame]:
    """Records of `arrival` (only the appended part of a grown file) with `_event_at` for
    ordering. `header` is the CSV header recorded for the path (needed for grown files).

    A file the format cannot read at all yields one rejected record naming the reason.
    """
    data = arrival.data
    first_line = 1
    if arrival.offset:
        first_line += data[: arrival.offset].count(b"\n")
        tail = data[arrival.offset :]
        if fmt == "csv" and header:
            first_line -= 1  # the header line is re-supplied below
            data = (",".join(header) + "\n").encode() + tail
        else:
            data = tail
    try:
        columns, records = parse_records(data, fmt, required)
    except ValueError as error:
        columns = []
        records = pl.DataFrame(
            {
                **{c: pl.Series([None], dtype=pl.Utf8) for c in required},
                "_line": [0],
                "_raw": [f"<whole file {os.path.basename(arrival.path)}>"],
                "_reject": [f"file unreadable: {error}"],
            }
        )
    if arrival.offset:
        records = records.with_columns(pl.col("_line") + (first_line - 1))
    if fmt == "csv" and arrival.offset and header:
        columns = header
    return columns, records.with_columns(parse_timestamp(pl.col(event_time)).alias("_event_at"))


def header_of(path: str, fmt: str) -> list[str]:
    """Column names of a landing file (used to resolve `features` when the config omits
    them)."""
    data = Path(path).read_bytes()
    columns, _ = parse_records(data, fmt, [])
    return columns


def column_values(paths: list[str], fmt: str, column: str) -> pl.Series:
    """Every value of `column` in the readable records of `paths` (text)."""
    values = []
    for path in paths:
        try:
            _, records = parse_records(Path(path).read_bytes(), fmt, [column])
        except ValueError:
            continue
        values.append(records.filter(pl.col("_reject").is_null())[column])
    return pl.concat(values) if values else pl.Series(column, [], dtype=pl.Utf8)
