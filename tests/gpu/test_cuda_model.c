/* tests/gpu/test_cuda_model.c -- the whole Dragon model on the "cuda" backend against the "cpu"
 * fp32 run on the same data: the loss after 10 AdamW steps must agree within 1e-2 relative, and
 * cached greedy decoding (prefill + batched steps) must give the same tokens.
 *
 * The corpus is synthetic and deterministic (words of a fixed random lexicon), so the test needs
 * no data files. Without a usable GPU (dg_backend_open("cuda") fails) the tests print SKIP and
 * pass. Not here: op-level checks (test_cuda_ops.c). Thread affinity: one thread per process. */
#include "check_util.h"
#include "model.h"

#include <math.h>

#define VOCAB  96
#define STEPS  10
#define BATCH  8
#define BLOCK  128

/* DG_GPU_TEST_AS=cpu runs the GPU side on another backend: a dry run of the test's own logic on
 * a machine without a GPU. */
static const char *gpu_name(void) {
    const char *e = getenv("DG_GPU_TEST_AS");
    return e && *e ? e : "cuda";
}

static bool have_cuda(const char *test) {
    dg_backend_t *be = NULL;
    dg_backend_params p = {0};
    if (dg_backend_open(gpu_name(), &p, &be) != 0) {
        printf("SKIP %s: the cuda backend could not be opened (no GPU or not compiled in: %s)\n",
               test, dg_backend_list());
        return false;
    }
    dg_backend_close(be);
    return true;
}

/* "base" config (language/base.toml: L4 D256 H4 mult4), alibi, affine norm. */
static void base_config(dg_model_config *c, float dropout) {
    dg_model_config_default(c);
    c->n_layer = 4;
    c->vocab_size = VOCAB;
    c->dropout = dropout;
    char err[256];
    ck_assert_msg(dg_model_config_validate(c, err, sizeof err) == 0, "%s", err);
}

/* Words of 2..7 letters from a 40-word lexicon, separated by token 1. */
static int32_t *corpus(int64_t n) {
    dg_rng r;
    dg_rng_seed(&r, 1234);
    int32_t lex[40][8];
    int len[40];
    for (int w = 0; w < 40; w++) {
        len[w] = 2 + (int)dg_rng_below(&r, 6);
        for (int k = 0; k < len[w]; k++) lex[w][k] = 2 + (int32_t)dg_rng_below(&r, VOCAB - 2);
    }
    int32_t *t = dg_malloc((size_t)n * sizeof *t);
    int64_t i = 0;
    while (i < n) {
        int w = (int)dg_rng_below(&r, 40);
        for (int k = 0; k < len[w] && i < n; k++) t[i++] = lex[w][k];
        if (i < n) t[i++] = 1;
    }
    return t;
}

/* A backend and a model on it holding params. */
static void open_model(const char *backend, const dg_model_config *cfg, const float *params,
                       dg_backend_t **be, dg_model_t **m) {
    dg_backend_params bp = {0};
    *be = NULL;
    *m = NULL;
    ck_assert_int_eq(dg_backend_open(backend, &bp, be), 0);
    ck_assert_int_eq(dg_model_create(*be, cfg, m), 0);
    ck_assert_int_eq(dg_model_set_params(*m, params), 0);
}

typedef struct {
    float losses[STEPS];
    float eval_loss;
    float *params;       /* after training, n_params floats */
} train_out;

