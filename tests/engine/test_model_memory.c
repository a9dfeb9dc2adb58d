/* tests/engine/test_model_memory.c -- the training memory plan of engine/model.c: the recompute
 * path (forced on small configs) gives the gradients of the store-all path and of finite
 * differences, backward leaves what a second backward needs, dg_model_train_bytes matches what
 * dg_model_alloc_train really allocates, and the paper config at B32 T512 fits the issue-6
 * budget (<= 8.5 GiB of activations + gradient scratch).
 * Not here: the model math as such (test_model.c). Single-threaded. */
#include "check_util.h"

#include "engine/model.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

static dg_model_config small_cfg(dg_pos_mode pos, dg_norm_kind norm, int L) {
    dg_model_config c;
    dg_model_config_default(&c);
    c.n_layer = L;
    c.n_embd = 8;
    c.n_head = 2;
    c.mlp_mult = 2;          /* N = 8 per head (H*N = H*D = 16) */
    c.vocab_size = 11;
    c.dropout = 0;
    c.positional = pos;
    c.norm = norm;
    c.rope_theta = 100.0f;
    return c;
}

static dg_model_config mid_cfg(dg_pos_mode pos, dg_norm_kind norm, int mult) {
    dg_model_config c;
    dg_model_config_default(&c);
    c.n_layer = 3;
    c.n_embd = 32;
    c.n_head = 4;
    c.mlp_mult = mult;       /* mult 4: N = 32; mult 1: N = 8, so H*N < H*D */
    c.vocab_size = 37;
    c.dropout = 0.1f;
    c.positional = pos;
    c.norm = norm;
    return c;
}

static dg_model_config paper_cfg(void) {
    dg_model_config c;
    dg_model_config_default(&c);    /* L6 D256 H4 */
    c.mlp_mult = 128;
    c.vocab_size = 259;
    c.positional = DG_POS_ROPE;
    c.norm = DG_NORM_PLAIN;
    c.init = DG_INIT_NORMAL;
    return c;
}

static void rand_tokens(int32_t *t, int n, int V, uint64_t seed) {
    dg_rng r;
    dg_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)dg_rng_below(&r, (uint64_t)V);
}

static dg_backend_t *open_be(const char *name) {
    dg_backend_t *be = NULL;
    ck_assert_int_eq(dg_backend_open(name, NULL, &be), 0);
    return be;
}

/* Residual weights scaled up (activations O(1)), gamma/beta moved off their init point. */
static void shape_params(dg_model_t *m, float scale, uint64_t seed) {
    const dg_model_config *c = dg_model_config_of(m);
    int64_t n = dg_model_n_params(c);
    float *p = malloc((size_t)n * 4);
    ck_assert_int_eq(dg_model_get_params(m, p), 0);
    for (int64_t i = 0; i < n; i++) p[i] *= scale;
    dg_param_info info[DG_P_COUNT];
    dg_model_param_layout(c, info);
    dg_rng r;
    dg_rng_seed(&r, seed);
    for (int64_t i = 0; i < info[DG_P_GAMMA].numel; i++)
        p[info[DG_P_GAMMA].offset + i] = 1.0f + 0.3f * dg_rng_normal(&r);
    for (int64_t i = 0; i < info[DG_P_BETA].numel; i++)
        p[info[DG_P_BETA].offset + i] = 0.2f * dg_rng_normal(&r);
    ck_assert_int_eq(dg_model_set_params(m, p), 0);
    free(p);
}

// ------------------------------------------------------------------------------------------
// recompute == store-all

typedef struct { float loss; float *logits, *grads, *grads2; int64_t np, nl; } run_out;

