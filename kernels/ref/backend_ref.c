/* kernels/ref/backend_ref.c -- the "ref" backend: naive, readable, single-threaded C.
 *
 * This file is THE specification of every op in engine/backend.h (docs/STYLE.md §4.4): every
 * other backend ("cpu", "cuda", ...) is tested op by op against it, and the finite-difference
 * gradient checks in tests/kernels/test_gradcheck.c test it against itself. Clarity beats speed
 * here; reductions that decide precision (LayerNorm statistics, dot products, GEMM inner
 * products, softmax sums) accumulate in double so that finite differences are meaningful.
 *
 * What it is not: fast. No BLAS, no SIMD intrinsics, no threads, no scratch memory. Buffers are
 * plain host memory (dg_try_malloc), so dg_t_host() pointers are valid.
 *
 * Thread affinity: a handle belongs to one thread; the ops keep no state between calls.
 *
 * Layout reminders (slowest-varying first, last index contiguous):
 *   rows (R, D); neurons (B, T, H, N); attention out (B, T, H, D); values (B, T, D);
 *   state rho (B, H, Nq, D). */
#include "backend.h"
#include "dg_hash.h"

#include <math.h>
#include <string.h>

#define TWO_PI 6.283185307179586476925286766559

/* Host pointer helpers: every tensor of this backend is host memory. */
static float *F(dg_tensor t) { return (float *)dg_t_host(t); }
static const int32_t *I(dg_tensor t) { return (const int32_t *)dg_t_host(t); }

// ------------------------------------------------------------------------------------------
// lifecycle and memory

static int ref_init(dg_backend_t *be, const dg_backend_params *p) {
    (void)p;
    be->ctx = NULL;   /* the reference keeps no state */
    return 0;
}

static void ref_free(dg_backend_t *be) { be->ctx = NULL; }

static int ref_buf_alloc(dg_backend_t *be, size_t nbytes, dg_buf_t **out) {
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

static void ref_buf_free(dg_backend_t *be, dg_buf_t *buf) {
    (void)be;
    if (!buf) return;
    dg_free(buf->data);
    dg_free(buf);
}

static int ref_set(dg_backend_t *be, dg_tensor dst, const void *host) {
    (void)be;
    memcpy(dg_t_host(dst), host, dg_nbytes(dst));
    return 0;
}

static int ref_get(dg_backend_t *be, void *host, dg_tensor src) {
    (void)be;
    memcpy(host, dg_t_host(src), dg_nbytes(src));
    return 0;
}

static int ref_copy(dg_backend_t *be, dg_tensor dst, dg_tensor src) {
    (void)be;
    memmove(dg_t_host(dst), dg_t_host(src), dg_nbytes(dst));   /* views may overlap */
    return 0;
}

static int ref_fill(dg_backend_t *be, dg_tensor t, float value) {
    (void)be;
    float *x = F(t);
    int64_t n = dg_nelem(t);
    for (int64_t i = 0; i < n; i++) x[i] = value;
    return 0;
}

static int ref_sync(dg_backend_t *be) { (void)be; return 0; }

// ------------------------------------------------------------------------------------------
// dense algebra

/* Element (i, j) of op(M) for batch item k, op = transpose when m->trans. */
static float mat_at(const dg_mat *m, int64_t k, int64_t i, int64_t j) {
    const float *base = (const float *)((const char *)m->buf->data + m->offs);
    int64_t r = m->trans ? j : i, c = m->trans ? i : j;
    return base[k * m->bstride + r * m->ld + c];
}

/* C[k] = alpha op(A[k]) op(B[k]) + beta C[k]; the inner product is summed in double.
 * beta == 0 never reads C (C may hold garbage or NaN). */
static int ref_gemm(dg_backend_t *be, const dg_gemm_desc *d) {
    (void)be;
    float *C = (float *)((char *)d->C.buf->data + d->C.offs);
    for (int64_t k = 0; k < d->batch; k++) {
        for (int64_t i = 0; i < d->M; i++) {
            for (int64_t j = 0; j < d->N; j++) {
                double acc = 0.0;
                for (int64_t l = 0; l < d->K; l++)
                    acc += (double)mat_at(&d->A, k, i, l) * (double)mat_at(&d->B, k, l, j);
                float *c = &C[k * d->C.bstride + i * d->C.ld + j];
                double prev = d->beta == 0.0f ? 0.0 : (double)d->beta * (double)*c;
                *c = (float)((double)d->alpha * acc + prev);
            }
        }
    }
    return 0;
}

/* y += a * x */
static int ref_axpy(dg_backend_t *be, dg_tensor y, float a, dg_tensor x) {
    (void)be;
    float *py = F(y);
    const float *px = F(x);
    int64_t n = dg_nelem(y);
    for (int64_t i = 0; i < n; i++) py[i] += a * px[i];
    return 0;
}

/* x *= a */
static int ref_scale(dg_backend_t *be, dg_tensor x, float a) {
    (void)be;
    float *p = F(x);
    int64_t n = dg_nelem(x);
    for (int64_t i = 0; i < n; i++) p[i] *= a;
    return 0;
}

/* *out = sum x^2 in double */
static int ref_sumsq(dg_backend_t *be, double *out, dg_tensor x) {
    (void)be;
    const float *p = F(x);
    int64_t n = dg_nelem(x);
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)p[i] * (double)p[i];
    *out = s;
    return 0;
}

