"""Dependencies point one way: tasks/ knows no Prefect or DuckDB; warehouse/ knows no Prefect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("tasks", ["prefect", "duckdb"]), ("warehouse", ["prefect"])],
)
def test_a_layer_does_not_import_what_it_must_not_know(package: str, forbidden: list[str]) -> None:
    modules = sorted(p.stem for p in (REPO / package).glob("*.py") if p.stem != "__init__")
    assert modules
    code = (
        "import sys\n"
        + "".join(f"import {package}.{m}\n" for m in modules)
        + f"print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "[]", f"{package}/ imports {result.stdout.strip()}"
