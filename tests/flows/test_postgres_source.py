"""A PostgreSQL table as a source, against a real server: incremental reads inclusive on
the cursor and de-duplicated on the key, atomic with the inbox, end to end and backfills."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from tidemill.config.load import load_config
from tidemill.flows.engine.backfill import run_backfill
from tidemill.flows.engine.cycle import CycleReport, run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.sources.postgres import SourceError
from tidemill.tasks.sources.rows import row_line

pytestmark = pytest.mark.slow

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CONFIG = """
[pipelines.events]
source = {{ kind = "postgres", dsn = "{dsn}", table = "public.{table}", cursor = "updated_at"{extra} }}
event_time = "ts"
key = "id"
target = "target"
features = ["feat_1", "feat_2", "kind"]
categorical = ["kind"]
classes = [0, 1]
model = {{ estimator = "sgd_classifier", params = {{ loss = "log_loss" }} }}
batch_rows = {batch_rows}
"""
COLUMNS = ("id", "ts", "feat_1", "feat_2", "kind", "target", "updated_at")
_tables = itertools.count()


@pytest.fixture
def table(postgres_dsn: str) -> Iterator[str]:
    """A fresh events table (its name)."""
    name = f"events_{next(_tables)}"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(
            f"CREATE TABLE public.{name} (id BIGINT PRIMARY KEY, ts TIMESTAMPTZ, "
            "feat_1 DOUBLE PRECISION, feat_2 NUMERIC, kind TEXT, target INT, "
            "updated_at TIMESTAMPTZ)"
        )
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"DROP TABLE public.{name}")


def _runtime(tmp_path: Path, dsn: str, table: str, batch_rows: int, **source: int) -> Runtime:
    extra = "".join(f", {k} = {v}" for k, v in source.items())
    text = CONFIG.format(dsn=dsn, table=table, batch_rows=batch_rows, extra=extra)
    (tmp_path / "tidemill.toml").write_text(textwrap.dedent(text))
    return Runtime.open(load_config(tmp_path / "tidemill.toml"))


def _rows(ids: range, updated_at: datetime, seed: int = 0) -> list[tuple[Any, ...]]:
    """Labelled synthetic rows; event time one minute per id."""
    rng = np.random.default_rng(seed + ids.start)
    out = []
    for i in ids:
        x1, x2 = float(rng.normal()), float(rng.normal())
        target = int(x1 + 0.5 * x2 + rng.normal(scale=0.3) > 0)
        ts = T0 + timedelta(minutes=i)
        out.append((i, ts, round(x1, 4), round(x2, 4), "ab"[i % 2], target, updated_at))
    return out


def _insert(dsn: str, table: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as con, con.cursor() as cur:
        cur.executemany(
            f"INSERT INTO public.{table} ({', '.join(COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def _drain(runtime: Runtime) -> list[CycleReport]:
    reports = []
    while (report := run_cycle(runtime, "events", drain=True)).status == "committed":
        reports.append(report)
    return reports


def _all(runtime: Runtime, sql: str) -> list[tuple[Any, ...]]:
    return runtime.con.sql(sql).fetchall()


def _one(runtime: Runtime, sql: str) -> Any:
    return _all(runtime, sql)[0][0]


def test_rows_written_at_the_last_cursor_value_are_neither_missed_nor_read_twice(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    # reads of 4 rows cut through the 6 rows sharing T0: the cursor stops inside a value
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=2, read_rows=4)
    _insert(postgres_dsn, table, _rows(range(1, 7), T0))
    _drain(runtime)
    assert _one(runtime, "SELECT count(*) FROM raw.events") == 6
    last, keys = _all(runtime, "SELECT last_value, keys_at_last FROM _cursors")[0]
    assert last == "2024-03-01 12:00:00+00" and sorted(keys, key=int) == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    ]
    # a late writer commits more rows at exactly the last value, and one after it
    _insert(
        postgres_dsn,
        table,
        [*_rows(range(7, 9), T0), *_rows(range(9, 10), T0 + timedelta(seconds=1))],
    )
    reports = _drain(runtime)
    assert sum(r.rows_in for r in reports) == 3
    ids = [r[0] for r in _all(runtime, "SELECT id FROM raw.events ORDER BY id::INT")]
    assert ids == [str(i) for i in range(1, 10)]
    assert _one(runtime, "SELECT count(*) FROM raw.events_quarantine") == 0
    assert _all(runtime, "SELECT last_value, keys_at_last, rows_read FROM _cursors") == [
        ("2024-03-01 12:00:01+00", ["9"], 9)
    ]
    assert _drain(runtime) == []  # nothing new: nothing read again
    runtime.con.close()


class _CrashOnCursorMove:
    """The warehouse connection, failing the statement that moves the cursor: after the
    records went into the inbox, inside the same transaction."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO _cursors"):
            raise OSError("crash between read and commit (injected)")
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def test_a_crash_inside_the_read_transaction_loses_and_duplicates_nothing(
    tmp_path: Path, postgres_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=5)
    _insert(postgres_dsn, table, _rows(range(1, 21), T0))
    real = runtime.con
    monkeypatch.setattr(runtime, "con", _CrashOnCursorMove(real))
    runtime.pipeline("events")
    with pytest.raises(OSError, match="injected"):
        run_cycle(runtime, "events", drain=True)
    monkeypatch.undo()
    assert _one(runtime, "SELECT count(*) FROM raw.events_inbox") == 0  # rolled back
    assert _one(runtime, "SELECT count(*) FROM _cursors") == 0
    _drain(runtime)
    assert _all(runtime, "SELECT count(*), count(DISTINCT id) FROM raw.events") == [(20, 20)]
    assert _one(runtime, "SELECT count(*) FROM raw.events_quarantine") == 0
    assert _one(runtime, "SELECT rows_read FROM _cursors") == 20
    runtime.con.close()


