/* kernels/cpu/backend_cpu.c -- the "cpu" backend: OpenBLAS sgemm plus loops that gcc -O3
 * -march=x86-64-v3 vectorises. Every op computes what kernels/ref/backend_ref.c specifies and is
 * tested against it (tests/kernels/test_parity.c, relative error < 1e-5).
 *
 * What it is not: threaded by itself. The only threads are OpenBLAS's own (Debian ships the
 * pthread build); no OpenMP, so nothing nests. Elementwise loops are single-threaded and
 * memory-bound. No allocation inside ops except the bounded scratch kept in the context (grown
 * rarely, kept for the life of the backend).
 *
 * Attention (the heavy op besides the linear layers) is done as GEMMs per (b, h) over row blocks
 * of BT query rows: S = Q_blk Q_cols^T, S *= M (strictly causal decay mask), out_blk = S V_cols.
 * Columns whose decay weight g^(t-s) is below DECAY_CUT (1e-12, far below f32 rounding) are
 * skipped, so ALiBi-decayed heads only compute a band. Backward reuses the same blocks:
 * dV += S^T dO, dS = (dO V^T) .* M, dQ += dS Q + dS^T Q, plus the carried-state terms.
 *
 * Thread affinity: a handle belongs to one thread (its scratch is not shared). */
#include "backend.h"
#include "dg_hash.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define TWO_PI 6.283185307179586476925286766559

/* Decay weights below this are treated as 0 (an output term g^k (q.q) v with g^k < 1e-12 is
 * ~1e-5 of one float ulp of the leading term). Also keeps denormals out of the GEMMs. */
#define DECAY_CUT 1e-12

/* Elementwise ops are written as functions over a range [lo, hi) of rows or elements, run by
 * par_for. A second thread for them was measured (2 cores, after/between OpenBLAS GEMMs) and
 * did not pay: it was slower or equal, so par_for runs the whole range on the calling thread. */
typedef void (*range_fn)(void *arg, int tid, int64_t lo, int64_t hi);

typedef struct {
    float   *scratch;      /* general float scratch, grown on demand */
    size_t   scratch_n;    /* floats */
    int32_t *idx;          /* active-row indices for attn_step */
    size_t   idx_n;
    /* positional cos/sin table for positions [tab_p0, tab_p0 + tab_np), tab_nf freqs each */
    float   *tab_c, *tab_s;
    size_t   tab_cap;      /* floats allocated in each of tab_c, tab_s */
    int64_t  tab_p0, tab_np, tab_nf, tab_N;
    int      tab_mode;
    float    tab_theta;
    bool     tab_valid;
} cpu_ctx;

static float *F(dg_tensor t) { return (float *)dg_t_host(t); }
static const int32_t *I32(dg_tensor t) { return (const int32_t *)dg_t_host(t); }
static float *MP(const dg_mat *m) { return (float *)((char *)m->buf->data + m->offs); }

/* Scratch of at least n floats; NULL when memory is out (the caller returns DG_ENOMEM). */
static float *scratch(dg_backend_t *be, size_t n) {
    cpu_ctx *c = be->ctx;
    if (n <= c->scratch_n) return c->scratch;
    size_t want = n + n / 4 + 1024;
    float *p = dg_try_malloc(want * sizeof *p);
    if (!p) {
        snprintf(be->errmsg, sizeof be->errmsg, "cpu: scratch of %zu bytes", want * sizeof *p);
        return NULL;
    }
    dg_free(c->scratch);
    c->scratch = p;
    c->scratch_n = want;
    return p;
}

// ------------------------------------------------------------------------------------------
// ranges

static void par_for(cpu_ctx *c, range_fn fn, void *arg, int64_t n, int64_t work, int64_t align) {
    (void)c; (void)work; (void)align;
    fn(arg, 0, 0, n);
}

// ------------------------------------------------------------------------------------------
// lifecycle and memory

/* n_threads > 0 sets OpenBLAS's thread count (process-wide); 0 keeps its default. */
static int cpu_init(dg_backend_t *be, const dg_backend_params *p) {
    cpu_ctx *c = dg_calloc(1, sizeof *c);
    be->ctx = c;
    if (p && p->n_threads > 0) openblas_set_num_threads(p->n_threads);
    return 0;
}

static void cpu_free(dg_backend_t *be) {
    cpu_ctx *c = be->ctx;
    if (!c) return;
    dg_free(c->scratch);
    dg_free(c->idx);
    dg_free(c->tab_c);
    dg_free(c->tab_s);
    dg_free(c);
    be->ctx = NULL;
}

static int cpu_buf_alloc(dg_backend_t *be, size_t nbytes, dg_buf_t **out) {
    (void)be;
    void *data = dg_try_malloc(nbytes ? nbytes : 1);
    if (!data) return DG_ENOMEM;
    dg_buf_t *b = dg_malloc(sizeof *b);
    b->data = data;
    b->nbytes = nbytes;
    b->priv = NULL;
    *out = b;
    return 0;
}

static void cpu_buf_free(dg_backend_t *be, dg_buf_t *buf) {
    (void)be;
    if (!buf) return;
    dg_free(buf->data);
    dg_free(buf);
}

static int cpu_set(dg_backend_t *be, dg_tensor dst, const void *host) {
    (void)be;
    memcpy(dg_t_host(dst), host, dg_nbytes(dst));
    return 0;
}

static int cpu_get(dg_backend_t *be, void *host, dg_tensor src) {
    (void)be;
    memcpy(host, dg_t_host(src), dg_nbytes(src));
    return 0;
}

static int cpu_copy(dg_backend_t *be, dg_tensor dst, dg_tensor src) {
    (void)be;
    memmove(dg_t_host(dst), dg_t_host(src), dg_nbytes(dst));
    return 0;
}

static int cpu_fill(dg_backend_t *be, dg_tensor t, float value) {
    (void)be;
    float *restrict x = F(t);
    int64_t n = dg_nelem(t);
    for (int64_t i = 0; i < n; i++) x[i] = value;
    return 0;
}

static int cpu_sync(dg_backend_t *be) { (void)be; return 0; }

// ------------------------------------------------------------------------------------------
// small vector helpers (8 independent accumulators: gcc turns them into one ymm register)

