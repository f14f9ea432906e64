-- Fork and amend (SPEC §14). A fork records where it came from; an amendment of a step's
-- recorded result leaves an append-only audit row (old and new value, who, why, when).

-- {"run_id", "from_step", "reason", "at"} of the run this one was forked from; NULL: not a fork.
ALTER TABLE runs ADD COLUMN forked_from TEXT;

CREATE TABLE run_amendments (
    run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,  -- 1, 2, ... per run
    step_id    TEXT NOT NULL,
    at         REAL NOT NULL,
    peer_uid   INTEGER,           -- the socket peer's uid (SO_PEERCRED); NULL: not over the socket
    reason     TEXT NOT NULL,
    old_value  TEXT NOT NULL,     -- {"status", "attempt", "output", "error"} before
    new_value  TEXT NOT NULL,     -- {"status", "output"} after
    PRIMARY KEY (run_id, seq)
);

-- Append-only: a row is never changed (pruning a run still deletes its rows).
CREATE TRIGGER run_amendments_append_only BEFORE UPDATE ON run_amendments BEGIN
    SELECT RAISE(ABORT, 'run_amendments is append-only');
END;
