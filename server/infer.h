/* server/infer.h -- the inference side of the daemon: OpenAI-compatible completions, tokenize,
 * native sessions with persistent recurrent state, the model registry and the engine bridge.
 *
 * Two layers:
 *   - pure parts (infer_proto.c, infer_sessfile.c): request parsing and validation, response and
 *     stream-frame builders, the text assembler (UTF-8 safe, stop-sequence hold-back), keep_alive
 *     parsing, and the session state file. No HTTP, no threads: unit-tested in
 *     tests/server/test_infer_*.c.
 *   - the runtime (infer.c): model registry, session table, the inference engine thread
 *     (engine/gen.h per loaded model) and the HTTP handlers.
 * Not here: MHD mechanics (http.c), routing (api.c's table lists the handlers declared below).
 * Thread affinity: LOOP thread, except where a function says "engine thread" or "any thread". */
#ifndef DG_INFER_H
#define DG_INFER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/gen.h"
#include "engine/sample.h"
#include "engine/tokenizer.h"

// ------------------------------------------------------------------------------------------
// Request parameters (parsed at the edge; JSON never goes further).

#define DG_INFER_MAX_STOPS 4          /* OpenAI allows up to 4 stop strings */
#define DG_INFER_MAX_TOKENS_CAP 1000000

typedef struct {
    char             model[160];
    char            *prompt_text;     /* dg_malloc'd (NULL when ids were given) */
    int32_t         *prompt_ids;      /* dg_malloc'd (NULL when text was given) */
    size_t           n_prompt_ids;
    bool             has_prompt;
    int64_t          max_tokens;      /* OpenAI default 16 */
    dg_sample_params sample;          /* OpenAI defaults: temperature 1, top_p 1 */
    bool             seed_given;
    int              n_stops;
    char            *stops[DG_INFER_MAX_STOPS];    /* dg_malloc'd */
    bool             stream;
    bool             include_usage;
    char             session_id[64];  /* extra: continue a session ("" = none) */
    bool             ignore_eos;      /* extra (as vLLM): do not stop at EOS (benchmarks) */
} dg_cmpl_params;

/* Which kind of body: OpenAI endpoints ignore nothing silently either -- unknown and
 * unsupported fields are both rejected, naming the field. */
typedef enum { DG_BODY_COMPLETIONS, DG_BODY_SESSION_GENERATE } dg_body_kind;

/* Parses a POST /v1/completions body (kind COMPLETIONS) or a POST /v1/sessions/{id}/generate
 * body (kind SESSION_GENERATE: "append" instead of "prompt", no "model"; defaults max_tokens
 * 256, stream true). On error returns DG_EINVAL (bad value: code "invalid_value" / type
 * "invalid_type") or DG_ENOTSUP (field dragond does not support: code "unsupported_parameter"),
 * with the field name in param and a sentence in msg. Free with dg_cmpl_params_free. */
int  dg_cmpl_parse(json_t *body, dg_body_kind kind, dg_cmpl_params *out, char *param,
                   size_t pn, const char **code, char *msg, size_t mn);
void dg_cmpl_params_free(dg_cmpl_params *p);

typedef struct {
    char    model[160];
    char   *prompt_text;              /* NULL = none */
    int32_t *prompt_ids;
    size_t  n_prompt_ids;
    bool    has_prompt;
    double  keep_alive_s;             /* < 0 = never expire */
    bool    keep_alive_given;
} dg_sess_create_params;

/* POST /v1/sessions {model, prompt?, keep_alive?}. Same error contract as dg_cmpl_parse. */
int  dg_sess_create_parse(json_t *body, dg_sess_create_params *out, char *param, size_t pn,
                          const char **code, char *msg, size_t mn);
void dg_sess_create_params_free(dg_sess_create_params *p);

/* keep_alive: a number of seconds, or "90s", "30m", "2h", "1d"; -1 / "-1" = forever; 0 = expire
 * when idle at the next sweep. Returns 0 or DG_EINVAL. */
int  dg_parse_duration(json_t *v, double *out_s);

/* Encodes text with tok strictly (a character outside the vocabulary is an error naming its
 * byte offset). Ids are dg_malloc'd. */
int  dg_infer_encode(const dg_tokenizer_t *tok, const char *text, int32_t **ids, size_t *n,
                     char *msg, size_t mn);
