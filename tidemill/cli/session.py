"""What one invocation of `tidemill` works on: the config file (`--config PATH`, else
$TIDEMILL_CONFIG, else ./tidemill.toml), read once, the owner of each pipeline, and who
is asking (kept in audit rows)."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

from tidemill import layout
from tidemill.config.load import TidemillConfig, load_config

_path: Path | None = None
_config: TidemillConfig | None = None


def use(path: Path) -> None:
    """Read the config from `path` from now on (the `--config` option, per invocation)."""
    global _path, _config
    _path, _config = path, None


def config() -> TidemillConfig:
    """The config of this invocation, loaded on first use (ConfigError if it is wrong)."""
    global _config
    if _config is None:
        assert _path is not None, "the --config callback runs before any command"
        _config = load_config(_path)
    return _config


def owner(pipeline: str) -> TidemillConfig:
    """The config of the worker that owns `pipeline` (tidemill/layout.py)."""
    return layout.owner_config(config(), pipeline)


def actor() -> str:
    """Who runs this command, as user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"
