/* server/infer_proto.c -- the pure parts of inference over HTTP (server/infer.h): request parsing
 * and validation for completions, session generate/create, keep_alive; the text assembler that
 * turns generated ids into UTF-8-complete text and holds back possible stop sequences; the
 * builders of text_completion objects, OpenAI stream chunks and native SSE events.
 *
 * Rules: every field that is not understood is rejected naming the field (never silently
 * ignored); OpenAI fields whose only supported value is the default (n=1, echo=false,
 * logprobs=null, best_of=1, penalties 0, empty logit_bias, suffix null) accept exactly that
 * value. Not here: HTTP, threads, the engine. Thread affinity: any thread (no globals). */
#include "infer.h"
#include "srv.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ------------------------------------------------------------------------------------------
// errors

typedef struct {
    char       *param;
    size_t      pn;
    const char **code;
    char       *msg;
    size_t      mn;
} perr;

static int fail(perr *e, int rc, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(perr *e, int rc, const char *code, const char *param, const char *fmt, ...) {
    if (e->param) snprintf(e->param, e->pn, "%s", param ? param : "");
    if (e->code) *e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, e->mn, fmt, ap);
    va_end(ap);
    return rc;
}

// ------------------------------------------------------------------------------------------
// field readers

static int get_number(perr *e, json_t *v, const char *name, double lo, double hi, bool lo_open,
                      double *out) {
    if (!json_is_number(v))
        return fail(e, DG_EINVAL, "invalid_type", name, "%s must be a number", name);
    double x = json_number_value(v);
    bool ok = isfinite(x) && (lo_open ? x > lo : x >= lo) && x <= hi;
    if (!ok)
        return fail(e, DG_EINVAL, "invalid_value", name, "%s must be in %c%g, %g], got %g",
                    name, lo_open ? '(' : '[', lo, hi, x);
    *out = x;
    return 0;
}

static int get_int(perr *e, json_t *v, const char *name, int64_t lo, int64_t hi, int64_t *out) {
    if (!json_is_integer(v)) {
        if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
            fabs(json_real_value(v)) < 9e15) {
            *out = (int64_t)json_real_value(v);
        } else {
            return fail(e, DG_EINVAL, "invalid_type", name, "%s must be an integer", name);
        }
    } else {
        *out = json_integer_value(v);
    }
    if (*out < lo || *out > hi)
        return fail(e, DG_EINVAL, "invalid_value", name,
                    "%s must be in [%lld, %lld], got %lld", name, (long long)lo, (long long)hi,
                    (long long)*out);
    return 0;
}

/* A prompt: a string, an array of token ids, or an array holding exactly one string or one id
 * array (OpenAI's batch forms with more than one prompt are not supported: n = 1 only). */
static int get_prompt(perr *e, json_t *v, const char *name, char **text, int32_t **ids,
                      size_t *n_ids) {
    if (json_is_string(v)) {
        *text = dg_strdup(json_string_value(v));
        return 0;
    }
    if (!json_is_array(v))
        return fail(e, DG_EINVAL, "invalid_type", name,
                    "%s must be a string or an array of token ids", name);
    size_t n = json_array_size(v);
    if (n == 1 && (json_is_string(json_array_get(v, 0)) || json_is_array(json_array_get(v, 0))))
        return get_prompt(e, json_array_get(v, 0), name, text, ids, n_ids);
    if (n > 0 && (json_is_string(json_array_get(v, 0)) || json_is_array(json_array_get(v, 0))))
        return fail(e, DG_ENOTSUP, "unsupported_parameter", name,
                    "%s: more than one prompt per request is not supported (n = 1 only)", name);
    int32_t *out = dg_malloc((n ? n : 1) * sizeof *out);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(v, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 ||
            json_integer_value(t) > INT32_MAX) {
            dg_free(out);
            return fail(e, DG_EINVAL, "invalid_value", name,
                        "%s[%zu] must be a non-negative integer token id", name, i);
        }
        out[i] = (int32_t)json_integer_value(t);
    }
    *ids = out;
    *n_ids = n;
    return 0;
}