/* One forward + backward (and a second backward of the same forward into fresh gradients). */
static run_out run(const char *backend, dg_model_config c, int B, int T, int chunk,
                   dg_recompute_mode mode) {
    dg_backend_t *be = open_be(backend);
    dg_model_t *m;
    ck_assert_int_eq(dg_model_create(be, &c, &m), 0);
    ck_assert_int_eq(dg_model_init_params(m, 11), 0);
    shape_params(m, 3.0f, 12);
    dg_model_set_recompute(m, mode);
    ck_assert_int_eq(dg_model_alloc_train(m, B, T, chunk), 0);
    ck_assert(dg_model_train_recomputes(m) == (mode == DG_RECOMPUTE_ON));
    int n = B * T;
    int32_t *tok = malloc((size_t)n * 4), *tgt = malloc((size_t)n * 4);
    rand_tokens(tok, n, c.vocab_size, 21);
    rand_tokens(tgt, n, c.vocab_size, 22);
    run_out r = {0};
    r.np = dg_model_n_params(&c);
    r.nl = (int64_t)n * c.vocab_size;
    r.logits = malloc((size_t)r.nl * 4);
    r.grads = malloc((size_t)r.np * 4);
    r.grads2 = malloc((size_t)r.np * 4);
    ck_assert_int_eq(dg_model_zero_grad(m), 0);
    ck_assert_int_eq(dg_model_forward(m, tok, tgt, true, 5, &r.loss), 0);
    ck_assert_int_eq(dg_model_backward(m), 0);
    ck_assert_int_eq(dg_get(be, r.grads, dg_model_grads(m)), 0);
    ck_assert_int_eq(dg_model_zero_grad(m), 0);
    ck_assert_int_eq(dg_model_backward(m), 0);
    ck_assert_int_eq(dg_get(be, r.grads2, dg_model_grads(m)), 0);
    ck_assert_int_eq(dg_model_get_logits(m, r.logits), 0);
    free(tok); free(tgt);
    dg_model_free(m);
    dg_backend_close(be);
    return r;
}

static void free_run(run_out r) { free(r.logits); free(r.grads); free(r.grads2); }

static double max_abs(const float *a, int64_t n) {
    double mx = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(a[i]) > mx) mx = fabs(a[i]);
    return mx;
}

static void recompute_equals_store(const char *backend, dg_model_config c, int B, int T,
                                   int chunk) {
    run_out s = run(backend, c, B, T, chunk, DG_RECOMPUTE_OFF);
    run_out r = run(backend, c, B, T, chunk, DG_RECOMPUTE_ON);
    double eg = dg_max_rel_err(r.grads, s.grads, (long)s.np);
    double el = dg_max_rel_err(r.logits, s.logits, (long)s.nl);
    bool bits = memcmp(r.grads, s.grads, (size_t)s.np * 4) == 0;
    fprintf(stderr, "%s pos=%d norm=%d chunk=%d p=%.1f: recompute vs store-all: loss %.9g / %.9g, "
            "logits rel %.2e, grads rel %.2e (%s), |g|max %.3g\n", backend, c.positional, c.norm,
            chunk, c.dropout, r.loss, s.loss, el, eg, bits ? "bit-exact" : "not bit-exact",
            max_abs(s.grads, s.np));
    ck_assert(max_abs(s.grads, s.np) > 1e-4);           /* gradients are not trivially zero */
    ck_assert(r.loss == s.loss);
    ck_assert(el == 0);
    ck_assert(eg <= 1e-6);
    /* a second backward of the same forward gives the same gradients in both modes: the
     * backward overwrites nothing that it needs again */
    ck_assert_msg(memcmp(s.grads, s.grads2, (size_t)s.np * 4) == 0,
                  "store-all: a 2nd backward differs");
    ck_assert_msg(memcmp(r.grads, r.grads2, (size_t)r.np * 4) == 0,
                  "recompute: a 2nd backward differs");
    free_run(s);
    free_run(r);
}

START_TEST(recompute_equals_store_all) {
    const char *bes[2] = {"ref", "cpu"};
    dg_pos_mode modes[3] = {DG_POS_ALIBI, DG_POS_ROPE, DG_POS_POPE};
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 3; i++) {
            dg_norm_kind nk = i == 1 ? DG_NORM_PLAIN : DG_NORM_AFFINE;
            recompute_equals_store(bes[b], mid_cfg(modes[i], nk, 4), 2, 20, 0);     /* p = 0.1 */
            recompute_equals_store(bes[b], mid_cfg(modes[i], nk, 4), 2, 20, 6);     /* chunked */
            recompute_equals_store(bes[b], mid_cfg(modes[i], nk, 1), 2, 16, 0);     /* H*N < H*D */
        }
}
END_TEST

/* One layer: recompute re-runs the only layer; still the same numbers. */
START_TEST(recompute_one_layer) {
    dg_model_config c = small_cfg(DG_POS_POPE, DG_NORM_AFFINE, 1);
    c.dropout = 0.2f;
    recompute_equals_store("ref", c, 2, 9, 0);
    recompute_equals_store("cpu", c, 2, 9, 4);
}
END_TEST

// ------------------------------------------------------------------------------------------
// finite differences of the recompute path (ref backend)

