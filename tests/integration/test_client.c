/* tests/integration/test_client.c -- the `dragon` client ($DG_BUILD/dragon) against a real
 * dragond on 127.0.0.1 with a temporary data directory: submit -f of a tiny job exits 0 and
 * shows progress; jobs/runs/show/metrics --csv/logs print what the API returns (checked
 * against direct libcurl GETs); -o json parses; cancel makes submit -f exit 2, a failing job
 * exit 1, Ctrl-C detach exit 130 (job keeps running); pause/resume; watch reconnects with
 * Last-Event-ID across a daemon kill -9 + restart; bench prints the stored results; bad host /
 * unknown id / usage errors;
 * DRAGON_TOKEN against a --token-file daemon.
 * Thread affinity: single-threaded tests (Check fork mode). */
#include "client_util.h"

static dgd D;
static char g_text[700];

static void setup(void) {
    dgd_init(&D, "dclient");
    dgd_write_text(D.dir, "text.txt", 12000, g_text, sizeof g_text);
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
}
static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

static const char *tiny(void) { return dcl_repo_file("config/models/tiny.json"); }

/* Polls the API until a job of the given status exists; copies its id. */
static bool wait_job_status(const char *status, char *id_out, size_t n, double timeout_s) {
    double t_end = dgd_now() + timeout_s;
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs?status=%s", status);
    while (dgd_now() < t_end) {
        json_t *l = dgd_get_json(&D, path);
        json_t *j = json_array_get(json_object_get(l, "data"), 0);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (id) {
            snprintf(id_out, n, "%s", id);
            json_decref(l);
            return true;
        }
        json_decref(l);
        dgd_sleep_ms(20);
    }
    return false;
}

