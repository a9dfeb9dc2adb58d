/* server/exports.c -- export jobs on the loop's thread pool and the /v1/exports handlers (see
 * exports.h for the API).
 *
 * The runner keeps a FIFO of exports; at most one runs (a uv_work_t on the libuv thread pool):
 * the work callback reads the checkpoint, writes the bundle with dg_export_model and hashes the
 * files, the after-work callback (LOOP thread) records the result in SQLite and starts the next.
 * Files are served straight from disk with a file-descriptor response (no copy through memory).
 *
 * Not here: SQL (db_exports.c), bundle formats (proto/). Thread affinity: LOOP thread, except
 * run_work / dg_export_bundle / dg_http_range_parse (any thread). */
#include "exports.h"
#include "db_exports.h"

#include "engine/ckpt.h"
#include "proto/parts.h"
#include "proto/sha256.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static const char *dtype_name(dg_dtype t) {
    return t == DG_DTYPE_F16 ? "f16" : t == DG_DTYPE_BF16 ? "bf16" : "f32";
}
static int dtype_parse(const char *s, dg_dtype *out) {
    if (!strcmp(s, "f32")) *out = DG_DTYPE_F32;
    else if (!strcmp(s, "f16")) *out = DG_DTYPE_F16;
    else if (!strcmp(s, "bf16")) *out = DG_DTYPE_BF16;
    else return DG_EINVAL;
    return 0;
}

// ------------------------------------------------------------------------------------------
// The job (any thread)

static void add_file(dg_export_file **files, int *n, const char *name) {
    *files = dg_realloc(*files, (size_t)(*n + 1) * sizeof **files);
    memset(&(*files)[*n], 0, sizeof **files);
    snprintf((*files)[*n].name, sizeof (*files)[*n].name, "%s", name);
    (*n)++;
}

int dg_export_bundle(const char *ckpt_path, const char *dir, dg_export_format fmt, dg_dtype dt,
                     int64_t parts_bytes, dg_export_file **files, int *n_files, char *err,
                     size_t errlen) {
    *files = NULL;
    *n_files = 0;
    if (dg_mkdirs(dir)) return fail(err, errlen, DG_EIO, "cannot create %s", dir);
    dg_ckpt ck;
    char e2[1024];
    int rc = dg_ckpt_read(ckpt_path, false, &ck, e2, sizeof e2);
    if (rc) return fail(err, errlen, rc, "reading the checkpoint: %s", e2);
    const char *mainf = fmt == DG_EXPORT_BURNPACK ? "model.bpk" : "model.safetensors";
    size_t pl = strlen(dir) + 200;
    char *path = dg_malloc(pl);
    snprintf(path, pl, "%s/%s", dir, mainf);
    rc = dg_export_model(path, fmt, dt, &ck, parts_bytes, e2, sizeof e2);
    dg_ckpt_free(&ck);
    if (rc) {
        fail(err, errlen, rc, "%s", e2);
        goto out;
    }
    add_file(files, n_files, mainf);
    if (parts_bytes > 0) {
        char *text = NULL;
        size_t n = 0;
        snprintf(path, pl, "%s/%s.parts.json", dir, mainf);
        if ((rc = dg_read_file(path, &text, &n, e2, sizeof e2))) {
            fail(err, errlen, rc, "%s", e2);
            goto out;
        }
        dg_parts_manifest m;
        rc = dg_parts_manifest_parse(text, n, &m, e2, sizeof e2);
        dg_free(text);
        if (rc) {
            fail(err, errlen, rc, "%s", e2);
            goto out;
        }
        char mname[200];
        snprintf(mname, sizeof mname, "%s.parts.json", mainf);
        add_file(files, n_files, mname);
        for (int k = 0; k < m.n_parts; k++) add_file(files, n_files, m.parts[k].path);
        dg_parts_manifest_free(&m);
    }
    for (int i = 0; i < *n_files; i++) {
        snprintf(path, pl, "%s/%s", dir, (*files)[i].name);
        if ((rc = dg_sha256_file(path, (*files)[i].sha256, &(*files)[i].bytes, e2, sizeof e2))) {
            fail(err, errlen, rc, "%s", e2);
            goto out;
        }
    }
out:
    dg_free(path);
    if (rc) {
        dg_free(*files);
        *files = NULL;
        *n_files = 0;
    }
    return rc;
}

