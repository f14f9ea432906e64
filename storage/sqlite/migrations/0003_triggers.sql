-- Event triggers and cancel rules (SPEC §2a, second half).

-- Events accumulated for a batch trigger, per (workflow, batch key), until a run takes them.
CREATE TABLE event_batches (
    workflow_id TEXT NOT NULL,
    batch_key   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    payload     TEXT,
    received_at REAL NOT NULL,
    PRIMARY KEY (workflow_id, batch_key, event_id)
) WITHOUT ROWID;
CREATE INDEX event_batches_order ON event_batches (workflow_id, batch_key, received_at, event_id);

-- The cancel_on rules of runs not yet ended: an event of the type (or, for a wildcard rule, of
-- a type starting with event_type) whose payload `match` is a subset of cancels the run.
CREATE TABLE run_cancel_on (
    run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    rule       INTEGER NOT NULL,  -- the rule's index in the workflow's cancel_on list
    event_type TEXT NOT NULL,
    wildcard   INTEGER NOT NULL,
    match      TEXT,
    compensate INTEGER NOT NULL,
    PRIMARY KEY (run_id, rule)
) WITHOUT ROWID;
CREATE INDEX run_cancel_on_type ON run_cancel_on (event_type);
CREATE INDEX run_cancel_on_wildcards ON run_cancel_on (event_type) WHERE wildcard = 1;
