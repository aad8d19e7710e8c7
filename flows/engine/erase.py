"""Erase a data subject: their rows everywhere, the aggregates they counted in, and what
every model learned from them. THE code path for the CLI and the erasure flow.

1. the subject's clean rows name the batches, windows and series they touched;
2. in ONE transaction: delete the rows (raw, clean, quarantine, inbox, predictions),
   recompute the touched windows and lag histories from the remaining rows, and for
   every candidate whose lineage learned one of those batches, relearn the lineage from
   the version before the subject's first batch (deterministic replay, `relearn`), each
   rebuilt version a new registry row; the versions that had learned the subject are
   retired and their artifacts marked pruned; an audit row without the subject's value;
3. after the commit, delete those artifacts and serve the rebuilt models;
4. rewrite the warehouse file (DuckDB leaves deleted values in its freed blocks) and
   publish a fresh snapshot, so no byte of the subject is left in either.

The rebuilt head equals a model trained without the subject's rows from the start of
its lineage: `replay-model` proves it like any version.

The Prefect flow `erasure/PIPELINE` names the subject by its digest (the HMAC the audit
row keeps; `tidemill erase PIPELINE --subject VALUE --digest-only` prints it), never by
its value: Prefect stores every run's parameters in its database, and an erasure must not
leave the value it erases there.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tidemill import utc
from tidemill.config.pipeline import PipelineConfig
from tidemill.errors import TidemillError
from tidemill.flows.engine.features import batch_partials, target_of
from tidemill.flows.engine.models import PipelineState
from tidemill.flows.engine.replay import fresh_candidate, lineage, relearn, replay_version
from tidemill.flows.engine.runtime import Runtime
from tidemill.keys import get_key
from tidemill.tasks.features.aggregate import window_start
from tidemill.tasks.judge.promotion import ScoreWindow
from tidemill.tasks.learn.prequential import ShardRecord
from tidemill.tasks.learn.state import ModelState, parameters_sha256
from tidemill.tasks.records.pii import subject_digest
from tidemill.warehouse import artifacts, registry
from tidemill.warehouse.connection import Connection
from tidemill.warehouse.ledger import erasures, history
from tidemill.warehouse.ledger.backfills import replace_windows
from tidemill.warehouse.ledger.batches import replace_lag_history
from tidemill.warehouse.pipeline_tables import PipelineTables
from tidemill.warehouse.transaction import transaction

NO_BATCH = 1 << 62  # "before no batch": every stored row counts


class ErasureError(TidemillError, RuntimeError):
    """An erasure that cannot run; the message says why."""


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed and rebuilt (never the subject's value)."""

    erasure_id: int
    pipeline: str
    subject_digest: str
    rows_raw: int
    rows_clean: int
    rows_quarantine: int
    rows_inbox: int
    rows_predictions: int
    windows_recomputed: int
    versions_rebuilt: int
    artifacts_deleted: int
    first_batch_id: int | None
    heads: dict[str, int | None]  # candidate -> its version after the erasure
    file_rewritten: bool  # the warehouse file and snapshot were rewritten without them


def find_subject(runtime: Runtime, name: str, column: str, digest: str) -> str | None:
    """The stored value of the subject column whose digest is `digest` (None: no row has
    it, or has it no longer)."""
    key = get_key(runtime.state_dir, "pii")
    state = runtime.pipeline(name)
    if state is None:
        return None
    with runtime.reader() as cursor:
        values = erasures.subject_values(cursor, state.config, column)
    wanted = digest.lower()
    return next((v for v in values if hmac.compare_digest(subject_digest(key, v), wanted)), None)


def _recompute_windows(
    con: Connection, config: PipelineConfig, rows: pl.DataFrame, batch_id: int
) -> int:
    """Replace every window the subject's rows counted in by its stats over the rows left."""
    t = PipelineTables(config.name)
    replaced = 0
    for spec in config.aggregates:
        windows = (
            rows.with_columns(window_start(config.event_time, spec).alias("window_start"))
            .select("window_start", *spec.by)
            .unique()
        )
        left = history.window_rows_before(con, config, spec, windows, NO_BATCH)
        stats = batch_partials(config, left.drop("batch_id"), spec)
        replaced += replace_windows(con, t.aggregate(spec.name), spec, windows, stats, batch_id)
    return replaced


def _recompute_lags(con: Connection, config: PipelineConfig, rows: pl.DataFrame) -> None:
    """Rebuild the lag history of every series the subject's rows belonged to."""
    t = PipelineTables(config.name)
    for lag in config.lags:
        series = rows.select(lag.by).unique()
        left = history.lag_rows_before(con, config, lag, series, NO_BATCH)
        fresh = left.select(
            *lag.by,
            pl.col(config.event_time).alias("event_at"),
            target_of(config).alias("value"),
        )
        # series with no label left: their stored history must go too
        emptied = series.join(
            fresh.select(lag.by).unique(), on=lag.by, how="anti", nulls_equal=True
        )
        history.delete_lag_series(con, t.lags(lag.name), lag.by, emptied)
        replace_lag_history(con, t.lags(lag.name), lag, fresh)


@dataclass
class _Rebuilt:
    candidate: str
    model: ModelState | None
    head: int | None
    new: list[registry.ModelVersion]
    tainted: list[registry.ModelVersion]
    shards: dict[int, list[ShardRecord]]  # rebuilt version -> its shards (if sharded)


