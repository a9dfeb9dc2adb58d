/* tests/integration/test_infer_api.c -- inference over HTTP against a real dragond with a tiny
 * model the test trains itself: streamed greedy output equals `dragond generate`; session
 * continuation and fork equal one-shot generation (greedy and sampled); save -> restart -> load
 * -> continue equals uninterrupted; a state file refuses another model; tokenize/detokenize;
 * 409 on a busy session; bad parameters get 4xx with the error envelope. */
#include "infer_util.h"

static const char *PROMPT = "the dragon sle";

/* Starts a daemon with model "tiny" (20 steps) and "tiny5" (5 steps: other parameters). */
static void up(dgd *d, const char *tag) {
    dgd_init(d, tag);
    char data[700];
    snprintf(data, sizeof data, "%s/data", d->dir);
    ck_assert_int_eq(inf_make_model(d->dir, data, "tiny", 20), 0);
    ck_assert_int_eq(inf_make_model(d->dir, data, "tiny5", 5), 0);
    ck_assert_int_eq(inf_start(d), 0);
}

static void down(dgd *d) { ck_assert_int_eq(dgd_stop(d, SIGTERM, 20), 0); }

/* Non-streamed native generate: returns the done object (caller decrefs). */
static json_t *sgen(const dgd *d, const char *sid, const char *extra) {
    char path[200], body[1024];
    snprintf(path, sizeof path, "/v1/sessions/%s/generate", sid);
    snprintf(body, sizeof body, "{\"stream\":false%s%s}", extra[0] ? "," : "", extra);
    long st;
    json_t *j = inf_post(d, path, body, &st);
    ck_assert_int_eq(st, 200);
    return j;
}

static char *new_session(const dgd *d, const char *prompt_json) {
    char body[2048];
    snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":%s}", prompt_json);
    long st;
    json_t *j = inf_post(d, "/v1/sessions", body, &st);
    ck_assert_int_eq(st, 200);
    char *id = strdup(json_string_value(json_object_get(j, "id")));
    json_decref(j);
    return id;
}

/* Token ids of text (JSON array, caller decrefs). */
static json_t *tokenize(const dgd *d, const char *text) {
    char body[4096];
    json_t *b = json_pack("{s:s, s:s}", "model", "tiny", "text", text);
    char *s = json_dumps(b, JSON_COMPACT);
    snprintf(body, sizeof body, "%s", s);
    free(s);
    json_decref(b);
    long st;
    json_t *j = inf_post(d, "/v1/tokenize", body, &st);
    ck_assert_int_eq(st, 200);
    json_t *t = json_incref(json_object_get(j, "tokens"));
    json_decref(j);
    return t;
}

START_TEST(stream_equals_cli) {
    dgd d;
    up(&d, "inf-cli");
    char *ref = inf_cli_generate(d.dir, "tiny", PROMPT, 40);
    ck_assert_ptr_nonnull(ref);
    ck_assert(strlen(ref) > 0);
    /* streamed, raw bytes: check the framing exactly as well */
    int fd = inf_connect(&d);
    char body[512];
    snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":\"%s\",\"max_tokens\":40,"
             "\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             PROMPT);
    inf_send_post(fd, "/v1/completions", body);
    static char buf[1 << 20];
    inf_read_until(fd, buf, sizeof buf, "data: [DONE]\n\n", 30);
    close(fd);
    ck_assert_ptr_nonnull(strstr(buf, "HTTP/1.1 200"));
    ck_assert_ptr_nonnull(strcasestr(buf, "Content-Type: text/event-stream"));
    inf_dechunk(buf);
    char text[8192], fin[32];
    const char *bad = inf_check_oai_stream(buf, true, text, sizeof text, fin, sizeof fin);
    ck_assert_msg(bad == NULL, "framing: %s\n%s", bad, buf);
    fprintf(stderr, "cli: '%s'\nhttp: '%s'\n", ref, text);
    ck_assert_str_eq(text, ref);
    ck_assert_str_eq(fin, "length");
    /* non-streamed: the same text and the usage */
    long st;
    snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":\"%s\",\"max_tokens\":40,"
             "\"temperature\":0}", PROMPT);
    json_t *j = inf_post(&d, "/v1/completions", body, &st);
    ck_assert_int_eq(st, 200);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(c0, "text")), ref);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "usage"),
                                                        "completion_tokens")), 40);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "usage"),
                                                        "prompt_tokens")), strlen(PROMPT));
    json_decref(j);
    /* the model list */
    json_t *ml = dgd_get_json(&d, "/v1/models");
    ck_assert_ptr_nonnull(ml);
    bool found = false;
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(ml, "data"), i, m)
        if (!strcmp(json_string_value(json_object_get(m, "id")), "tiny")) {
            found = true;
            json_t *meta = json_object_get(m, "meta");
            ck_assert_int_gt(json_integer_value(json_object_get(meta, "n_params")), 1000);
            ck_assert_int_eq(json_integer_value(json_object_get(meta, "state_bytes")),
                             2 * 2 * 64 * 32 * 4);       /* L H Nq D floats of tiny */
            ck_assert_str_eq(json_string_value(json_object_get(meta, "tokenizer")), "char");
        }
    ck_assert(found);
    json_decref(ml);
    /* tokenize / detokenize round trip */
    json_t *t = tokenize(&d, PROMPT);
    ck_assert_int_eq(json_array_size(t), strlen(PROMPT));
    json_t *db = json_pack("{s:s, s:O}", "model", "tiny", "tokens", t);
    char *s = json_dumps(db, JSON_COMPACT);
    j = inf_post(&d, "/v1/detokenize", s, &st);
    free(s);
    json_decref(db);
    json_decref(t);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "text")), PROMPT);
    json_decref(j);
    free(ref);
    down(&d);
}
END_TEST

