-- PostgreSQL twin of storage/sqlite/migrations/0009_fork_amend.sql.
-- Fork and amend (SPEC §14). A fork records where it came from; an amendment of a step's
-- recorded result leaves an append-only audit row (old and new value, who, why, when).

-- {"run_id", "from_step", "reason", "at"} of the run this one was forked from; NULL: not a fork.
ALTER TABLE runs ADD COLUMN forked_from text;

CREATE TABLE run_amendments (
    run_id     text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq        bigint NOT NULL,  -- 1, 2, ... per run
    step_id    text NOT NULL,
    at         double precision NOT NULL,
    peer_uid   bigint,           -- the socket peer's uid (SO_PEERCRED); NULL: not over the socket
    reason     text NOT NULL,
    old_value  text NOT NULL,    -- {"status", "attempt", "output", "error"} before
    new_value  text NOT NULL,    -- {"status", "output"} after
    PRIMARY KEY (run_id, seq)
);

-- Append-only: a row is never changed (pruning a run still deletes its rows).
CREATE FUNCTION run_amendments_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run_amendments is append-only';
END;
$$;
CREATE TRIGGER run_amendments_append_only BEFORE UPDATE ON run_amendments
    FOR EACH ROW EXECUTE FUNCTION run_amendments_refuse_update();
