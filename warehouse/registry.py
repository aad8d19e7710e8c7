"""The model registry: artifact files and their `ml.model_versions` rows.

An artifact is written (temp file, fsync, rename) BEFORE the batch that registers it
commits; a crash in between leaves an orphan file that no row points at, never a row
without its file.

Artifacts are joblib files, i.e. pickles, and unpickling runs code. So a file is only
unpickled when all of these hold, checked in this order on bytes read once:

1. it lies in `artifacts/<pipeline>/` and is a regular file (a row cannot point elsewhere);
2. its SHA-256 is the row's (corruption, a file of another version);
3. its row's `artifact_signature` is the HMAC-SHA256, under the `artifact` key of
   tidemill.keys (never stored in DuckDB), of (pipeline, version, SHA-256). Someone who
   can write both the warehouse and the folder, but not read the key, can neither forge
   a file nor move a valid one to another version. Rows written before signatures
   existed have none and are refused, not trusted on their hash alone: accepting them
   would let anyone who writes the warehouse erase a signature to get past the check.
   `sign_versions` (the `tidemill models sign` command) signs them once someone has
   vouched for the files;
4. the scikit-learn, numpy and joblib that wrote it have the running major.minor, and
   unpickling raises nothing, scikit-learn's InconsistentVersionWarning included.

Every refusal is one ArtifactIntegrityError line naming the pipeline and version.
Files in the folder that no row names are never read (the janitor deletes orphans
without opening them).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import platform
import sys
import threading
import types
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import duckdb
import joblib
import numpy
import polars
import sklearn
from sklearn.exceptions import InconsistentVersionWarning

from tidemill.durable import write_atomic
from tidemill.errors import TidemillError
from tidemill.keys import get_key
from tidemill.tasks.drift.detectors import Adwin, PageHinkley
from tidemill.tasks.drift.shift import FeatureShift
from tidemill.tasks.features.encode import FeatureEncoder, RunningMoments
from tidemill.tasks.learn.state import ModelState, Scores
from tidemill.warehouse.transaction import transaction

if TYPE_CHECKING:
    from tidemill.tasks.learn.prequential import ShardRecord

ARTIFACTS_DIR = "artifacts"
SIGNATURE_SCHEME = "tidemill-artifact-v1"
"""Domain of the artifact HMAC; changing what is signed means a new scheme name."""
CHECKED_LIBRARIES = ("scikit-learn", "numpy", "joblib")
"""Libraries whose major.minor must match between the writer and the loader of a pickle."""
_RETRAIN = (
    "train a new version under this one: `tidemill backfill {} --start .. --end .. --retrain`"
)


class ArtifactIntegrityError(TidemillError, RuntimeError):
    """An artifact that must not be loaded: pruned, missing, altered, unsigned, signed for
    another version, or written by other library versions. The message says which."""


@dataclass(frozen=True)
class ModelVersion:
    """One row of ml.model_versions."""

    pipeline: str
    version: int
    parent_version: int | None
    batch_id: int
    rows_seen: int
    batches_seen: int
    created_at: datetime
    artifact_path: str
    sha256: str
    estimator: str
    params_json: str
    library_versions: str
    feature_names: list[str]
    status: str
    metrics_json: str
    candidate: str = "main"
    params_sha256: str | None = None
    artifact_pruned_at: datetime | None = None
    artifact_signature: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """Prequential metrics recorded with this version."""
        return dict(json.loads(self.metrics_json))


COLUMNS = [f for f in ModelVersion.__dataclass_fields__]


def library_versions() -> str:
    """JSON of the library versions an artifact depends on."""
    return json.dumps(
        {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": numpy.__version__,
            "joblib": joblib.__version__,
            "polars": polars.__version__,
        },
        sort_keys=True,
    )


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_relpath(pipeline: str, version: int, batch_id: int) -> str:
    """Artifact location relative to the state folder (unique per batch attempt)."""
    return f"{ARTIFACTS_DIR}/{pipeline}/v{version:06d}-b{batch_id}.joblib"


def write_artifact(state_dir: Path, relpath: str, state: Any) -> str:
    """Durably write `state` to `relpath` under `state_dir`; returns its SHA-256 (of the
    very bytes written)."""
    buffer = io.BytesIO()
    joblib.dump(state, buffer)
    data = buffer.getvalue()

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    write_atomic(state_dir / relpath, write)
    return hashlib.sha256(data).hexdigest()


def artifact_signature(key: bytes, pipeline: str, version: int, sha256: str) -> str:
    """Hex HMAC-SHA256 under `key` binding an artifact's content (its SHA-256) to the one
    registry row it belongs to."""
    message = json.dumps([SIGNATURE_SCHEME, pipeline, int(version), sha256]).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def load_artifact(state_dir: Path, version: ModelVersion) -> Any:
    """The model state of `version`, unpickled only after the checks of the module
    docstring; raises ArtifactIntegrityError (one line) when one fails."""
    name = f"{version.pipeline} v{version.version}"
    if version.artifact_pruned_at is not None:
        raise ArtifactIntegrityError(
            f"artifact of {name} was pruned by the retention "
            f"policy at {version.artifact_pruned_at:%Y-%m-%d %H:%M}; `tidemill replay-model "
            f"{version.pipeline} --to {version.version}` rebuilds and checks it from its batches"
        )
    data = _artifact_bytes(state_dir, version)
    path = state_dir / version.artifact_path
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, version.sha256):
        raise ArtifactIntegrityError(
            f"artifact of {name} does not match the registry "
            f"(sha256 {actual[:12]}… != {version.sha256[:12]}…); refusing to load {path}"
        )
    _check_signature(state_dir, version, actual)
    _check_libraries(version)
    try:
        # The filter is process-wide while it lasts; only unpickling raises this warning.
        with warnings.catch_warnings(), _legacy_module_names():
            warnings.simplefilter("error", InconsistentVersionWarning)
            return joblib.load(io.BytesIO(data))
    except InconsistentVersionWarning as mismatch:
        raise ArtifactIntegrityError(
            f"artifact of {name} was pickled by scikit-learn "
            f"{mismatch.original_sklearn_version}, this process runs "
            f"{mismatch.current_sklearn_version}; refusing to load it (install scikit-learn "
            f"{mismatch.original_sklearn_version}, or {_RETRAIN.format(version.pipeline)})"
        ) from None
    except Exception as error:  # a signed file this code cannot read (a class moved, ...)
        first = str(error).splitlines()[0] if str(error) else ""
        raise ArtifactIntegrityError(
            f"artifact of {name} cannot be unpickled by this code: {type(error).__name__}: {first}"
        ) from error


_LEGACY_LOCK = threading.Lock()


@contextmanager
def _legacy_module_names() -> Iterator[None]:
    """Let artifacts pickled before tidemill became one package (classes under the
    top-level `tasks.model`, `tasks.encode`, `tasks.drift`) unpickle as the classes that
    hold the same fields today. The old names exist only while one artifact loads, so no
    other import can see them."""
    classes: dict[str, list[type]] = {
        "tasks.model": [ModelState, Scores],
        "tasks.encode": [FeatureEncoder, RunningMoments],
        "tasks.drift": [Adwin, PageHinkley, FeatureShift],
    }
    aliases = {"tasks": types.ModuleType("tasks")}
    for name, members in classes.items():
        aliases[name] = types.ModuleType(name)
        for cls in members:
            setattr(aliases[name], cls.__name__, cls)
    with _LEGACY_LOCK:
        saved = {name: sys.modules.get(name) for name in aliases}
        sys.modules.update(aliases)
        try:
            yield
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module


def _artifact_bytes(state_dir: Path, version: ModelVersion) -> bytes:
    """The file's bytes, read once (what is checked is what is unpickled), provided the
    row names a regular file inside artifacts/<pipeline>/."""
    name = f"{version.pipeline} v{version.version}"
    parts = PurePosixPath(version.artifact_path).parts
    if (
        len(parts) != 3
        or parts[:2] != (ARTIFACTS_DIR, version.pipeline)
        or parts[2] in ("..", ".")
        or not parts[2].endswith(".joblib")
    ):
        raise ArtifactIntegrityError(
            f"artifact of {name} is registered at {version.artifact_path!r}, outside "
            f"{ARTIFACTS_DIR}/{version.pipeline}/; refusing to load it"
        )
    path = state_dir.joinpath(*parts)
    if not path.exists():
        raise ArtifactIntegrityError(f"artifact of {name} is missing: {path}")
    if path.is_symlink() or not path.is_file():
        raise ArtifactIntegrityError(
            f"artifact of {name} is not a regular file: {path}; refusing to load it"
        )
    return path.read_bytes()


def _check_signature(state_dir: Path, version: ModelVersion, sha256: str) -> None:
    """Raise unless the row's signature is the one the registry made for this pipeline,
    version and content (compared in constant time)."""
    name = f"{version.pipeline} v{version.version}"
    if not version.artifact_signature:
        raise ArtifactIntegrityError(
            f"artifact of {name} has no signature (written before artifact signatures, or "
            f"not by the registry); refusing to load it. Once you trust its file, "
            f"`tidemill models sign {version.pipeline}` signs it"
        )
    expected = artifact_signature(
        get_key(state_dir, "artifact"), version.pipeline, version.version, sha256
    )
    if not hmac.compare_digest(expected, version.artifact_signature):
        raise ArtifactIntegrityError(
            f"artifact of {name} does not carry the registry's signature for {name} (a file "
            f"of another version, a row not written by the registry, or another artifact "
            f"key); refusing to load {state_dir / version.artifact_path}"
        )


def _major_minor(text: str) -> tuple[str, ...]:
    return tuple(text.split("+")[0].split(".")[:2])


def _check_libraries(version: ModelVersion) -> None:
    """Raise when the libraries that wrote the pickle differ in major.minor from the
    running ones."""
    name = f"{version.pipeline} v{version.version}"
    try:
        written = json.loads(version.library_versions)
    except ValueError:
        written = None
    running = json.loads(library_versions())
    if not isinstance(written, dict):
        raise ArtifactIntegrityError(
            f"artifact of {name} has unreadable library_versions "
            f"{version.library_versions!r}; refusing to load it"
        )
    for library in CHECKED_LIBRARIES:
        then, now = str(written.get(library)), running[library]
        if library not in written or _major_minor(then) != _major_minor(now):
            raise ArtifactIntegrityError(
                f"artifact of {name} was written with {library} {then}, this process runs "
                f"{library} {now}; refusing to load it (install {library} "
                f"{'.'.join(_major_minor(then))}, or {_RETRAIN.format(version.pipeline)})"
            )


class Signed(NamedTuple):
    """What `sign_versions` did."""

    signed: list[int]  # versions whose row now carries a signature
    refused: dict[int, str]  # version -> why it was left unsigned


def sign_versions(
    con: duckdb.DuckDBPyConnection, state_dir: Path, pipeline: str, *, resign: bool = False
) -> Signed:
    """Sign the kept versions of `pipeline` that have no signature (every kept version with
    `resign`, after the artifact key changed), each only if its file still matches its
    row's SHA-256, in one transaction (call under the runtime lock).

    Running it says that you trust these files: it is how versions written before
    signatures existed become loadable. It never unpickles anything."""
    key = get_key(state_dir, "artifact")
    updates: list[tuple[str, str, int]] = []
    refused: dict[int, str] = {}
    for version in versions(con, pipeline):
        if version.artifact_pruned_at is not None or (version.artifact_signature and not resign):
            continue
        try:
            actual = hashlib.sha256(_artifact_bytes(state_dir, version)).hexdigest()
        except ArtifactIntegrityError as error:
            refused[version.version] = str(error)
            continue
        if not hmac.compare_digest(actual, version.sha256):
            refused[version.version] = (
                f"artifact of {pipeline} v{version.version} does not match the registry "
                f"(sha256 {actual[:12]}… != {version.sha256[:12]}…); left unsigned"
            )
            continue
        updates.append(
            (artifact_signature(key, pipeline, version.version, actual), pipeline, version.version)
        )
    if updates:
        with transaction(con):
            con.executemany(
                "UPDATE ml.model_versions SET artifact_signature = ? "
                "WHERE pipeline = ? AND version = ?",
                updates,
            )
    return Signed([version for _, _, version in updates], refused)


def write_version(
    con: duckdb.DuckDBPyConnection,
    state_dir: Path,
    pipeline: str,
    model: Any,
    *,
    estimator: str,
    params: dict[str, Any],
    parent_version: int | None,
    batch_id: int,
    status: str,
    metrics: dict[str, float],
    created_at: datetime,
    candidate: str,
    params_sha256: str,
    version: int | None = None,
) -> ModelVersion:
    """Write `model`'s artifact under `version` (default: the next number) and return its
    registry row (not inserted yet: the caller commits it with the rows it learned)."""
    version = version if version is not None else next_version(con, pipeline)
    relpath = artifact_relpath(pipeline, version, batch_id)
    sha256 = write_artifact(state_dir, relpath, model)
    signature = artifact_signature(get_key(state_dir, "artifact"), pipeline, version, sha256)
    return ModelVersion(
        pipeline=pipeline,
        version=version,
        parent_version=parent_version,
        batch_id=batch_id,
        rows_seen=model.rows_seen,
        batches_seen=model.batches_seen,
        created_at=created_at,
        artifact_path=relpath,
        sha256=sha256,
        estimator=estimator,
        params_json=json.dumps(params, sort_keys=True, default=str),
        library_versions=library_versions(),
        feature_names=model.feature_names,
        status=status,
        metrics_json=json.dumps(metrics, sort_keys=True),
        candidate=candidate,
        params_sha256=params_sha256,
        artifact_signature=signature,
    )


def _rows(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> list[ModelVersion]:
    rows = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM ml.model_versions WHERE {where} ORDER BY version",
        params,
    ).fetchall()
    return [ModelVersion(*row) for row in rows]


def versions(con: duckdb.DuckDBPyConnection, pipeline: str) -> list[ModelVersion]:
    """Every version of `pipeline`, oldest first."""
    return _rows(con, "pipeline = ?", [pipeline])


def get_version(con: duckdb.DuckDBPyConnection, pipeline: str, version: int) -> ModelVersion | None:
    """One version, or None."""
    found = _rows(con, "pipeline = ? AND version = ?", [pipeline, version])
    return found[0] if found else None


def champion(con: duckdb.DuckDBPyConnection, pipeline: str) -> ModelVersion | None:
    """The version serving predictions, or None before the first one."""
    found = _rows(con, "pipeline = ? AND status = 'champion'", [pipeline])
    return found[-1] if found else None


def next_version(con: duckdb.DuckDBPyConnection, pipeline: str) -> int:
    """The number the next version of `pipeline` gets."""
    row = con.execute(
        "SELECT coalesce(max(version), 0) + 1 FROM ml.model_versions WHERE pipeline = ?",
        [pipeline],
    ).fetchall()
    return int(row[0][0])


def record_heads(con: duckdb.DuckDBPyConnection, new: list[ModelVersion]) -> None:
    """Insert a batch's new versions, one per candidate, retiring the versions they
    continue (caller's transaction). Exactly one of them has status champion."""
    if not new:
        return
    con.execute(
        "UPDATE ml.model_versions SET status = 'retired' WHERE pipeline = ? "
        "AND status IN ('champion', 'challenger') AND candidate IN (SELECT unnest(?))",
        [new[0].pipeline, [v.candidate for v in new]],
    )
    for version in new:
        record(con, version)


def record_shards(
    con: duckdb.DuckDBPyConnection, pipeline: str, version: int, shards: Sequence[ShardRecord]
) -> None:
    """The shards `version` was learned in (caller's transaction)."""
    con.executemany(
        "INSERT INTO ml.model_version_shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                pipeline,
                version,
                s.index,
                s.first_row,
                s.last_row,
                s.rows_learned,
                s.sha256,
                s.cpu_seconds,
            ]
            for s in shards
        ],
    )


