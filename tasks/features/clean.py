"""Typed accepted rows -> the clean layer: trimmed categories, time features, labels.

Pure Polars; one row out per row in, in event-time order.
"""

from __future__ import annotations

import polars as pl

from tidemill.config.pipeline import PipelineConfig

TIME_FEATURE_EXPRS = {
    "hour": lambda ts: ts.dt.hour().cast(pl.Int8),
    "weekday": lambda ts: ts.dt.weekday().cast(pl.Int8),  # 1 = Monday .. 7 = Sunday
    "month": lambda ts: ts.dt.month().cast(pl.Int8),
}


def time_feature_column(name: str) -> str:
    """Column name of a derived time feature (prefixed so it cannot clash with a source)."""
    return f"event_{name}"


def clean_rows(accepted: pl.DataFrame, config: PipelineConfig) -> pl.DataFrame:
    """The clean layer of a batch: declared columns, derived time features, in batch order.

    Categorical values are trimmed and keep their case (codes like 'AA' are case
    sensitive); numeric values are already finite or null after validation.
    """
    assert config.features is not None
    ts = pl.col(config.event_time)
    columns = [ts]
    if config.key:
        columns.append(pl.col(config.key))
    columns += [pl.col(f) for f in config.features]
    if config.target is not None:
        columns.append(pl.col(config.target))
    derived = [
        TIME_FEATURE_EXPRS[name](ts).alias(time_feature_column(name))
        for name in config.time_features
    ]
    return in_batch_order(accepted.lazy().select(columns).with_columns(derived).collect(), config)


def in_batch_order(clean: pl.DataFrame, config: PipelineConfig) -> pl.DataFrame:
    """The one order a batch's clean rows are learned in: event time, then the key (or,
    without a key, every column: identical rows are interchangeable). Reading a batch
    back from clean.P and sorting it so gives the very order it was learned in, which
    is what makes `replay-model` exact."""
    rest = [config.key] if config.key else [c for c in clean.columns if c != config.event_time]
    return clean.sort([config.event_time, *rest], nulls_last=True, maintain_order=True)
