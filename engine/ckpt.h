/* engine/ckpt.h -- the native checkpoint format .dck (DESIGN.md §6, proto/ckpt.md).
 *
 * Layout (all integers little-endian):
 *   header   magic "DRGN" (4 bytes), u32 version (1), u32 header_bytes, u32 flags,
 *            then a key/value record of the model config, the training config, step, the
 *            train loader state (RNG words + cursor), the tokenizer (kind + code points),
 *            then u32 n_tensors;
 *   directory, one entry per tensor: name (u16 len + bytes), u32 dtype, u32 ndim, i64 shape[ndim],
 *            u64 offset (from file start), u64 raw_bytes, u64 comp_bytes, u64 xxh/fnv-1a 64 checksum
 *            of the raw bytes;
 *   data     one zstd frame per tensor: parameters by DESIGN.md §5 names, and when the
 *            optimizer state is saved, "adamw.m.<name>" and "adamw.v.<name>".
 * Writers go tmp -> fsync -> rename -> fsync(dir). Readers validate magic, version, sizes,
 * shapes against the config, and checksums, and fail with a message that says what is wrong
 * and a HINT. Thread affinity: any thread (pure file I/O). */
#ifndef DG_CKPT_H
#define DG_CKPT_H
#include "train.h"

#define DG_CKPT_MAGIC   "DRGN"
#define DG_CKPT_VERSION 1u

typedef struct {
    dg_model_config  model;
    dg_train_config  train;
    int64_t          step;
    dg_loader_state  loader;
    dg_tokenizer_t  *tokenizer;   /* owned after read; borrowed for write */
    int64_t          n_params;
    float           *params;      /* n_params floats, layout order of dg_model_param_layout */
    float           *adam_m;      /* n_params or NULL (inference-only checkpoint) */
    float           *adam_v;
} dg_ckpt;

int  dg_ckpt_write(const char *path, const dg_ckpt *c, char *err, size_t errlen);
/* with_optim=false skips (and does not require) the moments. */
int  dg_ckpt_read(const char *path, bool with_optim, dg_ckpt *out, char *err, size_t errlen);
void dg_ckpt_free(dg_ckpt *c);     /* frees what read allocated */

/* Write a file atomically: tmp in the same dir, fsync, rename, fsync(dir). */
int  dg_write_atomic(const char *path, const void *data, size_t n, char *err, size_t errlen);
/* Read a whole file into a dg_malloc'd buffer (NUL-terminated for convenience). */
int  dg_read_file(const char *path, char **data, size_t *n, char *err, size_t errlen);
#endif
