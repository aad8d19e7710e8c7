"""The models a pipeline serves between batches: every candidate (the champion and its
challengers) at its latest registry version, with its rolling scores; and the champion
changes a person asks for (promote, rollback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tidemill.config.pipeline import PipelineConfig
from tidemill.tasks.judge.promotion import ScoreWindow
from tidemill.tasks.learn.fresh import fresh_model
from tidemill.tasks.learn.metrics import DEFAULT_METRIC
from tidemill.tasks.learn.state import ModelState
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import Connection


@dataclass
class PipelineState:
    """A pipeline as the owner holds it between batches: every candidate model (the
    champion and its challengers), their registry versions and rolling scores."""

    config: PipelineConfig
    models: dict[str, ModelState]  # candidate -> the model it serves now
    versions: dict[str, int | None]  # candidate -> registry version, None before the first
    champion: str
    windows: dict[str, ScoreWindow] = field(default_factory=dict)
    batch_rows: int = 0  # records the next batch may take (adaptive_batch moves it)

    def __post_init__(self) -> None:
        for name in self.models:
            self.windows.setdefault(name, ScoreWindow(rows=self.config.promotion.window_rows))
        self.batch_rows = self.batch_rows or self.config.batch_rows

    @property
    def model(self) -> ModelState:
        """The champion's model: it serves the predictions."""
        return self.models[self.champion]

    @property
    def version(self) -> int | None:
        """The champion's registry version."""
        return self.versions[self.champion]

    @property
    def metric(self) -> str:
        """The metric the promotion rule compares."""
        return self.config.promotion.metric or DEFAULT_METRIC[self.config.task]


def load_candidates(con: Connection, state_dir: Path, config: PipelineConfig) -> PipelineState:
    """Every candidate at its latest version (fresh when it has none yet), and their
    rolling scores since the last champion change."""
    heads = registry.heads(con, config.name)
    models: dict[str, ModelState] = {}
    versions: dict[str, int | None] = {}
    for spec in config.candidates:
        head = heads.get(spec.name)
        models[spec.name] = (
            artifacts.load_artifact(state_dir, head) if head else fresh_model(config, spec)
        )
        versions[spec.name] = head.version if head else None
    champion = next((h for h in heads.values() if h.status == "champion"), None)
    if champion is not None and champion.candidate not in models:  # no longer in the config
        models[champion.candidate] = artifacts.load_artifact(state_dir, champion)
        versions[champion.candidate] = champion.version
    state = PipelineState(
        config=config,
        models=models,
        versions=versions,
        champion=champion.candidate if champion else config.model.name,
    )
    for candidate, batch_id, n, value in registry.recent_scores(
        con, config.name, state.metric, config.promotion.window_rows * len(models)
    ):
        if candidate in state.windows:
            state.windows[candidate].add(batch_id, n, value)
    return state


def change_champion(
    con: Connection,
    state_dir: Path,
    state: PipelineState,
    to_version: int | None,
    *,
    action: str,
    actor: str,
    reason: str,
) -> registry.ModelVersion:
    """Make `to_version` the champion of `state`'s pipeline (rollback: the previous
    champion when None); its artifact is verified before anything changes. The next
    batch is scored and learned by it."""
    name = state.config.name
    target = to_version if to_version is not None else registry.rollback_target(con, name)
    row = registry.get_version(con, name, target)
    if row is None:
        raise registry.RegistryError(f"{name} has no version {target}")
    model = artifacts.load_artifact(state_dir, row)
    changed = registry.change_champion(con, name, target, action=action, actor=actor, reason=reason)
    state.models[changed.candidate] = model
    state.versions[changed.candidate] = changed.version
    state.champion = changed.candidate
    state.windows[changed.candidate] = ScoreWindow(rows=state.config.promotion.window_rows)
    return changed
