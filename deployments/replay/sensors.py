"""Replay machine-sensor readings (tasks/synthetic/sensors.py) to the Redis stream of the
`sensors` pipeline, at about SENSOR_READINGS_PER_SECOND readings a second, through the
replay clock (clock.py): one tick's readings per MULTI/EXEC, its position saved after
each, so a replayer stopped and started again publishes every reading once (a replayer
killed between a publication and the save publishes that tick again: the pipeline
quarantines the repeated ids)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from tidemill import layout
from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig
from tidemill.deployments.replay.clock import play, read_position, write_position
from tidemill.tasks.sources.redis_stream import entry_fields, publish
from tidemill.tasks.synthetic.sensors import sensor_readings, wire_rows

SENSORS = "sensors"
"""The stream data set: machine-sensor readings published to the Redis stream of the
pipeline of that name."""
SENSOR_READINGS_PER_SECOND = 50.0
"""The sensors replay's pace in real time, whatever --speed (see `replay_sensors`)."""


@dataclass(frozen=True)
class Published:
    """What one call to :func:`replay_readings` did."""

    entries: int
    ticks: int
    position: datetime | None
    """Event time published up to (inclusive); None if nothing yet."""
    exhausted: bool


def publish_readings(url: str, stream: str, readings: pl.DataFrame) -> list[str]:
    """XADD every reading to `stream` (all or none); their entry ids, in order."""
    return publish(url, stream, entry_fields(wire_rows(readings)))


def replay_readings(
    url: str,
    stream: str,
    readings: pl.DataFrame,
    speed: float,
    *,
    state_file: Path,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_ticks: int | None = None,
) -> Published:
    """Publish `readings` to `stream` as the replay clock passes their event times, one
    tick's readings per MULTI/EXEC, resuming after the position saved in `state_file`
    (the stream itself cannot tell: tidemill deletes entries once it has stored them).
    Returns when every reading is published, when `stop` is set, or after `max_ticks`
    ticks that published."""
    state_file.parent.mkdir(parents=True, exist_ok=True)

    def send(due: pl.DataFrame, until: datetime) -> None:
        ids = publish_readings(url, stream, due)
        write_position(state_file, until, last_entry=ids[-1])

    played = play(
        readings,
        send,
        speed,
        after=read_position(state_file),
        tick_seconds=tick_seconds,
        stop=stop,
        max_emits=max_ticks,
    )
    return Published(played.rows, played.emitted, played.position, played.exhausted)


def sensor_stream(config: TidemillConfig) -> tuple[str, str]:
    """The broker URL and the stream of the `sensors` pipeline (a redis_stream)."""
    source = config.pipeline(SENSORS).source
    if source.stream_name is None or source.broker is None:
        raise ConfigError(
            f"{config.path}: pipelines.{SENSORS}.source: replaying sensors needs "
            "kind = 'redis_stream'"
        )
    if source.uses_local_broker:
        return layout.local_broker_url(config.state_dir), source.stream_name
    return source.broker, source.stream_name


def replay_sensors(
    config: TidemillConfig,
    speed: float,
    *,
    tick_seconds: float = 1.0,
    stop: threading.Event | None = None,
    max_ticks: int | None = None,
) -> Published:
    """Publish 12 sensors' readings (3 days of them) to the `sensors` pipeline's stream,
    resuming where the last replay stopped (`<state>/replay/sensors.json`). A reading every `12 * speed / 50` event-seconds per
    sensor paces them at about SENSOR_READINGS_PER_SECOND real readings per second at
    any `speed` (keep the speed between runs: the readings depend on it)."""
    url, stream = sensor_stream(config)
    every = max(10.0, 12 * speed / SENSOR_READINGS_PER_SECOND)
    readings = sensor_readings(rounds=int(3 * 86_400 / every), every_seconds=every, seed=0)
    return replay_readings(
        url,
        stream,
        readings,
        speed,
        state_file=config.state_dir / "replay" / f"{SENSORS}.json",
        tick_seconds=tick_seconds,
        stop=stop,
        max_ticks=max_ticks,
    )