static void gradcheck_recompute(dg_model_config c, int B, int T, int chunk) {
    dg_backend_t *be = open_be("ref");
    dg_model_t *m;
    ck_assert_int_eq(dg_model_create(be, &c, &m), 0);
    ck_assert_int_eq(dg_model_init_params(m, 5), 0);
    shape_params(m, 5.0f, 9);
    dg_model_set_recompute(m, DG_RECOMPUTE_ON);
    ck_assert_int_eq(dg_model_alloc_train(m, B, T, chunk), 0);
    ck_assert(dg_model_train_recomputes(m));
    int n = B * T;
    int32_t *tok = malloc((size_t)n * 4), *tgt = malloc((size_t)n * 4);
    rand_tokens(tok, n, c.vocab_size, 1);
    rand_tokens(tgt, n, c.vocab_size, 2);
    uint64_t seed = 77;
    float loss;
    ck_assert_int_eq(dg_model_zero_grad(m), 0);
    ck_assert_int_eq(dg_model_forward(m, tok, tgt, true, seed, &loss), 0);
    ck_assert_int_eq(dg_model_backward(m), 0);
    int64_t np = dg_model_n_params(&c);
    float *g = malloc((size_t)np * 4), *p = malloc((size_t)np * 4);
    ck_assert_int_eq(dg_get(be, g, dg_model_grads(m)), 0);
    ck_assert_int_eq(dg_model_get_params(m, p), 0);
    /* central differences at two step sizes; where they disagree a ReLU kink was crossed */
    dg_rng r;
    dg_rng_seed(&r, 3);
    int checked = 0, kinks = 0, bad = 0;
    dg_param_info info[DG_P_COUNT];
    dg_model_param_layout(&c, info);
    for (int w = 0; w < DG_P_COUNT; w++) {
        if (!info[w].numel) continue;
        for (int k = 0; k < 12; k++) {
            int64_t i = (int64_t)info[w].offset
                        + (int64_t)dg_rng_below(&r, (uint64_t)info[w].numel);
            double fd[2];
            const double hs[2] = {2e-3, 1e-3};
            for (int s = 0; s < 2; s++) {
                float orig = p[i], lp, lm;
                p[i] = orig + (float)hs[s];
                ck_assert_int_eq(dg_model_set_params(m, p), 0);
                ck_assert_int_eq(dg_model_forward(m, tok, tgt, true, seed, &lp), 0);
                p[i] = orig - (float)hs[s];
                ck_assert_int_eq(dg_model_set_params(m, p), 0);
                ck_assert_int_eq(dg_model_forward(m, tok, tgt, true, seed, &lm), 0);
                p[i] = orig;
                fd[s] = ((double)lp - lm) / (2 * hs[s]);
            }
            double tol = 2e-3 + 2e-2 * fabs(fd[1]);
            if (fabs(fd[0] - fd[1]) > tol) { kinks++; continue; }
            checked++;
            if (fabs(g[i] - fd[1]) > tol) {
                bad++;
                fprintf(stderr, "  %s[%lld]: analytic %.6g numeric %.6g\n", info[w].name,
                        (long long)(i - info[w].offset), g[i], fd[1]);
            }
        }
    }
    fprintf(stderr, "gradcheck recompute pos=%d norm=%d chunk=%d p=%.2f: %d checked, %d kinks, "
            "%d bad\n", c.positional, c.norm, chunk, c.dropout, checked, kinks, bad);
    ck_assert_int_ge(checked, 40);
    ck_assert_int_eq(bad, 0);
    free(g); free(p); free(tok); free(tgt);
    dg_model_free(m);
    dg_backend_close(be);
}

START_TEST(grad_recompute_rope_plain) {
    gradcheck_recompute(small_cfg(DG_POS_ROPE, DG_NORM_PLAIN, 2), 2, 6, 0);
}
END_TEST
START_TEST(grad_recompute_pope_affine) {
    gradcheck_recompute(small_cfg(DG_POS_POPE, DG_NORM_AFFINE, 2), 2, 6, 0);
}
END_TEST
START_TEST(grad_recompute_alibi_chunked_dropout) {
    dg_model_config c = small_cfg(DG_POS_ALIBI, DG_NORM_AFFINE, 2);
    c.dropout = 0.25f;
    gradcheck_recompute(c, 2, 7, 3);
}
END_TEST
START_TEST(grad_recompute_rope_chunked_dropout) {
    dg_model_config c = small_cfg(DG_POS_ROPE, DG_NORM_AFFINE, 3);
    c.dropout = 0.25f;
    gradcheck_recompute(c, 2, 7, 3);
}
END_TEST

// ------------------------------------------------------------------------------------------
// the plan's bytes

