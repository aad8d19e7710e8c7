"""Turn a data set into a replayable event stream: the packaged flights here, the
synthetic card payments in ``tasks/synthetic/transactions.py``.

Pure Polars: the replayer in ``deployments/replayer.py`` owns the clock and the files.
An event frame has an ``id`` and its event time ``ts``, kept as ``Datetime("us", "UTC")``
until :func:`landing_rows` formats it for the wire (for flights: the scheduled departure).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

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


def events_between(events: pl.DataFrame, after: datetime | None, until: datetime) -> pl.DataFrame:
    """Return the events whose ``ts`` lies in the half-open window ``(after, until]``.

    ``after=None`` means "from the first event". Both bounds must be timezone-aware.
    Consecutive windows ``(a, b]``, ``(b, c]`` therefore emit every event exactly once.
    Row order is the input's order (event-time order for :func:`flight_events` output).
    """
    _require_aware(until, "until")
    in_window = pl.col("ts") <= until
    if after is not None:
        _require_aware(after, "after")
        in_window = in_window & (pl.col("ts") > after)
    return events.filter(in_window)


def landing_rows(events: pl.DataFrame, columns: Sequence[str] = EVENT_COLUMNS) -> pl.DataFrame:
    """Return ``events`` with ``ts`` formatted as ISO-8601 UTC text (``2013-01-01T10:15:00Z``).

    This is the shape written to a landing CSV: ``columns`` (default the flights'
    :data:`EVENT_COLUMNS`) in order, every other column unchanged.
    """
    return events.select(columns).with_columns(
        pl.col("ts").dt.convert_time_zone("UTC").dt.strftime(TS_FORMAT)
    )


def sim_time(start_real: float, now_real: float, sim_start: datetime, speed: float) -> datetime:
    """Return the simulated time when ``now_real - start_real`` real seconds have passed.

    The simulated clock starts at ``sim_start`` when the real clock reads ``start_real``
    and runs ``speed`` times faster than real time. Real times are seconds from any
    monotonic clock (``time.monotonic()``).
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0 (simulated seconds per real second), got {speed}")
    return sim_start + timedelta(seconds=(now_real - start_real) * speed)


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. tzinfo=UTC), got {moment!r}")
