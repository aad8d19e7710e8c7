"""Artifacts you can trust: a file is unpickled only if the registry wrote it for that row.

Every artifact here carries a tripwire: an object whose unpickling creates a marker file
(`unpickled-<tag>`), so each test can tell whether a refused file was ever unpickled, and
a foreign pickle dropped in the folder does the same if anything ever loads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
import textwrap
import types
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import joblib
import numpy as np
import polars as pl
import pytest
import sklearn
import sklearn.base
from sklearn.linear_model import SGDClassifier

from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.keys import get_key
from tidemill.tasks.drift.detectors import Adwin
from tidemill.tasks.drift.shift import FeatureShift
from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.learn.state import ModelState, learn, parameters_sha256
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import open_warehouse
from tidemill.warehouse.encryption import key_for
from tidemill.warehouse.retention import run_maintenance

ArtifactIntegrityError = artifacts.ArtifactIntegrityError


class _Tripwire:
    """Pickles as a call to Path.touch(marker): unpickling it leaves the marker behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("unpickled-*"))


def _model(tmp_path: Path, tag: str, **extra: object) -> types.SimpleNamespace:
    """A model-like state whose unpickling is visible (the tripwire comes first)."""
    return types.SimpleNamespace(
        tripwire=_Tripwire(tmp_path / f"unpickled-{tag}"),
        rows_seen=10,
        batches_seen=1,
        feature_names=["x"],
        weights=np.arange(2000, dtype=np.float64),
        **extra,
    )


def _register(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, version: int, **extra: object
) -> registry.ModelVersion:
    row = artifacts.write_version(
        con,
        tmp_path,
        "p",
        _model(tmp_path, f"v{version}", **extra),
        estimator="sgd_classifier",
        params={},
        parent_version=version - 1 or None,
        batch_id=version,
        status="champion",
        metrics={},
        created_at=datetime(2024, 1, 1),
        candidate="main",
        params_sha256="0" * 64,
        version=version,
    )
    registry.record_heads(con, [row])
    return row


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    return open_warehouse(tmp_path / "w.duckdb")


def _refused(state_dir: Path, row: registry.ModelVersion, match: str) -> str:
    with pytest.raises(ArtifactIntegrityError, match=match) as refused:
        artifacts.load_artifact(state_dir, row)
    message = str(refused.value)
    assert "\n" not in message and f"{row.pipeline} v{row.version}" in message
    return message


