"""One pipeline, as config: its source, schema, features, models and cadence, and the
rules that tie them together."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tidemill.config.fields import (
    DURATION,
    DURATION_SECONDS,
    IDENTIFIER,
    PiiRule,
    Strict,
    TimeFeature,
)
from tidemill.config.models import DistributedSpec, DriftSpec, ModelSpec, PromotionRule
from tidemill.config.sources import Source


class LagSpec(Strict):
    """Previous labels of a series as features (`<name>_lag1..N`), strictly earlier in
    event time than each row."""

    name: str = Field(description="Names the features <name>_lag1 .. <name>_lagN.")
    by: list[str] = Field(min_length=1, description="Columns naming the series (e.g. tailnum).")
    n: int = Field(default=1, ge=1, le=20, description="How many previous labels.")

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError("must be lowercase letters, digits and _ (a SQL name)")
        return value


class AggregateSpec(Strict):
    """An event-time window aggregate per key: `agg.<pipeline>_<name>`."""

    name: str = Field(description="Names the table agg.<pipeline>_<name> and its features.")
    by: list[str] = Field(min_length=1, description="Group columns (features or the key).")
    every: str = Field(default="1h", description="Event-time window length: 15m, 1h, 1d, ...")

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError("must be lowercase letters, digits and _ (a SQL name)")
        return value

    @field_validator("every")
    @classmethod
    def _every_is_duration(cls, value: str) -> str:
        if not DURATION.match(value):
            raise ValueError("must be a duration like '15m', '1h' or '1d'")
        return value

    @property
    def every_seconds(self) -> int:
        """Window length in seconds."""
        match = DURATION.match(self.every)
        assert match is not None
        return int(match.group(1)) * DURATION_SECONDS[match.group(2)]


class AdaptiveBatch(Strict):
    """Batch size that follows the load: halves when a batch takes longer than the cadence,
    doubles when there is headroom and a backlog."""

    min_rows: int = Field(default=50, ge=1, description="Smallest batch.")
    max_rows: int = Field(default=20_000, ge=1, le=1_000_000, description="Largest batch.")
    target_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Shrink when a batch takes more than this fraction of every_seconds; "
        "grow when it takes less than a quarter of it and records are waiting.",
    )


class PipelineConfig(Strict):
    """One pipeline: where rows come from, what they mean, what learns from them."""

    name: str = Field(description="The NAME of [pipelines.NAME].")
    source: Source = Field(
        description="Where records come from (kind = files, postgres or redis_stream)."
    )
    event_time: str = Field(
        description="Event timestamp column: ISO-8601 text (with or without offset) or epoch s/ms."
    )
    key: str | None = Field(
        default=None, description="De-duplication key: a repeated key is quarantined."
    )
    target: str | None = Field(
        default=None,
        description="Column the model learns; an empty value: stored and scored, not learned. "
        "Required unless task = clustering, which learns without one.",
    )
    features: list[str] | None = Field(
        default=None,
        description="Feature columns; default: every other column of the first landing file.",
    )
    categorical: list[str] = Field(
        default_factory=list, description="Features that are categories; the rest are numeric."
    )
    task: Literal["classification", "regression", "clustering"] = Field(
        default="classification",
        description="What the model predicts: a class, a value, or (clustering, e.g. "
        "minibatch_kmeans) the nearest centre of each row, its metric the inertia.",
    )
    classes: list[str] | None = Field(
        default=None,
        description="Class labels; default: the labels in the landing files when the pipeline "
        "is created, else 0/1. Other labels are quarantined.",
    )
    model: ModelSpec = Field(
        default_factory=ModelSpec, description="The online model (the first champion)."
    )
    challengers: list[ModelSpec] = Field(
        default_factory=list,
        description="More candidates: each learns every batch and is scored before it learns; "
        "the promotion rule lets one replace the champion.",
    )
    promotion: PromotionRule = Field(
        default_factory=PromotionRule, description="When a challenger becomes champion."
    )
    drift: DriftSpec = Field(default_factory=DriftSpec, description="Drift detection.")
    lags: list[LagSpec] = Field(
        default_factory=list,
        description="Previous labels of a series as features (labels that arrive in order).",
    )
    distributed: DistributedSpec | None = Field(
        default=None,
        description="Learn each batch in shards on a Dask cluster; off when absent.",
    )
    adaptive_batch: AdaptiveBatch | None = Field(
        default=None,
        description="Let the batch size follow the load, starting at batch_rows; off when absent.",
    )
    batch_rows: int = Field(
        default=500, ge=1, le=1_000_000, description="Most records per micro-batch."
    )
    every_seconds: float = Field(
        default=5.0, ge=1, description="Interval of the pipeline's Prefect deployment."
    )
    time_features: list[TimeFeature] = Field(
        default_factory=list,
        description="Derived from event_time (UTC) and encoded on a circle: hour, weekday, month.",
    )
    aggregates: list[AggregateSpec] = Field(
        default_factory=list,
        description="Event-time window aggregates; each adds the previous window's row count "
        "and target mean as features.",
    )
    max_categories: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="One-hot slots per categorical feature; later newcomers share one more.",
    )
    categorical_encoding: Literal["onehot", "hash"] = Field(
        default="onehot",
        description="onehot: a vocabulary in order of first appearance, capped at "
        "max_categories. hash: each value hashed into hash_buckets slots (no vocabulary; "
        "for high-cardinality columns).",
    )
    hash_buckets: int = Field(
        default=1024, ge=2, le=1 << 20, description="Slots per column when hashing categories."
    )
    pii: dict[str, PiiRule] = Field(
        default_factory=dict,
        description="Personal columns and their protection, applied as records are read, "
        "before the inbox, tables, logs, artifacts or features see them: hash (keyed "
        "HMAC-SHA256 pseudonym, 32 hex characters; the key is TIDEMILL_PII_KEY or "
        "<state>/keys/pii.key, never in DuckDB), mask_last4 (`************1234`) or drop "
        "(removed; not a key, feature or target). The raw text of quarantined records is "
        "rewritten the same way. Rules, raw text and key rotation: docs/operations.md.",
    )
    subject: str | None = Field(
        default=None,
        description="Column that identifies a data subject (e.g. a customer's email), by "
        "which `tidemill erase` finds their rows: the key or a feature, stored as is or "
        "hashed (tasks/records/pii.py `subject_value` gives its stored form).",
    )

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError("pipeline names must be lowercase letters, digits and _")
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_as_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) for v in value]
        return value

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> PipelineConfig:
        if (self.target is None) != (self.task == "clustering"):
            raise ValueError(
                "clustering pipelines learn without a target: leave `target` out"
                if self.task == "clustering"
                else "target is required (or task = 'clustering')"
            )
        if self.lags and self.target is None:
            raise ValueError("lags are previous labels: they need a target")
        special = {self.event_time} | {c for c in (self.target, self.key) if c}
        features = self.features or []
        clash = special & set(features)
        if clash:
            raise ValueError(f"features may not include event_time/key/target ({sorted(clash)})")
        if self.features is not None:
            unknown = set(self.categorical) - set(features)
            if unknown:
                raise ValueError(f"categorical names columns not in features: {sorted(unknown)}")
            for agg in self.aggregates:
                missing = set(agg.by) - set(features) - special
                if missing:
                    raise ValueError(
                        f"aggregate '{agg.name}' groups by unknown columns {sorted(missing)}"
                    )
        if self.task == "classification" and self.classes is not None and len(self.classes) < 2:
            raise ValueError("classes needs at least two labels")
        self.source.check_pipeline(
            key=self.key,
            features=self.features,
            task=self.task,
            classes=self.classes,
            pii=dict(self.pii),
        )
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise ValueError("aggregate names must be unique")
        candidates = [m.name for m in self.candidates]
        if len(set(candidates)) != len(candidates):
            raise ValueError("challengers need names different from each other and from model.name")
        if self.features is not None:
            for lag in self.lags:
                missing = set(lag.by) - set(self.features) - special
                if missing:
                    raise ValueError(f"lag '{lag.name}' names unknown columns {sorted(missing)}")
        lag_names = [lag.name for lag in self.lags]
        if len(set(lag_names)) != len(lag_names) or set(lag_names) & set(names):
            raise ValueError("lag names must be unique and differ from aggregate names")
        batch = self.adaptive_batch
        if batch is not None and not batch.min_rows <= self.batch_rows <= batch.max_rows:
            raise ValueError("adaptive_batch needs min_rows <= batch_rows <= max_rows")
        _pii_is_consistent(self)
        return self

    @property
    def candidates(self) -> list[ModelSpec]:
        """The model, then the challengers."""
        return [self.model, *self.challengers]

    @property
    def label_classes(self) -> list[str]:
        """Class labels (text), the last one counted as positive in aggregates: as declared,
        or as found in the landing files when the pipeline was created, else 0/1."""
        return self.classes if self.classes is not None else ["0", "1"]

    @property
    def source_columns(self) -> list[str]:
        """The source columns the pipeline keeps, in order: key, event time, features,
        target (features must be resolved: see `resolved`)."""
        assert self.features is not None
        keyed = [self.key] if self.key else []
        target = [self.target] if self.target is not None else []
        return [*keyed, self.event_time, *self.features, *target]

    @property
    def positive_class(self) -> str | None:
        """The class counted as 1 in aggregates and lags (the last label) of a
        classification pipeline; None for regression and clustering."""
        return self.label_classes[-1] if self.task == "classification" else None

    def resolved(self, features: list[str], classes: list[str] | None) -> PipelineConfig:
        """This pipeline with the features and classes the config left out filled in."""
        return self.model_copy(update={"features": features, "classes": classes})


def _pii_is_consistent(config: PipelineConfig) -> None:
    """What personal-data rules may and may not touch (one line each when refused)."""
    pii, key = config.pii, config.key
    if pii and config.features is None:
        raise ValueError(
            "a pipeline with `pii` must list `features` (the default takes every column, "
            "personal ones too)"
        )
    features = config.features or []
    for column, rule in pii.items():
        if column in (config.event_time, config.target):
            raise ValueError(
                f"pii.{column}: event_time and target cannot be protected (a pseudonym is "
                "neither a time nor a label)"
            )
        if rule == "drop" and (column == key or column in features):
            raise ValueError(
                f"pii.{column} = 'drop' removes the column: it cannot be the key, a feature "
                "or the target"
            )
        if rule == "mask_last4" and column == key:
            raise ValueError(
                f"pii.{column} = 'mask_last4' makes different values equal: it cannot be the "
                "key (use 'hash')"
            )
        if column in features and column not in config.categorical:
            raise ValueError(
                f"pii.{column} is a feature: list it in `categorical` (a pseudonym or a mask "
                "is not a number)"
            )
    subject = config.subject
    if subject is None:
        return
    if pii.get(subject) in ("mask_last4", "drop"):
        raise ValueError(
            f"subject '{subject}' is {pii[subject]!r} in pii: erasure needs it as is or 'hash'"
        )
    if config.features is not None and subject != key and subject not in features:
        raise ValueError(
            f"subject '{subject}' must be the key or a feature (erasure finds a subject's rows "
            "by it)"
        )
