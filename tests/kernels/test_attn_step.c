/* tests/kernels/test_attn_step.c -- the recurrent decode step against the parallel attention.
 *
 * MODEL.md §4.3: running out_t = rho^T q_t; rho = (rho + q_t v_t^T) g token by token from a state
 * rho0 must give exactly the dense-score attn_fwd output (every row) and its rho_out; and
 * attn_fwd over chunks with the state carried from chunk to chunk must give the one-shot result.
 * Checked on "ref" and "cpu", for g < 1 (ALiBi decay), g = 1 (RoPE/PoPE) and mixed heads, from a
 * zero and a non-zero rho0, with ReLU-sparse q (rows with q = 0 take the sparse path).
 * Tolerance: relative 1e-5 (the two orders of summation differ only by f32 rounding over T <= 40
 * terms; the decay is g^k in double on one side and k float multiplications on the other).
 * Thread affinity: single-threaded test. */
#include "kern_util.h"

#define TOL 1e-5

typedef struct { int64_t B, T, H, Nq, D; float g[4]; bool rho0; int64_t chunks[4]; } step_case;

static const step_case CASES[] = {
    {1, 1, 1, 5, 3, {0.5f, 1, 1, 1}, true, {1, 0, 0, 0}},
    {2, 12, 2, 8, 4, {1.0f, 1.0f, 1, 1}, false, {5, 7, 0, 0}},
    {2, 12, 2, 8, 4, {0.368f, 0.552f, 1, 1}, false, {1, 4, 7, 0}},
    {3, 20, 4, 16, 6, {0.368f, 1.0f, 0.9f, 1.0f}, true, {8, 1, 11, 0}},
    {2, 40, 2, 32, 33, {0.97f, 1.0f, 1, 1}, true, {13, 13, 14, 0}},
};

