"""`pii` and `subject` in the config: what they may touch, refused in one line otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidemill.config.fields import ConfigError
from tidemill.config.load import load_config, parse_config


def _load(tmp_path: Path, **pipeline: Any):
    body = {
        "source": {"kind": "files", "path": "landing/*.csv"},
        "event_time": "ts",
        "key": "id",
        "target": "fraud",
        "features": ["email", "merchant", "amount"],
        "categorical": ["email", "merchant"],
        **pipeline,
    }
    return parse_config({"pipelines": {"t": body}}, tmp_path / "tidemill.toml").pipeline("t")


def test_the_repository_transactions_pipeline_protects_its_personal_columns() -> None:
    config = load_config(Path(__file__).parents[2] / "tidemill.toml").pipeline("transactions")
    assert config.pii == {"email": "hash", "card_number": "mask_last4", "name": "drop"}
    assert config.subject == "email" and "email" in (config.features or [])
    assert not {"name", "card_number"} & set(config.features or [])


def test_hashed_and_masked_columns_may_be_the_key_or_a_categorical_feature(
    tmp_path: Path,
) -> None:
    config = _load(tmp_path, pii={"email": "hash", "id": "hash", "card": "mask_last4"})
    assert config.pii["id"] == "hash"
    assert _load(tmp_path, pii={"email": "hash"}, subject="email").subject == "email"


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"pii": {"name": "erase"}}, "pipelines.t.pii.name: must be 'hash', 'mask_last4' or 'drop'"),
        ({"pii": {"email": "drop"}}, "pii.email = 'drop' removes the column: it cannot be the key, a feature or the target"),
        ({"pii": {"id": "drop"}}, "pii.id = 'drop' removes the column"),
        ({"pii": {"fraud": "hash"}}, "pii.fraud: event_time and target cannot be protected"),
        ({"pii": {"ts": "hash"}}, "pii.ts: event_time and target cannot be protected"),
        ({"pii": {"id": "mask_last4"}}, "pii.id = 'mask_last4' makes different values equal: it cannot be the key (use 'hash')"),
        ({"pii": {"amount": "hash"}}, "pii.amount is a feature: list it in `categorical`"),
        ({"pii": {"email": "hash"}, "features": None, "categorical": []}, "a pipeline with `pii` must list `features`"),
        ({"pii": {"email": "mask_last4"}, "subject": "email"}, "subject 'email' is 'mask_last4' in pii: erasure needs it as is or 'hash'"),
        ({"subject": "name"}, "subject 'name' must be the key or a feature"),
    ],
)  # fmt: skip
def test_a_rule_that_would_leak_or_break_the_pipeline_is_refused_in_one_line(
    tmp_path: Path, pipeline: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, **pipeline)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_postgres_key_or_cursor_cannot_be_personal(tmp_path: Path) -> None:
    source = {"kind": "postgres", "dsn": "postgresql://x@h/db", "table": "t", "cursor": "at"}
    with pytest.raises(ConfigError, match="key and cursor are kept as read in _cursors"):
        _load(tmp_path, source=source, classes=[0, 1], pii={"id": "hash"})
    assert _load(tmp_path, source=source, classes=[0, 1], pii={"email": "hash"}).pii
