"""Turn a data set into a replayable event stream: the packaged flights here, the
synthetic card payments in ``tasks/synthetic/transactions.py``.

Pure Polars: the replay in ``deployments/replay/`` owns the clock and the files.
An event frame has an ``id`` and its event time ``ts``, kept as ``Datetime("us", "UTC")``
until :func:`landing_rows` formats it for the wire (for flights: the scheduled departure).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

LATE_AFTER_MINUTES = 15
"""A flight is labelled late when it arrives more than this many minutes behind schedule."""

TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Wire format of ``ts``: ISO-8601 UTC to the second (flights are scheduled to the minute)."""

EVENT_COLUMNS = (
    "id",
    "ts",
    "carrier",
    "origin",
    "dest",
    "distance",
    "dep_delay",
    "arr_delay",
    "late",
)
"""Columns of an event frame and of every landing CSV, in this order."""


def flight_events(flights: pl.DataFrame) -> pl.DataFrame:
    """Return one event per flight, ordered by event time, as the flights pipeline sees it.

    Columns are :data:`EVENT_COLUMNS`: ``id`` is ``flight_id``, ``ts`` is
    ``sched_dep_at`` (Datetime UTC), and ``late`` is the label as text: ``"1"`` when
    ``arr_delay`` > 15 minutes, ``"0"`` when it is <= 15, null when ``arr_delay`` is
    null (a cancelled or diverted flight has no label). Rows are sorted by
    ``(ts, id)``, so ties in scheduled time keep a fixed order.
    Assumes the columns of ``tidemill/data/flights.parquet``.
    """
    late = (
        pl.when(pl.col("arr_delay") > LATE_AFTER_MINUTES)
        .then(pl.lit("1"))
        .when(pl.col("arr_delay").is_not_null())
        .then(pl.lit("0"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return (
        flights.lazy()
        .select(
            pl.col("flight_id").cast(pl.Int64).alias("id"),
            pl.col("sched_dep_at").dt.convert_time_zone("UTC").alias("ts"),
            "carrier",
            "origin",
            "dest",
            pl.col("distance").cast(pl.Float64),
            pl.col("dep_delay").cast(pl.Float64),
            pl.col("arr_delay").cast(pl.Float64),
            late.alias("late"),
        )
        .sort("ts", "id")
        .collect()
    )


def landing_rows(events: pl.DataFrame, columns: Sequence[str] = EVENT_COLUMNS) -> pl.DataFrame:
    """Return ``events`` with ``ts`` formatted as ISO-8601 UTC text (``2013-01-01T10:15:00Z``).

    This is the shape written to a landing CSV: ``columns`` (default the flights'
    :data:`EVENT_COLUMNS`) in order, every other column unchanged.
    """
    return events.select(columns).with_columns(
        pl.col("ts").dt.convert_time_zone("UTC").dt.strftime(TS_FORMAT)
    )
