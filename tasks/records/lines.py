"""Text read line by line without trusting it: physical lines (none longer than
MAX_LINE_BYTES held in memory), and the frame of records every format is parsed into
(text fields plus `_line`, `_raw`, `_reject`)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import polars as pl

MAX_FIELD_BYTES = 1 << 20  # one CSV field
MAX_LINE_BYTES = 4 << 20  # one physical line (and one CSV record, however many lines)
MAX_RECORD_LINES = 1000  # physical lines one quoted CSV record may span
PREVIEW_BYTES = 1024  # what a rejected over-long line keeps of its text
META_COLUMNS = ("_line", "_raw", "_reject")

BOM = b"\xef\xbb\xbf"
MAGIC = {  # the first bytes of files that are not text at all
    b"\xff\xfe": "UTF-16 text (byte-order mark FF FE), not UTF-8",
    b"\xfe\xff": "UTF-16 text (byte-order mark FE FF), not UTF-8",
    b"\x1f\x8b": "gzip-compressed; decompress it first",
    b"PK\x03\x04": "a zip archive; extract it first",
    b"PAR1": "Parquet, not text",
}


def empty_records(columns: list[str]) -> pl.DataFrame:
    """A zero-row frame of the parsed shape (text fields + meta columns)."""
    return records_frame(columns, [], [], [], [])


def records_frame(
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


def binary_stream(source: bytes | BinaryIO) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes | bytearray) else source


# ---------------------------------------------------------------- physical lines


@dataclass(frozen=True)
class Line:
    number: int  # from 1
    text: str  # decoded; U+FFFD for bad bytes; a preview when too long
    nbytes: int
    bad_utf8: bool = False
    too_long: bool = False


class Lines:
    """Physical lines of a binary stream (split like bytes.splitlines), never more than
    MAX_LINE_BYTES of one in memory; lines can be pushed back to be read again."""

    def __init__(self, stream: BinaryIO, what: str) -> None:
        self.binary_stream = stream
        self._split: list[bytes] = []  # rest of a chunk holding bare CRs
        self._back: list[Line] = []
        self._number = 0
        first = stream.readline(MAX_LINE_BYTES + 1)
        for magic, kind in MAGIC.items():
            if first.startswith(magic):
                raise ValueError(f"file is {kind} (expected {what})")
        self._split = [first.removeprefix(BOM)] if first else []

    def __iter__(self) -> Iterator[Line]:
        return self

    def push_back(self, lines: list[Line]) -> None:
        self._back.extend(reversed(lines))

    def __next__(self) -> Line:
        if self._back:
            return self._back.pop()
        chunk = (
            self._split.pop(0) if self._split else self.binary_stream.readline(MAX_LINE_BYTES + 1)
        )
        if not chunk:
            raise StopIteration
        self._number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            return self._skip_long(chunk)
        parts = chunk.splitlines(keepends=True)
        if len(parts) > 1:  # bare CR line breaks, as bytes.splitlines splits them
            chunk, self._split = parts[0], parts[1:] + self._split
        try:
            return Line(self._number, chunk.decode("utf-8"), len(chunk))
        except UnicodeDecodeError:
            return Line(self._number, chunk.decode("utf-8", errors="replace"), len(chunk), True)

    def _skip_long(self, head: bytes) -> Line:
        size = len(head)
        while True:  # read to the end of the line, keeping nothing of it
            piece = self.binary_stream.readline(1 << 20)
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        preview = head[:PREVIEW_BYTES].decode("utf-8", errors="replace")
        return Line(self._number, f"{preview}… [{size} bytes]", size, too_long=True)


def too_long(line: Line) -> str:
    return f"line longer than {MAX_LINE_BYTES} bytes ({line.nbytes} bytes)"


# ---------------------------------------------------------------- CSV
