/* server/db_exports.c -- the SQL of exports (POST /v1/exports): the migration that adds the
 * exports table (schema version 2) and one small function per query.
 *
 * The connection and the statement cache are db.c's (dg_db_prep, dg_db_step, dg_db_bind_text). A row goes queued -> running -> succeeded | failed; files_json
 * holds [{"name", "bytes", "sha256"}] once the export succeeded.
 * Not here: HTTP and the export job itself (exports.c). Thread affinity: LOOP thread only. */
#include "db_exports.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

const char dg_db_exports_sql[] =
    "CREATE TABLE IF NOT EXISTS exports (\n"
    "    id              TEXT PRIMARY KEY,    -- exp_<time-sortable>\n"
    "    seq             INTEGER NOT NULL,    -- creation order\n"
    "    checkpoint_id   TEXT NOT NULL,       -- what the client named (ckpt_... or job_...)\n"
    "    checkpoint_path TEXT NOT NULL,\n"
    "    format          TEXT NOT NULL,       -- burnpack | safetensors\n"
    "    dtype           TEXT NOT NULL,       -- f32 | f16 | bf16\n"
    "    parts_mib       REAL,                -- burnpack parts budget, NULL = monolith only\n"
    "    status          TEXT NOT NULL,       -- queued running succeeded failed\n"
    "    message         TEXT,                -- why it failed\n"
    "    dir             TEXT NOT NULL,       -- <data_dir>/exports/<id>\n"
    "    files_json      TEXT NOT NULL DEFAULT '[]',\n"
    "    request_json    TEXT NOT NULL,\n"
    "    idempotency_key TEXT UNIQUE,\n"
    "    created_at      REAL NOT NULL,\n"
    "    started_at      REAL,\n"
    "    finished_at     REAL\n"
    ");\n"
    "CREATE INDEX IF NOT EXISTS exports_seq ON exports(seq);\n";

static json_t *col_str(sqlite3_stmt *st, int i) {
    const unsigned char *s = sqlite3_column_text(st, i);
    return s ? json_string((const char *)s) : json_null();
}
static json_t *col_num(sqlite3_stmt *st, int i) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_NULL:    return json_null();
    case SQLITE_INTEGER: return json_integer(sqlite3_column_int64(st, i));
    default:             return json_real(sqlite3_column_double(st, i));
    }
}

static const char SQL_INSERT[] =
    "INSERT INTO exports(id, seq, checkpoint_id, checkpoint_path, format, dtype, parts_mib,"
    " status, dir, request_json, idempotency_key, created_at)"
    " VALUES(?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM exports), ?2, ?3, ?4, ?5, ?6,"
    " 'queued', ?7, ?8, ?9, ?10)";

int dg_db_export_insert(const dg_db_newexport *e) {
    sqlite3_stmt *st = dg_db_prep(SQL_INSERT);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, e->id);
    dg_db_bind_text(st, 2, e->checkpoint_id);
    dg_db_bind_text(st, 3, e->checkpoint_path);
    dg_db_bind_text(st, 4, e->format);
    dg_db_bind_text(st, 5, e->dtype);
    if (e->parts_mib > 0) sqlite3_bind_double(st, 6, e->parts_mib);
    else sqlite3_bind_null(st, 6);
    dg_db_bind_text(st, 7, e->dir);
    dg_db_bind_text(st, 8, e->request_json);
    dg_db_bind_text(st, 9, e->idempotency_key);
    sqlite3_bind_double(st, 10, dg_wall_s());
    return dg_db_step(st);
}

static const char SQL_START[] =
    "UPDATE exports SET status = 'running', started_at = ?2 WHERE id = ?1";
static const char SQL_FINISH[] =
    "UPDATE exports SET status = ?2, message = ?3, files_json = COALESCE(?4, files_json),"
    " finished_at = ?5 WHERE id = ?1";

int dg_db_export_set_running(const char *id) {
    sqlite3_stmt *st = dg_db_prep(SQL_START);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    sqlite3_bind_double(st, 2, dg_wall_s());
    return dg_db_step(st);
}

int dg_db_export_finish(const char *id, bool ok, const char *message, const char *files_json) {
    sqlite3_stmt *st = dg_db_prep(SQL_FINISH);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    dg_db_bind_text(st, 2, ok ? "succeeded" : "failed");
    dg_db_bind_text(st, 3, message);
    dg_db_bind_text(st, 4, files_json);
    sqlite3_bind_double(st, 5, dg_wall_s());
    return dg_db_step(st);
}

#define EXPORT_COLS                                                                            \
    "id, status, checkpoint_id, format, dtype, parts_mib, message, files_json, created_at,"  \
    " started_at, finished_at, checkpoint_path, dir"

