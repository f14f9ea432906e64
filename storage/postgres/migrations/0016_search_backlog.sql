-- The twin of SQLite's 0016 (FTS5 documents written once per batch instead of from triggers).
-- PostgreSQL's GIN trigram index has no per-statement flush to avoid. The version number only.
SELECT 1;
