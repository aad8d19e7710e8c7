"""The feature transforms of tasks/features/ bound to one pipeline's config: the engine's
cycle, backfill, replay and erasure compute a batch's clean rows, window partials and
model inputs the same way, through these."""

from __future__ import annotations

import polars as pl

from tidemill.config.pipeline import AggregateSpec, PipelineConfig
from tidemill.tasks.features.aggregate import target_value, window_partials
from tidemill.tasks.features.batch import batch_features
from tidemill.tasks.features.clean import clean_rows


def target_of(config: PipelineConfig) -> pl.Expr:
    """The numeric view of the pipeline's target (see `target_value`)."""
    return target_value(config.target, config.positive_class)


def clean_batch(config: PipelineConfig, accepted: pl.DataFrame) -> pl.DataFrame:
    """The clean rows of `config`'s pipeline from its accepted (typed) rows."""
    return clean_rows(
        accepted,
        event_time=config.event_time,
        key=config.key,
        features=config.features or [],
        target=config.target,
        time_features=config.time_features,
    )


def batch_partials(
    config: PipelineConfig, clean: pl.DataFrame, spec: AggregateSpec
) -> pl.DataFrame:
    """The window partials `clean` adds to aggregate `spec`."""
    return window_partials(clean, spec, event_time=config.event_time, value=target_of(config))


def model_inputs(
    config: PipelineConfig,
    clean: pl.DataFrame,
    windows: dict[str, pl.DataFrame],
    histories: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """The batch's model inputs and lag histories after it (see `batch_features`)."""
    return batch_features(
        clean,
        event_time=config.event_time,
        value=target_of(config),
        aggregates=config.aggregates,
        lags=config.lags,
        windows=windows,
        histories=histories,
    )