static int get_stops(perr *e, json_t *v, dg_cmpl_params *p) {
    if (json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (!json_string_length(v))
            return fail(e, DG_EINVAL, "invalid_value", "stop", "stop must not be empty");
        p->stops[p->n_stops++] = dg_strdup(json_string_value(v));
        return 0;
    }
    if (!json_is_array(v))
        return fail(e, DG_EINVAL, "invalid_type", "stop",
                    "stop must be a string or an array of strings");
    if (json_array_size(v) > DG_INFER_MAX_STOPS)
        return fail(e, DG_EINVAL, "invalid_value", "stop", "stop takes at most %d strings",
                    DG_INFER_MAX_STOPS);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s) || !json_string_length(s))
            return fail(e, DG_EINVAL, "invalid_value", "stop",
                        "stop[%zu] must be a non-empty string", i);
        p->stops[p->n_stops++] = dg_strdup(json_string_value(s));
    }
    return 0;
}

/* Fields accepted only at their default value. */
static int default_only(perr *e, const char *k, json_t *v) {
    bool ok = json_is_null(v);
    if (!strcmp(k, "n") || !strcmp(k, "best_of"))
        ok |= json_is_integer(v) && json_integer_value(v) == 1;
    else if (!strcmp(k, "echo")) ok |= json_is_false(v);
    else if (!strcmp(k, "frequency_penalty") || !strcmp(k, "presence_penalty"))
        ok |= json_is_number(v) && json_number_value(v) == 0;
    else if (!strcmp(k, "logit_bias")) ok |= json_is_object(v) && json_object_size(v) == 0;
    else if (!strcmp(k, "logprobs")) ok |= json_is_false(v);
    if (ok) return 0;
    char *t = dg_json_text(v);
    int rc = fail(e, DG_ENOTSUP, "unsupported_parameter", k,
                  "%s=%.60s is not supported by dragond (only the default value is accepted)",
                  k, t);
    dg_free(t);
    return rc;
}

static uint64_t fresh_seed(void) {
    static dg_rng r;
    static bool init;
    if (!init) {
        dg_rng_seed(&r, (uint64_t)dg_wall_ms() * 0x9E3779B97F4A7C15ull);
        init = true;
    }
    return dg_rng_next(&r) >> 1;
}

// ------------------------------------------------------------------------------------------
// completions and session generate

