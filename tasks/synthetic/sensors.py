"""Synthetic machine-sensor readings with faulty sensors: the `sensors` pipeline's data.

Seeded and pure (numpy + Polars): the same arguments give the same frame on every
machine. Each sensor reports once per round (`every_seconds`, with a little jitter):
a temperature with a daily cycle, a vibration level and the radio signal (RSSI) of
its link. Four sensors are faulty, each in its own way (:data:`FAULTS`), and every
reading a fault touched is labelled `fault = "1"`, so the label suits fault detection:

- `spike`: now and then a reading jumps 15-30 °C away, for one reading;
- `stuck`: for stretches of 20-60 rounds it repeats the reading it had when it stuck;
- `dropout`: now and then it sends no temperature and no vibration (empty values),
  always with a weak signal;
- `drift`: its temperature creeps upward from the start, and is a fault once it is
  more than :data:`DRIFT_TOLERANCE` off.

The bottom of the module publishes readings to a Redis stream as the sensors would
(tasks/sources/redis_stream.py): all at once, or paced by their event time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

EVENT_COLUMNS = ("id", "ts", "sensor", "temperature", "vibration", "rssi", "fault")
"""Columns of a readings frame and of every stream entry, in this order."""

FAULTS = {"s03": "spike", "s05": "stuck", "s07": "dropout", "s09": "drift"}
"""The faulty sensors and their fault (the others are healthy)."""

DRIFT_TOLERANCE = 2.0
"""°C a drifting sensor may be off before its readings count as faults."""

DRIFT_TOTAL = 8.0
"""°C the drifting sensor is off by its last reading."""

TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
"""Wire format of `ts`: ISO-8601 UTC to the millisecond."""

START = datetime(2024, 3, 1, tzinfo=UTC)
_DAY_SECONDS = 86_400.0


def sensor_readings(
    rounds: int = 1000,
    *,
    n_sensors: int = 12,
    every_seconds: float = 10.0,
    seed: int = 0,
    start: datetime = START,
) -> pl.DataFrame:
    """`rounds` readings of each of `n_sensors` sensors (`s01`, `s02`, ...), ordered by
    event time, with ids 1, 2, ... in that order.

    Columns are :data:`EVENT_COLUMNS`: `ts` Datetime("us", "UTC"); temperature (°C),
    vibration (mm/s) and rssi (dBm) Float64, temperature and vibration null in a
    dropout; `fault` "1" or "0" as text. The faulty sensors of :data:`FAULTS` are among
    them when `n_sensors` reaches their number.
    """
    if rounds < 1 or n_sensors < 1 or every_seconds <= 0:
        raise ValueError("rounds and n_sensors must be >= 1 and every_seconds > 0")
    rng = np.random.default_rng(seed)
    frames = [_sensor(f"s{i + 1:02d}", rounds, every_seconds, start, rng) for i in range(n_sensors)]
    readings = pl.concat(frames).sort("ts", "sensor")
    return readings.with_columns(
        pl.int_range(1, readings.height + 1, dtype=pl.Int64).alias("id")
    ).select(EVENT_COLUMNS)


def _sensor(
    name: str, rounds: int, every_seconds: float, start: datetime, rng: np.random.Generator
) -> pl.DataFrame:
    """One sensor's readings in round order, its fault (if any) applied."""
    seconds = np.arange(rounds) * every_seconds + rng.uniform(0, every_seconds / 2, rounds)
    offsets = np.round(seconds * 1000).astype(np.int64)  # whole ms: the wire keeps ms
    base = rng.uniform(18, 26)
    phase = rng.uniform(0, 2 * np.pi)
    temperature = (
        base + 3 * np.sin(2 * np.pi * seconds / _DAY_SECONDS + phase) + rng.normal(0, 0.3, rounds)
    )
    vibration = np.abs(rng.normal(rng.uniform(1.5, 3.0), 0.4, rounds))
    rssi = rng.normal(rng.uniform(-70, -55), 3, rounds)
    fault = np.zeros(rounds, dtype=bool)
    kind = FAULTS.get(name)
    if kind == "spike":
        fault = rng.random(rounds) < 0.04
        temperature[fault] += rng.choice([-1, 1], fault.sum()) * rng.uniform(15, 30, fault.sum())
    elif kind == "stuck":
        for first, length in _episodes(rounds, rng):
            last = min(first + length, rounds)
            temperature[first + 1 : last] = temperature[first]
            vibration[first + 1 : last] = vibration[first]
            fault[first + 1 : last] = True
    elif kind == "dropout":
        fault = rng.random(rounds) < 0.08
        rssi[fault] = rng.normal(-92, 3, fault.sum())
    elif kind == "drift":
        offset = DRIFT_TOTAL * np.arange(rounds) / max(rounds - 1, 1)
        temperature += offset
        fault = offset > DRIFT_TOLERANCE
    values = pl.DataFrame(
        {
            "ts": _microseconds(start) + offsets * 1000,
            "sensor": name,
            "temperature": temperature.round(2),
            "vibration": vibration.round(3),
            "rssi": rssi.round(1),
            "fault": np.where(fault, "1", "0"),
        }
    )
    gone = pl.Series(fault) if kind == "dropout" else pl.Series([False] * rounds)
    return values.with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.when(gone).then(None).otherwise(pl.col("temperature")).alias("temperature"),
        pl.when(gone).then(None).otherwise(pl.col("vibration")).alias("vibration"),
    )


def _microseconds(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _episodes(rounds: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(first round, length) of the stuck stretches: one about every 200 rounds."""
    starts = np.flatnonzero(rng.random(rounds) < 1 / 200)
    return [(int(s), int(rng.integers(20, 61))) for s in starts]


def wire_rows(readings: pl.DataFrame) -> pl.DataFrame:
    """`readings` as text, the way a sensor sends them: `ts` in :data:`TS_FORMAT`,
    numbers as written, a missing value as null (published as empty text)."""
    return readings.select(EVENT_COLUMNS).with_columns(
        pl.col("ts").dt.convert_time_zone("UTC").dt.strftime(TS_FORMAT),
        pl.exclude("ts").cast(pl.Utf8),
    )