static void train(const char *backend, const dg_model_config *cfg, const float *p0,
                  const int32_t *tok, train_out *o) {
    dg_backend_t *be;
    dg_model_t *m;
    open_model(backend, cfg, p0, &be, &m);
    ck_assert_int_eq(dg_model_alloc_train(m, BATCH, BLOCK, 0), 0);
    int64_t np = dg_model_n_params(cfg);
    dg_buf_t *mb = NULL, *vb = NULL;
    ck_assert_int_eq(dg_buf_alloc(be, (size_t)np * 4, &mb), 0);
    ck_assert_int_eq(dg_buf_alloc(be, (size_t)np * 4, &vb), 0);
    ck_assert_int_eq(dg_fill(be, dg_t1(mb, 0, np), 0), 0);
    ck_assert_int_eq(dg_fill(be, dg_t1(vb, 0, np), 0), 0);
    int32_t *x = dg_malloc(BATCH * BLOCK * 4), *y = dg_malloc(BATCH * BLOCK * 4);
    double t0 = dg_now();
    for (int k = 1; k <= STEPS; k++) {
        for (int b = 0; b < BATCH; b++) {
            int64_t off = ((int64_t)(k - 1) * BATCH + b) * (BLOCK + 7);
            memcpy(x + b * BLOCK, tok + off, BLOCK * 4);
            memcpy(y + b * BLOCK, tok + off + 1, BLOCK * 4);
        }
        ck_assert_int_eq(dg_model_zero_grad(m), 0);
        ck_assert_int_eq(dg_model_forward(m, x, y, true, 1000 + (uint64_t)k, &o->losses[k - 1]), 0);
        ck_assert_int_eq(dg_model_backward(m), 0);
        dg_adamw_hp hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1.0f, k};
        ck_assert_int_eq(dg_adamw(be, dg_model_params(m), dg_model_grads(m), dg_t1(mb, 0, np),
                                  dg_t1(vb, 0, np), &hp), 0);
        dg_model_params_changed(m);
    }
    /* held-out batch, no dropout */
    for (int b = 0; b < BATCH; b++) {
        int64_t off = 900000 + (int64_t)b * (BLOCK + 3);
        memcpy(x + b * BLOCK, tok + off, BLOCK * 4);
        memcpy(y + b * BLOCK, tok + off + 1, BLOCK * 4);
    }
    ck_assert_int_eq(dg_model_forward(m, x, y, false, 0, &o->eval_loss), 0);
    ck_assert_int_eq(dg_sync(be), 0);
    printf("  %-5s %d steps in %.2f s; losses:", backend, STEPS, dg_now() - t0);
    for (int k = 0; k < STEPS; k++) printf(" %.5f", o->losses[k]);
    printf("; held-out %.6f\n", o->eval_loss);
    o->params = dg_malloc((size_t)np * 4);
    ck_assert_int_eq(dg_model_get_params(m, o->params), 0);
    dg_free(x); dg_free(y);
    dg_buf_free(be, mb); dg_buf_free(be, vb);
    dg_model_free(m);
    dg_backend_close(be);
}

START_TEST(test_train_10_steps) {
    if (!have_cuda("train_10_steps")) return;
    dg_model_config cfg;
    base_config(&cfg, 0.1f);
    int32_t *tok = corpus(1000000);
    /* initial parameters from the host initialiser, identical for both runs */
    dg_backend_t *be = NULL;
    dg_backend_params bp = {0};
    ck_assert_int_eq(dg_backend_open("cpu", &bp, &be), 0);
    dg_model_t *m = NULL;
    ck_assert_int_eq(dg_model_create(be, &cfg, &m), 0);
    ck_assert_int_eq(dg_model_init_params(m, 42), 0);
    float *p0 = dg_malloc((size_t)dg_model_n_params(&cfg) * 4);
    ck_assert_int_eq(dg_model_get_params(m, p0), 0);
    dg_model_free(m);
    dg_backend_close(be);

    train_out c = {0}, g = {0};
    train("cpu", &cfg, p0, tok, &c);
    train(gpu_name(), &cfg, p0, tok, &g);
    for (int k = 0; k < STEPS; k++) {
        double e = fabs(g.losses[k] - c.losses[k]) / fabs(c.losses[k]);
        ck_assert_msg(e <= 1e-2, "step %d loss cuda %g cpu %g (rel %g)", k + 1, g.losses[k],
                      c.losses[k], e);
    }
    double e = fabs(g.eval_loss - c.eval_loss) / fabs(c.eval_loss);
    printf("  loss after %d AdamW steps: cpu %.6f cuda %.6f, rel diff %.2e (tol 1e-2); "
           "first-step loss %.4f -> %.4f\n", STEPS, c.eval_loss, g.eval_loss, e, c.losses[0],
           c.losses[STEPS - 1]);
    ck_assert_msg(e <= 1e-2, "held-out loss cuda %g cpu %g", g.eval_loss, c.eval_loss);
    ck_assert(c.losses[STEPS - 1] < c.losses[0]);   /* it learned something */
    int64_t np = dg_model_n_params(&cfg);
    ck_assert(dg_max_rel_err(g.params, c.params, np) < 5e-2);
    dg_free(c.params); dg_free(g.params); dg_free(p0); dg_free(tok);
}
END_TEST

