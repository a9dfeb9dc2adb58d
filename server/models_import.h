/* server/models_import.h -- deployment bundles in: POST /v1/models/import {path | url, name?}
 * turns a .bpk (single file or .bpk.parts.json manifest) or .safetensors written by dragond into
 * a servable model.
 *
 * Contract with the model registry (server/infer.c): an imported model is the inference-only
 * native checkpoint <data_dir>/models/<name>/model.dck (dg_ckpt_write: config, tokenizer,
 * parameters, step 0, no optimizer state), next to source.json (where it came from, the local
 * file that was imported, its size and sha256). model.dck is written last and atomically, so a directory without it is
 * not a model; the registry lists every <data_dir>/models/<name>/model.dck as model id <name>.
 * After an import the registry is told through dg_infer_models_changed() when infer.c defines
 * it (a weak reference here).
 *
 * API:
 *   POST /v1/models/import {path | url, name?}  -> 202 {id: "imp_...", object: "model.import",
 *                                                   status: "running", name, source}
 *   GET  /v1/models/imports/{id}                -> {id, status: running|succeeded|failed, name,
 *                                                   source, local, files, error, model}
 * Imports run on the loop's thread pool (download, verification, conversion); the loop never
 * blocks. Remote bundles (http/https) go into <data_dir>/cache/models/<key>/ where key is the
 * first 16 hex digits of the URL's sha256 (BURNPACK.md §4 behaviour, made stricter):
 *   - a URL ending in .bpk: URL.parts.json is tried first (403/404: no manifest); with a
 *     manifest every part is downloaded (relative paths against the manifest's directory),
 *     its size and sha256 checked against the manifest before use; without one the single file
 *     is downloaded. A URL ending in .parts.json names the manifest itself;
 *   - downloads resume a leftover <file>.partial with Range, are tried 4 times with back-off
 *     250 ms, 500 ms, 1 s (403, 404 and 410 are not retried) and are renamed into place only
 *     when complete;
 *   - a single file is checked against the server's ETag when that is a sha256 (dragond's is),
 *     recorded in <file>.sha256 and checked again when the cache is reused;
 *   - a cache whose manifest and parts (or single file) verify is used without downloading.
 * Integrity failures (truncated or corrupt file, a part missing, a sha256 that does not match,
 * tensors whose names or shapes do not fit the config) fail the import with a message that
 * says which; nothing is written under models/ unless everything verified.
 *
 * Not here: the bundle formats (proto/export.h), the registry (infer.c).
 * Thread affinity: LOOP thread, except dg_bundle_fetch and dg_model_import_file (any thread). */
#ifndef DG_MODELS_IMPORT_H
#define DG_MODELS_IMPORT_H

#include "srv.h"

int  dg_models_import_init(uv_loop_t *loop, const dg_settings *s, char *err, size_t n);
bool dg_models_import_idle(void);
void dg_models_import_close(void);      /* asks running downloads to stop */

void dg_h_models_import(dg_req *r);
void dg_h_models_import_get(dg_req *r);

/* The registry hook (defined by infer.c when it wants to be told; may be absent). */
void dg_infer_models_changed(const char *name) __attribute__((weak));

/* ---- any thread ------------------------------------------------------------------------- */
typedef struct {
    int64_t     timeout_s;        /* per request; 0 = 600 */
    int         tries;            /* 0 = 4 */
    int         backoff_ms;       /* first back-off; doubles; 0 = 250 */
    atomic_int *cancel;           /* may be NULL */
} dg_fetch_opts;

/* Resolves url into the cache under cache_root (created) and writes the local path to import
 * (the manifest for a parts bundle, else the single file) into local. note (may be NULL) gets
 * what happened ("cache hit", "3 parts downloaded", ...). */
int  dg_bundle_fetch(const char *url, const char *cache_root, const dg_fetch_opts *o,
                     char *local, size_t ln, char *note, size_t nn, char *err, size_t errlen);

/* Reads the bundle at path (dg_import_model: every check) and writes it as
 * <models_dir>/<name>/model.dck (+ source.json with source_json's text). DG_EEXIST when the
 * model exists. */
int  dg_model_import_file(const char *path, const char *models_dir, const char *name,
                          const char *source_json, char *err, size_t errlen);

/* A model name: 1..64 of [A-Za-z0-9._-], not starting with '.' or '-'. */
bool dg_model_name_ok(const char *name);

#endif
