/* engine/tokenizer.c -- the char and byte tokenizers and the streaming UTF-8 assembler
 * (engine/tokenizer.h, MODEL.md §7.1).
 *
 * The char tokenizer maps Unicode code points to ids through a small open-addressing hash table.
 * Text is decoded as UTF-8; a byte that does not start a valid, shortest-form sequence becomes
 * the single code point U+DC80+byte ("surrogate escape", as Python's errors="surrogateescape"),
 * which encodes back to that raw byte, so every byte string round-trips exactly. Real surrogates
 * can never come out of valid UTF-8, so the escape range is unambiguous.
 * Not here: tokenizer.json (proto/tokenizer_json.c). Thread affinity: immutable after creation.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <string.h>

#define DG_TOK_N_SPECIAL 4
#define ESC_LO 0xDC80u          /* U+DC80..U+DCFF: escaped raw bytes 0x80..0xFF */
#define ESC_HI 0xDCFFu

struct dg_tokenizer_s {
    dg_tok_kind kind;
    int         V;
    int         n_cps;
    uint32_t   *cps;        /* (n_cps) code points of ids 4.. in id order */
    uint32_t   *tab_cp;     /* (cap) hash table keys, UINT32_MAX = empty */
    int32_t    *tab_id;     /* (cap) ids */
    uint32_t    cap;        /* power of two, >= 2 * n_cps */
};

// ------------------------------------------------------------------------------------------
// UTF-8

/* Decodes one character at s[0..n). Returns its byte length (1..4) and *cp; a byte that does not
 * start a valid sequence yields length 1 and the escape code point. */
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len; uint32_t v; unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;         /* overlong */
        if (c == 0xED) hi = 0x9F;         /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;         /* overlong */
        if (c == 0xF4) hi = 0x8F;         /* > U+10FFFF */
    } else { *cp = ESC_LO + (c - 0x80); return 1; }
    if ((size_t)len > n) { *cp = ESC_LO + (c - 0x80); return 1; }
    for (int i = 1; i < len; i++) {
        unsigned b = s[i];
        unsigned l = (i == 1) ? lo : 0x80, h = (i == 1) ? hi : 0xBF;
        if (b < l || b > h) { *cp = ESC_LO + (c - 0x80); return 1; }
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    return len;
}

/* Encodes cp (a valid scalar value or an escape) into buf; returns the byte count. */
static int utf8_encode(uint32_t cp, char *buf) {
    unsigned char *b = (unsigned char *)buf;
    if (cp >= ESC_LO && cp <= ESC_HI) { b[0] = (unsigned char)(cp - 0xDC00u); return 1; }
    if (cp < 0x80) { b[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6)); b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    b[0] = (unsigned char)(0xF0 | (cp >> 18));
    b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A code point a char vocabulary may hold: a Unicode scalar value or an escaped byte. */
static bool cp_ok(uint32_t cp) {
    if (cp > 0x10FFFF) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return cp >= ESC_LO && cp <= ESC_HI;
    return true;
}

// ------------------------------------------------------------------------------------------
// the code point table

static uint32_t cp_hash(uint32_t cp) { return (cp * 2654435761u) ^ (cp >> 16); }

static int32_t tab_find(const dg_tokenizer_t *t, uint32_t cp) {
    uint32_t m = t->cap - 1;
    for (uint32_t i = cp_hash(cp) & m;; i = (i + 1) & m) {
        if (t->tab_cp[i] == cp) return t->tab_id[i];
        if (t->tab_cp[i] == UINT32_MAX) return -1;
    }
}

static void tab_grow(dg_tokenizer_t *t, uint32_t cap) {
    uint32_t *ocp = t->tab_cp; int32_t *oid = t->tab_id; uint32_t ocap = t->cap;
    t->cap = cap;
    t->tab_cp = dg_malloc(sizeof(uint32_t) * cap);
    t->tab_id = dg_malloc(sizeof(int32_t) * cap);
    memset(t->tab_cp, 0xFF, sizeof(uint32_t) * cap);
    for (uint32_t j = 0; j < ocap; j++) {
        if (ocp[j] == UINT32_MAX) continue;
        uint32_t i = cp_hash(ocp[j]) & (cap - 1);
        while (t->tab_cp[i] != UINT32_MAX) i = (i + 1) & (cap - 1);
        t->tab_cp[i] = ocp[j]; t->tab_id[i] = oid[j];
    }
    dg_free(ocp); dg_free(oid);
}

/* Adds cp with the next id; returns false if it is already present. */
static bool tab_add(dg_tokenizer_t *t, uint32_t cp, int *cps_cap) {
    if (tab_find(t, cp) >= 0) return false;
    if ((uint32_t)(t->n_cps + 1) * 2 > t->cap) tab_grow(t, t->cap * 2);
    if (t->n_cps == *cps_cap) {
        *cps_cap *= 2;
        t->cps = dg_realloc(t->cps, sizeof(uint32_t) * (size_t)*cps_cap);
    }
    uint32_t i = cp_hash(cp) & (t->cap - 1);
    while (t->tab_cp[i] != UINT32_MAX) i = (i + 1) & (t->cap - 1);
    t->tab_cp[i] = cp;
    t->tab_id[i] = DG_TOK_N_SPECIAL + t->n_cps;
    t->cps[t->n_cps++] = cp;
    t->V = DG_TOK_N_SPECIAL + t->n_cps;
    return true;
}

static dg_tokenizer_t *char_new(int *cps_cap) {
    dg_tokenizer_t *t = dg_calloc(1, sizeof *t);
    t->kind = DG_TOK_CHAR;
    t->V = DG_TOK_N_SPECIAL;
    *cps_cap = 64;
    t->cps = dg_malloc(sizeof(uint32_t) * 64);
    tab_grow(t, 128);
    return t;
}

// ------------------------------------------------------------------------------------------
// construction

int dg_tokenizer_byte(dg_tokenizer_t **out) {
    dg_tokenizer_t *t = dg_calloc(1, sizeof *t);
    t->kind = DG_TOK_BYTE;
    t->V = 259;
    *out = t;
    return 0;
}

int dg_tokenizer_fit_char(const char *text, size_t n, dg_tokenizer_t **out) {
    *out = NULL;
    if (n == 0) return DG_EDATA;
    int cap;
    dg_tokenizer_t *t = char_new(&cap);
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)utf8_decode(s + i, n - i, &cp);
        tab_add(t, cp, &cap);
    }
    *out = t;
    return 0;
}

