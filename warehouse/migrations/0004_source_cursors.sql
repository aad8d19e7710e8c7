-- How far each database-table source has been read: dlt-style incremental state, moved
-- in the same transaction as the records it read go into the pipeline's inbox.
CREATE TABLE _cursors (
    pipeline       VARCHAR NOT NULL,
    source         VARCHAR NOT NULL,
    cursor_column  VARCHAR NOT NULL,
    last_value     VARCHAR,
    keys_at_last   VARCHAR[] NOT NULL,
    rows_read      BIGINT NOT NULL,
    read_at        TIMESTAMP NOT NULL,
    PRIMARY KEY (pipeline, source, cursor_column)
);
COMMENT ON TABLE _cursors IS 'Incremental read state per pipeline and database source: the last cursor value read and the keys read at it. Moves in the same transaction as the records it read enter the inbox.';
COMMENT ON COLUMN _cursors.pipeline IS 'Pipeline that reads the source.';
COMMENT ON COLUMN _cursors.source IS 'The source as records name it in _file, e.g. postgres:public.events. Another table or cursor column starts a new cursor from the beginning.';
COMMENT ON COLUMN _cursors.cursor_column IS 'Column of the source table the reads are ordered and resumed by.';
COMMENT ON COLUMN _cursors.last_value IS 'Greatest cursor value read so far, as the database writes it as text (UTC); the next read starts AT it, inclusive.';
COMMENT ON COLUMN _cursors.keys_at_last IS 'Keys of the rows already read whose cursor equals last_value; the next read skips them, so rows written later at the same value are read once.';
COMMENT ON COLUMN _cursors.rows_read IS 'Records read into the inbox from this source so far.';
COMMENT ON COLUMN _cursors.read_at IS 'When the cursor last moved (UTC).';