// ------------------------------------------------------------------------------------------
// embedding

/* out (R, D) = wte (V, D) [tok (R)]. A token outside [0, V) is bad input (it came from a
 * tokenizer or a request): DG_EINVAL, and nothing is written. */
static int ref_embed_fwd(dg_backend_t *be, dg_tensor out, dg_tensor tok, dg_tensor wte) {
    (void)be;
    int64_t D = wte.ne[0], V = dg_nelem(wte) / D, R = dg_nelem(tok);
    const int32_t *ids = I(tok);
    for (int64_t r = 0; r < R; r++) {
        if (ids[r] < 0 || ids[r] >= V) {
            DG_ERROR("embed_fwd: token %d at row %lld is outside [0, %lld)", (int)ids[r],
                     (long long)r, (long long)V);
            return DG_EINVAL;
        }
    }
    float *o = F(out);
    const float *w = F(wte);
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d++) o[r * D + d] = w[(int64_t)ids[r] * D + d];
    return 0;
}

/* dwte (V, D) [tok[r]] += dout[r] for every row r (repeated tokens accumulate). */
static int ref_embed_bwd(dg_backend_t *be, dg_tensor dwte, dg_tensor dout, dg_tensor tok) {
    (void)be;
    int64_t D = dwte.ne[0], V = dg_nelem(dwte) / D, R = dg_nelem(tok);
    const int32_t *ids = I(tok);
    for (int64_t r = 0; r < R; r++) {
        if (ids[r] < 0 || ids[r] >= V) {
            DG_ERROR("embed_bwd: token %d at row %lld is outside [0, %lld)", (int)ids[r],
                     (long long)r, (long long)V);
            return DG_EINVAL;
        }
    }
    float *dw = F(dwte);
    const float *g = F(dout);
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d++) dw[(int64_t)ids[r] * D + d] += g[r * D + d];
    return 0;
}

// ------------------------------------------------------------------------------------------
// LayerNorm over the last axis (biased variance)

/* For each row x (D): mean = sum x / D; var = sum (x - mean)^2 / D (two passes, in double);
 * rstd = 1 / sqrt(var + eps); out = (x - mean) * rstd [* gamma + beta]. out may alias inp: each
 * element is read before it is written and the statistics are taken first. */
static int ref_layernorm_fwd(dg_backend_t *be, dg_tensor out, dg_tensor mean, dg_tensor rstd,
                             dg_tensor inp, dg_tensor gamma, dg_tensor beta, float eps) {
    (void)be;
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    const float *x = F(inp);
    float *o = F(out), *pm = F(mean), *ps = F(rstd);
    const float *g = dg_t_present(gamma) ? F(gamma) : NULL;
    const float *b = dg_t_present(beta) ? F(beta) : NULL;
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D;
        double m = 0.0;
        for (int64_t i = 0; i < D; i++) m += xr[i];
        m /= (double)D;
        double v = 0.0;
        for (int64_t i = 0; i < D; i++) v += ((double)xr[i] - m) * ((double)xr[i] - m);
        v /= (double)D;
        double s = 1.0 / sqrt(v + (double)eps);
        float *orow = o + r * D;
        for (int64_t i = 0; i < D; i++) {
            double n = ((double)xr[i] - m) * s;
            orow[i] = g ? (float)(n * g[i] + b[i]) : (float)n;
        }
        pm[r] = (float)m;
        ps[r] = (float)s;
    }
    return 0;
}

