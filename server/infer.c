/* server/infer.c -- the inference runtime of the daemon: the model registry, the session table,
 * the inference engine thread and the HTTP handlers of /v1/models, /v1/completions,
 * /v1/tokenize, /v1/detokenize and /v1/sessions/... (API.md §5.2, §5.3, §5.4).
 *
 * Threads. The LOOP thread owns every table here (models, sessions, requests, metrics). The
 * inference ENGINE thread owns the backend, the loaded models (dg_model_t + dg_gen_t each) and
 * every recurrent state. They talk through two queues only: commands (loop -> engine, FIFO, a
 * mutex and a condition variable) and the outbox (engine -> loop: generation events and finished
 * commands, a mutex and a uv_async_t). FIFO order is what makes chains safe without waiting:
 * "create state, prefill, generate" are queued back to back. A state lives in an `ebox` the loop
 * allocates and passes around as an opaque handle; only the engine dereferences its contents.
 *
 * Cancellation: every generation carries an atomic flag the engine reads before each unit of
 * work (engine/gen.h). The loop raises it when the client goes away -- MHD reports it through
 * the live response's gone callback, and a 20 ms timer peeks the sockets of suspended live
 * responses, because MHD does not notice a disconnect on a suspended connection.
 *
 * Budgets. Loaded models are unloaded least-recently-used when their bytes exceed the model
 * budget (never one with work in flight or resident sessions). Resident session states are
 * budgeted in bytes: idle sessions are evicted to <data_dir>/sessions/evicted/<id>.dst and come
 * back transparently on next use. Idle sessions expire after keep_alive.
 *
 * Not here: MHD (http.c: dg_live_*), the route table (api.c), the scheduler (engine/gen.c), the
 * pure parsing and builders (infer_proto.c) and the state file (infer_sessfile.c).
 * Thread affinity: LOOP thread, except the functions under "engine thread". */
#include "infer.h"
#include "srv.h"
#include "engine/ckpt.h"
#include "proto/sha256.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ------------------------------------------------------------------------------------------
// limits (environment overrides for tests and benchmarks)

static struct {
    int64_t model_budget;          /* bytes of loaded parameters */
    int64_t session_budget;        /* bytes of resident session states */
    double  keep_alive_s;          /* default session keep_alive */
    int     max_batch, max_waiting, prefill_chunk;
} CFG;

static int64_t env_i64(const char *name, int64_t def) {
    const char *v = getenv(name);
    return v && *v ? strtoll(v, NULL, 10) : def;
}

// ------------------------------------------------------------------------------------------
// engine-side objects (touched only by the engine thread, handled as opaque pointers by the loop)

typedef struct emodel {
    dg_model_t     *m;
    dg_gen_t       *gen;
    dg_tokenizer_t *tok;          /* immutable: the loop reads it while the model is loaded */
    dg_model_config cfg;
    size_t          bytes;
    uint8_t         fp[32];
    int64_t         n_params;
    struct emodel  *next;
} emodel;

typedef struct ebox {
    dg_state_t *st;
    emodel     *em;
} ebox;

enum { C_LOAD, C_UNLOAD, C_STATE_NEW, C_STATE_FREE, C_STATE_COPY, C_STATE_GET, C_STATE_SET,
       C_GEN };

typedef struct cmd {
    int          kind;
    struct cmd  *next;
    char         path[1100];                  /* LOAD */
    emodel      *em;                          /* UNLOAD, STATE_NEW; LOAD result */
    ebox        *box, *src;                   /* state commands, GEN */
    float       *image;                       /* SET input (engine frees) / GET output */
    int64_t      pos, n_floats;
    dg_gen_request rq;                        /* GEN (tokens owned by toks) */
    int32_t     *toks;
    int32_t     *stopv[DG_GEN_MAX_STOPS];
    bool         free_state;                  /* GEN: free box's state at DONE (one-shot) */
    uint64_t     serial;                      /* GEN: the loop's request */
    int          rc;
    char         err[512];
    void       (*done)(struct cmd *c);        /* loop thread; NULL = drop after running */
    void        *ud;
} cmd;

typedef struct omsg {
    bool          is_ev;
    dg_gen_event  ev;
    uint64_t      serial;
    cmd          *c;
    struct omsg  *next;
} omsg;

static struct {
    pthread_t       th;
    bool            started, quit;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    pthread_cond_t  unit_cv;                  /* a unit of generation work finished */
    atomic_int      active;                   /* some generation is queued or decoding */
    cmd            *cmds, *cmds_tail;
    omsg           *out, *out_tail;
    uv_async_t      async;
    /* engine thread only */
    dg_backend_t   *be;
    emodel         *models;
    omsg           *pend, *pend_tail;         /* events of the current unit */
    atomic_llong    steps, units;
} E;

// ------------------------------------------------------------------------------------------
// engine thread

static void eng_post(omsg *m) {               /* engine thread: collects; eng_flush publishes */
    if (E.pend_tail) E.pend_tail->next = m;
    else E.pend = m;
    E.pend_tail = m;
}

static void eng_flush(void) {
    if (!E.pend) return;
    pthread_mutex_lock(&E.mu);
    if (E.out_tail) E.out_tail->next = E.pend;
    else E.out = E.pend;
    E.out_tail = E.pend_tail;
    pthread_mutex_unlock(&E.mu);
    E.pend = E.pend_tail = NULL;
    uv_async_send(&E.async);
}

static void eng_done(cmd *c) {
    if (c->done) {
        omsg *m = dg_calloc(1, sizeof *m);
        m->c = c;
        eng_post(m);
    } else {
        dg_free(c->image);
        dg_free(c);
    }
}

static void on_gen_event(const dg_gen_event *ev, void *ud) {
    (void)ud;
    cmd *c = ev->cookie;
    omsg *m = dg_calloc(1, sizeof *m);
    m->is_ev = true;
    m->ev = *ev;
    m->serial = c->serial;
    eng_post(m);
    if (ev->kind == DG_GEN_EV_DONE) {
        if (c->free_state && c->box) {
            dg_state_free(c->box->st);
            dg_free(c->box);
        }
        dg_free(c->toks);
        dg_free(c);
    }
}

static void fingerprint(const float *params, int64_t n, uint8_t out[32]) {
    dg_sha256(params, (size_t)n * sizeof(float), out);
}

static void eng_load(cmd *c) {
    dg_ckpt ck;
    memset(&ck, 0, sizeof ck);
    c->rc = dg_ckpt_read(c->path, false, &ck, c->err, sizeof c->err);
    if (c->rc) return;
    emodel *em = dg_calloc(1, sizeof *em);
    em->cfg = ck.model;
    em->cfg.dropout = 0;
    em->n_params = ck.n_params;
    em->bytes = (size_t)ck.n_params * sizeof(float);
    fingerprint(ck.params, ck.n_params, em->fp);
    c->rc = dg_model_create(E.be, &em->cfg, &em->m);
    if (!c->rc) c->rc = dg_model_set_params(em->m, ck.params);
    /* The loop admits at most max_batch + max_waiting generations (503 beyond); any of them
     * may still be waiting on the engine, plus session prefills, so the scheduler's own bound
     * is a backstop above that. */
    dg_gen_config gc = {CFG.max_batch, CFG.max_batch + CFG.max_waiting + 64, CFG.prefill_chunk};
    if (!c->rc) c->rc = dg_gen_create(em->m, &gc, on_gen_event, NULL, &em->gen);
    if (c->rc) {
        snprintf(c->err, sizeof c->err, "cannot create the model of %s: %s", c->path,
                 dg_strerror(c->rc));
        dg_model_free(em->m);
        dg_free(em);
        dg_ckpt_free(&ck);
        return;
    }
    em->tok = ck.tokenizer;
    ck.tokenizer = NULL;
    dg_ckpt_free(&ck);
    em->next = E.models;
    E.models = em;
    c->em = em;
}

static void eng_unload(emodel *em) {
    for (emodel **p = &E.models; *p; p = &(*p)->next)
        if (*p == em) { *p = em->next; break; }
    dg_gen_free(em->gen);
    dg_model_free(em->m);
    dg_tokenizer_free(em->tok);
    dg_free(em);
}

static void eng_run(cmd *c) {
    switch (c->kind) {
    case C_LOAD: eng_load(c); break;
    case C_UNLOAD: eng_unload(c->em); break;
    case C_STATE_NEW:
        c->box->em = c->em;
        c->rc = dg_state_create(c->em->m, &c->box->st);
        if (!c->rc && c->image) c->rc = dg_state_set(c->box->st, c->image, c->pos);
        if (c->rc) snprintf(c->err, sizeof c->err, "cannot create a session state: %s",
                            dg_strerror(c->rc));
        break;
    case C_STATE_SET:
        c->rc = c->box->st ? dg_state_set(c->box->st, c->image, c->pos) : DG_EINVAL;
        break;
    case C_STATE_FREE:
        if (c->box) {
            dg_state_free(c->box->st);
            dg_free(c->box);
            c->box = NULL;
        }
        break;
    case C_STATE_COPY:
        c->box->em = c->src->em;
        c->rc = dg_state_create(c->src->em->m, &c->box->st);
        if (!c->rc) c->rc = dg_state_copy(c->box->st, c->src->st);
        if (c->rc) snprintf(c->err, sizeof c->err, "cannot fork the state: %s",
                            dg_strerror(c->rc));
        break;
    case C_STATE_GET:
        c->n_floats = (int64_t)(dg_state_bytes(c->box->st) / sizeof(float));
        c->image = dg_try_malloc((size_t)c->n_floats * sizeof(float));
        c->rc = c->image ? dg_state_get(c->box->st, c->image, &c->pos) : DG_ENOMEM;
        break;
    case C_GEN: {
        if (!c->box->st) c->rc = DG_EINVAL;
        else {
            c->rq.state = c->box->st;
            c->rq.cookie = c;
            c->rc = dg_gen_submit(c->box->em->gen, &c->rq, NULL);
        }
        if (!c->rc) return;                  /* owned by the scheduler until its DONE */
        /* not accepted: report a DONE (error) ourselves */
        omsg *m = dg_calloc(1, sizeof *m);
        m->is_ev = true;
        m->ev.kind = DG_GEN_EV_DONE;
        m->ev.stop = DG_GEN_STOP_ERROR;
        m->ev.error = c->rc;
        m->ev.last_token = -1;
        m->ev.stop_index = -1;
        m->ev.n_prompt = c->rq.n_tokens;
        m->serial = c->serial;
        eng_post(m);
        if (c->free_state && c->box) {
            dg_state_free(c->box->st);
            dg_free(c->box);
        }
        dg_free(c->toks);
        dg_free(c);
        return;
    }
    }
    if (c->kind == C_STATE_SET) { dg_free(c->image); c->image = NULL; }
    if (c->kind == C_STATE_NEW) { dg_free(c->image); c->image = NULL; }
    eng_done(c);
}

