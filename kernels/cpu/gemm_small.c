/* kernels/cpu/gemm_small.c -- GEMMs with few rows (M <= 16): the decode path.
 *
 * OpenBLAS packs the whole B operand on every sgemm call; for one or a few rows (a decode step
 * of 1..16 sequences) that packing costs more than the arithmetic. Here C rows are built
 * directly: for B stored (K, N), C[i] += A[i,k] * B[k] over k, skipping A[i,k] == 0 -- the
 * Dragon activations feeding the decoder are ReLU products, mostly zero, so whole weight rows
 * are never read; for B stored transposed (N, K), C[i,j] = A[i] . B[j].
 * Accumulation is f32 in a different order than sgemm: results agree with ref within the
 * usual 1e-5 relative. Thread affinity: the cpu backend's thread. */
#include "backend.h"

#include <string.h>

int dg__cpu_gemm_small(const dg_gemm_desc *d);

#define SMALL_M 16

static inline void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] += a * x[j];
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        s0 += a[j] * b[j];         s1 += a[j + 1] * b[j + 1];
        s2 += a[j + 2] * b[j + 2]; s3 += a[j + 3] * b[j + 3];
        s4 += a[j + 4] * b[j + 4]; s5 += a[j + 5] * b[j + 5];
        s6 += a[j + 6] * b[j + 6]; s7 += a[j + 7] * b[j + 7];
    }
    for (; j < n; j++) s0 += a[j] * b[j];
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

/* Columns [j_lo, j_hi) of every batch item and row. */
static void gemm_cols(const dg_gemm_desc *d, int64_t j_lo, int64_t j_hi) {
    int64_t M = d->M, K = d->K;
    float acc[SMALL_M * 512];
    for (int64_t bi = 0; bi < d->batch; bi++) {
        const float *A = (const float *)((const char *)d->A.buf->data + d->A.offs);
        const float *B = (const float *)((const char *)d->B.buf->data + d->B.offs);
        A += bi * d->A.bstride;
        B += bi * d->B.bstride;
        float *C = (float *)((char *)d->C.buf->data + d->C.offs) + bi * d->C.bstride;
        if (!d->B.trans) {
            /* column blocks of 512 keep the accumulator rows in L1 */
            for (int64_t j0 = j_lo; j0 < j_hi; j0 += 512) {
                int64_t nj = j_hi - j0 < 512 ? j_hi - j0 : 512;
                memset(acc, 0, sizeof(float) * (size_t)(M * nj));
                for (int64_t k = 0; k < K; k++) {
                    const float *brow = B + k * d->B.ld + j0;
                    for (int64_t i = 0; i < M; i++) {
                        float a = A[i * d->A.ld + k];
                        if (a != 0.0f) axpy(acc + i * nj, a, brow, nj);
                    }
                }
                for (int64_t i = 0; i < M; i++) {
                    float *c = C + i * d->C.ld + j0;
                    const float *sr = acc + i * nj;
                    if (d->beta == 0.0f)
                        for (int64_t j = 0; j < nj; j++) c[j] = d->alpha * sr[j];
                    else
                        for (int64_t j = 0; j < nj; j++) c[j] = d->beta * c[j] + d->alpha * sr[j];
                }
            }
        } else {
            for (int64_t i = 0; i < M; i++) {
                const float *a = A + i * d->A.ld;
                float *c = C + i * d->C.ld;
                for (int64_t j = j_lo; j < j_hi; j++) {
                    float sv = d->alpha * dot(a, B + j * d->B.ld, K);
                    c[j] = d->beta == 0.0f ? sv : d->beta * c[j] + sv;
                }
            }
        }
    }
}

/* Returns 1 when it computed the GEMM, 0 when the shape is not for it (caller uses sgemm). */
int dg__cpu_gemm_small(const dg_gemm_desc *d) {
    if (d->M > SMALL_M || d->A.trans) return 0;
    gemm_cols(d, 0, d->N);
    return 1;
}