/* dg_model_train_bytes is what dg_model_alloc_train takes (ref buffers are dg_malloc'd, so
 * dg_mem_in_use sees them); the rest of the difference is the gradient buffer and a few small
 * host arrays. */
START_TEST(train_bytes_match_allocation) {
    dg_model_config cs[3] = {mid_cfg(DG_POS_ALIBI, DG_NORM_AFFINE, 4),
                             mid_cfg(DG_POS_POPE, DG_NORM_PLAIN, 4),
                             mid_cfg(DG_POS_ROPE, DG_NORM_AFFINE, 1)};
    for (int i = 0; i < 3; i++) {
        for (int chunk = 0; chunk <= 5; chunk += 5) {
            int B = 3, T = 17;
            dg_backend_t *be = open_be("ref");
            dg_model_t *m;
            ck_assert_int_eq(dg_model_create(be, &cs[i], &m), 0);
            size_t before = dg_mem_in_use();
            ck_assert_int_eq(dg_model_alloc_train(m, B, T, chunk), 0);
            size_t took = dg_mem_in_use() - before;
            size_t plan = dg_model_train_bytes(&cs[i], B, T, chunk);
            size_t fixed = (size_t)dg_model_n_params(&cs[i]) * 4 + (size_t)B * T * 4;
            fprintf(stderr, "pos=%d chunk=%d: plan %zu bytes, allocation %zu (%zu beyond plan, "
                    "grads and losses)\n", cs[i].positional, chunk, plan, took, took - plan);
            ck_assert(plan > 0);
            ck_assert(took >= plan + fixed);
            ck_assert(took <= plan + fixed + 16384);    /* structs, views, pos0 */
            dg_model_free(m);
            dg_backend_close(be);
        }
    }
    dg_model_config bad = cs[0];
    bad.n_head = 3;
    ck_assert(dg_model_train_bytes(&bad, 2, 8, 0) == 0);
    ck_assert(dg_model_train_bytes(&cs[0], 0, 8, 0) == 0);
}
END_TEST

START_TEST(paper_fits_budget) {
    dg_model_config c = paper_cfg();
    size_t b = dg_model_train_bytes(&c, 32, 512, 0);
    /* the big tensors are (B*T, H*N) f32 = 2 GiB each; the plan keeps four of them */
    size_t big = (size_t)32 * 512 * c.mlp_mult * c.n_embd * 4;
    fprintf(stderr, "paper B32 T512: activations + gradient scratch %.3f GiB (%zu bytes)\n",
            b / GIB, b);
    ck_assert(b >= 4 * big);
    ck_assert(b <= (size_t)(8.5 * GIB));
    /* chunked training adds the carried states of chunks 1.. (B, n_chunks - 1, H, Nq, D) and
     * two (H, Nq, D) state gradients: 1 GiB + 64 MiB for two chunks here */
    size_t bc = dg_model_train_bytes(&c, 32, 512, 256);
    size_t st = (size_t)c.mlp_mult * c.n_embd * c.n_embd * 4;     /* H * N * D floats */
    fprintf(stderr, "paper B32 T512 chunk 256: %.3f GiB\n", bc / GIB);
    ck_assert(bc == b + 32 * 1 * st + 2 * st);
    dg_model_config base;
    dg_model_config_default(&base);     /* base.json: L4 D256 H4 mult4 alibi, V 69 */
    base.n_layer = 4;
    base.vocab_size = 69;
    size_t bb = dg_model_train_bytes(&base, 24, 512, 0);
    fprintf(stderr, "base B24 T512: %.3f GiB (%zu bytes), all layers stored\n", bb / GIB, bb);
    ck_assert(bb > 0 && bb < (size_t)(1.5 * GIB));
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("model_memory");
    TCase *e = tcase_create("recompute");
    tcase_set_timeout(e, 300);
    tcase_add_test(e, recompute_equals_store_all);
    tcase_add_test(e, recompute_one_layer);
    tcase_add_test(e, grad_recompute_rope_plain);
    tcase_add_test(e, grad_recompute_pope_affine);
    tcase_add_test(e, grad_recompute_alibi_chunked_dropout);
    tcase_add_test(e, grad_recompute_rope_chunked_dropout);
    suite_add_tcase(s, e);
    TCase *b = tcase_create("bytes");
    tcase_add_test(b, train_bytes_match_allocation);
    tcase_add_test(b, paper_fits_budget);
    suite_add_tcase(s, b);
    return s;
}

DG_TEST_MAIN(suite)