/* Checks every id is in [0, V); msg names the first bad index. */
int  dg_infer_check_ids(const int32_t *ids, size_t n, int V, char *msg, size_t mn);

// ------------------------------------------------------------------------------------------
// Text assembly: token ids in, UTF-8-complete text out, with stop sequences held back.

typedef struct {
    const dg_tokenizer_t *tok;
    dg_utf8_stream        u8;
    int                   n_stops;
    int32_t              *stops[DG_GEN_MAX_STOPS];   /* token sequences */
    int                   stop_lens[DG_GEN_MAX_STOPS];
    int32_t               held[64];                  /* tokens that may start a stop sequence */
    int                   n_held;
    char                 *text;                      /* everything released so far */
    size_t                text_len, text_cap;
} dg_textasm;

/* stops: strings encoded with tok (a stop that cannot be encoded can never be produced and is
 * dropped). Returns the number of usable stop sequences, which are also written to the out
 * arrays for the engine request (pointers into the assembler; valid while it lives). */
int  dg_textasm_init(dg_textasm *a, const dg_tokenizer_t *tok, char *const *stops, int n_stops);
void dg_textasm_free(dg_textasm *a);
/* Feeds one generated token. Released tokens go to out_ids (capacity 64; may be NULL) and their
 * complete UTF-8 text is appended to out (NUL-terminated; cap >= 512). Returns the number of
 * bytes written to out; *n_ids gets the count of released ids. */
int  dg_textasm_push(dg_textasm *a, int32_t id, int32_t *out_ids, int *n_ids, char *out,
                     int cap);
/* The request ended: stop_index >= 0 drops the matched stop sequence from the held tokens;
 * everything else still held is released, then the UTF-8 tail is flushed (U+FFFD for an
 * incomplete character). Same outputs as push. */
int  dg_textasm_finish(dg_textasm *a, int stop_index, int32_t *out_ids, int *n_ids, char *out,
                       int cap);

// ------------------------------------------------------------------------------------------
// Response builders. Strings returned are dg_malloc'd.

/* finish_reason of OpenAI for an engine stop: eos/stop_sequence -> "stop", length -> "length",
 * else NULL (cancelled/error never reach a client as a finish reason). */
const char *dg_infer_finish_reason(dg_gen_stop s);

/* The non-streamed text_completion object. */
json_t *dg_cmpl_object(const char *id, int64_t created, const char *model, const char *text,
                       size_t text_len, const char *finish_reason, int64_t prompt_tokens,
                       int64_t completion_tokens);
/* One streamed chunk "data: {...}\n\n" (choices[0].text, finish_reason null or given).
 * with_usage_null adds "usage": null as OpenAI does on every chunk when include_usage is set. */
char *dg_cmpl_chunk(const char *id, int64_t created, const char *model, const char *text,
                    size_t text_len, const char *finish_reason, bool with_usage_null);
/* The usage chunk: "choices": [] and the usage object. */
char *dg_cmpl_usage_chunk(const char *id, int64_t created, const char *model,
                          int64_t prompt_tokens, int64_t completion_tokens);
/* "data: {"error":{...}}\n\n" (the envelope of http.c). */
char *dg_sse_error_frame(const char *type, const char *code, const char *message);
#define DG_SSE_DONE "data: [DONE]\n\n"

/* A native SSE event: "id: <seq>\nevent: <type>\ndata: <compact json>\n\n"; steals data. */
char *dg_sse_event(int64_t seq, const char *type, json_t *data);

/* The done event's data of a native generation. */
json_t *dg_gen_done_json(const dg_gen_event *ev, const char *stop_reason, size_t text_len,
                         int64_t session_tokens);

// ------------------------------------------------------------------------------------------
// Session state file: <data_dir>/sessions/<id>.dst (infer_sessfile.c).
//
// Layout (little-endian):
//   "DGST" magic, u32 version (1), u32 header_bytes (fixed part, 128), u32 flags (0),
//   u8 model_fp[32]   sha256 of the model's parameters (f32, layout order)
//   i64 pos           tokens fed into the state
//   i64 n_floats      state floats (L*H*Nq*D)
//   u32 n_unfed       tokens of the transcript not yet fed (the unfed tail, engine/gen.h)
//   u32 id_len, u32 model_len, u32 reserved
//   f64 created_at, f64 keep_alive_s
//   ...zero padding to 128 bytes...
//   char id[id_len], char model[model_len], i32 unfed[n_unfed], f32 state[n_floats]
//   u8 sha256[32] of everything before it (the checksum)
// Written atomically (tmp, fsync, rename, fsync dir).

