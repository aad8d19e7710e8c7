"""NDJSON records: every line one JSON object of scalars; anything else is a rejected
record with a reason."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, BinaryIO

import polars as pl

from tidemill.tasks.records.lines import Lines, binary_stream, records_frame, too_long


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it repeats (json keeps only the last)."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.repeated = [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]
    return obj


def json_scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise TypeError("nested value")
    return str(value)


def json_record(text: str, required: list[str]) -> tuple[dict[str, Any], list[str | None]]:
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
    return obj, [json_scalar(obj[c]) for c in required]


def parse_ndjson(source: bytes | BinaryIO, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse newline-delimited JSON; returns (keys seen, records) like :func:`parse_csv`."""
    rows: list[list[str | None]] = []
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[str | None] = []
    seen: dict[str, None] = {}
    for line in Lines(binary_stream(source), "NDJSON"):
        if not line.too_long and not line.text.strip():
            continue
        text = line.text.rstrip("\r\n")
        reason: str | None = None
        values: list[str | None] = [None] * len(required)
        if line.too_long:
            reason = too_long(line)
        elif line.bad_utf8:
            reason = "invalid UTF-8 bytes"
        else:
            try:
                obj, values = json_record(text, required)
                seen.update(dict.fromkeys(obj))
            except ValueError as error:
                reason = str(error)
        rows.append(values)
        lines.append(line.number)
        raws.append(text)
        rejects.append(reason)
    return list(seen), records_frame(required, rows, lines, raws, rejects)


# ---------------------------------------------------------------- Parquet
