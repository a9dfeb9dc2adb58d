/* engine/model.c -- the Dragon (BDH) model as explicit backend verb calls (llm.c style).
 *
 * Forward (MODEL.md §3.1), per layer l with shared weights:
 *   x  = relu(v Wenc_h - thr)          (R, H*N)      R = B*T
 *   q  = pos(x)                        (R, H*Nq)     (q = x for alibi)
 *   a  = attn(q, v)                    (R, H*D)      strictly causal, decay / carried state
 *   an = LN(a)                         rows of D
 *   y  = relu(an_h Wencv_h - thr)      (R, H*N)
 *   z  = dropout(x * y)                (R, H*N)
 *   u  = LN(z Wdec)                    (R, D)
 *   v' = LN(v + u)
 * logits = v_L lm_head (or v_L embed^T when tied); loss = mean CE.
 * The backward pass is hand written and mirrors the forward in reverse; every gradient verb
 * accumulates, so scratch gradient buffers are zeroed before use.
 *
 * Memory: one buffer per storage class (params, grads, activations, gradient scratch), sized
 * once in dg_model_alloc_train. With recompute (large configs), only each layer's input v and
 * the final activations are kept; the backward pass re-runs one layer's forward into shared
 * buffers before differentiating it (not for the top layer, whose activations the forward left
 * there), and q is not kept at all (recomputed from x where y was).
 * The big scratch tensors are reused as their contents die (lay_out_acts says how), so that the
 * paper config at B32 T512 needs four (B*T, H*N) f32 tensors: dg_model_train_bytes.
 * Thread affinity: the thread that owns the backend. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ------------------------------------------------------------------------------------------
// config

void dg_model_config_default(dg_model_config *c) {
    memset(c, 0, sizeof *c);
    c->n_layer = 6;
    c->n_embd = 256;
    c->n_head = 4;
    c->mlp_mult = 4;
    c->vocab_size = 256;
    c->dropout = 0.1f;
    c->positional = DG_POS_ALIBI;
    c->rope_theta = 65536.0f;
    c->norm = DG_NORM_AFFINE;
    c->norm_eps = 1e-5f;
    c->relu_threshold = 0.0f;
    c->init = DG_INIT_BURN_DRAGON;
    c->init_std = 0.02f;
    c->tie_embeddings = false;
}

#define CFG_FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return DG_ECONFIG; } while (0)

int dg_model_config_validate(const dg_model_config *c, char *err, size_t errlen) {
    if (c->n_layer < 1 || c->n_layer > 256) CFG_FAIL("n_layer: must be in [1, 256] (got %d)", c->n_layer);
    if (c->n_embd < 1 || c->n_embd > 65536) CFG_FAIL("n_embd: must be in [1, 65536] (got %d)", c->n_embd);
    if (c->n_head < 1 || c->n_head > DG_MAX_HEADS)
        CFG_FAIL("n_head: must be in [1, %d] (got %d)", DG_MAX_HEADS, c->n_head);
    if (c->mlp_mult < 1) CFG_FAIL("mlp_internal_dim_multiplier: must be >= 1 (got %d)", c->mlp_mult);
    int64_t ntot = (int64_t)c->mlp_mult * c->n_embd;
    if (ntot % c->n_head)
        CFG_FAIL("n_head: must divide mlp_internal_dim_multiplier*n_embd (%lld)", (long long)ntot);
    int64_t N = ntot / c->n_head;
    if (c->positional == DG_POS_ROPE && N % 2)
        CFG_FAIL("positional: rope needs an even latent size per head (N = %lld)", (long long)N);
    if (c->vocab_size < 2 || c->vocab_size > (1 << 24))
        CFG_FAIL("vocab_size: must be in [2, 16777216] (got %d)", c->vocab_size);
    if (!(c->dropout >= 0 && c->dropout < 1)) CFG_FAIL("dropout: must be in [0, 1) (got %g)", c->dropout);
    if (c->positional < DG_POS_ALIBI || c->positional > DG_POS_POPE)
        CFG_FAIL("positional: must be alibi, rope or pope");
    if (c->positional != DG_POS_ALIBI && !(c->rope_theta > 1))
        CFG_FAIL("rope_theta: must be > 1 (got %g)", c->rope_theta);
    if (c->n_alibi_slopes && c->n_alibi_slopes != c->n_head)
        CFG_FAIL("alibi_slopes: must have n_head (%d) entries (got %d)", c->n_head, c->n_alibi_slopes);
    for (int h = 0; h < c->n_alibi_slopes; h++)
        if (!(c->alibi_slopes[h] >= 0) || !isfinite(c->alibi_slopes[h]))
            CFG_FAIL("alibi_slopes: entries must be finite and >= 0 (entry %d is %g)", h, c->alibi_slopes[h]);
    if (c->norm != DG_NORM_AFFINE && c->norm != DG_NORM_PLAIN)
        CFG_FAIL("norm: must be layer_norm_affine or layer_norm");
    if (!(c->norm_eps > 0)) CFG_FAIL("norm_eps: must be > 0 (got %g)", c->norm_eps);
    if (!(c->relu_threshold >= 0) || !isfinite(c->relu_threshold))
        CFG_FAIL("relu_threshold: must be finite and >= 0 (got %g)", c->relu_threshold);
    if (c->init != DG_INIT_BURN_DRAGON && c->init != DG_INIT_NORMAL)
        CFG_FAIL("init: must be burn_dragon or normal_0.02");
    if (!(c->init_std > 0)) CFG_FAIL("init_std: must be > 0 (got %g)", c->init_std);
    return 0;
}

int64_t dg_model_latent(const dg_model_config *c) {
    return (int64_t)c->mlp_mult * c->n_embd / c->n_head;
}
int64_t dg_model_qdim(const dg_model_config *c) {
    return dg_model_latent(c) * (c->positional == DG_POS_POPE ? 2 : 1);
}

void dg_model_gammas(const dg_model_config *c, float *out) {
    for (int h = 0; h < c->n_head; h++) {
        if (c->positional != DG_POS_ALIBI) { out[h] = 1.0f; continue; }
        double m = c->n_alibi_slopes ? c->alibi_slopes[h] : pow(2.0, -(double)h / c->n_head);
        out[h] = (float)exp(-m);
    }
}

size_t dg_model_state_bytes(const dg_model_config *c) {
    return (size_t)c->n_layer * c->n_head * dg_model_qdim(c) * c->n_embd * sizeof(float);
}

int64_t dg_model_param_layout(const dg_model_config *c, dg_param_info info[DG_P_COUNT]) {
    int64_t V = c->vocab_size, D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    bool aff = c->norm == DG_NORM_AFFINE;
    struct { const char *name; int nd; int64_t s0, s1, s2; bool present; } t[DG_P_COUNT] = {
        {"embed.weight", 2, V, D, 0, true},
        {"norm.gamma", 1, D, 0, 0, aff},
        {"norm.beta", 1, D, 0, 0, aff},
        {"encoder", 3, H, D, N, true},
        {"encoder_v", 3, H, D, N, true},
        {"decoder", 2, H * N, D, 0, true},
        {"lm_head", 2, D, V, 0, !c->tie_embeddings},
    };
    int64_t off = 0;
    for (int i = 0; i < DG_P_COUNT; i++) {
        info[i].name = t[i].name;
        info[i].ndim = t[i].nd;
        info[i].shape[0] = t[i].s0;
        info[i].shape[1] = t[i].s1;
        info[i].shape[2] = t[i].s2;
        int64_t n = t[i].s0 * (t[i].nd > 1 ? t[i].s1 : 1) * (t[i].nd > 2 ? t[i].s2 : 1);
        info[i].numel = t[i].present ? n : 0;
        info[i].offset = (size_t)off;
        off += info[i].numel;
    }
    return off;
}

int64_t dg_model_n_params(const dg_model_config *c) {
    dg_param_info info[DG_P_COUNT];
    return dg_model_param_layout(c, info);
}

// ------------------------------------------------------------------------------------------
// model object

/* One layer's forward activations. In store-all mode each layer has its own; with recompute all
 * layers share one set (the backward pass re-creates it). Shapes with R = B*T rows. */
typedef struct {
    dg_tensor x;        /* (R, H*N)  relu(v Wenc - thr)                        */
    dg_tensor q;        /* (R, H*Nq) pos(x); == x for alibi                    */
    dg_tensor a;        /* (R, H*D)  attention output                          */
    dg_tensor a_mean;   /* (R*H)                                               */
    dg_tensor a_rstd;   /* (R*H)                                               */
    dg_tensor an;       /* (R, H*D)  LN(a)                                     */
    dg_tensor y;        /* (R, H*N)  relu(an Wencv - thr)                      */
    dg_tensor u;        /* (R, D)    z Wdec (before LN)                        */
    dg_tensor u_mean, u_rstd;   /* (R)                                         */
    dg_tensor r;        /* (R, D)    v + LN(u)                                 */
    dg_tensor r_mean, r_rstd;   /* (R)                                         */
    dg_tensor rho;      /* (B, n_chunks-1, H, Nq, D) incoming state of chunks 1.. (chunked) */
} layer_acts;

