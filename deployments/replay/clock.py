"""The one wall-clock loop every replay runs (files of flights and transactions, sensor
readings on a Redis stream).

Every tick the simulated clock (`speed` simulated seconds per real second) moves forward
and the events it passed since the last tick, `(after, until]` on event time, are handed
to `emit` in one piece; a tick that passed none emits nothing. The loop starts after
`after`: where a stopped replay left off, as its sink saved it (`write_position` after
each emission, `read_position` to resume), so windows never overlap and a replay stopped
and started again emits every event once (at least once if it was killed between an
emission and the save: consumers de-duplicate on `id`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import polars as pl

from tidemill.durable import write_atomic


@dataclass(frozen=True)
class Played:
    """What one replay did."""

    emitted: int  # ticks that handed events to `emit`
    rows: int
    position: datetime | None  # simulated time emitted up to (inclusive); None: nothing yet
    exhausted: bool  # every event has been emitted (now or by an earlier run)


def play(
    events: pl.DataFrame,
    emit: Callable[[pl.DataFrame, datetime], None],
    speed: float,
    *,
    after: datetime | None = None,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_emits: int | None = None,
) -> Played:
    """Emit `events` (`ts` timezone-aware, `id`) as the simulated clock passes them;
    returns when they are exhausted, when `stop` is set, or after `max_emits` emissions."""
    if speed <= 0 or tick_seconds <= 0:
        raise ValueError(f"speed and tick_seconds must be > 0, got {speed} and {tick_seconds}")
    if max_emits is not None and max_emits < 1:
        raise ValueError(f"max_emits must be >= 1 or None, got {max_emits}")
    stop = stop if stop is not None else threading.Event()
    events = events.sort("ts", "id")
    if events.is_empty():
        return Played(0, 0, after, exhausted=True)
    first = cast(datetime, events["ts"].min())
    last = cast(datetime, events["ts"].max())
    sim_start, real_start = after or first, time.monotonic()
    emitted = rows = 0
    while after is None or after < last:
        if max_emits is not None and emitted >= max_emits:
            break
        if stop.wait(tick_seconds):
            break
        until = sim_time(real_start, time.monotonic(), sim_start, speed)
        due = events_between(events, after, until)
        if due.height:
            emit(due, until)
            emitted, rows = emitted + 1, rows + due.height
        after = until
    return Played(emitted, rows, after, exhausted=after is not None and after >= last)


def sim_time(start_real: float, now_real: float, sim_start: datetime, speed: float) -> datetime:
    """Return the simulated time when ``now_real - start_real`` real seconds have passed.

    The simulated clock starts at ``sim_start`` when the real clock reads ``start_real``
    and runs ``speed`` times faster than real time. Real times are seconds from any
    monotonic clock (``time.monotonic()``).
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0 (simulated seconds per real second), got {speed}")
    return sim_start + timedelta(seconds=(now_real - start_real) * speed)


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


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. tzinfo=UTC), got {moment!r}")


def read_position(state_file: Path) -> datetime | None:
    """The simulated time a replay saved in ``state_file`` (where it resumes), or None
    if it has none."""
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


def write_position(state_file: Path, position: datetime, **emitted: str) -> None:
    """Save `position` as the replay's resume point, atomically, with what was emitted
    last (`last_file=...`, for people reading the file)."""
    state = {"position": position.isoformat(), **emitted}
    data = (json.dumps(state, indent=2) + "\n").encode()
    write_atomic(state_file, lambda handle: handle.write(data))
