/* proto/safetensors.c -- safetensors reader and writer (see safetensors.h).
 *
 * The header is parsed with jansson (duplicate keys rejected); tensor bytes are read on demand
 * with pread or from the borrowed buffer. The writer streams the data in chunks.
 * Thread affinity: one thread per reader / writer. */
#include "safetensors.h"
#include "dg.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
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

enum { K_OTHER = 0, K_F32, K_F16, K_BF16, K_F64 };
static const struct { const char *name; int size, id, kind; } st_dtypes[] = {
    {"F64", 8, -1, K_F64},  {"F32", 4, DG_DTYPE_F32, K_F32}, {"F16", 2, DG_DTYPE_F16, K_F16},
    {"BF16", 2, DG_DTYPE_BF16, K_BF16}, {"I64", 8, -1, K_OTHER}, {"I32", 4, -1, K_OTHER},
    {"I16", 2, -1, K_OTHER}, {"I8", 1, -1, K_OTHER}, {"U64", 8, -1, K_OTHER},
    {"U32", 4, -1, K_OTHER}, {"U16", 2, -1, K_OTHER}, {"U8", 1, -1, K_OTHER},
    {"BOOL", 1, -1, K_OTHER}, {"F8_E5M2", 1, -1, K_OTHER}, {"F8_E4M3", 1, -1, K_OTHER},
};

struct dg_st_s {
    int            fd;
    const uint8_t *mem;
    uint64_t       size, data_start;
    json_t        *root;         /* owns the name and metadata strings */
    int            n;
    dg_st_tensor  *t;
    int           *kind;
    int            n_meta;
    const char   **mk, **mv;
};

static int st_read(dg_st_t *s, uint64_t off, void *dst, size_t n) {
    if (off > s->size || n > s->size - off) return DG_ECORRUPT;
    if (s->mem) { memcpy(dst, s->mem + off, n); return 0; }
    uint8_t *q = dst;
    while (n) {
        ssize_t r = pread(s->fd, q, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return DG_EIO;
        q += r; off += (uint64_t)r; n -= (size_t)r;
    }
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const dg_st_tensor *)a)->name, ((const dg_st_tensor *)b)->name);
}

