from datetime import datetime
from pathlib import Path

import pytest

from tidemill.keys import get_key
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import open_warehouse


def _version(tmp_path: Path, con, number: int, payload: object) -> registry.ModelVersion:
    relpath = artifacts.artifact_relpath("p", number, number)
    sha = artifacts.write_artifact(tmp_path, relpath, payload)
    version = registry.ModelVersion(
        pipeline="p",
        version=number,
        parent_version=number - 1 or None,
        batch_id=number,
        rows_seen=10 * number,
        batches_seen=number,
        created_at=datetime(2024, 1, 1),
        artifact_path=relpath,
        sha256=sha,
        estimator="sgd_classifier",
        params_json="{}",
        library_versions=artifacts.library_versions(),
        feature_names=["x"],
        status="champion",
        metrics_json='{"accuracy": 0.5}',
        artifact_signature=artifacts.artifact_signature(
            get_key(tmp_path, "artifact"), "p", number, sha
        ),
    )
    registry.record_heads(con, [version])
    return version


def test_one_champion_at_a_time_and_lineage_is_kept(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    for n in (1, 2, 3):
        _version(tmp_path, con, n, {"n": n})
    assert registry.next_version(con, "p") == 4
    champion = registry.champion(con, "p")
    assert champion is not None and champion.version == 3 and champion.parent_version == 2
    assert [v.status for v in registry.versions(con, "p")] == ["retired", "retired", "champion"]
    assert artifacts.load_artifact(tmp_path, champion) == {"n": 3}
    assert champion.metrics == {"accuracy": 0.5}


def test_an_artifact_that_does_not_match_its_hash_is_never_loaded(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    first = _version(tmp_path, con, 1, {"n": 1})
    second = _version(tmp_path, con, 2, {"n": 2})
    path = tmp_path / second.artifact_path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactIntegrityError, match="does not match the registry"):
        artifacts.load_artifact(tmp_path, second)
    (tmp_path / first.artifact_path).unlink()
    with pytest.raises(artifacts.ArtifactIntegrityError, match="missing"):
        artifacts.load_artifact(tmp_path, first)


def test_rows_read_back_carry_their_signature_and_the_key_stays_out_of_the_warehouse(
    tmp_path: Path,
) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    written = _version(tmp_path, con, 1, {"n": 1})
    read = registry.get_version(con, "p", 1)
    assert read == written and read.artifact_signature is not None
    key = get_key(tmp_path, "artifact")
    con.execute("CHECKPOINT")
    assert key not in (tmp_path / "w.duckdb").read_bytes()
    assert key.hex().encode() not in (tmp_path / "w.duckdb").read_bytes()
