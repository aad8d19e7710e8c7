"""What every source offers the engine: read what is new, read a window again, and say how
its records' raw text splits into fields.

A source never writes the warehouse (tasks/ knows no DuckDB). What the warehouse knows of
a source comes in through a `Ledger`, and each read comes out as an `Arrived`: the records
and what the warehouse records with them in the same transaction (the file version read,
or the cursor's new position). `read_new` is a generator: it resumes only after the engine
has committed what it yielded, so a source can confirm a read to its server then (Redis
acknowledges entries only once they are stored) and never before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import polars as pl

from tidemill.errors import TidemillError
from tidemill.tasks.records.pii import RawFormat


class SourceError(TidemillError, RuntimeError):
    """A source that cannot be read (server down, no such table, a stream asked for a
    window): one line naming the source. Nothing is stored; the next cycle tries again."""


@dataclass(frozen=True)
class Arrival:
    """A landing file version to read: which bytes, and why. `data` holds the bytes that
    were hashed; a file larger than IN_MEMORY_BYTES is `streamed` from disk instead."""

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str
    disposition: str  # new | grown | replaced
    offset: int  # bytes already read (grown files), else 0
    data: bytes = field(repr=False, default=b"")  # the bytes hashed, read once
    streamed: bool = False


@dataclass(frozen=True)
class Known:
    """What the ledger holds for a path."""

    size_bytes: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class CursorPosition:
    """How far a pulled source has been read: the last cursor value (a table: PostgreSQL's
    own text of it; a stream: the last entry id) and the keys read at exactly that value
    (a stream: every id the read took, acknowledged by the next read)."""

    last_value: str | None = None
    keys_at_last: tuple[str, ...] = ()


@dataclass(frozen=True)
class CursorMove:
    """Where a pulled read leaves a source's cursor (`_cursors`: source, column, position)."""

    source: str
    column: str
    position: CursorPosition


@dataclass(frozen=True)
class Arrived:
    """One read: the records (declared text columns, `_line`, `_raw`, `_reject`,
    `_event_at`, and `_file` for pulled sources) and what the warehouse records with them
    in one transaction: the landing file version (`file`, with its `header`) or the
    cursor's move (`cursor`)."""

    records: pl.DataFrame
    file: Arrival | None = None
    header: tuple[str, ...] = ()
    cursor: CursorMove | None = None


@dataclass(frozen=True)
class Sample:
    """What a source holds now, for a pipeline whose config leaves features or classes
    out: column names, and the target's values (text) when asked for."""

    columns: list[str]
    target_values: pl.Series | None


class Ledger(Protocol):
    """What the warehouse knows of a pipeline's source (the engine implements it)."""

    def versions(self, paths: list[str]) -> dict[str, Known]:
        """The file versions already read, of `paths`."""
        ...

    def headers(self, paths: list[str]) -> dict[str, list[str]]:
        """The CSV header recorded for each of `paths` (appended parts have none)."""
        ...

    def position(self, source: str, column: str) -> CursorPosition:
        """How far a pulled source has been read."""
        ...


class Source(Protocol):
    """A pipeline's source: landing files, a PostgreSQL table or a Redis stream."""

    @property
    def label(self) -> str:
        """How records name where they came from (`_file` of a pulled source) and errors
        name the source."""
        ...

    @property
    def raw_format(self) -> RawFormat:
        """How a stored record's `_raw` text splits into fields."""
        ...

    @property
    def record_format(self) -> str:
        """The format `records.parse.record_fields` splits a stored `_raw` with."""
        ...

    @property
    def pulled(self) -> bool:
        """True: read in bounded pulls, only while the inbox holds less than a batch
        (tables, streams). False: everything new is read as it lands (files)."""
        ...

    def read_new(self, ledger: Ledger, *, drain: bool) -> Iterator[Arrived]:
        """What arrived since the ledger's last read, one committable read at a time (a
        drain does not wait for landing files to settle)."""
        ...

    def read_window(self, start: datetime, end: datetime) -> Iterator[Arrived]:
        """Every record with event time in [start, end), with `_file`, whatever was read
        before (a backfill). Raises SourceError when the source cannot look back."""
        ...

    def sample(self, target: str | None) -> Sample | None:
        """The columns (and `target`'s values) the source holds now; None while nothing
        has arrived to tell them from."""
        ...