// ------------------------------------------------------------------------------------------
// Range (any thread)

static bool parse_u64(const char *s, const char *e, uint64_t *out) {
    if (s == e) return false;
    uint64_t v = 0;
    for (const char *p = s; p < e; p++) {
        if (!isdigit((unsigned char)*p)) return false;
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return true;
}

int dg_http_range_parse(const char *hdr, uint64_t size, uint64_t *start, uint64_t *len) {
    if (!hdr) return 1;
    while (*hdr == ' ') hdr++;
    if (strncmp(hdr, "bytes=", 6)) return 1;
    const char *s = hdr + 6;
    while (*s == ' ') s++;
    if (strchr(s, ',')) return 1;                 /* several ranges: send it all */
    const char *dash = strchr(s, '-');
    if (!dash) return 1;
    const char *end = s + strlen(s);
    while (end > dash + 1 && end[-1] == ' ') end--;
    uint64_t a = 0, b = 0;
    if (dash == s) {                              /* suffix: the last b bytes */
        if (!parse_u64(dash + 1, end, &b)) return 1;
        if (b == 0 || size == 0) return DG_ERANGE;
        *start = b >= size ? 0 : size - b;
        *len = size - *start;
        return 0;
    }
    if (!parse_u64(s, dash, &a)) return 1;
    if (end == dash + 1) b = UINT64_MAX;
    else if (!parse_u64(dash + 1, end, &b)) return 1;
    if (b < a) return 1;                          /* invalid: ignored */
    if (a >= size) return DG_ERANGE;
    if (b >= size) b = size - 1;
    *start = a;
    *len = b - a + 1;
    return 0;
}

// ------------------------------------------------------------------------------------------
// The runner (LOOP thread)

/* parts_mib (burn_dragon's unit; fractions allowed here, e.g. for tests) -> bytes; 0 = none */
static int64_t mib_bytes(double mib) {
    return mib > 0 ? (int64_t)(mib * 1048576.0) : 0;
}

typedef struct xjob {
    uv_work_t         req;
    char              id[DG_ID_LEN];
    char              ckpt[1024];
    char              dir[1200];
    dg_export_format  fmt;
    dg_dtype          dtype;
    int64_t           parts_bytes;
    int               rc;
    char              err[1024];
    dg_export_file   *files;
    int               n_files;
    double            t0;
    struct xjob      *next;
} xjob;

static struct {
    uv_loop_t *loop;
    char       dir[1100];          /* <data_dir>/exports */
    xjob      *head, *tail;        /* queued */
    xjob      *running;
    bool       closing;
} X;

static void run_work(uv_work_t *w) {
    xjob *j = w->data;
    j->rc = dg_export_bundle(j->ckpt, j->dir, j->fmt, j->dtype, j->parts_bytes, &j->files,
                             &j->n_files, j->err, sizeof j->err);
}

static void kick(void);

static void run_done(uv_work_t *w, int status) {
    xjob *j = w->data;
    X.running = NULL;
    if (status == UV_ECANCELED && !j->rc) {
        j->rc = DG_ECANCELED;
        snprintf(j->err, sizeof j->err, "cancelled (the daemon is stopping)");
    }
    if (j->rc) {
        DG_WARN("export %s failed: %s", j->id, j->err);
        dg_db_export_finish(j->id, false, j->err, NULL);
    } else {
        json_t *arr = json_array();
        for (int i = 0; i < j->n_files; i++)
            json_array_append_new(arr, json_pack("{s:s, s:I, s:s}", "name", j->files[i].name,
                                                 "bytes", (json_int_t)j->files[i].bytes,
                                                 "sha256", j->files[i].sha256));
        char *text = dg_json_text(arr);
        json_decref(arr);
        dg_db_export_finish(j->id, true, NULL, text);
        dg_free(text);
        DG_INFO("export %s: %d file(s) in %.1fs", j->id, j->n_files, dg_now() - j->t0);
    }
    dg_free(j->files);
    dg_free(j);
    kick();
}

static void kick(void) {
    if (X.running || !X.head || X.closing) return;
    xjob *j = X.head;
    X.head = j->next;
    if (!X.head) X.tail = NULL;
    X.running = j;
    j->req.data = j;
    j->t0 = dg_now();
    dg_db_export_set_running(j->id);
    int rc = uv_queue_work(X.loop, &j->req, run_work, run_done);
    if (rc) {
        X.running = NULL;
        dg_db_export_finish(j->id, false, "cannot queue the export on the thread pool", NULL);
        dg_free(j);
        kick();
    }
}

static void enqueue(const char *id, const char *ckpt, const char *dir, dg_export_format fmt,
                    dg_dtype dt, int64_t parts_bytes) {
    xjob *j = dg_calloc(1, sizeof *j);
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->ckpt, sizeof j->ckpt, "%s", ckpt);
    snprintf(j->dir, sizeof j->dir, "%s", dir);
    j->fmt = fmt;
    j->dtype = dt;
    j->parts_bytes = parts_bytes;
    if (X.tail) X.tail->next = j;
    else X.head = j;
    X.tail = j;
    kick();
}