static inline float vsum(const float *restrict a, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k];
    float s = 0.0f;
    for (; i < n; i++) s += a[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static inline float vdot(const float *restrict a, const float *restrict b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* sum a, and sum (a - m)^2, accumulated in double (4 lanes) */
static inline double vsum_d(const float *restrict a, int64_t n) {
    double acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) acc[k] += (double)a[i + k];
    double s = 0.0;
    for (; i < n; i++) s += a[i];
    return s + ((acc[0] + acc[2]) + (acc[1] + acc[3]));
}

static inline double vvar_d(const float *restrict a, double m, int64_t n) {
    double acc[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) acc[k] += ((double)a[i + k] - m) * ((double)a[i + k] - m);
    double s = 0.0;
    for (; i < n; i++) s += ((double)a[i] - m) * ((double)a[i] - m);
    return s + ((acc[0] + acc[2]) + (acc[1] + acc[3]));
}

/* y[i] += a * x[i] */
static inline void vaxpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

// ------------------------------------------------------------------------------------------
// dense algebra

int dg__cpu_gemm_small(const dg_gemm_desc *d);   /* kernels/cpu/gemm_small.c */
int dg__cpu_gate_proj(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt,
                      float thr);                      /* kernels/cpu/gate_proj.c */
/* kernels/cpu/attn_lazy.c */
int dg__cpu_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                           dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma);

static int cpu_gemm(dg_backend_t *be, const dg_gemm_desc *d) {
    (void)be;
    if (dg__cpu_gemm_small(d)) return 0;              /* few rows: decode steps */
    const float *A = MP(&d->A), *B = MP(&d->B);
    float *C = MP(&d->C);
    for (int64_t k = 0; k < d->batch; k++) {
        cblas_sgemm(CblasRowMajor, d->A.trans ? CblasTrans : CblasNoTrans,
                    d->B.trans ? CblasTrans : CblasNoTrans, (int)d->M, (int)d->N, (int)d->K,
                    d->alpha, A + k * d->A.bstride, (int)d->A.ld, B + k * d->B.bstride,
                    (int)d->B.ld, d->beta, C + k * d->C.bstride, (int)d->C.ld);
    }
    return 0;
}

static int cpu_axpy(dg_backend_t *be, dg_tensor y, float a, dg_tensor x) {
    (void)be;
    vaxpy(F(y), a, F(x), dg_nelem(y));
    return 0;
}

static int cpu_scale(dg_backend_t *be, dg_tensor x, float a) {
    (void)be;
    float *restrict p = F(x);
    int64_t n = dg_nelem(x);
    for (int64_t i = 0; i < n; i++) p[i] *= a;
    return 0;
}

/* sum of squares: float partial sums over blocks of 1024, accumulated in double */
static int cpu_sumsq(dg_backend_t *be, double *out, dg_tensor x) {
    (void)be;
    const float *p = F(x);
    int64_t n = dg_nelem(x);
    double s = 0.0;
    for (int64_t i = 0; i < n; i += 1024) {
        int64_t m = n - i < 1024 ? n - i : 1024;
        s += vdot(p + i, p + i, m);
    }
    *out = s;
    return 0;
}

// ------------------------------------------------------------------------------------------
// embedding

static int check_tokens(const char *op, const int32_t *ids, int64_t R, int64_t V) {
    for (int64_t r = 0; r < R; r++) {
        if (ids[r] < 0 || ids[r] >= V) {
            DG_ERROR("%s: token %d at row %lld is outside [0, %lld)", op, (int)ids[r],
                     (long long)r, (long long)V);
            return DG_EINVAL;
        }
    }
    return 0;
}

static int cpu_embed_fwd(dg_backend_t *be, dg_tensor out, dg_tensor tok, dg_tensor wte) {
    (void)be;
    int64_t D = wte.ne[0], V = dg_nelem(wte) / D, R = dg_nelem(tok);
    const int32_t *ids = I32(tok);
    int rc = check_tokens("embed_fwd", ids, R, V);
    if (rc) return rc;
    float *o = F(out);
    const float *w = F(wte);
    for (int64_t r = 0; r < R; r++)
        memcpy(o + r * D, w + (int64_t)ids[r] * D, (size_t)D * sizeof(float));
    return 0;
}

static int cpu_embed_bwd(dg_backend_t *be, dg_tensor dwte, dg_tensor dout, dg_tensor tok) {
    (void)be;
    int64_t D = dwte.ne[0], V = dg_nelem(dwte) / D, R = dg_nelem(tok);
    const int32_t *ids = I32(tok);
    int rc = check_tokens("embed_bwd", ids, R, V);
    if (rc) return rc;
    float *dw = F(dwte);
    const float *g = F(dout);
    for (int64_t r = 0; r < R; r++) vaxpy(dw + (int64_t)ids[r] * D, 1.0f, g + r * D, D);
    return 0;
}

// ------------------------------------------------------------------------------------------
// LayerNorm

typedef struct {
    int64_t D;
    const float *x, *g, *b, *dy, *pm, *ps;
    float *o, *m, *s, *dx, *dg, *db, *tmp;
    float eps;
} ln_args;

static void ln_fwd_range(void *arg, int tid, int64_t r0, int64_t r1) {
    const ln_args *a = arg;
    int64_t D = a->D;
    const float *x = a->x, *g = a->g, *b = a->b;
    float *o = a->o, *pm = a->m, *ps = a->s, eps = a->eps;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * D;
        /* statistics in double (as ref); the mean is applied as mh + ml (a float pair) so that
         * x - mean stays accurate when |mean| >> std */
        double md = vsum_d(xr, D) / (double)D;
        float mh = (float)md, ml = (float)(md - (double)mh);
        float s = (float)(1.0 / sqrt(vvar_d(xr, md, D) / (double)D + (double)eps));
        float *orow = o + r * D;   /* may alias xr: elementwise read-then-write */
        if (g) {
            for (int64_t i = 0; i < D; i++) orow[i] = ((xr[i] - mh) - ml) * s * g[i] + b[i];
        } else {
            for (int64_t i = 0; i < D; i++) orow[i] = ((xr[i] - mh) - ml) * s;
        }
        pm[r] = mh;
        ps[r] = s;
    }
}

static int cpu_layernorm_fwd(dg_backend_t *be, dg_tensor out, dg_tensor mean, dg_tensor rstd,
                             dg_tensor inp, dg_tensor gamma, dg_tensor beta, float eps) {
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    ln_args a = {.D = D, .x = F(inp), .o = F(out), .m = F(mean), .s = F(rstd), .eps = eps,
                 .g = dg_t_present(gamma) ? F(gamma) : NULL,
                 .b = dg_t_present(beta) ? F(beta) : NULL};
    par_for(be->ctx, ln_fwd_range, &a, R, R * D, 1);
    return 0;
}

/* Range tid uses tmp + tid * 4D: n (D), dn (D) of one row, and, for tid > 0, partial dgamma,
 * dbeta (zeroed by the caller and added after); tid 0 accumulates into dgamma/dbeta. */
