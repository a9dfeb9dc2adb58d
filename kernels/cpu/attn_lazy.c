/* kernels/cpu/attn_lazy.c -- the recurrent decode step with lazily applied decay.
 *
 * Under ALiBi every token multiplies the whole state (H x Nq x D per layer) by g_h. Doing that
 * eagerly streams the entire state through memory on every token, while the read and the
 * rank-1 write only touch the rows where q != 0. Here the state is kept as scale * rho: the
 * decay multiplies the scale, the write adds (q / scale) v^T to the active rows, and the read is
 * scale * rho^T q. When the scale drops below DG_LAZY_SCALE_MIN it is folded into the rows once
 * (amortised over ~40 tokens for g = 0.37). Same math as cpu_attn_step; rounding differs at the
 * 1e-7 level. (sequence, head) pairs are shared between two cores by kernels/cpu/pool.c.
 * Thread affinity: the cpu backend's thread (plus the pool's worker). */
#include "backend.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define DG_X86 1
#endif

int dg__cpu_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                           dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma);

int dg__cpu_isa_avx512(int want);    /* kernels/cpu/gemm_small.c: 1 when AVX-512 is in use */

typedef void (*dg_pool_fn)(void *arg, int64_t chunk);   /* kernels/cpu/pool.c */
void dg__cpu_pool_run(dg_pool_fn fn, void *arg, int64_t n);

typedef struct {
    int              B;
    int64_t          H, Nq, D;
    const dg_tensor *rho;
    float           *scale;
    const float     *Q, *V, *gamma;
    float           *O;
    int              avx512;
} step_job;

#define WIN 4096                   /* active-row indices listed per window (stack) */

/* Rows idx[0..na) of head state Rh (stored scale * rho): o += qn row (the old row), then
 * row += (qn / scale) v. Portable loops. */
static void attn_rows_portable(float *Rh, const int32_t *idx, int64_t na, const float *qh, float inv,
                          const float *restrict vb, float *restrict o, int64_t D) {
    for (int64_t a = 0; a < na; a++) {         /* read the old row, then write it */
        float qn = qh[idx[a]], qw = qn * inv;
        float *restrict row = Rh + (int64_t)idx[a] * D;
        if (a + 2 < na) {                      /* rows are scattered: fetch two ahead */
            const char *nx = (const char *)(Rh + (int64_t)idx[a + 2] * D);
            for (int64_t off = 0; off < D * 4; off += 64) __builtin_prefetch(nx + off, 1, 3);
        }
        for (int64_t d = 0; d < D; d++) {
            o[d] += qn * row[d];
            row[d] += qw * vb[d];
        }
    }
}

#ifdef DG_X86
#define T512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
/* The same with AVX-512: 256 columns of o stay in 16 registers while the rows stream by. */
static T512 void attn_rows512(float *Rh, const int32_t *idx, int64_t na, const float *qh, float inv,
                         const float *restrict vb, float *restrict o, int64_t D) {
    for (int64_t d0 = 0; d0 < D; d0 += 256) {
        __m512 acc[16];
        __mmask16 mk[16];
        for (int v = 0; v < 16; v++) {
            int64_t left = D - d0 - 16 * v;
            mk[v] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            acc[v] = _mm512_setzero_ps();
        }
        for (int64_t a = 0; a < na; a++) {
            float qn = qh[idx[a]];
            __m512 q = _mm512_set1_ps(qn), qw = _mm512_set1_ps(qn * inv);
            float *row = Rh + (int64_t)idx[a] * D + d0;
            if (a + 4 < na) {
                const char *nx = (const char *)(Rh + (int64_t)idx[a + 4] * D + d0);
                for (int v = 0; v < 16; v++)
                    if (mk[v]) _mm_prefetch(nx + 64 * v, _MM_HINT_NTA);
            }
            for (int v = 0; v < 16; v++) {
                __m512 r = _mm512_maskz_loadu_ps(mk[v], row + 16 * v);
                acc[v] = _mm512_fmadd_ps(q, r, acc[v]);
                r = _mm512_fmadd_ps(qw, _mm512_maskz_loadu_ps(mk[v], vb + d0 + 16 * v), r);
                _mm512_mask_storeu_ps(row + 16 * v, mk[v], r);
            }
        }
        for (int v = 0; v < 16; v++)
            _mm512_mask_storeu_ps(o + d0 + 16 * v, mk[v],
                                  _mm512_add_ps(acc[v], _mm512_maskz_loadu_ps(mk[v], o + d0 + 16 * v)));
    }
}
#endif

/* One (sequence, head) pair: read the active rows, write them, decay the scale. */
static void step_pair(step_job *j, int64_t b, int64_t h) {
    int64_t Nq = j->Nq, D = j->D, H = j->H;
    float *Rh = (float *)dg_t_host(j->rho[b]) + h * Nq * D;
    const float *restrict vb = j->V + b * D;
    const float *qh = j->Q + (b * H + h) * Nq;
    float *restrict o = j->O + (b * H + h) * D;
    float *s = &j->scale[b * H + h];
    int32_t idx[WIN];
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    float inv = 1.0f / *s;
    for (int64_t n0 = 0; n0 < Nq; n0 += WIN) {
        int64_t na = 0, n1 = n0 + WIN < Nq ? n0 + WIN : Nq;
        for (int64_t n = n0; n < n1; n++)
            idx[na] = (int32_t)n, na += qh[n] != 0.0f;     /* branch-free: random zeros */
#ifdef DG_X86
        if (j->avx512) { attn_rows512(Rh, idx, na, qh, inv, vb, o, D); continue; }
#endif
        attn_rows_portable(Rh, idx, na, qh, inv, vb, o, D);
    }
    if (*s != 1.0f)
        for (int64_t d = 0; d < D; d++) o[d] *= *s;
    *s *= j->gamma[h];
    if (*s < DG_LAZY_SCALE_MIN) {              /* fold the scale into the rows */
        float f = *s;
        for (int64_t i = 0; i < Nq * D; i++) Rh[i] *= f;
        *s = 1.0f;
    }
}

/* Pool chunk p: the pair (p / H, p % H). */
static void step_chunk(void *arg, int64_t p) {
    step_job *j = arg;
    step_pair(j, p / j->H, p % j->H);
}

int dg__cpu_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                           dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma) {
    (void)be;
    step_job j = {.B = B, .Nq = q.ne[0], .D = v.ne[0], .rho = rho, .scale = scale,
                  .Q = dg_t_host(q), .V = dg_t_host(v), .gamma = gamma, .O = dg_t_host(out)};
    j.H = dg_nelem(q) / ((int64_t)B * j.Nq);
    j.avx512 = dg__cpu_isa_avx512(-1);
    dg__cpu_pool_run(step_chunk, &j, (int64_t)B * j.H);
    return 0;
}
