"""Replay the packaged flights as a live stream of small CSV files.

Every tick the simulated clock (``speed`` simulated seconds per real second) moves
forward; the flights it passed since the last tick land as ONE file
``flights-<simulated time>.csv`` in ``landing_dir``. A file is written under a
``.part`` name, fsync'd and renamed, so a reader globbing ``*.csv`` only ever sees
complete files. After each file the simulated position goes to ``state_file``, so a
restarted replayer continues where the last file ended: windows are ``(after, until]``
on event time and each starts where the previous one stopped.

Delivery is exactly-once across clean stops and restarts. A crash between a file's
rename and its state write re-emits that file's rows under a new name after restart
(at-least-once); consumers de-duplicate on ``id``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import as_file, files
from pathlib import Path
from typing import cast

import polars as pl

from tasks.replay import events_between, landing_rows, sim_time
from tidemill.durable import write_atomic

FILE_PREFIX = "flights-"
_NAME_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # sorts lexicographically in time order


@dataclass(frozen=True)
class ReplayStats:
    """What one call to :func:`replay` did."""

    files_written: int
    rows_written: int
    position: datetime | None
    """Simulated time the stream has been emitted up to (inclusive); None if nothing yet."""
    exhausted: bool
    """True when every event has been emitted (now or by an earlier run)."""


def load_flights() -> pl.DataFrame:
    """Return the packaged ``tidemill/data/flights.parquet`` (336,776 flights, 12 columns)."""
    with as_file(files("tidemill.data").joinpath("flights.parquet")) as path:
        return pl.read_parquet(path)


def replay(
    events: pl.DataFrame,
    landing_dir: Path,
    state_file: Path,
    speed: float,
    *,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_files: int | None = None,
) -> ReplayStats:
    """Write ``events`` into ``landing_dir`` as the simulated clock passes them; return stats.

    ``events`` is the output of :func:`tasks.replay.flight_events` (re-sorted by
    ``(ts, id)`` here to be safe). The clock starts at the position saved in
    ``state_file``, or at the first event if there is no state. Returns when the events
    are exhausted, when ``stop`` is set, or after ``max_files`` files. Empty ticks
    write nothing. Creates ``landing_dir`` and ``state_file``'s folder if missing.
    """
    if speed <= 0 or tick_seconds <= 0:
        raise ValueError(f"speed and tick_seconds must be > 0, got {speed} and {tick_seconds}")
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be >= 1 or None, got {max_files}")
    landing_dir.mkdir(parents=True, exist_ok=True)
    state_file.parent.mkdir(parents=True, exist_ok=True)

    stop = stop if stop is not None else threading.Event()
    events = events.sort("ts", "id")
    position = _read_position(state_file)
    files_written = rows_written = 0
    if events.is_empty():
        return ReplayStats(0, 0, position, exhausted=True)
    first_event_at = cast(datetime, events["ts"].min())
    last_event_at = cast(datetime, events["ts"].max())

    sim_start = position if position is not None else first_event_at
    start_real = time.monotonic()
    after = position
    while after is None or after < last_event_at:
        if max_files is not None and files_written >= max_files:
            break
        if stop.wait(tick_seconds):
            break
        until = sim_time(start_real, time.monotonic(), sim_start, speed)
        batch = events_between(events, after, until)
        if batch.height:
            name = _write_file(landing_dir, until, batch)
            _write_position(state_file, until, name)
            files_written += 1
            rows_written += batch.height
        after = until
    exhausted = after is not None and after >= last_event_at
    return ReplayStats(files_written, rows_written, after, exhausted=exhausted)


def _write_file(landing_dir: Path, until: datetime, batch: pl.DataFrame) -> str:
    """Write ``batch`` atomically as ``flights-<until>.csv``; return the file name."""
    name = f"{FILE_PREFIX}{until.astimezone(UTC).strftime(_NAME_TIME_FORMAT)}.csv"
    _write_bytes(landing_dir / name, landing_rows(batch).write_csv().encode())
    return name


def _read_position(state_file: Path) -> datetime | None:
    """Return the simulated time saved in ``state_file``, or None if there is none."""
    if not state_file.exists():
        return None
    try:
        position = datetime.fromisoformat(json.loads(state_file.read_text())["position"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"cannot read replay state {state_file}: {exc}; "
            "delete it to restart the replay from the first flight"
        ) from exc
    if position.tzinfo is None:
        raise ValueError(f"replay state {state_file} holds a naive time {position.isoformat()}")
    return position


def _write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def _write_position(state_file: Path, position: datetime, last_file: str) -> None:
    state = {"position": position.isoformat(), "last_file": last_file}
    _write_bytes(state_file, (json.dumps(state, indent=2) + "\n").encode())
