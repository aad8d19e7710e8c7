"""The generated reference docs match the code they are generated from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).parents[1]


def _generator():  # docs/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_and_table_docs_are_up_to_date() -> None:
    generate = _generator()
    stale = "is stale: run .venv/bin/python docs/generate.py"
    assert (REPO / "docs" / "configuration.md").read_text() == generate.configuration(), (
        f"configuration.md {stale}"
    )
    assert (REPO / "docs" / "tables.md").read_text() == generate.tables(), f"tables.md {stale}"


def test_every_config_key_has_a_description() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(not line.rstrip().endswith("|  |") for line in rows), [
        r for r in rows if r.rstrip().endswith("|  |")
    ]
