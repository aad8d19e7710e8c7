"""`tidemill sql` opens the real `duckdb` shell on the live warehouse; `tidemill serving`
says where each owner serves it, for any other DuckDB client."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from tidemill.config.load import TidemillConfig
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.warehouse import extensions

TIDEMILL = [sys.executable, "-m", "tidemill"]


def _tidemill(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIDEMILL, "--config", str(config), *args], capture_output=True, text=True, timeout=120
    )


def _shell_count(config: Path) -> int:
    done = _tidemill(config, "sql", "-c", "SELECT count(*) AS n FROM raw.elec")
    assert done.returncode == 0, done.stderr
    return int(re.findall(r"│\s+(\d+)\s+│", done.stdout)[-1])  # the shell's own table


def test_the_duckdb_shell_and_any_client_read_the_owner_live(
    elec_config: Callable[..., TidemillConfig], elec_csv: Callable[..., pl.DataFrame]
) -> None:
    config = elec_config(batch_rows=50)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 100)
    runtime = Runtime.open(config, serve=True)
    try:
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
        assert _shell_count(config.path) == 100
        elec_csv(landing / "b.csv", 100, 60)
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
        assert _shell_count(config.path) == 160  # live: no snapshot, no restart
        # the interactive session's views: tables under their own names
        init = config.state_dir / "catalog.sql"
        assert stat.S_IMODE(init.stat().st_mode) == 0o600  # it holds the token
        shell = Path(sys.executable).parent / "duckdb"
        viewed = subprocess.run(
            [str(shell), "-init", str(init), "-csv", "-c", "SELECT count(*) FROM raw.elec"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert viewed.stdout.split()[-1:] == ["160"], viewed.stderr

        listed = _tidemill(config.path, "serving", "--json")
        assert listed.returncode == 0, listed.stderr
        [owner] = json.loads(listed.stdout)
        assert owner["name"] == "live" and owner["pipelines"] == ["elec"]
        assert owner["serving"] is True and owner["uri"].startswith("quack:127.0.0.1:")
        token_file = Path(owner["token_file"])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        client = duckdb.connect(config={"extension_directory": str(extensions.extension_dir())})
        client.execute("LOAD httpfs; LOAD quack")
        client.execute(f"ATTACH '{owner['uri']}' AS live (TOKEN '{token_file.read_text()}')")
        assert client.sql("FROM live.query('SELECT count(*) FROM raw.elec')").fetchall() == [(160,)]
        # a write through any client is refused by the owner, which keeps writing
        refused = _tidemill(config.path, "sql", "-c", "SELECT 1; DELETE FROM raw.elec")
        assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
        assert "DELETE statements are refused" in refused.stderr, refused.stderr
        try:
            client.sql("FROM live.query('CREATE TABLE raw.pwned AS SELECT 1')").fetchall()
        except duckdb.Error as error:
            assert "Authorization failed" in str(error)
        else:
            raise AssertionError("a remote CREATE went through")
        assert _shell_count(config.path) == 160
    finally:
        runtime.close()


def test_sql_without_a_running_owner_says_how_to_start_one(
    elec_config: Callable[..., TidemillConfig],
) -> None:
    config = elec_config()
    done = _tidemill(config.path, "sql", "-c", "SELECT 1")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "no owner serves" in done.stderr and "tidemill up" in done.stderr


def test_snapshot_readers_without_snapshots_are_told_how_to_have_them(
    elec_config: Callable[..., TidemillConfig],
) -> None:
    config = elec_config()  # snapshots are off by default
    for args in (["sql", "--snapshot", "-c", "SELECT 1"], ["query", "SELECT 1", "--snapshot"]):
        done = _tidemill(config.path, *args)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
        assert "no snapshot published" in done.stderr
        assert "snapshot_every_seconds" in done.stderr
