-- Schema version 3: every embedding carries a checksum (filled in for existing rows by the
-- migration's backfill), and a face that fails it is quarantined (never matched).
ALTER TABLE faces ADD COLUMN checksum TEXT NOT NULL DEFAULT '';
CREATE TABLE quarantine (
    face_id BIGINT PRIMARY KEY,
    reason TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
