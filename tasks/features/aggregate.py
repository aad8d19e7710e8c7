"""Event-time window aggregates per group, merged incrementally in the warehouse.

A batch produces partial sums per (window, group); the warehouse adds them to what
it holds (`agg.<pipeline>_<name>`), so a late row updates its own window and the
cost of a batch depends on the batch, not on history.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from tidemill.config.pipeline import AggregateSpec

STAT_COLUMNS = ("n_rows", "n_labelled", "target_sum")


def target_value(target: str | None, positive_class: str | None) -> pl.Expr:
    """Numeric view of the target: 1/0 for `positive_class` (classification), the value
    itself when there is none (regression), null when unlabelled or when the pipeline
    has no target (clustering)."""
    if target is None:
        return pl.lit(None, dtype=pl.Float64)
    column = pl.col(target)
    if positive_class is not None:
        labelled = (column == positive_class).cast(pl.Float64)
        return pl.when(column.is_null()).then(None).otherwise(labelled)
    return column.cast(pl.Float64)


def window_start(event_time: str, spec: AggregateSpec) -> pl.Expr:
    """Start of the event-time window of `spec` each row falls in."""
    return pl.col(event_time).dt.truncate(f"{spec.every_seconds}s")


def window_partials(
    clean: pl.DataFrame, spec: AggregateSpec, *, event_time: str, value: pl.Expr
) -> pl.DataFrame:
    """Per (window_start, *by): rows, labelled rows and the sum of `value` (the target's
    numeric view, see `target_value`) contributed by `clean`."""
    return (
        clean.lazy()
        .with_columns(window_start(event_time, spec).alias("window_start"), value.alias("_value"))
        .group_by(["window_start", *spec.by])
        .agg(
            pl.len().cast(pl.Int64).alias("n_rows"),
            pl.col("_value").is_not_null().sum().cast(pl.Int64).alias("n_labelled"),
            pl.col("_value").sum().alias("target_sum"),
        )
        .sort(["window_start", *spec.by])
        .collect()
    )


def previous_window_keys(
    clean: pl.DataFrame, spec: AggregateSpec, *, event_time: str
) -> pl.DataFrame:
    """The (window_start, *by) of the window BEFORE each row's own: what its features read."""
    step = timedelta(seconds=spec.every_seconds)
    return (
        clean.lazy()
        .select((window_start(event_time, spec) - step).alias("window_start"), *spec.by)
        .unique()
        .sort(["window_start", *spec.by])
        .collect()
    )


def aggregate_feature_names(spec: AggregateSpec) -> list[str]:
    """Names of the features one aggregate adds to each row."""
    return [f"{spec.name}_prev_rows", f"{spec.name}_prev_mean"]


def with_window_features(
    clean: pl.DataFrame, spec: AggregateSpec, previous: pl.DataFrame, *, event_time: str
) -> pl.DataFrame:
    """`clean` plus the previous window's row count and target mean for the row's group.

    `previous` holds stored window stats (window_start, *by, n_rows, n_labelled,
    target_sum). Only the window strictly before the row's own is read, so no row sees
    anything at or after its own event time's window. Missing windows give 0 rows and a
    null mean (imputed downstream).
    """
    step = timedelta(seconds=spec.every_seconds)
    rows_name, mean_name = aggregate_feature_names(spec)
    stats = previous.lazy().select(
        "window_start",
        *spec.by,
        pl.col("n_rows").alias(rows_name),
        pl.when(pl.col("n_labelled") > 0)
        .then(pl.col("target_sum") / pl.col("n_labelled"))
        .otherwise(None)
        .alias(mean_name),
    )
    return (
        clean.lazy()
        .with_columns((window_start(event_time, spec) - step).alias("_prev_window"))
        .join(
            stats,
            left_on=["_prev_window", *spec.by],
            right_on=["window_start", *spec.by],
            how="left",
            maintain_order="left",
        )
        .with_columns(pl.col(rows_name).fill_null(0).cast(pl.Float64))
        .drop("_prev_window")
        .collect()
    )


def merge_window_stats(
    stored: pl.DataFrame, partials: pl.DataFrame, spec: AggregateSpec
) -> pl.DataFrame:
    """Stored window stats plus this batch's partials, summed per (window_start, *by)."""
    columns = ["window_start", *spec.by, *STAT_COLUMNS]
    both = pl.concat([stored.select(columns), partials.select(columns)], how="vertical_relaxed")
    return both.group_by(["window_start", *spec.by]).agg(
        pl.col("n_rows").sum(), pl.col("n_labelled").sum(), pl.col("target_sum").sum()
    )
