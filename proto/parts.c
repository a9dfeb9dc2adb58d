/* proto/parts.c -- multipart burnpack bundles: split, manifest JSON, verified reassembly
 * (BURNPACK.md §2).
 *
 * The manifest is written by hand in serde_json's pretty format so that it matches
 * burn_dragon's output byte for byte, and read with jansson.
 * Not here: HTTP. Thread affinity: any thread, one per call / handle. */
#include "parts.h"
#include "dg.h"

#include <errno.h>
#include <jansson.h>
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

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Directory part with trailing slash ("" for a bare name); dg_malloc'd. */
static char *dir_prefix(const char *p) {
    const char *b = base_name(p);
    size_t n = (size_t)(b - p);
    char *d = dg_malloc(n + 1);
    memcpy(d, p, n);
    d[n] = 0;
    return d;
}

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...) {
    char tmp[512];
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    char *s = dg_malloc((size_t)(n > 0 ? n : 0) + 1);
    if ((size_t)n < sizeof tmp) memcpy(s, tmp, (size_t)n + 1);
    else vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

void dg_parts_manifest_free(dg_parts_manifest *m) {
    if (!m) return;
    for (int i = 0; i < m->n_parts; i++) dg_free(m->parts[i].path);
    dg_free(m->parts);
    dg_free(m->source_file);
    memset(m, 0, sizeof *m);
}

// ------------------------------------------------------------------------------------------
// manifest text

typedef struct { char *s; size_t len, cap; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1) cap *= 2;
        b->s = dg_realloc(b->s, cap);
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void sb_fmt(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_add(b, tmp, (size_t)n);
}

/* A JSON string as serde_json writes it: escapes ", \, and control characters
 * (\b \f \n \r \t, else \u00xx lowercase); everything else verbatim UTF-8. */
static void sb_json_str(sbuf *b, const char *s) {
    sb_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '"':  sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\b': sb_add(b, "\\b", 2); break;
        case '\f': sb_add(b, "\\f", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        default:
            if (c < 0x20) sb_fmt(b, "\\u%04x", c);
            else sb_add(b, (const char *)&c, 1);
        }
    }
    sb_add(b, "\"", 1);
}

char *dg_parts_manifest_to_json(const dg_parts_manifest *m) {
    sbuf b = {0};
    sb_fmt(&b, "{\n  \"version\": %u,\n  \"source_file\": ", m->version);
    sb_json_str(&b, m->source_file ? m->source_file : "");
    sb_fmt(&b, ",\n  \"source_modified_unix_ms\": %llu,\n  \"total_bytes\": %llu,\n"
               "  \"max_part_bytes\": %llu,\n  \"parts\": ",
           (unsigned long long)m->source_modified_unix_ms, (unsigned long long)m->total_bytes,
           (unsigned long long)m->max_part_bytes);
    if (m->n_parts == 0) sb_add(&b, "[]", 2);
    else {
        sb_add(&b, "[\n", 2);
        for (int i = 0; i < m->n_parts; i++) {
            const dg_part_entry *p = &m->parts[i];
            sb_add(&b, "    {\n      \"path\": ", 20);
            sb_json_str(&b, p->path);
            sb_fmt(&b, ",\n      \"bytes\": %llu,\n      \"sha256\": ",
                   (unsigned long long)p->bytes);
            sb_json_str(&b, p->sha256);
            sb_fmt(&b, ",\n      \"tensors\": %lld\n    }%s\n", (long long)p->tensors,
                   i + 1 < m->n_parts ? "," : "");
        }
        sb_add(&b, "  ]", 3);
    }
    sb_add(&b, "\n}", 2);
    return b.s;
}

