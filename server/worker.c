/* server/worker.c -- the engine threads, one per device (the CPU, and every GPU the cuda
 * backend finds): each runs one job at a time (training or benchmark), polls the atomic cancel/pause/checkpoint flags between optimizer steps, and posts
 * everything it has to say (progress, metric, log, checkpoint, dataset, bench, done) to the
 * loop's outbox (jobs.c) as JSON values it no longer touches.
 *
 * Training: data file (or dataset preset) -> tokenizer (runs/<id>/tokenizer.json, fitted on the
 * first attempt, reloaded on resumes) -> tokens -> dg_trainer (resuming from a .dck when the
 * job carries one) -> steps. Progress and train_loss every log_interval steps, val_loss every
 * eval_interval steps (and at the end), checkpoints every ckpt_interval steps, on request, on
 * pause/cancel/shutdown and at the end, written by dg_trainer_save (atomic) and hashed here.
 * Failure reasons: invalid_config, data_error, nan_loss, oom, internal.
 * Not here: SQLite, HTTP (the loop owns those). Thread affinity: the engine thread, except
 * dg_worker_start/submit/flags/stop (LOOP thread). */
#include "srv.h"
#include "infer.h"
#include "engine/ckpt.h"
#include "engine/tokenizer.h"
#include "proto/config_json.h"
#include "proto/sha256.h"
#include "proto/tokenizer_json.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One engine thread per device. Loop-thread code reads and writes pending/busy/job under mu;
 * the thread itself reads only its own fields. */
typedef struct {
    char            name[32];        /* "cpu", "cuda:0", ... */
    char            kind[8];         /* cpu | cuda */
    char            backend[16];     /* backend the jobs of this device open */
    int             index;           /* device index within the backend */
    pthread_t       th;
    bool            started;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    dg_work        *pending;
    bool            busy, quit, exited;
    char            job[DG_ID_LEN];  /* job it holds, "" when idle */
    dg_work_flags   flags;
} device;

static device D[DG_MAX_DEVICES];
static int    n_dev;
static _Thread_local device *tl_dev;   /* the device whose thread this is */

static _Thread_local const char *tl_job;    /* job whose logs engine lines belong to */


void dg_work_free(dg_work *w) {
    if (!w) return;
    dg_free(w->data_path);
    dg_free(w->preset);
    dg_free(w->resume_path);
    dg_free(w->run_dir);
    dg_free(w->data_dir);
    dg_free(w->backend);
    dg_free(w->preset_url);
    dg_free(w);
}

