"""Manual backfills on real flights data: fill gaps once, recompute windows, retrain aside."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import load_config
from tidemill.flows.engine.backfill import BackfillError, run_backfill
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.features.aggregate import target_value, window_partials
from tidemill.warehouse.ledger import backfills

REPO = Path(__file__).parents[2]
START, END = datetime(2013, 1, 1, 14), datetime(2013, 1, 1, 18)


@pytest.fixture
def runtime(tmp_path: Path, flight_rows: pl.DataFrame) -> Runtime:
    (tmp_path / "tidemill.toml").write_text((REPO / "tidemill.toml").read_text())
    config = load_config(tmp_path / "tidemill.toml")
    landing = Path(config.pipeline("flights").source.path).parent
    landing.mkdir(parents=True)
    for i in range(4):
        flight_rows.slice(i * 500, 500).write_csv(landing / f"part-{i}.csv")
    runtime = Runtime.open(config)
    while run_cycle(runtime, "flights", drain=True).status == "committed":
        pass
    return runtime


def _one(runtime: Runtime, sql: str) -> object:
    return runtime.con.sql(sql).fetchall()[0][0]


def _lose_window(runtime: Runtime) -> int:
    """Delete the window's rows from raw and clean and spoil its aggregates (a gap)."""
    where = f"ts >= '{START}' AND ts < '{END}'"
    lost = int(_one(runtime, f"SELECT count(*) FROM raw.flights WHERE {where}"))
    runtime.con.execute(f"DELETE FROM raw.flights WHERE {where}")
    runtime.con.execute(f"DELETE FROM clean.flights WHERE {where}")
    runtime.con.execute(
        f"UPDATE agg.flights_origin_hourly SET n_rows = 0 WHERE window_start >= '{START}' AND window_start < '{END}'"
    )
    return lost


def test_a_backfill_inserts_exactly_the_missing_rows_and_recomputes_their_windows(
    runtime: Runtime,
) -> None:
    lost = _lose_window(runtime)
    assert lost > 100
    seen: list[tuple[int, int]] = []
    report = run_backfill(
        runtime,
        "flights",
        START,
        END,
        requested_by="test",
        progress=lambda d, t: seen.append((d, t)),
        chunk_rows=100,
    )
    assert report.rows_inserted == lost
    assert report.rows_present == report.rows_in_window - lost == 0
    assert _one(runtime, "SELECT count(*) FROM raw.flights") == 2000
    assert _one(runtime, "SELECT count(DISTINCT id) FROM raw.flights") == 2000
    assert seen[-1] == (report.rows_in_window, report.rows_in_window) and len(seen) > 2  # progress
    # every aggregate equals a recomputation from all clean rows
    config = runtime.pipelines.states["flights"].config
    clean = runtime.con.sql("SELECT * EXCLUDE (batch_id) FROM clean.flights").pl()
    for spec in config.aggregates:
        expected = window_partials(
            clean,
            spec,
            event_time=config.event_time,
            value=target_value(config.target, config.positive_class),
        ).sort("window_start", *spec.by)
        stored = runtime.con.sql(
            f"SELECT window_start, {', '.join(spec.by)}, n_rows, n_labelled, target_sum "
            f"FROM agg.flights_{spec.name} ORDER BY ALL"
        ).pl()
        assert stored.equals(expected.select(stored.columns)), spec.name
    assert report.windows_recomputed > 0
    # nothing was learned: the champion is untouched
    assert _one(runtime, "SELECT count(*) FROM ml.model_versions WHERE status = 'candidate'") == 0


def test_running_it_twice_changes_nothing(runtime: Runtime) -> None:
    _lose_window(runtime)
    run_backfill(runtime, "flights", START, END, requested_by="test")
    before = runtime.con.sql(
        "SELECT count(*), sum(n_rows) FROM agg.flights_origin_hourly"
    ).fetchall()
    again = run_backfill(runtime, "flights", START, END, requested_by="test")
    assert again.rows_inserted == 0 and again.rows_present == again.rows_in_window > 0
    assert _one(runtime, "SELECT count(*) FROM raw.flights") == 2000
    assert (
        runtime.con.sql("SELECT count(*), sum(n_rows) FROM agg.flights_origin_hourly").fetchall()
        == before
    )


def test_retrain_registers_a_candidate_and_leaves_the_champion_serving(runtime: Runtime) -> None:
    champion = _one(runtime, "SELECT version FROM ml.model_versions WHERE status = 'champion'")
    start, end = (
        datetime(2013, 1, 1),
        datetime(2013, 1, 2),
    )  # > batch_rows rows: scored prequentially
    report = run_backfill(runtime, "flights", start, end, retrain=True, requested_by="test")
    assert report.candidate_version is not None and set(report.candidate_metrics) == {
        "accuracy",
        "log_loss",
    }
    row = runtime.con.sql(
        f"SELECT status, parent_version, rows_seen FROM ml.model_versions WHERE version = {report.candidate_version}"
    ).fetchall()[0]
    labelled = _one(
        runtime,
        f"SELECT count(*) FROM clean.flights WHERE late IS NOT NULL AND ts >= '{start}' AND ts < '{end}'",
    )
    assert row == ("candidate", None, labelled)
    assert (
        _one(runtime, "SELECT version FROM ml.model_versions WHERE status = 'champion'") == champion
    )
    assert runtime.pipelines.states["flights"].version == champion
    assert _one(runtime, "SELECT candidate_version FROM _backfills") == report.candidate_version


def test_overlapping_backfills_and_bad_windows_are_refused(runtime: Runtime) -> None:
    backfills.begin(runtime.con, "flights", START, END, False, "someone")
    with pytest.raises(
        backfills.BackfillRefused, match=r"backfill 1 of flights .* is still running"
    ):
        run_backfill(runtime, "flights", START, END, requested_by="test")
    assert backfills.interrupt_running(runtime.con) == 1
    with pytest.raises(BackfillError, match="must be before"):
        run_backfill(runtime, "flights", END, START, requested_by="test")
