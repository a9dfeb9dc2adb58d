/* server/db.c -- all of dragond's SQL: the schema (proto/schema.sql, embedded below), migrations
 * by PRAGMA user_version, and one small function per query, each with a statement prepared once
 * and cached for the life of the connection.
 *
 * Settings: journal_mode=WAL, synchronous=FULL (job state transitions gate restart recovery and
 * metric batches are committed before clients are told about them), busy_timeout=5000,
 * foreign_keys=ON, no mmap. Not here: HTTP, threads. Thread affinity: LOOP thread only (one
 * connection, one writer). */
#include "srv.h"
#include "db_exports.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char dg_db_schema_sql[] =
    "-- proto/schema.sql -- the dragond SQLite schema, version 1 (PRAGMA user_version).\n"
    "-- server/db.c embeds this text (dg_db_schema_sql); tests/server/test_db.c checks\n"
    "-- that the two agree. Migrations: db.c applies version N -> N+1 steps in order in\n"
    "-- one transaction and bumps user_version; a newer database is refused.\n"
    "-- Times: *_at are unix seconds (REAL); ts_ms unix milliseconds.\n"
    "CREATE TABLE jobs (\n"
    "    id           TEXT PRIMARY KEY,       -- job_<time-sortable>; run id == job id\n"
    "    seq          INTEGER NOT NULL,       -- submission order\n"
    "    kind         TEXT NOT NULL,          -- train | bench\n"
    "    name         TEXT,\n"
    "    status       TEXT NOT NULL,          -- queued running pausing paused cancelling\n"
    "                                         -- succeeded failed cancelled\n"
    "    reason       TEXT,                   -- failure reason (invalid_config data_error ...)\n"
    "    message      TEXT,\n"
    "    priority     INTEGER NOT NULL DEFAULT 0,\n"
    "    request_json TEXT NOT NULL,\n"
    "    config_json  TEXT NOT NULL,          -- resolved {\"model\":..,\"training\":..}\n"
    "    data_json    TEXT NOT NULL,\n"
    "    tags_json    TEXT NOT NULL DEFAULT '{}',\n"
    "    resume_from  TEXT,                   -- checkpoint path the next attempt starts from\n"
    "    seed         INTEGER NOT NULL,\n"
    "    created_at   REAL NOT NULL,\n"
    "    started_at   REAL,\n"
    "    finished_at  REAL,\n"
    "    step         INTEGER NOT NULL DEFAULT 0,\n"
    "    total_steps  INTEGER NOT NULL DEFAULT 0,\n"
    "    tokens_seen  INTEGER NOT NULL DEFAULT 0,\n"
    "    tokens_per_s REAL,\n"
    "    eta_s        REAL,\n"
    "    train_loss   REAL,\n"
    "    val_loss     REAL,\n"
    "    dataset_path TEXT,\n"
    "    dataset_sha256 TEXT,\n"
    "    log_lines    INTEGER NOT NULL DEFAULT 0,\n"
    "    idem_key     TEXT                    -- Idempotency-Key of the creating POST\n"
    ");\n"
    "CREATE INDEX jobs_status ON jobs(status, priority, seq);\n"
    "CREATE UNIQUE INDEX jobs_idem ON jobs(idem_key) WHERE idem_key IS NOT NULL;\n"
    "CREATE TABLE attempts (\n"
    "    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,\n"
    "    n            INTEGER NOT NULL,\n"
    "    started_at   REAL NOT NULL,\n"
    "    ended_at     REAL,\n"
    "    exit_reason  TEXT,                   -- succeeded failed cancelled paused daemon_restart\n"
    "                                         -- daemon_shutdown + failure reasons\n"
    "    resumed_from TEXT,\n"
    "    PRIMARY KEY (job_id, n)\n"
    ");\n"
    "CREATE TABLE events (\n"
    "    job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,\n"
    "    seq          INTEGER NOT NULL,       -- the SSE id\n"
    "    type         TEXT NOT NULL,\n"
    "    data         TEXT NOT NULL,\n"
    "    PRIMARY KEY (job_id, seq)\n"
    ") WITHOUT ROWID;\n"
    "CREATE TABLE metrics (\n"
    "    run_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,\n"
    "    key          TEXT NOT NULL,\n"
    "    step         INTEGER NOT NULL,\n"
    "    ts_ms        INTEGER NOT NULL,\n"
    "    value        REAL,\n"
    "    PRIMARY KEY (run_id, key, step)\n"
    ") WITHOUT ROWID;\n"
    "CREATE TABLE checkpoints (\n"
    "    id           TEXT PRIMARY KEY,\n"
    "    run_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,\n"
    "    step         INTEGER NOT NULL,\n"
    "    path         TEXT NOT NULL,\n"
    "    bytes        INTEGER NOT NULL,\n"
    "    sha256       TEXT,\n"
    "    created_at   REAL NOT NULL,\n"
    "    train_loss   REAL,\n"
    "    val_loss     REAL\n"
    ");\n"
    "CREATE INDEX checkpoints_run ON checkpoints(run_id, step);\n"
    "CREATE TABLE logs (\n"
    "    run_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,\n"
    "    line         INTEGER NOT NULL,\n"
    "    ts           REAL NOT NULL,\n"
    "    level        TEXT NOT NULL,\n"
    "    msg          TEXT NOT NULL,\n"
    "    PRIMARY KEY (run_id, line)\n"
    ") WITHOUT ROWID;\n"
    "CREATE TABLE benchmarks (\n"
    "    id           TEXT PRIMARY KEY,       -- the bench job's id\n"
    "    job_id       TEXT REFERENCES jobs(id) ON DELETE SET NULL,\n"
    "    created_at   REAL NOT NULL,\n"
    "    env_json     TEXT NOT NULL,\n"
    "    results_json TEXT NOT NULL\n"
    ");\n"
    "\n";

static sqlite3 *g_db;
static char     g_err[512];

/* ---- statement cache: keyed by the address of the SQL literal ---------------------------- */
#define DB_MAX_STMTS 96
static struct { const char *sql; sqlite3_stmt *st; } g_stmts[DB_MAX_STMTS];
static int g_n_stmts;

sqlite3_stmt *dg_db_prep(const char *sql) {
    for (int i = 0; i < g_n_stmts; i++)
        if (g_stmts[i].sql == sql) { sqlite3_reset(g_stmts[i].st);
                                     sqlite3_clear_bindings(g_stmts[i].st);
                                     return g_stmts[i].st; }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(g_db, sql, -1, &st, NULL) != SQLITE_OK) {
        DG_ERROR("sqlite prepare failed: %s (%s)", sqlite3_errmsg(g_db), sql);
        return NULL;
    }
    DG_ASSERT(g_n_stmts < DB_MAX_STMTS);
    g_stmts[g_n_stmts].sql = sql;
    g_stmts[g_n_stmts].st = st;
    g_n_stmts++;
    return st;
}

