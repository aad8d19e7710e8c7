"""The worker's start: one pipeline whose model must not be loaded leaves the others served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.worker import open_pipelines
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.warehouse.artifacts import ArtifactIntegrityError


def test_a_refused_artifact_stops_its_pipeline_only(
    tmp_path: Path,
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
) -> None:
    path = elec_config().path
    text = path.read_text()
    path.write_text(text + text[text.index("[pipelines.elec]") :].replace("elec", "grid"))
    config = load_config(path)
    for name in ("elec", "grid"):
        elec_csv(tmp_path / "landing" / name / "a.csv", 0, 100)
    runtime = Runtime.open(config)
    for name in ("elec", "grid"):
        assert run_cycle(runtime, name, drain=True).status == "committed"
    (artifact,) = runtime.con.sql(
        "SELECT artifact_path FROM ml.model_versions WHERE pipeline = 'grid'"
    ).fetchall()[0]
    runtime.close()
    stored = config.state_dir / artifact
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")  # one byte changed: never unpickled

    runtime = Runtime.open(config)
    try:
        refused = open_pipelines(runtime, ["elec", "grid"])
        assert list(refused) == ["grid"] and "does not match the registry" in refused["grid"]
        elec_csv(tmp_path / "landing" / "elec" / "b.csv", 100, 50)
        assert run_cycle(runtime, "elec", drain=True).status == "committed"
        with pytest.raises(ArtifactIntegrityError, match="does not match the registry"):
            run_cycle(runtime, "grid", drain=True)  # its runs fail, saying why
    finally:
        runtime.close()
