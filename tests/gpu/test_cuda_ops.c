/* tests/gpu/test_cuda_ops.c -- every verb of the "cuda" backend against "ref" (the specification)
 * on fresh random inputs of several shapes.
 *
 * Outputs a verb WRITES are poisoned with NaN on the GPU before the call, so an element the
 * kernel forgets fails; outputs a verb ACCUMULATES into start from the same random values on both
 * backends. Tolerances by precision, as max|got - ref| / max|ref|: fp32 verbs <= 1e-5; verbs built
 * on bf16 tensor-core GEMMs (gemm, attn_fwd, attn_bwd) <= 1e-2. Without a usable GPU
 * (dg_backend_open("cuda") fails) every test prints a SKIP line and passes.
 * Not here: the whole model (test_cuda_model.c). Thread affinity: one thread per test process. */
#include "check_util.h"
#include "backend.h"

#include <math.h>

#define TOL32 1e-5
#define TOLBF 1e-2

static dg_backend_t *REF, *CU;
static dg_rng RNG;

/* Opens both backends; false (with a SKIP line) when there is no GPU. */
static bool open_both(const char *test) {
    dg_backend_params p = {0};
    if (dg_backend_open("cuda", &p, &CU) != 0) {
        printf("SKIP %s: the cuda backend could not be opened (no GPU or not compiled in: %s)\n",
               test, dg_backend_list());
        CU = NULL;
        return false;
    }
    ck_assert_int_eq(dg_backend_open("ref", &p, &REF), 0);
    dg_rng_seed(&RNG, 0x5eed0000u + (uint64_t)dg_now());
    return true;
}
static void close_both(void) {
    dg_backend_close(REF);
    dg_backend_close(CU);
    REF = CU = NULL;
}

/* A tensor mirrored on both backends. */
typedef struct {
    dg_buf_t *r, *c;
    int64_t   n;
    size_t    offs;    /* bytes in front (views not at the start of a buffer) */
} pair_t;

static float *rnd(int64_t n, float lo, float hi) {
    float *h = dg_malloc((size_t)n * sizeof(float) + 4);
    for (int64_t i = 0; i < n; i++) h[i] = lo + (hi - lo) * (float)dg_rng_uniform(&RNG);
    return h;
}

/* New pair of n floats at byte offset offs; init NULL = poison (NaN) on both. */
static pair_t pnew_off(int64_t n, const float *init, size_t offs) {
    pair_t p = {NULL, NULL, n, offs};
    size_t nb = offs + (size_t)n * 4;
    ck_assert_int_eq(dg_buf_alloc(REF, nb, &p.r), 0);
    ck_assert_int_eq(dg_buf_alloc(CU, nb, &p.c), 0);
    ck_assert_int_eq(dg_fill(REF, dg_t1(p.r, 0, (int64_t)(nb / 4)), NAN), 0);
    ck_assert_int_eq(dg_fill(CU, dg_t1(p.c, 0, (int64_t)(nb / 4)), NAN), 0);
    if (init) {
        ck_assert_int_eq(dg_set(REF, dg_t1(p.r, offs, n), init), 0);
        ck_assert_int_eq(dg_set(CU, dg_t1(p.c, offs, n), init), 0);
    }
    return p;
}
static pair_t pnew(int64_t n, const float *init) { return pnew_off(n, init, 0); }
static pair_t prand(int64_t n, float lo, float hi) {
    float *h = rnd(n, lo, hi);
    pair_t p = pnew(n, h);
    dg_free(h);
    return p;
}
static pair_t pints(int64_t n, int32_t lo, int32_t hi) {
    int32_t *h = dg_malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) h[i] = lo + (int32_t)dg_rng_below(&RNG, (uint64_t)(hi - lo));
    pair_t p = {NULL, NULL, n, 0};
    ck_assert_int_eq(dg_buf_alloc(REF, (size_t)n * 4, &p.r), 0);
    ck_assert_int_eq(dg_buf_alloc(CU, (size_t)n * 4, &p.c), 0);
    ck_assert_int_eq(dg_set(REF, dg_t_i32(p.r, 0, n), h), 0);
    ck_assert_int_eq(dg_set(CU, dg_t_i32(p.c, 0, n), h), 0);
    dg_free(h);
    return p;
}
static void pfree(pair_t *p) {
    dg_buf_free(REF, p->r);
    dg_buf_free(CU, p->c);
    p->r = p->c = NULL;
}
/* Views of a pair: 1-D, or shaped (slowest first). */
static dg_tensor TR(pair_t p) { return dg_t1(p.r, p.offs, p.n); }
static dg_tensor TC(pair_t p) { return dg_t1(p.c, p.offs, p.n); }
static dg_tensor shp(dg_tensor t, int64_t d3, int64_t d2, int64_t d1, int64_t d0) {
    return dg_t4(t.buf, t.offs, d3, d2, d1, d0);
}
static dg_tensor IR(pair_t p) { return dg_t_i32(p.r, 0, p.n); }
static dg_tensor IC(pair_t p) { return dg_t_i32(p.c, 0, p.n); }

