/* proto/burnpack.c -- burnpack reader and writer (BURNPACK.md §1) and the atomic file writer.
 *
 * The reader keeps only the header, the raw metadata and the decoded tensor table in memory;
 * tensor bytes are read on demand with pread (or from the borrowed buffer). The writer streams:
 * header, CBOR, zero padding, then each tensor converted chunk by chunk, so the largest model
 * never needs a second copy in memory.
 * Not here: JSON and model semantics. Thread affinity: one thread per reader / writer. */
#include "burnpack.h"
#include "dg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (1u << 16)

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// ------------------------------------------------------------------------------------------
// atomic file writer

int dg_afile_open(dg_afile *f, const char *path, char *err, size_t errlen) {
    static atomic_uint counter;
    memset(f, 0, sizeof *f);
    f->fd = -1;
    size_t n = strlen(path) + 64;
    f->path = dg_strdup(path);
    f->tmp = dg_malloc(n);
    snprintf(f->tmp, n, "%s.tmp-%d-%u", path, (int)getpid(), atomic_fetch_add(&counter, 1));
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int e = errno;
        fail(err, errlen, DG_EIO, "%s: cannot create temporary file: %s", f->tmp, strerror(e));
        dg_free(f->path);
        dg_free(f->tmp);
        f->path = f->tmp = NULL;
        return e == ENOENT ? DG_ENOTFOUND : DG_EIO;
    }
    dg_sha256_init(&f->sha);
    return 0;
}

void dg_afile_write(dg_afile *f, const void *p, size_t n) {
    if (f->err_no || f->fd < 0) return;
    dg_sha256_update(&f->sha, p, n);
    f->n_bytes += n;
    const uint8_t *q = p;
    while (n) {
        ssize_t w = write(f->fd, q, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            f->err_no = errno;
            return;
        }
        q += w;
        n -= (size_t)w;
    }
}

void dg_afile_zero(dg_afile *f, uint64_t n) {
    static const uint8_t zeros[4096];
    while (n && !f->err_no) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        dg_afile_write(f, zeros, k);
        n -= k;
    }
}

static void afile_release(dg_afile *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    dg_free(f->path);
    dg_free(f->tmp);
    f->path = f->tmp = NULL;
}

void dg_afile_abort(dg_afile *f) {
    if (f->tmp) unlink(f->tmp);
    afile_release(f);
}