static void run_case(const char *bename, const step_case *c, uint64_t seed) {
    int64_t B = c->B, T = c->T, H = c->H, Nq = c->Nq, D = c->D;
    int64_t nq = B * T * H * Nq, nv = B * T * D, no = B * T * H * D, nr = B * H * Nq * D;
    dg_rng r;
    dg_rng_seed(&r, seed);
    float *q = ku_relu_randn(&r, nq, 1.0f), *v = ku_randn(&r, nv, 1.0f);
    float *r0 = c->rho0 ? ku_randn(&r, nr, 1.0f) : calloc((size_t)nr, sizeof(float));

    ku_arena a;
    ku_open(&a, bename);
    dg_tensor tq = ku_t4(&a, q, B, T, H, Nq), tv = ku_t4(&a, v, 1, B, T, D);
    dg_tensor to = ku_t4(&a, NULL, B, T, H, D), tro = ku_t4(&a, NULL, B, H, Nq, D);
    dg_tensor tri = c->rho0 ? ku_t4(&a, r0, B, H, Nq, D) : dg_t_null();
    ck_assert_int_eq(dg_attn_fwd(a.be, to, tro, tq, tv, tri, c->g), 0);
    float *full = ku_get(&a, to), *full_rho = ku_get(&a, tro);
    /* the outputs are not trivially zero */
    double mx = 0;
    for (int64_t i = 0; i < no; i++) mx = fmax(mx, fabs(full[i]));
    if (T > 2) ck_assert(mx > 0);

    // ---- token by token with attn_step, each sequence's state in its own buffer ----------
    dg_tensor rho[4];
    for (int64_t b = 0; b < B; b++) rho[b] = ku_t4(&a, r0 + b * H * Nq * D, 1, H, Nq, D);
    dg_tensor qt = ku_t4(&a, NULL, 1, B, H, Nq), vt = ku_t2(&a, NULL, B, D);
    dg_tensor ot = ku_t4(&a, NULL, 1, B, H, D);
    float *hq = malloc((size_t)(B * H * Nq) * 4), *hv = malloc((size_t)(B * D) * 4);
    float *step_out = malloc((size_t)no * 4);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t b = 0; b < B; b++) {
            memcpy(hq + b * H * Nq, q + (b * T + t) * H * Nq, (size_t)(H * Nq) * 4);
            memcpy(hv + b * D, v + (b * T + t) * D, (size_t)D * 4);
        }
        ck_assert_int_eq(dg_set(a.be, qt, hq), 0);
        ck_assert_int_eq(dg_set(a.be, vt, hv), 0);
        ck_assert_int_eq(dg_fill(a.be, ot, NAN), 0);
        ck_assert_int_eq(dg_attn_step(a.be, (int)B, rho, ot, qt, vt, c->g), 0);
        float *o = ku_get(&a, ot);
        for (int64_t b = 0; b < B; b++)
            memcpy(step_out + (b * T + t) * H * D, o + b * H * D, (size_t)(H * D) * 4);
        free(o);
    }
    float *step_rho = malloc((size_t)nr * 4);
    for (int64_t b = 0; b < B; b++)
        ck_assert_int_eq(dg_get(a.be, step_rho + b * H * Nq * D, rho[b]), 0);
    char what[128];
    snprintf(what, sizeof what, "%s step out T%lld g0 %g", bename, (long long)T, c->g[0]);
    ku_expect_rel(what, step_out, full, no, TOL);
    snprintf(what, sizeof what, "%s step rho T%lld g0 %g", bename, (long long)T, c->g[0]);
    ku_expect_rel(what, step_rho, full_rho, nr, TOL);

    // ---- chunked attn_fwd with the state carried (ping-pong between two state buffers) ----
    float *ch_out = malloc((size_t)no * 4);
    dg_tensor st[2] = {ku_t4(&a, r0, B, H, Nq, D), ku_t4(&a, NULL, B, H, Nq, D)};
    int cur = 0;
    int64_t t0 = 0;
    for (int ci = 0; ci < 4 && c->chunks[ci] > 0; ci++) {
        int64_t Tc = c->chunks[ci];
        float *cq = malloc((size_t)(B * Tc * H * Nq) * 4), *cv = malloc((size_t)(B * Tc * D) * 4);
        for (int64_t b = 0; b < B; b++) {
            memcpy(cq + b * Tc * H * Nq, q + (b * T + t0) * H * Nq, (size_t)(Tc * H * Nq) * 4);
            memcpy(cv + b * Tc * D, v + (b * T + t0) * D, (size_t)(Tc * D) * 4);
        }
        dg_tensor tcq = ku_t4(&a, cq, B, Tc, H, Nq), tcv = ku_t4(&a, cv, 1, B, Tc, D);
        dg_tensor tco = ku_t4(&a, NULL, B, Tc, H, D);
        ck_assert_int_eq(dg_fill(a.be, st[1 - cur], NAN), 0);
        ck_assert_int_eq(dg_attn_fwd(a.be, tco, st[1 - cur], tcq, tcv, st[cur], c->g), 0);
        cur = 1 - cur;
        float *o = ku_get(&a, tco);
        for (int64_t b = 0; b < B; b++)
            memcpy(ch_out + (b * T + t0) * H * D, o + b * Tc * H * D, (size_t)(Tc * H * D) * 4);
        free(o); free(cq); free(cv);
        t0 += Tc;
    }
    ck_assert_int_eq(t0, T);
    float *ch_rho = ku_get(&a, st[cur]);
    snprintf(what, sizeof what, "%s chunked out T%lld g0 %g", bename, (long long)T, c->g[0]);
    ku_expect_rel(what, ch_out, full, no, TOL);
    snprintf(what, sizeof what, "%s chunked rho T%lld g0 %g", bename, (long long)T, c->g[0]);
    ku_expect_rel(what, ch_rho, full_rho, nr, TOL);

    ku_close(&a);
    free(q); free(v); free(r0); free(full); free(full_rho); free(hq); free(hv);
    free(step_out); free(step_rho); free(ch_out); free(ch_rho);
}

START_TEST(test_step_ref) {
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) run_case("ref", &CASES[i], 500 + i);
}
END_TEST

START_TEST(test_step_cpu) {
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) run_case("cpu", &CASES[i], 500 + i);
}
END_TEST

/* Rows with q == 0 are not touched when g == 1, and only decay when g != 1. */
START_TEST(test_step_sparse_rows) {
    const char *bes[2] = {"ref", "cpu"};
    for (int k = 0; k < 2; k++) {
        ku_arena a;
        ku_open(&a, bes[k]);
        int64_t H = 2, Nq = 6, D = 3;
        float gam[2] = {1.0f, 0.5f};
        float rho0[36], qh[12] = {0}, vh[3] = {1, 2, 3};
        for (int i = 0; i < 36; i++) rho0[i] = (float)(i + 1);
        qh[1] = 2.0f; qh[6 + 4] = -1.0f;                 /* one active row per head */
        dg_tensor rho = ku_t4(&a, rho0, 1, H, Nq, D);
        dg_tensor tq = ku_t4(&a, qh, 1, 1, H, Nq), tv = ku_t2(&a, vh, 1, D);
        dg_tensor to = ku_t4(&a, NULL, 1, 1, H, D);
        ck_assert_int_eq(dg_attn_step(a.be, 1, &rho, to, tq, tv, gam), 0);
        float o[6], st[36];
        dg_get(a.be, o, to);
        dg_get(a.be, st, rho);
        for (int d = 0; d < 3; d++) {
            ck_assert_float_eq(o[d], 2.0f * rho0[1 * 3 + d]);              /* head 0 read */
            ck_assert_float_eq(o[3 + d], -1.0f * rho0[18 + 4 * 3 + d]);    /* head 1 read */
        }
        for (int n = 0; n < 6; n++) {
            for (int d = 0; d < 3; d++) {
                float r0v = rho0[n * 3 + d], r1v = rho0[18 + n * 3 + d];
                float w0 = n == 1 ? r0v + 2.0f * vh[d] : r0v;               /* g = 1 */
                float w1 = n == 4 ? (r1v - vh[d]) * 0.5f : r1v * 0.5f;       /* g = 0.5 */
                ck_assert_float_eq(st[n * 3 + d], w0);
                ck_assert_float_eq(st[18 + n * 3 + d], w1);
            }
        }
        ku_close(&a);
    }
}
END_TEST

