"""Per-pipeline tables, created from the pipeline's resolved config.

For pipeline P: `raw.P_inbox` (records read from landing files, waiting for a batch),
`raw.P` (accepted rows), `raw.P_quarantine` (rejected rows with reasons), `clean.P`,
`agg.P_<name>` per aggregate and `ml.P_predictions`. The schema they were created with
is kept in `_pipelines`; a config whose columns no longer match is refused with a clear
message instead of silently writing to tables of another shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb

from tidemill.config.pipeline import PipelineConfig
from tidemill.errors import TidemillError
from tidemill.tasks.features.clean import time_feature_column
from tidemill.warehouse.encryption import mirror
from tidemill.warehouse.quoting import lit, q
from tidemill.warehouse.transaction import transaction


@dataclass(frozen=True)
class PipelineTables:
    """Qualified names of one pipeline's tables."""

    pipeline: str

    @property
    def inbox(self) -> str:
        return f"raw.{q(self.pipeline + '_inbox')}"

    @property
    def inbox_seq(self) -> str:
        return f"raw.{q(self.pipeline + '_inbox_seq')}"

    @property
    def raw(self) -> str:
        return f"raw.{q(self.pipeline)}"

    @property
    def quarantine(self) -> str:
        return f"raw.{q(self.pipeline + '_quarantine')}"

    @property
    def quarantine_seq(self) -> str:
        return f"raw.{q(self.pipeline + '_quarantine_seq')}"

    @property
    def clean(self) -> str:
        return f"clean.{q(self.pipeline)}"

    @property
    def predictions(self) -> str:
        return f"ml.{q(self.pipeline + '_predictions')}"

    def aggregate(self, name: str) -> str:
        return f"agg.{q(self.pipeline + '_' + name)}"

    def lags(self, name: str) -> str:
        return f"agg.{q(self.pipeline + '_lag_' + name)}"


def schema_of(config: PipelineConfig) -> dict[str, object]:
    """The part of a pipeline config that fixes its table shapes."""
    return {
        "event_time": config.event_time,
        "key": config.key,
        "target": config.target,
        "features": config.features,
        "categorical": config.categorical,
        "task": config.task,
        "classes": config.label_classes if config.task == "classification" else None,
        "time_features": config.time_features,
        "aggregates": [a.model_dump() for a in config.aggregates],
        # only when declared, so warehouses made before lags existed keep their schema
        **({"lags": [lag.model_dump() for lag in config.lags]} if config.lags else {}),
    }


def _column_type(config: PipelineConfig, name: str) -> str:
    if name == config.event_time:
        return "TIMESTAMP"
    if name == config.key or name in config.categorical:
        return "VARCHAR"
    if name == config.target:
        return "VARCHAR" if config.task == "classification" else "DOUBLE"
    return "DOUBLE"


def _comments(table: str, described: dict[str, str], what: str) -> list[str]:
    statements = [f"COMMENT ON TABLE {table} IS {lit(what)}"]
    statements += [
        f"COMMENT ON COLUMN {table}.{q(col)} IS {lit(text)}" for col, text in described.items()
    ]
    return statements


def _describe_source(config: PipelineConfig) -> dict[str, str]:
    text = {}
    for name in config.source_columns:
        if name == config.key:
            text[name] = "Record key from the source (unique; repeats are quarantined)."
        elif name == config.event_time:
            text[name] = "Event time from the source, parsed to UTC."
        elif name == config.target:
            text[name] = "Target the model learns (NULL: unlabelled, scored but not learned)."
        elif name in config.categorical:
            text[name] = "Categorical feature from the source."
        else:
            text[name] = "Numeric feature from the source."
    return text