/* With n = (x - mean) * rstd and dn = dout * gamma (dout when non-affine), per row:
 *   dinp += rstd * (dn - mean(dn) - n * mean(dn * n));   dgamma += dout * n;   dbeta += dout.
 * (The usual derivation: d/dx of the mean and of rstd contribute the two subtracted terms.)
 * n is recomputed from inp and the saved mean/rstd, as in llm.c. */
static int ref_layernorm_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dgamma, dg_tensor dbeta,
                             dg_tensor dout, dg_tensor inp, dg_tensor mean, dg_tensor rstd,
                             dg_tensor gamma) {
    (void)be;
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    const float *x = F(inp), *dy = F(dout), *pm = F(mean), *ps = F(rstd);
    float *dx = F(dinp);
    const float *g = dg_t_present(gamma) ? F(gamma) : NULL;
    float *dg = dg_t_present(dgamma) ? F(dgamma) : NULL;
    float *db = dg_t_present(dbeta) ? F(dbeta) : NULL;
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D, *dyr = dy + r * D;
        double m = pm[r], s = ps[r];
        double dn_mean = 0.0, dnn_mean = 0.0;
        for (int64_t i = 0; i < D; i++) {
            double n = ((double)xr[i] - m) * s;
            double dn = g ? (double)dyr[i] * g[i] : (double)dyr[i];
            dn_mean += dn;
            dnn_mean += dn * n;
        }
        dn_mean /= (double)D;
        dnn_mean /= (double)D;
        float *dxr = dx + r * D;
        for (int64_t i = 0; i < D; i++) {
            double n = ((double)xr[i] - m) * s;
            double dn = g ? (double)dyr[i] * g[i] : (double)dyr[i];
            dxr[i] = (float)((double)dxr[i] + s * (dn - dn_mean - n * dnn_mean));
            if (dg) {
                dg[i] = (float)((double)dg[i] + (double)dyr[i] * n);
                db[i] += dyr[i];
            }
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// ReLU with threshold

/* out = max(inp - thr, 0) */
static int ref_relu_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, float thr) {
    (void)be;
    const float *x = F(inp);
    float *o = F(out);
    int64_t n = dg_nelem(inp);
    for (int64_t i = 0; i < n; i++) {
        float y = x[i] - thr;
        o[i] = y > 0.0f ? y : 0.0f;
    }
    return 0;
}

/* dinp += dout * (out > 0), element by element (alias-safe when dinp == dout and dinp was 0) */
static int ref_relu_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor out) {
    (void)be;
    float *dx = F(dinp);
    const float *dy = F(dout), *y = F(out);
    int64_t n = dg_nelem(out);
    for (int64_t i = 0; i < n; i++) {
        float add = y[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = dx[i] + add;
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// positional transforms (MODEL.md §5)

/* Frequency of neuron i in "turns per position":
 *   rope: f_i = theta^(-2 floor(i/2) / N) / (2 pi)   (pairs share a frequency)
 *   pope: f_i = theta^(-i / N) / (2 pi)
 * The phase at position p is phi = 2 pi frac(p f_i), with p f_i in double: taking the fractional
 * turn first keeps the angle exact at large p. */
static double pos_freq(dg_pos_mode mode, int64_t i, int64_t N, double theta) {
    double e = mode == DG_POS_ROPE ? (double)(2 * (i / 2)) / (double)N : (double)i / (double)N;
    return pow(theta, -e) / TWO_PI;
}

static double pos_phase(int64_t p, double f) {
    double turns = (double)p * f;
    return TWO_PI * (turns - floor(turns));
}

/* softplus(x) = log(1 + e^x), computed without overflow; its derivative is sigmoid(x). */
static double softplus(double x) { return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x))); }
static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* inp (B, T, H, N) -> out (B, T, H, Nq); row (b, t) is at position pos0[b] + t.
 *   rope (Nq = N): out[2k]   = x[2k] cos phi_2k - x[2k+1] sin phi_2k
 *                  out[2k+1] = x[2k+1] cos phi_2k + x[2k] sin phi_2k
 *   pope (Nq = 2N): mu = softplus(x); out[i] = mu_i cos phi_i, out[N + i] = mu_i sin phi_i */
