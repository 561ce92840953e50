-- Schema version 4: "not this person". A negative example of a subject is an embedding the
-- user said is not that subject: a probe's (only its embedding is kept) or a face's (a gallery
-- face, face_id set, or a cluster job's). Erased with the subject, and with the gallery face it
-- was copied from; compared only with probes of its own model.
CREATE TABLE negatives (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL DEFAULT '',
    embedding BLOB NOT NULL,
    checksum TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('probe', 'face')),
    face_id INTEGER REFERENCES faces(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    UNIQUE (subject_id, face_id)
);
CREATE INDEX negatives_subject ON negatives(subject_id);
CREATE INDEX negatives_face ON negatives(face_id);