int dg_db_step(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        DG_ERROR("sqlite step failed: %s", sqlite3_errmsg(g_db));
        return rc == SQLITE_CONSTRAINT ? DG_EEXIST : DG_EIO;
    }
    return 0;
}

void dg_db_bind_text(sqlite3_stmt *st, int i, const char *s) {
    if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}
static void bind_dopt(sqlite3_stmt *st, int i, const double *v) {
    if (v) sqlite3_bind_double(st, i, *v);
    else sqlite3_bind_null(st, i);
}
static json_t *col_json_num(sqlite3_stmt *st, int i) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_NULL:    return json_null();
    case SQLITE_INTEGER: return json_integer(sqlite3_column_int64(st, i));
    default:             return json_real(sqlite3_column_double(st, i));
    }
}
static json_t *col_json_str(sqlite3_stmt *st, int i) {
    const unsigned char *s = sqlite3_column_text(st, i);
    return s ? json_string((const char *)s) : json_null();
}
static json_t *col_json_parsed(sqlite3_stmt *st, int i) {
    const unsigned char *s = sqlite3_column_text(st, i);
    if (!s) return json_null();
    json_t *v = json_loads((const char *)s, 0, NULL);
    return v ? v : json_null();
}
static char *col_dup(sqlite3_stmt *st, int i) {
    const unsigned char *s = sqlite3_column_text(st, i);
    return s ? dg_strdup((const char *)s) : NULL;
}

int dg_db_exec(const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(g_db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(g_err, sizeof g_err, "%s", msg ? msg : "?");
        DG_ERROR("sqlite: %s", g_err);
        sqlite3_free(msg);
        return DG_EIO;
    }
    return 0;
}
int dg_db_begin(void)  { return dg_db_exec("BEGIN IMMEDIATE"); }
int dg_db_commit(void) { return dg_db_exec("COMMIT"); }

/* Migrations: index i upgrades user_version i -> i+1. */
static const char *const g_migrations[DG_DB_VERSION] = { dg_db_schema_sql, dg_db_exports_sql };

int dg_db_open(const char *path, char *err, size_t n) {
    if (sqlite3_open_v2(path, &g_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                        SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, n, "cannot open %s: %s", path, g_db ? sqlite3_errmsg(g_db) : "?");
        sqlite3_close(g_db);
        g_db = NULL;
        return DG_EIO;
    }
    sqlite3_busy_timeout(g_db, 5000);
    if (dg_db_exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"
                   "PRAGMA mmap_size=0;") != 0) {
        snprintf(err, n, "cannot configure %s: %s", path, g_err);
        goto fail;
    }
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(g_db, "PRAGMA user_version", -1, &st, NULL);
    int version = (st && sqlite3_step(st) == SQLITE_ROW) ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (version < 0 || version > DG_DB_VERSION) {
        snprintf(err, n, "%s has schema version %d but this dragond knows up to %d. HINT: use "
                 "a newer dragond or another --data-dir", path, version, DG_DB_VERSION);
        goto fail;
    }
    for (int v = version; v < DG_DB_VERSION; v++) {
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version=%d;", v + 1);
        if (dg_db_begin() || dg_db_exec(g_migrations[v]) || dg_db_exec(bump) ||
            dg_db_commit()) {
            dg_db_exec("ROLLBACK");
            snprintf(err, n, "migrating %s to version %d failed: %s", path, v + 1, g_err);
            goto fail;
        }
    }
    return 0;
fail:
    sqlite3_close(g_db);
    g_db = NULL;
    return DG_EIO;
}

void dg_db_close(void) {
    if (!g_db) return;
    for (int i = 0; i < g_n_stmts; i++) sqlite3_finalize(g_stmts[i].st);
    g_n_stmts = 0;
    sqlite3_exec(g_db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
    sqlite3_close(g_db);
    g_db = NULL;
}

/* ---- jobs ---------------------------------------------------------------------------------- */
static const char SQL_JOB_INSERT[] =
    "INSERT INTO jobs(id, seq, kind, name, status, priority, request_json, config_json,"
    " data_json, tags_json, resume_from, seed, created_at, total_steps, idem_key)"
    " VALUES(?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?2, ?3, 'queued', ?4, ?5, ?6,"
    " ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

int dg_db_job_insert(const dg_db_newjob *j) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_INSERT);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, j->id);
    dg_db_bind_text(st, 2, j->kind);
    dg_db_bind_text(st, 3, j->name);
    sqlite3_bind_int64(st, 4, j->priority);
    dg_db_bind_text(st, 5, j->request_json);
    dg_db_bind_text(st, 6, j->config_json);
    dg_db_bind_text(st, 7, j->data_json);
    dg_db_bind_text(st, 8, j->tags_json ? j->tags_json : "{}");
    dg_db_bind_text(st, 9, j->resume_from);
    sqlite3_bind_int64(st, 10, j->seed);
    sqlite3_bind_double(st, 11, dg_wall_s());
    sqlite3_bind_int64(st, 12, j->total_steps);
    dg_db_bind_text(st, 13, j->idem_key);
    return dg_db_step(st);
}

static const char SQL_JOB_BY_IDEM[] = "SELECT id, request_json FROM jobs WHERE idem_key = ?1";
int dg_db_job_by_idem(const char *key, char id[DG_ID_LEN], char **request_json) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_BY_IDEM);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, key);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(id, DG_ID_LEN, "%s", (const char *)sqlite3_column_text(st, 0));
        *request_json = col_dup(st, 1);
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}

static const char SQL_JOB_STATUS[] = "SELECT status FROM jobs WHERE id = ?1";
int dg_db_job_status(const char *id, char out[32]) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_STATUS);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(out, 32, "%s", (const char *)sqlite3_column_text(st, 0));
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}
bool dg_db_job_exists(const char *id) {
    char s[32];
    return dg_db_job_status(id, s) == 0;
}

static bool is_terminal(const char *s) {
    return !strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
}

static const char SQL_JOB_SET_STATUS[] =
    "UPDATE jobs SET status = ?2, reason = ?3, message = ?4,"
    " started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?5 ELSE started_at END,"
    " finished_at = CASE WHEN ?6 THEN ?5 ELSE NULL END WHERE id = ?1";
