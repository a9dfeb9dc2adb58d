/* proto/cbor.h -- a small CBOR (RFC 8949) encoder and a validating tree decoder, plus the
 * IEEE binary16 / bfloat16 conversions that CBOR half floats and F16/BF16 tensors share.
 *
 * Encoder: always definite lengths and the shortest integer form (what ciborium writes, so
 * burnpack metadata comes out byte-identical to Burn's; BURNPACK.md §1.3). Floats use the
 * narrowest of f16/f32/f64 that holds the value exactly. Map keys are written in the order the
 * caller gives them (no canonical sorting, as ciborium).
 * Decoder: reads the whole RFC 8949 data model (ints, byte/text strings definite or
 * indefinite, arrays, maps, tags, simple values, f16/f32/f64), checks well-formedness and
 * UTF-8 of text, limits nesting depth, and never reads out of bounds: malformed input returns
 * DG_ECORRUPT with a message that gives the byte offset.
 * Not here: canonical (sorted-key) encoding, streaming output. Thread affinity: none; a doc or
 * buffer belongs to its caller. */
#ifndef DG_CBOR_H
#define DG_CBOR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------------------------
 * Half-precision conversions (round to nearest even; NaN stays NaN, quiet). */
uint16_t dg_f32_to_f16(float f);
float    dg_f16_to_f32(uint16_t h);
uint16_t dg_f32_to_bf16(float f);
float    dg_bf16_to_f32(uint16_t h);

/* ------------------------------------------------------------------------------------------
 * Encoder: a growing byte buffer (small allocations abort on OOM, as dg_malloc does). */
typedef struct {
    uint8_t *buf;
    size_t   len, cap;
} dg_cbor_buf;

void dg_cbor_buf_free(dg_cbor_buf *b);      /* frees buf, leaves an empty buffer */
void dg_cbor_put_uint(dg_cbor_buf *b, uint64_t v);
void dg_cbor_put_int(dg_cbor_buf *b, int64_t v);
void dg_cbor_put_negint(dg_cbor_buf *b, uint64_t minus1_minus_v);  /* value -1 - arg */
void dg_cbor_put_bytes(dg_cbor_buf *b, const void *p, size_t n);
void dg_cbor_put_text(dg_cbor_buf *b, const char *s, size_t n);
void dg_cbor_put_str(dg_cbor_buf *b, const char *s);                /* NUL-terminated text */
void dg_cbor_put_array(dg_cbor_buf *b, uint64_t n);                 /* then n items      */
void dg_cbor_put_map(dg_cbor_buf *b, uint64_t n_pairs);             /* then n key,value  */
void dg_cbor_put_tag(dg_cbor_buf *b, uint64_t tag);                 /* then one item     */
void dg_cbor_put_bool(dg_cbor_buf *b, bool v);
void dg_cbor_put_null(dg_cbor_buf *b);
void dg_cbor_put_simple(dg_cbor_buf *b, uint8_t v);                 /* v < 24 or >= 32   */
void dg_cbor_put_float(dg_cbor_buf *b, double v);
/* Appends bytes that already are one encoded item (e.g. a dtype copied from another file). */
void dg_cbor_put_raw(dg_cbor_buf *b, const void *p, size_t n);

/* ------------------------------------------------------------------------------------------
 * Decoder: one pass validates and counts, a second builds a tree in two arena blocks. */
typedef enum {
    DG_CBOR_UINT = 0,   /* u                                          */
    DG_CBOR_NEGINT,     /* value is -1 - u                            */
    DG_CBOR_BYTES,      /* s, len                                     */
    DG_CBOR_TEXT,       /* s (NUL-terminated copy, valid UTF-8), len  */
    DG_CBOR_ARRAY,      /* kids[len]                                  */
    DG_CBOR_MAP,        /* kids[2*len]: key, value, key, value ...    */
    DG_CBOR_TAG,        /* u = tag number, kids[1]                    */
    DG_CBOR_BOOL,       /* u = 0 / 1                                  */
    DG_CBOR_NULL,
    DG_CBOR_UNDEFINED,
    DG_CBOR_SIMPLE,     /* other simple value in u                    */
    DG_CBOR_FLOAT,      /* f; width = 2, 4 or 8 bytes on the wire     */
} dg_cbor_type;

typedef struct dg_cbor_item_s {
    dg_cbor_type            type;
    int                     width;     /* FLOAT only */
    uint64_t                u;
    double                  f;
    const char             *s;
    size_t                  len;
    struct dg_cbor_item_s  *kids;
} dg_cbor_item;

typedef struct {
    dg_cbor_item *root;      /* == items */
    dg_cbor_item *items;     /* n_items, root first */
    size_t        n_items;
    char         *strs;      /* all string bytes, each NUL-terminated */
} dg_cbor_doc;

#define DG_CBOR_MAX_DEPTH 128   /* ciborium's limit in Burn's reader (BURNPACK.md §1.3) */

/* Decodes exactly one item that must span all n bytes (trailing bytes are an error).
 * max_depth 0 means DG_CBOR_MAX_DEPTH. Returns 0, DG_ECORRUPT (malformed, message with the byte
 * offset) or DG_ENOMEM (arena too large for dg_try_malloc). */
int  dg_cbor_decode(const void *buf, size_t n, int max_depth, dg_cbor_doc *out, char *err,
                    size_t errlen);
void dg_cbor_doc_free(dg_cbor_doc *d);     /* NULL-safe; leaves a zeroed doc */

/* Value of text key in a map, or NULL (also when m is not a map). */
const dg_cbor_item *dg_cbor_map_get(const dg_cbor_item *m, const char *key);
/* True when it is a text item equal to s. */
bool dg_cbor_is_text(const dg_cbor_item *it, const char *s);
/* Re-encodes a decoded item in the writer's form (definite, shortest, floats narrowest). */
void dg_cbor_put_item(dg_cbor_buf *b, const dg_cbor_item *it);
/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as CBOR text requires. */
bool dg_utf8_valid(const void *s, size_t n);
/* Short name of a type ("uint", "text", ...) for messages. */
const char *dg_cbor_type_name(dg_cbor_type t);
#endif
