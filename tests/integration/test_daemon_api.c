/* tests/integration/test_daemon_api.c -- the API around the jobs, against a real dragond on
 * 127.0.0.1: bearer token (401 without it; /health public; refusal to listen on a non-loopback
 * address without a token), Host check, bad input (malformed JSON, oversized body, unknown
 * fields, wrong types, invalid configs, unknown ids/routes/methods, bad queries) answered with
 * the error envelope while the daemon keeps serving, 50 concurrent submissions, the bounded
 * queue (503 + Retry-After), a slow SSE reader that must not stall other clients, /metrics,
 * /v1/system, the runs page at /, bench jobs, and the shakespeare dataset preset downloaded
 * from a local HTTP server in this process (and failing cleanly without one).
 * Thread affinity: tests use threads only where they say so (concurrency, the HTTP server). */
#include "daemon_util.h"
#include "proto/sha256.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static dgd D;
static char g_text[700];

static void setup(void) {
    dgd_init(&D, "dapi");
    dgd_write_text(D.dir, "text.txt", 4000, g_text, sizeof g_text);
}
static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(auth_and_host) {
    char tok[700];
    snprintf(tok, sizeof tok, "%s/token", D.dir);
    write_file(tok, "s3cret-token-0123456789abcdef\n");
    ck_assert_int_eq(dgd_start(&D, "--token-file", tok, NULL), 0);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "GET", "/health", NULL, 0, NULL, &r), 200);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/system", NULL, 0, NULL, &r), 401);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "invalid_token");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r.json, "error"),
                                                       "type")), "unauthorized");
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/jobs", NULL, 0, "Authorization: Bearer nope", &r),
                     401);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", "/metrics", NULL, 0, NULL, &r), 401);
    dgd_resp_free(&r);
    /* ?access_token= (what a browser EventSource can send) */
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/system?access_token=s3cret-token-0123456789abcdef",
                              NULL, 0, NULL, &r), 200);
    dgd_resp_free(&r);
    snprintf(D.token, sizeof D.token, "s3cret-token-0123456789abcdef");
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/system", NULL, 0, NULL, &r), 200);
    ck_assert_str_eq(json_string_value(json_object_get(r.json, "api_version")), "1");
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/jobs", NULL, 0,
                              "X-Api-Key: s3cret-token-0123456789abcdef", &r), 200);
    dgd_resp_free(&r);
    /* DNS rebinding: a foreign Host is refused even with the token */
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/system", NULL, 0, "Host: evil.example:80", &r),
                     403);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "host_not_allowed");
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", "/health", NULL, 0, "Host: localhost:1", &r), 200);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);

    /* non-loopback without a token: refused at start-up */
    dgd d2;
    dgd_init(&d2, "dapi2");
    const char *extra[] = {"--listen", "0.0.0.0:0", NULL};
    ck_assert_int_ne(dgd_start_v(&d2, extra), 0);
    int st = dgd_stop(&d2, SIGKILL, 5);
    ck_assert_int_eq(st, 1);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "grep -q 'refusing to listen on non-loopback' %s", d2.log);
    ck_assert_int_eq(system(cmd), 0);
    /* a missing token file is created (0600) */
    char tok2[700];
    snprintf(tok2, sizeof tok2, "%s/new-token", d2.dir);
    const char *extra2[] = {"--token-file", tok2, NULL};
    ck_assert_int_eq(dgd_start_v(&d2, extra2), 0);
    struct stat sb;
    ck_assert_int_eq(stat(tok2, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600);
    ck_assert_int_eq(dgd_http(&d2, "GET", "/v1/jobs", NULL, 0, NULL, &r), 401);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&d2, SIGTERM, 20), 0);
}
END_TEST

typedef struct { const char *method, *path, *body; long status; const char *code, *param; } bad;

