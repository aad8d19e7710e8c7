"""The owner's command socket: private, and reachable from a state folder of any length."""

from __future__ import annotations

from pathlib import Path

from tidemill.deployments.owner_socket import OwnerSocket, call_owner, socket_path


def test_a_state_folder_too_deep_for_a_unix_socket_gets_a_short_private_one(
    tmp_path: Path,
) -> None:
    state = tmp_path / ("deep-" * 25) / ".tidemill"
    state.mkdir(parents=True)
    path = socket_path(state)
    assert len(str(path)) < 104 and not path.is_relative_to(state)
    assert socket_path(state) == path != socket_path(tmp_path / ".tidemill")
    served = OwnerSocket(state, {"echo": lambda request: {"said": request["word"]}})
    try:
        assert call_owner(state, {"op": "echo", "word": "hi"})["said"] == "hi"
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        served.close()
    assert not path.exists()
    short = tmp_path / ".tidemill"
    assert socket_path(short) == short.absolute() / "run" / "owner.sock"
