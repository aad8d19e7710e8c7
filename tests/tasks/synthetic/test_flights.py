"""Exact-output tests for the pure replay transforms."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tidemill.deployments.replay.clock import events_between, sim_time
from tidemill.tasks.synthetic.flights import EVENT_COLUMNS, flight_events, landing_rows

UTC_US = pl.Datetime("us", "UTC")


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2013, 1, 1, hour, minute, tzinfo=UTC)


def flights(rows: list[tuple[int, datetime, float | None]]) -> pl.DataFrame:
    """Flights frame with the packaged columns; rows are (flight_id, sched_dep_at, arr_delay)."""
    n = len(rows)
    return pl.DataFrame(
        {
            "flight_id": [r[0] for r in rows],
            "sched_dep_at": [r[1] for r in rows],
            "carrier": ["UA"] * n,
            "flight": [100] * n,
            "tailnum": ["N1"] * n,
            "origin": ["EWR"] * n,
            "dest": ["IAH"] * n,
            "distance": [1400.0] * n,
            "sched_arr_time": [819] * n,
            "dep_delay": [1.0] * n,
            "arr_delay": [r[2] for r in rows],
            "air_time": [227.0] * n,
        },
        schema_overrides={
            "flight_id": pl.Int64,
            "sched_dep_at": UTC_US,
            "arr_delay": pl.Float64,
        },
    )


def events(rows: list[tuple[int, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [r[0] for r in rows], "ts": [r[1] for r in rows]},
        schema={"id": pl.Int64, "ts": UTC_US},
    )


def test_late_label_is_strictly_over_15_minutes_and_null_without_arrival() -> None:
    out = flight_events(
        flights([(1, at(10), 15.0), (2, at(11), 15.5), (3, at(12), None), (4, at(13), -20.0)])
    )
    assert out["late"].to_list() == ["0", "1", None, "0"]
    assert out["late"].dtype == pl.String


def test_events_are_ordered_by_time_then_id_with_the_stream_columns() -> None:
    out = flight_events(flights([(3, at(12), 1.0), (2, at(10), 30.0), (1, at(10), 2.0)]))
    expected = pl.DataFrame(
        {
            "id": [1, 2, 3],
            "ts": [at(10), at(10), at(12)],
            "carrier": ["UA"] * 3,
            "origin": ["EWR"] * 3,
            "dest": ["IAH"] * 3,
            "distance": [1400.0] * 3,
            "dep_delay": [1.0] * 3,
            "arr_delay": [2.0, 30.0, 1.0],
            "late": ["0", "1", "0"],
        },
        schema_overrides={"ts": UTC_US},
    )
    assert_frame_equal(out, expected)
    assert tuple(out.columns) == EVENT_COLUMNS


def test_flight_events_does_not_mutate_its_input() -> None:
    source = flights([(2, at(11), 1.0), (1, at(10), 20.0)])
    before = source.clone()
    flight_events(source)
    assert_frame_equal(source, before)


def test_window_excludes_after_and_includes_until() -> None:
    ev = events([(1, at(10)), (2, at(11)), (3, at(12)), (4, at(13))])
    assert events_between(ev, at(11), at(12))["id"].to_list() == [3]
    assert events_between(ev, None, at(11))["id"].to_list() == [1, 2]
    assert events_between(ev, at(13), at(14)).is_empty()


def test_consecutive_windows_emit_every_event_exactly_once() -> None:
    ev = events([(i, at(10) + timedelta(minutes=7 * i)) for i in range(1, 30)])
    cuts = [at(10, 30), at(11), at(11, 7), at(12), at(14)]
    windows = [(None, cuts[0]), *itertools.pairwise(cuts)]
    emitted = [i for a, u in windows for i in events_between(ev, a, u)["id"]]
    assert emitted == list(range(1, 30))


def test_window_rejects_naive_datetimes() -> None:
    ev = events([(1, at(10))])
    with pytest.raises(ValueError, match="until must be timezone-aware"):
        events_between(ev, None, datetime(2013, 1, 1, 11))


def test_landing_rows_format_ts_as_iso_utc_text() -> None:
    out = landing_rows(flight_events(flights([(1, at(10, 15), None)])))
    assert out.columns == list(EVENT_COLUMNS)
    assert out.row(0) == (1, "2013-01-01T10:15:00Z", "UA", "EWR", "IAH", 1400.0, 1.0, None, None)
    assert out.write_csv().splitlines()[1] == "1,2013-01-01T10:15:00Z,UA,EWR,IAH,1400.0,1.0,,"


def test_sim_time_runs_speed_times_faster_than_real_time() -> None:
    assert sim_time(100.0, 100.0, at(10), 1800.0) == at(10)
    assert sim_time(100.0, 102.5, at(10), 1800.0) == at(11, 15)
    with pytest.raises(ValueError, match="speed must be > 0"):
        sim_time(0.0, 1.0, at(10), 0.0)
