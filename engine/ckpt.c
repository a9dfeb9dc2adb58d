/* engine/ckpt.c -- the native checkpoint format .dck and atomic file I/O (engine/ckpt.h; the
 * byte layout is specified in proto/ckpt.md, which this file implements exactly).
 *
 * Header: magic, version, header_bytes, flags, a key/value record in which every field of
 * dg_model_config and dg_train_config is stored by name (a reader skips keys it does not know,
 * so later versions can add fields), step, loader state and tokenizer; then the tensor
 * directory and an FNV-1a 64 checksum of the whole header. Data: one zstd frame per tensor,
 * contiguous, in directory order, each with the FNV-1a 64 of its raw bytes in the directory.
 * The reader checks every size before using it and never trusts a byte it has not checked:
 * any corruption gives DG_ECORRUPT (or DG_EVERSION) with a message, never a crash.
 * Not here: JSON, what the trainer does with the state. Thread affinity: any thread.
 */
#include "ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ckpt.c stores float tensors in host order and assumes a little-endian host"
#endif

#define CKPT_FLAG_OPTIM     1u            /* AdamW moments present */
#define CKPT_FIXED_BYTES    20u           /* magic, version, header_bytes, flags, n_kv */
#define CKPT_MAX_HEADER     (64u << 20)   /* sanity bound for header_bytes */
#define CKPT_ZSTD_LEVEL     3

enum { KV_I64 = 1, KV_U64 = 2, KV_F64 = 3, KV_STR = 4, KV_F32A = 5, KV_U32A = 6, KV_U64A = 7 };

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static uint64_t fnv1a64(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

// ------------------------------------------------------------------------------------------
// atomic files

static atomic_uint g_tmp_counter;

static void dir_of(const char *path, char *dir, size_t n) {
    const char *slash = strrchr(path, '/');
    if (!slash) { snprintf(dir, n, "."); return; }
    if (slash == path) { snprintf(dir, n, "/"); return; }
    snprintf(dir, n, "%.*s", (int)(slash - path), path);
}

typedef struct { int fd; char tmp[4096]; } atomic_file;

static int atomic_begin(atomic_file *af, const char *path, char *err, size_t errlen) {
    unsigned k = atomic_fetch_add(&g_tmp_counter, 1u);
    int r = snprintf(af->tmp, sizeof af->tmp, "%s.tmp-%d-%u", path, (int)getpid(), k);
    if (r < 0 || (size_t)r >= sizeof af->tmp)
        return fail(err, errlen, DG_EINVAL, "%s: path too long", path);
    af->fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (af->fd < 0) {
        int e = errno;
        return fail(err, errlen, e == ENOENT ? DG_ENOTFOUND : DG_EIO, "%s: cannot create: %s%s",
                    af->tmp, strerror(e),
                    e == ENOENT ? "; HINT: does the directory exist?" : "");
    }
    return 0;
}

static void atomic_abort(atomic_file *af) {
    if (af->fd >= 0) close(af->fd);
    af->fd = -1;
    unlink(af->tmp);
}

static int write_all(int fd, const void *data, size_t n, off_t off) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, off);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w; off += w;
    }
    return 0;
}

static int atomic_commit(atomic_file *af, const char *path, char *err, size_t errlen) {
    if (fsync(af->fd) != 0) {
        int e = errno; atomic_abort(af);
        return fail(err, errlen, DG_EIO, "%s: fsync: %s", path, strerror(e));
    }
    if (close(af->fd) != 0) {
        int e = errno; af->fd = -1; atomic_abort(af);
        return fail(err, errlen, DG_EIO, "%s: close: %s", path, strerror(e));
    }
    af->fd = -1;
    if (rename(af->tmp, path) != 0) {
        int e = errno; atomic_abort(af);
        return fail(err, errlen, DG_EIO, "%s: rename: %s", path, strerror(e));
    }
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return fail(err, errlen, DG_EIO, "%s: open dir: %s", dir, strerror(errno));
    int rc = fsync(dfd);
    int e = errno;
    close(dfd);
    if (rc != 0) return fail(err, errlen, DG_EIO, "%s: fsync dir: %s", dir, strerror(e));
    return 0;
}

int dg_write_atomic(const char *path, const void *data, size_t n, char *err, size_t errlen) {
    atomic_file af;
    int rc = atomic_begin(&af, path, err, errlen);
    if (rc) return rc;
    if (write_all(af.fd, data, n, 0) != 0) {
        int e = errno; atomic_abort(&af);
        return fail(err, errlen, DG_EIO, "%s: write: %s", path, strerror(e));
    }
    return atomic_commit(&af, path, err, errlen);
}

