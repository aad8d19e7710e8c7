import json

import polars as pl
import pytest

from tidemill.tasks.records.csv_text import parse_csv
from tidemill.tasks.records.ndjson import parse_ndjson
from tidemill.tasks.records.parquet import parse_parquet

REQUIRED = ["id", "ts", "x"]


def test_csv_keeps_raw_text_and_line_numbers_and_only_required_columns() -> None:
    data = b"id,ts,x,extra\n1,2024-01-01,1.5,zzz\n2,2024-01-02,2.5,yyy\n"
    header, records = parse_csv(data, REQUIRED)
    assert header == ["id", "ts", "x", "extra"]
    assert records.columns == [*REQUIRED, "_line", "_raw", "_reject"]
    assert records.select(REQUIRED).rows() == [
        ("1", "2024-01-01", "1.5"),
        ("2", "2024-01-02", "2.5"),
    ]
    assert records["_line"].to_list() == [2, 3]
    assert records["_raw"].to_list() == ["1,2024-01-01,1.5,zzz", "2,2024-01-02,2.5,yyy"]
    assert records["_reject"].null_count() == 2


def test_csv_bom_crlf_quoted_newline_and_blank_lines() -> None:
    data = b'\xef\xbb\xbfid,ts,x\r\n1,"2024-01-01",1\r\n\r\n2,"multi\r\nline",2\r\n'
    _, records = parse_csv(data, REQUIRED)
    assert records["id"].to_list() == ["1", "2"]
    assert records["ts"].to_list() == ["2024-01-01", "multi\r\nline"]
    assert records["_line"].to_list() == [2, 4]
    assert records["_reject"].null_count() == 2


def test_csv_ragged_and_bad_utf8_rows_are_rejected_one_by_one() -> None:
    data = b"id,ts,x\n1,a,1\n2,b\n3,c,3,4\n\xff\xfe,d,5\n6,e,6"
    _, records = parse_csv(data, REQUIRED)
    assert records["_reject"].to_list() == [
        None,
        "expected 3 fields, found 2",
        "expected 3 fields, found 4",
        "invalid UTF-8 bytes",
        None,
    ]
    assert records["_raw"][1] == "2,b"
    assert records["id"].to_list()[-1] == "6"  # a last line without newline still counts


def test_csv_missing_required_column_rejects_every_row_with_the_reason() -> None:
    _, records = parse_csv(b"id,x\n1,2\n3,4\n", REQUIRED)
    assert records.height == 2
    assert set(records["_reject"]) == {"file lacks column(s) ts"}


def test_csv_empty_and_header_only_files_give_no_records() -> None:
    assert parse_csv(b"", REQUIRED)[1].height == 0
    header, records = parse_csv(b"id,ts,x\n", REQUIRED)
    assert header == REQUIRED and records.height == 0


def test_ndjson_rejects_bad_json_non_objects_missing_and_nested_fields() -> None:
    lines = [
        json.dumps({"id": 1, "ts": "2024-01-01", "x": 1.5}),
        "{not json",
        "[1, 2]",
        json.dumps({"id": 2, "ts": "2024-01-01"}),
        json.dumps({"id": 3, "ts": "2024-01-01", "x": {"a": 1}}),
        json.dumps({"id": 4, "ts": None, "x": True}),
    ]
    _, records = parse_ndjson("\n".join(lines).encode(), REQUIRED)
    reasons = records["_reject"].to_list()
    assert reasons[0] is None and reasons[5] is None
    assert reasons[1].startswith("invalid JSON")
    assert reasons[2] == "JSON line is not an object"
    assert reasons[3] == "record lacks field(s) x"
    assert reasons[4] == "nested value in field(s) x"
    assert records.row(5)[:3] == ("4", None, "true")


def test_parquet_values_become_text_and_corrupt_files_raise_value_error(tmp_path) -> None:
    frame = pl.DataFrame({"id": [1, 2], "ts": ["2024-01-01", "2024-01-02"], "x": [1.5, None]})
    path = tmp_path / "f.parquet"
    frame.write_parquet(path)
    _, records = parse_parquet(path.read_bytes(), REQUIRED)
    assert records.select(REQUIRED).rows() == [
        ("1", "2024-01-01", "1.5"),
        ("2", "2024-01-02", None),
    ]
    assert json.loads(records["_raw"][0]) == {"id": 1, "ts": "2024-01-01", "x": 1.5}
    with pytest.raises(ValueError, match="unreadable Parquet"):
        parse_parquet(path.read_bytes()[:-20], REQUIRED)