def test_drain_end_to_end_with_prequential_metrics_and_one_model_version_per_batch(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=100)
    rows = _rows(range(1, 601), T0)
    # updated in bursts of 50 rows sharing one timestamp
    _insert(
        postgres_dsn,
        table,
        [(*r[:-1], T0 + timedelta(seconds=i // 50)) for i, r in enumerate(rows)],
    )
    reports = _drain(runtime)
    assert len(reports) == 6
    assert _all(runtime, "SELECT count(*), count(DISTINCT id) FROM raw.events") == [(600, 600)]
    assert _one(runtime, "SELECT count(*) FROM raw.events_inbox") == 0
    versions = _all(
        runtime,
        "SELECT version, parent_version, batch_id, rows_seen FROM ml.model_versions ORDER BY version",
    )
    assert [v[0] for v in versions] == list(range(1, 7))
    assert [v[1] for v in versions] == [None, *range(1, 6)]
    assert [v[2] for v in versions] == [r.batch_id for r in reports]
    assert versions[-1][3] == 600
    assert reports[0].scored_by is None
    for before, after in itertools.pairwise(reports):
        assert after.scored_by == before.model_version
    accuracy = _all(
        runtime,
        "SELECT batch_id, model_version, n_scored, value FROM ml.batch_metrics "
        "WHERE metric = 'accuracy' ORDER BY batch_id",
    )
    assert [(b, v, n) for b, v, n, _ in accuracy] == [
        (r.batch_id, r.scored_by, 100) for r in reports[1:]
    ]
    assert np.mean([a for *_, a in accuracy[-3:]]) > 0.7  # it learns the synthetic rule
    raw = _all(runtime, "SELECT _file, _line FROM raw.events WHERE id = '7'")
    assert raw == [(f"postgres:public.{table}", row_line("7"))]
    runtime.con.close()


def test_nulls_and_odd_types_become_text_or_quarantined_records(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"ALTER TABLE public.{table} ALTER COLUMN kind TYPE JSONB USING to_jsonb(kind)")
        con.execute(
            f"INSERT INTO public.{table} VALUES "
            "(1, '2024-03-01 14:00:00+02', 1.5, 2.50, '\"a\"', 1, now()), "  # offset -> UTC
            "(2, '2024-03-01 12:01:00+00', NULL, NULL, NULL, NULL, now()), "  # NULLs: unlabelled
            "(3, 'infinity', 1, 1, '\"a\"', 0, now()), "  # no datetime for it
            "(4, '2024-03-01 12:02:00+00', 'NaN', 1, '\"b\"', 0, now()), "  # not finite
            "(5, '2024-03-01 12:03:00+00', 1, 'NaN', '{\"x\": 1}', 0, now()), "  # nested JSON
            "(6, NULL, 1, 1, '\"a\"', 0, now()), "  # no event time
            "(7, '2024-03-01 12:04:00+00', 1, 1, '\"a\"', 0, NULL)"  # no cursor: never read
        )
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=50)
    _drain(runtime)
    accepted = _all(
        runtime,
        "SELECT id, ts, feat_1, feat_2, kind, target FROM raw.events ORDER BY id",
    )
    assert accepted == [
        ("1", datetime(2024, 3, 1, 12, 0), 1.5, 2.5, "a", "1"),  # a JSON string is text
        ("2", datetime(2024, 3, 1, 12, 1), None, None, None, None),
    ]
    rejected = dict(_all(runtime, "SELECT _line, reason FROM raw.events_quarantine"))
    assert rejected == {
        row_line("3"): "ts 'infinity' is not a readable timestamptz",
        row_line("4"): "feat_1 'nan' is not a finite number",
        row_line("5"): "kind is a nested value",
        row_line("6"): "ts is empty",
    }
    raw_text = _one(
        runtime, f"SELECT raw_text FROM raw.events_quarantine WHERE _line = {row_line('5')}"
    )
    assert '"kind": {"x": 1}' in raw_text and '"feat_2": "NaN"' in raw_text
    runtime.con.close()


def test_an_updated_row_is_read_again_and_quarantined_as_a_repeated_key(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=10)
    _insert(postgres_dsn, table, _rows(range(1, 6), T0))
    _drain(runtime)
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(
            f"UPDATE public.{table} SET feat_1 = 9, updated_at = %s WHERE id = 3",
            [T0 + timedelta(minutes=1)],
        )
    _drain(runtime)
    assert _one(runtime, "SELECT feat_1 FROM raw.events WHERE id = '3'") != 9.0  # not merged
    assert _all(runtime, "SELECT _line, reason FROM raw.events_quarantine") == [
        (row_line("3"), "duplicate id: already stored")
    ]
    runtime.con.close()


def test_a_backfill_reads_its_event_time_window_straight_from_the_table(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=50)
    _insert(postgres_dsn, table, _rows(range(0, 100), T0 + timedelta(hours=1)))
    _drain(runtime)
    # rows committed late with an old cursor value: incremental reads never see them
    _insert(postgres_dsn, table, _rows(range(100, 130), T0))
    assert _drain(runtime) == []
    start, end = (T0 + timedelta(minutes=90)).replace(tzinfo=None), datetime(2024, 3, 1, 14, 30)
    report = run_backfill(runtime, "events", start, end, requested_by="test")
    assert (report.rows_in_window, report.rows_present, report.rows_inserted) == (40, 10, 30)
    ids = [r[0] for r in _all(runtime, "SELECT id::INT FROM raw.events ORDER BY 1")]
    assert ids == list(range(0, 130))
    assert _one(runtime, "SELECT count(*) FROM raw.events_quarantine") == 0
    runtime.con.close()


def test_a_table_lacking_a_declared_column_stops_the_cycle_with_one_line(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"ALTER TABLE public.{table} DROP COLUMN kind")
    rows = [r[:4] + r[5:] for r in _rows(range(1, 4), T0)]
    with psycopg.connect(postgres_dsn, autocommit=True) as con, con.cursor() as cur:
        cur.executemany(
            f"INSERT INTO public.{table} (id, ts, feat_1, feat_2, target, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )
    runtime = _runtime(tmp_path, postgres_dsn, table, batch_rows=10)
    with pytest.raises(SourceError) as error:
        run_cycle(runtime, "events", drain=True)
    assert str(error.value) == (
        f'postgres:public.{table}: cannot read: column "kind" does not exist'
    )
    assert _one(runtime, "SELECT count(*) FROM _cursors") == 0
    runtime.con.close()