/* Compares the pair; returns the max relative error and fails the test above tol. */
static double pcmp(pair_t p, double tol, const char *what) {
    float *a = dg_malloc((size_t)p.n * 4 + 4), *b = dg_malloc((size_t)p.n * 4 + 4);
    ck_assert_int_eq(dg_get(REF, a, TR(p)), 0);
    ck_assert_int_eq(dg_get(CU, b, TC(p)), 0);
    double e = dg_max_rel_err(b, a, p.n);
    bool ok = e <= tol;
    if (!ok) dg_check_close(what, b, a, p.n, 0, tol);
    printf("  %-40s n=%-8lld max rel err %.3g (tol %.0e)%s\n", what, (long long)p.n, e, tol,
           ok ? "" : "  FAIL");
    dg_free(a);
    dg_free(b);
    ck_assert_msg(ok, "%s: max rel err %g > %g", what, e, tol);
    return e;
}

// ------------------------------------------------------------------------------------------

START_TEST(test_memory_and_basic) {
    if (!open_both("memory_and_basic")) return;
    int64_t n = 1000 + dg_rng_below(&RNG, 5000);
    pair_t x = prand(n, -2, 2), y = prand(n, -2, 2), o = pnew(n, NULL);
    ck_assert_int_eq(dg_axpy(REF, TR(y), 0.75f, TR(x)), 0);
    ck_assert_int_eq(dg_axpy(CU, TC(y), 0.75f, TC(x)), 0);
    pcmp(y, TOL32, "axpy");
    ck_assert_int_eq(dg_scale(REF, TR(y), -1.5f), 0);
    ck_assert_int_eq(dg_scale(CU, TC(y), -1.5f), 0);
    pcmp(y, TOL32, "scale");
    ck_assert_int_eq(dg_add(REF, TR(o), TR(x), TR(y)), 0);
    ck_assert_int_eq(dg_add(CU, TC(o), TC(x), TC(y)), 0);
    pcmp(o, TOL32, "add");
    ck_assert_int_eq(dg_add(REF, TR(o), TR(o), TR(x)), 0);   /* aliasing */
    ck_assert_int_eq(dg_add(CU, TC(o), TC(o), TC(x)), 0);
    pcmp(o, TOL32, "add (out aliases a)");
    /* sumsq on identical inputs (the f32 results above may differ in the last bit: FMA) */
    double sr, sc;
    pair_t w = prand(3 * n + 1, -3, 3);
    ck_assert_int_eq(dg_sumsq(REF, &sr, TR(w)), 0);
    ck_assert_int_eq(dg_sumsq(CU, &sc, TC(w)), 0);
    printf("  sumsq ref %.17g cuda %.17g\n", sr, sc);
    ck_assert(fabs(sr - sc) <= 1e-12 * fabs(sr));
    pfree(&w);
    /* copy into the middle of a poisoned buffer, fill a sub-view */
    pair_t z = pnew_off(n, NULL, 64);
    ck_assert_int_eq(dg_copy(REF, TR(z), TR(x)), 0);
    ck_assert_int_eq(dg_copy(CU, TC(z), TC(x)), 0);
    pcmp(z, 0, "copy");
    ck_assert_int_eq(dg_fill(REF, dg_t1(z.r, 64 + 40, n / 2), 3.25f), 0);
    ck_assert_int_eq(dg_fill(CU, dg_t1(z.c, 64 + 40, n / 2), 3.25f), 0);
    pcmp(z, 0, "fill (sub-view)");
    /* an allocation the card cannot hold fails with DG_EOOM and the backend keeps working */
    dg_buf_t *huge = NULL;
    int rc = dg_buf_alloc(CU, (size_t)1 << 50, &huge);
    printf("  1 PiB allocation: %s (%s)\n", dg_err_name(rc), CU->errmsg);
    ck_assert_int_eq(rc, DG_EOOM);
    ck_assert_int_eq(dg_scale(CU, TC(x), 2.0f), 0);
    ck_assert_int_eq(dg_scale(REF, TR(x), 2.0f), 0);
    pcmp(x, TOL32, "scale after OOM");
    ck_assert_int_eq(dg_sync(CU), 0);
    pfree(&x); pfree(&y); pfree(&o); pfree(&z);
    close_both();
}
END_TEST

typedef struct { int64_t M, N, K, batch; bool ta, tb; float alpha, beta; int pad; bool shareA; }
    gemm_case;

