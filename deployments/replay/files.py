"""Replay a data set as a live stream of small CSV files: the packaged flights, or the
synthetic card payments of ``tasks/synthetic/transactions.py`` (:data:`DATASETS`).

Every tick of the replay clock (clock.py) the events it passed land as ONE file
``<data set>-<simulated time>.csv`` in the landing folder of the pipeline of the same
name. A file is written under a ``.part`` name, fsync'd and renamed, so a reader globbing
``*.csv`` only ever sees complete files. After each file the simulated position goes to
``<state>/replay/<data set>.json``, so a restarted replayer continues where the last file
ended.

Delivery is exactly-once across clean stops and restarts. A crash between a file's
rename and its state write re-emits that file's rows under a new name after restart
(at-least-once); consumers de-duplicate on ``id``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig
from tidemill.data import load_flights
from tidemill.deployments.replay.clock import play, read_position, write_position
from tidemill.durable import write_atomic
from tidemill.tasks.synthetic.flights import EVENT_COLUMNS, flight_events, landing_rows
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


class UnknownDataSet(ConfigError):
    """A data set name the replayer does not know; the message lists the known ones."""


def dataset(name: str) -> DataSet:
    """The data set `name`, or UnknownDataSet naming the available ones."""
    if name not in DATASETS:
        known = ", ".join((*DATASETS, "sensors"))
        raise UnknownDataSet(f"unknown data set '{name}' (available: {known})")
    return DATASETS[name]


def landing_dir(config: TidemillConfig, name: str) -> Path:
    """Where data set `name` lands: the folder of the files pipeline of the same name."""
    folder = config.pipeline(name).source.landing_folder
    if folder is None:
        raise ConfigError(f"{config.path}: pipelines.{name}.source: replaying needs kind = 'files'")
    return folder


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
    """Write ``events`` into ``landing_dir`` as the simulated clock passes them (see
    clock.py); return stats.

    ``events`` is an event frame such as :func:`tasks.synthetic.flights.flight_events`
    returns; files are named ``<prefix><time>.csv`` and hold ``columns``. The clock starts
    at the position saved in ``state_file``, or at the first event if there is no state.
    Returns when the events are exhausted, when ``stop`` is set, or after ``max_files``
    files. Creates ``landing_dir`` and ``state_file``'s folder if missing.
    """
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be >= 1 or None, got {max_files}")
    landing_dir.mkdir(parents=True, exist_ok=True)
    state_file.parent.mkdir(parents=True, exist_ok=True)

    def land(due: pl.DataFrame, until: datetime) -> None:
        name = _write_file(landing_dir, until, landing_rows(due, columns), prefix)
        write_position(state_file, until, last_file=name)

    played = play(
        events,
        land,
        speed,
        after=read_position(state_file),
        tick_seconds=tick_seconds,
        stop=stop,
        max_emits=max_files,
    )
    return ReplayStats(played.emitted, played.rows, played.position, played.exhausted)


def _write_file(landing_dir: Path, until: datetime, rows: pl.DataFrame, prefix: str) -> str:
    """Write ``rows`` atomically as ``<prefix><until>.csv``; return the file name."""
    name = f"{prefix}{until.astimezone(UTC).strftime(_NAME_TIME_FORMAT)}.csv"
    data = rows.write_csv().encode()
    write_atomic(landing_dir / name, lambda handle: handle.write(data))
    return name