#define DG_SESSFILE_MAGIC   "DGST"
#define DG_SESSFILE_VERSION 1u

typedef struct {
    char     id[64];
    char     model[160];
    uint8_t  model_fp[32];
    int64_t  pos;
    int64_t  n_floats;
    float   *state;                   /* n_floats (dg_malloc'd on read) */
    uint32_t n_unfed;
    int32_t *unfed;                   /* n_unfed (dg_malloc'd on read) */
    double   created_at, keep_alive_s;
} dg_sessfile;

int  dg_sessfile_write(const char *path, const dg_sessfile *f, char *err, size_t errlen);
/* expect_fp (may be NULL): a file of another model fails with DG_EINVAL and a message naming
 * both models. Corrupt/truncated -> DG_ECORRUPT, other version -> DG_EVERSION, absent ->
 * DG_ENOTFOUND. */
int  dg_sessfile_read(const char *path, const uint8_t *expect_fp, dg_sessfile *out, char *err,
                      size_t errlen);
void dg_sessfile_free(dg_sessfile *f);

// ------------------------------------------------------------------------------------------
// The runtime (infer.c). Limits come from the environment (defaults in brackets):
// DRAGOND_MODEL_BUDGET_MB [4096], DRAGOND_SESSION_BUDGET_MB [1024],
// DRAGOND_SESSION_KEEP_ALIVE_S [1800], DRAGOND_GEN_MAX_BATCH [32], DRAGOND_GEN_MAX_WAITING [64],
// DRAGOND_GEN_PREFILL_CHUNK [128].

typedef struct dg_req dg_req;
struct uv_loop_s;

/* Starts the inference engine thread and the timers. 0 or DG_E* with a message. */
int  dg_infer_init(struct uv_loop_s *loop, const void *settings, char *err, size_t n);
/* Raises the cancel flag of every generation (drain). */
void dg_infer_cancel_all(void);
/* Training loop hook (worker.c, engine thread of the device): between two optimizer steps,
 * waits (at most max_wait_s) for one unit of generation work when generations are in flight, so
 * decode steps interleave with training steps. Returns at once when inference is idle. */
void dg_infer_train_yield(double max_wait_s);
/* True when no generation request is in flight. */
bool dg_infer_idle(void);
/* Stops the engine thread (generations end cancelled), frees every table. */
void dg_infer_shutdown(void);
/* A model under <data_dir>/models appeared or changed (called by models_import.c). */
void dg_infer_models_changed(const char *name);
/* Appends the inference metrics (Prometheus text lines) to lines. */
void dg_infer_metrics_text(json_t *lines);
/* Where sessions run: "cpu" or "cuda:N" (the infer_device setting, resolved at start). */
const char *dg_infer_device(void);

/* Handlers (the route table in api.c lists them). */
void dg_h_models(dg_req *r);              /* GET    /v1/models                  */
void dg_h_completions(dg_req *r);         /* POST   /v1/completions             */
void dg_h_tokenize(dg_req *r);            /* POST   /v1/tokenize                */
void dg_h_detokenize(dg_req *r);          /* POST   /v1/detokenize              */
void dg_h_sessions_create(dg_req *r);     /* POST   /v1/sessions                */
void dg_h_sessions_list(dg_req *r);       /* GET    /v1/sessions                */
void dg_h_session_get(dg_req *r);         /* GET    /v1/sessions/{id}           */
void dg_h_session_delete(dg_req *r);      /* DELETE /v1/sessions/{id}           */
void dg_h_session_generate(dg_req *r);    /* POST   /v1/sessions/{id}/generate  */
void dg_h_session_fork(dg_req *r);        /* POST   /v1/sessions/{id}/fork      */
void dg_h_session_save(dg_req *r);        /* POST   /v1/sessions/{id}/save      */
void dg_h_session_load(dg_req *r);        /* POST   /v1/sessions/{id}/load      */
void dg_h_request_cancel(dg_req *r);      /* POST   /v1/requests/{id}/cancel    */

#endif /* DG_INFER_H */