static int cmp_start(const void *a, const void *b, void *ctx) {
    const dg_st_tensor *t = ctx;
    const dg_st_tensor *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int st_parse(dg_st_t *s, char *err, size_t errlen) {
    if (s->size < 8)
        return fail(err, errlen, DG_ECORRUPT, "safetensors: file truncated: %llu bytes, the "
                    "header length alone needs 8", (unsigned long long)s->size);
    uint8_t h8[8];
    if (st_read(s, 0, h8, 8)) return fail(err, errlen, DG_EIO, "safetensors: cannot read");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | h8[i];
    if (n > DG_ST_MAX_HEADER || n > s->size - 8 || n < 2)
        return fail(err, errlen, DG_ECORRUPT, "safetensors: header length %llu out of bounds "
                    "(file %llu bytes, limit %llu; HINT: not a safetensors file, or truncated)",
                    (unsigned long long)n, (unsigned long long)s->size,
                    (unsigned long long)DG_ST_MAX_HEADER);
    char *hdr = dg_try_malloc((size_t)n + 1);
    if (!hdr) return fail(err, errlen, DG_ENOMEM, "safetensors: no memory for the header");
    if (st_read(s, 8, hdr, (size_t)n)) {
        dg_free(hdr);
        return fail(err, errlen, DG_EIO, "safetensors: cannot read the header");
    }
    s->data_start = 8 + n;
    uint64_t data_len = s->size - s->data_start;
    if (hdr[0] != '{') {
        dg_free(hdr);
        return fail(err, errlen, DG_ECORRUPT, "safetensors: header does not start with '{'");
    }
    json_error_t je;
    s->root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    dg_free(hdr);
    if (!s->root || !json_is_object(s->root))
        return fail(err, errlen, DG_ECORRUPT, "safetensors: header JSON: %s",
                    s->root ? "not an object" : je.text);
    size_t cnt = json_object_size(s->root);
    s->t = dg_calloc(cnt + 1, sizeof(dg_st_tensor));
    s->kind = dg_calloc(cnt + 1, sizeof(int));
    const char *key;
    json_t *val;
    json_object_foreach(s->root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val))
                return fail(err, errlen, DG_ECORRUPT, "safetensors: __metadata__ is not an "
                            "object");
            size_t nm = json_object_size(val);
            s->mk = dg_calloc(nm + 1, sizeof(char *));
            s->mv = dg_calloc(nm + 1, sizeof(char *));
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv))
                    return fail(err, errlen, DG_ECORRUPT, "safetensors: __metadata__[\"%s\"] is "
                                "not a string", mk);
                s->mk[s->n_meta] = mk;
                s->mv[s->n_meta++] = json_string_value(mv);
            }
            continue;
        }
        dg_st_tensor *t = &s->t[s->n];
        t->name = key;
        if (!key[0]) return fail(err, errlen, DG_ECORRUPT, "safetensors: empty tensor name");
        json_t *dt = json_object_get(val, "dtype"), *sh = json_object_get(val, "shape");
        json_t *of = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(dt) || !json_is_array(sh) ||
            !json_is_array(of) || json_array_size(of) != 2)
            return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s' needs dtype (string),"
                        " shape (array) and data_offsets ([begin, end])", key);
        int kind = -1;
        for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
            if (!strcmp(json_string_value(dt), st_dtypes[i].name)) {
                snprintf(t->dtype, sizeof t->dtype, "%s", st_dtypes[i].name);
                t->elem_size = st_dtypes[i].size;
                t->dtype_id = st_dtypes[i].id;
                kind = st_dtypes[i].kind;
            }
        if (kind < 0)
            return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s': unknown dtype '%s'",
                        key, json_string_value(dt));
        s->kind[s->n] = kind;
        if (json_array_size(sh) > DG_BPK_MAX_DIMS)
            return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s': more than %d dims",
                        key, DG_BPK_MAX_DIMS);
        t->ndim = (int)json_array_size(sh);
        t->numel = 1;
        bool ovf = false;
        for (int j = 0; j < t->ndim; j++) {
            json_t *d = json_array_get(sh, (size_t)j);
            if (!json_is_integer(d) || json_integer_value(d) < 0)
                return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s': shape[%d] is "
                            "not a non-negative integer", key, j);
            t->shape[j] = json_integer_value(d);
            ovf |= __builtin_mul_overflow(t->numel, t->shape[j], &t->numel);
        }
        json_t *o0 = json_array_get(of, 0), *o1 = json_array_get(of, 1);
        if (!json_is_integer(o0) || !json_is_integer(o1) || json_integer_value(o0) < 0 ||
            json_integer_value(o1) < json_integer_value(o0))
            return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s': data_offsets must "
                        "be integers 0 <= begin <= end", key);
        t->start = (uint64_t)json_integer_value(o0);
        t->end = (uint64_t)json_integer_value(o1);
        t->nbytes = t->end - t->start;
        if (t->end > data_len)
            return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s' out of bounds: "
                        "data_offsets end %llu > %llu bytes of data (truncated file?)", key,
                        (unsigned long long)t->end, (unsigned long long)data_len);
        uint64_t want;
        if (ovf || __builtin_mul_overflow((uint64_t)t->numel, (uint64_t)t->elem_size, &want) ||
            want != t->nbytes)
            return fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s': %llu bytes for %lld "
                        "%s elements", key, (unsigned long long)t->nbytes, (long long)t->numel,
                        t->dtype);
        t->offset = s->data_start + t->start;
        s->n++;
    }
    /* the data must be exactly covered: no overlap, no gap, nothing after the last tensor */
    int *ix = dg_malloc(((size_t)s->n + 1) * sizeof(int));
    for (int i = 0; i < s->n; i++) ix[i] = i;
    qsort_r(ix, (size_t)s->n, sizeof(int), cmp_start, s->t);
    uint64_t at = 0;
    int rc = 0;
    for (int i = 0; i < s->n && !rc; i++) {
        const dg_st_tensor *t = &s->t[ix[i]];
        if (t->start < at)
            rc = fail(err, errlen, DG_ECORRUPT, "safetensors: tensor '%s' overlaps '%s'",
                      t->name, s->t[ix[i - 1]].name);
        else if (t->start > at)
            rc = fail(err, errlen, DG_ECORRUPT, "safetensors: gap of %llu bytes before tensor "
                      "'%s'", (unsigned long long)(t->start - at), t->name);
        at = t->end;
    }
    dg_free(ix);
    if (rc) return rc;
    if (at != data_len)
        return fail(err, errlen, DG_ECORRUPT, "safetensors: tensors cover %llu bytes but the "
                    "data section has %llu", (unsigned long long)at,
                    (unsigned long long)data_len);
    qsort(s->t, (size_t)s->n, sizeof(dg_st_tensor), cmp_name);
    /* kinds follow the sort: recompute from the dtype names */
    for (int i = 0; i < s->n; i++)
        for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
            if (!strcmp(s->t[i].dtype, st_dtypes[k].name)) s->kind[i] = st_dtypes[k].kind;
    return 0;
}