static void ln_bwd_range(void *arg, int tid, int64_t r0, int64_t r1) {
    const ln_args *a = arg;
    int64_t D = a->D;
    const float *x = a->x, *dy = a->dy, *pm = a->pm, *ps = a->ps, *g = a->g;
    float *dx = a->dx;
    float *restrict nrm = a->tmp + tid * 4 * D, *restrict dn = nrm + D;
    float *dg = a->dg, *db = a->db;
    if (dg && tid) {                              /* zeroed by the caller */
        dg = dn + D;
        db = dg + D;
    }
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict xr = x + r * D, *restrict dyr = dy + r * D;
        float m = pm[r], s = ps[r];
        for (int64_t i = 0; i < D; i++) nrm[i] = (xr[i] - m) * s;
        if (g) {
            for (int64_t i = 0; i < D; i++) dn[i] = dyr[i] * g[i];
        } else {
            memcpy(dn, dyr, (size_t)D * sizeof(float));
        }
        float dn_mean = vsum(dn, D) / (float)D;
        float dnn_mean = vdot(dn, nrm, D) / (float)D;
        float *restrict dxr = dx + r * D;
        for (int64_t i = 0; i < D; i++) dxr[i] += s * (dn[i] - dn_mean - nrm[i] * dnn_mean);
        if (dg) {
            for (int64_t i = 0; i < D; i++) {
                dg[i] += dyr[i] * nrm[i];
                db[i] += dyr[i];
            }
        }
    }
}

