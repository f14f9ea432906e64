-- Initial schema. Times are REAL epoch seconds (UTC); JSON values are TEXT.

CREATE TABLE runs (
    number           INTEGER PRIMARY KEY,
    run_id           TEXT NOT NULL UNIQUE,
    workflow_id      TEXT NOT NULL,
    workflow_version TEXT,
    status           TEXT NOT NULL,
    input            TEXT,
    output           TEXT,
    error            TEXT,
    tags             TEXT NOT NULL DEFAULT '[]',
    priority         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    parent_run_id    TEXT,
    root_run_id      TEXT,
    triggered_by     TEXT,
    attempt          INTEGER NOT NULL DEFAULT 1,
    created_at       REAL NOT NULL,
    scheduled_at     REAL,
    started_at       REAL,
    finished_at      REAL,
    updated_at       REAL NOT NULL,
    diverged         INTEGER NOT NULL DEFAULT 0,
    recoveries       INTEGER NOT NULL DEFAULT 0,
    compute_seconds  REAL NOT NULL DEFAULT 0,
    parent_wp_id     TEXT,             -- the parent's invoke waitpoint this child resolves
    needs_resume     INTEGER NOT NULL DEFAULT 0,  -- a resolution arrived since it last ran
    UNIQUE (workflow_id, idempotency_key)
);
CREATE INDEX runs_status_created ON runs (status, created_at);
CREATE INDEX runs_workflow_created ON runs (workflow_id, created_at);
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

CREATE TABLE run_tags (
    run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    tag        TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, tag)
) WITHOUT ROWID;
CREATE INDEX run_tags_tag_created ON run_tags (tag, created_at);

-- The latest attempt of each step. Rows are appended in commit order (rowid) and reach their
-- run through the integer run number, so a batch of step results from many runs writes the
-- table's last pages plus small index entries instead of one wide leaf page per run.
CREATE TABLE steps (
    id          INTEGER PRIMARY KEY,
    run_no      INTEGER NOT NULL,  -- runs.number; checked by the insert's run lookup
    step_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  REAL,
    finished_at REAL,
    runtime     TEXT,
    retry_at    REAL
);
CREATE UNIQUE INDEX steps_run_step ON steps (run_no, step_id);

-- Earlier attempts, moved here when a later attempt of the same step is recorded.
CREATE TABLE step_attempts (
    run_no      INTEGER NOT NULL REFERENCES runs (number) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  REAL,
    finished_at REAL,
    retry_at    REAL,
    PRIMARY KEY (run_no, step_id, attempt)
) WITHOUT ROWID;

CREATE TABLE waitpoints (
    run_id           TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    wp_id            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    meta             TEXT,
    event_type       TEXT,
    signal_name      TEXT,
    match            TEXT,
    token_id         TEXT,
    registered_at    REAL NOT NULL,
    due_at           REAL,
    timeout_at       REAL,
    resolved_at      REAL,
    payload          TEXT,
    error            TEXT,
    source           TEXT,
    matched_event_id TEXT,
    PRIMARY KEY (run_id, wp_id)
);
CREATE INDEX waitpoints_waiting_event ON waitpoints (event_type) WHERE status = 'waiting';
CREATE INDEX waitpoints_waiting_signal ON waitpoints (run_id, signal_name)
    WHERE status = 'waiting';
CREATE INDEX waitpoints_matched_event ON waitpoints (run_id, matched_event_id)
    WHERE matched_event_id IS NOT NULL;

CREATE TABLE events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    payload     TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX events_type_received ON events (type, received_at);

CREATE TABLE signal_inbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    payload TEXT,
    sent_at REAL NOT NULL
);
CREATE INDEX signal_inbox_run_name ON signal_inbox (run_id, name, seq);

CREATE TABLE tokens (
    token_id   TEXT PRIMARY KEY,
    run_id     TEXT NOT NULL,
    wp_id      TEXT NOT NULL,
    created_at REAL NOT NULL,
    FOREIGN KEY (run_id, wp_id) REFERENCES waitpoints (run_id, wp_id) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE timers (
    timer_id   TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    due_at     REAL NOT NULL,
    run_id     TEXT REFERENCES runs (run_id) ON DELETE CASCADE,
    wp_id      TEXT,
    payload    TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX timers_due ON timers (due_at, timer_id);
CREATE INDEX timers_target ON timers (run_id, wp_id) WHERE run_id IS NOT NULL;

CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    spec         TEXT NOT NULL,
    next_fire_at REAL,
    last_fire_at REAL,
    updated_at   REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE stream_chunks (
    run_id    TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    stream_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    encoding  TEXT NOT NULL,
    chunk     TEXT,
    final     INTEGER NOT NULL,
    at        REAL NOT NULL,
    PRIMARY KEY (run_id, stream_id, seq)
) WITHOUT ROWID;

CREATE TABLE metadata (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;

-- Highest metadata op index applied per emitting run: makes replayed ops no-ops.
CREATE TABLE metadata_cursor (
    origin_run_id TEXT PRIMARY KEY,
    last_op_index INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE compensations (
    run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    finished_at REAL NOT NULL,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;

CREATE TABLE rate_limits (
    key        TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
