/* engine/gen.h -- continuous-batching generation scheduler for ONE model (cached inference).
 *
 * A request is: a sequence state (dg_state_t, borrowed), tokens to feed into it first (prefill),
 * sampling parameters, a token budget, stop rules and an opaque cookie. dg_gen_step() does one
 * bounded unit of work and reports what happened through the event callback:
 *   - a prefill chunk (at most prefill_chunk tokens) of the request at the head of the wait
 *     queue, so cancellation is seen between chunks of a long prompt; or
 *   - ONE batched decode step over every active sequence (dg_infer_step with B = active count).
 * Sequences join the batch when their prefill ends and leave it when they finish, between steps
 * (continuous batching). While sequences decode and a prompt waits, units alternate
 * decode / prefill chunk so neither starves.
 *
 * Token bookkeeping (the "unfed tail" rule): every request token is fed into the state; every
 * generated token EXCEPT THE LAST is fed too (a sampled token is fed by the next step, and a
 * finished sequence takes no further step). The done event reports n_fed (request tokens fed;
 * < n_tokens only when cancelled or failed during prefill) and last_token, so a caller that keeps
 * a transcript knows exactly which tokens are in the state and which must be fed next time.
 *
 * Sampling runs on the host, per sequence, with its own seeded dg_sampler: a sequence's tokens
 * do not depend on its batch neighbours beyond float rounding of the batched step.
 *
 * Not here: text, JSON, HTTP, threads. Cancellation flags (atomic) may be raised from any thread;
 * everything else -- including dg_gen_cancel -- belongs to the thread that owns the model's
 * backend (the engine thread). */
#ifndef DG_GEN_H
#define DG_GEN_H

#include <stdatomic.h>

#include "model.h"
#include "sample.h"

typedef struct dg_gen_s dg_gen_t;
typedef int64_t dg_gen_handle;             /* > 0, unique per dg_gen_t */

typedef enum {
    DG_GEN_EV_TOKEN = 0,                   /* one generated token */
    DG_GEN_EV_DONE  = 1                    /* the request is over (its handle is invalid after) */
} dg_gen_ev_kind;

typedef enum {
    DG_GEN_STOP_NONE = 0,
    DG_GEN_STOP_EOS,                       /* generated the EOS id (it is the last token)      */
    DG_GEN_STOP_LENGTH,                    /* max_tokens reached (or 0 = prefill only)         */
    DG_GEN_STOP_SEQUENCE,                  /* the generated tokens end with a stop sequence    */
    DG_GEN_STOP_CANCELLED,                 /* dg_gen_cancel or the cancel flag                 */
    DG_GEN_STOP_ERROR                      /* engine error (error holds the DG_E* code)        */
} dg_gen_stop;

/* "eos", "length", "stop_sequence", "cancelled", "error" ("none" for NONE). */
const char *dg_gen_stop_name(dg_gen_stop s);

typedef struct {
    dg_gen_ev_kind kind;
    dg_gen_handle  handle;
    void          *cookie;
    /* TOKEN */
    int32_t        token;
    int64_t        index;                  /* 0-based index among this request's generated tokens */
    /* DONE */
    dg_gen_stop    stop;
    int            error;                  /* DG_E* when stop == ERROR, else 0 */
    int            stop_index;             /* which stop sequence matched (SEQUENCE), else -1 */
    int64_t        n_prompt;               /* request tokens */
    int64_t        n_fed;                  /* request tokens fed into the state */
    int64_t        n_generated;
    int32_t        last_token;             /* last generated token (NOT fed), -1 if none */
    double         queue_s;                /* submit -> prefill start */
    double         ttft_s;                 /* submit -> first token (0 if none) */
    double         prefill_tok_s;          /* request tokens / prefill time */
    double         decode_tok_s;           /* (n_generated - 1) / (last - first token time) */
} dg_gen_event;

typedef void (*dg_gen_event_fn)(const dg_gen_event *ev, void *ud);

typedef struct {
    int max_batch;                         /* sequences per decode step (>= 1) */
    int max_waiting;                       /* requests not yet decoding (queue + prefill) */
    int prefill_chunk;                     /* tokens per prefill unit (>= 1) */
} dg_gen_config;

void dg_gen_config_default(dg_gen_config *c);  /* 32 / 64 / 128 */

/* Creates a scheduler on m (which must outlive it). fn receives every event, called from
 * dg_gen_step / dg_gen_cancel / dg_gen_free on the calling thread. The callback must not call
 * back into the same dg_gen_t (no submit or cancel from inside an event). */
int  dg_gen_create(dg_model_t *m, const dg_gen_config *cfg, dg_gen_event_fn fn, void *ud,
                   dg_gen_t **out);
/* Frees; requests still in flight end with a DONE (cancelled) event first. NULL is a no-op. */
void dg_gen_free(dg_gen_t *g);

#define DG_GEN_MAX_STOPS 8

typedef struct {
    dg_state_t       *state;               /* borrowed until DONE; one request per state */
    const int32_t    *tokens;              /* (n_tokens) fed first; copied at submit */
    int               n_tokens;            /* >= 1 when max_tokens > 0 (the logits come from it) */
    dg_sample_params  sample;
    int64_t           max_tokens;          /* >= 0; 0 = prefill only */
    int32_t           eos;                 /* stop after generating this id; < 0 = never */
    int               n_stops;             /* <= DG_GEN_MAX_STOPS */
    const int32_t    *stops[DG_GEN_MAX_STOPS];      /* token sequences, copied */
    int               stop_lens[DG_GEN_MAX_STOPS];  /* each >= 1 */
    void             *cookie;
    atomic_int       *cancel;              /* optional: non-zero = cancel; read before each unit */
} dg_gen_request;

/* Queues a request. DG_EBUSY when max_waiting requests already wait; DG_EINVAL for a bad
 * request (no tokens with max_tokens > 0, a token id out of range, bad sampling params, a
 * state of another model or one already in use). On success *out (may be NULL) gets the handle
 * and exactly one DONE event will follow. */
int  dg_gen_submit(dg_gen_t *g, const dg_gen_request *rq, dg_gen_handle *out);
/* Cancels: the DONE (cancelled) event is delivered from inside this call, so the request never
 * takes another step. DG_ENOTFOUND for an unknown or finished handle. */
int  dg_gen_cancel(dg_gen_t *g, dg_gen_handle h);
/* One unit of work (see the top). Returns 1 when it did work, 0 when there is none. Engine
 * errors do not come back here: they end the affected requests with DONE (error). */
int  dg_gen_step(dg_gen_t *g);

int  dg_gen_n_running(const dg_gen_t *g);   /* decoding */
int  dg_gen_n_waiting(const dg_gen_t *g);   /* queued or prefilling */
bool dg_gen_idle(const dg_gen_t *g);
/* Counters since creation: decode steps, tokens generated, prompt tokens fed. */
void dg_gen_stats(const dg_gen_t *g, int64_t *steps, int64_t *tokens, int64_t *prompt_tokens);

#endif /* DG_GEN_H */
