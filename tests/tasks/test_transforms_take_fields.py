"""A transform takes the fields it uses, not the whole PipelineConfig (docs/architecture.md):
no function of the frame transforms in tasks/features/ and tasks/records/ has a parameter
of type PipelineConfig. (Config-aware factories such as RecordSchema.of, learn/fresh.py
and records/pii.py's lookups of a pipeline's rules are not transforms.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKS = Path(__file__).parents[2] / "tasks"
TRANSFORMS = sorted(
    [*(TASKS / "features").glob("*.py"), *(TASKS / "records").glob("*.py")],
    key=lambda p: p.name,
)
LOOKUPS = {("pii.py", "subject_value"), ("pii.py", "protected_changes"), ("validate.py", "of")}


def _takes_the_config(function: ast.FunctionDef) -> bool:
    arguments = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return any(
        a.annotation is not None and "PipelineConfig" in ast.unparse(a.annotation)
        for a in arguments
    )


@pytest.mark.parametrize("module", TRANSFORMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_transform_takes_the_whole_config(module: Path) -> None:
    tree = ast.parse(module.read_text())
    offenders = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and _takes_the_config(node)
        and (module.name, node.name) not in LOOKUPS
    ]
    assert offenders == [], f"{module.name}: {offenders} take a PipelineConfig"


def test_the_check_sees_a_transform_that_takes_the_config() -> None:
    planted = ast.parse("def clean(frame, config: PipelineConfig) -> None: ...").body[0]
    assert isinstance(planted, ast.FunctionDef) and _takes_the_config(planted)
