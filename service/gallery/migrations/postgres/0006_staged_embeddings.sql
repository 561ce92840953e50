-- Schema version 6: a gallery moves to another recognizer without re-enrolling anyone
-- (`marginface gallery migrate-model`). staged_embeddings holds a face's embeddings of models
-- other than its current one: the target model's while a migration re-embeds (a face with a row
-- is done: a killed migration resumes there), and after the switch the previous model's (what a
-- rollback swaps back until they are purged). Erased with the face. migration_failures lists
-- the faces a model could not re-embed (no kept chip or photo, no face found): never dropped.
CREATE TABLE staged_embeddings (
    face_id BIGINT NOT NULL REFERENCES faces (id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    embedding BYTEA NOT NULL,
    checksum TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (face_id, model_id)
);
CREATE INDEX staged_model ON staged_embeddings (model_id, face_id);
CREATE TABLE migration_failures (
    face_id BIGINT NOT NULL REFERENCES faces (id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (face_id, model_id)
);