static void *eng_main(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&E.mu);
        bool work = false;
        for (emodel *em = E.models; em; em = em->next) work |= !dg_gen_idle(em->gen);
        atomic_store(&E.active, work);
        while (!E.cmds && !E.quit && !work) pthread_cond_wait(&E.cv, &E.mu);
        cmd *list = E.cmds;
        E.cmds = E.cmds_tail = NULL;
        bool quit = E.quit;
        pthread_mutex_unlock(&E.mu);
        while (list) {
            cmd *c = list;
            list = c->next;
            c->next = NULL;
            eng_run(c);
        }
        eng_flush();
        if (quit) break;
        /* one unit per model, round robin: no model starves another */
        for (emodel *em = E.models; em; em = em->next) {
            int64_t s0;
            dg_gen_stats(em->gen, &s0, NULL, NULL);
            if (dg_gen_step(em->gen)) {
                pthread_mutex_lock(&E.mu);
                atomic_fetch_add(&E.units, 1);
                pthread_cond_broadcast(&E.unit_cv);
                pthread_mutex_unlock(&E.mu);
            }
            int64_t s1;
            dg_gen_stats(em->gen, &s1, NULL, NULL);
            if (s1 > s0) atomic_fetch_add(&E.steps, 1);
            eng_flush();
        }
    }
    while (E.models) eng_unload(E.models);      /* pending generations end as cancelled */
    eng_flush();
    return NULL;
}

// ------------------------------------------------------------------------------------------
// loop side: commands and the outbox

static void gen_event(uint64_t serial, const dg_gen_event *ev);

static cmd *cmd_new(int kind) {
    cmd *c = dg_calloc(1, sizeof *c);
    c->kind = kind;
    return c;
}

static void cmd_send(cmd *c) {
    pthread_mutex_lock(&E.mu);
    if (E.cmds_tail) E.cmds_tail->next = c;
    else E.cmds = c;
    E.cmds_tail = c;
    pthread_cond_signal(&E.cv);
    pthread_mutex_unlock(&E.mu);
}

static void eng_wake(void) {
    pthread_mutex_lock(&E.mu);
    pthread_cond_signal(&E.cv);
    pthread_mutex_unlock(&E.mu);
}

static void on_outbox(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&E.mu);
    omsg *list = E.out;
    E.out = E.out_tail = NULL;
    pthread_mutex_unlock(&E.mu);
    while (list) {
        omsg *m = list;
        list = m->next;
        if (m->is_ev) {
            gen_event(m->serial, &m->ev);
        } else {
            cmd *c = m->c;
            c->done(c);
            dg_free(c->image);
            dg_free(c);
        }
        dg_free(m);
    }
}

// ------------------------------------------------------------------------------------------
// metrics

#define NB 14
static const double BOUNDS[NB] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                  1, 2.5, 5, 10, 30};
typedef struct { uint64_t b[NB + 1]; double sum; uint64_t n; } hist;

static struct {
    hist     ttft, itl;
    uint64_t tokens, prompt_tokens, cancelled, requests, errors, rejected;
    uint64_t evictions, reloads, loads, unloads;
} M;

static void observe(hist *h, double v) {
    int i = 0;
    while (i < NB && v > BOUNDS[i]) i++;
    h->b[i]++;
    h->sum += v;
    h->n++;
}

static void hist_text(json_t *lines, const char *name, const char *help, const hist *h) {
    char buf[256];
    snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s histogram", name, help, name);
    json_array_append_new(lines, json_string(buf));
    uint64_t cum = 0;
    for (int i = 0; i < NB; i++) {
        cum += h->b[i];
        snprintf(buf, sizeof buf, "%s_bucket{le=\"%g\"} %llu", name, BOUNDS[i],
                 (unsigned long long)cum);
        json_array_append_new(lines, json_string(buf));
    }
    cum += h->b[NB];
    snprintf(buf, sizeof buf, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu", name,
             (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->n);
    json_array_append_new(lines, json_string(buf));
}

// ------------------------------------------------------------------------------------------
// model registry

enum { MS_UNLOADED = 0, MS_LOADING, MS_LOADED };

typedef void (*model_cont)(void *ud, int rc, const char *err);

typedef struct waiter {
    model_cont     fn;
    void          *ud;
    struct waiter *next;
} waiter;

typedef struct imodel {
    char            id[160];
    char            path[1100];
    char            run_id[DG_ID_LEN];
    int             status;
    emodel         *em;
    const dg_tokenizer_t *tok;    /* em->tok while loaded */
    int             V, eos;
    int64_t         n_params;
    size_t          bytes, state_bytes;
    uint8_t         fp[32];
    char            tok_kind[8];
    bool            meta;         /* the fields above are known */
    double          last_used;
    int             inflight;     /* generations submitted, not done */
    int             admitted;     /* generation requests accepted, not freed (503 bound) */
    int             n_sessions;   /* sessions with a resident state */
    waiter         *waiters;
    struct imodel  *next;
} imodel;

static struct {
    uv_loop_t  *loop;
    char        data_dir[1024];
    imodel     *models;
    uv_timer_t  tick, sweep;
    bool        ready;
    char        device[32];     /* where sessions run: "cpu" or "cuda:N" */
} R;

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Newest DIR/ckpt/step-<n>.dck. */
static int latest_in_dir(const char *dir, char *out, size_t n) {
    char cdir[1200];
    snprintf(cdir, sizeof cdir, "%s/ckpt", dir);
    DIR *d = opendir(cdir);
    if (!d) return DG_ENOTFOUND;
    long long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long s;
        char tail[8];
        if (sscanf(e->d_name, "step-%lld.%7s", &s, tail) == 2 && !strcmp(tail, "dck") && s > best)
            best = s;
    }
    closedir(d);
    if (best < 0) return DG_ENOTFOUND;
    snprintf(out, n, "%s/step-%lld.dck", cdir, best);
    return 0;
}

/* Model ids: a file <data_dir>/models/<id>.dck, a run directory <data_dir>/models/<id>/, a
 * checkpoint id, a run id or a run name (the run's newest checkpoint). */
static int resolve_path(const char *id, char *path, size_t n, char run_id[DG_ID_LEN]) {
    char p[1300];
    run_id[0] = 0;
    if (strchr(id, '/') || !strcmp(id, "..") || !strcmp(id, ".")) return DG_ENOTFOUND;
    snprintf(p, sizeof p, "%s/models/%s.dck", R.data_dir, id);
    if (is_file(p)) { snprintf(path, n, "%s", p); return 0; }
    snprintf(p, sizeof p, "%s/models/%s/model.dck", R.data_dir, id);     /* models_import.c */
    if (is_file(p)) { snprintf(path, n, "%s", p); return 0; }
    snprintf(p, sizeof p, "%s/models/%s", R.data_dir, id);
    if (is_dir(p) && latest_in_dir(p, path, n) == 0) return 0;
    if (dg_db_ckpt_by_id(id, path, n, run_id) == 0) return 0;
    if (dg_db_ckpt_latest(id, path, n, NULL) == 0) {
        snprintf(run_id, DG_ID_LEN, "%s", id);
        return 0;
    }
    /* by run name */
    dg_db_listq q = {0};
    q.runs = true;
    q.limit = 1000;
    json_t *list = NULL;
    char err[256];
    int rc = DG_ENOTFOUND;
    if (dg_db_list_jobs(&q, &list, err, sizeof err) == 0) {
        json_t *data = json_object_get(list, "data"), *row;
        size_t i;
        json_array_foreach(data, i, row) {
            const char *name = json_string_value(json_object_get(row, "name"));
            const char *rid = json_string_value(json_object_get(row, "id"));
            if (name && rid && !strcmp(name, id) && dg_db_ckpt_latest(rid, path, n, NULL) == 0) {
                snprintf(run_id, DG_ID_LEN, "%s", rid);
                rc = 0;
                break;
            }
        }
    }
    json_decref(list);
    return rc;
}

static imodel *model_find(const char *id) {
    for (imodel *m = R.models; m; m = m->next)
        if (!strcmp(m->id, id)) return m;
    return NULL;
}

