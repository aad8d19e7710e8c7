import stat
from pathlib import Path

import pytest

from tidemill.keys import WeakKey, get_key, key_file


def test_a_generated_key_is_private_stable_and_per_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDEMILL_PII_KEY", raising=False)
    monkeypatch.delenv("TIDEMILL_ARTIFACT_KEY", raising=False)
    first = get_key(tmp_path, "pii")
    assert len(first) == 32 and get_key(tmp_path, "pii") == first
    assert get_key(tmp_path, "artifact") != first
    mode = stat.S_IMODE(key_file(tmp_path, "pii").stat().st_mode)
    assert mode == 0o600 and stat.S_IMODE(key_file(tmp_path, "pii").parent.stat().st_mode) == 0o700


def test_the_environment_wins_and_short_keys_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEMILL_PII_KEY", "ab" * 32)
    assert get_key(tmp_path, "pii") == bytes.fromhex("ab" * 32)
    assert not key_file(tmp_path, "pii").exists()
    monkeypatch.setenv("TIDEMILL_PII_KEY", "short")
    with pytest.raises(WeakKey, match="is 5 bytes; use at least 32"):
        get_key(tmp_path, "pii")