static int fsync_dir_of(const char *path) {
    char *dir = dg_strdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else { dir[0] = '.'; dir[1] = 0; }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    dg_free(dir);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int dg_afile_commit(dg_afile *f, char sha_hex[65], char *err, size_t errlen) {
    if (!f->tmp) return fail(err, errlen, DG_EINVAL, "file writer is not open");
    if (!f->err_no && fsync(f->fd) != 0) f->err_no = errno;
    if (!f->err_no && close(f->fd) != 0) f->err_no = errno;
    f->fd = -1;
    if (f->err_no) {
        int e = f->err_no;
        fail(err, errlen, e == ENOSPC ? DG_ENOMEM : DG_EIO, "%s: write failed: %s", f->path,
             strerror(e));
        dg_afile_abort(f);
        return e == ENOSPC ? DG_ENOMEM : DG_EIO;
    }
    if (rename(f->tmp, f->path) != 0) {
        int e = errno;
        fail(err, errlen, DG_EIO, "%s: rename failed: %s", f->path, strerror(e));
        dg_afile_abort(f);
        return DG_EIO;
    }
    if (fsync_dir_of(f->path) != 0) {
        int e = errno;
        fail(err, errlen, DG_EIO, "%s: fsync of the directory failed: %s", f->path,
             strerror(e));
        afile_release(f);
        return DG_EIO;
    }
    if (sha_hex) {
        uint8_t d[32];
        dg_sha256_final(&f->sha, d);
        dg_sha256_hex(d, sha_hex);
    }
    afile_release(f);
    return 0;
}

int dg_write_file_atomic(const char *path, const void *p, size_t n, char *err, size_t errlen) {
    dg_afile f;
    int rc = dg_afile_open(&f, path, err, errlen);
    if (rc) return rc;
    dg_afile_write(&f, p, n);
    return dg_afile_commit(&f, NULL, err, errlen);
}

// ------------------------------------------------------------------------------------------
// dtypes

enum { K_OTHER = 0, K_F32, K_F16, K_BF16, K_F64 };   /* what read_f32 can convert */

typedef struct { const char *name; int size, id, kind; } dtype_row;
static const dtype_row dtype_rows[] = {
    {"F64", 8, -1, K_F64},  {"F32", 4, DG_DTYPE_F32, K_F32}, {"Flex32", 4, -1, K_F32},
    {"F16", 2, DG_DTYPE_F16, K_F16}, {"BF16", 2, DG_DTYPE_BF16, K_BF16},
    {"I64", 8, -1, K_OTHER}, {"I32", 4, -1, K_OTHER}, {"I16", 2, -1, K_OTHER},
    {"I8", 1, -1, K_OTHER},  {"U64", 8, -1, K_OTHER}, {"U32", 4, -1, K_OTHER},
    {"U16", 2, -1, K_OTHER}, {"U8", 1, -1, K_OTHER},  {"Bool", 1, -1, K_OTHER},
};

const char *dg_bpk_dtype_name(dg_dtype t) {
    switch (t) {
    case DG_DTYPE_F32:  return "F32";
    case DG_DTYPE_F16:  return "F16";
    case DG_DTYPE_BF16: return "BF16";
    default:            return NULL;
    }
}

static int dtype_size(dg_dtype t) {
    return t == DG_DTYPE_F32 ? 4 : (t == DG_DTYPE_F16 || t == DG_DTYPE_BF16) ? 2 : 0;
}

// ------------------------------------------------------------------------------------------
// reader

struct dg_bpk_s {
    int             fd;            /* -1 for memory */
    const uint8_t  *mem;
    uint64_t        size;
    unsigned        version;
    uint64_t        data_start;
    uint8_t        *meta;          /* M raw bytes */
    size_t          meta_len;
    dg_cbor_doc     doc;
    int             n;
    dg_bpk_tensor  *t;
    int            *kind;          /* per tensor, K_* */
    dg_cbor_buf     dtypes;        /* concatenated dtype encodings */
    size_t         *dtype_off;
    bool            has_meta;
    int             n_meta;
    const char    **mk, **mv;
};

static int src_read(dg_bpk_t *b, uint64_t off, void *dst, size_t n) {
    if (off > b->size || n > b->size - off) return DG_ECORRUPT;
    if (b->mem) { memcpy(dst, b->mem + off, n); return 0; }
    uint8_t *q = dst;
    while (n) {
        ssize_t r = pread(b->fd, q, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return DG_EIO;
        q += r; off += (uint64_t)r; n -= (size_t)r;
    }
    return 0;
}

static int parse_dtype(const dg_cbor_item *d, dg_bpk_tensor *t, int *kind) {
    if (d->type == DG_CBOR_TEXT) {
        for (size_t i = 0; i < sizeof dtype_rows / sizeof dtype_rows[0]; i++)
            if (dg_cbor_is_text(d, dtype_rows[i].name)) {
                snprintf(t->dtype, sizeof t->dtype, "%s", dtype_rows[i].name);
                t->elem_size = dtype_rows[i].size;
                t->dtype_id = dtype_rows[i].id;
                *kind = dtype_rows[i].kind;
                return 0;
            }
        return -1;
    }
    if (d->type == DG_CBOR_MAP && d->len == 1) {           /* newtype variant {"V": x} */
        const dg_cbor_item *k = &d->kids[0], *v = &d->kids[1];
        t->dtype_id = -1;
        *kind = K_OTHER;
        if (dg_cbor_is_text(k, "Bool") && v->type == DG_CBOR_TEXT) {
            if (dg_cbor_is_text(v, "Native") || dg_cbor_is_text(v, "U8")) t->elem_size = 1;
            else if (dg_cbor_is_text(v, "U32")) t->elem_size = 4;
            else return -1;
            snprintf(t->dtype, sizeof t->dtype, "Bool(%s)", v->s);
            return 0;
        }
        if (dg_cbor_is_text(k, "QFloat")) {
            snprintf(t->dtype, sizeof t->dtype, "QFloat");
            t->elem_size = 0;
            return 0;
        }
    }
    return -1;
}

static int cmp_u64_start(const void *a, const void *b, void *ctx) {
    const dg_bpk_tensor *t = ctx;
    const dg_bpk_tensor *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_name_idx(const void *a, const void *b, void *ctx) {
    const dg_bpk_tensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

/* Parses the metadata CBOR and validates the tensor table against the file size. */
static int bpk_parse(dg_bpk_t *b, char *err, size_t errlen) {
    char cerr[256];
    int rc = dg_cbor_decode(b->meta, b->meta_len, DG_CBOR_MAX_DEPTH, &b->doc, cerr, sizeof cerr);
    if (rc) return fail(err, errlen, rc, "burnpack metadata (%zu bytes, length from the header)"
                        " is not valid CBOR: %s", b->meta_len, cerr);
    const dg_cbor_item *root = b->doc.root;
    if (root->type != DG_CBOR_MAP)
        return fail(err, errlen, DG_ECORRUPT, "burnpack metadata: top level is a %s, not a map",
                    dg_cbor_type_name(root->type));
    const dg_cbor_item *tens = dg_cbor_map_get(root, "tensors");
    if (!tens || tens->type != DG_CBOR_MAP)
        return fail(err, errlen, DG_ECORRUPT, "burnpack metadata: %s",
                    tens ? "\"tensors\" is not a map" : "no \"tensors\" map");
    if (tens->len > DG_BPK_MAX_TENSORS)
        return fail(err, errlen, DG_ECORRUPT, "burnpack: %zu tensors (limit %d)", tens->len,
                    DG_BPK_MAX_TENSORS);
    const dg_cbor_item *um = dg_cbor_map_get(root, "metadata");
    if (um) {
        if (um->type != DG_CBOR_MAP)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: \"metadata\" is not a map");
        b->has_meta = true;
        b->n_meta = (int)um->len;
        b->mk = dg_calloc(um->len + 1, sizeof(char *));
        b->mv = dg_calloc(um->len + 1, sizeof(char *));
        for (size_t i = 0; i < um->len; i++) {
            const dg_cbor_item *k = &um->kids[2 * i], *v = &um->kids[2 * i + 1];
            if (k->type != DG_CBOR_TEXT || v->type != DG_CBOR_TEXT)
                return fail(err, errlen, DG_ECORRUPT, "burnpack: \"metadata\" entry %zu is not "
                            "text -> text", i);
            b->mk[i] = k->s;
            b->mv[i] = v->s;
        }
    }
    int n = (int)tens->len;
    b->n = n;
    b->t = dg_calloc((size_t)n + 1, sizeof(dg_bpk_tensor));
    b->kind = dg_calloc((size_t)n + 1, sizeof(int));
    b->dtype_off = dg_calloc((size_t)n + 1, sizeof(size_t));
    for (int i = 0; i < n; i++) {
        const dg_cbor_item *k = &tens->kids[2 * i], *d = &tens->kids[2 * i + 1];
        dg_bpk_tensor *t = &b->t[i];
        if (k->type != DG_CBOR_TEXT || k->len == 0 || strlen(k->s) != k->len)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor %d has a bad name", i);
        t->name = k->s;
        if (d->type != DG_CBOR_MAP)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': descriptor is not a "
                        "map", t->name);
        const dg_cbor_item *dt = dg_cbor_map_get(d, "dtype"), *sh = dg_cbor_map_get(d, "shape");
        const dg_cbor_item *of = dg_cbor_map_get(d, "data_offsets");
        const dg_cbor_item *pid = dg_cbor_map_get(d, "param_id");
        if (!dt || !sh || !of)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': missing \"%s\"",
                        t->name, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
        if (parse_dtype(dt, t, &b->kind[i]))
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': unknown dtype",
                        t->name);
        b->dtype_off[i] = b->dtypes.len;
        dg_cbor_put_item(&b->dtypes, dt);
        t->dtype_cbor_len = b->dtypes.len - b->dtype_off[i];
        if (sh->type != DG_CBOR_ARRAY || sh->len > DG_BPK_MAX_DIMS)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': shape must be an "
                        "array of at most %d uints", t->name, DG_BPK_MAX_DIMS);
        t->ndim = (int)sh->len;
        t->numel = 1;
        bool ovf = false;
        for (int j = 0; j < t->ndim; j++) {
            const dg_cbor_item *x = &sh->kids[j];
            if (x->type != DG_CBOR_UINT || x->u > (uint64_t)INT64_MAX)
                return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': shape[%d] is not "
                            "an unsigned integer", t->name, j);
            t->shape[j] = (int64_t)x->u;
            ovf |= __builtin_mul_overflow(t->numel, t->shape[j], &t->numel);
        }
        if (of->type != DG_CBOR_ARRAY || of->len != 2 || of->kids[0].type != DG_CBOR_UINT ||
            of->kids[1].type != DG_CBOR_UINT)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': data_offsets must be "
                        "[start, end] uints", t->name);
        t->start = of->kids[0].u;
        t->end = of->kids[1].u;
        if (t->end < t->start)
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': data_offsets end %llu "
                        "< start %llu", t->name, (unsigned long long)t->end,
                        (unsigned long long)t->start);
        t->nbytes = t->end - t->start;
        if (pid) {
            if (pid->type != DG_CBOR_UINT)
                return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': param_id is not "
                            "a uint", t->name);
            t->has_param_id = true;
            t->param_id = pid->u;
        }
        uint64_t want;
        if (t->elem_size && (ovf || __builtin_mul_overflow((uint64_t)t->numel,
                                                          (uint64_t)t->elem_size, &want) ||
                             want != t->nbytes))
            return fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s': %llu bytes for shape "
                        "of %lld %s elements (expected %lld)", t->name,
                        (unsigned long long)t->nbytes, (long long)t->numel, t->dtype,
                        (long long)t->numel * t->elem_size);
        if (t->start > b->size || t->end > b->size) {
            t->offset = UINT64_MAX;        /* caught below */
        } else {
            t->offset = b->data_start + t->start;
        }
    }
    for (int i = 0; i < n; i++) b->t[i].dtype_cbor = b->dtypes.buf + b->dtype_off[i];
    /* unique names */
    int *ix = dg_malloc(((size_t)n + 1) * sizeof(int));
    for (int i = 0; i < n; i++) ix[i] = i;
    qsort_r(ix, (size_t)n, sizeof(int), cmp_name_idx, b->t);
    for (int i = 1; i < n; i++)
        if (!strcmp(b->t[ix[i]].name, b->t[ix[i - 1]].name)) {
            fail(err, errlen, DG_ECORRUPT, "burnpack: tensor '%s' appears twice",
                 b->t[ix[i]].name);
            dg_free(ix);
            return DG_ECORRUPT;
        }
    /* bounds: distinguish a file cut short (the table has Burn's aligned layout and only the
     * file is shorter) from a descriptor that points outside the file. */
    qsort_r(ix, (size_t)n, sizeof(int), cmp_u64_start, b->t);
    uint64_t prev_end = 0, max_end = 0;
    bool burn_layout = true;
    for (int i = 0; i < n; i++) {
        const dg_bpk_tensor *t = &b->t[ix[i]];
        if (i > 0 && t->start < b->t[ix[i - 1]].end) {
            fail(err, errlen, DG_ECORRUPT, "burnpack: tensors '%s' and '%s' overlap",
                 b->t[ix[i - 1]].name, t->name);
            dg_free(ix);
            return DG_ECORRUPT;
        }
        if (t->start != round_up(prev_end, DG_BPK_ALIGN)) burn_layout = false;
        prev_end = t->end;
        if (t->end > max_end) max_end = t->end;
    }
    if (max_end > b->size || b->data_start + max_end > b->size) {
        int rc2 = DG_ECORRUPT;
        if (burn_layout) {
            fail(err, errlen, rc2, "burnpack: file truncated: %llu bytes, but its tensor table "
                 "needs %llu (HINT: the download or copy was cut short)",
                 (unsigned long long)b->size, (unsigned long long)(b->data_start + max_end));
        } else {
            for (int i = 0; i < n; i++) {
                const dg_bpk_tensor *t = &b->t[ix[i]];
                if (t->end > b->size || b->data_start + t->end > b->size) {
                    fail(err, errlen, rc2, "burnpack: tensor '%s' out of bounds: data_offsets "
                         "[%llu, %llu) + data start %llu run past the end of the file "
                         "(%llu bytes)", t->name, (unsigned long long)t->start,
                         (unsigned long long)t->end, (unsigned long long)b->data_start,
                         (unsigned long long)b->size);
                    break;
                }
            }
        }
        dg_free(ix);
        return rc2;
    }
    dg_free(ix);
    return 0;
}