static int ref_pos_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, const int64_t *pos0,
                       dg_pos_mode mode, float theta) {
    (void)be;
    int64_t N = inp.ne[0], H = inp.ne[1], T = inp.ne[2], B = inp.ne[3];
    int64_t Nq = out.ne[0];
    const float *x = F(inp);
    float *o = F(out);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < T; t++) {
            int64_t p = pos0[b] + t;
            for (int64_t h = 0; h < H; h++) {
                const float *xr = x + ((b * T + t) * H + h) * N;
                float *orow = o + ((b * T + t) * H + h) * Nq;
                if (mode == DG_POS_ROPE) {
                    for (int64_t i = 0; i < N; i += 2) {
                        double phi = pos_phase(p, pos_freq(mode, i, N, theta));
                        double c = cos(phi), s = sin(phi);
                        double x0 = xr[i], x1 = xr[i + 1];
                        orow[i] = (float)(x0 * c - x1 * s);
                        orow[i + 1] = (float)(x1 * c + x0 * s);
                    }
                } else {
                    for (int64_t i = 0; i < N; i++) {
                        double phi = pos_phase(p, pos_freq(mode, i, N, theta));
                        double mu = softplus(xr[i]);
                        orow[i] = (float)(mu * cos(phi));
                        orow[N + i] = (float)(mu * sin(phi));
                    }
                }
            }
        }
    }
    return 0;
}

/* dinp += J^T dout.
 *   rope: the transpose of a rotation by phi is the rotation by -phi:
 *         dx[2k] += dy[2k] c + dy[2k+1] s;  dx[2k+1] += -dy[2k] s + dy[2k+1] c
 *   pope: dx[i] += sigmoid(x_i) (dy[i] cos phi_i + dy[N + i] sin phi_i) */
static int ref_pos_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor inp,
                       const int64_t *pos0, dg_pos_mode mode, float theta) {
    (void)be;
    int64_t N = inp.ne[0], H = inp.ne[1], T = inp.ne[2], B = inp.ne[3];
    int64_t Nq = dout.ne[0];
    const float *x = F(inp), *dy = F(dout);
    float *dx = F(dinp);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < T; t++) {
            int64_t p = pos0[b] + t;
            for (int64_t h = 0; h < H; h++) {
                const float *xr = x + ((b * T + t) * H + h) * N;
                const float *dyr = dy + ((b * T + t) * H + h) * Nq;
                float *dxr = dx + ((b * T + t) * H + h) * N;
                if (mode == DG_POS_ROPE) {
                    for (int64_t i = 0; i < N; i += 2) {
                        double phi = pos_phase(p, pos_freq(mode, i, N, theta));
                        double c = cos(phi), s = sin(phi);
                        double g0 = dyr[i], g1 = dyr[i + 1];
                        dxr[i] = (float)((double)dxr[i] + g0 * c + g1 * s);
                        dxr[i + 1] = (float)((double)dxr[i + 1] - g0 * s + g1 * c);
                    }
                } else {
                    for (int64_t i = 0; i < N; i++) {
                        double phi = pos_phase(p, pos_freq(mode, i, N, theta));
                        double dmu = (double)dyr[i] * cos(phi) + (double)dyr[N + i] * sin(phi);
                        dxr[i] = (float)((double)dxr[i] + sigmoid(xr[i]) * dmu);
                    }
                }
            }
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// linear attention (MODEL.md §3.3), dense-score form

/* Per (b, h), with q_t = q[b, t, h, :] (Nq), v_t = v[b, t, :] (D), g = gamma[h], rho0 = rho_in:
 *   out_t = sum_{s<t} g^(t-s) (q_t . q_s) v_s  +  g^t rho0^T q_t
 *   rho_T = g^T rho0 + sum_{s<T} g^(T-s) q_s v_s^T
 * This is the unrolled recurrence out_t = rho^T q_t; rho = (rho + q_t v_t^T) g (MODEL.md §4.3).
 * Dot products and sums are in double; g^k is pow(g, k) in double (tabulated per head). */
static int ref_attn_fwd(dg_backend_t *be, dg_tensor out, dg_tensor rho_out, dg_tensor q,
                        dg_tensor v, dg_tensor rho_in, const float *gamma) {
    (void)be;
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    const float *Q = F(q), *Vv = F(v);
    const float *R0 = dg_t_present(rho_in) ? F(rho_in) : NULL;
    float *O = F(out);
    float *R1 = dg_t_present(rho_out) ? F(rho_out) : NULL;
    double *acc = dg_malloc((size_t)D * sizeof *acc);   /* one output row, in double */
    double *gk = dg_malloc((size_t)(T + 1) * sizeof *gk);  /* gk[k] = g^k */
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            for (int64_t k = 0; k <= T; k++) gk[k] = pow((double)gamma[h], (double)k);
            const float *r0 = R0 ? R0 + (b * H + h) * Nq * D : NULL;
            for (int64_t t = 0; t < T; t++) {
                const float *qt = Q + ((b * T + t) * H + h) * Nq;
                for (int64_t d = 0; d < D; d++) acc[d] = 0.0;
                for (int64_t s = 0; s < t; s++) {            /* strictly causal: s < t */
                    const float *qs = Q + ((b * T + s) * H + h) * Nq;
                    double dot = 0.0;
                    for (int64_t n = 0; n < Nq; n++) dot += (double)qt[n] * qs[n];
                    double w = gk[t - s] * dot;
                    const float *vs = Vv + (b * T + s) * D;
                    for (int64_t d = 0; d < D; d++) acc[d] += w * vs[d];
                }
                if (r0) {                                    /* carried state, decayed g^t */
                    double gt = gk[t];
                    for (int64_t n = 0; n < Nq; n++) {
                        double qn = gt * qt[n];
                        for (int64_t d = 0; d < D; d++) acc[d] += qn * r0[n * D + d];
                    }
                }
                float *ot = O + ((b * T + t) * H + h) * D;
                for (int64_t d = 0; d < D; d++) ot[d] = (float)acc[d];
            }
            if (R1) {
                float *r1 = R1 + (b * H + h) * Nq * D;
                double gT = gk[T];
                for (int64_t n = 0; n < Nq; n++) {
                    for (int64_t d = 0; d < D; d++) {
                        double s_nd = r0 ? gT * r0[n * D + d] : 0.0;
                        for (int64_t s = 0; s < T; s++) {
                            double w = gk[T - s];
                            s_nd += w * Q[((b * T + s) * H + h) * Nq + n] * Vv[(b * T + s) * D + d];
                        }
                        r1[n * D + d] = (float)s_nd;
                    }
                }
            }
        }
    }
    dg_free(acc);
    dg_free(gk);
    return 0;
}

