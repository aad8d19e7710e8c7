"""`tidemill replay NAME`: a data set into its landing folder, or sensor readings to
their stream, until done, Ctrl-C or SIGTERM (what is in flight is finished first)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from tidemill.config.load import TidemillConfig
from tidemill.deployments.replay.files import DATASETS, dataset, landing_dir, replay_dataset
from tidemill.deployments.replay.sensors import SENSORS, replay_sensors, sensor_stream

REPLAYABLE = (*DATASETS, SENSORS)


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
    _, stream = sensor_stream(config)
    say(f"publishing sensor readings to stream {stream} at {speed:g}x; Ctrl-C stops")
    try:
        done = replay_sensors(
            config, speed, tick_seconds=tick_seconds, stop=stop, max_ticks=max_ticks
        )
    except KeyboardInterrupt:
        return
    say(f"published {done.entries} readings" + (" (all of them)" if done.exhausted else ""))