static int get_u64(json_t *o, const char *key, uint64_t def, uint64_t *out, const char *where,
                   char *err, size_t errlen) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) { *out = def; return 0; }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(err, errlen, DG_ECORRUPT, "parts manifest: %s\"%s\" must be a non-negative "
                    "integer", where, key);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int dg_parts_manifest_parse(const char *text, size_t n, dg_parts_manifest *out, char *err,
                            size_t errlen) {
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
    if (!root) return fail(err, errlen, DG_ECORRUPT, "parts manifest: line %d column %d: %s",
                           je.line, je.column, je.text);
    int rc = 0;
    uint64_t v = 0;
    if (!json_is_object(root)) {
        rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: not a JSON object");
        goto done;
    }
    if ((rc = get_u64(root, "version", 1, &v, "", err, errlen))) goto done;
    if (v > DG_PARTS_VERSION) {
        rc = fail(err, errlen, DG_EVERSION, "parts manifest: version %llu > supported %d",
                  (unsigned long long)v, DG_PARTS_VERSION);
        goto done;
    }
    out->version = (unsigned)v;
    json_t *sf = json_object_get(root, "source_file");
    if (sf && !json_is_string(sf) && !json_is_null(sf)) {
        rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: \"source_file\" must be a string");
        goto done;
    }
    out->source_file = dg_strdup(sf && json_is_string(sf) ? json_string_value(sf) : "");
    if ((rc = get_u64(root, "source_modified_unix_ms", 0, &out->source_modified_unix_ms, "",
                      err, errlen)) ||
        (rc = get_u64(root, "total_bytes", 0, &out->total_bytes, "", err, errlen)) ||
        (rc = get_u64(root, "max_part_bytes", 0, &out->max_part_bytes, "", err, errlen)))
        goto done;
    json_t *parts = json_object_get(root, "parts");
    if (parts && !json_is_array(parts) && !json_is_null(parts)) {
        rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: \"parts\" must be an array");
        goto done;
    }
    size_t np = json_is_array(parts) ? json_array_size(parts) : 0;
    out->parts = dg_calloc(np + 1, sizeof(dg_part_entry));
    for (size_t i = 0; i < np; i++) {
        json_t *p = json_array_get(parts, i);
        dg_part_entry *e = &out->parts[i];
        char where[48];
        snprintf(where, sizeof where, "parts[%zu]: ", i);
        if (!json_is_object(p)) {
            rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: %snot an object", where);
            goto done;
        }
        json_t *path = json_object_get(p, "path"), *sha = json_object_get(p, "sha256");
        if (!json_is_string(path) || !json_string_length(path)) {
            rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: %s\"path\" is required", where);
            goto done;
        }
        e->path = dg_strdup(json_string_value(path));
        out->n_parts = (int)i + 1;
        if ((rc = get_u64(p, "bytes", 0, &e->bytes, where, err, errlen))) goto done;
        uint64_t t = 0;
        if ((rc = get_u64(p, "tensors", 0, &t, where, err, errlen))) goto done;
        e->tensors = (int64_t)t;
        if (sha && !json_is_null(sha)) {
            if (!json_is_string(sha)) {
                rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: %s\"sha256\" must be a "
                          "string", where);
                goto done;
            }
            /* compared case-insensitively after trimming (§2.2) */
            const char *s = json_string_value(sha);
            while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
            size_t k = 0;
            for (; s[k] && k < 64; k++) {
                char c = s[k];
                e->sha256[k] = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
            }
            e->sha256[k] = 0;
            const char *rest = s + k;
            while (*rest == ' ' || *rest == '\t' || *rest == '\n' || *rest == '\r') rest++;
            bool hex = k == 64 || k == 0;
            for (size_t j = 0; j < k; j++)
                hex &= (e->sha256[j] >= '0' && e->sha256[j] <= '9') ||
                       (e->sha256[j] >= 'a' && e->sha256[j] <= 'f');
            if (!hex || *rest) {
                rc = fail(err, errlen, DG_ECORRUPT, "parts manifest: %s\"sha256\" is not 64 hex "
                          "digits", where);
                goto done;
            }
        }
    }
    out->n_parts = (int)np;
done:
    json_decref(root);
    if (rc) dg_parts_manifest_free(out);
    return rc;
}

// ------------------------------------------------------------------------------------------
// split

/* On-disk order; ties (empty tensors) keep map order, as Rust's stable sort_by_key does. */
static int cmp_start(const void *a, const void *b, void *ctx) {
    dg_bpk_t *bp = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    uint64_t x = dg_bpk_tensor_at(bp, i)->start, y = dg_bpk_tensor_at(bp, j)->start;
    if (x != y) return x < y ? -1 : 1;
    return (i > j) - (i < j);
}

static void entry_from(dg_bpk_entry *e, dg_bpk_t *src, int i) {
    const dg_bpk_tensor *t = dg_bpk_tensor_at(src, i);
    memset(e, 0, sizeof *e);
    e->name = t->name;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof t->shape);
    e->src = src;
    e->src_index = i;
    e->has_param_id = t->has_param_id;
    e->param_id = t->param_id;
}