def test_a_version_written_by_the_registry_loads_as_it_was_written(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = _register(con, tmp_path, 1)
    assert row.artifact_signature is not None and len(row.artifact_signature) == 64
    stored = registry.get_version(con, "p", 1)
    assert stored == row
    loaded = artifacts.load_artifact(tmp_path, stored)
    assert np.array_equal(loaded.weights, np.arange(2000, dtype=np.float64))
    assert _markers(tmp_path) == ["unpickled-v1"]  # the tripwire works


def test_one_flipped_byte_is_refused_before_anything_is_unpickled(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = _register(con, tmp_path, 1)
    path = tmp_path / row.artifact_path
    data = bytearray(path.read_bytes())
    data[-len(data) // 3] ^= 0x01  # inside the weights, after the tripwire
    path.write_bytes(bytes(data))
    _refused(tmp_path, row, "does not match the registry")
    # someone who can write the warehouse too records the new hash: the signature holds
    forged = dataclasses.replace(row, sha256=artifacts.sha256_of(tmp_path, path))
    _refused(tmp_path, forged, "does not carry the registry's signature")
    assert _markers(tmp_path) == []


def test_two_versions_files_swapped_are_both_refused(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    v3, v4 = _register(con, tmp_path, 3), _register(con, tmp_path, 4)
    p3, p4 = tmp_path / v3.artifact_path, tmp_path / v4.artifact_path
    b3, b4 = p3.read_bytes(), p4.read_bytes()
    p3.write_bytes(b4)
    p4.write_bytes(b3)
    _refused(tmp_path, v3, "does not match the registry")
    _refused(tmp_path, v4, "does not match the registry")
    # v3's valid file at v4's path, with v3's hash and even v3's signature in v4's row
    for forged in (
        dataclasses.replace(v4, sha256=v3.sha256),
        dataclasses.replace(v4, sha256=v3.sha256, artifact_signature=v3.artifact_signature),
        dataclasses.replace(v4, artifact_path=v3.artifact_path, sha256=v3.sha256),
    ):
        p3.write_bytes(b3)
        p4.write_bytes(b3)
        _refused(tmp_path, forged, "does not carry the registry's signature for p v4")
    assert _markers(tmp_path) == []


def test_a_foreign_pickle_in_the_folder_is_never_loaded(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    rows = [_register(con, tmp_path, n) for n in (1, 2, 3)]
    folder = tmp_path / "artifacts" / "p"
    foreign = _Tripwire(tmp_path / "unpickled-foreign")
    for name in ("v000004-b4.joblib", "v000003-b99.joblib", "model.pkl", "v000001-b1.joblib.part"):
        joblib.dump(foreign, folder / name)
    # every registered version loads, from its own file
    for row in registry.versions(con, "p"):
        artifacts.load_artifact(tmp_path, row)
    assert _markers(tmp_path) == [f"unpickled-v{r.version}" for r in rows]
    # a row forged to point at the foreign file, with its true hash, signed or not
    forged = dataclasses.replace(
        rows[-1],
        version=4,
        artifact_path="artifacts/p/v000004-b4.joblib",
        sha256=artifacts.sha256_of(tmp_path, folder / "v000004-b4.joblib"),
    )
    _refused(tmp_path, forged, "does not carry the registry's signature")
    _refused(tmp_path, dataclasses.replace(forged, artifact_signature=None), "has no signature")
    # the janitor deletes artifact-named orphans without opening them
    for path in folder.iterdir():
        path.touch()
    report = run_maintenance(con, tmp_path, "p", requested_by="test", grace=timedelta(0))
    assert (report.orphans_removed, report.temp_files_removed) == (2, 1)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.pkl",
        "v000001-b1.joblib",
        "v000002-b2.joblib",
        "v000003-b3.joblib",
    ]
    assert "unpickled-foreign" not in _markers(tmp_path)


def test_a_row_cannot_point_outside_its_pipelines_folder(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    row = _register(con, tmp_path, 1)
    joblib.dump(_Tripwire(tmp_path / "unpickled-outside"), tmp_path / "elsewhere.joblib")
    for relpath in ("elsewhere.joblib", "artifacts/p/../../elsewhere.joblib", "/etc/passwd"):
        _refused(tmp_path, dataclasses.replace(row, artifact_path=relpath), "outside artifacts/p/")
    link = tmp_path / "artifacts" / "p" / "v000002-b2.joblib"
    link.symlink_to(tmp_path / "elsewhere.joblib")
    linked = dataclasses.replace(row, artifact_path="artifacts/p/v000002-b2.joblib")
    _refused(tmp_path, linked, "not a regular file")
    assert _markers(tmp_path) == []


def test_an_unsigned_row_is_refused_until_someone_signs_it(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    good, bad = _register(con, tmp_path, 1), _register(con, tmp_path, 2)
    con.execute("UPDATE ml.model_versions SET artifact_signature = NULL")  # a pre-0008 row
    legacy = registry.get_version(con, "p", 1)
    assert legacy is not None
    message = _refused(tmp_path, legacy, "has no signature")
    assert "`tidemill models sign p`" in message
    (tmp_path / bad.artifact_path).write_bytes(b"not what was registered")
    signed = artifacts.sign_versions(con, tmp_path, "p")
    assert signed.signed == [1] and list(signed.refused) == [2]
    assert "does not match the registry" in signed.refused[2]
    row = registry.get_version(con, "p", 1)
    assert row is not None and row.artifact_signature == good.artifact_signature
    artifacts.load_artifact(tmp_path, row)
    assert _markers(tmp_path) == ["unpickled-v1"]


def test_another_artifact_key_refuses_every_version_until_they_are_signed_again(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(con, tmp_path, 1)
    monkeypatch.setenv("TIDEMILL_ARTIFACT_KEY", "k" * 32)
    row = registry.get_version(con, "p", 1)
    assert row is not None
    _refused(tmp_path, row, "another artifact key")
    assert artifacts.sign_versions(con, tmp_path, "p").signed == []  # signed rows stay as they are
    assert artifacts.sign_versions(con, tmp_path, "p", resign=True).signed == [1]
    resigned = registry.get_version(con, "p", 1)
    assert resigned is not None
    artifacts.load_artifact(tmp_path, resigned)


@pytest.mark.parametrize(
    ("library", "written", "refused"),
    [
        ("scikit-learn", "1.8.2", True),
        ("numpy", "1.26.4", True),
        ("joblib", "1.4.2", True),
        ("scikit-learn", None, True),
        ("numpy", "same minor", False),
    ],
)
def test_an_artifact_of_other_library_versions_is_refused_with_both_versions(
    tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
    library: str,
    written: str | None,
    refused: bool,
) -> None:
    row = _register(con, tmp_path, 1)
    versions = json.loads(row.library_versions)
    running = versions[library]
    if written == "same minor":
        written = ".".join(running.split(".")[:2]) + ".999"
    if written is None:
        del versions[library]
    else:
        versions[library] = written
    changed = dataclasses.replace(row, library_versions=json.dumps(versions))
    if refused:
        message = _refused(tmp_path, changed, f"written with {library} {written}")
        assert f"this process runs {library} {running}" in message
        assert _markers(tmp_path) == []
    else:
        artifacts.load_artifact(tmp_path, changed)
        assert _markers(tmp_path) == ["unpickled-v1"]


def test_scikit_learns_inconsistent_version_warning_is_a_refusal(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimator = SGDClassifier(random_state=0).partial_fit(
        np.eye(4), np.array([0, 1, 0, 1]), classes=np.array([0, 1])
    )
    with monkeypatch.context() as patched:  # pickled by a scikit-learn of the same minor
        patched.setattr(sklearn.base, "__version__", "1.9.0")
        row = _register(con, tmp_path, 1, estimator=estimator)
    assert sklearn.__version__ != "1.9.0"
    message = _refused(tmp_path, row, "pickled by scikit-learn 1.9.0")
    assert f"this process runs {sklearn.__version__}" in message


def test_a_signed_file_this_code_cannot_unpickle_is_one_line(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    vanished = types.ModuleType("tidemill_vanished")
    gone = type("Encoder", (), {"__module__": vanished.__name__})
    vanished.Encoder = gone  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, vanished.__name__, vanished)
    row = _register(con, tmp_path, 1, encoder=gone())
    monkeypatch.delitem(sys.modules, vanished.__name__)  # the class is gone from the code
    message = _refused(tmp_path, row, "cannot be unpickled by this code")
    assert "ModuleNotFoundError: No module named 'tidemill_vanished'" in message


TWO_PIPELINES = """
[state]
dir = ".tidemill"
{pipelines}
"""
PIPELINE = """
[pipelines.{name}]
source = {{ kind = "files", path = "landing/{name}/*.csv", format = "csv" }}
event_time = "ts"
key = "id"
target = "target"
features = ["feat_1", "feat_2"]
task = "classification"
model = {{ estimator = "sgd_classifier", params = {{ loss = "log_loss" }} }}
batch_rows = 50
"""


def test_a_refused_artifact_fails_its_pipeline_and_no_other(
    tmp_path: Path, elec_csv: Callable[..., pl.DataFrame]
) -> None:
    body = "".join(PIPELINE.format(name=n) for n in ("elec", "gas"))
    (tmp_path / "tidemill.toml").write_text(textwrap.dedent(TWO_PIPELINES.format(pipelines=body)))
    config = load_config(tmp_path / "tidemill.toml")
    for name in ("elec", "gas"):
        elec_csv(tmp_path / "landing" / name / "a.csv", 0, 100)
    runtime = Runtime.open(config)
    for name in ("elec", "gas"):
        while run_cycle(runtime, name, drain=True).status == "committed":
            pass
    runtime.close()
    state_dir = config.state_dir
    folder = state_dir / "artifacts" / "elec"
    # a foreign pickle beside the real files, and one put in place of elec's champion
    joblib.dump(_Tripwire(tmp_path / "unpickled-foreign"), folder / "v000099-b99.joblib")
    database = state_dir / "warehouse.duckdb"
    con = open_warehouse(database, key=key_for(database, state_dir))
    head = registry.champion(con, "elec")
    assert head is not None
    con.close()
    runtime = Runtime.open(config)
    assert runtime.pipeline("elec") is not None  # every head loads: the foreign file is ignored
    runtime.close()
    joblib.dump(_Tripwire(tmp_path / "unpickled-foreign"), state_dir / head.artifact_path)
    runtime = Runtime.open(config)
    try:
        with pytest.raises(ArtifactIntegrityError, match=f"elec v{head.version} does not match"):
            runtime.pipeline("elec")
        gas = runtime.pipeline("gas")
        assert gas is not None and gas.version is not None  # the other pipeline serves on
        elec_csv(tmp_path / "landing" / "gas" / "b.csv", 100, 50)
        assert run_cycle(runtime, "gas", drain=True).status == "committed"
        with pytest.raises(ArtifactIntegrityError):  # elec's runs fail with the same line
            run_cycle(runtime, "elec", drain=True)
        run_maintenance(runtime.con, state_dir, "elec", requested_by="t", grace=timedelta(0))
    finally:
        runtime.close()
    assert not (folder / "v000099-b99.joblib").exists()  # the janitor took it, unopened
    assert _markers(tmp_path) == []


LEGACY_MODULES = {  # where earlier releases pickled tidemill's classes from
    "tidemill.tasks.learn.state": "tasks.model",
    "tidemill.tasks.features.encode": "tasks.encode",
    "tidemill.tasks.drift.detectors": "tasks.drift",
    "tidemill.tasks.drift.shift": "tasks.drift",
}


def test_an_artifact_pickled_under_the_old_top_level_names_loads_as_todays_classes(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """State folders written before tidemill became one package hold artifacts whose
    classes are named tasks.learn.state.ModelState, tasks.features.encode.FeatureEncoder, ...: the
    worker must go on serving them after an upgrade."""
    state = ModelState(
        estimator=SGDClassifier(loss="log_loss", random_state=0),
        encoder=FeatureEncoder(numeric=["x"], categorical=[], max_categories=8),
        task="classification",
        classes=["0", "1"],
        detector=Adwin(),
        shift=FeatureShift(features=["x"], reference_rows=10, window_rows=10),
    )
    learned = learn(state, np.array([[0.0], [1.0], [2.0], [3.0]]), np.array(["0", "0", "1", "1"]))
    row = artifacts.write_version(
        con,
        tmp_path,
        "p",
        learned,
        estimator="sgd_classifier",
        params={},
        parent_version=None,
        batch_id=1,
        status="champion",
        metrics={},
        created_at=datetime(2024, 1, 1),
        candidate="main",
        params_sha256=parameters_sha256(learned),
    )
    buffer = io.BytesIO()
    joblib.dump(learned, buffer, protocol=0)  # text opcodes: module names can be swapped
    legacy = buffer.getvalue()
    for today, before in LEGACY_MODULES.items():
        legacy = legacy.replace(f"c{today}\n".encode(), f"c{before}\n".encode())
    assert b"ctidemill." not in legacy and b"ctasks.model\nModelState\n" in legacy
    (tmp_path / row.artifact_path).write_bytes(legacy)
    sha = hashlib.sha256(legacy).hexdigest()
    key = get_key(tmp_path, "artifact")
    row = dataclasses.replace(
        row, sha256=sha, artifact_signature=artifacts.artifact_signature(key, "p", 1, sha)
    )
    loaded = artifacts.load_artifact(tmp_path, row)
    assert type(loaded) is ModelState
    assert type(loaded.encoder) is FeatureEncoder and type(loaded.detector) is Adwin
    assert type(loaded.shift) is FeatureShift
    assert parameters_sha256(loaded) == parameters_sha256(learned)
    assert "tasks" not in sys.modules and "tasks.model" not in sys.modules  # only while loading
