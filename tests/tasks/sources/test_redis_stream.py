"""Stream entries -> records, entry ids -> lines, rows -> entry fields (pure); the
redis_stream source's config."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.fields import ConfigError
from tidemill.config.load import parse_config
from tidemill.config.sources import RedisStreamSource
from tidemill.tasks.records.lines import MAX_FIELD_BYTES
from tidemill.tasks.sources.base import CursorPosition
from tidemill.tasks.sources.redis_stream import (
    StreamError,
    StreamReader,
    entry_fields,
    entry_line,
    read_position,
    records_from_entries,
)

COLUMNS = ["id", "ts", "x", "y"]


def test_entries_become_records_shaped_like_a_landing_files() -> None:
    first = [b"id", b"1", b"ts", b"2024-03-01T12:00:00Z", b"x", b"1.5", b"y", b""]
    # any field order; an offset; UTF-8 text; a field not declared (kept in _raw only)
    second = [b"id", b"2", b"ts", b"2024-03-01T12:01:00+01:00", b"y", b"1"]
    second += [b"x", "déjà".encode(), b"extra", b"kept"]
    entries = [("1709294400000-0", first), ("1709294400000-1", second)]
    out = records_from_entries(entries, COLUMNS, "redis:sensors", "ts")
    expected = pl.DataFrame(
        {
            "id": ["1", "2"],
            "ts": ["2024-03-01T12:00:00Z", "2024-03-01T12:01:00+01:00"],
            "x": ["1.5", "déjà"],
            "y": ["", "1"],
            "_line": [1709294400000 << 20, 1709294400000 << 20 | 1],
            "_raw": [
                '{"id": "1", "ts": "2024-03-01T12:00:00Z", "x": "1.5", "y": ""}',
                '{"id": "2", "ts": "2024-03-01T12:01:00+01:00", "y": "1", "x": "déjà", '
                '"extra": "kept"}',
            ],
            "_reject": [None, None],
            "_event_at": [datetime(2024, 3, 1, 12, 0), datetime(2024, 3, 1, 11, 1)],
            "_file": ["redis:sensors", "redis:sensors"],
        },
        schema_overrides={"_reject": pl.Utf8},
    )
    assert out.to_dicts() == expected.to_dicts()
    assert out.schema == expected.schema


def test_an_entry_that_is_no_record_keeps_its_text_and_every_reason() -> None:
    good = [b"id", b"1", b"ts", b"2024-03-01T12:00:00Z", b"x", b"1", b"y", b"0"]
    entries = [
        ("1-1", [b"id", b"2", b"ts", b"2024-03-01T12:00:00Z"]),  # lacks x and y
        ("1-2", [*good[:4], b"x", b"\xff\xfe", b"y", b"0"]),  # not UTF-8
        ("1-3", [*good, b"x", b"2"]),  # x twice
        ("1-4", None),  # deleted while pending
        ("1-5", [*good[:6], b"y", b"7" * (MAX_FIELD_BYTES + 1)]),  # too long
        ("1-6", [b"\xc3", b"v", *good]),  # a field name that is not UTF-8
    ]
    out = records_from_entries(entries, COLUMNS, "redis:s", "ts")
    assert out["_reject"].to_list() == [
        "entry lacks field(s) x, y",
        "field(s) x hold bytes that are not UTF-8",
        "entry repeats field(s) x",
        "deleted from the stream before it was stored (XDEL or a trim): its fields are gone",
        f"field(s) y longer than {MAX_FIELD_BYTES} bytes",
        "field(s) \ufffd hold bytes that are not UTF-8",
    ]
    assert out.select(*COLUMNS, "_event_at").null_count().row(0) == (6,) * 5  # no values
    assert (
        out["_raw"][1] == '{"id": "1", "ts": "2024-03-01T12:00:00Z", "x": "\ufffd\ufffd", "y": "0"}'
    )
    assert out["_raw"][2].endswith('"y": "0", "x": "2"}')  # both x kept as sent
    assert out["_raw"][3] is None
    assert out["_raw"][4].endswith(f'"y": "{"7" * 1024}… [{MAX_FIELD_BYTES + 1} bytes]"}}')
    assert out["_line"].to_list() == [1 << 20 | i for i in range(1, 7)]


def test_no_entries_give_an_empty_frame_of_the_same_shape() -> None:
    out = records_from_entries([], COLUMNS, "redis:s", "ts")
    full = records_from_entries([("1-1", [b"id", b"1"])], COLUMNS, "redis:s", "ts")
    assert out.height == 0 and out.schema == full.schema


def test_entry_lines_give_the_id_back_and_sort_like_ids() -> None:
    ids = ["0-1", "1-0", "1-1048575", "1795636709177-0", "1795636709177-12", "1795636709178-0"]
    lines = [entry_line(i) for i in ids]
    assert lines == sorted(lines) and len(set(lines)) == len(ids)
    assert [f"{line >> 20}-{line & 1048575}" for line in lines] == ids
    assert all(0 <= line < 1 << 63 for line in lines)


@pytest.mark.parametrize("entry_id", ["1-1048576", f"{1 << 43}-0", "18446744073709551615-5"])
def test_an_id_beyond_the_packed_range_gets_a_stable_hash(entry_id: str) -> None:
    line = entry_line(entry_id)
    assert line == entry_line(entry_id) and 0 <= line < 1 << 63
    assert line != entry_line(entry_id + "1")


def test_a_read_records_its_last_id_and_every_id_it_read() -> None:
    entries = [("5-0", None), ("7-2", [b"id", b"1"]), ("9-0", [b"id", b"2"])]
    assert read_position(entries) == CursorPosition("9-0", ("5-0", "7-2", "9-0"))
    assert read_position([]) == CursorPosition(None, ())


def test_rows_become_entry_fields_of_text_with_a_missing_value_empty() -> None:
    rows = pl.DataFrame({"id": [1, 2], "x": [1.5, None], "s": ["a", None]})
    assert entry_fields(rows) == [
        {"id": "1", "x": "1.5", "s": "a"},
        {"id": "2", "x": "", "s": ""},
    ]


def test_an_unreachable_broker_is_one_line_naming_the_source(free_port: int) -> None:
    with (
        StreamReader(f"redis://127.0.0.1:{free_port}/0", "sensors", "g", "c") as reader,
        pytest.raises(StreamError) as error,
    ):
        reader.read(10, COLUMNS, "ts")
    text = str(error.value)
    assert text.startswith("redis:sensors: cannot read: ") and "\n" not in text


# ----------------------------------------------------------------- config

SOURCE = {"kind": "redis_stream", "url": "redis://127.0.0.1:6390/0", "stream": "sensors"}
PIPELINE = {
    "event_time": "ts",
    "key": "id",
    "target": "y",
    "features": ["x"],
    "classes": [0, 1],
}


def test_a_redis_stream_source_config_loads() -> None:
    body = {**PIPELINE, "source": SOURCE}
    source = parse_config({"pipelines": {"p": body}}, Path("t.toml")).pipeline("p").source
    assert isinstance(source, RedisStreamSource)
    assert (source.stream, source.group, source.consumer, source.read_rows) == (
        "sensors",
        "tidemill",
        "worker-1",
        None,
    )
    assert source.label == "redis:sensors"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"features": None},
            "t.toml: pipelines.p: a redis_stream source needs `features` "
            "(they are not read from entries)",
        ),
        (
            {"classes": None},
            "t.toml: pipelines.p: a redis_stream source needs `classes` "
            "(they are not read from entries)",
        ),
        (
            {"source": {**SOURCE, "url": "http://127.0.0.1:6390"}},
            "t.toml: pipelines.p.source.url: must be a redis:// or rediss:// URL",
        ),
        (
            {"source": {**SOURCE, "url": "redis://127.0.0.1:63g9/0"}},
            "t.toml: pipelines.p.source.url: must be a redis:// or rediss:// URL with a numeric port",
        ),
        (
            {"source": {**SOURCE, "consumer": "worker 1"}},
            "t.toml: pipelines.p.source.consumer: must be 1-200 characters without spaces",
        ),
        (
            {"source": {k: v for k, v in SOURCE.items() if k != "stream"}},
            "t.toml: pipelines.p.source.stream: is required",
        ),
        (
            {"source": {**SOURCE, "cursor": "ts"}},
            "t.toml: pipelines.p.source.cursor: unknown key",
        ),
        (
            {"source": {**SOURCE, "kind": "kafka"}},
            "t.toml: pipelines.p.source.kind: must be 'files' or 'postgres' or 'redis_stream' "
            "(got 'kafka')",
        ),
    ],
)
def test_a_wrong_redis_stream_source_gives_one_line(
    changes: dict[str, object], message: str
) -> None:
    body = {**PIPELINE, "source": SOURCE, **changes}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        parse_config({"pipelines": {"p": body}}, Path("t.toml"))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(message)
