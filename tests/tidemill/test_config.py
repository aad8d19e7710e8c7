from pathlib import Path

import pytest

from tidemill.config.fields import ConfigError
from tidemill.config.load import load_config

GOOD = """
[state]
dir = "state"

[pipelines.elec]
source = { kind = "files", path = "landing/elec/*.csv", format = "csv" }
event_time = "ts"
key = "id"
target = "target"
features = ["feat_1", "feat_2"]
categorical = []
task = "classification"
model = { estimator = "sgd_classifier", params = { loss = "log_loss" } }
batch_rows = 50
every_seconds = 5
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "tidemill.toml"
    path.write_text(text)
    return load_config(path)


def test_the_issue_example_loads_and_relative_paths_resolve_against_the_file(
    tmp_path: Path,
) -> None:
    config = _load(tmp_path, GOOD)
    elec = config.pipeline("elec")
    assert elec.source.path == str(tmp_path / "landing/elec/*.csv")
    assert config.state_dir == tmp_path / "state"
    assert elec.batch_rows == 50 and elec.label_classes == ["0", "1"]


def test_the_repository_default_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "tidemill.toml")
    assert "flights" in config.pipelines


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('task = "classification"', 'task = "classify"'),
            "pipelines.elec.task: must be 'classification', 'regression' or 'clustering' (got 'classify')",
        ),
        (
            ("batch_rows = 50", "batch_rows = 0"),
            "pipelines.elec.batch_rows: Input should be greater than or equal to 1 (got 0)",
        ),
        (("every_seconds = 5", "every_second = 5"), "pipelines.elec.every_second: unknown key"),
        (('event_time = "ts"\n', ""), "pipelines.elec.event_time: is required"),
        (
            ('format = "csv"', 'format = "xlsx"'),
            "pipelines.elec.source.format: must be 'csv', 'parquet' or 'ndjson' (got 'xlsx')",
        ),
        (
            ('features = ["feat_1", "feat_2"]', 'features = ["feat_1", "ts"]'),
            "features may not include event_time/key/target",
        ),
        (("[pipelines.elec]", "[pipelines.Elec]"), "pipeline names must be lowercase"),
        (('target = "target"\n', ""), "target is required (or task = 'clustering')"),
        (
            ('task = "classification"', 'task = "clustering"'),
            "clustering pipelines learn without a target: leave `target` out",
        ),
        (
            ("batch_rows = 50", 'batch_rows = 50\nchallengers = [{ name = "main" }]'),
            "challengers need names different from each other and from model.name",
        ),
        (
            ("batch_rows = 50", 'batch_rows = 50\nlags = [{ name = "p", by = ["nope"] }]'),
            "lag 'p' names unknown columns ['nope']",
        ),
        (
            ("batch_rows = 50", "batch_rows = 50\nadaptive_batch = { min_rows = 100 }"),
            "adaptive_batch needs min_rows <= batch_rows <= max_rows",
        ),
        (("batch_rows = 50", "batch_rows = 50 50"), "not valid TOML"),
    ],
)
def test_a_wrong_config_gives_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, GOOD.replace(*change))
    text = str(error.value)
    assert "\n" not in text
    assert message in text


def test_missing_file_and_unknown_pipeline_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"no pipeline named 'x' \(declared: elec\)"):
        _load(tmp_path, GOOD).pipeline("x")