/* Greedy decode of NSEQ prompts: prefill, then batched steps; tokens out (NSEQ, GEN). */
#define NSEQ 4
#define GEN  48
static void decode(const char *backend, const dg_model_config *cfg, const float *params,
                   const int32_t *tok, int32_t out[NSEQ][GEN], float *margin_min) {
    dg_backend_t *be;
    dg_model_t *m;
    open_model(backend, cfg, params, &be, &m);
    dg_infer_t *ix = NULL;
    ck_assert_int_eq(dg_infer_create(m, NSEQ, 64, &ix), 0);
    dg_state_t *st[NSEQ];
    float *logits = dg_malloc(NSEQ * VOCAB * 4);
    int32_t cur[NSEQ];
    *margin_min = INFINITY;
    for (int s = 0; s < NSEQ; s++) {
        ck_assert_int_eq(dg_state_create(m, &st[s]), 0);
        int n = 9 + 7 * s;   /* ragged prompts */
        ck_assert_int_eq(dg_infer_prefill(ix, st[s], tok + 5000 + 301 * s, n, logits), 0);
        int best = 0;
        for (int j = 1; j < VOCAB; j++) if (logits[j] > logits[best]) best = j;
        cur[s] = best;
    }
    for (int i = 0; i < GEN; i++) {
        for (int s = 0; s < NSEQ; s++) out[s][i] = cur[s];
        ck_assert_int_eq(dg_infer_step(ix, NSEQ, st, cur, logits), 0);
        for (int s = 0; s < NSEQ; s++) {
            const float *l = logits + s * VOCAB;
            int best = 0;
            for (int j = 1; j < VOCAB; j++) if (l[j] > l[best]) best = j;
            float second = -INFINITY;
            for (int j = 0; j < VOCAB; j++) if (j != best && l[j] > second) second = l[j];
            if (l[best] - second < *margin_min) *margin_min = l[best] - second;
            cur[s] = best;
        }
    }
    for (int s = 0; s < NSEQ; s++) dg_state_free(st[s]);
    dg_free(logits);
    dg_infer_free(ix);
    dg_model_free(m);
    dg_backend_close(be);
}

START_TEST(test_decode_greedy) {
    if (!have_cuda("decode_greedy")) return;
    dg_model_config cfg;
    base_config(&cfg, 0.0f);
    int32_t *tok = corpus(1000000);
    /* train a little on the cpu so that the logits have a clear winner, then decode both */
    dg_backend_t *be = NULL;
    dg_backend_params bp = {0};
    ck_assert_int_eq(dg_backend_open("cpu", &bp, &be), 0);
    dg_model_t *m = NULL;
    ck_assert_int_eq(dg_model_create(be, &cfg, &m), 0);
    ck_assert_int_eq(dg_model_init_params(m, 7), 0);
    float *p0 = dg_malloc((size_t)dg_model_n_params(&cfg) * 4);
    ck_assert_int_eq(dg_model_get_params(m, p0), 0);
    dg_model_free(m);
    dg_backend_close(be);
    train_out c = {0};
    train("cpu", &cfg, p0, tok, &c);

    static int32_t tc[NSEQ][GEN], tg[NSEQ][GEN];
    float mc, mg;
    decode("cpu", &cfg, c.params, tok, tc, &mc);
    decode(gpu_name(), &cfg, c.params, tok, tg, &mg);
    int same = 0;
    for (int s = 0; s < NSEQ; s++)
        for (int i = 0; i < GEN; i++) same += tc[s][i] == tg[s][i];
    printf("  greedy decode, %d sequences x %d tokens: %d/%d equal (smallest top-2 logit margin "
           "cpu %.3g, cuda %.3g)\n", NSEQ, GEN, same, NSEQ * GEN, mc, mg);
    for (int s = 0; s < NSEQ; s++) {
        printf("   cpu :"); for (int i = 0; i < 16; i++) printf(" %d", tc[s][i]); printf(" ...\n");
        printf("   cuda:"); for (int i = 0; i < 16; i++) printf(" %d", tg[s][i]); printf(" ...\n");
    }
    ck_assert_int_eq(same, NSEQ * GEN);
    dg_free(c.params); dg_free(p0); dg_free(tok);
}
END_TEST

