"""CSV records from a stream of physical lines: a ragged, over-long or unclosed record
rejects itself with a reason, never the rest of the file."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import BinaryIO

import polars as pl

from tidemill.tasks.records.lines import (
    MAX_FIELD_BYTES,
    MAX_LINE_BYTES,
    MAX_RECORD_LINES,
    Line,
    Lines,
    binary_stream,
    empty_records,
    records_frame,
    too_long,
)

_DELIMITERS = (";", "\t", "|")
csv.field_size_limit(MAX_FIELD_BYTES)


class _RecordFailed(Exception):
    """The record being read cannot be completed (a line too long, too many lines)."""


class _CsvFeed:
    """Hands csv.reader one physical line at a time and keeps the lines of the record
    being read (its raw text, its first line number)."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.consumed: list[Line] = []
        self._bytes = 0

    def start_record(self) -> None:
        self.consumed, self._bytes = [], 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.consumed.append(line)
        self._bytes += line.nbytes
        if line.too_long:
            raise _RecordFailed(too_long(line))
        if len(self.consumed) > MAX_RECORD_LINES or self._bytes > MAX_LINE_BYTES:
            raise _RecordFailed(
                f"no closing quote within {MAX_RECORD_LINES} lines or {MAX_LINE_BYTES} bytes"
            )
        return line.text


def _csv_error(error: csv.Error) -> str:
    text = str(error)
    if "field larger than field limit" in text:
        return f"field longer than {MAX_FIELD_BYTES} bytes"
    if text == "unexpected end of data":
        return "unterminated quoted field (end of file reached)"
    if "expected after" in text:
        return f"text after a closing quote ({text})"
    return f"unreadable CSV record: {text}"


def _looks_delimited(text: str) -> str:
    """' (the line looks ';'-delimited)' when one field holds another usual delimiter."""
    found = [d for d in _DELIMITERS if d in text]
    return f" (the line looks {found[0]!r}-delimited)" if found else ""


class CsvRecords:
    """Records of a CSV stream: (first line, fields or None, raw text, reader reason)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.lines = Lines(stream, "CSV")
        self.feed = _CsvFeed(self.lines)
        self.reader = csv.reader(self.feed, strict=True)

    def __iter__(self) -> Iterator[tuple[int, list[str] | None, str, str | None]]:
        while True:
            self.feed.start_record()
            fields: list[str] | None
            try:
                fields, reason = next(self.reader), None
            except StopIteration:
                return
            except csv.Error as error:
                fields, reason = None, _csv_error(error)
            except _RecordFailed as error:
                fields, reason = None, str(error)
            consumed = self.feed.consumed
            if fields is None and len(consumed) > 1 and not consumed[0].too_long:
                # A quote opened on the first line and never closed properly: reject that
                # line alone and read the lines it swallowed again as records of their own.
                self.lines.push_back(consumed[1:])
                consumed = consumed[:1]
                if not reason or not reason.startswith("unterminated"):
                    reason = f"unterminated quoted field ({reason})"
            if not consumed:
                return
            raw = "".join(line.text for line in consumed).rstrip("\r\n")
            if any(line.too_long for line in consumed):
                reason = too_long(next(line for line in consumed if line.too_long))
            elif any(line.bad_utf8 for line in consumed):
                reason = "invalid UTF-8 bytes"
            elif "\x00" in raw:
                reason = "NUL byte in record (binary data?)"
            yield consumed[0].number, fields, raw, reason


def parse_csv(source: bytes | BinaryIO, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse CSV; returns (header, records) with one text column per `required` name.

    Columns of the file that are not required are not kept. A file lacking a required
    column (or naming one twice) yields every record rejected with that reason; when
    its header names none of them, the header line itself is kept as a rejected record
    too, since a file without a header has data there (nothing is silently lost).
    """
    header: list[str] | None = None
    rows: list[list[str | None]] = []
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[str | None] = []
    positions: list[int] = []
    file_reason: str | None = None
    for number, fields, raw, reason in CsvRecords(binary_stream(source)):
        if fields == [] and reason is None:
            continue  # a blank line holds no record
        if header is None:
            if reason is not None or fields is None:
                raise ValueError(f"unreadable CSV header: {reason}")
            header = [h.strip() for h in fields]
            positions = [header.index(c) if c in header else -1 for c in required]
            file_reason = header_reason(header, required)
            if file_reason and file_reason.endswith("line 1 is kept as a record)"):
                rows.append([None] * len(required))
                lines.append(number)
                raws.append(raw)
                rejects.append(file_reason)
            continue
        if reason is None and fields is not None and len(fields) != len(header):
            reason = f"expected {len(header)} fields, found {len(fields)}"
            if len(fields) == 1:
                reason += _looks_delimited(fields[0])
        reason = reason or file_reason
        values: list[str | None] = (
            [None] * len(required) if reason or fields is None else [fields[p] for p in positions]
        )
        rows.append(values)
        lines.append(number)
        raws.append(raw)
        rejects.append(reason)
    if header is None:
        return [], empty_records(required)
    return header, records_frame(required, rows, lines, raws, rejects)


def header_reason(header: list[str], required: list[str]) -> str | None:
    """Why no record of a file with this header can be read, or None."""
    repeated = [c for c in required if header.count(c) > 1]
    if repeated:
        return f"header repeats column(s) {', '.join(repeated)}"
    missing = [c for c in required if c not in header]
    if not missing:
        return None
    reason = f"file lacks column(s) {', '.join(missing)}"
    if len(header) == 1 and _looks_delimited(header[0]):
        return reason + _looks_delimited(header[0]).replace("line", "header")
    unused = [h for h in header if h not in required]
    if len(missing) == len(required):  # a file without a header: line 1 is data
        return reason + " (no header line? line 1 is kept as a record)"
    if unused:
        return reason + f" (unused column(s) in the file: {', '.join(unused)})"
    return reason


# ---------------------------------------------------------------- NDJSON