static imodel *model_get(const char *id) {
    imodel *m = model_find(id);
    if (m) return m;
    char path[1100], run[DG_ID_LEN];
    if (resolve_path(id, path, sizeof path, run)) return NULL;
    m = dg_calloc(1, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    snprintf(m->path, sizeof m->path, "%s", path);
    snprintf(m->run_id, sizeof m->run_id, "%s", run);
    m->next = R.models;
    R.models = m;
    return m;
}

/* Metadata without loading onto the engine: reads the checkpoint once (cached). */
static void model_meta(imodel *m) {
    if (m->meta) return;
    dg_ckpt ck;
    memset(&ck, 0, sizeof ck);
    char err[512];
    if (dg_ckpt_read(m->path, false, &ck, err, sizeof err)) return;
    m->n_params = ck.n_params;
    m->bytes = (size_t)ck.n_params * sizeof(float);
    m->state_bytes = dg_model_state_bytes(&ck.model);
    m->V = ck.model.vocab_size;
    m->eos = dg_tokenizer_eos(ck.tokenizer);
    snprintf(m->tok_kind, sizeof m->tok_kind, "%s",
             dg_tokenizer_kind(ck.tokenizer) == DG_TOK_BYTE ? "byte" : "char");
    fingerprint(ck.params, ck.n_params, m->fp);
    m->meta = true;
    dg_ckpt_free(&ck);
}

static void sessions_evict_model(imodel *m);

/* A model file appeared or was replaced (models_import.c): forget what is cached about an
 * unloaded entry so the next use resolves and reads it again. A loaded model keeps serving the
 * parameters it has until it is unloaded. */
void dg_infer_models_changed(const char *name) {
    imodel *m = name ? model_find(name) : NULL;
    if (!m || m->status != MS_UNLOADED) return;
    char path[1100], run[DG_ID_LEN];
    if (resolve_path(m->id, path, sizeof path, run) == 0) {
        snprintf(m->path, sizeof m->path, "%s", path);
        snprintf(m->run_id, sizeof m->run_id, "%s", run);
    }
    m->meta = false;
}

/* Unloads least-recently-used idle models until `need` more bytes fit the budget. */
static void models_make_room(size_t need, const imodel *keep) {
    for (;;) {
        size_t used = 0;
        for (imodel *m = R.models; m; m = m->next)
            if (m->status != MS_UNLOADED) used += m->bytes;
        if ((int64_t)(used + need) <= CFG.model_budget) return;
        imodel *victim = NULL;
        for (imodel *m = R.models; m; m = m->next)
            if (m != keep && m->status == MS_LOADED && m->inflight == 0 &&
                (!victim || m->last_used < victim->last_used))
                victim = m;
        if (!victim) return;                  /* over budget, but everything is busy */
        sessions_evict_model(victim);
        if (victim->n_sessions > 0) return;   /* evictions still in flight */
        cmd *c = cmd_new(C_UNLOAD);
        c->em = victim->em;
        cmd_send(c);
        victim->em = NULL;
        victim->tok = NULL;
        victim->status = MS_UNLOADED;
        M.unloads++;
    }
}

static void load_done(cmd *c) {
    imodel *m = c->ud;
    waiter *w = m->waiters;
    m->waiters = NULL;
    if (c->rc) {
        m->status = MS_UNLOADED;
        DG_ERROR("model %s: %s", m->id, c->err);
    } else {
        emodel *em = c->em;
        m->em = em;
        m->tok = em->tok;
        m->status = MS_LOADED;
        m->n_params = em->n_params;
        m->bytes = em->bytes;
        m->state_bytes = dg_model_state_bytes(&em->cfg);
        m->V = em->cfg.vocab_size;
        m->eos = dg_tokenizer_eos(em->tok);
        memcpy(m->fp, em->fp, 32);
        snprintf(m->tok_kind, sizeof m->tok_kind, "%s",
                 dg_tokenizer_kind(em->tok) == DG_TOK_BYTE ? "byte" : "char");
        m->meta = true;
        M.loads++;
    }
    while (w) {
        waiter *nx = w->next;
        w->fn(w->ud, c->rc, c->err);
        dg_free(w);
        w = nx;
    }
}

/* Calls fn(ud, 0, NULL) once m is loaded (now, or after loading on the engine thread). */
static void with_model(imodel *m, model_cont fn, void *ud) {
    m->last_used = dg_now();
    if (m->status == MS_LOADED) {
        fn(ud, 0, NULL);
        return;
    }
    waiter *w = dg_calloc(1, sizeof *w);
    w->fn = fn;
    w->ud = ud;
    w->next = m->waiters;
    m->waiters = w;
    if (m->status == MS_LOADING) return;
    model_meta(m);
    models_make_room(m->bytes, m);
    m->status = MS_LOADING;
    cmd *c = cmd_new(C_LOAD);
    snprintf(c->path, sizeof c->path, "%s", m->path);
    c->done = load_done;
    c->ud = m;
    cmd_send(c);
}

// ------------------------------------------------------------------------------------------
// sessions

typedef struct sess {
    char         id[64];
    imodel      *model;
    ebox        *box;                /* NULL when evicted */
    int64_t      n_fed;
    int32_t     *unfed;
    int          n_unfed;
    bool         busy, evicting, evicted;
    double       created, last_used, keep_alive_s, evict_at;
    struct sess *next;
} sess;

static struct { sess *list; int n_resident; } S;

static sess *sess_find(const char *id) {
    for (sess *s = S.list; s; s = s->next)
        if (!strcmp(s->id, id)) return s;
    return NULL;
}

static void evicted_path(const sess *s, char *out, size_t n) {
    snprintf(out, n, "%s/sessions/evicted/%s.dst", R.data_dir, s->id);
}
static void saved_path(const char *id, char *out, size_t n) {
    snprintf(out, n, "%s/sessions/%s.dst", R.data_dir, id);
}

static json_t *sess_json(const sess *s) {
    double exp = s->keep_alive_s < 0 ? 0 : s->last_used + s->keep_alive_s;
    char sp[1300];
    saved_path(s->id, sp, sizeof sp);
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:b, s:b, s:b, s:f, s:f, s:f}", "id", s->id,
                          "object", "session", "model", s->model->id, "n_tokens",
                          (json_int_t)(s->n_fed + s->n_unfed), "state_bytes",
                          (json_int_t)s->model->state_bytes, "resident", s->box != NULL,
                          "persisted", is_file(sp), "busy", s->busy, "created_at", s->created,
                          "last_used_at", s->last_used, "keep_alive_s", s->keep_alive_s);
    json_object_set_new(o, "expires_at", s->keep_alive_s < 0 ? json_null() : json_real(exp));
    return o;
}

static void sess_set_unfed(sess *s, const int32_t *t, int n) {
    dg_free(s->unfed);
    s->unfed = dg_malloc((size_t)(n > 0 ? n : 1) * sizeof *s->unfed);
    if (n > 0) memcpy(s->unfed, t, (size_t)n * sizeof *t);
    s->n_unfed = n;
}

static void sess_unlink(sess *s) {
    for (sess **p = &S.list; *p; p = &(*p)->next)
        if (*p == s) { *p = s->next; break; }
}

static void sess_release_state(sess *s) {
    if (!s->box) return;
    cmd *c = cmd_new(C_STATE_FREE);
    c->box = s->box;
    cmd_send(c);
    s->box = NULL;
    S.n_resident--;
    s->model->n_sessions--;
}

static void sess_destroy(sess *s) {
    sess_release_state(s);
    char p[1300];
    evicted_path(s, p, sizeof p);
    unlink(p);
    sess_unlink(s);
    dg_free(s->unfed);
    dg_free(s);
}

static void evict_done(cmd *c) {
    sess *s = NULL;
    for (sess *x = S.list; x; x = x->next)
        if (x == c->ud) s = x;
    if (!s) return;                            /* deleted meanwhile (its state is freed) */
    s->evicting = false;
    if (c->rc || s->busy || s->last_used > s->evict_at || !s->box) return;  /* used again */
    dg_sessfile f = {0};
    snprintf(f.id, sizeof f.id, "%s", s->id);
    snprintf(f.model, sizeof f.model, "%s", s->model->id);
    memcpy(f.model_fp, s->model->fp, 32);
    f.pos = c->pos;
    f.n_floats = c->n_floats;
    f.state = c->image;
    f.n_unfed = (uint32_t)s->n_unfed;
    f.unfed = s->unfed;
    f.created_at = s->created;
    f.keep_alive_s = s->keep_alive_s;
    char p[1300], err[512];
    evicted_path(s, p, sizeof p);
    if (dg_sessfile_write(p, &f, err, sizeof err)) {
        DG_WARN("session %s: eviction failed: %s", s->id, err);
        return;
    }
    sess_release_state(s);
    s->evicted = true;
    M.evictions++;
}

static void sess_evict(sess *s) {
    if (!s->box || s->busy || s->evicting) return;
    s->evicting = true;
    s->evict_at = dg_wall_s();
    cmd *c = cmd_new(C_STATE_GET);
    c->box = s->box;
    c->done = evict_done;
    c->ud = s;
    cmd_send(c);
}

static void sessions_evict_model(imodel *m) {
    for (sess *s = S.list; s; s = s->next)
        if (s->model == m) sess_evict(s);
}

/* Evicts idle sessions, least recently used first, while resident bytes exceed the budget. */
static void sessions_budget(const sess *keep) {
    int64_t used = 0;
    for (sess *s = S.list; s; s = s->next)
        if (s->box && !s->evicting) used += (int64_t)s->model->state_bytes;
    while (used > CFG.session_budget) {
        sess *victim = NULL;
        for (sess *s = S.list; s; s = s->next)
            if (s != keep && s->box && !s->busy && !s->evicting &&
                (!victim || s->last_used < victim->last_used))
                victim = s;
        if (!victim) return;
        sess_evict(victim);
        used -= (int64_t)victim->model->state_bytes;
    }
}

/* A new resident state for s (from image when given; image is stolen). */
static void sess_new_state(sess *s, float *image, int64_t pos) {
    s->box = dg_calloc(1, sizeof *s->box);
    cmd *c = cmd_new(C_STATE_NEW);
    c->box = s->box;
    c->em = s->model->em;
    c->image = image;
    c->pos = pos;
    cmd_send(c);
    S.n_resident++;
    s->model->n_sessions++;
    sessions_budget(s);
}

/* Makes s resident (the model must be loaded). Returns 0 or an error with msg. */
static int sess_ensure_resident(sess *s, char *msg, size_t mn) {
    s->last_used = dg_wall_s();
    if (s->box) return 0;
    char p[1300];
    evicted_path(s, p, sizeof p);
    dg_sessfile f;
    int rc = dg_sessfile_read(p, s->model->fp, &f, msg, mn);
    if (rc) return rc;
    sess_new_state(s, f.state, f.pos);
    f.state = NULL;
    s->n_fed = f.pos;
    sess_set_unfed(s, f.unfed, (int)f.n_unfed);
    dg_sessfile_free(&f);
    unlink(p);
    s->evicted = false;
    M.reloads++;
    return 0;
}

static sess *sess_new(imodel *m, const char *id, double keep_alive_s) {
    sess *s = dg_calloc(1, sizeof *s);
    if (id) snprintf(s->id, sizeof s->id, "%s", id);
    else {
        char tmp[DG_ID_LEN];
        dg_make_id("sess_", tmp);
        snprintf(s->id, sizeof s->id, "%s", tmp);
    }
    s->model = m;
    s->created = s->last_used = dg_wall_s();
    s->keep_alive_s = keep_alive_s;
    s->next = S.list;
    S.list = s;
    return s;
}

/* Every second: expire idle sessions past keep_alive, evict idle ones beyond the budget. */
static void on_sweep(uv_timer_t *t) {
    (void)t;
    double now = dg_wall_s();
    for (sess *s = S.list, *nx; s; s = nx) {
        nx = s->next;
        if (!s->busy && !s->evicting && s->keep_alive_s >= 0 &&
            now - s->last_used > s->keep_alive_s)
            sess_destroy(s);
    }
    sessions_budget(NULL);
}

// ------------------------------------------------------------------------------------------
// generation requests

enum { G_OAI, G_NATIVE, G_PREFILL };

typedef struct greq {
    uint64_t       serial;
    atomic_int     cancel;
    int            kind;
    bool           stream, include_usage, submitted, done, gone, admitted;
    dg_live       *live;
    dg_req        *req;               /* valid only inside the handler */
    imodel        *model;
    sess          *sess;
    char           id[64];
    int64_t        created;
    int64_t        seq;               /* native SSE ids */
    dg_cmpl_params p;
    int32_t       *toks;              /* tokens fed by this request (session bookkeeping) */
    int            n_toks;
    dg_textasm     ta;
    bool           ta_ready;
    int32_t        tail_tok;          /* session: a token that stays unfed after this request */
    int64_t        n_gen;
    double         t_submit, t_last;
    json_t        *ids;               /* non-streamed native: generated ids */
    struct greq   *next;
} greq;