START_TEST(bad_input) {
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    char okdata[900], cfg_bad[1200], cfg_unknown[1200], body_type[1200], nodata[300];
    snprintf(okdata, sizeof okdata, "\"data\":{\"path\":\"%s\"}", g_text);
    snprintf(cfg_bad, sizeof cfg_bad, "{\"config\":{\"preset\":\"tiny\",\"model\":{\"n_head\":3}},"
             "%s}", okdata);
    snprintf(cfg_unknown, sizeof cfg_unknown, "{\"config\":{\"preset\":\"tiny\",\"model\":"
             "{\"n_heads\":2}},%s}", okdata);
    snprintf(body_type, sizeof body_type, "{\"config\":{\"preset\":\"tiny\"},%s,"
             "\"priority\":\"high\"}", okdata);
    snprintf(nodata, sizeof nodata, "{\"config\":{\"preset\":\"tiny\"},\"data\":{\"path\":"
             "\"/nonexistent/file.txt\"}}");
    char lr_type[1200];
    snprintf(lr_type, sizeof lr_type, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"lr\":"
             "\"fast\"}},%s}", okdata);
    char tags_bad[1200];
    snprintf(tags_bad, sizeof tags_bad, "{\"config\":{\"preset\":\"tiny\"},%s,\"tags\":"
             "{\"a\":1}}", okdata);
    const bad cases[] = {
        {"POST", "/v1/jobs", "{\"config\": {", 400, "invalid_json", NULL},
        {"POST", "/v1/jobs", "[1,2,3]", 400, "invalid_json", NULL},
        {"POST", "/v1/jobs", "", 400, "empty_body", NULL},
        {"POST", "/v1/jobs", "{\"kind\":\"train\",\"bogus\":1}", 400, "unknown_field", "/bogus"},
        {"POST", "/v1/jobs", "{\"kind\":\"dance\"}", 400, "invalid_value", "/kind"},
        {"POST", "/v1/jobs", "{\"kind\":7}", 400, "invalid_type", "/kind"},
        {"POST", "/v1/jobs", body_type, 400, "invalid_type", "/priority"},
        {"POST", "/v1/jobs", tags_bad, 400, "invalid_type", "/tags/a"},
        {"POST", "/v1/jobs", "{\"config\":{\"preset\":\"tiny\"}}", 400, "missing_field", "/data"},
        {"POST", "/v1/jobs", "{\"config\":{\"preset\":\"tiny\"},\"data\":{\"url\":\"x\"}}", 400,
         "unknown_field", "/data/url"},
        {"POST", "/v1/jobs", nodata, 422, "data_not_found", "/data/path"},
        {"POST", "/v1/jobs", cfg_bad, 422, "invalid_config", NULL},
        {"POST", "/v1/jobs", cfg_unknown, 422, "invalid_config", "/config/model/n_heads"},
        {"POST", "/v1/jobs", lr_type, 422, "invalid_config", "/config/training/lr"},
        {"GET", "/v1/jobs/job_nope", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/runs/job_nope", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/runs/job_nope/metrics", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/runs/job_nope/metrics/train_loss", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/runs/job_nope/checkpoints", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/jobs/job_nope/stream", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/jobs/job_nope/logs", NULL, 404, "job_not_found", "id"},
        {"POST", "/v1/jobs/job_nope/cancel", "{}", 404, "job_not_found", "id"},
        {"POST", "/v1/jobs/job_nope/pause", NULL, 404, "job_not_found", "id"},
        {"DELETE", "/v1/jobs/job_nope", NULL, 404, "job_not_found", "id"},
        {"GET", "/v1/benchmarks/job_nope", NULL, 404, "benchmark_not_found", "id"},
        {"POST", "/v1/jobs/job_nope/cancel", "{\"force\":true}", 400, "unknown_field", "/force"},
        {"GET", "/v1/nothing", NULL, 404, "route_not_found", NULL},
        {"PUT", "/v1/jobs", "{}", 405, "method_not_allowed", NULL},
        {"GET", "/v1/jobs?limit=abc", NULL, 400, "invalid_query", "limit"},
        {"GET", "/v1/jobs?limit=0", NULL, 400, "invalid_query", "limit"},
        {"GET", "/v1/jobs?status=bogus", NULL, 400, "invalid_filter", "status"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad *c = &cases[i];
        dgd_resp r;
        long st = dgd_http(&D, c->method, c->path, c->body, c->body ? -1 : 0, NULL, &r);
        char param[200];
        const char *code = dgd_err_code(&r, param, sizeof param);
        ck_assert_msg(st == c->status && !strcmp(code, c->code) &&
                      (!c->param || !strcmp(param, c->param)),
                      "case %zu %s %s: got %ld %s (param %s), want %ld %s (param %s); body %s",
                      i, c->method, c->path, st, code, param, c->status, c->code,
                      c->param ? c->param : "-", r.body ? r.body : "");
        ck_assert_str_eq(r.ctype, "application/json");
        dgd_resp_free(&r);
    }
    /* oversized body: 2 MiB > 1 MiB default */
    size_t big = 2u << 20;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[0] = '{';
    huge[big - 1] = '}';
    huge[big] = 0;
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/jobs", huge, (long)big, NULL, &r), 413);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "body_too_large");
    dgd_resp_free(&r);
    free(huge);
    /* X-Request-Id is echoed into the envelope */
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/jobs/job_x", NULL, 0, "X-Request-Id: abc-123", &r),
                     404);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r.json, "error"),
                                                       "request_id")), "abc-123");
    dgd_resp_free(&r);
    /* still serving, and nothing was queued by the bad requests */
    ck_assert_int_eq(dgd_http(&D, "GET", "/health", NULL, 0, NULL, &r), 200);
    dgd_resp_free(&r);
    json_t *l = dgd_get_json(&D, "/v1/jobs");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), 0);
    json_decref(l);
    /* Idempotency-Key: same key + same body = same job; another body = 409 */
    char ok1[1200], ok2[1200];
    snprintf(ok1, sizeof ok1, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":3}},"
             "%s}", okdata);
    snprintf(ok2, sizeof ok2, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":4}},"
             "%s}", okdata);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/jobs", ok1, -1, "Idempotency-Key: k-1", &r), 201);
    char id1[64];
    snprintf(id1, sizeof id1, "%s", json_string_value(json_object_get(r.json, "id")));
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/jobs", ok1, -1, "Idempotency-Key: k-1", &r), 200);
    ck_assert_str_eq(json_string_value(json_object_get(r.json, "id")), id1);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/jobs", ok2, -1, "Idempotency-Key: k-1", &r), 409);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "idempotency_conflict");
    dgd_resp_free(&r);
    l = dgd_get_json(&D, "/v1/jobs");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), 1);
    json_decref(l);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

