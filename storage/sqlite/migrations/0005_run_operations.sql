-- Run operations (SPEC §6 cancel, pause, resume, retry): what an operator asked of a run, kept
-- on the run so a kill -9 between the acknowledgement and the run acting on it loses nothing.
-- (Shipped as 0005 once the schedules (0003) and event triggers (0004) migrations are in.)

-- {"reason", "compensate", "code", "at"} of the first acknowledged cancel; NULL: none asked.
ALTER TABLE runs ADD COLUMN cancel_requested TEXT;
-- 1 while the run is paused (pause {run_id}): a pending run is not started, a running one is
-- held before its next step, a parked one stays `paused`. Cleared by resume, retry and the end.
ALTER TABLE runs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;

-- Workflows whose new and queued runs stay pending (pause {workflow_id}).
CREATE TABLE paused_workflows (
    workflow_id TEXT PRIMARY KEY,
    paused_at   REAL NOT NULL
) WITHOUT ROWID;

-- What `retry` set aside, one row per retry: the run's previous end and the journal entries it
-- took out (all of them for `retrigger`; the undone steps and compensations for `resume`).
CREATE TABLE run_archive (
    run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    mode        TEXT NOT NULL,
    archived_at REAL NOT NULL,
    status      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  REAL,
    finished_at REAL,
    journal     TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
