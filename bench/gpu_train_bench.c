/* bench/gpu_train_bench.c -- times the Dragon model on one backend (default "cuda") through the
 * public engine API: training steps (forward + backward + AdamW) for the paper config (B32 T512)
 * and the base config (B24 T512), and cached decode tokens/s for 1 and 64 sessions.
 *
 *   gpu_train_bench [--backend cuda] [--rows paper,base,decode1,decode64] [--steps 10]
 *                   [--warmup 3] [--decode-tokens 100]
 *
 * Timing: warm-up steps excluded, dg_sync before reading the clock, one wall-clock interval over
 * all timed steps (the median of per-step times is printed too). Data: synthetic uniform byte
 * tokens (speed does not depend on the data). Prints one line per row and a Markdown table.
 * Not here: the PyTorch peer (bench/peers/gpu_peer.py), correctness (tests/gpu).
 * Thread affinity: single thread. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char row[48]; double tok_s, ms; char extra[128]; } result;
static result RES[16];
static int NRES;

static void paper_config(dg_model_config *c) {
    dg_model_config_default(c);
    c->n_layer = 6; c->n_embd = 256; c->n_head = 4; c->mlp_mult = 128; c->vocab_size = 259;
    c->dropout = 0.1f; c->positional = DG_POS_ROPE; c->rope_theta = 65536.0f;
    c->norm = DG_NORM_PLAIN; c->init = DG_INIT_NORMAL; c->init_std = 0.02f;
}
static void base_config(dg_model_config *c) {
    dg_model_config_default(c);
    c->n_layer = 4; c->n_embd = 256; c->n_head = 4; c->mlp_mult = 4; c->vocab_size = 69;
    c->dropout = 0.1f; c->positional = DG_POS_ALIBI; c->norm = DG_NORM_AFFINE;
    c->init = DG_INIT_BURN_DRAGON;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define CK(x) do { int rc_ = (x); if (rc_) { fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, \
    __LINE__, #x, dg_strerror(rc_)); return rc_; } } while (0)

static int bench_train(const char *backend, const char *row, const dg_model_config *cfg, int B,
                       int T, int steps, int warmup) {
    dg_backend_t *be = NULL;
    dg_backend_params bp = {0};
    CK(dg_backend_open(backend, &bp, &be));
    dg_model_t *m = NULL;
    CK(dg_model_create(be, cfg, &m));
    CK(dg_model_init_params(m, 1337));
    CK(dg_model_alloc_train(m, B, T, 0));
    int64_t np = dg_model_n_params(cfg);
    dg_buf_t *mb = NULL, *vb = NULL;
    CK(dg_buf_alloc(be, (size_t)np * 4, &mb));
    CK(dg_buf_alloc(be, (size_t)np * 4, &vb));
    CK(dg_fill(be, dg_t1(mb, 0, np), 0));
    CK(dg_fill(be, dg_t1(vb, 0, np), 0));
    int32_t *x = dg_malloc((size_t)B * T * 4), *y = dg_malloc((size_t)B * T * 4);
    dg_rng r;
    dg_rng_seed(&r, 7);
    double *dt = dg_malloc((size_t)(steps + warmup) * sizeof(double));
    float loss = 0;
    double t_start = 0;
    for (int k = 1; k <= warmup + steps; k++) {
        for (int64_t i = 0; i < (int64_t)B * T; i++) {
            x[i] = (int32_t)dg_rng_below(&r, (uint64_t)cfg->vocab_size);
            y[i] = (int32_t)dg_rng_below(&r, (uint64_t)cfg->vocab_size);
        }
        if (k == warmup + 1) { CK(dg_sync(be)); t_start = dg_now(); }
        double t0 = dg_now();
        CK(dg_model_zero_grad(m));
        CK(dg_model_forward(m, x, y, true, (uint64_t)k, &loss));   /* reads the loss: syncs */
        CK(dg_model_backward(m));
        dg_adamw_hp hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1.0f, k};
        CK(dg_adamw(be, dg_model_params(m), dg_model_grads(m), dg_t1(mb, 0, np), dg_t1(vb, 0, np),
                    &hp));
        dg_model_params_changed(m);
        CK(dg_sync(be));
        dt[k - 1] = dg_now() - t0;
        if (k <= warmup) fprintf(stderr, "  %s warm-up step %d: %.1f ms loss %.4f\n", row, k,
                                 1e3 * dt[k - 1], loss);
    }
    double total = dg_now() - t_start;
    qsort(dt + warmup, (size_t)steps, sizeof(double), cmp_d);
    double med = dt[warmup + steps / 2];
    double tok_s = (double)B * T * steps / total;
    /* FLOPs per token (PERF.md §5.2, causal): 3 x (6 Nt D L + nh T (N+D) L + 2 D V) */
    double Nt = (double)cfg->mlp_mult * cfg->n_embd, N = Nt / cfg->n_head;
    double fwd = 6 * Nt * cfg->n_embd * cfg->n_layer +
                 (double)cfg->n_head * T * (N + cfg->n_embd) * cfg->n_layer +
                 2.0 * cfg->n_embd * cfg->vocab_size;
    double tflops = 3 * fwd * tok_s / 1e12;
    printf("%s: B%d T%d %d steps: %.0f tokens/s, %.2f ms/step (median %.2f), %.1f TFLOP/s "
           "(causal model), last loss %.4f\n", row, B, T, steps, tok_s, 1e3 * total / steps,
           1e3 * med, tflops, loss);
    fflush(stdout);
    result *res = &RES[NRES++];
    snprintf(res->row, sizeof res->row, "%s", row);
    res->tok_s = tok_s;
    res->ms = 1e3 * med;
    snprintf(res->extra, sizeof res->extra, "%.1f TFLOP/s causal", tflops);
    dg_free(x); dg_free(y); dg_free(dt);
    dg_buf_free(be, mb); dg_buf_free(be, vb);
    dg_model_free(m);
    dg_backend_close(be);
    return 0;
}

