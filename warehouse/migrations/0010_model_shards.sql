-- Lineage of model versions learned in shards (pipelines with `distributed`).
CREATE TABLE ml.model_version_shards (
    pipeline       VARCHAR NOT NULL,
    version        BIGINT NOT NULL,
    shard          INTEGER NOT NULL,
    first_row      BIGINT NOT NULL,
    last_row       BIGINT NOT NULL,
    rows_learned   BIGINT NOT NULL,
    sha256         VARCHAR NOT NULL,
    cpu_seconds    DOUBLE NOT NULL,
    PRIMARY KEY (pipeline, version, shard)
);
COMMENT ON TABLE ml.model_version_shards IS 'The shards a model version was learned in (pipelines with `distributed`): each worker learned its rows of the batch from the parent version, and the version is their merge. No row: learned in one process.';
COMMENT ON COLUMN ml.model_version_shards.pipeline IS 'Pipeline name.';
COMMENT ON COLUMN ml.model_version_shards.version IS 'The merged version (ml.model_versions.version).';
COMMENT ON COLUMN ml.model_version_shards.shard IS 'Shard number, from 0, in batch order.';
COMMENT ON COLUMN ml.model_version_shards.first_row IS 'First row of the batch (canonical order, from 0) in the shard.';
COMMENT ON COLUMN ml.model_version_shards.last_row IS 'One past the last row of the shard.';
COMMENT ON COLUMN ml.model_version_shards.rows_learned IS 'Labelled rows the shard learned (its weight in the merge).';
COMMENT ON COLUMN ml.model_version_shards.sha256 IS 'parameters_sha256 of the shard model before the merge.';
COMMENT ON COLUMN ml.model_version_shards.cpu_seconds IS 'CPU time the shard cost its worker.';
