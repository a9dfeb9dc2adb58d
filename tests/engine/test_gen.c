/* tests/engine/test_gen.c -- the continuous-batching scheduler (engine/gen.c) on a small random
 * model on the cpu backend: batched generation equals generating each sequence alone (greedy and
 * sampled), cancellation (explicit, by flag, while queued, while prefilling) stops within one
 * unit, session continuation equals one-shot generation on the concatenation, a forked state
 * continues exactly as the original, stop rules (EOS, stop sequences, length), queue-full. */
#include "check_util.h"

#include "engine/gen.h"

// ------------------------------------------------------------------------------------------
// helpers

#define MAXR 16
#define MAXT 512

typedef struct {
    int32_t      toks[MAXR][MAXT];
    int          n[MAXR];
    int          done[MAXR];
    dg_gen_event last[MAXR];      /* the DONE event */
    int          order_err;       /* a token arrived after DONE or out of index order */
} sink;

static void on_ev(const dg_gen_event *ev, void *ud) {
    sink *k = ud;
    int r = (int)(intptr_t)ev->cookie;
    ck_assert(r >= 0 && r < MAXR);
    if (ev->kind == DG_GEN_EV_TOKEN) {
        if (k->done[r] || ev->index != k->n[r]) k->order_err++;
        if (k->n[r] < MAXT) k->toks[r][k->n[r]] = ev->token;
        k->n[r]++;
    } else {
        k->done[r]++;
        k->last[r] = *ev;
    }
}

static dg_backend_t *be_g;

static dg_model_t *make_model(uint64_t seed) {
    dg_model_config c;
    dg_model_config_default(&c);
    c.n_layer = 2;
    c.n_embd = 16;
    c.n_head = 2;
    c.mlp_mult = 2;
    c.vocab_size = 23;
    c.dropout = 0;
    c.positional = DG_POS_ROPE;
    c.rope_theta = 100.0f;
    if (!be_g) ck_assert_int_eq(dg_backend_open("cpu", NULL, &be_g), 0);
    dg_model_t *m;
    ck_assert_int_eq(dg_model_create(be_g, &c, &m), 0);
    ck_assert_int_eq(dg_model_init_params(m, seed), 0);
    /* scale up so logits are far from uniform: greedy ties (which rounding could flip) vanish */
    int64_t n = dg_model_n_params(&c);
    float *p = malloc((size_t)n * 4);
    dg_model_get_params(m, p);
    for (int64_t i = 0; i < n; i++) p[i] *= 6.0f;
    dg_model_set_params(m, p);
    free(p);
    return m;
}

static void rand_tokens(int32_t *t, int n, int V, uint64_t seed) {
    dg_rng r;
    dg_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)dg_rng_below(&r, (uint64_t)V);
}

static dg_gen_request req(dg_state_t *st, const int32_t *toks, int n, int64_t max_tokens,
                          float temp, uint64_t seed, int cookie) {
    dg_gen_request r;
    memset(&r, 0, sizeof r);
    r.state = st;
    r.tokens = toks;
    r.n_tokens = n;
    dg_sample_params_default(&r.sample);
    r.sample.temperature = temp;
    r.sample.top_k = temp > 0 ? 10 : 0;
    r.sample.seed = seed;
    r.max_tokens = max_tokens;
    r.eos = -1;
    r.cookie = (void *)(intptr_t)cookie;
    return r;
}

static int run_all(dg_gen_t *g) {
    int units = 0;
    while (dg_gen_step(g)) units++;
    ck_assert(dg_gen_idle(g));
    return units;
}

static dg_gen_t *make_gen(dg_model_t *m, int max_batch, int max_waiting, int chunk, sink *k) {
    dg_gen_config c = {max_batch, max_waiting, chunk};
    dg_gen_t *g;
    ck_assert_int_eq(dg_gen_create(m, &c, on_ev, k, &g), 0);
    return g;
}

// ------------------------------------------------------------------------------------------
// batching

