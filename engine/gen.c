/* engine/gen.c -- the continuous-batching generation scheduler (engine/gen.h).
 *
 * Three places a request can be: the wait list (FIFO, not started), `cur` (the one request whose
 * prompt is being prefilled, one chunk per unit) and the active array (decoding, in join order,
 * at most max_batch). A decode unit calls dg_infer_step once for the whole active array, then
 * samples each row on the host with the sequence's own sampler. Finished sequences leave the
 * array between steps (order kept, so event order is deterministic).
 * Not here: threads, text, files. Thread affinity: the engine thread (see gen.h). */
#include "gen.h"

#include <string.h>

typedef struct seq {
    dg_gen_handle  h;
    void          *cookie;
    dg_state_t    *st;
    int32_t       *toks;                 /* (n_toks) request tokens */
    int            n_toks, n_fed;
    dg_sampler     smp;
    int64_t        max_tokens, n_gen;
    int32_t        eos;
    int32_t       *gen;                  /* generated tokens, for stop matching */
    int64_t        gen_cap;
    int            n_stops;
    int32_t       *stops[DG_GEN_MAX_STOPS];
    int            stop_lens[DG_GEN_MAX_STOPS];
    atomic_int    *cancel;
    int32_t        next;                 /* sampled, fed by the next decode step */
    double         t_submit, t_pf0, t_pf1, t_first, t_last;
    struct seq    *link;                 /* wait list */
} seq;

struct dg_gen_s {
    dg_model_t     *m;
    dg_infer_t     *ix;
    dg_gen_config   cfg;
    dg_gen_event_fn fn;
    void           *ud;
    int             V;
    float          *logits;              /* (max_batch, V) host */
    seq            *wait_head, *wait_tail;
    int             n_wait;
    seq            *cur;                 /* prefilling */
    seq           **act;                 /* [max_batch] decoding */
    int             n_act;
    dg_state_t    **st_buf;              /* [max_batch] */
    int32_t        *tok_buf;             /* [max_batch] */
    dg_gen_handle   next_h;
    bool            prefill_turn;        /* alternation when both kinds of work exist */
    int64_t         n_steps, n_tokens, n_prompt;
};

const char *dg_gen_stop_name(dg_gen_stop s) {
    switch (s) {
    case DG_GEN_STOP_EOS: return "eos";
    case DG_GEN_STOP_LENGTH: return "length";
    case DG_GEN_STOP_SEQUENCE: return "stop_sequence";
    case DG_GEN_STOP_CANCELLED: return "cancelled";
    case DG_GEN_STOP_ERROR: return "error";
    default: return "none";
    }
}

void dg_gen_config_default(dg_gen_config *c) {
    c->max_batch = 32;
    c->max_waiting = 64;
    c->prefill_chunk = 128;
}

int dg_gen_create(dg_model_t *m, const dg_gen_config *cfg, dg_gen_event_fn fn, void *ud,
                  dg_gen_t **out) {
    DG_ASSERT(m && fn && out);
    dg_gen_config c;
    if (cfg) c = *cfg;
    else dg_gen_config_default(&c);
    if (c.max_batch < 1 || c.max_waiting < 1 || c.prefill_chunk < 1) return DG_EINVAL;
    dg_gen_t *g = dg_calloc(1, sizeof *g);
    g->m = m;
    g->cfg = c;
    g->fn = fn;
    g->ud = ud;
    g->V = dg_model_config_of(m)->vocab_size;
    int rc = dg_infer_create(m, c.max_batch, c.prefill_chunk, &g->ix);
    if (rc) { dg_free(g); return rc; }
    g->logits = dg_try_malloc((size_t)c.max_batch * (size_t)g->V * sizeof(float));
    if (!g->logits) { dg_infer_free(g->ix); dg_free(g); return DG_ENOMEM; }
    g->act = dg_calloc((size_t)c.max_batch, sizeof *g->act);
    g->st_buf = dg_calloc((size_t)c.max_batch, sizeof *g->st_buf);
    g->tok_buf = dg_calloc((size_t)c.max_batch, sizeof *g->tok_buf);
    g->next_h = 1;
    *out = g;
    return 0;
}