/* ---- concurrency -------------------------------------------------------------------------- */
typedef struct { const dgd *d; const char *body; char id[64]; long status; } sub_arg;
static void *submit_thread(void *p) {
    sub_arg *a = p;
    dgd_resp r;
    a->status = dgd_http(a->d, "POST", "/v1/jobs", a->body, -1, NULL, &r);
    const char *s = json_string_value(json_object_get(r.json, "id"));
    snprintf(a->id, sizeof a->id, "%s", s ? s : "");
    dgd_resp_free(&r);
    return NULL;
}

START_TEST(fifty_concurrent_submissions) {
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":2,"
             "\"eval_iters\":1}},\"data\":{\"path\":\"%s\"}}", g_text);
    enum { N = 50 };
    pthread_t th[N];
    sub_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (sub_arg){.d = &D, .body = body};
        pthread_create(&th[i], NULL, submit_thread, &args[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(args[i].status, 201);
        ck_assert_uint_gt(strlen(args[i].id), 4);
        for (int k = 0; k < i; k++) ck_assert_str_ne(args[i].id, args[k].id);
    }
    json_t *l = dgd_get_json(&D, "/v1/jobs?limit=1000");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), N);
    json_decref(l);
    /* pagination walks all of them exactly once */
    int seen = 0;
    char path[200] = "/v1/jobs?limit=7";
    for (;;) {
        json_t *pg = dgd_get_json(&D, path);
        seen += (int)json_array_size(json_object_get(pg, "data"));
        const char *next = json_string_value(json_object_get(pg, "next_after"));
        bool more = json_is_true(json_object_get(pg, "has_more"));
        if (more) snprintf(path, sizeof path, "/v1/jobs?limit=7&after=%s", next);
        json_decref(pg);
        if (!more) break;
    }
    ck_assert_int_eq(seen, N);
    /* they all run to completion, one after another */
    for (int i = 0; i < N; i++) ck_assert(dgd_wait(&D, args[i].id, "succeeded", 0, 120));
    l = dgd_get_json(&D, "/v1/runs?status=succeeded&limit=1000");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), N);
    json_decref(l);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "GET", "/metrics", NULL, 0, NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "dragond_jobs{state=\"succeeded\"} 50"));
    ck_assert_ptr_nonnull(strstr(r.body,
        "dragond_requests_total{route=\"POST /v1/jobs\",code=\"201\"} 50"));
    ck_assert_ptr_nonnull(strstr(r.body, "dragond_queue_length 0"));
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

