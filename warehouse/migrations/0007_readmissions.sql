-- Re-admission of quarantined records (tidemill quarantine readmit): which rows of
-- raw.P_quarantine went back to the inbox, when and by whom. A row here commits in the
-- same transaction as the corrected record's inbox row, so re-admitting twice adds nothing.
-- It holds no record text (erasure of a data subject only has to look at the pipeline tables).
CREATE TABLE _readmissions (
    pipeline         VARCHAR NOT NULL,
    quarantine_id    BIGINT NOT NULL,
    readmitted_at    TIMESTAMP NOT NULL,
    readmitted_by    VARCHAR NOT NULL,
    columns_changed  VARCHAR NOT NULL,
    PRIMARY KEY (pipeline, quarantine_id)
);
COMMENT ON TABLE _readmissions IS 'Quarantined records put back into the inbox by a person (tidemill quarantine readmit); the next batch validates them like any record.';
COMMENT ON COLUMN _readmissions.pipeline IS 'Pipeline whose raw.P_quarantine held the record.';
COMMENT ON COLUMN _readmissions.quarantine_id IS 'raw.P_quarantine.quarantine_id of the re-admitted record.';
COMMENT ON COLUMN _readmissions.readmitted_at IS 'When it went back to the inbox (UTC).';
COMMENT ON COLUMN _readmissions.readmitted_by IS 'Who re-admitted it (user@host).';
COMMENT ON COLUMN _readmissions.columns_changed IS 'Columns the person corrected, comma-separated (empty: re-admitted as it was); the values are in the record itself.';