def shard_counts(
    con: duckdb.DuckDBPyConnection, pipeline: str, versions: Sequence[int]
) -> dict[int, int]:
    """Version -> how many shards it was learned in (absent: in one piece)."""
    if not versions:
        return {}
    rows = con.execute(
        "SELECT version, count(*) FROM ml.model_version_shards WHERE pipeline = ? "
        "AND version IN (SELECT unnest(?::BIGINT[])) GROUP BY version",
        [pipeline, list(versions)],
    ).fetchall()
    return {int(v): int(n) for v, n in rows}


def heads(con: duckdb.DuckDBPyConnection, pipeline: str) -> dict[str, ModelVersion]:
    """Candidate -> its latest serving version (status champion or challenger)."""
    found = _rows(con, "pipeline = ? AND status IN ('champion', 'challenger')", [pipeline])
    return {v.candidate: v for v in found}


def record(con: duckdb.DuckDBPyConnection, version: ModelVersion) -> None:
    """Insert `version` as it is (a candidate leaves the champion alone)."""
    placeholders = ", ".join("?" for _ in COLUMNS)
    con.execute(
        f"INSERT INTO ml.model_versions ({', '.join(COLUMNS)}) VALUES ({placeholders})",
        [getattr(version, c) for c in COLUMNS],
    )


