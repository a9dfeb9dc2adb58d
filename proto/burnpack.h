/* proto/burnpack.h -- Burn's burnpack (.bpk) container: reader and writer, byte-compatible with
 * burn-store 0.20 / 0.21 (../shared/docs/BURNPACK.md §1), plus the atomic file writer that all
 * proto/ writers share.
 *
 * File layout (all little-endian):
 *   0        "NRUB" (u32 0x4255524E), u16 version (1), u32 metadata length M
 *   10       CBOR metadata, M bytes:
 *              { "tensors": { name: { "dtype": "F32", "shape": [..], "data_offsets": [s, e],
 *                                     ["param_id": u64] }, ... }   (names bytewise sorted)
 *                ["metadata": { text: text, ... }] }                 (keys bytewise sorted)
 *   10+M     zero padding up to D = round_up(10 + M, 256)
 *   D + s_i  tensor i, raw LE row-major; every s_i a multiple of 256, gaps zero; no tail padding.
 * Tensor bytes are written in the order the caller gives them (module order); the CBOR map is
 * sorted by name regardless.
 *
 * dragond's own metadata keys (all text, as Burn requires): "format" "burnpack", "producer"
 * "dragond", "version" (dragond's), "precision" ("f32" | "f16" | "bf16"), and the JSON strings
 * "dragond.config" and "dragond.tokenizer" (proto/export.c).
 *
 * Not here: JSON, the multipart manifest (proto/parts.h), model semantics (proto/export.h).
 * Thread affinity: a reader or writer belongs to one thread at a time. */
#ifndef DG_BURNPACK_H
#define DG_BURNPACK_H
#include "backend.h"      /* dg_dtype */
#include "cbor.h"
#include "sha256.h"

#define DG_BPK_MAGIC       0x4255524Eu      /* "NRUB" on disk */
#define DG_BPK_VERSION     1
#define DG_BPK_HEADER      10
#define DG_BPK_ALIGN       256
#define DG_BPK_MAX_META    (100ull << 20)   /* Burn's MAX_METADATA_SIZE */
#define DG_BPK_MAX_TENSORS 100000
#define DG_BPK_MAX_DIMS    16

/* ------------------------------------------------------------------------------------------
 * Atomic file writer: tmp file in the same directory, fsync, rename, fsync(dir). It hashes
 * what it writes (SHA-256) and counts the bytes. The first I/O error is kept and reported by
 * commit. */
typedef struct {
    int            fd;
    char          *path, *tmp;
    dg_sha256_ctx  sha;
    uint64_t       n_bytes;
    int            err_no;      /* first errno, 0 if none */
} dg_afile;

int  dg_afile_open(dg_afile *f, const char *path, char *err, size_t errlen);
void dg_afile_write(dg_afile *f, const void *p, size_t n);
void dg_afile_zero(dg_afile *f, uint64_t n);
/* Finishes: fsync, rename over path, fsync the directory. sha_hex (may be NULL) gets the hex
 * digest of the whole file. On failure the tmp file is removed and path is untouched. */
int  dg_afile_commit(dg_afile *f, char sha_hex[65], char *err, size_t errlen);
void dg_afile_abort(dg_afile *f);           /* removes the tmp file; safe after commit */
/* Whole buffer in one go. */
int  dg_write_file_atomic(const char *path, const void *p, size_t n, char *err, size_t errlen);
/* Opens path read-only and checks that it is a regular file: *fd and *size on success;
 * DG_ENOTFOUND / DG_EIO with "path: reason" in err. Shared by the format readers. */
