"""Pipelines as config: the TOML file that declares sources, schema, model and cadence.

`load_config` returns a validated :class:`TidemillConfig` or raises :class:`ConfigError`
whose message is ONE line naming the key and what is allowed — the CLI prints it as is.
Relative paths resolve against the folder of the config file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidemill.errors import TidemillError

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TimeFeature = Literal["hour", "weekday", "month"]
PiiRule = Literal["hash", "mask_last4", "drop"]


def deployment_name(pipeline: str) -> str:
    """The name of a pipeline's Prefect deployments and artifact keys (micro-batch/NAME,
    backfill/NAME, NAME-batch): artifact keys allow dashes, not underscores."""
    return pipeline.replace("_", "-")


class ConfigError(TidemillError, ValueError):
    """A config file that cannot be used; the message is one actionable line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesSource(_Strict):
    """A landing folder: every file matching `path` is read once (see tasks/sources.py)."""

    kind: Literal["files"] = Field(description="A landing folder of files.")
    path: str = Field(description="Glob of landing files, relative to the config file's folder.")
    format: Literal["csv", "parquet", "ndjson"] = Field(
        default="csv", description="File format of the landing files."
    )
    settle_seconds: float = Field(
        default=1.0,
        ge=0,
        description="A file modified less than this long ago is left for the next cycle "
        "(its writer may still be writing). Drains ignore it.",
    )


_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


class PostgresSource(_Strict):
    """A PostgreSQL table read incrementally by a cursor column (see tasks/sources/postgres.py).

    Reads are inclusive on the last cursor value and de-duplicated on the pipeline's key
    (like dlt), so rows written with the same cursor value as the last read's maximum are
    neither missed nor read twice.
    """

    kind: Literal["postgres"] = Field(description="A PostgreSQL table read by a cursor column.")
    dsn: str = Field(
        description="libpq connection string or URL; leave the password out and let libpq "
        "read PGPASSWORD or ~/.pgpass."
    )
    table: str = Field(description="Table or view to read, `name` or `schema.name`.")
    cursor: str = Field(
        description="Column that grows when a row is written (updated_at, an id, ...)."
    )
    read_rows: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Most rows one read takes; default 10 x batch_rows.",
    )

    @field_validator("table")
    @classmethod
    def _table_is_a_name(cls, value: str) -> str:
        if not _IDENTIFIER_PATH.match(value):
            raise ValueError("must be a table name, `name` or `schema.name`")
        return value

    @field_validator("cursor")
    @classmethod
    def _cursor_is_a_name(cls, value: str) -> str:
        if not _IDENTIFIER_PATH.match(value) or "." in value:
            raise ValueError("must be a column name")
        return value

    @property
    def label(self) -> str:
        """How records name their origin (`_file`): `postgres:<table>`."""
        return f"postgres:{self.table}"


# --- redis_stream source (tasks/sources/redis_stream.py) ---------------------------------------
LOCAL_BROKER = "local"
_STREAM_NAME = re.compile(r"^[^\s\x00-\x1f]{1,200}$")


class RedisStreamSource(_Strict):
    """A Redis stream read through a consumer group (see tasks/sources/redis_stream.py).

    The pipeline is one consumer of the group: it takes its own unacknowledged entries
    first, then new ones, and acknowledges them only once they are stored, so a crash
    re-delivers them and their ids (kept in _cursors) stop them being stored twice.
    """

    kind: Literal["redis_stream"] = Field(
        description="A Redis stream read through a consumer group."
    )
    url: str = Field(
        description='"local": the broker `tidemill up` runs in the state folder '
        "(deployments/redis_server.py); else redis://[:PASSWORD@]HOST:PORT/DB (rediss:// "
        "for TLS) of a server of yours."
    )
    stream: str = Field(description="The stream's key.")
    group: str = Field(
        default="tidemill",
        description="Consumer group; created at the stream's first entry when missing.",
    )
    consumer: str = Field(
        default="worker-1",
        description="This pipeline's name in the group. Keep it: its unacknowledged "
        "entries are re-delivered to this name only.",
    )
    read_rows: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Most entries one read takes; default 10 x batch_rows.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_redis(cls, value: str) -> str:
        if value == LOCAL_BROKER:
            return value
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        try:
            urlsplit(value).port  # noqa: B018 (reading it checks it is a number)
        except ValueError:
            raise ValueError("must be a redis:// or rediss:// URL with a numeric port") from None
        return value

    @field_validator("stream", "group", "consumer")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        if not _STREAM_NAME.match(value):
            raise ValueError("must be 1-200 characters without spaces or control characters")
        return value

    @property
    def label(self) -> str:
        """How records name their origin (`_file`): `redis:<stream>`."""
        return f"redis:{self.stream}"


def _stream_needs(config: PipelineConfig) -> None:
    """What a redis_stream pipeline must declare: its columns (no entry is read to
    find them)."""
    if config.features is None:
        raise ValueError("a redis_stream source needs `features` (they are not read from entries)")
    if config.task == "classification" and config.classes is None:
        raise ValueError("a redis_stream source needs `classes` (they are not read from entries)")


# --- end of redis_stream source ------------------------------------------------------

