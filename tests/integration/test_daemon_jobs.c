/* tests/integration/test_daemon_jobs.c -- training jobs through a real dragond on 127.0.0.1:
 * submit + follow SSE to succeeded (run, metrics, checkpoints, logs, Last-Event-ID resume),
 * cancel, pause/resume, kill -9 mid-training then restart (resumes from the checkpoint with one
 * continuous metric series), SIGTERM drain (exit 0, stream ended, job parked and resumed).
 * Uses config/models/tiny.json with few steps and a small generated text file.
 * Thread affinity: single-threaded tests (Check fork mode). */
#include "daemon_util.h"

#include <pthread.h>

static dgd D;
static char g_text[700];

static void setup(void) {
    dgd_init(&D, "djobs");
    dgd_write_text(D.dir, "text.txt", 6000, g_text, sizeof g_text);
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
}
static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

static const char *submit_tiny(int max_steps, const char *extra_training) {
    char body[2000];
    snprintf(body, sizeof body,
             "{\"name\":\"t\",\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":%d%s%s}},"
             "\"data\":{\"path\":\"%s\"},\"tags\":{\"suite\":\"jobs\"}}",
             max_steps, extra_training ? "," : "", extra_training ? extra_training : "", g_text);
    return dgd_submit(&D, body);
}

