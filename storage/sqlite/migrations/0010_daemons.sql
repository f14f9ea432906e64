-- Many daemons (SPEC §13). Each daemon process registers a row with a lease judged by the
-- database clock and renews it; a daemon whose lease has run out is dead, and its runs are
-- adopted by a live one. A run records the daemon driving it (owner) and how many times it
-- changed hands (epoch). SQLite keeps one daemon per file (the lock file), so it has at most
-- one live row and never sets an owner.
CREATE TABLE daemons (
    daemon_id   TEXT PRIMARY KEY,   -- fresh for every process start, never reused
    name        TEXT NOT NULL,      -- [daemon] id, default host:pid
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    version     TEXT NOT NULL,
    socket      TEXT NOT NULL,
    http        TEXT NOT NULL,
    started_at  REAL NOT NULL,      -- database clock, epoch seconds
    renewed_at  REAL NOT NULL,      -- database clock at the last renewal
    lease_until REAL NOT NULL,       -- database clock; past it the daemon is dead
    backend_pid INTEGER  -- PostgreSQL: its writer's backend, ended when it is declared dead
);

ALTER TABLE runs ADD COLUMN owner TEXT;  -- daemons.daemon_id driving the run; NULL: nobody
ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;  -- bumped at every change of owner
CREATE INDEX runs_owner ON runs (owner) WHERE owner IS NOT NULL;