static void seq_free(seq *s) {
    dg_sampler_free(&s->smp);
    dg_free(s->toks);
    dg_free(s->gen);
    for (int i = 0; i < s->n_stops; i++) dg_free(s->stops[i]);
    dg_free(s);
}

/* Emits DONE for s and frees it; the caller has already unlinked it. */
static void finish(dg_gen_t *g, seq *s, dg_gen_stop why, int error, int stop_index) {
    dg_gen_event ev = {0};
    ev.kind = DG_GEN_EV_DONE;
    ev.handle = s->h;
    ev.cookie = s->cookie;
    ev.stop = why;
    ev.error = error;
    ev.stop_index = stop_index;
    ev.n_prompt = s->n_toks;
    ev.n_fed = s->n_fed;
    ev.n_generated = s->n_gen;
    ev.last_token = s->n_gen > 0 ? s->gen[s->n_gen - 1] : -1;
    ev.token = -1;
    if (s->t_pf0 > 0) ev.queue_s = s->t_pf0 - s->t_submit;
    if (s->n_gen > 0) ev.ttft_s = s->t_first - s->t_submit;
    if (s->t_pf1 > s->t_pf0 && s->t_pf0 > 0) ev.prefill_tok_s = s->n_fed / (s->t_pf1 - s->t_pf0);
    if (s->n_gen > 1 && s->t_last > s->t_first)
        ev.decode_tok_s = (double)(s->n_gen - 1) / (s->t_last - s->t_first);
    g->fn(&ev, g->ud);
    seq_free(s);
}

void dg_gen_free(dg_gen_t *g) {
    if (!g) return;
    while (g->wait_head) {
        seq *s = g->wait_head;
        g->wait_head = s->link;
        finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
    }
    if (g->cur) finish(g, g->cur, DG_GEN_STOP_CANCELLED, 0, -1);
    for (int i = 0; i < g->n_act; i++) finish(g, g->act[i], DG_GEN_STOP_CANCELLED, 0, -1);
    dg_infer_free(g->ix);
    dg_free(g->logits);
    dg_free(g->act);
    dg_free(g->st_buf);
    dg_free(g->tok_buf);
    dg_free(g);
}

// ------------------------------------------------------------------------------------------
// submit / cancel

static bool state_busy(const dg_gen_t *g, const dg_state_t *st) {
    for (const seq *s = g->wait_head; s; s = s->link)
        if (s->st == st) return true;
    if (g->cur && g->cur->st == st) return true;
    for (int i = 0; i < g->n_act; i++)
        if (g->act[i]->st == st) return true;
    return false;
}

int dg_gen_submit(dg_gen_t *g, const dg_gen_request *rq, dg_gen_handle *out) {
    if (!rq->state || rq->n_tokens < 0 || rq->max_tokens < 0) return DG_EINVAL;
    if (rq->max_tokens > 0 && rq->n_tokens < 1) return DG_EINVAL;
    if (rq->n_stops < 0 || rq->n_stops > DG_GEN_MAX_STOPS) return DG_EINVAL;
    if (dg_sample_params_validate(&rq->sample, NULL, 0)) return DG_EINVAL;
    for (int i = 0; i < rq->n_tokens; i++)
        if (rq->tokens[i] < 0 || rq->tokens[i] >= g->V) return DG_EINVAL;
    for (int k = 0; k < rq->n_stops; k++)
        if (rq->stop_lens[k] < 1 || !rq->stops[k]) return DG_EINVAL;
    if (state_busy(g, rq->state)) return DG_EINVAL;
    if (g->n_wait + (g->cur ? 1 : 0) >= g->cfg.max_waiting) return DG_EBUSY;

    seq *s = dg_calloc(1, sizeof *s);
    s->h = g->next_h++;
    s->cookie = rq->cookie;
    s->st = rq->state;
    s->n_toks = rq->n_tokens;
    s->toks = dg_malloc((size_t)(rq->n_tokens > 0 ? rq->n_tokens : 1) * sizeof *s->toks);
    if (rq->n_tokens > 0) memcpy(s->toks, rq->tokens, (size_t)rq->n_tokens * sizeof *s->toks);
    dg_sampler_init(&s->smp, &rq->sample);
    s->max_tokens = rq->max_tokens;
    s->eos = rq->eos;
    s->n_stops = rq->n_stops;
    for (int k = 0; k < rq->n_stops; k++) {
        s->stop_lens[k] = rq->stop_lens[k];
        s->stops[k] = dg_malloc((size_t)rq->stop_lens[k] * sizeof(int32_t));
        memcpy(s->stops[k], rq->stops[k], (size_t)rq->stop_lens[k] * sizeof(int32_t));
    }
    s->cancel = rq->cancel;
    s->t_submit = dg_now();
    if (g->wait_tail) g->wait_tail->link = s;
    else g->wait_head = s;
    g->wait_tail = s;
    g->n_wait++;
    if (out) *out = s->h;
    return 0;
}

