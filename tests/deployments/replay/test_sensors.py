"""The repository's `sensors` pipeline end to end: the local broker `tidemill up` starts,
the readings replayer, and the worker's cycles reading the stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.config.load import load_config
from tidemill.deployments.replay.sensors import SENSORS, replay_sensors
from tidemill.deployments.stack import redis_server, stack
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime

REPO = Path(__file__).parents[3]


def test_readings_published_to_the_local_broker_are_stored_once(tmp_path: Path) -> None:
    text = (REPO / "tidemill.toml").read_text()
    (tmp_path / "tidemill.toml").write_text(
        '[state]\ndir = "state"\n\n' + text[text.index("[pipelines.sensors]") :]
    )
    config = load_config(tmp_path / "tidemill.toml")
    assert redis_server.needed_by(config) and stack.replayed(config) == [SENSORS]
    redis_server.start(config.state_dir)
    runtime = Runtime.open(config)
    try:
        first = replay_sensors(config, 1800, tick_seconds=0.2, max_ticks=4)
        assert 20 <= first.entries <= 400  # about 50 a second
        while run_cycle(runtime, SENSORS, drain=True).status == "committed":
            pass
        # stopped and started again: it publishes the readings after the last one only
        again = replay_sensors(config, 1800, tick_seconds=0.2, max_ticks=3)
        assert again.entries > 0
        while run_cycle(runtime, SENSORS, drain=True).status == "committed":
            pass
        stored = runtime.con.sql(
            "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE fault = '1') "
            "FROM raw.sensors"
        ).fetchall()[0]
        quarantined = runtime.con.sql("SELECT count(*) FROM raw.sensors_quarantine").fetchall()
        assert stored[0] + quarantined[0][0] == first.entries + again.entries
        assert stored[0] == stored[1]  # each reading once
        versions = runtime.con.sql("SELECT count(DISTINCT candidate) FROM ml.model_versions")
        assert versions.fetchall() == [(2,)]  # the champion and its challenger learned
    finally:
        runtime.close()
        redis_server.stop(config.state_dir)


def test_replaying_sensors_without_a_stream_pipeline_says_what_is_missing(
    tmp_path: Path,
) -> None:
    (tmp_path / "tidemill.toml").write_text(
        '[pipelines.sensors]\nsource = { kind = "files", path = "in/*.csv" }\n'
        'event_time = "ts"\ntarget = "y"\nfeatures = ["x"]\nclasses = [0, 1]\n'
    )
    config = load_config(tmp_path / "tidemill.toml")
    with pytest.raises(Exception, match="replaying sensors needs kind = 'redis_stream'"):
        replay_sensors(config, 1800, max_ticks=1)
