-- An ended run is nobody's (SPEC §13): the writes that end a run now clear its owner, so the
-- runs_owner index and `wf daemons`' counts hold live runs only, and a dead daemon's rescue
-- releases only what it was driving. Runs that ended before this migration are cleared here.
UPDATE runs SET owner = NULL
WHERE owner IS NOT NULL
  AND status IN ('completed', 'failed', 'cancelled', 'compensated', 'compensation_failed',
                 'timed_out');
