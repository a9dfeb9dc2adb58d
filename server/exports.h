/* server/exports.h -- deployment bundles over the API (issue 5, API.md §5.2 "Exports"):
 *   POST /v1/exports {checkpoint_id, format: burnpack|safetensors, dtype?: f32|f16|bf16,
 *                     parts_mib?}                      -> 202 {id: "exp_...", status: "queued"}
 *   GET  /v1/exports                                  -> list, newest first
 *   GET  /v1/exports/{id}                             -> {id, status, files: [{name, bytes,
 *                                                          sha256, url}], manifest, error}
 *   GET  /v1/exports/{id}/files/{name}                -> the bytes; Range (206 / 416),
 *                                                        ETag "<sha256>", If-None-Match (304)
 * An export is a job on the loop's libuv thread pool (uv_queue_work; the loop never blocks):
 * one at a time, in creation order, recorded in SQLite (db_exports.h). It writes
 * <data_dir>/exports/<id>/model.bpk (+ model.bpk.parts.json, model.bpk.part-NNNNN.bpk) or
 * model.safetensors and lists every file with its size and sha256. Exports that were queued or
 * running when the daemon stopped are run again at the next start.
 *
 * Not here: the bundle formats (proto/export.h), importing bundles (models_import.h), MHD
 * (http.c). Thread affinity: LOOP thread, except dg_export_bundle and dg_http_range_parse
 * (any thread). */
#ifndef DG_EXPORTS_H
#define DG_EXPORTS_H

#include "srv.h"
#include "proto/export.h"

/* Starts the runner: exports/ under data_dir, pending exports requeued. The database must be
 * open. */
int  dg_exports_init(uv_loop_t *loop, const char *data_dir, char *err, size_t n);
/* No export is running or queued. */
bool dg_exports_idle(void);
/* Drops the queue (rows stay queued for the next start); a running export finishes. */
void dg_exports_close(void);

void dg_h_exports_create(dg_req *r);
void dg_h_exports_list(dg_req *r);
void dg_h_export_get(dg_req *r);
void dg_h_export_file(dg_req *r);

/* ---- the job itself (any thread) --------------------------------------------------------- */
typedef struct {
    char     name[160];
    uint64_t bytes;
    char     sha256[65];
} dg_export_file;

/* Reads the checkpoint (parameters only), writes the bundle into dir (created; parts of at most
 * parts_bytes when > 0, burnpack only) and lists its
 * files (*files dg_malloc'd, main file first, then the manifest and the parts). */
int  dg_export_bundle(const char *ckpt_path, const char *dir, dg_export_format fmt, dg_dtype dt,
                      int64_t parts_bytes, dg_export_file **files, int *n_files, char *err,
                      size_t errlen);

/* Parses a Range header against a file of size bytes (RFC 9110 §14: one range "bytes=a-b",
 * "bytes=a-" or "bytes=-n"). Returns 1 when the whole file should be sent (no header, several
 * ranges, another unit or a malformed value: all allowed to be ignored), 0 with *start / *len
 * for a 206, or DG_ERANGE for a 416 (the range starts at or beyond the end). */
int  dg_http_range_parse(const char *hdr, uint64_t size, uint64_t *start, uint64_t *len);

#endif
