"""Private by default: the state folder and its keys are the owner's alone, and what a
tidemill process creates, others cannot read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tidemill.config.load import TidemillConfig
from tidemill.keys import get_key, key_file
from tidemill.private import NotPrivate, state_folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_state_folder_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = state_folder(tmp_path / "a" / ".tidemill")
    finally:
        os.umask(old)
    assert _mode(folder) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o703])
def test_a_state_folder_others_can_enter_stops_start_up_with_the_chmod(
    tmp_path: Path, mode: int
) -> None:
    folder = tmp_path / ".tidemill"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(NotPrivate) as refused:
        state_folder(folder)
    message = str(refused.value)
    assert "\n" not in message and f"chmod -R go-rwx {folder}" in message


def test_a_symlinked_state_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / ".tidemill"
    link.symlink_to(real)
    with pytest.raises(NotPrivate, match="is a symlink"):
        state_folder(link)


@pytest.mark.skipif(os.getuid() != 0, reason="only root can hand a folder to another uid")
def test_a_state_folder_of_another_user_is_refused_with_the_chown(tmp_path: Path) -> None:
    folder = tmp_path / ".tidemill"
    folder.mkdir(mode=0o700)
    os.chown(folder, 4242, -1)
    with pytest.raises(NotPrivate, match=f"belongs to uid 4242.*chown -R {os.getuid()}"):
        state_folder(folder)


def test_a_key_file_others_can_read_or_a_linked_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDEMILL_PII_KEY", raising=False)
    key = get_key(tmp_path, "pii")  # made on first use, private
    path = key_file(tmp_path, "pii")
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    path.chmod(0o644)
    with pytest.raises(NotPrivate, match=f"chmod 600 {path}"):
        get_key(tmp_path, "pii")
    path.chmod(0o600)
    assert get_key(tmp_path, "pii") == key
    stolen = tmp_path / "planted.key"
    stolen.write_bytes(b"x" * 32)
    stolen.chmod(0o600)
    path.unlink()
    path.symlink_to(stolen)
    with pytest.raises(NotPrivate, match="is a symlink"):
        get_key(tmp_path, "pii")


def test_what_a_tidemill_process_writes_no_other_user_can_read(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
) -> None:
    """A real `tidemill run --drain` under a permissive umask: the state folder is 0700
    and every file in it (warehouse, WAL, snapshot, artifacts, keys) is 0600."""
    config = elec_config(batch_rows=50)
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 120)
    done = subprocess.run(
        [sys.executable, "-m", "tidemill", "-c", str(config.path), "run", "elec", "--drain"],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    state = config.state_dir
    assert _mode(state) == 0o700
    files = [p for p in state.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) >= 4  # warehouse, snapshot, artifacts, keys
    opened = {str(p.relative_to(state)): oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert opened == {}
    folders = [p for p in state.rglob("*") if p.is_dir()]
    assert all(_mode(p) & 0o077 == 0 for p in folders)
