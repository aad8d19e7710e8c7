"""Any data set replays into its pipeline's landing folder; `up` starts one replayer each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.fields import ConfigError
from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.replay.files import UnknownDataSet, dataset, replay_dataset
from tidemill.deployments.replay.serve import serve_replay
from tidemill.deployments.stack import stack
from tidemill.tasks.synthetic.transactions import EVENT_COLUMNS

REPO = Path(__file__).parents[3]


@pytest.fixture
def config(tmp_path: Path) -> TidemillConfig:
    """The repository's config with its state folder (and landing folders) in tmp_path."""
    text = (REPO / "tidemill.toml").read_text()
    (tmp_path / "tidemill.toml").write_text(text)
    return load_config(tmp_path / "tidemill.toml")


def test_transactions_replay_into_their_landing_folder_and_resume(config: TidemillConfig) -> None:
    first = replay_dataset(config, "transactions", 1_000_000, tick_seconds=0.01, max_files=2)
    assert first.files_written == 2 and not first.exhausted
    landing = config.state_dir / "landing" / "transactions"
    files = sorted(landing.glob("transactions-*.csv"))
    assert len(files) == 2 and (config.state_dir / "replay" / "transactions.json").exists()
    frames = [pl.read_csv(f, infer_schema=False) for f in files]
    assert all(f.columns == list(EVENT_COLUMNS) for f in frames)
    second = replay_dataset(config, "transactions", 1_000_000, tick_seconds=0.01, max_files=1)
    ids = pl.concat([*frames, pl.read_csv(sorted(landing.glob("*.csv"))[-1], infer_schema=False)])
    ids_int = ids["id"].cast(pl.Int64)
    assert second.files_written == 1
    assert ids_int.to_list() == list(range(1, ids.height + 1))  # no gap, no repeat
    assert not (config.state_dir / "landing" / "flights").exists()


def test_a_data_set_needs_a_known_name_and_a_files_pipeline_of_that_name(
    config: TidemillConfig, tmp_path: Path
) -> None:
    assert dataset("flights").prefix == "flights-"
    with pytest.raises(
        UnknownDataSet,
        match=r"unknown data set 'taxis' \(available: flights, transactions, sensors\)",
    ):
        replay_dataset(config, "taxis", 10)
    assert issubclass(UnknownDataSet, ConfigError)  # the CLI prints it as one line
    only_flights = tmp_path / "flights.toml"
    only_flights.write_text((REPO / "tidemill.toml").read_text().split("\n# Fraud scoring")[0])
    with pytest.raises(ConfigError, match="no pipeline named 'transactions'"):
        replay_dataset(load_config(only_flights), "transactions", 10)
    assert stack.replayed(load_config(only_flights)) == ["flights"]
    assert stack.replayed(config) == ["flights", "transactions", "sensors"]


def test_serve_replay_says_what_it_does(config: TidemillConfig) -> None:
    said: list[str] = []
    serve_replay(config, "transactions", 1_000_000, tick_seconds=0.01, max_files=1, say=said.append)
    assert said[0].startswith("replaying synthetic card payments (seeded")
    assert said[1].startswith("wrote ") and said[1].endswith(" rows in 1 files")


def test_a_replayer_stops_on_sigterm_after_its_file(config: TidemillConfig, tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from tidemill.deployments.replay.serve import serve_replay\n"
        "from tidemill.config.load import load_config\n"
        f"serve_replay(load_config(Path({str(config.path)!r})), 'transactions', 60, tick_seconds=0.05)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("replaying")
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    assert proc.stdout.read().startswith("wrote ")