static int cpu_layernorm_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dgamma, dg_tensor dbeta,
                             dg_tensor dout, dg_tensor inp, dg_tensor mean, dg_tensor rstd,
                             dg_tensor gamma) {
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    float *tmp = scratch(be, (size_t)(8 * D));
    if (!tmp) return DG_ENOMEM;
    ln_args a = {.D = D, .x = F(inp), .dy = F(dout), .pm = F(mean), .ps = F(rstd),
                 .dx = F(dinp), .tmp = tmp, .g = dg_t_present(gamma) ? F(gamma) : NULL,
                 .dg = dg_t_present(dgamma) ? F(dgamma) : NULL,
                 .db = dg_t_present(dbeta) ? F(dbeta) : NULL};
    memset(tmp + 6 * D, 0, (size_t)(2 * D) * sizeof(float));
    par_for(be->ctx, ln_bwd_range, &a, R, R * D, 1);
    if (a.dg) {                                   /* add the partial sums of tid 1 (0s now) */
        const float *pg = tmp + 4 * D + 2 * D, *pb = pg + D;
        for (int64_t i = 0; i < D; i++) {
            a.dg[i] += pg[i];
            a.db[i] += pb[i];
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// ReLU

/* elementwise operands shared by relu, gate, add */
typedef struct {
    float *o, *o2;
    const float *a, *b, *c;
    float f;
    uint64_t seed;
} ew_args;

static void relu_fwd_range(void *arg, int tid, int64_t lo, int64_t hi) {
    const ew_args *e = arg;
    const float *x = e->a;
    float *o = e->o, thr = e->f;
    for (int64_t i = lo; i < hi; i++) {
        float y = x[i] - thr;
        o[i] = y > 0.0f ? y : 0.0f;
    }
}

static int cpu_relu_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, float thr) {
    ew_args e = {.o = F(out), .a = F(inp), .f = thr};
    int64_t n = dg_nelem(inp);
    par_for(be->ctx, relu_fwd_range, &e, n, n, 64);
    return 0;
}

static void relu_bwd_range(void *arg, int tid, int64_t lo, int64_t hi) {
    const ew_args *e = arg;
    float *dx = e->o;
    const float *dy = e->a, *restrict y = e->b;
    for (int64_t i = lo; i < hi; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f;
}

static int cpu_relu_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor out) {
    ew_args e = {.o = F(dinp), .a = F(dout), .b = F(out)};
    int64_t n = dg_nelem(out);
    par_for(be->ctx, relu_bwd_range, &e, n, n, 64);
    return 0;
}

// ------------------------------------------------------------------------------------------
// positional transforms: cos/sin of 2 pi frac(p f_i), tabulated per position

/* Fill c[k], s[k] (k < nf) for position p exactly as ref does (double phase, cast to float). */
static void pos_row(float *c, float *s, int64_t p, dg_pos_mode mode, int64_t N, int64_t nf,
                    double theta) {
    for (int64_t k = 0; k < nf; k++) {
        int64_t i = mode == DG_POS_ROPE ? 2 * k : k;
        double e = mode == DG_POS_ROPE ? (double)(2 * (i / 2)) / (double)N : (double)i / (double)N;
        double f = pow(theta, -e) / TWO_PI;
        double turns = (double)p * f;
        double phi = TWO_PI * (turns - floor(turns));
        c[k] = (float)cos(phi);
        s[k] = (float)sin(phi);
    }
}

/* cos/sin rows for position p: from the cached table when it covers p, else computed into
 * row (2*nf floats of scratch). */
static void pos_get(cpu_ctx *c, int64_t p, dg_pos_mode mode, int64_t N, int64_t nf, float theta,
                    float *row, const float **pc, const float **ps) {
    if (c->tab_valid && p >= c->tab_p0 && p < c->tab_p0 + c->tab_np) {
        *pc = c->tab_c + (p - c->tab_p0) * nf;
        *ps = c->tab_s + (p - c->tab_p0) * nf;
        return;
    }
    pos_row(row, row + nf, p, mode, N, nf, theta);
    *pc = row;
    *ps = row + nf;
}

/* Make the table cover [plo, phi) when that is cheap next to the rows that will use it
 * (training: pos0 = 0 for all b, T positions for B*T rows). */
static void pos_table(cpu_ctx *c, int64_t plo, int64_t phi, int64_t rows, dg_pos_mode mode,
                      int64_t N, int64_t nf, float theta) {
    if (c->tab_valid && c->tab_mode == (int)mode && c->tab_N == N && c->tab_theta == theta &&
        plo >= c->tab_p0 && phi <= c->tab_p0 + c->tab_np)
        return;
    int64_t np = phi - plo;
    size_t need = (size_t)(np * nf);
    /* sparse positions (decode of sessions far apart) or a huge range: per-row path */
    if (np > 4 * rows || need > ((size_t)1 << 22)) return;
    if (need > c->tab_cap) {
        float *a = dg_try_malloc(need * sizeof(float)), *b = dg_try_malloc(need * sizeof(float));
        if (!a || !b) { dg_free(a); dg_free(b); return; }  /* fall back to per-row compute */
        dg_free(c->tab_c);
        dg_free(c->tab_s);
        c->tab_c = a;
        c->tab_s = b;
        c->tab_cap = need;
    }
    for (int64_t p = 0; p < np; p++)
        pos_row(c->tab_c + p * nf, c->tab_s + p * nf, plo + p, mode, N, nf, theta);
    c->tab_p0 = plo;
    c->tab_np = np;
    c->tab_nf = nf;
    c->tab_N = N;
    c->tab_mode = (int)mode;
    c->tab_theta = theta;
    c->tab_valid = true;
}

static void pos_prepare(cpu_ctx *c, const int64_t *pos0, int64_t B, int64_t T, dg_pos_mode mode,
                        int64_t N, int64_t nf, float theta) {
    int64_t lo = pos0[0], hi = pos0[0];
    for (int64_t b = 1; b < B; b++) {
        if (pos0[b] < lo) lo = pos0[b];
        if (pos0[b] > hi) hi = pos0[b];
    }
    if (c->tab_valid && (c->tab_mode != (int)mode || c->tab_N != N || c->tab_theta != theta))
        c->tab_valid = false;
    pos_table(c, lo, hi + T, B * T, mode, N, nf, theta);
}

static inline float softplusf(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

typedef struct {
    cpu_ctx *c;
    const int64_t *pos0;
    dg_pos_mode mode;
    float theta;
    int64_t N, H, T, Nq, nf;
    const float *x, *dy;
    float *o, *dx, *row;    /* row: 2 * nf floats per thread */
} pos_args;

/* rows r = b * T + t in [r0, r1) */
static void pos_fwd_range(void *arg, int tid, int64_t r0, int64_t r1) {
    const pos_args *a = arg;
    int64_t N = a->N, H = a->H, T = a->T, Nq = a->Nq, nf = a->nf;
    float *row = a->row + tid * 2 * nf;
    for (int64_t r = r0; r < r1; r++) {
        const float *pc, *ps;
        pos_get(a->c, a->pos0[r / T] + r % T, a->mode, N, nf, a->theta, row, &pc, &ps);
        for (int64_t h = 0; h < H; h++) {
            const float *restrict xr = a->x + (r * H + h) * N;
            float *restrict orow = a->o + (r * H + h) * Nq;
            if (a->mode == DG_POS_ROPE) {
                for (int64_t k = 0; k < nf; k++) {
                    float x0 = xr[2 * k], x1 = xr[2 * k + 1];
                    orow[2 * k] = x0 * pc[k] - x1 * ps[k];
                    orow[2 * k + 1] = x1 * pc[k] + x0 * ps[k];
                }
            } else {
                for (int64_t i = 0; i < N; i++) {
                    float mu = softplusf(xr[i]);
                    orow[i] = mu * pc[i];
                    orow[N + i] = mu * ps[i];
                }
            }
        }
    }
}

static void pos_bwd_range(void *arg, int tid, int64_t r0, int64_t r1) {
    const pos_args *a = arg;
    int64_t N = a->N, H = a->H, T = a->T, Nq = a->Nq, nf = a->nf;
    float *row = a->row + tid * 2 * nf;
    for (int64_t r = r0; r < r1; r++) {
        const float *pc, *ps;
        pos_get(a->c, a->pos0[r / T] + r % T, a->mode, N, nf, a->theta, row, &pc, &ps);
        for (int64_t h = 0; h < H; h++) {
            const float *restrict xr = a->x + (r * H + h) * N;
            const float *restrict dyr = a->dy + (r * H + h) * Nq;
            float *restrict dxr = a->dx + (r * H + h) * N;
            if (a->mode == DG_POS_ROPE) {
                for (int64_t k = 0; k < nf; k++) {
                    float g0 = dyr[2 * k], g1 = dyr[2 * k + 1];
                    dxr[2 * k] += g0 * pc[k] + g1 * ps[k];
                    dxr[2 * k + 1] += g1 * pc[k] - g0 * ps[k];
                }
            } else {
                for (int64_t i = 0; i < N; i++)
                    dxr[i] += sigmoidf(xr[i]) * (dyr[i] * pc[i] + dyr[N + i] * ps[i]);
            }
        }
    }
}

static int pos_run(dg_backend_t *be, range_fn fn, pos_args *a, int64_t B) {
    a->c = be->ctx;
    a->nf = a->mode == DG_POS_ROPE ? a->N / 2 : a->N;
    a->row = scratch(be, (size_t)(4 * a->nf));
    if (!a->row) return DG_ENOMEM;
    pos_prepare(a->c, a->pos0, B, a->T, a->mode, a->N, a->nf, a->theta);
    par_for(a->c, fn, a, B * a->T, B * a->T * a->H * a->Nq, 1);
    return 0;
}

static int cpu_pos_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, const int64_t *pos0,
                       dg_pos_mode mode, float theta) {
    pos_args a = {.pos0 = pos0, .mode = mode, .theta = theta, .N = inp.ne[0], .H = inp.ne[1],
                  .T = inp.ne[2], .Nq = out.ne[0], .x = F(inp), .o = F(out)};
    return pos_run(be, pos_fwd_range, &a, inp.ne[3]);
}

static int cpu_pos_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor inp,
                       const int64_t *pos0, dg_pos_mode mode, float theta) {
    pos_args a = {.pos0 = pos0, .mode = mode, .theta = theta, .N = inp.ne[0], .H = inp.ne[1],
                  .T = inp.ne[2], .Nq = dout.ne[0], .x = F(inp), .dy = F(dout), .dx = F(dinp)};
    return pos_run(be, pos_bwd_range, &a, inp.ne[3]);
}

// ------------------------------------------------------------------------------------------
// linear attention by GEMMs
//
// Per sequence b and block of query rows [t0, t1), the scores of all H heads are stacked with
// rows in (t, h) order: S (m*H, nc), row (i, h) = head h, t = t0 + i, column j = s = c0 + j.
// Because v is shared by the heads and out (B, T, H, D) is (T*H, D) per sequence, the value
// side is then ONE GEMM per block for all heads (out_blk = S V_cols, dV_cols += S^T dO_blk,
// dS = dO_blk V_cols^T), with K or M = m*H instead of m. The query side stays per head.

/* pw[k] = g^k for k <= T (double pow, cast), zeroed below DECAY_CUT. Returns the band: the
 * smallest k >= 1 with pw[k] == 0 (T + 1 when none), so only s > t - band matters. */
static int64_t decay_table(float *pw, double g, int64_t T) {
    int64_t band = T + 1;
    for (int64_t k = 0; k <= T; k++) {
        double w = pow(g, (double)k);
        if (fabs(w) < DECAY_CUT) w = 0.0;
        pw[k] = (float)w;
        if (w == 0.0 && k >= 1 && band == T + 1) band = k;
    }
    return band;
}

/* The query-row block size: smaller when the decay band is short (less wasted triangle), and
 * small enough that the stacked score blocks (H * BT * T floats) stay bounded. */
static int64_t attn_block(int64_t band, int64_t H, int64_t T) {
    int64_t bt = band <= 96 ? 64 : 128;
    while (bt > 16 && H * bt * T > ((int64_t)1 << 22)) bt /= 2;
    return bt;
}

/* S rows (m, nc) with row stride ld *= mask: row i is t = t0 + i, column j is s = c0 + j;
 * weight pw[t - s] for s < t, 0 for s >= t (and pw is 0 beyond the band). */
static void apply_mask(float *S, int64_t m, int64_t nc, int64_t ld, int64_t t0, int64_t c0,
                       const float *pw, int64_t band) {
    for (int64_t i = 0; i < m; i++) {
        int64_t t = t0 + i;
        float *restrict r = S + i * ld;
        for (int64_t j = 0; j < nc; j++) {
            int64_t k = t - (c0 + j);
            r[j] = (k >= 1 && k < band) ? r[j] * pw[k] : 0.0f;
        }
    }
}

/* dst (rows, n) ld n = diag(w) src (rows, n) ld lds */
static void scale_rows(float *dst, const float *src, int64_t lds, int64_t rows, int64_t n,
                       const float *w) {
    for (int64_t i = 0; i < rows; i++) {
        const float *restrict s = src + i * lds;
        float *restrict d = dst + i * n;
        float wi = w[i];
        for (int64_t j = 0; j < n; j++) d[j] = wi * s[j];
    }
}

/* Shared set-up of fwd and bwd: per-head decay tables and bands, the block size. */
typedef struct {
    float   *pw;        /* (H, T+1) */
    int64_t *band;      /* (H) */
    int64_t  bandmax, BT;
} attn_plan;

static void attn_plan_make(attn_plan *p, const float *gamma, int64_t H, int64_t T) {
    p->bandmax = 0;
    for (int64_t h = 0; h < H; h++) {
        p->band[h] = decay_table(p->pw + h * (T + 1), gamma[h], T);
        if (p->band[h] > p->bandmax) p->bandmax = p->band[h];
    }
    p->BT = attn_block(p->bandmax, H, T);
}

/* Scores of all heads for one block into S (m*H, nc) ld nc, masked. */
static void attn_scores(float *S, const float *Qb, int64_t ldq, int64_t Nq, int64_t H,
                        int64_t t0, int64_t m, int64_t c0, int64_t nc, const attn_plan *p,
                        int64_t T) {
    for (int64_t h = 0; h < H; h++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nc, (int)Nq, 1.0f,
                    Qb + t0 * ldq + h * Nq, (int)ldq, Qb + c0 * ldq + h * Nq, (int)ldq, 0.0f,
                    S + h * nc, (int)(H * nc));
        apply_mask(S + h * nc, m, nc, H * nc, t0, c0, p->pw + h * (T + 1), p->band[h]);
    }
}