int dg_cmpl_parse(json_t *body, dg_body_kind kind, dg_cmpl_params *p, char *param, size_t pn,
                  const char **code, char *msg, size_t mn) {
    perr e = {param, pn, code, msg, mn};
    memset(p, 0, sizeof *p);
    dg_sample_params_default(&p->sample);
    bool native = kind == DG_BODY_SESSION_GENERATE;
    p->max_tokens = native ? 256 : 16;
    p->stream = native;
    if (!json_is_object(body))
        return fail(&e, DG_EINVAL, "invalid_type", NULL, "the body must be a JSON object");
    const char *k;
    json_t *v;
    json_t *stream_options = NULL;
    int rc = 0;
    json_object_foreach(body, k, v) {
        if (!native && !strcmp(k, "model")) {
            if (!json_is_string(v) || !json_string_length(v) ||
                json_string_length(v) >= sizeof p->model)
                return fail(&e, DG_EINVAL, "invalid_type", k, "model must be a model id string");
            snprintf(p->model, sizeof p->model, "%s", json_string_value(v));
        } else if ((!native && !strcmp(k, "prompt")) || (native && !strcmp(k, "append"))) {
            if (native && json_is_null(v)) continue;
            rc = get_prompt(&e, v, k, &p->prompt_text, &p->prompt_ids, &p->n_prompt_ids);
            p->has_prompt = true;
        } else if (!strcmp(k, "max_tokens") || (!native && !strcmp(k, "max_completion_tokens"))) {
            if (json_is_null(v)) continue;
            rc = get_int(&e, v, k, 0, DG_INFER_MAX_TOKENS_CAP, &p->max_tokens);
        } else if (!strcmp(k, "temperature")) {
            double x;
            if (json_is_null(v)) continue;
            if (!(rc = get_number(&e, v, k, 0, 2, false, &x))) p->sample.temperature = (float)x;
        } else if (!strcmp(k, "top_p")) {
            double x;
            if (json_is_null(v)) continue;
            if (!(rc = get_number(&e, v, k, 0, 1, true, &x))) p->sample.top_p = (float)x;
        } else if (!strcmp(k, "min_p")) {
            double x;
            if (json_is_null(v)) continue;
            if (!(rc = get_number(&e, v, k, 0, 0.999999, false, &x))) p->sample.min_p = (float)x;
        } else if (!strcmp(k, "top_k")) {
            int64_t x;
            if (json_is_null(v)) continue;
            /* -1 means "off" in vLLM and llama.cpp */
            if (!(rc = get_int(&e, v, k, -1, 1 << 30, &x))) p->sample.top_k = x < 0 ? 0 : (int)x;
        } else if (!strcmp(k, "seed")) {
            int64_t x;
            if (json_is_null(v)) continue;
            if (!(rc = get_int(&e, v, k, INT64_MIN, INT64_MAX, &x))) {
                p->sample.seed = (uint64_t)x;
                p->seed_given = true;
            }
        } else if (!strcmp(k, "stop")) {
            rc = get_stops(&e, v, p);
        } else if (!strcmp(k, "stream")) {
            if (json_is_null(v)) continue;
            if (!json_is_boolean(v))
                return fail(&e, DG_EINVAL, "invalid_type", k, "stream must be a boolean");
            p->stream = json_is_true(v);
        } else if (!native && !strcmp(k, "stream_options")) {
            stream_options = v;
        } else if (!native && !strcmp(k, "session_id")) {
            if (json_is_null(v)) continue;
            if (!json_is_string(v) || json_string_length(v) >= sizeof p->session_id)
                return fail(&e, DG_EINVAL, "invalid_type", k, "session_id must be a session id");
            snprintf(p->session_id, sizeof p->session_id, "%s", json_string_value(v));
        } else if (!strcmp(k, "ignore_eos")) {
            if (json_is_null(v)) continue;
            if (!json_is_boolean(v))
                return fail(&e, DG_EINVAL, "invalid_type", k, "ignore_eos must be a boolean");
            p->ignore_eos = json_is_true(v);
        } else if (!native && !strcmp(k, "user")) {
            if (!json_is_string(v) && !json_is_null(v))
                return fail(&e, DG_EINVAL, "invalid_type", k, "user must be a string");
        } else if (!native && (!strcmp(k, "n") || !strcmp(k, "best_of") || !strcmp(k, "echo") ||
                               !strcmp(k, "frequency_penalty") ||
                               !strcmp(k, "presence_penalty") || !strcmp(k, "logit_bias") ||
                               !strcmp(k, "logprobs") || !strcmp(k, "suffix"))) {
            rc = default_only(&e, k, v);
        } else {
            return fail(&e, DG_ENOTSUP, native ? "unknown_field" : "unsupported_parameter", k,
                        "unsupported field '%s'%s", k,
                        native ? "" : " (dragond does not implement it; remove it from the "
                                      "request)");
        }
        if (rc) return rc;
    }
    if (stream_options && !json_is_null(stream_options)) {
        if (!json_is_object(stream_options))
            return fail(&e, DG_EINVAL, "invalid_type", "stream_options",
                        "stream_options must be an object");
        json_object_foreach(stream_options, k, v) {
            if (!strcmp(k, "include_usage")) {
                if (!json_is_boolean(v))
                    return fail(&e, DG_EINVAL, "invalid_type", "stream_options.include_usage",
                                "stream_options.include_usage must be a boolean");
                p->include_usage = json_is_true(v);
            } else {
                char name[96];
                snprintf(name, sizeof name, "stream_options.%s", k);
                return fail(&e, DG_ENOTSUP, "unsupported_parameter", name,
                            "unsupported field '%s'", name);
            }
        }
        if (!p->stream)
            return fail(&e, DG_EINVAL, "invalid_value", "stream_options",
                        "stream_options is only allowed when stream is true");
    }
    if (!native && !p->model[0])
        return fail(&e, DG_EINVAL, "missing_field", "model", "model is required");
    if (!native && !p->has_prompt)
        return fail(&e, DG_EINVAL, "missing_field", "prompt", "prompt is required");
    if (!p->seed_given) p->sample.seed = fresh_seed();
    return 0;
}

