"""The resident state of the process that owns the warehouse.

One `Runtime` per process: the open DuckDB connection (DuckDB allows one writing
process per file), and per pipeline its resolved config and the model serving now.
Keeping these open between micro-batches is what makes a 5 s cadence cheap: no
process start, no re-import, no model load per batch.
"""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import threadpoolctl

from tidemill.config import DistributedSpec, FilesSource, ModelSpec, PipelineConfig, TidemillConfig
from tidemill.settings import Settings, get_settings
from tidemill.tasks.drift.detectors import Adwin, PageHinkley
from tidemill.tasks.drift.shift import FeatureShift
from tidemill.tasks.features.aggregate import aggregate_feature_names
from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.features.lags import lag_feature_names
from tidemill.tasks.judge.promotion import ScoreWindow
from tidemill.tasks.learn.estimators import make_estimator
from tidemill.tasks.learn.metrics import DEFAULT_METRIC
from tidemill.tasks.learn.prequential import Learner, learn_here
from tidemill.tasks.learn.shards import dask_map, sharded_learner, should_distribute
from tidemill.tasks.learn.state import ModelState
from tidemill.tasks.records.validate import class_labels
from tidemill.tasks.sources.files import column_values, header_of
from tidemill.warehouse import registry
from tidemill.warehouse.compact import Compacted, compact
from tidemill.warehouse.connection import (
    STORAGE_VERSION,
    CheckpointFailed,
    Connection,
    checkpoint,
    database_path,
    open_warehouse,
)
from tidemill.warehouse.pipeline_tables import ensure_pipeline_tables, stored_schema
from tidemill.warehouse.readonly import QueryResult, run_readonly
from tidemill.warehouse.snapshot import SnapshotPublisher, publish_snapshot, snapshot_path

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("tidemill")


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


def numeric_inputs(config: PipelineConfig) -> list[str]:
    """Numeric model inputs: numeric features, then aggregate and lag features."""
    assert config.features is not None
    numeric = [f for f in config.features if f not in config.categorical]
    numeric += [n for spec in config.aggregates for n in aggregate_feature_names(spec)]
    numeric += [n for lag in config.lags for n in lag_feature_names(lag.name, lag.n)]
    return numeric


def fresh_model(config: PipelineConfig, spec: ModelSpec | None = None) -> ModelState:
    """An untrained model state of candidate `spec` (default: the config's model)."""
    spec = spec or config.model
    numeric = numeric_inputs(config)
    periods = {"hour": 24, "weekday": 7, "month": 12}
    encoder = FeatureEncoder(
        numeric=numeric,
        categorical=list(config.categorical),
        max_categories=config.max_categories,
        cyclic={f"event_{n}": periods[n] for n in config.time_features},
        hash_buckets=config.hash_buckets if config.categorical_encoding == "hash" else 0,
    )
    estimator = make_estimator(spec.estimator, dict(spec.params), config.task)
    classes = config.label_classes if config.task == "classification" else None
    detectors = {"adwin": Adwin, "page_hinkley": PageHinkley}
    drift = config.drift
    return ModelState(
        estimator=estimator,
        encoder=encoder,
        task=config.task,
        classes=classes,
        candidate=spec.name,
        detector=detectors[drift.detector]() if drift.detector in detectors else None,
        shift=FeatureShift(
            features=numeric,
            reference_rows=drift.psi_reference_rows,
            window_rows=drift.psi_window_rows,
        )
        if numeric
        else None,
    )