/* ---- the main path --------------------------------------------------------------------------- */
START_TEST(submit_follow_and_read_back) {
    dcl_run r;
    DCL_RUN(0, &r, D.dir, D.base, NULL, 120, "submit", tiny(), "--data", g_text, "--steps", "20",
            "--name", "cli-tiny", "--tag", "suite=client", "-f");
    char id[64];
    snprintf(id, sizeof id, "%s", dcl_submitted_id(r.out));
    ck_assert_msg(!strncmp(id, "job_", 4), "no job id in: %s", r.out);
    /* progress, evaluation, checkpoint and the verdict are shown */
    ck_assert_ptr_nonnull(strstr(r.out, "status: running"));
    ck_assert_ptr_nonnull(strstr(r.out, "step 5/20"));
    ck_assert_ptr_nonnull(strstr(r.out, "train_loss"));
    ck_assert_ptr_nonnull(strstr(r.out, "val_loss"));
    ck_assert_ptr_nonnull(strstr(r.out, "checkpoint ckpt_"));
    char verdict[128];
    snprintf(verdict, sizeof verdict, "%s succeeded: 20/20 steps", id);
    ck_assert_ptr_nonnull(strstr(r.out, verdict));
    dcl_free(&r);

    char p[300];
    snprintf(p, sizeof p, "/v1/runs/%s", id);
    json_t *run = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(run);
    ck_assert_str_eq(json_string_value(json_object_get(run, "status")), "succeeded");
    ck_assert_str_eq(json_string_value(json_object_get(run, "name")), "cli-tiny");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(run, "tags"), "suite")),
                     "client");
    double tl = json_number_value(json_object_get(json_object_get(run, "summary_metrics"),
                                                  "train_loss"));
    char tls[32];
    snprintf(tls, sizeof tls, "%.4f", tl);

    /* jobs: the row with id, status and the loss as the API has it */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "jobs");
    const char *row = strstr(r.out, id);
    ck_assert_ptr_nonnull(row);
    char line[512];
    snprintf(line, sizeof line, "%.*s", (int)strcspn(row, "\n"), row);
    ck_assert_ptr_nonnull(strstr(line, "succeeded"));
    ck_assert_ptr_nonnull(strstr(line, "20/20"));
    ck_assert_ptr_nonnull(strstr(line, tls));
    dcl_free(&r);

    /* runs -o json equals the API's list */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "-o", "json", "runs", "--tag", "suite=client",
            "--order-by", "val_loss");
    json_t *cl = json_loads(r.out, 0, NULL);
    ck_assert_ptr_nonnull(cl);
    json_t *api = dgd_get_json(&D, "/v1/runs?tag=suite%3Dclient&order_by=val_loss");
    ck_assert_ptr_nonnull(api);
    ck_assert_uint_eq(json_array_size(json_object_get(cl, "data")), 1);
    json_t *c0 = json_array_get(json_object_get(cl, "data"), 0);
    json_t *a0 = json_array_get(json_object_get(api, "data"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(c0, "id")), id);
    ck_assert(json_equal(json_object_get(c0, "summary_metrics"),
                         json_object_get(a0, "summary_metrics")));
    ck_assert(json_equal(json_object_get(c0, "progress"), json_object_get(a0, "progress")));
    json_decref(cl);
    json_decref(api);
    dcl_free(&r);

    /* runs table */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "runs");
    ck_assert_ptr_nonnull(strstr(r.out, id));
    ck_assert_ptr_nonnull(strstr(r.out, "cli-tiny"));
    ck_assert_ptr_nonnull(strstr(r.out, "suite=client"));
    dcl_free(&r);

    /* show: status, every checkpoint id of the API, -o json with the checkpoints */
    snprintf(p, sizeof p, "/v1/runs/%s/checkpoints", id);
    json_t *ck = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(ck);
    json_t *cks = json_object_get(ck, "data");
    ck_assert_uint_ge(json_array_size(cks), 1);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "show", id);
    ck_assert_ptr_nonnull(strstr(r.out, "succeeded"));
    ck_assert_ptr_nonnull(strstr(r.out, tls));
    for (size_t i = 0; i < json_array_size(cks); i++)
        ck_assert_ptr_nonnull(strstr(r.out, json_string_value(json_object_get(
                                                json_array_get(cks, i), "id"))));
    dcl_free(&r);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "show", id, "-o", "json");
    json_t *sj = json_loads(r.out, 0, NULL);
    ck_assert_ptr_nonnull(sj);
    ck_assert_str_eq(json_string_value(json_object_get(sj, "id")), id);
    ck_assert(json_equal(json_object_get(sj, "checkpoints"), cks));
    json_decref(sj);
    json_decref(ck);
    dcl_free(&r);

    /* metrics --csv: the same points as the API, value for value */
    snprintf(p, sizeof p, "/v1/runs/%s/metrics/train_loss", id);
    json_t *ser = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(ser);
    json_t *pts = json_object_get(ser, "points");
    ck_assert_uint_ge(json_array_size(pts), 4);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "metrics", id, "--key", "train_loss", "--csv");
    ck_assert_int_eq(dcl_count_lines(r.out), (int)json_array_size(pts) + 1);
    ck_assert(!strncmp(r.out, "step,timestamp_ms,train_loss\n", 29));
    const char *q = strchr(r.out, '\n') + 1;
    for (size_t i = 0; i < json_array_size(pts); i++) {
        json_t *pt = json_array_get(pts, i);
        long long step, ts;
        double v;
        ck_assert_int_eq(sscanf(q, "%lld,%lld,%lf", &step, &ts, &v), 3);
        ck_assert_int_eq(step, json_integer_value(json_array_get(pt, 0)));
        ck_assert_int_eq(ts, json_integer_value(json_array_get(pt, 1)));
        ck_assert(fabs(v - json_number_value(json_array_get(pt, 2))) <= 1e-7 * fabs(v));
        q = strchr(q, '\n') + 1;
    }
    json_decref(ser);
    dcl_free(&r);
    /* --max-points asks the daemon to downsample */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "metrics", id, "--key", "train_loss", "--csv",
            "--max-points", "2");
    ck_assert_int_le(dcl_count_lines(r.out), 3);
    dcl_free(&r);
    /* metrics without a key: every key */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "metrics", id);
    ck_assert_ptr_nonnull(strstr(r.out, "train_loss"));
    ck_assert_ptr_nonnull(strstr(r.out, "val_loss"));
    dcl_free(&r);

    /* logs: every line of the API, in order; --tail 1 the last one */
    snprintf(p, sizeof p, "/v1/jobs/%s/logs?format=json", id);
    json_t *lg = dgd_get_json(&D, p);
    json_t *lines = json_object_get(lg, "data");
    ck_assert_uint_ge(json_array_size(lines), 2);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "logs", id);
    ck_assert_int_eq(dcl_count_lines(r.out), (int)json_array_size(lines));
    const char *at = r.out;
    for (size_t i = 0; i < json_array_size(lines); i++) {
        const char *msg = json_string_value(json_object_get(json_array_get(lines, i), "msg"));
        at = strstr(at, msg);
        ck_assert_msg(at != NULL, "log line '%s' missing or out of order", msg);
    }
    dcl_free(&r);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "logs", id, "--tail", "1");
    ck_assert_int_eq(dcl_count_lines(r.out), 1);
    ck_assert_ptr_nonnull(strstr(r.out, json_string_value(json_object_get(
        json_array_get(lines, json_array_size(lines) - 1), "msg"))));
    dcl_free(&r);
    /* logs -f of a finished job prints everything and ends */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "logs", id, "-f");
    ck_assert_int_eq(dcl_count_lines(r.out), (int)json_array_size(lines));
    json_decref(lg);
    dcl_free(&r);

    /* watch of a finished job replays the stream and exits with the job's verdict */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "watch", id);
    ck_assert_ptr_nonnull(strstr(r.out, "succeeded"));
    dcl_free(&r);

    /* status */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "status");
    ck_assert_ptr_nonnull(strstr(r.out, "dragond"));
    ck_assert_ptr_nonnull(strstr(r.out, "queue: 0 queued, 0 running"));
    dcl_free(&r);
    json_decref(run);
}
END_TEST

