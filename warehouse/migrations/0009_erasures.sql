-- Erasure of a data subject: an audit row per request, never the subject's value.
CREATE TABLE _erasures (
    erasure_id          BIGINT PRIMARY KEY,
    pipeline            VARCHAR NOT NULL,
    subject_digest      VARCHAR NOT NULL,
    requested_by        VARCHAR NOT NULL,
    erased_at           TIMESTAMP NOT NULL,
    rows_raw            BIGINT NOT NULL,
    rows_clean          BIGINT NOT NULL,
    rows_quarantine     BIGINT NOT NULL,
    rows_inbox          BIGINT NOT NULL,
    rows_predictions    BIGINT NOT NULL,
    windows_recomputed  BIGINT NOT NULL,
    versions_rebuilt    BIGINT NOT NULL,
    artifacts_deleted   BIGINT NOT NULL,
    first_batch_id      BIGINT
);
COMMENT ON TABLE _erasures IS 'Erasures of a data subject (tidemill erase): what was removed and rebuilt. Holds no value of the subject.';
COMMENT ON COLUMN _erasures.erasure_id IS 'Increasing number.';
COMMENT ON COLUMN _erasures.pipeline IS 'Pipeline erased from.';
COMMENT ON COLUMN _erasures.subject_digest IS 'HMAC-SHA256 (pii key, kept outside the warehouse) of the subject''s stored value: lets an auditor check a given subject was erased, reveals nothing without the key.';
COMMENT ON COLUMN _erasures.requested_by IS 'Who asked (user@host).';
COMMENT ON COLUMN _erasures.erased_at IS 'When the erasure committed (UTC).';
COMMENT ON COLUMN _erasures.rows_raw IS 'Rows deleted from raw.P.';
COMMENT ON COLUMN _erasures.rows_clean IS 'Rows deleted from clean.P.';
COMMENT ON COLUMN _erasures.rows_quarantine IS 'Quarantined records deleted (their raw text named the subject).';
COMMENT ON COLUMN _erasures.rows_inbox IS 'Records deleted from the inbox before any batch took them.';
COMMENT ON COLUMN _erasures.rows_predictions IS 'Predictions deleted from ml.P_predictions.';
COMMENT ON COLUMN _erasures.windows_recomputed IS 'Aggregate windows recomputed from the remaining rows.';
COMMENT ON COLUMN _erasures.versions_rebuilt IS 'Model versions written by relearning, without the subject, the batches from the subject''s first one on.';
COMMENT ON COLUMN _erasures.artifacts_deleted IS 'Artifacts of versions that had learned the subject''s rows, deleted.';
COMMENT ON COLUMN _erasures.first_batch_id IS 'First batch that held a row of the subject (models were rebuilt from the version before it).';
