"""Erasure: the subject's rows are gone everywhere, aggregates and lags are recomputed,
and every model is rebuilt equal to one that never saw the subject."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pytest

from tidemill.config.load import load_config
from tidemill.flows.engine.backfill import run_backfill
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.erase import erase_subject
from tidemill.flows.engine.replay import replay_model
from tidemill.flows.engine.runtime import Runtime
from tidemill.warehouse.connection import database_path
from tidemill.warehouse.serving.snapshot import snapshot_path

SUBJECT = "cust-0007@shop.example"
# Plaintext storage: what the erasure must wipe is DuckDB's freed blocks, and the search
# below must find the subject before it (an encrypted file holds no plaintext at all:
# tests/flows/test_pii_scan.py).
TOML = """
[state]
encryption = false

[serving]
snapshot_every_seconds = 0.01

[pipelines.shop]
source = {{ kind = "files", path = "{landing}/*.csv", format = "csv" }}
event_time = "ts"
key = "id"
target = "bought"
features = ["amount", "customer"]
categorical = ["customer"]
classes = [0, 1]
batch_rows = 50
subject = "customer"
challengers = [{{ name = "nb", estimator = "gaussian_nb" }}]
promotion = {{ margin = 0.5 }}
lags = [{{ name = "last", by = ["customer"], n = 2 }}]

