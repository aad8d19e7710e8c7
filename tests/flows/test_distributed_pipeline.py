"""A pipeline that learns in shards on a real Dask cluster: versions record their shards,
and `replay-model` rebuilds them bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig, load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.replay import replay_model
from tidemill.flows.engine.runtime import Runtime


def _config(elec_config: Callable[..., TidemillConfig], distributed: str) -> TidemillConfig:
    path = elec_config(batch_rows=200).path
    text = path.read_text().replace(
        "every_seconds = 5",
        'every_seconds = 5\nchallengers = [{ name = "nb", estimator = "gaussian_nb" }]\n'
        f"distributed = {distributed}",
    )
    path.write_text(text)
    return load_config(path)


@pytest.mark.slow
def test_sharded_versions_record_their_shards_and_replay_equal(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    config = _config(elec_config, '{ workers = 2, mode = "always" }')
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 800)
    runtime = Runtime.open(config)
    try:
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
        con = runtime.con
        shards = con.sql(
            "SELECT v.version, v.candidate, count(*), sum(s.rows_learned), min(s.first_row), "
            "max(s.last_row) FROM ml.model_versions v JOIN ml.model_version_shards s "
            "USING (pipeline, version) GROUP BY ALL ORDER BY 1"
        ).fetchall()
        assert len(shards) == 8  # 4 batches x 2 candidates, every one in 2 shards
        assert all(n == 2 and rows == 200 and (a, b) == (0, 200) for _, _, n, rows, a, b in shards)
        for version in (7, 8):  # the last of each candidate
            report = replay_model(
                con, runtime.pipelines.states["elec"].config, version, runtime.state_dir
            )
            assert report.equal, report
    finally:
        runtime.close()


def test_auto_keeps_small_batches_in_one_process(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    config = _config(elec_config, "{ workers = 2 }")
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 400)
    runtime = Runtime.open(config)
    try:
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
        assert runtime.con.sql("SELECT count(*) FROM ml.model_version_shards").fetchall() == [(0,)]
        assert runtime.placement._clients == {}  # no cluster was started for nothing
    finally:
        runtime.close()


def test_one_worker_is_refused(elec_config: Callable[..., TidemillConfig]) -> None:
    with pytest.raises(ConfigError, match=r"distributed\.workers"):
        _config(elec_config, "{ workers = 1 }")
