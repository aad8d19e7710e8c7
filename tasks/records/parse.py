"""A landing file (bytes or a binary stream) -> a frame of text fields, one row per record.

Readers never trust the input: every record keeps its raw text and line number, and a
record the format cannot make sense of (ragged, bad UTF-8, a line or field too long, a
quote never closed, a JSON line that is not an object, a nested or binary value) becomes
a row with a `_reject` reason instead of an exception. Typing happens later, in
:mod:`tasks.records.validate`, so one bad value rejects one row, never the file. Only a file
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
from typing import Any, BinaryIO

import polars as pl

from tidemill.tasks.records.csv_text import CsvRecords, parse_csv
from tidemill.tasks.records.ndjson import json_record, json_scalar, parse_ndjson
from tidemill.tasks.records.parquet import parse_parquet

PARSERS = {"csv": parse_csv, "ndjson": parse_ndjson, "parquet": parse_parquet}


def parse_records(
    source: bytes | BinaryIO, fmt: str, required: list[str]
) -> tuple[list[str], pl.DataFrame]:
    """Dispatch on the source format; returns (file columns, records)."""
    return PARSERS[fmt](source, required)


# ---------------------------------------------------------------- one record again


def json_object(raw: str) -> dict[str, Any]:
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
        obj = json_object(raw)
        return {
            k: json.dumps(v) if isinstance(v, dict | list) else json_scalar(v)
            for k, v in obj.items()
        }
    records = list(CsvRecords(io.BytesIO(raw.encode() + b"\n")))
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
            fields = json_object(raw) if fmt != "csv" else record_fields(raw, fmt, header, required)
        except ValueError as error:
            if not complete:
                raise ValueError(
                    f"{error}; give every column ({', '.join(required)}) with --set, "
                    "or correct the record in a file (--file)"
                ) from None
    merged = {**fields, **changes}
    if fmt != "csv":  # nested values stay nested: the reader judges them again
        text = json.dumps(merged)
        _, values = json_record(text, required)
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
