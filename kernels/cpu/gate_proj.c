/* kernels/cpu/gate_proj.c -- the decode step's encoder_v GEMM, ReLU and gate in one pass that
 * reads only the weights of active neurons (the gate_proj verb of engine/backend.h).
 *
 * z[r, h, j] = x[r, h, j] * max(a[r, h] . wt[h, j] - thr, 0) where x != 0. x is a ReLU output,
 * so about half of it (an untrained model) or more is exactly zero, and the encoder_v rows of
 * those neurons are never read: a decode step streams less of the weights, which on this path
 * come from L2/L3, not from arithmetic.
 * Work is split in chunks of CJ neurons of one head; kernels/cpu/pool.c shares them between two
 * cores, each core taking the same half every call, so its half of wt stays in its own L2.
 * Within a chunk each row r lists its active neurons first (branch-free: the zero pattern is
 * random), then takes their dots two at a time. f32 accumulation in a different order than
 * ref's double: agreement within the usual 1e-5 relative.
 * Thread affinity: the cpu backend's thread (plus the pool's worker). */
#include "backend.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define DG_X86 1
#endif

int dg__cpu_gate_proj(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt,
                      float thr);

int dg__cpu_isa_avx512(int want);    /* kernels/cpu/gemm_small.c: 1 when AVX-512 is in use */

typedef void (*dg_pool_fn)(void *arg, int64_t chunk);   /* kernels/cpu/pool.c */
void dg__cpu_pool_run(dg_pool_fn fn, void *arg, int64_t n);

#define CJ 32                       /* neurons per chunk: 32 rows of wt (D = 256: 32 KiB, L1) */

typedef struct {
    int64_t      R, H, N, D;
    const float *X, *A, *W;
    float       *Z;
    float        thr;
    int          avx512;
} gp_job;

static inline float relu_thr(float s, float thr) {
    float y = s - thr;
    return y > 0.0f ? y : 0.0f;
}

static float dot_portable(const float *restrict a, const float *restrict w, int64_t D) {
    float s[8] = {0};
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        for (int k = 0; k < 8; k++) s[k] += a[d + k] * w[d + k];
    for (; d < D; d++) s[0] += a[d] * w[d];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#ifdef DG_X86
#define T512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))

/* Two dots against one a row: independent chains, two accumulators each. */
static T512 void dot2_512(const float *a, const float *w0, const float *w1, int64_t D,
                          float *s0, float *s1) {
    __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
    __m512 q0 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        __m512 a0 = _mm512_loadu_ps(a + d), a1 = _mm512_loadu_ps(a + d + 16);
        p0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(w0 + d), p0);
        q0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(w1 + d), q0);
        p1 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(w0 + d + 16), p1);
        q1 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(w1 + d + 16), q1);
    }
    for (; d < D; d += 16) {
        __mmask16 m = D - d >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (D - d)) - 1);
        __m512 a0 = _mm512_maskz_loadu_ps(m, a + d);
        p0 = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m, w0 + d), p0);
        q0 = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(m, w1 + d), q0);
    }
    *s0 = _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
    *s1 = _mm512_reduce_add_ps(_mm512_add_ps(q0, q1));
}

static inline void prefetch_row(const float *w, int64_t D) {
    for (int64_t off = 0; off < D * 4; off += 64) _mm_prefetch((const char *)w + off, _MM_HINT_T0);
}

static T512 void chunk512(const gp_job *j, int64_t h, int64_t j0, int64_t nj) {
    int32_t idx[CJ];
    for (int64_t r = 0; r < j->R; r++) {
        const float *x = j->X + (r * j->H + h) * j->N + j0;
        const float *a = j->A + (r * j->H + h) * j->D;
        const float *W = j->W + (h * j->N + j0) * j->D;
        float *z = j->Z + (r * j->H + h) * j->N + j0;
        int na = 0;
        for (int k = 0; k < nj; k++) {
            idx[na] = k;
            na += x[k] != 0.0f;
            z[k] = 0.0f;
        }
        /* the rows are scattered (random active neurons): fetch the first ones now, and each
         * pair's successors two pairs ahead */
        for (int t = 0; t < na && t < 4; t++) prefetch_row(W + idx[t] * j->D, j->D);
        int t = 0;
        for (; t + 2 <= na; t += 2) {
            int k0 = idx[t], k1 = idx[t + 1];
            if (t + 4 < na) prefetch_row(W + idx[t + 4] * j->D, j->D);
            if (t + 5 < na) prefetch_row(W + idx[t + 5] * j->D, j->D);
            float s0, s1;
            dot2_512(a, W + k0 * j->D, W + k1 * j->D, j->D, &s0, &s1);
            z[k0] = x[k0] * relu_thr(s0, j->thr);
            z[k1] = x[k1] * relu_thr(s1, j->thr);
        }
        if (t < na) {
            int k0 = idx[t];
            float s0, s1;
            dot2_512(a, W + k0 * j->D, W + k0 * j->D, j->D, &s0, &s1);
            z[k0] = x[k0] * relu_thr(s0, j->thr);
        }
    }
}
#endif

static void chunk_portable(const gp_job *j, int64_t h, int64_t j0, int64_t nj) {
    for (int64_t r = 0; r < j->R; r++) {
        const float *x = j->X + (r * j->H + h) * j->N + j0;
        const float *a = j->A + (r * j->H + h) * j->D;
        const float *W = j->W + (h * j->N + j0) * j->D;
        float *z = j->Z + (r * j->H + h) * j->N + j0;
        for (int64_t k = 0; k < nj; k++)
            z[k] = x[k] != 0.0f ? x[k] * relu_thr(dot_portable(a, W + k * j->D, j->D), j->thr) : 0.0f;
    }
}

static void chunk_fn(void *arg, int64_t c) {
    const gp_job *j = arg;
    int64_t per = (j->N + CJ - 1) / CJ, h = c / per, j0 = (c % per) * CJ;
    int64_t nj = j->N - j0 < CJ ? j->N - j0 : CJ;
#ifdef DG_X86
    if (j->avx512) { chunk512(j, h, j0, nj); return; }
#endif
    chunk_portable(j, h, j0, nj);
}

int dg__cpu_gate_proj(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt,
                      float thr) {
    (void)be;
    gp_job j = {.D = wt.ne[0], .N = wt.ne[1], .H = wt.ne[2], .thr = thr,
                .X = dg_t_host(x), .A = dg_t_host(a), .W = dg_t_host(wt), .Z = dg_t_host(z),
                .avx512 = dg__cpu_isa_avx512(-1)};
    j.R = dg_nelem(x) / (j.H * j.N);
    int64_t n = j.H * ((j.N + CJ - 1) / CJ);
    if (j.R * j.H * j.N * j.D >= 65536) dg__cpu_pool_run(chunk_fn, &j, n);
    else for (int64_t c = 0; c < n; c++) chunk_fn(&j, c);
    return 0;
}
