"""Chaos: the live stack stores every record exactly once while it is being broken.

The real stack (`tidemill.deployments.stack.stack.up`: PostgreSQL, the Prefect server, the supervisor
and the worker, which executes the scheduled runs in-process) runs the default flights
pipeline, challengers included, with a 1 s cadence and 20-record batches. The test feeds
its landing folder and, spread over the run, at random moments:

- worker_kill: SIGKILLs the worker (mid-ingest, mid-learning, mid-commit, at start-up);
- server_kill: SIGKILLs the Prefect server's process group;
- disk_full: fills the state disk for 2-4 s (see `StateDisk` for how);
- corrupt_new: lands a file whose last 4 KiB are random bytes;
- corrupt_seen: overwrites the last 4 KiB of a stored file in place with random bytes.

The test never restarts anything: the supervisor must. A flow run catches up on several
batches while a backlog waits, which is how hundreds of batches fit in a couple of
minutes at a 1 s cadence. Afterwards, on the warehouse file:
every intact record is in raw.P exactly once, no damaged or invented one is, the
damage is in quarantine with its reasons; the champion's rows_seen equals the labelled
records, learned once each along its lineage; after the janitor's sweep, registry rows
and artifact files match 1:1 (hashes checked); ml.batch_metrics has one row per
(batch, candidate, metric) for every learning batch after the first; and the pipeline
caught up by itself after the last fault.

`make test` runs CHAOS_BATCHES=100 (about 60 s on 2 idle cores); `make chaos` runs 2000
and writes its summary to tests/chaos/results.txt. CHAOS_SEED picks other moments.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import polars as pl
import pytest

from tidemill.cli.access import read_live
from tidemill.config.load import TidemillConfig, load_config
from tidemill.data import load_flights
from tidemill.deployments.stack import processes, stack
from tidemill.deployments.stack.prefect_server import MARKER as SERVER_MARKER
from tidemill.deployments.stack.prefect_server import NAME as SERVER_NAME
from tidemill.deployments.stack.prefect_server import is_healthy
from tidemill.deployments.stack.supervisor import read_status
from tidemill.errors import TidemillError
from tidemill.settings import get_settings
from tidemill.tasks.synthetic.flights import flight_events, landing_rows
from tidemill.warehouse.artifacts import sha256_of
from tidemill.warehouse.connection import open_readonly
from tidemill.warehouse.encryption import key_for
from tidemill.warehouse.retention import sweep_artifacts

REPO = Path(__file__).parents[2]
BATCHES = int(os.environ.get("CHAOS_BATCHES", "100"))
SEED = int(os.environ.get("CHAOS_SEED", "20240611"))
BATCH_ROWS = 20
FEED_ROWS_PER_SECOND = 150.0
MAX_LAG_BATCHES = 20  # most batches' worth of written records waiting to be stored
RESUME_TIMEOUT = 150.0

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(300 + BATCHES)]


PAGE = 4096
"""A landing file's last page: the bytes a torn or rotted write damages."""


def utc_now() -> datetime:
    """Naive UTC, as the warehouse stamps `_batches.started_at`."""
    return datetime.now(UTC).replace(tzinfo=None)


# ------------------------------------------------------------------ the state disk