START_TEST(test_gemm) {
    if (!open_both("gemm")) return;
    const gemm_case cases[] = {
        {7, 5, 3, 1, false, false, 1.0f, 0.0f, 0},
        {64, 48, 96, 3, true, false, 0.5f, 1.0f, 0},
        {33, 65, 127, 2, false, true, 1.0f, 0.0f, 3},
        {128, 256, 512, 1, true, true, 1.0f, 1.0f, 0},
        {512, 256, 1024, 2, false, false, 1.0f, 1.0f, 8},
        {1, 300, 256, 4, false, false, 1.0f, 0.0f, 1},
        /* small M (decode shapes) */
        {3, 512, 1000, 2, true, false, 0.5f, 1.0f, 0},
        {8, 256, 4096, 1, false, false, 1.0f, 0.0f, 0},
        {1, 8192, 256, 4, false, false, 1.0f, 0.0f, 0, true},
        /* the few-row kernel (M <= 8, N % 4 == 0): one K slice and many, alpha/beta, padding */
        {1, 256, 32768, 1, false, false, 1.0f, 0.0f, 0},
        {2, 256, 8192, 1, false, false, 0.5f, 1.0f, 4},
        {5, 1024, 256, 3, false, false, 1.0f, 0.0f, 0, true},
        {8, 512, 700, 2, false, false, 1.0f, 1.0f, 4},
        {3, 12, 5, 2, false, false, 2.0f, 0.0f, 0},
        /* output-dominated shapes: the backend stages the operands as dense bf16 */
        {4096, 2048, 64, 1, false, false, 1.0f, 0.0f, 0},
        {2048, 1024, 32, 3, false, true, 1.0f, 1.0f, 4, true},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        gemm_case g = cases[ci];
        int64_t ar = g.ta ? g.K : g.M, ac = g.ta ? g.M : g.K;
        int64_t br = g.tb ? g.N : g.K, bc = g.tb ? g.K : g.N;
        int64_t lda = ac + g.pad, ldb = bc + g.pad, ldc = g.N + g.pad;
        int64_t sa = ar * lda, sb = br * ldb, sc = g.M * ldc;
        /* few-row shapes get a mostly-zero A, as the decoder's input is (ReLU products) */
        float *ha = rnd(g.shareA ? sa : sa * g.batch, -1, 1);
        if (g.M <= 8)
            for (int64_t i = 0; i < (g.shareA ? sa : sa * g.batch); i++) ha[i] = ha[i] > 0.4f ? ha[i] : 0;
        pair_t A = pnew(g.shareA ? sa : sa * g.batch, ha), Bm = prand(sb * g.batch, -1, 1);
        dg_free(ha);
        pair_t C = g.beta != 0 ? prand(sc * g.batch, -1, 1) : pnew(sc * g.batch, NULL);
        for (int side = 0; side < 2; side++) {
            dg_backend_t *be = side ? CU : REF;
            dg_gemm_desc d = {0};
            d.M = g.M; d.N = g.N; d.K = g.K; d.batch = g.batch; d.alpha = g.alpha; d.beta = g.beta;
            d.A = dg_m(side ? TC(A) : TR(A), ar, ac, lda);
            d.A.bstride = g.shareA ? 0 : sa;
            d.A.trans = g.ta;
            d.B = dg_m(side ? TC(Bm) : TR(Bm), br, bc, ldb); d.B.bstride = sb; d.B.trans = g.tb;
            d.C = dg_m(side ? TC(C) : TR(C), g.M, g.N, ldc); d.C.bstride = sc;
            ck_assert_int_eq(dg_gemm(be, &d), 0);
        }
        /* padding columns of C stay NaN on both sides; compare the written part only */
        float *a = dg_malloc((size_t)C.n * 4), *b = dg_malloc((size_t)C.n * 4);
        ck_assert_int_eq(dg_get(REF, a, TR(C)), 0);
        ck_assert_int_eq(dg_get(CU, b, TC(C)), 0);
        int64_t m = 0;
        for (int64_t k = 0; k < g.batch; k++)
            for (int64_t i = 0; i < g.M; i++)
                for (int64_t j = 0; j < g.N; j++, m++) {
                    a[m] = a[k * sc + i * ldc + j];
                    b[m] = b[k * sc + i * ldc + j];
                }
        double e = dg_max_rel_err(b, a, m);
        printf("  gemm M%lld N%lld K%lld b%lld ta%d tb%d beta%g: max rel err %.3g\n",
               (long long)g.M, (long long)g.N, (long long)g.K, (long long)g.batch, g.ta, g.tb,
               g.beta, e);
        ck_assert_msg(e <= TOLBF, "gemm case %zu: %g", ci, e);
        dg_free(a); dg_free(b);
        pfree(&A); pfree(&Bm); pfree(&C);
    }
    close_both();
}
END_TEST

START_TEST(test_embed) {
    if (!open_both("embed")) return;
    const int64_t shapes[][3] = {{37, 24, 11}, {300, 256, 259}, {5, 7, 3}};
    for (int s = 0; s < 3; s++) {
        int64_t R = shapes[s][0], D = shapes[s][1], V = shapes[s][2];
        pair_t tok = pints(R, 0, (int32_t)V), wte = prand(V * D, -1, 1), out = pnew(R * D, NULL);
        pair_t dw = prand(V * D, -0.1f, 0.1f), dout = prand(R * D, -1, 1);
        ck_assert_int_eq(dg_embed_fwd(REF, dg_t2(out.r, 0, R, D), IR(tok), dg_t2(wte.r, 0, V, D)),
                         0);
        ck_assert_int_eq(dg_embed_fwd(CU, dg_t2(out.c, 0, R, D), IC(tok), dg_t2(wte.c, 0, V, D)),
                         0);
        pcmp(out, 0, "embed_fwd");
        ck_assert_int_eq(dg_embed_bwd(REF, dg_t2(dw.r, 0, V, D), dg_t2(dout.r, 0, R, D), IR(tok)),
                         0);
        ck_assert_int_eq(dg_embed_bwd(CU, dg_t2(dw.c, 0, V, D), dg_t2(dout.c, 0, R, D), IC(tok)),
                         0);
        pcmp(dw, TOL32, "embed_bwd (repeated tokens accumulate)");
        pfree(&tok); pfree(&wte); pfree(&out); pfree(&dw); pfree(&dout);
    }
    /* a token outside [0, V) is DG_EINVAL, as in ref */
    pair_t tok = pints(9, 0, 4), wte = prand(4 * 8, -1, 1), out = pnew(9 * 8, NULL);
    int32_t bad = 4;
    ck_assert_int_eq(dg_set(CU, dg_t_i32(tok.c, 4 * 5, 1), &bad), 0);
    ck_assert_int_eq(dg_embed_fwd(CU, dg_t2(out.c, 0, 9, 8), IC(tok), dg_t2(wte.c, 0, 4, 8)),
                     DG_EINVAL);
    printf("  bad token: %s\n", CU->errmsg);
    pfree(&tok); pfree(&wte); pfree(&out);
    close_both();
}
END_TEST

