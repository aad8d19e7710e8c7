"""Every kind of bad input of tests/corpus/cases.toml through the REAL cycle.

One warehouse, one pipeline per case (so cases cannot disturb each other): the case's
files land, the pipeline drains until a cycle finds nothing, and raw.P / raw.P_quarantine
must hold exactly what the table says, with the reasons it names. Then a good file lands
in the same pipeline and must be accepted: the pipeline goes on. A cycle that raises
(a Polars panic included) fails the case.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tidemill.tasks.sources.files as landing_module
from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import BatchFailed, run_cycle
from tidemill.flows.engine.runtime import Runtime
from tidemill.settings import Settings

HERE = Path(__file__).parent
HEADER = "id,ts,x,cat,y\n"
GOOD_ROWS = "1,2024-01-01T00:00:00Z,1.5,a,1\n2,2024-01-01T00:01:00Z,2.5,b,0\n"


def _outcomes() -> Any:  # tests/ is not a package: load the renderer as a module
    spec = importlib.util.spec_from_file_location("corpus_outcomes", HERE / "outcomes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OUTCOMES = _outcomes()
CASES = OUTCOMES.cases()


# ---------------------------------------------------------------- generated inputs


def _frame(**columns: Any) -> pl.DataFrame:
    return pl.DataFrame(columns)


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


TS = [datetime(2024, 1, 1, 0, i) for i in range(3)]


def _line_1gb(path: Path) -> None:
    """A 1 GiB line between two good ones; the gigabyte is a hole of the file (NUL bytes
    that take no disk and no time to write)."""
    first, last = GOOD_ROWS.splitlines(keepends=True)
    with path.open("wb") as handle:
        handle.write((HEADER + first + "3,2024-01-01T00:02:00Z,0.5,").encode())
        handle.seek(1 << 30, os.SEEK_CUR)
        handle.write((",1\n" + last).encode())


GENERATORS: dict[str, Callable[[Path], None]] = {
    "huge_field": lambda p: p.write_bytes(
        (HEADER + GOOD_ROWS + f"3,2024-01-01T00:02:00Z,0.5,{'b' * (2 << 20)},1\n").encode()
    ),
    "line_1gb": _line_1gb,
    "utf16": lambda p: p.write_bytes((HEADER + GOOD_ROWS).encode("utf-16")),
    "gzip_csv": lambda p: p.write_bytes(gzip.compress((HEADER + GOOD_ROWS).encode(), mtime=0)),
    "random_bytes": lambda p: p.write_bytes(random.Random(7).randbytes(1 << 16)),
    "deep_json": lambda p: p.write_text(
        json.dumps({"id": 1, "ts": "2024-01-01T00:00:00Z", "x": 1.5, "cat": "a", "y": 1})
        + "\n"
        + '{"id": 2, "ts": "2024-01-01T00:01:00Z", "x": '
        + "[" * 100_000
        + "]" * 100_000
        + ', "cat": "a", "y": 1}\n'
    ),
    "parquet_good": lambda p: p.write_bytes(
        _parquet(
            _frame(
                id=[1, 2, 3],
                ts=pl.Series(TS).dt.replace_time_zone("Europe/Paris"),
                x=[1.5, 2.5, None],
                cat=["a", "b", "a"],
                y=[1, 0, 1],
            )
        )
    ),
    "parquet_incompatible_types": lambda p: p.write_bytes(
        _parquet(
            _frame(
                id=["1", "2", "3"],
                ts=[1704067200, 1704067260, 1704067320],
                x=["1.5", "abc", "2"],
                cat=["a", "b", "a"],
                y=[1.0, 0.0, None],
            )
        )
    ),
    "parquet_nested": lambda p: p.write_bytes(
        _parquet(
            _frame(
                id=[1, 2, 3],
                ts=TS,
                x=[{"v": 1.5}, None, {"v": 0.5}],
                cat=[None, None, ["b", "c"]],
                y=[1, 0, 1],
            )
        )
    ),
    "parquet_binary": lambda p: p.write_bytes(
        _parquet(
            _frame(
                id=[1, 2, 3],
                ts=TS,
                x=[1.5, 2.5, 0.5],
                cat=pl.Series([b"a", b"Z\xfcrich", None], dtype=pl.Binary),
                y=[1, 0, 1],
                blob=pl.Series([b"\x00\xff", b"", None], dtype=pl.Binary),
            )
        )
    ),
    "parquet_duration": lambda p: p.write_bytes(
        _parquet(
            _frame(
                id=[1, 2],
                ts=TS[:2],
                x=pl.Series([1, 2]).cast(pl.Duration("ms")),
                cat=["a", "b"],
                y=[1, 0],
            )
        )
    ),
    "parquet_missing_column": lambda p: p.write_bytes(
        _parquet(_frame(id=[1, 2], ts=TS[:2], cat=["a", "b"], y=[1, 0]))
    ),
    "parquet_timestamps": lambda p: p.write_bytes(
        _parquet(
            _frame(
                id=[1, 2, 3],
                ts=pl.Series([*TS[:2], datetime(2999, 1, 1)]).cast(pl.Datetime("ms", "UTC")),
                x=[1.5, 2.5, 0.5],
                cat=["a", "b", "a"],
                y=[1, 0, 1],
            )
        )
    ),
    "parquet_truncated": lambda p: p.write_bytes(
        _parquet(_frame(id=[1, 2], ts=TS[:2], x=[1.0, 2.0], cat=["a", "b"], y=[1, 0]))[:-40]
    ),
    "zero_bytes": lambda p: p.write_bytes(b""),
    "csv_as_parquet": lambda p: p.write_text(HEADER + GOOD_ROWS),
}


# ---------------------------------------------------------------- the warehouse


def _format(case: dict[str, Any]) -> str:
    return str(OUTCOMES._format(case))


PIPELINE = """
[pipelines.{kind}]
source = {{ kind = "files", path = "landing/{kind}/*.{fmt}", format = "{fmt}" }}
event_time = "ts"
key = "id"
target = "y"
features = ["x", "cat"]
categorical = ["cat"]
classes = [0, 1]
batch_rows = {batch_rows}
model = {{ estimator = "sgd_classifier", params = {{ loss = "log_loss" }} }}
"""


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("corpus")
    text = '[state]\ndir = ".tidemill"\n' + "".join(
        PIPELINE.format(kind=c["kind"], fmt=_format(c), batch_rows=c.get("batch_rows", 50))
        for c in CASES
    )
    (root / "tidemill.toml").write_text(text)
    # no snapshot copy per batch: 60 pipelines share this file
    runtime = Runtime.open(load_config(root / "tidemill.toml"), Settings())
    yield runtime
    runtime.con.close()


def _drain(runtime: Runtime, name: str) -> int:
    """Cycles until one finds nothing; returns how many committed. Fails on any raise."""
    for committed in range(100):
        try:
            report = run_cycle(runtime, name, drain=True)
        except BatchFailed as failure:
            pytest.fail(f"{name}: a cycle crashed: {failure}")
        if report.status != "committed":
            return committed
    pytest.fail(f"{name}: still committing after 100 cycles")


def _count(runtime: Runtime, sql: str) -> int:
    return int(runtime.con.sql(sql).fetchall()[0][0])


_mtime = [time.time_ns() - 10**12]


def _land(folder: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write a landing file with a modification time later than any before it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    write(path)
    _mtime[0] += 10**9
    os.utime(path, ns=(_mtime[0], _mtime[0]))
    return path


def _good_file(path: Path, fmt: str) -> None:
    rows = [
        (90001, "2024-06-01T00:00:00Z", 1.0, "a", 1),
        (90002, "2024-06-01T00:01:00Z", 2.0, "b", 0),
    ]
    frame = pl.DataFrame(rows, schema=["id", "ts", "x", "cat", "y"], orient="row")
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "ndjson":
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)


def _rewritten_while_read(
    runtime: Runtime, case: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer rewrites the file in place after the reader's first chunk: that cycle
    keeps nothing of it; the next one reads the rewritten file whole."""
    path = _land(
        folder,
        "data.csv",
        lambda p: p.write_bytes((HERE / "cases" / "rewritten_v1.csv").read_bytes()),
    )
    real = landing_module._chunks

    def chunks_then_rewrite(handle: Any) -> Iterator[bytes]:
        for number, chunk in enumerate(real(handle)):
            yield chunk
            if number == 0:
                path.write_bytes((HERE / "cases" / "rewritten_v2.csv").read_bytes())

    monkeypatch.setattr(landing_module, "CHUNK_BYTES", 16)
    monkeypatch.setattr(landing_module, "_chunks", chunks_then_rewrite)
    assert _drain(runtime, case["kind"]) == 0
    assert _count(runtime, f"SELECT count(*) FROM _files WHERE pipeline = '{case['kind']}'") == 0
    monkeypatch.undo()
    _drain(runtime, case["kind"])