def ddl(config: PipelineConfig) -> list[str]:
    """CREATE and COMMENT statements for every table of the pipeline."""
    t = PipelineTables(config.name)
    columns = config.source_columns
    typed = ", ".join(f"{q(c)} {_column_type(config, c)}" for c in columns)
    texts = ", ".join(f"{q(c)} VARCHAR" for c in columns)
    source_text = _describe_source(config)
    pk = f", PRIMARY KEY ({q(config.key)})" if config.key else ""
    statements = [
        f"CREATE SEQUENCE IF NOT EXISTS {t.inbox_seq}",
        f"CREATE TABLE {t.inbox} (_seq BIGINT PRIMARY KEY, "
        f"_file VARCHAR NOT NULL, _line BIGINT NOT NULL, _raw VARCHAR, _reject VARCHAR, "
        f"_event_at TIMESTAMP, {texts})",
        *_comments(
            t.inbox,
            {
                "_seq": "Arrival order of the record.",
                "_file": "Landing file the record came from.",
                "_line": "Line (CSV/NDJSON) or row (Parquet) number in the file, from 1.",
                "_raw": "The record as it was in the file.",
                "_reject": "Why the reader could not split the record (ragged, bad UTF-8, ...).",
                "_event_at": "Event time parsed for ordering (NULL: unparseable, batched first).",
                **{c: f"{text} (as text, not yet validated)" for c, text in source_text.items()},
            },
            "Records read from landing files and not yet taken by a batch (text as read).",
        ),
        f"CREATE TABLE {t.raw} ({typed}, batch_id BIGINT NOT NULL, _loaded_at TIMESTAMP NOT NULL, "
        f"_file VARCHAR NOT NULL, _line BIGINT NOT NULL, _row_hash VARCHAR NOT NULL{pk})",
        *_comments(
            t.raw,
            {
                **source_text,
                "batch_id": "Batch that accepted the row (_batches.batch_id).",
                "_loaded_at": "When the row was committed (UTC).",
                "_file": "Landing file the row came from.",
                "_line": "Line or row number in that file.",
                "_row_hash": "MD5 of the row's source columns: its identity when there is no key.",
            },
            f"Every accepted source row of pipeline {config.name}, exactly once, typed.",
        ),
        f"CREATE TABLE {t.quarantine} (batch_id BIGINT NOT NULL, _file VARCHAR NOT NULL, "
        f"_line BIGINT NOT NULL, raw_text VARCHAR, reason VARCHAR NOT NULL, "
        f"quarantined_at TIMESTAMP NOT NULL)",
        *quarantine_ids(config.name),
        *_comments(
            t.quarantine,
            {
                "batch_id": "Batch that rejected the record.",
                "_file": "Landing file the record came from.",
                "_line": "Line or row number in that file.",
                "raw_text": "The record exactly as read (invalid UTF-8 shown as U+FFFD).",
                "reason": "Every check the record failed, separated by '; '.",
                "quarantined_at": "When it was quarantined (UTC).",
            },
            f"Rejected records of pipeline {config.name}: raw text and the reason; never dropped.",
        ),
    ]
    derived = {time_feature_column(n): "TINYINT" for n in config.time_features}
    clean_cols = ", ".join(
        [f"{q(c)} {_column_type(config, c)}" for c in columns]
        + [f"{q(c)} {kind}" for c, kind in derived.items()]
    )
    statements += [
        f"CREATE TABLE {t.clean} (batch_id BIGINT NOT NULL, {clean_cols})",
        *_comments(
            t.clean,
            {
                "batch_id": "Batch that produced the row.",
                **source_text,
                **{c: f"Derived from {config.event_time} (UTC)." for c in derived},
            },
            f"Clean rows of pipeline {config.name}: typed, trimmed, with time features.",
        ),
    ]
    for spec in config.aggregates:
        name = t.aggregate(spec.name)
        by = ", ".join(f"{q(c)} {_column_type(config, c)}" for c in spec.by)
        by_keys = ", ".join(q(c) for c in spec.by)
        statements += [
            f"CREATE TABLE {name} (window_start TIMESTAMP NOT NULL, {by}, n_rows BIGINT NOT NULL, "
            f"n_labelled BIGINT NOT NULL, target_sum DOUBLE NOT NULL, "
            f"updated_batch_id BIGINT NOT NULL, PRIMARY KEY (window_start, {by_keys}))",
            *_comments(
                name,
                {
                    "window_start": f"Start of the {spec.every} event-time window (UTC).",
                    **{c: "Group key." for c in spec.by},
                    "n_rows": "Accepted rows in the window and group (late rows included).",
                    "n_labelled": "Of those, rows with a target.",
                    "target_sum": "Sum of the target (classification: count of the positive "
                    "class); target_sum / n_labelled is the mean.",
                    "updated_batch_id": "Last batch that added to this window.",
                },
                f"{spec.every} windows per {', '.join(spec.by)} of pipeline {config.name}.",
            ),
        ]
    for lag in config.lags:
        name = t.lags(lag.name)
        by = ", ".join(f"{q(c)} {_column_type(config, c)}" for c in lag.by)
        statements += [
            f"CREATE TABLE {name} ({by}, event_at TIMESTAMP NOT NULL, value DOUBLE NOT NULL)",
            *_comments(
                name,
                {
                    **{c: "Series key." for c in lag.by},
                    "event_at": "Event time of the labelled row (UTC).",
                    "value": "Its target (classification: 1 for the positive class, else 0).",
                },
                f"The {lag.n} latest labels per {', '.join(lag.by)} of pipeline {config.name}: "
                f"what the features {lag.name}_lag1..{lag.n} of the next rows read.",
            ),
        ]
    key_col = f"{q(config.key)} VARCHAR, " if config.key else ""
    statements += [
        f"CREATE TABLE {t.predictions} (batch_id BIGINT NOT NULL, {key_col}"
        f"{q(config.event_time)} TIMESTAMP, model_version BIGINT NOT NULL, "
        f"prediction VARCHAR, score DOUBLE)",
        *_comments(
            t.predictions,
            {
                "batch_id": "Batch whose rows were scored.",
                **({config.key: "Record key, to join a late label."} if config.key else {}),
                config.event_time: "Event time of the scored row (UTC).",
                "model_version": "Model version that scored the row before learning it.",
                "prediction": "Predicted class label or value.",
                "score": "Probability of the positive class (classification) or the value.",
            },
            f"Every prediction served for pipeline {config.name}.",
        ),
    ]
    return statements


