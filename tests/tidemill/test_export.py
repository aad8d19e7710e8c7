"""`tidemill export` writes Parquet partitioned by event date, encrypted unless asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tidemill.config.load import TidemillConfig
from tidemill.keys import get_token
from tidemill.warehouse import extensions
from tidemill.warehouse.export import PARQUET_KEY_NAME, parquet_key

from .test_cli import _run


@pytest.fixture
def two_days(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> TidemillConfig:
    """100 elec rows, 60 on 2024-01-01 and 40 on 2024-01-02, stored and learned."""
    config = elec_config(batch_rows=50)
    landing = Path(config.pipeline("elec").source.path).parent
    frame = elec_csv(tmp_path / "seed.csv", 0, 100).with_columns(
        ts=pl.Series([f"2024-01-0{1 + i // 60}T0{i % 6}:00:{i % 60:02d}Z" for i in range(100)])
    )
    frame.write_csv(landing / "a.csv")
    code, out, _ = _run(capsys, "--config", str(config.path), "run", "elec", "--drain")
    assert code == 0, out
    return config


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet"))


def _count(folder: Path, key: str | None) -> int:
    con = duckdb.connect(config={"extension_directory": str(extensions.extension_dir())})
    con.execute("LOAD httpfs")
    options = ""
    if key is not None:
        con.execute(f"PRAGMA add_parquet_key('{PARQUET_KEY_NAME}', '{key}')")
        options = f", encryption_config = {{footer_key: '{PARQUET_KEY_NAME}'}}"
    rows = con.sql(
        f"SELECT count(*) FROM read_parquet('{folder}/**/*.parquet', hive_partitioning = true"
        f"{options})"
    ).fetchall()
    return int(rows[0][0])


def test_exports_are_partitioned_by_event_date_and_encrypted_by_default(
    two_days: TidemillConfig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = ("--config", str(two_days.path), "export", "elec")
    out = tmp_path / "raw"
    code, printed, err = _run(
        capsys,
        *cli,
        "--table",
        "raw",
        "--since",
        "2024-01-01",
        "--until",
        "2024-01-03",
        "--to",
        str(out),
    )
    assert code == 0, err
    assert "wrote 100 rows in 2 encrypted Parquet files" in printed
    assert [p.parent.name for p in _files(out)] == [
        "event_date=2024-01-01",
        "event_date=2024-01-02",
    ]
    assert all(p.read_bytes()[-4:] == b"PARE" for p in _files(out))  # encrypted footer
    with pytest.raises(duckdb.Error, match="encrypted"):
        _count(out, None)
    key = parquet_key(get_token(two_days.state_dir, "encryption"))
    assert _count(out, key) == 100
    manifest = json.loads((out / "_tidemill_export.json").read_text())
    assert manifest["rows"] == 100 and manifest["encrypted"] is True
    assert key not in (out / "_tidemill_export.json").read_text()

    day_two = tmp_path / "clean"
    code, printed, err = _run(
        capsys,
        *cli,
        "--table",
        "clean",
        "--since",
        "2024-01-02",
        "--until",
        "2024-01-03",
        "--to",
        str(day_two),
        "--plaintext",
    )
    assert code == 0, err
    assert all(p.read_bytes()[-4:] == b"PAR1" for p in _files(day_two))
    assert _count(day_two, None) == 40

    metrics = tmp_path / "metrics"
    code, printed, err = _run(
        capsys,
        *cli,
        "--table",
        "metrics",
        "--since",
        "2024-01-01",
        "--until",
        "2024-01-03",
        "--to",
        str(metrics),
        "--plaintext",
    )
    assert code == 0, err
    assert _count(metrics, None) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2024-01-02", "--until", "2024-01-01"], "is not after --since"),
        (["--since", "yesterday", "--until", "2024-01-01"], "is not an ISO date or time"),
        (
            ["--since", "2024-01-01", "--until", "2024-01-02", "--table", "gold"],
            "'gold' is not one of",
        ),
    ],
)
def test_a_bad_argument_is_one_line(
    two_days: TidemillConfig,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    table = [] if "--table" in args else ["--table", "raw"]
    code, _, err = _run(
        capsys,
        "--config",
        str(two_days.path),
        "export",
        "elec",
        *table,
        *args,
        "--to",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert message in err and err.strip().count("\n") == 0, err