int  dg_open_regular(const char *path, int *fd, uint64_t *size, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------
 * Reader. Opens a file (pread, nothing but the header and metadata is read up front) or a
 * memory buffer (borrowed, must outlive the reader). Every structural rule is checked at open:
 * magic, version <= 1, metadata length (<= 100 MiB and inside the file), CBOR well-formedness,
 * descriptor fields and types, at most 100 000 tensors, unique names, end >= start,
 * end - start == numel * element size for known dtypes, no overlapping tensors and
 * D + end <= file size. Errors: DG_ECORRUPT / DG_EVERSION / DG_EIO / DG_ENOTFOUND with a
 * message that says which rule failed (and which tensor). */
typedef struct {
    const char *name;
    char        dtype[32];     /* "F32", "F16", "BF16", "I64", ..., "Bool(Native)", "QFloat" */
    int         dtype_id;      /* DG_DTYPE_F32 / F16 / BF16, or -1 for any other dtype      */
    int         elem_size;     /* bytes per element; 0 when not fixed (QFloat)                */
    int         ndim;
    int64_t     shape[DG_BPK_MAX_DIMS];   /* slowest first */
    int64_t     numel;
    bool        has_param_id;
    uint64_t    param_id;
    uint64_t    start, end;    /* data_offsets, relative to the data section */
    uint64_t    offset;        /* absolute file offset of the first byte     */
    uint64_t    nbytes;        /* end - start */
    const uint8_t *dtype_cbor; /* the dtype item, CBOR-encoded (to copy it unchanged) */
    size_t      dtype_cbor_len;
} dg_bpk_tensor;

typedef struct dg_bpk_s dg_bpk_t;

int  dg_bpk_open(const char *path, dg_bpk_t **out, char *err, size_t errlen);
int  dg_bpk_open_mem(const void *data, size_t n, dg_bpk_t **out, char *err, size_t errlen);
void dg_bpk_close(dg_bpk_t *b);                        /* NULL is a no-op */

unsigned       dg_bpk_version(const dg_bpk_t *b);
uint64_t       dg_bpk_file_size(const dg_bpk_t *b);
uint64_t       dg_bpk_data_start(const dg_bpk_t *b);   /* D */
const uint8_t *dg_bpk_metadata_cbor(const dg_bpk_t *b, size_t *n);   /* the M raw bytes */
int            dg_bpk_n_tensors(const dg_bpk_t *b);
const dg_bpk_tensor *dg_bpk_tensor_at(const dg_bpk_t *b, int i);    /* in CBOR map order */
int            dg_bpk_find(const dg_bpk_t *b, const char *name);    /* index or -1 */
/* User metadata ("metadata" map), in file order. has_metadata: the key was present. */
int            dg_bpk_n_meta(const dg_bpk_t *b);
bool           dg_bpk_has_metadata(const dg_bpk_t *b);
const char    *dg_bpk_meta_key(const dg_bpk_t *b, int i);
const char    *dg_bpk_meta_value(const dg_bpk_t *b, int i);
const char    *dg_bpk_meta_get(const dg_bpk_t *b, const char *key);  /* NULL if absent */

/* n bytes of tensor i starting at byte off of that tensor. */
int  dg_bpk_read_raw(dg_bpk_t *b, int i, uint64_t off, void *dst, size_t n, char *err,
                     size_t errlen);
/* Whole tensor as f32 (numel floats), converting F16 / BF16 / F64 / Flex32. Other dtypes:
 * DG_ENOTSUP. */
int  dg_bpk_read_f32(dg_bpk_t *b, int i, float *dst, int64_t numel, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------
 * Writer. */
typedef struct {
    const char    *name;
    int            ndim;
    int64_t        shape[DG_BPK_MAX_DIMS];   /* slowest first; ndim 0 = scalar */
    const float   *f32;         /* numel floats, stored as the writer's dtype; or NULL and: */
    dg_bpk_t      *src;         /* copy tensor src_index of this reader unchanged (dtype and */
    int            src_index;   /* bytes); shape must match it                               */
    bool           has_param_id;
    uint64_t       param_id;
} dg_bpk_entry;

typedef struct {
    const char *key, *value;
} dg_bpk_kv;

typedef struct {
    dg_dtype          dtype;        /* storage of f32 entries: F32, F16 or BF16 (RNE) */
    const dg_bpk_kv  *meta;         /* written sorted by key; keys must be unique */
    int               n_meta;
    bool              always_meta;  /* write "metadata" even when empty (burn_dragon parts) */
    unsigned          version;      /* header version; 0 means DG_BPK_VERSION */
} dg_bpk_opts;

/* Lays the file out: relative offsets in entry order, the CBOR metadata (into meta_out, which
 * the caller frees with dg_cbor_buf_free) and the total file size. */
int  dg_bpk_plan(const dg_bpk_entry *e, int n, const dg_bpk_opts *o, dg_cbor_buf *meta_out,
                 uint64_t *total_out, char *err, size_t errlen);
/* Writes the file atomically. sha_hex (may be NULL) gets its SHA-256; *bytes_out (may be
 * NULL) its size. Names must be unique, non-empty and NUL-free. */
int  dg_bpk_write(const char *path, const dg_bpk_entry *e, int n, const dg_bpk_opts *o,
                  uint64_t *bytes_out, char sha_hex[65], char *err, size_t errlen);

/* dtype names of the burnpack / safetensors worlds. */
const char *dg_bpk_dtype_name(dg_dtype t);               /* "F32", "F16", "BF16" */
#endif