START_TEST(queue_bound_503) {
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/dragond.json", D.dir);
    write_file(cfg, "{\"max_queued_jobs\": 2, \"retry_after_s\": 7, "
                    "\"sse_ping_interval_s\": 1}");
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":"
             "100000}},\"data\":{\"path\":\"%s\"}}", g_text);
    const char *first = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(first);
    char id[64];
    snprintf(id, sizeof id, "%s", first);
    ck_assert(dgd_wait(&D, id, "running", 0, 30));
    ck_assert_ptr_nonnull(dgd_submit(&D, body));
    ck_assert_ptr_nonnull(dgd_submit(&D, body));
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/jobs", body, -1, NULL, &r), 503);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "queue_full");
    ck_assert_str_eq(r.retry_after, "7");
    dgd_resp_free(&r);
    /* an idle stream (a queued job) gets ": ping" comments every sse_ping_interval_s */
    char queued_id[64];
    json_t *ql = dgd_get_json(&D, "/v1/jobs?status=queued&limit=1");
    snprintf(queued_id, sizeof queued_id, "%s", json_string_value(json_object_get(
        json_array_get(json_object_get(ql, "data"), 0), "id")));
    json_decref(ql);
    json_t *evs = dgd_follow(&D, queued_id, -1, NULL, 2.6);
    ck_assert_int_ge(dgd_last_pings, 2);
    ck_assert_int_eq(dgd_count_events(evs, "status"), 1);
    json_decref(evs);
    /* a bad settings file is a start-up error naming the setting */
    dgd d2;
    dgd_init(&d2, "dapi3");
    char cfg2[700];
    snprintf(cfg2, sizeof cfg2, "%s/bad.json", d2.dir);
    write_file(cfg2, "{\"max_queued_jobz\": 2}");
    const char *extra[] = {"--config", cfg2, NULL};
    ck_assert_int_ne(dgd_start_v(&d2, extra), 0);
    ck_assert_int_eq(dgd_stop(&d2, SIGKILL, 5), 1);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "grep -q 'max_queued_jobz: unknown setting' %s", d2.log);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ---- slow SSE reader ----------------------------------------------------------------------- */
static int open_raw_stream(const char *id) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)D.port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char req[300];
    int n = snprintf(req, sizeof req, "GET /v1/jobs/%s/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     id);
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
    return fd;
}