START_TEST(test_layernorm) {
    if (!open_both("layernorm")) return;
    const int64_t shapes[][2] = {{3, 24}, {129, 256}, {64, 100}, {1000, 256}};
    for (int s = 0; s < 4; s++) {
        for (int aff = 0; aff < 2; aff++) {
            int64_t R = shapes[s][0], D = shapes[s][1];
            pair_t x = prand(R * D, -3, 5), out = pnew(R * D, NULL), mean = pnew(R, NULL),
                   rstd = pnew(R, NULL);
            pair_t g = prand(D, 0.5f, 1.5f), b = prand(D, -0.5f, 0.5f);
            dg_tensor gr = aff ? TR(g) : dg_t_null(), br = aff ? TR(b) : dg_t_null();
            dg_tensor gc = aff ? TC(g) : dg_t_null(), bc = aff ? TC(b) : dg_t_null();
            ck_assert_int_eq(dg_layernorm_fwd(REF, dg_t2(out.r, 0, R, D), TR(mean), TR(rstd),
                                              dg_t2(x.r, 0, R, D), gr, br, 1e-5f), 0);
            ck_assert_int_eq(dg_layernorm_fwd(CU, dg_t2(out.c, 0, R, D), TC(mean), TC(rstd),
                                              dg_t2(x.c, 0, R, D), gc, bc, 1e-5f), 0);
            pcmp(out, TOL32, aff ? "layernorm_fwd out (affine)" : "layernorm_fwd out (plain)");
            pcmp(mean, TOL32, "layernorm_fwd mean");
            pcmp(rstd, TOL32, "layernorm_fwd rstd");
            pair_t dout = prand(R * D, -1, 1), dx = prand(R * D, -0.1f, 0.1f);
            pair_t dg = prand(D, -0.1f, 0.1f), db = prand(D, -0.1f, 0.1f);
            ck_assert_int_eq(dg_layernorm_bwd(REF, dg_t2(dx.r, 0, R, D), aff ? TR(dg) : dg_t_null(),
                                              aff ? TR(db) : dg_t_null(), dg_t2(dout.r, 0, R, D),
                                              dg_t2(x.r, 0, R, D), TR(mean), TR(rstd), gr), 0);
            ck_assert_int_eq(dg_layernorm_bwd(CU, dg_t2(dx.c, 0, R, D), aff ? TC(dg) : dg_t_null(),
                                              aff ? TC(db) : dg_t_null(), dg_t2(dout.c, 0, R, D),
                                              dg_t2(x.c, 0, R, D), TC(mean), TC(rstd), gc), 0);
            pcmp(dx, TOL32, "layernorm_bwd dinp");
            if (aff) {
                pcmp(dg, TOL32, "layernorm_bwd dgamma");
                pcmp(db, TOL32, "layernorm_bwd dbeta");
            }
            /* out aliases inp */
            ck_assert_int_eq(dg_layernorm_fwd(REF, dg_t2(x.r, 0, R, D), TR(mean), TR(rstd),
                                              dg_t2(x.r, 0, R, D), gr, br, 1e-5f), 0);
            ck_assert_int_eq(dg_layernorm_fwd(CU, dg_t2(x.c, 0, R, D), TC(mean), TC(rstd),
                                              dg_t2(x.c, 0, R, D), gc, bc, 1e-5f), 0);
            pcmp(x, TOL32, "layernorm_fwd in place");
            pfree(&x); pfree(&out); pfree(&mean); pfree(&rstd); pfree(&g); pfree(&b);
            pfree(&dout); pfree(&dx); pfree(&dg); pfree(&db);
        }
    }
    close_both();
}
END_TEST

