"""A landing file (bytes or a binary stream) -> a frame of text fields, one row per record.

Readers never trust the input: every record keeps its raw text and line number, and a
record the format cannot make sense of (ragged, bad UTF-8, a line or field too long, a
quote never closed, a JSON line that is not an object, a nested or binary value) becomes
a row with a `_reject` reason instead of an exception. Typing happens later, in
:mod:`tasks.validate`, so one bad value rejects one row, never the file. Only a file
that cannot be read at all (not UTF-8 text, not Parquet) raises ValueError, and the
caller quarantines it whole.

Text formats are read line by line from a stream: no line longer than `MAX_LINE_BYTES`
is ever held in memory (it is skipped to its end and rejected with a preview), and one
unbalanced quote rejects its own line, not the rest of the file.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import polars as pl
from polars.exceptions import PanicException

MAX_FIELD_BYTES = 1 << 20  # one CSV field
MAX_LINE_BYTES = 4 << 20  # one physical line (and one CSV record, however many lines)
MAX_RECORD_LINES = 1000  # physical lines one quoted CSV record may span
PREVIEW_BYTES = 1024  # what a rejected over-long line keeps of its text
META_COLUMNS = ("_line", "_raw", "_reject")
csv.field_size_limit(MAX_FIELD_BYTES)

_BOM = b"\xef\xbb\xbf"
_MAGIC = {  # the first bytes of files that are not text at all
    b"\xff\xfe": "UTF-16 text (byte-order mark FF FE), not UTF-8",
    b"\xfe\xff": "UTF-16 text (byte-order mark FE FF), not UTF-8",
    b"\x1f\x8b": "gzip-compressed; decompress it first",
    b"PK\x03\x04": "a zip archive; extract it first",
    b"PAR1": "Parquet, not text",
}
_DELIMITERS = (";", "\t", "|")


def empty_records(columns: list[str]) -> pl.DataFrame:
    """A zero-row frame of the parsed shape (text fields + meta columns)."""
    return _records_frame(columns, [], [], [], [])


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


def _stream(source: bytes | BinaryIO) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes | bytearray) else source


# ---------------------------------------------------------------- physical lines


@dataclass(frozen=True)
class _Line:
    number: int  # from 1
    text: str  # decoded; U+FFFD for bad bytes; a preview when too long
    nbytes: int
    bad_utf8: bool = False
    too_long: bool = False


class _Lines:
    """Physical lines of a binary stream (split like bytes.splitlines), never more than
    MAX_LINE_BYTES of one in memory; lines can be pushed back to be read again."""

    def __init__(self, stream: BinaryIO, what: str) -> None:
        self._stream = stream
        self._split: list[bytes] = []  # rest of a chunk holding bare CRs
        self._back: list[_Line] = []
        self._number = 0
        first = stream.readline(MAX_LINE_BYTES + 1)
        for magic, kind in _MAGIC.items():
            if first.startswith(magic):
                raise ValueError(f"file is {kind} (expected {what})")
        self._split = [first.removeprefix(_BOM)] if first else []

    def __iter__(self) -> Iterator[_Line]:
        return self

    def push_back(self, lines: list[_Line]) -> None:
        self._back.extend(reversed(lines))

    def __next__(self) -> _Line:
        if self._back:
            return self._back.pop()
        chunk = self._split.pop(0) if self._split else self._stream.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            raise StopIteration
        self._number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            return self._skip_long(chunk)
        parts = chunk.splitlines(keepends=True)
        if len(parts) > 1:  # bare CR line breaks, as bytes.splitlines splits them
            chunk, self._split = parts[0], parts[1:] + self._split
        try:
            return _Line(self._number, chunk.decode("utf-8"), len(chunk))
        except UnicodeDecodeError:
            return _Line(self._number, chunk.decode("utf-8", errors="replace"), len(chunk), True)

    def _skip_long(self, head: bytes) -> _Line:
        size = len(head)
        while True:  # read to the end of the line, keeping nothing of it
            piece = self._stream.readline(1 << 20)
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        preview = head[:PREVIEW_BYTES].decode("utf-8", errors="replace")
        return _Line(self._number, f"{preview}… [{size} bytes]", size, too_long=True)


def _too_long(line: _Line) -> str:
    return f"line longer than {MAX_LINE_BYTES} bytes ({line.nbytes} bytes)"


# ---------------------------------------------------------------- CSV


class _RecordFailed(Exception):
    """The record being read cannot be completed (a line too long, too many lines)."""


class _CsvFeed:
    """Hands csv.reader one physical line at a time and keeps the lines of the record
    being read (its raw text, its first line number)."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.consumed: list[_Line] = []
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
            raise _RecordFailed(_too_long(line))
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