static int read_all(int fd, void *data, size_t n, off_t off) {
    char *p = data;
    while (n > 0) {
        ssize_t r = pread(fd, p, n > (1u << 30) ? (1u << 30) : n, off);
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        if (r == 0) { errno = 0; return -1; }   /* unexpected end */
        p += r; n -= (size_t)r; off += r;
    }
    return 0;
}

static int open_ro(const char *path, int *fd, off_t *size, char *err, size_t errlen) {
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) {
        int e = errno;
        return fail(err, errlen, e == ENOENT ? DG_ENOTFOUND : DG_EIO, "%s: cannot open: %s",
                    path, strerror(e));
    }
    struct stat st;
    if (fstat(*fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(*fd); *fd = -1;
        return fail(err, errlen, DG_EIO, "%s: not a regular file", path);
    }
    *size = st.st_size;
    return 0;
}

int dg_read_file(const char *path, char **data, size_t *n, char *err, size_t errlen) {
    *data = NULL; if (n) *n = 0;
    int fd; off_t size;
    int rc = open_ro(path, &fd, &size, err, errlen);
    if (rc) return rc;
    char *buf = dg_try_malloc((size_t)size + 1);
    if (!buf) {
        close(fd);
        return fail(err, errlen, DG_ENOMEM, "%s: out of memory for %lld bytes", path,
                    (long long)size);
    }
    if (size > 0 && read_all(fd, buf, (size_t)size, 0) != 0) {
        int e = errno; close(fd); dg_free(buf);
        return fail(err, errlen, DG_EIO, "%s: read: %s", path, e ? strerror(e) : "short read");
    }
    close(fd);
    buf[size] = 0;
    *data = buf; if (n) *n = (size_t)size;
    return 0;
}

// ------------------------------------------------------------------------------------------
// the config fields, by name

enum { C_INT, C_I64, C_U64, C_FLOAT, C_DOUBLE, C_ENUM, C_BOOL };
typedef struct {
    const char *key;
    int ctype;
    int which;
    size_t off;
} cfg_row; /* which: 0 m, 1 t */

_Static_assert(sizeof(dg_pos_mode) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(dg_norm_kind) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(dg_init_kind) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(dg_lr_schedule) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(dg_tok_kind) == sizeof(int), "enums are int-sized");

#define M_(f, t) {"model." #f, t, 0, offsetof(dg_model_config, f)}
#define T_(f, t) {"train." #f, t, 1, offsetof(dg_train_config, f)}
static const cfg_row CFG_ROWS[] = {
    M_(n_layer, C_INT), M_(n_embd, C_INT), M_(n_head, C_INT), M_(mlp_mult, C_INT),
    M_(vocab_size, C_INT), M_(dropout, C_FLOAT), M_(positional, C_ENUM),
    M_(rope_theta, C_FLOAT), M_(norm, C_ENUM), M_(norm_eps, C_FLOAT),
    M_(relu_threshold, C_FLOAT), M_(init, C_ENUM), M_(init_std, C_FLOAT),
    M_(tie_embeddings, C_BOOL),
    T_(batch_size, C_INT), T_(block_size, C_INT), T_(chunk, C_INT), T_(max_steps, C_I64),
    T_(epochs, C_DOUBLE), T_(lr, C_FLOAT), T_(min_lr, C_FLOAT), T_(warmup_steps, C_I64),
    T_(schedule, C_ENUM), T_(weight_decay, C_FLOAT), T_(beta1, C_FLOAT), T_(beta2, C_FLOAT),
    T_(eps, C_FLOAT), T_(grad_clip, C_FLOAT), T_(grad_accum, C_INT), T_(log_interval, C_I64),
    T_(eval_interval, C_I64), T_(eval_iters, C_I64), T_(ckpt_interval, C_I64),
    T_(keep_checkpoints, C_INT), T_(seed, C_U64), T_(tokenizer, C_ENUM),
    T_(train_frac, C_DOUBLE),
};
#undef M_
#undef T_
#define N_CFG_ROWS ((int)(sizeof CFG_ROWS / sizeof CFG_ROWS[0]))

/* Non-table keys of version 1. */
#define K_ALIBI   "model.alibi_slopes"
#define K_STEP    "step"
#define K_RNG     "loader.rng"
#define K_CURSOR  "loader.cursor"
#define K_TKIND   "tokenizer.kind"
#define K_TCHARS  "tokenizer.chars"

static int row_kv_type(int ctype) {
    switch (ctype) {
    case C_U64: return KV_U64;
    case C_FLOAT: case C_DOUBLE: return KV_F64;
    default: return KV_I64;
    }
}

// ------------------------------------------------------------------------------------------
// byte buffer (writer)

typedef struct { unsigned char *p; size_t n, cap; } bbuf;