START_TEST(slow_sse_reader_does_not_stall) {
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/dragond.json", D.dir);
    write_file(cfg, "{\"connection_timeout_s\": 300}");   /* patience for the slow reader */
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":"
             "600,\"log_interval\":1,\"eval_interval\":0,\"ckpt_interval\":0}},"
             "\"data\":{\"path\":\"%s\"}}", g_text);
    char id[64];
    snprintf(id, sizeof id, "%s", dgd_submit(&D, body));
    /* a client that opens the stream with a tiny receive buffer and does not read for now */
    int fd = open_raw_stream(id);
    /* meanwhile other clients are served promptly and a normal follower finishes */
    double worst = 0;
    for (int i = 0; i < 40; i++) {
        double t0 = dgd_now();
        dgd_resp r;
        ck_assert_int_eq(dgd_http(&D, "GET", "/health", NULL, 0, NULL, &r), 200);
        dgd_resp_free(&r);
        double dt = dgd_now() - t0;
        if (dt > worst) worst = dt;
        dgd_sleep_ms(20);
    }
    ck_assert_msg(worst < 1.0, "a /health request took %.3fs", worst);
    json_t *evs = dgd_follow(&D, id, -1, "end", 120);
    ck_assert_ptr_nonnull(dgd_last_event(evs, "end"));
    ck_assert_int_ge(dgd_count_events(evs, "progress"), 100);
    json_decref(evs);
    /* now the slow reader drains its stream: everything arrives, in order, up to the end */
    size_t cap = 1u << 20, len = 0;
    char *all = malloc(cap);
    double t_end = dgd_now() + 30;
    bool ended = false;
    while (!ended && dgd_now() < t_end) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 500) <= 0) continue;
        if (len + 65536 > cap) { cap *= 2; all = realloc(all, cap); }
        ssize_t got = read(fd, all + len, 65536);
        if (got <= 0) break;
        len += (size_t)got;
        all[len] = 0;
        ended = strstr(all, "event: end") != NULL;
    }
    ck_assert_msg(ended, "slow reader got %zu bytes without an end event; last bytes: %s", len,
                  len > 300 ? all + len - 300 : all);
    ck_assert_ptr_nonnull(strstr(all, "HTTP/1.1 200"));
    int n_progress = 0;
    for (char *q = all; (q = strstr(q, "event: progress")); q++) n_progress++;
    ck_assert_int_eq(n_progress, 600);
    free(all);
    close(fd);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "GET", "/health", NULL, 0, NULL, &r), 200);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

START_TEST(stalled_sse_reader_is_closed) {
    /* the hard limit: a peer that stops reading is closed by connection_timeout_s */
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/dragond.json", D.dir);
    write_file(cfg, "{\"connection_timeout_s\": 2}");
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":"
             "400,\"log_interval\":1,\"eval_interval\":0,\"ckpt_interval\":0}},"
             "\"data\":{\"path\":\"%s\"}}", g_text);
    char id[64];
    snprintf(id, sizeof id, "%s", dgd_submit(&D, body));
    int fd = open_raw_stream(id);
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 120));
    /* read what was buffered: the server must have closed the connection (EOF) */
    double t_end = dgd_now() + 15;
    bool eof = false;
    char buf[65536];
    while (!eof && dgd_now() < t_end) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 500) <= 0) continue;
        ssize_t got = read(fd, buf, sizeof buf);
        if (got <= 0) eof = true;
    }
    ck_assert(eof);
    close(fd);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "GET", "/metrics", NULL, 0, NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "dragond_sse_streams 0"));
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

START_TEST(system_page_and_bench) {
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    json_t *sys = dgd_get_json(&D, "/v1/system");
    ck_assert_ptr_nonnull(sys);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
        json_object_get(sys, "devices"), 0), "kind")), "cpu");
    json_decref(sys);
    dgd_resp r;
    long st = dgd_http(&D, "GET", "/", NULL, 0, NULL, &r);
    if (access("clients/web/index.html", R_OK) == 0) {
        ck_assert_int_eq(st, 200);
        ck_assert_ptr_nonnull(strstr(r.ctype, "text/html"));
    } else {
        ck_assert_int_eq(st, 404);
        ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "web_page_missing");
    }
    dgd_resp_free(&r);
    const char *id0 = dgd_submit(&D, "{\"kind\":\"bench\",\"config\":{\"preset\":\"tiny\"},"
                                     "\"data\":{\"bench_steps\":2}}");
    ck_assert_ptr_nonnull(id0);
    char id[64], p[200];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 60));
    snprintf(p, sizeof p, "/v1/benchmarks/%s", id);
    json_t *b = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(b);
    json_t *res = json_object_get(b, "results");
    ck_assert_uint_eq(json_array_size(res), 3);
    ck_assert(json_number_value(json_object_get(json_array_get(res, 0), "tok_s")) > 0);
    ck_assert(json_number_value(json_object_get(json_array_get(res, 1), "decode_tok_s")) > 0);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(res, 2), "batch")), 8);
    json_decref(b);
    json_t *l = dgd_get_json(&D, "/v1/benchmarks");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), 1);
    json_decref(l);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

