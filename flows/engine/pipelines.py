"""The pipelines an owner serves: each one's config made whole (features and classes the
config leaves out are fixed when the pipeline is created, from its first landing files),
its tables, and its resident models (models.py), set up on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from tidemill.config.load import TidemillConfig
from tidemill.config.pipeline import PipelineConfig
from tidemill.flows.engine.models import PipelineState, load_candidates
from tidemill.tasks.records.validate import class_labels
from tidemill.tasks.sources.loader import source_for
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.pipeline_tables import ensure_pipeline_tables, stored_schema


@dataclass
class Pipelines:
    """The resident state of every pipeline opened so far, by name."""

    config: TidemillConfig
    states: dict[str, PipelineState] = field(default_factory=dict)

    def open(self, con: Connection, name: str) -> PipelineState | None:
        """The pipeline's resident state, set up on first use (tables created, models
        loaded); None while a config without `features` waits for its first landing file
        to name the columns. The caller holds the owner's lock."""
        if name in self.states:
            return self.states[name]
        config = self.config.pipeline(name)
        stored = stored_schema(con, name)
        classes: list[str] | None
        if stored is not None:  # what the config leaves out was fixed at creation
            features = config.features or [str(f) for f in cast(list[object], stored["features"])]
            kept = cast(list[object] | None, stored["classes"])
            classes = config.classes or ([str(c) for c in kept] if kept else None)
        else:
            found = _from_source(config, self.config.state_dir)
            if found is None:
                return None
            features, classes = found
        config = config.resolved(features, classes)
        ensure_pipeline_tables(con, config)
        state = load_candidates(con, self.config.state_dir, config)
        self.states[name] = state
        return state

    def forget(self, name: str) -> None:
        """Drop the pipeline's resident state: the next `open` loads the committed models
        again (after a failed batch, so nothing it half-learned survives)."""
        self.states.pop(name, None)


def _from_source(
    config: PipelineConfig, state_dir: Path
) -> tuple[list[str], list[str] | None] | None:
    """Features and classes the config leaves out, read from what the source holds now;
    None while it holds nothing (the pipeline then waits)."""
    features, classes = config.features, config.classes
    if features is not None and (classes is not None or config.task == "regression"):
        return features, classes
    wants_classes = classes is None and config.task == "classification"
    target = config.target if wants_classes else None
    sample = source_for(config, state_dir).sample(target)
    if sample is None:
        return None
    if features is None:
        special = {config.event_time, config.target, config.key}
        features = [c for c in sample.columns if c not in special]
    if wants_classes and sample.target_values is not None:
        found = class_labels(sample.target_values)
        classes = found if len(found) >= 2 else None
    return features, classes
