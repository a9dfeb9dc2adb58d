/* proto/cbor.c -- CBOR encoder and validating tree decoder (RFC 8949), half-float conversions.
 *
 * The decoder walks the input twice with the same code: the first walk (build == false)
 * validates and counts items and string bytes, the second fills one item block and one string
 * block. Every length is checked against the bytes that remain before anything is read or
 * allocated, so hostile lengths cannot cause large allocations or out-of-bounds reads.
 * Not here: anything that knows about burnpack. Thread affinity: none. */
#include "cbor.h"
#include "dg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

// ------------------------------------------------------------------------------------------
// half / bfloat16

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float    bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t dg_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xff, man = x & 0x7fffff;
    if (exp == 0xff)                                   /* inf / nan (nan kept quiet) */
        return sign | 0x7c00 | (man ? (uint16_t)(0x200 | (man >> 13)) : 0);
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 0x1f) return sign | 0x7c00;               /* overflow -> inf */
    if (e <= 0) {                                      /* subnormal or zero */
        if (e < -10) return sign;
        man |= 0x800000;
        int shift = 14 - e;                            /* 24-bit mantissa -> 10 - e bits */
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return sign | (uint16_t)half;                  /* carry into exponent is correct */
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;   /* may carry to inf: right */
    return sign | (uint16_t)half;
}

float dg_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        float v = ldexpf((float)man, -24);             /* subnormal: man * 2^-24 */
        return sign ? -v : v;
    }
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000 | (man << 13));
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

uint16_t dg_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);  /* quiet nan */
    uint32_t lsb = (x >> 16) & 1;
    x += 0x7fff + lsb;
    return (uint16_t)(x >> 16);
}

float dg_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// ------------------------------------------------------------------------------------------
// encoder

static void buf_reserve(dg_cbor_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->buf = dg_realloc(b->buf, cap);
    b->cap = cap;
}