static void post_log(const char *job, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void post_log(const char *job, const char *level, const char *fmt, ...) {
    char msg[1500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dg_outbox_post(job, "log", json_pack("{s:s, s:s}", "level", level, "msg", msg));
}

/* Engine log lines: printed on stderr, and on the engine thread also kept in the job's log. */
static void log_hook(dg_log_level lvl, const char *msg, void *ud) {
    (void)ud;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    const char *name = names[lvl >= 0 && lvl <= 3 ? lvl : 1];
    fprintf(stderr, "dragond: %s: %s\n", name, msg);
    if (tl_job && lvl >= DG_LOG_INFO)
        dg_outbox_post(tl_job, "log", json_pack("{s:s, s:s}", "level", name, "msg", msg));
}

static void post_done(const char *job, const char *outcome, const char *reason,
                      const char *msg) {
    json_t *d = json_pack("{s:s}", "outcome", outcome);
    if (reason) json_object_set_new(d, "reason", json_string(reason));
    if (msg) json_object_set_new(d, "message", json_string(msg));
    dg_outbox_post(job, "done", d);
}

static const char *reason_of(int rc) {
    switch (rc) {
    case DG_ECONFIG: case DG_ESHAPE: return "invalid_config";
    case DG_EDATA: case DG_ENOTFOUND: case DG_ECORRUPT: case DG_EVERSION: return "data_error";
    case DG_ENAN: return "nan_loss";
    case DG_EOOM: case DG_ENOMEM: return "oom";
    default: return "internal";
    }
}

static int save_ckpt(dg_work *w, dg_trainer_t *tr, double train_loss, double val_loss,
                     char *err, size_t errlen) {
    char dir[1200], path[1300];
    snprintf(dir, sizeof dir, "%s/ckpt", w->run_dir);
    if (dg_mkdirs(dir)) {
        snprintf(err, errlen, "cannot create %s", dir);
        return DG_EIO;
    }
    int64_t step = dg_trainer_step_count(tr);
    snprintf(path, sizeof path, "%s/step-%lld.dck", dir, (long long)step);
    int rc = dg_trainer_save(tr, path, err, errlen);
    if (rc) return rc;
    char hex[65] = "";
    uint64_t size = 0;
    char e2[256];
    if (dg_sha256_file(path, hex, &size, e2, sizeof e2) != 0) hex[0] = 0;
    json_t *d = json_pack("{s:I, s:s, s:I, s:i}", "step", (json_int_t)step, "path", path,
                          "bytes", (json_int_t)size, "keep", w->train.keep_checkpoints);
    if (hex[0]) json_object_set_new(d, "sha256", json_string(hex));
    if (train_loss == train_loss) json_object_set_new(d, "train_loss", json_real(train_loss));
    if (val_loss == val_loss) json_object_set_new(d, "val_loss", json_real(val_loss));
    dg_outbox_post(w->job_id, "checkpoint", d);
    return 0;
}

static void post_metric(const char *job, int64_t step, const char *k1, double v1,
                        const char *k2, double v2, const char *k3, double v3) {
    json_t *vals = json_object();
    json_object_set_new(vals, k1, json_real(v1));
    if (k2) json_object_set_new(vals, k2, json_real(v2));
    if (k3) json_object_set_new(vals, k3, json_real(v3));
    dg_outbox_post(job, "metric", json_pack("{s:I, s:I, s:o}", "step", (json_int_t)step,
                                            "ts_ms", (json_int_t)dg_wall_ms(), "values", vals));
}

static void run_train(dg_work *w) {
    char err[2048] = "";
    char *text = NULL;
    size_t n_text = 0;
    dg_tokenizer_t *tok = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    dg_trainer_t *tr = NULL;
    int rc;
    const char *job = w->job_id;

    if (dg_mkdirs(w->run_dir)) {
        post_done(job, "failed", "internal", "cannot create the run directory");
        return;
    }
    /* data */
    char data_path[1200];
    if (w->preset) {
        post_log(job, "info", "dataset preset %s", w->preset);
        rc = dg_dataset_preset(w->preset, w->data_dir, w->preset_url, w->download_timeout_s,
                               &tl_dev->flags.cancel, data_path, sizeof data_path, err, sizeof err);
        if (rc) {
            if (atomic_load(&tl_dev->flags.cancel)) post_done(job, "cancelled", NULL, NULL);
            else post_done(job, "failed", "data_error", err);
            return;
        }
    } else {
        snprintf(data_path, sizeof data_path, "%s", w->data_path ? w->data_path : "");
    }
    if ((rc = dg_read_file(data_path, &text, &n_text, err, sizeof err))) {
        char m[3400];
        snprintf(m, sizeof m, "cannot read the training data %s: %s", data_path, err);
        post_done(job, "failed", "data_error", m);
        return;
    }
    {
        uint8_t dig[32];
        char hex[65];
        dg_sha256(text, n_text, dig);
        dg_sha256_hex(dig, hex);
        dg_outbox_post(job, "dataset", json_pack("{s:s, s:s}", "path", data_path,
                                                 "sha256", hex));
    }
    /* tokenizer */
    char tok_path[1200], cfg_path[1200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", w->run_dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", w->run_dir);
    if (w->resume_path && access(tok_path, R_OK) == 0) {
        rc = dg_tokenizer_load_json(tok_path, &tok, err, sizeof err);
    } else if (w->resume_path) {            /* resuming another run's checkpoint */
        dg_ckpt ck;
        memset(&ck, 0, sizeof ck);
        rc = dg_ckpt_read(w->resume_path, false, &ck, err, sizeof err);
        if (rc == 0) {
            tok = ck.tokenizer;
            ck.tokenizer = NULL;
            dg_ckpt_free(&ck);
        }
    } else if (w->train.tokenizer == DG_TOK_BYTE) {
        rc = dg_tokenizer_byte(&tok);
    } else {
        rc = dg_tokenizer_fit_char(text, n_text, &tok);
        if (rc)
            snprintf(err, sizeof err, "cannot fit a char tokenizer on %.900s (empty?)",
                         data_path);
    }
    if (rc) goto fail;
    if (!w->resume_path || access(tok_path, R_OK) != 0) {
        if ((rc = dg_tokenizer_save_json(tok_path, tok, err, sizeof err))) goto fail;
    }
    if ((rc = dg_tokenizer_encode(tok, text, n_text, false, &ids, &n_ids, err, sizeof err)))
        goto fail;
    dg_free(text);
    text = NULL;
    {
        dg_model_config mc = w->model;
        mc.vocab_size = dg_tokenizer_vocab(tok);
        json_t *cj = dg_config_to_json(&mc, &w->train);
        char *cs = dg_json_text(cj);
        json_decref(cj);
        rc = dg_write_atomic(cfg_path, cs, strlen(cs), err, sizeof err);
        dg_free(cs);
        if (rc) goto fail;
    }
    post_log(job, "info", "data %s: %zu tokens, vocab %d", data_path, n_ids,
             dg_tokenizer_vocab(tok));
    dg_trainer_spec spec = {0};
    spec.backend = w->backend;
    spec.device = w->device;
    spec.model = w->model;
    spec.train = w->train;
    spec.tokenizer = tok;
    spec.tokens = ids;
    spec.n_tokens = n_ids;
    spec.resume_path = w->resume_path;
    if ((rc = dg_trainer_create(&spec, &tr, err, sizeof err))) goto fail;
    dg_free(ids);
    ids = NULL;

    const dg_train_config *tc = dg_trainer_config(tr);
    int64_t total = dg_trainer_total_steps(tr);
    int64_t log_iv = tc->log_interval > 0 ? tc->log_interval : 1;
    post_log(job, "info", "training %lld steps from step %lld (%lld parameters, device %s)",
             (long long)total, (long long)dg_trainer_step_count(tr),
             (long long)dg_model_n_params(&w->model), tl_dev->name);
    double last_train = NAN, last_val = NAN;
    int64_t last_eval_step = -1, last_ckpt_step = dg_trainer_step_count(tr);
    int64_t last_tokens = 0;
    bool first = true;
    double t_start = dg_now();
    int64_t step0 = dg_trainer_step_count(tr);
    while (!dg_trainer_done(tr)) {
        int cancel = atomic_load(&tl_dev->flags.cancel), pause = atomic_load(&tl_dev->flags.pause);
        if (cancel || pause) {
            int64_t s = dg_trainer_step_count(tr);
            if (s != last_ckpt_step && (rc = save_ckpt(w, tr, last_train, last_val, err,
                                                       sizeof err)))
                goto fail;
            dg_trainer_free(tr);
            dg_tokenizer_free(tok);
            if (cancel) {
                char m[128];
                snprintf(m, sizeof m, "cancelled at step %lld", (long long)s);
                post_done(job, "cancelled", NULL, m);
            } else {
                post_done(job, pause == 2 ? "parked" : "paused", NULL, NULL);
            }
            return;
        }
        if (atomic_exchange(&tl_dev->flags.checkpoint, 0)) {
            if ((rc = save_ckpt(w, tr, last_train, last_val, err, sizeof err))) goto fail;
            last_ckpt_step = dg_trainer_step_count(tr);
        }
        dg_step_info info;
        dg_infer_train_yield(0.25);      /* a decode step between training steps (infer.c) */
        rc = dg_trainer_step(tr, &info);
        if (rc == DG_ENAN) {
            snprintf(err, sizeof err, "training loss is not finite at step %lld (lr %g). HINT: "
                     "lower the learning rate or enable grad_clip",
                     (long long)dg_trainer_step_count(tr) + 1, info.lr);
            goto fail;
        }
        if (rc) {
            if (!err[0]) snprintf(err, sizeof err, "training step failed: %s", dg_strerror(rc));
            goto fail;
        }
        last_train = info.loss;
        int64_t s = info.step;
        bool last = dg_trainer_done(tr);
        if (first || s % log_iv == 0 || last) {
            first = false;
            double el = dg_now() - t_start;
            double rate = el > 0 ? (double)(s - step0) / el : 0;
            double eta = rate > 0 ? (double)(total - s) / rate : 0;
            json_t *p = json_pack("{s:I, s:I, s:I, s:f, s:f, s:I}", "step", (json_int_t)s,
                                  "total_steps", (json_int_t)info.total_steps, "tokens_seen",
                                  (json_int_t)info.tokens_seen, "tokens_per_s",
                                  info.tokens_per_s, "eta_s", eta, "tokens_delta",
                                  (json_int_t)(info.tokens_seen - last_tokens));
            last_tokens = info.tokens_seen;
            dg_outbox_post(job, "progress", p);
            post_metric(job, s, "train_loss", info.loss, "lr", info.lr, "grad_norm",
                        info.grad_norm);
        }
        if ((tc->eval_interval > 0 && s % tc->eval_interval == 0) || last) {
            float vl = 0;
            int64_t nt = 0;
            if ((rc = dg_trainer_eval(tr, &vl, &nt))) {
                snprintf(err, sizeof err, "evaluation failed: %s", dg_strerror(rc));
                goto fail;
            }
            last_val = vl;
            last_eval_step = s;
            post_metric(job, s, "val_loss", vl, NULL, 0, NULL, 0);
        }
        if ((tc->ckpt_interval > 0 && s % tc->ckpt_interval == 0) || last) {
            if ((rc = save_ckpt(w, tr, last_train, last_val, err, sizeof err))) goto fail;
            last_ckpt_step = s;
        }
    }
    (void)last_eval_step;
    {
        char m[256];
        snprintf(m, sizeof m, "finished %lld steps: train_loss %.4f val_loss %.4f",
                 (long long)dg_trainer_step_count(tr), last_train, last_val);
        dg_trainer_free(tr);
        dg_tokenizer_free(tok);
        post_done(job, "succeeded", NULL, m);
    }
    return;
fail:
    if (!err[0]) snprintf(err, sizeof err, "%s", dg_strerror(rc));
    dg_trainer_free(tr);
    dg_tokenizer_free(tok);
    dg_free(text);
    dg_free(ids);
    post_done(job, "failed", reason_of(rc), err);
}

/* ---- benchmark ------------------------------------------------------------------------------ */
static void run_bench(dg_work *w) {
    const char *job = w->job_id;
    dg_backend_t *be = NULL;
    dg_model_t *m = NULL;
    dg_infer_t *ix = NULL;
    dg_state_t *st[8] = {0};
    int32_t *tok = NULL, *tgt = NULL;
    float *logits = NULL;
    char err[512] = "";
    int rc;
    dg_model_config mc = w->model;
    if (mc.vocab_size <= 0) mc.vocab_size = 259;
    int B = w->train.batch_size, T = w->train.block_size;
    int64_t iters = w->bench_steps > 0 ? w->bench_steps : 5;
    dg_backend_params bp = {.device = w->device};
    if ((rc = dg_backend_open(w->backend, &bp, &be))) {
        snprintf(err, sizeof err, "backend %s: %s", w->backend, dg_strerror(rc));
        goto fail;
    }
    if ((rc = dg_model_create(be, &mc, &m)) || (rc = dg_model_init_params(m, w->train.seed)) ||
        (rc = dg_model_alloc_train(m, B, T, w->train.chunk))) {
        snprintf(err, sizeof err, "model: %s", dg_strerror(rc));
        goto fail;
    }
    tok = dg_malloc((size_t)B * T * sizeof *tok);
    tgt = dg_malloc((size_t)B * T * sizeof *tgt);
    dg_rng rng;
    dg_rng_seed(&rng, w->train.seed);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)dg_rng_below(&rng, (uint64_t)mc.vocab_size);
        tgt[i] = (int32_t)dg_rng_below(&rng, (uint64_t)mc.vocab_size);
    }
    float loss = 0;
    double t0 = 0;
    for (int64_t i = -1; i < iters; i++) {       /* one warm-up */
        if (i == 0) t0 = dg_now();
        if (atomic_load(&tl_dev->flags.cancel)) goto cancelled;
        if ((rc = dg_model_zero_grad(m)) ||
            (rc = dg_model_forward(m, tok, tgt, true, (uint64_t)i, &loss)) ||
            (rc = dg_model_backward(m))) {
            snprintf(err, sizeof err, "train step: %s", dg_strerror(rc));
            goto fail;
        }
    }
    double train_s = dg_now() - t0;
    double train_tps = (double)B * T * (double)iters / (train_s > 0 ? train_s : 1e-9);
    json_t *results = json_array();
    json_array_append_new(results, json_pack("{s:s, s:i, s:i, s:I, s:f, s:f}", "phase",
                                             "train_step_fwd_bwd", "batch", B, "block", T,
                                             "iters", (json_int_t)iters, "tok_s", train_tps,
                                             "seconds", train_s));
    dg_outbox_post(job, "progress", json_pack("{s:i, s:i, s:f}", "step", 1, "total_steps", 2,
                                              "tokens_per_s", train_tps));
    /* cached decode: prefill a short prompt, then token steps, for batch 1 and 8 */
    int gen = 64;
    if ((rc = dg_infer_create(m, 8, T, &ix))) {
        snprintf(err, sizeof err, "infer: %s", dg_strerror(rc));
        json_decref(results);
        goto fail;
    }
    logits = dg_malloc((size_t)8 * mc.vocab_size * sizeof *logits);
    static const int batches[] = {1, 8};
    for (int bi = 0; bi < 2; bi++) {
        int nb = batches[bi];
        for (int b = 0; b < nb; b++) {
            if (!st[b] && (rc = dg_state_create(m, &st[b]))) break;
            dg_state_reset(st[b]);
            rc = dg_infer_prefill(ix, st[b], tok, T < 32 ? T : 32, NULL);
            if (rc) break;
        }
        if (rc) {
            snprintf(err, sizeof err, "prefill: %s", dg_strerror(rc));
            json_decref(results);
            goto fail;
        }
        int32_t next[8] = {0};
        double t1 = dg_now();
        for (int g = 0; g < gen; g++) {
            if (atomic_load(&tl_dev->flags.cancel)) { json_decref(results); goto cancelled; }
            if ((rc = dg_infer_step(ix, nb, st, next, logits))) break;
            for (int b = 0; b < nb; b++) next[b] = (int32_t)((g * 7 + b) % mc.vocab_size);
        }
        if (rc) {
            snprintf(err, sizeof err, "decode step: %s", dg_strerror(rc));
            json_decref(results);
            goto fail;
        }
        double ds = dg_now() - t1;
        json_array_append_new(results, json_pack("{s:s, s:i, s:i, s:f, s:f}", "phase",
                                                 "cached_decode", "batch", nb, "gen_tokens", gen,
                                                 "decode_tok_s", (double)nb * gen /
                                                 (ds > 0 ? ds : 1e-9), "seconds", ds));
    }
    json_t *env = json_pack("{s:s, s:I, s:s}", "backend", w->backend, "n_params",
                            (json_int_t)dg_model_n_params(&mc), "device", tl_dev->name);
    json_object_set_new(env, "config", dg_config_to_json(&mc, &w->train));
    dg_outbox_post(job, "bench", json_pack("{s:o, s:o}", "env", env, "results", results));
    {
        char msg[256];
        snprintf(msg, sizeof msg, "benchmark done: train %.0f tok/s", train_tps);
        post_done(job, "succeeded", NULL, msg);
    }
    goto out;
cancelled:
    post_done(job, "cancelled", NULL, "benchmark cancelled");
    goto out;
fail:
    post_done(job, "failed", reason_of(rc), err);
out:
    for (int b = 0; b < 8; b++) dg_state_free(st[b]);
    dg_infer_free(ix);
    dg_model_free(m);
    dg_backend_close(be);
    dg_free(tok);
    dg_free(tgt);
    dg_free(logits);
}

