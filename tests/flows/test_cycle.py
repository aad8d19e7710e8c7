"""The micro-batch end to end on real flights data, with a temporary DuckDB file."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import TidemillConfig, load_config
from tidemill.data import load_flights
from tidemill.flows.engine.cycle import BatchFailed, run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.synthetic.flights import flight_events, landing_rows

REPO = Path(__file__).parents[2]


def _flights_config(tmp_path: Path, batch_rows: int = 250) -> TidemillConfig:
    text = (
        (REPO / "tidemill.toml")
        .read_text()
        .replace("batch_rows = 500", f"batch_rows = {batch_rows}")
    )
    path = tmp_path / "tidemill.toml"
    path.write_text(text)
    return load_config(path)


def _land(config: TidemillConfig, frame: pl.DataFrame, name: str) -> Path:
    landing = Path(config.pipeline("flights").source.path).parent
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / name
    frame.write_csv(path)
    return path


def _drain(runtime: Runtime, name: str = "flights") -> list:
    reports = []
    while (report := run_cycle(runtime, name, drain=True)).status == "committed":
        reports.append(report)
    return reports


def _one(runtime: Runtime, sql: str) -> object:
    return runtime.con.sql(sql).fetchall()[0][0]


@pytest.fixture
def flights(tmp_path: Path, flight_rows: pl.DataFrame):
    config = _flights_config(tmp_path)
    for i in range(4):
        _land(config, flight_rows.slice(i * 500, 500), f"part-{i}.csv")
    runtime = Runtime.open(config)
    yield runtime
    runtime.con.close()


def test_drain_lands_every_row_once_with_one_model_version_per_batch(
    flights: Runtime, flight_rows: pl.DataFrame
) -> None:
    reports = _drain(flights)
    expected = flight_rows.head(2000)
    labelled = expected["late"].is_not_null().sum()
    assert len(reports) == 8  # 2,000 rows in batches of 250
    assert _one(flights, "SELECT count(*) FROM raw.flights") == 2000
    assert _one(flights, "SELECT count(DISTINCT id) FROM raw.flights") == 2000
    assert _one(flights, "SELECT count(*) FROM clean.flights") == 2000
    assert _one(flights, "SELECT count(*) FROM raw.flights_quarantine") == 0
    assert _one(flights, "SELECT count(*) FROM raw.flights_inbox") == 0
    versions = flights.con.sql(
        "SELECT version, parent_version, batch_id, rows_seen, status FROM ml.model_versions "
        "WHERE candidate = 'main' ORDER BY version"
    ).fetchall()
    assert len(versions) == 8  # and as many of the mlp challenger, numbered in between
    assert [v[1] for v in versions] == [None, *(v[0] for v in versions[:-1])]
    assert [v[2] for v in versions] == [r.batch_id for r in reports]
    assert versions[-1][4] == "champion"
    assert _one(flights, "SELECT count(*) FROM ml.model_versions WHERE status = 'champion'") == 1
    assert _one(flights, "SELECT count(*) FROM ml.model_versions WHERE candidate = 'mlp'") == 8
    # the model learned each labelled row exactly once; cancelled flights were not learned
    assert versions[-1][3] == labelled == sum(r.rows_learned for r in reports)
    assert _one(flights, "SELECT sum(rows_learned) FROM _batches") == labelled
    # rows enter in event-time order
    assert (
        flights.con.sql("SELECT ts FROM raw.flights ORDER BY batch_id, ts").pl()["ts"].is_sorted()
    )


def test_metrics_are_prequential_each_batch_scored_by_the_version_before_it(
    flights: Runtime,
) -> None:
    reports = _drain(flights)
    assert reports[0].scored_by is None and reports[0].metrics == {}
    for before, after in itertools.pairwise(reports):
        assert after.scored_by == before.model_version  # the model that had not seen the batch
    # recompute accuracy from the stored predictions and the labels of each batch
    recomputed = flights.con.sql(
        """SELECT p.batch_id, avg((p.prediction = r.late)::INT) AS accuracy, count(*) AS n
           FROM ml.flights_predictions p JOIN raw.flights r USING (id)
           WHERE r.late IS NOT NULL GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    stored = flights.con.sql(
        "SELECT batch_id, value, n_scored FROM ml.batch_metrics WHERE metric = 'accuracy' "
        "AND candidate = 'main' ORDER BY 1"
    ).fetchall()
    assert len(stored) == 7
    for (b1, acc1, n1), (b2, acc2, n2) in zip(recomputed, stored, strict=True):
        assert (b1, n1) == (b2, n2) and acc1 == pytest.approx(acc2)
    # the scoring version had learned only the rows of earlier batches
    rows = flights.con.sql(
        """SELECT m.batch_id, v.rows_seen,
                  (SELECT sum(rows_learned) FROM _batches b WHERE b.batch_id < m.batch_id)
           FROM ml.batch_metrics m JOIN ml.model_versions v ON v.version = m.model_version
           WHERE m.metric = 'accuracy'"""
    ).fetchall()
    assert all(seen == learned_before for _, seen, learned_before in rows)
    # unlabelled (cancelled) flights are scored too
    assert _one(flights, "SELECT count(*) FROM ml.flights_predictions") == 2000 - 250