/* ---- devices: discovery, placement, validation ---------------------------------------------- */
START_TEST(devices_and_placement) {
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    json_t *sys = dgd_get_json(&D, "/v1/system");
    ck_assert_ptr_nonnull(sys);
    json_t *devs = json_object_get(sys, "devices");
    size_t n = json_array_size(devs);
    ck_assert_uint_ge(n, 1);
    json_t *cpu = json_array_get(devs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(cpu, "name")), "cpu");
    ck_assert(json_integer_value(json_object_get(cpu, "mem_total_mb")) > 0);
    /* gpus lists exactly the cuda devices (none on a machine without a GPU) */
    size_t ng = 0;
    for (size_t i = 0; i < n; i++)
        ng += !strcmp(json_string_value(json_object_get(json_array_get(devs, i), "kind")), "cuda");
    ck_assert_uint_eq(json_array_size(json_object_get(sys, "gpus")), ng);
    /* infer_device auto: sessions on the first GPU when there is one, else on the CPU */
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(sys, "inference"),
                                                       "device")), ng ? "cuda:0" : "cpu");
    json_decref(sys);
    /* a device that does not exist is a 422 naming the field */
    dgd_resp r;
    long st = dgd_http(&D, "POST", "/v1/jobs", "{\"kind\":\"bench\",\"config\":{\"preset\":"
                       "\"tiny\"},\"device\":\"cuda:42\"}", -1, NULL, &r);
    char param[64] = "";
    ck_assert_int_eq(st, 422);
    ck_assert_str_eq(dgd_err_code(&r, param, sizeof param), "unknown_device");
    ck_assert_str_eq(param, "/device");
    dgd_resp_free(&r);
    st = dgd_http(&D, "POST", "/v1/jobs", "{\"kind\":\"bench\",\"device\":7}", -1, NULL, &r);
    ck_assert_int_eq(st, 400);
    dgd_resp_free(&r);
    /* a job that names the cpu runs there, and the log says where it was placed */
    const char *id0 = dgd_submit(&D, "{\"kind\":\"bench\",\"config\":{\"preset\":\"tiny\"},"
                                     "\"data\":{\"bench_steps\":1},\"device\":\"cpu\"}");
    ck_assert_ptr_nonnull(id0);
    char id[64], p[200];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 60));
    snprintf(p, sizeof p, "/v1/jobs/%s/logs", id);
    st = dgd_http(&D, "GET", p, NULL, 0, NULL, &r);
    ck_assert_int_eq(st, 200);
    ck_assert_msg(strstr(r.body, "placed on device cpu"), "%s", r.body);
    dgd_resp_free(&r);
    /* /metrics carries the per-device gauges */
    st = dgd_http(&D, "GET", "/metrics", NULL, 0, NULL, &r);
    ck_assert_int_eq(st, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "dragond_device_mem_used_bytes{device=\"cpu\"}"));
    ck_assert_ptr_nonnull(strstr(r.body, "dragond_device_busy{device=\"cpu\"} 0"));
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

/* The infer_device setting: cpu is honoured, a bad value or a GPU that is not there stops the
 * daemon at start with a message that names the setting (and nothing is left running). */