void dg_cmpl_params_free(dg_cmpl_params *p) {
    dg_free(p->prompt_text);
    dg_free(p->prompt_ids);
    for (int i = 0; i < p->n_stops; i++) dg_free(p->stops[i]);
    memset(p, 0, sizeof *p);
}

// ------------------------------------------------------------------------------------------
// sessions

int dg_parse_duration(json_t *v, double *out_s) {
    if (json_is_number(v)) {
        double x = json_number_value(v);
        if (!isfinite(x)) return DG_EINVAL;
        *out_s = x < 0 ? -1 : x;
        return 0;
    }
    if (!json_is_string(v)) return DG_EINVAL;
    const char *s = json_string_value(v);
    char *end = NULL;
    double x = strtod(s, &end);
    if (end == s || !isfinite(x)) return DG_EINVAL;
    double mul = 1;
    if (!strcmp(end, "") || !strcmp(end, "s")) mul = 1;
    else if (!strcmp(end, "ms")) mul = 1e-3;
    else if (!strcmp(end, "m")) mul = 60;
    else if (!strcmp(end, "h")) mul = 3600;
    else if (!strcmp(end, "d")) mul = 86400;
    else return DG_EINVAL;
    *out_s = x < 0 ? -1 : x * mul;
    return 0;
}

int dg_sess_create_parse(json_t *body, dg_sess_create_params *p, char *param, size_t pn,
                         const char **code, char *msg, size_t mn) {
    perr e = {param, pn, code, msg, mn};
    memset(p, 0, sizeof *p);
    p->keep_alive_s = -2;            /* "not given": the caller's default */
    if (!json_is_object(body))
        return fail(&e, DG_EINVAL, "invalid_type", NULL, "the body must be a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        int rc = 0;
        if (!strcmp(k, "model")) {
            if (!json_is_string(v) || !json_string_length(v) ||
                json_string_length(v) >= sizeof p->model)
                return fail(&e, DG_EINVAL, "invalid_type", k, "model must be a model id string");
            snprintf(p->model, sizeof p->model, "%s", json_string_value(v));
        } else if (!strcmp(k, "prompt")) {
            if (json_is_null(v)) continue;
            rc = get_prompt(&e, v, k, &p->prompt_text, &p->prompt_ids, &p->n_prompt_ids);
            p->has_prompt = true;
        } else if (!strcmp(k, "keep_alive")) {
            if (dg_parse_duration(v, &p->keep_alive_s))
                return fail(&e, DG_EINVAL, "invalid_value", k,
                            "keep_alive must be seconds or a duration like \"30m\" (-1: never "
                            "expire)");
            p->keep_alive_given = true;
        } else {
            return fail(&e, DG_ENOTSUP, "unknown_field", k, "unsupported field '%s'", k);
        }
        if (rc) return rc;
    }
    if (!p->model[0]) return fail(&e, DG_EINVAL, "missing_field", "model", "model is required");
    return 0;
}

void dg_sess_create_params_free(dg_sess_create_params *p) {
    dg_free(p->prompt_text);
    dg_free(p->prompt_ids);
    memset(p, 0, sizeof *p);
}

int dg_infer_encode(const dg_tokenizer_t *tok, const char *text, int32_t **ids, size_t *n,
                    char *msg, size_t mn) {
    return dg_tokenizer_encode(tok, text, strlen(text), true, ids, n, msg, mn);
}

int dg_infer_check_ids(const int32_t *ids, size_t n, int V, char *msg, size_t mn) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            snprintf(msg, mn, "token id %d at index %zu is outside the vocabulary [0, %d)",
                     ids[i], i, V);
            return DG_EINVAL;
        }
    return 0;
}

// ------------------------------------------------------------------------------------------
// text assembly