class RegistryError(TidemillError, ValueError):
    """A registry change that cannot be made; the message says why."""


def change_champion(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    to_version: int,
    *,
    action: str,
    actor: str,
    reason: str,
) -> ModelVersion:
    """Make `to_version` the champion and record who, when and why in ml.model_events, in
    one transaction; returns the new champion.

    The version becomes the head of its candidate's lineage (the head it replaces is
    retired); the previous champion, when it belongs to another candidate, goes on
    learning as a challenger."""
    target = get_version(con, pipeline, to_version)
    if target is None:
        raise RegistryError(f"{pipeline} has no version {to_version}")
    current = champion(con, pipeline)
    if current is not None and current.version == to_version:
        raise RegistryError(f"{pipeline} v{to_version} is already the champion")
    with transaction(con):
        con.execute(
            "UPDATE ml.model_versions SET status = 'retired' WHERE pipeline = ? "
            "AND status IN ('champion', 'challenger') AND candidate = ?",
            [pipeline, target.candidate],
        )
        con.execute(
            "UPDATE ml.model_versions SET status = 'challenger' WHERE pipeline = ? "
            "AND status = 'champion'",
            [pipeline],
        )
        con.execute(
            "UPDATE ml.model_versions SET status = 'champion' WHERE pipeline = ? AND version = ?",
            [pipeline, to_version],
        )
        record_event(
            con, pipeline, action, current.version if current else None, to_version, actor, reason
        )
    changed = get_version(con, pipeline, to_version)
    assert changed is not None
    return changed