/* Backward of ref_attn_fwd. Per (b, h), with dO_t = dout[b, t, h, :], dR = drho_out[b, h]
 * (Nq, D), rho0 = rho_in[b, h], and the score gradient dS_ts = g^(t-s) (dO_t . v_s) for s < t:
 *   dq_t += sum_{s<t} dS_ts q_s + sum_{u>t} dS_ut q_u      (q appears on both sides of q_t.q_s)
 *         + g^t rho0 dO_t                                  (carried-state read)
 *         + g^(T-t) dR v_t                                 (state write)
 *   dv_s += sum_{t>s} g^(t-s) (q_t . q_s) dO_t             (v is shared by the heads: sum over h)
 *         + g^(T-s) dR^T q_s
 *   drho_in += sum_t g^t q_t dO_t^T + g^T dR */
static int ref_attn_bwd(dg_backend_t *be, dg_tensor dq, dg_tensor dv, dg_tensor drho_in,
                        dg_tensor dout, dg_tensor drho_out, dg_tensor q, dg_tensor v,
                        dg_tensor rho_in, const float *gamma) {
    (void)be;
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    const float *Q = F(q), *Vv = F(v), *dO = F(dout);
    const float *R0 = dg_t_present(rho_in) ? F(rho_in) : NULL;
    const float *dR = dg_t_present(drho_out) ? F(drho_out) : NULL;
    float *dQ = F(dq), *dV = F(dv);
    float *dR0 = dg_t_present(drho_in) ? F(drho_in) : NULL;
    /* accumulate this call's contributions in double, add to the outputs at the end */
    double *gq = dg_calloc((size_t)(B * T * H * Nq), sizeof *gq);
    double *gv = dg_calloc((size_t)(B * T * D), sizeof *gv);
    double *gk = dg_malloc((size_t)(T + 1) * sizeof *gk);  /* gk[k] = g^k */
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            for (int64_t k = 0; k <= T; k++) gk[k] = pow((double)gamma[h], (double)k);
#define QP(t) (Q + ((b * T + (t)) * H + h) * Nq)
#define VP(t) (Vv + (b * T + (t)) * D)
#define DOP(t) (dO + ((b * T + (t)) * H + h) * D)
#define GQ(t) (gq + ((b * T + (t)) * H + h) * Nq)
#define GV(t) (gv + (b * T + (t)) * D)
            const float *r0 = R0 ? R0 + (b * H + h) * Nq * D : NULL;
            const float *dr = dR ? dR + (b * H + h) * Nq * D : NULL;
            for (int64_t t = 0; t < T; t++) {
                for (int64_t s = 0; s < t; s++) {
                    double m = gk[t - s];
                    double dov = 0.0, qq = 0.0;
                    for (int64_t d = 0; d < D; d++) dov += (double)DOP(t)[d] * VP(s)[d];
                    for (int64_t n = 0; n < Nq; n++) qq += (double)QP(t)[n] * QP(s)[n];
                    double dS = m * dov;                         /* dL/d(q_t . q_s) */
                    for (int64_t n = 0; n < Nq; n++) {
                        GQ(t)[n] += dS * QP(s)[n];
                        GQ(s)[n] += dS * QP(t)[n];
                    }
                    double w = m * qq;                           /* score S_ts */
                    for (int64_t d = 0; d < D; d++) GV(s)[d] += w * DOP(t)[d];
                }
                if (r0) {
                    double gt = gk[t];
                    for (int64_t n = 0; n < Nq; n++) {
                        double acc = 0.0;
                        for (int64_t d = 0; d < D; d++) acc += (double)r0[n * D + d] * DOP(t)[d];
                        GQ(t)[n] += gt * acc;
                    }
                }
                if (dr) {
                    double w = gk[T - t];
                    for (int64_t n = 0; n < Nq; n++) {
                        double acc = 0.0;
                        for (int64_t d = 0; d < D; d++) acc += (double)dr[n * D + d] * VP(t)[d];
                        GQ(t)[n] += w * acc;
                    }
                    for (int64_t d = 0; d < D; d++) {
                        double acc = 0.0;
                        for (int64_t n = 0; n < Nq; n++) acc += (double)dr[n * D + d] * QP(t)[n];
                        GV(t)[d] += w * acc;
                    }
                }
            }
            if (dR0) {
                float *g0 = dR0 + (b * H + h) * Nq * D;
                double gT = gk[T];
                for (int64_t n = 0; n < Nq; n++) {
                    for (int64_t d = 0; d < D; d++) {
                        double acc = dr ? gT * dr[n * D + d] : 0.0;
                        for (int64_t t = 0; t < T; t++)
                            acc += gk[t] * QP(t)[n] * DOP(t)[d];
                        g0[n * D + d] = (float)((double)g0[n * D + d] + acc);
                    }
                }
            }
#undef QP
#undef VP
#undef DOP
#undef GQ
#undef GV
        }
    }
    for (int64_t i = 0; i < B * T * H * Nq; i++) dQ[i] = (float)((double)dQ[i] + gq[i]);
    for (int64_t i = 0; i < B * T * D; i++) dV[i] = (float)((double)dV[i] + gv[i]);
    dg_free(gq);
    dg_free(gv);
    dg_free(gk);
    return 0;
}

