"""No plaintext personal data anywhere tidemill writes.

The repository's `transactions` pipeline runs on generated payments (with records that
are ragged, badly encoded, mistyped or repeated, and a backfill that re-reads the
landing files), then every byte of the state folder but the landing files and the key
(the DuckDB file and its WAL, every table read back through SQL, the snapshot, every
model artifact, decompressed when compressed), the captured logs and console output,
and, run as Prefect flows, the server's artifacts, logs, events, flow runs and database
file are searched for every generated name, e-mail address and card number: zero hits.
The same run without `pii` must hit, and a value planted in each kind of place must be
found, or the scan proves nothing.
"""

from __future__ import annotations

import asyncio
import bz2
import csv
import functools
import gzip
import io
import logging
import lzma
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import joblib
import numpy as np
import polars as pl
import pytest

from tidemill.config.load import TidemillConfig, load_config
from tidemill.deployments.owner import commands
from tidemill.flows.engine.backfill import run_backfill
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.keys import get_key
from tidemill.tasks.records.pii import pseudonym
from tidemill.tasks.synthetic.flights import landing_rows
from tidemill.tasks.synthetic.transactions import EVENT_COLUMNS, transaction_events
from tidemill.warehouse.connection import open_readonly
from tidemill.warehouse.encryption import key_for

REPO = Path(__file__).parents[2]
PIPELINE = "transactions"
KINDS = ("name", "email", "card_number")
ENCODINGS = ("utf-8", "utf-16-le", "utf-32-le")  # numpy keeps text as UTF-32 in arrays
DAY = timedelta(days=1)


# ------------------------------------------------------------------ the data


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    """Three days of payments by 80 customers, as the replayer would land them (text)."""
    frame = transaction_events(days=3, per_day=250, n_customers=80, n_merchants=30, seed=11)
    return landing_rows(frame, EVENT_COLUMNS)


def needles(events: pl.DataFrame) -> dict[str, list[str]]:
    """Every plaintext personal value that was landed, per kind."""
    return {kind: sorted(set(events[kind].to_list())) for kind in KINDS}


def bad_people(events: pl.DataFrame) -> list[dict[str, str]]:
    """The customers whose records `bad_records` spoils, in its order."""
    return events.unique("email", keep="first", maintain_order=True).head(6).rows(named=True)


def bad_records(events: pl.DataFrame) -> bytes:
    """A landing file of records the reader or the validator rejects (or has to unquote),
    each carrying a real customer's name, e-mail and card number."""
    people = bad_people(events)
    header = ",".join(EVENT_COLUMNS).encode()
    out = [header]

    def line(i: int, person: dict[str, str], **change: str) -> bytes:
        row = {**person, "id": str(900_000 + i), **change}
        text = io.StringIO()
        csv.writer(text, lineterminator="").writerow([row[c] for c in EVENT_COLUMNS])
        return text.getvalue().encode()

    a, b, c, d, e, f = people
    first, last = a["name"].split(" ", 1)
    out.append(line(0, a).replace(a["name"].encode(), f"{last}, {first}".encode()))  # ragged
    out.append(line(1, b, merchant=b["merchant"] + "\xff").replace("ÿ".encode(), b"\xff"))
    out.append(line(2, c, amount="n/a"))  # mistyped: fields known, value rejected
    out.append(line(3, d, ts="yesterday"))
    out.append(line(4, e, name=f'{e["name"].split()[1]}, "{e["name"].split()[0]}"'))  # quoted
    out.append(line(5, f, id=f["id"]))  # a repeated key
    out.append(line(6, f, fraud="maybe"))  # an unknown class
    return b"\n".join(out) + b"\n"


def pipeline_config(
    tmp_path: Path, *, protected: bool, encrypted: bool = True, batch_rows: int = 200
) -> TidemillConfig:
    """The repository's config, state in `tmp_path`, a snapshot after every commit;
    `protected=False` is the control: the same pipeline without `pii` and `subject`;
    `encrypted=False` keeps the warehouse in plaintext (encryption is on by default)."""
    text = (
        (REPO / "tidemill.toml")
        .read_text()
        .replace("batch_rows = 500", f"batch_rows = {batch_rows}")
        .replace("[state]\n", f"[state]\nencryption = {str(encrypted).lower()}\n")
        .replace("[pipelines.", "[serving]\nsnapshot_every_seconds = 0.01\n\n[pipelines.", 1)
    )
    if not protected:
        text = re.sub(r"(?m)^(pii|subject) = .*$", "", text)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tidemill.toml").write_text(text)
    config = load_config(tmp_path / "tidemill.toml")
    assert bool(config.pipeline(PIPELINE).pii) == protected
    return config


