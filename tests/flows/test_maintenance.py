"""Artifact maintenance of a live pipeline: on its Runtime between real batches, and as
the Prefect flow and deployment (slow: a temporary Prefect server takes ≈9 s to start)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.exceptions import ParameterTypeError
from prefect.testing.utilities import prefect_test_harness

from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime, install
from tidemill.flows.maintenance import maintenance
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.warehouse.retention import run_maintenance


@pytest.fixture
def runtime(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> Iterator[Runtime]:
    """Four committed batches of elec (versions 1-4, v4 champion), installed as resident."""
    config = elec_config(batch_rows=50)
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 200)
    runtime = Runtime.open(config)
    while run_cycle(runtime, "elec", drain=True).status == "committed":
        pass
    install(runtime)
    yield runtime
    install(None)
    runtime.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _orphan(runtime: Runtime) -> Path:
    """An artifact of a batch that crashed before its commit, an hour ago."""
    orphan = runtime.state_dir / "artifacts" / "elec" / "v000005-b99.joblib"
    orphan.write_bytes(b"x" * 1000)
    moment = time.time() - 3600
    os.utime(orphan, (moment, moment))
    return orphan


def test_maintenance_between_batches_keeps_what_the_next_batch_needs(
    runtime: Runtime, elec_csv: Callable[..., pl.DataFrame]
) -> None:
    orphan = _orphan(runtime)
    policy = RetentionPolicy(keep_last=1, hourly_hours=0, daily_days=0)
    report = run_maintenance(
        runtime.con, runtime.state_dir, "elec", policy, requested_by="test", lock=runtime.lock
    )
    # v4 is the champion (and the last), v3 its parent: v1 and v2 go, and the orphan
    assert (report.artifacts_pruned, report.artifacts_kept, report.orphans_removed) == (2, 2, 1)
    assert not orphan.exists()
    runtime.reload_model("elec")  # the champion loads from its file
    elec_csv(Path(runtime.config.pipeline("elec").source.path).parent / "b.csv", 200, 50)
    batch = run_cycle(runtime, "elec", drain=True)
    assert (batch.status, batch.scored_by, batch.model_version) == ("committed", 4, 5)
    assert (
        run_maintenance(
            runtime.con, runtime.state_dir, "elec", policy, requested_by="test", lock=runtime.lock
        ).artifacts_pruned
        == 1
    )  # v3: no longer the champion's parent


def test_the_flow_form_refuses_a_policy_that_keeps_nothing() -> None:
    assert maintenance.validate_parameters({"pipeline": "elec"}) == {
        "pipeline": "elec",
        "keep_last": 50,
        "hourly_hours": 48,
        "daily_days": 30,
        "grace_minutes": 10.0,
    }
    for wrong in ({"keep_last": 0}, {"grace_minutes": 0}, {"pipeline": "Elec"}):
        with pytest.raises(ParameterTypeError):
            maintenance.validate_parameters({"pipeline": "elec", **wrong})


async def _artifact(key: str) -> str:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return str(found[0].data)


@pytest.mark.slow
def test_the_flow_prunes_sweeps_and_publishes_what_it_did(harness: None, runtime: Runtime) -> None:
    folder = runtime.state_dir / "artifacts" / "elec"
    _orphan(runtime)
    files = sorted(p.name for p in folder.iterdir())
    report = asyncio.run(maintenance("elec", keep_last=1, hourly_hours=0, daily_days=0))
    # v4 is the champion (and the last), v3 its parent: v1 and v2 go, and the orphan
    assert (report["artifacts_pruned"], report["artifacts_kept"]) == (2, 2)
    assert report["orphans_removed"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        n for n in files if n.startswith(("v000003", "v000004"))
    ]
    assert runtime.con.sql(
        "SELECT version FROM ml.model_versions WHERE artifact_pruned_at IS NULL ORDER BY 1"
    ).fetchall() == [(3,), (4,)]
    markdown = asyncio.run(_artifact("elec-maintenance"))
    assert "| artifacts pruned | 2 |" in markdown and "| orphans removed | 1 |" in markdown
    # the charts, inlined (accuracy, log_loss, rows, latency), and the whole page beside them
    assert markdown.count("](data:image/png;base64,iVBORw0KGgo") == 4
    page = runtime.state_dir / "reports" / "elec.html"
    assert f"Full report: `{page}`" in markdown
    assert page.read_text().count('src="data:image/png;base64,') == 4


@pytest.mark.slow
def test_an_unknown_pipeline_fails_the_run_naming_the_known_ones(
    harness: None, runtime: Runtime
) -> None:
    with pytest.raises(ConfigError, match="declared: elec"):
        asyncio.run(maintenance("nope"))


@pytest.mark.slow
def test_the_worker_registers_a_maintenance_deployment_per_pipeline(
    harness: None, runtime: Runtime
) -> None:
    from tidemill.deployments.worker import register

    flows = asyncio.run(register(runtime.config, ["elec"]))
    assert sorted(f.name for f in flows.values()) == ["backfill", "maintenance", "micro-batch"]

    async def read() -> tuple[dict[str, object], list[dt.timedelta]]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("maintenance/elec")
        intervals = [s.schedule.interval for s in deployment.schedules]  # type: ignore[union-attr]
        return deployment.parameters, intervals

    parameters, intervals = asyncio.run(read())
    assert parameters == {"pipeline": "elec"}
    assert intervals == [dt.timedelta(seconds=600)]
