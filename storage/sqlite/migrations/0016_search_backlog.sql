-- The search index written once per batch (issue 21). Each FTS5 write made from a trigger ran
-- inside the trigger's statement savepoint, and FTS5 flushes its pending terms at every
-- savepoint: one tiny segment, and the merge work that follows, per document. A run's end cost
-- ~40 µs of writer CPU for its result document, ~10 µs for the same insert made in a batch.
-- Now the triggers only note which documents changed (`search_backlog`, doc = the FTS rowid,
-- number * 4 + part as in 0015; `fresh` = cannot be in the index yet), and the writer rewrites
-- them with three statements at the end of the same transaction (storage/sqlite/search.py).
-- The index is therefore exactly as current as before at every commit; a document left in the
-- backlog by a transaction that did not go through the writer is written by its next batch.

CREATE TABLE search_backlog (
    doc   INTEGER PRIMARY KEY,
    fresh INTEGER NOT NULL
);

DROP TRIGGER run_search_insert;
DROP TRIGGER run_search_head_update;
DROP TRIGGER run_search_result_set;
DROP TRIGGER run_search_result_update;
DROP TRIGGER run_search_metadata_insert;
DROP TRIGGER run_search_metadata_update;
DROP TRIGGER run_search_metadata_delete;

CREATE TRIGGER run_search_insert AFTER INSERT ON runs BEGIN
    INSERT OR IGNORE INTO search_backlog (doc, fresh) VALUES (new.number * 4, 1);
    INSERT OR IGNORE INTO search_backlog (doc, fresh)
    SELECT new.number * 4 + 1, 1 WHERE new.output IS NOT NULL OR new.error IS NOT NULL;
END;

CREATE TRIGGER run_search_head_update AFTER UPDATE OF input, tags ON runs
WHEN new.input IS NOT old.input OR new.tags IS NOT old.tags
BEGIN
    INSERT INTO search_backlog (doc, fresh) VALUES (new.number * 4, 0)
    ON CONFLICT (doc) DO UPDATE SET fresh = 0;
END;

CREATE TRIGGER run_search_result_update AFTER UPDATE OF output, error ON runs
WHEN new.output IS NOT old.output OR new.error IS NOT old.error
BEGIN
    INSERT INTO search_backlog (doc, fresh)
    VALUES (new.number * 4 + 1, old.output IS NULL AND old.error IS NULL)
    ON CONFLICT (doc) DO UPDATE SET fresh = fresh AND excluded.fresh;
END;

CREATE TRIGGER run_search_metadata_insert AFTER INSERT ON metadata BEGIN
    INSERT INTO search_backlog (doc, fresh)
    SELECT number * 4 + 2, 0 FROM runs WHERE run_id = new.run_id
    ON CONFLICT (doc) DO UPDATE SET fresh = 0;
END;

CREATE TRIGGER run_search_metadata_update AFTER UPDATE ON metadata BEGIN
    INSERT INTO search_backlog (doc, fresh)
    SELECT number * 4 + 2, 0 FROM runs WHERE run_id = new.run_id
    ON CONFLICT (doc) DO UPDATE SET fresh = 0;
END;

CREATE TRIGGER run_search_metadata_delete AFTER DELETE ON metadata BEGIN
    INSERT INTO search_backlog (doc, fresh)
    SELECT number * 4 + 2, 0 FROM runs WHERE run_id = old.run_id
    ON CONFLICT (doc) DO UPDATE SET fresh = 0;
END;