static int cpu_attn_fwd(dg_backend_t *be, dg_tensor out, dg_tensor rho_out, dg_tensor q,
                        dg_tensor v, dg_tensor rho_in, const float *gamma) {
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    int64_t ldq = H * Nq, ldo = H * D, mx = Nq > D ? Nq : D;
    int64_t bands[64];
    attn_plan pl = {.band = H <= 64 ? bands : dg_malloc((size_t)H * sizeof(int64_t))};
    /* scratch: pw (H (T+1)) | wrow (T) | S (H x BTmax x T) | X (T x max(Nq, D)) */
    int64_t sn = H * attn_block(T + 1, H, T) * T;       /* the largest BT any band gives */
    size_t need = (size_t)(H * (T + 1)) + (size_t)T + (size_t)sn + (size_t)(T * mx);
    float *sc = scratch(be, need);
    if (!sc) {
        if (pl.band != bands) dg_free(pl.band);
        return DG_ENOMEM;
    }
    pl.pw = sc;
    float *wrow = pl.pw + H * (T + 1), *S = wrow + T, *X = S + sn;
    attn_plan_make(&pl, gamma, H, T);
    const float *Q = F(q), *Vv = F(v);
    const float *R0 = dg_t_present(rho_in) ? F(rho_in) : NULL;
    float *O = F(out);
    float *R1 = dg_t_present(rho_out) ? F(rho_out) : NULL;
    for (int64_t b = 0; b < B; b++) {
        const float *Qb = Q + b * T * ldq, *Vb = Vv + b * T * D;
        float *Ob = O + b * T * ldo;                 /* (T*H, D) */
        for (int64_t t0 = 0; t0 < T; t0 += pl.BT) {
            int64_t t1 = t0 + pl.BT < T ? t0 + pl.BT : T, m = t1 - t0;
            int64_t c0 = t0 + 1 - pl.bandmax > 0 ? t0 + 1 - pl.bandmax : 0;
            int64_t nc = t1 - 1 - c0;                /* columns s in [c0, t1 - 1) */
            if (nc <= 0) {
                memset(Ob + t0 * ldo, 0, (size_t)(m * ldo) * sizeof(float));
                continue;
            }
            attn_scores(S, Qb, ldq, Nq, H, t0, m, c0, nc, &pl, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(m * H), (int)D, (int)nc,
                        1.0f, S, (int)nc, Vb + c0 * D, (int)D, 0.0f, Ob + t0 * ldo, (int)D);
        }
        for (int64_t h = 0; h < H; h++) {
            const float *pw = pl.pw + h * (T + 1);
            int64_t band = pl.band[h];
            bool unit = gamma[h] == 1.0f;
            const float *Qbh = Qb + h * Nq;
            float *Obh = Ob + h * D;
            if (R0) {                                /* out_t += g^t rho0^T q_t */
                const float *r0 = R0 + (b * H + h) * Nq * D;
                int64_t nr = band < T ? band : T;    /* rows with g^t != 0 */
                const float *A = Qbh;
                int64_t lda = ldq;
                if (!unit) {
                    scale_rows(X, Qbh, ldq, nr, Nq, pw);
                    A = X;
                    lda = Nq;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)D, (int)Nq,
                            1.0f, A, (int)lda, r0, (int)D, 1.0f, Obh, (int)ldo);
            }
            if (R1) {                                /* rho_T = g^T rho0 + sum g^(T-s) q_s v_s^T */
                float *r1 = R1 + (b * H + h) * Nq * D;
                if (R0) {
                    const float *r0 = R0 + (b * H + h) * Nq * D;
                    float gT = pw[T];
                    for (int64_t i = 0; i < Nq * D; i++) r1[i] = gT * r0[i];
                } else {
                    memset(r1, 0, (size_t)(Nq * D) * sizeof(float));
                }
                int64_t sr = T - band + 1 > 0 ? T - band + 1 : 0, nr = T - sr;
                if (nr > 0) {
                    const float *A = Qbh + sr * ldq;
                    int64_t lda = ldq;
                    if (!unit) {
                        for (int64_t s = sr; s < T; s++) wrow[s - sr] = pw[T - s];
                        scale_rows(X, Qbh + sr * ldq, ldq, nr, Nq, wrow);
                        A = X;
                        lda = Nq;
                    }
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Nq, (int)D,
                                (int)nr, 1.0f, A, (int)lda, Vb + sr * D, (int)D, 1.0f, r1,
                                (int)D);
                }
            }
        }
    }
    if (pl.band != bands) dg_free(pl.band);
    return 0;
}