struct dg_model_s {
    dg_backend_t   *be;
    dg_model_config cfg;
    int64_t         n_params;
    dg_param_info   info[DG_P_COUNT];
    float           gamma[DG_MAX_HEADS];
    dg_buf_t       *params_buf;
    dg_buf_t       *grads_buf;

    /* training activations */
    int         B, T, chunk, n_chunks;
    bool        recompute;
    dg_recompute_mode recompute_mode;   /* dg_model_set_recompute; AUTO by default */
    dg_buf_t   *act_buf;
    dg_buf_t   *scr_buf;            /* gradient scratch */
    dg_tensor   tok, tgt;           /* (R) i32 */
    dg_tensor   emb;                /* (R, D) embedding rows (LN input) */
    dg_tensor   e_mean, e_rstd;     /* (R) */
    dg_tensor  *v;                  /* [L+1] (R, D): v[0] = LN(emb), v[l+1] = layer l output */
    layer_acts *acts;               /* [L] */
    dg_tensor   logits, dlogits;    /* (R, V) */
    dg_tensor   losses;             /* (R) */
    /* gradient scratch */
    dg_tensor   dv, dv2, dr, du;    /* (R, D) */
    /* Big scratch (lifetimes: lay_out_acts). dmask, dq and da view one region. */
    dg_tensor   dx;                 /* (R, H*N)  z, dz, then dx                    */
    dg_tensor   dmask;              /* (R, H*N)  dz * (y > 0), later dx * (x > 0)  */
    dg_tensor   dq;                 /* (R, H*Nq) rope/pope only                     */
    dg_tensor   da;                 /* (R, H*D)                                     */
    dg_tensor   dyp;                /* (R, H*N)  store-all only (recompute: over y) */
    dg_tensor   da2;                /* (R, H*D)  recompute: over an                 */
    dg_tensor   drho, drho2;        /* (H, Nq, D) chunk state gradients */
    bool        have_fwd;           /* last forward kept activations for backward */
    bool        top_live;           /* recompute: the shared activations are still those of
                                     * layer L-1 from the forward (its recompute is skipped) */
    uint64_t    seed;               /* dropout seed of the last forward */
    float      *host_loss;          /* (R) */
    int64_t    *pos0;               /* (B) start positions, all 0 for training blocks */
    uint64_t    pver;               /* >= 1, bumped whenever the parameters change (copies follow it) */
};

#define RC(x) do { int rc__ = (x); if (rc__) return rc__; } while (0)

int dg_model_create(dg_backend_t *be, const dg_model_config *c, dg_model_t **out) {
    char err[256];
    int rc = dg_model_config_validate(c, err, sizeof err);
    if (rc) { DG_ERROR("model config: %s", err); return rc; }
    dg_model_t *m = dg_calloc(1, sizeof *m);
    m->be = be;
    m->cfg = *c;
    m->pver = 1;
    m->n_params = dg_model_param_layout(c, m->info);
    dg_model_gammas(c, m->gamma);
    rc = dg_buf_alloc(be, (size_t)m->n_params * 4, &m->params_buf);
    if (rc) { dg_free(m); return rc; }
    *out = m;
    return 0;
}

static void free_train(dg_model_t *m) {
    dg_buf_free(m->be, m->act_buf);
    dg_buf_free(m->be, m->scr_buf);
    dg_free(m->v);
    dg_free(m->acts);
    dg_free(m->host_loss);
    dg_free(m->pos0);
    m->pos0 = NULL;
    m->act_buf = m->scr_buf = NULL;
    m->v = NULL;
    m->acts = NULL;
    m->host_loss = NULL;
    m->B = m->T = 0;
}

void dg_model_free(dg_model_t *m) {
    if (!m) return;
    free_train(m);
    dg_buf_free(m->be, m->grads_buf);
    dg_buf_free(m->be, m->params_buf);
    dg_free(m);
}

const dg_model_config *dg_model_config_of(const dg_model_t *m) { return &m->cfg; }
dg_backend_t *dg_model_backend(const dg_model_t *m) { return m->be; }

dg_tensor dg_model_params(dg_model_t *m) { return dg_t1(m->params_buf, 0, m->n_params); }
dg_tensor dg_model_grads(dg_model_t *m) {
    DG_ASSERT(m->grads_buf);
    return dg_t1(m->grads_buf, 0, m->n_params);
}

static dg_tensor ptensor(dg_model_t *m, dg_buf_t *buf, int which) {
    const dg_param_info *p = &m->info[which];
    if (!p->numel) return dg_t_null();
    if (p->ndim == 2) return dg_t2(buf, p->offset * 4, p->shape[0], p->shape[1]);
    if (p->ndim == 3) return dg_t3(buf, p->offset * 4, p->shape[0], p->shape[1], p->shape[2]);
    return dg_t1(buf, p->offset * 4, p->numel);
}
dg_tensor dg_model_param(dg_model_t *m, int which) { return ptensor(m, m->params_buf, which); }

int dg_model_get_params(dg_model_t *m, float *host) { return dg_get(m->be, host, dg_model_params(m)); }
int dg_model_set_params(dg_model_t *m, const float *host) {
    m->pver++;
    return dg_set(m->be, dg_model_params(m), host);
}
void dg_model_params_changed(dg_model_t *m) { m->pver++; }

// ------------------------------------------------------------------------------------------
// initialisation (MODEL.md §2.2)

/* Heavy-tailed log-normal neuron gains: g = min(exp(z), 4), z ~ N(0, 0.75^2), RMS-normalised. */
static void lognormal_gains(dg_rng *r, float *g, int64_t n) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = exp(0.75 * dg_rng_normal(r));
        g[i] = (float)(v > 4.0 ? 4.0 : v);
        ss += (double)g[i] * g[i];
    }
    double rms = sqrt(ss / (double)n);
    for (int64_t i = 0; i < n; i++) g[i] = (float)(g[i] / rms);
}

int dg_model_init_params(dg_model_t *m, uint64_t seed) {
    const dg_model_config *c = &m->cfg;
    float *p = dg_try_malloc((size_t)m->n_params * 4);
    if (!p) return DG_ENOMEM;
    dg_rng r;
    dg_rng_seed(&r, seed);
    int64_t H = c->n_head, D = c->n_embd, N = dg_model_latent(c);
    bool bd = c->init == DG_INIT_BURN_DRAGON;
    float std0 = c->init_std;
    float stdr = bd ? std0 / sqrtf((float)c->n_layer) : std0;   /* depth-scaled residual std */
    for (int w = 0; w < DG_P_COUNT; w++) {
        const dg_param_info *pi = &m->info[w];
        float *t = p + pi->offset;
        if (!pi->numel) continue;
        if (w == DG_P_GAMMA) { for (int64_t i = 0; i < pi->numel; i++) t[i] = 1.0f; continue; }
        if (w == DG_P_BETA) { memset(t, 0, (size_t)pi->numel * 4); continue; }
        bool resid = w == DG_P_ENCODER || w == DG_P_ENCODER_V || w == DG_P_DECODER;
        float sd = resid ? stdr : std0;
        for (int64_t i = 0; i < pi->numel; i++) t[i] = sd * dg_rng_normal(&r);
        if (!bd || !resid) continue;
        /* gains: encoder/encoder_v scale column (h, n) of each head's D x N matrix;
         * decoder scales row h*N+n. */
        int64_t ng = H * N;
        float *g = dg_malloc((size_t)ng * 4);
        lognormal_gains(&r, g, ng);
        if (w == DG_P_DECODER) {
            for (int64_t row = 0; row < ng; row++)
                for (int64_t d = 0; d < D; d++) t[row * D + d] *= g[row];
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < D; d++)
                    for (int64_t n = 0; n < N; n++) t[(h * D + d) * N + n] *= g[h * N + n];
        }
        dg_free(g);
    }
    int rc = dg_set(m->be, dg_model_params(m), p);
    m->pver++;
    dg_free(p);
    return rc;
}

// ------------------------------------------------------------------------------------------
// activation memory

/* A bump allocator over byte offsets: first pass measures, second pass hands out views. */
typedef struct { dg_buf_t *buf; size_t off; } bump;

static size_t bump_take(bump *b, size_t nbytes) {
    size_t o = b->off;
    b->off += (nbytes + 255) & ~(size_t)255;
    return o;
}
static dg_tensor bump_t(bump *b, int64_t rows, int64_t cols) {
    size_t o = bump_take(b, (size_t)(rows * cols) * 4);
    if (b->buf) return dg_t2(b->buf, o, rows, cols);
    dg_tensor t = {0};
    t.ne[0] = cols; t.ne[1] = rows; t.ne[2] = t.ne[3] = 1;
    return t;
}
static dg_tensor bump_i32(bump *b, int64_t n) {
    size_t o = bump_take(b, (size_t)n * 4);
    if (!b->buf) { dg_tensor t = {0}; t.ne[0] = n; t.ne[1] = t.ne[2] = t.ne[3] = 1; t.type = DG_DTYPE_I32; return t; }
    return dg_t_i32(b->buf, o, n);
}