static bool log_has(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

START_TEST(infer_device_setting) {
    ck_assert_int_eq(dgd_start(&D, "--infer-device", "cpu", NULL), 0);
    json_t *sys = dgd_get_json(&D, "/v1/system");
    ck_assert_ptr_nonnull(sys);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(sys, "inference"),
                                                       "device")), "cpu");
    json_decref(sys);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
    ck_assert_int_ne(dgd_start(&D, "--infer-device", "gpu0", NULL), 0);
    ck_assert_int_eq(dgd_stop(&D, SIGKILL, 10), 2);
    ck_assert_msg(log_has(D.log, "infer_device: must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
                  "log %s lacks the infer_device message", D.log);
    ck_assert_int_ne(dgd_start(&D, "--infer-device", "cuda:99", NULL), 0);
    ck_assert_int_eq(dgd_stop(&D, SIGKILL, 10), 1);
    ck_assert_msg(log_has(D.log, "infer_device cuda:99: "), "log %s lacks the cuda:99 message",
                  D.log);
}
END_TEST

/* ---- dataset preset over a local HTTP server ------------------------------------------------ */
typedef struct { int lfd; char *data; size_t n; int served; } mini_http;
static void *serve_once(void *p) {
    mini_http *h = p;
    for (;;) {
        int c = accept(h->lfd, NULL, NULL);
        if (c < 0) return NULL;
        char req[2048];
        ssize_t got = read(c, req, sizeof req);
        (void)got;
        char hdr[200];
        int hn = snprintf(hdr, sizeof hdr, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n", h->n);
        if (write(c, hdr, (size_t)hn) != hn) {}
        size_t off = 0;
        while (off < h->n) {
            ssize_t w = write(c, h->data + off, h->n - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        close(c);
        h->served++;
    }
}

START_TEST(shakespeare_preset) {
    /* no server: data_error naming the file to place by hand */
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/dragond.json", D.dir);
    write_file(cfg, "{\"shakespeare_url\": \"http://127.0.0.1:9/input.txt\", "
                    "\"download_timeout_s\": 5}");
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);
    const char *body = "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":2,"
                       "\"eval_iters\":1}},\"data\":{\"preset\":\"shakespeare\"}}";
    char id[64];
    snprintf(id, sizeof id, "%s", dgd_submit(&D, body));
    ck_assert(dgd_wait(&D, id, "failed", 0, 30));
    json_t *j = dgd_job(&D, id);
    ck_assert_str_eq(json_string_value(json_object_get(j, "reason")), "data_error");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "message")),
                                 "datasets/tinyshakespeare.txt"));
    json_decref(j);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);

    const char *shared = dg_test_shared_dir();
    if (!shared) {
        fprintf(stderr, "SKIP shakespeare download: ../shared/data absent\n");
        return;
    }
    char src[1200];
    snprintf(src, sizeof src, "%s/data/tinyshakespeare.txt", shared);
    FILE *f = fopen(src, "rb");
    ck_assert_ptr_nonnull(f);
    mini_http h = {0};
    h.data = malloc(2u << 20);
    h.n = fread(h.data, 1, 2u << 20, f);
    fclose(f);
    h.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ck_assert_int_eq(bind(h.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    getsockname(h.lfd, (struct sockaddr *)&sa, &sl);
    listen(h.lfd, 4);
    pthread_t th;
    pthread_create(&th, NULL, serve_once, &h);
    char text[300];
    snprintf(text, sizeof text, "{\"shakespeare_url\": \"http://127.0.0.1:%d/input.txt\"}",
             ntohs(sa.sin_port));
    write_file(cfg, text);
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);
    snprintf(id, sizeof id, "%s", dgd_submit(&D, body));
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 60));
    char p[200];
    snprintf(p, sizeof p, "/v1/runs/%s", id);
    json_t *run = dgd_get_json(&D, p);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(run, "dataset"),
                                                       "sha256")),
                     "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed");
    json_decref(run);
    char dl[800];
    snprintf(dl, sizeof dl, "%s/data/datasets/tinyshakespeare.txt", D.dir);
    ck_assert_int_eq(access(dl, R_OK), 0);
    ck_assert_int_eq(h.served, 1);
    /* a second job uses the verified copy without downloading again */
    snprintf(id, sizeof id, "%s", dgd_submit(&D, body));
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 60));
    ck_assert_int_eq(h.served, 1);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
    shutdown(h.lfd, SHUT_RDWR);
    close(h.lfd);
    pthread_join(th, NULL);
    free(h.data);
}
END_TEST

