-- proto/schema.sql -- the dragond SQLite schema, version 1 (PRAGMA user_version).
-- server/db.c embeds this text (dg_db_schema_sql); tests/server/test_db.c checks
-- that the two agree. Migrations: db.c applies version N -> N+1 steps in order in
-- one transaction and bumps user_version; a newer database is refused.
-- Times: *_at are unix seconds (REAL); ts_ms unix milliseconds.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,       -- job_<time-sortable>; run id == job id
    seq          INTEGER NOT NULL,       -- submission order
    kind         TEXT NOT NULL,          -- train | bench
    name         TEXT,
    status       TEXT NOT NULL,          -- queued running pausing paused cancelling
                                         -- succeeded failed cancelled
    reason       TEXT,                   -- failure reason (invalid_config data_error ...)
    message      TEXT,
    priority     INTEGER NOT NULL DEFAULT 0,
    request_json TEXT NOT NULL,
    config_json  TEXT NOT NULL,          -- resolved {"model":..,"training":..}
    data_json    TEXT NOT NULL,
    tags_json    TEXT NOT NULL DEFAULT '{}',
    resume_from  TEXT,                   -- checkpoint path the next attempt starts from
    seed         INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    step         INTEGER NOT NULL DEFAULT 0,
    total_steps  INTEGER NOT NULL DEFAULT 0,
    tokens_seen  INTEGER NOT NULL DEFAULT 0,
    tokens_per_s REAL,
    eta_s        REAL,
    train_loss   REAL,
    val_loss     REAL,
    dataset_path TEXT,
    dataset_sha256 TEXT,
    log_lines    INTEGER NOT NULL DEFAULT 0,
    idem_key     TEXT                    -- Idempotency-Key of the creating POST
);
CREATE INDEX jobs_status ON jobs(status, priority, seq);
CREATE UNIQUE INDEX jobs_idem ON jobs(idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE attempts (
    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    n            INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    exit_reason  TEXT,                   -- succeeded failed cancelled paused daemon_restart
                                         -- daemon_shutdown + failure reasons
    resumed_from TEXT,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE events (
    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,       -- the SSE id
    type         TEXT NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE metrics (
    run_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    step         INTEGER NOT NULL,
    ts_ms        INTEGER NOT NULL,
    value        REAL,
    PRIMARY KEY (run_id, key, step)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    id           TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    path         TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    sha256       TEXT,
    created_at   REAL NOT NULL,
    train_loss   REAL,
    val_loss     REAL
);
CREATE INDEX checkpoints_run ON checkpoints(run_id, step);
CREATE TABLE logs (
    run_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    line         INTEGER NOT NULL,
    ts           REAL NOT NULL,
    level        TEXT NOT NULL,
    msg          TEXT NOT NULL,
    PRIMARY KEY (run_id, line)
) WITHOUT ROWID;
CREATE TABLE benchmarks (
    id           TEXT PRIMARY KEY,       -- the bench job's id
    job_id       TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at   REAL NOT NULL,
    env_json     TEXT NOT NULL,
    results_json TEXT NOT NULL
);