START_TEST(test_relu_gate) {
    if (!open_both("relu_gate")) return;
    const int64_t sizes[] = {1, 1000, 65537};
    for (int s = 0; s < 3; s++) {
        int64_t n = sizes[s];
        pair_t x = prand(n, -1, 1), o = pnew(n, NULL), dy = prand(n, -1, 1), dx = prand(n, -1, 1);
        ck_assert_int_eq(dg_relu_fwd(REF, TR(o), TR(x), 0.1f), 0);
        ck_assert_int_eq(dg_relu_fwd(CU, TC(o), TC(x), 0.1f), 0);
        pcmp(o, 0, "relu_fwd");
        ck_assert_int_eq(dg_relu_bwd(REF, TR(dx), TR(dy), TR(o)), 0);
        ck_assert_int_eq(dg_relu_bwd(CU, TC(dx), TC(dy), TC(o)), 0);
        pcmp(dx, 0, "relu_bwd");
        for (int pi = 0; pi < 2; pi++) {
            float p = pi ? 0.3f : 0.0f;
            uint64_t seed = dg_rng_next(&RNG);
            pair_t y = prand(n, -1, 1), z = pnew(n, NULL), dz = prand(n, -1, 1);
            pair_t gx = prand(n, -1, 1), gy = prand(n, -1, 1);
            ck_assert_int_eq(dg_gate_fwd(REF, TR(z), TR(x), TR(y), p, seed), 0);
            ck_assert_int_eq(dg_gate_fwd(CU, TC(z), TC(x), TC(y), p, seed), 0);
            pcmp(z, TOL32, p > 0 ? "gate_fwd p=0.3" : "gate_fwd p=0");
            ck_assert_int_eq(dg_gate_bwd(REF, TR(gx), TR(gy), TR(dz), TR(x), TR(y), p, seed), 0);
            ck_assert_int_eq(dg_gate_bwd(CU, TC(gx), TC(gy), TC(dz), TC(x), TC(y), p, seed), 0);
            pcmp(gx, TOL32, "gate_bwd dx");
            pcmp(gy, TOL32, "gate_bwd dy");
            pfree(&y); pfree(&z); pfree(&dz); pfree(&gx); pfree(&gy);
        }
        pfree(&x); pfree(&o); pfree(&dy); pfree(&dx);
    }
    close_both();
}
END_TEST

START_TEST(test_pos) {
    if (!open_both("pos")) return;
    const int64_t shapes[][4] = {{2, 5, 3, 16}, {1, 64, 4, 256}, {3, 7, 1, 8192}, {2, 3, 2, 6}};
    for (int s = 0; s < 4; s++) {
        for (int mi = 0; mi < 2; mi++) {
            dg_pos_mode mode = mi ? DG_POS_POPE : DG_POS_ROPE;
            int64_t B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], N = shapes[s][3];
            int64_t Nq = mi ? 2 * N : N;
            int64_t pos0[3] = {0, 1000 + (int64_t)dg_rng_below(&RNG, 100000), 77};
            pair_t x = prand(B * T * H * N, -2, 2), o = pnew(B * T * H * Nq, NULL);
            ck_assert_int_eq(dg_pos_fwd(REF, shp(TR(o), B, T, H, Nq), shp(TR(x), B, T, H, N), pos0,
                                        mode, 65536.0f), 0);
            ck_assert_int_eq(dg_pos_fwd(CU, shp(TC(o), B, T, H, Nq), shp(TC(x), B, T, H, N), pos0,
                                        mode, 65536.0f), 0);
            pcmp(o, TOL32, mi ? "pos_fwd pope" : "pos_fwd rope");
            /* the same with the positions in a device tensor (recorded decode steps) */
            int32_t p32[3] = {(int32_t)pos0[0], (int32_t)pos0[1], (int32_t)pos0[2]};
            pair_t pd = pints(B, 0, 1), o2 = pnew(B * T * H * Nq, NULL);
            ck_assert_int_eq(dg_set(CU, IC(pd), p32), 0);
            ck_assert_int_eq(dg_pos_fwd(REF, shp(TR(o2), B, T, H, Nq), shp(TR(x), B, T, H, N),
                                        pos0, mode, 65536.0f), 0);
            ck_assert_int_eq(dg_pos_fwd_dev(CU, shp(TC(o2), B, T, H, Nq), shp(TC(x), B, T, H, N),
                                            dg_t_i32(pd.c, 0, B), mode, 65536.0f), 0);
            pcmp(o2, TOL32, mi ? "pos_fwd_dev pope" : "pos_fwd_dev rope");
            pfree(&pd); pfree(&o2);
            pair_t dout = prand(B * T * H * Nq, -1, 1), dx = prand(B * T * H * N, -1, 1);
            ck_assert_int_eq(dg_pos_bwd(REF, shp(TR(dx), B, T, H, N), shp(TR(dout), B, T, H, Nq),
                                        shp(TR(x), B, T, H, N), pos0, mode, 65536.0f), 0);
            ck_assert_int_eq(dg_pos_bwd(CU, shp(TC(dx), B, T, H, N), shp(TC(dout), B, T, H, Nq),
                                        shp(TC(x), B, T, H, N), pos0, mode, 65536.0f), 0);
            pcmp(dx, TOL32, mi ? "pos_bwd pope" : "pos_bwd rope");
            pfree(&x); pfree(&o); pfree(&dout); pfree(&dx);
        }
    }
    close_both();
}
END_TEST

typedef struct { int64_t B, T, H, Nq, D; bool decay, rin, rout; } attn_case;

