"""Promote and rollback: recorded with who/when/why, effective on the next batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import TidemillConfig
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.warehouse.artifacts import ArtifactIntegrityError
from tidemill.warehouse.registry import RegistryError


def _drain(runtime: Runtime) -> None:
    while run_cycle(runtime, "elec", drain=True).status == "committed":
        pass


@pytest.fixture
def runtime(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> Runtime:
    config = elec_config(batch_rows=50)
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 200)
    runtime = Runtime.open(config)
    _drain(runtime)
    return runtime


def test_a_promoted_version_serves_and_learns_the_next_batch(
    runtime: Runtime, elec_csv: Callable[..., pl.DataFrame]
) -> None:
    changed = runtime.change_champion(
        "elec", 2, action="promote", actor="ana@host", reason="v4 drifted"
    )
    assert (changed.version, changed.status, changed.rows_seen) == (2, "champion", 100)
    elec_csv(Path(runtime.config.pipeline("elec").source.path).parent / "b.csv", 200, 50)
    report = run_cycle(runtime, "elec", drain=True)
    assert report.scored_by == 2  # the next batch is scored by the promoted version ...
    newest = runtime.con.sql(
        "SELECT version, parent_version, rows_seen, status FROM ml.model_versions ORDER BY version DESC LIMIT 1"
    ).fetchall()[0]
    assert newest == (5, 2, 150, "champion")  # ... and learned on top of it
    events = runtime.con.sql(
        "SELECT action, from_version, to_version, actor, reason FROM ml.model_events"
    ).fetchall()
    assert events == [("promote", 4, 2, "ana@host", "v4 drifted")]


def test_rollback_returns_to_the_champion_before_the_last_promotion(runtime: Runtime) -> None:
    runtime.change_champion("elec", 1, action="promote", actor="a", reason="try v1")
    back = runtime.change_champion("elec", None, action="rollback", actor="a", reason="v1 is worse")
    assert back.version == 4
    assert runtime.pipelines.states["elec"].version == 4
    statuses = dict(runtime.con.sql("SELECT version, status FROM ml.model_versions").fetchall())
    assert [v for v, s in statuses.items() if s == "champion"] == [4]
    # with no promotion to undo, rollback goes to the parent
    assert (
        runtime.change_champion("elec", None, action="rollback", actor="a", reason="").version == 3
    )


def test_bad_targets_and_tampered_artifacts_change_nothing(runtime: Runtime) -> None:
    with pytest.raises(RegistryError, match="no version 9"):
        runtime.change_champion("elec", 9, action="promote", actor="a", reason="")
    with pytest.raises(RegistryError, match="already the champion"):
        runtime.change_champion("elec", 4, action="promote", actor="a", reason="")
    path = (
        runtime.state_dir
        / runtime.con.sql(
            "SELECT artifact_path FROM ml.model_versions WHERE version = 2"
        ).fetchall()[0][0]
    )
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ArtifactIntegrityError):
        runtime.change_champion("elec", 2, action="promote", actor="a", reason="")
    assert runtime.con.sql(
        "SELECT version FROM ml.model_versions WHERE status = 'champion'"
    ).fetchall() == [(4,)]
    assert runtime.con.sql("SELECT count(*) FROM ml.model_events").fetchall() == [(0,)]