/* A (rows, cols) view at byte offset o of b's buffer (a shape only while measuring). */
static dg_tensor bump_view(const bump *b, size_t o, int64_t rows, int64_t cols) {
    if (b->buf) return dg_t2(b->buf, o, rows, cols);
    dg_tensor t = {0};
    t.ne[0] = cols; t.ne[1] = rows; t.ne[2] = t.ne[3] = 1;
    return t;
}

/* The big tensors are the (R, H*N) ones (2 GiB each for the paper config at B32 T512); their
 * lifetimes within one layer's backward (layer_bwd) decide the plan:
 *   dx   (R, H*N)   z, then dz = du Wdec^T, then dx (gate, then + pos/attention backward)
 *   dmask (R, max(H*Nq, H*D))  dz masked by y > 0; then da; then dq (rope/pope); then dx
 *        masked by x > 0. With H*Nq >= H*D (every large config) da costs nothing.
 *   dyp  (R, H*N)   gradient of y's pre-activation; with recompute it is written over y (dead by
 *        then: dx and dyp come from the masked dz), so only store-all mode has its own.
 *   da2  (R, H*D)   LN backward of da; with recompute it is written over an (dead once dWencv
 *        is done), else its own.
 * With recompute (and rope/pope), q is not kept: the forward writes q where y goes (q is dead
 * once the attention ran) and the backward recomputes q = pos(x) there once dyp is consumed.
 * So recompute mode holds x, y|q, dx, dg: 4 (R, H*N) tensors for rope/alibi, 6 for pope. */
static void lay_out_acts(dg_model_t *m, bump *A, bump *S) {
    const dg_model_config *c = &m->cfg;
    int64_t R = (int64_t)m->B * m->T, D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    int64_t Nq = dg_model_qdim(c), V = c->vocab_size, L = c->n_layer;
    bool rot = c->positional != DG_POS_ALIBI;
    m->tok = bump_i32(A, R);
    m->tgt = bump_i32(A, R);
    m->emb = bump_t(A, R, D);
    m->e_mean = bump_t(A, 1, R);
    m->e_rstd = bump_t(A, 1, R);
    for (int64_t l = 0; l <= L; l++) m->v[l] = bump_t(A, R, D);
    for (int64_t l = 0; l < L; l++) {
        layer_acts *a = &m->acts[l];
        if (m->recompute && l > 0) {
            /* share the big buffers of layer 0, keep nothing else */
            layer_acts keep = m->acts[0];
            *a = keep;
            continue;
        }
        a->x = bump_t(A, R, H * N);
        if (m->recompute && rot) {
            size_t o = bump_take(A, (size_t)(R * H * Nq) * 4);     /* q, then y */
            a->q = bump_view(A, o, R, H * Nq);
            a->y = bump_view(A, o, R, H * N);
        } else {
            a->q = rot ? bump_t(A, R, H * Nq) : a->x;
            a->y = bump_t(A, R, H * N);
        }
        a->a = bump_t(A, R, H * D);
        a->a_mean = bump_t(A, 1, R * H);
        a->a_rstd = bump_t(A, 1, R * H);
        a->an = bump_t(A, R, H * D);
        a->u = bump_t(A, R, D);
        a->u_mean = bump_t(A, 1, R);
        a->u_rstd = bump_t(A, 1, R);
        a->r = bump_t(A, R, D);
        a->r_mean = bump_t(A, 1, R);
        a->r_rstd = bump_t(A, 1, R);
        if (m->n_chunks > 1) a->rho = bump_t(A, (int64_t)m->B * (m->n_chunks - 1) * H * Nq, D);
        else a->rho = dg_t_null();
    }
    m->logits = bump_t(A, R, V);
    m->dlogits = bump_t(A, R, V);
    m->losses = bump_t(A, 1, R);
    m->dv = bump_t(S, R, D);
    m->dv2 = bump_t(S, R, D);
    m->dr = bump_t(S, R, D);
    m->du = bump_t(S, R, D);
    m->dx = bump_t(S, R, H * N);
    int64_t gw = H * Nq > H * D ? H * Nq : H * D;
    size_t go = bump_take(S, (size_t)(R * gw) * 4);
    m->dmask = bump_view(S, go, R, H * N);
    m->dq = rot ? bump_view(S, go, R, H * Nq) : dg_t_null();
    m->da = bump_view(S, go, R, H * D);
    m->dyp = m->recompute ? dg_t_null() : bump_t(S, R, H * N);    /* recompute: a->y */
    m->da2 = m->recompute ? m->acts[0].an : bump_t(S, R, H * D);
    if (m->n_chunks > 1) {
        m->drho = bump_t(S, H * Nq, D);
        m->drho2 = bump_t(S, H * Nq, D);
    } else {
        m->drho = m->drho2 = dg_t_null();
    }
}

/* The training plan of (B, T, chunk): chunking and whether layers are recomputed. */
static void plan_train(dg_model_t *m, int B, int T, int chunk) {
    const dg_model_config *c = &m->cfg;
    m->B = B;
    m->T = T;
    m->chunk = (chunk > 0 && chunk < T) ? chunk : T;
    m->n_chunks = (T + m->chunk - 1) / m->chunk;
    /* Keep every layer's activations unless they would exceed ~2 GiB; then recompute. */
    double per_layer = (double)B * T * (3.0 * c->mlp_mult * c->n_embd + 2.0 * c->n_head * c->n_embd) * 4;
    if (m->recompute_mode == DG_RECOMPUTE_ON) m->recompute = true;
    else if (m->recompute_mode == DG_RECOMPUTE_OFF) m->recompute = false;
    else m->recompute = per_layer * c->n_layer > 2.0 * 1024 * 1024 * 1024 && c->n_layer > 1;
}

size_t dg_model_train_bytes(const dg_model_config *c, int B, int T, int chunk) {
    char err[256];
    if (B < 1 || T < 1 || dg_model_config_validate(c, err, sizeof err)) return 0;
    dg_model_t m;
    memset(&m, 0, sizeof m);
    m.cfg = *c;
    plan_train(&m, B, T, chunk);
    m.v = dg_calloc((size_t)c->n_layer + 1, sizeof *m.v);
    m.acts = dg_calloc((size_t)c->n_layer, sizeof *m.acts);
    bump A = {0}, S = {0};
    lay_out_acts(&m, &A, &S);                       /* measure only: no buffer */
    dg_free(m.v);
    dg_free(m.acts);
    return A.off + S.off;
}

void dg_model_set_recompute(dg_model_t *m, dg_recompute_mode mode) { m->recompute_mode = mode; }
bool dg_model_train_recomputes(const dg_model_t *m) { return m->act_buf && m->recompute; }

int dg_model_alloc_train(dg_model_t *m, int B, int T, int chunk) {
    DG_ASSERT(B >= 1 && T >= 1);
    free_train(m);
    if (!m->grads_buf) RC(dg_buf_alloc(m->be, (size_t)m->n_params * 4, &m->grads_buf));
    plan_train(m, B, T, chunk);
    const dg_model_config *c = &m->cfg;
    m->v = dg_calloc((size_t)c->n_layer + 1, sizeof *m->v);
    m->acts = dg_calloc((size_t)c->n_layer, sizeof *m->acts);
    bump A = {0}, S = {0};
    lay_out_acts(m, &A, &S);                        /* measure */
    DG_INFO("model: training B%d T%d chunk %d, %s: activations %.1f MiB, gradient scratch %.1f MiB",
            B, T, m->chunk, m->recompute ? "layers recomputed in backward" : "all layers stored",
            (double)A.off / (1 << 20), (double)S.off / (1 << 20));
    int rc = dg_buf_alloc(m->be, A.off, &m->act_buf);
    if (!rc) rc = dg_buf_alloc(m->be, S.off, &m->scr_buf);
    if (rc) { free_train(m); return rc; }
    A = (bump){m->act_buf, 0};
    S = (bump){m->scr_buf, 0};
    lay_out_acts(m, &A, &S);                        /* hand out views */
    m->host_loss = dg_malloc((size_t)B * T * 4);
    m->pos0 = dg_calloc((size_t)B, sizeof *m->pos0);
    m->have_fwd = false;
    m->top_live = false;
    return 0;
}

int dg_model_zero_grad(dg_model_t *m) { return dg_fill(m->be, dg_model_grads(m), 0.0f); }

// ------------------------------------------------------------------------------------------
// forward

static uint64_t layer_seed(uint64_t seed, int l) {
    uint64_t z = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(l + 1));
    z = (z ^ (z >> 31)) * 0x9E3779B97F4A7C15ull;
    return z ^ (z >> 29);
}

/* x_h = v W_h for every head h: W is (H, D, N); out (R, H*N) with head h in columns h*N.. */
static int proj_heads(dg_backend_t *be, dg_tensor out, dg_tensor in, int64_t in_ld,
                      int64_t in_bstride, dg_tensor W, int64_t R, int64_t D, int64_t H, int64_t N) {
    dg_gemm_desc g = {0};
    g.M = R; g.N = N; g.K = D; g.batch = H;
    g.A = dg_m(in, R, D, in_ld);   g.A.bstride = in_bstride;
    g.B = dg_m(W, D, N, N);        g.B.bstride = D * N;
    g.C = dg_m(out, R, N, H * N);  g.C.bstride = N;
    g.alpha = 1; g.beta = 0;
    return dg_gemm(be, &g);
}