/* -o json with -f: JSON lines, one per event, the first "submitted", the last "end". */
START_TEST(json_lines_follow) {
    dcl_run r;
    DCL_RUN(0, &r, D.dir, D.base, NULL, 120, "-o", "json", "submit", tiny(), "--data", g_text,
            "--steps", "10", "-f");
    int n = 0;
    json_t *last = NULL;
    long long prev_id = 0;
    for (char *save = NULL, *l = strtok_r(r.out, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        ck_assert_msg(j != NULL, "not JSON: %s", l);
        if (n == 0) {
            ck_assert_str_eq(json_string_value(json_object_get(j, "event")), "submitted");
            ck_assert_ptr_nonnull(json_string_value(json_object_get(json_object_get(j, "data"),
                                                                    "id")));
        } else {
            long long id = json_integer_value(json_object_get(j, "id"));
            ck_assert_int_gt(id, prev_id);           /* event ids increase */
            prev_id = id;
        }
        json_decref(last);
        last = j;
        n++;
    }
    ck_assert_int_gt(n, 5);
    ck_assert_str_eq(json_string_value(json_object_get(last, "event")), "end");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(last, "data"), "status")),
                     "succeeded");
    json_decref(last);
    dcl_free(&r);
    /* a job spec file (not a model config) goes through as given */
    char spec[800];
    snprintf(spec, sizeof spec, "%s/spec.json", D.dir);
    FILE *f = fopen(spec, "w");
    fprintf(f, "{\"kind\":\"train\",\"name\":\"from-spec\",\"config\":{\"preset\":\"tiny\","
               "\"training\":{\"max_steps\":6}},\"data\":{\"path\":\"%s\"},"
               "\"tags\":{\"src\":\"spec\"}}", g_text);
    fclose(f);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "-o", "json", "submit", spec);
    json_t *job = json_loads(r.out, 0, NULL);
    ck_assert_ptr_nonnull(job);
    ck_assert_str_eq(json_string_value(json_object_get(job, "name")), "from-spec");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(job, "tags"), "src")),
                     "spec");
    ck_assert(dgd_wait(&D, json_string_value(json_object_get(job, "id")), "succeeded", 6, 60));
    json_decref(job);
    dcl_free(&r);
}
END_TEST

