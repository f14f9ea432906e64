-- Flow control across daemons (issue 20, phase 3). With many daemons on one database the
-- decision "may this run start now" is made in the database (storage/sqlite/admission.py).
--
-- admitted_at: when admission let the pending run start (set in the transaction that decided,
-- together with owner). A pending run with it holds its groups' slots like a running one; it
-- is also the run's start for its throttle window. NULL for runs a single daemon admitted.
ALTER TABLE runs ADD COLUMN admitted_at REAL;
CREATE INDEX runs_throttle_admitted ON runs (throttle_key, admitted_at)
    WHERE admitted_at IS NOT NULL;

-- The concurrency groups a run has been offered to: its holders and its queued runs, told
-- apart by the run's stored status (never a counter: a row of an ended run counts for
-- nothing, and admission deletes such rows as it meets them). grp is the group as JSON,
-- [scope, key] (key null for an unkeyed limit).
CREATE TABLE run_groups (
    grp    TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (grp, run_id)
);
CREATE INDEX run_groups_run ON run_groups (run_id);
