/* proto/sha256.h -- SHA-256 (FIPS 180-4), our own small implementation, used for the part
 * checksums of multipart bundles (BURNPACK.md §2.2) and export file listings.
 *
 * Not here: HMAC or any other hash. Thread affinity: none (a context belongs to its caller). */
#ifndef DG_SHA256_H
#define DG_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t n_bytes;       /* total bytes hashed so far */
    uint8_t  buf[64];
    size_t   n_buf;
} dg_sha256_ctx;

void dg_sha256_init(dg_sha256_ctx *c);
void dg_sha256_update(dg_sha256_ctx *c, const void *data, size_t n);
void dg_sha256_final(dg_sha256_ctx *c, uint8_t out[32]);
/* One shot. */
void dg_sha256(const void *data, size_t n, uint8_t out[32]);
/* Lowercase hex, NUL-terminated (65 bytes). */
void dg_sha256_hex(const uint8_t digest[32], char out[65]);
/* Hash a whole file; *size_out (may be NULL) gets its length. Returns 0 or DG_EIO / DG_ENOTFOUND
 * with a message in err. */
int  dg_sha256_file(const char *path, char hex_out[65], uint64_t *size_out, char *err,
                    size_t errlen);
#endif