/* ---- recorded decode steps (graphs) against verb-by-verb steps ---- */

#define GSTEPS 30
#define GMAXT  64

/* 30 steps of NSEQ sequences fed fixed tokens: steps 10..19 run sequences {0, 2} only, and
 * before step 15 a positional verb with another theta rebuilds the backend's frequency table
 * (the recorded graph goes stale and must be recorded again). trace gets every step's logits. */
static void decode_trace(const char *backend, const dg_model_config *cfg, const float *params,
                         const int32_t *tok, bool graphs, float *trace, int64_t *gsteps,
                         int64_t *grecs) {
    dg_backend_t *be;
    dg_model_t *m;
    open_model(backend, cfg, params, &be, &m);
    if (!graphs) setenv("DG_DECODE_GRAPH", "0", 1);
    dg_infer_t *ix = NULL;
    ck_assert_int_eq(dg_infer_create(m, NSEQ, GMAXT, &ix), 0);
    unsetenv("DG_DECODE_GRAPH");
    dg_state_t *st[NSEQ];
    float *logits = dg_malloc(NSEQ * VOCAB * 4);
    for (int s = 0; s < NSEQ; s++) {
        ck_assert_int_eq(dg_state_create(m, &st[s]), 0);
        ck_assert_int_eq(dg_infer_prefill(ix, st[s], tok + 7000 + 211 * s, 5 + 9 * s, logits), 0);
    }
    dg_buf_t *pb = NULL;
    ck_assert_int_eq(dg_buf_alloc(be, 2 * 8 * 4, &pb), 0);
    ck_assert_int_eq(dg_fill(be, dg_t1(pb, 0, 16), 0.5f), 0);
    memset(trace, 0, (size_t)GSTEPS * NSEQ * VOCAB * 4);
    for (int i = 0; i < GSTEPS; i++) {
        if (i == 15) {
            int64_t p0 = 3;
            ck_assert_int_eq(dg_pos_fwd(be, dg_t4(pb, 32, 1, 1, 1, 8), dg_t4(pb, 0, 1, 1, 1, 8), &p0,
                                        DG_POS_ROPE, 7.0f), 0);
        }
        bool two = i >= 10 && i < 20;
        dg_state_t *set[NSEQ];
        int32_t cur[NSEQ];
        int B = 0;
        for (int s = 0; s < NSEQ; s++) {
            if (two && (s & 1)) continue;
            set[B] = st[s];
            cur[B] = tok[9000 + 37 * i + s];
            B++;
        }
        ck_assert_int_eq(dg_infer_step(ix, B, set, cur, logits), 0);
        for (int b = 0, s = 0; s < NSEQ; s++) {
            if (two && (s & 1)) continue;
            memcpy(trace + ((size_t)i * NSEQ + s) * VOCAB, logits + (size_t)b * VOCAB, VOCAB * 4);
            b++;
        }
    }
    *gsteps = dg_infer_graph_steps(ix);
    *grecs = dg_infer_graph_records(ix);
    dg_buf_free(be, pb);
    for (int s = 0; s < NSEQ; s++) dg_state_free(st[s]);
    dg_free(logits);
    dg_infer_free(ix);
    dg_model_free(m);
    dg_backend_close(be);
}

