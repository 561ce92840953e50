-- MarginFace embedded gallery, schema version 1: subjects and faces (the source of truth).
-- (Also what releases before versioned SQLite migrations created, with the same tables.)
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    model_id TEXT NOT NULL,
    box TEXT NOT NULL,
    det_score REAL NOT NULL,
    image_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (subject_id, image_sha256)
);
CREATE INDEX IF NOT EXISTS faces_subject ON faces(subject_id);