int dg_exports_init(uv_loop_t *loop, const char *data_dir, char *err, size_t n) {
    memset(&X, 0, sizeof X);
    X.loop = loop;
    snprintf(X.dir, sizeof X.dir, "%s/exports", data_dir);
    if (dg_mkdirs(X.dir)) return fail(err, n, DG_EIO, "cannot create %s", X.dir);
    dg_db_export_row *rows = NULL;
    int nr = 0;
    if (dg_db_export_pending(&rows, &nr)) return fail(err, n, DG_EIO, "cannot read exports");
    for (int i = 0; i < nr; i++) {
        dg_dtype dt = DG_DTYPE_F32;
        dtype_parse(rows[i].dtype, &dt);
        dg_export_format fmt = strcmp(rows[i].format, "safetensors") ? DG_EXPORT_BURNPACK
                                                                       : DG_EXPORT_SAFETENSORS;
        DG_INFO("export %s was not finished when the daemon stopped: running it again",
                rows[i].id);
        enqueue(rows[i].id, rows[i].checkpoint_path, rows[i].dir, fmt, dt,
                mib_bytes(rows[i].parts_mib));
    }
    dg_free(rows);
    return 0;
}

bool dg_exports_idle(void) { return !X.running && !X.head; }

void dg_exports_close(void) {
    X.closing = true;
    while (X.head) {
        xjob *j = X.head;
        X.head = j->next;
        dg_free(j);
    }
    X.tail = NULL;
    if (X.running) uv_cancel((uv_req_t *)&X.running->req);
}

// ------------------------------------------------------------------------------------------
// Handlers (LOOP thread)

static void bad_field(dg_req *r, const char *param, const char *fmt, const char *arg) {
    dg_reply_error(r, 400, "invalid_request", "invalid_value", param, fmt, arg);
}

