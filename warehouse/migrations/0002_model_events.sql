-- Who changed which model serves, when and why (promote, rollback).
CREATE TABLE ml.model_events (
    pipeline       VARCHAR NOT NULL,
    event_id       BIGINT NOT NULL,
    changed_at     TIMESTAMP NOT NULL,
    action         VARCHAR NOT NULL,
    from_version   BIGINT,
    to_version     BIGINT NOT NULL,
    actor          VARCHAR NOT NULL,
    reason         VARCHAR NOT NULL,
    PRIMARY KEY (pipeline, event_id)
);
COMMENT ON TABLE ml.model_events IS 'Champion changes made by people: promote and rollback, with who, when and why. They take effect on the next batch.';
COMMENT ON COLUMN ml.model_events.pipeline IS 'Pipeline whose champion changed.';
COMMENT ON COLUMN ml.model_events.event_id IS 'Increasing number per pipeline.';
COMMENT ON COLUMN ml.model_events.changed_at IS 'When the change was made (UTC).';
COMMENT ON COLUMN ml.model_events.action IS 'promote or rollback.';
COMMENT ON COLUMN ml.model_events.from_version IS 'Champion before the change (NULL if there was none).';
COMMENT ON COLUMN ml.model_events.to_version IS 'Champion after the change.';
COMMENT ON COLUMN ml.model_events.actor IS 'Who made the change (user@host of the CLI, or the Prefect flow run).';
COMMENT ON COLUMN ml.model_events.reason IS 'Why, as given with --reason.';