static int cpu_attn_bwd(dg_backend_t *be, dg_tensor dq, dg_tensor dv, dg_tensor drho_in,
                        dg_tensor dout, dg_tensor drho_out, dg_tensor q, dg_tensor v,
                        dg_tensor rho_in, const float *gamma) {
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    int64_t ldq = H * Nq, ldo = H * D, mx = Nq > D ? Nq : D;
    int64_t bands[64];
    attn_plan pl = {.band = H <= 64 ? bands : dg_malloc((size_t)H * sizeof(int64_t))};
    /* dQ = (dS + dS^T) Q. With dense scores (some head undecayed) and a small enough T, the
     * whole strictly-lower dS of each head is collected (dSf, H x T x T) and dQ is one SYMM per
     * head: dS has a zero diagonal, so the symmetric matrix read from its lower triangle is
     * exactly dS + dS^T, and K = T. Otherwise two GEMMs per block and head (K = block). */
    bool symm_ok = (int64_t)H * T * T <= ((int64_t)1 << 22);
    /* scratch: pw (H (T+1)) | wrow (T) | S (H x BTmax x T) | dS (same) | X (T x mx) | dSf */
    int64_t sn = H * attn_block(T + 1, H, T) * T, nf = symm_ok ? H * T * T : 0;
    size_t need = (size_t)(H * (T + 1)) + (size_t)T + (size_t)(2 * sn) + (size_t)(T * mx)
                  + (size_t)nf;
    float *sc = scratch(be, need);
    if (!sc) {
        if (pl.band != bands) dg_free(pl.band);
        return DG_ENOMEM;
    }
    pl.pw = sc;
    float *wrow = pl.pw + H * (T + 1), *S = wrow + T, *dS = S + sn, *X = dS + sn;
    float *dSf = X + T * mx;
    attn_plan_make(&pl, gamma, H, T);
    bool symm = symm_ok && pl.bandmax > T;
    const float *Q = F(q), *Vv = F(v), *dO = F(dout);
    const float *R0 = dg_t_present(rho_in) ? F(rho_in) : NULL;
    const float *dR = dg_t_present(drho_out) ? F(drho_out) : NULL;
    float *dQ = F(dq), *dV = F(dv);
    float *dR0 = dg_t_present(drho_in) ? F(drho_in) : NULL;
    for (int64_t b = 0; b < B; b++) {
        const float *Qb = Q + b * T * ldq, *dOb = dO + b * T * ldo, *Vb = Vv + b * T * D;
        float *dQb = dQ + b * T * ldq, *dVb = dV + b * T * D;
        for (int64_t t0 = 0; t0 < T; t0 += pl.BT) {
            int64_t t1 = t0 + pl.BT < T ? t0 + pl.BT : T, m = t1 - t0;
            int64_t c0 = t0 + 1 - pl.bandmax > 0 ? t0 + 1 - pl.bandmax : 0;
            int64_t nc = t1 - 1 - c0;
            if (nc <= 0) {                           /* T == 1: no scores at all */
                for (int64_t h = 0; symm && h < H; h++)
                    memset(dSf + (h * T + t0) * T, 0, (size_t)(m * T) * sizeof(float));
                continue;
            }
            /* S = (Q_blk Q_cols^T) .* M, all heads stacked */
            attn_scores(S, Qb, ldq, Nq, H, t0, m, c0, nc, &pl, T);
            /* dV_cols += S^T dO_blk (one GEMM, K = m*H) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)D, (int)(m * H),
                        1.0f, S, (int)nc, dOb + t0 * ldo, (int)D, 1.0f, dVb + c0 * D, (int)D);
            /* dS = (dO_blk V_cols^T) .* M (one GEMM, M = m*H) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(m * H), (int)nc, (int)D,
                        1.0f, dOb + t0 * ldo, (int)D, Vb + c0 * D, (int)D, 0.0f, dS, (int)nc);
            for (int64_t h = 0; h < H; h++) {
                float *dSh = dS + h * nc;
                apply_mask(dSh, m, nc, H * nc, t0, c0, pl.pw + h * (T + 1), pl.band[h]);
                if (symm) {                          /* c0 == 0: rows t0..t1 of head h */
                    for (int64_t i = 0; i < m; i++) {
                        float *row = dSf + (h * T + t0 + i) * T;
                        memcpy(row, dSh + i * H * nc, (size_t)nc * sizeof(float));
                        memset(row + nc, 0, (size_t)(T - nc) * sizeof(float));
                    }
                    continue;
                }
                /* dQ_blk += dS Q_cols;  dQ_cols += dS^T Q_blk */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)Nq, (int)nc,
                            1.0f, dSh, (int)(H * nc), Qb + c0 * ldq + h * Nq, (int)ldq, 1.0f,
                            dQb + t0 * ldq + h * Nq, (int)ldq);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)Nq, (int)m,
                            1.0f, dSh, (int)(H * nc), Qb + t0 * ldq + h * Nq, (int)ldq, 1.0f,
                            dQb + c0 * ldq + h * Nq, (int)ldq);
            }
        }
        if (symm) {
            for (int64_t h = 0; h < H; h++) {
                float *f = dSf + h * T * T;
                cblas_ssymm(CblasRowMajor, CblasLeft, CblasLower, (int)T, (int)Nq, 1.0f, f,
                            (int)T, Qb + h * Nq, (int)ldq, 1.0f, dQb + h * Nq, (int)ldq);
            }
        }
        for (int64_t h = 0; h < H; h++) {
            const float *pw = pl.pw + h * (T + 1);
            int64_t band = pl.band[h];
            bool unit = gamma[h] == 1.0f;
            const float *Qbh = Qb + h * Nq, *dObh = dOb + h * D;
            float *dQbh = dQb + h * Nq;
            if (R0) {
                /* out_t had g^t rho0^T q_t: dq_t += g^t rho0 dO_t; drho0 += sum_t g^t q_t dO_t^T */
                const float *r0 = R0 + (b * H + h) * Nq * D;
                int64_t nr = band < T ? band : T;
                const float *A = dObh;
                int64_t lda = ldo;
                if (!unit) {
                    scale_rows(X, dObh, ldo, nr, D, pw);
                    A = X;
                    lda = D;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)Nq, (int)D,
                            1.0f, A, (int)lda, r0, (int)D, 1.0f, dQbh, (int)ldq);
                if (dR0) {
                    float *g0 = dR0 + (b * H + h) * Nq * D;
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Nq, (int)D,
                                (int)nr, 1.0f, Qbh, (int)ldq, A, (int)lda, 1.0f, g0, (int)D);
                }
            }
            if (dR) {
                /* rho_T had g^T rho0 + sum_s g^(T-s) q_s v_s^T */
                const float *dr = dR + (b * H + h) * Nq * D;
                if (dR0) vaxpy(dR0 + (b * H + h) * Nq * D, pw[T], dr, Nq * D);
                int64_t sr = T - band + 1 > 0 ? T - band + 1 : 0, nr = T - sr;
                if (nr > 0) {
                    for (int64_t s = sr; s < T; s++) wrow[s - sr] = pw[T - s];
                    /* dv_s += g^(T-s) dR^T q_s */
                    const float *A = Qbh + sr * ldq;
                    int64_t lda = ldq;
                    if (!unit) {
                        scale_rows(X, A, ldq, nr, Nq, wrow);
                        A = X;
                        lda = Nq;
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)D,
                                (int)Nq, 1.0f, A, (int)lda, dr, (int)D, 1.0f, dVb + sr * D,
                                (int)D);
                    /* dq_s += g^(T-s) dR v_s */
                    const float *Bv = Vb + sr * D;
                    if (!unit) {
                        scale_rows(X, Bv, D, nr, D, wrow);
                        Bv = X;
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)Nq,
                                (int)D, 1.0f, Bv, (int)D, dr, (int)D, 1.0f, dQbh + sr * ldq,
                                (int)ldq);
                }
            }
        }
    }
    if (pl.band != bands) dg_free(pl.band);
    return 0;
}
// ------------------------------------------------------------------------------------------
// gate, add

