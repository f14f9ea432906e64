-- PostgreSQL twin of storage/sqlite/migrations/0005_run_operations.sql.
-- Run operations (SPEC §6 cancel, pause, resume, retry): what an operator asked of a run, kept
-- on the run so a kill -9 between the acknowledgement and the run acting on it loses nothing.
-- (Shipped as 0005 once the schedules (0003) and event triggers (0004) migrations are in.)

-- {"reason", "compensate", "code", "at"} of the first acknowledged cancel; NULL: none asked.
ALTER TABLE runs ADD COLUMN cancel_requested text;
-- 1 while the run is paused (pause {run_id}): a pending run is not started, a running one is
-- held before its next step, a parked one stays `paused`. Cleared by resume, retry and the end.
ALTER TABLE runs ADD COLUMN paused bigint NOT NULL DEFAULT 0;

-- Workflows whose new and queued runs stay pending (pause {workflow_id}).
CREATE TABLE paused_workflows (
    workflow_id text PRIMARY KEY,
    paused_at   double precision NOT NULL
);

-- What `retry` set aside, one row per retry: the run's previous end and the journal entries it
-- took out (all of them for `retrigger`; the undone steps and compensations for `resume`).
CREATE TABLE run_archive (
    run_id      text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    attempt     bigint NOT NULL,
    mode        text NOT NULL,
    archived_at double precision NOT NULL,
    status      text NOT NULL,
    output      text,
    error       text,
    started_at  double precision,
    finished_at double precision,
    journal     text NOT NULL,
    PRIMARY KEY (run_id, seq)
);