int dg_db_job_set_status(const char *id, const char *status, const char *reason,
                         const char *message) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_SET_STATUS);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    dg_db_bind_text(st, 2, status);
    dg_db_bind_text(st, 3, reason);
    dg_db_bind_text(st, 4, message);
    sqlite3_bind_double(st, 5, dg_wall_s());
    sqlite3_bind_int(st, 6, is_terminal(status));
    return dg_db_step(st);
}

static const char SQL_QUEUE_LEN[] = "SELECT COUNT(*) FROM jobs WHERE status = 'queued'";
int64_t dg_db_queue_len(void) {
    sqlite3_stmt *st = dg_db_prep(SQL_QUEUE_LEN);
    int64_t n = 0;
    if (st && sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    if (st) sqlite3_reset(st);
    return n;
}

static const char SQL_QUEUE_POS[] =
    "SELECT COUNT(*) FROM jobs a, jobs b WHERE b.id = ?1 AND a.status = 'queued' AND"
    " (a.priority > b.priority OR (a.priority = b.priority AND a.seq < b.seq))";
int64_t dg_db_queue_position(const char *id) {
    sqlite3_stmt *st = dg_db_prep(SQL_QUEUE_POS);
    int64_t n = 0;
    if (!st) return 0;
    dg_db_bind_text(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

static const char SQL_NEXT_QUEUED[] =
    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY priority DESC, seq ASC LIMIT 1";
bool dg_db_next_queued(char id[DG_ID_LEN]) {
    sqlite3_stmt *st = dg_db_prep(SQL_NEXT_QUEUED);
    bool ok = false;
    if (st && sqlite3_step(st) == SQLITE_ROW) {
        snprintf(id, DG_ID_LEN, "%s", (const char *)sqlite3_column_text(st, 0));
        ok = true;
    }
    if (st) sqlite3_reset(st);
    return ok;
}

#define JOB_COLS                                                                             \
    "id, kind, name, status, reason, message, priority, tags_json, created_at, started_at,"  \
    " finished_at, step, total_steps, tokens_seen, tokens_per_s, eta_s, train_loss, val_loss," \
    " config_json, data_json, seed, resume_from, dataset_path, dataset_sha256, request_json"

/* One row (JOB_COLS order) -> the job object. */
static json_t *job_row_json(sqlite3_stmt *st, bool full, bool run_row) {
    json_t *o = json_object();
    json_object_set_new(o, "id", col_json_str(st, 0));
    json_object_set_new(o, "object", json_string(run_row ? "run" : "job"));
    json_object_set_new(o, "kind", col_json_str(st, 1));
    json_object_set_new(o, "name", col_json_str(st, 2));
    json_object_set_new(o, "status", col_json_str(st, 3));
    json_object_set_new(o, "reason", col_json_str(st, 4));
    json_object_set_new(o, "message", col_json_str(st, 5));
    json_object_set_new(o, "priority", col_json_num(st, 6));
    json_object_set_new(o, "tags", col_json_parsed(st, 7));
    json_object_set_new(o, "created_at", col_json_num(st, 8));
    json_object_set_new(o, "started_at", col_json_num(st, 9));
    json_object_set_new(o, "finished_at", col_json_num(st, 10));
    if (sqlite3_column_type(st, 9) != SQLITE_NULL) {
        double end = sqlite3_column_type(st, 10) != SQLITE_NULL ?
                     sqlite3_column_double(st, 10) : dg_wall_s();
        json_object_set_new(o, "duration_s", json_real(end - sqlite3_column_double(st, 9)));
    } else {
        json_object_set_new(o, "duration_s", json_null());
    }
    json_t *p = json_object();
    json_object_set_new(p, "step", col_json_num(st, 11));
    json_object_set_new(p, "total_steps", col_json_num(st, 12));
    json_object_set_new(p, "tokens_seen", col_json_num(st, 13));
    json_object_set_new(p, "tokens_per_s", col_json_num(st, 14));
    json_object_set_new(p, "eta_s", col_json_num(st, 15));
    json_object_set_new(o, "progress", p);
    json_t *sm = json_object();
    json_object_set_new(sm, "train_loss", col_json_num(st, 16));
    json_object_set_new(sm, "val_loss", col_json_num(st, 17));
    json_object_set_new(o, "summary_metrics", sm);
    if (run_row) {
        json_object_set_new(o, "step", col_json_num(st, 11));
        json_object_set_new(o, "total_steps", col_json_num(st, 12));
    }
    if (full) {
        json_object_set_new(o, "config", col_json_parsed(st, 18));
        json_object_set_new(o, "data", col_json_parsed(st, 19));
        json_object_set_new(o, "seed", col_json_num(st, 20));
        json_object_set_new(o, "resume_from", col_json_str(st, 21));
        json_t *ds = json_object();
        json_object_set_new(ds, "path", col_json_str(st, 22));
        json_object_set_new(ds, "sha256", col_json_str(st, 23));
        json_object_set_new(o, "dataset", ds);
        json_object_set_new(o, "request", col_json_parsed(st, 24));
    }
    return o;
}

static const char SQL_JOB_GET[] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1";
static const char SQL_ATTEMPTS[] =
    "SELECT n, started_at, ended_at, exit_reason, resumed_from FROM attempts WHERE job_id = ?1"
    " ORDER BY n";
static const char SQL_CKPT_LATEST_ROW[] =
    "SELECT id, step, path, created_at FROM checkpoints WHERE run_id = ?1"
    " ORDER BY step DESC LIMIT 1";

static void flatten(json_t *dst, const char *prefix, json_t *v) {
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) {
            char key[256];
            snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", k);
            flatten(dst, key, x);
        }
    } else {
        json_object_set(dst, prefix, v);
    }
}

json_t *dg_db_job_json(const char *id, bool full) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_GET);
    if (!st) return NULL;
    dg_db_bind_text(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW) { sqlite3_reset(st); return NULL; }
    json_t *o = job_row_json(st, true, false);
    sqlite3_reset(st);
    const char *status = json_string_value(json_object_get(o, "status"));
    if (status && !strcmp(status, "queued"))
        json_object_set_new(o, "queue_position", json_integer(dg_db_queue_position(id)));
    json_t *att = json_array();
    st = dg_db_prep(SQL_ATTEMPTS);
    if (st) {
        dg_db_bind_text(st, 1, id);
        while (sqlite3_step(st) == SQLITE_ROW) {
            json_t *a = json_object();
            json_object_set_new(a, "n", col_json_num(st, 0));
            json_object_set_new(a, "started_at", col_json_num(st, 1));
            json_object_set_new(a, "ended_at", col_json_num(st, 2));
            json_object_set_new(a, "exit_reason", col_json_str(st, 3));
            json_object_set_new(a, "resumed_from", col_json_str(st, 4));
            json_array_append_new(att, a);
        }
        sqlite3_reset(st);
    }
    json_object_set_new(o, "attempts", att);
    json_t *lc = json_null();
    st = dg_db_prep(SQL_CKPT_LATEST_ROW);
    if (st) {
        dg_db_bind_text(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            lc = json_object();
            json_object_set_new(lc, "id", col_json_str(st, 0));
            json_object_set_new(lc, "step_number", col_json_num(st, 1));
            json_object_set_new(lc, "path", col_json_str(st, 2));
            json_object_set_new(lc, "created_at", col_json_num(st, 3));
        }
        sqlite3_reset(st);
    }
    json_object_set_new(o, "latest_checkpoint", lc);
    if (full) {
        json_t *params = json_object();
        flatten(params, "", json_object_get(o, "config"));
        json_object_set_new(o, "params", params);
    }
    return o;
}

