"""The synthetic sensor readings: seeded, ordered, and each faulty sensor faulty its own way."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from tidemill.tasks.sources.redis_stream import entry_fields
from tidemill.tasks.synthetic.sensors import (
    DRIFT_TOLERANCE,
    DRIFT_TOTAL,
    EVENT_COLUMNS,
    FAULTS,
    START,
    sensor_readings,
    wire_rows,
)

ROUNDS = 2000


@pytest.fixture(scope="module")
def readings() -> pl.DataFrame:
    return sensor_readings(ROUNDS)


def _sensor(readings: pl.DataFrame, name: str) -> pl.DataFrame:
    return readings.filter(pl.col("sensor") == name).sort("ts")


def test_the_same_seed_gives_the_same_readings_and_another_seed_others() -> None:
    assert sensor_readings(50).equals(sensor_readings(50))
    assert not sensor_readings(50).equals(sensor_readings(50, seed=1))


def test_readings_are_ordered_unique_and_one_per_sensor_and_round(
    readings: pl.DataFrame,
) -> None:
    assert readings.columns == list(EVENT_COLUMNS) and readings.height == 12 * ROUNDS
    assert readings["id"].to_list() == list(range(1, 12 * ROUNDS + 1))
    assert readings["ts"].is_sorted() and readings["ts"].dtype == pl.Datetime("us", "UTC")
    assert readings["ts"].min() >= START  # type: ignore[operator]
    assert readings["ts"].max() < START + timedelta(seconds=10 * ROUNDS)  # type: ignore[operator]
    counts = readings.group_by("sensor").len().sort("sensor")
    assert counts["sensor"].to_list() == [f"s{i:02d}" for i in range(1, 13)]
    assert set(counts["len"]) == {ROUNDS}
    assert (readings["ts"].dt.microsecond() % 1000 == 0).all()  # whole ms, as on the wire
    assert set(readings["fault"]) == {"0", "1"}


def test_healthy_sensors_are_never_faulty_and_never_miss_a_value(
    readings: pl.DataFrame,
) -> None:
    healthy = readings.filter(~pl.col("sensor").is_in(list(FAULTS)))
    assert (healthy["fault"] == "0").all()
    assert healthy.null_count().sum_horizontal().item() == 0
    assert healthy["temperature"].is_between(10, 35).all()


def test_the_spiking_sensor_jumps_far_for_single_readings(readings: pl.DataFrame) -> None:
    spiky = _sensor(readings, "s03")
    faulty = spiky.filter(pl.col("fault") == "1")
    assert 0.02 < faulty.height / spiky.height < 0.07
    median = spiky.filter(pl.col("fault") == "0")["temperature"].median()
    assert ((faulty["temperature"] - median).abs() > 10).all()  # type: ignore[operator]


def test_the_stuck_sensor_repeats_its_reading_exactly_while_faulty(
    readings: pl.DataFrame,
) -> None:
    stuck = _sensor(readings, "s05").with_columns(
        same=(pl.col("temperature") == pl.col("temperature").shift())
        & (pl.col("vibration") == pl.col("vibration").shift())
    )
    faulty = stuck.filter(pl.col("fault") == "1")
    assert faulty.height > 20 and faulty["same"].all()
    assert not stuck.filter(pl.col("fault") == "0")["same"].any()


def test_the_dropping_sensor_sends_no_values_and_a_weak_signal_when_faulty(
    readings: pl.DataFrame,
) -> None:
    dropping = _sensor(readings, "s07")
    faulty = dropping.filter(pl.col("fault") == "1")
    assert 0.05 < faulty.height / dropping.height < 0.11
    assert faulty["temperature"].is_null().all() and faulty["vibration"].is_null().all()
    assert dropping.filter(pl.col("fault") == "0")["temperature"].null_count() == 0
    assert faulty["rssi"].max() < dropping.filter(pl.col("fault") == "0")["rssi"].min()  # type: ignore[operator]


def test_the_drifting_sensor_is_faulty_from_the_tolerance_on(readings: pl.DataFrame) -> None:
    drifting = _sensor(readings, "s09")
    flags = drifting["fault"].to_list()
    first = flags.index("1")
    assert flags == ["0"] * first + ["1"] * (ROUNDS - first)  # faulty from then on
    assert first == pytest.approx(ROUNDS * DRIFT_TOLERANCE / DRIFT_TOTAL, abs=1)
    start, end = drifting["temperature"].head(200).mean(), drifting["temperature"].tail(200).mean()
    assert end - start > 0.8 * DRIFT_TOTAL  # type: ignore[operator]


def test_readings_go_on_the_wire_as_text_with_a_dropout_empty(readings: pl.DataFrame) -> None:
    dropout = readings.filter(pl.col("temperature").is_null()).head(1)
    [fields] = entry_fields(wire_rows(dropout))
    assert list(fields) == list(EVENT_COLUMNS)
    assert fields["temperature"] == fields["vibration"] == ""
    assert fields["sensor"] == "s07" and fields["fault"] == "1"
    assert fields["ts"].endswith("Z") and len(fields["ts"]) == len("2024-03-01T00:00:00.000Z")
    [first] = entry_fields(wire_rows(readings.head(1)))
    assert float(first["temperature"]) == readings["temperature"][0]
