"""The process that owns a warehouse file: its one connection and the lock every write
takes, cursors of their own for readers, and the jobs that share them (the resident
pipelines, snapshot publication, Dask placement).

DuckDB allows one writing process per file. Keeping the connection and the models open
between micro-batches is what makes a 5 s cadence cheap: no process start, no re-import,
no model load per batch. Writers get the connection only through `writing()` (the lock
held); readers get a cursor of their own through `reader()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import threadpoolctl

from tidemill import private
from tidemill.config.load import TidemillConfig, load_config
from tidemill.flows.engine.models import PipelineState, change_champion
from tidemill.flows.engine.pipelines import Pipelines
from tidemill.flows.engine.placement import Placement
from tidemill.flows.engine.publication import Publication
from tidemill.keys import get_token, key_source, staged_key_file
from tidemill.settings import Settings, get_settings
from tidemill.warehouse import artifacts, extensions, registry
from tidemill.warehouse.connection import (
    STORAGE_VERSION,
    CheckpointFailed,
    Connection,
    checkpoint,
    database_path,
    open_warehouse,
)
from tidemill.warehouse.encryption import Key, WrongKey, is_encrypted, key_for
from tidemill.warehouse.serving.compact import Compacted, compact
from tidemill.warehouse.serving.quack import LiveServer, authorization
from tidemill.warehouse.serving.readonly import QueryResult, run_readonly

log = logging.getLogger("tidemill")


@dataclass
class Runtime:
    """The owner of one warehouse file and the models of its pipelines."""

    config: TidemillConfig
    con: Connection
    lock: threading.RLock = field(default_factory=threading.RLock)
    memory_limit: str | None = None  # DuckDB's, kept to reopen the file after a rewrite
    key: Key | None = None  # the warehouse's encryption key (None: not encrypted)
    live: LiveServer | None = None  # serving the warehouse to other processes (Quack)
    pipelines: Pipelines = field(init=False)
    publication: Publication = field(init=False)
    placement: Placement = field(default_factory=Placement)
    _readers: set[Connection] = field(default_factory=set)
    _idle: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._idle = threading.Condition(self.lock)
        self.pipelines = Pipelines(self.config)
        self.publication = Publication(self.state_dir)

    @classmethod
    def open(
        cls, config: TidemillConfig, settings: Settings | None = None, *, serve: bool = False
    ) -> Runtime:
        """Open the warehouse of `config` for writing (OwnedElsewhere if another process
        holds it); `serve` also serves it live to other processes (quack.py)."""
        settings = settings or get_settings()
        # for the whole process: scikit-learn's BLAS threads fight over the cores
        threadpoolctl.threadpool_limits(limits=settings.learn_threads)
        private.state_folder(config.state_dir)
        live = LiveServer(config.state_dir, get_token(config.state_dir, "quack")) if serve else None
        key, converted = _settle_encryption(config)
        runtime = cls(
            config=config,
            con=_open(config.state_dir, settings.duckdb_memory_limit, key, live),
            memory_limit=settings.duckdb_memory_limit,
            key=key,
            live=live,
        )
        runtime.publication.every_seconds = config.serving.snapshot_every_seconds
        runtime.publication.checkpoint_every_cycles = settings.checkpoint_every_cycles
        if converted:  # older snapshots hold the file as it was
            runtime.publish_now(keep_previous=False)
        if live is not None:
            live.start(runtime.con)
        return runtime

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """The warehouse connection, with the owner's lock held for the block."""
        with self.lock:
            yield self.con

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
        """Run read-only `sql` on a cursor of its own (see warehouse/serving/readonly.py)."""
        with self.reader() as cursor:
            return run_readonly(cursor, sql)

    def pipeline(self, name: str) -> PipelineState | None:
        """The pipeline's resident state, set up on first use (see pipelines.py)."""
        if name in self.pipelines.states:
            return self.pipelines.states[name]
        with self.writing() as con:
            return self.pipelines.open(con, name)

    def reload_model(self, name: str) -> None:
        """Forget the in-memory models of `name` and load the committed ones again."""
        self.pipelines.forget(name)
        self.pipeline(name)

    def after_cycle(self, *, committed: bool) -> None:
        """Checkpoint and publish when due (see publication.py)."""
        with self.writing() as con:
            self.publication.after_cycle(con, committed=committed)

    def publish_now(self, *, keep_previous: bool = True) -> None:
        """Checkpoint and publish the snapshot before returning; nothing else runs meanwhile."""
        with self.writing() as con:
            self.publication.publish_now(con, keep_previous=keep_previous)

    def change_champion(
        self, name: str, to_version: int | None, *, action: str, actor: str, reason: str
    ) -> registry.ModelVersion:
        """Promote `to_version` of `name` (rollback: to the previous champion when None)."""
        state = self.pipeline(name)
        if state is None:
            raise registry.RegistryError(f"{name} has no tables yet")
        with self.writing() as con:
            changed = change_champion(
                con, self.state_dir, state, to_version, action=action, actor=actor, reason=reason
            )
            self.publication.changed()
        return changed

    def rewrite_file(self, *, wait_seconds: float = 30.0) -> Compacted:
        """Rewrite the warehouse file so the bytes of deleted rows are gone (after an
        erasure; see warehouse/serving/compact.py), then publish a fresh snapshot, since the old
        one still holds them. Readers are interrupted; batches wait meanwhile."""
        path = database_path(self.state_dir)
        with self.lock:
            for cursor in list(self._readers):
                cursor.interrupt()
            if not self._idle.wait_for(lambda: not self._readers, timeout=wait_seconds):
                raise RuntimeError(f"readers still hold {path} after {wait_seconds:g} s")
            self.publication.publisher.wait()
            checkpoint(self.con)
            if self.live is not None:
                self.live.detach()
            self.con.close()
            try:
                text = self.key.text if self.key else None
                done = compact(path, STORAGE_VERSION, key_from=text, key_to=text)
            finally:
                self.con = _open(self.state_dir, self.memory_limit, self.key, self.live)
                if self.live is not None:
                    self.live.start(self.con)
            self.publish_now(keep_previous=False)
        return done

    def close(self) -> None:
        """Checkpoint, publish a last snapshot and close the file and the Dask clients."""
        with self.lock:
            try:
                self.publish_now()
            except (CheckpointFailed, OSError) as error:
                log.warning("final checkpoint or snapshot failed: %s", error)
            if self.live is not None:
                self.live.close()
            self.con.close()
        self.placement.close()


