"""Several workers in one state folder: who owns which pipeline, sticky once chosen."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tidemill import layout
from tidemill.config.load import TidemillConfig, load_config


@pytest.fixture
def three(elec_config: Callable[..., TidemillConfig]) -> TidemillConfig:
    path = elec_config().path
    text = path.read_text()
    section = text[text.index("[pipelines.elec]") :]
    path.write_text(text + section.replace("elec", "grid") + section.replace("elec", "heat"))
    return load_config(path)


def test_pipelines_are_dealt_round_robin_in_name_order() -> None:
    assert layout.assign(["c", "a", "b"], 2) == {"w1": ["a", "c"], "w2": ["b"]}
    assert layout.assign(["a", "b"], 5) == {"w1": ["a"], "w2": ["b"]}  # no idle worker
    assert layout.assign(["a"], 1) == {"w1": ["a"]}


def test_a_worker_owns_its_pipelines_and_a_folder_of_its_own(three: TidemillConfig) -> None:
    assert layout.settle(three, 1) == {}  # one worker: the state folder itself
    assert layout.owner_config(three, "grid") is three
    assert layout.settle(three, 2) == {"w1": ["elec", "heat"], "w2": ["grid"]}
    grid = layout.owner_config(three, "grid")
    assert grid.state_dir == three.state_dir / "workers" / "w2"
    assert list(grid.pipelines) == ["grid"]
    assert grid.pipeline("grid").source == three.pipeline("grid").source  # landing unchanged
    assert layout.shared_dir(grid.state_dir) == three.state_dir
    assert layout.shared_dir(three.state_dir) == three.state_dir
    assert list(layout.worker_config(three, "w1").pipelines) == ["elec", "heat"]
    owners = layout.owners(three)
    assert {name: names for name, (_, names) in owners.items()} == {
        "w1": ["elec", "heat"],
        "w2": ["grid"],
    }
    assert owners["w2"][0].state_dir == layout.worker_dir(three.state_dir, "w2")


def test_the_layout_is_kept_once_chosen(three: TidemillConfig) -> None:
    layout.settle(three, 2)
    assert layout.settle(three, 2) == layout.read(three.state_dir)  # the same again: fine
    with pytest.raises(layout.LayoutError, match=r"laid out for 2 workers .*--workers 3"):
        layout.settle(three, 3)
    with pytest.raises(layout.LayoutError, match="no worker named 'w9'"):
        layout.worker_config(three, "w9")


def test_a_folder_used_by_one_worker_is_not_split_later(three: TidemillConfig) -> None:
    three.state_dir.mkdir(parents=True)
    (three.state_dir / "warehouse.duckdb").write_bytes(b"")
    with pytest.raises(layout.LayoutError, match="laid out for one worker"):
        layout.settle(three, 2)
    assert not (three.state_dir / layout.LAYOUT_FILE).exists()
