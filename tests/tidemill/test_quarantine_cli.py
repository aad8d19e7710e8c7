"""`tidemill quarantine list/show/readmit`: a person reads a rejected record, corrects it,
and puts it back through the inbox and the full validation, once."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tidemill.cli.app import main
from tidemill.config.load import TidemillConfig


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


def _one(capsys: pytest.CaptureFixture[str], config: Path, sql: str) -> Any:
    code, out, err = _run(capsys, "-c", str(config), "query", sql, "-f", "json")
    assert code == 0, err
    return next(iter(json.loads(out)[0].values()))


@pytest.fixture
def quarantined(
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    capsys: pytest.CaptureFixture[str],
) -> tuple[Path, dict[str, int]]:
    """A drained elec pipeline with a bad value, a ragged line and an unreadable file;
    returns the config path and the quarantine id of each, by kind."""
    config = elec_config(batch_rows=50)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 20)
    with (landing / "a.csv").open("a") as handle:
        handle.write("100,2024-01-01T01:00:00Z,abc,0.5,1\n")  # line 22: feat_1 is not a number
        handle.write("101,2024-01-01T01:01:00Z,0.5\n")  # line 23: two fields missing
    (landing / "b.csv").write_bytes(b"\x1f\x8b\x08\x00 not text")
    code, out, err = _run(capsys, "-c", str(config.path), "run", "elec", "--drain")
    assert code == 0, err
    code, out, _ = _run(capsys, "-c", str(config.path), "quarantine", "list", "elec", "--json")
    assert code == 0
    listed = json.loads(out)
    ids = {
        "value": next(r["id"] for r in listed["recent"] if r["line"] == 22),
        "ragged": next(r["id"] for r in listed["recent"] if r["line"] == 23),
        "file": next(r["id"] for r in listed["recent"] if r["line"] == 0),
    }
    return config.path, ids


def test_list_groups_by_reason_and_file_and_show_splits_the_record(
    quarantined: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids = quarantined
    code, out, _ = _run(capsys, "-c", str(config), "quarantine", "list", "elec", "--json")
    listed = json.loads(out)
    assert (listed["quarantined"], listed["readmitted"]) == (3, 0)
    assert sorted((g["reason"], Path(g["file"]).name, g["rows"]) for g in listed["groups"]) == [
        ("expected 5 fields, found 3", "a.csv", 1),
        ("feat_1 '…' is not a finite number", "a.csv", 1),
        (
            "file unreadable: file is gzip-compressed; decompress it first (expected CSV)",
            "b.csv",
            1,
        ),
    ]
    code, out, _ = _run(
        capsys, "-c", str(config), "quarantine", "list", "elec", "--reason", "FINITE", "--json"
    )
    assert [r["id"] for r in json.loads(out)["recent"]] == [ids["value"]]
    code, out, _ = _run(
        capsys, "-c", str(config), "quarantine", "show", "elec", str(ids["value"]), "--json"
    )
    shown = json.loads(out)
    assert code == 0
    assert (Path(shown["file"]).name, shown["line"], shown["reasons"]) == (
        "a.csv",
        22,
        ["feat_1 'abc' is not a finite number"],
    )
    assert shown["raw_text"] == "100,2024-01-01T01:00:00Z,abc,0.5,1"
    assert shown["fields"] == {
        "id": "100",
        "ts": "2024-01-01T01:00:00Z",
        "feat_1": "abc",
        "feat_2": "0.5",
        "target": "1",
    }
    assert shown["readmitted_at"] is None
    code, out, _ = _run(capsys, "-c", str(config), "quarantine", "list", "elec")
    assert code == 0 and "3 quarantined records waiting" in out and "is not a finite number" in out


def test_a_corrected_record_is_readmitted_once_and_validated_by_the_next_batch(
    quarantined: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids = quarantined
    value, ragged = str(ids["value"]), str(ids["ragged"])
    # still wrong: refused with the reason, nothing written
    code, _, err = _run(
        capsys, "-c", str(config), "quarantine", "readmit", "elec", value, "--set", "feat_1=oops"
    )
    assert code == 2 and err.count("\n") == 1
    assert "would be quarantined again: feat_1 'oops' is not a finite number" in err
    assert _one(capsys, config, "SELECT count(*) FROM raw.elec_inbox") == 0
    # corrected: back in the inbox, marked re-admitted in the same transaction
    code, out, _ = _run(
        capsys, "-c", str(config), "quarantine", "readmit", "elec", value, "--set", "feat_1=0.25"
    )
    assert code == 0 and "1 record(s) back in the inbox" in out
    code, out, _ = _run(
        capsys, "-c", str(config), "quarantine", "readmit", "elec", value, "--set", "feat_1=0.25"
    )
    assert code == 0 and f"id {value} was re-admitted at" in out and "nothing added" in out
    assert _one(capsys, config, "SELECT count(*) FROM raw.elec_inbox") == 1
    assert _one(capsys, config, "SELECT columns_changed FROM _readmissions") == "feat_1"
    # a ragged line cannot be completed by a few values; a whole record in a file can
    code, _, err = _run(
        capsys, "-c", str(config), "quarantine", "readmit", "elec", ragged, "--set", "feat_2=1"
    )
    assert code == 2 and "give every column (id, ts, feat_1, feat_2, target) with --set" in err
    fixed = config.parent / "fixed.csv"
    fixed.write_text(
        f"quarantine_id,id,ts,feat_1,feat_2,target\n{ragged},101,2024-01-01T01:01:00Z,0.5,0.75,0\n"
    )
    code, out, _ = _run(
        capsys, "-c", str(config), "quarantine", "readmit", "elec", "--file", str(fixed)
    )
    assert code == 0 and f"(ids {ragged})" in out
    # the next batch takes them through the full validation and stores them
    code, _, err = _run(capsys, "-c", str(config), "run", "elec", "--drain")
    assert code == 0, err
    rows = json.loads(
        _run(
            capsys,
            "-c",
            str(config),
            "query",
            "SELECT id, feat_1, feat_2, _line FROM raw.elec WHERE id::INT >= 100 ORDER BY id",
            "-f",
            "json",
        )[1]
    )
    assert rows == [
        {"id": "100", "feat_1": 0.25, "feat_2": 0.5, "_line": 22},
        {"id": "101", "feat_1": 0.5, "feat_2": 0.75, "_line": 23},
    ]
    # running every readmission again adds nothing anywhere
    code, out, _ = _run(
        capsys, "-c", str(config), "quarantine", "readmit", "elec", "--file", str(fixed)
    )
    assert code == 0 and "nothing added" in out
    _run(capsys, "-c", str(config), "run", "elec", "--drain")
    assert _one(capsys, config, "SELECT count(*) FROM raw.elec") == 22
    assert _one(capsys, config, "SELECT count(*) FROM raw.elec_quarantine") == 3
    listed = json.loads(_run(capsys, "-c", str(config), "quarantine", "list", "elec", "--json")[1])
    assert (listed["quarantined"], listed["readmitted"], len(listed["recent"])) == (3, 2, 1)
    shown = json.loads(
        _run(capsys, "-c", str(config), "quarantine", "show", "elec", value, "--json")[1]
    )
    assert shown["readmitted_by"] and shown["columns_changed"] == "feat_1"


def test_readmission_goes_through_the_owner_while_one_runs(
    quarantined: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    from tidemill.config.load import load_config
    from tidemill.deployments import owner
    from tidemill.flows.engine.cycle import run_cycle
    from tidemill.flows.engine.runtime import Runtime

    config, ids = quarantined
    runtime = Runtime.open(load_config(config))
    service = owner.serve(runtime)
    try:
        # the CLI cannot open the file (the owner holds it): the command must reach the owner
        code, out, err = _run(
            capsys,
            "-c",
            str(config),
            "quarantine",
            "readmit",
            "elec",
            str(ids["value"]),
            "--set",
            "feat_1=1.5",
        )
        assert code == 0, err
        assert runtime.con.sql("SELECT count(*) FROM raw.elec_inbox").fetchall() == [(1,)]
        assert run_cycle(runtime, "elec").rows_accepted == 1
        code, out, _ = _run(
            capsys, "-c", str(config), "quarantine", "readmit", "elec", str(ids["value"])
        )
        assert code == 0 and "nothing added" in out
        assert runtime.con.sql("SELECT count(*) FROM raw.elec_inbox").fetchall() == [(0,)]
    finally:
        service.close()
        runtime.close()


MISTAKES = [
    (["readmit", "elec"], "name the records: tidemill quarantine readmit elec ID"),
    (
        ["readmit", "elec", "{value}", "--set", "feat_1"],
        "--set expects COLUMN=VALUE (got 'feat_1')",
    ),
    (
        ["readmit", "elec", "{value}", "--set", "colour=red"],
        "elec has no column(s) colour (columns: id, ts",
    ),
    (["readmit", "elec", "999"], "raw.elec_quarantine has no row 999"),
    (["readmit", "elec", "{file}"], "is a whole file (file unreadable: file is gzip-compressed"),
    (["readmit", "elec", "{value}", "--file", "x.csv"], "give quarantine ids or --file, not both"),
    (["show", "elec", "999"], "elec has no quarantined record 999"),
    (["list", "nope"], "no pipeline named 'nope'"),
]


def test_mistakes_print_one_line_and_exit_2(
    quarantined: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids = quarantined
    for args, message in MISTAKES:
        filled = [a.format(value=ids["value"], file=ids["file"]) for a in args]
        code, out, err = _run(capsys, "-c", str(config), "quarantine", *filled)
        assert code == 2, args
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        assert "Traceback" not in out + err
    assert _one(capsys, config, "SELECT count(*) FROM _readmissions") == 0


def test_a_nested_ndjson_value_is_corrected_and_readmitted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "tidemill.toml").write_text(
        '[pipelines.ev]\nsource = { kind = "files", path = "in/*.ndjson", format = "ndjson" }\n'
        'event_time = "ts"\nkey = "id"\ntarget = "y"\nfeatures = ["x"]\nclasses = [0, 1]\n'
    )
    rows = [
        {"id": 1, "ts": "2024-01-01T00:00:00Z", "x": 1.0, "y": 1},
        {"id": 2, "ts": "2024-01-01T00:01:00Z", "x": {"value": 2.0}, "y": 0},
    ]
    (tmp_path / "in" / "a.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = str(tmp_path / "tidemill.toml")
    assert _run(capsys, "-c", config, "run", "ev", "--drain")[0] == 0
    shown = json.loads(_run(capsys, "-c", config, "quarantine", "show", "ev", "1", "--json")[1])
    assert shown["reasons"] == ["nested value in field(s) x"]
    assert shown["fields"]["x"] == '{"value": 2.0}'
    code, _, err = _run(capsys, "-c", config, "quarantine", "readmit", "ev", "1")
    assert code == 2 and "nested value in field(s) x" in err
    assert _run(capsys, "-c", config, "quarantine", "readmit", "ev", "1", "--set", "x=2.0")[0] == 0
    assert _run(capsys, "-c", config, "run", "ev", "--drain")[0] == 0
    assert _one(capsys, Path(config), "SELECT x FROM raw.ev WHERE id = '2'") == 2.0
