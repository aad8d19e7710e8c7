"""Finding what is new in a landing folder, and reading it as records.

A file version is identified by (path, size, mtime, SHA-256). What happens to a path
the ledger already knows:

- unchanged: skipped;
- **grown** (the old bytes are an exact prefix of the new ones, e.g. an appended log):
  only the appended records are read (CSV keeps the header recorded for the path);
- **replaced** (anything else): the whole file is read again; keys that were already
  stored are quarantined as duplicates, so nothing is counted twice or lost.

A file modified less than `settle_seconds` ago is left for a later cycle, so a writer
that does not rename atomically is not read half-written (drains pass 0); a file that
changes while it is hashed is left for a later cycle too. Files up to IN_MEMORY_BYTES are
parsed from the very bytes that were hashed; larger ones are streamed from disk (never
held in memory) and hashed again as they are parsed: if the bytes differ, that version
is quarantined whole as changed while read, and the next one is read as a replacement.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import polars as pl
from polars.exceptions import PanicException

from tidemill.tasks.records.parse import parse_records
from tidemill.tasks.records.pii import RawFormat
from tidemill.tasks.records.validate import parse_timestamp
from tidemill.tasks.sources.base import Arrival, Arrived, Known, Ledger, Sample

log = logging.getLogger("tidemill")

CHUNK_BYTES = 1 << 20
IN_MEMORY_BYTES = 16 << 20  # larger files are streamed from disk, twice (hash, parse)
CHANGED_WHILE_READ = "file changed while being read; its next version is read whole"


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK_BYTES):
        yield chunk


def _snapshot(path: str, previous: Known | None) -> Arrival | None:
    """Hash a landing file (keeping its bytes when small); None when it changed while
    being read (its writer is at work: a later cycle reads it, once it holds still)."""
    digest, prefix = hashlib.sha256(), hashlib.sha256()
    prefix_bytes = previous.size_bytes if previous else 0
    held: list[bytes] = []
    size = 0
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        keep = before.st_size <= IN_MEMORY_BYTES
        for chunk in _chunks(handle):
            digest.update(chunk)
            if size < prefix_bytes:
                prefix.update(chunk[: prefix_bytes - size])
            size += len(chunk)
            if keep:
                held.append(chunk)
        after = os.fstat(handle.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
        size != after.st_size
    ):
        log.info("%s changed while being read; it is read once it holds still", path)
        return None
    disposition, offset = "new", 0
    if previous:
        grown = size > previous.size_bytes and prefix.hexdigest() == previous.sha256
        disposition, offset = ("grown", previous.size_bytes) if grown else ("replaced", 0)
    return Arrival(
        path,
        size,
        after.st_mtime_ns,
        digest.hexdigest(),
        disposition,
        offset,
        b"".join(held),
        streamed=not keep,
    )


def landing_paths(pattern: str) -> list[str]:
    """Absolute paths of the files matching `pattern` now."""
    return [os.path.abspath(name) for name in glob.glob(pattern)]


def discover(
    paths: list[str], known: dict[str, Known], settle_seconds: float, now_ns: int
) -> list[Arrival]:
    """Of `paths` (see `landing_paths`), the files that hold something the ledger has not
    read, oldest modification first."""
    arrivals = []
    for path in paths:
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
        try:
            arrival = _snapshot(path, previous)
        except FileNotFoundError:
            continue  # removed meanwhile
        if arrival is None or (previous and previous.sha256 == arrival.sha256):
            continue
        arrivals.append(arrival)
    return sorted(arrivals, key=lambda a: (a.mtime_ns, a.path))


class _Hashed:
    """The first `size` bytes of a file, hashed as they are read."""

    def __init__(self, path: str, size: int) -> None:
        self._file = open(path, "rb", buffering=CHUNK_BYTES)  # noqa: SIM115 (read_arrival closes it)
        self._left = size
        self._digest = hashlib.sha256()

    def _take(self, data: bytes) -> bytes:
        self._left -= len(data)
        self._digest.update(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        cap = self._left if limit < 0 else min(limit, self._left)
        return self._take(self._file.readline(cap)) if cap > 0 else b""

    def read(self, n: int = -1) -> bytes:
        cap = self._left if n < 0 else min(n, self._left)
        return self._take(self._file.read(cap)) if cap > 0 else b""

    def sha256(self) -> str:
        """Digest of all `size` bytes (reading what the parser left)."""
        while self.read(CHUNK_BYTES):
            pass
        return self._digest.hexdigest()

    def close(self) -> None:
        self._file.close()


class _Prefixed:
    """A binary stream that first yields `head`, then the rest of `tail`."""

    def __init__(self, head: bytes, tail: BinaryIO | _Hashed) -> None:
        self._head, self._tail = io.BytesIO(head), tail

    def readline(self, limit: int = -1) -> bytes:
        return self._head.readline(limit) or self._tail.readline(limit)

    def read(self, n: int = -1) -> bytes:
        return self._head.read(n) + self._tail.read(-1 if n < 0 else n)


def _header_line(header: list[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(header)
    return text.getvalue().encode()


def _whole_file(path: str, required: list[str], reason: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            **{c: pl.Series([None], dtype=pl.Utf8) for c in required},
            "_line": [0],
            "_raw": [f"<whole file {os.path.basename(path)}>"],
            "_reject": [reason],
        }
    )


def _parse(
    arrival: Arrival, fmt: str, required: list[str], header: list[str] | None, offset: int
) -> tuple[list[str], pl.DataFrame, int]:
    """(columns, records, line number of the first record's line - 1) of `arrival`."""
    source: BinaryIO | _Hashed = (
        _Hashed(arrival.path, arrival.size_bytes) if arrival.streamed else io.BytesIO(arrival.data)
    )
    try:
        skipped = 0
        for chunk in _read_upto(source, offset):
            skipped += chunk.count(b"\n")
        stream: BinaryIO | _Hashed | _Prefixed = source
        if offset and fmt == "csv" and header:
            skipped -= 1  # the header line is re-supplied
            stream = _Prefixed(_header_line(header), source)
        if fmt == "parquet" and arrival.streamed:  # Parquet needs random access
            stream = io.BytesIO(stream.read())
        columns, records = parse_records(stream, fmt, required)  # type: ignore[arg-type]
        if isinstance(source, _Hashed) and source.sha256() != arrival.sha256:
            return [], _whole_file(arrival.path, required, CHANGED_WHILE_READ), 0
        return columns, records, skipped
    finally:
        if isinstance(source, _Hashed):
            source.close()


def read_arrival(
    arrival: Arrival, fmt: str, required: list[str], header: list[str] | None, event_time: str
) -> tuple[list[str], pl.DataFrame]:
    """Records of `arrival` (only the appended part of a grown file) with `_event_at` for
    ordering. `header` is the CSV header recorded for the path (needed for grown files).

    A file the format cannot read at all yields one rejected record naming the reason;
    nothing a file holds makes this raise (Polars panics included).
    """
    offset = arrival.offset if fmt != "parquet" else 0  # Parquet cannot grow: read it all
    try:
        columns, records, skipped = _parse(arrival, fmt, required, header, offset)
        if offset and records.height and records["_line"][0] != 0:
            records = records.with_columns(pl.col("_line") + skipped)
            columns = header if fmt == "csv" and header else columns
        records = records.with_columns(parse_timestamp(pl.col(event_time)).alias("_event_at"))
    except ValueError as error:
        columns, records = [], _whole_file(arrival.path, required, f"file unreadable: {error}")
    except (Exception, PanicException) as error:  # a reader defect must not stop the pipeline
        log.warning("reading %s failed: %r", arrival.path, error)
        reason = f"file unreadable: {type(error).__name__}: {error}".splitlines()[0]
        columns, records = [], _whole_file(arrival.path, required, reason)
    if "_event_at" not in records.columns:
        records = records.with_columns(pl.lit(None, dtype=pl.Datetime("us")).alias("_event_at"))
    return columns, records


def _read_upto(stream: BinaryIO | _Hashed, n: int) -> Iterator[bytes]:
    while n > 0 and (chunk := stream.read(min(n, CHUNK_BYTES))):
        n -= len(chunk)
        yield chunk


def _parse_file(path: str, fmt: str, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    with open(path, "rb", buffering=CHUNK_BYTES) as handle:
        return parse_records(handle, fmt, required)


def header_of(path: str, fmt: str) -> list[str]:
    """Column names of a landing file (used to resolve `features` when the config omits
    them). Raises ValueError naming the file when it cannot be read."""
    try:
        columns, _ = _parse_file(path, fmt, [])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return columns


def column_values(paths: list[str], fmt: str, column: str) -> pl.Series:
    """Every value of `column` in the readable records of `paths` (text)."""
    values = []
    for path in paths:
        try:
            _, records = _parse_file(path, fmt, [column])
        except ValueError:
            continue
        values.append(records.filter(pl.col("_reject").is_null())[column])
    return pl.concat(values) if values else pl.Series(column, [], dtype=pl.Utf8)


@dataclass(frozen=True)
class LandingFiles:
    """A landing folder (a `Source`): every file matching `pattern` is read once, a grown
    one only for what was appended (see the module docstring)."""

    pattern: str
    format: str  # csv | parquet | ndjson
    settle_seconds: float
    columns: list[str]  # the pipeline's declared columns
    event_time: str
    pulled: bool = False

    @property
    def label(self) -> str:
        """The landing glob."""
        return self.pattern

    @property
    def raw_format(self) -> RawFormat:
        """CSV lines stay CSV; ndjson lines and Parquet rows are kept as JSON objects."""
        return "csv" if self.format == "csv" else "json"

    @property
    def record_format(self) -> str:
        """The files' own format."""
        return self.format

    def read_new(self, ledger: Ledger, *, drain: bool) -> Iterator[Arrived]:
        """Every landing file version the ledger has not read, oldest first; a drain does
        not wait for files to settle."""
        paths = landing_paths(self.pattern)
        known = ledger.versions(paths)
        headers = ledger.headers(paths)
        settle = 0.0 if drain else self.settle_seconds
        for arrival in discover(paths, known, settle, time.time_ns()):
            header, records = read_arrival(
                arrival, self.format, self.columns, headers.get(arrival.path), self.event_time
            )
            yield Arrived(records, file=arrival, header=tuple(header))

    def read_window(self, start: datetime, end: datetime) -> Iterator[Arrived]:
        """Every landing file read whole, its records with event time in [start, end)."""
        inside = (pl.col("_event_at") >= start) & (pl.col("_event_at") < end)
        for path in sorted(glob.glob(self.pattern)):
            with open(path, "rb") as handle:
                data = handle.read()
            arrival = Arrival(path, len(data), 0, "", "backfill", 0, data)
            header, records = read_arrival(
                arrival, self.format, self.columns, None, self.event_time
            )
            records = records.with_columns(pl.lit(path).alias("_file")).filter(inside)
            yield Arrived(records, header=tuple(header))

    def sample(self, target: str | None) -> Sample | None:
        """The first landing file's columns and every file's `target` values; None while
        the folder is empty."""
        files = sorted(glob.glob(self.pattern))
        if not files:
            return None
        values = column_values(files, self.format, target) if target is not None else None
        return Sample(columns=header_of(files[0], self.format), target_values=values)