Source = Annotated[FilesSource | PostgresSource | RedisStreamSource, Field(discriminator="kind")]
SOURCE_KINDS = ("files", "postgres", "redis_stream")


class ModelSpec(_Strict):
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


class PromotionRule(_Strict):
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


class DriftSpec(_Strict):
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


class LagSpec(_Strict):
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


class AdaptiveBatch(_Strict):
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


class DistributedSpec(_Strict):
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


class AggregateSpec(_Strict):
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
        return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class PipelineConfig(_Strict):
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
        if isinstance(self.source, PostgresSource):
            _postgres_needs(self)
        if isinstance(self.source, RedisStreamSource):
            _stream_needs(self)
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

    def resolved(self, features: list[str], classes: list[str] | None) -> PipelineConfig:
        """This pipeline with the features and classes the config left out filled in."""
        return self.model_copy(update={"features": features, "classes": classes})


def _postgres_needs(config: PipelineConfig) -> None:
    """What a postgres pipeline must declare: the key that de-duplicates reads at the last
    cursor value, and the columns (they are not looked up in the table)."""
    if not config.key:
        raise ValueError(
            "a postgres source needs `key` (rows at the last cursor value are told apart by it)"
        )
    if config.features is None:
        raise ValueError("a postgres source needs `features` (they are not read from the table)")
    if config.task == "classification" and config.classes is None:
        raise ValueError("a postgres source needs `classes` (they are not read from the table)")


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
    source = config.source
    if isinstance(source, PostgresSource) and {key, source.cursor} & set(pii):
        raise ValueError(
            "a postgres source's key and cursor are kept as read in _cursors: they cannot "
            "be pii columns"
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


class StateConfig(_Strict):
    """Where the DuckDB file, artifacts, snapshots and server state live."""

    dir: Path = Field(
        default=Path(".tidemill"),
        description="DuckDB file, artifacts, snapshot, landing folder and server state.",
    )


class TidemillConfig(_Strict):
    """A whole config file."""

    state: StateConfig = Field(default_factory=StateConfig)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)
    path: Path = Path("tidemill.toml")

    @property
    def state_dir(self) -> Path:
        """Absolute state folder."""
        return self.state.dir

    def pipeline(self, name: str) -> PipelineConfig:
        """The named pipeline, or a ConfigError listing the declared ones."""
        if name not in self.pipelines:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"{self.path}: no pipeline named '{name}' (declared: {known})")
        return self.pipelines[name]


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("function-after[_columns_are_consistent()]",)]
    # a discriminated union names the tag in the location: source.files.format -> source.format
    parts = [
        p
        for i, p in enumerate(parts)
        if not (p in SOURCE_KINDS and i > 0 and parts[i - 1] == "source")
    ]
    return ".".join(p for p in parts if not p.startswith(("function-", "tagged-union")))


def _one_line(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    where = _location(first["loc"])
    kind = first["type"]
    message = first["msg"].removeprefix("Value error, ")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = " or ".join(repr(k) for k in SOURCE_KINDS)
        got = first.get("input")
        tag = got.get("kind") if isinstance(got, dict) else None
        if tag is None:
            return f"{path}: {where}.kind: is required ({kinds})"
        return f"{path}: {where}.kind: must be {kinds} (got {tag!r})"
    if kind == "extra_forbidden":
        message = "unknown key (check the spelling; see docs/configuration.md)"
    elif kind == "missing":
        message = "is required"
    elif kind == "literal_error":
        message = message.replace("Input should be", "must be")
    got = first.get("input")
    suffix = (
        f" (got {got!r})" if kind not in ("missing", "extra_forbidden") and got is not None else ""
    )
    if isinstance(got, dict | list):
        suffix = ""
    return f"{path}: {where}: {message}{suffix}" if where else f"{path}: {message}"


def parse_config(raw: dict[str, Any], path: Path) -> TidemillConfig:
    """Validate a parsed TOML document; paths resolve against `path`'s folder."""
    base = path.resolve().parent
    pipelines = raw.get("pipelines", {})
    if not isinstance(pipelines, dict):
        raise ConfigError(f"{path}: pipelines: must be a table of [pipelines.NAME] sections")
    document = dict(raw)
    document["pipelines"] = {}
    for name, body in pipelines.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: pipelines.{name}: must be a table")
        body = {**body, "name": name}
        source = body.get("source")
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source_path = Path(source["path"])
            if not source_path.is_absolute():
                source = {**source, "path": str(base / source_path)}
            body["source"] = source
        document["pipelines"][name] = body
    state = document.get("state", {})
    if isinstance(state, dict) and "dir" in state:
        state_dir = Path(str(state["dir"]))
        document["state"] = {
            **state,
            "dir": state_dir if state_dir.is_absolute() else base / state_dir,
        }
    else:
        document["state"] = {
            **(state if isinstance(state, dict) else {}),
            "dir": base / ".tidemill",
        }
    document["path"] = path
    try:
        return TidemillConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_one_line(path, error)) from None


def load_config(path: Path) -> TidemillConfig:
    """Read and validate a config file, or raise ConfigError (one line)."""
    if not path.exists():
        raise ConfigError(
            f"{path}: config file not found (pass --config PATH or set TIDEMILL_CONFIG)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(raw, path)
