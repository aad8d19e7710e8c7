"""The command line: drains, queries, models, and one-line errors."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from tidemill.cli.app import main
from tidemill.config.load import TidemillConfig
from tidemill.warehouse.encryption import is_encrypted


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["tidemill", *args]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def drained(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    capsys: pytest.CaptureFixture[str],
) -> Path:
    config = elec_config(batch_rows=50, snapshot_every_seconds=0.01)
    elec_csv(Path(config.pipeline("elec").source.path).parent / "a.csv", 0, 120)
    code, out, _ = _run(capsys, "--config", str(config.path), "run", "elec", "--drain")
    assert code == 0, out
    assert "3 batches" in out and "120" in out
    return config.path


def test_query_json_is_one_array_of_objects(
    drained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        capsys,
        "-c",
        str(drained),
        "query",
        "SELECT count(*) AS n, max(batch_id) AS b FROM raw.elec",
        "--format",
        "json",
    )
    assert code == 0
    assert json.loads(out) == [{"n": 120, "b": 3}]
    code, out, _ = _run(
        capsys,
        "-c",
        str(drained),
        "query",
        "SELECT id FROM raw.elec ORDER BY id::INT LIMIT 2",
        "-f",
        "csv",
    )
    assert out.splitlines() == ["id", "0", "1"]


def test_models_list_and_show(drained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "-c", str(drained), "models", "list", "elec", "--json")
    versions = json.loads(out)
    assert code == 0 and [v["version"] for v in versions] == [3, 2, 1]
    assert [v["rows_seen"] for v in versions] == [120, 100, 50]
    code, out, _ = _run(capsys, "-c", str(drained), "models", "show", "elec", "--json")
    champion = json.loads(out)
    assert (
        champion["version"] == 3
        and champion["status"] == "champion"
        and champion["parent_version"] == 2
    )
    assert set(champion["metrics"]) == {"accuracy", "log_loss"}
    assert len(champion["sha256"]) == 64
    code, out, _ = _run(capsys, "-c", str(drained), "status", "--json")
    status = json.loads(out)[0]
    assert (status["pipeline"], status["batches"], status["rows"], status["champion"]) == (
        "elec",
        3,
        120,
        3,
    )


def test_promote_and_rollback_from_the_command_line(
    drained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        capsys, "-c", str(drained), "models", "promote", "elec", "1", "--reason", "baseline"
    )
    assert code == 0 and "v1 is the champion (50 rows seen)" in out
    code, out, _ = _run(capsys, "-c", str(drained), "models", "rollback", "elec")
    assert code == 0 and "v3 is the champion" in out
    code, out, _ = _run(
        capsys,
        "-c",
        str(drained),
        "query",
        "SELECT action, to_version, reason FROM ml.model_events ORDER BY event_id",
        "-f",
        "json",
    )
    assert json.loads(out) == [
        {"action": "promote", "to_version": 1, "reason": "baseline"},
        {"action": "rollback", "to_version": 3, "reason": "rolled back by hand"},
    ]


def test_replay_model_proves_a_version_equal(
    drained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "-c", str(drained), "replay-model", "elec", "--to", "2", "--json")
    report = json.loads(out)
    assert code == 0 and report["equal"] and report["batches"] == 2
    assert report["rebuilt_sha256"] == report["stored_sha256"] == report["artifact_sha256"]
    code, out, _ = _run(capsys, "-c", str(drained), "replay-model", "elec", "--to", "3")
    assert code == 0 and "elec v3: rebuilt model is identical to the stored one" in out
    code, out, _ = _run(capsys, "-c", str(drained), "maintain", "elec")
    assert code == 0 and "elec: pruned 0 artifacts, kept 3, removed 0 orphans" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay-model", "elec", "--to", "9"], "elec has no version 9"),
        (["run", "nope"], "no pipeline named 'nope' (declared: elec)"),
        (["run", "elec", "--bogus"], "No such option: --bogus (see `tidemill run --help`)"),
        (["query", "SELECT 1", "--format", "xml"], "'xml' is not one of 'table', 'csv', 'json'"),
        (
            ["query", "DROP TABLE raw.elec"],
            "DROP statements are refused: tidemill query is read-only",
        ),
        (["query", "SELEC 1"], "syntax error"),
        (["models", "show", "elec", "99"], "elec has no version 99 yet"),
        (["report", "nope"], "no pipeline named 'nope' (declared: elec)"),
        (
            ["report", "elec", "--out", "/nonexistent/r.html"],
            "cannot write /nonexistent/r.html: folder /nonexistent does not exist",
        ),
        (
            ["replay", "trains"],
            "unknown data set 'trains' (available: flights, transactions, sensors)",
        ),
        (["models", "promote", "elec", "3"], "elec v3 is already the champion"),
        (["query", "SELECT * FROM nowhere"], "Table with name nowhere does not exist"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(
    drained: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _run(capsys, "-c", str(drained), *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in out + err


def test_a_missing_config_is_one_line_from_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidemill", "--config", str(tmp_path / "none.toml"), "status"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none.toml'}: config file not found (pass --config PATH or set TIDEMILL_CONFIG)"
    ]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["run"],
        ["query"],
        ["status"],
        ["models", "list"],
        ["models", "show"],
        ["up"],
        ["down"],
        ["worker"],
        ["replay"],
        ["report"],
    ):
        code, out, _ = _run(capsys, *command, "--help")
        assert code == 0 and "Usage:" in out and len(out.splitlines()) > 4, command


def test_the_published_snapshot_opens_in_the_duckdb_shell(drained: Path) -> None:
    """`tidemill sql --snapshot` runs the real `duckdb` shell on the published copy,
    which is encrypted (the default): the shell gets the key from an init script only
    its owner can read, never on its command line."""
    shell = Path(sys.executable).with_name("duckdb")
    assert shell.exists(), "the duckdb shell is a dependency (duckdb-cli)"
    state = drained.parent / ".tidemill"
    assert is_encrypted((state / "snapshot.duckdb").resolve())
    command = [sys.executable, "-m", "tidemill", "--config", str(drained), "sql", "--snapshot"]
    result = subprocess.run(
        [*command, "-c", "SELECT count(*) AS n FROM raw.elec"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.findall(r"│\s+(\d+)\s+│", result.stdout) == ["120"]
    init = state / "run" / "snapshot-init.sql"
    assert init.stat().st_mode & 0o777 == 0o600 and "ENCRYPTION_KEY" in init.read_text()
    # the shell's own read-only attach: a write fails there too
    refused = subprocess.run(
        [*command, "-c", "DELETE FROM raw.elec"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "read-only" in refused.stderr


class _Page(HTMLParser):
    """The images (decoded) and table rows of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[bytes] = []
        self.rows: dict[str, int] = {}
        self.heading = ""
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            src = found["src"] or ""
            assert src.startswith("data:image/png;base64,"), src[:40]
            self.images.append(base64.b64decode(src.split(",", 1)[1]))
        elif tag == "h2":
            self._in_h2, self.heading = True, ""
        elif tag == "tr":
            self.rows[self.heading] = self.rows.get(self.heading, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.heading += data


def test_report_is_one_self_contained_page_with_charts_registry_and_quality(
    drained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    page_path = tmp_path / "elec.html"
    code, out, _ = _run(capsys, "-c", str(drained), "report", "elec", "--out", str(page_path))
    assert code == 0 and f"wrote {page_path}" in out
    text = page_path.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text
    page = _Page()
    page.feed(text)
    # accuracy and log_loss per candidate, rows per batch, latency by step
    assert len(page.images) == 4
    for png in page.images:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 400 and height > 150
    assert page.rows["Model registry (newest 50)"] == 1 + 3  # header + three versions
    assert page.rows.get("Data quality: quarantine reasons", 0) == 0  # a sentence instead
    assert "Nothing was quarantined." in text


def test_the_command_starts_without_the_heavy_libraries() -> None:
    """Every process `tidemill` starts (a query, the supervisor's workers, `run`) pays its
    imports first: the command modules load polars, scikit-learn, Prefect and matplotlib
    inside the commands that use them, not at start-up (0.4 s instead of 2.2 s)."""
    code = (
        "import sys, tidemill.cli.app\n"
        "print(sorted(m for m in ('polars', 'sklearn', 'prefect', 'matplotlib') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