def _replaced_while_streamed(
    runtime: Runtime, case: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file too large to hold is hashed, then replaced before it is parsed: the bytes
    parsed are not the ones hashed, so that version is quarantined whole and the next
    cycle reads the new one as a replacement."""
    path = _land(
        folder,
        "data.csv",
        lambda p: p.write_bytes((HERE / "cases" / "rewritten_v1.csv").read_bytes()),
    )
    real = landing_module.read_arrival
    calls = []

    def replace_then_read(arrival: Any, *args: Any) -> Any:
        if not calls:
            assert arrival.streamed
            _land(
                folder,
                "data.csv",
                lambda p: p.write_bytes((HERE / "cases" / "rewritten_v2.csv").read_bytes()),
            )
        calls.append(arrival.path)
        return real(arrival, *args)

    monkeypatch.setattr(landing_module, "IN_MEMORY_BYTES", 16)
    monkeypatch.setattr(landing_module, "read_arrival", replace_then_read)
    _drain(runtime, case["kind"])
    assert calls == [str(path), str(path)]
    monkeypatch.undo()


def _run_case(runtime: Runtime, case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> int:
    """Land and drain the case's input; returns the peak of Python memory (bytes)."""
    kind, fmt = case["kind"], _format(case)
    folder = Path(runtime.config.pipeline(kind).source.path).parent
    if "generate" in case:
        tracemalloc.start()
    try:
        if case.get("scenario") in SCENARIOS:
            SCENARIOS[case["scenario"]](runtime, case, folder, monkeypatch)
        elif "generate" in case:
            path = _land(folder, f"{kind}.{fmt}", GENERATORS[case["generate"]])
            _drain(runtime, kind)
            path.unlink()  # a generated gigabyte should not outlive its case
        else:
            for name in case["files"]:
                source = HERE / "cases" / name
                _land(
                    folder,
                    case.get("land_as", name),
                    lambda p, s=source: p.write_bytes(s.read_bytes()),
                )
                _drain(runtime, kind)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


SCENARIOS = {
    "rewritten_while_read": _rewritten_while_read,
    "replaced_while_streamed": _replaced_while_streamed,
}


@pytest.mark.parametrize("case", CASES, ids=[c["kind"] for c in CASES])
def test_bad_input_is_quarantined_with_its_reason_and_the_pipeline_goes_on(
    runtime: Runtime, case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, fmt = case["kind"], _format(case)
    peak = _run_case(runtime, case, monkeypatch)
    accepted = _count(runtime, f"SELECT count(*) FROM raw.{kind}")
    reasons = [
        r[0] for r in runtime.con.sql(f"SELECT reason FROM raw.{kind}_quarantine").fetchall()
    ]
    assert (accepted, len(reasons)) == (case["accepted"], case["quarantined"]), reasons
    for reason in reasons:
        assert any(expected in reason for expected in case["reasons"]), reason
    for expected in case["reasons"]:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert peak < 64 << 20, f"{kind}: the reader held {peak / 2**20:.0f} MiB"
    assert _count(runtime, f"SELECT count(*) FROM raw.{kind}_inbox") == 0
    # the pipeline goes on: a good file after the bad one lands whole
    _land(
        Path(runtime.config.pipeline(kind).source.path).parent,
        f"after.{fmt}",
        lambda p: _good_file(p, fmt),
    )
    _drain(runtime, kind)
    assert _count(runtime, f"SELECT count(*) FROM raw.{kind} WHERE id IN ('90001', '90002')") == 2


def test_the_outcome_table_is_up_to_date() -> None:
    rendered = OUTCOMES.render(CASES)
    print("\n" + rendered)  # `pytest -s tests/corpus` shows the corpus table
    assert len(CASES) >= 30
    assert (HERE / "OUTCOMES.md").read_text() == rendered, (
        "tests/corpus/OUTCOMES.md is stale: run .venv/bin/python tests/corpus/outcomes.py"
    )
