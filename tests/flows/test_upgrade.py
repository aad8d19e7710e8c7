"""A state folder written by the tidemill of before the DuckDB 1.5.5 pin (DuckDB 2.0.1,
tests/fixtures/state-duckdb-2.0.1.tar.gz: the elec pipeline drained in four batches, its
warehouse, artifacts and keys) opens and goes on: its rows are there, its champion loads,
it learns the next batch and its versions still replay exactly."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.replay import replay_model
from tidemill.flows.engine.runtime import Runtime

FIXTURE = Path(__file__).parents[1] / "fixtures" / "state-duckdb-2.0.1.tar.gz"


def test_a_state_folder_written_on_duckdb_2_0_opens_and_keeps_learning(
    tmp_path: Path, elec_csv: Callable[..., pl.DataFrame]
) -> None:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    config = load_config(tmp_path / "tidemill.toml")
    runtime = Runtime.open(config)
    try:
        one = lambda sql: runtime.read(sql).rows[0][0]  # noqa: E731
        assert one("SELECT count(*) FROM raw.elec") == 200
        assert one("SELECT max(version) FROM ml.model_versions") == 4
        state = runtime.pipeline("elec")
        assert state is not None and state.version == 4  # the signed artifact loaded
        elec_csv(tmp_path / "landing" / "elec" / "b.csv", 200, 100)
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
        assert runtime.read("SELECT count(*), count(DISTINCT id) FROM raw.elec").rows == [
            (300, 300)
        ]
        assert state.version is not None and state.version > 4
        # its sequence DEFAULTs went (Quack clients cannot attach them); ids go on rising
        assert (
            one("SELECT count(*) FROM duckdb_columns() WHERE column_default LIKE 'nextval%'") == 0
        )
        assert one("SELECT count(DISTINCT quarantine_id) = count(*) FROM raw.elec_quarantine")
        with runtime.reader() as cursor:
            report = replay_model(cursor, state.config, 4, runtime.state_dir)
        assert report.equal and report.batches == 4
    finally:
        runtime.close()
