-- PostgreSQL twin of storage/sqlite/migrations/0002_flow_control.sql.
-- Flow control (SPEC §2a): what the engine decided at submit, stored on the run so restarts,
-- other daemons and replays never call a key callable again.

-- {"groups": [[scope, key], ...], "throttle": key, "debounce": key}; NULL for plain runs.
ALTER TABLE runs ADD COLUMN flow text;
-- The throttle window's name ("<workflow id>\x1f<key>"): its starts are the runs' started_at.
ALTER TABLE runs ADD COLUMN throttle_key text;
-- A run that has not started by then ends cancelled (EXPIRED); NULL: no time to live.
ALTER TABLE runs ADD COLUMN expires_at double precision;

CREATE INDEX runs_throttle_started ON runs (throttle_key, started_at)
    WHERE throttle_key IS NOT NULL;