static void bb_put(bbuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 1024;
        while (c < b->n + n) c *= 2;
        b->p = dg_realloc(b->p, c);
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u8(bbuf *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u16(bbuf *b, uint16_t v) { bb_put(b, &v, 2); }
static void bb_u32(bbuf *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bbuf *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_key(bbuf *b, const char *k, uint8_t type, uint32_t vbytes) {
    size_t l = strlen(k);
    bb_u16(b, (uint16_t)l); bb_put(b, k, l); bb_u8(b, type); bb_u32(b, vbytes);
}

static void put_row(bbuf *b, const cfg_row *r, const void *base) {
    const char *p = (const char *)base + r->off;
    int t = row_kv_type(r->ctype);
    bb_key(b, r->key, (uint8_t)t, 8);
    switch (r->ctype) {
    case C_INT:
    case C_ENUM: {
        int v;
        memcpy(&v, p, sizeof v);
        bb_u64(b, (uint64_t)(int64_t)v);
        break;
    }
    case C_BOOL: { bool v; memcpy(&v, p, sizeof v); bb_u64(b, v ? 1 : 0); break; }
    case C_I64: { int64_t v; memcpy(&v, p, sizeof v); bb_u64(b, (uint64_t)v); break; }
    case C_U64: { uint64_t v; memcpy(&v, p, sizeof v); bb_u64(b, v); break; }
    case C_FLOAT: { float f; memcpy(&f, p, sizeof f); double d = f; bb_put(b, &d, 8); break; }
    case C_DOUBLE: { double d; memcpy(&d, p, sizeof d); bb_put(b, &d, 8); break; }
    }
}

// ------------------------------------------------------------------------------------------
// tensors of a checkpoint

typedef struct {
    char        name[64];
    int         ndim;
    int64_t     shape[3];
    int64_t     numel;
    const float *src;       /* writer */
    float       *dst;       /* reader */
    int         moment;     /* 0 param, 1 adamw.m, 2 adamw.v */
    int         pidx;       /* DG_P_* */
} tensor_spec;

/* Expected tensors for config m: params (numel > 0) in layout order, then m, then v moments. */
static int expected_tensors(const dg_model_config *m, bool moments, tensor_spec out[3 * DG_P_COUNT],
                            dg_param_info info[DG_P_COUNT], int64_t *total) {
    *total = dg_model_param_layout(m, info);
    int n = 0;
    for (int k = 0; k < (moments ? 3 : 1); k++) {
        for (int i = 0; i < DG_P_COUNT; i++) {
            if (info[i].numel == 0) continue;
            tensor_spec *t = &out[n++];
            memset(t, 0, sizeof *t);
            snprintf(t->name, sizeof t->name, "%s%s",
                     k == 0 ? "" : k == 1 ? "adamw.m." : "adamw.v.", info[i].name);
            t->ndim = info[i].ndim;
            for (int d = 0; d < info[i].ndim && d < 3; d++) t->shape[d] = info[i].shape[d];
            t->numel = info[i].numel;
            t->moment = k;
            t->pidx = i;
        }
    }
    return n;
}

// ------------------------------------------------------------------------------------------
// writer

int dg_ckpt_write(const char *path, const dg_ckpt *c, char *err, size_t errlen) {
    DG_ASSERT(c && c->tokenizer && c->params);
    DG_ASSERT((c->adam_m == NULL) == (c->adam_v == NULL));
    bool moments = c->adam_m != NULL;
    dg_param_info info[DG_P_COUNT];
    tensor_spec ts[3 * DG_P_COUNT];
    int64_t total;
    int nt = expected_tensors(&c->model, moments, ts, info, &total);
    DG_ASSERT(total == c->n_params);
    for (int i = 0; i < nt; i++) {
        const float *base = ts[i].moment == 0   ? c->params
                            : ts[i].moment == 1 ? c->adam_m
                                                : c->adam_v;
        ts[i].src = base + info[ts[i].pidx].offset;
    }

    /* header */
    bbuf h = {0};
    bb_put(&h, DG_CKPT_MAGIC, 4);
    bb_u32(&h, DG_CKPT_VERSION);
    bb_u32(&h, 0);                                   /* header_bytes, patched below */
    bb_u32(&h, moments ? CKPT_FLAG_OPTIM : 0);
    int n_chars = 0;
    const uint32_t *chars = dg_tokenizer_chars(c->tokenizer, &n_chars);
    bb_u32(&h, (uint32_t)(N_CFG_ROWS + 6));          /* n_kv */
    for (int i = 0; i < N_CFG_ROWS; i++)
        put_row(&h, &CFG_ROWS[i], CFG_ROWS[i].which == 0 ? (const void *)&c->model
                                                        : (const void *)&c->train);
    DG_ASSERT(c->model.n_alibi_slopes >= 0 && c->model.n_alibi_slopes <= DG_MAX_HEADS);
    bb_key(&h, K_ALIBI, KV_F32A, (uint32_t)(4 * c->model.n_alibi_slopes));
    bb_put(&h, c->model.alibi_slopes, 4 * (size_t)c->model.n_alibi_slopes);
    bb_key(&h, K_STEP, KV_I64, 8); bb_u64(&h, (uint64_t)c->step);
    bb_key(&h, K_RNG, KV_U64A, 32);
    for (int i = 0; i < 4; i++) bb_u64(&h, c->loader.rng.s[i]);
    bb_key(&h, K_CURSOR, KV_U64, 8); bb_u64(&h, c->loader.cursor);
    bb_key(&h, K_TKIND, KV_I64, 8); bb_u64(&h, (uint64_t)dg_tokenizer_kind(c->tokenizer));
    bb_key(&h, K_TCHARS, KV_U32A, (uint32_t)(4 * n_chars));
    if (n_chars) bb_put(&h, chars, 4 * (size_t)n_chars);
    bb_u32(&h, (uint32_t)nt);
    size_t field_pos[3 * DG_P_COUNT];
    for (int i = 0; i < nt; i++) {
        size_t l = strlen(ts[i].name);
        bb_u16(&h, (uint16_t)l); bb_put(&h, ts[i].name, l);
        bb_u32(&h, 0);                               /* dtype f32 */
        bb_u32(&h, (uint32_t)ts[i].ndim);
        for (int d = 0; d < ts[i].ndim; d++) bb_u64(&h, (uint64_t)ts[i].shape[d]);
        field_pos[i] = h.n;
        bb_u64(&h, 0); bb_u64(&h, 0); bb_u64(&h, 0); bb_u64(&h, 0);   /* patched below */
    }
    bb_u64(&h, 0);                                   /* header checksum */
    uint32_t hb = (uint32_t)h.n;
    memcpy(h.p + 8, &hb, 4);

    atomic_file af;
    int rc = atomic_begin(&af, path, err, errlen);
    if (rc) { dg_free(h.p); return rc; }
    size_t cap = 0;
    for (int i = 0; i < nt; i++) {
        size_t b = ZSTD_compressBound((size_t)ts[i].numel * 4);
        if (b > cap) cap = b;
    }
    void *cbuf = dg_try_malloc(cap ? cap : 1);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!cbuf || !cctx) {
        rc = fail(err, errlen, DG_ENOMEM, "%s: out of memory for compression", path);
        goto out;
    }
    uint64_t off = hb;
    for (int i = 0; i < nt; i++) {
        size_t raw = (size_t)ts[i].numel * 4;
        size_t cn = ZSTD_compressCCtx(cctx, cbuf, cap, ts[i].src, raw, CKPT_ZSTD_LEVEL);
        if (ZSTD_isError(cn)) {
            rc = fail(err, errlen, DG_EINTERNAL, "%s: zstd: %s", path, ZSTD_getErrorName(cn));
            goto out;
        }
        if (write_all(af.fd, cbuf, cn, (off_t)off) != 0) {
            rc = fail(err, errlen, DG_EIO, "%s: write: %s", path, strerror(errno));
            goto out;
        }
        uint64_t f[4] = {off, raw, cn, fnv1a64(ts[i].src, raw, FNV_INIT)};
        memcpy(h.p + field_pos[i], f, sizeof f);
        off += cn;
    }
    uint64_t hsum = fnv1a64(h.p, h.n - 8, FNV_INIT);
    memcpy(h.p + h.n - 8, &hsum, 8);
    if (write_all(af.fd, h.p, h.n, 0) != 0) {
        rc = fail(err, errlen, DG_EIO, "%s: write: %s", path, strerror(errno));
        goto out;
    }
    rc = atomic_commit(&af, path, err, errlen);
    af.fd = -1;
out:
    if (rc && af.fd >= 0) atomic_abort(&af);
    ZSTD_freeCCtx(cctx);
    dg_free(cbuf);
    dg_free(h.p);
    return rc;
}

// ------------------------------------------------------------------------------------------
// reader

typedef struct { const unsigned char *p; size_t n, pos; bool bad; } rd;

static const void *rd_take(rd *r, size_t k) {
    if (r->bad || k > r->n - r->pos) { r->bad = true; return NULL; }
    const void *q = r->p + r->pos;
    r->pos += k;
    return q;
}
static uint8_t rd_u8(rd *r) { const uint8_t *q = rd_take(r, 1); return q ? *q : 0; }
static uint16_t rd_u16(rd *r) {
    uint16_t v = 0;
    const void *q = rd_take(r, 2);
    if (q) memcpy(&v, q, 2);
    return v;
}
static uint32_t rd_u32(rd *r) {
    uint32_t v = 0;
    const void *q = rd_take(r, 4);
    if (q) memcpy(&v, q, 4);
    return v;
}
static uint64_t rd_u64(rd *r) {
    uint64_t v = 0;
    const void *q = rd_take(r, 8);
    if (q) memcpy(&v, q, 8);
    return v;
}

typedef struct {
    char     name[256];
    uint32_t dtype, ndim;
    int64_t  shape[4];
    uint64_t off, raw, comp, sum;
} dir_entry;

/* Stores an 8-byte KV value into a config field; returns false if out of the field's range. */
static bool set_row(const cfg_row *r, void *base, uint64_t bits) {
    char *p = (char *)base + r->off;
    int64_t i = (int64_t)bits;
    double d; memcpy(&d, &bits, 8);
    switch (r->ctype) {
    case C_INT: case C_ENUM: {
        if (i < INT_MIN || i > INT_MAX) return false;
        int v = (int)i; memcpy(p, &v, sizeof v); return true;
    }
    case C_BOOL: {
        if (bits > 1) return false;
        bool v = bits == 1;
        memcpy(p, &v, sizeof v);
        return true;
    }
    case C_I64: memcpy(p, &i, 8); return true;
    case C_U64: memcpy(p, &bits, 8); return true;
    case C_FLOAT: {
        if (d != d) { float f = (float)d; memcpy(p, &f, 4); return true; }
        float f = (float)d;
        if ((double)f != d) return false;              /* written from a float: exact */
        memcpy(p, &f, 4); return true;
    }
    case C_DOUBLE: memcpy(p, &d, 8); return true;
    }
    return false;
}

#define CORRUPT(...) do { rc = fail(err, errlen, DG_ECORRUPT, __VA_ARGS__); goto out; } while (0)
/* BAD("what is wrong", ...) -> "<path>: what is wrong; the file is corrupt" */
#define BAD(...) do { rc = corrupt(err, errlen, path, __VA_ARGS__); goto out; } while (0)

static int corrupt(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int corrupt(char *err, size_t errlen, const char *path, const char *fmt, ...) {
    if (err && errlen) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(err, errlen, "%s: %s; the file is corrupt", path, msg);
    }
    return DG_ECORRUPT;
}

int dg_ckpt_read(const char *path, bool with_optim, dg_ckpt *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    int fd; off_t fsize;
    int rc = open_ro(path, &fd, &fsize, err, errlen);
    if (rc) return rc;
    unsigned char *hdr = NULL, *cbuf = NULL;
    dir_entry *dir = NULL;
    uint32_t n_dir = 0;
    ZSTD_DCtx *dctx = NULL;
    dg_tokenizer_t *tok = NULL;
    float *params = NULL, *am = NULL, *av = NULL;

    unsigned char fixed[CKPT_FIXED_BYTES];
    size_t have = fsize < (off_t)sizeof fixed ? (size_t)fsize : sizeof fixed;
    if (read_all(fd, fixed, have, 0) != 0) {
        rc = fail(err, errlen, DG_EIO, "%s: read: %s", path, strerror(errno));
        goto out;
    }
    if (have < 4 || memcmp(fixed, DG_CKPT_MAGIC, 4) != 0) {
        char m[16] = "";
        for (size_t i = 0; i < 4 && i < have; i++)
            snprintf(m + 2 * i, sizeof m - 2 * i, "%02x", fixed[i]);
        CORRUPT("%s: not a dragond checkpoint (magic %s, expected 4452474e \"DRGN\"); HINT: "
                "is this a .bpk or .safetensors export? use the file a training run wrote under "
                "runs/<run>/ckpt/", path, have ? m : "(empty file)");
    }
    if (have < CKPT_FIXED_BYTES)
        CORRUPT("%s: truncated checkpoint: %zu bytes, the header alone needs %u; HINT: the write "
                "was interrupted or the file was cut; use an earlier checkpoint",
                path, have, CKPT_FIXED_BYTES);
    uint32_t version, hbytes, flags;
    memcpy(&version, fixed + 4, 4); memcpy(&hbytes, fixed + 8, 4); memcpy(&flags, fixed + 12, 4);
    if (version > DG_CKPT_VERSION) {
        rc = fail(err, errlen, DG_EVERSION, "%s: checkpoint version %u > supported %u; HINT: "
                  "upgrade dragond", path, version, DG_CKPT_VERSION);
        goto out;
    }
    if (version == 0) BAD("checkpoint version 0 is not valid");
    if (hbytes < CKPT_FIXED_BYTES + 12 || hbytes > CKPT_MAX_HEADER)
        BAD("header size %u is not valid", hbytes);
    if ((off_t)hbytes > fsize)
        CORRUPT("%s: truncated checkpoint: header needs %u bytes, the file has %lld; HINT: the "
                "write was interrupted or the file was cut; use an earlier checkpoint", path,
                hbytes, (long long)fsize);
    hdr = dg_malloc(hbytes);
    if (read_all(fd, hdr, hbytes, 0) != 0) {
        rc = fail(err, errlen, DG_EIO, "%s: read: %s", path, strerror(errno));
        goto out;
    }
    uint64_t hsum; memcpy(&hsum, hdr + hbytes - 8, 8);
    if (fnv1a64(hdr, hbytes - 8, FNV_INIT) != hsum)
        BAD("header checksum mismatch");
    if (flags & ~CKPT_FLAG_OPTIM) BAD("unknown flags 0x%x", flags);
    bool has_moments = (flags & CKPT_FLAG_OPTIM) != 0;
    if (with_optim && !has_moments) {
        rc = fail(err, errlen, DG_ENOTFOUND, "%s: the checkpoint has no optimizer state "
                  "(inference-only); HINT: resume from a checkpoint written by a training run, "
                  "or load it for inference", path);
        goto out;
    }

    /* key/value record */
    rd r = {hdr, hbytes - 8, CKPT_FIXED_BYTES, false};
    uint32_t n_kv; memcpy(&n_kv, fixed + 16, 4);
    bool seen[N_CFG_ROWS + 6];
    memset(seen, 0, sizeof seen);
    int64_t tkind = -1;
    const unsigned char *tchars = NULL; uint32_t tchars_bytes = 0;
    for (uint32_t k = 0; k < n_kv; k++) {
        uint16_t kl = rd_u16(&r);
        const char *key = rd_take(&r, kl);
        uint8_t type = rd_u8(&r);
        uint32_t vb = rd_u32(&r);
        const unsigned char *val = rd_take(&r, vb);
        if (r.bad) BAD("header record %u runs past the header", k);
        int idx = -1;
        char kbuf[128];
        if (kl >= sizeof kbuf) continue;                     /* not a key we know */
        memcpy(kbuf, key, kl); kbuf[kl] = 0;
        for (int i = 0; i < N_CFG_ROWS; i++)
            if (!strcmp(kbuf, CFG_ROWS[i].key)) { idx = i; break; }
        const char *extra[6] = {K_ALIBI, K_STEP, K_RNG, K_CURSOR, K_TKIND, K_TCHARS};
        for (int i = 0; idx < 0 && i < 6; i++)
            if (!strcmp(kbuf, extra[i])) idx = N_CFG_ROWS + i;
        if (idx < 0) continue;                               /* a later version's field */
        if (seen[idx]) BAD("header field %s appears twice", kbuf);
        seen[idx] = true;
        uint64_t bits = 0;
        if (vb == 8) memcpy(&bits, val, 8);
        if (idx < N_CFG_ROWS) {
            const cfg_row *row = &CFG_ROWS[idx];
            if (type != row_kv_type(row->ctype) || vb != 8)
                BAD("header field %s has type %u size %u", kbuf, type, vb);
            if (!set_row(row, row->which == 0 ? (void *)&out->model : (void *)&out->train, bits))
                BAD("header field %s is out of range", kbuf);
            continue;
        }
        switch (idx - N_CFG_ROWS) {
        case 0:
            if (type != KV_F32A || vb % 4 || vb / 4 > DG_MAX_HEADS)
                BAD("header field %s is not valid", kbuf);
            out->model.n_alibi_slopes = (int)(vb / 4);
            memcpy(out->model.alibi_slopes, val, vb);
            break;
        case 1:
            if (type != KV_I64 || vb != 8 || (int64_t)bits < 0)
                BAD("header field %s is not valid", kbuf);
            out->step = (int64_t)bits;
            break;
        case 2:
            if (type != KV_U64A || vb != 32)
                BAD("header field %s is not valid", kbuf);
            memcpy(out->loader.rng.s, val, 32);
            break;
        case 3:
            if (type != KV_U64 || vb != 8)
                BAD("header field %s is not valid", kbuf);
            out->loader.cursor = bits;
            break;
        case 4:
            if (type != KV_I64 || vb != 8 || bits > 1)
                BAD("header field %s is not valid", kbuf);
            tkind = (int64_t)bits;
            break;
        case 5:
            if (type != KV_U32A || vb % 4)
                BAD("header field %s is not valid", kbuf);
            tchars = val; tchars_bytes = vb;
            break;
        }
    }
    for (int i = 0; i < N_CFG_ROWS + 6; i++) {
        if (seen[i]) continue;
        const char *extra[6] = {K_ALIBI, K_STEP, K_RNG, K_CURSOR, K_TKIND, K_TCHARS};
        BAD("header field %s is missing", i < N_CFG_ROWS ? CFG_ROWS[i].key : extra[i - N_CFG_ROWS]);
    }

    /* the config must be one we can build, and agree with the tokenizer */
    char msg[256];
    if (dg_model_config_validate(&out->model, msg, sizeof msg) != 0)
        BAD("model config in the checkpoint is not valid (%s)", msg);
    if (dg_train_config_validate(&out->train, msg, sizeof msg) != 0)
        BAD("training config in the checkpoint is not valid (%s)", msg);
    if (tkind == DG_TOK_BYTE) {
        if (tchars_bytes) BAD("byte tokenizer with a character list");
        dg_tokenizer_byte(&tok);
    } else {
        uint32_t n = tchars_bytes / 4;
        uint32_t *cps = dg_malloc(4 * (size_t)n + 4);
        if (n) memcpy(cps, tchars, 4 * (size_t)n);
        int trc = dg_tokenizer_from_chars(cps, (int)n, &tok);
        dg_free(cps);
        if (trc) BAD("the tokenizer's character list is not valid (duplicate or invalid "
                     "code point)");
    }
    if (dg_tokenizer_vocab(tok) != out->model.vocab_size)
        BAD("model vocab_size %d does not match the tokenizer's %d", out->model.vocab_size,
            dg_tokenizer_vocab(tok));

    /* directory */
    n_dir = rd_u32(&r);
    if (r.bad || n_dir > 4096) BAD("tensor count is not valid");
    dir = dg_calloc(n_dir ? n_dir : 1, sizeof *dir);
    uint64_t expect_off = hbytes;
    for (uint32_t i = 0; i < n_dir; i++) {
        dir_entry *e = &dir[i];
        uint16_t nl = rd_u16(&r);
        const char *nm = rd_take(&r, nl);
        e->dtype = rd_u32(&r);
        e->ndim = rd_u32(&r);
        if (r.bad || nl == 0 || nl >= sizeof e->name || e->ndim < 1 || e->ndim > 4)
            BAD("tensor directory entry %u is not valid", i);
        memcpy(e->name, nm, nl); e->name[nl] = 0;
        if (memchr(e->name, 0, nl)) BAD("tensor name %u is not valid", i);
        for (uint32_t d = 0; d < e->ndim; d++) e->shape[d] = (int64_t)rd_u64(&r);
        e->off = rd_u64(&r); e->raw = rd_u64(&r); e->comp = rd_u64(&r); e->sum = rd_u64(&r);
        if (r.bad) BAD("tensor directory runs past the header");
        if (e->off != expect_off || e->comp == 0 || e->comp > (uint64_t)fsize)
            BAD("tensor %s: offset/size not valid", e->name);
        expect_off += e->comp;
    }
    if (r.pos != r.n) BAD("%zu stray bytes after the tensor directory", r.n - r.pos);
    if (expect_off > (uint64_t)fsize)
        CORRUPT("%s: truncated checkpoint: the tensors end at byte %llu, the file has %lld; HINT: "
                "the write was interrupted or the file was cut; use an earlier checkpoint", path,
                (unsigned long long)expect_off, (long long)fsize);
    if (expect_off < (uint64_t)fsize)
        BAD("%llu trailing bytes after the last tensor",
            (unsigned long long)((uint64_t)fsize - expect_off));

    /* match the directory against the tensors this config needs (bounded before computing
     * the layout, so that no product of crafted sizes can overflow) */
    double est = 2.0 * out->model.vocab_size * out->model.n_embd + 2.0 * out->model.n_embd +
                 3.0 * out->model.n_embd * (double)out->model.mlp_mult * out->model.n_embd;
    if (est > (double)((uint64_t)1 << 40))
        BAD("model of about %.3g parameters is not plausible", est);
    dg_param_info info[DG_P_COUNT];
    tensor_spec ts[3 * DG_P_COUNT];
    int64_t total;
    int nt = expected_tensors(&out->model, has_moments, ts, info, &total);
    if (total <= 0 || (uint64_t)total > ((uint64_t)1 << 40))
        BAD("parameter count %lld is not valid", (long long)total);
    int found[3 * DG_P_COUNT];
    for (int i = 0; i < nt; i++) found[i] = -1;
    size_t max_comp = 0;
    for (uint32_t i = 0; i < n_dir; i++) {
        int k = -1;
        for (int j = 0; j < nt; j++) if (!strcmp(dir[i].name, ts[j].name)) { k = j; break; }
        if (k < 0) {
            if (!strncmp(dir[i].name, "adamw.", 6) || !strcmp(dir[i].name, "norm.gamma") ||
                !strcmp(dir[i].name, "norm.beta") || !strcmp(dir[i].name, "lm_head"))
                BAD("tensor %s is not expected with this config", dir[i].name);
            continue;                                    /* a later version's tensor */
        }
        if (found[k] >= 0) BAD("tensor %s appears twice", dir[i].name);
        found[k] = (int)i;
        if (dir[i].dtype != 0)
            BAD("tensor %s: dtype %u is not supported (only 0 = f32)", dir[i].name, dir[i].dtype);
        bool same = (int)dir[i].ndim == ts[k].ndim;
        for (int d = 0; same && d < ts[k].ndim; d++) same = dir[i].shape[d] == ts[k].shape[d];
        if (!same) {
            char a[96] = "", b[96] = "";
            for (uint32_t d = 0; d < dir[i].ndim; d++)
                snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? "," : "",
                         (long long)dir[i].shape[d]);
            for (int d = 0; d < ts[k].ndim; d++)
                snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? "," : "",
                         (long long)ts[k].shape[d]);
            BAD("tensor %s: shape [%s] does not match the config's [%s]", dir[i].name, a, b);
        }
        if (dir[i].raw != (uint64_t)ts[k].numel * 4)
            BAD("tensor %s: %llu raw bytes, expected %lld", dir[i].name,
                (unsigned long long)dir[i].raw, (long long)ts[k].numel * 4);
        if ((with_optim || ts[k].moment == 0) && dir[i].comp > max_comp)
            max_comp = (size_t)dir[i].comp;
    }
    for (int j = 0; j < nt; j++)
        if (found[j] < 0) BAD("tensor %s is missing", ts[j].name);

    /* only now, with every size checked against the config, allocate */
    params = dg_try_malloc(sizeof(float) * (size_t)total);
    if (with_optim) {
        am = dg_try_malloc(sizeof(float) * (size_t)total);
        av = dg_try_malloc(sizeof(float) * (size_t)total);
    }
    if (!params || (with_optim && (!am || !av))) {
        rc = fail(err, errlen, DG_ENOMEM, "%s: out of memory for %lld parameters", path,
                  (long long)total);
        goto out;
    }
    for (int i = 0; i < nt; i++) {
        float *base = ts[i].moment == 0 ? params : ts[i].moment == 1 ? am : av;
        ts[i].dst = base ? base + info[ts[i].pidx].offset : NULL;
    }

    /* data */
    cbuf = dg_try_malloc(max_comp ? max_comp : 1);
    dctx = ZSTD_createDCtx();
    if (!cbuf || !dctx) {
        rc = fail(err, errlen, DG_ENOMEM, "%s: out of memory for decompression", path);
        goto out;
    }
    for (int j = 0; j < nt; j++) {
        if (!ts[j].dst) continue;                        /* moments not wanted */
        const dir_entry *e = &dir[found[j]];
        if (read_all(fd, cbuf, (size_t)e->comp, (off_t)e->off) != 0) {
            rc = fail(err, errlen, DG_EIO, "%s: read: %s", path,
                      errno ? strerror(errno) : "short read");
            goto out;
        }
        unsigned long long fcs = ZSTD_getFrameContentSize(cbuf, (size_t)e->comp);
        if (fcs != e->raw)
            BAD("tensor %s: zstd frame is not valid", e->name);
        size_t got = ZSTD_decompressDCtx(dctx, ts[j].dst, (size_t)e->raw, cbuf, (size_t)e->comp);
        if (ZSTD_isError(got) || got != e->raw)
            BAD("tensor %s: zstd: %s", e->name,
                    ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short frame");
        if (fnv1a64(ts[j].dst, (size_t)e->raw, FNV_INIT) != e->sum)
            BAD("tensor %s: checksum mismatch", e->name);
    }
    out->tokenizer = tok; tok = NULL;
    out->n_params = total;
    out->params = params; params = NULL;
    out->adam_m = am; am = NULL;
    out->adam_v = av; av = NULL;
    rc = 0;
out:
    if (fd >= 0) close(fd);
    ZSTD_freeDCtx(dctx);
    dg_free(cbuf);
    dg_free(dir);
    dg_free(hdr);
    dg_tokenizer_free(tok);
    dg_free(params); dg_free(am); dg_free(av);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

void dg_ckpt_free(dg_ckpt *c) {
    if (!c) return;
    dg_tokenizer_free(c->tokenizer);
    dg_free(c->params); dg_free(c->adam_m); dg_free(c->adam_v);
    memset(c, 0, sizeof *c);
}
