from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import parse_config
from tidemill.tasks.records.csv_text import parse_csv
from tidemill.tasks.records.validate import (
    RecordSchema,
    canonical_label,
    parse_number,
    parse_timestamp,
    validate_records,
)

NOW = datetime(2026, 1, 1)


def _config(**overrides: object):
    body = {
        "source": {"kind": "files", "path": "x/*.csv"},
        "event_time": "ts",
        "key": "id",
        "target": "target",
        "features": ["f", "c"],
        "categorical": ["c"],
        **overrides,
    }
    return parse_config({"pipelines": {"p": body}}, Path("/tmp/t.toml")).pipeline("p")


def _records(text: str, config) -> pl.DataFrame:
    required = [config.key, config.event_time, *config.features, config.target]
    return parse_csv(text.encode(), [c for c in required if c])[1]


def test_timestamps_parse_from_iso_with_and_without_offset_and_epoch() -> None:
    values = [
        "2013-01-01T10:15:00Z",
        "2013-01-01 10:15:00",
        "2013-01-01T11:15:00+01:00",
        "1357035300",
        "1357035300000",
        "2013-01-01",
        "soon",
        None,
    ]
    parsed = pl.DataFrame({"t": values}, schema={"t": pl.Utf8}).select(parse_timestamp(pl.col("t")))
    expected = [datetime(2013, 1, 1, 10, 15)] * 5 + [datetime(2013, 1, 1), None, None]
    assert parsed.to_series().to_list() == expected


def test_numbers_and_labels_are_normalised() -> None:
    numbers = pl.select(
        parse_number(pl.lit(pl.Series(["1.5", " 2 ", "", "abc", "inf", None])))
    ).to_series()
    assert numbers[:3].to_list() == [1.5, 2.0, None]
    assert all(v != v for v in numbers[3:5].to_list())  # NaN marks "present but not a number"
    assert numbers[5] is None
    labels = pl.select(
        canonical_label(pl.lit(pl.Series(["1", "1.0", "true", "0", "FALSE", "UP", ""])))
    ).to_series()
    assert labels.to_list() == ["1", "1", "1", "0", "0", "UP", None]


def test_each_bad_row_is_rejected_with_every_reason_and_good_rows_are_typed() -> None:
    config = _config()
    text = (
        "id,ts,f,c,target\n"
        "1,2024-01-01T00:00:00Z,1.5, a ,1\n"
        "2,garbage,x,b,0\n"
        "3,2099-01-01,1,b,1\n"
        "1,2024-01-02,1,b,1\n"
        "4,2024-01-02,,b,UP\n"
        "5,2024-01-03,2,,\n"
        "6,2024-01-03\n"
    )
    result = validate_records(_records(text, config), RecordSchema.of(config), NOW)
    assert result.accepted.rows() == [
        (datetime(2024, 1, 1), "1", 1.5, "a", "1", 2),
        (datetime(2024, 1, 3), "5", 2.0, None, None, 7),
    ]
    assert result.accepted.columns == ["ts", "id", "f", "c", "target", "_line"]
    reasons = dict(zip(result.rejected["_line"], result.rejected["reason"], strict=True))
    assert reasons == {
        3: "ts 'garbage' is not a timestamp; f 'x' is not a finite number",
        4: "ts '2099-01-01' is outside 1970-01-01 .. 2026-01-02T00:00:00",
        5: "duplicate id within the batch",
        6: "target 'UP' is not one of the classes 0, 1; declare pipelines.p.classes",
        8: "expected 5 fields, found 2",
    }
    assert result.accepted.height + result.rejected.height == 7  # nothing dropped


def test_keys_already_stored_are_rejected_as_duplicates() -> None:
    config = _config()
    text = "id,ts,f,c,target\n1,2024-01-01,1,a,1\n2,2024-01-01,1,a,0\n"
    result = validate_records(
        _records(text, config), RecordSchema.of(config), NOW, known_keys=pl.Series(["2"])
    )
    assert result.accepted["id"].to_list() == ["1"]
    assert result.rejected["reason"].to_list() == ["duplicate id: already stored"]


def test_regression_targets_must_be_numbers() -> None:
    config = _config(task="regression", model={"estimator": "sgd_regressor"})
    text = "id,ts,f,c,target\n1,2024-01-01,1,a,3.5\n2,2024-01-01,1,a,high\n"
    result = validate_records(_records(text, config), RecordSchema.of(config), NOW)
    assert result.accepted["target"].to_list() == [3.5]
    assert result.rejected["reason"].to_list() == ["target 'high' is not a finite number"]


@pytest.mark.parametrize("rows", [0, 1])
def test_small_inputs(rows: int) -> None:
    config = _config()
    text = "id,ts,f,c,target\n" + "1,2024-01-01,1,a,1\n" * rows
    result = validate_records(_records(text, config), RecordSchema.of(config), NOW)
    assert result.accepted.height == rows and result.rejected.height == 0