def test_running_again_changes_nothing(flights: Runtime) -> None:
    _drain(flights)
    before = flights.con.sql("SELECT count(*), max(batch_id) FROM _batches").fetchall()
    assert _drain(flights) == []
    assert run_cycle(flights, "flights").status == "empty"
    assert flights.con.sql("SELECT count(*), max(batch_id) FROM _batches").fetchall() == before
    assert _one(flights, "SELECT count(*) FROM raw.flights") == 2000


def test_a_batch_that_fails_before_commit_writes_nothing_and_is_retried(
    flights: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cycle(flights, "flights", drain=True)
    import tidemill.warehouse.ledger.batches as batches

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(batches, "_upsert_window", broken)
    champion_before = flights.pipelines.states["flights"].version
    with pytest.raises(BatchFailed, match="disk full"):
        run_cycle(flights, "flights", drain=True)
    monkeypatch.undo()
    assert _one(flights, "SELECT count(*) FROM raw.flights") == 250
    assert _one(flights, "SELECT count(*) FROM raw.flights_inbox") == 1750
    assert _one(flights, "SELECT count(*) FROM ml.model_versions") == 2  # main + mlp, batch 1
    assert _one(flights, "SELECT status FROM _batches ORDER BY batch_id DESC LIMIT 1") == "failed"
    assert (
        flights.pipelines.states["flights"].version == champion_before
    )  # reloaded, not half-learned
    artifacts = list((flights.state_dir / "artifacts" / "flights").glob("*.joblib"))
    assert len(artifacts) == 4  # v1, v2 (main, mlp) and the orphans of the failed attempt
    _drain(flights)
    assert _one(flights, "SELECT count(DISTINCT id) FROM raw.flights") == 2000
    labelled = _one(flights, "SELECT count(*) FROM raw.flights WHERE late IS NOT NULL")
    assert (
        _one(flights, "SELECT rows_seen FROM ml.model_versions WHERE status = 'champion'")
        == labelled
    )


def test_bad_rows_are_quarantined_and_good_rows_of_the_same_file_land(
    tmp_path: Path, flight_rows: pl.DataFrame
) -> None:
    config = _flights_config(tmp_path)
    path = _land(config, flight_rows.slice(0, 10), "mixed.csv")
    with path.open("a") as handle:
        handle.write("999001,not-a-time,AA,JFK,LAX,2475.0,,,1\n")
        handle.write("999002,2013-01-01T12:00:00Z,AA,JFK,LAX,far,,,0\n")
        handle.write("999003,2013-01-01T12:00:00Z,AA\n")
        handle.write("1,2013-01-01T12:00:00Z,AA,JFK,LAX,2475.0,,,0\n")  # id 1 repeats
    runtime = Runtime.open(config)
    _drain(runtime)
    assert _one(runtime, "SELECT count(*) FROM raw.flights") == 10
    reasons = runtime.con.sql(
        "SELECT _line, reason FROM raw.flights_quarantine ORDER BY _line"
    ).fetchall()
    assert reasons == [
        (12, "ts 'not-a-time' is not a timestamp"),
        (13, "distance 'far' is not a finite number"),
        (14, "expected 9 fields, found 3"),
        (15, "duplicate id within the batch"),
    ]
    raw_text = _one(runtime, "SELECT raw_text FROM raw.flights_quarantine WHERE _line = 14")
    assert raw_text == "999003,2013-01-01T12:00:00Z,AA"


def test_grown_and_replaced_files_add_only_what_is_new(
    tmp_path: Path, flight_rows: pl.DataFrame
) -> None:
    config = _flights_config(tmp_path)
    path = _land(config, flight_rows.slice(0, 100), "log.csv")
    runtime = Runtime.open(config)
    _drain(runtime)
    # grown: append 50 rows (same header) -> only they are read
    tail = flight_rows.slice(100, 50).write_csv(include_header=False)
    with path.open("a") as handle:
        handle.write(tail)
    _drain(runtime)
    assert _one(runtime, "SELECT count(*) FROM raw.flights") == 150
    assert _one(runtime, "SELECT count(*) FROM raw.flights_quarantine") == 0
    dispositions = runtime.con.sql(
        "SELECT disposition, records FROM _files ORDER BY ingested_at"
    ).fetchall()
    assert dispositions == [("new", 100), ("grown", 50)]
    # replaced by rows 120..159: 30 repeats are quarantined as duplicates, 10 new ones land
    flight_rows.slice(120, 40).write_csv(path)
    os.utime(path, None)
    _drain(runtime)
    assert _one(runtime, "SELECT count(*) FROM raw.flights") == 160
    assert (
        _one(
            runtime,
            "SELECT count(*) FROM raw.flights_quarantine WHERE reason = 'duplicate id: already stored'",
        )
        == 30
    )


def test_features_and_classes_left_out_of_the_config_come_from_the_landing_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "tidemill.toml").write_text(
        '[pipelines.elec]\nsource = { kind = "files", path = "in/*.csv" }\nevent_time = "ts"\ntarget = "class"\n'
    )
    config = load_config(tmp_path / "tidemill.toml")
    runtime = Runtime.open(config)
    assert run_cycle(runtime, "elec").status == "waiting"  # nothing landed yet: nothing to infer
    (tmp_path / "in").mkdir()
    lines = ["ts,price,demand,class"] + [
        f"{1262304000 + 1800 * i},{i % 7 / 7:.3f},{i % 5 / 5:.3f},{'UP' if i % 7 > 3 else 'DOWN'}"
        for i in range(100)
    ]
    (tmp_path / "in" / "a.csv").write_text("\n".join(lines) + "\n")
    _drain(runtime, "elec")
    state = runtime.pipelines.states["elec"]
    assert state.config.features == ["price", "demand"]
    assert state.model.classes == ["DOWN", "UP"]
    (tmp_path / "in" / "b.csv").write_text(
        f"ts,price,demand,class\n{1262304000 + 1800 * 200},0.5,0.5,FLAT\n"
    )
    _drain(runtime, "elec")
    assert _one(runtime, "SELECT reason FROM raw.elec_quarantine") == (
        "class 'FLAT' is not one of the classes DOWN, UP; declare pipelines.elec.classes"
    )
    assert _one(runtime, "SELECT count(*) FROM raw.elec") == 100


def test_a_batch_that_completes_several_shift_windows_keeps_one_psi_per_feature(
    tmp_path: Path,
) -> None:
    """7,000 rows in one batch: the 2,000-row reference and three 2,000-row PSI windows
    (the drift defaults); ml.feature_shift keeps the largest PSI per feature."""
    config = _flights_config(tmp_path, batch_rows=7000)
    _land(config, landing_rows(flight_events(load_flights().head(7000))), "big.csv")
    runtime = Runtime.open(config)
    try:
        (report,) = _drain(runtime)
        assert report.rows_in == 7000
        rows = runtime.con.sql(
            "SELECT feature, count(*), max(psi) FROM ml.feature_shift GROUP BY 1"
        ).fetchall()
    finally:
        runtime.close()
    assert rows and all(n == 1 and psi >= 0 for _, n, psi in rows), rows
