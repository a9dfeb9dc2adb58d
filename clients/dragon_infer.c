/* clients/dragon_infer.c -- the inference commands of the `dragon` client:
 *   dragon generate [-m MODEL] [--session S] [--stream] [--max-tokens N] [--temperature T]
 *                   [--top-k K] [--top-p P] [--seed N] [--stop TEXT] PROMPT
 *   dragon session ls | show S | new -m MODEL [PROMPT] | save S | load S | fork S | rm S
 * generate without --session is one POST /v1/completions (the OpenAI-compatible endpoint);
 * with --session it appends PROMPT to the session and generates (POST
 * /v1/sessions/{id}/generate). --stream prints text as the daemon produces it (SSE); Ctrl-C
 * closes the connection, which cancels the generation on the daemon.
 * dragon.c calls dgc_infer_dispatch for commands it does not know (the hook in client.h).
 * Not here: the other commands (dragon.c, follow.c). Thread affinity: single-threaded. */
#include "clients/client.h"
#include "clients/cmds.h"
#include "clients/sse.h"
#include "engine/dg.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

// ------------------------------------------------------------------------------------------
// streaming POST (SSE)

typedef struct {
    dgc_sse  sse;
    bool     oai;              /* OpenAI frames (data only) vs native events */
    int      rc;               /* exit code decided by the stream */
    char    *errbody;          /* non-2xx body */
    size_t   errlen;
    long     status;
    CURL    *h;
    const dgc_ctx *c;
} gstream;

static int on_sse(const dgc_sse_event *ev, void *ud) {
    gstream *g = ud;
    if (g->oai) {
        if (!strcmp(ev->data, "[DONE]")) return 0;
        json_t *j = json_loads(ev->data, 0, NULL);
        if (!j) return 0;
        json_t *e = json_object_get(j, "error");
        if (e) {
            fprintf(stderr, "\n%s: generation failed: %s\n", g->c->prog,
                    dgc_str(json_object_get(e, "message"), "?"));
            g->rc = DGC_EXIT_ERROR;
        } else {
            const char *t = dgc_str(dgc_get(json_array_get(json_object_get(j, "choices"), 0),
                                            "text"), "");
            fputs(t, stdout);
            fflush(stdout);
        }
        json_decref(j);
        return 0;
    }
    json_t *j = json_loads(ev->data, 0, NULL);
    if (!strcmp(ev->event, "token") || !strcmp(ev->event, "text")) {
        fputs(dgc_str(json_object_get(j, "text"), ""), stdout);
        fflush(stdout);
    } else if (!strcmp(ev->event, "error")) {
        fprintf(stderr, "\n%s: generation failed: %s\n", g->c->prog,
                dgc_str(dgc_get(j, "error.message"), "?"));
        g->rc = DGC_EXIT_ERROR;
    } else if (!strcmp(ev->event, "done") && g->c->json) {
        fputc('\n', stdout);
        dgc_print_json(j);
    }
    json_decref(j);
    return 0;
}

static size_t on_data(char *p, size_t sz, size_t nm, void *ud) {
    gstream *g = ud;
    size_t n = sz * nm;
    if (!g->status) curl_easy_getinfo(g->h, CURLINFO_RESPONSE_CODE, &g->status);
    if (g->status >= 300) {
        g->errbody = dg_realloc(g->errbody, g->errlen + n + 1);
        memcpy(g->errbody + g->errlen, p, n);
        g->errlen += n;
        g->errbody[g->errlen] = 0;
        return n;
    }
    dgc_sse_feed(&g->sse, p, n);
    return n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
    (void)ud; (void)a; (void)b; (void)c; (void)d;
    return dgc_interrupted ? 1 : 0;        /* Ctrl-C: close the connection (cancels) */
}

