"""Encryption at rest, on by default: the warehouse, its artifacts and snapshots under the
state folder's key; a plaintext warehouse converted when its owner opens it; a missing
or wrong key refused in one line; `tidemill keys rotate` re-encrypting everything."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tidemill import sealing
from tidemill.config.load import TidemillConfig, load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.keys import key_file, stage_new_key
from tidemill.warehouse.connection import STORAGE_VERSION, database_path, open_readonly
from tidemill.warehouse.encryption import Key, WrongKey, is_encrypted
from tidemill.warehouse.serving.compact import compact

TIDEMILL = [sys.executable, "-m", "tidemill"]


def _tidemill(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*TIDEMILL, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def _drain(config: TidemillConfig) -> int:
    runtime = Runtime.open(config)
    try:
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
        return int(runtime.con.sql("SELECT count(*) FROM raw.elec").fetchall()[0][0])
    finally:
        runtime.close()


def _artifacts(state: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((state / "artifacts" / "elec").glob("*.joblib"))]


def _config(
    elec_config: Callable[..., TidemillConfig], *, encryption: bool, snapshots: bool = False
) -> TidemillConfig:
    config = elec_config(batch_rows=50, snapshot_every_seconds=0.01 if snapshots else 0)
    text = config.path.read_text().replace(
        "[state]\n", f"[state]\nencryption = {str(encryption).lower()}\n"
    )
    config.path.write_text(text)
    return load_config(config.path)


def test_a_plaintext_warehouse_is_encrypted_when_its_owner_opens_it(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    plain = _config(elec_config, encryption=False)
    landing = Path(plain.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 100)
    assert _drain(plain) == 100
    database = database_path(plain.state_dir)
    assert not is_encrypted(database)
    assert not any(sealing.is_sealed(data) for data in _artifacts(plain.state_dir))
    with duckdb.connect(str(database), read_only=True) as con:  # any client reads it
        assert con.sql("SELECT count(*) FROM raw.elec").fetchall() == [(100,)]

    encrypted = _config(elec_config, encryption=True)
    elec_csv(landing / "b.csv", 100, 50)
    assert _drain(encrypted) == 150  # converted, and the old champion loaded and learned on
    assert is_encrypted(database) and key_file(plain.state_dir, "encryption").exists()
    assert key_file(plain.state_dir, "encryption").stat().st_mode & 0o777 == 0o600
    assert all(sealing.is_sealed(data) for data in _artifacts(plain.state_dir))
    with pytest.raises(duckdb.Error, match="encrypted"):
        duckdb.connect(str(database), read_only=True)
    # back to plaintext when asked: the same rows, artifacts unsealed, no key needed
    assert _drain(_config(elec_config, encryption=False)) == 150
    assert not is_encrypted(database)
    assert not any(sealing.is_sealed(data) for data in _artifacts(plain.state_dir))


def test_a_missing_or_wrong_key_is_one_line_naming_the_variable_and_the_key_file(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    config = _config(elec_config, encryption=True)
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 50)
    assert _drain(config) == 50
    wrong = _tidemill(config.path, "run", "elec", "--drain", TIDEMILL_ENCRYPTION_KEY="9" * 64)
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0, wrong.stderr
    assert "TIDEMILL_ENCRYPTION_KEY" in wrong.stderr and "encryption.key" in wrong.stderr
    query = _tidemill(config.path, "query", "SELECT 1", TIDEMILL_ENCRYPTION_KEY="9" * 64)
    assert query.returncode == 2 and "TIDEMILL_ENCRYPTION_KEY" in query.stderr
    key = key_file(config.state_dir, "encryption")
    key.rename(key.with_name("elsewhere"))
    missing = _tidemill(config.path, "run", "elec", "--drain")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0, missing.stderr
    assert "no key is set" in missing.stderr and "TIDEMILL_ENCRYPTION_KEY" in missing.stderr
    assert not key.exists()  # no key was made up in its place
    key.with_name("elsewhere").rename(key)
    done = _tidemill(config.path, "query", "SELECT count(*) AS n FROM raw.elec", "--format", "csv")
    assert done.returncode == 0 and done.stdout.split() == ["n", "50"], done.stderr


def test_keys_rotate_re_encrypts_the_warehouse_artifacts_and_snapshot(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    config = _config(elec_config, encryption=True, snapshots=True)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 100)
    assert _drain(config) == 100
    state, database = config.state_dir, database_path(config.state_dir)
    old = key_file(state, "encryption").read_text()
    before = _artifacts(state)
    rotated = _tidemill(config.path, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = key_file(state, "encryption").read_text()
    assert new != old and len(new) == 64
    assert not key_file(state, "encryption").with_suffix(".key.new").exists()
    with pytest.raises(WrongKey):
        open_readonly(database, Key(old, "the old key"))
    with open_readonly(database, Key(new, "the new key")) as con:
        assert con.sql("SELECT count(*) FROM raw.elec").fetchall() == [(100,)]
    after = _artifacts(state)
    assert len(after) == len(before) and not set(after) & set(before)
    snapshot = (state / "snapshot.duckdb").resolve()
    with open_readonly(snapshot, Key(new, "the new key")) as con:
        assert con.sql("SELECT count(*) FROM raw.elec").fetchall() == [(100,)]
    elec_csv(landing / "b.csv", 100, 50)  # the champion, sealed anew, loads and learns on
    assert _drain(config) == 150


def test_a_rotation_cut_short_is_named_at_start_up_and_finishes_when_run_again(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    config = _config(elec_config, encryption=True)
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 50)
    assert _drain(config) == 50
    state, database = config.state_dir, database_path(config.state_dir)
    old = key_file(state, "encryption").read_text()
    new = stage_new_key(state, "encryption")  # the rotation's first step, then the file ...
    compact(database, STORAGE_VERSION, key_from=old, key_to=new)  # ... and a crash
    started = _tidemill(config.path, "run", "elec", "--drain")
    assert started.returncode == 2 and "tidemill keys rotate" in started.stderr, started.stderr
    assert _tidemill(config.path, "keys", "rotate").returncode == 0
    assert key_file(state, "encryption").read_text() == new
    assert _drain(config) == 50
