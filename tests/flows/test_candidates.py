"""Champion/challenger, drift, feature shift, adaptive batches and lags, end to end on a
real DuckDB file with real estimators."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import polars as pl

from tidemill.config.load import load_config
from tidemill.flows.engine.cycle import run_cycle
from tidemill.flows.engine.runtime import Runtime

TOML = """
[pipelines.s]
source = {{ kind = "files", path = "landing/*.csv", format = "csv" }}
event_time = "ts"
key = "id"
target = "target"
features = ["x1", "x2", "sensor"]
categorical = ["sensor"]
classes = [0, 1]
batch_rows = {batch_rows}
{extra}
"""


def _runtime(tmp_path: Path, extra: str, batch_rows: int = 50) -> Runtime:
    (tmp_path / "landing").mkdir(exist_ok=True)
    path = tmp_path / "tidemill.toml"
    path.write_text(textwrap.dedent(TOML.format(batch_rows=batch_rows, extra=extra)))
    return Runtime.open(load_config(path))


def _stream(path: Path, n: int, *, flip_at: int | None = None, shift_at: int | None = None) -> None:
    """x1 decides the label (the sign flips at `flip_at`); x2 shifts by 3 at `shift_at`."""
    rng = np.random.default_rng(7)
    i = np.arange(n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    if shift_at is not None:
        x2 = np.where(i >= shift_at, x2 + 3.0, x2)
    sign = np.where(i >= flip_at, -1, 1) if flip_at is not None else 1
    target = (sign * x1 + rng.normal(scale=0.2, size=n) > 0).astype(int)
    pl.DataFrame(
        {
            "id": i,
            "ts": [f"2024-01-01T{k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}Z" for k in i],
            "x1": x1.round(4),
            "x2": x2.round(4),
            "sensor": [f"s{k % 5}" for k in i],
            "target": target,
        }
    ).write_csv(path)


def _drain(runtime: Runtime) -> list[int]:
    limits = []
    while (report := run_cycle(runtime, "s", drain=True)).status == "committed":
        limits.append(report.batch_rows_limit or 0)
    return limits


def test_every_candidate_learns_and_is_scored_and_the_better_one_takes_over(
    tmp_path: Path,
) -> None:
    runtime = _runtime(
        tmp_path,
        """
        model = { name = "weak", estimator = "sgd_classifier", params = { loss = "log_loss", alpha = 10.0 } }
        challengers = [{ name = "nb", estimator = "gaussian_nb" }]
        promotion = { window_rows = 200, min_rows = 150, margin = 0.05 }
        """,
    )
    _stream(tmp_path / "landing" / "a.csv", 600)
    _drain(runtime)
    con = runtime.con
    # both candidates scored every batch after the first, on the same rows
    per_batch = con.sql(
        "SELECT batch_id, list(candidate ORDER BY candidate), list(n_scored) FROM ml.batch_metrics "
        "WHERE metric = 'accuracy' GROUP BY batch_id ORDER BY batch_id"
    ).fetchall()
    assert len(per_batch) == 11
    assert all(c == ["nb", "weak"] and n[0] == n[1] == 50 for _, c, n in per_batch)
    # one version per candidate per batch, one champion
    counts = con.sql(
        "SELECT candidate, count(*), count(*) FILTER (status = 'champion') FROM ml.model_versions "
        "GROUP BY candidate ORDER BY candidate"
    ).fetchall()
    assert counts == [("nb", 12, 1), ("weak", 12, 0)]
    events = con.sql(
        "SELECT action, from_version, to_version, actor, evidence_json FROM ml.model_events"
    ).fetchall()
    assert len(events) == 1 and events[0][0] == "auto_promote" and events[0][3] == "tidemill"
    evidence = json.loads(events[0][4])
    assert evidence["challenger"] == "nb" and evidence["rows"] >= 150
    assert evidence["challenger_value"] - evidence["champion_value"] >= 0.05
    promoted = con.sql(
        f"SELECT candidate, batch_id FROM ml.model_versions WHERE version = {events[0][2]}"
    ).fetchall()[0]
    assert promoted[0] == "nb"
    # predictions before the promotion were the weak model's, after it nb's
    served = con.sql(
        "SELECT p.batch_id, any_value(v.candidate) FROM ml.s_predictions p "
        "JOIN ml.model_versions v ON v.version = p.model_version GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert {c for b, c in served if b <= promoted[1]} == {"weak"}
    assert {c for b, c in served if b > promoted[1]} == {"nb"}
    # a restart finds the same champion and challengers
    runtime.close()
    again = Runtime.open(runtime.config)
    state = again.pipeline("s")
    assert state is not None and state.champion == "nb" and set(state.models) == {"nb", "weak"}
    assert state.windows["nb"].total > 0
    again.close()


def test_drift_in_the_error_stream_is_recorded_and_restarts_the_challengers(
    tmp_path: Path,
) -> None:
    runtime = _runtime(
        tmp_path,
        """
        model = { estimator = "sgd_classifier", params = { loss = "log_loss" } }
        challengers = [{ name = "fresh", estimator = "sgd_classifier", params = { loss = "log_loss" } }]
        drift = { detector = "adwin", on_drift = "reset_challengers", psi_reference_rows = 300, psi_window_rows = 300 }
        promotion = { window_rows = 300, min_rows = 100, margin = 0.02 }
        """,
    )
    _stream(tmp_path / "landing" / "a.csv", 2400, flip_at=1200, shift_at=1200)
    _drain(runtime)
    con = runtime.con
    flip_batch = 1200 // 50 + 1  # batch 25 holds rows 1200..1249
    drifts = con.sql(
        "SELECT batch_id, candidate, detector, feature, value, action FROM ml.drift_events "
        "ORDER BY batch_id, detector"
    ).fetchall()
    error_drift = [d for d in drifts if d[2] == "adwin"]
    assert error_drift, drifts
    first = error_drift[0]
    assert flip_batch <= first[0] <= flip_batch + 6, drifts  # found soon, and no false alarm
    assert first[1] == "main" and first[5] == "challengers_reset" and first[4] > 0.3
    # the reset challenger started a new lineage at that batch
    roots = con.sql(
        "SELECT batch_id FROM ml.model_versions WHERE candidate = 'fresh' "
        "AND parent_version IS NULL ORDER BY batch_id"
    ).fetchall()
    assert [r[0] for r in roots] == [1] + [d[0] for d in error_drift if d[1] == "main"]
    # x2 moved by 3 sd at the flip: PSI sees it, x1 stays put
    shift = dict(
        con.sql(
            "SELECT feature, max(psi) FROM ml.feature_shift WHERE batch_id > 30 GROUP BY 1"
        ).fetchall()
    )
    assert shift["x2"] > 0.25 and shift["x1"] < 0.1, shift
    assert any(d[2] == "psi" and d[3] == "x2" for d in drifts)


def test_adaptive_batches_grow_while_there_is_headroom_and_a_backlog(tmp_path: Path) -> None:
    runtime = _runtime(
        tmp_path,
        """
        every_seconds = 60
        adaptive_batch = { min_rows = 10, max_rows = 160 }
        """,
        batch_rows=10,
    )
    _stream(tmp_path / "landing" / "a.csv", 1000)
    limits = _drain(runtime)
    assert limits[:5] == [10, 20, 40, 80, 160] and set(limits[5:]) == {160}
    recorded = runtime.con.sql(
        "SELECT batch_rows_limit FROM _batches ORDER BY batch_id LIMIT 5"
    ).fetchall()
    assert [r[0] for r in recorded] == [10, 20, 40, 80, 160]


def test_lag_features_keep_the_latest_labels_per_series(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, 'lags = [{ name = "prev", by = ["sensor"], n = 2 }]')
    _stream(tmp_path / "landing" / "a.csv", 300)
    _drain(runtime)
    state = runtime.pipelines.states["s"]
    assert {"prev_lag1", "prev_lag2"} <= set(state.model.feature_names)
    stored = runtime.con.sql(
        "SELECT sensor, list(value ORDER BY event_at) FROM agg.s_lag_prev GROUP BY 1 ORDER BY 1"
    ).fetchall()
    expected = runtime.con.sql(
        "SELECT sensor, list(target::DOUBLE ORDER BY ts) FROM (SELECT *, row_number() OVER "
        "(PARTITION BY sensor ORDER BY ts DESC) AS r FROM clean.s) WHERE r <= 2 GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert stored == expected and len(stored) == 5


def test_the_prefect_artifact_shows_champion_challengers_and_drift(tmp_path: Path) -> None:
    from tidemill.flows.engine.artifacts import metrics_markdown

    runtime = _runtime(tmp_path, 'challengers = [{ name = "nb", estimator = "gaussian_nb" }]')
    _stream(tmp_path / "landing" / "a.csv", 200)
    _drain(runtime)
    markdown = metrics_markdown(runtime, "s")
    assert "| main | champion |" in markdown and "| nb | challenger |" in markdown
    assert "## Drift events\n\nNone so far." in markdown
    last = [line for line in markdown.splitlines() if line.startswith("| 4 | ")]
    assert [line.split(" | ")[1] for line in last] == ["main", "nb"]  # both scored batch 4


def test_a_clustering_pipeline_learns_every_row_and_reports_inertia(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    (tmp_path / "tidemill.toml").write_text(
        textwrap.dedent(
            """
            [pipelines.sensors]
            source = { kind = "files", path = "landing/*.csv", format = "csv" }
            event_time = "ts"
            key = "id"
            features = ["temp", "vibration"]
            task = "clustering"
            model = { estimator = "minibatch_kmeans", params = { n_clusters = 3 } }
            batch_rows = 100
            drift = { detector = "page_hinkley" }
            """
        )
    )
    rng = np.random.default_rng(3)
    n = 1200
    centres = np.array([[20.0, 0.1], [35.0, 0.5], [50.0, 2.0]])
    regime = rng.integers(0, 3, n)
    points = centres[regime] + rng.normal(scale=[1.0, 0.05], size=(n, 2))
    points[900:] += [15.0, 1.0]  # the machines drift to a new operating point
    pl.DataFrame(
        {
            "id": np.arange(n),
            "ts": [
                f"2024-01-01T{k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}Z" for k in range(n)
            ],
            "temp": points[:, 0].round(3),
            "vibration": points[:, 1].round(4),
        }
    ).write_csv(tmp_path / "landing" / "a.csv")
    runtime = Runtime.open(load_config(tmp_path / "tidemill.toml"))
    while run_cycle(runtime, "sensors", drain=True).status == "committed":
        pass
    con = runtime.con
    inertia = [
        v
        for (v,) in con.sql(
            "SELECT value FROM ml.batch_metrics WHERE metric = 'inertia' ORDER BY batch_id"
        ).fetchall()
    ]
    assert len(inertia) == 11  # every batch but the first is scored before it is learned
    # low while the regimes hold (scaled units), 30x higher when the machines move
    assert max(inertia[:8]) < 0.02 and min(inertia[8:]) > 0.5, inertia
    assert con.sql("SELECT max(rows_seen) FROM ml.model_versions").fetchall() == [(n,)]
    clusters = con.sql("SELECT DISTINCT prediction FROM ml.sensors_predictions").fetchall()
    assert {c for (c,) in clusters} <= {"0", "1", "2"}
    drift = con.sql("SELECT min(batch_id) FROM ml.drift_events WHERE detector = 'page_hinkley'")
    assert drift.fetchall()[0][0] == 10  # rows 900.. are batch 10
    from tidemill.flows.engine.replay import replay_model

    config = runtime.pipelines.states["sensors"].config
    assert replay_model(con, config, 12, runtime.state_dir).equal