def landing(config: TidemillConfig) -> Path:
    folder = Path(config.pipeline(PIPELINE).source.path).parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def land_days(config: TidemillConfig, events: pl.DataFrame, first: int, last: int) -> None:
    """Land days [first, last) of `events`, a file per 150 rows, like the replayer."""
    start = datetime.fromisoformat(events["ts"][0][:10])
    ts = pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ")
    window = events.filter((ts >= start + first * DAY) & (ts < start + last * DAY))
    for i, chunk in enumerate(window.iter_slices(150)):
        chunk.write_csv(landing(config) / f"transactions-d{first}-{i:03d}.csv")


def window_of_day(events: pl.DataFrame, day: int) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(events["ts"][0][:10]) + day * DAY
    return start, start + DAY


def drain(runtime: Runtime) -> int:
    batches = 0
    while run_cycle(runtime, PIPELINE, drain=True).status == "committed":
        batches += 1
    return batches


# ------------------------------------------------------------------ the scan


@functools.cache
def pattern(values: tuple[str, ...], encoding: str) -> re.Pattern[bytes]:
    """One regular expression matching any of `values` (encoded), built as a trie so a
    file is searched in one pass instead of once per value."""
    trie: dict[int, dict] = {}
    for value in values:
        node = trie
        for byte in value.encode(encoding):
            node = node.setdefault(byte, {})
        node[-1] = {}

    def build(node: dict[int, dict]) -> bytes:
        branches = [
            re.escape(bytes([b])) + build(child) for b, child in sorted(node.items()) if b != -1
        ]
        if not branches:
            return b""
        body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
        return b"(?:" + body + b")?" if -1 in node else body

    return re.compile(build(trie))


@dataclass
class Place:
    """What one place held: bytes searched and hits per kind of personal value."""

    name: str
    scanned: int = 0
    hits: Counter[str] = field(default_factory=Counter)

    def search(
        self, data: bytes, found: dict[str, list[str]], encodings: tuple[str, ...] = ("utf-8",)
    ) -> None:
        self.scanned += len(data)
        for kind, values in found.items():
            for encoding in encodings:
                self.hits[kind] += len(pattern(tuple(values), encoding).findall(data))

    @property
    def total(self) -> int:
        return sum(self.hits.values())


def decompressed(data: bytes) -> bytes | None:
    """`data` inflated when it starts like zlib, gzip, bz2 or xz (joblib's compressors)."""
    for magic, inflate in (
        (b"\x1f\x8b", gzip.decompress),
        (b"BZh", bz2.decompress),
        (b"\xfd7zXZ\x00", lzma.decompress),
        (b"\x78", zlib.decompress),
    ):
        if data.startswith(magic):
            try:
                return inflate(data)
            except (OSError, ValueError, EOFError, zlib.error, lzma.LZMAError):
                return None
    return None


def sql_text(database: Path, state_dir: Path) -> bytes:
    """Every value of every table (and every comment) of a DuckDB file of `state_dir`, as
    text (an encrypted one opened with the folder's key)."""
    parts: list[str] = []
    with open_readonly(database.resolve(), key_for(database.resolve(), state_dir)) as con:
        tables = con.sql(
            "SELECT database_name, schema_name, table_name, comment FROM duckdb_tables()"
        ).fetchall()
        for db, schema, table, comment in tables:
            parts.append(str(comment))
            rows = con.sql(f'SELECT * FROM "{db}"."{schema}"."{table}"').fetchall()
            parts += ["\x1f".join(map(str, row)) for row in rows]
        parts += [str(c) for (c,) in con.sql("SELECT comment FROM duckdb_columns()").fetchall()]
    return "\n".join(parts).encode()