static void batched_vs_alone(float temp) {
    dg_model_t *m = make_model(3);
    const int R = 6;
    int32_t prompts[6][40];
    int plen[6], maxt[6];
    for (int r = 0; r < R; r++) {
        plen[r] = 1 + 7 * r;                       /* ragged prompts: positions differ */
        maxt[r] = 5 + 9 * (r % 3);                 /* ragged lengths: sequences leave early */
        rand_tokens(prompts[r], plen[r], 23, 100 + (uint64_t)r);
    }
    static sink batch, alone;
    memset(&batch, 0, sizeof batch);
    memset(&alone, 0, sizeof alone);
    dg_state_t *sb[6], *sa[6];
    dg_gen_t *g = make_gen(m, 4, 16, 8, &batch);   /* max_batch 4 < R: some wait for a slot */
    for (int r = 0; r < R; r++) {
        ck_assert_int_eq(dg_state_create(m, &sb[r]), 0);
        dg_gen_request q = req(sb[r], prompts[r], plen[r], maxt[r], temp, 7 + (uint64_t)r, r);
        ck_assert_int_eq(dg_gen_submit(g, &q, NULL), 0);
    }
    int max_running = 0;
    while (dg_gen_step(g))
        if (dg_gen_n_running(g) > max_running) max_running = dg_gen_n_running(g);
    ck_assert(max_running >= 3 && max_running <= 4);      /* never above max_batch */
    int64_t steps;
    dg_gen_stats(g, &steps, NULL, NULL);
    dg_gen_free(g);
    for (int r = 0; r < R; r++) {
        dg_gen_t *g1 = make_gen(m, 1, 1, 64, &alone);
        ck_assert_int_eq(dg_state_create(m, &sa[r]), 0);
        dg_gen_request q = req(sa[r], prompts[r], plen[r], maxt[r], temp, 7 + (uint64_t)r, r);
        ck_assert_int_eq(dg_gen_submit(g1, &q, NULL), 0);
        run_all(g1);
        dg_gen_free(g1);
    }
    int total = 0;
    for (int r = 0; r < R; r++) {
        ck_assert_int_eq(batch.done[r], 1);
        ck_assert_int_eq(alone.done[r], 1);
        ck_assert_int_eq(batch.n[r], maxt[r]);
        ck_assert_int_eq(alone.n[r], maxt[r]);
        ck_assert_int_eq(batch.last[r].stop, DG_GEN_STOP_LENGTH);
        ck_assert_int_eq(batch.last[r].n_fed, plen[r]);
        ck_assert_int_eq(batch.last[r].last_token, batch.toks[r][maxt[r] - 1]);
        for (int i = 0; i < maxt[r]; i++) ck_assert_int_eq(batch.toks[r][i], alone.toks[r][i]);
        /* the unfed-tail rule: prompt + all generated but the last are in the state */
        ck_assert_int_eq(dg_state_pos(sb[r]), plen[r] + maxt[r] - 1);
        total += maxt[r];
    }
    ck_assert_int_eq(batch.order_err, 0);
    /* batching really happened: fewer decode steps than tokens generated after the first */
    ck_assert(steps < total - R);
    fprintf(stderr, "batched_vs_alone T=%.1f: %d tokens in %lld decode steps\n", temp, total,
            (long long)steps);
    for (int r = 0; r < R; r++) { dg_state_free(sb[r]); dg_state_free(sa[r]); }
    dg_model_free(m);
}

START_TEST(batched_equals_alone_greedy) { batched_vs_alone(0.0f); }
END_TEST
START_TEST(batched_equals_alone_sampled) { batched_vs_alone(0.9f); }
END_TEST

// ------------------------------------------------------------------------------------------
// cancellation