START_TEST(test_attn) {
    if (!open_both("attn")) return;
    const attn_case cases[] = {
        {2, 9, 2, 16, 8, true, false, false},
        {2, 9, 2, 16, 8, true, true, true},
        {1, 64, 3, 40, 24, false, true, true},
        {3, 17, 1, 64, 32, false, false, true},
        {2, 128, 4, 256, 64, true, true, false},
        {1, 1, 2, 32, 16, true, true, true},
        {2, 256, 2, 1024, 256, false, true, true},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        attn_case a = cases[ci];
        int64_t B = a.B, T = a.T, H = a.H, Nq = a.Nq, D = a.D;
        float gamma[8];
        for (int h = 0; h < H; h++) gamma[h] = a.decay ? expf(-powf(2.0f, -(float)h / H)) : 1.0f;
        printf(" attn case %zu: B%lld T%lld H%lld Nq%lld D%lld decay %d rho_in %d rho_out %d\n",
               ci, (long long)B, (long long)T, (long long)H, (long long)Nq, (long long)D, a.decay,
               a.rin, a.rout);
        /* post-ReLU-like q: non-negative with zeros */
        float *hq = rnd(B * T * H * Nq, -1, 1);
        for (int64_t i = 0; i < B * T * H * Nq; i++) hq[i] = hq[i] > 0 ? hq[i] : 0;
        pair_t q = pnew(B * T * H * Nq, hq);
        dg_free(hq);
        pair_t v = prand(B * T * D, -1, 1), out = pnew(B * T * H * D, NULL);
        pair_t rin = a.rin ? prand(B * H * Nq * D, -0.5f, 0.5f) : (pair_t){0};
        pair_t rout = a.rout ? pnew(B * H * Nq * D, NULL) : (pair_t){0};
        for (int side = 0; side < 2; side++) {
            dg_backend_t *be = side ? CU : REF;
            dg_tensor (*V)(pair_t) = side ? TC : TR;
            ck_assert_int_eq(dg_attn_fwd(be, shp(V(out), B, T, H, D),
                                         a.rout ? shp(V(rout), B, H, Nq, D) : dg_t_null(),
                                         shp(V(q), B, T, H, Nq), shp(V(v), 1, B, T, D),
                                         a.rin ? shp(V(rin), B, H, Nq, D) : dg_t_null(), gamma), 0);
        }
        pcmp(out, TOLBF, "attn_fwd out");
        if (a.rout) pcmp(rout, TOLBF, "attn_fwd rho_out");
        pair_t dout = prand(B * T * H * D, -1, 1), dq = prand(B * T * H * Nq, -0.1f, 0.1f);
        pair_t dv = prand(B * T * D, -0.1f, 0.1f);
        pair_t drout = a.rout ? prand(B * H * Nq * D, -1, 1) : (pair_t){0};
        pair_t drin = a.rin ? prand(B * H * Nq * D, -0.1f, 0.1f) : (pair_t){0};
        for (int side = 0; side < 2; side++) {
            dg_backend_t *be = side ? CU : REF;
            dg_tensor (*V)(pair_t) = side ? TC : TR;
            ck_assert_int_eq(dg_attn_bwd(be, shp(V(dq), B, T, H, Nq), shp(V(dv), 1, B, T, D),
                                         a.rin ? shp(V(drin), B, H, Nq, D) : dg_t_null(),
                                         shp(V(dout), B, T, H, D),
                                         a.rout ? shp(V(drout), B, H, Nq, D) : dg_t_null(),
                                         shp(V(q), B, T, H, Nq), shp(V(v), 1, B, T, D),
                                         a.rin ? shp(V(rin), B, H, Nq, D) : dg_t_null(), gamma), 0);
        }
        pcmp(dq, TOLBF, "attn_bwd dq");
        pcmp(dv, TOLBF, "attn_bwd dv");
        if (a.rin) pcmp(drin, TOLBF, "attn_bwd drho_in");
        pfree(&q); pfree(&v); pfree(&out); pfree(&dout); pfree(&dq); pfree(&dv);
        if (a.rin) { pfree(&rin); pfree(&drin); }
        if (a.rout) { pfree(&rout); pfree(&drout); }
    }
    close_both();
}
END_TEST

START_TEST(test_xent) {
    if (!open_both("xent")) return;
    const int64_t shapes[][2] = {{19, 7}, {64, 259}, {5, 3000}, {1, 1}};
    for (int s = 0; s < 4; s++) {
        int64_t R = shapes[s][0], V = shapes[s][1];
        pair_t lg = prand(R * V, -8, 8), tgt = pints(R, 0, (int32_t)V), loss = pnew(R, NULL);
        pair_t dl = prand(R * V, -0.1f, 0.1f);
        for (int with_d = 0; with_d < 2; with_d++) {
            ck_assert_int_eq(dg_xent(REF, TR(loss), with_d ? dg_t2(dl.r, 0, R, V) : dg_t_null(),
                                     dg_t2(lg.r, 0, R, V), IR(tgt), 1.0f / R), 0);
            ck_assert_int_eq(dg_xent(CU, TC(loss), with_d ? dg_t2(dl.c, 0, R, V) : dg_t_null(),
                                     dg_t2(lg.c, 0, R, V), IC(tgt), 1.0f / R), 0);
            pcmp(loss, TOL32, "xent loss");
            if (with_d) pcmp(dl, TOL32, "xent dlogits");
        }
        pfree(&lg); pfree(&tgt); pfree(&loss); pfree(&dl);
    }
    close_both();
}
END_TEST

