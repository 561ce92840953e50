-- Schema version 2: batch index jobs, shared by the API replicas (a job accepted by one replica
-- can be followed through any other).
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_at DESC);
