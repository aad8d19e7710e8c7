-- Several candidate models per pipeline (champion and challengers), automatic promotion
-- with its evidence, drift events and feature shift, adaptive batch sizes.
ALTER TABLE ml.model_versions ADD COLUMN candidate VARCHAR DEFAULT 'main';
ALTER TABLE ml.model_versions ADD COLUMN params_sha256 VARCHAR;
COMMENT ON COLUMN ml.model_versions.candidate IS 'Candidate (model.name or a challenger''s name in the config) whose lineage this version continues; backfill for a model trained by a backfill.';
COMMENT ON COLUMN ml.model_versions.params_sha256 IS 'SHA-256 of what the model learned (estimator coefficients and encoder statistics in a fixed order); `tidemill replay-model` proves a rebuild equal to it.';
COMMENT ON COLUMN ml.model_versions.status IS 'champion (serves predictions), challenger (latest version of another candidate: learns and is scored every batch), candidate (trained by a backfill, waiting for a promote), or retired.';

ALTER TABLE ml.batch_metrics ADD COLUMN candidate VARCHAR DEFAULT 'main';
COMMENT ON COLUMN ml.batch_metrics.candidate IS 'Candidate the scoring version belongs to; every candidate scores every batch before learning it.';
COMMENT ON TABLE ml.batch_metrics IS 'Prequential metrics: each batch scored by every candidate''s version serving BEFORE it learned that batch.';

ALTER TABLE ml.model_events ADD COLUMN evidence_json VARCHAR;
COMMENT ON COLUMN ml.model_events.evidence_json IS 'For auto_promote: the metric, window and per-candidate values that decided it (JSON).';
COMMENT ON COLUMN ml.model_events.action IS 'promote or rollback (a person), auto_promote (the promotion rule), drift_reset (challengers restarted after the champion drifted).';
COMMENT ON TABLE ml.model_events IS 'Champion changes: promote and rollback by people, auto_promote by the promotion rule, with who, when, why and the evidence.';

ALTER TABLE _batches ADD COLUMN batch_rows_limit BIGINT;
COMMENT ON COLUMN _batches.batch_rows_limit IS 'Most records this batch could take (batch_rows, or the adaptive size at the time).';

CREATE TABLE ml.drift_events (
    pipeline     VARCHAR NOT NULL,
    batch_id     BIGINT NOT NULL,
    candidate    VARCHAR NOT NULL,
    detector     VARCHAR NOT NULL,
    feature      VARCHAR,
    value        DOUBLE NOT NULL,
    detected_at  TIMESTAMP NOT NULL,
    action       VARCHAR NOT NULL
);
COMMENT ON TABLE ml.drift_events IS 'Drift found by a detector: a change in a candidate''s error stream (adwin, page_hinkley) or a shifted feature distribution (psi).';
COMMENT ON COLUMN ml.drift_events.pipeline IS 'Pipeline name.';
COMMENT ON COLUMN ml.drift_events.batch_id IS 'Batch in which the drift was detected.';
COMMENT ON COLUMN ml.drift_events.candidate IS 'Candidate whose errors drifted (for psi: the champion, whose encoder watched the features).';
COMMENT ON COLUMN ml.drift_events.detector IS 'adwin, page_hinkley (error stream) or psi (feature distribution).';
COMMENT ON COLUMN ml.drift_events.feature IS 'Feature that shifted (psi only).';
COMMENT ON COLUMN ml.drift_events.value IS 'Error-stream detectors: the mean error of the rows since the change. psi: the population stability index (> 0.25: significant shift).';
COMMENT ON COLUMN ml.drift_events.detected_at IS 'When the batch that found it committed (UTC).';
COMMENT ON COLUMN ml.drift_events.action IS 'What tidemill did: logged, or challengers_reset.';

CREATE TABLE ml.feature_shift (
    pipeline     VARCHAR NOT NULL,
    batch_id     BIGINT NOT NULL,
    feature      VARCHAR NOT NULL,
    psi          DOUBLE NOT NULL,
    PRIMARY KEY (pipeline, batch_id, feature)
);
COMMENT ON TABLE ml.feature_shift IS 'Population stability index of each numeric feature, one row per feature per completed window of drift.psi_window_rows rows, against the first drift.psi_reference_rows rows.';
COMMENT ON COLUMN ml.feature_shift.pipeline IS 'Pipeline name.';
COMMENT ON COLUMN ml.feature_shift.batch_id IS 'Batch that completed the window.';
COMMENT ON COLUMN ml.feature_shift.feature IS 'Numeric feature (after clean; before scaling).';
COMMENT ON COLUMN ml.feature_shift.psi IS 'sum((p - q) ln(p / q)) over 10 reference-quantile bins and a missing bin; < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant.';