START_TEST(train_follow_sse) {
    const char *id0 = submit_tiny(30, NULL);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    json_t *evs = dgd_follow(&D, id, -1, "end", 60);
    size_t n = json_array_size(evs);
    ck_assert_uint_gt(n, 5);
    /* ids strictly increasing; status running seen; end says succeeded */
    long long prev = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(evs, i);
        long long eid = json_integer_value(json_object_get(e, "id"));
        ck_assert_int_gt(eid, prev);
        prev = eid;
    }
    ck_assert_int_ge(dgd_count_events(evs, "progress"), 3);
    ck_assert_int_ge(dgd_count_events(evs, "metric"), 3);
    ck_assert_int_ge(dgd_count_events(evs, "checkpoint"), 1);
    json_t *end = dgd_last_event(evs, "end");
    ck_assert_ptr_nonnull(end);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(end, "data"), "status")),
                     "succeeded");
    json_t *lastp = dgd_last_event(evs, "progress");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(lastp, "data"), "step")),
                     30);
    /* Last-Event-ID: exactly the events after it */
    json_t *tail = dgd_follow(&D, id, prev - 3, "end", 20);
    ck_assert_uint_eq(json_array_size(tail), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(tail, 0), "id")),
                     prev - 2);
    json_decref(tail);
    json_decref(evs);
    /* ?types= filters, ids stay those of the full stream */
    char tp[200];
    snprintf(tp, sizeof tp, "/v1/jobs/%s/stream?types=checkpoint,status", id);
    json_t *flt = dgd_sse_get(&D, tp, -1, "end", NULL, 20);
    for (size_t i = 0; i < json_array_size(flt); i++) {
        const char *t = json_string_value(json_object_get(json_array_get(flt, i), "event"));
        ck_assert(!strcmp(t, "checkpoint") || !strcmp(t, "status") || !strcmp(t, "end"));
    }
    ck_assert_int_ge(dgd_count_events(flt, "checkpoint"), 1);
    ck_assert_int_eq(dgd_count_events(flt, "end"), 1);
    json_decref(flt);

    char p[300];
    snprintf(p, sizeof p, "/v1/runs/%s", id);
    json_t *run = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(run);
    ck_assert_str_eq(json_string_value(json_object_get(run, "status")), "succeeded");
    const char *sha = json_string_value(json_object_get(json_object_get(run, "dataset"),
                                                        "sha256"));
    ck_assert_ptr_nonnull(sha);
    ck_assert_uint_eq(strlen(sha), 64);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(run, "params"),
                                                        "training.max_steps")), 30);
    double tl = json_number_value(json_object_get(json_object_get(run, "summary_metrics"),
                                                  "train_loss"));
    ck_assert(tl > 0 && tl < 10);
    json_decref(run);

    snprintf(p, sizeof p, "/v1/runs/%s/metrics", id);
    json_t *keys = dgd_get_json(&D, p);
    bool has_train = false, has_val = false;
    json_t *ka = json_object_get(keys, "keys");
    for (size_t i = 0; i < json_array_size(ka); i++) {
        const char *k = json_string_value(json_object_get(json_array_get(ka, i), "key"));
        if (!strcmp(k, "train_loss")) has_train = true;
        if (!strcmp(k, "val_loss")) has_val = true;
    }
    ck_assert(has_train && has_val);
    json_decref(keys);

    snprintf(p, sizeof p, "/v1/runs/%s/metrics/train_loss", id);
    json_t *ser = dgd_get_json(&D, p);
    json_t *pts = json_object_get(ser, "points");
    ck_assert_uint_ge(json_array_size(pts), 3);
    long long last_step = -1;
    double first_v = 0, last_v = 0;
    for (size_t i = 0; i < json_array_size(pts); i++) {
        json_t *pt = json_array_get(pts, i);
        long long s = json_integer_value(json_array_get(pt, 0));
        ck_assert_int_gt(s, last_step);
        last_step = s;
        double v = json_number_value(json_array_get(pt, 2));
        if (i == 0) first_v = v;
        last_v = v;
    }
    ck_assert_int_eq(last_step, 30);
    ck_assert(last_v < first_v);           /* it learned something */
    json_decref(ser);
    snprintf(p, sizeof p, "/v1/runs/%s/metrics/train_loss?max_points=2", id);
    ser = dgd_get_json(&D, p);
    ck_assert_uint_le(json_array_size(json_object_get(ser, "points")), 2);
    ck_assert(json_is_true(json_object_get(ser, "downsampled")));
    json_decref(ser);

    snprintf(p, sizeof p, "/v1/runs/%s/checkpoints", id);
    json_t *cks = dgd_get_json(&D, p);
    json_t *ca = json_object_get(cks, "data");
    ck_assert_uint_ge(json_array_size(ca), 1);
    json_t *lc = json_array_get(ca, json_array_size(ca) - 1);
    ck_assert_int_eq(json_integer_value(json_object_get(lc, "step_number")), 30);
    ck_assert(json_is_true(json_object_get(lc, "valid")));
    ck_assert_int_eq(access(json_string_value(json_object_get(lc, "path")), R_OK), 0);
    json_decref(cks);

    dgd_resp r;
    snprintf(p, sizeof p, "/v1/jobs/%s/logs", id);
    ck_assert_int_eq(dgd_http(&D, "GET", p, NULL, 0, NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"line_no\":1"));
    ck_assert_ptr_nonnull(strstr(r.body, "finished 30 steps"));
    dgd_resp_free(&r);

    /* runs list: filter by status and tag, order by a metric */
    json_t *l = dgd_get_json(&D, "/v1/runs?status=succeeded&tag=suite=jobs&order_by=val_loss");
    ck_assert_ptr_nonnull(l);
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), 1);
    json_decref(l);
    l = dgd_get_json(&D, "/v1/runs?status=failed");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), 0);
    json_decref(l);
    ck_assert_int_eq(dgd_http(&D, "GET", "/v1/runs?order_by=bogus", NULL, 0, NULL, &r), 400);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
}
END_TEST