/* k_i = keep(seed, i, p) / (1 - p) for elements [i0, i0 + n). dg_dropout_keep compares
 * u24 * 2^-24 >= p with u24 = hash >> 40, both exact in f32, which is the integer test
 * u24 >= ceil(p * 2^24): the same decision, in a form gcc vectorises (no u64 -> float). */
static void gate_mask(float *restrict k, int64_t i0, int64_t n, float p, uint64_t seed) {
    float sc = 1.0f / (1.0f - p);
    uint64_t thr = (uint64_t)ceil((double)p * 16777216.0);
    uint64_t base = (uint64_t)i0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t u = dg_hash64(seed, base + (uint64_t)i) >> 40;
        k[i] = u >= thr ? sc : 0.0f;
    }
}

#define GATE_CHUNK 1024   /* mask chunk on the stack of each thread */

/* z = x * y * k over [lo, hi); e: o = z, a = x, b = y, f = p */
static void gate_fwd_range(void *arg, int tid, int64_t lo, int64_t hi) {
    const ew_args *e = arg;
    const float *px = e->a, *py = e->b;
    float *pz = e->o, p = e->f;
    if (p == 0.0f) {
        for (int64_t i = lo; i < hi; i++) pz[i] = px[i] * py[i];
        return;
    }
    float k[GATE_CHUNK];
    for (int64_t i0 = lo; i0 < hi; i0 += GATE_CHUNK) {
        int64_t m = hi - i0 < GATE_CHUNK ? hi - i0 : GATE_CHUNK;
        gate_mask(k, i0, m, p, e->seed);
        for (int64_t i = 0; i < m; i++) pz[i0 + i] = px[i0 + i] * py[i0 + i] * k[i];
    }
}

static int cpu_gate_fwd(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor y, float p,
                        uint64_t seed) {
    ew_args e = {.o = F(z), .a = F(x), .b = F(y), .f = p, .seed = seed};
    int64_t n = dg_nelem(z);
    par_for(be->ctx, gate_fwd_range, &e, n, p == 0.0f ? n : 4 * n, 64);
    return 0;
}

/* dx += dz y k, dy += dz x k over [lo, hi); e: o = dx, o2 = dy, a = dz, b = x, c = y */
static void gate_bwd_range(void *arg, int tid, int64_t lo, int64_t hi) {
    const ew_args *e = arg;
    const float *pdz = e->a, *px = e->b, *py = e->c;
    float *pdx = e->o, *pdy = e->o2, p = e->f;
    if (p == 0.0f) {
        for (int64_t i = lo; i < hi; i++) {
            float gk = pdz[i], xi = px[i], yi = py[i];
            pdx[i] += gk * yi;
            pdy[i] += gk * xi;
        }
        return;
    }
    float k[GATE_CHUNK];
    for (int64_t i0 = lo; i0 < hi; i0 += GATE_CHUNK) {
        int64_t m = hi - i0 < GATE_CHUNK ? hi - i0 : GATE_CHUNK;
        gate_mask(k, i0, m, p, e->seed);
        for (int64_t i = 0; i < m; i++) {
            float gk = pdz[i0 + i] * k[i], xi = px[i0 + i], yi = py[i0 + i];
            pdx[i0 + i] += gk * yi;
            pdy[i0 + i] += gk * xi;
        }
    }
}

static int cpu_gate_bwd(dg_backend_t *be, dg_tensor dx, dg_tensor dy, dg_tensor dz, dg_tensor x,
                        dg_tensor y, float p, uint64_t seed) {
    ew_args e = {.o = F(dx), .o2 = F(dy), .a = F(dz), .b = F(x), .c = F(y), .f = p,
                 .seed = seed};
    int64_t n = dg_nelem(dz);
    par_for(be->ctx, gate_bwd_range, &e, n, p == 0.0f ? n : 4 * n, 64);
    return 0;
}

static void add_range(void *arg, int tid, int64_t lo, int64_t hi) {
    const ew_args *e = arg;
    const float *pa = e->a, *pb = e->b;
    float *po = e->o;
    for (int64_t i = lo; i < hi; i++) po[i] = pa[i] + pb[i];
}

static int cpu_add(dg_backend_t *be, dg_tensor out, dg_tensor a, dg_tensor b) {
    ew_args e = {.o = F(out), .a = F(a), .b = F(b)};
    int64_t n = dg_nelem(out);
    par_for(be->ctx, add_range, &e, n, n, 64);
    return 0;
}

// ------------------------------------------------------------------------------------------
// cross-entropy

