"""Shared fixtures: a pipeline config in a temporary folder, and real flights data."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from deployments.replayer import load_flights
from tasks.replay import flight_events, landing_rows
from tidemill.config import TidemillConfig, load_config

ELEC_TOML = """
[state]
dir = ".tidemill"

[pipelines.elec]
source = {{ kind = "files", path = "landing/elec/*.csv", format = "csv" }}
event_time = "ts"
key = "id"
target = "target"
features = ["feat_1", "feat_2"]
categorical = []
task = "classification"
model = {{ estimator = "sgd_classifier", params = {{ loss = "log_loss" }} }}
batch_rows = {batch_rows}
every_seconds = 5
"""


@pytest.fixture(scope="session")
def flight_rows() -> pl.DataFrame:
    """The first 5,000 flights as the replayer writes them (text columns)."""
    return landing_rows(flight_events(load_flights().head(5000)))


@pytest.fixture
def elec_config(tmp_path: Path) -> Callable[..., TidemillConfig]:
    """Write the issue's example config (batch_rows adjustable) and return a loader."""

    def make(batch_rows: int = 50) -> TidemillConfig:
        (tmp_path / "landing" / "elec").mkdir(parents=True, exist_ok=True)
        path = tmp_path / "tidemill.toml"
        path.write_text(textwrap.dedent(ELEC_TOML.format(batch_rows=batch_rows)))
        return load_config(path)

    return make


@pytest.fixture
def elec_csv() -> Callable[..., pl.DataFrame]:
    """Writer of synthetic elec-like CSV files (see `write_elec_csv`)."""
    return write_elec_csv


def write_elec_csv(path: Path, start: int, n: int, seed: int = 0) -> pl.DataFrame:
    """A CSV of `n` labelled rows with ids from `start`; returns what was written."""
    import numpy as np

    rng = np.random.default_rng(seed + start)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    target = ((x1 + 0.5 * x2 + rng.normal(scale=0.3, size=n)) > 0).astype(int)
    ids = np.arange(start, start + n)
    frame = pl.DataFrame(
        {
            "id": ids,
            "ts": [
                f"2024-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z" for i in ids
            ],
            "feat_1": x1.round(4),
            "feat_2": x2.round(4),
            "target": target,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return frame