// ------------------------------------------------------------------------------------------
// Hebbian gate with inverted dropout

/* The dropout multiplier of flat element i: keep / (1 - p), or exactly 1 when p == 0. */
static float gate_k(uint64_t seed, int64_t i, float p) {
    if (p == 0.0f) return 1.0f;
    return dg_dropout_keep(seed, (uint64_t)i, p) ? 1.0f / (1.0f - p) : 0.0f;
}

/* z = x * y * k_i */
static int ref_gate_fwd(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor y, float p,
                        uint64_t seed) {
    (void)be;
    const float *px = F(x), *py = F(y);
    float *pz = F(z);
    int64_t n = dg_nelem(z);
    for (int64_t i = 0; i < n; i++) pz[i] = px[i] * py[i] * gate_k(seed, i, p);
    return 0;
}

/* dx += dz * y * k_i;  dy += dz * x * k_i */
static int ref_gate_bwd(dg_backend_t *be, dg_tensor dx, dg_tensor dy, dg_tensor dz, dg_tensor x,
                        dg_tensor y, float p, uint64_t seed) {
    (void)be;
    const float *px = F(x), *py = F(y), *pdz = F(dz);
    float *pdx = F(dx), *pdy = F(dy);
    int64_t n = dg_nelem(dz);
    for (int64_t i = 0; i < n; i++) {
        float gk = pdz[i] * gate_k(seed, i, p);
        float xi = px[i], yi = py[i];   /* read both before writing: dx may alias x or y */
        pdx[i] += gk * yi;
        pdy[i] += gk * xi;
    }
    return 0;
}

