-- PostgreSQL twin of storage/sqlite/migrations/0010_daemons.sql.
-- Many daemons (SPEC §13). Each daemon process registers a row with a lease judged by the
-- database clock (now()) and renews it; a daemon whose lease has run out is dead, and its runs
-- are adopted by a live one. A run records the daemon driving it (owner) and how many times it
-- changed hands (epoch).
CREATE TABLE daemons (
    daemon_id   text PRIMARY KEY,   -- fresh for every process start, never reused
    name        text NOT NULL,      -- [daemon] id, default host:pid
    host        text NOT NULL,
    pid         bigint NOT NULL,
    version     text NOT NULL,
    socket      text NOT NULL,
    http        text NOT NULL,
    started_at  double precision NOT NULL,  -- database clock, epoch seconds
    renewed_at  double precision NOT NULL,  -- database clock at the last renewal
    lease_until double precision NOT NULL,   -- database clock; past it the daemon is dead
    backend_pid bigint  -- PostgreSQL: its writer's backend, ended when it is declared dead
);

ALTER TABLE runs ADD COLUMN owner text;  -- daemons.daemon_id driving the run; NULL: nobody
ALTER TABLE runs ADD COLUMN epoch bigint NOT NULL DEFAULT 0;  -- bumped at every change of owner
CREATE INDEX runs_owner ON runs (owner) WHERE owner IS NOT NULL;