static int bpk_open_common(dg_bpk_t *b, char *err, size_t errlen) {
    uint8_t h[DG_BPK_HEADER];
    if (b->size < DG_BPK_HEADER)
        return fail(err, errlen, DG_ECORRUPT, "burnpack: file truncated: %llu bytes, the header "
                    "alone needs %d", (unsigned long long)b->size, DG_BPK_HEADER);
    if (src_read(b, 0, h, DG_BPK_HEADER))
        return fail(err, errlen, DG_EIO, "burnpack: cannot read the header");
    uint32_t magic = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                     (uint32_t)h[3] << 24;
    if (magic != DG_BPK_MAGIC)
        return fail(err, errlen, DG_ECORRUPT, "burnpack: bad magic %02x %02x %02x %02x "
                    "(expected \"NRUB\"; HINT: not a burnpack file)", h[0], h[1], h[2], h[3]);
    b->version = (unsigned)h[4] | (unsigned)h[5] << 8;
    if (b->version > DG_BPK_VERSION)
        return fail(err, errlen, DG_EVERSION, "burnpack: format version %u > supported %d "
                    "(HINT: written by a newer Burn; re-export with burn-store 0.21)",
                    b->version, DG_BPK_VERSION);
    uint32_t m = (uint32_t)h[6] | (uint32_t)h[7] << 8 | (uint32_t)h[8] << 16 |
                 (uint32_t)h[9] << 24;
    if (m > DG_BPK_MAX_META)
        return fail(err, errlen, DG_ECORRUPT, "burnpack: bad metadata length %u (limit %llu "
                    "bytes)", m, (unsigned long long)DG_BPK_MAX_META);
    if ((uint64_t)DG_BPK_HEADER + m > b->size)
        return fail(err, errlen, DG_ECORRUPT, "burnpack: bad metadata length %u or file "
                    "truncated: the metadata would end at byte %llu, the file has %llu", m,
                    (unsigned long long)DG_BPK_HEADER + m, (unsigned long long)b->size);
    b->meta_len = m;
    b->meta = dg_try_malloc(m ? m : 1);
    if (!b->meta) return fail(err, errlen, DG_ENOMEM, "burnpack: no memory for %u bytes", m);
    if (src_read(b, DG_BPK_HEADER, b->meta, m))
        return fail(err, errlen, DG_EIO, "burnpack: cannot read the metadata");
    b->data_start = round_up(DG_BPK_HEADER + (uint64_t)m, DG_BPK_ALIGN);
    return bpk_parse(b, err, errlen);
}

