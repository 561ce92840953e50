-- Schema version 3: every stored embedding records the full sha256 of the weights that made
-- it (beside model_id, "name@sha256[:12]"); the gallery compares only the embeddings of its
-- own model. Rows stored before this version are filled in at the first open by their model.
ALTER TABLE faces ADD COLUMN model_sha256 TEXT NOT NULL DEFAULT '';