/* ---- cancel, pause/resume, failure, Ctrl-C --------------------------------------------------- */
START_TEST(cancel_pause_resume_exit_codes) {
    dcl_run f;
    const char *args[] = {"submit", tiny(), "--data", g_text, "--steps", "200000", "--name",
                          "long", "-f", NULL};
    dcl_spawn_v(&f, D.dir, D.base, NULL, args);
    char id[64];
    ck_assert(wait_job_status("running", id, sizeof id, 30));
    ck_assert(dgd_wait(&D, id, "running", 3, 30));
    dcl_run r;
    DCL_RUN(0, &r, D.dir, D.base, NULL, 30, "pause", id);
    ck_assert_ptr_nonnull(strstr(r.out, id));
    dcl_free(&r);
    ck_assert(dgd_wait(&D, id, "paused", 0, 30));
    /* pausing twice is a state conflict: the server's code, exit 1 */
    DCL_RUN(1, &r, D.dir, D.base, NULL, 30, "pause", id);
    ck_assert_ptr_nonnull(strstr(r.err, "invalid_state"));
    ck_assert_ptr_nonnull(strstr(r.err, "HTTP 409"));
    dcl_free(&r);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 30, "resume", id);
    dcl_free(&r);
    ck_assert(dgd_wait(&D, id, "running", 0, 30));
    DCL_RUN(0, &r, D.dir, D.base, NULL, 30, "cancel", id);
    dcl_free(&r);
    /* the follower sees paused, running again, then cancelled: exit 2 */
    ck_assert_int_eq(dcl_wait(&f, 60), 2);
    ck_assert_ptr_nonnull(strstr(f.out, "status: paused"));
    ck_assert_ptr_nonnull(strstr(f.out, "status: cancelled"));
    char verdict[128];
    snprintf(verdict, sizeof verdict, "%s cancelled", id);
    ck_assert_ptr_nonnull(strstr(f.out, verdict));
    dcl_free(&f);
    char st[32];
    dgd_job_status(&D, id, st, NULL);
    ck_assert_str_eq(st, "cancelled");
}
END_TEST

START_TEST(failed_job_exit_1) {
    /* a data file too short for one block fails the job (data_error) after it was accepted */
    char tiny_text[700];
    snprintf(tiny_text, sizeof tiny_text, "%s/short.txt", D.dir);
    FILE *f = fopen(tiny_text, "w");
    fputs("abc", f);
    fclose(f);
    dcl_run r;
    int rc = dcl_run_sync(&r, D.dir, D.base, NULL, 60, "submit", tiny(), "--data", tiny_text,
                          "--steps", "5", "-f", NULL);
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(r.out, "status: failed"));
    ck_assert_ptr_nonnull(strstr(r.out, "failed (data_error)"));
    dcl_free(&r);
}
END_TEST

START_TEST(ctrl_c_detaches) {
    dcl_run f;
    const char *args[] = {"submit", tiny(), "--data", g_text, "--steps", "200000", "-f", NULL};
    dcl_spawn_v(&f, D.dir, D.base, NULL, args);
    char id[64];
    ck_assert(wait_job_status("running", id, sizeof id, 30));
    ck_assert(dgd_wait(&D, id, "running", 2, 30));
    dgd_sleep_ms(200);
    kill(f.pid, SIGINT);
    ck_assert_int_eq(dcl_wait(&f, 20), 130);
    ck_assert_ptr_nonnull(strstr(f.err, "detached"));
    /* Ctrl-C never cancels: the job still trains */
    long long s1 = 0, s2 = 0;
    char st[32];
    dgd_job_status(&D, id, st, &s1);
    ck_assert_str_eq(st, "running");
    ck_assert(dgd_wait(&D, id, "running", s1 + 1, 30));
    dgd_job_status(&D, id, st, &s2);
    ck_assert_int_gt(s2, s1);
    dcl_free(&f);
    dcl_run r;
    DCL_RUN(0, &r, D.dir, D.base, NULL, 30, "cancel", id);
    dcl_free(&r);
    ck_assert(dgd_wait(&D, id, "cancelled", 0, 30));
}
END_TEST

/* watch survives a daemon kill -9 + restart on the same port: it reconnects with
 * Last-Event-ID, the job resumes from its checkpoint, and the final verdict arrives. */