def _rebuild(
    con: Connection, state_dir: Path, state: PipelineState, batches: set[int], first_number: int
) -> list[_Rebuilt]:
    """Relearn every candidate lineage that learned one of `batches` (after the deletes)."""
    config = state.config
    out: list[_Rebuilt] = []
    number = first_number
    for candidate, head in state.versions.items():
        if head is None:
            continue
        chain = lineage(con, config.name, head)
        touched = [i for i, v in enumerate(chain) if v.batch_id in batches]
        if not touched:
            continue
        first = touched[0]
        start = chain[first - 1] if first > 0 else None
        if start is None:
            model = fresh_candidate(config, chain[0])
        elif start.artifact_pruned_at is None:
            model = artifacts.load_artifact(state_dir, start)
        else:
            model = replay_version(con, config, chain[:first])[0]
        parent = start.version if start else None
        new: list[registry.ModelVersion] = []
        shards: dict[int, list[ShardRecord]] = {}
        for version, step in relearn(con, config, model, chain[first:]):
            if not step.rows_learned:
                continue
            model = step.learned
            row = artifacts.write_version(
                con,
                state_dir,
                config.name,
                model,
                estimator=version.estimator,
                params=registry_params(version),
                parent_version=parent,
                batch_id=version.batch_id,
                status="retired",
                metrics=step.metrics,
                created_at=utc.now(),
                candidate=candidate,
                params_sha256=parameters_sha256(model),
                version=number,
            )
            new.append(row)
            if step.shards:
                shards[row.version] = step.shards
            parent, number = row.version, number + 1
        out.append(
            _Rebuilt(
                candidate=candidate,
                model=model if (new or start) else None,
                head=parent,
                new=new,
                tainted=chain[first:],
                shards=shards,
            )
        )
    return out


def registry_params(version: registry.ModelVersion) -> dict[str, object]:
    """The estimator parameters a registry row recorded."""
    return dict(json.loads(version.params_json))


def erase_subject(
    runtime: Runtime,
    name: str,
    column: str,
    value: str,
    *,
    requested_by: str,
) -> ErasureReport:
    """Erase the subject whose stored `column` value is `value` from pipeline `name`."""
    state = runtime.pipeline(name)
    if state is None:
        raise ErasureError(f"{name} has no tables yet: nothing to erase")
    config = state.config
    digest = subject_digest(get_key(runtime.state_dir, "pii"), value)
    with runtime.writing() as con:
        rows = erasures.subject_clean_rows(con, config, column, value)
        batches = {int(b) for b in rows["batch_id"].unique().to_list()}
        rebuilt: list[_Rebuilt] = []  # artifacts written before a failed commit: removed below
        try:
            with transaction(con):
                erased = erasures.delete_subject(con, config, column, value)
                marker = int(
                    con.sql("SELECT coalesce(max(batch_id), 0) FROM _batches").fetchall()[0][0]
                )
                windows = _recompute_windows(con, config, rows, marker)
                _recompute_lags(con, config, rows)
                rebuilt = _rebuild(
                    con, runtime.state_dir, state, batches, registry.next_version(con, name)
                )
                at = utc.now()
                tainted = [v.version for r in rebuilt for v in r.tainted]
                erasures.retire_versions(con, name, tainted, at)
                for r in rebuilt:
                    for row in r.new:
                        registry.record(con, row)
                    for version, parts in r.shards.items():
                        registry.record_shards(con, name, version, parts)
                    if r.head is not None:
                        status = "champion" if r.candidate == state.champion else "challenger"
                        erasures.set_status(con, name, r.head, status)
                erasure_id = erasures.record_erasure(
                    con,
                    name,
                    digest,
                    requested_by,
                    erased,
                    windows=windows,
                    versions=sum(len(r.new) for r in rebuilt),
                    artifacts=len(tainted),
                    first_batch_id=min(batches) if batches else None,
                    at=at,
                )
        except BaseException:  # nothing committed: the artifacts written for it go too
            for r in rebuilt:
                for row in r.new:
                    (runtime.state_dir / row.artifact_path).unlink(missing_ok=True)
            raise
        for r in rebuilt:
            for retired in r.tainted:
                (runtime.state_dir / retired.artifact_path).unlink(missing_ok=True)
            if r.model is None:
                runtime.pipelines.forget(name)  # the candidate starts afresh on reload
                continue
            state.models[r.candidate] = r.model
            state.versions[r.candidate] = r.head
            state.windows[r.candidate] = ScoreWindow(rows=config.promotion.window_rows)
        runtime.publication.changed()
    removed = erased.raw + erased.clean + erased.quarantine + erased.inbox + erased.predictions
    if removed:
        runtime.rewrite_file()
    return ErasureReport(
        erasure_id=erasure_id,
        pipeline=name,
        subject_digest=digest,
        rows_raw=erased.raw,
        rows_clean=erased.clean,
        rows_quarantine=erased.quarantine,
        rows_inbox=erased.inbox,
        rows_predictions=erased.predictions,
        windows_recomputed=windows,
        versions_rebuilt=sum(len(r.new) for r in rebuilt),
        artifacts_deleted=sum(len(r.tainted) for r in rebuilt),
        first_batch_id=min(batches) if batches else None,
        heads={r.candidate: r.head for r in rebuilt},
        file_rewritten=bool(removed),
    )