/* Session: create(A) -> generate k -> generate(append B) == one-shot on A + gen + B. */
static void continuation(float temp) {
    dgd d;
    up(&d, "inf-cont");
    const char *A = "the dragon sleeps", *B = " and the valley";
    char pj[256], extra[256];
    snprintf(pj, sizeof pj, "\"%s\"", A);
    char *sid = new_session(&d, pj);
    snprintf(extra, sizeof extra, "\"max_tokens\":12,\"temperature\":%g,\"seed\":5", temp);
    json_t *g1 = sgen(&d, sid, extra);
    json_t *toks1 = json_object_get(g1, "tokens");
    ck_assert_int_eq(json_array_size(toks1), 12);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(g1, "session"),
                                                        "n_tokens")), strlen(A) + 12);
    snprintf(extra, sizeof extra, "\"append\":\"%s\",\"max_tokens\":20,\"temperature\":%g,"
             "\"seed\":9", B, temp);
    json_t *g2 = sgen(&d, sid, extra);
    const char *t2 = json_string_value(json_object_get(g2, "text"));
    /* one shot on the token ids A + gen1 + B, same seed */
    json_t *ids = tokenize(&d, A);
    json_array_extend(ids, toks1);
    json_t *idb = tokenize(&d, B);
    json_array_extend(ids, idb);
    json_decref(idb);
    json_t *body = json_pack("{s:s, s:O, s:i, s:f, s:i}", "model", "tiny", "prompt", ids,
                             "max_tokens", 20, "temperature", temp, "seed", 9);
    char *bs = json_dumps(body, JSON_COMPACT);
    long st;
    json_t *one = inf_post(&d, "/v1/completions", bs, &st);
    ck_assert_int_eq(st, 200);
    const char *t1 = json_string_value(json_object_get(json_array_get(
        json_object_get(one, "choices"), 0), "text"));
    fprintf(stderr, "T=%g session: '%s'\n       one-shot: '%s'\n", temp, t2, t1);
    ck_assert_str_eq(t2, t1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(one, "usage"),
                                                        "prompt_tokens")),
                     json_array_size(ids));
    free(bs);
    json_decref(body);
    json_decref(one);
    json_decref(ids);
    json_decref(g1);
    json_decref(g2);
    free(sid);
    down(&d);
}

START_TEST(continuation_greedy) { continuation(0.0f); }
END_TEST
START_TEST(continuation_sampled) { continuation(0.9f); }
END_TEST

