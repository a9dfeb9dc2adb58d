/* server/db_exports.h -- SQLite rows of exports (server/db_exports.c): the table is added by
 * schema migration 1 -> 2 (dg_db_exports_sql, applied by db.c's migration list), the queries use
 * db.c's connection and statement cache. Functions return 0 or a negative DG_E* code.
 * Not here: HTTP, the job runner (exports.c). Thread affinity: LOOP thread only. */
#ifndef DG_DB_EXPORTS_H
#define DG_DB_EXPORTS_H

#include "srv.h"

typedef struct sqlite3_stmt sqlite3_stmt;

extern const char dg_db_exports_sql[];     /* the migration to schema version 2 */

/* db.c's statement helpers, shared by the SQL files of the server (loop thread): a cached
 * prepared statement for sql (reset, bindings cleared; NULL when the db is closed or the SQL is
 * bad), one step (0; DG_EEXIST on a constraint violation; DG_EIO), and a text bind (NULL binds
 * NULL). */
sqlite3_stmt *dg_db_prep(const char *sql);
int           dg_db_step(sqlite3_stmt *st);
void          dg_db_bind_text(sqlite3_stmt *st, int i, const char *s);

typedef struct {
    const char *id, *checkpoint_id, *checkpoint_path, *format, *dtype, *dir, *request_json;
    const char *idempotency_key;      /* NULL = none */
    double      parts_mib;            /* 0 = monolith only */
} dg_db_newexport;

int     dg_db_export_insert(const dg_db_newexport *e);      /* DG_EEXIST on a key clash */
int     dg_db_export_set_running(const char *id);
/* ok: succeeded with files_json ([{"name","bytes","sha256"}]); else failed with message. */
int     dg_db_export_finish(const char *id, bool ok, const char *message,
                            const char *files_json);
/* The API object (GET /v1/exports/{id}), NULL when absent. */
json_t *dg_db_export_json(const char *id);
/* dir and status of an export; DG_ENOTFOUND. */
int     dg_db_export_paths(const char *id, char *dir, size_t dn, char status[16]);
/* Newest first: {"object":"list","data":[...],"has_more":..,"next_after":..}. */
int     dg_db_export_list(const char *after, int64_t limit, json_t **out);
/* The export created with an Idempotency-Key; request_json is dg_malloc'd. DG_ENOTFOUND. */
int     dg_db_export_by_key(const char *key, char id[DG_ID_LEN], char **request_json);

/* Exports that were queued or running (restart recovery and the run queue), oldest first;
 * *rows is dg_malloc'd. */
typedef struct {
    char    id[DG_ID_LEN];
    char    checkpoint_path[1024];
    char    format[16], dtype[8];
    double  parts_mib;
    char    dir[1200];
} dg_db_export_row;
int     dg_db_export_pending(dg_db_export_row **rows, int *n);

#endif
