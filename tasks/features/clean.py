"""Typed accepted rows -> the clean layer: trimmed categories, time features, labels.

Pure Polars; one row out per row in, in event-time order.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

TIME_FEATURE_EXPRS = {
    "hour": lambda ts: ts.dt.hour().cast(pl.Int8),
    "weekday": lambda ts: ts.dt.weekday().cast(pl.Int8),  # 1 = Monday .. 7 = Sunday
    "month": lambda ts: ts.dt.month().cast(pl.Int8),
}


def time_feature_column(name: str) -> str:
    """Column name of a derived time feature (prefixed so it cannot clash with a source)."""
    return f"event_{name}"


def clean_rows(
    accepted: pl.DataFrame,
    *,
    event_time: str,
    key: str | None,
    features: Sequence[str],
    target: str | None,
    time_features: Sequence[str],
) -> pl.DataFrame:
    """The clean layer of a batch: the event time, key, features and target of the
    accepted rows, plus the derived `time_features`, in batch order.

    Categorical values are trimmed and keep their case (codes like 'AA' are case
    sensitive); numeric values are already finite or null after validation.
    """
    ts = pl.col(event_time)
    columns = [ts]
    if key:
        columns.append(pl.col(key))
    columns += [pl.col(f) for f in features]
    if target is not None:
        columns.append(pl.col(target))
    derived = [
        TIME_FEATURE_EXPRS[name](ts).alias(time_feature_column(name)) for name in time_features
    ]
    clean = accepted.lazy().select(columns).with_columns(derived).collect()
    return in_batch_order(clean, event_time=event_time, key=key)


def in_batch_order(clean: pl.DataFrame, *, event_time: str, key: str | None) -> pl.DataFrame:
    """The one order a batch's clean rows are learned in: event time, then the key (or,
    without a key, every column: identical rows are interchangeable). Reading a batch
    back from clean.P and sorting it so gives the very order it was learned in, which
    is what makes `replay-model` exact."""
    rest = [key] if key else [c for c in clean.columns if c != event_time]
    return clean.sort([event_time, *rest], nulls_last=True, maintain_order=True)
