"""Lags of the target: each row's previous labels in its own series, never looking ahead.

An *entry* is one labelled observation of a series: (series key, event time, value). The
entries a batch can read are the stored history (at most `n` per series, the most recent)
plus the batch's own labelled rows. A row's `<name>_lag1` is the value of the latest entry
of its series with an event time strictly earlier than the row's, `<name>_lag2` the one
before, and so on; entries sharing an event time are ordered by value so results are
deterministic. Null key values form a series of their own (null matches null).

Only `n` entries per series are kept between batches, so a row older than stored history
(a late row) sees just the kept entries earlier than itself: it may get fewer lags than a
full recompute would give, never a label from its future. For the same reason splitting a
stream into batches gives the same lags as one batch only when each batch starts strictly
after the previous one ends.
"""

from __future__ import annotations

from typing import Final

import polars as pl

_ROW = "__lags_row"
_SERIES = "__lags_series"
_IS_ENTRY = "__lags_is_entry"
_SEEN = "__lags_seen"
_IN_SERIES = "__lags_in_series"
# A batch is small: the in-memory engine runs these plans in about 60% of the streaming
# engine's time (measured 7 ms against 11 ms for 10,000 rows).
_ENGINE: Final = "in-memory"


def lag_feature_names(name: str, n: int) -> list[str]:
    """`[f"{name}_lag1", ..., f"{name}_lag{n}"]`, most recent first."""
    return [f"{name}_lag{k}" for k in range(1, n + 1)]


def _check(by: list[str], n: int) -> None:
    if not by:
        raise ValueError("lags need at least one series column in `by`")
    if n < 1:
        raise ValueError(f"lags need n >= 1 previous labels, got n={n}")


def _entries(
    history: pl.DataFrame, rows: pl.DataFrame, *, event_time: str, by: list[str]
) -> pl.LazyFrame:
    """Labelled entries (*by, event_at, value) from history and the batch, unordered.

    History is cast to the batch's dtypes: an empty table read back from the warehouse
    may not carry the exact types the batch has.
    """
    schema = rows.schema
    stored = history.lazy().select(
        *[pl.col(c).cast(schema[c]) for c in by],
        pl.col("event_at").cast(schema[event_time]),
        pl.col("value").cast(pl.Float64),
    )
    fresh = rows.lazy().select(
        *by,
        pl.col(event_time).alias("event_at"),
        pl.col("_value").cast(pl.Float64).alias("value"),
    )
    return pl.concat([stored, fresh]).filter(
        pl.col("value").is_not_null() & pl.col("event_at").is_not_null()
    )


def _by_series(
    frame: pl.LazyFrame, by: list[str], order: list[str], *, newest_first: bool = False
) -> pl.LazyFrame:
    """`frame` with each series contiguous, ordered within it by `order`.

    This sort is most of a batch's cost; putting a hash of the key first makes it about a
    third cheaper than on string keys, and the key columns after it keep two series whose
    hashes collide apart.
    """
    return (
        frame.with_columns(pl.struct(by).hash().alias(_SERIES))
        .sort(
            [_SERIES, *by, *order], descending=[False] * (1 + len(by)) + [newest_first] * len(order)
        )
        .drop(_SERIES)
    )


def _position_in_series(counted: pl.Expr, by: list[str]) -> pl.Expr:
    """In a frame sorted by series: the running total of `counted` since the series began."""
    starts = pl.any_horizontal(
        pl.int_range(pl.len()) == 0, *[pl.col(c).ne_missing(pl.col(c).shift(1)) for c in by]
    )
    total = counted.cum_sum()
    return total - pl.when(starts).then(total - counted).forward_fill()


def with_target_lags(
    rows: pl.DataFrame,
    history: pl.DataFrame,
    *,
    event_time: str,
    by: list[str],
    n: int,
    name: str,
) -> pl.DataFrame:
    """`rows` (same order, same columns) plus Float64 columns `name_lag1..name_lagN`.

    For each row: the values of the n most recent labelled entries of its series with an
    event time strictly earlier than the row's, from `history` (*by, event_at, value) and
    the batch's own labelled rows (`_value` not null); null where there are fewer, and for
    a row without an event time. Rows sharing an event time never see each other's label.
    """
    _check(by, n)
    names = lag_feature_names(name, n)
    queries = rows.lazy().select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ROW),
        *by,
        pl.col(event_time).alias("event_at"),
        pl.lit(0, dtype=pl.UInt32).alias(_IS_ENTRY),
        pl.lit(None, dtype=pl.Float64).alias("value"),
    )
    entries = _entries(history, rows, event_time=event_time, by=by).select(
        pl.lit(None, dtype=pl.UInt32).alias(_ROW),
        *by,
        "event_at",
        pl.lit(1, dtype=pl.UInt32).alias(_IS_ENTRY),
        "value",
    )
    # One timeline of rows and entries, each series in time order with a row placed before
    # the entries at its own time: the entries counted up to a row are exactly those it may
    # see, and in the timeline's entry order its k-th latest is entry number seen - k.
    timeline = _by_series(
        pl.concat([queries, entries]), by, ["event_at", _IS_ENTRY, "value"]
    ).with_columns(
        pl.col(_IS_ENTRY).cum_sum().cast(pl.Int64).alias(_SEEN),
        _position_in_series(pl.col(_IS_ENTRY), by).alias(_IN_SERIES),
    )
    entry_values = pl.col("value").filter(pl.col(_IS_ENTRY) == 1)

    def kth_latest(k: int) -> pl.Expr:
        return entry_values.gather(pl.when(pl.col(_IN_SERIES) >= k).then(pl.col(_SEEN) - k))

    lags = (
        timeline.select(_ROW, *[kth_latest(k).alias(lag) for k, lag in enumerate(names, 1)])
        .filter(pl.col(_ROW).is_not_null())
        .sort(_ROW)
        .drop(_ROW)
    )
    return pl.concat([rows.lazy(), lags], how="horizontal").collect(engine=_ENGINE)


def lag_history(
    history: pl.DataFrame, rows: pl.DataFrame, *, event_time: str, by: list[str], n: int
) -> pl.DataFrame:
    """The history after this batch: per series present in `rows`, its n most recent
    labelled entries (by event_at, then value) among `history` and the batch's labelled
    rows; columns *by, event_at, value, sorted by series then time. The caller upserts
    these series and keeps the others as they were.
    """
    _check(by, n)
    present = rows.lazy().select(by).unique()
    entries = _entries(history, rows, event_time=event_time, by=by).join(
        present, on=by, how="semi", nulls_equal=True
    )
    newest_first = _by_series(entries, by, ["event_at", "value"], newest_first=True)
    kept = _position_in_series(pl.repeat(1, pl.len(), dtype=pl.UInt32), by) <= n
    return newest_first.filter(kept).sort([*by, "event_at", "value"]).collect(engine=_ENGINE)