START_TEST(watch_reconnects_across_restart) {
    char body[1200];
    snprintf(body, sizeof body,
             "{\"config\":{\"preset\":\"tiny\",\"training\":{\"max_steps\":200000,"
             "\"ckpt_interval\":10}},\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "running", 25, 60));          /* a checkpoint exists */
    dcl_run w;
    const char *args[] = {"watch", id, NULL};
    dcl_spawn_v(&w, D.dir, D.base, NULL, args);
    dgd_sleep_ms(500);
    int port = D.port;
    ck_assert_int_eq(dgd_stop(&D, SIGKILL, 5), 128 + SIGKILL);
    dgd_sleep_ms(300);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    ck_assert_int_eq(dgd_start(&D, "--listen", listen, NULL), 0);
    ck_assert_int_eq(D.port, port);
    ck_assert(dgd_wait(&D, id, "running", 0, 60));
    dgd_sleep_ms(1500);
    dgd_resp resp;
    char p[200];
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &resp), 200);
    dgd_resp_free(&resp);
    ck_assert_int_eq(dcl_wait(&w, 60), 2);
    ck_assert_ptr_nonnull(strstr(w.err, "reconnecting"));
    ck_assert_ptr_nonnull(strstr(w.out, "status: running (attempt 2)"));
    ck_assert_ptr_nonnull(strstr(w.out, "cancelled"));
    /* no event was shown twice: one "attempt 2" status line */
    const char *a2 = strstr(w.out, "(attempt 2)");
    ck_assert_ptr_null(strstr(a2 + 1, "(attempt 2)"));
    dcl_free(&w);
}
END_TEST

/* bench: a kind:"bench" job, waited for; the printed results are the stored ones. */
START_TEST(bench_prints_results) {
    dcl_run r;
    DCL_RUN(0, &r, D.dir, D.base, NULL, 120, "-o", "json", "bench", "--steps", "2");
    json_t *b = json_loads(r.out, 0, NULL);
    ck_assert_msg(b != NULL, "not JSON: %s", r.out);
    const char *id = json_string_value(json_object_get(b, "id"));
    ck_assert_ptr_nonnull(id);
    char p[200];
    snprintf(p, sizeof p, "/v1/benchmarks/%s", id);
    json_t *api = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(api);
    ck_assert(json_equal(json_object_get(b, "results"), json_object_get(api, "results")));
    ck_assert_uint_ge(json_array_size(json_object_get(api, "results")), 1);
    json_decref(api);
    json_decref(b);
    dcl_free(&r);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 120, "bench", "--steps", "2");
    ck_assert_ptr_nonnull(strstr(r.out, "status: succeeded"));
    ck_assert_ptr_nonnull(strstr(r.out, "PHASE"));
    ck_assert_ptr_nonnull(strstr(r.out, "train_step_fwd_bwd"));
    dcl_free(&r);
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "bench", "--steps", "0");
    dcl_free(&r);
}
END_TEST