static struct { greq *list; uint64_t next_serial; int n_running, n_waiting; } G;

static greq *greq_find(uint64_t serial) {
    for (greq *g = G.list; g; g = g->next)
        if (g->serial == serial) return g;
    return NULL;
}

static void greq_free(greq *g) {
    for (greq **p = &G.list; *p; p = &(*p)->next)
        if (*p == g) { *p = g->next; break; }
    if (g->admitted) g->model->admitted--;
    if (g->ta_ready) dg_textasm_free(&g->ta);
    dg_cmpl_params_free(&g->p);
    dg_free(g->toks);
    json_decref(g->ids);
    dg_free(g);
}

static void live_write_str(greq *g, char *s) {
    if (g->live && s) dg_live_write(g->live, s, strlen(s));
    dg_free(s);
}

/* The response ended: the client went away, or what we sent is complete. */
static void on_live_gone(void *ud, bool client_gone) {
    (void)client_gone;
    greq *g = ud;
    g->live = NULL;
    if (g->done) {
        greq_free(g);
        return;
    }
    g->gone = true;
    atomic_store(&g->cancel, 1);
    eng_wake();
    if (!g->submitted) {
        /* still waiting for its model: nothing is on the engine; gen_go frees it */
        g->done = true;
        M.cancelled++;
        if (g->sess) g->sess->busy = false;
    }
}

static void on_tick(uv_timer_t *t) {
    (void)t;
    for (greq *g = G.list; g; g = g->next)
        if (g->live && !g->done && dg_live_peer_gone(g->live)) {
            atomic_store(&g->cancel, 1);
            eng_wake();
            dg_live_close(g->live);
        }
}

static void reply_err(greq *g, int status, const char *type, const char *code,
                      const char *param, const char *msg) {
    if (!g->live) return;
    if (!g->stream) {
        json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", msg, "type", type,
                              "code", code, "param", param);
        dg_live_reply(g->live, status, e);
        return;
    }
    if (g->kind == G_OAI) {
        live_write_str(g, dg_sse_error_frame(type, code, msg));
        dg_live_write(g->live, DG_SSE_DONE, strlen(DG_SSE_DONE));
    } else {
        live_write_str(g, dg_sse_event(++g->seq, "error",
                                       json_pack("{s:{s:s, s:s, s:s}}", "error", "type", type,
                                                 "code", code, "message", msg)));
        live_write_str(g, dg_sse_event(++g->seq, "end", json_object()));
    }
    dg_live_end(g->live);
}

/* Ends a request that never reached the engine (the live response is answered). */
static void greq_fail(greq *g, int status, const char *type, const char *code, const char *param,
                      const char *msg) {
    reply_err(g, status, type, code, param, msg);
    if (g->sess) g->sess->busy = false;
    g->done = true;
    M.errors++;
    if (!g->live) greq_free(g);
}

/* Submits g on its model (loaded) with tokens toks (stolen). */
static void greq_submit(greq *g, int32_t *toks, int n, int64_t max_tokens, ebox *box,
                        bool free_state) {
    imodel *m = g->model;
    cmd *c = cmd_new(C_GEN);
    c->box = box;
    c->free_state = free_state;
    c->serial = g->serial;
    c->toks = toks;
    c->rq.tokens = toks;
    c->rq.n_tokens = n;
    c->rq.sample = g->p.sample;
    c->rq.max_tokens = max_tokens;
    c->rq.eos = g->p.ignore_eos ? -1 : m->eos;
    c->rq.cancel = &g->cancel;
    if (g->ta_ready) {
        c->rq.n_stops = g->ta.n_stops;
        for (int i = 0; i < g->ta.n_stops; i++) {
            c->rq.stops[i] = g->ta.stops[i];
            c->rq.stop_lens[i] = g->ta.stop_lens[i];
        }
    }
    g->toks = dg_malloc((size_t)(n > 0 ? n : 1) * sizeof *g->toks);
    if (n > 0) memcpy(g->toks, toks, (size_t)n * sizeof *toks);
    g->n_toks = n;
    g->submitted = true;
    g->t_submit = dg_now();
    m->inflight++;
    m->last_used = dg_now();
    G.n_waiting++;
    cmd_send(c);
}

static void send_start(greq *g) {
    if (!g->stream || g->kind != G_NATIVE) return;
    json_t *d = json_pack("{s:s, s:s, s:s, s:I, s:I}", "request_id", g->id, "session_id",
                          g->sess ? g->sess->id : "", "model", g->model->id, "n_prompt_tokens",
                          (json_int_t)g->n_toks, "seed", (json_int_t)g->p.sample.seed);
    live_write_str(g, dg_sse_event(++g->seq, "start", d));
}

static void on_token(greq *g, const dg_gen_event *ev) {
    double now = dg_now();
    if (g->n_gen == 0) {
        observe(&M.ttft, now - g->t_submit);
        G.n_waiting--;
        G.n_running++;
    } else {
        observe(&M.itl, now - g->t_last);
    }
    g->t_last = now;
    g->n_gen++;
    M.tokens++;
    if (g->kind == G_PREFILL) return;
    char text[1024];
    int n_ids;
    int n = dg_textasm_push(&g->ta, ev->token, NULL, &n_ids, text, sizeof text);
    if (!g->stream) {
        if (g->ids) json_array_append_new(g->ids, json_integer(ev->token));
        return;
    }
    if (!g->live) return;
    if (g->kind == G_OAI) {
        if (n > 0)
            live_write_str(g, dg_cmpl_chunk(g->id, g->created, g->model->id, text, (size_t)n,
                                            NULL, g->include_usage));
    } else {
        json_t *d = json_pack("{s:I, s:i, s:s%}", "i", (json_int_t)ev->index, "id", ev->token,
                              "text", text, (size_t)n);
        live_write_str(g, dg_sse_event(++g->seq, "token", d));
    }
}

static void session_after_gen(greq *g, const dg_gen_event *ev) {
    sess *s = g->sess;
    if (!s) return;
    s->busy = false;
    s->last_used = dg_wall_s();
    /* transcript = fed + unfed: request tokens not fed stay unfed, then the last token */
    int64_t fed_gen = ev->n_generated > 0 ? ev->n_generated - 1 : 0;
    s->n_fed += ev->n_fed + fed_gen;
    int rest = g->n_toks - (int)ev->n_fed;
    int32_t *u = dg_malloc((size_t)(rest + 2) * sizeof *u);
    int k = 0;
    for (int i = (int)ev->n_fed; i < g->n_toks; i++) u[k++] = g->toks[i];
    if (ev->n_generated > 0) u[k++] = ev->last_token;
    if (g->tail_tok >= 0) u[k++] = g->tail_tok;
    sess_set_unfed(s, u, k);
    dg_free(u);
    if (ev->stop == DG_GEN_STOP_ERROR) {
        /* the state may be half-updated: it no longer matches the transcript */
        DG_WARN("session %s: generation failed (%s); the session is reset", s->id,
                dg_strerror(ev->error));
    }
}

static const char *stop_reason(dg_gen_stop st) { return dg_gen_stop_name(st); }

static void on_done(greq *g, const dg_gen_event *ev) {
    imodel *m = g->model;
    m->inflight--;
    if (g->n_gen == 0) G.n_waiting--;
    else G.n_running--;
    M.prompt_tokens += (uint64_t)ev->n_fed;
    if (ev->stop == DG_GEN_STOP_CANCELLED) M.cancelled++;
    if (ev->stop == DG_GEN_STOP_ERROR) M.errors++;
    session_after_gen(g, ev);
    g->done = true;
    char tail[1024] = "";
    int nt = 0;
    if (g->ta_ready) nt = dg_textasm_finish(&g->ta, ev->stop_index, NULL, NULL, tail,
                                            sizeof tail);
    if (!g->live) { greq_free(g); return; }
    if (ev->stop == DG_GEN_STOP_ERROR || ev->stop == DG_GEN_STOP_CANCELLED) {
        bool busy = ev->error == DG_EBUSY;
        char msg[256];
        snprintf(msg, sizeof msg, "%s", ev->stop == DG_GEN_STOP_CANCELLED ? "generation cancelled"
                 : busy ? "the generation queue is full" : dg_strerror(ev->error));
        if (busy && !g->stream) dg_live_reply(g->live, 503, json_pack(
            "{s:{s:s, s:s, s:s, s:n}}", "error", "message", msg, "type", "server_overloaded",
            "code", "queue_full", "param"));
        else reply_err(g, 500, busy ? "server_overloaded" : "internal",
                       busy ? "queue_full" : "engine_error", NULL, msg);
        return;
    }
    const char *fr = dg_infer_finish_reason(ev->stop);
    int64_t sess_tokens = g->sess ? g->sess->n_fed + g->sess->n_unfed : -1;
    if (g->kind == G_PREFILL) {
        dg_live_reply(g->live, 200, sess_json(g->sess));
        return;
    }
    if (g->kind == G_OAI && g->stream) {
        live_write_str(g, dg_cmpl_chunk(g->id, g->created, m->id, tail, (size_t)nt, fr,
                                        g->include_usage));
        if (g->include_usage)
            live_write_str(g, dg_cmpl_usage_chunk(g->id, g->created, m->id, ev->n_prompt,
                                                  ev->n_generated));
        dg_live_write(g->live, DG_SSE_DONE, strlen(DG_SSE_DONE));
        dg_live_end(g->live);
    } else if (g->kind == G_OAI) {
        dg_live_reply(g->live, 200, dg_cmpl_object(g->id, g->created, m->id, g->ta.text ?
                                                   g->ta.text : "", g->ta.text_len, fr,
                                                   ev->n_prompt, ev->n_generated));
    } else if (g->stream) {
        if (nt > 0)
            live_write_str(g, dg_sse_event(++g->seq, "text",
                                           json_pack("{s:s%}", "text", tail, (size_t)nt)));
        json_t *d = dg_gen_done_json(ev, stop_reason(ev->stop), g->ta.text_len, sess_tokens);
        json_object_set_new(d, "text", json_stringn(g->ta.text ? g->ta.text : "",
                                                    g->ta.text_len));
        live_write_str(g, dg_sse_event(++g->seq, "done", d));
        live_write_str(g, dg_sse_event(++g->seq, "end", json_object()));
        dg_live_end(g->live);
    } else {
        json_t *d = dg_gen_done_json(ev, stop_reason(ev->stop), g->ta.text_len, sess_tokens);
        json_object_set_new(d, "text", json_stringn(g->ta.text ? g->ta.text : "",
                                                    g->ta.text_len));
        json_object_set(d, "tokens", g->ids ? g->ids : json_array());
        dg_live_reply(g->live, 200, d);
    }
}