START_TEST(fork_and_save_restart_load) {
    dgd d;
    up(&d, "inf-fork");
    char *sid = new_session(&d, "\"the dragon\"");
    json_t *g0 = sgen(&d, sid, "\"max_tokens\":8,\"temperature\":0.8,\"seed\":1");
    json_decref(g0);
    /* fork: both continue identically */
    char path[200];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", sid);
    long st;
    json_t *f = inf_post(&d, path, "{}", &st);
    ck_assert_int_eq(st, 200);
    char *fid = strdup(json_string_value(json_object_get(f, "id")));
    ck_assert_str_ne(fid, sid);
    json_decref(f);
    const char *ex = "\"append\":\" wakes\",\"max_tokens\":16,\"temperature\":0.8,\"seed\":3";
    json_t *a = sgen(&d, sid, ex), *b = sgen(&d, fid, ex);
    ck_assert_str_eq(json_string_value(json_object_get(a, "text")),
                     json_string_value(json_object_get(b, "text")));
    json_decref(a);
    json_decref(b);
    /* save the fork, continue it (uninterrupted), restart, load, continue again */
    snprintf(path, sizeof path, "/v1/sessions/%s/save", fid);
    json_t *sv = inf_post(&d, path, "{}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_gt(json_integer_value(json_object_get(sv, "bytes")), 32768);
    json_decref(sv);
    const char *ex2 = "\"append\":\" the\",\"max_tokens\":24,\"temperature\":0.7,\"top_k\":5,"
                      "\"seed\":11";
    json_t *u = sgen(&d, fid, ex2);
    char *uninterrupted = strdup(json_string_value(json_object_get(u, "text")));
    json_decref(u);
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
    ck_assert_int_eq(inf_start(&d), 0);
    snprintf(path, sizeof path, "/v1/sessions/%s", fid);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&d, "GET", path, NULL, 0, NULL, &r), 404);
    dgd_resp_free(&r);
    /* loading into another model fails clearly */
    snprintf(path, sizeof path, "/v1/sessions/%s/load", fid);
    json_t *bad = inf_post(&d, path, "{\"model\":\"tiny5\"}", &st);
    ck_assert_int_eq(st, 409);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(bad, "error"), "code")),
                     "fingerprint_mismatch");
    json_decref(bad);
    json_t *ld = inf_post(&d, path, "{}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(ld, "id")), fid);
    json_decref(ld);
    json_t *c = sgen(&d, fid, ex2);
    fprintf(stderr, "uninterrupted: '%s'\nafter restart: '%s'\n", uninterrupted,
            json_string_value(json_object_get(c, "text")));
    ck_assert_str_eq(json_string_value(json_object_get(c, "text")), uninterrupted);
    json_decref(c);
    /* delete */
    snprintf(path, sizeof path, "/v1/sessions/%s", fid);
    ck_assert_int_eq(dgd_http(&d, "DELETE", path, NULL, 0, NULL, &r), 204);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&d, "GET", path, NULL, 0, NULL, &r), 404);
    dgd_resp_free(&r);
    free(uninterrupted);
    free(fid);
    free(sid);
    down(&d);
}
END_TEST

START_TEST(busy_and_bad_parameters) {
    dgd d;
    up(&d, "inf-bad");
    char *sid = new_session(&d, "\"the\"");
    /* a long streamed generation holds the session ... */
    int fd = inf_connect(&d);
    char path[200], buf[65536];
    snprintf(path, sizeof path, "/v1/sessions/%s/generate", sid);
    inf_send_post(fd, path, "{\"max_tokens\":1000000,\"ignore_eos\":true}");
    inf_read_until(fd, buf, sizeof buf, "event: token", 10);
    ck_assert_ptr_nonnull(strstr(buf, "event: token"));
    /* ... so a second writer gets 409 */
    long st;
    json_t *j = inf_post(&d, path, "{\"max_tokens\":3}", &st);
    ck_assert_int_eq(st, 409);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                     "session_busy");
    json_decref(j);
    close(fd);                       /* the client leaves: the session becomes free again */
    double t_end = dgd_now() + 5;
    for (;;) {
        j = inf_post(&d, path, "{\"max_tokens\":3,\"stream\":false}", &st);
        json_decref(j);
        if (st == 200 || dgd_now() > t_end) break;
        dgd_sleep_ms(20);
    }
    ck_assert_int_eq(st, 200);
    static const struct { const char *body; long status; const char *param; } cases[] = {
        {"{\"model\":\"tiny\",\"prompt\":\"the\",\"max_tokens\":-1}", 400, "max_tokens"},
        {"{\"model\":\"tiny\",\"prompt\":\"the\",\"temperature\":3}", 400, "temperature"},
        {"{\"model\":\"tiny\",\"prompt\":\"the\",\"top_p\":1.5}", 400, "top_p"},
        {"{\"model\":\"nope\",\"prompt\":\"the\"}", 404, "model"},
        {"{\"model\":\"tiny\",\"prompt\":\"the\",\"logit_bias\":{\"5\":1}}", 400, "logit_bias"},
        {"{\"model\":\"tiny\",\"prompt\":\"the\",\"tools\":[]}", 400, "tools"},
        {"{\"model\":\"tiny\",\"prompt\":\"the\",\"n\":2}", 400, "n"},
        {"{\"model\":\"tiny\",\"prompt\":\"@@@\"}", 400, "prompt"},
        {"{\"model\":\"tiny\",\"prompt\":[1,99999]}", 400, "prompt"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dgd_resp r;
        long s2 = dgd_http(&d, "POST", "/v1/completions", cases[i].body, -1, NULL, &r);
        char param[64];
        const char *code = dgd_err_code(&r, param, sizeof param);
        fprintf(stderr, "%s -> %ld %s %s\n", cases[i].body, s2, code ? code : "-", param);
        ck_assert_int_eq(s2, cases[i].status);
        ck_assert_ptr_nonnull(code);
        ck_assert_str_eq(param, cases[i].param);
        dgd_resp_free(&r);
    }
    /* sessions: unknown session, unknown field */
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&d, "POST", "/v1/sessions/sess_nope/generate", "{}", -1, NULL, &r),
                     404);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&d, "POST", path, "{\"bogus\":1}", -1, NULL, &r), 400);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&d, "POST", "/v1/sessions", "{\"model\":\"nope\"}", -1, NULL, &r),
                     404);
    dgd_resp_free(&r);
    free(sid);
    down(&d);
}
END_TEST