static int bench_decode(const char *backend, const char *row, const dg_model_config *cfg, int S,
                        int ntok) {
    dg_backend_t *be = NULL;
    dg_backend_params bp = {0};
    CK(dg_backend_open(backend, &bp, &be));
    dg_model_t *m = NULL;
    CK(dg_model_create(be, cfg, &m));
    CK(dg_model_init_params(m, 1337));
    dg_infer_t *ix = NULL;
    CK(dg_infer_create(m, S, 64, &ix));
    dg_state_t **st = dg_calloc((size_t)S, sizeof *st);
    int V = cfg->vocab_size;
    float *logits = dg_malloc((size_t)S * V * 4);
    int32_t prompt[16], *cur = dg_malloc((size_t)S * 4);
    dg_rng r;
    dg_rng_seed(&r, 11);
    for (int s = 0; s < S; s++) {
        CK(dg_state_create(m, &st[s]));
        for (int i = 0; i < 16; i++) prompt[i] = (int32_t)dg_rng_below(&r, (uint64_t)V);
        CK(dg_infer_prefill(ix, st[s], prompt, 16, logits));
        cur[s] = prompt[15];
    }
    double *dt = dg_malloc((size_t)ntok * sizeof(double));
    for (int w = 0; w < 3; w++) CK(dg_infer_step(ix, S, st, cur, logits));
    double t_start = dg_now();
    for (int i = 0; i < ntok; i++) {
        double t0 = dg_now();
        CK(dg_infer_step(ix, S, st, cur, logits));   /* logits to the host: synchronous */
        for (int s = 0; s < S; s++) {
            const float *l = logits + (size_t)s * V;
            int best = 0;
            for (int j = 1; j < V; j++) if (l[j] > l[best]) best = j;
            cur[s] = best;
        }
        dt[i] = dg_now() - t0;
    }
    double total = dg_now() - t_start;
    qsort(dt, (size_t)ntok, sizeof(double), cmp_d);
    double tok_s = (double)S * ntok / total;
    printf("%s: %d session(s), %d steps: %.0f tokens/s aggregate, %.3f ms/step (median %.3f), "
           "state %.0f MiB/session, %lld of %d steps through a recorded graph\n", row, S, ntok,
           tok_s, 1e3 * total / ntok, 1e3 * dt[ntok / 2], dg_model_state_bytes(cfg) / 1048576.0,
           (long long)dg_infer_graph_steps(ix), ntok + 3);
    fflush(stdout);
    result *res = &RES[NRES++];
    snprintf(res->row, sizeof res->row, "%s", row);
    res->tok_s = tok_s;
    res->ms = 1e3 * dt[ntok / 2];
    snprintf(res->extra, sizeof res->extra, "%d sessions, state %.0f MiB each", S,
             dg_model_state_bytes(cfg) / 1048576.0);
    for (int s = 0; s < S; s++) dg_state_free(st[s]);
    dg_free(st); dg_free(logits); dg_free(cur); dg_free(dt);
    dg_infer_free(ix);
    dg_model_free(m);
    dg_backend_close(be);
    return 0;
}

int main(int argc, char **argv) {
    const char *backend = "cuda", *rows = "paper,base,decode1,decode64";
    int steps = 10, warmup = 3, ntok = 100;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode-tokens") && i + 1 < argc) ntok = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--backend NAME] [--rows paper,base,decode1,decode64] "
                            "[--steps N] [--warmup N] [--decode-tokens N]\n", argv[0]);
            return 2;
        }
    }
    if (steps < 1 || warmup < 0 || ntok < 1) { fprintf(stderr, "bad counts\n"); return 2; }
    dg_model_config paper, base;
    paper_config(&paper);
    base_config(&base);
    char err[256];
    if (dg_model_config_validate(&paper, err, sizeof err) ||
        dg_model_config_validate(&base, err, sizeof err)) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    int rc = 0;
    char *list = dg_strdup(rows), *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int r1 = 0;
        if (!strcmp(tok, "paper"))
            r1 = bench_train(backend, "paper_train", &paper, 32, 512, steps, warmup);
        else if (!strcmp(tok, "base"))
            r1 = bench_train(backend, "base_train", &base, 24, 512, steps, warmup);
        else if (!strcmp(tok, "decode1"))
            r1 = bench_decode(backend, "paper_decode_s1", &paper, 1, ntok);
        else if (!strcmp(tok, "decode64"))
            r1 = bench_decode(backend, "paper_decode_s64", &paper, 64, ntok);
        else { fprintf(stderr, "unknown row %s\n", tok); r1 = 2; }
        if (r1) { fprintf(stderr, "row %s failed: %s\n", tok, dg_strerror(r1)); rc = 1; }
    }
    dg_free(list);
    printf("\n| row | backend | tokens/s | ms/step (median) | notes |\n|---|---|---|---|---|\n");
    for (int i = 0; i < NRES; i++)
        printf("| %s | %s | %.4g | %.3f | %s |\n", RES[i].row, backend, RES[i].tok_s, RES[i].ms,
               RES[i].extra);
    return rc;
}
