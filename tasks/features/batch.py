"""A batch's model inputs: its clean rows plus the window and lag features they read."""

from __future__ import annotations

import polars as pl

from tidemill.config.pipeline import PipelineConfig
from tidemill.tasks.features.aggregate import target_value, with_window_features
from tidemill.tasks.features.lags import lag_history, with_target_lags


def batch_features(
    clean: pl.DataFrame,
    config: PipelineConfig,
    windows: dict[str, pl.DataFrame],
    histories: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """`clean` plus window and lag features, and the lag histories after the batch.

    `windows`: per aggregate, the stats of the windows the rows read (stored ones merged
    with the batch's own partials); `histories`: per lag, the stored latest labels of the
    batch's series. Pure: the live cycle and `replay-model` feed it the same inputs."""
    features = clean
    for spec in config.aggregates:
        features = with_window_features(features, config, spec, windows[spec.name])
    new_histories: dict[str, pl.DataFrame] = {}
    if config.lags:
        features = features.with_columns(target_value(config).alias("_value"))
        for lag in config.lags:
            options = {"event_time": config.event_time, "by": lag.by, "n": lag.n}
            history = histories[lag.name]
            new_histories[lag.name] = lag_history(history, features, **options)  # type: ignore[arg-type]
            features = with_target_lags(features, history, name=lag.name, **options)  # type: ignore[arg-type]
        features = features.drop("_value")
    return features, new_histories
