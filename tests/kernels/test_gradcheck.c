/* tests/kernels/test_gradcheck.c -- finite-difference checks of every backward op of "ref".
 *
 * For an op with inputs x and output y, take L = sum_i y_i w_i with fixed random weights w; the
 * backward op called with dout = w must give dL/dx. The numeric derivative is the central
 * difference (L(x + h e_j) - L(x - h e_j)) / (h+ + h-), where h+/h- are the perturbations that
 * actually happened in f32 ((float)(x + h) - x, in double), and L is summed in double.
 *
 * Tolerance, justified: h = 1e-2. Truncation error of the central difference is h^2/6 |L'''|;
 * the ops are polynomials of degree <= 3 in any one input (attention, gate, gemm, rope) or smooth
 * with O(1..10) third derivatives on our O(1) inputs (layernorm, softplus, softmax), so <= ~2e-4.
 * Rounding: ref stores f32 outputs (rel. 6e-8 each); over <= ~200 outputs of size <= ~10 that is
 * <= ~1e-5 in L, i.e. <= ~5e-4 after dividing by 2h. Hence |num - ana| <= 2e-3 + 2e-3 |num|.
 * A wrong formula (a missing term, a wrong sign, a transpose) is off by O(0.1..1) and fails.
 * ReLU inputs are kept > 2h away from the threshold so no perturbation crosses the kink.
 * Every check also asserts the gradient is not all zero (a vacuous pass is impossible).
 * Thread affinity: single-threaded test. */
#include "kern_util.h"

#define STEP 1e-2
#define ATOL 2e-3
#define RTOL 2e-3

typedef double (*loss_fn)(void *ud);

static double wsum(const float *y, const float *w, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)y[i] * w[i];
    return s;
}

/* Compare ana (n) with central differences of f w.r.t. x (n, perturbed in place). */
static void check_grad(const char *what, float *x, int64_t n, const float *ana, loss_fn f,
                       void *ud) {
    double amax = 0;
    for (int64_t j = 0; j < n; j++) {
        float x0 = x[j];
        x[j] = (float)(x0 + STEP);
        double hp = (double)x[j] - x0, lp = f(ud);
        x[j] = (float)(x0 - STEP);
        double hm = x0 - (double)x[j], lm = f(ud);
        x[j] = x0;
        double num = (lp - lm) / (hp + hm);
        double tol = ATOL + RTOL * fabs(num);
        ck_assert_msg(fabs(num - ana[j]) <= tol, "%s: d/dx[%lld] numeric %.6g analytic %.6g",
                      what, (long long)j, num, ana[j]);
        amax = fmax(amax, fabs(ana[j]));
    }
    ck_assert_msg(amax > 1e-3, "%s: gradient is all zero", what);
}

// ------------------------------------------------------------------------------------------
// layernorm

typedef struct {
    ku_arena a;
    int64_t R, D;
    bool affine;
    float *x, *g, *b, *w;
    dg_tensor tx, tg, tb, to, tm, ts;
} ln_ud;

static double ln_loss(void *p) {
    ln_ud *u = p;
    dg_set(u->a.be, u->tx, u->x);
    if (u->affine) { dg_set(u->a.be, u->tg, u->g); dg_set(u->a.be, u->tb, u->b); }
    ck_assert_int_eq(dg_layernorm_fwd(u->a.be, u->to, u->tm, u->ts, u->tx, u->tg, u->tb, 1e-5f), 0);
    float *y = ku_get(&u->a, u->to);
    double l = wsum(y, u->w, u->R * u->D);
    free(y);
    return l;
}

