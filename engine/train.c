/* engine/train.c -- the training job executor: AdamW (MODEL.md §6.1), the LR schedules (§6.2),
 * gradient accumulation and clipping, seeded batches (§7.3), evaluation and checkpoints.
 *
 * One call of dg_trainer_step is one optimizer step, so a driver can interleave other work,
 * pause, cancel and checkpoint between steps. Everything that makes a run reproducible (params,
 * moments, step, loader RNG and cursor; dropout seeds derive from (seed, step, micro-batch))
 * goes into the checkpoint, so N steps + save + resume + N steps equals 2N steps bit for bit.
 * Thread affinity: the thread that owns the trainer's backend. */
#include "train.h"
#include "ckpt.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void dg_train_config_default(dg_train_config *t) {
    memset(t, 0, sizeof *t);
    t->batch_size = 24;
    t->block_size = 512;
    t->chunk = 0;
    t->max_steps = 1000;
    t->epochs = 0;
    t->lr = 1e-3f;
    t->min_lr = 5e-5f;
    t->warmup_steps = 0;
    t->schedule = DG_LR_COSINE;
    t->weight_decay = 0.1f;
    t->beta1 = 0.9f;
    t->beta2 = 0.999f;
    t->eps = 1e-5f;
    t->grad_clip = 0;
    t->grad_accum = 1;
    t->log_interval = 10;
    t->eval_interval = 100;
    t->eval_iters = 20;
    t->ckpt_interval = 500;
    t->keep_checkpoints = 3;
    t->seed = 1337;
    t->tokenizer = DG_TOK_CHAR;
    t->train_frac = 0.9;
}

#define TFAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return DG_ECONFIG; } while (0)

int dg_train_config_validate(const dg_train_config *t, char *err, size_t errlen) {
    if (t->batch_size < 1 || t->batch_size > 65536) TFAIL("batch_size: must be in [1, 65536] (got %d)", t->batch_size);
    if (t->block_size < 1 || t->block_size > 1 << 20) TFAIL("block_size: must be in [1, 1048576] (got %d)", t->block_size);
    if (t->chunk < 0) TFAIL("chunk_size: must be >= 0 (got %d)", t->chunk);
    if (t->max_steps < 1 && !(t->epochs > 0)) TFAIL("max_steps: must be >= 1 (or set epochs)");
    if (t->epochs < 0) TFAIL("epochs: must be >= 0 (got %g)", t->epochs);
    if (!(t->lr > 0) || !isfinite(t->lr)) TFAIL("lr: must be > 0 (got %g)", t->lr);
    if (!(t->min_lr >= 0) || t->min_lr > t->lr) TFAIL("min_lr: must be in [0, lr] (got %g)", t->min_lr);
    if (t->warmup_steps < 0) TFAIL("warmup_steps: must be >= 0");
    if (t->schedule != DG_LR_CONSTANT && t->schedule != DG_LR_COSINE) TFAIL("lr_schedule: must be constant or cosine");
    if (!(t->weight_decay >= 0)) TFAIL("weight_decay: must be >= 0 (got %g)", t->weight_decay);
    if (!(t->beta1 >= 0 && t->beta1 < 1)) TFAIL("beta1: must be in [0, 1) (got %g)", t->beta1);
    if (!(t->beta2 >= 0 && t->beta2 < 1)) TFAIL("beta2: must be in [0, 1) (got %g)", t->beta2);
    if (!(t->eps > 0)) TFAIL("eps: must be > 0 (got %g)", t->eps);
    if (!(t->grad_clip >= 0)) TFAIL("grad_clip: must be >= 0 (got %g)", t->grad_clip);
    if (t->grad_accum < 1 || t->grad_accum > 4096) TFAIL("grad_accum: must be in [1, 4096] (got %d)", t->grad_accum);
    if (t->log_interval < 1) TFAIL("log_interval: must be >= 1");
    if (t->eval_interval < 0) TFAIL("eval_interval: must be >= 0");
    if (t->eval_iters < 0) TFAIL("eval_iters: must be >= 0");
    if (t->ckpt_interval < 0) TFAIL("ckpt_interval: must be >= 0");
    if (t->keep_checkpoints < 1) TFAIL("keep_checkpoints: must be >= 1");
    if (t->tokenizer != DG_TOK_CHAR && t->tokenizer != DG_TOK_BYTE) TFAIL("tokenizer: must be char or byte");
    if (!(t->train_frac > 0 && t->train_frac <= 1)) TFAIL("train_frac: must be in (0, 1] (got %g)", t->train_frac);
    return 0;
}