void dg_h_exports_create(dg_req *r) {
    json_t *b = dg_req_json(r, false);
    if (!b) return;
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v) {
        if (strcmp(key, "checkpoint_id") && strcmp(key, "format") && strcmp(key, "dtype") &&
            strcmp(key, "parts_mib")) {
            dg_reply_error(r, 400, "invalid_request", "unknown_field", key,
                           "unknown field '%s' (allowed: checkpoint_id, format, dtype, "
                           "parts_mib)", key);
            json_decref(b);
            return;
        }
    }
    json_t *jc = json_object_get(b, "checkpoint_id"), *jf = json_object_get(b, "format");
    json_t *jd = json_object_get(b, "dtype"), *jp = json_object_get(b, "parts_mib");
    const char *ckid = json_string_value(jc);
    const char *fmt_s = jf ? json_string_value(jf) : "burnpack";
    const char *dt_s = jd ? json_string_value(jd) : "f32";
    dg_dtype dt = DG_DTYPE_F32;
    double parts = 0;
    if (!ckid || !*ckid) {
        bad_field(r, "checkpoint_id", "checkpoint_id is required: a checkpoint id (ckpt_...) or "
                  "a job id (job_... or job_...:latest)%s", "");
        goto out;
    }
    if (!fmt_s) { bad_field(r, "format", "format must be a string%s", ""); goto out; }
    if (strcmp(fmt_s, "burnpack") && strcmp(fmt_s, "safetensors")) {
        dg_reply_error(r, 422, "validation_failed", "format_unsupported", "format",
                       "format '%s' is not supported (burnpack or safetensors)", fmt_s);
        goto out;
    }
    if (!dt_s || dtype_parse(dt_s, &dt)) {
        bad_field(r, "dtype", "dtype must be f32, f16 or bf16 (got %s)",
                  dt_s ? dt_s : "a non-string");
        goto out;
    }
    if (jp && !json_is_null(jp)) {
        parts = json_is_number(jp) ? json_number_value(jp) : -1;
        if (!(parts > 0 && parts <= 1024 * 1024 && mib_bytes(parts) >= 1)) {
            bad_field(r, "parts_mib", "parts_mib must be a number of MiB in (0, 1048576]%s",
                      "");
            goto out;
        }
        if (strcmp(fmt_s, "burnpack")) {
            dg_reply_error(r, 422, "validation_failed", "parts_need_burnpack", "parts_mib",
                           "parts_mib splits a burnpack into parts; format is %s", fmt_s);
            goto out;
        }
    }
    /* Idempotency-Key: the same key and body give the same export */
    const char *idem = dg_req_header(r, "Idempotency-Key");
    size_t blen;
    const char *btext = dg_req_body(r, &blen);
    char *req_text = dg_malloc(blen + 1);
    memcpy(req_text, btext, blen);
    req_text[blen] = 0;
    if (idem && *idem) {
        char old_id[DG_ID_LEN];
        char *old_req = NULL;
        if (dg_db_export_by_key(idem, old_id, &old_req) == 0) {
            json_t *a = json_loads(old_req, 0, NULL);
            bool same = a && json_equal(a, b);
            json_decref(a);
            dg_free(old_req);
            dg_free(req_text);
            if (!same) {
                dg_reply_error(r, 409, "conflict", "idempotency_conflict", NULL,
                               "Idempotency-Key '%s' was used with another request body", idem);
                goto out;
            }
            dg_reply_json(r, 200, dg_db_export_json(old_id));
            goto out;
        }
    }
    char path[1024], run_id[DG_ID_LEN];
    int64_t step = 0;
    int rc;
    if (!strncmp(ckid, "job_", 4)) {
        char job[DG_ID_LEN + 16];
        snprintf(job, sizeof job, "%s", ckid);
        char *colon = strchr(job, ':');
        if (colon) *colon = 0;
        rc = (colon && strcmp(colon + 1, "latest")) ? DG_ENOTFOUND
                                                    : dg_db_ckpt_latest(job, path, sizeof path,
                                                                        &step);
    } else {
        rc = dg_db_ckpt_by_id(ckid, path, sizeof path, run_id);
    }
    if (rc || access(path, R_OK) != 0) {
        dg_free(req_text);
        dg_reply_error(r, 404, "not_found", "checkpoint_not_found", "checkpoint_id",
                       rc ? "no checkpoint '%s' (HINT: GET /v1/runs/{id}/checkpoints lists them)"
                          : "checkpoint '%s' is recorded but its file is gone", ckid);
        goto out;
    }
    char id[DG_ID_LEN], dir[1200];
    dg_make_id("exp_", id);
    snprintf(dir, sizeof dir, "%s/%s", X.dir, id);
    dg_db_newexport ne = {.id = id, .checkpoint_id = ckid, .checkpoint_path = path,
                          .format = fmt_s, .dtype = dtype_name(dt), .dir = dir,
                          .request_json = req_text, .idempotency_key = idem && *idem ? idem
                                                                                     : NULL,
                          .parts_mib = parts};
    rc = dg_db_export_insert(&ne);
    dg_free(req_text);
    if (rc) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot record the export");
        goto out;
    }
    enqueue(id, path, dir, strcmp(fmt_s, "burnpack") ? DG_EXPORT_SAFETENSORS
                                                     : DG_EXPORT_BURNPACK, dt, mib_bytes(parts));
    char loc[128];
    snprintf(loc, sizeof loc, "/v1/exports/%s", id);
    dg_reply_header(r, "Location", loc);
    dg_reply_json(r, 202, dg_db_export_json(id));