int dg_tokenizer_from_chars(const uint32_t *cps, int n_cps, dg_tokenizer_t **out) {
    *out = NULL;
    if (n_cps < 0 || n_cps > 0x110000) return DG_EINVAL;
    int cap;
    dg_tokenizer_t *t = char_new(&cap);
    for (int i = 0; i < n_cps; i++) {
        if (!cp_ok(cps[i]) || !tab_add(t, cps[i], &cap)) {   /* invalid or duplicate */
            dg_tokenizer_free(t);
            return DG_EINVAL;
        }
    }
    *out = t;
    return 0;
}

void dg_tokenizer_free(dg_tokenizer_t *t) {
    if (!t) return;
    dg_free(t->cps); dg_free(t->tab_cp); dg_free(t->tab_id);
    dg_free(t);
}

dg_tok_kind dg_tokenizer_kind(const dg_tokenizer_t *t) { return t->kind; }
int dg_tokenizer_vocab(const dg_tokenizer_t *t) { return t->V; }
int dg_tokenizer_eos(const dg_tokenizer_t *t) { return t->kind == DG_TOK_BYTE ? 257 : DG_TOK_EOS; }

const uint32_t *dg_tokenizer_chars(const dg_tokenizer_t *t, int *n) {
    if (t->kind != DG_TOK_CHAR) { if (n) *n = 0; return NULL; }
    if (n) *n = t->n_cps;
    return t->cps;
}

// ------------------------------------------------------------------------------------------
// encode / decode

/* "U+00E9 'é'" for a character, "byte 0xFF" for an escaped byte. */
static void describe_cp(uint32_t cp, char *buf, size_t len) {
    if (cp >= ESC_LO && cp <= ESC_HI) {
        snprintf(buf, len, "byte 0x%02X (not valid UTF-8)", (unsigned)(cp - 0xDC00u));
    } else if (cp < 0x20 || cp == 0x7F) {
        snprintf(buf, len, "U+%04X (control character)", (unsigned)cp);
    } else {
        char u[8] = {0};
        utf8_encode(cp, u);
        snprintf(buf, len, "U+%04X '%s'", (unsigned)cp, u);
    }
}