static void gen_event(uint64_t serial, const dg_gen_event *ev) {
    greq *g = greq_find(serial);
    if (!g) return;
    if (ev->kind == DG_GEN_EV_TOKEN) on_token(g, ev);
    else on_done(g, ev);
}

// ------------------------------------------------------------------------------------------
// handlers: helpers

/* Answers a deferred request whose context is freed right after: the live response must not
 * call back into it, so its gone callback is detached first. *lp is cleared. */
static void ctx_reply(dg_live **lp, int status, json_t *body) {
    if (!*lp) {
        json_decref(body);
        return;
    }
    dg_live_rebind(*lp, NULL, NULL);
    dg_live_reply(*lp, status, body);
    *lp = NULL;
}

static void reply_parse_error(dg_req *r, int rc, const char *param, const char *code,
                              const char *msg) {
    (void)rc;
    dg_reply_error(r, 400, "invalid_request", code, param[0] ? param : NULL, "%s", msg);
}

static imodel *model_or_404(dg_req *r, const char *id) {
    imodel *m = model_get(id);
    if (!m)
        dg_reply_error(r, 404, "not_found", "model_not_found", "model",
                       "no model '%s'. HINT: GET /v1/models lists the servable models (run "
                       "names, run ids and checkpoint ids)", id);
    return m;
}

static bool draining_503(dg_req *r) {
    if (!dg_srv.draining) return false;
    char ra[16];
    snprintf(ra, sizeof ra, "%lld", (long long)dg_srv.settings.retry_after_s);
    dg_reply_header(r, "Retry-After", ra);
    dg_reply_error(r, 503, "server_overloaded", "draining", NULL,
                   "the daemon is shutting down and takes no new generations");
    return true;
}

static bool queue_full_503(dg_req *r, imodel *m) {
    if (m->admitted < CFG.max_batch + CFG.max_waiting) return false;
    char ra[16];
    snprintf(ra, sizeof ra, "%lld", (long long)dg_srv.settings.retry_after_s);
    dg_reply_header(r, "Retry-After", ra);
    dg_reply_error(r, 503, "server_overloaded", "queue_full", NULL,
                   "generation queue is full (%d running, %d waiting)", CFG.max_batch,
                   CFG.max_waiting);
    M.rejected++;
    return true;
}

static greq *greq_new(int kind, imodel *m) {
    greq *g = dg_calloc(1, sizeof *g);
    g->serial = ++G.next_serial;
    g->kind = kind;
    g->model = m;
    g->created = (int64_t)dg_wall_s();
    g->tail_tok = -1;
    dg_sample_params_default(&g->p.sample);
    atomic_init(&g->cancel, 0);
    g->next = G.list;
    G.list = g;
    M.requests++;
    return g;
}

static void greq_live(greq *g, dg_req *r) {
    if (g->stream) {
        g->live = dg_live_stream(r, "text/event-stream", on_live_gone, g);
    } else {
        g->live = dg_live_defer(r, on_live_gone, g);
    }
}

/* Tokens of the prompt (text or ids) of g->p; false after failing g. */
static bool greq_prompt_ids(greq *g, int32_t **ids, size_t *n) {
    char msg[512];
    const char *what = g->kind == G_OAI ? "prompt" : "append";
    if (g->p.prompt_text) {
        if (dg_infer_encode(g->model->tok, g->p.prompt_text, ids, n, msg, sizeof msg)) {
            char m2[700];
            snprintf(m2, sizeof m2, "%s: %s", what, msg);
            greq_fail(g, 400, "invalid_request", "invalid_value", what, m2);
            return false;
        }
        return true;
    }
    if (dg_infer_check_ids(g->p.prompt_ids, g->p.n_prompt_ids, g->model->V, msg, sizeof msg)) {
        greq_fail(g, 400, "invalid_request", "invalid_value", what, msg);
        return false;
    }
    *n = g->p.n_prompt_ids;
    *ids = dg_malloc((*n ? *n : 1) * sizeof **ids);
    if (*n) memcpy(*ids, g->p.prompt_ids, *n * sizeof **ids);
    return true;
}

/* Model loaded: tokenize, prepare stops, submit (one-shot or on the session). */
static void gen_go(void *ud, int rc, const char *err) {
    greq *g = ud;
    if (g->done) { if (!g->live) greq_free(g); return; }
    if (rc) {
        greq_fail(g, 500, "internal", "model_load_failed", "model", err ? err : "load failed");
        return;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (g->p.has_prompt && !greq_prompt_ids(g, &ids, &n)) return;
    dg_textasm_init(&g->ta, g->model->tok, g->p.stops, g->p.n_stops);
    g->ta_ready = true;
    if (!g->stream && g->kind == G_NATIVE) g->ids = json_array();
    sess *s = g->sess;
    if (!s) {
        if (n == 0) {
            dg_free(ids);
            greq_fail(g, 400, "invalid_request", "invalid_value", "prompt",
                      "the prompt is empty: give at least one token");
            return;
        }
        ebox *box = dg_calloc(1, sizeof *box);
        cmd *c = cmd_new(C_STATE_NEW);
        c->box = box;
        c->em = g->model->em;
        cmd_send(c);
        greq_submit(g, ids, (int)n, g->p.max_tokens, box, true);
        send_start(g);
        return;
    }
    char msg[512];
    if ((rc = sess_ensure_resident(s, msg, sizeof msg))) {
        dg_free(ids);
        greq_fail(g, 500, "internal", "session_reload_failed", NULL, msg);
        return;
    }
    int total = s->n_unfed + (int)n;
    if (total == 0) {
        dg_free(ids);
        greq_fail(g, 400, "invalid_request", "empty_session", "append",
                  "the session holds no tokens yet: give \"append\" text or token ids");
        return;
    }
    int32_t *t = dg_malloc((size_t)total * sizeof *t);
    if (s->n_unfed) memcpy(t, s->unfed, (size_t)s->n_unfed * sizeof *t);
    if (n) memcpy(t + s->n_unfed, ids, n * sizeof *t);
    dg_free(ids);
    int64_t max_tokens = g->p.max_tokens;
    if (max_tokens == 0) {
        /* nothing to generate: feed all but the last token, which stays unfed */
        g->tail_tok = t[total - 1];
        greq_submit(g, t, total - 1, 0, s->box, false);
        return;
    }
    greq_submit(g, t, total, max_tokens, s->box, false);
    send_start(g);
}

// ------------------------------------------------------------------------------------------
// handlers

void dg_h_models(dg_req *r) {
    json_t *data = json_array();
    /* discover: <data_dir>/models, then runs with checkpoints */
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/models", R.data_dir);
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char id[200];
            snprintf(id, sizeof id, "%s", e->d_name);
            size_t l = strlen(id);
            if (l > 4 && !strcmp(id + l - 4, ".dck")) id[l - 4] = 0;
            model_get(id);
        }
        closedir(d);
    }
    dg_db_listq q = {0};
    q.runs = true;
    q.limit = 1000;
    json_t *list = NULL;
    char err[256];
    if (dg_db_list_jobs(&q, &list, err, sizeof err) == 0) {
        json_t *rows = json_object_get(list, "data"), *row;
        size_t i;
        json_array_foreach(rows, i, row) {
            const char *rid = json_string_value(json_object_get(row, "id"));
            const char *name = json_string_value(json_object_get(row, "name"));
            if (!rid) continue;
            json_t *ck = NULL;
            if (dg_db_ckpt_list(rid, &ck) != 0) continue;
            if (json_array_size(ck) > 0) {
                model_get(name && *name ? name : rid);
                size_t j;
                json_t *c;
                json_array_foreach(ck, j, c) {
                    const char *cid = json_string_value(json_object_get(c, "id"));
                    if (cid) model_get(cid);
                }
            }
            json_decref(ck);
        }
    }
    json_decref(list);
    for (imodel *m = R.models; m; m = m->next) {
        model_meta(m);
        if (!m->meta) continue;
        struct stat st;
        int64_t created = stat(m->path, &st) == 0 ? (int64_t)st.st_mtime : 0;
        char fp[65];
        dg_sha256_hex(m->fp, fp);
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:{s:I, s:s, s:I, s:i, s:s, s:s, s:s, s:b}}",
                              "id", m->id, "object", "model", "created", (json_int_t)created,
                              "owned_by", "dragond", "meta", "n_params",
                              (json_int_t)m->n_params, "arch", "dragon", "state_bytes",
                              (json_int_t)m->state_bytes, "vocab_size", m->V, "tokenizer",
                              m->tok_kind, "fingerprint", fp, "path", m->path, "loaded",
                              m->status == MS_LOADED);
        if (m->run_id[0]) json_object_set_new(json_object_get(o, "meta"), "run_id",
                                              json_string(m->run_id));
        json_array_append_new(data, o);
    }
    dg_reply_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static void completions_common(dg_req *r, int kind, sess *s, imodel *m, dg_cmpl_params *p) {
    if (queue_full_503(r, m)) { dg_cmpl_params_free(p); return; }
    greq *g = greq_new(kind, m);
    g->admitted = true;
    m->admitted++;
    g->p = *p;
    g->stream = p->stream;
    g->include_usage = p->include_usage;
    g->sess = s;
    if (s) s->busy = true;
    snprintf(g->id, sizeof g->id, "%s%llx%06llx", kind == G_OAI ? "cmpl-" : "req_",
             (unsigned long long)dg_wall_ms(), (unsigned long long)g->serial);
    greq_live(g, r);
    with_model(m, gen_go, g);
}