START_TEST(test_decode_graph) {
    if (!have_cuda("decode_graph")) return;
    int32_t *tok = corpus(20000);
    static const dg_pos_mode modes[] = {DG_POS_ROPE, DG_POS_POPE, DG_POS_ALIBI};
    static const char *names[] = {"rope", "pope", "alibi"};
    size_t tn = (size_t)GSTEPS * NSEQ * VOCAB;
    float *eager = dg_malloc(tn * 4), *graph = dg_malloc(tn * 4), *cpu = dg_malloc(tn * 4);
    for (int k = 0; k < 3; k++) {
        dg_model_config cfg;
        base_config(&cfg, 0.0f);
        cfg.positional = modes[k];
        char err[256];
        ck_assert_msg(dg_model_config_validate(&cfg, err, sizeof err) == 0, "%s", err);
        dg_backend_t *be = NULL;
        dg_backend_params bp = {0};
        ck_assert_int_eq(dg_backend_open("cpu", &bp, &be), 0);
        dg_model_t *m = NULL;
        ck_assert_int_eq(dg_model_create(be, &cfg, &m), 0);
        ck_assert_int_eq(dg_model_init_params(m, 11 + k), 0);
        float *p = dg_malloc((size_t)dg_model_n_params(&cfg) * 4);
        ck_assert_int_eq(dg_model_get_params(m, p), 0);
        dg_model_free(m);
        dg_backend_close(be);

        int64_t gs0, gr0, gs1, gr1, gs2, gr2;
        decode_trace("cpu", &cfg, p, tok, true, cpu, &gs2, &gr2);
        decode_trace(gpu_name(), &cfg, p, tok, false, eager, &gs0, &gr0);
        decode_trace(gpu_name(), &cfg, p, tok, true, graph, &gs1, &gr1);
        double worst = 0, worst_cpu = 0, scale = 0;
        size_t bits = 0;
        for (size_t i = 0; i < tn; i++) {
            double d = fabs((double)eager[i] - graph[i]);
            if (d > worst) worst = d;
            double dc = fabs((double)cpu[i] - graph[i]);
            if (dc > worst_cpu) worst_cpu = dc;
            if (fabs(cpu[i]) > scale) scale = fabs(cpu[i]);
            bits += memcmp(&eager[i], &graph[i], 4) == 0;
        }
        printf("  %s: graph steps %lld of %d, %lld recordings (verb by verb: %lld); logits graph vs "
               "verb by verb: max |diff| %.3g, %zu/%zu bit-identical; graph vs cpu max |diff| %.3g "
               "(max |logit| %.3g)\n", names[k], (long long)gs1, GSTEPS, (long long)gr1,
               (long long)gs0, worst, bits, tn, worst_cpu, scale);
        ck_assert_int_eq(gs0, 0);
        ck_assert_int_eq(gs2, 0);
        if (strcmp(gpu_name(), "cpu")) {
            /* steps 1-9, 11-14, 16-19 (15 is stale: verb by verb, then recorded again), 21-29 */
            ck_assert_int_eq(gs1, 26);
            ck_assert_int_eq(gr1, 4);
        }
        ck_assert_msg(worst <= 1e-5 * (scale > 1 ? scale : 1), "graph and verb-by-verb decode differ");
        ck_assert_msg(worst_cpu <= 2e-2 * (scale > 1 ? scale : 1), "gpu decode far from cpu");
        dg_free(p);
    }
    dg_free(eager); dg_free(graph); dg_free(cpu); dg_free(tok);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("cuda_model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_train_10_steps);
    tcase_add_test(tc, test_decode_greedy);
    tcase_add_test(tc, test_decode_graph);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
