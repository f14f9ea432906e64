-- PostgreSQL twin of storage/sqlite/migrations/0003_triggers.sql.
-- Event triggers and cancel rules (SPEC §2a, second half).

-- Events accumulated for a batch trigger, per (workflow, batch key), until a run takes them.
CREATE TABLE event_batches (
    workflow_id text NOT NULL,
    batch_key   text NOT NULL,
    event_id    text NOT NULL,
    payload     text,
    received_at double precision NOT NULL,
    PRIMARY KEY (workflow_id, batch_key, event_id)
);
CREATE INDEX event_batches_order ON event_batches (workflow_id, batch_key, received_at, event_id);

-- The cancel_on rules of runs not yet ended: an event of the type (or, for a wildcard rule, of
-- a type starting with event_type) whose payload `match` is a subset of cancels the run.
CREATE TABLE run_cancel_on (
    run_id     text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    rule       bigint NOT NULL,  -- the rule's index in the workflow's cancel_on list
    event_type text NOT NULL,
    wildcard   bigint NOT NULL,
    match      text,
    compensate bigint NOT NULL,
    PRIMARY KEY (run_id, rule)
);
CREATE INDEX run_cancel_on_type ON run_cancel_on (event_type);
CREATE INDEX run_cancel_on_wildcards ON run_cancel_on (event_type) WHERE wildcard = 1;