int dg_textasm_init(dg_textasm *a, const dg_tokenizer_t *tok, char *const *stops, int n_stops) {
    memset(a, 0, sizeof *a);
    a->tok = tok;
    char err[128];
    for (int i = 0; i < n_stops && a->n_stops < DG_GEN_MAX_STOPS; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (dg_tokenizer_encode(tok, stops[i], strlen(stops[i]), true, &ids, &n, err, sizeof err)
            || n == 0 || n > 64) {
            dg_free(ids);         /* cannot be produced (or too long to hold back): dropped */
            continue;
        }
        a->stops[a->n_stops] = ids;
        a->stop_lens[a->n_stops] = (int)n;
        a->n_stops++;
    }
    return a->n_stops;
}

void dg_textasm_free(dg_textasm *a) {
    for (int i = 0; i < a->n_stops; i++) dg_free(a->stops[i]);
    dg_free(a->text);
    memset(a, 0, sizeof *a);
}

static void keep_text(dg_textasm *a, const char *s, int n) {
    if (n <= 0) return;
    if (a->text_len + (size_t)n + 1 > a->text_cap) {
        a->text_cap = (a->text_len + (size_t)n + 1) * 2;
        a->text = dg_realloc(a->text, a->text_cap);
    }
    memcpy(a->text + a->text_len, s, (size_t)n);
    a->text_len += (size_t)n;
    a->text[a->text_len] = 0;
}

/* Releases held[0..k): ids out, text out. */
static int release(dg_textasm *a, int k, int32_t *out_ids, int *n_ids, char *out, int cap,
                   int w) {
    for (int i = 0; i < k; i++) {
        char piece[8];
        int np = dg_tokenizer_piece(a->tok, a->held[i], piece);
        if (out_ids) out_ids[*n_ids] = a->held[i];
        (*n_ids)++;
        if (np > 0) {
            int m = dg_utf8_stream_push(&a->u8, piece, np, out + w, cap - w - 1);
            if (m > 0) { keep_text(a, out + w, m); w += m; }
        }
    }
    memmove(a->held, a->held + k, (size_t)(a->n_held - k) * sizeof a->held[0]);
    a->n_held -= k;
    out[w] = 0;
    return w;
}

/* Longest suffix of held that is a prefix of some stop sequence (a whole one included: the
 * engine ends the request there and finish drops it). */
static int hold_len(const dg_textasm *a) {
    int best = 0;
    for (int s = 0; s < a->n_stops; s++) {
        int L = a->stop_lens[s];
        for (int k = L < a->n_held ? L : a->n_held; k > best; k--)
            if (!memcmp(a->held + a->n_held - k, a->stops[s], (size_t)k * sizeof(int32_t))) {
                best = k;
                break;
            }
    }
    return best;
}

int dg_textasm_push(dg_textasm *a, int32_t id, int32_t *out_ids, int *n_ids, char *out,
                    int cap) {
    int dummy;
    if (!n_ids) n_ids = &dummy;
    *n_ids = 0;
    out[0] = 0;
    DG_ASSERT(a->n_held < 64);
    a->held[a->n_held++] = id;
    int keep = hold_len(a);
    return release(a, a->n_held - keep, out_ids, n_ids, out, cap, 0);
}

int dg_textasm_finish(dg_textasm *a, int stop_index, int32_t *out_ids, int *n_ids, char *out,
                      int cap) {
    int dummy;
    if (!n_ids) n_ids = &dummy;
    *n_ids = 0;
    out[0] = 0;
    if (stop_index >= 0 && stop_index < a->n_stops) {
        int L = a->stop_lens[stop_index];
        if (L <= a->n_held &&
            !memcmp(a->held + a->n_held - L, a->stops[stop_index], (size_t)L * sizeof(int32_t)))
            a->n_held -= L;
    }
    int w = release(a, a->n_held, out_ids, n_ids, out, cap, 0);
    int m = dg_utf8_stream_flush(&a->u8, out + w, cap - w - 1);
    if (m > 0) { keep_text(a, out + w, m); w += m; }
    out[w] = 0;
    return w;
}

// ------------------------------------------------------------------------------------------
// builders

