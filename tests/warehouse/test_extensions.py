"""DuckDB's httpfs and quack extensions come from the pinned wheels and load by name."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tidemill.warehouse import extensions
from tidemill.warehouse.connection import open_warehouse


def test_the_wheels_install_into_this_environment_and_load_by_name(tmp_path: Path) -> None:
    extensions.install()
    for name in extensions.EXTENSIONS:
        installed = extensions.installed_file(name)
        assert installed.is_file()
        assert installed.is_relative_to(extensions.extension_dir())
        assert installed.stat().st_size == extensions.wheel_file(name).stat().st_size
    con = open_warehouse(tmp_path / "w.duckdb", load=extensions.EXTENSIONS)
    with con:
        functions = con.sql(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_name IN ('quack_serve', 'quack_query')"
        ).fetchall()
        assert sorted(f for (f,) in functions) == ["quack_query", "quack_serve"]
        for setting in ("autoinstall_known_extensions", "autoload_known_extensions"):
            assert con.sql(f"SELECT current_setting('{setting}')").fetchall() == [(False,)]
        # locked: no further extension, no file access, no setting changes
        with pytest.raises(duckdb.PermissionException):
            con.execute("LOAD ducklake")
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"FORCE INSTALL '{extensions.wheel_file('httpfs')}'")
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")


def test_a_missing_wheel_is_named_with_the_pip_line_that_installs_it() -> None:
    with pytest.raises(extensions.ExtensionMissing, match="pip install duckdb-extension-nosuch=="):
        extensions.wheel_file("nosuch")