class _CsvRecords:
    """Records of a CSV stream: (first line, fields or None, raw text, reader reason)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.lines = _Lines(stream, "CSV")
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
                reason = _too_long(next(line for line in consumed if line.too_long))
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
    for number, fields, raw, reason in _CsvRecords(_stream(source)):
        if fields == [] and reason is None:
            continue  # a blank line holds no record
        if header is None:
            if reason is not None or fields is None:
                raise ValueError(f"unreadable CSV header: {reason}")
            header = [h.strip() for h in fields]
            positions = [header.index(c) if c in header else -1 for c in required]
            file_reason = _header_reason(header, required)
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
    return header, _records_frame(required, rows, lines, raws, rejects)


def _header_reason(header: list[str], required: list[str]) -> str | None:
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


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it repeats (json keeps only the last)."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.repeated = [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]
    return obj


def _json_scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise TypeError("nested value")
    return str(value)


def _json_record(text: str, required: list[str]) -> tuple[dict[str, Any], list[str | None]]:
    """(the object, its required values); ValueError says why the line is no record."""
    try:
        obj = json.loads(text, object_pairs_hook=_object)
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    except ValueError as error:
        raise ValueError(f"invalid JSON: {error}") from None
    if not isinstance(obj, dict):
        raise ValueError("JSON line is not an object")
    repeated = getattr(obj, "repeated", [])
    if repeated:
        raise ValueError(f"JSON object repeats field(s) {', '.join(repeated)}")
    absent = [c for c in required if c not in obj]
    if absent:
        raise ValueError(f"record lacks field(s) {', '.join(absent)}")
    nested = [c for c in required if isinstance(obj[c], dict | list)]
    if nested:
        raise ValueError(f"nested value in field(s) {', '.join(nested)}")
    return obj, [_json_scalar(obj[c]) for c in required]


def parse_ndjson(source: bytes | BinaryIO, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse newline-delimited JSON; returns (keys seen, records) like :func:`parse_csv`."""
    rows: list[list[str | None]] = []
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[str | None] = []
    seen: dict[str, None] = {}
    for line in _Lines(_stream(source), "NDJSON"):
        if not line.too_long and not line.text.strip():
            continue
        text = line.text.rstrip("\r\n")
        reason: str | None = None
        values: list[str | None] = [None] * len(required)
        if line.too_long:
            reason = _too_long(line)
        elif line.bad_utf8:
            reason = "invalid UTF-8 bytes"
        else:
            try:
                obj, values = _json_record(text, required)
                seen.update(dict.fromkeys(obj))
            except ValueError as error:
                reason = str(error)
        rows.append(values)
        lines.append(line.number)
        raws.append(text)
        rejects.append(reason)
    return list(seen), _records_frame(required, rows, lines, raws, rejects)


# ---------------------------------------------------------------- Parquet


