-- Schema version 2: every embedding carries a checksum (filled in for existing rows by the
-- migration's backfill), a face that fails it is quarantined, and the store keeps a content
-- digest (the sum of the checksums) that the saved FAISS index is checked against.
ALTER TABLE faces ADD COLUMN checksum TEXT NOT NULL DEFAULT '';
CREATE TABLE quarantine (
    face_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
INSERT INTO meta(key, value) VALUES ('content_digest', '0') ON CONFLICT (key) DO NOTHING;
CREATE INDEX subjects_created ON subjects (created_at, id);
