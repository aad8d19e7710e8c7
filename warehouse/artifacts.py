"""Model artifacts: the files behind `ml.model_versions` rows, and the trust they need.

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

import functools
import hashlib
import hmac
import io
import json
import platform
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NamedTuple

import duckdb
import joblib
import numpy
import polars
import sklearn
from sklearn.exceptions import InconsistentVersionWarning

from tidemill import sealing
from tidemill.durable import write_atomic
from tidemill.errors import TidemillError
from tidemill.keys import get_key
from tidemill.tasks.drift.detectors import Adwin, PageHinkley
from tidemill.tasks.drift.shift import FeatureShift
from tidemill.tasks.features.encode import FeatureEncoder, RunningMoments
from tidemill.tasks.learn.state import ModelState, Scores
from tidemill.warehouse.connection import database_path
from tidemill.warehouse.encryption import WrongKey, key_for
from tidemill.warehouse.registry import ModelVersion, next_version, versions
from tidemill.warehouse.transaction import transaction

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


def sha256_of(state_dir: Path, path: Path) -> str:
    """Hex SHA-256 of the pickle an artifact file of `state_dir` holds (what the registry
    records: a sealed file is opened first)."""
    data = path.read_bytes()
    if sealing.is_sealed(data):
        key = sealing_key(state_dir)
        if key is None:
            raise WrongKey(f"{path} is sealed and the warehouse of {state_dir} is not encrypted")
        data = sealing.unseal(key, data)
    return hashlib.sha256(data).hexdigest()


def artifact_relpath(pipeline: str, version: int, batch_id: int) -> str:
    """Artifact location relative to the state folder (unique per batch attempt)."""
    return f"{ARTIFACTS_DIR}/{pipeline}/v{version:06d}-b{batch_id}.joblib"


def write_artifact(state_dir: Path, relpath: str, state: Any) -> str:
    """Durably write `state` to `relpath` under `state_dir`, sealed when the state folder
    is encrypted; returns the SHA-256 of its pickle (the same sealed or not, and after a
    key rotation)."""
    buffer = io.BytesIO()
    joblib.dump(state, buffer)
    data = buffer.getvalue()
    key = sealing_key(state_dir)
    stored = data if key is None else sealing.seal(key, data)

    write_atomic(state_dir / relpath, functools.partial(_write_bytes, stored))
    return hashlib.sha256(data).hexdigest()


def _unseal_any(path: Path, data: bytes, secrets: list[str]) -> bytes:
    """`data` opened with the first of `secrets` that opens it (a rotation cut short left
    some files under the new key already)."""
    for secret in secrets:
        try:
            return sealing.unseal(sealing.file_key(secret), data)
        except sealing.SealBroken:
            continue
    raise WrongKey(f"{path} is sealed under a key that was not given")


def _write_bytes(data: bytes, handle: BinaryIO) -> None:
    handle.write(data)


def sealing_key(state_dir: Path) -> bytes | None:
    """The key artifacts are sealed with: the state folder's encryption key when its
    warehouse is encrypted (artifacts follow the warehouse), else None."""
    key = key_for(database_path(state_dir), state_dir)
    return None if key is None else sealing.file_key(key.text)


def reseal(state_dir: Path, old: str | None, new: str | None) -> int:
    """Rewrite every artifact of `state_dir` sealed under key text `new` (None: unsealed),
    opening those sealed under `old`; each is replaced atomically and keeps its SHA-256
    (of the pickle). With `old == new` only unsealed ones are rewritten (a conversion
    cut short). Returns how many were rewritten."""
    done = 0
    for path in sorted((state_dir / ARTIFACTS_DIR).glob("*/*.joblib")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as handle:
            if old == new and (new is None) != sealing.is_sealed(handle.read(len(sealing.MAGIC))):
                continue
        data = path.read_bytes()
        if sealing.is_sealed(data):
            data = _unseal_any(path, data, [k for k in (old, new) if k is not None])
        stored = data if new is None else sealing.seal(sealing.file_key(new), data)
        write_atomic(path, functools.partial(_write_bytes, stored))
        done += 1
    return done


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
    """The pickle's bytes, read once (what is checked is what is unpickled), provided the
    row names a regular file inside artifacts/<pipeline>/; a sealed file is opened with
    the state folder's key (AES-GCM: altered bytes do not open)."""
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
    data = path.read_bytes()
    if not sealing.is_sealed(data):
        return data
    key = sealing_key(state_dir)
    if key is None:
        raise ArtifactIntegrityError(
            f"artifact of {name} is sealed but the warehouse of {state_dir} is not encrypted; "
            "refusing to load it"
        )
    try:
        return sealing.unseal(key, data)
    except sealing.SealBroken:
        raise ArtifactIntegrityError(
            f"artifact of {name} does not match the registry (sealed bytes that do not open "
            f"with the state folder's key: altered, or sealed under another); refusing to "
            f"load {path}"
        ) from None


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