out:
    json_decref(b);
}

void dg_h_exports_list(dg_req *r) {
    const char *lim = dg_req_query(r, "limit");
    json_t *o = NULL;
    if (dg_db_export_list(dg_req_query(r, "after"), lim ? strtoll(lim, NULL, 10) : 100, &o)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read exports");
        return;
    }
    dg_reply_json(r, 200, o);
}

void dg_h_export_get(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    json_t *o = dg_db_export_json(id);
    if (!o) {
        dg_reply_error(r, 404, "not_found", "export_not_found", "id", "no export '%s'", id);
        return;
    }
    dg_reply_json(r, 200, o);
}

void dg_h_export_file(dg_req *r) {
    const char *id = dg_req_param(r, "id"), *name = dg_req_param(r, "name");
    json_t *o = dg_db_export_json(id);
    if (!o) {
        dg_reply_error(r, 404, "not_found", "export_not_found", "id", "no export '%s'", id);
        return;
    }
    const char *status = json_string_value(json_object_get(o, "status"));
    if (strcmp(status, "succeeded")) {
        dg_reply_header(r, "Retry-After", "1");
        dg_reply_error(r, 409, "conflict", "export_not_ready", "id",
                       "export '%s' is %s; its files are served once it succeeded", id, status);
        json_decref(o);
        return;
    }
    json_t *files = json_object_get(o, "files"), *f = NULL, *it;
    size_t i;
    json_array_foreach(files, i, it)
        if (!strcmp(json_string_value(json_object_get(it, "name")), name)) f = it;
    if (!f) {
        dg_reply_error(r, 404, "not_found", "file_not_found", "name",
                       "export '%s' has no file '%s'", id, name);
        json_decref(o);
        return;
    }
    uint64_t bytes = (uint64_t)json_integer_value(json_object_get(f, "bytes"));
    char etag[80], dir[1200], st[16], path[1400];
    snprintf(etag, sizeof etag, "\"%s\"", json_string_value(json_object_get(f, "sha256")));
    json_decref(o);
    dg_db_export_paths(id, dir, sizeof dir, st);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || (uint64_t)sb.st_size != bytes) {
        if (fd >= 0) close(fd);
        dg_reply_error(r, 410, "gone", "file_changed", "name",
                       "%s of export '%s' is missing or changed on disk (%s)", name, id,
                       fd < 0 ? strerror(errno) : "size differs from the recorded one");
        return;
    }
    dg_reply_header(r, "ETag", etag);                /* dg_reply_fd adds Accept-Ranges */
    size_t nl = strlen(name);
    const char *ctype = nl > 5 && !strcmp(name + nl - 5, ".json") ? "application/json"
                                                                  : "application/octet-stream";
    const char *inm = dg_req_header(r, "If-None-Match");
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        close(fd);
        dg_reply_text(r, 304, ctype, "", 0);
        return;
    }
    const char *range = dg_req_header(r, "Range");
    const char *if_range = dg_req_header(r, "If-Range");
    if (if_range && strcmp(if_range, etag)) range = NULL;    /* changed: send it all */
    uint64_t start = 0, len = bytes;
    int rr = dg_http_range_parse(range, bytes, &start, &len);
    char cr[96];
    if (rr == DG_ERANGE) {
        close(fd);
        snprintf(cr, sizeof cr, "bytes */%" PRIu64, bytes);
        dg_reply_header(r, "Content-Range", cr);
        dg_reply_error(r, 416, "invalid_request", "range_not_satisfiable", NULL,
                       "Range '%s' is outside %s (%" PRIu64 " bytes)", range, name, bytes);
        return;
    }
    if (rr == 0) {
        snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start,
                 start + len - 1, bytes);
        dg_reply_header(r, "Content-Range", cr);
        dg_reply_fd(r, 206, ctype, fd, start, len);
        return;
    }
    dg_reply_fd(r, 200, ctype, fd, 0, bytes);
}
