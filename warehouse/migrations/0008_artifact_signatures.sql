-- Artifacts you can trust: the registry signs every artifact it writes with a key kept
-- outside the warehouse, so whoever can write this file and the artifacts folder still
-- cannot make the worker unpickle a file of their own.
ALTER TABLE ml.model_versions ADD COLUMN artifact_signature VARCHAR;
COMMENT ON COLUMN ml.model_versions.artifact_signature IS 'HMAC-SHA256 (hex) of the pipeline, the version and the artifact file''s SHA-256, keyed with the artifact key (TIDEMILL_ARTIFACT_KEY or <state>/keys/artifact.key, never stored in the warehouse); checked before the file is unpickled. NULL: written before signatures existed, refused until `tidemill models sign` re-signs it.';
COMMENT ON COLUMN ml.model_versions.sha256 IS 'SHA-256 of the artifact file; a file that does not match (or whose artifact_signature does not) is never unpickled.';
COMMENT ON COLUMN ml.model_versions.library_versions IS 'JSON of python, scikit-learn, numpy, joblib, polars versions that wrote the artifact; loading refuses it when the running scikit-learn, numpy or joblib differs in major.minor (and scikit-learn in any part, as scikit-learn itself warns).';