/* The API object of the row under st (columns EXPORT_COLS). */
static json_t *row_json(sqlite3_stmt *st) {
    json_t *o = json_object();
    const char *id = (const char *)sqlite3_column_text(st, 0);
    json_object_set_new(o, "id", col_str(st, 0));
    json_object_set_new(o, "object", json_string("export"));
    json_object_set_new(o, "status", col_str(st, 1));
    json_object_set_new(o, "checkpoint_id", col_str(st, 2));
    json_object_set_new(o, "format", col_str(st, 3));
    json_object_set_new(o, "dtype", col_str(st, 4));
    json_object_set_new(o, "parts_mib", col_num(st, 5));
    const unsigned char *msg = sqlite3_column_text(st, 6);
    if (msg) json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", "export_failed",
                                                      "message", (const char *)msg));
    else json_object_set_new(o, "error", json_null());
    const unsigned char *fj = sqlite3_column_text(st, 7);
    json_t *files = fj ? json_loads((const char *)fj, 0, NULL) : NULL;
    if (!json_is_array(files)) {
        json_decref(files);
        files = json_array();
    }
    const char *manifest = NULL;
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f) {
        const char *name = json_string_value(json_object_get(f, "name"));
        if (!name) continue;
        char url[400];
        snprintf(url, sizeof url, "/v1/exports/%s/files/%s", id ? id : "", name);
        json_object_set_new(f, "url", json_string(url));
        size_t l = strlen(name);
        if (l > 11 && !strcmp(name + l - 11, ".parts.json")) manifest = name;
    }
    json_object_set_new(o, "manifest", manifest ? json_string(manifest) : json_null());
    json_object_set_new(o, "files", files);
    json_object_set_new(o, "created_at", col_num(st, 8));
    json_object_set_new(o, "started_at", col_num(st, 9));
    json_object_set_new(o, "finished_at", col_num(st, 10));
    return o;
}

static const char SQL_GET[] = "SELECT " EXPORT_COLS " FROM exports WHERE id = ?1";

json_t *dg_db_export_json(const char *id) {
    sqlite3_stmt *st = dg_db_prep(SQL_GET);
    if (!st) return NULL;
    dg_db_bind_text(st, 1, id);
    json_t *o = sqlite3_step(st) == SQLITE_ROW ? row_json(st) : NULL;
    sqlite3_reset(st);
    return o;
}

int dg_db_export_paths(const char *id, char *dir, size_t dn, char status[16]) {
    sqlite3_stmt *st = dg_db_prep(SQL_GET);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, id);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(dir, dn, "%s", (const char *)sqlite3_column_text(st, 12));
        snprintf(status, 16, "%s", (const char *)sqlite3_column_text(st, 1));
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}

static const char SQL_LIST[] =
    "SELECT " EXPORT_COLS " FROM exports WHERE (?1 IS NULL OR seq < (SELECT seq FROM exports"
    " WHERE id = ?1)) ORDER BY seq DESC LIMIT ?2";

int dg_db_export_list(const char *after, int64_t limit, json_t **out) {
    sqlite3_stmt *st = dg_db_prep(SQL_LIST);
    if (!st) return DG_EIO;
    if (limit <= 0 || limit > 1000) limit = 100;
    dg_db_bind_text(st, 1, after);
    sqlite3_bind_int64(st, 2, limit + 1);
    json_t *data = json_array();
    int64_t n = 0;
    bool more = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == limit) { more = true; break; }
        json_array_append_new(data, row_json(st));
        n++;
    }
    sqlite3_reset(st);
    json_t *last = json_array_size(data) ? json_array_get(data, json_array_size(data) - 1)
                                         : NULL;
    *out = json_pack("{s:s, s:o, s:b, s:O}", "object", "list", "data", data, "has_more", more,
                     "next_after", more && last ? json_object_get(last, "id") : json_null());
    return 0;
}

static const char SQL_BY_KEY[] = "SELECT id, request_json FROM exports WHERE idempotency_key = ?1";

int dg_db_export_by_key(const char *key, char id[DG_ID_LEN], char **request_json) {
    sqlite3_stmt *st = dg_db_prep(SQL_BY_KEY);
    if (!st) return DG_EIO;
    dg_db_bind_text(st, 1, key);
    int rc = DG_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(id, DG_ID_LEN, "%s", (const char *)sqlite3_column_text(st, 0));
        *request_json = dg_strdup((const char *)sqlite3_column_text(st, 1));
        rc = 0;
    }
    sqlite3_reset(st);
    return rc;
}

static const char SQL_PENDING[] =
    "SELECT id, checkpoint_path, format, dtype, COALESCE(parts_mib, 0), dir FROM exports"
    " WHERE status IN ('queued', 'running') ORDER BY seq";

int dg_db_export_pending(dg_db_export_row **rows, int *n) {
    sqlite3_stmt *st = dg_db_prep(SQL_PENDING);
    *rows = NULL;
    *n = 0;
    if (!st) return DG_EIO;
    int cap = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            *rows = dg_realloc(*rows, (size_t)cap * sizeof **rows);
        }
        dg_db_export_row *r = &(*rows)[(*n)++];
        memset(r, 0, sizeof *r);
        snprintf(r->id, sizeof r->id, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(r->checkpoint_path, sizeof r->checkpoint_path, "%s",
                 (const char *)sqlite3_column_text(st, 1));
        snprintf(r->format, sizeof r->format, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(r->dtype, sizeof r->dtype, "%s", (const char *)sqlite3_column_text(st, 3));
        r->parts_mib = sqlite3_column_double(st, 4);
        snprintf(r->dir, sizeof r->dir, "%s", (const char *)sqlite3_column_text(st, 5));
    }
    sqlite3_reset(st);
    return 0;
}
