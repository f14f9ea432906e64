-- PostgreSQL twin of storage/sqlite/migrations/0007_journal_seq.sql.
-- A run-wide sequence number on every journal entry (SPEC §3): `runs.journal_seq` is the last
-- number handed out; triggers number each entry as it is written, so every write path is
-- covered by the same rule. AFTER row triggers, as on SQLite: a BEFORE INSERT trigger would
-- also fire for rows that `ON CONFLICT DO NOTHING` then drops, and would number a multi-row
-- upsert's updated rows before its inserted ones.

ALTER TABLE runs ADD COLUMN journal_seq bigint NOT NULL DEFAULT 0;
-- 1: the run started on an explicit `version=` of its workflow and resumes only on that
-- version (SPEC §14); 0: it resumes on whatever code is deployed (the source-hash default).
ALTER TABLE runs ADD COLUMN version_pinned bigint NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN journal_seq bigint;
ALTER TABLE step_attempts ADD COLUMN journal_seq bigint;
ALTER TABLE waitpoints ADD COLUMN journal_seq bigint;
ALTER TABLE waitpoints ADD COLUMN resolved_journal_seq bigint;
ALTER TABLE compensations ADD COLUMN journal_seq bigint;
ALTER TABLE stream_chunks ADD COLUMN journal_seq bigint;

-- Number the journals already written, in time order (kinds in a fixed order on ties; text
-- compared bytewise, as SQLite's BINARY collation does).
CREATE TEMP TABLE journal_numbering ON COMMIT DROP AS
SELECT run_id, kind, ref1, ref2,
       row_number() OVER (PARTITION BY run_id ORDER BY at, ord, ref1 COLLATE "C", ref2) AS n
FROM (
    SELECT r.run_id, 'attempt' AS kind, a.step_id AS ref1, a.attempt AS ref2,
           coalesce(a.finished_at, a.started_at, 0) AS at, 0 AS ord
      FROM step_attempts a JOIN runs r ON r.number = a.run_no
    UNION ALL
    SELECT r.run_id, 'step', s.step_id, s.attempt, coalesce(s.finished_at, s.started_at, 0), 0
      FROM steps s JOIN runs r ON r.number = s.run_no
    UNION ALL
    SELECT run_id, 'registered', wp_id, 0, registered_at, 1 FROM waitpoints
    UNION ALL
    SELECT run_id, 'resolved', wp_id, 0, resolved_at, 2 FROM waitpoints
     WHERE status = 'resolved'
    UNION ALL
    SELECT run_id, 'compensation', step_id, 0, finished_at, 3 FROM compensations
    UNION ALL
    SELECT run_id, 'chunk', stream_id, seq, at, 4 FROM stream_chunks
) AS entries;

UPDATE step_attempts a SET journal_seq = n.n
  FROM journal_numbering n JOIN runs r ON r.run_id = n.run_id
 WHERE r.number = a.run_no AND n.kind = 'attempt' AND n.ref1 = a.step_id AND n.ref2 = a.attempt;
UPDATE steps s SET journal_seq = n.n
  FROM journal_numbering n JOIN runs r ON r.run_id = n.run_id
 WHERE r.number = s.run_no AND n.kind = 'step' AND n.ref1 = s.step_id AND n.ref2 = s.attempt;
UPDATE waitpoints w SET journal_seq = n.n FROM journal_numbering n
 WHERE n.run_id = w.run_id AND n.kind = 'registered' AND n.ref1 = w.wp_id;
UPDATE waitpoints w SET resolved_journal_seq = n.n FROM journal_numbering n
 WHERE w.status = 'resolved' AND n.run_id = w.run_id AND n.kind = 'resolved'
   AND n.ref1 = w.wp_id;
UPDATE compensations c SET journal_seq = n.n FROM journal_numbering n
 WHERE n.run_id = c.run_id AND n.kind = 'compensation' AND n.ref1 = c.step_id;
UPDATE stream_chunks c SET journal_seq = n.n FROM journal_numbering n
 WHERE n.run_id = c.run_id AND n.kind = 'chunk' AND n.ref1 = c.stream_id AND n.ref2 = c.seq;
UPDATE runs r SET journal_seq = m.n
  FROM (SELECT run_id, max(n) AS n FROM journal_numbering GROUP BY run_id) m
 WHERE m.run_id = r.run_id;
DROP TABLE journal_numbering;

-- From here on each new entry takes the run's next number.
CREATE FUNCTION steps_journal_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE number = NEW.run_no
    RETURNING journal_seq INTO n;
    UPDATE steps SET journal_seq = n WHERE id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER steps_journal_seq_insert AFTER INSERT ON steps
FOR EACH ROW EXECUTE FUNCTION steps_journal_seq();
CREATE TRIGGER steps_journal_seq_attempt AFTER UPDATE OF attempt ON steps
FOR EACH ROW WHEN (NEW.attempt > OLD.attempt) EXECUTE FUNCTION steps_journal_seq();

CREATE FUNCTION waitpoints_journal_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id
    RETURNING journal_seq INTO n;
    IF TG_OP = 'INSERT' THEN
        UPDATE waitpoints SET journal_seq = n WHERE run_id = NEW.run_id AND wp_id = NEW.wp_id;
    ELSE
        UPDATE waitpoints SET resolved_journal_seq = n
         WHERE run_id = NEW.run_id AND wp_id = NEW.wp_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER waitpoints_journal_seq_insert AFTER INSERT ON waitpoints
FOR EACH ROW EXECUTE FUNCTION waitpoints_journal_seq();
CREATE TRIGGER waitpoints_journal_seq_resolved AFTER UPDATE OF status ON waitpoints
FOR EACH ROW WHEN (NEW.status = 'resolved' AND OLD.status <> 'resolved')
EXECUTE FUNCTION waitpoints_journal_seq();

CREATE FUNCTION compensations_journal_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id
    RETURNING journal_seq INTO n;
    UPDATE compensations SET journal_seq = n WHERE run_id = NEW.run_id AND step_id = NEW.step_id;
    RETURN NULL;
END $$;
CREATE TRIGGER compensations_journal_seq AFTER INSERT ON compensations
FOR EACH ROW EXECUTE FUNCTION compensations_journal_seq();

CREATE FUNCTION stream_chunks_journal_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    UPDATE runs SET journal_seq = journal_seq + 1 WHERE run_id = NEW.run_id
    RETURNING journal_seq INTO n;
    UPDATE stream_chunks SET journal_seq = n
     WHERE run_id = NEW.run_id AND stream_id = NEW.stream_id AND seq = NEW.seq;
    RETURN NULL;
END $$;
CREATE TRIGGER stream_chunks_journal_seq AFTER INSERT ON stream_chunks
FOR EACH ROW EXECUTE FUNCTION stream_chunks_journal_seq();