int dg_open_regular(const char *path, int *fd_out, uint64_t *size, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return fail(err, errlen, e == ENOENT ? DG_ENOTFOUND : DG_EIO, "%s: %s", path,
                    strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, errlen, DG_EIO, "%s: not a regular file", path);
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    return 0;
}

int dg_bpk_open(const char *path, dg_bpk_t **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = -1;
    uint64_t size = 0;
    int orc = dg_open_regular(path, &fd, &size, err, errlen);
    if (orc) return orc;
    dg_bpk_t *b = dg_calloc(1, sizeof *b);
    b->fd = fd;
    b->size = size;
    char e2[512];
    int rc = bpk_open_common(b, e2, sizeof e2);
    if (rc) {
        fail(err, errlen, rc, "%s: %s", path, e2);
        dg_bpk_close(b);
        return rc;
    }
    *out = b;
    return 0;
}

int dg_bpk_open_mem(const void *data, size_t n, dg_bpk_t **out, char *err, size_t errlen) {
    *out = NULL;
    dg_bpk_t *b = dg_calloc(1, sizeof *b);
    b->fd = -1;
    b->mem = data;
    b->size = n;
    int rc = bpk_open_common(b, err, errlen);
    if (rc) {
        dg_bpk_close(b);
        return rc;
    }
    *out = b;
    return 0;
}

