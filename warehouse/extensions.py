"""DuckDB's httpfs and quack extensions: from the pinned wheels, offline, loaded by name.

PyPI's `duckdb-extension-httpfs` and `duckdb-extension-quack` wheels (pinned to the
duckdb version in pyproject.toml) each carry DuckDB's signed binary. `install()` copies
them with DuckDB's own `INSTALL '<wheel file>'` into this environment's extension folder
(`<sys.prefix>/duckdb_extensions`: an extension works with exactly one duckdb version,
and the environment is what pins that version, not the state folder). `make install`
does it once; a connection that needs an extension installs it on first use as well.
Connections then `LOAD` by name with autoinstall, autoload, unsigned and community
extensions off, so nothing is ever fetched from the network.

httpfs holds DuckDB's writable crypto module (encrypted warehouses); quack serves a
database to other processes (live SQL). See docs/duckdb-1.5.md for what was measured.
"""

from __future__ import annotations

import fcntl
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

import duckdb

from tidemill.errors import TidemillError

EXTENSIONS = ("httpfs", "quack")

Setting = str | bool | int | float | list[str]
"""A value of DuckDB's connection config."""

# Connection settings that keep extensions local: LOAD by name from extension_directory,
# nothing installed or loaded behind our back, signatures checked.
SETTINGS: dict[str, Setting] = {
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
}


class ExtensionMissing(TidemillError, RuntimeError):
    """An extension's wheel is not installed in this environment."""


def extension_dir() -> Path:
    """This environment's DuckDB extension folder."""
    return Path(sys.prefix) / "duckdb_extensions"


def settings() -> dict[str, Setting]:
    """Connection config for a connection that loads extensions from `extension_dir()`."""
    return {"extension_directory": str(extension_dir()), **SETTINGS}


def wheel_file(name: str) -> Path:
    """The extension binary inside its pip wheel (`duckdb_extension_NAME` package)."""
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionMissing(
            f"the DuckDB extension {name} is not installed: "
            f"pip install duckdb-extension-{name}=={duckdb.__version__} (or `make install`)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        raise ExtensionMissing(
            f"{path} is missing: the duckdb-extension-{name} wheel must match duckdb "
            f"{duckdb.__version__} exactly"
        )
    return path


def installed_file(name: str) -> Path:
    """Where `INSTALL` puts extension `name` for this duckdb version and platform."""
    platform = duckdb.sql("PRAGMA platform").fetchall()[0][0]
    return extension_dir() / f"v{duckdb.__version__}" / platform / f"{name}.duckdb_extension"


def install(names: Iterable[str] = EXTENSIONS) -> None:
    """Install the extensions `names` from their wheels, unless already there. Safe to run
    from several processes at once (a lock file serialises them)."""
    wanted = [n for n in names if not installed_file(n).is_file()]
    if not wanted:
        return
    folder = extension_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with duckdb.connect(":memory:", config=settings()) as con:
            for name in wanted:
                if not installed_file(name).is_file():
                    con.execute(f"FORCE INSTALL '{wheel_file(name)}'")


def load(con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> None:
    """LOAD extensions by name on `con` (opened with `settings()`), installing first if
    needed. Must run while external access is still on (warehouse/connection.py)."""
    names = list(names)
    install(names)
    for name in names:
        con.execute(f"LOAD {name}")


if __name__ == "__main__":  # `make install`
    install()
    print(f"DuckDB extensions {', '.join(EXTENSIONS)} installed in {extension_dir()}")