void dg_h_completions(dg_req *r) {
    if (draining_503(r)) return;
    json_t *body = dg_req_json(r, false);
    if (!body) return;
    dg_cmpl_params p;
    char param[96] = "", msg[512];
    const char *code = "invalid_value";
    int rc = dg_cmpl_parse(body, DG_BODY_COMPLETIONS, &p, param, sizeof param, &code, msg,
                           sizeof msg);
    json_decref(body);
    if (rc) { dg_cmpl_params_free(&p); reply_parse_error(r, rc, param, code, msg); return; }
    imodel *m = model_or_404(r, p.model);
    if (!m) { dg_cmpl_params_free(&p); return; }
    sess *s = NULL;
    if (p.session_id[0]) {
        s = sess_find(p.session_id);
        if (!s) {
            dg_reply_error(r, 404, "not_found", "session_not_found", "session_id",
                           "no session '%s'", p.session_id);
            dg_cmpl_params_free(&p);
            return;
        }
        if (s->model != m) {
            dg_reply_error(r, 400, "invalid_request", "invalid_value", "model",
                           "session %s belongs to model '%s', not '%s'", s->id, s->model->id,
                           m->id);
            dg_cmpl_params_free(&p);
            return;
        }
        if (s->busy) {
            dg_reply_error(r, 409, "conflict", "session_busy", "session_id",
                           "session %s is busy with another request (one writer per session)",
                           s->id);
            dg_cmpl_params_free(&p);
            return;
        }
    }
    completions_common(r, G_OAI, s, m, &p);
}

typedef struct { dg_live *live; imodel *m; json_t *body; bool detok; } tokctx;

static void tok_gone(void *ud, bool client_gone) {
    (void)client_gone;
    tokctx *t = ud;
    t->live = NULL;
}

static void tokenize_go(void *ud, int rc, const char *err) {
    tokctx *t = ud;
    if (!t->live) { json_decref(t->body); dg_free(t); return; }
    json_t *out = NULL;
    int status = 200;
    if (rc) {
        status = 500;
        out = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", err ? err : "load failed",
                        "type", "internal", "code", "model_load_failed");
    } else if (!t->detok) {
        json_t *text = json_object_get(t->body, "text");
        if (!text) text = json_object_get(t->body, "prompt");
        int32_t *ids = NULL;
        size_t n = 0;
        char msg[512];
        if (!json_is_string(text)) {
            status = 400;
            out = json_pack("{s:{s:s, s:s, s:s, s:s}}", "error", "message",
                            "text must be a string", "type", "invalid_request", "code",
                            "invalid_type", "param", "text");
        } else if (dg_infer_encode(t->m->tok, json_string_value(text), &ids, &n, msg,
                                   sizeof msg)) {
            status = 400;
            out = json_pack("{s:{s:s, s:s, s:s, s:s}}", "error", "message", msg, "type",
                            "invalid_request", "code", "invalid_value", "param", "text");
        } else {
            json_t *arr = json_array();
            for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
            out = json_pack("{s:o, s:I, s:s}", "tokens", arr, "count", (json_int_t)n, "model",
                            t->m->id);
        }
        dg_free(ids);
    } else {
        json_t *arr = json_object_get(t->body, "tokens");
        size_t n = json_array_size(arr);
        int32_t *ids = dg_malloc((n ? n : 1) * sizeof *ids);
        bool ok = json_is_array(arr);
        for (size_t i = 0; ok && i < n; i++) {
            json_t *v = json_array_get(arr, i);
            ok = json_is_integer(v) && json_integer_value(v) >= 0 &&
                 json_integer_value(v) < t->m->V;
            ids[i] = ok ? (int32_t)json_integer_value(v) : 0;
        }
        char *text = NULL;
        size_t len = 0;
        if (!ok || dg_tokenizer_decode(t->m->tok, ids, n, &text, &len)) {
            status = 400;
            out = json_pack("{s:{s:s, s:s, s:s, s:s}}", "error", "message",
                            "tokens must be an array of ids in the vocabulary", "type",
                            "invalid_request", "code", "invalid_value", "param", "tokens");
        } else {
            out = json_pack("{s:s%, s:s}", "text", text, len, "model", t->m->id);
        }
        dg_free(text);
        dg_free(ids);
    }
    ctx_reply(&t->live, status, out);
    json_decref(t->body);
    dg_free(t);
}

static void tokenize_common(dg_req *r, bool detok) {
    json_t *body = dg_req_json(r, false);
    if (!body) return;
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        bool ok = !strcmp(k, "model") || (!detok && (!strcmp(k, "text") || !strcmp(k, "prompt")))
                  || (detok && !strcmp(k, "tokens"));
        if (!ok) {
            dg_reply_error(r, 400, "invalid_request", "unsupported_parameter", k,
                           "unsupported field '%s'", k);
            json_decref(body);
            return;
        }
    }
    const char *mid = json_string_value(json_object_get(body, "model"));
    if (!mid) {
        dg_reply_error(r, 400, "invalid_request", "missing_field", "model", "model is required");
        json_decref(body);
        return;
    }
    imodel *m = model_or_404(r, mid);
    if (!m) { json_decref(body); return; }
    tokctx *t = dg_calloc(1, sizeof *t);
    t->m = m;
    t->body = body;
    t->detok = detok;
    t->live = dg_live_defer(r, tok_gone, t);
    with_model(m, tokenize_go, t);
}

void dg_h_tokenize(dg_req *r) { tokenize_common(r, false); }
void dg_h_detokenize(dg_req *r) { tokenize_common(r, true); }

/* ---- sessions ---- */

typedef struct { dg_live *live; imodel *m; sess *s; dg_sess_create_params p; } sctx;

static void sctx_gone(void *ud, bool client_gone) {
    (void)client_gone;
    ((sctx *)ud)->live = NULL;
}

static void screate_go(void *ud, int rc, const char *err) {
    sctx *c = ud;
    if (rc) {
        if (c->live) {
            ctx_reply(&c->live, 500, json_pack("{s:{s:s, s:s, s:s}}", "error", "message",
                                                  err ? err : "load failed", "type", "internal",
                                                  "code", "model_load_failed"));
        }
        goto out;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    char msg[512];
    if (c->p.prompt_text &&
        dg_infer_encode(c->m->tok, c->p.prompt_text, &ids, &n, msg, sizeof msg)) {
        ctx_reply(&c->live, 400, json_pack(
            "{s:{s:s, s:s, s:s, s:s}}", "error", "message", msg, "type", "invalid_request",
            "code", "invalid_value", "param", "prompt"));
        goto out;
    }
    if (!c->p.prompt_text && c->p.n_prompt_ids) {
        if (dg_infer_check_ids(c->p.prompt_ids, c->p.n_prompt_ids, c->m->V, msg, sizeof msg)) {
            ctx_reply(&c->live, 400, json_pack(
                "{s:{s:s, s:s, s:s, s:s}}", "error", "message", msg, "type", "invalid_request",
                "code", "invalid_value", "param", "prompt"));
            goto out;
        }
        n = c->p.n_prompt_ids;
        ids = dg_malloc(n * sizeof *ids);
        memcpy(ids, c->p.prompt_ids, n * sizeof *ids);
    }
    double ka = c->p.keep_alive_given ? c->p.keep_alive_s : CFG.keep_alive_s;
    sess *s = sess_new(c->m, NULL, ka);
    sess_new_state(s, NULL, 0);
    if (n <= 1) {
        sess_set_unfed(s, ids, (int)n);
        dg_free(ids);
        ctx_reply(&c->live, 200, sess_json(s));
        goto out;
    }
    /* prefill all but the last token (it stays unfed: the next generate starts from it) */
    sess_set_unfed(s, ids + n - 1, 1);
    greq *g = greq_new(G_PREFILL, c->m);
    g->sess = s;
    g->tail_tok = ids[n - 1];
    s->busy = true;
    g->live = c->live;
    if (g->live) {
        /* hand the live response over to the generation request */
        dg_live_rebind(g->live, on_live_gone, g);
    }
    c->live = NULL;
    int32_t *t = dg_malloc((n - 1) * sizeof *t);
    memcpy(t, ids, (n - 1) * sizeof *t);
    dg_free(ids);
    greq_submit(g, t, (int)n - 1, 0, s->box, false);
out:
    dg_sess_create_params_free(&c->p);
    dg_free(c);
}

void dg_h_sessions_create(dg_req *r) {
    if (draining_503(r)) return;
    json_t *body = dg_req_json(r, false);
    if (!body) return;
    sctx *c = dg_calloc(1, sizeof *c);
    char param[96] = "", msg[512];
    const char *code = "invalid_value";
    int rc = dg_sess_create_parse(body, &c->p, param, sizeof param, &code, msg, sizeof msg);
    json_decref(body);
    if (rc) {
        reply_parse_error(r, rc, param, code, msg);
        dg_sess_create_params_free(&c->p);
        dg_free(c);
        return;
    }
    c->m = model_or_404(r, c->p.model);
    if (!c->m) { dg_sess_create_params_free(&c->p); dg_free(c); return; }
    c->live = dg_live_defer(r, sctx_gone, c);
    with_model(c->m, screate_go, c);
}

void dg_h_sessions_list(dg_req *r) {
    json_t *data = json_array();
    for (sess *s = S.list; s; s = s->next) json_array_append_new(data, sess_json(s));
    dg_reply_json(r, 200, json_pack("{s:s, s:o, s:b}", "object", "list", "data", data,
                                    "has_more", 0));
}

static sess *sess_or_404(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    sess *s = id ? sess_find(id) : NULL;
    if (!s)
        dg_reply_error(r, 404, "not_found", "session_not_found", "id", "no session '%s'",
                       id ? id : "");
    return s;
}

static bool busy_409(dg_req *r, sess *s) {
    if (!s->busy && !s->evicting) return false;
    dg_reply_error(r, 409, "conflict", "session_busy", "id",
                   "session %s is busy with another request (one writer per session)", s->id);
    return true;
}

void dg_h_session_get(dg_req *r) {
    sess *s = sess_or_404(r);
    if (s) dg_reply_json(r, 200, sess_json(s));
}

void dg_h_session_delete(dg_req *r) {
    sess *s = sess_or_404(r);
    if (!s || busy_409(r, s)) return;
    sess_destroy(s);
    dg_reply_text(r, 204, "application/json", "", 0);
}

void dg_h_session_generate(dg_req *r) {
    if (draining_503(r)) return;
    sess *s = sess_or_404(r);
    if (!s) return;
    json_t *body = dg_req_json(r, true);
    if (!body) return;
    dg_cmpl_params p;
    char param[96] = "", msg[512];
    const char *code = "invalid_value";
    int rc = dg_cmpl_parse(body, DG_BODY_SESSION_GENERATE, &p, param, sizeof param, &code, msg,
                           sizeof msg);
    json_decref(body);
    if (rc) { dg_cmpl_params_free(&p); reply_parse_error(r, rc, param, code, msg); return; }
    if (busy_409(r, s)) { dg_cmpl_params_free(&p); return; }
    completions_common(r, G_NATIVE, s, s->model, &p);
}

/* fork and save run once the session's model is loaded (it may have been unloaded while the
 * session sat evicted on disk); the session is looked up again by id at that point. */
typedef struct {
    dg_live *live;
    char     id[64];
    double   keep_alive_s, t0;
    sess    *src, *dst;
} fctx;

static void fctx_gone(void *ud, bool client_gone) {
    (void)client_gone;
    ((fctx *)ud)->live = NULL;
}

static void fctx_reply(fctx *f, int status, json_t *body) {
    ctx_reply(&f->live, status, body);
}

static json_t *err_body(const char *type, const char *code, const char *msg) {
    return json_pack("{s:{s:s, s:s, s:s, s:n}}", "error", "message", msg, "type", type, "code",
                     code, "param");
}

/* The session of f, resident and idle, or NULL after replying. */
static sess *fctx_session(fctx *f, int rc, const char *err) {
    if (rc) {
        fctx_reply(f, 500, err_body("internal", "model_load_failed", err ? err : "load failed"));
        return NULL;
    }
    sess *s = sess_find(f->id);
    if (!s) {
        fctx_reply(f, 404, err_body("not_found", "session_not_found", "the session is gone"));
        return NULL;
    }
    if (s->busy || s->evicting) {
        fctx_reply(f, 409, err_body("conflict", "session_busy",
                                    "the session is busy with another request"));
        return NULL;
    }
    char msg[512];
    if (sess_ensure_resident(s, msg, sizeof msg)) {
        fctx_reply(f, 500, err_body("internal", "session_reload_failed", msg));
        return NULL;
    }
    return s;
}

static void fork_done(cmd *c) {
    fctx *f = c->ud;
    sess *src = sess_find(f->id);
    if (src == f->src) src->busy = false;
    if (c->rc) {
        fctx_reply(f, 500, err_body("internal", "fork_failed", c->err));
        sess_destroy(f->dst);
    } else {
        fctx_reply(f, 200, sess_json(f->dst));
    }
    dg_free(f);
}

static void fork_go(void *ud, int rc, const char *err) {
    fctx *f = ud;
    sess *s = fctx_session(f, rc, err);
    if (!s) { dg_free(f); return; }
    sess *d = sess_new(s->model, NULL, f->keep_alive_s < -1.5 ? s->keep_alive_s
                                                              : f->keep_alive_s);
    d->n_fed = s->n_fed;
    sess_set_unfed(d, s->unfed, s->n_unfed);
    d->box = dg_calloc(1, sizeof *d->box);
    S.n_resident++;
    s->model->n_sessions++;
    s->busy = true;
    f->src = s;
    f->dst = d;
    cmd *c = cmd_new(C_STATE_COPY);
    c->box = d->box;
    c->src = s->box;
    c->done = fork_done;
    c->ud = f;
    cmd_send(c);
    sessions_budget(d);
}

void dg_h_session_fork(dg_req *r) {
    sess *s = sess_or_404(r);
    if (!s || busy_409(r, s)) return;
    json_t *body = dg_req_json(r, true);
    if (!body) return;
    double ka = -2;
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        if (!strcmp(k, "keep_alive") && !dg_parse_duration(v, &ka)) continue;
        dg_reply_error(r, 400, "invalid_request", strcmp(k, "keep_alive") ? "unknown_field"
                       : "invalid_value", k, "unsupported field or bad value '%s'", k);
        json_decref(body);
        return;
    }
    json_decref(body);
    fctx *f = dg_calloc(1, sizeof *f);
    snprintf(f->id, sizeof f->id, "%s", s->id);
    f->keep_alive_s = ka;
    f->live = dg_live_defer(r, fctx_gone, f);
    with_model(s->model, fork_go, f);
}