/* ---- the threads ---------------------------------------------------------------------------- */
static void *thread_main(void *arg) {
    device *d = arg;
    tl_dev = d;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (!d->pending && !d->quit) pthread_cond_wait(&d->cv, &d->mu);
        if (d->quit && !d->pending) {
            d->exited = true;
            pthread_mutex_unlock(&d->mu);
            return NULL;
        }
        dg_work *w = d->pending;
        d->pending = NULL;
        pthread_mutex_unlock(&d->mu);
        dg_free(w->backend);                  /* the device decides the backend */
        w->backend = dg_strdup(d->backend);
        w->device = d->index;
        tl_job = w->job_id;
        if (!strcmp(w->kind, "bench")) run_bench(w);
        else run_train(w);
        tl_job = NULL;
        dg_work_free(w);
        pthread_mutex_lock(&d->mu);
        d->busy = false;
        d->job[0] = 0;
        pthread_mutex_unlock(&d->mu);
    }
}

static void add_device(const char *name, const char *kind, const char *backend, int index) {
    if (n_dev >= DG_MAX_DEVICES) return;
    device *d = &D[n_dev++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->kind, sizeof d->kind, "%s", kind);
    snprintf(d->backend, sizeof d->backend, "%s", backend);
    d->index = index;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
}

int dg_worker_start(uv_loop_t *loop, void (*on_events)(dg_outmsg *list)) {
    (void)loop; (void)on_events;
    n_dev = 0;
    add_device("cpu", "cpu", dg_srv.settings.backend[0] ? dg_srv.settings.backend : "cpu", 0);
    if (dg_backend_find("cuda")) {            /* GPUs: one engine thread each */
        dg_device_info info[DG_MAX_DEVICES - 1];
        int n = dg_backend_devices("cuda", info, DG_MAX_DEVICES - 1);
        for (int i = 0; i < n && i < DG_MAX_DEVICES - 1; i++) {
            char name[32];
            snprintf(name, sizeof name, "cuda:%d", i);
            add_device(name, "cuda", "cuda", i);
            DG_INFO("device %s: %s, %.1f GiB", name, info[i].name,
                    (double)info[i].mem_total / (1024.0 * 1024 * 1024));
        }
    }
    dg_log_set_hook(log_hook, NULL);
    for (int i = 0; i < n_dev; i++) {
        if (pthread_create(&D[i].th, NULL, thread_main, &D[i]) != 0) return DG_EINTERNAL;
        D[i].started = true;
    }
    return 0;
}

