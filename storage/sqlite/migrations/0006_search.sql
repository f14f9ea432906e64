-- Full-text search over runs (SPEC §5 list(search=), §12), the indices retention needs, and the
-- W3C trace context a run was submitted with (§12 traces).

ALTER TABLE runs ADD COLUMN traceparent TEXT;

-- Retention: a root's descendants (pruned with it) and the oldest stored events.
CREATE INDEX runs_root ON runs (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE INDEX events_received ON events (received_at);

-- One document per run, rowid = runs.number: run id, workflow id, input, output, error, tags and
-- every metadata key/value, separated by newlines. The trigram tokenizer makes any substring of
-- 3+ characters searchable (ids, JSON fragments, error codes) with no word splitting rules.
-- The table keeps its own copy of the text: SQLite 3.40 has no contentless delete, and an
-- external-content view would corrupt the index if a value ever changed outside the triggers.
CREATE VIRTUAL TABLE run_search USING fts5(body, tokenize = 'trigram');

-- The document of one run, rebuilt from the rows as they are now.
CREATE VIEW run_search_doc AS
SELECT r.number AS number,
       r.run_id || char(10) || r.workflow_id || char(10) || coalesce(r.input, '') || char(10)
       || coalesce(r.output, '') || char(10) || coalesce(r.error, '') || char(10) || r.tags
       || coalesce((SELECT char(10) || group_concat(m.key || '=' || coalesce(m.value, ''), char(10))
                    FROM metadata m WHERE m.run_id = r.run_id), '') AS body
FROM runs r;

-- Kept in sync by triggers, so every write path (submit, step results, finish, retry, amend,
-- metadata ops) updates the index in the transaction that changes the run. Status-only updates
-- (the hot path) do not touch the index: the WHEN clause compares the indexed columns.
CREATE TRIGGER run_search_insert AFTER INSERT ON runs BEGIN
    INSERT INTO run_search (rowid, body)
    SELECT number, body FROM run_search_doc WHERE number = new.number;
END;

CREATE TRIGGER run_search_update AFTER UPDATE OF input, output, error, tags ON runs
WHEN new.input IS NOT old.input OR new.output IS NOT old.output OR new.error IS NOT old.error
     OR new.tags IS NOT old.tags
BEGIN
    DELETE FROM run_search WHERE rowid = new.number;
    INSERT INTO run_search (rowid, body)
    SELECT number, body FROM run_search_doc WHERE number = new.number;
END;

CREATE TRIGGER run_search_delete AFTER DELETE ON runs BEGIN
    DELETE FROM run_search WHERE rowid = old.number;
END;

CREATE TRIGGER run_search_metadata_insert AFTER INSERT ON metadata BEGIN
    DELETE FROM run_search WHERE rowid = (SELECT number FROM runs WHERE run_id = new.run_id);
    INSERT INTO run_search (rowid, body)
    SELECT d.number, d.body FROM run_search_doc d JOIN runs r ON r.number = d.number
    WHERE r.run_id = new.run_id;
END;

CREATE TRIGGER run_search_metadata_update AFTER UPDATE ON metadata BEGIN
    DELETE FROM run_search WHERE rowid = (SELECT number FROM runs WHERE run_id = new.run_id);
    INSERT INTO run_search (rowid, body)
    SELECT d.number, d.body FROM run_search_doc d JOIN runs r ON r.number = d.number
    WHERE r.run_id = new.run_id;
END;

CREATE TRIGGER run_search_metadata_delete AFTER DELETE ON metadata BEGIN
    DELETE FROM run_search WHERE rowid = (SELECT number FROM runs WHERE run_id = old.run_id);
    INSERT INTO run_search (rowid, body)
    SELECT d.number, d.body FROM run_search_doc d JOIN runs r ON r.number = d.number
    WHERE r.run_id = old.run_id;
END;

-- Backfill the runs that exist already.
INSERT INTO run_search (rowid, body) SELECT number, body FROM run_search_doc;