@dataclass
class StateDisk:
    """The state folder, on a size-limited tmpfs when this process may mount one.

    `fill()` makes every write to it fail until `free()`: with the tmpfs, a ballast file
    takes the last free byte (ENOSPC for the worker, the supervisor, the logs); without
    mount rights, RLIMIT_FSIZE of 1 byte on the worker makes its writes fail with EFBIG
    (the same error paths in the worker).
    """

    path: Path
    size_mb: int
    mounted: bool
    _limited: int | None = None

    @property
    def how(self) -> str:
        if self.mounted:
            return f"a {self.size_mb} MiB tmpfs filled by a ballast file (ENOSPC)"
        return "RLIMIT_FSIZE = 1 byte on the worker (EFBIG; no mount rights here)"

    def fill(self, worker_pid: int | None) -> str:
        """Make the disk full; returns what was done."""
        if self.mounted:
            written = 0
            # unbuffered: a buffered file would fail again in close()
            ballast = os.open(self.path / "ballast", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                for chunk in (4 << 20, 64 << 10, 4 << 10, 512, 1):
                    block = bytes(chunk)
                    while True:
                        try:
                            written += os.write(ballast, block)
                        except OSError as error:
                            assert error.errno == errno.ENOSPC, error
                            break
            finally:
                os.close(ballast)
            return f"ballast {written >> 20} MiB"
        if worker_pid is None:
            return "no worker to limit"
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(worker_pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            self._limited = worker_pid
        return f"RLIMIT_FSIZE=1 on pid {worker_pid}"

    def free(self) -> None:
        if self.mounted:
            (self.path / "ballast").unlink(missing_ok=True)
        elif self._limited is not None:
            infinity = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            with contextlib.suppress(ProcessLookupError):  # it may have died meanwhile
                resource.prlimit(self._limited, resource.RLIMIT_FSIZE, infinity)
            self._limited = None


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def state_disk(tmp_path: Path) -> Iterator[StateDisk]:
    """`tmp_path/state` on its own tmpfs if this process may mount one (unmounted
    afterwards). The Prefect server's PostgreSQL keeps its data on the ordinary disk
    (a bind mount at state/postgres), as a remote database would: a full state disk
    then stops tidemill's own writes while runs keep being scheduled."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)  # private, as tidemill requires of a state folder
    size_mb = 512
    mounted = os.geteuid() == 0 and _mount(
        "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)
    )
    database = path / "postgres"
    if mounted:
        (tmp_path / "postgres").mkdir(mode=0o700)
        database.mkdir(mode=0o700)
        assert _mount("--bind", str(tmp_path / "postgres"), str(database))
    disk = StateDisk(path, size_mb, mounted)
    try:
        yield disk
    finally:
        disk.free()
        if mounted:
            # keep the logs for a failed run, then release the memory
            subprocess.run(["cp", "-r", str(path / "logs"), str(tmp_path / "logs")], check=False)
            subprocess.run(["umount", "-l", str(database)], check=False)
            subprocess.run(["umount", "-l", str(path)], check=False)


# ------------------------------------------------------------------ the landing folder


@dataclass
class Written:
    """One landing file the test wrote: its records and which of them it damaged."""

    path: Path
    ids: list[str]
    labelled: set[str]  # ids of the records with a label (`late` not empty)
    corrupted: set[str] = field(default_factory=set)  # ids whose line overlaps the last page
    first_bad_line: int | None = None  # line number (1 = header) where the damage starts
    rotted: bool = False  # damaged in place after it was stored


def _damage_last_page(data: bytearray, rng: random.Random) -> int:
    """Overwrite the last PAGE bytes with random ones; returns the first byte that changed
    (a random byte equal to the old one damages nothing)."""
    start = max(0, len(data) - PAGE)
    old = bytes(data[start:])
    data[start:] = rng.randbytes(len(old))
    changed = (i for i, (a, b) in enumerate(zip(old, data[start:], strict=True)) if a != b)
    first = next(changed, None)
    return len(data) if first is None else start + first


def _lines_from(data: bytes, offset: int) -> tuple[int, int]:
    """(line number, header = 1, of the byte at `offset`; index of that line's record)."""
    line = data[:offset].count(b"\n") + 1
    return line, line - 2


class Landing:
    """Writes the flights records, in order, as CSV files renamed into place."""

    def __init__(self, folder: Path, rows: pl.DataFrame, seed: int) -> None:
        self.folder = folder
        self.rows = rows
        self.next_row = 0
        self.files: list[Written] = []
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def rows_written(self) -> int:
        return self.next_row

    def write(self, n: int, *, corrupt: bool = False) -> Written:
        """The next `n` records as a new file (its last page damaged when `corrupt`)."""
        with self.lock:
            frame = self.rows.slice(self.next_row, n)
            self.next_row += frame.height
            path = self.folder / f"part-{len(self.files):05d}.csv"
            data = bytearray(frame.write_csv().encode())
            written = Written(
                path,
                frame["id"].cast(pl.String).to_list(),
                set(frame.filter(pl.col("late").is_not_null())["id"].cast(pl.String)),
            )
            if corrupt:
                self._mark(written, data, _damage_last_page(data, self.rng))
            hidden = path.with_name(f".{path.name}.tmp")  # not matched by *.csv
            hidden.write_bytes(bytes(data))
            hidden.replace(path)
            self.files.append(written)
            return written

    def rot(self, written: Written) -> None:
        """Damage the last page of a file already read, in place (same size)."""
        with self.lock:
            data = bytearray(written.path.read_bytes())
            start = _damage_last_page(data, self.rng)
            with written.path.open("r+b") as rotting:  # in place: no truncation
                rotting.seek(start)
                rotting.write(data[start:])
            written.rotted = True
            line, _ = _lines_from(bytes(data), start)
            written.first_bad_line = line

    @staticmethod
    def _mark(written: Written, data: bytearray, start: int) -> None:
        line, index = _lines_from(bytes(data), start)
        written.first_bad_line = line
        written.corrupted = set(written.ids[max(0, index) :])

    def sha256(self, written: Written) -> str:
        return hashlib.sha256(written.path.read_bytes()).hexdigest()


class Feeder(threading.Thread):
    """Writes a file of 20-120 records at about `rows_per_second` until stopped, while
    fewer than `max_lag` written records wait to be stored (so an outage leaves a
    bounded backlog); `corrupt_next()` makes the next one a damaged file of
    `corrupt_rows` records."""

    def __init__(
        self,
        landing: Landing,
        probe: Probe,
        rows_per_second: float,
        max_lag: int,
        corrupt_rows: int = 150,
    ) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.landing = landing
        self.probe = probe
        self.rate = rows_per_second
        self.max_lag = max_lag
        self.corrupt_rows = corrupt_rows
        self.stopping = threading.Event()
        self._corrupt = threading.Event()
        self.corrupted: list[Written] = []
        self.error: BaseException | None = None

    def corrupt_next(self) -> None:
        self._corrupt.set()

    def run(self) -> None:
        stored = 0
        try:
            while not self.stopping.is_set():
                corrupt = self._corrupt.is_set()
                now = self.probe.one(
                    "SELECT (SELECT count(*) FROM raw.flights) "
                    "+ (SELECT count(*) FROM raw.flights_quarantine)"
                )
                stored = stored if now is None else int(str(now))  # None: the worker is down
                if not corrupt and self.landing.rows_written - stored >= self.max_lag:
                    self.stopping.wait(0.2)
                    continue
                n = self.corrupt_rows if corrupt else self.landing.rng.randint(20, 120)
                written = self.landing.write(n, corrupt=corrupt)
                assert len(written.ids) == n, "the test ran out of flights"
                if corrupt:
                    self._corrupt.clear()
                    self.corrupted.append(written)
                self.stopping.wait(n / self.rate)
        except BaseException as error:  # surfaced by the test
            self.error = error


# ------------------------------------------------------------------ the worker


class Probe:
    """Asks the running worker (live, over Quack) how far the pipeline is."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def one(self, sql: str) -> object | None:
        """The first value of `sql`, None while no worker answers."""
        try:
            result = read_live(self.state_dir, sql)
        except (OSError, TidemillError):  # no owner, or not yet the tables
            return None
        return result.rows[0][0] if result.rows else None

    def committed(self) -> int | None:
        value = self.one("SELECT count(*) FROM _batches WHERE status = 'committed'")
        return None if value is None else int(str(value))

    def first_commit_after(self, moment: datetime, timeout: float) -> datetime | None:
        """When the first batch started after `moment` committed (None: not in time)."""
        deadline = time.monotonic() + timeout
        sql = (
            "SELECT min(finished_at) FROM _batches WHERE status = 'committed' "
            f"AND started_at > TIMESTAMP '{moment.isoformat(sep=' ')}'"
        )
        while time.monotonic() < deadline:
            found = self.one(sql)
            if found is not None:  # JSON carries it as text
                return datetime.fromisoformat(str(found))
            time.sleep(0.2)
        return None


# ------------------------------------------------------------------ the scenario


def _toml(value: Any) -> str:
    """`value` as a TOML value (inline tables and arrays)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _chaos_config(root: Path, landing: Path, state: Path) -> TidemillConfig:
    """The repository's flights pipeline alone, at a 1 s cadence with small batches."""
    flights = tomllib.loads((REPO / "tidemill.toml").read_text())["pipelines"]["flights"]
    flights["source"] = {**flights["source"], "path": f"{landing}/*.csv", "settle_seconds": 0}
    flights.update(batch_rows=BATCH_ROWS, every_seconds=1)
    # a snapshot copies the whole file: after every one of hundreds of quick batches it
    # would be most of the work (published every 2 s, faults included)
    lines = [
        f'[state]\ndir = "{state.name}"\n',
        "[serving]\nsnapshot_every_seconds = 2\n",
        "[pipelines.flights]",
    ]
    lines += [f"{key} = {_toml(value)}" for key, value in flights.items()]
    path = root / "tidemill.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@dataclass
class Fault:
    kind: str
    detail: str
    resume_s: float | None  # fault over -> first batch started after it committed


class Chaos:
    """The faults, injected into the running stack of `config`."""

    def __init__(
        self, config: TidemillConfig, port: int, disk: StateDisk, landing: Landing, feeder: Feeder
    ) -> None:
        self.config = config
        self.state = config.state_dir
        self.port = port
        self.disk = disk
        self.landing = landing
        self.feeder = feeder
        self.probe = feeder.probe
        self.rng = random.Random(SEED)
        self.faults: list[Fault] = []

    def worker_pid(self, timeout: float = RESUME_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while (pid := processes.running(self.state, *stack.WORKER)) is None:
            assert time.monotonic() < deadline, (
                "no worker running: the supervisor did not start one"
            )
            time.sleep(0.1)
        return pid

    def _resumed(self, kind: str, detail: str, since: datetime, over: float) -> None:
        """Record `kind`, resumed when a batch started after `since` commits."""
        committed = self.probe.first_commit_after(since, RESUME_TIMEOUT)
        resume = None if committed is None else time.monotonic() - over
        self.faults.append(Fault(kind, detail, resume))
        assert committed is not None, f"{kind} ({detail}): no batch within {RESUME_TIMEOUT:g} s"

    def worker_kill(self) -> None:
        pid = self.worker_pid()
        time.sleep(self.rng.uniform(0.0, 1.5))  # anywhere in a batch, or between two
        since, over = utc_now(), time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._resumed("worker_kill", f"pid {pid}", since, over)
        assert self.worker_pid() != pid

    def server_kill(self) -> None:
        pid = processes.running(self.state, SERVER_NAME, SERVER_MARKER)
        assert pid is not None, "no Prefect server running"
        worker = self.worker_pid()
        time.sleep(self.rng.uniform(0.0, 1.0))
        over = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + RESUME_TIMEOUT
        while processes.running(self.state, SERVER_NAME, SERVER_MARKER) in (
            None,
            pid,
        ) or not is_healthy(self.port):
            assert time.monotonic() < deadline, "the Prefect server was not restarted"
            time.sleep(0.2)
        self._resumed("server_kill", f"pid {pid}", utc_now(), over)
        assert self.worker_pid() == worker, "the worker did not survive the server's outage"

    def disk_full(self) -> None:
        hold = self.rng.uniform(2.0, 4.0)
        detail = self.disk.fill(processes.running(self.state, *stack.WORKER))
        try:
            time.sleep(hold)
        finally:
            self.disk.free()
        self._resumed("disk_full", f"{detail} for {hold:.1f} s", utc_now(), time.monotonic())

    def corrupt_new(self) -> None:
        done = len(self.feeder.corrupted)
        self.feeder.corrupt_next()
        while len(self.feeder.corrupted) == done and self.feeder.is_alive():
            time.sleep(0.05)
        assert len(self.feeder.corrupted) > done, "the feeder stopped before the damaged file"
        written = self.feeder.corrupted[-1]
        detail = f"{written.path.name}: {len(written.corrupted)} of {len(written.ids)} records"
        self.faults.append(Fault("corrupt_new", detail, None))

    def corrupt_seen(self) -> None:
        """Damage a file every record of which is stored already."""
        deadline = time.monotonic() + RESUME_TIMEOUT
        while time.monotonic() < deadline:
            for written in reversed(self.landing.files[:-1]):
                if written.corrupted or written.rotted or written.path.stat().st_size < PAGE + 1024:
                    continue  # a damaged last page leaves records intact, read again
                path = os.path.abspath(written.path)
                stored = self.probe.one(f"SELECT count(*) FROM raw.flights WHERE _file = '{path}'")
                if stored is None:  # the worker is restarting: ask again
                    break
                if stored == len(written.ids):
                    self.landing.rot(written)
                    self.faults.append(Fault("corrupt_seen", written.path.name, None))
                    return
            time.sleep(0.5)
        pytest.fail("no fully stored landing file to damage")


def _plan(rng: random.Random) -> list[str]:
    """The faults of a run of BATCHES batches, in a random order."""
    few = max(1, BATCHES // 400)
    kinds = ["worker_kill"] * max(4, BATCHES // 80)
    kinds += ["server_kill", "disk_full", "corrupt_new", "corrupt_seen"] * few
    rng.shuffle(kinds)
    return kinds


def _wait_committed(probe: Probe, at_least: int, feeder: Feeder) -> None:
    """Until `at_least` batches are committed; fails when none commits for RESUME_TIMEOUT
    (a slow machine is no failure, a stalled pipeline is)."""
    last, moved = -1, time.monotonic()
    while (now := probe.committed()) is None or now < at_least:
        assert feeder.error is None, f"the feeder failed: {feeder.error!r}"
        if now is not None and now > last:
            last, moved = now, time.monotonic()
        stalled = time.monotonic() - moved
        assert stalled < RESUME_TIMEOUT, f"no batch for {stalled:.0f} s ({last} of {at_least})"
        time.sleep(0.2)


def _caught_up(probe: Probe, landing: Landing) -> bool:
    """Every landing file's current bytes read and every record out of the inbox."""
    if probe.one("SELECT count(*) FROM raw.flights_inbox") != 0:
        return False
    read = probe.one("SELECT list(sha256) FROM _files WHERE pipeline = 'flights'")
    return isinstance(read, list) and {landing.sha256(w) for w in landing.files} <= set(read)


def _run_states(port: int) -> dict[str, int]:
    """How many micro-batch runs the Prefect server holds in each final state."""
    counts = {}
    for state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        reply = httpx.post(
            f"http://127.0.0.1:{port}/api/flow_runs/count",
            json={
                "flows": {"name": {"any_": ["micro-batch"]}},
                "flow_runs": {"state": {"type": {"any_": [state]}}},
            },
            timeout=10,
        )
        reply.raise_for_status()
        counts[state.lower()] = int(reply.json())
    return counts


def _stuck_runs(port: int) -> int:
    """micro-batch runs still Pending/Running a minute after they started."""
    reply = httpx.post(
        f"http://127.0.0.1:{port}/api/flow_runs/filter",
        json={
            "flows": {"name": {"any_": ["micro-batch"]}},
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
            "limit": 200,
        },
        timeout=10,
    )
    reply.raise_for_status()
    old = utc_now() - timedelta(minutes=1)
    return sum(
        1
        for run in reply.json()
        if datetime.fromisoformat(run["start_time"] or run["expected_start_time"]).replace(
            tzinfo=None
        )
        < old
    )


# ------------------------------------------------------------------ the accounting


def _account(
    con: duckdb.DuckDBPyConnection, config: TidemillConfig, files: list[Written]
) -> tuple[dict[str, Any], list[str]]:
    """What the warehouse holds against what was written: counts, and every problem."""
    problems: list[str] = []
    one = lambda sql: con.sql(sql).fetchall()[0][0]  # noqa: E731
    written = {i for w in files for i in w.ids}
    damaged = {i for w in files for i in w.corrupted}
    intact = written - damaged
    raw = Counter(r[0] for r in con.sql("SELECT id FROM raw.flights").fetchall())
    duplicated = sum(n - 1 for n in raw.values() if n > 1)
    lost = intact - set(raw)
    invented = set(raw) - written
    damaged_in = set(raw) & damaged
    reasons = con.sql("SELECT _file, reason FROM raw.flights_quarantine").fetchall()
    quarantined = Counter(f for f, _ in reasons)
    for name, bad in [
        ("duplicated", duplicated),
        ("lost", len(lost)),
        ("not written", len(invented)),
        ("damaged but stored", len(damaged_in)),
        ("quarantined without a reason", sum(1 for _, r in reasons if not r)),
        ("left in the inbox", one("SELECT count(*) FROM raw.flights_inbox")),
        (
            "raw without clean",
            one("SELECT count(*) FROM raw.flights") - one("SELECT count(*) FROM clean.flights"),
        ),
    ]:
        if bad:
            problems.append(f"{bad} records {name}")
    for w in files:
        if (w.corrupted or w.rotted) and not quarantined[os.path.abspath(w.path)]:
            problems.append(f"{w.path.name} was damaged but nothing of it is in quarantine")

    # the model: every labelled record learned once, along the champion's lineage
    labelled = len({i for w in files for i in w.labelled} - damaged)
    if one("SELECT count(*) FROM raw.flights WHERE late IS NOT NULL") != labelled:
        problems.append("raw.flights holds another number of labelled records")
    champion = con.sql(
        "SELECT version, rows_seen FROM ml.model_versions WHERE status = 'champion'"
    ).fetchall()
    batches = dict(
        con.sql("SELECT batch_id, rows_learned FROM _batches WHERE status = 'committed'").fetchall()
    )
    if len(champion) != 1:
        problems.append(f"{len(champion)} champions")
    else:
        version, rows_seen = champion[0]
        parents = dict(
            con.sql("SELECT version, (parent_version, batch_id) FROM ml.model_versions").fetchall()
        )
        lineage: list[int] = []
        while version is not None:
            parent, batch = parents[version]
            lineage.append(batch)
            version = parent
        learned = sum(batches.get(b, 0) for b in lineage)
        if not rows_seen == learned == labelled:
            problems.append(
                f"champion rows_seen {rows_seen}, learned along its lineage {learned}, "
                f"labelled records stored {labelled}"
            )
        if len(set(lineage)) != len(lineage):
            problems.append("a batch appears twice in the champion's lineage")
        if one("SELECT sum(rows_learned) FROM _batches WHERE status = 'committed'") != labelled:
            problems.append("committed batches learned another number of records")

    # the registry: one version per candidate per learning batch, each with its artifact
    candidates = len(config.pipeline("flights").candidates)
    learning = sorted(b for b, n in batches.items() if n)
    per_batch = dict(
        con.sql("SELECT batch_id, count(*) FROM ml.model_versions GROUP BY 1").fetchall()
    )
    if per_batch != dict.fromkeys(learning, candidates):
        problems.append("registry rows are not one per candidate per learning batch")
    state = config.state_dir
    folder = state / "artifacts" / "flights"
    before = {p.name for p in folder.iterdir()}
    swept = sweep_artifacts(con, state, "flights", grace=timedelta(0))
    rows = con.sql(
        "SELECT artifact_path, sha256, artifact_pruned_at IS NOT NULL FROM ml.model_versions"
    ).fetchall()
    kept = {Path(p).name: sha for p, sha, pruned in rows if not pruned}
    files_now = {p.name for p in folder.iterdir()}
    if files_now != set(kept):
        problems.append(
            f"artifacts without a row {sorted(files_now - set(kept))[:5]}, "
            f"rows without an artifact {sorted(set(kept) - files_now)[:5]}"
        )
    for name, sha in kept.items():
        if name in files_now and sha256_of(config.state_dir, folder / name) != sha:
            problems.append(f"{name} does not match its registry hash")
    pruned_names = {Path(p).name for p, _, pruned in rows if pruned}
    for name in before - files_now - pruned_names:
        match = re.match(r"v\d+-b(\d+)\.joblib$", name)
        if match and int(match[1]) in batches:
            problems.append(f"{name} of committed batch {match[1]} has no registry row")

    # prequential metrics: one row per (batch, candidate, metric) after the first learning batch
    metrics = con.sql(
        "SELECT batch_id, count(*), count(DISTINCT model_version), count(DISTINCT metric) "
        "FROM ml.batch_metrics GROUP BY 1"
    ).fetchall()
    names = one("SELECT count(DISTINCT metric) FROM ml.batch_metrics")
    scored = {b for b, *_ in metrics}
    if scored != set(learning[1:]):
        problems.append(
            f"metrics for {len(scored)} batches, {len(learning) - 1} learning batches after the first"
        )
    if any((n, v, m) != (candidates * names, candidates, names) for _, n, v, m in metrics):
        problems.append("a batch has not one metric row per candidate and metric")

    counts = {
        "batches": len(batches),
        "failed": one("SELECT count(*) FROM _batches WHERE status = 'failed'"),
        "written": len(written),
        "accepted": len(raw),
        "damaged": len(damaged),
        "quarantined": len(reasons),
        "lost": len(lost),
        "duplicated": duplicated,
        "labelled": labelled,
        "versions": len(rows),
        "pruned": sum(1 for *_, pruned in rows if pruned),
        "artifacts": len(files_now),
        "orphans": swept.orphans + swept.temp_files,
        "metric_rows": sum(n for _, n, *_ in metrics),
    }
    return counts, problems


def _summary(
    counts: dict[str, Any],
    faults: list[Fault],
    restarts: dict[str, int],
    runs: dict[str, int],
    disk: StateDisk,
    phases: dict[str, float],
    started: float,
) -> str:
    lines = [
        f"chaos: flights, {BATCH_ROWS}-record batches every 1 s, seed {SEED}, "
        f"target {BATCHES} batches; disk full = {disk.how}",
        f"{'fault':<14}{'injected':>9}{'resume p50':>12}{'resume max':>12}",
    ]
    for kind in ["worker_kill", "server_kill", "disk_full", "corrupt_new", "corrupt_seen"]:
        mine = [f for f in faults if f.kind == kind]
        resumes = [f.resume_s for f in mine if f.resume_s is not None]
        p50 = f"{statistics.median(resumes):.1f} s" if resumes else "-"
        most = f"{max(resumes):.1f} s" if resumes else "-"
        lines.append(f"{kind:<14}{len(mine):>9}{p50:>12}{most:>12}")
    c = counts
    lines += [
        f"batches committed {c['batches']} (_batches rows marked failed: {c['failed']})",
        f"records written {c['written']}: accepted {c['accepted']}, damaged {c['damaged']}, "
        f"quarantine rows {c['quarantined']}, lost {c['lost']}, duplicated {c['duplicated']}",
        f"learned {c['labelled']} labelled records once each; registry rows {c['versions']}: "
        f"{c['artifacts']} with their artifact (hash checked), {c['pruned']} pruned by the "
        f"janitor, which then swept {c['orphans']} orphan files; metric rows {c['metric_rows']}",
        "restarts by the supervisor: " + ", ".join(f"{k} {v}" for k, v in sorted(restarts.items())),
        "micro-batch flow runs: "
        + ", ".join(f"{k} {v}" for k, v in runs.items())
        + " (cancelled: skipped as too late, or lost their slot to an outage)",
        f"test time {time.monotonic() - started:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + "; faults in order:",
    ]
    lines += [
        f"  {f.kind:<13} {f.detail}"
        + ("" if f.resume_s is None else f", next batch after {f.resume_s:.1f} s")
        for f in faults
    ]
    return "\n".join(lines)


def test_the_stack_loses_and_duplicates_nothing_under_faults(
    tmp_path: Path,
    state_disk: StateDisk,
    free_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    # the janitor prunes and sweeps while the faults happen (its minimum interval)
    monkeypatch.setenv("TIDEMILL_MAINTENANCE_EVERY_SECONDS", "60")
    config = _chaos_config(tmp_path, tmp_path / "landing", state_disk.path)
    rows = landing_rows(flight_events(load_flights().head(2 * BATCHES * BATCH_ROWS + 2000)))
    landing = Landing(tmp_path / "landing", rows, SEED)
    probe = Probe(config.state_dir)
    feeder = Feeder(landing, probe, FEED_ROWS_PER_SECOND, max_lag=MAX_LAG_BATCHES * BATCH_ROWS)
    chaos = Chaos(config, free_port, state_disk, landing, feeder)
    stuck, runs = -1, {}
    phases: dict[str, float] = {}
    try:
        landing.write(40)  # work for the first scheduled run
        stack.up(config, port=free_port, speed=None)
        phases["stack up"] = time.monotonic() - started
        feeder.start()
        kinds = _plan(chaos.rng)
        for i, kind in enumerate(kinds, start=1):
            _wait_committed(chaos.probe, math.ceil(BATCHES * i / (len(kinds) + 1)), feeder)
            getattr(chaos, kind)()
        _wait_committed(chaos.probe, BATCHES, feeder)
        phases["batches and faults"] = time.monotonic() - started - sum(phases.values())
        feeder.stopping.set()
        feeder.join()
        assert feeder.error is None, f"the feeder failed: {feeder.error!r}"
        # nothing is restarted or nudged from here on: the pipeline must catch up alone
        deadline = time.monotonic() + RESUME_TIMEOUT
        while not _caught_up(chaos.probe, landing):
            assert time.monotonic() < deadline, "the pipeline did not catch up after the faults"
            time.sleep(0.5)
        phases["catching up"] = time.monotonic() - started - sum(phases.values())
        stuck, runs = _stuck_runs(free_port), _run_states(free_port)
    finally:
        feeder.stopping.set()
        stack.down(config)
        # this process may have cached the settings above; later tests must not see them
        get_settings.cache_clear()
    phases["stack down"] = time.monotonic() - started - sum(phases.values())
    restarts = read_status(config.state_dir).get("restarts", {})
    database = config.state_dir / "warehouse.duckdb"
    con = open_readonly(database, key_for(database, config.state_dir))
    try:
        counts, problems = _account(con, config, landing.files)
    finally:
        con.close()
    summary = _summary(counts, chaos.faults, restarts, runs, state_disk, phases, started)
    with capsys.disabled():
        print("\n" + summary)
    if results := os.environ.get("CHAOS_RESULTS"):  # `make chaos` keeps its summary
        load = os.getloadavg()[1]
        Path(results).write_text(
            f"# tests/chaos at {utc_now():%Y-%m-%d %H:%M} UTC, CHAOS_BATCHES={BATCHES}, "
            f"5-min load average {load:.1f} at the end (2 cores)\n{summary}\n"
        )
    kills = sum(1 for f in chaos.faults if f.kind == "worker_kill")
    assert restarts.get("worker", 0) >= kills, "the supervisor did not restart every killed worker"
    assert stuck == 0, f"{stuck} flow runs were left Pending/Running"
    assert counts["batches"] >= BATCHES
    assert problems == []