/* out (R, D) = in (R, K) W (K, D), beta 0 or 1 */
static int matmul(dg_backend_t *be, dg_tensor out, dg_tensor in, dg_tensor W, int64_t R,
                  int64_t K, int64_t Dn, bool transW, float beta) {
    dg_gemm_desc g = {0};
    g.M = R; g.N = Dn; g.K = K; g.batch = 1;
    g.A = dg_m(in, R, K, K);
    g.B = transW ? dg_m_t(dg_m(W, Dn, K, K)) : dg_m(W, K, Dn, Dn);
    g.C = dg_m(out, R, Dn, Dn);
    g.alpha = 1; g.beta = beta;
    return dg_gemm(be, &g);
}

/* dW (K, Dn) += in^T (K, R) dout (R, Dn) */
static int matmul_dw(dg_backend_t *be, dg_tensor dW, dg_tensor in, dg_tensor dout, int64_t R,
                     int64_t K, int64_t Dn) {
    dg_gemm_desc g = {0};
    g.M = K; g.N = Dn; g.K = R; g.batch = 1;
    g.A = dg_m_t(dg_m(in, R, K, K));
    g.B = dg_m(dout, R, Dn, Dn);
    g.C = dg_m(dW, K, Dn, Dn);
    g.alpha = 1; g.beta = 1;
    return dg_gemm(be, &g);
}

static dg_tensor norm_g(dg_model_t *m) { return dg_model_param(m, DG_P_GAMMA); }
static dg_tensor norm_b(dg_model_t *m) { return dg_model_param(m, DG_P_BETA); }

/* The stored incoming state of chunk k >= 1 of batch row b: (1, H, Nq, D). Chunk 0 starts from
 * the zero state, so nothing is stored for it. */
static dg_tensor rho_in_of(const dg_model_t *m, const layer_acts *a, int64_t b, int64_t k) {
    const dg_model_config *c = &m->cfg;
    int64_t H = c->n_head, D = c->n_embd, Nq = dg_model_qdim(c), st = H * Nq * D;
    DG_ASSERT(k >= 1 && k < m->n_chunks);
    size_t o = a->rho.offs + (size_t)((b * (m->n_chunks - 1) + k - 1) * st) * 4;
    return dg_t4(a->rho.buf, o, 1, H, Nq, D);
}

/* Attention over the whole block: one call, or chunk by chunk per batch row with the state
 * carried (and stored for the backward pass). pos0 are per-row start positions. */
static int attn_block(dg_model_t *m, layer_acts *a, dg_tensor vin, int B, int T) {
    const dg_model_config *c = &m->cfg;
    int64_t H = c->n_head, D = c->n_embd, Nq = dg_model_qdim(c);
    if (m->n_chunks <= 1)
        return dg_attn_fwd(m->be, dg_t4(a->a.buf, a->a.offs, B, T, H, D), dg_t_null(),
                           dg_t4(a->q.buf, a->q.offs, B, T, H, Nq),
                           dg_t3(vin.buf, vin.offs, B, T, D), dg_t_null(), m->gamma);
    int64_t C = m->chunk, nch = m->n_chunks;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t k = 0; k < nch; k++) {
            int64_t t0 = k * C, n = (t0 + C <= T) ? C : T - t0, r0 = b * T + t0;
            dg_tensor q = dg_t4(a->q.buf, a->q.offs + (size_t)(r0 * H * Nq) * 4, 1, n, H, Nq);
            dg_tensor v = dg_t3(vin.buf, vin.offs + (size_t)(r0 * D) * 4, 1, n, D);
            dg_tensor o = dg_t4(a->a.buf, a->a.offs + (size_t)(r0 * H * D) * 4, 1, n, H, D);
            dg_tensor rin = k ? rho_in_of(m, a, b, k) : dg_t_null();
            dg_tensor rout = k + 1 < nch ? rho_in_of(m, a, b, k + 1) : dg_t_null();
            RC(dg_attn_fwd(m->be, o, rout, q, v, rin, m->gamma));
        }
    }
    return 0;
}

/* One layer's forward from vin (R, D) into a, writing vout (R, D). */
static int layer_fwd(dg_model_t *m, int l, layer_acts *a, dg_tensor vin, dg_tensor vout,
                     const int64_t *pos0, float p, uint64_t seed, dg_tensor z) {
    const dg_model_config *c = &m->cfg;
    dg_backend_t *be = m->be;
    int B = m->B, T = m->T;
    int64_t R = (int64_t)B * T, D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    float thr = c->relu_threshold, eps = c->norm_eps;
    RC(proj_heads(be, a->x, vin, D, 0, dg_model_param(m, DG_P_ENCODER), R, D, H, N));
    RC(dg_relu_fwd(be, a->x, a->x, thr));
    if (c->positional != DG_POS_ALIBI)
        RC(dg_pos_fwd(be, dg_t4(a->q.buf, a->q.offs, B, T, H, dg_model_qdim(c)),
                      dg_t4(a->x.buf, a->x.offs, B, T, H, N), pos0, c->positional, c->rope_theta));
    RC(attn_block(m, a, vin, B, T));
    dg_tensor a_rows = dg_t2(a->a.buf, a->a.offs, R * H, D);
    dg_tensor an_rows = dg_t2(a->an.buf, a->an.offs, R * H, D);
    RC(dg_layernorm_fwd(be, an_rows, a->a_mean, a->a_rstd, a_rows, norm_g(m), norm_b(m), eps));
    RC(proj_heads(be, a->y, a->an, H * D, D, dg_model_param(m, DG_P_ENCODER_V), R, D, H, N));
    RC(dg_relu_fwd(be, a->y, a->y, thr));
    RC(dg_gate_fwd(be, z, a->x, a->y, p, layer_seed(seed, l)));
    RC(matmul(be, a->u, z, dg_model_param(m, DG_P_DECODER), R, H * N, D, false, 0));
    RC(dg_layernorm_fwd(be, a->r, a->u_mean, a->u_rstd, a->u, norm_g(m), norm_b(m), eps));
    RC(dg_add(be, a->r, a->r, vin));
    RC(dg_layernorm_fwd(be, vout, a->r_mean, a->r_rstd, a->r, norm_g(m), norm_b(m), eps));
    return 0;
}

int dg_model_forward(dg_model_t *m, const int32_t *tokens, const int32_t *targets, bool train,
                     uint64_t dropout_seed, float *loss) {
    DG_ASSERT(m->act_buf && "call dg_model_alloc_train first");
    const dg_model_config *c = &m->cfg;
    dg_backend_t *be = m->be;
    int64_t R = (int64_t)m->B * m->T, D = c->n_embd, V = c->vocab_size, L = c->n_layer;
    m->have_fwd = false;
    RC(dg_set(be, m->tok, tokens));
    RC(dg_embed_fwd(be, m->emb, m->tok, dg_model_param(m, DG_P_EMBED)));
    RC(dg_layernorm_fwd(be, m->v[0], m->e_mean, m->e_rstd, m->emb, norm_g(m), norm_b(m), c->norm_eps));
    float p = train ? c->dropout : 0.0f;
    for (int64_t l = 0; l < L; l++)
        RC(layer_fwd(m, (int)l, &m->acts[l], m->v[l], m->v[l + 1], m->pos0, p, dropout_seed, m->dx));
    if (c->tie_embeddings)
        RC(matmul(be, m->logits, m->v[L], dg_model_param(m, DG_P_EMBED), R, D, V, true, 0));
    else
        RC(matmul(be, m->logits, m->v[L], dg_model_param(m, DG_P_LM_HEAD), R, D, V, false, 0));
    m->seed = dropout_seed;
    if (!targets) return 0;
    RC(dg_set(be, m->tgt, targets));
    RC(dg_xent(be, m->losses, dg_t_null(), m->logits, m->tgt, 0));
    RC(dg_get(be, m->host_loss, m->losses));
    double s = 0;
    for (int64_t i = 0; i < R; i++) s += m->host_loss[i];
    *loss = (float)(s / (double)R);
    m->have_fwd = train;
    m->top_live = train;
    return 0;
}

int dg_model_get_logits(dg_model_t *m, float *host) { return dg_get(m->be, host, m->logits); }
const float *dg_model_last_losses(const dg_model_t *m) { return m->host_loss; }

// ------------------------------------------------------------------------------------------
// backward

