"""replay-model rebuilds a version from the raw rows of its batches, bit for bit."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.replay import ReplayError, replay_model
from tidemill.flows.engine.runtime import Runtime

REPO = Path(__file__).parents[2]

EXTRA = """
lags = [{ name = "route", by = ["origin", "dest"], n = 2 }]
promotion = { window_rows = 500, min_rows = 250, margin = 0.0 }
"""


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory, flight_rows: pl.DataFrame) -> Runtime:
    tmp = tmp_path_factory.mktemp("replay")
    text = (REPO / "tidemill.toml").read_text().replace("batch_rows = 500", "batch_rows = 200")
    text = text.replace("every_seconds = 5\n", "every_seconds = 5\n" + EXTRA, 1)
    (tmp / "tidemill.toml").write_text(text)
    config = load_config(tmp / "tidemill.toml")
    landing = Path(config.pipeline("flights").source.path).parent
    landing.mkdir(parents=True)
    flight_rows.slice(0, 1000).write_csv(landing / "a.csv")
    runtime = Runtime.open(config)
    while run_cycle(runtime, "flights", drain=True).status == "committed":
        pass
    # a late file: rows of earlier hours land after later ones (late rows, window updates)
    flight_rows.slice(1000, 600).sort("ts", descending=True).write_csv(landing / "b.csv")
    while run_cycle(runtime, "flights", drain=True).status == "committed":
        pass
    return runtime


def test_every_candidate_version_is_rebuilt_exactly(replayed: Runtime) -> None:
    config = replayed.pipelines.states["flights"].config
    rows = replayed.con.sql(
        "SELECT candidate, max(version) FROM ml.model_versions GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [c for c, _ in rows] == ["main", "mlp"]  # the default config's two candidates
    for candidate, version in rows:
        report = replay_model(replayed.con, config, version, replayed.state_dir)
        assert report.equal and report.artifact_sha256 == report.stored_sha256, report
        assert report.batches == 8 and report.candidate == candidate
        stored = replayed.con.sql(
            f"SELECT rows_seen FROM ml.model_versions WHERE version = {version}"
        ).fetchall()[0][0]
        assert report.rows_learned == stored


def test_a_changed_row_breaks_the_proof(replayed: Runtime) -> None:
    config = replayed.pipelines.states["flights"].config
    version = replayed.con.sql(
        "SELECT max(version) FROM ml.model_versions WHERE candidate = 'main'"
    ).fetchall()[0][0]
    replayed.con.execute("BEGIN")
    try:
        replayed.con.execute(
            "UPDATE clean.flights SET distance = distance + 1 WHERE id = (SELECT min(id) FROM clean.flights)"
        )
        assert not replay_model(replayed.con, config, version, replayed.state_dir).equal
    finally:
        replayed.con.execute("ROLLBACK")
    with pytest.raises(ReplayError, match="has no version 999"):
        replay_model(replayed.con, config, 999, replayed.state_dir)