float dg_lr_at(const dg_train_config *t, int64_t total, int64_t k) {
    double peak = t->lr, lo = t->min_lr;
    int64_t W = t->warmup_steps;
    if (W > 0 && k <= W) return (float)(peak * (double)k / (double)W);
    if (t->schedule == DG_LR_CONSTANT) return (float)peak;
    int64_t Tc = total - W;
    if (Tc <= 0) return (float)lo;
    int64_t c = (k - W - 1) % (Tc + 1);
    return (float)(lo + 0.5 * (peak - lo) * (1.0 + cos(M_PI * (double)c / (double)Tc)));
}

// ------------------------------------------------------------------------------------------

struct dg_trainer_s {
    dg_backend_t         *be;
    dg_model_t           *model;
    dg_train_config       tc;
    dg_model_config       mc;
    const dg_tokenizer_t *tok;
    dg_dataset            ds;
    dg_loader             loader;
    dg_buf_t             *mom_buf;     /* (2, n_params): AdamW m then v */
    int64_t               step;
    int64_t               total;
    int64_t               tokens_seen;
    int32_t              *inp, *tgt;   /* (B*T) host batch */
    int64_t              *offsets;     /* optional fixed batch starts */
    int64_t               n_offsets;
};

static dg_tensor mom(dg_trainer_t *tr, int which) {
    int64_t n = dg_model_n_params(&tr->mc);
    return dg_t1(tr->mom_buf, (size_t)(which * n) * 4, n);
}

static bool same_model(const dg_model_config *a, const dg_model_config *b) {
    return a->n_layer == b->n_layer && a->n_embd == b->n_embd && a->n_head == b->n_head &&
           a->mlp_mult == b->mlp_mult && a->vocab_size == b->vocab_size &&
           a->positional == b->positional && a->norm == b->norm &&
           a->tie_embeddings == b->tie_embeddings;
}

int dg_trainer_create(const dg_trainer_spec *sp, dg_trainer_t **out, char *err, size_t errlen) {
    dg_trainer_t *tr = dg_calloc(1, sizeof *tr);
    dg_ckpt ck = {0};
    bool have_ck = false;
    int rc;
    tr->tc = sp->train;
    tr->mc = sp->model;
    tr->tok = sp->tokenizer;
    tr->mc.vocab_size = dg_tokenizer_vocab(sp->tokenizer);
    if ((rc = dg_model_config_validate(&tr->mc, err, errlen))) goto fail;
    if ((rc = dg_train_config_validate(&tr->tc, err, errlen))) goto fail;
    if (sp->resume_path) {
        if ((rc = dg_ckpt_read(sp->resume_path, true, &ck, err, errlen))) goto fail;
        have_ck = true;
        if (!same_model(&ck.model, &tr->mc)) {
            snprintf(err, errlen, "resume: checkpoint %s was trained with a different model config "
                     "(or tokenizer); HINT: resume with the run's own config.json", sp->resume_path);
            rc = DG_ECONFIG;
            goto fail;
        }
        if (!ck.adam_m || !ck.adam_v) {
            snprintf(err, errlen, "resume: checkpoint %s has no optimizer state", sp->resume_path);
            rc = DG_ECORRUPT;
            goto fail;
        }
    }
    int32_t *toks = dg_malloc((sp->n_tokens ? sp->n_tokens : 1) * sizeof *toks);
    memcpy(toks, sp->tokens, sp->n_tokens * sizeof *toks);
    if ((rc = dg_dataset_init(&tr->ds, toks, sp->n_tokens, tr->tc.train_frac, tr->tc.block_size, err, errlen)))
        goto fail;
    int64_t spe = dg_loader_steps_per_epoch(&tr->ds, tr->tc.batch_size, tr->tc.block_size);
    tr->total = tr->tc.epochs > 0 ? (int64_t)ceil(tr->tc.epochs * (double)spe) : tr->tc.max_steps;
    if (tr->total < 1) tr->total = 1;

    dg_backend_params bp = {.device = sp->device};
    if ((rc = dg_backend_open(sp->backend ? sp->backend : "cpu", &bp, &tr->be))) {
        snprintf(err, errlen, "backend '%s' could not be opened: %s", sp->backend ? sp->backend : "cpu",
                 dg_strerror(rc));
        goto fail;
    }
    if ((rc = dg_model_create(tr->be, &tr->mc, &tr->model))) {
        snprintf(err, errlen, "model: %s", dg_strerror(rc));
        goto fail;
    }
    int64_t n = dg_model_n_params(&tr->mc);
    if ((rc = dg_buf_alloc(tr->be, (size_t)n * 8, &tr->mom_buf)) ||
        (rc = dg_model_alloc_train(tr->model, tr->tc.batch_size, tr->tc.block_size, tr->tc.chunk))) {
        snprintf(err, errlen, "allocating training memory for B=%d T=%d: %s", tr->tc.batch_size,
                 tr->tc.block_size, dg_strerror(rc));
        goto fail;
    }
    dg_loader_init(&tr->loader, &tr->ds, tr->tc.batch_size, tr->tc.block_size, false,
                   tr->tc.seed ^ 0x6461746173656564ull);
    if (have_ck) {
        if ((rc = dg_model_set_params(tr->model, ck.params)) || (rc = dg_set(tr->be, mom(tr, 0), ck.adam_m)) ||
            (rc = dg_set(tr->be, mom(tr, 1), ck.adam_v))) {
            snprintf(err, errlen, "uploading checkpoint: %s", dg_strerror(rc));
            goto fail;
        }
        tr->step = ck.step;
        tr->loader.st = ck.loader;
        tr->tokens_seen = ck.step * (int64_t)tr->tc.batch_size * tr->tc.block_size * tr->tc.grad_accum;
        dg_ckpt_free(&ck);
    } else {
        if ((rc = dg_model_init_params(tr->model, tr->tc.seed)) || (rc = dg_fill(tr->be, mom(tr, 0), 0)) ||
            (rc = dg_fill(tr->be, mom(tr, 1), 0))) {
            snprintf(err, errlen, "initialising parameters: %s", dg_strerror(rc));
            goto fail;
        }
    }
    if (sp->offsets && sp->n_offsets > 0) {
        int64_t lim = (int64_t)tr->ds.n_train - tr->tc.block_size - 1;
        for (int64_t i = 0; i < sp->n_offsets; i++)
            if (sp->offsets[i] < 0 || sp->offsets[i] > lim) {
                snprintf(err, errlen, "offsets: entry %lld (%lld) is outside [0, %lld]", (long long)i,
                         (long long)sp->offsets[i], (long long)lim);
                rc = DG_EINVAL;
                goto fail;
            }
        tr->offsets = dg_malloc((size_t)sp->n_offsets * sizeof *tr->offsets);
        memcpy(tr->offsets, sp->offsets, (size_t)sp->n_offsets * sizeof *tr->offsets);
        tr->n_offsets = sp->n_offsets;
    }
    size_t bt = (size_t)tr->tc.batch_size * tr->tc.block_size;
    tr->inp = dg_malloc(bt * sizeof *tr->inp);
    tr->tgt = dg_malloc(bt * sizeof *tr->tgt);
    *out = tr;
    return 0;
fail:
    if (have_ck) dg_ckpt_free(&ck);
    dg_trainer_free(tr);
    return rc;
}