static int attn_block_bwd(dg_model_t *m, layer_acts *a, dg_tensor vin, dg_tensor dq, dg_tensor dv,
                          dg_tensor dout) {
    const dg_model_config *c = &m->cfg;
    int B = m->B, T = m->T;
    int64_t H = c->n_head, D = c->n_embd, Nq = dg_model_qdim(c);
    if (m->n_chunks <= 1)
        return dg_attn_bwd(m->be, dg_t4(dq.buf, dq.offs, B, T, H, Nq), dg_t3(dv.buf, dv.offs, B, T, D),
                           dg_t_null(), dg_t4(dout.buf, dout.offs, B, T, H, D), dg_t_null(),
                           dg_t4(a->q.buf, a->q.offs, B, T, H, Nq), dg_t3(vin.buf, vin.offs, B, T, D),
                           dg_t_null(), m->gamma);
    int64_t C = m->chunk, nch = m->n_chunks;
    for (int64_t b = 0; b < B; b++) {
        dg_tensor g_out = dg_t4(m->drho.buf, m->drho.offs, 1, H, Nq, D);   /* d rho_out of chunk */
        dg_tensor g_in = dg_t4(m->drho2.buf, m->drho2.offs, 1, H, Nq, D);  /* d rho_in of chunk  */
        RC(dg_fill(m->be, g_out, 0));
        for (int64_t k = nch - 1; k >= 0; k--) {
            int64_t t0 = k * C, n = (t0 + C <= T) ? C : T - t0, r0 = b * T + t0;
            size_t qo = (size_t)(r0 * H * Nq) * 4, vo = (size_t)(r0 * D) * 4, oo = (size_t)(r0 * H * D) * 4;
            dg_tensor rin = k ? rho_in_of(m, a, b, k) : dg_t_null();
            if (k) RC(dg_fill(m->be, g_in, 0));
            RC(dg_attn_bwd(m->be, dg_t4(dq.buf, dq.offs + qo, 1, n, H, Nq), dg_t3(dv.buf, dv.offs + vo, 1, n, D),
                           k ? g_in : dg_t_null(), dg_t4(dout.buf, dout.offs + oo, 1, n, H, D),
                           k + 1 < nch ? g_out : dg_t_null(), dg_t4(a->q.buf, a->q.offs + qo, 1, n, H, Nq),
                           dg_t3(vin.buf, vin.offs + vo, 1, n, D), rin, m->gamma));
            dg_tensor t = g_out; g_out = g_in; g_in = t;
        }
    }
    return 0;
}

/* Backward of layer l: dvout (R, D) is the gradient w.r.t. the layer output; writes the gradient
 * w.r.t. the layer input into dvin (R, D). */
static int layer_bwd(dg_model_t *m, int l, layer_acts *a, dg_tensor vin, dg_tensor dvout,
                     dg_tensor dvin, const int64_t *pos0) {
    const dg_model_config *c = &m->cfg;
    dg_backend_t *be = m->be;
    int64_t R = (int64_t)m->B * m->T, D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    float p = c->dropout;
    uint64_t seed = layer_seed(m->seed, l);
    dg_tensor gam = norm_g(m);
    dg_tensor dgam = ptensor(m, m->grads_buf, DG_P_GAMMA), dbet = ptensor(m, m->grads_buf, DG_P_BETA);
    dg_tensor Wenc = dg_model_param(m, DG_P_ENCODER), Wencv = dg_model_param(m, DG_P_ENCODER_V);
    dg_tensor Wdec = dg_model_param(m, DG_P_DECODER);
    dg_tensor dWenc = ptensor(m, m->grads_buf, DG_P_ENCODER);
    dg_tensor dWencv = ptensor(m, m->grads_buf, DG_P_ENCODER_V);
    dg_tensor dWdec = ptensor(m, m->grads_buf, DG_P_DECODER);

    /* vout = LN(r) */
    RC(dg_fill(be, m->dr, 0));
    RC(dg_layernorm_bwd(be, m->dr, dgam, dbet, dvout, a->r, a->r_mean, a->r_rstd, gam));
    RC(dg_copy(be, dvin, m->dr));                        /* residual path */
    /* r = v + LN(u) */
    RC(dg_fill(be, m->du, 0));
    RC(dg_layernorm_bwd(be, m->du, dgam, dbet, m->dr, a->u, a->u_mean, a->u_rstd, gam));
    /* u = z Wdec: z is recomputed into dx (then dz = du Wdec^T is written over it) */
    RC(dg_gate_fwd(be, m->dx, a->x, a->y, p, seed));
    RC(matmul_dw(be, dWdec, m->dx, m->du, R, H * N, D));
    RC(matmul(be, m->dx, m->du, Wdec, R, D, H * N, true, 0));
    /* z = x * y * k (k: dropout), y = relu(yp): dx = dz y k and dyp = dz (y > 0) x k. The mask
     * goes on dz first (dmask = dz (y > 0)); then dx = dmask y k equals dz y k (y = 0 where the
     * mask is 0) and dyp = dmask x k. Neither output is an input of its call: dx is written over
     * dz, and with recompute dyp over y (dead after dx). No verb sees aliased operands. */
    dg_tensor dyp = m->recompute ? a->y : m->dyp;
    RC(dg_fill(be, m->dmask, 0));
    RC(dg_relu_bwd(be, m->dmask, m->dx, a->y));
    RC(dg_gate_fwd(be, m->dx, m->dmask, a->y, p, seed));
    RC(dg_gate_fwd(be, dyp, m->dmask, a->x, p, seed));
    {   /* da_n (R, H*D) = dyp_h Wencv_h^T ; dWencv_h += an_h^T dyp_h (da: over dmask) */
        dg_gemm_desc g = {0};
        g.M = R; g.N = D; g.K = N; g.batch = H;
        g.A = dg_m(dyp, R, N, H * N);               g.A.bstride = N;
        g.B = dg_m_t(dg_m(Wencv, D, N, N));         g.B.bstride = D * N;
        g.C = dg_m(m->da, R, D, H * D);             g.C.bstride = D;
        g.alpha = 1; g.beta = 0;
        RC(dg_gemm(be, &g));
        dg_gemm_desc w = {0};
        w.M = D; w.N = N; w.K = R; w.batch = H;
        w.A = dg_m_t(dg_m(a->an, R, D, H * D));     w.A.bstride = D;
        w.B = dg_m(dyp, R, N, H * N);               w.B.bstride = N;
        w.C = dg_m(dWencv, D, N, N);                w.C.bstride = D * N;
        w.alpha = 1; w.beta = 1;
        RC(dg_gemm(be, &w));
    }
    /* an = LN(a); with recompute da2 is written over an (read last by dWencv above) */
    RC(dg_fill(be, m->da2, 0));
    RC(dg_layernorm_bwd(be, dg_t2(m->da2.buf, m->da2.offs, R * H, D), dgam, dbet,
                        dg_t2(m->da.buf, m->da.offs, R * H, D), dg_t2(a->a.buf, a->a.offs, R * H, D),
                        a->a_mean, a->a_rstd, gam));
    /* a = attn(q, v): dv accumulates into dvin; dq into dx (alibi) or dq then pos_bwd */
    if (c->positional == DG_POS_ALIBI) {
        RC(attn_block_bwd(m, a, vin, m->dx, dvin, m->da2));
    } else {
        int64_t Nq = dg_model_qdim(c);
        if (m->recompute)   /* q was overwritten by y, now by dyp (consumed): recompute it */
            RC(dg_pos_fwd(be, dg_t4(a->q.buf, a->q.offs, m->B, m->T, H, Nq),
                          dg_t4(a->x.buf, a->x.offs, m->B, m->T, H, N), pos0, c->positional,
                          c->rope_theta));
        RC(dg_fill(be, m->dq, 0));
        RC(attn_block_bwd(m, a, vin, m->dq, dvin, m->da2));
        RC(dg_pos_bwd(be, dg_t4(m->dx.buf, m->dx.offs, m->B, m->T, H, N),
                      dg_t4(m->dq.buf, m->dq.offs, m->B, m->T, H, Nq),
                      dg_t4(a->x.buf, a->x.offs, m->B, m->T, H, N), pos0, c->positional, c->rope_theta));
    }
    /* x = relu(v Wenc - thr) */
    RC(dg_fill(be, m->dmask, 0));
    RC(dg_relu_bwd(be, m->dmask, m->dx, a->x));
    for (int64_t h = 0; h < H; h++) {   /* dvin += dx_h Wenc_h^T, one head at a time (same C) */
        dg_gemm_desc g = {0};
        g.M = R; g.N = D; g.K = N; g.batch = 1;
        g.A = dg_m(m->dmask, R, N, H * N); g.A.offs += (size_t)(h * N) * 4;
        g.B = dg_m_t(dg_m(Wenc, D, N, N)); g.B.offs += (size_t)(h * D * N) * 4;
        g.C = dg_m(dvin, R, D, D);
        g.alpha = 1; g.beta = 1;
        RC(dg_gemm(be, &g));
    }
    {
        dg_gemm_desc w = {0};
        w.M = D; w.N = N; w.K = R; w.batch = H;
        w.A = dg_m_t(dg_m(vin, R, D, D));           w.A.bstride = 0;
        w.B = dg_m(m->dmask, R, N, H * N);          w.B.bstride = N;
        w.C = dg_m(dWenc, D, N, N);                 w.C.bstride = D * N;
        w.alpha = 1; w.beta = 1;
        RC(dg_gemm(be, &w));
    }
    return 0;
}

