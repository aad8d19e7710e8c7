-- A batch of more than psi_window_rows rows completes several windows: one row per
-- feature per batch keeps the largest PSI of them (the key is pipeline, batch, feature).
COMMENT ON TABLE ml.feature_shift IS 'Population stability index of each numeric feature per batch that completed a window of drift.psi_window_rows rows, against the first drift.psi_reference_rows rows; a batch that completed several windows keeps the largest PSI of them.';
COMMENT ON COLUMN ml.feature_shift.batch_id IS 'Batch that completed the window (or windows).';
