/* proto/parts.h -- burn_dragon multipart bundles (BURNPACK.md §2):
 *   <name>.bpk.parts.json            manifest (serde_json pretty style, 2-space indent):
 *     {"version": 1, "source_file": "<name>.bpk", "source_modified_unix_ms": <ms>,
 *      "total_bytes": <monolith size>, "max_part_bytes": <budget>,
 *      "parts": [{"path": "<name>.bpk.part-00000.bpk", "bytes": <size>,
 *                 "sha256": "<lowercase hex of the whole part file>", "tensors": <count>}, ...]}
 *   <name>.bpk.part-NNNNN.bpk        each a complete burnpack holding a subset of the tensors.
 * Split (§2.4): tensors in on-disk order of the monolith, grouped greedily while the part's
 * exact file size stays within max_part_bytes (a tensor larger than the budget gets a part of its
 * own); each part keeps dtype, shape and param_id, re-lays offsets from 0 at 256-byte alignment,
 * copies the monolith's header version and always writes its full "metadata" map.
 *
 * Not here: downloading (the manifest reader accepts only local relative paths).
 * Thread affinity: any thread; a dg_parts_t belongs to one thread at a time. */
#ifndef DG_PARTS_H
#define DG_PARTS_H
#include "burnpack.h"

#define DG_PARTS_VERSION 1

typedef struct {
    char     *path;
    uint64_t  bytes;          /* 0 = not checked */
    char      sha256[65];     /* "" = not checked */
    int64_t   tensors;        /* information only */
} dg_part_entry;

typedef struct {
    unsigned       version;
    char          *source_file;
    uint64_t       source_modified_unix_ms;
    uint64_t       total_bytes;
    uint64_t       max_part_bytes;
    int            n_parts;
    dg_part_entry *parts;
} dg_parts_manifest;

/* Splits the monolith at mono_path into parts written next to it, then writes the manifest
 * "<mono_path>.parts.json" (all atomically; parts of an older, longer split are removed).
 * max_part_bytes >= 1. out (may be NULL) gets the manifest (free with dg_parts_manifest_free). */
int  dg_parts_write(const char *mono_path, uint64_t max_part_bytes, dg_parts_manifest *out,
                    char *err, size_t errlen);

/* The manifest text exactly as serde_json::to_string_pretty writes it (no trailing newline);
 * dg_malloc'd. */
char *dg_parts_manifest_to_json(const dg_parts_manifest *m);
/* Parses a manifest (defaults for missing fields as §2.2; unknown keys ignored). */
int  dg_parts_manifest_parse(const char *text, size_t n, dg_parts_manifest *out, char *err,
                             size_t errlen);
void dg_parts_manifest_free(dg_parts_manifest *m);

/* Opens every part named by the manifest at manifest_path (paths relative to its directory),
 * checking that each exists, its size and (verify) its sha256, that it is a valid burnpack, and
 * that no tensor appears in two parts. Errors say which part ("part 1 (x.part-00001.bpk):
 * sha256 mismatch ...") with DG_ENOTFOUND / DG_ECORRUPT. */
typedef struct dg_parts_s dg_parts_t;
int  dg_parts_open(const char *manifest_path, bool verify, dg_parts_t **out, char *err,
                   size_t errlen);
void dg_parts_close(dg_parts_t *p);                     /* NULL is a no-op */
const dg_parts_manifest *dg_parts_manifest_of(const dg_parts_t *p);
int        dg_parts_n_parts(const dg_parts_t *p);
dg_bpk_t  *dg_parts_part(dg_parts_t *p, int k);
/* The reassembled tensor set, sorted by name. */
int  dg_parts_n_tensors(const dg_parts_t *p);
const dg_bpk_tensor *dg_parts_tensor(dg_parts_t *p, int i, dg_bpk_t **part, int *index);
/* Index into the set or -1; part / index (may be NULL) locate it. */
int  dg_parts_find(dg_parts_t *p, const char *name, dg_bpk_t **part, int *index);
#endif