int dg_model_backward(dg_model_t *m) {
    DG_ASSERT(m->have_fwd && "backward needs a training forward with targets");
    const dg_model_config *c = &m->cfg;
    dg_backend_t *be = m->be;
    int64_t R = (int64_t)m->B * m->T, D = c->n_embd, V = c->vocab_size, L = c->n_layer;
    /* loss = mean CE: dlogits = (softmax - onehot) / R */
    RC(dg_fill(be, m->dlogits, 0));
    RC(dg_xent(be, m->losses, m->dlogits, m->logits, m->tgt, 1.0f / (float)R));
    dg_tensor dv = m->dv, dv2 = m->dv2;
    if (c->tie_embeddings) {
        RC(matmul(be, dv, m->dlogits, dg_model_param(m, DG_P_EMBED), R, V, D, false, 0));
        RC(matmul_dw(be, ptensor(m, m->grads_buf, DG_P_EMBED), m->dlogits, m->v[L], R, V, D));
    } else {
        RC(matmul(be, dv, m->dlogits, dg_model_param(m, DG_P_LM_HEAD), R, V, D, true, 0));
        RC(matmul_dw(be, ptensor(m, m->grads_buf, DG_P_LM_HEAD), m->v[L], m->dlogits, R, D, V));
    }
    for (int64_t l = L - 1; l >= 0; l--) {
        /* Re-create layer l's activations (its output goes to dv2, which layer_bwd overwrites
         * first thing; v[l+1] stays intact), unless they are still those of the forward: the
         * top layer right after it. layer_bwd overwrites some (y, an), so only once. */
        if (m->recompute && !(l == L - 1 && m->top_live))
            RC(layer_fwd(m, (int)l, &m->acts[l], m->v[l], dv2, m->pos0, c->dropout, m->seed,
                         m->dx));
        if (l == L - 1) m->top_live = false;
        RC(layer_bwd(m, (int)l, &m->acts[l], m->v[l], dv, dv2, m->pos0));
        dg_tensor t = dv; dv = dv2; dv2 = t;
    }
    /* v0 = LN(emb) */
    RC(dg_fill(be, dv2, 0));
    RC(dg_layernorm_bwd(be, dv2, ptensor(m, m->grads_buf, DG_P_GAMMA), ptensor(m, m->grads_buf, DG_P_BETA),
                        dv, m->emb, m->e_mean, m->e_rstd, norm_g(m)));
    RC(dg_embed_bwd(be, ptensor(m, m->grads_buf, DG_P_EMBED), dv2, m->tok));
    return 0;
}

// ------------------------------------------------------------------------------------------
// cached inference: states

/* The true state of layer l, head h is scale[l*H + h] * rho[l][h]: backends with a lazy decode
 * step decay the scale instead of every row (kernels/cpu/attn_lazy.c). Everything that reads
 * the state as a tensor (prefill, get) folds the scales in first. */
struct dg_state_s {
    dg_model_t *m;
    dg_buf_t   *buf;      /* (L, H, Nq, D) */
    float      *scale;    /* (L*H) host */
    int64_t     pos;
};

int dg_state_create(dg_model_t *m, dg_state_t **out) {
    dg_state_t *s = dg_calloc(1, sizeof *s);
    s->m = m;
    s->scale = dg_malloc((size_t)m->cfg.n_layer * m->cfg.n_head * sizeof *s->scale);
    int rc = dg_buf_alloc(m->be, dg_model_state_bytes(&m->cfg), &s->buf);
    if (!rc) rc = dg_state_reset(s);
    if (rc) { dg_buf_free(m->be, s->buf); dg_free(s->scale); dg_free(s); return rc; }
    *out = s;
    return 0;
}

void dg_state_free(dg_state_t *s) {
    if (!s) return;
    dg_buf_free(s->m->be, s->buf);
    dg_free(s->scale);
    dg_free(s);
}

static dg_tensor state_all(const dg_state_t *s) {
    return dg_t1(s->buf, 0, (int64_t)(dg_model_state_bytes(&s->m->cfg) / 4));
}
static dg_tensor state_layer(const dg_state_t *s, int l, int64_t B1) {
    const dg_model_config *c = &s->m->cfg;
    int64_t H = c->n_head, Nq = dg_model_qdim(c), D = c->n_embd;
    return dg_t4(s->buf, (size_t)(l * H * Nq * D) * 4, B1, H, Nq, D);
}

static int64_t n_scales(const dg_state_t *s) { return (int64_t)s->m->cfg.n_layer * s->m->cfg.n_head; }

static void scales_one(dg_state_t *s) {
    for (int64_t i = 0; i < n_scales(s); i++) s->scale[i] = 1.0f;
}

/* Folds the lazy decay scales into the rows, so the buffer holds the true state. */
static int state_normalize(dg_state_t *s) {
    const dg_model_config *c = &s->m->cfg;
    int64_t slice = dg_model_qdim(c) * c->n_embd;     /* one (layer, head) block of (Nq, D) */
    for (int64_t i = 0; i < n_scales(s); i++) {
        if (s->scale[i] == 1.0f) continue;
        RC(dg_scale(s->m->be, dg_t1(s->buf, (size_t)(i * slice) * 4, slice), s->scale[i]));
        s->scale[i] = 1.0f;
    }
    return 0;
}

int dg_state_reset(dg_state_t *s) {
    s->pos = 0;
    scales_one(s);
    return dg_fill(s->m->be, state_all(s), 0);
}
int dg_state_copy(dg_state_t *dst, const dg_state_t *src) {
    DG_ASSERT(dst->m == src->m);
    dst->pos = src->pos;
    memcpy(dst->scale, src->scale, (size_t)n_scales(src) * sizeof *dst->scale);
    return dg_copy(dst->m->be, state_all(dst), state_all(src));
}
int64_t dg_state_pos(const dg_state_t *s) { return s->pos; }
size_t  dg_state_bytes(const dg_state_t *s) { return dg_model_state_bytes(&s->m->cfg); }
int dg_state_get(const dg_state_t *s, float *host, int64_t *pos) {
    if (pos) *pos = s->pos;
    RC(state_normalize((dg_state_t *)s));     /* same true state, folded representation */
    return dg_get(s->m->be, host, state_all(s));
}
int dg_state_set(dg_state_t *s, const float *host, int64_t pos) {
    s->pos = pos;
    scales_one(s);
    return dg_set(s->m->be, state_all(s), host);
}

// ------------------------------------------------------------------------------------------
// cached inference: prefill and steps

struct dg_infer_s {
    dg_model_t *m;
    int         max_B, max_T;
    dg_buf_t   *buf;
    dg_tensor   tok;            /* (max(maxB, maxT)) i32 */
    dg_tensor   emb, e_mean, e_rstd, v0, v1;
    layer_acts  a;              /* sized for max(maxB, maxT) rows */
    dg_tensor   z;              /* (rows, H*N) */
    dg_tensor   rho_tmp;        /* (H, Nq, D) prefill state out */
    dg_tensor   logits;         /* (rows, V) */
    dg_tensor  *rho_views;      /* [max_B] */
    int64_t    *pos0;           /* [max_B] */
    float      *scale;          /* [max_B * H] lazy-decay scales of one layer */
    /* the decode step as one recorded graph (backends with graphs: cuda) */
    dg_tensor   gin;            /* (2 max_B) i32: the step's tokens, then their positions */
    int32_t    *gin_host;       /* [2 max_B] */
    void       *graph;          /* recorded for g_B sequences whose states live at g_rho */
    int         g_B, g_seen;    /* g_seen: steps run verb by verb with this key so far */
    void      **g_rho;          /* [max_B] device address of each sequence's state */
    bool        g_off;          /* DG_DECODE_GRAPH=0 or no graphs in the backend */
    /* decode steps through gate_proj (backends that offer it; DG_GATE_PROJ=0 turns it off) */
    bool        gp;
    dg_tensor   wt;             /* (H, N, D): encoder_v transposed per head */
    uint64_t    wt_ver;         /* the model's pver when wt was built; 0 = never */
    float      *wt_host;        /* [2 D N] host scratch for the per-head transpose */
    bool        g_warned;       /* a recording failed once (logged) */
    int64_t     g_steps, g_records;
};

static void lay_out_infer(dg_infer_t *ix, bump *A) {
    const dg_model_config *c = &ix->m->cfg;
    int64_t R = ix->max_B > ix->max_T ? ix->max_B : ix->max_T;
    int64_t D = c->n_embd, H = c->n_head, N = dg_model_latent(c), Nq = dg_model_qdim(c);
    bool rot = c->positional != DG_POS_ALIBI;
    ix->tok = bump_i32(A, R);
    ix->emb = bump_t(A, R, D);
    ix->e_mean = bump_t(A, 1, R);
    ix->e_rstd = bump_t(A, 1, R);
    ix->v0 = bump_t(A, R, D);
    ix->v1 = bump_t(A, R, D);
    layer_acts *a = &ix->a;
    a->x = bump_t(A, R, H * N);
    a->q = rot ? bump_t(A, R, H * Nq) : a->x;
    a->a = bump_t(A, R, H * D);
    a->a_mean = bump_t(A, 1, R * H);
    a->a_rstd = bump_t(A, 1, R * H);
    a->an = bump_t(A, R, H * D);
    a->y = bump_t(A, R, H * N);
    a->u = bump_t(A, R, D);
    a->u_mean = bump_t(A, 1, R);
    a->u_rstd = bump_t(A, 1, R);
    a->r = bump_t(A, R, D);
    a->r_mean = bump_t(A, 1, R);
    a->r_rstd = bump_t(A, 1, R);
    a->rho = dg_t_null();
    ix->z = bump_t(A, R, H * N);
    ix->rho_tmp = bump_t(A, H * Nq, D);
    ix->logits = bump_t(A, R, c->vocab_size);
    ix->gin = bump_i32(A, 2 * (int64_t)ix->max_B);
    if (ix->gp) {
        dg_tensor w = bump_t(A, H * N, D);
        ix->wt = dg_t3(w.buf, w.offs, H, N, D);
    }
}