START_TEST(cancel_within_one_step) {
    dg_model_t *m = make_model(5);
    static sink k;
    memset(&k, 0, sizeof k);
    dg_gen_t *g = make_gen(m, 2, 4, 4, &k);
    int32_t p[3] = {1, 2, 3}, longp[40];
    rand_tokens(longp, 40, 23, 9);
    dg_state_t *s[4];
    for (int i = 0; i < 4; i++) ck_assert_int_eq(dg_state_create(m, &s[i]), 0);
    atomic_int flag1 = 0, flag3 = 0;
    dg_gen_handle h0, h2;
    dg_gen_request q0 = req(s[0], p, 3, 1000, 0, 0, 0);
    dg_gen_request q1 = req(s[1], p, 3, 1000, 0, 0, 1);
    q1.cancel = &flag1;
    ck_assert_int_eq(dg_gen_submit(g, &q0, &h0), 0);
    ck_assert_int_eq(dg_gen_submit(g, &q1, NULL), 0);
    for (int i = 0; i < 8; i++) ck_assert_int_eq(dg_gen_step(g), 1);
    ck_assert_int_eq(dg_gen_n_running(g), 2);
    /* explicit cancel: DONE comes from inside the call, no further tokens */
    int n0 = k.n[0];
    ck_assert_int_eq(dg_gen_cancel(g, h0), 0);
    ck_assert_int_eq(k.done[0], 1);
    ck_assert_int_eq(k.last[0].stop, DG_GEN_STOP_CANCELLED);
    ck_assert_int_eq(k.last[0].n_generated, n0);
    ck_assert_int_eq(dg_gen_cancel(g, h0), DG_ENOTFOUND);
    /* flag: seen before the next unit */
    int n1 = k.n[1];
    atomic_store(&flag1, 1);
    dg_gen_step(g);
    ck_assert_int_eq(k.done[1], 1);
    ck_assert_int_eq(k.n[1], n1);
    ck_assert_int_eq(k.last[1].stop, DG_GEN_STOP_CANCELLED);
    ck_assert_int_eq(k.n[0], n0);
    ck_assert(dg_gen_idle(g));
    /* while prefilling (chunk 4 of a 40-token prompt) */
    dg_gen_request q2 = req(s[2], longp, 40, 10, 0, 0, 2);
    ck_assert_int_eq(dg_gen_submit(g, &q2, &h2), 0);
    dg_gen_request q3 = req(s[3], p, 3, 10, 0, 0, 3);
    q3.cancel = &flag3;
    ck_assert_int_eq(dg_gen_submit(g, &q3, NULL), 0);
    ck_assert_int_eq(dg_gen_step(g), 1);
    ck_assert_int_eq(dg_gen_n_waiting(g), 2);
    atomic_store(&flag3, 1);                      /* q3 still queued */
    ck_assert_int_eq(dg_gen_step(g), 1);
    ck_assert_int_eq(k.done[3], 1);
    ck_assert_int_eq(k.last[3].n_fed, 0);
    ck_assert_int_eq(dg_state_pos(s[3]), 0);
    ck_assert_int_eq(dg_gen_cancel(g, h2), 0);
    ck_assert_int_eq(k.done[2], 1);
    ck_assert_int_eq(k.last[2].n_fed, 8);         /* two chunks went in, then it stopped */
    ck_assert_int_eq(k.last[2].n_generated, 0);
    ck_assert_int_eq(k.last[2].last_token, -1);
    ck_assert_int_eq(dg_state_pos(s[2]), 8);
    ck_assert_int_eq(dg_gen_step(g), 0);
    ck_assert_int_eq(k.order_err, 0);
    dg_gen_free(g);
    for (int i = 0; i < 4; i++) dg_state_free(s[i]);
    dg_model_free(m);
}
END_TEST

// ------------------------------------------------------------------------------------------
// sessions: continuation and fork

/* Generates on st from toks, returns the generated tokens in out (count). */
static int gen_on(dg_model_t *m, dg_state_t *st, const int32_t *toks, int n, int max_tokens,
                  float temp, uint64_t seed, int chunk, int32_t *out) {
    static sink k;
    memset(&k, 0, sizeof k);
    dg_gen_t *g = make_gen(m, 2, 2, chunk, &k);
    dg_gen_request q = req(st, toks, n, max_tokens, temp, seed, 0);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), 0);
    run_all(g);
    dg_gen_free(g);
    ck_assert_int_eq(k.done[0], 1);
    ck_assert_int_eq(k.last[0].n_fed, n);
    memcpy(out, k.toks[0], (size_t)k.n[0] * sizeof *out);
    return k.n[0];
}