def quarantine_ids(pipeline: str) -> list[str]:
    """Statements giving raw.P_quarantine its stable row ids (`tidemill quarantine show
    ID`); on a table made before them, existing rows are numbered in place."""
    t = PipelineTables(pipeline)
    return [
        f"CREATE SEQUENCE IF NOT EXISTS {t.quarantine_seq}",
        # the default numbers the rows already there, then goes (see frames.py)
        f"ALTER TABLE {t.quarantine} ADD COLUMN IF NOT EXISTS quarantine_id BIGINT "
        f"DEFAULT nextval('{t.quarantine_seq}')",
        f"ALTER TABLE {t.quarantine} ALTER COLUMN quarantine_id DROP DEFAULT",
        f"COMMENT ON COLUMN {t.quarantine}.quarantine_id IS "
        f"{lit('Stable id of the rejected record (tidemill quarantine show/readmit ID).')}",
    ]


class SchemaMismatch(TidemillError, RuntimeError):
    """The config no longer matches the tables this pipeline was created with."""


def stored_schema(con: duckdb.DuckDBPyConnection, pipeline: str) -> dict[str, object] | None:
    """The schema `_pipelines` recorded for `pipeline`, or None if it has no tables yet."""
    rows = con.execute(
        "SELECT schema_json FROM _pipelines WHERE pipeline = ?", [pipeline]
    ).fetchall()
    return json.loads(rows[0][0]) if rows else None


def _drop_function_defaults(con: duckdb.DuckDBPyConnection, pipeline: str) -> None:
    """Tables made before 1.5.5 numbered rows with `DEFAULT nextval(...)`; Quack clients
    cannot attach a database that has one, so the inserts number them now (frames.py)."""
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'raw' "
        "AND database_name = current_database() "
        "AND table_name IN (?, ?) AND column_default LIKE 'nextval(%'",
        [f"{pipeline}_inbox", f"{pipeline}_quarantine"],
    ).fetchall():
        con.execute(f"ALTER TABLE raw.{q(table)} ALTER COLUMN {q(column)} DROP DEFAULT")


def ensure_pipeline_tables(con: duckdb.DuckDBPyConnection, config: PipelineConfig) -> bool:
    """Create the pipeline's tables if missing (one transaction); True if created.

    Raises SchemaMismatch when tables exist with a different schema.
    """
    wanted = schema_of(config)
    existing = stored_schema(con, config.name)
    if existing is not None:
        if existing != wanted:
            changed = sorted(k for k in wanted if wanted[k] != existing.get(k))
            raise SchemaMismatch(
                f"pipeline '{config.name}' was created with a different {', '.join(changed)}; "
                "keep the old config, or use a new pipeline name or state dir"
            )
        has_ids = con.execute(
            "SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'raw' "
            "AND database_name = current_database() "
            "AND table_name = ? AND column_name = 'quarantine_id'",
            [f"{config.name}_quarantine"],
        ).fetchall()[0][0]
        if not has_ids:  # tables made before quarantine ids
            for statement in quarantine_ids(config.name):
                con.execute(statement)
        _drop_function_defaults(con, config.name)
        mirror(con)
        return False
    with transaction(con):
        for statement in ddl(config):
            con.execute(statement)
        con.execute(
            "INSERT INTO _pipelines VALUES (?, ?, now()::TIMESTAMP)",
            [config.name, json.dumps(wanted, sort_keys=True)],
        )
        con.execute(
            "INSERT INTO _watermarks VALUES (?, NULL, NULL, 0, now()::TIMESTAMP)", [config.name]
        )
    mirror(con)
    return True
