/* tests/kernels/test_parity.c -- the "cpu" backend against the "ref" backend, op by op.
 *
 * Every op runs on both backends from the same random host inputs (several shapes, odd and tiny
 * ones included, several seeds); outputs must agree to relative error < 1e-5 (max |cpu - ref| /
 * max |ref|, fp32). Outputs an op "writes" are poisoned with NaN first, so an element the op
 * forgets to write fails; outputs an op accumulates into (+=) are pre-filled with the same random
 * values on both backends, so a backend that overwrites instead of adding fails.
 * Not here: gradient correctness of ref itself (test_gradcheck.c), attn_step vs attn_fwd
 * (test_attn_step.c). Thread affinity: single-threaded test. */
#include "kern_util.h"

#define TOL 1e-5

static const char *const BE[2] = {"ref", "cpu"};

// ------------------------------------------------------------------------------------------
// gemm

typedef struct {
    int64_t M, N, K, batch;
    bool    ta, tb;
    int64_t pad;
    float   alpha, beta;
    float   zero;               /* fraction of A set to 0 (ReLU-like sparsity) */
} gemm_case;

int dg__cpu_isa_avx512(int want);   /* kernels/cpu/gemm_small.c: pick the small-M path */

static void run_gemm(const gemm_case *gc, uint64_t seed) {
    dg_rng r;
    dg_rng_seed(&r, seed);
    /* stored shapes: A is (M, K) or (K, M) when transposed; ld = cols + pad */
    int64_t ar = gc->ta ? gc->K : gc->M, ac = gc->ta ? gc->M : gc->K;
    int64_t br = gc->tb ? gc->N : gc->K, bc = gc->tb ? gc->K : gc->N;
    int64_t lda = ac + gc->pad, ldb = bc + gc->pad, ldc = gc->N + gc->pad;
    int64_t sa = ar * lda + 3, sb = br * ldb + 1, scs = gc->M * ldc + 2;   /* batch strides */
    int64_t na = gc->batch * sa, nb = gc->batch * sb, nc = gc->batch * scs;
    float *A = ku_randn(&r, na, 1.0f), *Bm = ku_randn(&r, nb, 1.0f);
    float *C0 = ku_randn(&r, nc, 1.0f);
    if (gc->zero > 0)
        for (int64_t i = 0; i < na; i++)
            if (dg_rng_uniform(&r) < gc->zero) A[i] = 0.0f;
    if (gc->beta == 0.0f)
        for (int64_t i = 0; i < nc; i++) C0[i] = NAN;   /* beta = 0 must not read C */
    float *res[2];
    for (int k = 0; k < 2; k++) {
        ku_arena a;
        ku_open(&a, BE[k]);
        dg_tensor tA = ku_t1(&a, A, na), tB = ku_t1(&a, Bm, nb), tC = ku_t1(&a, C0, nc);
        dg_gemm_desc d = {gc->M, gc->N, gc->K, gc->batch, dg_m(tA, ar, ac, lda),
                          dg_m(tB, br, bc, ldb), dg_m(tC, gc->M, gc->N, ldc), gc->alpha, gc->beta};
        d.A.bstride = sa; d.B.bstride = sb; d.C.bstride = scs;
        if (gc->ta) d.A = dg_m_t(d.A);
        if (gc->tb) d.B = dg_m_t(d.B);
        ck_assert_int_eq(dg_gemm(a.be, &d), 0);
        res[k] = ku_get(&a, tC);
        ku_close(&a);
    }
    /* compare only the elements C covers (padding must be untouched: NaN or C0) */
    for (int64_t k = 0; k < gc->batch; k++)
        for (int64_t i = 0; i < gc->M; i++)
            for (int64_t j = gc->N; j < ldc; j++) {
                float *c = &res[1][k * scs + i * ldc + j];
                ck_assert(memcmp(c, &C0[k * scs + i * ldc + j], 4) == 0);
            }
    /* NaN padding compares as NaN on both: replace by 0 before the metric */
    for (int64_t i = 0; i < nc; i++)
        if (isnan(res[0][i]) && isnan(res[1][i]) && isnan(C0[i])) res[0][i] = res[1][i] = 0;
    char what[128];
    snprintf(what, sizeof what, "gemm M%lld N%lld K%lld b%lld ta%d tb%d beta%g",
             (long long)gc->M, (long long)gc->N, (long long)gc->K, (long long)gc->batch, gc->ta,
             gc->tb, gc->beta);
    ku_expect_rel(what, res[1], res[0], nc, TOL);
    free(A); free(Bm); free(C0); free(res[0]); free(res[1]);
}