START_TEST(test_layernorm) {
    for (int affine = 0; affine < 2; affine++) {
        ln_ud u = {.R = 3, .D = 7, .affine = affine};
        ku_open(&u.a, "ref");
        dg_rng r;
        dg_rng_seed(&r, 1 + affine);
        int64_t n = u.R * u.D;
        u.x = ku_randn(&r, n, 1.0f); u.g = ku_randn(&r, u.D, 1.0f);
        u.b = ku_randn(&r, u.D, 1.0f); u.w = ku_randn(&r, n, 1.0f);
        u.tx = ku_t2(&u.a, u.x, u.R, u.D); u.to = ku_t2(&u.a, NULL, u.R, u.D);
        u.tm = ku_t1(&u.a, NULL, u.R); u.ts = ku_t1(&u.a, NULL, u.R);
        u.tg = affine ? ku_t1(&u.a, u.g, u.D) : dg_t_null();
        u.tb = affine ? ku_t1(&u.a, u.b, u.D) : dg_t_null();
        ln_loss(&u);                                            /* mean/rstd of the base point */
        float *z = calloc((size_t)n, 4);
        dg_tensor tdx = ku_t2(&u.a, z, u.R, u.D), tdo = ku_t2(&u.a, u.w, u.R, u.D);
        dg_tensor tdg = affine ? ku_t1(&u.a, z, u.D) : dg_t_null();
        dg_tensor tdb = affine ? ku_t1(&u.a, z, u.D) : dg_t_null();
        ck_assert_int_eq(dg_layernorm_bwd(u.a.be, tdx, tdg, tdb, tdo, u.tx, u.tm, u.ts, u.tg), 0);
        float *dx = ku_get(&u.a, tdx);
        check_grad(affine ? "layernorm dx (affine)" : "layernorm dx", u.x, n, dx, ln_loss, &u);
        free(dx);
        if (affine) {
            float *dg = ku_get(&u.a, tdg), *db = ku_get(&u.a, tdb);
            check_grad("layernorm dgamma", u.g, u.D, dg, ln_loss, &u);
            check_grad("layernorm dbeta", u.b, u.D, db, ln_loss, &u);
            free(dg); free(db);
        }
        ku_close(&u.a);
        free(u.x); free(u.g); free(u.b); free(u.w); free(z);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// relu with threshold

typedef struct { ku_arena a; int64_t n; float thr, *x, *w; dg_tensor tx, to; } relu_ud;

static double relu_loss(void *p) {
    relu_ud *u = p;
    dg_set(u->a.be, u->tx, u->x);
    ck_assert_int_eq(dg_relu_fwd(u->a.be, u->to, u->tx, u->thr), 0);
    float *y = ku_get(&u->a, u->to);
    double l = wsum(y, u->w, u->n);
    free(y);
    return l;
}

START_TEST(test_relu) {
    relu_ud u = {.n = 40, .thr = 0.3f};
    ku_open(&u.a, "ref");
    dg_rng r;
    dg_rng_seed(&r, 3);
    u.x = ku_randn(&r, u.n, 1.0f); u.w = ku_randn(&r, u.n, 1.0f);
    for (int64_t i = 0; i < u.n; i++)            /* stay 2h away from the kink at thr */
        if (fabsf(u.x[i] - u.thr) < 2 * STEP) u.x[i] = u.thr + (i % 2 ? 0.1f : -0.1f);
    u.tx = ku_t1(&u.a, u.x, u.n); u.to = ku_t1(&u.a, NULL, u.n);
    relu_loss(&u);
    float *z = calloc((size_t)u.n, 4);
    dg_tensor tdx = ku_t1(&u.a, z, u.n), tdo = ku_t1(&u.a, u.w, u.n);
    ck_assert_int_eq(dg_relu_bwd(u.a.be, tdx, tdo, u.to), 0);
    float *dx = ku_get(&u.a, tdx);
    check_grad("relu dx", u.x, u.n, dx, relu_loss, &u);
    ku_close(&u.a);
    free(dx); free(z); free(u.x); free(u.w);
}
END_TEST

// ------------------------------------------------------------------------------------------
// positional transforms

typedef struct {
    ku_arena a;
    int64_t B, T, H, N, Nq;
    dg_pos_mode mode;
    int64_t pos0[2];
    float *x, *w;
    dg_tensor tx, to;
} pos_ud;

static double pos_loss(void *p) {
    pos_ud *u = p;
    dg_set(u->a.be, u->tx, u->x);
    ck_assert_int_eq(dg_pos_fwd(u->a.be, u->to, u->tx, u->pos0, u->mode, 65536.0f), 0);
    float *y = ku_get(&u->a, u->to);
    double l = wsum(y, u->w, u->B * u->T * u->H * u->Nq);
    free(y);
    return l;
}

START_TEST(test_pos) {
    for (int mode = DG_POS_ROPE; mode <= DG_POS_POPE; mode++) {
        pos_ud u = {.B = 2, .T = 3, .H = 2, .N = 4, .mode = mode, .pos0 = {0, 123457}};
        u.Nq = mode == DG_POS_POPE ? 2 * u.N : u.N;
        ku_open(&u.a, "ref");
        dg_rng r;
        dg_rng_seed(&r, 4 + mode);
        int64_t n = u.B * u.T * u.H * u.N, no = u.B * u.T * u.H * u.Nq;
        u.x = ku_randn(&r, n, 1.0f); u.w = ku_randn(&r, no, 1.0f);
        u.tx = ku_t4(&u.a, u.x, u.B, u.T, u.H, u.N); u.to = ku_t4(&u.a, NULL, u.B, u.T, u.H, u.Nq);
        float *z = calloc((size_t)n, 4);
        dg_tensor tdx = ku_t4(&u.a, z, u.B, u.T, u.H, u.N);
        dg_tensor tdo = ku_t4(&u.a, u.w, u.B, u.T, u.H, u.Nq);
        ck_assert_int_eq(dg_pos_bwd(u.a.be, tdx, tdo, u.tx, u.pos0, u.mode, 65536.0f), 0);
        float *dx = ku_get(&u.a, tdx);
        check_grad(mode == DG_POS_ROPE ? "rope dx" : "pope dx", u.x, n, dx, pos_loss, &u);
        ku_close(&u.a);
        free(dx); free(z); free(u.x); free(u.w);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// attention (with and without carried state, g < 1 and g = 1)

typedef struct {
    ku_arena a;
    int64_t B, T, H, Nq, D;
    float g[2];
    bool rin, rout;
    float *q, *v, *r0, *w, *wr;
    dg_tensor tq, tv, tri, to, tro;
} attn_ud;

static double attn_loss(void *p) {
    attn_ud *u = p;
    dg_set(u->a.be, u->tq, u->q);
    dg_set(u->a.be, u->tv, u->v);
    if (u->rin) dg_set(u->a.be, u->tri, u->r0);
    ck_assert_int_eq(dg_attn_fwd(u->a.be, u->to, u->tro, u->tq, u->tv, u->tri, u->g), 0);
    float *y = ku_get(&u->a, u->to);
    double l = wsum(y, u->w, u->B * u->T * u->H * u->D);
    free(y);
    if (u->rout) {
        float *rr = ku_get(&u->a, u->tro);
        l += wsum(rr, u->wr, u->B * u->H * u->Nq * u->D);
        free(rr);
    }
    return l;
}

static void run_attn(float g0, float g1, bool rin, bool rout, uint64_t seed) {
    attn_ud u = {.B = 2, .T = 4, .H = 2, .Nq = 3, .D = 2, .g = {g0, g1}, .rin = rin, .rout = rout};
    ku_open(&u.a, "ref");
    dg_rng r;
    dg_rng_seed(&r, seed);
    int64_t nq = u.B * u.T * u.H * u.Nq, nv = u.B * u.T * u.D, no = u.B * u.T * u.H * u.D;
    int64_t nr = u.B * u.H * u.Nq * u.D;
    u.q = ku_randn(&r, nq, 0.7f); u.v = ku_randn(&r, nv, 0.7f); u.r0 = ku_randn(&r, nr, 0.7f);
    u.w = ku_randn(&r, no, 1.0f); u.wr = ku_randn(&r, nr, 1.0f);
    u.tq = ku_t4(&u.a, u.q, u.B, u.T, u.H, u.Nq); u.tv = ku_t4(&u.a, u.v, 1, u.B, u.T, u.D);
    u.tri = rin ? ku_t4(&u.a, u.r0, u.B, u.H, u.Nq, u.D) : dg_t_null();
    u.to = ku_t4(&u.a, NULL, u.B, u.T, u.H, u.D);
    u.tro = rout ? ku_t4(&u.a, NULL, u.B, u.H, u.Nq, u.D) : dg_t_null();
    float *z = calloc((size_t)(nq + nv + nr), 4);
    dg_tensor tdq = ku_t4(&u.a, z, u.B, u.T, u.H, u.Nq), tdv = ku_t4(&u.a, z, 1, u.B, u.T, u.D);
    dg_tensor tdri = rin ? ku_t4(&u.a, z, u.B, u.H, u.Nq, u.D) : dg_t_null();
    dg_tensor tdo = ku_t4(&u.a, u.w, u.B, u.T, u.H, u.D);
    dg_tensor tdro = rout ? ku_t4(&u.a, u.wr, u.B, u.H, u.Nq, u.D) : dg_t_null();
    ck_assert_int_eq(dg_attn_bwd(u.a.be, tdq, tdv, tdri, tdo, tdro, u.tq, u.tv, u.tri, u.g), 0);
    float *dq = ku_get(&u.a, tdq), *dv = ku_get(&u.a, tdv);
    char what[96];
    snprintf(what, sizeof what, "attn dq g=(%g,%g) rin%d rout%d", g0, g1, rin, rout);
    check_grad(what, u.q, nq, dq, attn_loss, &u);
    snprintf(what, sizeof what, "attn dv g=(%g,%g) rin%d rout%d", g0, g1, rin, rout);
    check_grad(what, u.v, nv, dv, attn_loss, &u);
    if (rin) {
        float *dr = ku_get(&u.a, tdri);
        snprintf(what, sizeof what, "attn drho_in g=(%g,%g) rout%d", g0, g1, rout);
        check_grad(what, u.r0, nr, dr, attn_loss, &u);
        free(dr);
    }
    ku_close(&u.a);
    free(dq); free(dv); free(z); free(u.q); free(u.v); free(u.r0); free(u.w); free(u.wr);
}

START_TEST(test_attn) {
    run_attn(1.0f, 1.0f, false, false, 10);
    run_attn(0.6f, 0.9f, false, false, 11);
    run_attn(1.0f, 1.0f, true, true, 12);
    run_attn(0.6f, 0.85f, true, true, 13);
    run_attn(0.7f, 1.0f, true, false, 14);
    run_attn(0.5f, 1.0f, false, true, 15);
}
END_TEST

// ------------------------------------------------------------------------------------------
// gate with dropout

typedef struct { ku_arena a; int64_t n; float p; float *x, *y, *w; dg_tensor tx, ty, tz; } gate_ud;

static double gate_loss(void *pu) {
    gate_ud *u = pu;
    dg_set(u->a.be, u->tx, u->x);
    dg_set(u->a.be, u->ty, u->y);
    ck_assert_int_eq(dg_gate_fwd(u->a.be, u->tz, u->tx, u->ty, u->p, 99), 0);
    float *z = ku_get(&u->a, u->tz);
    double l = wsum(z, u->w, u->n);
    free(z);
    return l;
}

START_TEST(test_gate) {
    const float ps[2] = {0.0f, 0.3f};
    for (int k = 0; k < 2; k++) {
        gate_ud u = {.n = 50, .p = ps[k]};
        ku_open(&u.a, "ref");
        dg_rng r;
        dg_rng_seed(&r, 20 + k);
        u.x = ku_randn(&r, u.n, 1.0f); u.y = ku_randn(&r, u.n, 1.0f); u.w = ku_randn(&r, u.n, 1.0f);
        u.tx = ku_t1(&u.a, u.x, u.n); u.ty = ku_t1(&u.a, u.y, u.n); u.tz = ku_t1(&u.a, NULL, u.n);
        float *zz = calloc((size_t)u.n, 4);
        dg_tensor tdx = ku_t1(&u.a, zz, u.n), tdy = ku_t1(&u.a, zz, u.n);
        dg_tensor tdz = ku_t1(&u.a, u.w, u.n);
        ck_assert_int_eq(dg_gate_bwd(u.a.be, tdx, tdy, tdz, u.tx, u.ty, u.p, 99), 0);
        float *dx = ku_get(&u.a, tdx), *dy = ku_get(&u.a, tdy);
        check_grad(k ? "gate dx p=0.3" : "gate dx p=0", u.x, u.n, dx, gate_loss, &u);
        check_grad(k ? "gate dy p=0.3" : "gate dy p=0", u.y, u.n, dy, gate_loss, &u);
        ku_close(&u.a);
        free(dx); free(dy); free(zz); free(u.x); free(u.y); free(u.w);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// cross-entropy: L = dscale * sum_r loss_r

typedef struct { ku_arena a; int64_t R, V; float *l; dg_tensor tl, tt, tloss; } xent_ud;

#define XSCALE 0.7f

static double xent_loss(void *p) {
    xent_ud *u = p;
    dg_set(u->a.be, u->tl, u->l);
    ck_assert_int_eq(dg_xent(u->a.be, u->tloss, dg_t_null(), u->tl, u->tt, 0.0f), 0);
    float *y = ku_get(&u->a, u->tloss);
    double s = 0;
    for (int64_t i = 0; i < u->R; i++) s += XSCALE * (double)y[i];
    free(y);
    return s;
}

START_TEST(test_xent) {
    xent_ud u = {.R = 4, .V = 6};
    ku_open(&u.a, "ref");
    dg_rng r;
    dg_rng_seed(&r, 30);
    u.l = ku_randn(&r, u.R * u.V, 1.5f);
    int32_t t[4] = {0, 5, 2, 2};
    u.tl = ku_t2(&u.a, u.l, u.R, u.V); u.tt = ku_i32(&u.a, t, u.R);
    u.tloss = ku_t1(&u.a, NULL, u.R);
    float *z = calloc((size_t)(u.R * u.V), 4);
    dg_tensor tdl = ku_t2(&u.a, z, u.R, u.V);
    ck_assert_int_eq(dg_xent(u.a.be, u.tloss, tdl, u.tl, u.tt, XSCALE), 0);
    float *dl = ku_get(&u.a, tdl);
    check_grad("xent dlogits", u.l, u.R * u.V, dl, xent_loss, &u);
    ku_close(&u.a);
    free(dl); free(z); free(u.l);
}
END_TEST

// ------------------------------------------------------------------------------------------
// embedding

typedef struct { ku_arena a; int64_t R, V, D; float *wte, *w; dg_tensor tw, tt, to; } emb_ud;

static double emb_loss(void *p) {
    emb_ud *u = p;
    dg_set(u->a.be, u->tw, u->wte);
    ck_assert_int_eq(dg_embed_fwd(u->a.be, u->to, u->tt, u->tw), 0);
    float *y = ku_get(&u->a, u->to);
    double l = wsum(y, u->w, u->R * u->D);
    free(y);
    return l;
}

START_TEST(test_embed) {
    emb_ud u = {.R = 6, .V = 5, .D = 3};
    ku_open(&u.a, "ref");
    dg_rng r;
    dg_rng_seed(&r, 40);
    u.wte = ku_randn(&r, u.V * u.D, 1.0f); u.w = ku_randn(&r, u.R * u.D, 1.0f);
    int32_t t[6] = {1, 3, 1, 0, 4, 1};                   /* repeats accumulate; 2 unused */
    u.tw = ku_t2(&u.a, u.wte, u.V, u.D); u.tt = ku_i32(&u.a, t, u.R);
    u.to = ku_t2(&u.a, NULL, u.R, u.D);
    float *z = calloc((size_t)(u.V * u.D), 4);
    dg_tensor tdw = ku_t2(&u.a, z, u.V, u.D), tdo = ku_t2(&u.a, u.w, u.R, u.D);
    ck_assert_int_eq(dg_embed_bwd(u.a.be, tdw, tdo, u.tt), 0);
    float *dw = ku_get(&u.a, tdw);
    check_grad("embed dwte", u.wte, u.V * u.D, dw, emb_loss, &u);
    ku_close(&u.a);
    free(dw); free(z); free(u.wte); free(u.w);
}
END_TEST

// ------------------------------------------------------------------------------------------
// gemm with transposes: C = alpha op(A) op(B). The gradients are themselves GEMMs with the
// operands transposed: d op(A) = alpha dC op(B)^T, d op(B) = alpha op(A)^T dC; for a stored
// transposed operand the gradient is the transpose of that.

typedef struct {
    ku_arena a;
    int64_t M, N, K;
    bool ta, tb;
    float alpha, *A, *B, *w;
    dg_tensor tA, tB, tC;
} gemm_ud;

static dg_mat mat_of(dg_tensor t, int64_t r, int64_t c, bool tr) {
    dg_mat m = dg_m(t, r, c, c);
    return tr ? dg_m_t(m) : m;
}

static double gemm_loss(void *p) {
    gemm_ud *u = p;
    dg_set(u->a.be, u->tA, u->A);
    dg_set(u->a.be, u->tB, u->B);
    int64_t ar = u->ta ? u->K : u->M, ac = u->ta ? u->M : u->K;
    int64_t br = u->tb ? u->N : u->K, bc = u->tb ? u->K : u->N;
    dg_gemm_desc d = {u->M, u->N, u->K, 1, mat_of(u->tA, ar, ac, u->ta),
                      mat_of(u->tB, br, bc, u->tb), dg_m(u->tC, u->M, u->N, u->N), u->alpha, 0};
    ck_assert_int_eq(dg_gemm(u->a.be, &d), 0);
    float *y = ku_get(&u->a, u->tC);
    double l = wsum(y, u->w, u->M * u->N);
    free(y);
    return l;
}

START_TEST(test_gemm) {
    for (int tr = 0; tr < 4; tr++) {
        gemm_ud u = {.M = 3, .N = 4, .K = 5, .ta = tr & 1, .tb = tr >> 1, .alpha = 0.75f};
        ku_open(&u.a, "ref");
        dg_rng r;
        dg_rng_seed(&r, 50 + tr);
        int64_t M = u.M, N = u.N, K = u.K;
        u.A = ku_randn(&r, M * K, 1.0f); u.B = ku_randn(&r, K * N, 1.0f);
        u.w = ku_randn(&r, M * N, 1.0f);
        int64_t ar = u.ta ? K : M, ac = u.ta ? M : K, br = u.tb ? N : K, bc = u.tb ? K : N;
        u.tA = ku_t2(&u.a, u.A, ar, ac); u.tB = ku_t2(&u.a, u.B, br, bc);
        u.tC = ku_t2(&u.a, NULL, M, N);
        dg_tensor tW = ku_t2(&u.a, u.w, M, N);
        /* gradients accumulate (beta = 1) into pre-filled buffers: start from 1, subtract */
        float *ones = malloc((size_t)(M * K + K * N) * 4);
        for (int64_t i = 0; i < M * K + K * N; i++) ones[i] = 1.0f;
        dg_tensor tdA = ku_t2(&u.a, ones, ar, ac), tdB = ku_t2(&u.a, ones, br, bc);
        dg_mat W = dg_m(tW, M, N, N);
        dg_mat opB = mat_of(u.tB, br, bc, u.tb), opA = mat_of(u.tA, ar, ac, u.ta);
        dg_gemm_desc ga, gb;
        if (!u.ta)   /* dA (M, K) = alpha W op(B)^T */
            ga = (dg_gemm_desc){M, K, N, 1, W, dg_m_t(opB), dg_m(tdA, M, K, K), u.alpha, 1};
        else         /* dA (K, M) = alpha op(B) W^T */
            ga = (dg_gemm_desc){K, M, N, 1, opB, dg_m_t(W), dg_m(tdA, K, M, M), u.alpha, 1};
        if (!u.tb)   /* dB (K, N) = alpha op(A)^T W */
            gb = (dg_gemm_desc){K, N, M, 1, dg_m_t(opA), W, dg_m(tdB, K, N, N), u.alpha, 1};
        else         /* dB (N, K) = alpha W^T op(A) */
            gb = (dg_gemm_desc){N, K, M, 1, dg_m_t(W), opA, dg_m(tdB, N, K, K), u.alpha, 1};
        ck_assert_int_eq(dg_gemm(u.a.be, &ga), 0);
        ck_assert_int_eq(dg_gemm(u.a.be, &gb), 0);
        float *dA = ku_get(&u.a, tdA), *dB = ku_get(&u.a, tdB);
        for (int64_t i = 0; i < M * K; i++) dA[i] -= 1.0f;
        for (int64_t i = 0; i < K * N; i++) dB[i] -= 1.0f;
        char what[64];
        snprintf(what, sizeof what, "gemm dA ta%d tb%d", u.ta, u.tb);
        check_grad(what, u.A, M * K, dA, gemm_loss, &u);
        snprintf(what, sizeof what, "gemm dB ta%d tb%d", u.ta, u.tb);
        check_grad(what, u.B, K * N, dB, gemm_loss, &u);
        ku_close(&u.a);
        free(dA); free(dB); free(ones); free(u.A); free(u.B); free(u.w);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("ref gradient checks");
    TCase *tc = tcase_create("gradcheck");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_relu);
    tcase_add_test(tc, test_pos);
    tcase_add_test(tc, test_attn);
    tcase_add_test(tc, test_gate);
    tcase_add_test(tc, test_xent);
    tcase_add_test(tc, test_embed);
    tcase_add_test(tc, test_gemm);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
