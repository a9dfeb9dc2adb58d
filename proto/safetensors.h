/* proto/safetensors.h -- the safetensors container (huggingface/safetensors "Format"):
 *   u64 LE N | N bytes of UTF-8 JSON header, space-padded to a multiple of 8 |
 *   tensor bytes, contiguous, no gaps.
 * Header: {"__metadata__": {text: text, ...},
 *          "<name>": {"dtype": "F32" | "F16" | "BF16" | ..., "shape": [..],
 *                     "data_offsets": [begin, end]}, ...}     offsets relative to the data.
 * Our writer puts tensors in bytewise name order (JSON and data alike), stores f32 data as F32,
 * F16 or BF16 (round to nearest even), and writes "__metadata__" first; dragond keeps its
 * config and tokenizer there as JSON strings ("dragond.config", "dragond.tokenizer").
 * The reader validates everything: header length bounds, JSON shape, known dtypes, shapes,
 * offsets inside the data, no overlap, no gap, sizes equal numel * element size.
 *
 * Not here: model semantics (proto/export.h). Thread affinity: a reader belongs to one thread at
 * a time. */
#ifndef DG_SAFETENSORS_H
#define DG_SAFETENSORS_H
#include "burnpack.h"     /* dg_bpk_entry, dg_bpk_kv, dg_afile */

#define DG_ST_MAX_HEADER (100ull << 20)

typedef struct {
    const char *name;
    char        dtype[12];     /* "F32", "F16", "BF16", "I64", ... */
    int         dtype_id;      /* DG_DTYPE_F32 / F16 / BF16, else -1 */
    int         elem_size;
    int         ndim;
    int64_t     shape[DG_BPK_MAX_DIMS];
    int64_t     numel;
    uint64_t    start, end;    /* data_offsets */
    uint64_t    offset;        /* absolute file offset */
    uint64_t    nbytes;
} dg_st_tensor;

typedef struct dg_st_s dg_st_t;

int  dg_st_open(const char *path, dg_st_t **out, char *err, size_t errlen);
int  dg_st_open_mem(const void *data, size_t n, dg_st_t **out, char *err, size_t errlen);
void dg_st_close(dg_st_t *s);                          /* NULL is a no-op */
int  dg_st_n_tensors(const dg_st_t *s);
const dg_st_tensor *dg_st_tensor_at(const dg_st_t *s, int i);   /* sorted by name */
int  dg_st_find(const dg_st_t *s, const char *name);            /* index or -1 */
int  dg_st_n_meta(const dg_st_t *s);
const char *dg_st_meta_key(const dg_st_t *s, int i);
const char *dg_st_meta_value(const dg_st_t *s, int i);
const char *dg_st_meta_get(const dg_st_t *s, const char *key);  /* NULL if absent */
/* Whole tensor as f32 (F32 / F16 / BF16 / F64); other dtypes DG_ENOTSUP. */
int  dg_st_read_f32(dg_st_t *s, int i, float *dst, int64_t numel, char *err, size_t errlen);

/* Writes atomically. Entries must carry f32 data (src is not supported); dtype F32/F16/BF16.
 * bytes_out / sha_hex may be NULL. */
int  dg_st_write(const char *path, const dg_bpk_entry *e, int n, dg_dtype dtype,
                 const dg_bpk_kv *meta, int n_meta, uint64_t *bytes_out, char sha_hex[65],
                 char *err, size_t errlen);
#endif
