-- The search index in parts (issue 21): migration 0006 kept one FTS5 document per run and
-- rebuilt it whole (delete, re-tokenize, insert) when the run's output arrived: on W1 that was
-- ~13 µs of writer CPU per step. Now a run has up to three documents, rowid = number * 4 + part:
--   0  run id, workflow id, input, tags      written at submit (rebuilt only if input/tags change)
--   1  output, error                         written when they are set (cleared by a retrigger)
--   2  every metadata key=value              rebuilt when the run's metadata changes
-- A search matches a run when any of its parts contains the phrase: `rowid / 4` is the run's
-- number. The trigram tokenizer and the phrase semantics are unchanged.

DROP TRIGGER run_search_insert;
DROP TRIGGER run_search_update;
DROP TRIGGER run_search_delete;
DROP TRIGGER run_search_metadata_insert;
DROP TRIGGER run_search_metadata_update;
DROP TRIGGER run_search_metadata_delete;
DROP VIEW run_search_doc;
DROP TABLE run_search;

CREATE VIRTUAL TABLE run_search USING fts5(body, tokenize = 'trigram');

CREATE VIEW run_search_head AS
SELECT number * 4 AS doc,
       run_id || char(10) || workflow_id || char(10) || coalesce(input, '') || char(10) || tags
           AS body
FROM runs;

CREATE VIEW run_search_result AS
SELECT number * 4 + 1 AS doc, coalesce(output, '') || char(10) || coalesce(error, '') AS body
FROM runs WHERE output IS NOT NULL OR error IS NOT NULL;

-- Per run, not grouped: a trigger's `WHERE run_id = ...` then reads one run's rows only.
CREATE VIEW run_search_metadata AS
SELECT r.number * 4 + 2 AS doc, r.run_id AS run_id,
       (SELECT group_concat(m.key || '=' || coalesce(m.value, ''), char(10))
        FROM metadata m WHERE m.run_id = r.run_id) AS body
FROM runs r;

CREATE TRIGGER run_search_insert AFTER INSERT ON runs BEGIN
    INSERT INTO run_search (rowid, body)
    VALUES (new.number * 4, new.run_id || char(10) || new.workflow_id || char(10)
                            || coalesce(new.input, '') || char(10) || new.tags);
    INSERT INTO run_search (rowid, body)
    SELECT new.number * 4 + 1, coalesce(new.output, '') || char(10) || coalesce(new.error, '')
    WHERE new.output IS NOT NULL OR new.error IS NOT NULL;
END;

CREATE TRIGGER run_search_head_update AFTER UPDATE OF input, tags ON runs
WHEN new.input IS NOT old.input OR new.tags IS NOT old.tags
BEGIN
    DELETE FROM run_search WHERE rowid = new.number * 4;
    INSERT INTO run_search (rowid, body)
    VALUES (new.number * 4, new.run_id || char(10) || new.workflow_id || char(10)
                            || coalesce(new.input, '') || char(10) || new.tags);
END;

-- The common case, a run's first result: nothing to delete.
CREATE TRIGGER run_search_result_set AFTER UPDATE OF output, error ON runs
WHEN old.output IS NULL AND old.error IS NULL
     AND (new.output IS NOT NULL OR new.error IS NOT NULL)
BEGIN
    INSERT INTO run_search (rowid, body)
    VALUES (new.number * 4 + 1, coalesce(new.output, '') || char(10) || coalesce(new.error, ''));
END;

CREATE TRIGGER run_search_result_update AFTER UPDATE OF output, error ON runs
WHEN (old.output IS NOT NULL OR old.error IS NOT NULL)
     AND (new.output IS NOT old.output OR new.error IS NOT old.error)
BEGIN
    DELETE FROM run_search WHERE rowid = new.number * 4 + 1;
    INSERT INTO run_search (rowid, body)
    SELECT new.number * 4 + 1, coalesce(new.output, '') || char(10) || coalesce(new.error, '')
    WHERE new.output IS NOT NULL OR new.error IS NOT NULL;
END;

CREATE TRIGGER run_search_delete AFTER DELETE ON runs BEGIN
    DELETE FROM run_search WHERE rowid BETWEEN old.number * 4 AND old.number * 4 + 3;
END;

CREATE TRIGGER run_search_metadata_insert AFTER INSERT ON metadata BEGIN
    DELETE FROM run_search
    WHERE rowid = (SELECT number * 4 + 2 FROM runs WHERE run_id = new.run_id);
    INSERT INTO run_search (rowid, body)
    SELECT doc, body FROM run_search_metadata WHERE run_id = new.run_id AND body IS NOT NULL;
END;

CREATE TRIGGER run_search_metadata_update AFTER UPDATE ON metadata BEGIN
    DELETE FROM run_search
    WHERE rowid = (SELECT number * 4 + 2 FROM runs WHERE run_id = new.run_id);
    INSERT INTO run_search (rowid, body)
    SELECT doc, body FROM run_search_metadata WHERE run_id = new.run_id AND body IS NOT NULL;
END;

CREATE TRIGGER run_search_metadata_delete AFTER DELETE ON metadata BEGIN
    DELETE FROM run_search
    WHERE rowid = (SELECT number * 4 + 2 FROM runs WHERE run_id = old.run_id);
    INSERT INTO run_search (rowid, body)
    SELECT doc, body FROM run_search_metadata WHERE run_id = old.run_id AND body IS NOT NULL;
END;

-- Backfill.
INSERT INTO run_search (rowid, body) SELECT doc, body FROM run_search_head;
INSERT INTO run_search (rowid, body) SELECT doc, body FROM run_search_result;
INSERT INTO run_search (rowid, body) SELECT doc, body FROM run_search_metadata
WHERE body IS NOT NULL;