const char *dg_infer_finish_reason(dg_gen_stop s) {
    switch (s) {
    case DG_GEN_STOP_EOS: case DG_GEN_STOP_SEQUENCE: return "stop";
    case DG_GEN_STOP_LENGTH: return "length";
    default: return NULL;
    }
}

static json_t *choice(const char *text, size_t n, const char *finish_reason) {
    return json_pack("{s:s%, s:i, s:n, s:o}", "text", text ? text : "", text ? n : 0, "index", 0,
                     "logprobs", "finish_reason",
                     finish_reason ? json_string(finish_reason) : json_null());
}

json_t *dg_cmpl_object(const char *id, int64_t created, const char *model, const char *text,
                       size_t text_len, const char *finish_reason, int64_t prompt_tokens,
                       int64_t completion_tokens) {
    json_t *ch = json_array();
    json_array_append_new(ch, choice(text, text_len, finish_reason));
    return json_pack("{s:s, s:s, s:I, s:s, s:o, s:{s:I, s:I, s:I}}", "id", id, "object",
                     "text_completion", "created", (json_int_t)created, "model", model,
                     "choices", ch, "usage", "prompt_tokens", (json_int_t)prompt_tokens,
                     "completion_tokens", (json_int_t)completion_tokens, "total_tokens",
                     (json_int_t)(prompt_tokens + completion_tokens));
}

static char *data_frame(json_t *o) {
    char *j = dg_json_text(o);
    json_decref(o);
    size_t n = strlen(j);
    char *f = dg_malloc(n + 9);
    memcpy(f, "data: ", 6);
    memcpy(f + 6, j, n);
    memcpy(f + 6 + n, "\n\n", 3);
    dg_free(j);
    return f;
}

char *dg_cmpl_chunk(const char *id, int64_t created, const char *model, const char *text,
                    size_t text_len, const char *finish_reason, bool with_usage_null) {
    json_t *ch = json_array();
    json_array_append_new(ch, choice(text, text_len, finish_reason));
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", id, "object", "text_completion",
                          "created", (json_int_t)created, "model", model, "choices", ch);
    if (with_usage_null) json_object_set_new(o, "usage", json_null());
    return data_frame(o);
}

char *dg_cmpl_usage_chunk(const char *id, int64_t created, const char *model,
                          int64_t prompt_tokens, int64_t completion_tokens) {
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[], s:{s:I, s:I, s:I}}", "id", id, "object",
                          "text_completion", "created", (json_int_t)created, "model", model,
                          "choices", "usage", "prompt_tokens", (json_int_t)prompt_tokens,
                          "completion_tokens", (json_int_t)completion_tokens, "total_tokens",
                          (json_int_t)(prompt_tokens + completion_tokens));
    return data_frame(o);
}

char *dg_sse_error_frame(const char *type, const char *code, const char *message) {
    json_t *o = json_pack("{s:{s:s, s:s, s:s?, s:n}}", "error", "message", message, "type", type,
                          "code", code, "param");
    return data_frame(o);
}

char *dg_sse_event(int64_t seq, const char *type, json_t *data) {
    char *j = dg_json_text(data);
    json_decref(data);
    size_t n = strlen(j) + strlen(type) + 64;
    char *f = dg_malloc(n);
    snprintf(f, n, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)seq, type, j);
    dg_free(j);
    return f;
}

json_t *dg_gen_done_json(const dg_gen_event *ev, const char *stop_reason, size_t text_len,
                         int64_t session_tokens) {
    json_t *o = json_pack("{s:s, s:I, s:{s:I, s:I}, s:{s:f, s:f, s:f, s:f}}", "stop_reason",
                          stop_reason, "text_len", (json_int_t)text_len, "usage",
                          "prompt_tokens", (json_int_t)ev->n_prompt, "completion_tokens",
                          (json_int_t)ev->n_generated, "timings", "ttft_ms", ev->ttft_s * 1e3,
                          "queue_ms", ev->queue_s * 1e3, "prefill_tok_s", ev->prefill_tok_s,
                          "decode_tok_s", ev->decode_tok_s);
    if (session_tokens >= 0)
        json_object_set_new(o, "session", json_pack("{s:I}", "n_tokens",
                                                    (json_int_t)session_tokens));
    return o;
}