/* wt = encoder_v transposed per head, rebuilt when the parameters changed since the last build
 * (dg_model_set_params, a training step). Host scratch from dg_infer_create: no allocation. */
static int wt_refresh(dg_infer_t *ix) {
    dg_model_t *m = ix->m;
    if (ix->wt_ver == m->pver) return 0;
    const dg_model_config *c = &m->cfg;
    int64_t D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    dg_tensor ev = dg_model_param(m, DG_P_ENCODER_V);
    float *src = ix->wt_host, *dst = ix->wt_host + D * N;
    for (int64_t h = 0; h < H; h++) {
        RC(dg_get(m->be, src, dg_t2(ev.buf, ev.offs + (size_t)(h * D * N) * 4, D, N)));
        for (int64_t d = 0; d < D; d++)
            for (int64_t j = 0; j < N; j++) dst[j * D + d] = src[d * N + j];
        RC(dg_set(m->be, dg_t2(ix->wt.buf, ix->wt.offs + (size_t)(h * N * D) * 4, N, D), dst));
    }
    ix->wt_ver = m->pver;
    return 0;
}

/* A switch set to "0" in the environment (DG_DECODE_GRAPH=0, DG_GATE_PROJ=0). */
static bool env_off(const char *name) {
    const char *e = getenv(name);
    return e && !strcmp(e, "0");
}

int dg_infer_create(dg_model_t *m, int max_B, int max_T, dg_infer_t **out) {
    DG_ASSERT(max_B >= 1 && max_T >= 1);
    dg_infer_t *ix = dg_calloc(1, sizeof *ix);
    ix->m = m;
    ix->max_B = max_B;
    ix->max_T = max_T;
    ix->gp = dg_has_gate_proj(m->be) && !env_off("DG_GATE_PROJ");
    bump A = {0};
    lay_out_infer(ix, &A);
    int rc = dg_buf_alloc(m->be, A.off, &ix->buf);
    if (rc) { dg_free(ix); return rc; }
    A = (bump){ix->buf, 0};
    lay_out_infer(ix, &A);
    ix->rho_views = dg_calloc((size_t)max_B, sizeof *ix->rho_views);
    ix->pos0 = dg_calloc((size_t)max_B, sizeof *ix->pos0);
    ix->scale = dg_calloc((size_t)max_B * m->cfg.n_head, sizeof *ix->scale);
    ix->gin_host = dg_calloc((size_t)2 * max_B, sizeof *ix->gin_host);
    ix->g_rho = dg_calloc((size_t)max_B, sizeof *ix->g_rho);
    ix->g_off = !dg_has_graphs(m->be) || env_off("DG_DECODE_GRAPH");
    if (ix->gp) {
        const dg_model_config *c = &m->cfg;
        ix->wt_host = dg_try_malloc((size_t)2 * c->n_embd * dg_model_latent(c) * sizeof(float));
        rc = ix->wt_host ? wt_refresh(ix) : DG_ENOMEM;
        if (rc) { dg_infer_free(ix); return rc; }
    }
    *out = ix;
    return 0;
}

void dg_infer_free(dg_infer_t *ix) {
    if (!ix) return;
    dg_graph_free(ix->m->be, ix->graph);
    dg_buf_free(ix->m->be, ix->buf);
    dg_free(ix->gin_host);
    dg_free(ix->g_rho);
    dg_free(ix->rho_views);
    dg_free(ix->pos0);
    dg_free(ix->scale);
    dg_free(ix->wt_host);
    dg_free(ix);
}

static dg_tensor rows(dg_tensor t, int64_t n) { return dg_t2(t.buf, t.offs, n, t.ne[0]); }

/* Everything of a layer but the attention, for n rows; attention output already in a->a.
 * step: a decode step (n = B sequences), which takes gate_proj where the backend has it. */
static int infer_layer_rest(dg_infer_t *ix, int64_t n, dg_tensor vin, dg_tensor vout, bool step) {
    dg_model_t *m = ix->m;
    const dg_model_config *c = &m->cfg;
    dg_backend_t *be = m->be;
    int64_t D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    float thr = c->relu_threshold, eps = c->norm_eps;
    layer_acts *a = &ix->a;
    RC(dg_layernorm_fwd(be, rows(dg_t2(a->an.buf, a->an.offs, 1, D), n * H),
                        dg_t1(a->a_mean.buf, a->a_mean.offs, n * H), dg_t1(a->a_rstd.buf, a->a_rstd.offs, n * H),
                        rows(dg_t2(a->a.buf, a->a.offs, 1, D), n * H), norm_g(m), norm_b(m), eps));
    dg_tensor y = rows(a->y, n), x = rows(a->x, n), z = rows(ix->z, n);
    if (step && ix->gp) {
        RC(dg_gate_proj(be, z, x, rows(a->an, n), ix->wt, thr));
    } else {
        RC(proj_heads(be, y, a->an, H * D, D, dg_model_param(m, DG_P_ENCODER_V), n, D, H, N));
        RC(dg_relu_fwd(be, y, y, thr));
        RC(dg_gate_fwd(be, z, x, y, 0.0f, 0));
    }
    dg_tensor u = rows(a->u, n), r = rows(a->r, n);
    dg_tensor um = dg_t1(a->u_mean.buf, a->u_mean.offs, n), us = dg_t1(a->u_rstd.buf, a->u_rstd.offs, n);
    dg_tensor rm = dg_t1(a->r_mean.buf, a->r_mean.offs, n), rs = dg_t1(a->r_rstd.buf, a->r_rstd.offs, n);
    RC(matmul(be, u, z, dg_model_param(m, DG_P_DECODER), n, H * N, D, false, 0));
    RC(dg_layernorm_fwd(be, r, um, us, u, norm_g(m), norm_b(m), eps));
    RC(dg_add(be, r, r, vin));
    RC(dg_layernorm_fwd(be, vout, rm, rs, r, norm_g(m), norm_b(m), eps));
    return 0;
}

static int check_tokens(const dg_model_t *m, const int32_t *tokens, int64_t n) {
    int64_t V = m->cfg.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V) {
            DG_ERROR("token id %d out of range [0, %lld)", tokens[i], (long long)V);
            return DG_EINVAL;
        }
    return 0;
}

/* Embedding + first LN for n rows whose (validated) ids are on the device in tok. */
static int embed_rows(dg_infer_t *ix, dg_tensor tok, int64_t n, dg_tensor vout) {
    dg_model_t *m = ix->m;
    const dg_model_config *c = &m->cfg;
    RC(dg_embed_fwd(m->be, rows(ix->emb, n), tok, dg_model_param(m, DG_P_EMBED)));
    return dg_layernorm_fwd(m->be, vout, dg_t1(ix->e_mean.buf, ix->e_mean.offs, n),
                            dg_t1(ix->e_rstd.buf, ix->e_rstd.offs, n), rows(ix->emb, n),
                            norm_g(m), norm_b(m), c->norm_eps);
}

/* Embedding + first LN for n rows (B sequences of T tokens). */
static int infer_embed(dg_infer_t *ix, const int32_t *tokens, int64_t n, dg_tensor vout) {
    RC(check_tokens(ix->m, tokens, n));
    dg_tensor tok = dg_t_i32(ix->tok.buf, ix->tok.offs, n);
    RC(dg_set(ix->m->be, tok, tokens));
    return embed_rows(ix, tok, n, vout);
}

/* x projection + ReLU + positional for B sequences of T tokens; the positions come from the host
 * (pos0) or, when posd is present, from the device (recorded steps). */
static int infer_x_at(dg_infer_t *ix, dg_tensor vin, int64_t B, int64_t T, const int64_t *pos0,
                      dg_tensor posd) {
    dg_model_t *m = ix->m;
    const dg_model_config *c = &m->cfg;
    int64_t n = B * T, D = c->n_embd, H = c->n_head, N = dg_model_latent(c);
    layer_acts *a = &ix->a;
    dg_tensor x = rows(a->x, n);
    RC(proj_heads(m->be, x, vin, D, 0, dg_model_param(m, DG_P_ENCODER), n, D, H, N));
    RC(dg_relu_fwd(m->be, x, x, c->relu_threshold));
    if (c->positional == DG_POS_ALIBI) return 0;
    dg_tensor qo = dg_t4(a->q.buf, a->q.offs, B, T, H, dg_model_qdim(c));
    dg_tensor xi = dg_t4(a->x.buf, a->x.offs, B, T, H, N);
    if (dg_t_present(posd)) return dg_pos_fwd_dev(m->be, qo, xi, posd, c->positional, c->rope_theta);
    return dg_pos_fwd(m->be, qo, xi, pos0, c->positional, c->rope_theta);
}

static int infer_x(dg_infer_t *ix, dg_tensor vin, int64_t B, int64_t T, const int64_t *pos0) {
    return infer_x_at(ix, vin, B, T, pos0, dg_t_null());
}

