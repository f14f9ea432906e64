-- PostgreSQL twin of storage/sqlite/migrations/0006_search.sql.
-- Search over runs (SPEC §5 list(search=), §12), the indices retention needs, and the W3C trace
-- context a run was submitted with (§12 traces).

ALTER TABLE runs ADD COLUMN traceparent text;

-- Retention: a root's descendants (pruned with it) and the oldest stored events.
CREATE INDEX runs_root ON runs (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE INDEX events_received ON events (received_at);

-- PostgreSQL has no FTS5. The same semantics (any case-insensitive substring of 3+ characters,
-- no word splitting) come from pg_trgm: a GIN trigram index serves `body ILIKE '%text%'`.
-- pg_trgm is in contrib (Debian's postgresql package ships it) and a trusted extension since
-- PostgreSQL 13: a database owner may create it without superuser.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- One document per run, as on SQLite: run id, workflow id, input, output, error, tags and every
-- metadata key=value, separated by newlines. A plain table (SQLite's is a virtual table), so
-- the columns test skips it on both sides.
CREATE TABLE run_search (
    number bigint PRIMARY KEY REFERENCES runs (number) ON DELETE CASCADE,
    body   text NOT NULL
);
CREATE INDEX run_search_body ON run_search USING gin (body gin_trgm_ops);

-- The document of one run, rebuilt from the rows as they are now.
CREATE VIEW run_search_doc AS
SELECT r.number AS number,
       r.run_id || chr(10) || r.workflow_id || chr(10) || coalesce(r.input, '') || chr(10)
       || coalesce(r.output, '') || chr(10) || coalesce(r.error, '') || chr(10) || r.tags
       || coalesce((SELECT chr(10) || string_agg(m.key || '=' || coalesce(m.value, ''), chr(10)
                                                 ORDER BY m.key)
                    FROM metadata m WHERE m.run_id = r.run_id), '') AS body
FROM runs r;

-- Rewrite one run's document (nothing if the run is gone: its row goes by the foreign key).
CREATE FUNCTION run_search_refresh(run_no bigint) RETURNS void LANGUAGE sql AS $$
    INSERT INTO run_search (number, body)
    SELECT number, body FROM run_search_doc WHERE number = run_no
    ON CONFLICT (number) DO UPDATE SET body = EXCLUDED.body;
$$;

-- Kept in sync by triggers, as on SQLite, so every write path updates the index in the
-- transaction that changes the run; status-only updates (the hot path) do not fire them.
CREATE FUNCTION run_search_on_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM run_search_refresh(NEW.number);
    RETURN NULL;
END $$;

CREATE TRIGGER run_search_insert AFTER INSERT ON runs
FOR EACH ROW EXECUTE FUNCTION run_search_on_run();

CREATE TRIGGER run_search_update AFTER UPDATE OF input, output, error, tags ON runs
FOR EACH ROW WHEN (NEW.input IS DISTINCT FROM OLD.input OR NEW.output IS DISTINCT FROM OLD.output
                   OR NEW.error IS DISTINCT FROM OLD.error OR NEW.tags IS DISTINCT FROM OLD.tags)
EXECUTE FUNCTION run_search_on_run();

CREATE FUNCTION run_search_on_metadata() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM run_search_refresh(r.number) FROM runs r WHERE r.run_id = OLD.run_id;
    ELSE
        PERFORM run_search_refresh(r.number) FROM runs r WHERE r.run_id = NEW.run_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER run_search_metadata AFTER INSERT OR UPDATE OR DELETE ON metadata
FOR EACH ROW EXECUTE FUNCTION run_search_on_metadata();

-- Backfill the runs that exist already.
INSERT INTO run_search (number, body) SELECT number, body FROM run_search_doc;