START_TEST(cancel_job) {
    const char *id0 = submit_tiny(100000, "\"log_interval\":1,\"ckpt_interval\":0");
    ck_assert_ptr_nonnull(id0);
    char id[64], p[200];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "running", 3, 30));
    dgd_resp r;
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 200);
    const char *st = json_string_value(json_object_get(r.json, "status"));
    ck_assert(!strcmp(st, "cancelling") || !strcmp(st, "cancelled"));
    dgd_resp_free(&r);
    ck_assert(dgd_wait(&D, id, "cancelled", 0, 30));
    /* a final checkpoint was written */
    snprintf(p, sizeof p, "/v1/runs/%s/checkpoints", id);
    json_t *cks = dgd_get_json(&D, p);
    ck_assert_uint_ge(json_array_size(json_object_get(cks, "data")), 1);
    json_decref(cks);
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 409);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "invalid_state");
    dgd_resp_free(&r);
    /* the stream of a finished job replays and ends */
    json_t *evs = dgd_follow(&D, id, -1, "end", 10);
    json_t *end = dgd_last_event(evs, "end");
    ck_assert_ptr_nonnull(end);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(end, "data"), "status")),
                     "cancelled");
    json_decref(evs);
    /* a queued job cancels at once: block the engine with a long job first */
    const char *a0 = submit_tiny(100000, "\"log_interval\":1");
    char a[64];
    snprintf(a, sizeof a, "%s", a0);
    const char *b0 = submit_tiny(10, NULL);
    char b[64];
    snprintf(b, sizeof b, "%s", b0);
    ck_assert(dgd_wait(&D, a, "running", 1, 30));
    json_t *q = dgd_get_json(&D, "/v1/queue");
    ck_assert_str_eq(json_string_value(json_object_get(q, "running")), a);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
        json_object_get(q, "data"), 0), "job_id")), b);
    json_decref(q);
    json_t *bj = dgd_job(&D, b);
    ck_assert_str_eq(json_string_value(json_object_get(bj, "status")), "queued");
    ck_assert_int_eq(json_integer_value(json_object_get(bj, "queue_position")), 0);
    json_decref(bj);
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", b);
    ck_assert_int_eq(dgd_http(&D, "POST", p, NULL, 0, NULL, &r), 200);
    ck_assert_str_eq(json_string_value(json_object_get(r.json, "status")), "cancelled");
    dgd_resp_free(&r);
    /* delete: running -> 409; finished -> 204 then 404 */
    snprintf(p, sizeof p, "/v1/jobs/%s", a);
    ck_assert_int_eq(dgd_http(&D, "DELETE", p, NULL, 0, NULL, &r), 409);
    dgd_resp_free(&r);
    snprintf(p, sizeof p, "/v1/jobs/%s?purge_checkpoints=true", b);
    ck_assert_int_eq(dgd_http(&D, "DELETE", p, NULL, 0, NULL, &r), 204);
    dgd_resp_free(&r);
    snprintf(p, sizeof p, "/v1/jobs/%s", b);
    ck_assert_int_eq(dgd_http(&D, "GET", p, NULL, 0, NULL, &r), 404);
    ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "job_not_found");
    dgd_resp_free(&r);
}
END_TEST

START_TEST(pause_resume) {
    const char *id0 = submit_tiny(100000, "\"log_interval\":1,\"ckpt_interval\":0");
    char id[64], p[200];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "running", 3, 30));
    dgd_resp r;
    snprintf(p, sizeof p, "/v1/jobs/%s/checkpoint", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 202);
    ck_assert_ptr_nonnull(json_object_get(r.json, "checkpoint_request_id"));
    dgd_resp_free(&r);
    snprintf(p, sizeof p, "/v1/jobs/%s/pause", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 200);
    dgd_resp_free(&r);
    ck_assert(dgd_wait(&D, id, "paused", 0, 30));
    long long paused_step = 0;
    char st[32];
    dgd_job_status(&D, id, st, &paused_step);
    ck_assert_int_ge(paused_step, 3);
    /* stays paused */
    dgd_sleep_ms(300);
    long long s2 = 0;
    dgd_job_status(&D, id, st, &s2);
    ck_assert_str_eq(st, "paused");
    ck_assert_int_eq(s2, paused_step);
    snprintf(p, sizeof p, "/v1/jobs/%s/pause", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 409);
    dgd_resp_free(&r);
    snprintf(p, sizeof p, "/v1/jobs/%s/resume", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 200);
    dgd_resp_free(&r);
    ck_assert(dgd_wait(&D, id, "running", paused_step + 3, 30));
    json_t *j = dgd_job(&D, id);
    json_t *att = json_object_get(j, "attempts");
    ck_assert_uint_eq(json_array_size(att), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(att, 0), "exit_reason")),
                     "paused");
    const char *rf = json_string_value(json_object_get(json_array_get(att, 1),
                                                       "resumed_from"));
    ck_assert_ptr_nonnull(rf);
    char want[64];
    snprintf(want, sizeof want, "step-%lld.dck", paused_step);
    ck_assert_ptr_nonnull(strstr(rf, want));
    json_decref(j);
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &r), 200);
    dgd_resp_free(&r);
    ck_assert(dgd_wait(&D, id, "cancelled", 0, 30));
    /* metric series: one point per step, no duplicates, no gaps */
    snprintf(p, sizeof p, "/v1/runs/%s/metrics/train_loss?max_points=1000000", id);
    json_t *ser = dgd_get_json(&D, p);
    json_t *pts = json_object_get(ser, "points");
    for (size_t i = 0; i < json_array_size(pts); i++)
        ck_assert_int_eq(json_integer_value(json_array_get(json_array_get(pts, i), 0)),
                         (long long)i + 1);
    json_decref(ser);
}
END_TEST