static void wait_unlink(dg_gen_t *g, seq *s, seq *prev) {
    if (prev) prev->link = s->link;
    else g->wait_head = s->link;
    if (g->wait_tail == s) g->wait_tail = prev;
    s->link = NULL;
    g->n_wait--;
}

static void act_remove(dg_gen_t *g, int i) {
    memmove(&g->act[i], &g->act[i + 1], (size_t)(g->n_act - i - 1) * sizeof *g->act);
    g->n_act--;
}

int dg_gen_cancel(dg_gen_t *g, dg_gen_handle h) {
    for (seq *s = g->wait_head, *prev = NULL; s; prev = s, s = s->link)
        if (s->h == h) {
            wait_unlink(g, s, prev);
            finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
            return 0;
        }
    if (g->cur && g->cur->h == h) {
        seq *s = g->cur;
        g->cur = NULL;
        finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
        return 0;
    }
    for (int i = 0; i < g->n_act; i++)
        if (g->act[i]->h == h) {
            seq *s = g->act[i];
            act_remove(g, i);
            finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
            return 0;
        }
    return DG_ENOTFOUND;
}

static bool flagged(const seq *s) { return s->cancel && atomic_load(s->cancel) != 0; }

/* Ends every request whose cancel flag is up, wherever it is. */
static void sweep_flags(dg_gen_t *g) {
    for (seq *s = g->wait_head, *prev = NULL, *nx; s; s = nx) {
        nx = s->link;
        if (flagged(s)) {
            wait_unlink(g, s, prev);
            finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
        } else {
            prev = s;
        }
    }
    if (g->cur && flagged(g->cur)) {
        seq *s = g->cur;
        g->cur = NULL;
        finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
    }
    for (int i = 0; i < g->n_act;) {
        if (flagged(g->act[i])) {
            seq *s = g->act[i];
            act_remove(g, i);
            finish(g, s, DG_GEN_STOP_CANCELLED, 0, -1);
        } else {
            i++;
        }
    }
}

// ------------------------------------------------------------------------------------------
// units of work

/* Records and emits a sampled token; returns the stop reason it causes (NONE to go on). */
static dg_gen_stop take_token(dg_gen_t *g, seq *s, int32_t t, int *stop_index) {
    double now = dg_now();
    if (s->n_gen == 0) s->t_first = now;
    s->t_last = now;
    if (s->n_gen == s->gen_cap) {
        s->gen_cap = s->gen_cap ? s->gen_cap * 2 : 64;
        s->gen = dg_realloc(s->gen, (size_t)s->gen_cap * sizeof *s->gen);
    }
    s->gen[s->n_gen] = t;
    dg_gen_event ev = {0};
    ev.kind = DG_GEN_EV_TOKEN;
    ev.handle = s->h;
    ev.cookie = s->cookie;
    ev.token = t;
    ev.index = s->n_gen;
    ev.stop_index = -1;
    ev.last_token = -1;
    s->n_gen++;
    g->n_tokens++;
    g->fn(&ev, g->ud);
    *stop_index = -1;
    if (s->eos >= 0 && t == s->eos) return DG_GEN_STOP_EOS;
    for (int k = 0; k < s->n_stops; k++) {
        int L = s->stop_lens[k];
        if (s->n_gen < L) continue;
        if (!memcmp(s->gen + s->n_gen - L, s->stops[k], (size_t)L * sizeof(int32_t))) {
            *stop_index = k;
            return DG_GEN_STOP_SEQUENCE;
        }
    }
    if (s->n_gen >= s->max_tokens) return DG_GEN_STOP_LENGTH;
    return DG_GEN_STOP_NONE;
}