void dg_bpk_close(dg_bpk_t *b) {
    if (!b) return;
    if (b->fd >= 0) close(b->fd);
    dg_free(b->meta);
    dg_cbor_doc_free(&b->doc);
    dg_free(b->t);
    dg_free(b->kind);
    dg_free(b->dtype_off);
    dg_cbor_buf_free(&b->dtypes);
    dg_free(b->mk);
    dg_free(b->mv);
    dg_free(b);
}

unsigned dg_bpk_version(const dg_bpk_t *b) { return b->version; }
uint64_t dg_bpk_file_size(const dg_bpk_t *b) { return b->size; }
uint64_t dg_bpk_data_start(const dg_bpk_t *b) { return b->data_start; }
const uint8_t *dg_bpk_metadata_cbor(const dg_bpk_t *b, size_t *n) {
    *n = b->meta_len;
    return b->meta;
}
int dg_bpk_n_tensors(const dg_bpk_t *b) { return b->n; }
const dg_bpk_tensor *dg_bpk_tensor_at(const dg_bpk_t *b, int i) {
    DG_ASSERT(i >= 0 && i < b->n);
    return &b->t[i];
}
int dg_bpk_find(const dg_bpk_t *b, const char *name) {
    for (int i = 0; i < b->n; i++)
        if (!strcmp(b->t[i].name, name)) return i;
    return -1;
}
int dg_bpk_n_meta(const dg_bpk_t *b) { return b->n_meta; }
bool dg_bpk_has_metadata(const dg_bpk_t *b) { return b->has_meta; }
const char *dg_bpk_meta_key(const dg_bpk_t *b, int i) { return b->mk[i]; }
const char *dg_bpk_meta_value(const dg_bpk_t *b, int i) { return b->mv[i]; }
const char *dg_bpk_meta_get(const dg_bpk_t *b, const char *key) {
    for (int i = 0; i < b->n_meta; i++)
        if (!strcmp(b->mk[i], key)) return b->mv[i];
    return NULL;
}

