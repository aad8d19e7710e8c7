"""Who serves after a batch: every candidate's prequential score, the drift each detector
saw and what it sets off, and the promotion rule's decision. Pure: the steps of the batch
in, the verdict out; the engine commits it."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tidemill.config.pipeline import PipelineConfig
from tidemill.tasks.drift.shift import PSI_ALERT
from tidemill.tasks.judge.promotion import ScoreWindow, decide
from tidemill.tasks.learn.fresh import fresh_model
from tidemill.tasks.learn.prequential import Step, prequential_step
from tidemill.tasks.learn.state import ModelState


@dataclass(frozen=True)
class Scored:
    """One candidate's prequential result on the batch."""

    candidate: str
    version: int  # the version that scored (it had not seen the rows)
    n_scored: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class DriftEvent:
    """One ml.drift_events row."""

    candidate: str
    detector: str
    feature: str | None
    value: float
    action: str


@dataclass(frozen=True)
class Promotion:
    """A champion change decided by the promotion rule (or a drift reset), with evidence."""

    action: str  # auto_promote | drift_reset
    from_version: int | None
    to_version: int
    reason: str
    evidence: dict[str, object]


@dataclass
class Verdict:
    """What the batch leaves behind: the models every candidate serves from now on, their
    registry versions (None: starts over), the champion, rolling scores, and the records
    of how it was decided."""

    models: dict[str, ModelState]
    versions: dict[str, int | None]
    champion: str
    windows: dict[str, ScoreWindow]
    scored: list[Scored]
    drift: list[DriftEvent]
    promotions: list[Promotion]


def judge_batch(
    config: PipelineConfig,
    champion: str,
    versions: dict[str, int | None],
    windows: dict[str, ScoreWindow],
    metric: str,
    steps: dict[str, Step],
    features: pl.DataFrame,
    batch_id: int,
) -> Verdict:
    """Scores, drift and the promotion rule after candidates took `steps` on `features`:
    a champion drift with `on_drift = reset_challengers` restarts every challenger on this
    batch's rows; the rule may promote a challenger once the champion learned the batch."""
    windows = {n: ScoreWindow(w.rows, w.batches.copy()) for n, w in windows.items()}
    scored: list[Scored] = []
    for name, step in steps.items():
        version = versions[name]
        if step.metrics and version is not None:
            scored.append(Scored(name, version, step.n_scored, step.metrics))
            windows[name].add(batch_id, step.n_scored, step.metrics.get(metric, float("nan")))
    learned = {name: step.learned for name, step in steps.items()}
    versions = dict(versions)
    drift: list[DriftEvent] = []
    reset = False
    for name, step in steps.items():
        if not step.drift_at:
            continue
        reset = reset or (name == champion and config.drift.on_drift == "reset_challengers")
        action = "challengers_reset" if reset and name == champion else "logged"
        drift.append(DriftEvent(name, config.drift.detector, None, step.drift_error, action))
    for window in steps[champion].shift:
        for feature, psi in window.items():
            if psi > PSI_ALERT:
                drift.append(DriftEvent(champion, "psi", feature, psi, "logged"))
    if reset:  # every challenger starts over on this batch's rows
        for spec in config.challengers:
            if spec.name != champion:
                fresh = fresh_model(config, spec)
                learned[spec.name] = prequential_step(fresh, features, config.target).learned
                versions[spec.name] = None
                windows[spec.name] = ScoreWindow(rows=config.promotion.window_rows)
    promotions: list[Promotion] = []
    decision = decide(
        champion,
        windows,
        metric=metric,
        min_rows=config.promotion.min_rows,
        margin=config.promotion.margin,
    )
    if decision is not None and steps[champion].rows_learned:
        promotions.append(
            Promotion("auto_promote", versions[champion], -1, decision.reason, decision.evidence)
        )
        champion = decision.candidate
    return Verdict(learned, versions, champion, windows, scored, drift, promotions)
