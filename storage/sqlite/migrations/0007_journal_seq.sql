-- A run-wide sequence number on every journal entry (SPEC §3): step attempts, waitpoint
-- registrations and resolutions, compensations and stream chunks are totally ordered within
-- their run (export and fork rely on it). `runs.journal_seq` is the last number handed out;
-- triggers number each entry as it is written, so every write path (the writer's batched
-- step upserts, interventions, resolutions) is covered by the same rule. Metadata is stored
-- as state, not as ops: its ops are ordered by their own index (metadata_cursor).

ALTER TABLE runs ADD COLUMN journal_seq INTEGER NOT NULL DEFAULT 0;
-- 1: the run started on an explicit `version=` of its workflow and resumes only on that
-- version (SPEC §14); 0: it resumes on whatever code is deployed (the source-hash default).
ALTER TABLE runs ADD COLUMN version_pinned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN journal_seq INTEGER;
ALTER TABLE step_attempts ADD COLUMN journal_seq INTEGER;
ALTER TABLE waitpoints ADD COLUMN journal_seq INTEGER;
ALTER TABLE waitpoints ADD COLUMN resolved_journal_seq INTEGER;
ALTER TABLE compensations ADD COLUMN journal_seq INTEGER;
ALTER TABLE stream_chunks ADD COLUMN journal_seq INTEGER;

-- Number the journals already written, in time order (kinds in a fixed order on ties).
CREATE TEMP TABLE journal_numbering AS
SELECT run_id, kind, ref1, ref2, ref3,
       row_number() OVER (PARTITION BY run_id ORDER BY at, ord, ref1, ref2, ref3) AS n
FROM (
    SELECT r.run_id, 'attempt' AS kind, a.step_id AS ref1, a.attempt AS ref2, '' AS ref3,
           coalesce(a.finished_at, a.started_at, 0) AS at, 0 AS ord
      FROM step_attempts a JOIN runs r ON r.number = a.run_no
    UNION ALL
    SELECT r.run_id, 'step', s.step_id, s.attempt, '',
           coalesce(s.finished_at, s.started_at, 0), 0
      FROM steps s JOIN runs r ON r.number = s.run_no
    UNION ALL
    SELECT run_id, 'registered', wp_id, 0, '', registered_at, 1 FROM waitpoints
    UNION ALL
    SELECT run_id, 'resolved', wp_id, 0, '', resolved_at, 2 FROM waitpoints
     WHERE status = 'resolved'
    UNION ALL
    SELECT run_id, 'compensation', step_id, 0, '', finished_at, 3 FROM compensations
    UNION ALL
    SELECT run_id, 'chunk', stream_id, seq, '', at, 4 FROM stream_chunks
);

UPDATE step_attempts SET journal_seq = (
    SELECT n.n FROM journal_numbering n JOIN runs r ON r.run_id = n.run_id
     WHERE r.number = step_attempts.run_no AND n.kind = 'attempt'
       AND n.ref1 = step_attempts.step_id AND n.ref2 = step_attempts.attempt);
UPDATE steps SET journal_seq = (
    SELECT n.n FROM journal_numbering n JOIN runs r ON r.run_id = n.run_id
     WHERE r.number = steps.run_no AND n.kind = 'step'
       AND n.ref1 = steps.step_id AND n.ref2 = steps.attempt);
UPDATE waitpoints SET journal_seq = (
    SELECT n FROM journal_numbering n WHERE n.run_id = waitpoints.run_id
       AND n.kind = 'registered' AND n.ref1 = waitpoints.wp_id);
UPDATE waitpoints SET resolved_journal_seq = (
    SELECT n FROM journal_numbering n WHERE n.run_id = waitpoints.run_id
       AND n.kind = 'resolved' AND n.ref1 = waitpoints.wp_id)
 WHERE status = 'resolved';
UPDATE compensations SET journal_seq = (
    SELECT n FROM journal_numbering n WHERE n.run_id = compensations.run_id
       AND n.kind = 'compensation' AND n.ref1 = compensations.step_id);
UPDATE stream_chunks SET journal_seq = (
    SELECT n FROM journal_numbering n WHERE n.run_id = stream_chunks.run_id
       AND n.kind = 'chunk' AND n.ref1 = stream_chunks.stream_id AND n.ref2 = stream_chunks.seq);
UPDATE runs SET journal_seq = coalesce(
    (SELECT max(n) FROM journal_numbering n WHERE n.run_id = runs.run_id), 0);
DROP TABLE journal_numbering;

-- From here on each new entry takes the run's next number.
CREATE TRIGGER steps_journal_seq_insert AFTER INSERT ON steps BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE number = NEW.run_no;
    UPDATE steps SET journal_seq = (SELECT journal_seq FROM runs WHERE number = NEW.run_no)
     WHERE id = NEW.id;
END;
CREATE TRIGGER steps_journal_seq_attempt AFTER UPDATE OF attempt ON steps
WHEN NEW.attempt > OLD.attempt BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE number = NEW.run_no;
    UPDATE steps SET journal_seq = (SELECT journal_seq FROM runs WHERE number = NEW.run_no)
     WHERE id = NEW.id;
END;
CREATE TRIGGER waitpoints_journal_seq_insert AFTER INSERT ON waitpoints BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id;
    UPDATE waitpoints SET journal_seq = (SELECT journal_seq FROM runs WHERE run_id = NEW.run_id)
     WHERE run_id = NEW.run_id AND wp_id = NEW.wp_id;
END;
CREATE TRIGGER waitpoints_journal_seq_resolved AFTER UPDATE OF status ON waitpoints
WHEN NEW.status = 'resolved' AND OLD.status <> 'resolved' BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id;
    UPDATE waitpoints SET resolved_journal_seq = (
        SELECT journal_seq FROM runs WHERE run_id = NEW.run_id)
     WHERE run_id = NEW.run_id AND wp_id = NEW.wp_id;
END;
CREATE TRIGGER compensations_journal_seq AFTER INSERT ON compensations BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id;
    UPDATE compensations SET journal_seq = (
        SELECT journal_seq FROM runs WHERE run_id = NEW.run_id)
     WHERE run_id = NEW.run_id AND step_id = NEW.step_id;
END;
CREATE TRIGGER stream_chunks_journal_seq AFTER INSERT ON stream_chunks BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id;
    UPDATE stream_chunks SET journal_seq = (
        SELECT journal_seq FROM runs WHERE run_id = NEW.run_id)
     WHERE run_id = NEW.run_id AND stream_id = NEW.stream_id AND seq = NEW.seq;
END;