START_TEST(kill9_restart_resumes) {
    const int total = 400;
    const char *id0 = submit_tiny(total, "\"log_interval\":1,\"ckpt_interval\":10,"
                                         "\"eval_interval\":50");
    char id[64], p[300];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "running", 25, 60));
    long long at_kill = 0;
    char st[32];
    dgd_job_status(&D, id, st, &at_kill);
    ck_assert_int_eq(dgd_stop(&D, SIGKILL, 10), 128 + SIGKILL);
    ck_assert_msg(at_kill < total, "job finished before the kill (step %lld)", at_kill);
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    json_t *evs = dgd_follow(&D, id, -1, "end", 120);
    json_t *end = dgd_last_event(evs, "end");
    ck_assert_ptr_nonnull(end);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(end, "data"), "status")),
                     "succeeded");
    json_decref(evs);
    json_t *j = dgd_job(&D, id);
    json_t *att = json_object_get(j, "attempts");
    ck_assert_uint_eq(json_array_size(att), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(att, 0), "exit_reason")),
                     "daemon_restart");
    const char *rf = json_string_value(json_object_get(json_array_get(att, 1),
                                                       "resumed_from"));
    ck_assert_ptr_nonnull(rf);
    ck_assert_ptr_nonnull(strstr(rf, "/ckpt/step-"));
    long long resumed_step = atoll(strstr(rf, "/ckpt/step-") + 11);
    ck_assert_int_ge(resumed_step, 10);
    ck_assert_int_le(resumed_step, at_kill);
    json_decref(j);
    /* one continuous series 1..total, each step once */
    snprintf(p, sizeof p, "/v1/runs/%s/metrics/train_loss?max_points=1000000", id);
    json_t *ser = dgd_get_json(&D, p);
    json_t *pts = json_object_get(ser, "points");
    ck_assert_uint_eq(json_array_size(pts), (size_t)total);
    for (size_t i = 0; i < json_array_size(pts); i++)
        ck_assert_int_eq(json_integer_value(json_array_get(json_array_get(pts, i), 0)),
                         (long long)i + 1);
    json_decref(ser);
    /* the restart was logged in the job's log */
    dgd_resp r;
    snprintf(p, sizeof p, "/v1/jobs/%s/logs?format=text", id);
    ck_assert_int_eq(dgd_http(&D, "GET", p, NULL, 0, NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "daemon restarted"));
    dgd_resp_free(&r);
}
END_TEST

START_TEST(sigterm_drains) {
    const char *id0 = submit_tiny(100000, "\"log_interval\":1,\"ckpt_interval\":0");
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "running", 3, 30));
    /* a stream open across the signal gets a final event */
    pid_t child = fork();
    if (child == 0) {
        json_t *evs = dgd_follow(&D, id, 1000000, NULL, 20);
        json_t *e = dgd_last_event(evs, "end");
        _exit(e ? 0 : 3);
    }
    dgd_sleep_ms(300);
    double t0 = dgd_now();
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 25), 0);
    ck_assert(dgd_now() - t0 < 25);
    int cst = 0;
    waitpid(child, &cst, 0);
    ck_assert_int_eq(WEXITSTATUS(cst), 0);
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    json_t *j = dgd_job(&D, id);
    json_t *att = json_object_get(j, "attempts");
    ck_assert_uint_ge(json_array_size(att), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(att, 0), "exit_reason")),
                     "daemon_shutdown");
    json_decref(j);
    ck_assert(dgd_wait(&D, id, "running", 0, 30));
    ck_assert_int_eq(dgd_stop(&D, SIGINT, 25), 0);
}
END_TEST