def parse_parquet(source: bytes | BinaryIO, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse Parquet; every value becomes text (validated later like CSV fields).

    A value no text stands for (nested, binary that is not UTF-8, a duration) rejects
    its row with the reason; a file Polars cannot read raises ValueError.
    """
    try:
        frame = pl.read_parquet(_stream(source))
    except (Exception, PanicException) as error:  # a corrupt file is data, not a crash
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"unreadable Parquet: {type(error).__name__}: {message}") from None
    header = frame.columns
    missing = [c for c in required if c not in header]
    n = frame.height
    texts: dict[str, pl.Series] = {}
    nested: list[pl.Series] = []  # per required nested column: its name where non-null
    problems: list[pl.Series] = []
    for c in required:
        if c in missing:
            texts[c] = pl.Series(c, [None] * n, dtype=pl.Utf8)
        elif frame[c].dtype.is_nested():
            texts[c] = pl.Series(c, [None] * n, dtype=pl.Utf8)
            nested.append(pl.Series(c, [None if v is None else c for v in frame[c].to_list()]))
        else:
            texts[c], problem = _as_text(frame[c])
            if problem is not None:
                problems.append(problem)
    if nested:
        names = pl.DataFrame(nested).select(
            pl.concat_str(pl.all(), separator=", ", ignore_nulls=True).alias("n")
        )["n"]
        problems.insert(
            0,
            pl.Series([f"nested value in field(s) {v}" if v else None for v in names.to_list()]),
        )
    reasons = (
        pl.DataFrame({str(i): p for i, p in enumerate(problems)}).select(
            pl.concat_str(pl.all(), separator="; ", ignore_nulls=True).alias("r")
        )["r"]
        if problems
        else pl.Series([None] * n, dtype=pl.Utf8)
    )
    reject = f"file lacks column(s) {', '.join(missing)}" if missing else None
    out = pl.DataFrame(texts, schema={c: pl.Utf8 for c in required}).with_columns(
        pl.Series("_line", range(1, n + 1), dtype=pl.Int64),
        pl.Series("_raw", _raw_json(frame), dtype=pl.Utf8),
        pl.lit(reject, dtype=pl.Utf8).alias("_reject"),
    )
    if reject is None:
        out = out.with_columns(pl.Series("_reject", reasons, dtype=pl.Utf8).replace("", None))
    for c in required:  # a row with a reason keeps no values, like a ragged CSV line
        out = out.with_columns(
            pl.when(pl.col("_reject").is_null()).then(pl.col(c)).otherwise(None).alias(c)
        )
    return header, out


def _as_text(series: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    """(the values as text, per row the reason a value has none, or None); not for
    nested columns."""
    dtype, name = series.dtype, series.name

    def flag(message: str, bad: list[bool] | None = None) -> pl.Series:
        values = series.to_list()
        marks = bad if bad is not None else [v is not None for v in values]
        return pl.Series(name, [message if m else None for m in marks], dtype=pl.Utf8)

    if dtype == pl.Binary:
        texts: list[str | None] = []
        bad: list[bool] = []
        for value in series.to_list():
            try:
                texts.append(None if value is None else bytes(value).decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                texts.append(None)
                bad.append(True)
        reasons = flag(f"{name} holds bytes that are not UTF-8", bad) if any(bad) else None
        return pl.Series(name, texts, dtype=pl.Utf8), reasons
    if isinstance(dtype, pl.Datetime):
        utc = series.dt.convert_time_zone("UTC") if dtype.time_zone else series
        return utc.dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ"), None
    if dtype == pl.Boolean:
        return series.replace_strict({True: "true", False: "false"}, return_dtype=pl.Utf8), None
    castable = isinstance(dtype, pl.String | pl.Categorical | pl.Enum | pl.Null | pl.Date | pl.Time)
    if dtype.is_numeric() or castable:
        return series.cast(pl.Utf8), None
    return pl.Series(name, [None] * series.len(), dtype=pl.Utf8), flag(
        f"{name} has Parquet type {dtype}, not text, a number or a time"
    )


def _raw_json(frame: pl.DataFrame) -> list[str]:
    """Each row as a JSON object (what `raw_text` shows of a Parquet row)."""
    safe = frame.with_columns(
        pl.col(c).map_elements(_printable, return_dtype=pl.Utf8)
        for c, t in frame.schema.items()
        if t == pl.Binary or isinstance(t, pl.Duration | pl.Object)
    )
    try:
        raw: list[str] = safe.select(pl.struct(pl.all()).struct.json_encode())[:, 0].to_list()
        return raw
    except (Exception, PanicException):  # a type json_encode cannot write (nested binary)
        return [json.dumps(row, default=str) for row in frame.rows(named=True)]


def _printable(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# ---------------------------------------------------------------- dispatch and records


PARSERS = {"csv": parse_csv, "ndjson": parse_ndjson, "parquet": parse_parquet}


def parse_records(
    source: bytes | BinaryIO, fmt: str, required: list[str]
) -> tuple[list[str], pl.DataFrame]:
    """Dispatch on the source format; returns (file columns, records)."""
    return PARSERS[fmt](source, required)


# ---------------------------------------------------------------- one record again


def _json_object(raw: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"invalid JSON: {error}") from None
    if not isinstance(obj, dict):
        raise ValueError("JSON line is not an object")
    return obj


def csv_layout(header: list[str], required: list[str]) -> list[str]:
    """Columns of a re-admitted CSV record corrected in part: its file's header, then the
    required columns that header lacks (so a record of such a file can be completed).
    A record given in full has just the required columns."""
    return [*header, *(c for c in required if c not in header)]


def _csv_line(values: list[str]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(values)
    return text.getvalue().rstrip("\n")


def record_fields(
    raw: str, fmt: str, header: list[str], required: list[str]
) -> dict[str, str | None]:
    """The fields of one record's raw text by column name: a JSON object's fields, or a
    CSV line split by its file's `header`, by :func:`csv_layout`, or by `required` (the
    layouts a re-admitted record may have), whichever has its number of fields.
    ValueError says why the text does not split into fields."""
    if fmt != "csv":
        obj = _json_object(raw)
        return {
            k: json.dumps(v) if isinstance(v, dict | list) else _json_scalar(v)
            for k, v in obj.items()
        }
    records = list(_CsvRecords(io.BytesIO(raw.encode() + b"\n")))
    if len(records) != 1 or records[0][1] is None or records[0][3] is not None:
        reason = records[0][3] if records and records[0][3] else "not one CSV record"
        raise ValueError(reason)
    fields = records[0][1]
    for columns in (header, csv_layout(header, required), required):
        if len(fields) == len(columns):
            return dict(zip(columns, fields, strict=True))
    raise ValueError(f"expected {len(header)} fields, found {len(fields)}")


def amend_record(
    raw: str | None,
    fmt: str,
    header: list[str],
    required: list[str],
    changes: dict[str, str | None],
) -> tuple[list[str | None], str]:
    """A quarantined record with `changes` (column -> text, None for empty) applied:
    (its values of `required`, its new raw text), read back by the same reader that
    read the file. `raw` None: the stored text is not the record (a line too long), so
    `changes` must give every required column. ValueError says what is still wrong."""
    complete = set(required) <= set(changes)
    if raw is None and not complete:
        raise ValueError(
            f"its text was not kept; give every column ({', '.join(required)}) with --set"
        )
    fields: dict[str, Any] = {}
    if raw is not None:
        try:
            fields = (
                _json_object(raw) if fmt != "csv" else record_fields(raw, fmt, header, required)
            )
        except ValueError as error:
            if not complete:
                raise ValueError(
                    f"{error}; give every column ({', '.join(required)}) with --set, "
                    "or correct the record in a file (--file)"
                ) from None
    merged = {**fields, **changes}
    if fmt != "csv":  # nested values stay nested: the reader judges them again
        text = json.dumps(merged)
        _, values = _json_record(text, required)
        return values, text
    layout = list(required) if complete else csv_layout(header, required)
    line = _csv_line([merged.get(c) or "" for c in layout])
    _, records = parse_csv((_csv_line(layout) + "\n" + line + "\n").encode(), required)
    if records.height != 1:
        raise ValueError("the corrected record is not one CSV record")
    reject = records["_reject"][0]
    if reject is not None:
        raise ValueError(str(reject))
    return [records[c][0] for c in required], line