int dg_parts_write(const char *mono_path, uint64_t max_part_bytes, dg_parts_manifest *out,
                   char *err, size_t errlen) {
    if (out) memset(out, 0, sizeof *out);
    if (max_part_bytes < 1) return fail(err, errlen, DG_EINVAL, "parts: budget must be >= 1");
    dg_bpk_t *src;
    int rc = dg_bpk_open(mono_path, &src, err, errlen);
    if (rc) return rc;
    struct stat st;
    int n = dg_bpk_n_tensors(src);
    dg_parts_manifest m = {0};
    int *order = NULL;
    dg_bpk_entry *e = NULL;
    dg_bpk_kv *kv = NULL;
    char *dir = dir_prefix(mono_path);
    if (n == 0) {
        rc = fail(err, errlen, DG_EINVAL, "parts: %s has no tensors", mono_path);
        goto done;
    }
    if (stat(mono_path, &st) != 0) {
        rc = fail(err, errlen, DG_EIO, "%s: %s", mono_path, strerror(errno));
        goto done;
    }
    order = dg_malloc((size_t)n * sizeof(int));
    e = dg_malloc((size_t)n * sizeof *e);
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof(int), cmp_start, src);
    for (int i = 0; i < n; i++) entry_from(&e[i], src, order[i]);
    int nm = dg_bpk_n_meta(src);
    kv = dg_malloc(((size_t)nm + 1) * sizeof *kv);
    for (int i = 0; i < nm; i++) {
        kv[i].key = dg_bpk_meta_key(src, i);
        kv[i].value = dg_bpk_meta_value(src, i);
    }
    /* the header version is copied (a version-0 source is written as 1: 0 means "current"
     * to the writer, and both read the same) */
    dg_bpk_opts o = {.dtype = DG_DTYPE_F32, .meta = kv, .n_meta = nm, .always_meta = true,
                     .version = dg_bpk_version(src)};
    m.version = DG_PARTS_VERSION;
    m.source_file = dg_strdup(base_name(mono_path));
    m.source_modified_unix_ms = (uint64_t)st.st_mtim.tv_sec * 1000u +
                                (uint64_t)st.st_mtim.tv_nsec / 1000000u;
    m.total_bytes = dg_bpk_file_size(src);
    m.max_part_bytes = max_part_bytes;
    m.parts = dg_calloc((size_t)n + 1, sizeof(dg_part_entry));
    const char *base = base_name(mono_path);
    for (int g0 = 0; g0 < n;) {
        /* grow the group while the exact part size fits the budget */
        int g1 = g0 + 1;
        while (g1 < n) {
            dg_cbor_buf cb;
            uint64_t total;
            if ((rc = dg_bpk_plan(e + g0, g1 + 1 - g0, &o, &cb, &total, err, errlen)))
                goto done;
            dg_cbor_buf_free(&cb);
            if (total > max_part_bytes) break;
            g1++;
        }
        int k = m.n_parts;
        dg_part_entry *pe = &m.parts[k];
        pe->path = str_printf("%s.part-%05d.bpk", base, k);
        pe->tensors = g1 - g0;
        char *full = str_printf("%s%s", dir, pe->path);
        rc = dg_bpk_write(full, e + g0, g1 - g0, &o, &pe->bytes, pe->sha256, err, errlen);
        dg_free(full);
        m.n_parts = k + 1;
        if (rc) goto done;
        g0 = g1;
    }
    /* remove parts left over from an older split into more parts */
    for (int k = m.n_parts;; k++) {
        char *old = str_printf("%s%s.part-%05d.bpk", dir, base, k);
        int gone = unlink(old);
        dg_free(old);
        if (gone != 0) break;
    }
    char *json = dg_parts_manifest_to_json(&m);
    char *mpath = str_printf("%s.parts.json", mono_path);
    rc = dg_write_file_atomic(mpath, json, strlen(json), err, errlen);
    dg_free(json);
    dg_free(mpath);
done:
    if (rc == 0 && out) *out = m;
    else dg_parts_manifest_free(&m);
    dg_free(dir);
    dg_free(kv);
    dg_free(e);
    dg_free(order);
    dg_bpk_close(src);
    return rc;
}

// ------------------------------------------------------------------------------------------
// reassembly

typedef struct { const char *name; int part, index; } set_row;

struct dg_parts_s {
    dg_parts_manifest  m;
    dg_bpk_t         **parts;
    int                n;
    set_row           *rows;
};

static int cmp_row(const void *a, const void *b) {
    return strcmp(((const set_row *)a)->name, ((const set_row *)b)->name);
}

static bool safe_rel_path(const char *p) {
    if (p[0] == '/' || strstr(p, "://")) return false;
    const char *s = p;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') return false;
        if (!e) break;
        s = e + 1;
    }
    return true;
}