int dg_worker_count(void) { return n_dev; }

static bool matches(const device *d, const char *req) {
    if (!req || !*req || !strcmp(req, "auto")) return true;
    if (!strcmp(req, "cuda") || !strcmp(req, "gpu")) return !strcmp(d->kind, "cuda");
    return !strcmp(req, d->name);
}

bool dg_worker_device_exists(const char *req) {
    for (int i = 0; i < n_dev; i++)
        if (matches(&D[i], req)) return true;
    return false;
}

/* The device a job for req goes to now: an idle GPU first (for auto and cuda), else the CPU.
 * Loop thread; -1 when none is idle. */
static int pick(const char *req) {
    int best = -1;
    for (int i = n_dev - 1; i >= 0; i--) {      /* GPUs come after the CPU: try them first */
        if (!matches(&D[i], req)) continue;
        pthread_mutex_lock(&D[i].mu);
        bool idle = !D[i].busy && !D[i].pending;
        pthread_mutex_unlock(&D[i].mu);
        if (idle && (best < 0 || !strcmp(D[best].kind, "cpu"))) best = i;
    }
    return best;
}

bool dg_worker_can_place(const char *req) { return pick(req) >= 0; }

int dg_worker_submit(dg_work *w, char *dev_out) {
    if (!dg_worker_device_exists(w->device_req)) return DG_ENOTFOUND;
    int i = pick(w->device_req);
    if (i < 0) return DG_EBUSY;
    device *d = &D[i];
    pthread_mutex_lock(&d->mu);
    atomic_store(&d->flags.cancel, 0);
    atomic_store(&d->flags.pause, 0);
    atomic_store(&d->flags.checkpoint, 0);
    d->pending = w;
    d->busy = true;
    snprintf(d->job, sizeof d->job, "%s", w->job_id);
    if (dev_out) snprintf(dev_out, 32, "%s", d->name);
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

dg_work_flags *dg_worker_flags_for(const char *job_id) {
    for (int i = 0; i < n_dev; i++) {
        pthread_mutex_lock(&D[i].mu);
        bool mine = D[i].busy && !strcmp(D[i].job, job_id);
        pthread_mutex_unlock(&D[i].mu);
        if (mine) return &D[i].flags;
    }
    return NULL;
}

json_t *dg_worker_devices_json(void) {
    json_t *arr = json_array();
    dg_device_info gpu[DG_MAX_DEVICES], host[1];
    int ng = dg_backend_find("cuda") ? dg_backend_devices("cuda", gpu, DG_MAX_DEVICES) : 0;
    int nh = dg_backend_devices("cpu", host, 1);
    for (int i = 0; i < n_dev; i++) {
        device *d = &D[i];
        const dg_device_info *inf = NULL;
        if (!strcmp(d->kind, "cuda") && d->index < ng) inf = &gpu[d->index];
        if (!strcmp(d->kind, "cpu") && nh > 0) inf = &host[0];
        char job[DG_ID_LEN];
        pthread_mutex_lock(&d->mu);
        snprintf(job, sizeof job, "%s", d->job);
        pthread_mutex_unlock(&d->mu);
        json_t *o = json_pack("{s:s, s:s, s:i, s:s}", "name", d->name, "kind", d->kind, "index",
                              d->index, "backend", d->backend);
        if (inf) {
            json_object_set_new(o, "model", json_string(inf->name));
            json_object_set_new(o, "mem_total_mb", json_integer((json_int_t)(inf->mem_total >> 20)));
            json_object_set_new(o, "mem_used_mb", json_integer((json_int_t)(inf->mem_used >> 20)));
            json_object_set_new(o, "util_pct", inf->util_pct >= 0 ? json_integer(inf->util_pct)
                                                                  : json_null());
        }
        json_object_set_new(o, "holder", job[0] ? json_pack("{s:s, s:s}", "kind", "job", "id", job)
                                                : json_null());
        json_array_append_new(arr, o);
    }
    return arr;
}

void dg_worker_stop(double timeout_s) {
    double t_end = dg_now() + timeout_s;
    for (int i = 0; i < n_dev; i++) {
        device *d = &D[i];
        if (!d->started) continue;
        pthread_mutex_lock(&d->mu);
        d->quit = true;
        pthread_cond_signal(&d->cv);
        pthread_mutex_unlock(&d->mu);
    }
    for (int i = 0; i < n_dev; i++) {
        device *d = &D[i];
        if (!d->started) continue;
        for (;;) {
            pthread_mutex_lock(&d->mu);
            bool done = d->exited;
            pthread_mutex_unlock(&d->mu);
            if (done) {
                pthread_join(d->th, NULL);
                break;
            }
            if (dg_now() > t_end) {
                pthread_detach(d->th);   /* still inside a step; the process exits around it */
                break;
            }
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        d->started = false;
    }
    dg_log_set_hook(NULL, NULL);
}