/* logits (n, V) on the device from the last hidden rows v */
static int logits_rows(dg_infer_t *ix, dg_tensor v, int64_t n) {
    dg_model_t *m = ix->m;
    const dg_model_config *c = &m->cfg;
    int64_t D = c->n_embd, V = c->vocab_size;
    dg_tensor lg = rows(ix->logits, n);
    if (c->tie_embeddings) return matmul(m->be, lg, v, dg_model_param(m, DG_P_EMBED), n, D, V, true, 0);
    return matmul(m->be, lg, v, dg_model_param(m, DG_P_LM_HEAD), n, D, V, false, 0);
}

static int infer_logits(dg_infer_t *ix, dg_tensor v, int64_t n, float *host) {
    RC(logits_rows(ix, v, n));
    return dg_get(ix->m->be, host, rows(ix->logits, n));
}

int dg_infer_prefill(dg_infer_t *ix, dg_state_t *s, const int32_t *tokens, int n,
                     float *logits_out) {
    dg_model_t *m = ix->m;
    DG_ASSERT(s->m == m);
    if (n <= 0) return DG_EINVAL;
    const dg_model_config *c = &m->cfg;
    int64_t D = c->n_embd, H = c->n_head, Nq = dg_model_qdim(c);
    RC(state_normalize(s));
    for (int off = 0; off < n; off += ix->max_T) {
        int64_t T = n - off < ix->max_T ? n - off : ix->max_T;
        dg_tensor v = rows(ix->v0, T), v2 = rows(ix->v1, T);
        RC(infer_embed(ix, tokens + off, T, v));
        int64_t pos0 = s->pos;
        for (int l = 0; l < c->n_layer; l++) {
            RC(infer_x(ix, v, 1, T, &pos0));
            dg_tensor rin = state_layer(s, l, 1);
            dg_tensor rout = dg_t4(ix->rho_tmp.buf, ix->rho_tmp.offs, 1, H, Nq, D);
            RC(dg_attn_fwd(m->be, dg_t4(ix->a.a.buf, ix->a.a.offs, 1, T, H, D), rout,
                           dg_t4(ix->a.q.buf, ix->a.q.offs, 1, T, H, Nq), dg_t3(v.buf, v.offs, 1, T, D),
                           rin, m->gamma));
            RC(dg_copy(m->be, rin, rout));
            RC(infer_layer_rest(ix, T, v, v2, false));
            dg_tensor t = v; v = v2; v2 = t;
        }
        s->pos += T;
        if (off + T >= n && logits_out)
            RC(infer_logits(ix, dg_t2(v.buf, v.offs + (size_t)((T - 1) * D) * 4, 1, D), 1, logits_out));
    }
    return 0;
}

/* Every verb of a decode step from the tokens on the device (tok) to the logits on the device.
 * posd present: positions from the device (recorded steps), else ix->pos0 from the host. */
static int step_verbs(dg_infer_t *ix, int B, dg_state_t **states, dg_tensor tok, dg_tensor posd) {
    dg_model_t *m = ix->m;
    const dg_model_config *c = &m->cfg;
    int64_t D = c->n_embd, H = c->n_head, Nq = dg_model_qdim(c);
    bool lazy = dg_has_attn_step_lazy(m->be);
    dg_tensor v = rows(ix->v0, B), v2 = rows(ix->v1, B);
    int rc = embed_rows(ix, tok, B, v);
    for (int l = 0; l < c->n_layer && !rc; l++) {
        rc = infer_x_at(ix, v, B, 1, ix->pos0, posd);
        if (rc) break;
        for (int b = 0; b < B; b++) ix->rho_views[b] = state_layer(states[b], l, 1);
        dg_tensor ao = dg_t3(ix->a.a.buf, ix->a.a.offs, B, H, D);
        dg_tensor qv = dg_t3(ix->a.q.buf, ix->a.q.offs, B, H, Nq), vv = dg_t2(v.buf, v.offs, B, D);
        if (lazy) {
            for (int b = 0; b < B; b++)
                memcpy(ix->scale + b * H, states[b]->scale + l * H, (size_t)H * sizeof(float));
            rc = dg_attn_step_lazy(m->be, B, ix->rho_views, ix->scale, ao, qv, vv, m->gamma);
            for (int b = 0; b < B; b++)
                memcpy(states[b]->scale + l * H, ix->scale + b * H, (size_t)H * sizeof(float));
        } else {
            rc = dg_attn_step(m->be, B, ix->rho_views, ao, qv, vv, m->gamma);
        }
        if (rc) break;
        rc = infer_layer_rest(ix, B, v, v2, true);
        dg_tensor t = v; v = v2; v2 = t;
    }
    RC(rc);
    return logits_rows(ix, v, B);
}

/* The recorded-step key: B and the device address of every sequence's state. */
static bool graph_key_same(const dg_infer_t *ix, int B, dg_state_t **states) {
    if (ix->g_B != B) return false;
    for (int b = 0; b < B; b++)
        if (ix->g_rho[b] != states[b]->buf->data) return false;
    return true;
}

static void graph_drop(dg_infer_t *ix) {
    dg_graph_free(ix->m->be, ix->graph);
    ix->graph = NULL;
}

/* The verbs of a decode step through a recorded graph: the step's tokens and positions go up in
 * one copy and one launch runs every verb, leaving the logits on the device. The graph is
 * recorded on the second consecutive step with the same sequences (the first, run verb by verb,
 * sizes every backend buffer); a different set of sequences records again. Returns 1 when the
 * step should run verb by verb instead (nothing has been changed then). */
static int step_graph(dg_infer_t *ix, int B, dg_state_t **states, const int32_t *tokens) {
    dg_model_t *m = ix->m;
    dg_backend_t *be = m->be;
    if (!graph_key_same(ix, B, states)) {
        graph_drop(ix);
        ix->g_B = B;
        for (int b = 0; b < B; b++) ix->g_rho[b] = states[b]->buf->data;
        ix->g_seen = 0;
    }
    if (!ix->graph && ix->g_seen++ < 1) return 1;     /* also: recording failed for this key */
    for (int b = 0; b < B; b++) {
        ix->gin_host[b] = tokens[b];
        if (states[b]->pos > INT32_MAX - 1) return 1;
        ix->gin_host[B + b] = (int32_t)states[b]->pos;
    }
    dg_tensor gin = dg_t_i32(ix->gin.buf, ix->gin.offs, 2 * (int64_t)B);
    RC(dg_set(be, gin, ix->gin_host));
    if (!ix->graph) {
        dg_tensor tok = dg_t_i32(ix->gin.buf, ix->gin.offs, B);
        dg_tensor posd = dg_t_i32(ix->gin.buf, ix->gin.offs + (size_t)B * 4, B);
        void *g = NULL;
        int rc = dg_graph_begin(be);
        if (!rc) {
            int vr = step_verbs(ix, B, states, tok, posd);
            rc = dg_graph_end(be, &g);
            if (!rc && vr) { dg_graph_free(be, g); g = NULL; rc = vr; }
        }
        if (rc) {       /* this set of sequences runs verb by verb (until the set changes) */
            if (!ix->g_warned)
                DG_WARN("decode: the step could not be recorded as a graph (%s: %s); it runs verb "
                        "by verb", dg_err_name(rc), be->errmsg);
            ix->g_warned = true;
            ix->g_seen = INT32_MIN;
            return 1;
        }
        ix->graph = g;
        ix->g_records++;
    }
    int rc = dg_graph_launch(be, ix->graph);
    if (rc == DG_ESTALE) {       /* a backend buffer moved: record again on the next step */
        graph_drop(ix);
        ix->g_seen = 1;          /* this verb-by-verb step sizes the buffers again */
        return 1;
    }
    RC(rc);
    ix->g_steps++;
    return 0;
}

int64_t dg_infer_graph_steps(const dg_infer_t *ix) { return ix->g_steps; }
int64_t dg_infer_graph_records(const dg_infer_t *ix) { return ix->g_records; }

int dg_infer_step(dg_infer_t *ix, int B, dg_state_t **states, const int32_t *tokens,
                  float *logits_out) {
    dg_model_t *m = ix->m;
    DG_ASSERT(B >= 1 && B <= ix->max_B);
    for (int b = 0; b < B; b++) { DG_ASSERT(states[b]->m == m); ix->pos0[b] = states[b]->pos; }
    RC(check_tokens(m, tokens, B));
    if (!dg_has_attn_step_lazy(m->be))
        for (int b = 0; b < B; b++) RC(state_normalize(states[b]));
    if (ix->gp) RC(wt_refresh(ix));
    int rc = ix->g_off ? 1 : step_graph(ix, B, states, tokens);
    if (rc < 0) return rc;
    if (rc == 1) {
        dg_tensor tok = dg_t_i32(ix->tok.buf, ix->tok.offs, B);
        RC(dg_set(m->be, tok, tokens));
        RC(step_verbs(ix, B, states, tok, dg_t_null()));
    }
    for (int b = 0; b < B; b++) states[b]->pos++;
    return logits_out ? dg_get(m->be, logits_out, rows(ix->logits, B)) : 0;
}