[[pipelines.shop.aggregates]]
name = "per_customer"
by = ["customer"]
every = "1h"
"""


def _rows(n: int = 600) -> pl.DataFrame:
    rng = np.random.default_rng(11)
    amount = rng.gamma(2.0, 20.0, n).round(2)
    customer = [f"cust-{k:04d}@shop.example" for k in rng.integers(0, 30, n)]
    bought = (amount + rng.normal(0, 15, n) > 40).astype(int)
    return pl.DataFrame(
        {
            "id": np.arange(n),
            "ts": [
                f"2024-03-01T{k // 120:02d}:{k // 2 % 60:02d}:{k % 2 * 30:02d}Z" for k in range(n)
            ],
            "amount": amount,
            "customer": customer,
            "bought": bought,
        }
    )


def _runtime(tmp_path: Path, name: str) -> Runtime:
    folder = tmp_path / name
    (folder / "landing").mkdir(parents=True)
    (folder / "tidemill.toml").write_text(textwrap.dedent(TOML.format(landing="landing")))
    return Runtime.open(load_config(folder / "tidemill.toml"))


def _landing(runtime: Runtime) -> Path:
    return Path(runtime.config.pipeline("shop").source.path).parent


class Erased(NamedTuple):
    live: Runtime
    control: Runtime  # the same batches, never holding the subject
    rows: pl.DataFrame
    hits_before: int  # times the subject's bytes were in the warehouse file before


@pytest.fixture
def erased(tmp_path: Path) -> Erased:
    rows = _rows()
    live = _runtime(tmp_path, "live")
    rows.write_csv(_landing(live) / "all.csv")
    while run_cycle(live, "shop", drain=True).status == "committed":
        pass
    batches = live.con.sql("SELECT id::BIGINT AS id, batch_id FROM raw.shop").pl()
    live.con.execute("CHECKPOINT")
    hits_before = database_path(live.state_dir).read_bytes().count(SUBJECT.encode())
    erase_subject(live, "shop", "customer", SUBJECT, requested_by="dpo@test")
    # the control: the same batches, never holding c7, drained one batch per file
    control = _runtime(tmp_path, "control")
    joined = rows.join(batches, on="id").filter(pl.col("customer") != SUBJECT)
    for batch_id in sorted(joined["batch_id"].unique().to_list()):
        part = joined.filter(pl.col("batch_id") == batch_id).drop("batch_id")
        part.write_csv(_landing(control) / f"b{batch_id:04d}.csv")
        assert run_cycle(control, "shop", drain=True).status == "committed"
    return Erased(live, control, rows, hits_before)


def test_no_trace_of_the_subject_remains_in_any_table(erased: Erased) -> None:
    live, _, rows, _ = erased
    subject_ids = [str(i) for i in rows.filter(pl.col("customer") == SUBJECT)["id"]]
    assert len(subject_ids) > 10
    con = live.con
    for table in ("raw.shop", "clean.shop", "agg.shop_per_customer", "agg.shop_lag_last"):
        assert con.sql(f"SELECT count(*) FROM {table} WHERE customer = '{SUBJECT}'").fetchall() == [
            (0,)
        ]
    ids = ", ".join(f"'{i}'" for i in subject_ids)
    assert con.sql(f"SELECT count(*) FROM ml.shop_predictions WHERE id IN ({ids})").fetchall() == [
        (0,)
    ]
    audit = con.sql("SELECT * FROM _erasures").pl()
    assert audit.height == 1 and audit["rows_raw"][0] == len(subject_ids)
    row = audit.to_dicts()[0]
    digest = row.pop("subject_digest")
    assert (
        SUBJECT not in str(row) and len(digest) == 64 and digest != SUBJECT
    )  # an HMAC, not the value
    # the models that learned c7 have no artifact left
    tainted = con.sql(
        "SELECT artifact_path FROM ml.model_versions WHERE artifact_pruned_at IS NOT NULL"
    ).fetchall()
    assert tainted and not any((live.state_dir / p).exists() for (p,) in tainted)


def test_no_byte_of_the_subject_remains_in_any_file(erased: Erased) -> None:
    """DuckDB leaves deleted values in freed blocks: the erasure rewrites the file."""
    live = erased.live
    assert erased.hits_before > 0  # the search finds the value where it is
    live.con.execute("CHECKPOINT")
    files = [p for p in live.state_dir.rglob("*") if p.is_file()]
    assert database_path(live.state_dir) in files and snapshot_path(live.state_dir) in files
    assert [p for p in files if SUBJECT.encode() in p.read_bytes()] == []
    # the rewritten file goes on: queries through the owner's cursors, and batches
    with live.reader() as cursor:
        assert cursor.sql("SELECT count(*) FROM _erasures").fetchall() == [(1,)]


def test_an_erased_subject_read_again_is_not_stored_again(erased: Erased) -> None:
    """The landing files still hold the subject (the source is not ours to change): a
    backfill over all of it, and a file delivering their records again, store none."""
    live, _, rows, _ = erased
    done = run_backfill(
        live, "shop", datetime(2024, 3, 1), datetime(2024, 3, 2), requested_by="test"
    )
    assert done.rows_in_window == rows.height - rows.filter(pl.col("customer") == SUBJECT).height
    assert done.rows_inserted == 0
    again = rows.filter(pl.col("customer") == SUBJECT).with_columns(pl.col("id") + 10_000)
    again.write_csv(_landing(live) / "again.csv")
    run_cycle(live, "shop", drain=True)
    for table in ("raw.shop", "raw.shop_quarantine", "raw.shop_inbox"):
        found = live.con.sql(f"SELECT count(*) FROM {table} WHERE _file LIKE '%again.csv'")
        assert found.fetchall() == [(0,)], table
    assert live.con.sql("SELECT count(*) FROM _files WHERE path LIKE '%again.csv'").fetchall() == [
        (1,)
    ]  # the file was read


def test_aggregates_and_lags_equal_those_of_a_warehouse_that_never_saw_the_subject(
    erased: Erased,
) -> None:
    live, control, _, _ = erased
    for table in ("agg.shop_per_customer", "agg.shop_lag_last"):
        sql = (
            f"SELECT * EXCLUDE (updated_batch_id) FROM {table} ORDER BY ALL"
            if "per" in table
            else f"SELECT * FROM {table} ORDER BY ALL"
        )
        assert live.con.sql(sql).fetchall() == control.con.sql(sql).fetchall(), table


def test_every_rebuilt_model_equals_one_trained_without_the_subject(erased: Erased) -> None:
    live, control, _, _ = erased
    heads = "SELECT candidate, params_sha256, rows_seen FROM ml.model_versions WHERE status IN ('champion', 'challenger') ORDER BY 1"
    assert live.con.sql(heads).fetchall() == control.con.sql(heads).fetchall()
    config = live.pipelines.states["shop"].config
    for (version,) in live.con.sql(
        "SELECT version FROM ml.model_versions WHERE status IN ('champion', 'challenger')"
    ).fetchall():
        assert replay_model(live.con, config, version, live.state_dir).equal
    # and the pipeline goes on learning from the rebuilt models
    _rows(700).slice(600).write_csv(_landing(live) / "more.csv")
    assert run_cycle(live, "shop", drain=True).status == "committed"


def test_erase_from_the_command_line_matches_the_pseudonym_and_prints_one_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from tidemill.cli.app import main

    folder = tmp_path / "cli"
    (folder / "landing").mkdir(parents=True)
    text = textwrap.dedent(TOML.format(landing="landing")).replace(
        "batch_rows = 50", 'batch_rows = 50\npii = { customer = "hash" }'
    )
    (folder / "tidemill.toml").write_text(text)
    _rows(200).write_csv(folder / "landing" / "all.csv")

    def run(*args: str) -> tuple[int, str]:
        sys.argv = ["tidemill", "-c", str(folder / "tidemill.toml"), *args]
        try:
            main()
            code = 0
        except SystemExit as done:
            code = int(done.code or 0)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    assert run("run", "shop", "--drain")[0] == 0
    code, out = run("erase", "shop", "--subject", SUBJECT)
    assert code == 0 and "shop: erasure 1: removed" in out and "rebuilt" in out, out
    assert "rewrote the warehouse file and snapshot" in out
    code, out = run("query", "SELECT count(*) AS n FROM raw.shop", "-f", "csv")
    assert out.splitlines()[1] == str(200 - sum(1 for c in _rows(200)["customer"] if c == SUBJECT))
    code, out = run("erase", "shop", "--subject", SUBJECT)  # again: nothing left, still fine
    assert code == 0 and "removed 0 rows" in out
