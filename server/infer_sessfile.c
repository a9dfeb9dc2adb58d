/* server/infer_sessfile.c -- the session state file .dst (layout in server/infer.h): one
 * sequence's recurrent state, its unfed tail, the model's fingerprint, and a sha256 checksum of
 * everything before it. Writers go through dg_write_atomic (tmp, fsync, rename, fsync dir);
 * readers check magic, version, sizes, checksum and (when asked) the fingerprint, and say what
 * is wrong. Not here: engine states (the caller copies host images in and out).
 * Thread affinity: any thread (pure file I/O). */
#include "infer.h"
#include "engine/ckpt.h"
#include "proto/sha256.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define HDR_BYTES 128

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_i64(uint8_t *p, int64_t v) { memcpy(p, &v, 8); }
static void put_f64(uint8_t *p, double v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static int64_t get_i64(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }
static double get_f64(const uint8_t *p) { double v; memcpy(&v, p, 8); return v; }

int dg_sessfile_write(const char *path, const dg_sessfile *f, char *err, size_t errlen) {
    size_t id_len = strlen(f->id), model_len = strlen(f->model);
    size_t n = HDR_BYTES + id_len + model_len + (size_t)f->n_unfed * 4 +
               (size_t)f->n_floats * 4 + 32;
    uint8_t *b = dg_try_calloc(1, n);
    if (!b) {
        snprintf(err, errlen, "out of memory for a %zu-byte session file", n);
        return DG_ENOMEM;
    }
    memcpy(b, DG_SESSFILE_MAGIC, 4);
    put_u32(b + 4, DG_SESSFILE_VERSION);
    put_u32(b + 8, HDR_BYTES);
    put_u32(b + 12, 0);
    memcpy(b + 16, f->model_fp, 32);
    put_i64(b + 48, f->pos);
    put_i64(b + 56, f->n_floats);
    put_u32(b + 64, f->n_unfed);
    put_u32(b + 68, (uint32_t)id_len);
    put_u32(b + 72, (uint32_t)model_len);
    put_f64(b + 80, f->created_at);
    put_f64(b + 88, f->keep_alive_s);
    size_t o = HDR_BYTES;
    memcpy(b + o, f->id, id_len); o += id_len;
    memcpy(b + o, f->model, model_len); o += model_len;
    if (f->n_unfed) memcpy(b + o, f->unfed, (size_t)f->n_unfed * 4);
    o += (size_t)f->n_unfed * 4;
    if (f->n_floats) memcpy(b + o, f->state, (size_t)f->n_floats * 4);
    o += (size_t)f->n_floats * 4;
    dg_sha256(b, o, b + o);
    int rc = dg_write_atomic(path, b, n, err, errlen);
    dg_free(b);
    return rc;
}

static void hex8(const uint8_t *fp, char out[17]) {
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", fp[i]);
}

int dg_sessfile_read(const char *path, const uint8_t *expect_fp, dg_sessfile *out, char *err,
                     size_t errlen) {
    memset(out, 0, sizeof *out);
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "session file %s: %s", path, strerror(errno));
        return errno == ENOENT ? DG_ENOTFOUND : DG_EIO;
    }
    char *data = NULL;
    size_t n = 0;
    int rc = dg_read_file(path, &data, &n, err, errlen);
    if (rc) return rc;
    const uint8_t *b = (const uint8_t *)data;
    rc = DG_ECORRUPT;
    if (n < HDR_BYTES + 32 || memcmp(b, DG_SESSFILE_MAGIC, 4) != 0) {
        snprintf(err, errlen, "%s is not a dragond session file (bad magic or too short)", path);
        goto fail;
    }
    if (get_u32(b + 4) != DG_SESSFILE_VERSION) {
        snprintf(err, errlen, "session file %s has version %u, this dragond reads version %u. "
                 "HINT: load it with the dragond that saved it", path, get_u32(b + 4),
                 DG_SESSFILE_VERSION);
        rc = DG_EVERSION;
        goto fail;
    }
    uint32_t hdr = get_u32(b + 8);
    int64_t pos = get_i64(b + 48), nf = get_i64(b + 56);
    uint32_t nu = get_u32(b + 64), il = get_u32(b + 68), ml = get_u32(b + 72);
    if (hdr != HDR_BYTES || pos < 0 || nf < 0 || nf > (int64_t)(n / 4) || nu > n / 4 ||
        il >= sizeof out->id || ml >= sizeof out->model ||
        (size_t)hdr + il + ml + (size_t)nu * 4 + (size_t)nf * 4 + 32 != n) {
        snprintf(err, errlen, "session file %s is truncated or its sizes disagree (%zu bytes)",
                 path, n);
        goto fail;
    }
    uint8_t sum[32];
    dg_sha256(b, n - 32, sum);
    if (memcmp(sum, b + n - 32, 32) != 0) {
        snprintf(err, errlen, "session file %s fails its checksum (corrupt). HINT: restore it "
                 "from a copy or save the session again", path);
        goto fail;
    }
    size_t o = HDR_BYTES;
    memcpy(out->id, b + o, il); o += il;
    memcpy(out->model, b + o, ml); o += ml;
    memcpy(out->model_fp, b + 16, 32);
    if (expect_fp && memcmp(expect_fp, out->model_fp, 32) != 0) {
        char a[17], e2[17];
        hex8(out->model_fp, a);
        hex8(expect_fp, e2);
        snprintf(err, errlen, "session file %s was saved from model '%s' (fingerprint %s...), "
                 "not from this model (fingerprint %s...). HINT: load it into the model it "
                 "came from", path, out->model, a, e2);
        rc = DG_EINVAL;
        goto fail;
    }
    out->pos = pos;
    out->n_floats = nf;
    out->n_unfed = nu;
    out->created_at = get_f64(b + 80);
    out->keep_alive_s = get_f64(b + 88);
    out->unfed = dg_malloc((size_t)(nu ? nu : 1) * 4);
    if (nu) memcpy(out->unfed, b + o, (size_t)nu * 4);
    o += (size_t)nu * 4;
    out->state = dg_try_malloc((size_t)(nf ? nf : 1) * 4);
    if (!out->state) {
        snprintf(err, errlen, "out of memory reading %s", path);
        rc = DG_ENOMEM;
        goto fail;
    }
    if (nf) memcpy(out->state, b + o, (size_t)nf * 4);
    dg_free(data);
    return 0;
fail:
    dg_sessfile_free(out);
    dg_free(data);
    return rc;
}

void dg_sessfile_free(dg_sessfile *f) {
    dg_free(f->state);
    dg_free(f->unfed);
    f->state = NULL;
    f->unfed = NULL;
}
