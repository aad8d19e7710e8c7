-- Artifact retention: which versions' joblib files were deleted by the retention policy
-- (tasks/retention.py), and a ledger of the maintenance runs that did it.
ALTER TABLE ml.model_versions ADD COLUMN artifact_pruned_at TIMESTAMP;
COMMENT ON COLUMN ml.model_versions.artifact_pruned_at IS 'When the retention policy deleted this version''s artifact file (UTC); NULL while the file is kept. The row itself is kept for good; a pruned version cannot be loaded, promoted or rolled back to.';

CREATE TABLE _maintenance_runs (
    run_id              BIGINT PRIMARY KEY,
    pipeline            VARCHAR NOT NULL,
    started_at          TIMESTAMP NOT NULL,
    finished_at         TIMESTAMP NOT NULL,
    policy_json         VARCHAR NOT NULL,
    artifacts_pruned    BIGINT NOT NULL,
    artifacts_kept      BIGINT NOT NULL,
    orphans_removed     BIGINT NOT NULL,
    temp_files_removed  BIGINT NOT NULL,
    bytes_freed         BIGINT NOT NULL,
    requested_by        VARCHAR NOT NULL
);
COMMENT ON TABLE _maintenance_runs IS 'Artifact maintenance runs (the maintenance deployment, or tidemill maintain): what the retention policy pruned and the janitor removed.';
COMMENT ON COLUMN _maintenance_runs.run_id IS 'Increasing id of the run.';
COMMENT ON COLUMN _maintenance_runs.pipeline IS 'Pipeline whose artifacts were maintained.';
COMMENT ON COLUMN _maintenance_runs.started_at IS 'When the run started (UTC).';
COMMENT ON COLUMN _maintenance_runs.finished_at IS 'When the run finished (UTC).';
COMMENT ON COLUMN _maintenance_runs.policy_json IS 'Retention policy applied (JSON: keep_last, hourly_hours, daily_days) and the janitor''s grace_seconds.';
COMMENT ON COLUMN _maintenance_runs.artifacts_pruned IS 'Versions whose artifact file this run deleted (ml.model_versions.artifact_pruned_at set).';
COMMENT ON COLUMN _maintenance_runs.artifacts_kept IS 'Versions of the pipeline whose artifact file is kept after the run.';
COMMENT ON COLUMN _maintenance_runs.orphans_removed IS 'Artifact files no kept version names (a batch that crashed before its commit, or a pruned file a crash left behind), older than the grace period, removed.';
COMMENT ON COLUMN _maintenance_runs.temp_files_removed IS 'Unfinished artifact writes (*.joblib.part) older than the grace period, removed.';
COMMENT ON COLUMN _maintenance_runs.bytes_freed IS 'Bytes of all files this run removed.';
COMMENT ON COLUMN _maintenance_runs.requested_by IS 'Who ran it (the Prefect flow run, or user@host of the CLI).';