int dg_tokenizer_encode(const dg_tokenizer_t *t, const char *text, size_t n, bool strict,
                        int32_t **ids, size_t *n_ids, char *err, size_t errlen) {
    *ids = NULL; *n_ids = 0;
    int32_t *o = dg_try_malloc(sizeof(int32_t) * (n ? n : 1));
    if (!o) {
        if (err) snprintf(err, errlen, "encode: out of memory for %zu tokens", n);
        return DG_ENOMEM;
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t k = 0;
    if (t->kind == DG_TOK_BYTE) {
        for (size_t i = 0; i < n; i++) o[k++] = s[i];
    } else {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int len = utf8_decode(s + i, n - i, &cp);
            int32_t id = tab_find(t, cp);
            if (id < 0) {
                if (strict) {
                    char d[64];
                    describe_cp(cp, d, sizeof d);
                    if (err) snprintf(err, errlen,
                                      "character %s at byte offset %zu is not in the "
                                      "tokenizer's vocabulary; HINT: use the byte tokenizer or "
                                      "fit the char tokenizer on text that contains it", d, i);
                    dg_free(o);
                    return DG_EINVAL;
                }
                id = DG_TOK_UNK;
            }
            o[k++] = id;
            i += (size_t)len;
        }
    }
    *ids = o; *n_ids = k;
    return 0;
}

int dg_tokenizer_piece(const dg_tokenizer_t *t, int32_t id, char buf[8]) {
    if (id < 0 || id >= t->V) return DG_EINVAL;
    if (t->kind == DG_TOK_BYTE) {
        if (id >= 256) return 0;
        buf[0] = (char)(unsigned char)id;
        return 1;
    }
    if (id == DG_TOK_UNK) { buf[0] = '?'; return 1; }
    if (id < DG_TOK_N_SPECIAL) return 0;
    return utf8_encode(t->cps[id - DG_TOK_N_SPECIAL], buf);
}

int dg_tokenizer_decode(const dg_tokenizer_t *t, const int32_t *ids, size_t n, char **out,
                        size_t *out_len) {
    *out = NULL; if (out_len) *out_len = 0;
    size_t per = t->kind == DG_TOK_BYTE ? 1 : 4;
    char *o = dg_try_malloc(n * per + 1);
    if (!o) return DG_ENOMEM;
    size_t k = 0;
    int eos = dg_tokenizer_eos(t);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == eos) break;
        char b[8];
        int r = dg_tokenizer_piece(t, ids[i], b);
        if (r < 0) { dg_free(o); return r; }
        memcpy(o + k, b, (size_t)r);
        k += (size_t)r;
    }
    o[k] = 0;
    *out = o; if (out_len) *out_len = k;
    return 0;
}

// ------------------------------------------------------------------------------------------
// streaming UTF-8 assembly

/* Length of a complete valid character at p[0..n), 0 if p is a valid but incomplete prefix,
 * -1 if p[0] cannot start a valid character with what follows. */
static int utf8_status(const unsigned char *p, int n) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    int len; unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return -1;
    for (int i = 1; i < len; i++) {
        if (i >= n) return 0;
        unsigned l = (i == 1) ? lo : 0x80, h = (i == 1) ? hi : 0xBF;
        if (p[i] < l || p[i] > h) return -1;
    }
    return len;
}

static const char REPL[3] = {(char)0xEF, (char)0xBF, (char)0xBD};   /* U+FFFD */

/* Emits everything complete from the pending bytes; with final, also the incomplete tail as
 * U+FFFD. Returns bytes written or DG_ERANGE if out is too small. */
static int stream_drain(dg_utf8_stream *s, char *out, int cap, bool final) {
    int w = 0;
    while (s->n_pend > 0) {
        int st = utf8_status((const unsigned char *)s->pend, s->n_pend);
        if (st == 0 && !final) break;
        const char *src = s->pend; int len = st;
        if (st <= 0) { src = REPL; len = 3; }
        if (w + len > cap) return DG_ERANGE;
        memcpy(out + w, src, (size_t)len);
        w += len;
        int used = st > 0 ? st : 1;
        memmove(s->pend, s->pend + used, (size_t)(s->n_pend - used));
        s->n_pend -= used;
    }
    return w;
}

int dg_utf8_stream_push(dg_utf8_stream *s, const char *piece, int n, char *out, int cap) {
    int w = 0;
    for (int i = 0; i < n; i++) {
        DG_ASSERT(s->n_pend < (int)sizeof s->pend);
        s->pend[s->n_pend++] = piece[i];
        int r = stream_drain(s, out + w, cap - w, false);
        if (r < 0) return r;
        w += r;
    }
    return w;
}

int dg_utf8_stream_flush(dg_utf8_stream *s, char *out, int cap) {
    return stream_drain(s, out, cap, true);
}