int dg_bpk_read_raw(dg_bpk_t *b, int i, uint64_t off, void *dst, size_t n, char *err,
                    size_t errlen) {
    DG_ASSERT(i >= 0 && i < b->n);
    const dg_bpk_tensor *t = &b->t[i];
    if (off > t->nbytes || n > t->nbytes - off)
        return fail(err, errlen, DG_EINVAL, "burnpack: read of [%llu, +%zu) outside tensor '%s'",
                    (unsigned long long)off, n, t->name);
    int rc = src_read(b, t->offset + off, dst, n);
    if (rc) return fail(err, errlen, rc, "burnpack: cannot read tensor '%s'", t->name);
    return 0;
}

int dg_bpk_read_f32(dg_bpk_t *b, int i, float *dst, int64_t numel, char *err, size_t errlen) {
    DG_ASSERT(i >= 0 && i < b->n);
    const dg_bpk_tensor *t = &b->t[i];
    int kind = b->kind[i];
    if (kind == K_OTHER)
        return fail(err, errlen, DG_ENOTSUP, "burnpack: tensor '%s' has dtype %s, which does "
                    "not convert to f32", t->name, t->dtype);
    if (numel != t->numel)
        return fail(err, errlen, DG_ESHAPE, "burnpack: tensor '%s' has %lld elements, caller "
                    "expects %lld", t->name, (long long)t->numel, (long long)numel);
    if (kind == K_F32) return dg_bpk_read_raw(b, i, 0, dst, t->nbytes, err, errlen);
    uint8_t *buf = dg_malloc(CHUNK);
    int es = t->elem_size;
    int64_t done = 0;
    int rc = 0;
    while (done < numel) {
        int64_t k = (int64_t)(CHUNK / (unsigned)es);
        if (k > numel - done) k = numel - done;
        if ((rc = dg_bpk_read_raw(b, i, (uint64_t)done * (uint64_t)es, buf, (size_t)(k * es),
                                  err, errlen)))
            break;
        for (int64_t j = 0; j < k; j++) {
            const uint8_t *p = buf + j * es;
            float v;
            if (kind == K_F64) {
                double d;
                memcpy(&d, p, 8);
                v = (float)d;
            } else {
                uint16_t h = (uint16_t)(p[0] | p[1] << 8);
                v = kind == K_F16 ? dg_f16_to_f32(h) : dg_bf16_to_f32(h);
            }
            dst[done + j] = v;
        }
        done += k;
    }
    dg_free(buf);
    return rc;
}

// ------------------------------------------------------------------------------------------
// writer

typedef struct {
    const dg_bpk_entry *e;
    int64_t             numel;
    uint64_t            start, end;
} plan_row;

static int cmp_row_name(const void *a, const void *b) {
    return strcmp((*(const plan_row *const *)a)->e->name, (*(const plan_row *const *)b)->e->name);
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(const dg_bpk_kv *const *)a)->key, (*(const dg_bpk_kv *const *)b)->key);
}

