"""Text records -> typed rows that passed every check, and rejects with their reasons.

Pure Polars. A row is rejected when any of its declared values does not parse as the
declared type, a number is not finite or beyond ±1e100, a required field is empty, its
event time is out of range, or its key repeats one of a valid row seen earlier (in this
batch or, via `known_keys`, in the warehouse). Every reason of a row is kept (joined
with "; ") so a person can fix all of them at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from tidemill.config.pipeline import PipelineConfig

_TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)
_EPOCH_MS_ABOVE = 1e11  # a number this large is milliseconds, not seconds
# Running moments square every value and sum the squares: beyond this they overflow to
# inf and scikit-learn stops the batch ("Floating-point under-/overflow"), for good.
MAX_ABS_NUMBER = 1e100
EARLIEST = datetime(1970, 1, 1)
FUTURE_SLACK = timedelta(days=1)
_TRUE = {"1", "true", "yes", "1.0"}
_FALSE = {"0", "false", "no", "0.0"}


@dataclass(frozen=True)
class RecordSchema:
    """The fields of a pipeline that validation reads: which column is what, and types."""

    pipeline: str
    event_time: str
    key: str | None
    features: tuple[str, ...]
    categorical: tuple[str, ...]
    target: str | None
    task: str
    label_classes: tuple[str, ...]

    @classmethod
    def of(cls, config: PipelineConfig) -> RecordSchema:
        """The schema of a pipeline whose features are resolved."""
        assert config.features is not None, "features must be resolved before validation"
        return cls(
            pipeline=config.name,
            event_time=config.event_time,
            key=config.key,
            features=tuple(config.features),
            categorical=tuple(config.categorical),
            target=config.target,
            task=config.task,
            label_classes=tuple(config.label_classes),
        )


@dataclass(frozen=True)
class Validated:
    """Result of :func:`validate_records`: typed good rows and rejected rows."""

    accepted: pl.DataFrame
    rejected: pl.DataFrame


def parse_timestamp(column: pl.Expr) -> pl.Expr:
    """Text (ISO-8601 with or without offset, or epoch s/ms) -> UTC Datetime, null if not."""
    text = column.str.strip_chars().str.replace(" ", "T", literal=True)
    candidates = [
        text.str.strptime(pl.Datetime("us", "UTC"), fmt, strict=False) for fmt in _TIMESTAMP_FORMATS
    ]
    number = column.str.strip_chars().cast(pl.Float64, strict=False)
    seconds = pl.when(number.abs() >= _EPOCH_MS_ABOVE).then(number / 1000).otherwise(number)
    epoch = (
        (seconds * 1_000_000)
        .round(0)
        .cast(pl.Int64, strict=False)
        .cast(pl.Datetime("us", "UTC"), strict=False)
    )
    return pl.coalesce(*candidates, epoch).dt.replace_time_zone(None)


def parse_number(column: pl.Expr) -> pl.Expr:
    """Text -> finite Float64; empty text -> null; anything else -> NaN (flagged later)."""
    text = column.str.strip_chars()
    value = text.cast(pl.Float64, strict=False)
    return (
        pl.when(text.is_null() | (text == ""))
        .then(None)
        .when(value.is_null() | value.is_infinite() | value.is_nan())
        .then(float("nan"))
        .otherwise(value)
    )


def canonical_label(column: pl.Expr) -> pl.Expr:
    """Class label text with numeric spellings unified ("1.0" -> "1", "true" -> "1")."""
    text = column.str.strip_chars()
    lowered = text.str.to_lowercase()
    number = text.cast(pl.Float64, strict=False)
    return (
        pl.when(text.is_null() | (text == ""))
        .then(None)
        .when(lowered.is_in(list(_TRUE - {"1.0"})))
        .then(pl.lit("1"))
        .when(lowered.is_in(list(_FALSE - {"0.0"})))
        .then(pl.lit("0"))
        .when(number.is_not_null() & (number == number.round(0)) & (number.abs() < 1e15))
        .then(number.cast(pl.Int64, strict=False).cast(pl.Utf8))
        .otherwise(text)
    )


def _reason(condition: pl.Expr, message: pl.Expr | str) -> pl.Expr:
    text = pl.lit(message) if isinstance(message, str) else message
    return pl.when(condition).then(text).otherwise(None)


def _typed(name: str) -> str:
    return f"{name}\x00typed"


def typed_columns(schema: RecordSchema) -> dict[str, pl.Expr]:
    """Declared column -> expression turning its text into the declared type (null if not)."""
    exprs = {schema.event_time: parse_timestamp(pl.col(schema.event_time))}
    if schema.key:
        exprs[schema.key] = pl.col(schema.key).str.strip_chars()
    for name in schema.features:
        if name in schema.categorical:
            text = pl.col(name).str.strip_chars()
            exprs[name] = pl.when(text == "").then(None).otherwise(text)
        else:
            exprs[name] = parse_number(pl.col(name))
    if schema.target is None:
        return exprs
    if schema.task == "classification":
        exprs[schema.target] = canonical_label(pl.col(schema.target))
    else:
        exprs[schema.target] = parse_number(pl.col(schema.target))
    return exprs


def _row_reasons(
    schema: RecordSchema, now: datetime, known_keys: pl.Series | None
) -> list[pl.Expr]:
    ts_text, ts = pl.col(schema.event_time), pl.col(_typed(schema.event_time))
    horizon = now.replace(tzinfo=None) + FUTURE_SLACK
    empty_ts = ts_text.is_null() | (ts_text.str.strip_chars() == "")
    reasons = [
        _reason(empty_ts, f"{schema.event_time} is empty"),
        _reason(
            ts.is_null() & ~empty_ts,
            pl.format("{} '{}' is not a timestamp", pl.lit(schema.event_time), ts_text),
        ),
        _reason(
            (ts < EARLIEST) | (ts > horizon),
            pl.format(
                "{} '{}' is outside {} .. {}",
                pl.lit(schema.event_time),
                ts_text,
                pl.lit(EARLIEST.date().isoformat()),
                pl.lit(horizon.isoformat(timespec="seconds")),
            ),
        ),
    ]
    if schema.key:
        key = pl.col(_typed(schema.key))
        reasons.append(_reason(key.is_null() | (key == ""), f"{schema.key} is empty"))
        if known_keys is not None and known_keys.len() > 0:
            reasons.append(
                _reason(key.is_in(known_keys.implode()), f"duplicate {schema.key}: already stored")
            )
    numeric = [f for f in schema.features if f not in schema.categorical]
    if schema.task == "regression" and schema.target is not None:
        numeric.append(schema.target)
    for name in numeric:
        value = pl.col(_typed(name))
        reasons.append(
            _reason(
                value.is_nan(),
                pl.format("{} '{}' is not a finite number", pl.lit(name), pl.col(name)),
            )
        )
        reasons.append(
            _reason(
                ~value.is_nan() & (value.abs() > MAX_ABS_NUMBER),
                pl.format(
                    "{} '{}' is beyond ±" + f"{MAX_ABS_NUMBER:g}" + " (the models would overflow)",
                    pl.lit(name),
                    pl.col(name),
                ),
            )
        )
    if schema.task == "classification" and schema.target is not None:
        target = pl.col(_typed(schema.target))
        reasons.append(
            _reason(
                target.is_not_null() & ~target.is_in(schema.label_classes),
                pl.format(
                    "{} '{}' is not one of the classes {}; declare pipelines.{}.classes",
                    pl.lit(schema.target),
                    pl.col(schema.target),
                    pl.lit(", ".join(schema.label_classes)),
                    pl.lit(schema.pipeline),
                ),
            )
        )
    return reasons


def _row_reason(schema: RecordSchema, now: datetime, known_keys: pl.Series | None) -> pl.Expr:
    """A structural reject stands alone; otherwise every failed check, joined."""
    checks = pl.concat_str(_row_reasons(schema, now, known_keys), separator="; ", ignore_nulls=True)
    return pl.coalesce(pl.col("_reject"), pl.when(checks != "").then(checks))


def _repeat_reason(schema: RecordSchema) -> pl.Expr:
    """Of the rows that passed every other check, the later ones of a repeated key (a
    bad first copy, quarantined anyway, does not push a good second one out)."""
    if not schema.key:
        return pl.col("_reason")
    good_key = pl.when(pl.col("_reason").is_null()).then(pl.col(_typed(schema.key)))
    repeated = good_key.is_not_null() & ~good_key.is_first_distinct()
    return (
        pl.when(repeated)
        .then(pl.lit(f"duplicate {schema.key} within the batch"))
        .otherwise(pl.col("_reason"))
    )


def validate_records(
    records: pl.DataFrame,
    schema: RecordSchema,
    now: datetime,
    known_keys: pl.Series | None = None,
) -> Validated:
    """Split parsed text records into typed accepted rows and rejects with reasons.

    `records` has one text column per declared field plus `_line`, `_raw`, `_reject`
    and any other `_`-prefixed meta columns (carried through to both outputs). `now`
    bounds event times from above (plus a day of slack); `known_keys` are keys that
    are already stored.
    """
    typed = typed_columns(schema)
    meta = [c for c in records.columns if c.startswith("_") and c not in ("_raw", "_reject")]
    checked = (
        records.with_columns([expr.alias(_typed(name)) for name, expr in typed.items()])
        .with_columns(_row_reason(schema, now, known_keys).alias("_reason"))
        .with_columns(_repeat_reason(schema).alias("_reason"))
    )
    bad = pl.col("_reason").is_not_null()
    rejected = checked.filter(bad).select(*meta, "_raw", pl.col("_reason").alias("reason"))
    accepted = checked.filter(~bad).select(
        *[pl.col(_typed(name)).alias(name) for name in typed], *meta
    )
    return Validated(accepted=accepted, rejected=rejected)


def class_labels(values: pl.Series) -> list[str]:
    """Distinct canonical labels of `values`, numeric ones in numeric order, else sorted."""
    labels = (
        pl.DataFrame({"y": values.cast(pl.Utf8)})
        .select(canonical_label(pl.col("y")))
        .to_series()
        .drop_nulls()
        .unique()
        .to_list()
    )
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def content_hashes(rows: pl.DataFrame, columns: list[str]) -> pl.Series:
    """MD5 of each row's `columns` as canonical text: the identity of a row when the
    pipeline has no key (stable across processes and library versions)."""
    text = rows.select(
        pl.concat_str(
            [pl.col(c).cast(pl.Utf8).fill_null("\x00") for c in columns], separator="\x1f"
        )
    ).to_series()
    return pl.Series(
        "_row_hash", [hashlib.md5(t.encode()).hexdigest() for t in text.to_list()], dtype=pl.Utf8
    )