/* The optional lazy-decay step (attn_step_lazy, where offered) against ref's attn_step: the
 * same outputs token by token, and scale * rho equal to ref's state. 60 tokens with g = 0.368
 * take the scale below DG_LAZY_SCALE_MIN (0.368^41 < 1e-18), so the fold is exercised. */
START_TEST(test_step_lazy) {
    const char *bes[1] = {"cpu"};               /* backends that offer the slot */
    for (int k = 0; k < 1; k++) {
        ku_arena a, r;
        ku_open(&a, bes[k]);
        if (!dg_has_attn_step_lazy(a.be)) {
            printf("SKIP: backend %s offers no attn_step_lazy\n", bes[k]);
            ku_close(&a);
            continue;
        }
        ku_open(&r, "ref");
        int64_t B = 2, H = 3, Nq = 16, D = 8, T = 60, ns = H * Nq * D;
        float gam[3] = {0.368f, 1.0f, 0.9f};
        dg_rng rng;
        dg_rng_seed(&rng, 700);
        float *rho0 = ku_randn(&rng, B * ns, 1.0f);
        dg_tensor ra[2], rr[2];
        for (int64_t b = 0; b < B; b++) {
            ra[b] = ku_t4(&a, rho0 + b * ns, 1, H, Nq, D);
            rr[b] = ku_t4(&r, rho0 + b * ns, 1, H, Nq, D);
        }
        float scale[6] = {1, 1, 1, 1, 1, 1};
        dg_tensor qa = ku_t4(&a, NULL, 1, B, H, Nq), va = ku_t2(&a, NULL, B, D);
        dg_tensor oa = ku_t4(&a, NULL, 1, B, H, D);
        dg_tensor qr = ku_t4(&r, NULL, 1, B, H, Nq), vr = ku_t2(&r, NULL, B, D);
        dg_tensor orr = ku_t4(&r, NULL, 1, B, H, D);
        for (int64_t t = 0; t < T; t++) {
            float *q = ku_relu_randn(&rng, B * H * Nq, 1.0f), *v = ku_randn(&rng, B * D, 1.0f);
            dg_set(a.be, qa, q); dg_set(a.be, va, v); dg_set(r.be, qr, q); dg_set(r.be, vr, v);
            dg_fill(a.be, oa, NAN);
            ck_assert_int_eq(dg_attn_step_lazy(a.be, (int)B, ra, scale, oa, qa, va, gam), 0);
            ck_assert_int_eq(dg_attn_step(r.be, (int)B, rr, orr, qr, vr, gam), 0);
            float *go = ku_get(&a, oa), *ro = ku_get(&r, orr);
            char what[64];
            snprintf(what, sizeof what, "lazy step out t=%lld", (long long)t);
            ku_expect_rel(what, go, ro, B * H * D, TOL);
            free(go); free(ro); free(q); free(v);
        }
        float *st = malloc((size_t)(B * ns) * 4), *sr = malloc((size_t)(B * ns) * 4);
        for (int64_t b = 0; b < B; b++) {
            dg_get(a.be, st + b * ns, ra[b]);
            dg_get(r.be, sr + b * ns, rr[b]);
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < Nq * D; i++)
                    st[b * ns + h * Nq * D + i] *= scale[b * H + h];
        }
        ku_expect_rel("lazy step state", st, sr, B * ns, TOL);
        free(st); free(sr); free(rho0);
        ku_close(&r);
        ku_close(&a);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("attn_step vs attn_fwd");
    TCase *tc = tcase_create("step");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_step_ref);
    tcase_add_test(tc, test_step_cpu);
    tcase_add_test(tc, test_step_sparse_rows);
    tcase_add_test(tc, test_step_lazy);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