START_TEST(failure_reasons) {
    /* nan_loss: an absurd learning rate */
    const char *a0 = submit_tiny(50, "\"lr\":1e6,\"log_interval\":1");
    char a[64];
    snprintf(a, sizeof a, "%s", a0);
    /* data_error: a file shorter than one block */
    char small[700], body[1200];
    snprintf(small, sizeof small, "%s/small.txt", D.dir);
    FILE *f = fopen(small, "w");
    fputs("hi\n", f);
    fclose(f);
    snprintf(body, sizeof body, "{\"config\":{\"preset\":\"tiny\"},\"data\":{\"path\":\"%s\"}}",
             small);
    char b[64];
    snprintf(b, sizeof b, "%s", dgd_submit(&D, body));
    ck_assert(dgd_wait(&D, a, "failed", 0, 30));
    ck_assert(dgd_wait(&D, b, "failed", 0, 30));
    json_t *ja = dgd_job(&D, a), *jb = dgd_job(&D, b);
    ck_assert_str_eq(json_string_value(json_object_get(ja, "reason")), "nan_loss");
    ck_assert_str_eq(json_string_value(json_object_get(jb, "reason")), "data_error");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(jb, "message")),
                                 "block_size"));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
        json_object_get(ja, "attempts"), 0), "exit_reason")), "nan_loss");
    json_decref(ja);
    json_decref(jb);
    json_t *evs = dgd_follow(&D, a, -1, "end", 10);
    json_t *st = dgd_last_event(evs, "status");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(st, "data"), "reason")),
                     "nan_loss");
    json_decref(evs);
}
END_TEST

typedef struct { json_t *evs; char want[120]; } events_arg;
static void *events_thread(void *p) {
    events_arg *a = p;
    a->evs = dgd_sse_get(&D, "/v1/events", -1, "job", a->want, 30);
    return NULL;
}

START_TEST(daemon_events_stream) {
    /* /v1/events sees queued -> running -> succeeded of a job submitted after it opened */
    events_arg a = {0};
    snprintf(a.want, sizeof a.want, "\"status\":\"succeeded\"");
    pthread_t th;
    pthread_create(&th, NULL, events_thread, &a);
    dgd_sleep_ms(300);
    const char *id0 = submit_tiny(5, NULL);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    pthread_join(th, NULL);
    int seen_queued = 0, seen_running = 0, seen_done = 0;
    long long prev = 0;
    for (size_t i = 0; i < json_array_size(a.evs); i++) {
        json_t *e = json_array_get(a.evs, i), *d = json_object_get(e, "data");
        if (strcmp(json_string_value(json_object_get(e, "event")), "job")) continue;
        ck_assert_int_gt(json_integer_value(json_object_get(e, "id")), prev);
        prev = json_integer_value(json_object_get(e, "id"));
        ck_assert_str_eq(json_string_value(json_object_get(d, "job_id")), id);
        const char *st = json_string_value(json_object_get(d, "status"));
        if (!strcmp(st, "queued")) seen_queued++;
        if (!strcmp(st, "running")) seen_running++;
        if (!strcmp(st, "succeeded")) seen_done++;
    }
    ck_assert_int_eq(seen_queued, 1);
    ck_assert_int_eq(seen_running, 1);
    ck_assert_int_eq(seen_done, 1);
    json_decref(a.evs);
    /* an open /v1/events stream ends with a final event on SIGTERM */
    pid_t child = fork();
    if (child == 0) {
        json_t *evs = dgd_sse_get(&D, "/v1/events", -1, "end", NULL, 20);
        _exit(dgd_last_event(evs, "end") ? 0 : 3);
    }
    dgd_sleep_ms(300);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 20), 0);
    int cst = 0;
    waitpid(child, &cst, 0);
    ck_assert_int_eq(WEXITSTATUS(cst), 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("daemon_jobs");
    TCase *tc = tcase_create("jobs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, train_follow_sse);
    tcase_add_test(tc, cancel_job);
    tcase_add_test(tc, pause_resume);
    tcase_add_test(tc, kill9_restart_resumes);
    tcase_add_test(tc, sigterm_drains);
    tcase_add_test(tc, failure_reasons);
    tcase_add_test(tc, daemon_events_stream);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
