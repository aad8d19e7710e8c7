"""Fetched PostgreSQL rows -> records, and the cursor position after a read (pure); the
postgres source's config."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest

from tidemill.config.fields import ConfigError
from tidemill.config.load import parse_config
from tidemill.config.sources import PostgresSource
from tidemill.tasks.sources.base import CursorPosition
from tidemill.tasks.sources.postgres import SourceError, read_since
from tidemill.tasks.sources.rows import (
    Unreadable,
    next_position,
    records_from_rows,
    row_line,
    value_text,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-7, "-7"),
        (1.5, "1.5"),
        (1e-07, "1e-07"),
        (float("nan"), "nan"),
        (Decimal("2.50"), "2.50"),
        (Decimal("1E+3"), "1000"),
        (Decimal("NaN"), "NaN"),
        ("déjà vu", "déjà vu"),
        ("", ""),
        (datetime(2024, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))), "2024-03-01T12:00:00Z"),
        (datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=UTC), "2024-03-01T12:00:00.25Z"),
        (datetime(2024, 3, 1, 12, 0, 0, 1), "2024-03-01T12:00:00.000001Z"),  # naive: UTC
        (date(2024, 3, 1), "2024-03-01"),
        (time(7, 30), "07:30:00"),
        (timedelta(minutes=2, milliseconds=500), "120.5"),
        (UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    ],
)
def test_values_become_the_text_a_csv_field_would_hold(value: object, text: str | None) -> None:
    assert value_text(value) == text


def test_rows_become_records_shaped_like_a_landing_files() -> None:
    rows = [
        (1, datetime(2024, 3, 1, 12, 0, tzinfo=UTC), 1.5, None),
        (2, datetime(2024, 3, 1, 12, 1, tzinfo=UTC), Decimal("3.0"), "1"),
    ]
    out = records_from_rows(["id", "ts", "x", "y"], rows, ["1", "2"], "postgres:public.ev", "ts")
    expected = pl.DataFrame(
        {
            "id": ["1", "2"],
            "ts": ["2024-03-01T12:00:00Z", "2024-03-01T12:01:00Z"],
            "x": ["1.5", "3.0"],
            "y": [None, "1"],
            "_line": [row_line("1"), row_line("2")],
            "_raw": [
                '{"id": "1", "ts": "2024-03-01T12:00:00Z", "x": "1.5", "y": null}',
                '{"id": "2", "ts": "2024-03-01T12:01:00Z", "x": "3.0", "y": "1"}',
            ],
            "_reject": [None, None],
            "_event_at": [datetime(2024, 3, 1, 12, 0), datetime(2024, 3, 1, 12, 1)],
            "_file": ["postgres:public.ev", "postgres:public.ev"],
        },
        schema_overrides={"y": pl.Utf8, "_reject": pl.Utf8},
    )
    assert out.to_dicts() == expected.to_dicts()
    assert out.schema == expected.schema


def test_a_value_without_text_rejects_its_row_naming_every_such_column() -> None:
    rows = [
        (3, Unreadable("infinity", "timestamptz"), {"a": [1]}, b"\x00\x01"),
        (4, None, [1, 2], None),
    ]
    out = records_from_rows(["id", "ts", "x", "y"], rows, ["3", "4"], "postgres:ev", "ts")
    assert out["_reject"].to_list() == [
        "ts 'infinity' is not a readable timestamptz; x is a nested value; y is binary",
        "x is a nested value",
    ]
    assert (
        out.select("id", "ts", "x", "y").to_dicts()
        == [{"id": None, "ts": None, "x": None, "y": None}] * 2
    )
    assert out["_raw"].to_list() == [
        '{"id": "3", "ts": "infinity", "x": {"a": [1]}, "y": "<2 bytes>"}',
        '{"id": "4", "ts": null, "x": [1, 2], "y": null}',
    ]
    assert out["_event_at"].null_count() == 2


def test_no_rows_give_an_empty_frame_of_the_same_shape() -> None:
    out = records_from_rows(["id", "ts"], [], [], "postgres:ev", "ts")
    assert out.height == 0
    assert out.columns == ["id", "ts", "_line", "_raw", "_reject", "_event_at", "_file"]


def test_row_lines_are_stable_positive_and_differ_by_key() -> None:
    assert row_line("42") == row_line("42") == 3159871589620855869  # pinned: stored rows keep it
    assert row_line("42") != row_line("43")
    assert 0 < row_line("") < 2**63


T = datetime(2024, 3, 1, 12, tzinfo=UTC)


def test_an_empty_read_keeps_the_position() -> None:
    at = CursorPosition("2024-03-01 12:00:00+00", ("1",))
    assert next_position(at, [], [], [], []) is at


def test_a_read_past_the_last_value_keeps_only_the_keys_at_its_greatest_value() -> None:
    at = CursorPosition("2024-03-01 11:00:00+00", ("9",))
    moved = next_position(
        at,
        [T, T + timedelta(seconds=1), T + timedelta(seconds=1)],
        ["2024-03-01 12:00:00+00", "2024-03-01 12:00:01+00", "2024-03-01 12:00:01+00"],
        ["1", "2", "3"],
        [False, False, False],
    )
    assert moved == CursorPosition("2024-03-01 12:00:01+00", ("2", "3"))


def test_a_read_that_stays_at_the_last_value_adds_its_keys() -> None:
    at = CursorPosition("2024-03-01 12:00:00+00", ("1", "2"))
    moved = next_position(at, [T, T], ["2024-03-01 12:00:00+00"] * 2, ["3", "4"], [True, True])
    assert moved == CursorPosition("2024-03-01 12:00:00+00", ("1", "2", "3", "4"))


def test_numeric_cursor_values_of_different_scale_are_one_value() -> None:
    moved = next_position(
        CursorPosition(),
        [Decimal("1.0"), Decimal("1.00")],
        ["1.0", "1.00"],
        ["a", "b"],
        [False, False],
    )
    assert moved == CursorPosition("1.00", ("a", "b"))


SOURCE = {
    "kind": "postgres",
    "dsn": "postgresql://user@127.0.0.1:5432/db",
    "table": "public.events",
    "cursor": "updated_at",
}
PIPELINE = {
    "event_time": "ts",
    "key": "id",
    "target": "y",
    "features": ["a"],
    "classes": [0, 1],
}


def _parse(**changes: object) -> PostgresSource:
    body = {**PIPELINE, "source": SOURCE, **changes}
    config = parse_config({"pipelines": {"p": body}}, Path("t.toml"))
    source = config.pipeline("p").source
    assert isinstance(source, PostgresSource)
    return source


def test_a_postgres_source_config_loads() -> None:
    source = _parse()
    assert (source.table, source.cursor, source.read_rows) == ("public.events", "updated_at", None)
    assert source.label == "postgres:public.events"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"key": None},
            "t.toml: pipelines.p: a postgres source needs `key` "
            "(rows at the last cursor value are told apart by it)",
        ),
        (
            {"features": None},
            "t.toml: pipelines.p: a postgres source needs `features` (they are not read from the table)",
        ),
        (
            {"source": {**SOURCE, "table": "events; DROP TABLE x"}},
            "t.toml: pipelines.p.source.table: must be a table name, `name` or `schema.name` "
            "(got 'events; DROP TABLE x')",
        ),
        (
            {"source": {**SOURCE, "kind": "mysql"}},
            "t.toml: pipelines.p.source.kind: must be 'files' or 'postgres' or 'redis_stream' (got 'mysql')",
        ),
        (
            {"source": {k: v for k, v in SOURCE.items() if k != "cursor"}},
            "t.toml: pipelines.p.source.cursor: is required",
        ),
        (
            {"source": {**SOURCE, "format": "csv"}},
            "t.toml: pipelines.p.source.format: unknown key",
        ),
    ],
)
def test_a_wrong_postgres_source_gives_one_line(changes: dict[str, object], message: str) -> None:
    body = {**PIPELINE, "source": SOURCE, **changes}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        parse_config({"pipelines": {"p": body}}, Path("t.toml"))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(message)


def test_an_unreachable_server_is_one_line_naming_the_source(free_port: int) -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port}/db"
    with pytest.raises(SourceError) as error:
        read_since(dsn, "public.ev", "u", "id", ["id"], CursorPosition(), 10, "id", "x")
    text = str(error.value)
    assert text.startswith("postgres:public.ev: cannot connect: ") and "\n" not in text