static void continuation(float temp) {
    dg_model_t *m = make_model(11);
    int32_t A[20], B[9], g1[12], g2[15], full[64], one[15];
    rand_tokens(A, 20, 23, 1);
    rand_tokens(B, 9, 23, 2);
    dg_state_t *s, *o;
    ck_assert_int_eq(dg_state_create(m, &s), 0);
    ck_assert_int_eq(dg_state_create(m, &o), 0);
    /* session: create = prefill A except its last token (kept unfed) */
    int n = gen_on(m, s, A, 19, 0, temp, 0, 8, g1);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(dg_state_pos(s), 19);
    /* generate 12 from the unfed tail [A19] */
    n = gen_on(m, s, A + 19, 1, 12, temp, 42, 8, g1);
    ck_assert_int_eq(n, 12);
    /* append B: feed [last generated] + B, generate 15 with seed 43 */
    int32_t tail[10];
    tail[0] = g1[11];
    memcpy(tail + 1, B, sizeof B);
    n = gen_on(m, s, tail, 10, 15, temp, 43, 8, g2);
    ck_assert_int_eq(n, 15);
    /* one shot on A + g1 + B with the same seed */
    int L = 0;
    memcpy(full + L, A, sizeof A); L += 20;
    memcpy(full + L, g1, sizeof g1); L += 12;
    memcpy(full + L, B, sizeof B); L += 9;
    n = gen_on(m, o, full, L, 15, temp, 43, 64, one);
    ck_assert_int_eq(n, 15);
    for (int i = 0; i < 15; i++) ck_assert_int_eq(g2[i], one[i]);
    ck_assert_int_eq(dg_state_pos(s), dg_state_pos(o));
    dg_state_free(s);
    dg_state_free(o);
    dg_model_free(m);
}

START_TEST(continuation_greedy) { continuation(0.0f); }
END_TEST
START_TEST(continuation_sampled) { continuation(1.0f); }
END_TEST

START_TEST(fork_continues_like_original) {
    dg_model_t *m = make_model(13);
    int32_t A[17], g0[10], ga[20], gb[20];
    rand_tokens(A, 17, 23, 4);
    dg_state_t *s, *f;
    ck_assert_int_eq(dg_state_create(m, &s), 0);
    ck_assert_int_eq(dg_state_create(m, &f), 0);
    int n = gen_on(m, s, A, 17, 10, 0.8f, 5, 8, g0);
    ck_assert_int_eq(n, 10);
    ck_assert_int_eq(dg_state_copy(f, s), 0);
    ck_assert_int_eq(dg_state_pos(f), dg_state_pos(s));
    int32_t tail[1] = {g0[9]};
    ck_assert_int_eq(gen_on(m, s, tail, 1, 20, 0.8f, 6, 8, ga), 20);
    ck_assert_int_eq(gen_on(m, f, tail, 1, 20, 0.8f, 6, 8, gb), 20);
    for (int i = 0; i < 20; i++) ck_assert_int_eq(ga[i], gb[i]);
    /* exact: the two states are bit-identical afterwards */
    size_t nf = dg_state_bytes(s) / 4;
    float *x = malloc(nf * 4), *y = malloc(nf * 4);
    dg_state_get(s, x, NULL);
    dg_state_get(f, y, NULL);
    ck_assert(memcmp(x, y, nf * 4) == 0);
    free(x);
    free(y);
    dg_state_free(s);
    dg_state_free(f);
    dg_model_free(m);
}
END_TEST

// ------------------------------------------------------------------------------------------
// stop rules, queue, bad requests