int dg_st_open(const char *path, dg_st_t **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = -1;
    uint64_t size = 0;
    int orc = dg_open_regular(path, &fd, &size, err, errlen);
    if (orc) return orc;
    dg_st_t *s = dg_calloc(1, sizeof *s);
    s->fd = fd;
    s->size = size;
    char e2[512];
    int rc = st_parse(s, e2, sizeof e2);
    if (rc) {
        fail(err, errlen, rc, "%s: %s", path, e2);
        dg_st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int dg_st_open_mem(const void *data, size_t n, dg_st_t **out, char *err, size_t errlen) {
    *out = NULL;
    dg_st_t *s = dg_calloc(1, sizeof *s);
    s->fd = -1;
    s->mem = data;
    s->size = n;
    int rc = st_parse(s, err, errlen);
    if (rc) {
        dg_st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void dg_st_close(dg_st_t *s) {
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    if (s->root) json_decref(s->root);
    dg_free(s->t);
    dg_free(s->kind);
    dg_free(s->mk);
    dg_free(s->mv);
    dg_free(s);
}

int dg_st_n_tensors(const dg_st_t *s) { return s->n; }
const dg_st_tensor *dg_st_tensor_at(const dg_st_t *s, int i) {
    DG_ASSERT(i >= 0 && i < s->n);
    return &s->t[i];
}
int dg_st_find(const dg_st_t *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name)) return i;
    return -1;
}
int dg_st_n_meta(const dg_st_t *s) { return s->n_meta; }
const char *dg_st_meta_key(const dg_st_t *s, int i) { return s->mk[i]; }
const char *dg_st_meta_value(const dg_st_t *s, int i) { return s->mv[i]; }
const char *dg_st_meta_get(const dg_st_t *s, const char *key) {
    for (int i = 0; i < s->n_meta; i++)
        if (!strcmp(s->mk[i], key)) return s->mv[i];
    return NULL;
}

int dg_st_read_f32(dg_st_t *s, int i, float *dst, int64_t numel, char *err, size_t errlen) {
    DG_ASSERT(i >= 0 && i < s->n);
    const dg_st_tensor *t = &s->t[i];
    int kind = s->kind[i];
    if (kind == K_OTHER)
        return fail(err, errlen, DG_ENOTSUP, "safetensors: tensor '%s' has dtype %s, which does "
                    "not convert to f32", t->name, t->dtype);
    if (numel != t->numel)
        return fail(err, errlen, DG_ESHAPE, "safetensors: tensor '%s' has %lld elements, caller "
                    "expects %lld", t->name, (long long)t->numel, (long long)numel);
    if (kind == K_F32) {
        if (st_read(s, t->offset, dst, t->nbytes))
            return fail(err, errlen, DG_EIO, "safetensors: cannot read tensor '%s'", t->name);
        return 0;
    }
    uint8_t *buf = dg_malloc(CHUNK);
    int es = t->elem_size, rc = 0;
    for (int64_t done = 0; done < numel;) {
        int64_t k = (int64_t)(CHUNK / (unsigned)es);
        if (k > numel - done) k = numel - done;
        if (st_read(s, t->offset + (uint64_t)done * (uint64_t)es, buf, (size_t)(k * es))) {
            rc = fail(err, errlen, DG_EIO, "safetensors: cannot read tensor '%s'", t->name);
            break;
        }
        for (int64_t j = 0; j < k; j++) {
            const uint8_t *p = buf + j * es;
            if (kind == K_F64) {
                double d;
                memcpy(&d, p, 8);
                dst[done + j] = (float)d;
            } else {
                uint16_t h = (uint16_t)(p[0] | p[1] << 8);
                dst[done + j] = kind == K_F16 ? dg_f16_to_f32(h) : dg_bf16_to_f32(h);
            }
        }
        done += k;
    }
    dg_free(buf);
    return rc;
}

// ------------------------------------------------------------------------------------------
// writer

static int cmp_entry(const void *a, const void *b) {
    return strcmp((*(const dg_bpk_entry *const *)a)->name, (*(const dg_bpk_entry *const *)b)->name);
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(const dg_bpk_kv *const *)a)->key, (*(const dg_bpk_kv *const *)b)->key);
}