static const char SQL_JOB_SPEC[] =
    "SELECT kind, config_json, data_json, resume_from, seed,"
    " (SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?1),"
    " (SELECT step FROM checkpoints WHERE run_id = ?1 AND path = jobs.resume_from),"
    " request_json"
    " FROM jobs WHERE id = ?1";
int dg_db_job_spec(const char *id, dg_db_jobspec *out) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_SPEC);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW) { sqlite3_reset(st); return DG_ENOTFOUND; }
    snprintf(out->kind, sizeof out->kind, "%s", (const char *)sqlite3_column_text(st, 0));
    out->config_json = col_dup(st, 1);
    out->data_json = col_dup(st, 2);
    out->resume_from = col_dup(st, 3);
    out->seed = sqlite3_column_int64(st, 4);
    out->n_events = sqlite3_column_int64(st, 5);
    out->resume_step = sqlite3_column_int64(st, 6);
    out->request_json = col_dup(st, 7);
    sqlite3_reset(st);
    return 0;
}
void dg_db_jobspec_free(dg_db_jobspec *s) {
    dg_free(s->request_json);
    dg_free(s->config_json);
    dg_free(s->data_json);
    dg_free(s->resume_from);
    memset(s, 0, sizeof *s);
}

static const char SQL_JOB_PROGRESS[] =
    "UPDATE jobs SET step = ?2, total_steps = ?3, tokens_seen = ?4, tokens_per_s = ?5,"
    " eta_s = ?6 WHERE id = ?1";
int dg_db_job_progress(const char *id, int64_t step, int64_t total, int64_t tokens_seen,
                       double tps, double eta_s) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_PROGRESS);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, step);
    sqlite3_bind_int64(st, 3, total);
    sqlite3_bind_int64(st, 4, tokens_seen);
    sqlite3_bind_double(st, 5, tps);
    sqlite3_bind_double(st, 6, eta_s);
    return dg_db_step(st);
}

static const char SQL_JOB_LOSSES[] =
    "UPDATE jobs SET train_loss = COALESCE(?2, train_loss), val_loss = COALESCE(?3, val_loss)"
    " WHERE id = ?1";
int dg_db_job_set_losses(const char *id, const double *train_loss, const double *val_loss) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_LOSSES);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    bind_dopt(st, 2, train_loss);
    bind_dopt(st, 3, val_loss);
    return dg_db_step(st);
}

static const char SQL_JOB_DATASET[] =
    "UPDATE jobs SET dataset_path = ?2, dataset_sha256 = ?3 WHERE id = ?1";
int dg_db_job_set_dataset(const char *id, const char *path, const char *sha256) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_DATASET);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    dg_db_bind_text(st, 2, path);
    dg_db_bind_text(st, 3, sha256);
    return dg_db_step(st);
}

static const char SQL_JOB_RESUME[] = "UPDATE jobs SET resume_from = ?2 WHERE id = ?1";
int dg_db_job_set_resume(const char *id, const char *ckpt_path) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_RESUME);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    dg_db_bind_text(st, 2, ckpt_path);
    return dg_db_step(st);
}

static const char SQL_JOB_DELETE[] = "DELETE FROM jobs WHERE id = ?1";
int dg_db_job_delete(const char *id) {
    sqlite3_stmt *st = dg_db_prep(SQL_JOB_DELETE);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    return dg_db_step(st);
}

static const char SQL_ATTEMPT_OPEN[] =
    "INSERT INTO attempts(job_id, n, started_at, resumed_from) VALUES(?1,"
    " (SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE job_id = ?1), ?2, ?3)"
    " RETURNING n";
int dg_db_attempt_open(const char *id, const char *resumed_from, int *n_out) {
    sqlite3_stmt *st = dg_db_prep(SQL_ATTEMPT_OPEN);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    sqlite3_bind_double(st, 2, dg_wall_s());
    dg_db_bind_text(st, 3, resumed_from);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && n_out) *n_out = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : DG_EIO;
}

static const char SQL_ATTEMPT_CLOSE[] =
    "UPDATE attempts SET ended_at = ?2, exit_reason = ?3 WHERE job_id = ?1 AND ended_at IS NULL";
int dg_db_attempt_close(const char *id, const char *exit_reason) {
    sqlite3_stmt *st = dg_db_prep(SQL_ATTEMPT_CLOSE);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    sqlite3_bind_double(st, 2, dg_wall_s());
    dg_db_bind_text(st, 3, exit_reason);
    return dg_db_step(st);
}

/* ---- lists ---------------------------------------------------------------------------------- */
static bool metric_col(const char *name, const char **col) {
    static const char *const ok[] = {"train_loss", "val_loss", "tokens_per_s", "step",
                                     "created_at", "duration_s"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strcmp(name, ok[i])) { *col = ok[i]; return true; }
    return false;
}