static int cpu_xent(dg_backend_t *be, dg_tensor loss, dg_tensor dlogits, dg_tensor logits,
                    dg_tensor tgt, float dscale) {
    int64_t V = logits.ne[0], R = dg_nelem(logits) / V;
    const int32_t *y = I32(tgt);
    for (int64_t r = 0; r < R; r++) {
        if (y[r] < 0 || y[r] >= V) {
            DG_ERROR("xent: target %d at row %lld is outside [0, %lld)", (int)y[r],
                     (long long)r, (long long)V);
            return DG_EINVAL;
        }
    }
    float *e = scratch(be, (size_t)V);
    if (!e) return DG_ENOMEM;
    const float *L = F(logits);
    float *pl = F(loss);
    float *dL = dg_t_present(dlogits) ? F(dlogits) : NULL;
    for (int64_t r = 0; r < R; r++) {
        const float *restrict lr = L + r * V;
        float mx = lr[0];
        for (int64_t j = 1; j < V; j++) mx = lr[j] > mx ? lr[j] : mx;
        double sum = 0.0;
        for (int64_t j = 0; j < V; j++) {
            e[j] = expf(lr[j] - mx);
            sum += e[j];
        }
        pl[r] = (float)(log(sum) + ((double)mx - (double)lr[y[r]]));
        if (dL) {
            /* dscale * p_j everywhere, then the target element again from its old value so
             * that p_y - 1 is formed before scaling (no cancellation against dlogits) */
            float inv = (float)(1.0 / sum);
            float *restrict dr = dL + r * V;
            float old_y = dr[y[r]];
            for (int64_t j = 0; j < V; j++) dr[j] += dscale * (e[j] * inv);
            dr[y[r]] = old_y + dscale * (e[y[r]] * inv - 1.0f);
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// AdamW

typedef struct {
    float *p, *m, *v;
    const float *g;
    float b1, b2, gs, eps, lr, ib1, ib2, decay;
} adam_args;

static void adamw_range(void *arg, int tid, int64_t lo, int64_t hi) {
    const adam_args *a = arg;
    float *restrict pp = a->p, *restrict pm = a->m, *restrict pv = a->v;
    const float *restrict pg = a->g;
    float b1 = a->b1, b2 = a->b2, gs = a->gs, eps = a->eps, lr = a->lr;
    float ib1 = a->ib1, ib2 = a->ib2, decay = a->decay;
    for (int64_t i = lo; i < hi; i++) {
        float gi = gs * pg[i];
        float mi = b1 * pm[i] + (1.0f - b1) * gi;
        float vi = b2 * pv[i] + (1.0f - b2) * gi * gi;
        pm[i] = mi;
        pv[i] = vi;
        pp[i] = pp[i] * decay - lr * (mi * ib1) / (sqrtf(vi * ib2) + eps);
    }
}

/* f32 AdamW; the bias corrections 1/(1 - b^t) and the decay factor are formed in double. */
static int cpu_adamw(dg_backend_t *be, dg_tensor p, dg_tensor g, dg_tensor m, dg_tensor v,
                     const dg_adamw_hp *hp) {
    adam_args a = {.p = F(p), .m = F(m), .v = F(v), .g = F(g), .b1 = hp->beta1,
                   .b2 = hp->beta2, .gs = hp->grad_scale, .eps = hp->eps, .lr = hp->lr,
                   .ib1 = (float)(1.0 / (1.0 - pow(hp->beta1, (double)hp->step))),
                   .ib2 = (float)(1.0 / (1.0 - pow(hp->beta2, (double)hp->step))),
                   .decay = (float)(1.0 - (double)hp->lr * hp->weight_decay)};
    int64_t n = dg_nelem(p);
    par_for(be->ctx, adamw_range, &a, n, 4 * n, 64);
    return 0;
}

// ------------------------------------------------------------------------------------------
// one recurrent decode step, sparse over active rows

/* A decaying state row that is never written again underflows geometrically into f32
 * denormals, which cost ~100x per operation on x86. Values below 1e-30 (far below anything that
 * can matter next to O(1) entries) are flushed to 0; the loops stay vectorised (a blend). */
static inline float flush_tiny(float x) { return fabsf(x) < 1e-30f ? 0.0f : x; }

static int cpu_attn_step(dg_backend_t *be, int B, const dg_tensor *rho, dg_tensor out,
                         dg_tensor q, dg_tensor v, const float *gamma) {
    cpu_ctx *c = be->ctx;
    int64_t Nq = q.ne[0], H = dg_nelem(q) / ((int64_t)B * Nq), D = v.ne[0];
    if ((size_t)Nq > c->idx_n) {
        int32_t *p = dg_try_malloc((size_t)Nq * sizeof *p);
        if (!p) return DG_ENOMEM;
        dg_free(c->idx);
        c->idx = p;
        c->idx_n = (size_t)Nq;
    }
    int32_t *idx = c->idx;
    const float *Q = F(q), *Vv = F(v);
    float *O = F(out);
    for (int64_t b = 0; b < B; b++) {
        float *R = F(rho[b]);
        const float *restrict vb = Vv + b * D;
        for (int64_t h = 0; h < H; h++) {
            float g = gamma[h];
            const float *qh = Q + (b * H + h) * Nq;
            float *Rh = R + h * Nq * D;
            float *restrict o = O + (b * H + h) * D;
            int64_t na = 0;
            for (int64_t n = 0; n < Nq; n++)
                if (qh[n] != 0.0f) idx[na++] = (int32_t)n;
            for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
            /* one pass over the active rows: read the old row into out, then write it */
            for (int64_t a = 0; a < na; a++) {
                float qn = qh[idx[a]];
                float *restrict row = Rh + (int64_t)idx[a] * D;
                if (g == 1.0f) {
                    for (int64_t d = 0; d < D; d++) {
                        o[d] += qn * row[d];
                        row[d] = row[d] + qn * vb[d];
                    }
                } else {
                    for (int64_t d = 0; d < D; d++) {
                        o[d] += qn * row[d];
                        row[d] = flush_tiny((row[d] + qn * vb[d]) * g);
                    }
                }
            }
            if (g != 1.0f) {                          /* decay the inactive rows */
                int64_t next = 0;
                for (int64_t n = 0; n < Nq; n++) {
                    if (next < na && idx[next] == n) { next++; continue; }
                    float *restrict row = Rh + n * D;
                    for (int64_t d = 0; d < D; d++) row[d] = flush_tiny(row[d] * g);
                }
            }
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------

static const dg_backend_iface CPU_IFACE = {
    .version = DG_BACKEND_IFACE_VERSION,
    .name = "cpu",
    .init = cpu_init,
    .free = cpu_free,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .set = cpu_set,
    .get = cpu_get,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .sumsq = cpu_sumsq,
    .embed_fwd = cpu_embed_fwd,
    .embed_bwd = cpu_embed_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .pos_fwd = cpu_pos_fwd,
    .pos_bwd = cpu_pos_bwd,
    .attn_fwd = cpu_attn_fwd,
    .attn_bwd = cpu_attn_bwd,
    .gate_fwd = cpu_gate_fwd,
    .gate_bwd = cpu_gate_bwd,
    .add = cpu_add,
    .xent = cpu_xent,
    .adamw = cpu_adamw,
    .attn_step = cpu_attn_step,
    .attn_step_lazy = dg__cpu_attn_step_lazy,
    .gate_proj = dg__cpu_gate_proj,
};

const dg_backend_iface *dg_backend_cpu_iface(void);
const dg_backend_iface *dg_backend_cpu_iface(void) { return &CPU_IFACE; }