def scan_state(state_dir: Path, found: dict[str, list[str]]) -> list[Place]:
    """Search everything under `state_dir` but the landing files and the key folder."""
    database, snapshot = state_dir / "warehouse.duckdb", state_dir / "snapshot.duckdb"
    places = {
        "warehouse file + WAL (bytes)": Place("warehouse file + WAL (bytes)"),
        "warehouse tables (SQL)": Place("warehouse tables (SQL)"),
        "snapshot file (bytes)": Place("snapshot file (bytes)"),
        "snapshot tables (SQL)": Place("snapshot tables (SQL)"),
        "model artifacts": Place("model artifacts"),
        "other state files": Place("other state files"),
    }
    places["warehouse tables (SQL)"].search(sql_text(database, state_dir), found)
    places["snapshot tables (SQL)"].search(sql_text(snapshot, state_dir), found)
    for path in sorted(p for p in state_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(state_dir).parts
        if relative[0] in ("landing", "keys"):
            continue
        data = path.read_bytes()
        if path.name.startswith("warehouse.duckdb"):
            places["warehouse file + WAL (bytes)"].search(data, found)
        elif path.name.startswith("snapshot.duckdb"):  # the link and snapshots/N/
            places["snapshot file (bytes)"].search(data, found)
        elif relative[0] == "artifacts":
            places["model artifacts"].search(data, found, ENCODINGS)
            inflated = decompressed(data)
            if inflated is not None:
                places["model artifacts"].search(inflated, found, ENCODINGS)
        else:
            places["other state files"].search(data, found, ENCODINGS)
    return list(places.values())


class Captured(logging.Handler):
    """Every log record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs() -> Iterator[Captured]:
    handler = Captured()
    loggers = [logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("tidemill")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def table(rows: list[tuple[str, int, int, int | str, int | str]]) -> str:
    lines = [
        f"{'place':34} {'bytes scanned':>14} {'hits (pii)':>10} {'no pii':>8} "
        f"{'no pii, plaintext':>17}"
    ]
    lines += [f"{p:34} {n:>14,} {h:>10} {c:>8} {u:>17}" for p, n, h, c, u in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ the runs


def run_direct(config: TidemillConfig, events: pl.DataFrame) -> int:
    """Live batches, a backfill (with a retrained candidate) of a day the live cycle has
    not read yet, then that day's files read live (their keys: already stored)."""
    runtime = Runtime.open(config)
    try:
        land_days(config, events, 0, 2)
        (landing(config) / "bad.csv").write_bytes(bad_records(events))
        batches = drain(runtime)
        # a person corrects a mistyped record and retypes its e-mail address in plaintext
        mistyped = bad_people(events)[2]
        (qid,) = runtime.con.sql(
            f"SELECT quarantine_id FROM raw.{PIPELINE}_quarantine WHERE _line = 4 AND _file LIKE '%bad.csv'"
        ).fetchall()[0]
        fix = {"id": qid, "changes": {"amount": "12.50", "email": mistyped["email"]}}
        readmit = commands(runtime)["readmit"]
        assert readmit({"pipeline": PIPELINE, "fixes": [fix], "actor": "t"})["readmitted"] == [qid]
        batches += drain(runtime)
        stored = runtime.con.sql(f"SELECT email FROM raw.{PIPELINE} WHERE id = '900002'")
        if config.pipeline(PIPELINE).pii:  # as its pseudonym, like the file's records
            key = get_key(config.state_dir, "pii")
            assert stored.fetchall() == [(pseudonym(key, mistyped["email"]),)]
        land_days(config, events, 2, 3)
        start, end = window_of_day(events, 2)
        report = run_backfill(runtime, PIPELINE, start, end, retrain=True, requested_by="test")
        assert report.rows_inserted == report.rows_in_window > 150
        assert report.candidate_version is not None
        batches += drain(runtime)
        quarantined = runtime.con.sql(f"SELECT count(*) FROM raw.{PIPELINE}_quarantine").fetchall()
        assert quarantined[0][0] >= report.rows_inserted + 6  # the day read twice, bad records
    finally:
        runtime.close()
    return batches


def test_no_plaintext_personal_data_in_the_warehouse_snapshot_artifacts_or_logs(
    tmp_path: Path,
    events: pl.DataFrame,
    captured_logs: Captured,
    capfd: pytest.CaptureFixture[str],
) -> None:
    found = needles(events)
    assert all(len(v) > 50 for v in found.values())
    protected = pipeline_config(tmp_path / "pii", protected=True)
    assert run_direct(protected, events) >= 4
    places = scan_state(protected.state_dir, found)
    logs = Place("logs (every logger)")
    logs.search("\n".join(captured_logs.lines).encode(), found)
    out, err = capfd.readouterr()
    console = Place("stdout + stderr")
    console.search((out + err).encode(), found)
    places += [logs, console]
    captured_logs.lines.clear()

    control = pipeline_config(tmp_path / "control", protected=False)
    run_direct(control, events)
    control_places = {p.name: p for p in scan_state(control.state_dir, found)}
    plaintext = pipeline_config(tmp_path / "plaintext", protected=False, encrypted=False)
    run_direct(plaintext, events)
    plain_places = {p.name: p for p in scan_state(plaintext.state_dir, found)}

    rows = [
        (
            p.name,
            p.scanned,
            p.total,
            control_places[p.name].total if p.name in control_places else "-",
            plain_places[p.name].total if p.name in plain_places else "-",
        )
        for p in places
    ]
    print("\n" + table(rows))
    assert {p.name: dict(p.hits) for p in places if p.total} == {}
    # the same run without `pii` stores all three kinds whole: SQL finds them ...
    leaked = control_places["warehouse tables (SQL)"].hits
    assert all(leaked[kind] > 0 for kind in KINDS), leaked
    assert control_places["snapshot tables (SQL)"].total > 0
    # ... and, encrypted at rest (the default), not one is in the bytes of any file
    in_bytes = {n: dict(p.hits) for n, p in control_places.items() if "SQL" not in n and p.total}
    assert in_bytes == {}
    # in plaintext, the same bytes hold them: the byte scan can see what encryption hides
    assert plain_places["warehouse file + WAL (bytes)"].total > 0
    assert plain_places["snapshot file (bytes)"].total > 0
    # what the protected run stored instead: pseudonyms a subject can be found by
    snapshot = (protected.state_dir / "snapshot.duckdb").resolve()
    with open_readonly(snapshot, key_for(snapshot, protected.state_dir)) as con:
        stored = con.sql(f"SELECT DISTINCT email FROM raw.{PIPELINE}").fetchall()
        raws = con.sql(f"SELECT raw_text FROM raw.{PIPELINE}_quarantine").fetchall()
    assert all(re.fullmatch(r"[0-9a-f]{32}", e) for (e,) in stored)
    assert any("************" in r for (r,) in raws)


def test_the_scan_finds_a_value_planted_in_each_kind_of_place(tmp_path: Path) -> None:
    """Compressed artifacts, numpy text, FSST-compressed DuckDB strings, deleted rows,
    log files: a planted e-mail is found in each."""
    value = "planted.canary42@example.com"
    found = {"email": [value]}
    state = tmp_path / "state"
    (state / "artifacts" / PIPELINE).mkdir(parents=True)
    (state / "logs").mkdir()
    joblib.dump({"vocab": [value]}, state / "artifacts" / PIPELINE / "plain.joblib")
    joblib.dump(
        {"vocab": np.array([value])}, state / "artifacts" / PIPELINE / "np.joblib", compress=3
    )
    (state / "logs" / "worker.log").write_text(f"INFO something about {value}\n")
    for name in ("warehouse.duckdb", "snapshot.duckdb"):
        with duckdb.connect(str(state / name)) as con:
            con.sql(
                "CREATE TABLE t AS SELECT 'user' || i || '@example.org' AS email FROM range(100000) r(i)"
            )
            con.execute("INSERT INTO t VALUES (?)", [value])
    hits = {p.name: p.total for p in scan_state(state, found)}
    assert hits["model artifacts"] == 2 and hits["other state files"] == 1
    assert hits["warehouse tables (SQL)"] == 1 and hits["snapshot tables (SQL)"] == 1
    (state / "keys").mkdir()
    (state / "keys" / "note").write_text(value)  # the key folder and landing are not searched
    assert {p.name: p.total for p in scan_state(state, found)} == hits


# ------------------------------------------------------------------ as Prefect runs


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def prefect_places(found: dict[str, list[str]]) -> list[Place]:
    """What the Prefect server holds: every artifact, log, event and flow run through its
    API (raw JSON), and its database file."""
    import httpx
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL

    APILogWorker.drain_all(timeout=15, at_exit=False)
    EventsWorker.drain_all(timeout=15, at_exit=False)
    api = str(PREFECT_API_URL.value())
    places = []
    for name, path, body in (
        ("Prefect artifacts (API)", "/artifacts/filter", {}),
        ("Prefect logs (API)", "/logs/filter", {}),
        ("Prefect flow runs (API)", "/flow_runs/filter", {}),
    ):
        place = Place(name)
        offset = 0
        while True:
            reply = httpx.post(
                f"{api}{path}", json={**body, "limit": 200, "offset": offset}, timeout=30
            )
            reply.raise_for_status()
            place.search(reply.content, found)
            offset += len(reply.json())
            if len(reply.json()) < 200:
                break
        places.append(place)
    events = Place("Prefect events (API)")
    reply = httpx.post(f"{api}/events/filter", json={"limit": 50}, timeout=30)
    reply.raise_for_status()
    while True:
        events.search(reply.content, found)
        following = reply.json().get("next_page")
        if not following:
            break
        reply = httpx.get(following, timeout=30)
        reply.raise_for_status()
    places.append(events)
    database = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split("///", 1)[1])
    files = Place("Prefect database file (bytes)")
    for path in database.parent.glob(database.name + "*"):
        files.search(path.read_bytes(), found)
    return [*places, files]