@dataclass
class Runtime:
    """The owner of one warehouse file and the models of its pipelines."""

    config: TidemillConfig
    con: Connection
    pipelines: dict[str, PipelineState] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    snapshot_every_seconds: float = 0.0
    checkpoint_every_cycles: int = 50
    cycles_since_checkpoint: int = 0
    unpublished: bool = False
    memory_limit: str | None = None  # DuckDB's, kept to reopen the file after a rewrite
    publisher: SnapshotPublisher = field(init=False)
    _clients: dict[str, Client] = field(default_factory=dict)  # Dask, by address
    _readers: set[Connection] = field(default_factory=set)
    _idle: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._idle = threading.Condition(self.lock)
        self.publisher = SnapshotPublisher(
            database_path(self.state_dir), snapshot_path(self.state_dir)
        )

    @classmethod
    def open(cls, config: TidemillConfig, settings: Settings | None = None) -> Runtime:
        """Open the warehouse of `config` for writing (fails if another process owns it)."""
        settings = settings or get_settings()
        # for the whole process: scikit-learn's BLAS threads fight over the cores
        threadpoolctl.threadpool_limits(limits=settings.learn_threads)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        con = open_warehouse(database_path(config.state_dir), settings.duckdb_memory_limit)
        return cls(
            config=config,
            con=con,
            snapshot_every_seconds=settings.snapshot_every_seconds,
            checkpoint_every_cycles=settings.checkpoint_every_cycles,
            memory_limit=settings.duckdb_memory_limit,
        )

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def pipeline(self, name: str) -> PipelineState | None:
        """The pipeline's resident state, set up on first use; None while a config without
        `features` waits for its first landing file to name the columns."""
        if name in self.pipelines:
            return self.pipelines[name]
        config = self.config.pipeline(name)
        with self.lock:
            stored = stored_schema(self.con, name)
            if stored is not None:  # what the config leaves out was fixed at creation
                features = config.features or list(stored["features"])  # type: ignore[call-overload]
                classes = config.classes or stored["classes"]
            else:
                found = self._from_landing(config)
                if found is None:
                    return None
                features, classes = found
            config = config.resolved(features, list(classes) if classes else None)  # type: ignore[arg-type]
            ensure_pipeline_tables(self.con, config)
            state = self._load_candidates(config)
        self.pipelines[name] = state
        return state

    def _load_candidates(self, config: PipelineConfig) -> PipelineState:
        """Every candidate at its latest version (fresh when it has none yet), and their
        rolling scores since the last champion change."""
        heads = registry.heads(self.con, config.name)
        models: dict[str, ModelState] = {}
        versions: dict[str, int | None] = {}
        for spec in config.candidates:
            head = heads.get(spec.name)
            models[spec.name] = (
                registry.load_artifact(self.state_dir, head) if head else fresh_model(config, spec)
            )
            versions[spec.name] = head.version if head else None
        champion = next((h for h in heads.values() if h.status == "champion"), None)
        if champion is not None and champion.candidate not in models:  # no longer in the config
            models[champion.candidate] = registry.load_artifact(self.state_dir, champion)
            versions[champion.candidate] = champion.version
        state = PipelineState(
            config=config,
            models=models,
            versions=versions,
            champion=champion.candidate if champion else config.model.name,
        )
        for candidate, batch_id, n, value in registry.recent_scores(
            self.con, config.name, state.metric, config.promotion.window_rows * len(models)
        ):
            if candidate in state.windows:
                state.windows[candidate].add(batch_id, n, value)
        return state

    @staticmethod
    def _from_landing(config: PipelineConfig) -> tuple[list[str], list[str] | None] | None:
        """Features and classes the config leaves out, read from the landing files there
        are now; None while the folder is empty (the pipeline then waits)."""
        features, classes = config.features, config.classes
        if features is not None and (classes is not None or config.task == "regression"):
            return features, classes
        if not isinstance(config.source, FilesSource):  # its config declares them
            return features or [], classes
        files = sorted(glob.glob(config.source.path))
        if not files:
            return None
        if features is None:
            special = {config.event_time, config.target, config.key}
            header = header_of(files[0], config.source.format)
            features = [c for c in header if c not in special]
        if classes is None and config.task == "classification" and config.target is not None:
            found = class_labels(column_values(files, config.source.format, config.target))
            classes = found if len(found) >= 2 else None
        return features, classes

    def reload_model(self, name: str) -> None:
        """Forget the in-memory model of `name` and load the champion again (after a
        failed batch, so nothing it half-learned survives)."""
        self.pipelines.pop(name, None)
        self.pipeline(name)

    def after_cycle(self, committed: bool) -> None:
        """Checkpoint every N cycles (an empty one still writes its heartbeat, which would
        otherwise pile up in the WAL of an idle pipeline), and start publishing the
        read-only snapshot once it is due (see warehouse/snapshot.py) and a batch committed
        since (empty cycles too, so the last batch of a burst is published). No checkpoint
        while a snapshot copy runs: the copy needs the main file unchanged."""
        self.cycles_since_checkpoint += 1
        if committed:
            self.unpublished = True
        if self.publisher.busy:
            return
        due = self.unpublished and self.publisher.due(self.snapshot_every_seconds)
        if self.cycles_since_checkpoint < self.checkpoint_every_cycles and not due:
            return
        with self.lock:
            try:
                checkpoint(self.con)
            except CheckpointFailed as error:  # a reader holds a transaction: try next cycle
                log.debug("checkpoint skipped: %s", error)
                return
            self.cycles_since_checkpoint = 0
            if due:
                self.unpublished = False
                self.publisher.start()

    def publish_now(self, *, keep_previous: bool = True) -> None:
        """Checkpoint and publish the snapshot before returning (after an erasure, at
        close): nothing else runs meanwhile. Without `keep_previous`, every older copy is
        deleted (after an erasure: they hold what was erased)."""
        with self.lock:
            self.publisher.wait()
            checkpoint(self.con)
            publish_snapshot(
                database_path(self.state_dir),
                snapshot_path(self.state_dir),
                keep_previous=keep_previous,
            )
            self.unpublished = False

    def change_champion(
        self, name: str, to_version: int | None, *, action: str, actor: str, reason: str
    ) -> registry.ModelVersion:
        """Promote `to_version` (rollback: to the previous champion when None); the next
        batch is scored and learned by it. Its artifact is verified before anything changes."""
        state = self.pipeline(name)
        if state is None:
            raise registry.RegistryError(f"{name} has no tables yet")
        with self.lock:
            target = (
                to_version if to_version is not None else registry.rollback_target(self.con, name)
            )
            row = registry.get_version(self.con, name, target)
            if row is None:
                raise registry.RegistryError(f"{name} has no version {target}")
            model = registry.load_artifact(self.state_dir, row)
            changed = registry.change_champion(
                self.con, name, target, action=action, actor=actor, reason=reason
            )
            state.models[changed.candidate] = model
            state.versions[changed.candidate] = changed.version
            state.champion = changed.candidate
            state.windows[changed.candidate] = ScoreWindow(rows=state.config.promotion.window_rows)
            self.unpublished = True
        return changed

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A cursor of its own on the warehouse, for work that reads beside the batches
        (owner queries, replays, artifacts); `rewrite_file` interrupts it."""
        with self.lock:
            cursor = self.con.cursor()
            self._readers.add(cursor)
        try:
            yield cursor
        finally:
            with self.lock:
                self._readers.discard(cursor)
                cursor.close()
                self._idle.notify_all()

    def read(self, sql: str) -> QueryResult:
        """Run read-only `sql` on a cursor of its own (see warehouse/readonly.py)."""
        with self.reader() as cursor:
            return run_readonly(cursor, sql)

    def rewrite_file(self, *, wait_seconds: float = 30.0) -> Compacted:
        """Rewrite the warehouse file so the bytes of deleted rows are gone (after an
        erasure; see warehouse/compact.py), then publish a fresh snapshot, since the old
        one still holds them. Readers are interrupted; batches wait meanwhile."""
        path = database_path(self.state_dir)
        with self.lock:
            for cursor in list(self._readers):
                cursor.interrupt()
            if not self._idle.wait_for(lambda: not self._readers, timeout=wait_seconds):
                raise RuntimeError(f"readers still hold {path} after {wait_seconds:g} s")
            self.publisher.wait()
            checkpoint(self.con)
            self.con.close()
            try:
                done = compact(path, STORAGE_VERSION)
            finally:
                self.con = open_warehouse(path, self.memory_limit)
            self.publish_now(keep_previous=False)
        return done

    def learner(self, config: PipelineConfig, candidate: str, rows: int) -> Learner:
        """How `candidate` learns a batch of `rows` rows: in this process, or in shards on
        the pipeline's Dask cluster when `distributed` says so (tasks/learn/shards.py)."""
        spec = config.distributed
        specs = {s.name: s for s in config.candidates}
        if spec is None or candidate not in specs:
            return learn_here
        if spec.mode == "auto" and not should_distribute(
            specs[candidate].estimator, rows, spec.workers
        ):
            return learn_here
        return sharded_learner(spec.workers, dask_map(self._dask(spec)))

    def _dask(self, spec: DistributedSpec) -> Client:
        """The Dask client of `spec`, started once per process (a local cluster takes a
        second or two to start; never one per batch)."""
        key = spec.address or f"local:{spec.workers}"
        if key not in self._clients:
            from distributed import Client, LocalCluster

            if spec.address:
                self._clients[key] = Client(spec.address)
            else:
                cluster = LocalCluster(
                    n_workers=spec.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    host="127.0.0.1",
                )
                self._clients[key] = Client(cluster)
        return self._clients[key]

    def close(self) -> None:
        """Checkpoint, publish a last snapshot and close the file."""
        with self.lock:
            try:
                self.publish_now()
            except (CheckpointFailed, OSError) as error:
                log.warning("final checkpoint or snapshot failed: %s", error)
            self.con.close()
        for client in self._clients.values():
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
        self._clients.clear()