START_TEST(test_gemm) {
    const gemm_case cases[] = {
        {1, 1, 1, 1, false, false, 0, 1.0f, 0.0f},
        {3, 5, 7, 1, false, false, 0, 1.0f, 0.0f},
        {3, 5, 7, 2, true, false, 2, 0.5f, 1.0f},
        {17, 9, 33, 3, false, true, 1, 1.0f, 1.0f},
        {8, 16, 4, 2, true, true, 3, -2.0f, 0.5f},
        {64, 48, 96, 1, false, false, 0, 1.0f, 0.0f},
        {31, 65, 130, 2, true, false, 5, 1.0f, 1.0f},
        {130, 70, 257, 1, false, true, 0, 1.0f, 0.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_gemm(&cases[i], 100 + i);
}
END_TEST

/* The cpu backend's few-row path (M <= 16, decode steps) on both of its code paths: AVX-512
 * register tiles (where the CPU has them) and the portable loops. Shapes cover every row-tile
 * size, masked column tails, sparse and all-zero A rows, a K longer than one k chunk (2048),
 * beta 0 (C is NaN) and beta != 0, batches with strides. */
START_TEST(test_gemm_small) {
    const gemm_case cases[] = {
        {1, 256, 256, 4, false, false, 0, 1.0f, 0.0f, 0.0f},
        {1, 256, 1024, 1, false, false, 0, 1.0f, 0.0f, 0.8f},
        {1, 69, 256, 1, false, false, 0, 1.0f, 0.0f, 0.0f},
        {2, 130, 33, 2, false, false, 3, 0.5f, 1.0f, 0.5f},
        {3, 17, 7, 1, false, false, 1, 1.0f, 0.0f, 0.0f},
        {4, 64, 256, 3, false, false, 0, 1.0f, 0.0f, 0.3f},
        {5, 100, 300, 1, false, false, 2, -1.5f, 0.25f, 0.6f},
        {7, 1, 1, 1, false, false, 0, 1.0f, 0.0f, 0.0f},
        {8, 256, 1024, 1, false, false, 0, 1.0f, 0.0f, 0.9f},
        {8, 256, 256, 4, false, false, 0, 1.0f, 0.0f, 0.0f},
        {9, 33, 65, 2, false, false, 4, 1.0f, 1.0f, 1.0f},
        {13, 48, 2348, 1, false, false, 0, 0.5f, 1.0f, 0.5f},
        {16, 15, 4100, 1, false, false, 1, 1.0f, 0.0f, 0.95f},
        {16, 31, 5, 3, false, true, 2, 1.0f, 0.0f, 0.0f},
    };
    int have = dg__cpu_isa_avx512(-1);
    int paths[2] = {0, 1};
    for (int p = 0; p < 2; p++) {
        dg__cpu_isa_avx512(paths[p]);
        if (dg__cpu_isa_avx512(-1) != paths[p]) {
            printf("SKIP: gemm_small AVX-512 path: this CPU has no AVX-512\n");
            continue;
        }
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_gemm(&cases[i], 300 + i);
    }
    dg__cpu_isa_avx512(have);
}
END_TEST

// ------------------------------------------------------------------------------------------
// elementwise: fill, copy, axpy, scale, sumsq, add, relu

START_TEST(test_elementwise) {
    /* 100003: a large odd size */
    const int64_t sizes[] = {1, 7, 64, 1000, 4099, 100003};
    for (size_t si = 0; si < 6; si++) {
        int64_t n = sizes[si];
        dg_rng r;
        dg_rng_seed(&r, 7 + si);
        float *x = ku_randn(&r, n, 1.0f), *y = ku_randn(&r, n, 2.0f);
        float *o[2][7];
        double ss[2];
        for (int k = 0; k < 2; k++) {
            ku_arena a;
            ku_open(&a, BE[k]);
            dg_tensor tx = ku_t1(&a, x, n), ty = ku_t1(&a, y, n), to = ku_t1(&a, NULL, n);
            ck_assert_int_eq(dg_axpy(a.be, ty, -0.75f, tx), 0);
            o[k][0] = ku_get(&a, ty);
            ck_assert_int_eq(dg_scale(a.be, ty, 1.5f), 0);
            o[k][1] = ku_get(&a, ty);
            ck_assert_int_eq(dg_sumsq(a.be, &ss[k], tx), 0);
            ck_assert_int_eq(dg_add(a.be, to, tx, ty), 0);
            o[k][2] = ku_get(&a, to);
            ck_assert_int_eq(dg_add(a.be, tx, tx, ty), 0);     /* out aliases a */
            o[k][3] = ku_get(&a, tx);
            dg_tensor tr = ku_t1(&a, NULL, n);
            ck_assert_int_eq(dg_relu_fwd(a.be, tr, ty, 0.3f), 0);
            o[k][4] = ku_get(&a, tr);
            dg_tensor tg = ku_t1(&a, x, n);                     /* dinp pre-filled: += */
            ck_assert_int_eq(dg_relu_bwd(a.be, tg, tx, tr), 0);
            o[k][5] = ku_get(&a, tg);
            ck_assert_int_eq(dg_copy(a.be, to, tg), 0);
            ck_assert_int_eq(dg_fill(a.be, tg, 0.25f), 0);
            ck_assert_int_eq(dg_relu_fwd(a.be, ty, ty, 0.0f), 0); /* in place */
            float *h = ku_get(&a, to), *f = ku_get(&a, tg), *rr = ku_get(&a, ty);
            for (int64_t i = 0; i < n; i++) {
                ck_assert(h[i] == o[k][5][i]);
                ck_assert(f[i] == 0.25f);
            }
            o[k][6] = rr;
            free(h); free(f);
            ku_close(&a);
        }
        const char *names[7] = {"axpy", "scale", "add", "add-alias", "relu_fwd", "relu_bwd",
                                "relu in place"};
        for (int j = 0; j < 7; j++) {
            ku_expect_rel(names[j], o[1][j], o[0][j], n, TOL);
            free(o[0][j]); free(o[1][j]);
        }
        ck_assert_msg(fabs(ss[1] - ss[0]) <= 1e-6 * ss[0], "sumsq %g vs %g", ss[1], ss[0]);
        free(x); free(y);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// embedding

START_TEST(test_embed) {
    const int64_t shapes[][3] = {{1, 1, 1}, {5, 3, 4}, {70, 69, 32}, {300, 17, 256}}; /* R V D */
    for (size_t si = 0; si < 4; si++) {
        int64_t R = shapes[si][0], V = shapes[si][1], D = shapes[si][2];
        dg_rng r;
        dg_rng_seed(&r, 11 + si);
        float *w = ku_randn(&r, V * D, 1.0f), *g = ku_randn(&r, R * D, 1.0f);
        float *dw0 = ku_randn(&r, V * D, 1.0f);
        int32_t *tok = malloc((size_t)R * 4);
        for (int64_t i = 0; i < R; i++) tok[i] = (int32_t)dg_rng_below(&r, (uint64_t)V);
        float *o[2][2];
        for (int k = 0; k < 2; k++) {
            ku_arena a;
            ku_open(&a, BE[k]);
            dg_tensor tw = ku_t2(&a, w, V, D), to = ku_t2(&a, NULL, R, D);
            dg_tensor tt = ku_i32(&a, tok, R), tg = ku_t2(&a, g, R, D);
            dg_tensor tdw = ku_t2(&a, dw0, V, D);
            ck_assert_int_eq(dg_embed_fwd(a.be, to, tt, tw), 0);
            ck_assert_int_eq(dg_embed_bwd(a.be, tdw, tg, tt), 0);
            o[k][0] = ku_get(&a, to);
            o[k][1] = ku_get(&a, tdw);
            /* a token outside [0, V) is bad input: EINVAL, not a crash */
            int32_t bad[2] = {0, (int32_t)V};
            dg_tensor tb = ku_i32(&a, bad, 2), to2 = ku_t2(&a, NULL, 2, D);
            ck_assert_int_eq(dg_embed_fwd(a.be, to2, tb, tw), DG_EINVAL);
            bad[1] = -1;
            ck_assert_int_eq(dg_set(a.be, tb, bad), 0);
            ck_assert_int_eq(dg_embed_bwd(a.be, tdw, to2, tb), DG_EINVAL);
            ku_close(&a);
        }
        ku_expect_rel("embed_fwd", o[1][0], o[0][0], R * D, 0.0);   /* a copy: exact */
        ku_expect_rel("embed_bwd", o[1][1], o[0][1], V * D, TOL);
        for (int j = 0; j < 2; j++) { free(o[0][j]); free(o[1][j]); }
        free(w); free(g); free(dw0); free(tok);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// layernorm

START_TEST(test_layernorm) {
    const int64_t shapes[][2] = {{1, 1}, {3, 3}, {7, 5}, {40, 64}, {33, 256}, {5, 1000},
                                 {301, 256}};
    for (size_t si = 0; si < 7; si++) {
        for (int affine = 0; affine < 2; affine++) {
            int64_t R = shapes[si][0], D = shapes[si][1];
            dg_rng r;
            dg_rng_seed(&r, 21 + si * 2 + affine);
            float *x = ku_randn(&r, R * D, 2.0f), *gm = ku_randn(&r, D, 1.0f);
            float *bt = ku_randn(&r, D, 1.0f), *dy = ku_randn(&r, R * D, 1.0f);
            /* non-zero mean; on odd shapes |mean| >> std (1000 vs 2), where f32 statistics
             * alone would lose ~1e-4 */
            for (int64_t i = 0; i < R * D; i++) x[i] += si % 2 ? 1000.0f : 3.0f;
            float *dx0 = ku_randn(&r, R * D, 1.0f), *dg0 = ku_randn(&r, D, 1.0f);
            float *db0 = ku_randn(&r, D, 1.0f);
            float *o[2][6];
            for (int k = 0; k < 2; k++) {
                ku_arena a;
                ku_open(&a, BE[k]);
                dg_tensor tx = ku_t2(&a, x, R, D), to = ku_t2(&a, NULL, R, D);
                dg_tensor tm = ku_t1(&a, NULL, R), ts = ku_t1(&a, NULL, R);
                dg_tensor tg = affine ? ku_t1(&a, gm, D) : dg_t_null();
                dg_tensor tb = affine ? ku_t1(&a, bt, D) : dg_t_null();
                ck_assert_int_eq(dg_layernorm_fwd(a.be, to, tm, ts, tx, tg, tb, 1e-5f), 0);
                dg_tensor tdy = ku_t2(&a, dy, R, D), tdx = ku_t2(&a, dx0, R, D);
                dg_tensor tdg = affine ? ku_t1(&a, dg0, D) : dg_t_null();
                dg_tensor tdb = affine ? ku_t1(&a, db0, D) : dg_t_null();
                ck_assert_int_eq(dg_layernorm_bwd(a.be, tdx, tdg, tdb, tdy, tx, tm, ts, tg), 0);
                o[k][0] = ku_get(&a, to);
                o[k][1] = ku_get(&a, tm);
                o[k][2] = ku_get(&a, ts);
                o[k][3] = ku_get(&a, tdx);
                o[k][4] = affine ? ku_get(&a, tdg) : NULL;
                o[k][5] = affine ? ku_get(&a, tdb) : NULL;
                /* out may alias inp */
                ck_assert_int_eq(dg_layernorm_fwd(a.be, tx, tm, ts, tx, tg, tb, 1e-5f), 0);
                float *al = ku_get(&a, tx);
                for (int64_t i = 0; i < R * D; i++) ck_assert(al[i] == o[k][0][i]);
                free(al);
                ku_close(&a);
            }
            const char *nm[6] = {"ln out", "ln mean", "ln rstd", "ln dinp", "ln dgamma",
                                 "ln dbeta"};
            const int64_t nn[6] = {R * D, R, R, R * D, D, D};
            for (int j = 0; j < 6; j++) {
                if (!o[0][j]) continue;
                /* D = 1: out = 0 exactly and rstd = 1/sqrt(eps); compare all the same */
                ku_expect_rel(nm[j], o[1][j], o[0][j], nn[j], TOL);
                free(o[0][j]); free(o[1][j]);
            }
            free(x); free(gm); free(bt); free(dy); free(dx0); free(dg0); free(db0);
        }
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// positional transforms

START_TEST(test_pos) {
    const int64_t shapes[][4] = {{1, 1, 1, 2}, {2, 3, 1, 6}, {3, 5, 4, 8}, {2, 17, 2, 64},
                                 {2, 131, 2, 128}};
    for (size_t si = 0; si < 5; si++) {
        for (int mode = DG_POS_ROPE; mode <= DG_POS_POPE; mode++) {
            int64_t B = shapes[si][0], T = shapes[si][1], H = shapes[si][2], N = shapes[si][3];
            int64_t Nq = mode == DG_POS_POPE ? 2 * N : N;
            dg_rng r;
            dg_rng_seed(&r, 31 + si * 2 + mode);
            /* far apart, large positions (frac() matters; cpu computes rows one by one) or
             * close ones (cpu tabulates cos/sin once per position) */
            int64_t far[3] = {0, 1000003, 7}, near[3] = {3, 5, 4};
            const int64_t *pos0 = si % 2 ? near : far;
            float *x = ku_randn(&r, B * T * H * N, 1.0f), *dy = ku_randn(&r, B * T * H * Nq, 1.0f);
            float *dx0 = ku_randn(&r, B * T * H * N, 1.0f);
            float *o[2][2];
            for (int k = 0; k < 2; k++) {
                ku_arena a;
                ku_open(&a, BE[k]);
                dg_tensor tx = ku_t4(&a, x, B, T, H, N), to = ku_t4(&a, NULL, B, T, H, Nq);
                dg_tensor tdy = ku_t4(&a, dy, B, T, H, Nq), tdx = ku_t4(&a, dx0, B, T, H, N);
                for (int rep = 0; rep < 2; rep++) {   /* twice: the cpu table cache path */
                    ck_assert_int_eq(dg_pos_fwd(a.be, to, tx, pos0, mode, 65536.0f), 0);
                }
                ck_assert_int_eq(dg_pos_bwd(a.be, tdx, tdy, tx, pos0, mode, 65536.0f), 0);
                o[k][0] = ku_get(&a, to);
                o[k][1] = ku_get(&a, tdx);
                ku_close(&a);
            }
            ku_expect_rel(mode == DG_POS_ROPE ? "rope fwd" : "pope fwd", o[1][0], o[0][0],
                          B * T * H * Nq, TOL);
            ku_expect_rel(mode == DG_POS_ROPE ? "rope bwd" : "pope bwd", o[1][1], o[0][1],
                          B * T * H * N, TOL);
            for (int j = 0; j < 2; j++) { free(o[0][j]); free(o[1][j]); }
            free(x); free(dy); free(dx0);
        }
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// attention

typedef struct { int64_t B, T, H, Nq, D; float g[4]; bool rho_in, rho_out, drho_out; } attn_case;

static void run_attn(const attn_case *c, uint64_t seed) {
    int64_t B = c->B, T = c->T, H = c->H, Nq = c->Nq, D = c->D;
    dg_rng r;
    dg_rng_seed(&r, seed);
    int64_t nq = B * T * H * Nq, nv = B * T * D, no = B * T * H * D, nr = B * H * Nq * D;
    float *q = ku_relu_randn(&r, nq, 1.0f), *v = ku_randn(&r, nv, 1.0f);
    float *r0 = ku_randn(&r, nr, 1.0f), *dO = ku_randn(&r, no, 1.0f);
    float *dR = ku_randn(&r, nr, 1.0f), *dq0 = ku_randn(&r, nq, 1.0f);
    float *dv0 = ku_randn(&r, nv, 1.0f), *dr0 = ku_randn(&r, nr, 1.0f);
    float *o[2][5] = {{0}};
    for (int k = 0; k < 2; k++) {
        ku_arena a;
        ku_open(&a, BE[k]);
        dg_tensor tq = ku_t4(&a, q, B, T, H, Nq), tv = ku_t4(&a, v, 1, B, T, D);
        dg_tensor to = ku_t4(&a, NULL, B, T, H, D);
        dg_tensor tri = c->rho_in ? ku_t4(&a, r0, B, H, Nq, D) : dg_t_null();
        dg_tensor tro = c->rho_out ? ku_t4(&a, NULL, B, H, Nq, D) : dg_t_null();
        ck_assert_int_eq(dg_attn_fwd(a.be, to, tro, tq, tv, tri, c->g), 0);
        dg_tensor tdo = ku_t4(&a, dO, B, T, H, D);
        dg_tensor tdr = c->drho_out ? ku_t4(&a, dR, B, H, Nq, D) : dg_t_null();
        dg_tensor tdq = ku_t4(&a, dq0, B, T, H, Nq), tdv = ku_t4(&a, dv0, 1, B, T, D);
        dg_tensor tdri = c->rho_in ? ku_t4(&a, dr0, B, H, Nq, D) : dg_t_null();
        ck_assert_int_eq(dg_attn_bwd(a.be, tdq, tdv, tdri, tdo, tdr, tq, tv, tri, c->g), 0);
        o[k][0] = ku_get(&a, to);
        o[k][1] = c->rho_out ? ku_get(&a, tro) : NULL;
        o[k][2] = ku_get(&a, tdq);
        o[k][3] = ku_get(&a, tdv);
        o[k][4] = c->rho_in ? ku_get(&a, tdri) : NULL;
        ku_close(&a);
    }
    const char *nm[5] = {"attn out", "attn rho_out", "attn dq", "attn dv", "attn drho_in"};
    const int64_t nn[5] = {no, nr, nq, nv, nr};
    for (int j = 0; j < 5; j++) {
        if (!o[0][j]) continue;
        char what[160];
        snprintf(what, sizeof what, "%s B%lld T%lld H%lld Nq%lld D%lld g0 %g rin%d rout%d drout%d",
                 nm[j], (long long)B, (long long)T, (long long)H, (long long)Nq, (long long)D,
                 c->g[0], c->rho_in, c->rho_out, c->drho_out);
        ku_expect_rel(what, o[1][j], o[0][j], nn[j], TOL);
        free(o[0][j]); free(o[1][j]);
    }
    free(q); free(v); free(r0); free(dO); free(dR); free(dq0); free(dv0); free(dr0);
}

START_TEST(test_attn_small) {
    const attn_case cases[] = {
        {1, 1, 1, 5, 3, {1, 1, 1, 1}, false, false, false},
        {1, 1, 1, 5, 3, {0.5f, 1, 1, 1}, true, true, true},
        {2, 4, 2, 5, 3, {1, 0.7f, 1, 1}, true, true, true},
        {3, 7, 3, 4, 6, {0.368f, 0.431f, 1, 1}, false, true, true},
        {2, 9, 4, 8, 5, {0.368f, 0.431f, 0.493f, 0.552f}, true, false, false},
        {2, 16, 1, 16, 8, {1, 1, 1, 1}, true, true, false},
        {1, 5, 2, 3, 2, {0.0f, 0.9f, 1, 1}, true, true, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_attn(&cases[i], 300 + i);
}
END_TEST

START_TEST(test_attn_blocks) {
    /* T beyond the cpu row block (64/128) and beyond the decay band: exercises the block loop,
     * the band cut and the carried-state rows past the band */
    const attn_case cases[] = {
        {2, 200, 2, 16, 8, {1, 0.552f, 1, 1}, true, true, true},
        {1, 300, 2, 12, 7, {0.368f, 0.98f, 1, 1}, true, true, true},
        {2, 130, 1, 9, 5, {1, 1, 1, 1}, false, false, false},
        {2, 250, 3, 8, 5, {0.368f, 0.431f, 0.552f, 1}, true, true, true},   /* all heads banded */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_attn(&cases[i], 400 + i);
}
END_TEST

// ------------------------------------------------------------------------------------------
// gate, xent, adamw

START_TEST(test_gate) {
    const int64_t sizes[] = {1, 13, 4096, 10007, 200003};
    const float ps[] = {0.0f, 0.1f, 0.5f};
    for (size_t si = 0; si < 5; si++) {
        for (size_t pi = 0; pi < 3; pi++) {
            int64_t n = sizes[si];
            dg_rng r;
            dg_rng_seed(&r, 51 + si * 3 + pi);
            float *x = ku_randn(&r, n, 1.0f), *y = ku_randn(&r, n, 1.0f);
            float *dz = ku_randn(&r, n, 1.0f), *dx0 = ku_randn(&r, n, 1.0f);
            float *dy0 = ku_randn(&r, n, 1.0f);
            float *o[2][3];
            for (int k = 0; k < 2; k++) {
                ku_arena a;
                ku_open(&a, BE[k]);
                dg_tensor tx = ku_t1(&a, x, n), ty = ku_t1(&a, y, n), tz = ku_t1(&a, NULL, n);
                dg_tensor tdz = ku_t1(&a, dz, n), tdx = ku_t1(&a, dx0, n);
                dg_tensor tdy = ku_t1(&a, dy0, n);
                ck_assert_int_eq(dg_gate_fwd(a.be, tz, tx, ty, ps[pi], 0xabcdef + si), 0);
                ck_assert_int_eq(dg_gate_bwd(a.be, tdx, tdy, tdz, tx, ty, ps[pi], 0xabcdef + si),
                                 0);
                o[k][0] = ku_get(&a, tz);
                o[k][1] = ku_get(&a, tdx);
                o[k][2] = ku_get(&a, tdy);
                ku_close(&a);
            }
            /* dropout masks are identical: the hash is shared, so even the zeros match */
            ku_expect_rel("gate z", o[1][0], o[0][0], n, TOL);
            ku_expect_rel("gate dx", o[1][1], o[0][1], n, TOL);
            ku_expect_rel("gate dy", o[1][2], o[0][2], n, TOL);
            if (ps[pi] > 0 && n > 1000) {              /* the dropout rate is about p */
                int64_t zeros = 0;
                for (int64_t i = 0; i < n; i++) zeros += o[0][0][i] == 0.0f;
                double frac = (double)zeros / (double)n;
                ck_assert_msg(fabs(frac - ps[pi]) < 0.03, "drop rate %g for p %g", frac, ps[pi]);
            }
            for (int j = 0; j < 3; j++) { free(o[0][j]); free(o[1][j]); }
            free(x); free(y); free(dz); free(dx0); free(dy0);
        }
    }
}
END_TEST

/* gate_proj (the decode step's encoder_v + ReLU + gate over active neurons): ref's fused verb
 * equals ref's gemm + relu_fwd + gate_fwd bit for bit, and cpu equals ref on both of its code
 * paths. x has ReLU-like zeros (none, half, most, all); shapes include D and N tails. */
static void run_gate_proj(int64_t R, int64_t H, int64_t N, int64_t D, float zero, float thr,
                          uint64_t seed) {
    dg_rng r;
    dg_rng_seed(&r, seed);
    int64_t nx = R * H * N, na = R * H * D, nw = H * D * N;
    float *x = ku_randn(&r, nx, 1.0f), *av = ku_randn(&r, na, 1.0f), *ev = ku_randn(&r, nw, 0.1f);
    for (int64_t i = 0; i < nx; i++)
        x[i] = (x[i] > 0 && dg_rng_uniform(&r) >= zero) ? x[i] : 0.0f;
    float *wt = malloc((size_t)nw * sizeof *wt);           /* (H, N, D) from ev (H, D, N) */
    for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++)
            for (int64_t j = 0; j < N; j++) wt[(h * N + j) * D + d] = ev[(h * D + d) * N + j];
    float *z[2], *zc = NULL;
    for (int k = 0; k < 2; k++) {
        ku_arena a;
        ku_open(&a, BE[k]);
        dg_tensor tx = ku_t2(&a, x, R, H * N), ta = ku_t2(&a, av, R, H * D);
        dg_tensor tw = ku_t4(&a, wt, 1, H, N, D), tz = ku_t2(&a, NULL, R, H * N);
        ck_assert_int_eq(dg_gate_proj(a.be, tz, tx, ta, tw, thr), 0);
        z[k] = ku_get(&a, tz);
        if (k == 0) {                                      /* the unfused ops on ref */
            dg_tensor te = ku_t4(&a, ev, 1, H, D, N), ty = ku_t2(&a, NULL, R, H * N);
            dg_tensor tz2 = ku_t2(&a, NULL, R, H * N);
            dg_gemm_desc g = {R, N, D, H, dg_m(ta, R, D, H * D), dg_m(te, D, N, N),
                              dg_m(ty, R, N, H * N), 1.0f, 0.0f};
            g.A.bstride = D; g.B.bstride = D * N; g.C.bstride = N;
            ck_assert_int_eq(dg_gemm(a.be, &g), 0);
            ck_assert_int_eq(dg_relu_fwd(a.be, ty, ty, thr), 0);
            ck_assert_int_eq(dg_gate_fwd(a.be, tz2, tx, ty, 0.0f, 0), 0);
            zc = ku_get(&a, tz2);
        }
        ku_close(&a);
    }
    char what[128];
    snprintf(what, sizeof what, "gate_proj R%lld H%lld N%lld D%lld zero%g thr%g", (long long)R,
             (long long)H, (long long)N, (long long)D, zero, thr);
    ck_assert_msg(memcmp(z[0], zc, (size_t)nx * 4) == 0, "%s: ref differs from gemm+relu+gate", what);
    ku_expect_rel(what, z[1], z[0], nx, TOL);
    int64_t nz = 0;
    for (int64_t i = 0; i < nx; i++) {
        ck_assert_msg(x[i] != 0.0f || z[1][i] == 0.0f, "%s: z[%lld] not 0 where x is", what, (long long)i);
        nz += z[0][i] != 0.0f;
    }
    if (zero < 1.0f && nx >= 1000) ck_assert_msg(nz > 0, "%s: all zero", what);
    free(x); free(av); free(ev); free(wt); free(z[0]); free(z[1]); free(zc);
}

START_TEST(test_gate_proj) {
    const struct { int64_t R, H, N, D; float zero, thr; } cases[] = {
        {1, 4, 256, 256, 0.0f, 0.0f},  {1, 4, 256, 256, 0.5f, 0.0f}, {8, 4, 256, 256, 0.5f, 0.05f},
        {3, 2, 70, 33, 0.3f, 0.0f},    {1, 1, 5, 17, 0.0f, 0.0f},    {16, 3, 100, 48, 0.9f, 0.0f},
        {2, 4, 1024, 64, 0.95f, 0.0f}, {4, 2, 64, 256, 1.0f, 0.0f},  {1, 1, 1, 1, 0.0f, 0.0f},
    };
    int have = dg__cpu_isa_avx512(-1);
    for (int p = 0; p < 2; p++) {
        dg__cpu_isa_avx512(p);
        if (dg__cpu_isa_avx512(-1) != p) {
            printf("SKIP: gate_proj AVX-512 path: this CPU has no AVX-512\n");
            continue;
        }
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
            run_gate_proj(cases[i].R, cases[i].H, cases[i].N, cases[i].D, cases[i].zero,
                          cases[i].thr, 700 + i);
    }
    dg__cpu_isa_avx512(have);
}
END_TEST

START_TEST(test_xent) {
    const int64_t shapes[][2] = {{1, 1}, {1, 2}, {5, 3}, {64, 69}, {10, 50257}};
    for (size_t si = 0; si < 5; si++) {
        for (int withd = 0; withd < 2; withd++) {
            int64_t R = shapes[si][0], V = shapes[si][1];
            dg_rng r;
            dg_rng_seed(&r, 61 + si);
            float *l = ku_randn(&r, R * V, 3.0f), *dl0 = ku_randn(&r, R * V, 0.01f);
            int32_t *t = malloc((size_t)R * 4);
            for (int64_t i = 0; i < R; i++) t[i] = (int32_t)dg_rng_below(&r, (uint64_t)V);
            float *o[2][2] = {{0}};
            for (int k = 0; k < 2; k++) {
                ku_arena a;
                ku_open(&a, BE[k]);
                dg_tensor tl = ku_t2(&a, l, R, V), tt = ku_i32(&a, t, R);
                dg_tensor tloss = ku_t1(&a, NULL, R);
                dg_tensor tdl = withd ? ku_t2(&a, dl0, R, V) : dg_t_null();
                ck_assert_int_eq(dg_xent(a.be, tloss, tdl, tl, tt, 1.0f / (float)R), 0);
                o[k][0] = ku_get(&a, tloss);
                if (withd) o[k][1] = ku_get(&a, tdl);
                int32_t bad = (int32_t)V;                  /* target out of range */
                dg_tensor tb = ku_i32(&a, &bad, 1), tl1 = ku_t2(&a, l, 1, V);
                dg_tensor tlo1 = ku_t1(&a, NULL, 1);
                ck_assert_int_eq(dg_xent(a.be, tlo1, dg_t_null(), tl1, tb, 1.0f), DG_EINVAL);
                ku_close(&a);
            }
            ku_expect_rel("xent loss", o[1][0], o[0][0], R, TOL);
            if (withd) ku_expect_rel("xent dlogits", o[1][1], o[0][1], R * V, TOL);
            /* the loss is a real cross-entropy: V = 1 gives 0, otherwise > 0 */
            for (int64_t i = 0; i < R; i++)
                ck_assert(V == 1 ? fabsf(o[0][0][i]) < 1e-6f : o[0][0][i] > 0.0f);
            for (int j = 0; j < 2; j++) { free(o[0][j]); free(o[1][j]); }
            free(l); free(dl0); free(t);
        }
    }
}
END_TEST

START_TEST(test_adamw) {
    const int64_t sizes[] = {1, 9, 1000, 70001};
    for (size_t si = 0; si < 4; si++) {
        int64_t n = sizes[si];
        dg_rng r;
        dg_rng_seed(&r, 71 + si);
        float *p = ku_randn(&r, n, 1.0f), *g = ku_randn(&r, n, 1.0f);
        float *m = ku_randn(&r, n, 0.1f), *v = ku_randn(&r, n, 0.1f);
        for (int64_t i = 0; i < n; i++) v[i] = v[i] * v[i];
        float *o[2][3];
        for (int k = 0; k < 2; k++) {
            ku_arena a;
            ku_open(&a, BE[k]);
            dg_tensor tp = ku_t1(&a, p, n), tg = ku_t1(&a, g, n), tm = ku_t1(&a, m, n);
            dg_tensor tv = ku_t1(&a, v, n);
            for (int step = 1; step <= 3; step++) {
                dg_adamw_hp hp = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.5f, step};
                ck_assert_int_eq(dg_adamw(a.be, tp, tg, tm, tv, &hp), 0);
            }
            o[k][0] = ku_get(&a, tp);
            o[k][1] = ku_get(&a, tm);
            o[k][2] = ku_get(&a, tv);
            ku_close(&a);
        }
        ku_expect_rel("adamw p", o[1][0], o[0][0], n, TOL);
        ku_expect_rel("adamw m", o[1][1], o[0][1], n, TOL);
        ku_expect_rel("adamw v", o[1][2], o[0][2], n, TOL);
        /* one hand-computed element: step 1 from m = v = 0 moves p by ~lr * sign(g) */
        for (int j = 0; j < 3; j++) { free(o[0][j]); free(o[1][j]); }
        free(p); free(g); free(m); free(v);
    }
    /* closed form at step 1 from zero moments: m = (1-b1) g', v = (1-b2) g'^2, so
     * mh = g', vh = g'^2 and p' = p (1 - lr wd) - lr g' / (|g'| + eps) */
    for (int k = 0; k < 2; k++) {
        ku_arena a;
        ku_open(&a, BE[k]);
        float p = 2.0f, g = -3.0f, z = 0.0f;
        dg_tensor tp = ku_t1(&a, &p, 1), tg = ku_t1(&a, &g, 1), tm = ku_t1(&a, &z, 1);
        dg_tensor tv = ku_t1(&a, &z, 1);
        dg_adamw_hp hp = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.5f, 1};
        ck_assert_int_eq(dg_adamw(a.be, tp, tg, tm, tv, &hp), 0);
        float got;
        dg_get(a.be, &got, tp);
        double want = 2.0 * (1 - 1e-3) - 1e-2 * (-1.5) / (1.5 + 1e-8);
        ck_assert_msg(fabs(got - want) < 1e-6, "%s adamw closed form %g vs %g", BE[k], got, want);
        ku_close(&a);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------
// attn_step parity (the step-vs-forward equality is in test_attn_step.c)

START_TEST(test_attn_step_parity) {
    const int64_t shapes[][4] = {{1, 1, 5, 3}, {3, 2, 16, 8}, {2, 4, 64, 33}};   /* B H Nq D */
    for (size_t si = 0; si < 3; si++) {
        int64_t B = shapes[si][0], H = shapes[si][1], Nq = shapes[si][2], D = shapes[si][3];
        float gam[4] = {1.0f, 0.6f, 0.9f, 1.0f};
        dg_rng r;
        dg_rng_seed(&r, 81 + si);
        float *rho0 = ku_randn(&r, B * H * Nq * D, 1.0f);
        float *res[2][2];
        for (int k = 0; k < 2; k++) {
            ku_arena a;
            ku_open(&a, BE[k]);
            dg_tensor rh[3];
            for (int64_t b = 0; b < B; b++)
                rh[b] = ku_t4(&a, rho0 + b * H * Nq * D, 1, H, Nq, D);
            dg_tensor to = ku_t4(&a, NULL, 1, B, H, D);
            dg_rng rr;
            dg_rng_seed(&rr, 91 + si);
            float *acc = calloc((size_t)(B * H * D), sizeof *acc);
            for (int step = 0; step < 4; step++) {
                float *q = ku_relu_randn(&rr, B * H * Nq, 1.0f), *v = ku_randn(&rr, B * D, 1.0f);
                dg_tensor tq = ku_t4(&a, q, 1, B, H, Nq), tv = ku_t2(&a, v, B, D);
                ck_assert_int_eq(dg_fill(a.be, to, NAN), 0);
                ck_assert_int_eq(dg_attn_step(a.be, (int)B, rh, to, tq, tv, gam), 0);
                float *o = ku_get(&a, to);
                for (int64_t i = 0; i < B * H * D; i++) acc[i] += o[i] * (float)(step + 1);
                free(o); free(q); free(v);
            }
            res[k][0] = acc;
            float *st = malloc((size_t)(B * H * Nq * D) * sizeof *st);
            for (int64_t b = 0; b < B; b++) dg_get(a.be, st + b * H * Nq * D, rh[b]);
            res[k][1] = st;
            ku_close(&a);
        }
        ku_expect_rel("attn_step out", res[1][0], res[0][0], B * H * D, TOL);
        ku_expect_rel("attn_step rho", res[1][1], res[0][1], B * H * Nq * D, TOL);
        for (int j = 0; j < 2; j++) { free(res[0][j]); free(res[1][j]); }
        free(rho0);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("kernel parity cpu vs ref");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_gemm_small);
    tcase_add_test(tc, test_elementwise);
    tcase_add_test(tc, test_embed);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_pos);
    tcase_add_test(tc, test_attn_small);
    tcase_add_test(tc, test_attn_blocks);
    tcase_add_test(tc, test_gate);
    tcase_add_test(tc, test_gate_proj);
    tcase_add_test(tc, test_xent);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_attn_step_parity);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