int dg_db_list_jobs(const dg_db_listq *q, json_t **out, char *err, size_t n) {
    char sql[2048];
    size_t len = (size_t)snprintf(sql, sizeof sql, "SELECT " JOB_COLS ", seq FROM jobs WHERE 1");
    const char *binds[64];
    int nb = 0;
    char statuses[16][32];
    if (q->status && *q->status) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s", q->status);
        int ns = 0;
        len += (size_t)snprintf(sql + len, sizeof sql - len, " AND status IN (");
        for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t && ns < 16;
             t = strtok_r(NULL, ",", &save)) {
            static const char *const known[] = {"queued", "running", "pausing", "paused",
                "cancelling", "succeeded", "failed", "cancelled"};
            bool found = false;
            for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
                if (!strcmp(t, known[i])) found = true;
            if (!found) {
                snprintf(err, n, "status: unknown status '%s'", t);
                return DG_EINVAL;
            }
            snprintf(statuses[ns], 32, "%s", t);
            len += (size_t)snprintf(sql + len, sizeof sql - len, "%s?", ns ? "," : "");
            binds[nb++] = statuses[ns++];
        }
        len += (size_t)snprintf(sql + len, sizeof sql - len, ")");
    }
    if (q->kind && *q->kind) {
        len += (size_t)snprintf(sql + len, sizeof sql - len, " AND kind = ?");
        binds[nb++] = q->kind;
    }
    char tagpath[300], tagval[256];
    if (q->tag && *q->tag) {
        const char *eq = strchr(q->tag, '=');
        size_t kl = eq ? (size_t)(eq - q->tag) : strlen(q->tag);
        if (kl == 0 || kl > 200 || memchr(q->tag, '"', kl)) {
            snprintf(err, n, "tag: expected KEY or KEY=VALUE");
            return DG_EINVAL;
        }
        snprintf(tagpath, sizeof tagpath, "$.\"%.*s\"", (int)kl, q->tag);
        binds[nb++] = tagpath;
        if (eq) {
            snprintf(tagval, sizeof tagval, "%s", eq + 1);
            len += (size_t)snprintf(sql + len, sizeof sql - len,
                                    " AND json_extract(tags_json, ?) = ?");
            binds[nb++] = tagval;
        } else {
            len += (size_t)snprintf(sql + len, sizeof sql - len,
                                    " AND json_extract(tags_json, ?) IS NOT NULL");
        }
    }
    int64_t limit = q->limit > 0 ? (q->limit > 1000 ? 1000 : q->limit) : 100;
    int64_t offset = 0;
    if (q->order_metric && *q->order_metric) {
        const char *m = q->order_metric, *col = NULL;
        bool desc = false;
        if (*m == '-') { desc = true; m++; }
        if (!strncmp(m, "metrics.", 8)) m += 8;
        if (!metric_col(m, &col)) {
            snprintf(err, n, "order_by: unknown metric '%s' (train_loss, val_loss, tokens_per_s,"
                     " step, created_at, duration_s)", m);
            return DG_EINVAL;
        }
        if (q->after && *q->after) {
            char *end = NULL;
            offset = strtoll(q->after, &end, 10);
            if (!end || *end || offset < 0) {
                snprintf(err, n, "after: bad cursor for order_by");
                return DG_EINVAL;
            }
        }
        const char *expr = !strcmp(col, "duration_s") ?
            "(COALESCE(finished_at, started_at) - started_at)" : col;
        len += (size_t)snprintf(sql + len, sizeof sql - len,
                                " ORDER BY %s IS NULL, %s %s, seq DESC LIMIT %lld OFFSET %lld",
                                expr, expr, desc ? "DESC" : "ASC", (long long)limit + 1,
                                (long long)offset);
    } else {
        if (q->after && *q->after) {
            len += (size_t)snprintf(sql + len, sizeof sql - len,
                                    " AND seq < (SELECT seq FROM jobs WHERE id = ?)");
            binds[nb++] = q->after;
        }
        len += (size_t)snprintf(sql + len, sizeof sql - len, " ORDER BY seq DESC LIMIT %lld",
                                (long long)limit + 1);
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(g_db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, n, "internal: %s", sqlite3_errmsg(g_db));
        return DG_EIO;
    }
    for (int i = 0; i < nb; i++) dg_db_bind_text(st, i + 1, binds[i]);
    json_t *data = json_array();
    bool more = false;
    int64_t count = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (count == limit) { more = true; break; }
        json_array_append_new(data, job_row_json(st, false, q->runs));
        count++;
    }
    sqlite3_finalize(st);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    json_object_set_new(o, "has_more", json_boolean(more));
    if (more && count > 0) {
        if (q->order_metric && *q->order_metric) {
            char c[32];
            snprintf(c, sizeof c, "%lld", (long long)(offset + count));
            json_object_set_new(o, "next_after", json_string(c));
        } else {
            json_object_set(o, "next_after",
                            json_object_get(json_array_get(data, (size_t)count - 1), "id"));
        }
    } else {
        json_object_set_new(o, "next_after", json_null());
    }
    *out = o;
    return 0;
}

static const char SQL_BY_STATE[] = "SELECT status, COUNT(*) FROM jobs GROUP BY status";
int dg_db_jobs_by_state(json_t *counts) {
    static const char *const states[] = {"queued", "running", "pausing", "paused", "cancelling",
                                         "succeeded", "failed", "cancelled"};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
        json_object_set_new(counts, states[i], json_integer(0));
    sqlite3_stmt *st = dg_db_prep(SQL_BY_STATE);
    if (!st) return DG_EIO;
    while (sqlite3_step(st) == SQLITE_ROW)
        json_object_set_new(counts, (const char *)sqlite3_column_text(st, 0),
                            json_integer(sqlite3_column_int64(st, 1)));
    sqlite3_reset(st);
    return 0;
}

/* ---- events ---------------------------------------------------------------------------------- */
static const char SQL_EVENT_ADD[] =
    "INSERT INTO events(job_id, seq, type, data) VALUES(?1,"
    " (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?1), ?2, ?3) RETURNING seq";
int64_t dg_db_event_add(const char *job_id, const char *type, const char *data_json) {
    sqlite3_stmt *st = dg_db_prep(SQL_EVENT_ADD);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, job_id);
    dg_db_bind_text(st, 2, type);
    dg_db_bind_text(st, 3, data_json);
    int64_t seq = DG_EIO;
    if (sqlite3_step(st) == SQLITE_ROW) seq = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return seq;
}

static const char SQL_EVENTS_AFTER[] =
    "SELECT seq, type, data FROM events WHERE job_id = ?1 AND seq > ?2 AND"
    " (seq >= ?3 OR type NOT IN ('progress', 'metric')) ORDER BY seq LIMIT ?4";
int dg_db_events_after(const char *job_id, int64_t after_seq, int64_t skip_noisy_below,
                       dg_db_event *evs, int max) {
    sqlite3_stmt *st = dg_db_prep(SQL_EVENTS_AFTER);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, job_id);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int64(st, 3, skip_noisy_below);
    sqlite3_bind_int(st, 4, max);
    int n = 0;
    while (n < max && sqlite3_step(st) == SQLITE_ROW) {
        evs[n].seq = sqlite3_column_int64(st, 0);
        snprintf(evs[n].type, sizeof evs[n].type, "%s", (const char *)sqlite3_column_text(st, 1));
        evs[n].data = col_dup(st, 2);
        n++;
    }
    sqlite3_reset(st);
    return n;
}