static void save_done(cmd *c) {
    fctx *x = c->ud;
    sess *s = x->src;
    s->busy = false;
    json_t *out;
    int status = 200;
    if (c->rc) {
        status = 500;
        out = err_body("internal", "save_failed", dg_strerror(c->rc));
    } else {
        dg_sessfile f = {0};
        snprintf(f.id, sizeof f.id, "%s", s->id);
        snprintf(f.model, sizeof f.model, "%s", s->model->id);
        memcpy(f.model_fp, s->model->fp, 32);
        f.pos = c->pos;
        f.n_floats = c->n_floats;
        f.state = c->image;
        f.n_unfed = (uint32_t)s->n_unfed;
        f.unfed = s->unfed;
        f.created_at = s->created;
        f.keep_alive_s = s->keep_alive_s;
        char p[1300], err[512];
        saved_path(s->id, p, sizeof p);
        if (dg_sessfile_write(p, &f, err, sizeof err)) {
            status = 507;
            out = err_body("insufficient_storage", "save_failed", err);
        } else {
            char hex[65] = "";
            uint64_t bytes = 0;
            dg_sha256_file(p, hex, &bytes, err, sizeof err);
            out = json_pack("{s:s, s:s, s:I, s:s, s:f, s:I}", "id", s->id, "file", p, "bytes",
                            (json_int_t)bytes, "sha256", hex, "save_ms",
                            (dg_now() - x->t0) * 1e3, "n_tokens",
                            (json_int_t)(s->n_fed + s->n_unfed));
        }
    }
    fctx_reply(x, status, out);
    dg_free(x);
}

static void save_go(void *ud, int rc, const char *err) {
    fctx *x = ud;
    sess *s = fctx_session(x, rc, err);
    if (!s) { dg_free(x); return; }
    s->busy = true;
    x->src = s;
    cmd *c = cmd_new(C_STATE_GET);
    c->box = s->box;
    c->done = save_done;
    c->ud = x;
    cmd_send(c);
}

void dg_h_session_save(dg_req *r) {
    sess *s = sess_or_404(r);
    if (!s || busy_409(r, s)) return;
    json_t *body = dg_req_json(r, true);
    if (!body) return;
    if (json_object_size(body)) {
        const char *k = json_object_iter_key(json_object_iter(body));
        dg_reply_error(r, 400, "invalid_request", "unknown_field", k, "unsupported field '%s'",
                       k);
        json_decref(body);
        return;
    }
    json_decref(body);
    fctx *x = dg_calloc(1, sizeof *x);
    snprintf(x->id, sizeof x->id, "%s", s->id);
    x->t0 = dg_now();
    x->live = dg_live_defer(r, fctx_gone, x);
    with_model(s->model, save_go, x);
}

typedef struct { dg_live *live; char id[64]; imodel *m; } ldctx;

static void ldctx_gone(void *ud, bool client_gone) {
    (void)client_gone;
    ((ldctx *)ud)->live = NULL;
}

static void load_go(void *ud, int rc, const char *err) {
    ldctx *x = ud;
    json_t *out = NULL;
    int status = 200;
    if (rc) {
        status = 500;
        out = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", err ? err : "load failed",
                        "type", "internal", "code", "model_load_failed");
        goto reply;
    }
    char p[1300], msg[1024];
    saved_path(x->id, p, sizeof p);
    dg_sessfile f;
    int r2 = dg_sessfile_read(p, x->m->fp, &f, msg, sizeof msg);
    if (r2) {
        status = r2 == DG_EINVAL ? 409 : r2 == DG_ENOTFOUND ? 404 : 422;
        out = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", msg, "type",
                        status == 409 ? "conflict" : status == 404 ? "not_found"
                        : "validation_failed", "code", status == 409 ? "fingerprint_mismatch"
                        : status == 404 ? "session_file_not_found" : "session_file_invalid");
        goto reply;
    }
    sess *s = sess_find(x->id);
    if (s && (s->busy || s->evicting)) {
        dg_sessfile_free(&f);
        status = 409;
        out = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", "session is busy", "type",
                        "conflict", "code", "session_busy");
        goto reply;
    }
    if (s && s->model != x->m) { sess_destroy(s); s = NULL; }
    if (!s) s = sess_new(x->m, x->id, f.keep_alive_s);
    if (s->box) {
        cmd *c = cmd_new(C_STATE_SET);
        c->box = s->box;
        c->image = f.state;
        c->pos = f.pos;
        cmd_send(c);
        s->last_used = dg_wall_s();
    } else {
        char ep[1300];
        evicted_path(s, ep, sizeof ep);
        unlink(ep);
        s->evicted = false;
        sess_new_state(s, f.state, f.pos);
    }
    f.state = NULL;
    s->n_fed = f.pos;
    sess_set_unfed(s, f.unfed, (int)f.n_unfed);
    dg_sessfile_free(&f);
    out = sess_json(s);
reply:
    ctx_reply(&x->live, status, out);
    dg_free(x);
}

/* POST /v1/requests/{id}/cancel: the generation with that id (cmpl-... or the request_id of a
 * native start event) stops before its next unit of work; its stream ends as for a disconnect
 * (OpenAI: an error frame then [DONE]; native: error then end). */
void dg_h_request_cancel(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    for (greq *g = G.list; g; g = g->next) {
        if (strcmp(g->id, id ? id : "") || g->done) continue;
        atomic_store(&g->cancel, 1);
        eng_wake();
        dg_reply_json(r, 200, json_pack("{s:s, s:b, s:I}", "id", g->id, "cancelled", 1,
                                        "tokens_generated", (json_int_t)g->n_gen));
        return;
    }
    dg_reply_error(r, 404, "not_found", "request_not_found", "id",
                   "no generation '%s' in flight", id ? id : "");
}

static bool id_ok(const char *id) {
    if (!id || !*id || strlen(id) >= 64) return false;
    for (const char *c = id; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '-'))
            return false;
    return true;
}

void dg_h_session_load(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    if (!id_ok(id)) {
        dg_reply_error(r, 400, "invalid_request", "invalid_value", "id",
                       "a session id has only letters, digits, '_' and '-'");
        return;
    }
    json_t *body = dg_req_json(r, true);
    if (!body) return;
    const char *model = NULL;
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        if (!strcmp(k, "model") && json_is_string(v)) { model = json_string_value(v); continue; }
        dg_reply_error(r, 400, "invalid_request", "unknown_field", k,
                       "unsupported field or bad value '%s'", k);
        json_decref(body);
        return;
    }
    char p[1300], msg[1024];
    saved_path(id, p, sizeof p);
    char mid[160] = "";
    if (model) snprintf(mid, sizeof mid, "%s", model);
    else {
        dg_sessfile f;
        int rc = dg_sessfile_read(p, NULL, &f, msg, sizeof msg);
        if (rc) {
            json_decref(body);
            if (rc == DG_ENOTFOUND)
                dg_reply_error(r, 404, "not_found", "session_file_not_found", "id",
                               "no saved session '%s' (%s). HINT: POST /v1/sessions/%s/save "
                               "first", id, p, id);
            else dg_reply_error(r, 422, "validation_failed", "session_file_invalid", NULL,
                                "%s", msg);
            return;
        }
        snprintf(mid, sizeof mid, "%s", f.model);
        dg_sessfile_free(&f);
    }
    json_decref(body);
    imodel *m = model_or_404(r, mid);
    if (!m) return;
    ldctx *x = dg_calloc(1, sizeof *x);
    snprintf(x->id, sizeof x->id, "%s", id);
    x->m = m;
    x->live = dg_live_defer(r, ldctx_gone, x);
    with_model(m, load_go, x);
}

