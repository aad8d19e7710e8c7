"""Replay a data set as a live stream of small CSV files: the packaged flights, or the
synthetic card payments of ``tasks/synthetic/transactions.py`` (:data:`DATASETS`); or, for the
`sensors` pipeline, publish machine-sensor readings to its Redis stream
(:func:`replay_sensors`).

Every tick the simulated clock (``speed`` simulated seconds per real second) moves
forward; the events it passed since the last tick land as ONE file
``<data set>-<simulated time>.csv`` in ``landing_dir``. A file is written under a
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
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import as_file, files
from pathlib import Path
from typing import cast

import polars as pl

from tidemill import layout
from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig
from tidemill.config.sources import LOCAL_BROKER, FilesSource, RedisStreamSource
from tidemill.durable import write_atomic
from tidemill.tasks.synthetic.flights import (
    EVENT_COLUMNS,
    events_between,
    flight_events,
    landing_rows,
    sim_time,
)
from tidemill.tasks.synthetic.sensors import Published, replay_readings, sensor_readings
from tidemill.tasks.synthetic.transactions import EVENT_COLUMNS as TRANSACTION_COLUMNS
from tidemill.tasks.synthetic.transactions import transaction_events

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


@dataclass(frozen=True)
class DataSet:
    """A replayable stream: its event frame (``id``, ``ts`` and the wire columns) and the
    columns of its landing CSVs. It lands in the folder of the pipeline of the same name."""

    name: str
    events: Callable[[], pl.DataFrame]
    columns: Sequence[str]
    what: str

    @property
    def prefix(self) -> str:
        """Landing file names start with this."""
        return f"{self.name}-"


DATASETS = {
    "flights": DataSet(
        "flights",
        lambda: flight_events(load_flights()),
        EVENT_COLUMNS,
        "the packaged 2013 NYC flights",
    ),
    "transactions": DataSet(
        "transactions",
        transaction_events,
        TRANSACTION_COLUMNS,
        "synthetic card payments (seeded; fraud pattern drifts partway)",
    ),
}


SENSORS = "sensors"
"""The stream data set: machine-sensor readings (tasks/synthetic/sensors.py) published to the
Redis stream of the pipeline of that name."""
REPLAYABLE = (*DATASETS, SENSORS)
SENSOR_READINGS_PER_SECOND = 50.0
"""The sensors replay's pace in real time, whatever --speed (see `replay_sensors`)."""


class UnknownDataSet(ConfigError):
    """A data set name the replayer does not know; the message lists the known ones."""


def dataset(name: str) -> DataSet:
    """The data set `name`, or UnknownDataSet naming the available ones."""
    if name not in DATASETS:
        known = ", ".join(REPLAYABLE)
        raise UnknownDataSet(f"unknown data set '{name}' (available: {known})")
    return DATASETS[name]


def sensor_stream(config: TidemillConfig) -> tuple[str, RedisStreamSource]:
    """The broker URL and the source of the `sensors` pipeline (a redis_stream)."""
    source = config.pipeline(SENSORS).source
    if not isinstance(source, RedisStreamSource):
        raise ConfigError(
            f"{config.path}: pipelines.{SENSORS}.source: replaying sensors needs "
            "kind = 'redis_stream'"
        )
    if source.url != LOCAL_BROKER:
        return source.url, source
    return layout.local_broker_url(config.state_dir), source


def replay_sensors(
    config: TidemillConfig,
    speed: float,
    *,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_ticks: int | None = None,
) -> Published:
    """Publish 12 sensors' readings (3 days of them) to the `sensors` pipeline's stream,
    resuming after its newest entry. A reading every `12 * speed / 50` event-seconds per
    sensor paces them at about SENSOR_READINGS_PER_SECOND real readings per second at
    any `speed` (keep the speed between runs: the readings depend on it)."""
    url, source = sensor_stream(config)
    every = max(10.0, 12 * speed / SENSOR_READINGS_PER_SECOND)
    readings = sensor_readings(rounds=int(3 * 86_400 / every), every_seconds=every, seed=0)
    return replay_readings(
        url,
        source.stream,
        readings,
        speed,
        tick_seconds=tick_seconds,
        stop=stop,
        max_ticks=max_ticks,
    )