static int post_stream(const dgc_ctx *c, const char *path, json_t *body, bool oai) {
    gstream g;
    memset(&g, 0, sizeof g);
    g.oai = oai;
    g.c = c;
    dgc_sse_init(&g.sse, on_sse, &g);
    char url[1200], auth[600];
    snprintf(url, sizeof url, "%s%s", c->host, path);
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    hd = curl_slist_append(hd, "Accept: text/event-stream");
    if (c->token[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hd = curl_slist_append(hd, auth);
    }
    char *text = json_dumps(body, JSON_COMPACT);
    g.h = curl_easy_init();
    curl_easy_setopt(g.h, CURLOPT_URL, url);
    curl_easy_setopt(g.h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(g.h, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(g.h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(g.h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(g.h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(g.h, CURLOPT_WRITEDATA, &g);
    curl_easy_setopt(g.h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(g.h, CURLOPT_XFERINFOFUNCTION, on_progress);
    CURLcode cc = curl_easy_perform(g.h);
    curl_easy_getinfo(g.h, CURLINFO_RESPONSE_CODE, &g.status);
    int rc = g.rc;
    if (dgc_interrupted) {
        fprintf(stderr, "\ninterrupted: the generation was cancelled\n");
        rc = DGC_EXIT_INTERRUPT;
    } else if (cc != CURLE_OK) {
        fprintf(stderr, "%s: %s%s: %s\n", c->prog, c->host, path, curl_easy_strerror(cc));
        rc = DGC_EXIT_ERROR;
    } else if (g.status >= 300) {
        dgc_resp r = {0};
        r.status = g.status;
        r.body = g.errbody;
        r.len = g.errlen;
        r.json = g.errbody ? json_loads(g.errbody, 0, NULL) : NULL;
        rc = dgc_report_error(c, "POST", path, &r);
        json_decref(r.json);
    } else {
        fputc('\n', stdout);
    }
    dg_free(g.errbody);
    dgc_sse_free(&g.sse);
    curl_easy_cleanup(g.h);
    curl_slist_free_all(hd);
    free(text);
    return rc;
}

// ------------------------------------------------------------------------------------------
// generate

static const char GEN_USAGE[] =
    "generate [-m MODEL] [--session S] [--stream] [--max-tokens N] [--temperature T]\n"
    "                [--top-k K] [--top-p P] [--seed N] [--stop TEXT] PROMPT";

static int first_model(const dgc_ctx *c, char *out, size_t n) {
    int rc = 0;
    json_t *m = dgc_call(c, "GET", "/v1/models", NULL, &rc);
    if (!m) return rc;
    const char *id = dgc_str(dgc_get(json_array_get(json_object_get(m, "data"), 0), "id"),
                             NULL);
    if (!id) {
        fprintf(stderr, "%s generate: the daemon serves no model yet (train one, or place a "
                "checkpoint in <data_dir>/models/NAME.dck); give -m MODEL\n", c->prog);
        json_decref(m);
        return DGC_EXIT_ERROR;
    }
    snprintf(out, n, "%s", id);
    json_decref(m);
    return 0;
}

static int cmd_generate(dgc_ctx *c, int argc, char **argv) {
    const char *model = NULL, *session = NULL, *prompt = NULL, *v;
    bool stream = false, missing = false;
    json_t *body = json_object();
    json_t *stops = json_array();
    int rc = 0;
    for (int i = 0; i < argc; i++) {
        long long x;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: %s %s\n\nGenerate text. Without --session: one OpenAI-compatible "
                   "completion (POST /v1/completions;\n-m defaults to the first model the daemon "
                   "lists). With --session: append PROMPT to the\nsession and continue it. "
                   "--stream prints text as it is generated; Ctrl-C cancels.\n"
                   "Defaults: --max-tokens 128, --temperature 0.8.\n", c->prog, GEN_USAGE);
            rc = 0;
            goto out;
        }
        if (!strcmp(argv[i], "--stream")) { stream = true; continue; }
        /* integer options: name, short, JSON field, upper bound */
        static const struct { const char *lng, *shrt, *field; long long hi; } ints[] = {
            {"--max-tokens", "-n", "max_tokens", 1000000},
            {"--seed", NULL, "seed", 1LL << 62},
            {"--top-k", NULL, "top_k", 1 << 30},
        };
        static const struct { const char *lng, *shrt, *field; } reals[] = {
            {"--temperature", "-t", "temperature"},
            {"--top-p", NULL, "top_p"},
        };
        bool matched = false;
        if (dgc_opt(argc, argv, &i, "--model", "-m", &model, &missing)) matched = true;
        else if (dgc_opt(argc, argv, &i, "--session", "-s", &session, &missing)) matched = true;
        else if (dgc_opt(argc, argv, &i, "--stop", NULL, &v, &missing)) {
            matched = true;
            if (!missing) json_array_append_new(stops, json_string(v));
        }
        for (size_t k = 0; !matched && k < sizeof ints / sizeof ints[0]; k++) {
            if (!dgc_opt(argc, argv, &i, ints[k].lng, ints[k].shrt, &v, &missing)) continue;
            matched = true;
            if (missing) break;
            if (!dgc_parse_long(v, 0, ints[k].hi, &x)) {
                rc = dgc_usage(c, "generate", "bad value '%s'", v);
                goto out;
            }
            json_object_set_new(body, ints[k].field, json_integer(x));
        }
        for (size_t k = 0; !matched && k < sizeof reals / sizeof reals[0]; k++) {
            if (!dgc_opt(argc, argv, &i, reals[k].lng, reals[k].shrt, &v, &missing)) continue;
            matched = true;
            if (!missing) json_object_set_new(body, reals[k].field, json_real(atof(v)));
        }
        if (missing) break;
        if (matched) continue;
        if (argv[i][0] == '-' && argv[i][1]) {
            rc = dgc_usage(c, "generate", "unknown option '%s'", argv[i]);
            goto out;
        }
        if (prompt) {
            rc = dgc_usage(c, "generate", "one PROMPT only (quote it): '%s'", argv[i]);
            goto out;
        }
        prompt = argv[i];
    }
    if (missing) { rc = dgc_usage(c, "generate", "an option needs a value%s", ""); goto out; }
    if (!prompt) { rc = dgc_usage(c, "generate", "PROMPT is required%s", ""); goto out; }
    if (!json_object_get(body, "max_tokens"))
        json_object_set_new(body, "max_tokens", json_integer(128));
    if (!json_object_get(body, "temperature"))
        json_object_set_new(body, "temperature", json_real(0.8));
    if (json_array_size(stops)) json_object_set(body, "stop", stops);
    json_object_set_new(body, "stream", json_boolean(stream));
    char path[400];
    bool oai = !session;
    if (session) {
        char *e = dgc_escape(session);
        snprintf(path, sizeof path, "/v1/sessions/%s/generate", e);
        dg_free(e);
        json_object_set_new(body, "append", json_string(prompt));
    } else {
        char mbuf[200];
        if (!model) {
            if ((rc = first_model(c, mbuf, sizeof mbuf))) goto out;
            model = mbuf;
        }
        snprintf(path, sizeof path, "/v1/completions");
        json_object_set_new(body, "model", json_string(model));
        json_object_set_new(body, "prompt", json_string(prompt));
    }
    if (stream) {
        rc = post_stream(c, path, body, oai);
        goto out;
    }
    json_t *r = dgc_call(c, "POST", path, body, &rc);
    if (!r) goto out;
    if (c->json) dgc_print_json(r);
    else if (oai) printf("%s\n", dgc_str(dgc_get(json_array_get(json_object_get(r, "choices"), 0),
                                                 "text"), ""));
    else printf("%s\n", dgc_str(json_object_get(r, "text"), ""));
    json_decref(r);
out:
    json_decref(stops);
    json_decref(body);
    return rc;
}

// ------------------------------------------------------------------------------------------
// session

static const char SESS_USAGE[] =
    "session ls | show S | new -m MODEL [PROMPT] | save S | load S | fork S | rm S";

static void sess_row(json_t *s) {
    char b1[32], b2[32];
    printf("%-28s %-20s %8lld %10s %-8s %-4s %s\n", dgc_str(json_object_get(s, "id"), "-"),
           dgc_str(json_object_get(s, "model"), "-"),
           (long long)dgc_num(json_object_get(s, "n_tokens"), 0),
           dgc_fmt_bytes(b1, sizeof b1, json_object_get(s, "state_bytes")),
           json_is_true(json_object_get(s, "resident")) ? "resident" : "on disk",
           json_is_true(json_object_get(s, "busy")) ? "busy" : "idle",
           json_is_null(json_object_get(s, "expires_at")) ? "never"
                                                           : dgc_fmt_time(b2, sizeof b2,
                                                                          json_object_get(s,
                                                                          "expires_at")));
}

static int cmd_session(dgc_ctx *c, int argc, char **argv) {
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        printf("usage: %s %s\n\nSessions keep a model's recurrent state on the daemon between "
               "requests.\n  ls      list sessions\n  show S  one session\n  new     create "
               "one (prefills PROMPT)\n  save S  write its state to <data_dir>/sessions/S.dst\n"
               "  load S  restore a saved state (also after a daemon restart)\n  fork S  copy "
               "it into a new session\n  rm S    delete it\n", c->prog, SESS_USAGE);
        return argc < 1 ? DGC_EXIT_USAGE : 0;
    }
    const char *sub = argv[0];
    int rc = 0;
    if (!strcmp(sub, "ls")) {
        json_t *r = dgc_call(c, "GET", "/v1/sessions", NULL, &rc);
        if (!r) return rc;
        if (c->json) dgc_print_json(r);
        else {
            printf("%-28s %-20s %8s %10s %-8s %-4s %s\n", "ID", "MODEL", "TOKENS", "STATE",
                   "WHERE", "", "EXPIRES");
            size_t i;
            json_t *s;
            json_array_foreach(json_object_get(r, "data"), i, s) sess_row(s);
        }
        json_decref(r);
        return 0;
    }
    if (!strcmp(sub, "new")) {
        const char *model = NULL, *prompt = NULL;
        bool missing = false;
        for (int i = 1; i < argc; i++) {
            if (dgc_opt(argc, argv, &i, "--model", "-m", &model, &missing)) continue;
            prompt = argv[i];
        }
        char mbuf[200];
        if (!model) {
            if ((rc = first_model(c, mbuf, sizeof mbuf))) return rc;
            model = mbuf;
        }
        json_t *b = json_pack("{s:s}", "model", model);
        if (prompt) json_object_set_new(b, "prompt", json_string(prompt));
        json_t *r = dgc_call(c, "POST", "/v1/sessions", b, &rc);
        json_decref(b);
        if (!r) return rc;
        if (c->json) dgc_print_json(r);
        else printf("%s\n", dgc_str(json_object_get(r, "id"), ""));
        json_decref(r);
        return 0;
    }
    if (argc < 2) return dgc_usage(c, "session", "%s needs a session id", sub);
    char *e = dgc_escape(argv[1]);
    char path[400];
    const char *method = "POST";
    if (!strcmp(sub, "show")) {
        method = "GET";
        snprintf(path, sizeof path, "/v1/sessions/%s", e);
    }
    else if (!strcmp(sub, "rm")) {
        method = "DELETE";
        snprintf(path, sizeof path, "/v1/sessions/%s", e);
    }
    else if (!strcmp(sub, "save") || !strcmp(sub, "load") || !strcmp(sub, "fork"))
        snprintf(path, sizeof path, "/v1/sessions/%s/%s", e, sub);
    else { dg_free(e); return dgc_usage(c, "session", "unknown subcommand '%s'", sub); }
    dg_free(e);
    json_t *b = !strcmp(method, "POST") ? json_object() : NULL;
    json_t *r = dgc_call(c, method, path, b, &rc);
    json_decref(b);
    if (!r) return rc;
    if (c->json || !strcmp(sub, "show")) dgc_print_json(r);
    else if (!strcmp(sub, "save"))
        printf("saved %s (%s bytes) to %s\n", argv[1],
               dgc_fmt_num((char[32]){0}, 32, json_object_get(r, "bytes"), "%.0f"),
               dgc_str(json_object_get(r, "file"), "?"));
    else if (!strcmp(sub, "fork")) printf("%s\n", dgc_str(json_object_get(r, "id"), ""));
    else if (!strcmp(sub, "load")) printf("loaded %s (%lld tokens)\n", argv[1],
                                          (long long)dgc_num(json_object_get(r, "n_tokens"), 0));
    else printf("deleted %s\n", argv[1]);
    json_decref(r);
    return 0;
}

// ------------------------------------------------------------------------------------------
// the hook (client.h)

int dgc_infer_dispatch(dgc_ctx *c, const char *cmd, int argc, char **argv) {
    if (!strcmp(cmd, "generate")) return cmd_generate(c, argc, argv);
    if (!strcmp(cmd, "session") || !strcmp(cmd, "sessions")) return cmd_session(c, argc, argv);
    return -1;
}

void dgc_infer_help(FILE *f) {
    fprintf(f, "  %-9s %s\n", "generate", "Generate text from a model or continue a session "
            "(--stream for live text).");
    fprintf(f, "  %-9s %s\n", "session", "Sessions with persistent state: ls, show, new, save, "
            "load, fork, rm.");
}