/* Resident state over budget: idle sessions go to disk and come back transparently (the
 * continuation still equals one-shot); keep_alive expires idle sessions. */
START_TEST(evict_reload_and_expiry) {
    dgd d;
    dgd_init(&d, "inf-evict");
    char data[700];
    snprintf(data, sizeof data, "%s/data", d.dir);
    ck_assert_int_eq(inf_make_model(d.dir, data, "tiny", 20), 0);
    setenv("DRAGOND_SESSION_BUDGET_MB", "0", 1);         /* every idle session is evicted */
    ck_assert_int_eq(inf_start(&d), 0);
    unsetenv("DRAGOND_SESSION_BUDGET_MB");
    char *a = new_session(&d, "\"the dragon sleeps\"");
    char *b = new_session(&d, "\"and all\"");
    json_t *g1 = sgen(&d, a, "\"max_tokens\":10,\"temperature\":0");
    json_t *toks1 = json_incref(json_object_get(g1, "tokens"));
    json_decref(g1);
    /* wait until a is on disk */
    char path[200];
    snprintf(path, sizeof path, "/v1/sessions/%s", a);
    double t_end = dgd_now() + 10;
    json_t *s = NULL;
    for (;;) {
        json_decref(s);
        s = dgd_get_json(&d, path);
        if (json_is_false(json_object_get(s, "resident")) || dgd_now() > t_end) break;
        dgd_sleep_ms(100);
    }
    ck_assert(json_is_false(json_object_get(s, "resident")));
    json_decref(s);
    ck_assert(inf_metric(&d, "dragond_session_evictions_total") >= 1);
    /* continue: transparently reloaded, and equal to one-shot on the whole transcript */
    json_t *g2 = sgen(&d, a, "\"append\":\" the\",\"max_tokens\":16,\"temperature\":0");
    ck_assert(inf_metric(&d, "dragond_session_reloads_total") >= 1);
    json_t *ids = tokenize(&d, "the dragon sleeps");
    json_array_extend(ids, toks1);
    json_t *t3 = tokenize(&d, " the");
    json_array_extend(ids, t3);
    json_decref(t3);
    json_t *body = json_pack("{s:s, s:O, s:i, s:i}", "model", "tiny", "prompt", ids,
                             "max_tokens", 16, "temperature", 0);
    char *bs = json_dumps(body, JSON_COMPACT);
    long st;
    json_t *one = inf_post(&d, "/v1/completions", bs, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(g2, "text")),
                     json_string_value(json_object_get(json_array_get(
                         json_object_get(one, "choices"), 0), "text")));
    free(bs);
    json_decref(body);
    json_decref(one);
    json_decref(ids);
    json_decref(toks1);
    json_decref(g2);
    /* keep_alive: a session idle for longer than 1 s is gone */
    json_t *e = inf_post(&d, "/v1/sessions", "{\"model\":\"tiny\",\"keep_alive\":\"1s\"}",
                         &st);
    ck_assert_int_eq(st, 200);
    snprintf(path, sizeof path, "/v1/sessions/%s", json_string_value(json_object_get(e, "id")));
    json_decref(e);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&d, "GET", path, NULL, 0, NULL, &r), 200);
    dgd_resp_free(&r);
    dgd_sleep_ms(3000);
    ck_assert_int_eq(dgd_http(&d, "GET", path, NULL, 0, NULL, &r), 404);
    dgd_resp_free(&r);
    free(a);
    free(b);
    down(&d);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("infer_api");
    TCase *t = tcase_create("infer");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, stream_equals_cli);
    tcase_add_test(t, continuation_greedy);
    tcase_add_test(t, continuation_sampled);
    tcase_add_test(t, fork_and_save_restart_load);
    tcase_add_test(t, busy_and_bad_parameters);
    tcase_add_test(t, evict_reload_and_expiry);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
