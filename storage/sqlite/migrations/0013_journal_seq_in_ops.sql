-- The run-wide journal number (0007) is assigned by the op that writes the entry, not by
-- triggers (issue 21): the writer takes a run's numbers once per run per batch for the
-- coalesced step rows, and each other op takes its own by one UPDATE of `runs.journal_seq`
-- (storage/sqlite/mutations.py, "journal numbers"). The triggers cost two extra UPDATEs per
-- entry on the writer's thread; the numbers they gave are unchanged.
DROP TRIGGER steps_journal_seq_insert;
DROP TRIGGER steps_journal_seq_attempt;
DROP TRIGGER waitpoints_journal_seq_insert;
DROP TRIGGER waitpoints_journal_seq_resolved;
DROP TRIGGER compensations_journal_seq;
DROP TRIGGER stream_chunks_journal_seq;