/* ---- errors and auth ------------------------------------------------------------------------- */
START_TEST(errors_and_usage) {
    dcl_run r;
    /* nothing listens on port 1 */
    DCL_RUN(1, &r, D.dir, "http://127.0.0.1:1", NULL, 20, "status");
    ck_assert_ptr_nonnull(strstr(r.err, "cannot reach dragond at http://127.0.0.1:1"));
    dcl_free(&r);
    DCL_RUN(1, &r, D.dir, NULL, NULL, 20, "--host", "127.0.0.1:1", "jobs");
    ck_assert_ptr_nonnull(strstr(r.err, "cannot reach dragond"));
    dcl_free(&r);
    /* a follower that never reached the daemon fails at once (no reconnect loop) */
    double t0 = dgd_now();
    DCL_RUN(1, &r, D.dir, "http://127.0.0.1:1", NULL, 20, "watch", "job_x");
    ck_assert_ptr_nonnull(strstr(r.err, "cannot reach dragond"));
    ck_assert(dgd_now() - t0 < 10);
    dcl_free(&r);
    /* unknown id: the server's error code and message */
    DCL_RUN(1, &r, D.dir, D.base, NULL, 20, "show", "job_nope");
    ck_assert_ptr_nonnull(strstr(r.err, "job_not_found"));
    ck_assert_ptr_nonnull(strstr(r.err, "HTTP 404"));
    dcl_free(&r);
    DCL_RUN(1, &r, D.dir, D.base, NULL, 20, "logs", "job_nope", "-f");
    ck_assert_ptr_nonnull(strstr(r.err, "job_not_found"));
    dcl_free(&r);
    /* an invalid config: 422 invalid_config with the JSON pointer */
    char bad[800];
    snprintf(bad, sizeof bad, "%s/bad.json", D.dir);
    FILE *f = fopen(bad, "w");
    fputs("{\"model\":{\"n_head\":0},\"training\":{\"max_steps\":5}}", f);
    fclose(f);
    DCL_RUN(1, &r, D.dir, D.base, NULL, 20, "submit", bad, "--data", g_text);
    ck_assert_ptr_nonnull(strstr(r.err, "invalid_config"));
    ck_assert_ptr_nonnull(strstr(r.err, "/config/model/n_head"));
    dcl_free(&r);
    /* usage errors: exit 2, nothing sent */
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "submit");
    dcl_free(&r);
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "submit", tiny());
    ck_assert_ptr_nonnull(strstr(r.err, "--data"));
    dcl_free(&r);
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "frobnicate");
    dcl_free(&r);
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "metrics", "job_x", "--max-points", "many");
    dcl_free(&r);
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "-o", "yaml", "jobs");
    dcl_free(&r);
    char nofile[800];
    snprintf(nofile, sizeof nofile, "%s/none.json", D.dir);
    DCL_RUN(2, &r, D.dir, D.base, NULL, 20, "submit", nofile, "--data", g_text);
    dcl_free(&r);
    /* help everywhere */
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "--help");
    ck_assert_ptr_nonnull(strstr(r.out, "submit"));
    ck_assert_ptr_nonnull(strstr(r.out, "DRAGON_TOKEN"));
    dcl_free(&r);
    DCL_RUN(0, &r, D.dir, D.base, NULL, 20, "submit", "--help");
    ck_assert_ptr_nonnull(strstr(r.out, "usage: dragon submit FILE"));
    dcl_free(&r);
    /* no job was created by any of the above */
    json_t *l = dgd_get_json(&D, "/v1/jobs");
    ck_assert_uint_eq(json_array_size(json_object_get(l, "data")), 0);
    json_decref(l);
}
END_TEST

START_TEST(token_auth) {
    dgd_stop(&D, SIGKILL, 5);
    char tf[700];
    snprintf(tf, sizeof tf, "%s/token", D.dir);
    FILE *f = fopen(tf, "w");
    fputs("client-test-token-0123456789abcdef\n", f);
    fclose(f);
    chmod(tf, 0600);
    ck_assert_int_eq(dgd_start(&D, "--token-file", tf, NULL), 0);
    dcl_run r;
    DCL_RUN(1, &r, D.dir, D.base, NULL, 20, "status");
    ck_assert_ptr_nonnull(strstr(r.err, "HTTP 401"));
    ck_assert_ptr_nonnull(strstr(r.err, "DRAGON_TOKEN"));
    dcl_free(&r);
    DCL_RUN(1, &r, D.dir, D.base, "wrong-token-0123456789", 20, "jobs");
    ck_assert_ptr_nonnull(strstr(r.err, "HTTP 401"));
    dcl_free(&r);
    const char *tok = "client-test-token-0123456789abcdef";
    DCL_RUN(0, &r, D.dir, D.base, tok, 20, "status");
    dcl_free(&r);
    /* the stream is authenticated too */
    DCL_RUN(0, &r, D.dir, D.base, tok, 120, "submit", tiny(), "--data", g_text, "--steps", "8",
            "-f");
    ck_assert_ptr_nonnull(strstr(r.out, "succeeded"));
    char id[64];
    snprintf(id, sizeof id, "%s", dcl_submitted_id(r.out));
    dcl_free(&r);
    DCL_RUN(1, &r, D.dir, D.base, NULL, 20, "watch", id);
    ck_assert_ptr_nonnull(strstr(r.err, "HTTP 401"));
    dcl_free(&r);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("client");
    TCase *t = tcase_create("dragon");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 240);
    tcase_add_test(t, submit_follow_and_read_back);
    tcase_add_test(t, json_lines_follow);
    tcase_add_test(t, cancel_pause_resume_exit_codes);
    tcase_add_test(t, failed_job_exit_1);
    tcase_add_test(t, ctrl_c_detaches);
    tcase_add_test(t, watch_reconnects_across_restart);
    tcase_add_test(t, bench_prints_results);
    tcase_add_test(t, errors_and_usage);
    tcase_add_test(t, token_auth);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
