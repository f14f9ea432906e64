-- PostgreSQL twin of storage/sqlite/migrations/0004_schedules.sql.
-- Schedules (SPEC §2a). A schedule's next fire is also a timer ("schedule:<name>", kind
-- 'schedule'); the row is the truth, the timer only wakes the engine.

-- 'code' (declared with @workflow, reconciled at start) or 'api' (schedule_create).
ALTER TABLE schedules ADD COLUMN source text NOT NULL DEFAULT 'api';
ALTER TABLE schedules ADD COLUMN paused bigint NOT NULL DEFAULT 0;
-- The next due time (the one in the next run's id); next_fire_at adds the jitter to it.
ALTER TABLE schedules ADD COLUMN next_due_at double precision;
-- The run of the last fire (overlap decisions look at it).
ALTER TABLE schedules ADD COLUMN last_run_id text;
ALTER TABLE schedules ADD COLUMN fired bigint NOT NULL DEFAULT 0;
-- Fires dropped by the overlap policy, and due times collapsed after an outage.
ALTER TABLE schedules ADD COLUMN skipped bigint NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN missed bigint NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN created_at double precision;
