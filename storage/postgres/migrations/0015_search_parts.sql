-- The twin of SQLite's 0015 (the FTS5 index in parts per run). PostgreSQL's run_search is a
-- plain table with a GIN trigram index (migration 0006); its rebuild at a run's end is not on a
-- measured hot path here (W7 is bound by the client's statements), so it keeps one document per
-- run. Nothing to change: the version number only.
SELECT 1;