static void buf_add(dg_cbor_buf *b, const void *p, size_t n) {
    if (!n) return;
    buf_reserve(b, n);
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

void dg_cbor_buf_free(dg_cbor_buf *b) {
    dg_free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
}

/* Initial byte + argument in the shortest form (RFC 8949 §4.2.1, ciborium-ll Title). */
static void put_head(dg_cbor_buf *b, int major, uint64_t v) {
    uint8_t h[9];
    size_t n;
    uint8_t mt = (uint8_t)(major << 5);
    if (v < 24) { h[0] = mt | (uint8_t)v; n = 1; }
    else if (v <= 0xff) { h[0] = mt | 24; h[1] = (uint8_t)v; n = 2; }
    else if (v <= 0xffff) { h[0] = mt | 25; h[1] = (uint8_t)(v >> 8); h[2] = (uint8_t)v; n = 3; }
    else if (v <= 0xffffffffu) {
        h[0] = mt | 26;
        for (int i = 0; i < 4; i++) h[1 + i] = (uint8_t)(v >> (24 - 8 * i));
        n = 5;
    } else {
        h[0] = mt | 27;
        for (int i = 0; i < 8; i++) h[1 + i] = (uint8_t)(v >> (56 - 8 * i));
        n = 9;
    }
    buf_add(b, h, n);
}

void dg_cbor_put_uint(dg_cbor_buf *b, uint64_t v) { put_head(b, 0, v); }
void dg_cbor_put_negint(dg_cbor_buf *b, uint64_t a) { put_head(b, 1, a); }
void dg_cbor_put_int(dg_cbor_buf *b, int64_t v) {
    if (v >= 0) put_head(b, 0, (uint64_t)v);
    else put_head(b, 1, (uint64_t)(-(v + 1)));
}
void dg_cbor_put_bytes(dg_cbor_buf *b, const void *p, size_t n) {
    put_head(b, 2, n);
    buf_add(b, p, n);
}
void dg_cbor_put_text(dg_cbor_buf *b, const char *s, size_t n) {
    put_head(b, 3, n);
    buf_add(b, s, n);
}
void dg_cbor_put_str(dg_cbor_buf *b, const char *s) { dg_cbor_put_text(b, s, strlen(s)); }
void dg_cbor_put_array(dg_cbor_buf *b, uint64_t n) { put_head(b, 4, n); }
void dg_cbor_put_map(dg_cbor_buf *b, uint64_t n) { put_head(b, 5, n); }
void dg_cbor_put_tag(dg_cbor_buf *b, uint64_t tag) { put_head(b, 6, tag); }
void dg_cbor_put_bool(dg_cbor_buf *b, bool v) { uint8_t c = v ? 0xf5 : 0xf4; buf_add(b, &c, 1); }
void dg_cbor_put_null(dg_cbor_buf *b) { uint8_t c = 0xf6; buf_add(b, &c, 1); }
void dg_cbor_put_simple(dg_cbor_buf *b, uint8_t v) {
    DG_ASSERT(v < 24 || v >= 32);
    put_head(b, 7, v);
}

void dg_cbor_put_raw(dg_cbor_buf *b, const void *p, size_t n) { buf_add(b, p, n); }

void dg_cbor_put_float(dg_cbor_buf *b, double v) {
    uint8_t h[9];
    if (isnan(v)) { h[0] = 0xf9; h[1] = 0x7e; h[2] = 0x00; buf_add(b, h, 3); return; }
    float f = (float)v;
    if ((double)f == v) {
        uint16_t hv = dg_f32_to_f16(f);
        if (dg_f16_to_f32(hv) == f && signbit(dg_f16_to_f32(hv)) == signbit(f)) {
            h[0] = 0xf9; h[1] = (uint8_t)(hv >> 8); h[2] = (uint8_t)hv;
            buf_add(b, h, 3);
            return;
        }
        uint32_t u = f32_bits(f);
        h[0] = 0xfa;
        for (int i = 0; i < 4; i++) h[1 + i] = (uint8_t)(u >> (24 - 8 * i));
        buf_add(b, h, 5);
        return;
    }
    uint64_t u;
    memcpy(&u, &v, 8);
    h[0] = 0xfb;
    for (int i = 0; i < 8; i++) h[1 + i] = (uint8_t)(u >> (56 - 8 * i));
    buf_add(b, h, 9);
}

void dg_cbor_put_item(dg_cbor_buf *b, const dg_cbor_item *it) {
    switch (it->type) {
    case DG_CBOR_UINT:   put_head(b, 0, it->u); break;
    case DG_CBOR_NEGINT: put_head(b, 1, it->u); break;
    case DG_CBOR_BYTES:  dg_cbor_put_bytes(b, it->s, it->len); break;
    case DG_CBOR_TEXT:   dg_cbor_put_text(b, it->s, it->len); break;
    case DG_CBOR_ARRAY:
        put_head(b, 4, it->len);
        for (size_t i = 0; i < it->len; i++) dg_cbor_put_item(b, &it->kids[i]);
        break;
    case DG_CBOR_MAP:
        put_head(b, 5, it->len);
        for (size_t i = 0; i < 2 * it->len; i++) dg_cbor_put_item(b, &it->kids[i]);
        break;
    case DG_CBOR_TAG:
        put_head(b, 6, it->u);
        dg_cbor_put_item(b, &it->kids[0]);
        break;
    case DG_CBOR_BOOL:      dg_cbor_put_bool(b, it->u != 0); break;
    case DG_CBOR_NULL:      dg_cbor_put_null(b); break;
    case DG_CBOR_UNDEFINED: put_head(b, 7, 23); break;
    case DG_CBOR_SIMPLE:    put_head(b, 7, it->u); break;
    case DG_CBOR_FLOAT:     dg_cbor_put_float(b, it->f); break;
    }
}

// ------------------------------------------------------------------------------------------
// decoder

typedef struct {
    const uint8_t *p, *end, *start;
    int            max_depth;
    bool           build;
    size_t         n_items, n_str;     /* counts (walk 1) or cursors (walk 2) */
    dg_cbor_item  *items;
    char          *strs;
    char          *err;
    size_t         errlen;
} cbor_dec;

static int dec_fail(cbor_dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int dec_fail(cbor_dec *d, const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(d->err, d->errlen, "CBOR at byte %zu: %s", (size_t)(d->p - d->start), msg);
    return DG_ECORRUPT;
}

bool dg_utf8_valid(const void *sv, size_t n) {
    const uint8_t *s = sv;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int k;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (n - i <= (size_t)k) return false;
        for (int j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += (size_t)k + 1;
    }
    return true;
}

/* Reads the initial byte and argument. *ai_out = additional info; for ai 31 *arg = 0. */
static int dec_head(cbor_dec *d, int *major, int *ai_out, uint64_t *arg) {
    if (d->p >= d->end) return dec_fail(d, "unexpected end of data");
    uint8_t ib = *d->p;
    int ai = ib & 31;
    *major = ib >> 5;
    *ai_out = ai;
    if (ai < 24) { *arg = (uint64_t)ai; d->p++; return 0; }
    if (ai >= 28 && ai <= 30) return dec_fail(d, "reserved additional info %d", ai);
    if (ai == 31) { *arg = 0; d->p++; return 0; }
    size_t nb = (size_t)1 << (ai - 24);
    if ((size_t)(d->end - d->p) < 1 + nb)
        return dec_fail(d, "truncated argument (%zu bytes needed)", nb);
    uint64_t v = 0;
    for (size_t i = 0; i < nb; i++) v = (v << 8) | d->p[1 + i];
    *arg = v;
    d->p += 1 + nb;
    return 0;
}

static int dec_item(cbor_dec *d, int depth, dg_cbor_item *out);

static dg_cbor_item *dec_take_items(cbor_dec *d, size_t n) {
    dg_cbor_item *k = d->build ? d->items + d->n_items : NULL;
    d->n_items += n;
    return k;
}

/* A string: definite (arg bytes) or indefinite (definite chunks of the same major until 0xff). */
static int dec_string(cbor_dec *d, int major, int ai, uint64_t arg, dg_cbor_item *out) {
    char *dst = d->build ? d->strs + d->n_str : NULL;
    size_t total = 0;
    if (ai != 31) {
        if (arg > (uint64_t)(d->end - d->p)) return dec_fail(d, "string length %llu runs past "
                                                       "the end", (unsigned long long)arg);
        if (major == 3 && !dg_utf8_valid(d->p, (size_t)arg))
            return dec_fail(d, "text string is not valid UTF-8");
        if (dst) memcpy(dst, d->p, (size_t)arg);
        d->p += arg;
        total = (size_t)arg;
    } else {
        for (;;) {
            if (d->p >= d->end) return dec_fail(d, "unterminated indefinite string");
            if (*d->p == 0xff) { d->p++; break; }
            int cm, cai;
            uint64_t clen;
            int rc = dec_head(d, &cm, &cai, &clen);
            if (rc) return rc;
            if (cm != major || cai == 31)
                return dec_fail(d, "bad chunk in indefinite string");
            if (clen > (uint64_t)(d->end - d->p)) return dec_fail(d, "chunk runs past the end");
            if (major == 3 && !dg_utf8_valid(d->p, (size_t)clen))
                return dec_fail(d, "text chunk is not valid UTF-8");
            if (dst) memcpy(dst + total, d->p, (size_t)clen);
            d->p += clen;
            total += (size_t)clen;
        }
    }
    if (dst) {
        dst[total] = 0;
        out->s = dst;
        out->len = total;
    }
    d->n_str += total + 1;
    return 0;
}

/* Counts the children of an indefinite container starting at d->p (without building). */
static int dec_count_indef(cbor_dec *d, int depth, size_t *n) {
    cbor_dec c = *d;
    c.build = false;
    size_t k = 0;
    for (;;) {
        if (c.p >= c.end) return dec_fail(d, "unterminated indefinite container");
        if (*c.p == 0xff) break;
        int rc = dec_item(&c, depth + 1, NULL);
        if (rc) { d->p = c.p; return rc; }
        k++;
    }
    *n = k;
    return 0;
}

static int dec_item(cbor_dec *d, int depth, dg_cbor_item *out) {
    if (depth > d->max_depth) return dec_fail(d, "nesting deeper than %d", d->max_depth);
    int major, ai;
    uint64_t arg;
    int rc = dec_head(d, &major, &ai, &arg);
    if (rc) return rc;
    dg_cbor_item tmp;
    dg_cbor_item *it = out ? out : &tmp;
    memset(it, 0, sizeof *it);
    switch (major) {
    case 0: case 1:
        if (ai == 31) return dec_fail(d, "indefinite length on an integer");
        it->type = major == 0 ? DG_CBOR_UINT : DG_CBOR_NEGINT;
        it->u = arg;
        return 0;
    case 2: case 3:
        it->type = major == 2 ? DG_CBOR_BYTES : DG_CBOR_TEXT;
        return dec_string(d, major, ai, arg, out);
    case 4: case 5: {
        bool map = major == 5;
        it->type = map ? DG_CBOR_MAP : DG_CBOR_ARRAY;
        size_t n = 0;
        if (ai == 31) {
            if ((rc = dec_count_indef(d, depth, &n))) return rc;
            if (map && (n & 1)) return dec_fail(d, "indefinite map has a key without value");
            if (map) n /= 2;
        } else {
            uint64_t need = map ? 2 : 1;       /* every item takes at least one byte */
            if (arg > (uint64_t)(d->end - d->p) / need)
                return dec_fail(d, "%s of %llu entries cannot fit in %zu bytes",
                                map ? "map" : "array", (unsigned long long)arg,
                                (size_t)(d->end - d->p));
            n = (size_t)arg;
        }
        size_t nk = map ? 2 * n : n;
        dg_cbor_item *kids = dec_take_items(d, nk);
        it->len = n;
        it->kids = kids;
        for (size_t i = 0; i < nk; i++)
            if ((rc = dec_item(d, depth + 1, kids ? &kids[i] : NULL))) return rc;
        if (ai == 31) d->p++;                  /* the break byte, checked by the count */
        return 0;
    }
    case 6: {
        if (ai == 31) return dec_fail(d, "indefinite length on a tag");
        it->type = DG_CBOR_TAG;
        it->u = arg;
        dg_cbor_item *kid = dec_take_items(d, 1);
        it->kids = kid;
        it->len = 1;
        return dec_item(d, depth + 1, kid);
    }
    default: /* 7 */
        if (ai == 31) return dec_fail(d, "unexpected break byte");
        if (ai == 25 || ai == 26 || ai == 27) {
            it->type = DG_CBOR_FLOAT;
            if (ai == 25) { it->width = 2; it->f = dg_f16_to_f32((uint16_t)arg); }
            else if (ai == 26) { it->width = 4; it->f = bits_f32((uint32_t)arg); }
            else { it->width = 8; memcpy(&it->f, &arg, 8); }
            return 0;
        }
        if (ai == 24 && arg < 32) return dec_fail(d, "two-byte simple value %llu < 32",
                                                  (unsigned long long)arg);
        if (arg == 20 || arg == 21) { it->type = DG_CBOR_BOOL; it->u = arg == 21; }
        else if (arg == 22) it->type = DG_CBOR_NULL;
        else if (arg == 23) it->type = DG_CBOR_UNDEFINED;
        else { it->type = DG_CBOR_SIMPLE; it->u = arg; }
        return 0;
    }
}

int dg_cbor_decode(const void *buf, size_t n, int max_depth, dg_cbor_doc *out, char *err,
                   size_t errlen) {
    memset(out, 0, sizeof *out);
    cbor_dec d = {.p = buf, .end = (const uint8_t *)buf + n, .start = buf,
                  .max_depth = max_depth > 0 ? max_depth : DG_CBOR_MAX_DEPTH, .err = err,
                  .errlen = errlen};
    d.n_items = 1;                                  /* the root */
    int rc = dec_item(&d, 0, NULL);
    if (rc) return rc;
    if (d.p != d.end) return dec_fail(&d, "%zu trailing bytes after the item",
                                      (size_t)(d.end - d.p));
    size_t n_items = d.n_items, n_str = d.n_str;
    out->items = dg_try_calloc(n_items, sizeof(dg_cbor_item));
    out->strs = dg_try_malloc(n_str ? n_str : 1);
    if (!out->items || !out->strs) {
        dg_cbor_doc_free(out);
        snprintf(err, errlen, "CBOR: out of memory for %zu items", n_items);
        return DG_ENOMEM;
    }
    d.p = buf;
    d.build = true;
    d.items = out->items;
    d.strs = out->strs;
    d.n_items = 1;
    d.n_str = 0;
    rc = dec_item(&d, 0, out->items);
    DG_ASSERT(rc == 0 && d.n_items == n_items && d.n_str == n_str);
    out->root = out->items;
    out->n_items = n_items;
    return 0;
}

void dg_cbor_doc_free(dg_cbor_doc *d) {
    if (!d) return;
    dg_free(d->items);
    dg_free(d->strs);
    memset(d, 0, sizeof *d);
}

bool dg_cbor_is_text(const dg_cbor_item *it, const char *s) {
    size_t n = strlen(s);
    return it && it->type == DG_CBOR_TEXT && it->len == n && memcmp(it->s, s, n) == 0;
}

const dg_cbor_item *dg_cbor_map_get(const dg_cbor_item *m, const char *key) {
    if (!m || m->type != DG_CBOR_MAP) return NULL;
    for (size_t i = 0; i < m->len; i++)
        if (dg_cbor_is_text(&m->kids[2 * i], key)) return &m->kids[2 * i + 1];
    return NULL;
}

const char *dg_cbor_type_name(dg_cbor_type t) {
    static const char *names[] = {"uint", "negint", "bytes", "text", "array", "map", "tag",
                                  "bool", "null", "undefined", "simple", "float"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}