def rollback_target(con: duckdb.DuckDBPyConnection, pipeline: str) -> int:
    """The version a rollback returns to: the champion the current one was promoted over,
    else (it was never promoted, or was itself reached by a rollback) its parent."""
    current = champion(con, pipeline)
    if current is None:
        raise RegistryError(f"{pipeline} has no champion to roll back")
    rows = con.execute(
        "SELECT from_version FROM ml.model_events WHERE pipeline = ? AND to_version = ? "
        "AND action IN ('promote', 'auto_promote') ORDER BY event_id DESC LIMIT 1",
        [pipeline, current.version],
    ).fetchall()
    if rows and rows[0][0] is not None:
        return int(rows[0][0])
    if current.parent_version is None:
        raise RegistryError(f"{pipeline} v{current.version} has no parent to roll back to")
    return current.parent_version


def record_event(
    con: duckdb.DuckDBPyConnection,
    pipeline: str,
    action: str,
    from_version: int | None,
    to_version: int,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
) -> None:
    """Append one ml.model_events row (caller's transaction)."""
    con.execute(
        "INSERT INTO ml.model_events (pipeline, event_id, changed_at, action, from_version, "
        "to_version, actor, reason, evidence_json) SELECT ?, coalesce(max(event_id), 0) + 1, "
        "now()::TIMESTAMP, ?, ?, ?, ?, ?, ? FROM ml.model_events WHERE pipeline = ?",
        [
            pipeline,
            action,
            from_version,
            to_version,
            actor,
            reason,
            json.dumps(evidence, sort_keys=True) if evidence is not None else None,
            pipeline,
        ],
    )


def recent_scores(
    con: duckdb.DuckDBPyConnection, pipeline: str, metric: str, limit: int
) -> list[tuple[str, int, int, float]]:
    """(candidate, batch_id, n_scored, value) of the latest `limit` scores of `metric`, oldest
    first, since the pipeline's last champion change (scores before it compared lineages
    that no longer serve)."""
    rows = con.execute(
        "SELECT m.candidate, m.batch_id, m.n_scored, m.value FROM ml.batch_metrics m "
        "JOIN _batches b USING (batch_id) WHERE m.pipeline = ? AND m.metric = ? "
        "AND b.finished_at >= coalesce((SELECT max(changed_at) FROM ml.model_events "
        "WHERE pipeline = ?), TIMESTAMP '1970-01-01') ORDER BY m.batch_id DESC LIMIT ?",
        [pipeline, metric, pipeline, limit],
    ).fetchall()
    return [(str(c), int(b), int(n), float(v)) for c, b, n, v in reversed(rows)]