static const char SQL_EVENT_MAX[] =
    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?1";
int64_t dg_db_event_max(const char *job_id) {
    sqlite3_stmt *st = dg_db_prep(SQL_EVENT_MAX);
    if (!st) return 0;
    dg_db_bind_text(st, 1, job_id);
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return v;
}

/* ---- metrics ------------------------------------------------------------------------------- */
static const char SQL_METRIC_ADD[] =
    "INSERT OR REPLACE INTO metrics(run_id, key, step, ts_ms, value) VALUES(?1, ?2, ?3, ?4, ?5)";
int dg_db_metric_add(const char *run_id, const char *key, int64_t step, int64_t ts_ms,
                     double value) {
    sqlite3_stmt *st = dg_db_prep(SQL_METRIC_ADD);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    dg_db_bind_text(st, 2, key);
    sqlite3_bind_int64(st, 3, step);
    sqlite3_bind_int64(st, 4, ts_ms);
    if (value == value) sqlite3_bind_double(st, 5, value);
    else sqlite3_bind_null(st, 5);
    return dg_db_step(st);
}

static const char SQL_METRIC_TRIM[] = "DELETE FROM metrics WHERE run_id = ?1 AND step > ?2";
int dg_db_metrics_trim(const char *run_id, int64_t after_step) {
    sqlite3_stmt *st = dg_db_prep(SQL_METRIC_TRIM);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    sqlite3_bind_int64(st, 2, after_step);
    return dg_db_step(st);
}

static const char SQL_METRIC_KEYS[] =
    "SELECT m.key, MIN(m.value), MAX(m.value), MAX(m.step), COUNT(*),"
    " (SELECT value FROM metrics x WHERE x.run_id = m.run_id AND x.key = m.key"
    "  ORDER BY step DESC LIMIT 1)"
    " FROM metrics m WHERE m.run_id = ?1 GROUP BY m.key ORDER BY m.key";
int dg_db_metric_keys(const char *run_id, json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_METRIC_KEYS);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    json_t *keys = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *k = json_object();
        json_object_set_new(k, "key", col_json_str(st, 0));
        json_object_set_new(k, "last", col_json_num(st, 5));
        json_object_set_new(k, "min", col_json_num(st, 1));
        json_object_set_new(k, "max", col_json_num(st, 2));
        json_object_set_new(k, "last_step", col_json_num(st, 3));
        json_object_set_new(k, "n_points", col_json_num(st, 4));
        json_array_append_new(keys, k);
    }
    sqlite3_reset(st);
    *out = keys;
    return 0;
}

static const char SQL_METRIC_SERIES[] =
    "SELECT step, ts_ms, value FROM metrics WHERE run_id = ?1 AND key = ?2 AND step >= ?3 AND"
    " step <= ?4 ORDER BY step";
int dg_db_metric_series(const char *run_id, const char *key, int64_t from_step,
                        int64_t to_step, int64_t max_points, json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_METRIC_SERIES);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    dg_db_bind_text(st, 2, key);
    sqlite3_bind_int64(st, 3, from_step);
    sqlite3_bind_int64(st, 4, to_step);
    size_t n = 0, cap = 256;
    struct pt { int64_t step, ts; double v; bool null; } *pts = dg_malloc(cap * sizeof *pts);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) { cap *= 2; pts = dg_realloc(pts, cap * sizeof *pts); }
        pts[n].step = sqlite3_column_int64(st, 0);
        pts[n].ts = sqlite3_column_int64(st, 1);
        pts[n].null = sqlite3_column_type(st, 2) == SQLITE_NULL;
        pts[n].v = sqlite3_column_double(st, 2);
        n++;
    }
    sqlite3_reset(st);
    json_t *arr = json_array();
#define PUSH(p) do { json_t *row = json_array();                                        \
                     json_array_append_new(row, json_integer((p).step));                \
                     json_array_append_new(row, json_integer((p).ts));                  \
                     json_array_append_new(row, (p).null ? json_null() : json_real((p).v)); \
                     json_array_append_new(arr, row); } while (0)
    bool down = max_points > 0 && (int64_t)n > max_points;
    if (!down) {
        for (size_t i = 0; i < n; i++) PUSH(pts[i]);
    } else {
        /* min/max per bucket: max_points/2 buckets keep every spike visible. */
        int64_t buckets = max_points / 2 > 0 ? max_points / 2 : 1;
        for (int64_t b = 0; b < buckets; b++) {
            size_t lo = (size_t)((int64_t)n * b / buckets);
            size_t hi = (size_t)((int64_t)n * (b + 1) / buckets);
            if (hi <= lo) continue;
            size_t imin = lo, imax = lo;
            for (size_t i = lo; i < hi; i++) {
                if (pts[i].null) continue;
                if (pts[imin].null || pts[i].v < pts[imin].v) imin = i;
                if (pts[imax].null || pts[i].v > pts[imax].v) imax = i;
            }
            if (max_points == 1) { PUSH(pts[imin]); continue; }
            if (imin == imax) { PUSH(pts[imin]); continue; }
            if (imin < imax) { PUSH(pts[imin]); PUSH(pts[imax]); }
            else { PUSH(pts[imax]); PUSH(pts[imin]); }
        }
    }
#undef PUSH
    dg_free(pts);
    json_t *o = json_object();
    json_object_set_new(o, "key", json_string(key));
    json_object_set_new(o, "points", arr);
    json_object_set_new(o, "n_points", json_integer((json_int_t)n));
    json_object_set_new(o, "downsampled", json_boolean(down));
    json_object_set_new(o, "method", down ? json_string("minmax") : json_null());
    *out = o;
    return 0;
}

/* ---- logs ---------------------------------------------------------------------------------- */
static const char SQL_LOG_LINE[] =
    "UPDATE jobs SET log_lines = log_lines + 1 WHERE id = ?1 RETURNING log_lines";
static const char SQL_LOG_ADD[] =
    "INSERT INTO logs(run_id, line, ts, level, msg) VALUES(?1, ?2, ?3, ?4, ?5)";