def landing_dir(config: TidemillConfig, name: str) -> Path:
    """Where data set `name` lands: the folder of the files pipeline of the same name."""
    source = config.pipeline(name).source
    if not isinstance(source, FilesSource):
        raise ConfigError(f"{config.path}: pipelines.{name}.source: replaying needs kind = 'files'")
    return Path(source.path).parent


def replay_dataset(
    config: TidemillConfig,
    name: str,
    speed: float,
    *,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_files: int | None = None,
) -> ReplayStats:
    """Replay data set `name` into its pipeline's landing folder, resuming from
    ``<state>/replay/<name>.json``; see :func:`replay`."""
    chosen = dataset(name)
    return replay(
        chosen.events(),
        landing_dir(config, name),
        config.state_dir / "replay" / f"{name}.json",
        speed,
        tick_seconds=tick_seconds,
        stop=stop,
        max_files=max_files,
        prefix=chosen.prefix,
        columns=chosen.columns,
    )


def serve_replay(
    config: TidemillConfig,
    name: str,
    speed: float,
    *,
    tick_seconds: float = 1.0,
    max_files: int | None = None,
    say: Callable[[str], object] = print,
) -> None:
    """`tidemill replay NAME`: replay until done, Ctrl-C or SIGTERM (the file in flight
    is finished first), telling `say` what it does."""
    if name == SENSORS:
        _serve_sensors(config, speed, tick_seconds=tick_seconds, max_ticks=max_files, say=say)
        return
    chosen = dataset(name)
    folder = landing_dir(config, name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say(f"replaying {chosen.what} into {folder} at {speed:g}x; Ctrl-C stops")
    try:
        stats = replay_dataset(
            config, name, speed, tick_seconds=tick_seconds, stop=stop, max_files=max_files
        )
    except KeyboardInterrupt:
        return
    say(
        f"wrote {stats.rows_written} rows in {stats.files_written} files"
        + (f" (all of {name} replayed)" if stats.exhausted else "")
    )


def _serve_sensors(
    config: TidemillConfig,
    speed: float,
    *,
    tick_seconds: float,
    max_ticks: int | None,
    say: Callable[[str], object],
) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _, source = sensor_stream(config)
    say(f"publishing sensor readings to stream {source.stream} at {speed:g}x; Ctrl-C stops")
    try:
        done = replay_sensors(
            config, speed, tick_seconds=tick_seconds, stop=stop, max_ticks=max_ticks
        )
    except KeyboardInterrupt:
        return
    say(f"published {done.entries} readings" + (" (all of them)" if done.exhausted else ""))


def replay(
    events: pl.DataFrame,
    landing_dir: Path,
    state_file: Path,
    speed: float,
    *,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_files: int | None = None,
    prefix: str = FILE_PREFIX,
    columns: Sequence[str] = EVENT_COLUMNS,
) -> ReplayStats:
    """Write ``events`` into ``landing_dir`` as the simulated clock passes them; return stats.

    ``events`` is an event frame such as :func:`tasks.synthetic.flights.flight_events` returns
    (re-sorted by ``(ts, id)`` here to be safe); files are named ``<prefix><time>.csv``
    and hold ``columns``. The clock starts at the position saved in
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
            name = _write_file(landing_dir, until, landing_rows(batch, columns), prefix)
            _write_position(state_file, until, name)
            files_written += 1
            rows_written += batch.height
        after = until
    exhausted = after is not None and after >= last_event_at
    return ReplayStats(files_written, rows_written, after, exhausted=exhausted)


def _write_file(landing_dir: Path, until: datetime, rows: pl.DataFrame, prefix: str) -> str:
    """Write ``rows`` atomically as ``<prefix><until>.csv``; return the file name."""
    name = f"{prefix}{until.astimezone(UTC).strftime(_NAME_TIME_FORMAT)}.csv"
    _write_bytes(landing_dir / name, rows.write_csv().encode())
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