START_TEST(test_adamw) {
    if (!open_both("adamw")) return;
    int64_t n = 10007;
    pair_t p = prand(n, -1, 1), g = prand(n, -1, 1), m = prand(n, -0.01f, 0.01f);
    float *hv = rnd(n, 0, 1e-4f);
    pair_t v = pnew(n, hv);
    dg_free(hv);
    for (int64_t step = 1; step <= 7; step += 3) {
        dg_adamw_hp hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.5f, step};
        ck_assert_int_eq(dg_adamw(REF, TR(p), TR(g), TR(m), TR(v), &hp), 0);
        ck_assert_int_eq(dg_adamw(CU, TC(p), TC(g), TC(m), TC(v), &hp), 0);
    }
    pcmp(p, TOL32, "adamw p");
    pcmp(m, TOL32, "adamw m");
    pcmp(v, TOL32, "adamw v");
    pfree(&p); pfree(&g); pfree(&m); pfree(&v);
    close_both();
}
END_TEST

/* B sequences, each state in its own buffer at an offset; q zero where the uniform draw in
 * [-1, 1) is <= qmin (the decode step's sparsity); two steps, the second reading the first's
 * write; out and every state compared with ref. */
static void attn_step_case(int B, int64_t H, int64_t Nq, int64_t D, const float *gamma, float qmin,
                           const char *what_out, const char *what_rho) {
    pair_t *rho = dg_malloc((size_t)B * sizeof *rho);
    dg_tensor *vr = dg_malloc((size_t)B * sizeof *vr), *vc = dg_malloc((size_t)B * sizeof *vc);
    for (int b = 0; b < B; b++) {
        float *h = rnd(H * Nq * D, -1, 1);
        rho[b] = pnew_off(H * Nq * D, h, 256 * (size_t)b);
        dg_free(h);
        vr[b] = shp(TR(rho[b]), 1, H, Nq, D);
        vc[b] = shp(TC(rho[b]), 1, H, Nq, D);
    }
    float *hq = rnd((int64_t)B * H * Nq, -1, 1);
    for (int64_t i = 0; i < (int64_t)B * H * Nq; i++) hq[i] = hq[i] > qmin ? hq[i] : 0;
    pair_t q = pnew((int64_t)B * H * Nq, hq);
    dg_free(hq);
    pair_t v = prand((int64_t)B * D, -1, 1), out = pnew((int64_t)B * H * D, NULL);
    for (int it = 0; it < 2; it++) {
        ck_assert_int_eq(dg_attn_step(REF, B, vr, dg_t3(out.r, 0, B, H, D), dg_t3(q.r, 0, B, H, Nq),
                                      dg_t2(v.r, 0, B, D), gamma), 0);
        ck_assert_int_eq(dg_attn_step(CU, B, vc, dg_t3(out.c, 0, B, H, D), dg_t3(q.c, 0, B, H, Nq),
                                      dg_t2(v.c, 0, B, D), gamma), 0);
    }
    pcmp(out, TOL32, what_out);
    for (int b = 0; b < B; b++) pcmp(rho[b], TOL32, what_rho);
    for (int b = 0; b < B; b++) pfree(&rho[b]);
    pfree(&q); pfree(&v); pfree(&out);
    dg_free(rho); dg_free(vr); dg_free(vc);
}

START_TEST(test_attn_step) {
    if (!open_both("attn_step")) return;
    const int64_t shapes[][4] = {{3, 2, 130, 40}, {1, 4, 8192, 256}, {5, 1, 64, 300},
                                 {4, 2, 200, 64}};
    for (int s = 0; s < 4; s++) {
        for (int decay = 0; decay < 2; decay++) {
            int64_t H = shapes[s][1];
            float gamma[4];
            for (int h = 0; h < H; h++) gamma[h] = decay ? expf(-powf(2.0f, -(float)h / H)) : 1.0f;
            attn_step_case((int)shapes[s][0], H, shapes[s][2], shapes[s][3], gamma, 0.6f,
                           decay ? "attn_step out (decay)" : "attn_step out", "attn_step rho");
        }
    }
    close_both();
}
END_TEST

/* More sequences than the kernel parameters carry (STEP_PTRS = 64): the pointers are staged. */
START_TEST(test_attn_step_many) {
    if (!open_both("attn_step_many")) return;
    float gamma[2] = {0.97f, 1.0f};
    attn_step_case(70, 2, 64, 32, gamma, 0.3f, "attn_step out (70 sequences)",
                   "attn_step rho (70 sequences)");
    close_both();
}
END_TEST

/* Graphs: a recorded pos_fwd_dev -> relu -> attn_step sequence runs nothing while recorded, then
 * each launch equals ref run verb by verb with the positions uploaded before it; host-bound verbs
 * are refused while recording; a graph whose backend buffers moved reports DG_ESTALE. */
