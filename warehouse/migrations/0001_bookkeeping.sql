-- Layers and the bookkeeping every pipeline shares. Per-pipeline tables (raw.P, clean.P,
-- agg.P_*, ml.P_predictions) are created from the pipeline's config by
-- warehouse/pipeline_tables.py and registered in _pipelines.
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS clean;
CREATE SCHEMA IF NOT EXISTS agg;
CREATE SCHEMA IF NOT EXISTS ml;

CREATE TABLE _pipelines (
    pipeline     VARCHAR PRIMARY KEY,
    schema_json  VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL
);
COMMENT ON TABLE _pipelines IS 'Pipelines known to this warehouse and the column schema their tables were created with.';
COMMENT ON COLUMN _pipelines.pipeline IS 'Pipeline name from the config file ([pipelines.NAME]).';
COMMENT ON COLUMN _pipelines.schema_json IS 'JSON of the resolved schema (event_time, key, target, features, categorical, task, classes, aggregates).';
COMMENT ON COLUMN _pipelines.created_at IS 'When the pipeline''s tables were created (UTC).';

CREATE TABLE _files (
    pipeline      VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    size_bytes    BIGINT NOT NULL,
    mtime_ns      BIGINT NOT NULL,
    sha256        VARCHAR NOT NULL,
    header        VARCHAR,
    records       BIGINT NOT NULL,
    disposition   VARCHAR NOT NULL,
    ingested_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (pipeline, path, sha256)
);
COMMENT ON TABLE _files IS 'Landing-file ledger: every file version read into a pipeline''s inbox, once.';
COMMENT ON COLUMN _files.pipeline IS 'Pipeline that read the file.';
COMMENT ON COLUMN _files.path IS 'Absolute path of the landing file.';
COMMENT ON COLUMN _files.size_bytes IS 'Bytes of the file covered by this ledger row (a grown file gets a new row for its whole new length).';
COMMENT ON COLUMN _files.mtime_ns IS 'Modification time of the file when read (ns since epoch).';
COMMENT ON COLUMN _files.sha256 IS 'SHA-256 of the first size_bytes bytes.';
COMMENT ON COLUMN _files.header IS 'Column names found in the file (comma separated).';
COMMENT ON COLUMN _files.records IS 'Records this ledger row added to the inbox (a grown file: only the appended ones).';
COMMENT ON COLUMN _files.disposition IS 'new | grown (appended records only) | replaced (whole file read again; repeated keys are quarantined) | unreadable (quarantined whole).';
COMMENT ON COLUMN _files.ingested_at IS 'When the file was read (UTC).';

CREATE TABLE _batches (
    batch_id           BIGINT PRIMARY KEY,
    pipeline           VARCHAR NOT NULL,
    status             VARCHAR NOT NULL,
    window_start_at    TIMESTAMP,
    window_end_at      TIMESTAMP,
    rows_in            BIGINT NOT NULL,
    rows_accepted      BIGINT NOT NULL,
    rows_quarantined   BIGINT NOT NULL,
    rows_learned       BIGINT NOT NULL,
    model_version      BIGINT,
    started_at         TIMESTAMP NOT NULL,
    finished_at        TIMESTAMP NOT NULL,
    timings_json       VARCHAR NOT NULL,
    flow_run_id        VARCHAR,
    error              VARCHAR
);
COMMENT ON TABLE _batches IS 'One row per micro-batch: what it read, kept, rejected and learned, and how long each step took.';
COMMENT ON COLUMN _batches.batch_id IS 'Increasing id of the batch; every row the batch wrote carries it.';
COMMENT ON COLUMN _batches.pipeline IS 'Pipeline the batch belongs to.';
COMMENT ON COLUMN _batches.status IS 'committed (rows, model and metrics written atomically) or failed (nothing written; error says why).';
COMMENT ON COLUMN _batches.window_start_at IS 'Earliest event time among the batch''s accepted rows (UTC).';
COMMENT ON COLUMN _batches.window_end_at IS 'Latest event time among the batch''s accepted rows (UTC).';
COMMENT ON COLUMN _batches.rows_in IS 'Records taken from the inbox.';
COMMENT ON COLUMN _batches.rows_accepted IS 'Records written to raw.P and clean.P.';
COMMENT ON COLUMN _batches.rows_quarantined IS 'Records written to raw.P_quarantine with a reason.';
COMMENT ON COLUMN _batches.rows_learned IS 'Labelled rows the model learned (partial_fit) in this batch.';
COMMENT ON COLUMN _batches.model_version IS 'Model version serving after this batch (the one it created, if it learned).';
COMMENT ON COLUMN _batches.started_at IS 'When the batch started (UTC).';
COMMENT ON COLUMN _batches.finished_at IS 'When the batch committed or failed (UTC).';
COMMENT ON COLUMN _batches.timings_json IS 'JSON object: step name -> milliseconds (read, validate, clean, aggregate, features, score, learn, artifact, write).';
COMMENT ON COLUMN _batches.flow_run_id IS 'Prefect flow run that executed the batch, when run by Prefect.';
COMMENT ON COLUMN _batches.error IS 'Why a failed batch failed.';

