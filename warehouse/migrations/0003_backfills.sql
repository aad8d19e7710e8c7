-- Manual backfills: one row per request, with progress counters and the outcome.
CREATE TABLE _backfills (
    backfill_id        BIGINT PRIMARY KEY,
    pipeline           VARCHAR NOT NULL,
    start_at           TIMESTAMP NOT NULL,
    end_at             TIMESTAMP NOT NULL,
    retrain            BOOLEAN NOT NULL,
    status             VARCHAR NOT NULL,
    rows_in_window     BIGINT NOT NULL,
    rows_done          BIGINT NOT NULL,
    rows_inserted      BIGINT NOT NULL,
    rows_present       BIGINT NOT NULL,
    rows_quarantined   BIGINT NOT NULL,
    windows_recomputed BIGINT NOT NULL,
    candidate_version  BIGINT,
    requested_by       VARCHAR NOT NULL,
    started_at         TIMESTAMP NOT NULL,
    finished_at        TIMESTAMP,
    error              VARCHAR
);
COMMENT ON TABLE _backfills IS 'Manual backfills (tidemill backfill, or the backfill deployment in the Prefect UI): window, progress and outcome.';
COMMENT ON COLUMN _backfills.backfill_id IS 'Increasing id of the backfill.';
COMMENT ON COLUMN _backfills.pipeline IS 'Pipeline backfilled.';
COMMENT ON COLUMN _backfills.start_at IS 'Window start, inclusive (event time, UTC).';
COMMENT ON COLUMN _backfills.end_at IS 'Window end, exclusive (event time, UTC).';
COMMENT ON COLUMN _backfills.retrain IS 'Whether a candidate model was trained on the window.';
COMMENT ON COLUMN _backfills.status IS 'running, done, failed, or interrupted (its process died; run it again to finish).';
COMMENT ON COLUMN _backfills.rows_in_window IS 'Source records with an event time in the window.';
COMMENT ON COLUMN _backfills.rows_done IS 'Of those, records processed so far (progress).';
COMMENT ON COLUMN _backfills.rows_inserted IS 'Records that were missing and were inserted into raw.P and clean.P.';
COMMENT ON COLUMN _backfills.rows_present IS 'Records already stored (same key, or same content when there is no key), or still waiting in the inbox.';
COMMENT ON COLUMN _backfills.rows_quarantined IS 'Records rejected by validation and not quarantined before.';
COMMENT ON COLUMN _backfills.windows_recomputed IS 'Aggregate windows recomputed from the clean rows because the backfill added to them.';
COMMENT ON COLUMN _backfills.candidate_version IS 'Model version trained on the window (status candidate), with --retrain.';
COMMENT ON COLUMN _backfills.requested_by IS 'Who asked (user@host, or the Prefect flow run).';
COMMENT ON COLUMN _backfills.started_at IS 'When it started (UTC).';
COMMENT ON COLUMN _backfills.finished_at IS 'When it ended (UTC).';
COMMENT ON COLUMN _backfills.error IS 'Why it failed.';
COMMENT ON COLUMN _batches.status IS 'committed (a micro-batch: rows, model and metrics written atomically), backfill (rows a backfill inserted; nothing learned), or failed (nothing written; error says why).';
