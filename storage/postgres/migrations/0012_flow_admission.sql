-- PostgreSQL twin of storage/sqlite/migrations/0012_flow_admission.sql.
-- Flow control across daemons (issue 20, phase 3): admitted_at marks a pending run admission
-- let start (it holds its slots, and is its throttle start); run_groups lists the concurrency
-- groups a run was offered to (holders and queued runs, told apart by the run's status).
ALTER TABLE runs ADD COLUMN admitted_at double precision;
CREATE INDEX runs_throttle_admitted ON runs (throttle_key, admitted_at)
    WHERE admitted_at IS NOT NULL;

CREATE TABLE run_groups (
    grp    text NOT NULL,
    run_id text NOT NULL,
    PRIMARY KEY (grp, run_id)
);
CREATE INDEX run_groups_run ON run_groups (run_id);
