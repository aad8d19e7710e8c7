from datetime import datetime
from pathlib import Path

import polars as pl

from tidemill.config.load import parse_config
from tidemill.tasks.features.aggregate import (
    merge_window_stats,
    previous_window_keys,
    target_value,
    window_partials,
    with_window_features,
)
from tidemill.tasks.features.clean import clean_rows

CONFIG = parse_config(
    {
        "pipelines": {
            "p": {
                "source": {"kind": "files", "path": "x/*.csv"},
                "event_time": "ts",
                "target": "y",
                "features": ["origin", "d"],
                "categorical": ["origin"],
                "time_features": ["hour", "weekday"],
                "aggregates": [{"name": "hourly", "by": ["origin"], "every": "1h"}],
            }
        }
    },
    Path("/tmp/t.toml"),
).pipeline("p")
SPEC = CONFIG.aggregates[0]


def _rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [
                datetime(2024, 1, 1, 10, 5),
                datetime(2024, 1, 1, 10, 50),
                datetime(2024, 1, 1, 11, 10),
                datetime(2024, 1, 1, 9, 59),
                datetime(2024, 1, 1, 11, 30),
            ],
            "origin": ["JFK", "JFK", "JFK", "EWR", "EWR"],
            "d": [1.0, 2.0, 3.0, 4.0, 5.0],
            "y": ["1", None, "0", "1", "1"],
        }
    )


def test_clean_sorts_by_event_time_and_adds_time_features() -> None:
    clean = clean_rows(
        _rows(),
        event_time=CONFIG.event_time,
        key=CONFIG.key,
        features=CONFIG.features or [],
        target=CONFIG.target,
        time_features=CONFIG.time_features,
    )
    assert clean["ts"].is_sorted()
    assert clean.columns == ["ts", "origin", "d", "y", "event_hour", "event_weekday"]
    assert clean["event_hour"].to_list() == [9, 10, 10, 11, 11]
    assert set(clean["event_weekday"]) == {1}  # 2024-01-01 was a Monday


def _clean(rows: pl.DataFrame) -> pl.DataFrame:
    return clean_rows(
        rows,
        event_time=CONFIG.event_time,
        key=CONFIG.key,
        features=CONFIG.features or [],
        target=CONFIG.target,
        time_features=CONFIG.time_features,
    )


def _partials(clean: pl.DataFrame) -> pl.DataFrame:
    value = target_value(CONFIG.target, CONFIG.positive_class)
    return window_partials(clean, SPEC, event_time=CONFIG.event_time, value=value)


def test_window_partials_count_rows_labels_and_positives_per_window_and_group() -> None:
    partials = _partials(_clean(_rows()))
    assert partials.rows() == [
        (datetime(2024, 1, 1, 9), "EWR", 1, 1, 1.0),
        (datetime(2024, 1, 1, 10), "JFK", 2, 1, 1.0),
        (datetime(2024, 1, 1, 11), "EWR", 1, 1, 1.0),
        (datetime(2024, 1, 1, 11), "JFK", 1, 1, 0.0),
    ]


def test_features_read_only_the_previous_window_never_the_rows_own() -> None:
    clean = _clean(_rows())
    stats = merge_window_stats(
        _partials(clean.head(0)),
        _partials(clean),
        SPEC,
    )
    out = with_window_features(clean, SPEC, stats, event_time=CONFIG.event_time)
    # 10:05 JFK reads JFK 09:00 (absent) -> 0 rows; 11:10 JFK reads 10:00 (2 rows, 1 of 1 late)
    assert out.select("ts", "origin", "hourly_prev_rows", "hourly_prev_mean").rows() == [
        (datetime(2024, 1, 1, 9, 59), "EWR", 0.0, None),
        (datetime(2024, 1, 1, 10, 5), "JFK", 0.0, None),
        (datetime(2024, 1, 1, 10, 50), "JFK", 0.0, None),
        (datetime(2024, 1, 1, 11, 10), "JFK", 2.0, 1.0),
        (datetime(2024, 1, 1, 11, 30), "EWR", 0.0, None),
    ]


def test_no_future_leakage_changing_a_later_row_never_changes_an_earlier_feature() -> None:
    clean = _clean(_rows())
    changed = clean.with_columns(
        pl.when(pl.col("ts") >= datetime(2024, 1, 1, 11))
        .then(pl.lit("0"))
        .otherwise(pl.col("y"))
        .alias("y")
    )

    def features(frame: pl.DataFrame) -> pl.DataFrame:
        stats = merge_window_stats(
            frame.head(0).pipe(_partials),
            _partials(frame),
            SPEC,
        )
        return with_window_features(frame, SPEC, stats, event_time=CONFIG.event_time)

    before = features(clean).filter(pl.col("ts") < datetime(2024, 1, 1, 12))
    after = features(changed).filter(pl.col("ts") < datetime(2024, 1, 1, 12))
    assert before.select("hourly_prev_rows", "hourly_prev_mean").equals(
        after.select("hourly_prev_rows", "hourly_prev_mean")
    )


def test_previous_window_keys_and_merge_add_stored_and_batch_counts() -> None:
    clean = _clean(_rows())
    keys = previous_window_keys(clean, SPEC, event_time=CONFIG.event_time)
    assert keys.rows() == [
        (datetime(2024, 1, 1, 8), "EWR"),
        (datetime(2024, 1, 1, 9), "JFK"),
        (datetime(2024, 1, 1, 10), "EWR"),
        (datetime(2024, 1, 1, 10), "JFK"),
    ]
    stored = pl.DataFrame(
        {
            "window_start": [datetime(2024, 1, 1, 10)],
            "origin": ["JFK"],
            "n_rows": [5],
            "n_labelled": [4],
            "target_sum": [2.0],
        }
    )
    merged = merge_window_stats(
        stored,
        _partials(clean),
        SPEC,
    ).sort("window_start", "origin")
    assert merged.filter(pl.col("origin") == "JFK").row(0) == (
        datetime(2024, 1, 1, 10),
        "JFK",
        7,
        5,
        3.0,
    )