/* out = a + b */
static int ref_add(dg_backend_t *be, dg_tensor out, dg_tensor a, dg_tensor b) {
    (void)be;
    const float *pa = F(a), *pb = F(b);
    float *po = F(out);
    int64_t n = dg_nelem(out);
    for (int64_t i = 0; i < n; i++) po[i] = pa[i] + pb[i];
    return 0;
}

// ------------------------------------------------------------------------------------------
// cross-entropy with fused softmax

/* Per row r of logits (R, V), target y = tgt[r]:
 *   loss[r] = log sum_j exp(l_j - max) + max - l_y
 *   dlogits[r][j] += dscale * (softmax_j - [j == y])   (if dlogits present)
 * A target outside [0, V) is bad input: DG_EINVAL before anything is written. */
static int ref_xent(dg_backend_t *be, dg_tensor loss, dg_tensor dlogits, dg_tensor logits,
                    dg_tensor tgt, float dscale) {
    (void)be;
    int64_t V = logits.ne[0], R = dg_nelem(logits) / V;
    const int32_t *y = I(tgt);
    for (int64_t r = 0; r < R; r++) {
        if (y[r] < 0 || y[r] >= V) {
            DG_ERROR("xent: target %d at row %lld is outside [0, %lld)", (int)y[r],
                     (long long)r, (long long)V);
            return DG_EINVAL;
        }
    }
    const float *L = F(logits);
    float *pl = F(loss);
    float *dL = dg_t_present(dlogits) ? F(dlogits) : NULL;
    for (int64_t r = 0; r < R; r++) {
        const float *lr = L + r * V;
        double mx = lr[0];
        for (int64_t j = 1; j < V; j++) if (lr[j] > mx) mx = lr[j];
        double sum = 0.0;
        for (int64_t j = 0; j < V; j++) sum += exp((double)lr[j] - mx);
        pl[r] = (float)(log(sum) + (mx - (double)lr[y[r]]));
        if (dL) {
            float *dr = dL + r * V;
            for (int64_t j = 0; j < V; j++) {
                double pj = exp((double)lr[j] - mx) / sum;
                double gj = pj - (j == y[r] ? 1.0 : 0.0);
                dr[j] = (float)((double)dr[j] + (double)dscale * gj);
            }
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// AdamW (MODEL.md §6.1)

/* g' = grad_scale * g; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 * mh = m / (1 - b1^t); vh = v / (1 - b2^t); p = p (1 - lr wd) - lr mh / (sqrt(vh) + eps).
 * Scalars in double; m and v are stored as float before they are used (as a float kernel). */
static int ref_adamw(dg_backend_t *be, dg_tensor p, dg_tensor g, dg_tensor m, dg_tensor v,
                     const dg_adamw_hp *hp) {
    (void)be;
    float *pp = F(p), *pm = F(m), *pv = F(v);
    const float *pg = F(g);
    int64_t n = dg_nelem(p);
    double b1 = hp->beta1, b2 = hp->beta2;
    double bc1 = 1.0 - pow(b1, (double)hp->step), bc2 = 1.0 - pow(b2, (double)hp->step);
    for (int64_t i = 0; i < n; i++) {
        double gi = (double)hp->grad_scale * pg[i];
        float mi = (float)(b1 * pm[i] + (1.0 - b1) * gi);
        float vi = (float)(b2 * pv[i] + (1.0 - b2) * gi * gi);
        double mh = mi / bc1, vh = vi / bc2;
        double upd = mh / (sqrt(vh) + (double)hp->eps);
        pp[i] = (float)((double)pp[i] * (1.0 - (double)hp->lr * hp->weight_decay)
                        - (double)hp->lr * upd);
        pm[i] = mi;
        pv[i] = vi;
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// one recurrent decode step (MODEL.md §4.2)

/* For each sequence b and head h, with state rho = rho[b][h] (Nq, D), q = q[b, h, :] (Nq),
 * v = v[b, :] (D), g = gamma[h]:
 *   out[b, h, :] = rho^T q            (read the OLD state: strictly causal)
 *   rho = (rho + q v^T) * g           (write; rows with q[n] == 0 only decay)
 * Rows with q[n] == 0 contribute nothing to the read and get no rank-1 term; when g == 1 they
 * are not touched at all. The update is done in float, exactly as written above. */
static int ref_attn_step(dg_backend_t *be, int B, const dg_tensor *rho, dg_tensor out,
                         dg_tensor q, dg_tensor v, const float *gamma) {
    (void)be;
    int64_t Nq = q.ne[0], H = dg_nelem(q) / ((int64_t)B * Nq), D = v.ne[0];
    const float *Q = F(q), *Vv = F(v);
    float *O = F(out);
    double *acc = dg_malloc((size_t)D * sizeof *acc);
    for (int64_t b = 0; b < B; b++) {
        float *R = F(rho[b]);
        const float *vb = Vv + b * D;
        for (int64_t h = 0; h < H; h++) {
            float g = gamma[h];
            const float *qh = Q + (b * H + h) * Nq;
            float *Rh = R + h * Nq * D;
            for (int64_t d = 0; d < D; d++) acc[d] = 0.0;
            for (int64_t n = 0; n < Nq; n++) {                /* read before write */
                if (qh[n] == 0.0f) continue;
                for (int64_t d = 0; d < D; d++) acc[d] += (double)qh[n] * Rh[n * D + d];
            }
            for (int64_t n = 0; n < Nq; n++) {                /* write */
                float *row = Rh + n * D;
                if (qh[n] != 0.0f) {
                    for (int64_t d = 0; d < D; d++) row[d] = (row[d] + qh[n] * vb[d]) * g;
                } else if (g != 1.0f) {
                    for (int64_t d = 0; d < D; d++) row[d] *= g;
                }
            }
            float *o = O + (b * H + h) * D;
            for (int64_t d = 0; d < D; d++) o[d] = (float)acc[d];
        }
    }
    dg_free(acc);
    return 0;
}

/* z = x * relu(a . wt_j - thr) where x != 0, else 0 (the decode step's encoder_v, ReLU and gate;
 * backend.h). Dots in double, like ref_gemm. */
static int ref_gate_proj(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt,
                         float thr) {
    (void)be;
    int64_t D = wt.ne[0], N = wt.ne[1], H = wt.ne[2], R = dg_nelem(x) / (H * N);
    const float *px = F(x), *pa = F(a), *pw = F(wt);
    float *pz = F(z);
    for (int64_t r = 0; r < R; r++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < N; j++) {
                int64_t i = (r * H + h) * N + j;
                if (px[i] == 0.0f) { pz[i] = 0.0f; continue; }
                double acc = 0.0;
                for (int64_t d = 0; d < D; d++)
                    acc += (double)pa[(r * H + h) * D + d] * (double)pw[(h * N + j) * D + d];
                float y = (float)acc - thr;
                pz[i] = px[i] * (y > 0.0f ? y : 0.0f);
            }
    return 0;
}

// ------------------------------------------------------------------------------------------

static const dg_backend_iface REF_IFACE = {
    .version = DG_BACKEND_IFACE_VERSION,
    .name = "ref",
    .init = ref_init,
    .free = ref_free,
    .buf_alloc = ref_buf_alloc,
    .buf_free = ref_buf_free,
    .set = ref_set,
    .get = ref_get,
    .copy = ref_copy,
    .fill = ref_fill,
    .sync = ref_sync,
    .gemm = ref_gemm,
    .axpy = ref_axpy,
    .scale = ref_scale,
    .sumsq = ref_sumsq,
    .embed_fwd = ref_embed_fwd,
    .embed_bwd = ref_embed_bwd,
    .layernorm_fwd = ref_layernorm_fwd,
    .layernorm_bwd = ref_layernorm_bwd,
    .relu_fwd = ref_relu_fwd,
    .relu_bwd = ref_relu_bwd,
    .pos_fwd = ref_pos_fwd,
    .pos_bwd = ref_pos_bwd,
    .attn_fwd = ref_attn_fwd,
    .attn_bwd = ref_attn_bwd,
    .gate_fwd = ref_gate_fwd,
    .gate_bwd = ref_gate_bwd,
    .add = ref_add,
    .xent = ref_xent,
    .adamw = ref_adamw,
    .attn_step = ref_attn_step,
    .gate_proj = ref_gate_proj,
};

const dg_backend_iface *dg_backend_ref_iface(void);
const dg_backend_iface *dg_backend_ref_iface(void) { return &REF_IFACE; }