void dg_trainer_free(dg_trainer_t *tr) {
    if (!tr) return;
    if (tr->be) {
        dg_model_free(tr->model);
        dg_buf_free(tr->be, tr->mom_buf);
        dg_backend_close(tr->be);
    }
    dg_dataset_free(&tr->ds);
    dg_free(tr->inp);
    dg_free(tr->tgt);
    dg_free(tr->offsets);
    dg_free(tr);
}

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t z = a ^ (b * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Micro-batch k of the current step from the fixed offsets table. */
static void fixed_batch(dg_trainer_t *tr, int k) {
    int B = tr->tc.batch_size, T = tr->tc.block_size;
    for (int r = 0; r < B; r++) {
        int64_t i = ((tr->step * tr->tc.grad_accum + k) * B + r) % tr->n_offsets;
        const int32_t *src = tr->ds.tokens + tr->offsets[i];
        memcpy(tr->inp + (size_t)r * T, src, (size_t)T * sizeof *src);
        memcpy(tr->tgt + (size_t)r * T, src + 1, (size_t)T * sizeof *src);
    }
}

int dg_trainer_step(dg_trainer_t *tr, dg_step_info *info) {
    double t0 = dg_now();
    const dg_train_config *tc = &tr->tc;
    int rc;
    if ((rc = dg_model_zero_grad(tr->model))) return rc;
    double loss_sum = 0;
    /* The loader state before the step: restored if the step fails, so nothing is consumed. */
    dg_loader_state saved = tr->loader.st;
    for (int k = 0; k < tc->grad_accum; k++) {
        if (tr->offsets) fixed_batch(tr, k);
        else dg_loader_next(&tr->loader, tr->inp, tr->tgt);
        float loss;
        uint64_t seed = mix(mix(tc->seed, (uint64_t)tr->step + 1), (uint64_t)k);
        if ((rc = dg_model_forward(tr->model, tr->inp, tr->tgt, true, seed, &loss))) goto fail;
        if (!isfinite(loss)) { rc = DG_ENAN; goto fail; }
        if ((rc = dg_model_backward(tr->model))) goto fail;
        loss_sum += loss;
    }
    double ss = 0;
    if ((rc = dg_sumsq(tr->be, &ss, dg_model_grads(tr->model)))) goto fail;
    double gnorm = sqrt(ss) / tc->grad_accum;
    if (!isfinite(gnorm)) { rc = DG_ENAN; goto fail; }
    float scale = 1.0f / (float)tc->grad_accum;
    if (tc->grad_clip > 0 && gnorm > tc->grad_clip) scale *= (float)(tc->grad_clip / gnorm);
    int64_t k1 = tr->step + 1;
    dg_adamw_hp hp = {.lr = dg_lr_at(tc, tr->total, k1), .beta1 = tc->beta1, .beta2 = tc->beta2,
                      .eps = tc->eps, .weight_decay = tc->weight_decay, .grad_scale = scale, .step = k1};
    if ((rc = dg_adamw(tr->be, dg_model_params(tr->model), dg_model_grads(tr->model), mom(tr, 0),
                       mom(tr, 1), &hp)))
        goto fail;
    dg_model_params_changed(tr->model);
    if ((rc = dg_sync(tr->be))) goto fail;
    tr->step = k1;
    int64_t ntok = (int64_t)tc->batch_size * tc->block_size * tc->grad_accum;
    tr->tokens_seen += ntok;
    if (info) {
        double dt = dg_now() - t0;
        info->step = tr->step;
        info->total_steps = tr->total;
        info->loss = (float)(loss_sum / tc->grad_accum);
        info->lr = hp.lr;
        info->grad_norm = (float)gnorm;
        info->step_seconds = dt;
        info->tokens_per_s = dt > 0 ? (double)ntok / dt : 0;
        info->tokens_seen = tr->tokens_seen;
    }
    return 0;
fail:
    tr->loader.st = saved;
    return rc;
}

bool dg_trainer_done(const dg_trainer_t *tr) { return tr->step >= tr->total; }
int64_t dg_trainer_step_count(const dg_trainer_t *tr) { return tr->step; }
int64_t dg_trainer_total_steps(const dg_trainer_t *tr) { return tr->total; }
dg_model_t *dg_trainer_model(dg_trainer_t *tr) { return tr->model; }
const dg_train_config *dg_trainer_config(const dg_trainer_t *tr) { return &tr->tc; }

int dg_trainer_eval(dg_trainer_t *tr, float *val_loss, int64_t *n_tokens) {
    int B = tr->tc.batch_size, T = tr->tc.block_size;
    int64_t nb = dg_eval_blocks(&tr->ds, T, tr->tc.eval_iters > 0 ? tr->tc.eval_iters * B : 0);
    if (nb <= 0) return DG_EDATA;
    double sum = 0;
    int64_t count = 0;
    for (int64_t i0 = 0; i0 < nb; i0 += B) {
        int valid = (int)(nb - i0 < B ? nb - i0 : B);
        for (int r = 0; r < B; r++)   /* pad a short last batch by repeating its first block */
            dg_eval_block(&tr->ds, T, i0 + (r < valid ? r : 0), tr->inp + (size_t)r * T,
                          tr->tgt + (size_t)r * T);
        float loss;
        int rc = dg_model_forward(tr->model, tr->inp, tr->tgt, false, 0, &loss);
        if (rc) return rc;
        const float *pl = dg_model_last_losses(tr->model);
        for (int64_t j = 0; j < (int64_t)valid * T; j++) sum += pl[j];
        count += (int64_t)valid * T;
    }
    *val_loss = (float)(sum / (double)count);
    if (n_tokens) *n_tokens = count;
    return 0;
}

int dg_trainer_save(dg_trainer_t *tr, const char *path, char *err, size_t errlen) {
    int64_t n = dg_model_n_params(&tr->mc);
    dg_ckpt ck = {0};
    ck.model = tr->mc;
    ck.train = tr->tc;
    ck.step = tr->step;
    ck.loader = tr->loader.st;
    ck.tokenizer = (dg_tokenizer_t *)tr->tok;
    ck.n_params = n;
    ck.params = dg_try_malloc((size_t)n * 4);
    ck.adam_m = dg_try_malloc((size_t)n * 4);
    ck.adam_v = dg_try_malloc((size_t)n * 4);
    int rc = DG_ENOMEM;
    if (ck.params && ck.adam_m && ck.adam_v) {
        rc = dg_model_get_params(tr->model, ck.params);
        if (!rc) rc = dg_get(tr->be, ck.adam_m, mom(tr, 0));
        if (!rc) rc = dg_get(tr->be, ck.adam_v, mom(tr, 1));
        if (!rc) rc = dg_ckpt_write(path, &ck, err, errlen);
        else snprintf(err, errlen, "reading parameters from the device: %s", dg_strerror(rc));
    } else {
        snprintf(err, errlen, "out of memory for a checkpoint of %lld parameters", (long long)n);
    }
    dg_free(ck.params);
    dg_free(ck.adam_m);
    dg_free(ck.adam_v);
    return rc;
}