static void prefill_unit(dg_gen_t *g) {
    seq *s = g->cur;
    if (s->t_pf0 == 0) s->t_pf0 = dg_now();
    int left = s->n_toks - s->n_fed;
    if (left == 0) {                     /* nothing to feed: prefill-only request of 0 tokens */
        g->cur = NULL;
        s->t_pf1 = dg_now();
        finish(g, s, DG_GEN_STOP_LENGTH, 0, -1);
        return;
    }
    int k = left < g->cfg.prefill_chunk ? left : g->cfg.prefill_chunk;
    bool last = k == left;
    float *lg = last && s->max_tokens > 0 ? g->logits : NULL;
    int rc = dg_infer_prefill(g->ix, s->st, s->toks + s->n_fed, k, lg);
    if (rc) {
        g->cur = NULL;
        finish(g, s, DG_GEN_STOP_ERROR, rc, -1);
        return;
    }
    s->n_fed += k;
    g->n_prompt += k;
    if (!last) return;
    s->t_pf1 = dg_now();
    g->cur = NULL;
    if (s->max_tokens == 0) {
        finish(g, s, DG_GEN_STOP_LENGTH, 0, -1);
        return;
    }
    int32_t t = dg_sampler_sample(&s->smp, g->logits, g->V);
    int si;
    dg_gen_stop why = take_token(g, s, t, &si);
    if (why != DG_GEN_STOP_NONE) {
        finish(g, s, why, 0, si);
        return;
    }
    s->next = t;
    DG_ASSERT(g->n_act < g->cfg.max_batch);
    g->act[g->n_act++] = s;
}

static void decode_unit(dg_gen_t *g) {
    int B = g->n_act;
    for (int b = 0; b < B; b++) {
        g->st_buf[b] = g->act[b]->st;
        g->tok_buf[b] = g->act[b]->next;
    }
    int rc = dg_infer_step(g->ix, B, g->st_buf, g->tok_buf, g->logits);
    g->n_steps++;
    if (rc) {                            /* the states are suspect: end the whole batch */
        while (g->n_act > 0) {
            seq *s = g->act[0];
            act_remove(g, 0);
            finish(g, s, DG_GEN_STOP_ERROR, rc, -1);
        }
        return;
    }
    /* Rows follow the active array's order; finished sequences are compacted out in place. */
    int w = 0;
    for (int b = 0; b < B; b++) {
        seq *s = g->act[b];
        int32_t t = dg_sampler_sample(&s->smp, g->logits + (size_t)b * g->V, g->V);
        int si;
        dg_gen_stop why = take_token(g, s, t, &si);
        if (why != DG_GEN_STOP_NONE) {
            finish(g, s, why, 0, si);
        } else {
            s->next = t;
            g->act[w++] = s;
        }
    }
    g->n_act = w;
}

int dg_gen_step(dg_gen_t *g) {
    sweep_flags(g);
    if (!g->cur && g->wait_head && g->n_act < g->cfg.max_batch) {
        seq *s = g->wait_head;
        wait_unlink(g, s, NULL);
        g->cur = s;
    }
    if (g->cur && (g->n_act == 0 || g->prefill_turn)) {
        g->prefill_turn = false;
        prefill_unit(g);
        return 1;
    }
    if (g->n_act > 0) {
        g->prefill_turn = true;
        decode_unit(g);
        return 1;
    }
    return 0;
}

int  dg_gen_n_running(const dg_gen_t *g) { return g->n_act; }
int  dg_gen_n_waiting(const dg_gen_t *g) { return g->n_wait + (g->cur ? 1 : 0); }
bool dg_gen_idle(const dg_gen_t *g) { return !g->n_act && !g->n_wait && !g->cur; }

void dg_gen_stats(const dg_gen_t *g, int64_t *steps, int64_t *tokens, int64_t *prompt_tokens) {
    if (steps) *steps = g->n_steps;
    if (tokens) *tokens = g->n_tokens;
    if (prompt_tokens) *prompt_tokens = g->n_prompt;
}
