"""A batch's model inputs: its clean rows plus the window and lag features they read."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from tidemill.config.pipeline import AggregateSpec, LagSpec
from tidemill.tasks.features.aggregate import with_window_features
from tidemill.tasks.features.lags import lag_history, with_target_lags


def batch_features(
    clean: pl.DataFrame,
    *,
    event_time: str,
    value: pl.Expr,
    aggregates: Sequence[AggregateSpec],
    lags: Sequence[LagSpec],
    windows: dict[str, pl.DataFrame],
    histories: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """`clean` plus window and lag features, and the lag histories after the batch.

    `value`: the target's numeric view (`aggregate.target_value`); `windows`: per
    aggregate, the stats of the windows the rows read (stored ones merged with the
    batch's own partials); `histories`: per lag, the stored latest labels of the batch's
    series. Pure: the live cycle and `replay-model` feed it the same inputs."""
    features = clean
    for spec in aggregates:
        features = with_window_features(features, spec, windows[spec.name], event_time=event_time)
    new_histories: dict[str, pl.DataFrame] = {}
    if lags:
        features = features.with_columns(value.alias("_value"))
        for lag in lags:
            options = {"event_time": event_time, "by": lag.by, "n": lag.n}
            history = histories[lag.name]
            new_histories[lag.name] = lag_history(history, features, **options)  # type: ignore[arg-type]
            features = with_target_lags(features, history, name=lag.name, **options)  # type: ignore[arg-type]
        features = features.drop("_value")
    return features, new_histories
