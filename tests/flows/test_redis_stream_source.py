"""A Redis stream as a source, against a real redis-server started like the stack's
(deployments/stack/redis_server.py): consumer-group reads acknowledged only after the warehouse
commit, so every published entry reaches raw or quarantine exactly once, whenever the
worker stops; and the sensor readings published and replayed into it."""

from __future__ import annotations

import itertools
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import pytest
import redis

from tidemill.config.load import load_config
from tidemill.deployments.replay.sensors import publish_readings, replay_readings
from tidemill.deployments.stack import redis_server
from tidemill.flows.engine.cycle import CycleReport, run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.tasks.sources.redis_stream import StreamError, entry_line
from tidemill.tasks.synthetic.sensors import sensor_readings

pytestmark = pytest.mark.slow

CONFIG = """
[pipelines.sensors]
source = {{ kind = "redis_stream", url = "{url}", stream = "{stream}", consumer = "{consumer}"{extra} }}
event_time = "ts"
key = "id"
target = "fault"
features = ["sensor", "temperature", "vibration", "rssi"]
categorical = ["sensor"]
classes = [0, 1]
model = {{ estimator = "sgd_classifier", params = {{ loss = "log_loss" }} }}
batch_rows = {batch_rows}
"""
GROUP = "tidemill"
_streams = itertools.count()
_users = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server for this module; its URL (password included)."""
    state = tmp_path_factory.mktemp("redis")
    url = redis_server.start(state)
    try:
        yield url
    finally:
        redis_server.stop(state)


@pytest.fixture
def admin(broker: str) -> Iterator[redis.Redis]:
    """A client of the broker that inspects what it holds."""
    with redis.Redis.from_url(broker, decode_responses=True) as client:
        yield client


@pytest.fixture
def stream() -> str:
    """A fresh stream name."""
    return f"sensors-{next(_streams)}"


def _runtime(
    folder: Path, url: str, stream: str, batch_rows: int, consumer: str = "worker-1", **source: Any
) -> Runtime:
    extra = "".join(f", {k} = {v}" for k, v in source.items())
    text = CONFIG.format(
        url=url, stream=stream, consumer=consumer, extra=extra, batch_rows=batch_rows
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tidemill.toml").write_text(textwrap.dedent(text))
    return Runtime.open(load_config(folder / "tidemill.toml"))


def _drain(runtime: Runtime) -> list[CycleReport]:
    reports = []
    while (report := run_cycle(runtime, "sensors", drain=True)).status == "committed":
        reports.append(report)
    return reports


def _all(runtime: Runtime, sql: str) -> list[tuple[Any, ...]]:
    return runtime.con.sql(sql).fetchall()


def _one(runtime: Runtime, sql: str) -> Any:
    return _all(runtime, sql)[0][0]


def _pending(admin: redis.Redis, stream: str, consumer: str = "worker-1") -> list[str]:
    """Ids of the entries delivered to `consumer` and not acknowledged."""
    rows = admin.xpending_range(stream, GROUP, "-", "+", 10_000, consumername=consumer)
    return [str(row["message_id"]) for row in rows]


def _user_url(broker: str, admin: redis.Redis, *rules: str) -> str:
    """The URL of a new broker user with the ACL `rules` (besides every key and command)."""
    user, password = f"pipeline-{next(_users)}", "secret"
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", *rules)
    address = urlsplit(broker)
    return f"redis://{user}:{password}@{address.hostname}:{address.port}/0"


def test_published_readings_land_in_raw_exactly_once_and_are_acknowledged(
    tmp_path: Path, broker: str, admin: redis.Redis, stream: str
) -> None:
    readings = sensor_readings(60)  # 720 readings of 12 sensors
    ids = publish_readings(broker, stream, readings.head(600))
    runtime = _runtime(tmp_path, broker, stream, batch_rows=100, read_rows=250)
    reports = _drain(runtime)
    assert [r.rows_in for r in reports] == [100] * 6
    assert _all(runtime, "SELECT count(*), count(DISTINCT id) FROM raw.sensors") == [(600, 600)]
    assert _one(runtime, "SELECT count(*) FROM raw.sensors_quarantine") == 0
    assert _pending(admin, stream) == []
    assert _all(runtime, "SELECT source, cursor_column, last_value, rows_read FROM _cursors") == [
        (f"redis:{stream}", GROUP, ids[-1], 600)
    ]
    assert _all(runtime, "SELECT _file, _line FROM raw.sensors WHERE id = '7'") == [
        (f"redis:{stream}", entry_line(ids[6]))
    ]
    assert _one(runtime, "SELECT count(*) FROM ml.model_versions") == 6
    # later readings: only they are read
    publish_readings(broker, stream, readings.tail(120))
    assert sum(r.rows_in for r in _drain(runtime)) == 120
    stored = [r[0] for r in _all(runtime, "SELECT id::INT FROM raw.sensors ORDER BY 1")]
    assert stored == list(range(1, 721))
    assert _drain(runtime) == [] and _pending(admin, stream) == []
    # stored entries left the broker: erasure never has to reach into it
    assert admin.xlen(stream) == 0
    runtime.con.close()


def test_a_crash_after_the_commit_before_xack_re_delivers_nothing_twice(
    tmp_path: Path, broker: str, admin: redis.Redis, stream: str
) -> None:
    ids = publish_readings(broker, stream, sensor_readings(5))  # 60 readings
    # the broker refuses this consumer's XACK: it stops right after the commit, as a
    # worker killed there would
    url = _user_url(broker, admin, "-xack")
    runtime = _runtime(tmp_path, url, stream, batch_rows=100)
    with pytest.raises(StreamError, match=f"redis:{stream}: cannot acknowledge: .*no permissions"):
        run_cycle(runtime, "sensors", drain=True)
    assert _one(runtime, "SELECT count(*) FROM raw.sensors_inbox") == 60  # stored
    assert _one(runtime, "SELECT rows_read FROM _cursors") == 60
    assert _pending(admin, stream) == ids  # the broker will deliver every one again
    runtime.con.close()
    # restarted, with XACK allowed again
    admin.execute_command("ACL", "SETUSER", urlsplit(url).username, "+xack")
    runtime = Runtime.open(load_config(tmp_path / "tidemill.toml"))
    assert [r.rows_in for r in _drain(runtime)] == [60]
    assert _all(runtime, "SELECT count(*), count(DISTINCT id) FROM raw.sensors") == [(60, 60)]
    assert _one(runtime, "SELECT count(*) FROM raw.sensors_quarantine") == 0
    assert _one(runtime, "SELECT rows_read FROM _cursors") == 60  # none read twice
    assert _pending(admin, stream) == []
    # and the stream goes on from there
    more = sensor_readings(6).filter(pl.col("id") > 60)
    publish_readings(broker, stream, more)
    assert [r.rows_in for r in _drain(runtime)] == [12]
    assert _one(runtime, "SELECT count(DISTINCT id) FROM raw.sensors") == 72
    runtime.con.close()


class _CrashOnCursorMove:
    """The warehouse connection, failing the statement that records the ids read: after
    the records went into the inbox, inside the same transaction."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO _cursors"):
            raise OSError("crash between read and commit (injected)")
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def test_a_crash_before_the_commit_loses_nothing(
    tmp_path: Path,
    broker: str,
    admin: redis.Redis,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = sensor_readings(5)
    ids = publish_readings(broker, stream, readings.head(30))
    runtime = _runtime(tmp_path, broker, stream, batch_rows=100)
    runtime.pipeline("sensors")
    monkeypatch.setattr(runtime, "con", _CrashOnCursorMove(runtime.con))
    with pytest.raises(OSError, match="injected"):
        run_cycle(runtime, "sensors", drain=True)
    monkeypatch.undo()
    assert _one(runtime, "SELECT count(*) FROM raw.sensors_inbox") == 0  # rolled back
    assert _one(runtime, "SELECT count(*) FROM _cursors") == 0
    assert _pending(admin, stream) == ids  # delivered, never acknowledged
    # while it is down: more readings arrive, and one pending entry is deleted
    publish_readings(broker, stream, readings.slice(30, 30))
    admin.xdel(stream, ids[4])
    assert [r.rows_in for r in _drain(runtime)] == [60]
    stored = [r[0] for r in _all(runtime, "SELECT id::INT FROM raw.sensors ORDER BY 1")]
    assert stored == [i for i in range(1, 61) if i != 5]
    assert _all(runtime, "SELECT _line, raw_text, reason FROM raw.sensors_quarantine") == [
        (
            entry_line(ids[4]),
            None,
            "deleted from the stream before it was stored (XDEL or a trim): its fields are gone",
        )
    ]
    assert _pending(admin, stream) == []
    assert _one(runtime, "SELECT rows_read FROM _cursors") == 60
    runtime.con.close()


def test_malformed_entries_are_quarantined_with_a_reason_and_acknowledged(
    tmp_path: Path, broker: str, admin: redis.Redis, stream: str
) -> None:
    good = {"ts": "2024-03-01T00:00:00Z", "sensor": "s01", "temperature": "21.5"}
    good |= {"vibration": "2.1", "rssi": "-61", "fault": "0"}
    sent = [
        {"id": "1", **good},
        {"id": "2", **good, "fault": "", "rssi": ""},  # unlabelled, no signal: fine
        {"id": "3", "ts": good["ts"], "sensor": "s02"},  # fields missing
        {"id": "4", **good, "temperature": b"\xff21"},  # not UTF-8
        {"id": "5", **good, "ts": "yesterday"},
        {"id": "6", **good, "temperature": "hot", "fault": "7"},
        {"id": "1", **good, "sensor": "s09"},  # the id again
    ]
    ids = [str(admin.xadd(stream, fields)) for fields in sent]  # type: ignore[arg-type]
    repeated = [*itertools.chain(*good.items()), "id", "8", "id", "9"]
    ids.append(str(admin.execute_command("XADD", stream, "*", *repeated)))
    runtime = _runtime(tmp_path, broker, stream, batch_rows=100)
    _drain(runtime)
    assert _all(runtime, "SELECT id, fault, rssi FROM raw.sensors ORDER BY id") == [
        ("1", "0", -61.0),
        ("2", None, None),
    ]
    reasons = dict(_all(runtime, "SELECT _line, reason FROM raw.sensors_quarantine"))
    assert reasons == {
        entry_line(ids[2]): "entry lacks field(s) temperature, vibration, rssi, fault",
        entry_line(ids[3]): "field(s) temperature hold bytes that are not UTF-8",
        entry_line(ids[4]): "ts 'yesterday' is not a timestamp",
        entry_line(ids[5]): "temperature 'hot' is not a finite number; "
        "fault '7' is not one of the classes 0, 1; declare pipelines.sensors.classes",
        entry_line(ids[6]): "duplicate id within the batch",
        entry_line(ids[7]): "entry repeats field(s) id",
    }
    raw = _one(
        runtime,
        f"SELECT raw_text FROM raw.sensors_quarantine WHERE _line = {entry_line(ids[3])}",
    )
    assert '"temperature": "\ufffd21"' in raw
    assert _pending(admin, stream) == []
    assert _one(runtime, "SELECT rows_read FROM _cursors") == len(sent) + 1
    runtime.con.close()


def test_consumers_of_one_group_share_the_stream_each_entry_once(
    tmp_path: Path, broker: str, admin: redis.Redis, stream: str
) -> None:
    publish_readings(broker, stream, sensor_readings(25))  # 300 readings
    workers = [
        _runtime(tmp_path / name, broker, stream, batch_rows=40, consumer=name, read_rows=40)
        for name in ("worker-1", "worker-2")
    ]
    while sum(run_cycle(w, "sensors", drain=True).status == "committed" for w in workers):
        pass
    stored = [{r[0] for r in _all(w, "SELECT id::INT FROM raw.sensors")} for w in workers]
    assert stored[0] and stored[1] and not stored[0] & stored[1]
    assert stored[0] | stored[1] == set(range(1, 301))
    assert _pending(admin, stream, "worker-1") == _pending(admin, stream, "worker-2") == []
    for worker in workers:
        worker.con.close()


def test_a_wrong_password_stops_the_cycle_with_one_line(tmp_path: Path, broker: str) -> None:
    address = urlsplit(broker)
    url = f"redis://:wrong@{address.hostname}:{address.port}/0"
    runtime = _runtime(tmp_path, url, "sensors-x", batch_rows=10)
    with pytest.raises(StreamError) as error:
        run_cycle(runtime, "sensors", drain=True)
    assert str(error.value).startswith("redis:sensors-x: cannot read: ")
    assert "\n" not in str(error.value) and "wrong" not in str(error.value)
    assert _one(runtime, "SELECT count(*) FROM _cursors") == 0
    runtime.con.close()


def test_a_replayer_stopped_and_started_again_publishes_every_reading_once(
    broker: str, admin: redis.Redis, stream: str, tmp_path: Path
) -> None:
    readings = sensor_readings(30, n_sensors=4)  # 120 readings over 300 s of event time
    first = replay_readings(
        broker,
        stream,
        readings,
        speed=3000,
        state_file=tmp_path / "s.json",
        tick_seconds=0.01,
        max_ticks=2,
    )
    assert 0 < first.entries < 120 and not first.exhausted
    rest = replay_readings(
        broker, stream, readings, speed=3000, state_file=tmp_path / "s.json", tick_seconds=0.01
    )
    assert rest.exhausted and first.entries + rest.entries == 120
    sent = [int(dict(fields or {})["id"]) for _, fields in admin.xrange(stream) or []]
    assert sent == list(range(1, 121))
    assert (
        replay_readings(
            broker, stream, readings, speed=3000, state_file=tmp_path / "s.json", tick_seconds=0.01
        ).entries
        == 0
    )


def test_a_killed_broker_restarts_on_its_port_with_every_acknowledged_entry(
    tmp_path: Path,
) -> None:
    url = redis_server.start(tmp_path)
    try:
        publish_readings(url, "s", sensor_readings(10))
        pid = redis_server.running_pid(tmp_path)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert redis_server.start(tmp_path) == url  # same port, same password
        with redis.Redis.from_url(url) as client:
            assert client.xlen("s") == 120
        assert redis_server.is_healthy(tmp_path)
    finally:
        assert redis_server.stop(tmp_path)
    assert not redis_server.is_healthy(tmp_path)