/* Fills rows (n) with offsets; encodes the CBOR. */
static int bpk_layout(const dg_bpk_entry *e, int n, const dg_bpk_opts *o, plan_row *rows,
                      dg_cbor_buf *cb, uint64_t *total, char *err, size_t errlen) {
    int es = dtype_size(o->dtype);
    if (!es) return fail(err, errlen, DG_EINVAL, "burnpack: writer dtype must be F32, F16 or "
                         "BF16");
    if (n < 0 || n > DG_BPK_MAX_TENSORS)
        return fail(err, errlen, DG_EINVAL, "burnpack: %d tensors (limit %d)", n,
                    DG_BPK_MAX_TENSORS);
    uint64_t end = 0;
    for (int i = 0; i < n; i++) {
        const dg_bpk_entry *x = &e[i];
        rows[i].e = x;
        if (!x->name || !x->name[0] || !dg_utf8_valid(x->name, strlen(x->name)))
            return fail(err, errlen, DG_EINVAL, "burnpack: entry %d has an empty or non-UTF-8 "
                        "name", i);
        if (x->ndim < 0 || x->ndim > DG_BPK_MAX_DIMS)
            return fail(err, errlen, DG_EINVAL, "burnpack: tensor '%s': ndim %d", x->name,
                        x->ndim);
        int64_t numel = 1;
        for (int j = 0; j < x->ndim; j++)
            if (x->shape[j] < 0 || __builtin_mul_overflow(numel, x->shape[j], &numel))
                return fail(err, errlen, DG_EINVAL, "burnpack: tensor '%s': bad shape",
                            x->name);
        rows[i].numel = numel;
        uint64_t nbytes;
        if (x->f32) {
            if (__builtin_mul_overflow((uint64_t)numel, (uint64_t)es, &nbytes))
                return fail(err, errlen, DG_EINVAL, "burnpack: tensor '%s' too large", x->name);
        } else {
            if (!x->src || x->src_index < 0 || x->src_index >= x->src->n)
                return fail(err, errlen, DG_EINVAL, "burnpack: tensor '%s' has no data",
                            x->name);
            const dg_bpk_tensor *st = &x->src->t[x->src_index];
            if (st->ndim != x->ndim || memcmp(st->shape, x->shape, sizeof(int64_t) *
                                              (size_t)x->ndim))
                return fail(err, errlen, DG_EINVAL, "burnpack: tensor '%s': shape differs from "
                            "its source", x->name);
            nbytes = st->nbytes;
        }
        rows[i].start = i == 0 ? 0 : round_up(end, DG_BPK_ALIGN);
        rows[i].end = rows[i].start + nbytes;
        end = rows[i].end;
    }
    const plan_row **byname = dg_malloc(((size_t)n + 1) * sizeof *byname);
    for (int i = 0; i < n; i++) byname[i] = &rows[i];
    qsort(byname, (size_t)n, sizeof *byname, cmp_row_name);
    for (int i = 1; i < n; i++)
        if (!strcmp(byname[i]->e->name, byname[i - 1]->e->name)) {
            fail(err, errlen, DG_EINVAL, "burnpack: duplicate tensor name '%s'",
                 byname[i]->e->name);
            dg_free(byname);
            return DG_EINVAL;
        }
    const dg_bpk_kv **kv = dg_malloc(((size_t)o->n_meta + 1) * sizeof *kv);
    for (int i = 0; i < o->n_meta; i++) {
        kv[i] = &o->meta[i];
        if (!kv[i]->key || !kv[i]->value ||
            !dg_utf8_valid(kv[i]->key, strlen(kv[i]->key)) ||
            !dg_utf8_valid(kv[i]->value, strlen(kv[i]->value))) {
            dg_free(byname);
            dg_free(kv);
            return fail(err, errlen, DG_EINVAL, "burnpack: metadata entry %d is not UTF-8 text",
                        i);
        }
    }
    qsort(kv, (size_t)o->n_meta, sizeof *kv, cmp_kv);
    for (int i = 1; i < o->n_meta; i++)
        if (!strcmp(kv[i]->key, kv[i - 1]->key)) {
            fail(err, errlen, DG_EINVAL, "burnpack: duplicate metadata key '%s'", kv[i]->key);
            dg_free(byname);
            dg_free(kv);
            return DG_EINVAL;
        }
    bool with_meta = o->n_meta > 0 || o->always_meta;
    dg_cbor_put_map(cb, with_meta ? 2 : 1);
    dg_cbor_put_str(cb, "tensors");
    dg_cbor_put_map(cb, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        const plan_row *r = byname[i];
        dg_cbor_put_str(cb, r->e->name);
        dg_cbor_put_map(cb, r->e->has_param_id ? 4 : 3);
        dg_cbor_put_str(cb, "dtype");
        if (r->e->f32) dg_cbor_put_str(cb, dg_bpk_dtype_name(o->dtype));
        else {
            const dg_bpk_tensor *st = &r->e->src->t[r->e->src_index];
            dg_cbor_put_raw(cb, st->dtype_cbor, st->dtype_cbor_len);
        }
        dg_cbor_put_str(cb, "shape");
        dg_cbor_put_array(cb, (uint64_t)r->e->ndim);
        for (int j = 0; j < r->e->ndim; j++) dg_cbor_put_uint(cb, (uint64_t)r->e->shape[j]);
        dg_cbor_put_str(cb, "data_offsets");
        dg_cbor_put_array(cb, 2);
        dg_cbor_put_uint(cb, r->start);
        dg_cbor_put_uint(cb, r->end);
        if (r->e->has_param_id) {
            dg_cbor_put_str(cb, "param_id");
            dg_cbor_put_uint(cb, r->e->param_id);
        }
    }
    if (with_meta) {
        dg_cbor_put_str(cb, "metadata");
        dg_cbor_put_map(cb, (uint64_t)o->n_meta);
        for (int i = 0; i < o->n_meta; i++) {
            dg_cbor_put_str(cb, kv[i]->key);
            dg_cbor_put_str(cb, kv[i]->value);
        }
    }
    dg_free(byname);
    dg_free(kv);
    if (cb->len > DG_BPK_MAX_META)
        return fail(err, errlen, DG_EINVAL, "burnpack: metadata of %zu bytes exceeds 100 MiB",
                    cb->len);
    *total = round_up(DG_BPK_HEADER + cb->len, DG_BPK_ALIGN) + end;
    return 0;
}

