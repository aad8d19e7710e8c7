"""The models a pipeline learns, as config: the estimator of each candidate, the rule
that promotes a challenger, the drift detectors, sharded learning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tidemill.config.fields import IDENTIFIER, Strict


class ModelSpec(Strict):
    """One candidate model: a name, the estimator by registry name (or dotted path) and its
    constructor parameters."""

    name: str = Field(
        default="main",
        description="Names the candidate in ml.model_versions.candidate and ml.batch_metrics.",
    )
    estimator: str = Field(
        default="sgd_classifier",
        description="Registry name (sgd_classifier, sgd_regressor, perceptron, passive_aggressive, "
        "bernoulli_nb, multinomial_nb, gaussian_nb, mlp_classifier, minibatch_kmeans) or a "
        "dotted path to a scikit-learn estimator with partial_fit.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Constructor parameters of the estimator."
    )

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError("must be lowercase letters, digits and _")
        return value


class PromotionRule(Strict):
    """When a challenger replaces the champion: all candidates are scored on the same rows
    before learning them, and the best one takes over once its lead is clear."""

    metric: str | None = Field(
        default=None,
        description="Metric compared: accuracy or log_loss (classification), mae or rmse "
        "(regression), inertia (clustering); default accuracy / mae / inertia.",
    )
    window_rows: int = Field(
        default=5000, ge=1, description="Compare candidates over this many latest scored rows."
    )
    min_rows: int = Field(
        default=2000,
        ge=1,
        description="A challenger is not promoted before it has been scored on this many rows.",
    )
    margin: float = Field(
        default=0.01,
        ge=0,
        description="Lead required over the champion, in metric units (0.01 = one point of "
        "accuracy); it must also exceed 2 standard errors of the paired per-batch differences.",
    )


class DriftSpec(Strict):
    """Drift detection on the prequential error stream and on feature distributions."""

    detector: Literal["adwin", "page_hinkley", "none"] = Field(
        default="adwin",
        description="Detector on each candidate's per-row error (0/1 for classification, "
        "absolute error for regression): ADWIN (Bifet & Gavalda 2007) or Page-Hinkley.",
    )
    on_drift: Literal["log", "reset_challengers"] = Field(
        default="log",
        description="log: write ml.drift_events and a Prefect event only. reset_challengers: "
        "also restart every challenger from scratch when the champion drifts, so one that "
        "learns only the new concept can overtake it (declare a challenger with the "
        "champion's estimator to get the classic background learner).",
    )
    psi_reference_rows: int = Field(
        default=2000,
        ge=10,
        description="Rows whose numeric feature distribution is the PSI reference.",
    )
    psi_window_rows: int = Field(
        default=2000, ge=10, description="Rows per window compared with the reference (PSI)."
    )


class DistributedSpec(Strict):
    """Data-parallel learning on a Dask cluster (tasks/learn/shards.py): each worker learns
    a shard of the batch from the same model, the owner merges the shard models."""

    workers: int = Field(ge=2, le=256, description="Shards per batch: one per Dask worker.")
    address: str = Field(
        default="",
        description="Dask scheduler address (tcp://host:8786); empty: the owner starts a "
        "local cluster of `workers` processes.",
    )
    mode: Literal["auto", "always"] = Field(
        default="auto",
        description="auto: shard a batch only when it pays (tasks/learn/shards.py "
        "`should_distribute`: a heavy estimator and large shards; measured on 2 shared "
        "cores, never); always: every batch of every candidate.",
    )