// ------------------------------------------------------------------------------------------
// lifecycle and metrics

int dg_infer_init(struct uv_loop_s *loop, const void *settings, char *err, size_t n) {
    const dg_settings *s = settings;
    memset(&R, 0, sizeof R);
    R.loop = loop;
    snprintf(R.data_dir, sizeof R.data_dir, "%s", s->data_dir);
    CFG.model_budget = env_i64("DRAGOND_MODEL_BUDGET_MB", 4096) << 20;
    CFG.session_budget = env_i64("DRAGOND_SESSION_BUDGET_MB", 1024) << 20;
    CFG.keep_alive_s = (double)env_i64("DRAGOND_SESSION_KEEP_ALIVE_S", 1800);
    CFG.max_batch = (int)env_i64("DRAGOND_GEN_MAX_BATCH", 32);
    CFG.max_waiting = (int)env_i64("DRAGOND_GEN_MAX_WAITING", 64);
    CFG.prefill_chunk = (int)env_i64("DRAGOND_GEN_PREFILL_CHUNK", 128);
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/sessions/evicted", R.data_dir);
    if (dg_mkdirs(dir)) {
        snprintf(err, n, "cannot create %s", dir);
        return DG_EIO;
    }
    snprintf(dir, sizeof dir, "%s/models", R.data_dir);
    dg_mkdirs(dir);
    /* the device: auto takes the first GPU the cuda backend finds, else the CPU device */
    const char *want = s->infer_device[0] ? s->infer_device : "auto";
    int gpu = -1;
    if (!strcmp(want, "cuda")) gpu = 0;
    else if (strcmp(want, "auto") && strcmp(want, "cpu") && !dg_settings_cuda_index(want, &gpu)) {
        snprintf(err, n, "infer_device: must be auto, cpu, cuda or cuda:N, got '%s'", want);
        return DG_EINVAL;
    }
    int rc;
    if (!strcmp(want, "auto")) {
        dg_device_info info[1];
        if (dg_backend_find("cuda") && dg_backend_devices("cuda", info, 1) > 0) gpu = 0;
    } else if (gpu >= 0) {
        dg_device_info info[64];
        int ng = dg_backend_find("cuda") ? dg_backend_devices("cuda", info, 64) : 0;
        if (gpu >= ng) {
            snprintf(err, n, "infer_device %s: %s (this build's backends: %s)", want,
                     ng > 0 ? "no such GPU" : "no CUDA GPU found", dg_backend_list());
            return DG_EDEVICE;
        }
    }
    if (gpu >= 0) {
        dg_backend_params bp = {.device = gpu};
        rc = dg_backend_open("cuda", &bp, &E.be);
        if (rc && !strcmp(want, "auto")) {
            dg_log(DG_LOG_WARN, "inference: cuda:%d unavailable (%s); sessions run on the CPU",
                   gpu, dg_strerror(rc));
            gpu = -1;
        } else if (rc) {
            snprintf(err, n, "inference: cannot open cuda:%d: %s", gpu, dg_strerror(rc));
            return rc;
        }
    }
    if (gpu < 0) {
        rc = dg_backend_open(s->backend, NULL, &E.be);
        if (rc) {
            snprintf(err, n, "inference: cannot open backend '%s': %s", s->backend, dg_strerror(rc));
            return rc;
        }
        snprintf(R.device, sizeof R.device, "cpu");
    } else {
        snprintf(R.device, sizeof R.device, "cuda:%d", gpu);
    }
    dg_log(DG_LOG_INFO, "inference: sessions run on %s", R.device);
    pthread_mutex_init(&E.mu, NULL);
    pthread_cond_init(&E.cv, NULL);
    pthread_cond_init(&E.unit_cv, NULL);
    uv_async_init(loop, &E.async, on_outbox);
    uv_timer_init(loop, &R.tick);
    uv_timer_start(&R.tick, on_tick, 20, 20);
    uv_timer_init(loop, &R.sweep);
    uv_timer_start(&R.sweep, on_sweep, 1000, 1000);
    E.quit = false;
    if (pthread_create(&E.th, NULL, eng_main, NULL) != 0) {
        snprintf(err, n, "cannot start the inference thread");
        return DG_EINTERNAL;
    }
    E.started = true;
    R.ready = true;
    return 0;
}

bool dg_infer_idle(void) { return G.list == NULL; }

/* Called by the training loop (worker.c) between optimizer steps: when generations are in
 * flight, wait until the inference thread has done one unit of work (a decode step or a prefill
 * chunk), at most max_wait_s. So decode steps interleave with training steps even when the two
 * threads compete for the same cores or device: a decode step comes at least once per training
 * step. Any thread. */
void dg_infer_train_yield(double max_wait_s) {
    if (!E.started || !atomic_load(&E.active)) return;
    pthread_mutex_lock(&E.mu);
    long long u0 = atomic_load(&E.units);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double t = ts.tv_sec + ts.tv_nsec * 1e-9 + max_wait_s;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    while (atomic_load(&E.units) == u0 && atomic_load(&E.active) && !E.quit)
        if (pthread_cond_timedwait(&E.unit_cv, &E.mu, &ts) != 0) break;
    pthread_mutex_unlock(&E.mu);
}

void dg_infer_cancel_all(void) {
    for (greq *g = G.list; g; g = g->next) atomic_store(&g->cancel, 1);
    if (E.started) eng_wake();
}

void dg_infer_shutdown(void) {
    if (!E.started) return;
    dg_infer_cancel_all();
    for (sess *s = S.list; s; s = s->next) sess_release_state(s);   /* before their models */
    pthread_mutex_lock(&E.mu);
    E.quit = true;
    pthread_cond_signal(&E.cv);
    pthread_mutex_unlock(&E.mu);
    pthread_join(E.th, NULL);
    E.started = false;
    on_outbox(&E.async);
    uv_timer_stop(&R.tick);
    uv_timer_stop(&R.sweep);
    uv_close((uv_handle_t *)&R.tick, NULL);
    uv_close((uv_handle_t *)&R.sweep, NULL);
    uv_close((uv_handle_t *)&E.async, NULL);
    while (S.list) {
        sess *s = S.list;
        S.list = s->next;
        dg_free(s->unfed);
        dg_free(s);
    }
    while (G.list) greq_free(G.list);
    while (R.models) {
        imodel *m = R.models;
        R.models = m->next;
        dg_free(m);
    }
    dg_backend_close(E.be);
    E.be = NULL;
}

const char *dg_infer_device(void) { return R.device[0] ? R.device : "cpu"; }

void dg_infer_metrics_text(json_t *lines) {
    char buf[4096];
    int resident = 0, loaded = 0;
    for (sess *s = S.list; s; s = s->next) resident += s->box != NULL;
    for (imodel *m = R.models; m; m = m->next) loaded += m->status == MS_LOADED;
    snprintf(buf, sizeof buf,
             "# HELP dragond_gen_running Generations decoding.\n# TYPE dragond_gen_running gauge\n"
             "dragond_gen_running %d\n"
             "# HELP dragond_gen_waiting Generations queued or prefilling.\n"
             "# TYPE dragond_gen_waiting gauge\ndragond_gen_waiting %d\n"
             "# HELP dragond_tokens_generated_total Tokens generated.\n"
             "# TYPE dragond_tokens_generated_total counter\ndragond_tokens_generated_total %llu\n"
             "# HELP dragond_prompt_tokens_total Prompt tokens fed.\n"
             "# TYPE dragond_prompt_tokens_total counter\ndragond_prompt_tokens_total %llu\n"
             "# HELP dragond_gen_cancelled_total Generations cancelled (client gone or asked).\n"
             "# TYPE dragond_gen_cancelled_total counter\ndragond_gen_cancelled_total %llu\n"
             "# HELP dragond_gen_requests_total Generation requests accepted.\n"
             "# TYPE dragond_gen_requests_total counter\ndragond_gen_requests_total %llu\n"
             "# HELP dragond_gen_rejected_total Generations refused with 503 (queue full).\n"
             "# TYPE dragond_gen_rejected_total counter\ndragond_gen_rejected_total %llu\n"
             "# HELP dragond_gen_errors_total Generations that failed.\n"
             "# TYPE dragond_gen_errors_total counter\ndragond_gen_errors_total %llu\n"
             "# HELP dragond_decode_steps_total Batched decode steps run.\n"
             "# TYPE dragond_decode_steps_total counter\ndragond_decode_steps_total %lld\n"
             "# HELP dragond_sessions Sessions (resident or evicted to disk).\n"
             "# TYPE dragond_sessions gauge\ndragond_sessions{state=\"resident\"} %d\n"
             "# HELP dragond_session_evictions_total Session states evicted to disk.\n"
             "# TYPE dragond_session_evictions_total counter\n"
             "dragond_session_evictions_total %llu\n"
             "# HELP dragond_session_reloads_total Evicted session states brought back.\n"
             "# TYPE dragond_session_reloads_total counter\ndragond_session_reloads_total %llu\n"
             "# HELP dragond_models_loaded Models loaded for inference.\n"
             "# TYPE dragond_models_loaded gauge\ndragond_models_loaded %d",
             G.n_running, G.n_waiting, (unsigned long long)M.tokens,
             (unsigned long long)M.prompt_tokens, (unsigned long long)M.cancelled,
             (unsigned long long)M.requests, (unsigned long long)M.rejected,
             (unsigned long long)M.errors, (long long)atomic_load(&E.steps), resident,
             (unsigned long long)M.evictions, (unsigned long long)M.reloads, loaded);
    json_array_append_new(lines, json_string(buf));
    int n_sess = 0;
    for (sess *s = S.list; s; s = s->next) n_sess++;
    snprintf(buf, sizeof buf, "dragond_sessions{state=\"evicted\"} %d", n_sess - resident);
    json_array_append_new(lines, json_string(buf));
    hist_text(lines, "dragond_ttft_seconds", "Time to first token.", &M.ttft);
    hist_text(lines, "dragond_itl_seconds", "Inter-token latency.", &M.itl);
}