int dg_bpk_plan(const dg_bpk_entry *e, int n, const dg_bpk_opts *o, dg_cbor_buf *meta_out,
                uint64_t *total_out, char *err, size_t errlen) {
    plan_row *rows = dg_calloc((size_t)(n > 0 ? n : 0) + 1, sizeof *rows);
    memset(meta_out, 0, sizeof *meta_out);
    int rc = bpk_layout(e, n, o, rows, meta_out, total_out, err, errlen);
    if (rc) dg_cbor_buf_free(meta_out);
    dg_free(rows);
    return rc;
}

static void put_u16le(uint8_t *p, unsigned v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int dg_bpk_write(const char *path, const dg_bpk_entry *e, int n, const dg_bpk_opts *o,
                 uint64_t *bytes_out, char sha_hex[65], char *err, size_t errlen) {
    plan_row *rows = dg_calloc((size_t)(n > 0 ? n : 0) + 1, sizeof *rows);
    dg_cbor_buf cb = {0};
    uint64_t total = 0;
    int rc = bpk_layout(e, n, o, rows, &cb, &total, err, errlen);
    if (rc) goto fail_layout;
    dg_afile f;
    if ((rc = dg_afile_open(&f, path, err, errlen))) goto fail_layout;
    uint8_t h[DG_BPK_HEADER];
    put_u32le(h, DG_BPK_MAGIC);
    put_u16le(h + 4, o->version ? o->version : DG_BPK_VERSION);
    put_u32le(h + 6, (uint32_t)cb.len);
    dg_afile_write(&f, h, sizeof h);
    dg_afile_write(&f, cb.buf, cb.len);
    uint64_t D = round_up(DG_BPK_HEADER + cb.len, DG_BPK_ALIGN);
    dg_afile_zero(&f, D - f.n_bytes);
    uint8_t *chunk = dg_malloc(CHUNK);
    for (int i = 0; i < n && rc == 0; i++) {
        const plan_row *r = &rows[i];
        dg_afile_zero(&f, D + r->start - f.n_bytes);
        if (r->e->f32) {
            const float *src = r->e->f32;
            int es = dtype_size(o->dtype);
            int64_t per = (int64_t)(CHUNK / (unsigned)es);
            for (int64_t j = 0; j < r->numel; j += per) {
                int64_t k = r->numel - j < per ? r->numel - j : per;
                for (int64_t q = 0; q < k; q++) {
                    float v = src[j + q];
                    if (o->dtype == DG_DTYPE_F32) memcpy(chunk + 4 * q, &v, 4);
                    else put_u16le(chunk + 2 * q, o->dtype == DG_DTYPE_F16 ? dg_f32_to_f16(v)
                                                                          : dg_f32_to_bf16(v));
                }
                dg_afile_write(&f, chunk, (size_t)(k * es));
            }
        } else {
            uint64_t nb = r->end - r->start;
            for (uint64_t j = 0; j < nb && rc == 0; j += CHUNK) {
                size_t k = nb - j < CHUNK ? (size_t)(nb - j) : CHUNK;
                rc = dg_bpk_read_raw(r->e->src, r->e->src_index, j, chunk, k, err, errlen);
                if (!rc) dg_afile_write(&f, chunk, k);
            }
        }
    }
    dg_free(chunk);
    if (rc) {
        dg_afile_abort(&f);
        goto fail_layout;
    }
    DG_ASSERT(f.err_no || f.n_bytes == total);
    if ((rc = dg_afile_commit(&f, sha_hex, err, errlen))) goto fail_layout;
    if (bytes_out) *bytes_out = total;
fail_layout:
    dg_cbor_buf_free(&cb);
    dg_free(rows);
    return rc;
}
