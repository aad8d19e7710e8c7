"""Artifact maintenance on a real warehouse file and real artifact files."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from tidemill.keys import get_key
from tidemill.tasks.judge.retention import RetentionPolicy
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import open_warehouse
from tidemill.warehouse.retention import prune_artifacts, run_maintenance, sweep_artifacts

NOW = datetime(2024, 6, 1)
POLICY = RetentionPolicy(keep_last=3, hourly_hours=0, daily_days=0)


def _add(con: duckdb.DuckDBPyConnection, state_dir: Path, version: int, status: str) -> Path:
    """Register version `version` of pipeline p (parent: the one before) with its file."""
    relpath = artifacts.artifact_relpath("p", version, 100 + version)
    sha256 = artifacts.write_artifact(state_dir, relpath, {"version": version})
    con.execute(
        "INSERT INTO ml.model_versions (pipeline, version, parent_version, batch_id, rows_seen, "
        "batches_seen, created_at, artifact_path, sha256, estimator, params_json, "
        "library_versions, feature_names, status, metrics_json, artifact_signature) "
        "VALUES ('p', ?, ?, ?, 10, 1, ?, ?, ?, 'sgd_classifier', '{}', ?, ['x'], ?, '{}', ?)",
        [
            version,
            version - 1 or None,
            100 + version,
            datetime(2024, 1, 1) + timedelta(minutes=version),
            relpath,
            sha256,
            artifacts.library_versions(),
            status,
            artifacts.artifact_signature(get_key(state_dir, "artifact"), "p", version, sha256),
        ],
    )
    return state_dir / relpath


def _event(con: duckdb.DuckDBPyConnection, event_id: int, action: str, old: int, new: int) -> None:
    con.execute(
        "INSERT INTO ml.model_events (pipeline, event_id, changed_at, action, from_version, "
        "to_version, actor, reason) VALUES ('p', ?, ?, ?, ?, ?, 'ana@host', 'test')",
        [event_id, NOW, action, old, new],
    )


def _age(path: Path, minutes: float) -> None:
    moment = time.time() - minutes * 60
    os.utime(path, (moment, moment))


@pytest.fixture
def registered(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, dict[int, Path]]:
    """Versions 1-12 of p: v12 champion, v9 a backfill candidate, v5 promoted over v4 and
    v7 rolled back to v6 (events), the rest retired."""
    con = open_warehouse(tmp_path / "w.duckdb")
    status = {12: "champion", 9: "candidate"}
    files = {v: _add(con, tmp_path, v, status.get(v, "retired")) for v in range(1, 13)}
    _event(con, 1, "promote", 4, 5)
    _event(con, 2, "rollback", 7, 6)
    return con, files


def _pruned(con: duckdb.DuckDBPyConnection) -> list[int]:
    rows = con.sql(
        "SELECT version FROM ml.model_versions WHERE artifact_pruned_at IS NOT NULL ORDER BY 1"
    ).fetchall()
    return [v for (v,) in rows]


def test_pruning_deletes_the_files_the_policy_lets_go_and_marks_their_rows(
    tmp_path: Path, registered: tuple[duckdb.DuckDBPyConnection, dict[int, Path]]
) -> None:
    con, files = registered
    sizes = {v: path.stat().st_size for v, path in files.items()}
    step = prune_artifacts(con, tmp_path, "p", POLICY, NOW)
    gone = [1, 2, 3, 8]  # kept: heads 12 and 9, events 4-7, last 3 (10-12), parent 11
    assert step == (4, sum(sizes[v] for v in gone), False)
    assert _pruned(con) == gone
    assert sorted(v for v, path in files.items() if not path.exists()) == gone
    # a pruned version cannot be loaded; the kept ones load as they were written
    for version in (2, 5, 9, 12):
        row = registry.get_version(con, "p", version)
        assert row is not None
        if version in gone:
            with pytest.raises(
                artifacts.ArtifactIntegrityError, match="pruned by the retention policy"
            ):
                artifacts.load_artifact(tmp_path, row)
        else:
            assert artifacts.load_artifact(tmp_path, row) == {"version": version}
    # applying it again prunes nothing more
    assert prune_artifacts(con, tmp_path, "p", POLICY, NOW) == (0, 0, False)


def test_a_file_already_missing_is_pruned_all_the_same(
    tmp_path: Path, registered: tuple[duckdb.DuckDBPyConnection, dict[int, Path]]
) -> None:
    con, files = registered
    sizes = sum(files[v].stat().st_size for v in (1, 3, 8))
    files[2].unlink()
    assert prune_artifacts(con, tmp_path, "p", POLICY, NOW) == (4, sizes, False)
    assert _pruned(con) == [1, 2, 3, 8]


def test_the_sweep_removes_old_orphans_and_unfinished_writes_only(
    tmp_path: Path, registered: tuple[duckdb.DuckDBPyConnection, dict[int, Path]]
) -> None:
    con, files = registered
    folder = tmp_path / "artifacts" / "p"
    old_orphan = folder / "v000013-b113.joblib"  # a batch that crashed before its commit
    fresh_orphan = folder / "v000013-b114.joblib"  # a batch that is about to commit
    old_part, fresh_part = folder / "v000014-b115.joblib.part", folder / "v000014-b116.joblib.part"
    stranger = folder / "notes.txt"
    for path in (old_orphan, fresh_orphan, old_part, fresh_part, stranger):
        path.write_bytes(b"x" * 100)
    for path in (old_orphan, old_part, stranger, *files.values()):
        _age(path, 11)
    swept = sweep_artifacts(con, tmp_path, "p", grace=timedelta(minutes=10))
    assert swept == (1, 1, 200)
    assert not old_orphan.exists() and not old_part.exists()
    assert fresh_orphan.exists() and fresh_part.exists() and stranger.exists()
    assert all(path.exists() for path in files.values())  # every registered file is kept


def test_a_crash_between_the_commit_and_the_deletion_leaves_files_the_sweep_removes(
    tmp_path: Path, registered: tuple[duckdb.DuckDBPyConnection, dict[int, Path]]
) -> None:
    con, files = registered
    # as if prune_artifacts died after its commit: rows marked, files still there
    con.execute("UPDATE ml.model_versions SET artifact_pruned_at = ? WHERE version < 3", [NOW])
    # a head or chosen version marked by mistake keeps its file all the same
    con.execute("UPDATE ml.model_versions SET artifact_pruned_at = ? WHERE version = 5", [NOW])
    for path in files.values():
        _age(path, 11)
    swept = sweep_artifacts(con, tmp_path, "p")
    assert (swept.orphans, swept.temp_files) == (2, 0)
    assert sorted(v for v, path in files.items() if not path.exists()) == [1, 2]


def test_a_maintenance_run_prunes_in_chunks_under_the_lock_and_is_recorded(
    tmp_path: Path, registered: tuple[duckdb.DuckDBPyConnection, dict[int, Path]]
) -> None:
    con, files = registered
    orphan = tmp_path / "artifacts" / "p" / "v000013-b113.joblib"
    orphan.write_bytes(b"x" * 50)
    _age(orphan, 30)
    held: list[bool] = []

    class Lock:
        """The runtime's lock, noting that every use of the connection happened under it."""

        def __init__(self) -> None:
            self.inner = threading.RLock()

        def __enter__(self) -> None:
            self.inner.acquire()
            held.append(True)

        def __exit__(self, *exc: object) -> None:
            self.inner.release()

    freed = sum(files[v].stat().st_size for v in (1, 2, 3, 8)) + 50
    report = run_maintenance(
        con, tmp_path, "p", POLICY, requested_by="test", lock=Lock(), now=NOW, chunk=3
    )
    assert len(held) == 3  # two chunks of pruning, then the sweep
    assert (report.artifacts_pruned, report.artifacts_kept) == (4, 8)
    assert (report.orphans_removed, report.temp_files_removed, report.bytes_freed) == (1, 0, freed)
    assert _pruned(con) == [1, 2, 3, 8]
    row = con.sql(
        "SELECT run_id, pipeline, artifacts_pruned, orphans_removed, bytes_freed, requested_by, "
        "policy_json FROM _maintenance_runs"
    ).fetchall()
    assert row == [
        (
            1,
            "p",
            4,
            1,
            freed,
            "test",
            '{"daily_days": 0, "grace_seconds": 600.0, "hourly_hours": 0, "keep_last": 3}',
        )
    ]
    again = run_maintenance(con, tmp_path, "p", POLICY, requested_by="test", now=NOW)
    assert (again.run_id, again.artifacts_pruned, again.orphans_removed, again.bytes_freed) == (
        2,
        0,
        0,
        0,
    )


def test_a_pipeline_without_versions_or_folder_is_a_no_op(tmp_path: Path) -> None:
    con = open_warehouse(tmp_path / "w.duckdb")
    report = run_maintenance(con, tmp_path, "empty", requested_by="test")
    assert (report.artifacts_pruned, report.artifacts_kept, report.bytes_freed) == (0, 0, 0)