@pytest.mark.slow
def test_prefect_runs_leave_no_plaintext_in_artifacts_logs_events_or_database(
    harness: None,
    tmp_path: Path,
    events: pl.DataFrame,
    captured_logs: Captured,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prefect import flow, get_run_logger
    from prefect.artifacts import create_markdown_artifact

    from tidemill.flows.backfill import backfill
    from tidemill.flows.engine.runtime import install
    from tidemill.flows.erasure import erasure_flow
    from tidemill.flows.micro_batch import micro_batch
    from tidemill.tasks.records.pii import subject_digest, subject_value

    def flow_batches() -> int:
        """Scheduled-like runs until one finds nothing to do; how many committed."""
        runs = 0
        while asyncio.run(micro_batch(PIPELINE))["status"] == "committed":
            runs += 1
        return runs

    found = needles(events)
    config = pipeline_config(tmp_path, protected=True)
    runtime = Runtime.open(config)
    install(runtime)
    try:
        land_days(config, events, 0, 2)
        (landing(config) / "bad.csv").write_bytes(bad_records(events))
        assert flow_batches() >= 2
        land_days(config, events, 2, 3)
        start, end = window_of_day(events, 2)
        done = asyncio.run(backfill(PIPELINE, start, end, retrain=True))
        assert done["rows_inserted"] == done["rows_in_window"] > 150
        assert flow_batches() >= 1
        # the erasure flow: its run (parameters in Prefect's database) holds a digest only
        email = found["email"][0]
        key = get_key(config.state_dir, "pii")
        digest = subject_digest(key, subject_value(config.pipeline(PIPELINE), email, key))
        erased = asyncio.run(erasure_flow(PIPELINE, digest, requested_by="dpo@test"))
        assert erased["found"] and erased["rows_raw"] > 0 and erased["file_rewritten"]
        assert asyncio.run(erasure_flow(PIPELINE, digest, requested_by="dpo@test")) == {
            "pipeline": PIPELINE,
            "found": False,
        }
    finally:
        install(None)
        runtime.close()
    places = [*prefect_places(found), *scan_state(config.state_dir, found)]
    logs = Place("logs (every logger)")
    logs.search("\n".join(captured_logs.lines).encode(), found)
    out, err = capfd.readouterr()
    console = Place("stdout + stderr")
    console.search((out + err).encode(), found)
    places += [logs, console]
    print("\n" + table([(p.name, p.scanned, p.total, "-", "-") for p in places]))
    assert places[0].scanned > 1000 and places[1].scanned > 1000  # artifacts and logs exist
    assert {p.name: dict(p.hits) for p in places if p.total} == {}

    # the Prefect side of the scan sees a value that does reach it
    planted = found["email"][0]

    @flow(name="canary")
    def canary() -> None:
        get_run_logger().info("about %s", planted)
        create_markdown_artifact(f"# {planted}", key="canary")

    canary()
    again = {p.name: p.total for p in prefect_places({"email": [planted]})}
    assert again["Prefect artifacts (API)"] >= 1 and again["Prefect logs (API)"] >= 1
    assert again["Prefect database file (bytes)"] >= 2