int dg_db_log_add(const char *run_id, const char *level, const char *msg, int64_t *line) {
    sqlite3_stmt *st = dg_db_prep(SQL_LOG_LINE);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    if (sqlite3_step(st) != SQLITE_ROW) { sqlite3_reset(st); return DG_ENOTFOUND; }
    int64_t ln = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    st = dg_db_prep(SQL_LOG_ADD);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    sqlite3_bind_int64(st, 2, ln);
    sqlite3_bind_double(st, 3, dg_wall_s());
    dg_db_bind_text(st, 4, level);
    dg_db_bind_text(st, 5, msg);
    if (line) *line = ln;
    return dg_db_step(st);
}

static const char SQL_LOGS[] =
    "SELECT line, ts, level, msg FROM logs WHERE run_id = ?1 AND line > ?2 AND line > ?3"
    " ORDER BY line LIMIT 10000";
static const char SQL_LOG_MAX[] = "SELECT log_lines FROM jobs WHERE id = ?1";
int dg_db_logs(const char *run_id, int64_t after_line, int64_t tail, json_t **out) {
    int64_t floor_line = 0;
    if (tail > 0) {
        sqlite3_stmt *m = dg_db_prep(SQL_LOG_MAX);
        if (!m) return DG_EIO;
        dg_db_bind_text(m, 1, run_id);
        if (sqlite3_step(m) == SQLITE_ROW) floor_line = sqlite3_column_int64(m, 0) - tail;
        sqlite3_reset(m);
    }
    sqlite3_stmt *st = dg_db_prep(SQL_LOGS);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    sqlite3_bind_int64(st, 2, after_line);
    sqlite3_bind_int64(st, 3, floor_line);
    json_t *arr = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *l = json_object();
        json_object_set_new(l, "line_no", col_json_num(st, 0));
        json_object_set_new(l, "ts", col_json_num(st, 1));
        json_object_set_new(l, "level", col_json_str(st, 2));
        json_object_set_new(l, "msg", col_json_str(st, 3));
        json_array_append_new(arr, l);
    }
    sqlite3_reset(st);
    *out = arr;
    return 0;
}

/* ---- checkpoints --------------------------------------------------------------------------- */
static const char SQL_CKPT_ADD[] =
    "INSERT INTO checkpoints(id, run_id, step, path, bytes, sha256, created_at, train_loss,"
    " val_loss) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
int dg_db_ckpt_add(const char *run_id, const char *id, int64_t step, const char *path,
                   int64_t bytes, const char *sha256, const double *train_loss,
                   const double *val_loss) {
    sqlite3_stmt *st = dg_db_prep(SQL_CKPT_ADD);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    dg_db_bind_text(st, 2, run_id);
    sqlite3_bind_int64(st, 3, step);
    dg_db_bind_text(st, 4, path);
    sqlite3_bind_int64(st, 5, bytes);
    dg_db_bind_text(st, 6, sha256);
    sqlite3_bind_double(st, 7, dg_wall_s());
    bind_dopt(st, 8, train_loss);
    bind_dopt(st, 9, val_loss);
    return dg_db_step(st);
}

static const char SQL_CKPT_OLD[] =
    "SELECT id, path FROM checkpoints WHERE run_id = ?1 ORDER BY step DESC LIMIT -1 OFFSET ?2";
static const char SQL_CKPT_DEL[] = "DELETE FROM checkpoints WHERE id = ?1";
int dg_db_ckpt_retain(const char *run_id, int64_t keep) {
    sqlite3_stmt *st = dg_db_prep(SQL_CKPT_OLD);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    sqlite3_bind_int64(st, 2, keep < 1 ? 1 : keep);
    char ids[64][DG_ID_LEN];
    int n = 0;
    while (n < 64 && sqlite3_step(st) == SQLITE_ROW) {
        snprintf(ids[n], DG_ID_LEN, "%s", (const char *)sqlite3_column_text(st, 0));
        const char *p = (const char *)sqlite3_column_text(st, 1);
        if (p && unlink(p) != 0) DG_WARN("cannot remove old checkpoint %s", p);
        n++;
    }
    sqlite3_reset(st);
    for (int i = 0; i < n; i++) {
        sqlite3_stmt *d = dg_db_prep(SQL_CKPT_DEL);
        if (!d) return DG_EIO;
        dg_db_bind_text(d, 1, ids[i]);
        dg_db_step(d);
    }
    return 0;
}

static const char SQL_CKPT_LATEST[] =
    "SELECT path, step FROM checkpoints WHERE run_id = ?1 ORDER BY step DESC LIMIT 1";
int dg_db_ckpt_latest(const char *run_id, char *path, size_t n, int64_t *step) {
    sqlite3_stmt *st = dg_db_prep(SQL_CKPT_LATEST);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(path, n, "%s", (const char *)sqlite3_column_text(st, 0));
        if (step) *step = sqlite3_column_int64(st, 1);
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}

static const char SQL_CKPT_LIST[] =
    "SELECT id, step, created_at, bytes, sha256, train_loss, val_loss, path FROM checkpoints"
    " WHERE run_id = ?1 ORDER BY step";
int dg_db_ckpt_list(const char *run_id, json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_CKPT_LIST);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, run_id);
    json_t *arr = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *c = json_object();
        json_object_set_new(c, "id", col_json_str(st, 0));
        json_object_set_new(c, "object", json_string("checkpoint"));
        json_object_set_new(c, "step_number", col_json_num(st, 1));
        json_object_set_new(c, "created_at", col_json_num(st, 2));
        json_object_set_new(c, "bytes", col_json_num(st, 3));
        json_object_set_new(c, "sha256", col_json_str(st, 4));
        json_t *m = json_object();
        json_object_set_new(m, "train_loss", col_json_num(st, 5));
        json_object_set_new(m, "val_loss", col_json_num(st, 6));
        json_object_set_new(c, "metrics", m);
        json_object_set_new(c, "path", col_json_str(st, 7));
        const char *p = (const char *)sqlite3_column_text(st, 7);
        json_object_set_new(c, "valid", json_boolean(p && access(p, R_OK) == 0));
        json_array_append_new(arr, c);
    }
    sqlite3_reset(st);
    *out = arr;
    return 0;
}

/* ---- benchmarks ---------------------------------------------------------------------------- */
static const char SQL_BENCH_ADD[] =
    "INSERT OR REPLACE INTO benchmarks(id, job_id, created_at, env_json, results_json)"
    " VALUES(?1, ?2, ?3, ?4, ?5)";
int dg_db_bench_add(const char *id, const char *job_id, const char *env_json,
                    const char *results_json) {
    sqlite3_stmt *st = dg_db_prep(SQL_BENCH_ADD);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    dg_db_bind_text(st, 2, job_id);
    sqlite3_bind_double(st, 3, dg_wall_s());
    dg_db_bind_text(st, 4, env_json);
    dg_db_bind_text(st, 5, results_json);
    return dg_db_step(st);
}