START_TEST(test_graph) {
    if (!open_both("graph")) return;
    ck_assert(dg_has_graphs(CU));
    enum { B = 3 };
    int64_t H = 2, N = 128, D = 64;
    float gamma[2] = {1.0f, 1.0f};
    pair_t x = prand(B * H * N, -1, 1), o = pnew(B * H * N, NULL);
    pair_t v = prand(B * D, -1, 1), out = pnew(B * H * D, NULL);
    pair_t rho[B];
    dg_tensor vr[B], vc[B];
    for (int b = 0; b < B; b++) {
        rho[b] = prand(H * N * D, -1, 1);
        vr[b] = shp(TR(rho[b]), 1, H, N, D);
        vc[b] = shp(TC(rho[b]), 1, H, N, D);
    }
    pair_t pos = pints(B, 0, 10);
    /* warm: the frequency table and the scratch are sized verb by verb first */
    int32_t p32[B] = {0, 0, 0};
    ck_assert_int_eq(dg_pos_fwd_dev(CU, shp(TC(o), B, 1, H, N), shp(TC(x), B, 1, H, N), IC(pos),
                                    DG_POS_ROPE, 65536.0f), 0);
    pair_t junk = pnew(B * H * D, NULL);
    static pair_t jr[B];
    dg_tensor jc[B];
    for (int b = 0; b < B; b++) { jr[b] = pnew(H * N * D, NULL); jc[b] = shp(TC(jr[b]), 1, H, N, D); }
    ck_assert_int_eq(dg_attn_step(CU, B, jc, dg_t3(junk.c, 0, B, H, D), shp(TC(x), B, 1, H, N),
                                  dg_t2(v.c, 0, B, D), gamma), 0);
    ck_assert_int_eq(dg_fill(CU, TC(o), NAN), 0);

    void *g = NULL;
    ck_assert_int_eq(dg_graph_begin(CU), 0);
    ck_assert_int_eq(dg_pos_fwd_dev(CU, shp(TC(o), B, 1, H, N), shp(TC(x), B, 1, H, N), IC(pos),
                                    DG_POS_ROPE, 65536.0f), 0);
    ck_assert_int_eq(dg_relu_fwd(CU, TC(o), TC(o), 0.0f), 0);
    ck_assert_int_eq(dg_attn_step(CU, B, vc, dg_t3(out.c, 0, B, H, D), shp(TC(o), B, 1, H, N),
                                  dg_t2(v.c, 0, B, D), gamma), 0);
    ck_assert_int_eq(dg_graph_end(CU, &g), 0);
    ck_assert_ptr_nonnull(g);
    float *ho = dg_malloc((size_t)B * H * D * 4);
    ck_assert_int_eq(dg_get(CU, ho, TC(out)), 0);
    for (int64_t i = 0; i < B * H * D; i++) ck_assert_msg(isnan(ho[i]), "recording ran the verbs");
    dg_free(ho);
    for (int it = 0; it < 3; it++) {
        int64_t p64[B];
        for (int b = 0; b < B; b++) { p32[b] = 5 + 1000 * it + 17 * b; p64[b] = p32[b]; }
        ck_assert_int_eq(dg_set(CU, IC(pos), p32), 0);
        ck_assert_int_eq(dg_graph_launch(CU, g), 0);
        ck_assert_int_eq(dg_pos_fwd(REF, shp(TR(o), B, 1, H, N), shp(TR(x), B, 1, H, N), p64,
                                    DG_POS_ROPE, 65536.0f), 0);
        ck_assert_int_eq(dg_relu_fwd(REF, TR(o), TR(o), 0.0f), 0);
        ck_assert_int_eq(dg_attn_step(REF, B, vr, dg_t3(out.r, 0, B, H, D), shp(TR(o), B, 1, H, N),
                                      dg_t2(v.r, 0, B, D), gamma), 0);
    }
    pcmp(o, TOL32, "graph: pos_fwd_dev + relu (3rd launch)");
    pcmp(out, TOL32, "graph: attn_step out (3rd launch)");
    for (int b = 0; b < B; b++) pcmp(rho[b], TOL32, "graph: attn_step rho (3 launches)");

    /* host-bound verbs are refused while recording, and the recording reports it */
    float one;
    void *g2 = NULL;
    ck_assert_int_eq(dg_graph_begin(CU), 0);
    ck_assert_int_eq(dg_get(CU, &one, dg_t1(x.c, 0, 1)), DG_ENOTSUP);
    ck_assert_int_eq(dg_graph_end(CU, &g2), DG_ENOTSUP);
    ck_assert_ptr_null(g2);
    ck_assert_int_eq(dg_get(CU, &one, dg_t1(x.c, 0, 1)), 0);   /* the stream works again */

    /* a rebuilt frequency table makes the graph stale */
    int64_t q0 = 0;
    ck_assert_int_eq(dg_pos_fwd(CU, shp(TC(o), 1, 1, 1, 8), shp(TC(x), 1, 1, 1, 8), &q0,
                                DG_POS_ROPE, 7.0f), 0);
    ck_assert_int_eq(dg_graph_launch(CU, g), DG_ESTALE);
    printf("  graph: recorded 3 verbs, 3 launches equal ref; get refused while recording; stale "
           "graph reported\n");
    dg_graph_free(CU, g);
    for (int b = 0; b < B; b++) { pfree(&rho[b]); pfree(&jr[b]); }
    pfree(&x); pfree(&o); pfree(&v); pfree(&out); pfree(&pos); pfree(&junk);
    close_both();
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("cuda_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_memory_and_basic);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_embed);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_relu_gate);
    tcase_add_test(tc, test_pos);
    tcase_add_test(tc, test_attn);
    tcase_add_test(tc, test_xent);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_attn_step);
    tcase_add_test(tc, test_attn_step_many);
    tcase_add_test(tc, test_graph);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