CREATE TABLE _watermarks (
    pipeline          VARCHAR PRIMARY KEY,
    event_time_at     TIMESTAMP,
    last_batch_id     BIGINT,
    rows_total        BIGINT NOT NULL,
    heartbeat_at      TIMESTAMP NOT NULL
);
COMMENT ON TABLE _watermarks IS 'Per pipeline: how far it has read (event time), its last batch and its last heartbeat.';
COMMENT ON COLUMN _watermarks.pipeline IS 'Pipeline name.';
COMMENT ON COLUMN _watermarks.event_time_at IS 'Latest event time of any accepted row so far (UTC); rows later than it are new, earlier ones are late.';
COMMENT ON COLUMN _watermarks.last_batch_id IS 'Last committed batch of the pipeline.';
COMMENT ON COLUMN _watermarks.rows_total IS 'Accepted rows so far.';
COMMENT ON COLUMN _watermarks.heartbeat_at IS 'Last time a cycle ran, including empty cycles (UTC).';

CREATE TABLE ml.model_versions (
    pipeline          VARCHAR NOT NULL,
    version           BIGINT NOT NULL,
    parent_version    BIGINT,
    batch_id          BIGINT NOT NULL,
    rows_seen         BIGINT NOT NULL,
    batches_seen      BIGINT NOT NULL,
    created_at        TIMESTAMP NOT NULL,
    artifact_path     VARCHAR NOT NULL,
    sha256            VARCHAR NOT NULL,
    estimator         VARCHAR NOT NULL,
    params_json       VARCHAR NOT NULL,
    library_versions  VARCHAR NOT NULL,
    feature_names     VARCHAR[] NOT NULL,
    status            VARCHAR NOT NULL,
    metrics_json      VARCHAR NOT NULL,
    PRIMARY KEY (pipeline, version)
);
COMMENT ON TABLE ml.model_versions IS 'Model registry: one row per model version, with lineage, counts, artifact hash and prequential metrics.';
COMMENT ON COLUMN ml.model_versions.pipeline IS 'Pipeline the model serves.';
COMMENT ON COLUMN ml.model_versions.version IS 'Version number, 1, 2, ... per pipeline.';
COMMENT ON COLUMN ml.model_versions.parent_version IS 'Version this one was trained from (partial_fit continued it); NULL for the first.';
COMMENT ON COLUMN ml.model_versions.batch_id IS 'Batch whose rows this version learned last.';
COMMENT ON COLUMN ml.model_versions.rows_seen IS 'Labelled rows learned by this version and its ancestors; each row exactly once.';
COMMENT ON COLUMN ml.model_versions.batches_seen IS 'Batches learned by this version and its ancestors.';
COMMENT ON COLUMN ml.model_versions.created_at IS 'When the version was committed (UTC).';
COMMENT ON COLUMN ml.model_versions.artifact_path IS 'joblib file of the model state, relative to the state folder.';
COMMENT ON COLUMN ml.model_versions.sha256 IS 'SHA-256 of the artifact file; a file that does not match is never loaded.';
COMMENT ON COLUMN ml.model_versions.estimator IS 'Estimator name or dotted path from the config.';
COMMENT ON COLUMN ml.model_versions.params_json IS 'Estimator parameters (JSON).';
COMMENT ON COLUMN ml.model_versions.library_versions IS 'JSON of python, scikit-learn, numpy, joblib, polars versions that wrote the artifact.';
COMMENT ON COLUMN ml.model_versions.feature_names IS 'Matrix columns the estimator was trained on, in order.';
COMMENT ON COLUMN ml.model_versions.status IS 'champion (serves predictions), candidate, or retired.';
COMMENT ON COLUMN ml.model_versions.metrics_json IS 'Prequential metrics of the batch this version learned, scored by its parent before learning (JSON).';

CREATE TABLE ml.batch_metrics (
    pipeline       VARCHAR NOT NULL,
    batch_id       BIGINT NOT NULL,
    model_version  BIGINT NOT NULL,
    n_scored       BIGINT NOT NULL,
    metric         VARCHAR NOT NULL,
    value          DOUBLE NOT NULL,
    PRIMARY KEY (pipeline, batch_id, model_version, metric)
);
COMMENT ON TABLE ml.batch_metrics IS 'Prequential metrics: each batch scored by the model version serving BEFORE it learned that batch.';
COMMENT ON COLUMN ml.batch_metrics.pipeline IS 'Pipeline name.';
COMMENT ON COLUMN ml.batch_metrics.batch_id IS 'Batch that was scored.';
COMMENT ON COLUMN ml.batch_metrics.model_version IS 'Model version that made the predictions (it had not seen these rows).';
COMMENT ON COLUMN ml.batch_metrics.n_scored IS 'Labelled rows scored.';
COMMENT ON COLUMN ml.batch_metrics.metric IS 'accuracy, log_loss (classification) or mae, rmse (regression).';
COMMENT ON COLUMN ml.batch_metrics.value IS 'Metric value over the batch''s labelled rows.';