START_TEST(stop_rules) {
    dg_model_t *m = make_model(17);
    int32_t p[5] = {3, 1, 4, 1, 5}, ref[30];
    dg_state_t *s;
    ck_assert_int_eq(dg_state_create(m, &s), 0);
    ck_assert_int_eq(gen_on(m, s, p, 5, 30, 0, 0, 8, ref), 30);
    /* EOS = the token greedy produces at index 6 (first occurrence) */
    int i6 = 6;
    while (i6 > 0) {
        bool earlier = false;
        for (int j = 0; j < i6; j++) earlier |= ref[j] == ref[i6];
        if (!earlier) break;
        i6--;
    }
    static sink k;
    memset(&k, 0, sizeof k);
    dg_gen_t *g = make_gen(m, 4, 4, 8, &k);
    dg_state_t *s1, *s2;
    ck_assert_int_eq(dg_state_create(m, &s1), 0);
    ck_assert_int_eq(dg_state_create(m, &s2), 0);
    dg_gen_request q1 = req(s1, p, 5, 30, 0, 0, 1);
    q1.eos = ref[i6];
    dg_gen_request q2 = req(s2, p, 5, 30, 0, 0, 2);
    q2.n_stops = 2;
    int32_t never[2] = {22, 22}, st[2] = {ref[9], ref[10]};
    q2.stops[0] = never; q2.stop_lens[0] = 2;
    q2.stops[1] = st;    q2.stop_lens[1] = 2;
    ck_assert_int_eq(dg_gen_submit(g, &q1, NULL), 0);
    ck_assert_int_eq(dg_gen_submit(g, &q2, NULL), 0);
    run_all(g);
    ck_assert_int_eq(k.last[1].stop, DG_GEN_STOP_EOS);
    ck_assert_int_eq(k.n[1], i6 + 1);
    ck_assert_int_eq(k.last[1].last_token, ref[i6]);
    ck_assert_int_eq(k.last[2].stop, DG_GEN_STOP_SEQUENCE);
    /* the first place where ref[9], ref[10] occur as a pair */
    int at = 1;
    while (!(ref[at - 1] == ref[9] && ref[at] == ref[10])) at++;
    ck_assert_int_eq(k.n[2], at + 1);
    ck_assert_int_eq(k.last[2].stop_index, 1);
    ck_assert(k.last[2].ttft_s > 0);
    ck_assert(k.last[2].decode_tok_s > 0);
    ck_assert_str_eq(dg_gen_stop_name(DG_GEN_STOP_SEQUENCE), "stop_sequence");
    dg_gen_free(g);
    dg_state_free(s);
    dg_state_free(s1);
    dg_state_free(s2);
    dg_model_free(m);
}
END_TEST

START_TEST(queue_full_and_bad_requests) {
    dg_model_t *m = make_model(19);
    static sink k;
    memset(&k, 0, sizeof k);
    dg_gen_t *g = make_gen(m, 1, 2, 8, &k);
    dg_state_t *s[4];
    for (int i = 0; i < 4; i++) ck_assert_int_eq(dg_state_create(m, &s[i]), 0);
    int32_t p[2] = {1, 2}, bad[2] = {1, 23};
    dg_gen_request q = req(s[0], p, 2, 5, 0, 0, 0);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), 0);
    q = req(s[0], p, 2, 5, 0, 0, 1);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), DG_EINVAL);     /* state in use */
    q = req(s[1], p, 2, 5, 0, 0, 1);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), 0);
    q = req(s[2], p, 2, 5, 0, 0, 2);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), DG_EBUSY);      /* 2 waiting already */
    q = req(s[2], bad, 2, 5, 0, 0, 2);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), DG_EINVAL);     /* id out of range */
    q = req(s[2], p, 0, 5, 0, 0, 2);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), DG_EINVAL);     /* nothing to start from */
    q = req(s[2], p, 2, 5, 3.0f, 0, 2);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), DG_EINVAL);     /* temperature */
    /* once the first one decodes, a slot in the wait queue opens */
    dg_gen_step(g);
    ck_assert_int_eq(dg_gen_n_running(g), 1);
    q = req(s[2], p, 2, 5, 0, 0, 2);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), 0);
    run_all(g);
    for (int r = 0; r < 3; r++) ck_assert_int_eq(k.n[r], 5);
    /* free with requests in flight ends them with DONE (cancelled) */
    q = req(s[3], p, 2, 5, 0, 0, 3);
    ck_assert_int_eq(dg_gen_submit(g, &q, NULL), 0);
    dg_gen_free(g);
    ck_assert_int_eq(k.done[3], 1);
    ck_assert_int_eq(k.last[3].stop, DG_GEN_STOP_CANCELLED);
    for (int i = 0; i < 4; i++) dg_state_free(s[i]);
    dg_model_free(m);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("gen");
    TCase *t = tcase_create("gen");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, batched_equals_alone_greedy);
    tcase_add_test(t, batched_equals_alone_sampled);
    tcase_add_test(t, cancel_within_one_step);
    tcase_add_test(t, continuation_greedy);
    tcase_add_test(t, continuation_sampled);
    tcase_add_test(t, fork_continues_like_original);
    tcase_add_test(t, stop_rules);
    tcase_add_test(t, queue_full_and_bad_requests);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