#define BENCH_COLS "b.id, b.created_at, b.env_json, b.results_json, j.status, j.started_at," \
                   " j.finished_at"
static json_t *bench_row(sqlite3_stmt *st) {
    json_t *o = json_object();
    json_object_set_new(o, "id", col_json_str(st, 0));
    json_object_set_new(o, "object", json_string("benchmark"));
    json_object_set_new(o, "created_at", col_json_num(st, 1));
    json_object_set_new(o, "env", col_json_parsed(st, 2));
    json_object_set_new(o, "results", col_json_parsed(st, 3));
    json_object_set_new(o, "status", sqlite3_column_type(st, 4) == SQLITE_NULL ?
                        json_string("succeeded") : col_json_str(st, 4));
    json_object_set_new(o, "started_at", col_json_num(st, 5));
    json_object_set_new(o, "finished_at", col_json_num(st, 6));
    return o;
}
static const char SQL_BENCH_GET[] =
    "SELECT " BENCH_COLS " FROM benchmarks b LEFT JOIN jobs j ON j.id = b.job_id WHERE b.id = ?1";
int dg_db_bench_get(const char *id, json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_BENCH_GET);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) { *out = bench_row(st); rc = 0; }
    sqlite3_reset(st);
    return rc;
}
static const char SQL_BENCH_LIST[] =
    "SELECT " BENCH_COLS " FROM benchmarks b LEFT JOIN jobs j ON j.id = b.job_id"
    " ORDER BY b.created_at DESC LIMIT 1000";
int dg_db_bench_list(json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_BENCH_LIST);
    if (!st) return DG_EIO;
    json_t *arr = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) json_array_append_new(arr, bench_row(st));
    sqlite3_reset(st);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", arr);
    json_object_set_new(o, "has_more", json_false());
    json_object_set_new(o, "next_after", json_null());
    *out = o;
    return 0;
}

/* ---- restart recovery ---------------------------------------------------------------------- */
static const char SQL_INTERRUPTED[] =
    "SELECT id, status, kind FROM jobs WHERE status IN ('running', 'pausing', 'cancelling')"
    " ORDER BY seq";
int dg_db_recover(bool resume, int *requeued, int *failed) {
    *requeued = *failed = 0;
    sqlite3_stmt *st = dg_db_prep(SQL_INTERRUPTED);
    if (!st) return DG_EIO;
    typedef struct { char id[DG_ID_LEN]; char status[16]; char kind[16]; } row;
    int n = 0, cap = 16;
    row *rows = dg_malloc((size_t)cap * sizeof *rows);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) { cap *= 2; rows = dg_realloc(rows, (size_t)cap * sizeof *rows); }
        snprintf(rows[n].id, DG_ID_LEN, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(rows[n].status, 16, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(rows[n].kind, 16, "%s", (const char *)sqlite3_column_text(st, 2));
        n++;
    }
    sqlite3_reset(st);
    int rc = dg_db_begin();
    for (int i = 0; i < n && rc == 0; i++) {
        const char *id = rows[i].id;
        char path[1100] = "", msg[1400], ev[1600];
        int64_t step = 0;
        bool has_ckpt = dg_db_ckpt_latest(id, path, sizeof path, &step) == 0;
        dg_db_attempt_close(id, "daemon_restart");
        const char *to;
        if (!strcmp(rows[i].status, "cancelling")) {
            to = "cancelled";
            snprintf(msg, sizeof msg, "daemon restarted while cancelling; job cancelled");
            dg_db_job_set_status(id, to, NULL, NULL);
        } else if (resume && !strcmp(rows[i].kind, "train")) {
            to = "queued";
            if (has_ckpt)
                snprintf(msg, sizeof msg, "daemon restarted; job requeued to resume from %s "
                         "(step %lld)", path, (long long)step);
            else
                snprintf(msg, sizeof msg, "daemon restarted; no checkpoint was written yet, so "
                         "the job is requeued to start again from step 0");
            dg_db_job_set_resume(id, has_ckpt ? path : NULL);
            dg_db_job_set_status(id, to, NULL, NULL);
            (*requeued)++;
        } else {
            to = "failed";
            snprintf(msg, sizeof msg, "daemon restarted while the job was running");
            dg_db_job_set_status(id, to, "daemon_restart", msg);
            (*failed)++;
        }
        dg_db_log_add(id, "warn", msg, NULL);
        json_t *e = json_pack("{s:s, s:s, s:s, s:f}", "status", to, "reason", "daemon_restart",
                              "message", msg, "at", dg_wall_s());
        char *s = dg_json_text(e);
        snprintf(ev, sizeof ev, "%s", s);
        dg_free(s);
        json_decref(e);
        dg_db_event_add(id, "status", ev);
        if (!strcmp(to, "cancelled") || !strcmp(to, "failed"))
            dg_db_event_add(id, "end", !strcmp(to, "failed") ? "{\"status\":\"failed\"}" :
                            "{\"status\":\"cancelled\"}");
    }
    dg_free(rows);
    if (rc == 0) rc = dg_db_commit();
    return rc;
}

static const char SQL_CKPT_BY_ID[] = "SELECT path, run_id FROM checkpoints WHERE id = ?1";
int dg_db_ckpt_by_id(const char *id, char *path, size_t n, char run_id[DG_ID_LEN]) {
    sqlite3_stmt *st = dg_db_prep(SQL_CKPT_BY_ID);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(path, n, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(run_id, DG_ID_LEN, "%s", (const char *)sqlite3_column_text(st, 1));
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}

static const char SQL_QUEUE_LIST[] =
    "SELECT id, kind, name, priority, created_at FROM jobs WHERE status = 'queued'"
    " ORDER BY priority DESC, seq ASC LIMIT 10000";
int dg_db_queue_list(json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_QUEUE_LIST);
    if (!st) return DG_EIO;
    json_t *arr = json_array();
    int64_t pos = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *o = json_object();
        json_object_set_new(o, "job_id", col_json_str(st, 0));
        json_object_set_new(o, "kind", col_json_str(st, 1));
        json_object_set_new(o, "name", col_json_str(st, 2));
        json_object_set_new(o, "priority", col_json_num(st, 3));
        json_object_set_new(o, "created_at", col_json_num(st, 4));
        json_object_set_new(o, "position", json_integer(pos++));
        json_array_append_new(arr, o);
    }
    sqlite3_reset(st);
    *out = arr;
    return 0;
}
