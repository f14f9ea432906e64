-- PostgreSQL twin of storage/sqlite/migrations/0013_journal_seq_in_ops.sql: the journal
-- numbers are assigned by the ops, so the numbering triggers and their functions go. Each op
-- takes its numbers with an UPDATE of the run's row first (a row lock), so two daemons
-- writing one run's journal (an owner's step, another daemon's resolution) never share one.
DROP TRIGGER steps_journal_seq_insert ON steps;
DROP TRIGGER steps_journal_seq_attempt ON steps;
DROP FUNCTION steps_journal_seq();
DROP TRIGGER waitpoints_journal_seq_insert ON waitpoints;
DROP TRIGGER waitpoints_journal_seq_resolved ON waitpoints;
DROP FUNCTION waitpoints_journal_seq();
DROP TRIGGER compensations_journal_seq ON compensations;
DROP FUNCTION compensations_journal_seq();
DROP TRIGGER stream_chunks_journal_seq ON stream_chunks;
DROP FUNCTION stream_chunks_journal_seq();