int dg_parts_open(const char *manifest_path, bool verify, dg_parts_t **out, char *err,
                  size_t errlen) {
    *out = NULL;
    FILE *f = fopen(manifest_path, "rb");
    if (!f) {
        int e = errno;
        return fail(err, errlen, e == ENOENT ? DG_ENOTFOUND : DG_EIO, "%s: %s", manifest_path,
                    strerror(e));
    }
    sbuf txt = {0};
    char chunk[4096];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        sb_add(&txt, chunk, k);
        if (txt.len > (16u << 20)) break;
    }
    fclose(f);
    dg_parts_t *p = dg_calloc(1, sizeof *p);
    char e2[512];
    int rc = dg_parts_manifest_parse(txt.s ? txt.s : "", txt.len, &p->m, e2, sizeof e2);
    dg_free(txt.s);
    if (rc) {
        fail(err, errlen, rc, "%s: %s", manifest_path, e2);
        dg_free(p);
        return rc;
    }
    if (p->m.n_parts == 0) {
        rc = fail(err, errlen, DG_ECORRUPT, "%s: the manifest lists no parts", manifest_path);
        goto fail_parts;
    }
    char *dir = dir_prefix(manifest_path);
    p->parts = dg_calloc((size_t)p->m.n_parts, sizeof(dg_bpk_t *));
    int total = 0;
    for (int i = 0; i < p->m.n_parts && !rc; i++) {
        const dg_part_entry *pe = &p->m.parts[i];
        if (!safe_rel_path(pe->path)) {
            rc = fail(err, errlen, DG_ENOTSUP, "part %d (%s): only relative local paths are "
                      "supported here", i, pe->path);
            break;
        }
        char *full = str_printf("%s%s", dir, pe->path);
        struct stat st;
        if (stat(full, &st) != 0) {
            rc = fail(err, errlen, DG_ENOTFOUND, "part %d (%s) is missing: %s", i, pe->path,
                      strerror(errno));
        } else if (pe->bytes && (uint64_t)st.st_size != pe->bytes) {
            rc = fail(err, errlen, DG_ECORRUPT, "part %d (%s): %llu bytes, the manifest says "
                      "%llu", i, pe->path, (unsigned long long)st.st_size,
                      (unsigned long long)pe->bytes);
        } else if (verify && pe->sha256[0]) {
            char hex[65];
            rc = dg_sha256_file(full, hex, NULL, e2, sizeof e2);
            if (rc) fail(err, errlen, rc, "part %d: %s", i, e2);
            else if (strcmp(hex, pe->sha256) != 0)
                rc = fail(err, errlen, DG_ECORRUPT, "part %d (%s): sha256 mismatch: file has "
                          "%s, the manifest says %s (HINT: delete the part and fetch it again)",
                          i, pe->path, hex, pe->sha256);
        }
        if (!rc) {
            rc = dg_bpk_open(full, &p->parts[i], e2, sizeof e2);
            if (rc) fail(err, errlen, rc, "part %d: %s", i, e2);
            else total += dg_bpk_n_tensors(p->parts[i]);
        }
        p->n = i + 1;
        dg_free(full);
    }
    dg_free(dir);
    if (rc) goto fail_parts;
    p->rows = dg_calloc((size_t)total + 1, sizeof(set_row));
    int r = 0;
    for (int i = 0; i < p->n; i++)
        for (int j = 0; j < dg_bpk_n_tensors(p->parts[i]); j++)
            p->rows[r++] = (set_row){dg_bpk_tensor_at(p->parts[i], j)->name, i, j};
    qsort(p->rows, (size_t)total, sizeof(set_row), cmp_row);
    for (int i = 1; i < total; i++)
        if (!strcmp(p->rows[i].name, p->rows[i - 1].name)) {
            rc = fail(err, errlen, DG_ECORRUPT, "tensor '%s' is in part %d and in part %d",
                      p->rows[i].name, p->rows[i - 1].part, p->rows[i].part);
            goto fail_parts;
        }
    p->m.n_parts = p->n;
    *out = p;
    return 0;
fail_parts:
    dg_parts_close(p);
    return rc;
}

void dg_parts_close(dg_parts_t *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) dg_bpk_close(p->parts[i]);
    dg_free(p->parts);
    dg_free(p->rows);
    dg_parts_manifest_free(&p->m);
    dg_free(p);
}

const dg_parts_manifest *dg_parts_manifest_of(const dg_parts_t *p) { return &p->m; }
int dg_parts_n_parts(const dg_parts_t *p) { return p->n; }
dg_bpk_t *dg_parts_part(dg_parts_t *p, int k) {
    DG_ASSERT(k >= 0 && k < p->n);
    return p->parts[k];
}

int dg_parts_n_tensors(const dg_parts_t *p) {
    int n = 0;
    for (int i = 0; i < p->n; i++) n += dg_bpk_n_tensors(p->parts[i]);
    return n;
}

const dg_bpk_tensor *dg_parts_tensor(dg_parts_t *p, int i, dg_bpk_t **part, int *index) {
    DG_ASSERT(i >= 0 && i < dg_parts_n_tensors(p));
    const set_row *r = &p->rows[i];
    if (part) *part = p->parts[r->part];
    if (index) *index = r->index;
    return dg_bpk_tensor_at(p->parts[r->part], r->index);
}

int dg_parts_find(dg_parts_t *p, const char *name, dg_bpk_t **part, int *index) {
    int lo = 0, hi = dg_parts_n_tensors(p) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(p->rows[mid].name, name);
        if (c == 0) {
            dg_parts_tensor(p, mid, part, index);
            return mid;
        }
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}