START_TEST(shipped_job_specs_validate) {
    /* every shipped job spec (config/jobs/) is a valid POST /v1/jobs body */
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/dragond.json", D.dir);
    write_file(cfg, "{\"shakespeare_url\": \"http://127.0.0.1:9/input.txt\", "
                    "\"download_timeout_s\": 2}");
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);
    static const char *const files[] = {"config/jobs/tiny-ts.json",
                                        "config/jobs/base-ts.json",
                                        "config/jobs/bench-tiny.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        FILE *f = fopen(files[i], "rb");
        ck_assert_msg(f != NULL, "%s missing", files[i]);
        char body[8192];
        size_t n = fread(body, 1, sizeof body - 1, f);
        fclose(f);
        body[n] = 0;
        dgd_resp r;
        ck_assert_msg(dgd_http(&D, "POST", "/v1/jobs", body, -1, NULL, &r) == 201,
                      "%s: %ld %s", files[i], r.status, r.body ? r.body : "");
        dgd_resp_free(&r);
    }
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

START_TEST(exports_wired) {
    /* the export routes (server/exports.c) are reachable through the daemon: a finished run's
     * checkpoint becomes a safetensors file that downloads whole and by range */
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body, "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":5,"
             "\"eval_iters\":1}},\"data\":{\"path\":\"%s\"}}", g_text);
    char id[64];
    snprintf(id, sizeof id, "%s", dgd_submit(&D, body));
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 60));
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s:latest\",\"format\":\"safetensors\"}",
             id);
    dgd_resp r;
    long st = dgd_http(&D, "POST", "/v1/exports", body, -1, NULL, &r);
    ck_assert_msg(st == 202, "%ld %s", st, r.body ? r.body : "");
    char eid[64], p[300];
    snprintf(eid, sizeof eid, "%s", json_string_value(json_object_get(r.json, "id")));
    dgd_resp_free(&r);
    json_t *e = NULL;
    double t_end = dgd_now() + 30;
    snprintf(p, sizeof p, "/v1/exports/%s", eid);
    while (dgd_now() < t_end) {
        e = dgd_get_json(&D, p);
        if (!strcmp(json_string_value(json_object_get(e, "status")), "succeeded")) break;
        json_decref(e);
        e = NULL;
        dgd_sleep_ms(50);
    }
    ck_assert_ptr_nonnull(e);
    json_t *f0 = json_array_get(json_object_get(e, "files"), 0);
    const char *url = json_string_value(json_object_get(f0, "url"));
    long long bytes = json_integer_value(json_object_get(f0, "bytes"));
    char sha[65];
    snprintf(sha, sizeof sha, "%s", json_string_value(json_object_get(f0, "sha256")));
    char path[300];
    snprintf(path, sizeof path, "%s", url);
    json_decref(e);
    ck_assert_int_eq(dgd_http(&D, "GET", path, NULL, 0, NULL, &r), 200);
    ck_assert_int_eq((long long)r.len, bytes);
    uint8_t dig[32];
    char hex[65];
    dg_sha256(r.body, r.len, dig);
    dg_sha256_hex(dig, hex);
    ck_assert_str_eq(hex, sha);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", path, NULL, 0, "Range: bytes=8-15", &r), 206);
    ck_assert_uint_eq(r.len, 8);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("daemon_api");
    TCase *tc = tcase_create("api");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, auth_and_host);
    tcase_add_test(tc, bad_input);
    tcase_add_test(tc, fifty_concurrent_submissions);
    tcase_add_test(tc, queue_bound_503);
    tcase_add_test(tc, slow_sse_reader_does_not_stall);
    tcase_add_test(tc, stalled_sse_reader_is_closed);
    tcase_add_test(tc, system_page_and_bench);
    tcase_add_test(tc, devices_and_placement);
    tcase_add_test(tc, infer_device_setting);
    tcase_add_test(tc, shakespeare_preset);
    tcase_add_test(tc, shipped_job_specs_validate);
    tcase_add_test(tc, exports_wired);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
