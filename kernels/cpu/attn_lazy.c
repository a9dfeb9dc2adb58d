/* kernels/cpu/attn_lazy.c -- the recurrent decode step with lazily applied decay.
 *
 * Under ALiBi every token multiplies the whole state (H x Nq x D per layer) by g_h. Doing that
 * eagerly streams the entire state through memory on every token, while the read and the
 * rank-1 write only touch the rows where q != 0. Here the state is kept as scale * rho: the
 * decay multiplies the scale, the write adds (q / scale) v^T to the active rows, and the read is
 * scale * rho^T q. When the scale drops below DG_LAZY_SCALE_MIN it is folded into the rows once
 * (amortised over ~40 tokens for g = 0.37). Same math as cpu_attn_step; rounding differs at the
 * 1e-7 level. Thread affinity: the cpu backend's thread. */
#include "backend.h"

int dg__cpu_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                           dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma);

#define MAX_STACK_IDX 32768

typedef struct {
    int              B;
    int64_t          H, Nq, D;
    const dg_tensor *rho;
    float           *scale;
    const float     *Q, *V, *gamma;
    float           *O;
    int              err;
} step_job;

/* One (sequence, head) pair: read the active rows, write them, decay the scale. */
static void step_pair(step_job *j, int64_t b, int64_t h, int32_t *idx) {
    int64_t Nq = j->Nq, D = j->D, H = j->H;
    float *Rh = (float *)dg_t_host(j->rho[b]) + h * Nq * D;
    const float *restrict vb = j->V + b * D;
    const float *qh = j->Q + (b * H + h) * Nq;
    float *restrict o = j->O + (b * H + h) * D;
    float *s = &j->scale[b * H + h];
    int64_t na = 0;
    for (int64_t n = 0; n < Nq; n++)
        if (qh[n] != 0.0f) idx[na++] = (int32_t)n;
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    float inv = 1.0f / *s;
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
    if (*s != 1.0f)
        for (int64_t d = 0; d < D; d++) o[d] *= *s;
    *s *= j->gamma[h];
    if (*s < DG_LAZY_SCALE_MIN) {              /* fold the scale into the rows */
        float f = *s;
        for (int64_t i = 0; i < Nq * D; i++) Rh[i] *= f;
        *s = 1.0f;
    }
}

static void step_job_run(step_job *j) {
    int32_t stack_idx[j->Nq <= MAX_STACK_IDX ? j->Nq : 1];
    int32_t *idx = j->Nq <= MAX_STACK_IDX ? stack_idx : dg_try_malloc((size_t)j->Nq * sizeof *idx);
    if (!idx) { j->err = DG_ENOMEM; return; }
    for (int64_t p = 0; p < (int64_t)j->B * j->H; p++) step_pair(j, p / j->H, p % j->H, idx);
    if (idx != stack_idx) dg_free(idx);
}

int dg__cpu_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                           dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma) {
    (void)be;
    step_job j = {.B = B, .Nq = q.ne[0], .D = v.ne[0], .rho = rho, .scale = scale,
                  .Q = dg_t_host(q), .V = dg_t_host(v), .gamma = gamma, .O = dg_t_host(out)};
    j.H = dg_nelem(q) / ((int64_t)B * j.Nq);
    step_job_run(&j);
    return j.err;
}