def _open(
    state_dir: Path, memory_limit: str | None, key: Key | None, live: LiveServer | None
) -> Connection:
    """The owner's connection; one that serves loads quack (and httpfs, which it needs)
    and registers the authorization function before the lock."""
    if live is None:
        return open_warehouse(database_path(state_dir), memory_limit, key=key)
    return open_warehouse(
        database_path(state_dir),
        memory_limit,
        key=key,
        load=extensions.EXTENSIONS,
        prepare=authorization(state_dir),
    )


def _settle_encryption(config: TidemillConfig) -> tuple[Key | None, bool]:
    """The key the warehouse is to be opened with (None: plaintext), and whether the file
    was just converted to what `[state] encryption` asks (encrypted or decrypted)."""
    path = database_path(config.state_dir)
    wanted, found = config.state.encryption, is_encrypted(path)
    if not wanted and not found:
        return None, False
    if found and staged_key_file(config.state_dir, "encryption").exists():
        raise WrongKey(f"a key rotation of {path} was cut short: run `tidemill keys rotate`")
    # an encrypted file's key must exist (none is made up); a new one is made for a file
    # about to be encrypted
    key = key_for(path, config.state_dir) or Key(
        get_token(config.state_dir, "encryption"), key_source(config.state_dir, "encryption")
    )
    if not path.exists() or wanted == found:
        if wanted:  # artifacts of a conversion cut short
            artifacts.reseal(config.state_dir, key.text, key.text)
        return (key if wanted else None), False
    log.warning(
        "%s the warehouse (state.encryption = %s)", "encrypting" if wanted else "decrypting", wanted
    )
    key_from, key_to = (key.text if found else None), (key.text if wanted else None)
    compact(path, STORAGE_VERSION, key_from=key_from, key_to=key_to)
    artifacts.reseal(config.state_dir, key_from, key_to)  # artifacts follow the warehouse
    return (key if wanted else None), True


_resident_lock = threading.Lock()
_resident: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the one every flow run executed in this process uses (the worker
    installs its own before it starts executing runs; None forgets it)."""
    global _resident
    with _resident_lock:
        _resident = runtime


def resident_runtime() -> Runtime:
    """This process's Runtime: the installed one, else one opened from the configured
    file (a flow run executed anywhere else, provided no other process owns the file)."""
    global _resident
    with _resident_lock:
        if _resident is None:
            _resident = Runtime.open(load_config(get_settings().config))
        return _resident
