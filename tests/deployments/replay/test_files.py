"""The replayer writes complete, ordered CSV files and resumes exactly from its state."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from tidemill.data import load_flights
from tidemill.deployments.replay.files import replay
from tidemill.tasks.synthetic.flights import EVENT_COLUMNS, flight_events

START = datetime(2013, 1, 1, 10, 0, tzinfo=UTC)
N_EVENTS = 400


def make_events() -> pl.DataFrame:
    """400 events one simulated minute apart, a few sharing a timestamp, some unlabelled."""
    ts = [START + timedelta(minutes=i - i % 7 // 6) for i in range(N_EVENTS)]
    return pl.DataFrame(
        {
            "id": range(1, N_EVENTS + 1),
            "ts": ts,
            "carrier": ["UA"] * N_EVENTS,
            "origin": ["EWR"] * N_EVENTS,
            "dest": ["IAH"] * N_EVENTS,
            "distance": [1400.0] * N_EVENTS,
            "dep_delay": [1.0] * N_EVENTS,
            "arr_delay": [None if i % 50 == 0 else float(i % 40) for i in range(N_EVENTS)],
            "late": [None if i % 50 == 0 else str(int(i % 40 > 15)) for i in range(N_EVENTS)],
        },
        schema_overrides={"id": pl.Int64, "ts": pl.Datetime("us", "UTC")},
    )


def landed(landing_dir: Path) -> list[pl.DataFrame]:
    """Every landed CSV, in file-name order, read as text so nothing is reinterpreted."""
    return [
        pl.read_csv(path, infer_schema=False) for path in sorted(landing_dir.glob("flights-*.csv"))
    ]


def test_replay_resumes_from_state_without_gaps_or_repeats(tmp_path: Path) -> None:
    landing, state = tmp_path / "landing", tmp_path / "state" / "replay.json"
    # A 0.01 s tick moves the clock >= 1000 simulated s: ~16 one-minute-apart rows per file.
    speed, tick = 100_000.0, 0.01

    first = replay(make_events(), landing, state, speed, tick_seconds=tick, max_files=3)
    assert first.files_written == 3
    assert not first.exhausted
    saved = json.loads(state.read_text())
    assert datetime.fromisoformat(saved["position"]) == first.position
    assert saved["last_file"] == sorted(p.name for p in landing.glob("*.csv"))[-1]

    second = replay(make_events(), landing, state, speed, tick_seconds=tick)
    assert second.exhausted
    assert first.rows_written + second.rows_written == N_EVENTS

    frames = landed(landing)
    assert len(frames) == first.files_written + second.files_written
    assert all(f.columns == list(EVENT_COLUMNS) and f.height > 0 for f in frames)
    everything = pl.concat(frames)
    expected = make_events().with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert everything["id"].to_list() == [str(i) for i in range(1, N_EVENTS + 1)]
    assert everything["ts"].to_list() == expected["ts"].to_list()
    assert everything["late"].to_list() == expected["late"].to_list()
    assert not list(tmp_path.rglob("*.part"))

    # A file holds exactly the rows after the previous file's simulated time, up to its own.
    previous = datetime.min
    for path, frame in zip(sorted(landing.glob("*.csv")), frames, strict=True):
        until = datetime.strptime(path.stem.removeprefix("flights-"), "%Y%m%dT%H%M%S.%fZ")
        stamps = [datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ") for ts in frame["ts"].to_list()]
        assert all(previous < ts <= until for ts in stamps)  # as times: text compares wrongly
        previous = until

    third = replay(make_events(), landing, state, speed, tick_seconds=tick)
    assert (third.files_written, third.rows_written, third.exhausted) == (0, 0, True)


def test_replay_returns_promptly_when_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    stats = replay(make_events(), tmp_path, tmp_path / "state.json", 1.0, stop=stop)
    assert (stats.files_written, stats.position, stats.exhausted) == (0, None, False)
    assert not (tmp_path / "state.json").exists()


def test_packaged_flights_become_the_full_event_stream() -> None:
    events = flight_events(load_flights())
    assert events.height == 336_776
    assert events["id"].n_unique() == 336_776
    assert events["ts"].is_sorted()
    assert events.row(0, named=True)["ts"] == datetime(2013, 1, 1, 10, 15, tzinfo=UTC)