int dg_st_write(const char *path, const dg_bpk_entry *e, int n, dg_dtype dtype,
                const dg_bpk_kv *meta, int n_meta, uint64_t *bytes_out, char sha_hex[65],
                char *err, size_t errlen) {
    const char *dname = dg_bpk_dtype_name(dtype);
    if (!dname) return fail(err, errlen, DG_EINVAL, "safetensors: dtype must be F32, F16 or BF16");
    int es = dtype == DG_DTYPE_F32 ? 4 : 2;
    const dg_bpk_entry **ord = dg_malloc(((size_t)(n > 0 ? n : 0) + 1) * sizeof *ord);
    const dg_bpk_kv **kv = dg_malloc(((size_t)(n_meta > 0 ? n_meta : 0) + 1) * sizeof *kv);
    int64_t *numel = dg_calloc((size_t)(n > 0 ? n : 0) + 1, sizeof(int64_t));
    json_t *root = json_object();
    int rc = 0;
    for (int i = 0; i < n; i++) ord[i] = &e[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_entry);
    for (int i = 0; i < n_meta; i++) kv[i] = &meta[i];
    qsort(kv, (size_t)n_meta, sizeof *kv, cmp_kv);
    if (n_meta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_meta && !rc; i++) {
            json_t *v = json_string(kv[i]->value);
            if (!v || (i > 0 && !strcmp(kv[i]->key, kv[i - 1]->key)) ||
                !strcmp(kv[i]->key, "") ||
                json_object_set_new(m, kv[i]->key, v) != 0)
                rc = fail(err, errlen, DG_EINVAL, "safetensors: metadata '%s' is a duplicate or "
                          "not UTF-8", kv[i]->key);
        }
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t at = 0;
    for (int i = 0; i < n && !rc; i++) {
        const dg_bpk_entry *x = ord[i];
        if (!x->f32 || !x->name || !x->name[0] || !strcmp(x->name, "__metadata__") ||
            x->ndim < 0 || x->ndim > DG_BPK_MAX_DIMS ||
            (i > 0 && !strcmp(x->name, ord[i - 1]->name))) {
            rc = fail(err, errlen, DG_EINVAL, "safetensors: bad or duplicate entry '%s'",
                      x->name ? x->name : "(null)");
            break;
        }
        json_t *t = json_object(), *sh = json_array(), *of = json_array();
        int64_t ne = 1;
        for (int j = 0; j < x->ndim; j++) {
            if (x->shape[j] < 0 || __builtin_mul_overflow(ne, x->shape[j], &ne)) rc = DG_EINVAL;
            json_array_append_new(sh, json_integer(x->shape[j]));
        }
        numel[i] = ne;
        json_array_append_new(of, json_integer((json_int_t)at));
        at += (uint64_t)ne * (uint64_t)es;
        json_array_append_new(of, json_integer((json_int_t)at));
        json_object_set_new(t, "dtype", json_string(dname));
        json_object_set_new(t, "shape", sh);
        json_object_set_new(t, "data_offsets", of);
        if (rc || json_object_set_new(root, x->name, t) != 0)
            rc = fail(err, errlen, DG_EINVAL, "safetensors: tensor '%s': bad shape or name",
                      x->name);
    }
    /* dumped into our own buffer: whoever installed jansson's allocator, we free with dg_free */
    size_t hl = rc ? 0 : json_dumpb(root, NULL, 0, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *hdr = NULL;
    if (!rc && hl > 0) {
        hdr = dg_malloc(hl);
        if (json_dumpb(root, hdr, hl, JSON_COMPACT | JSON_PRESERVE_ORDER) != hl) hl = 0;
    }
    json_decref(root);
    if (!rc && hl == 0) rc = fail(err, errlen, DG_EINVAL, "safetensors: cannot encode the header");
    if (rc) goto done_hdr;
    size_t padded = (hl + 7) / 8 * 8;
    dg_afile f;
    if ((rc = dg_afile_open(&f, path, err, errlen))) goto done_hdr;
    uint8_t h8[8];
    for (int i = 0; i < 8; i++) h8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    dg_afile_write(&f, h8, 8);
    dg_afile_write(&f, hdr, hl);
    dg_afile_write(&f, "        ", padded - hl);
    uint8_t *chunk = dg_malloc(CHUNK);
    for (int i = 0; i < n; i++) {
        const float *src = ord[i]->f32;
        int64_t per = (int64_t)(CHUNK / (unsigned)es);
        for (int64_t j = 0; j < numel[i]; j += per) {
            int64_t k = numel[i] - j < per ? numel[i] - j : per;
            for (int64_t q = 0; q < k; q++) {
                float v = src[j + q];
                if (es == 4) memcpy(chunk + 4 * q, &v, 4);
                else {
                    uint16_t h = dtype == DG_DTYPE_F16 ? dg_f32_to_f16(v) : dg_f32_to_bf16(v);
                    chunk[2 * q] = (uint8_t)h;
                    chunk[2 * q + 1] = (uint8_t)(h >> 8);
                }
            }
            dg_afile_write(&f, chunk, (size_t)(k * es));
        }
    }
    dg_free(chunk);
    uint64_t total = f.n_bytes;
    if ((rc = dg_afile_commit(&f, sha_hex, err, errlen))) goto done_hdr;
    if (bytes_out) *bytes_out = total;
done_hdr:
    dg_free(hdr);
    dg_free(numel);
    dg_free(kv);
    dg_free(ord);
    return rc;
}
