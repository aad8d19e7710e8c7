"""Parquet rows as records of text fields (their raw text is the row as JSON)."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

import polars as pl
from polars.exceptions import PanicException

from tidemill.tasks.records.lines import binary_stream


def parse_parquet(source: bytes | BinaryIO, required: list[str]) -> tuple[list[str], pl.DataFrame]:
    """Parse Parquet; every value becomes text (validated later like CSV fields).

    A value no text stands for (nested, binary that is not UTF-8, a duration) rejects
    its row with the reason; a file Polars cannot read raises ValueError.
    """
    try:
        frame = pl.read_parquet(binary_stream(source))
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
        pl.Series("_raw", raw_json(frame), dtype=pl.Utf8),
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


def raw_json(frame: pl.DataFrame) -> list[str]:
    """Each row as a JSON object (what `raw_text` shows of a Parquet row)."""
    safe = frame.with_columns(
        pl.col(c).map_elements(printable, return_dtype=pl.Utf8)
        for c, t in frame.schema.items()
        if t == pl.Binary or isinstance(t, pl.Duration | pl.Object)
    )
    try:
        raw: list[str] = safe.select(pl.struct(pl.all()).struct.json_encode())[:, 0].to_list()
        return raw
    except (Exception, PanicException):  # a type json_encode cannot write (nested binary)
        return [json.dumps(row, default=str) for row in frame.rows(named=True)]


def printable(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# ---------------------------------------------------------------- dispatch and records
