/* tests/server/test_db.c -- server/db.c on a real SQLite file: the embedded schema equals
 * proto/schema.sql, migrations set user_version and a newer database is refused, job/attempt/
 * event/metric/checkpoint queries, SSE coalescing (noisy events skipped below a seq), min/max
 * downsampling keeps extremes, and restart recovery requeues a running job with its latest
 * checkpoint. Thread affinity: single-threaded. */
#include "check_util.h"
#include "engine/ckpt.h"
#include "server/srv.h"

#include <jansson.h>
#include <sqlite3.h>

static char g_db[600];

static void setup(void) {
    char *d = dg_test_tmpdir("db");
    snprintf(g_db, sizeof g_db, "%s/dragond.db", d);
    free(d);
    char err[512];
    ck_assert_msg(dg_db_open(g_db, err, sizeof err) == 0, "%s", err);
}
static void teardown(void) { dg_db_close(); }

static void new_job(const char *id) {
    dg_db_newjob j = {0};
    snprintf(j.id, sizeof j.id, "%s", id);
    j.kind = "train";
    j.request_json = "{}";
    j.config_json = "{\"preset\":\"tiny\"}";
    j.data_json = "{\"path\":\"/x\"}";
    j.tags_json = "{\"exp\":\"a\"}";
    j.seed = 1;
    j.total_steps = 100;
    ck_assert_int_eq(dg_db_job_insert(&j), 0);
}

START_TEST(schema_file_matches) {
    char path[1200], err[256];
    ck_assert_int_eq(dg_find_asset("proto/schema.sql", path, sizeof path), 0);
    char *text = NULL;
    size_t n = 0;
    ck_assert_int_eq(dg_read_file(path, &text, &n, err, sizeof err), 0);
    ck_assert_msg(!strcmp(text, dg_db_schema_sql),
                  "proto/schema.sql and dg_db_schema_sql (server/db.c) differ");
    dg_free(text);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), DG_DB_VERSION);
    sqlite3_finalize(st);
    sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
    /* reopening is a no-op; a newer database is refused with a hint */
    dg_db_close();
    ck_assert_int_eq(dg_db_open(g_db, err, sizeof err), 0);
    dg_db_exec("PRAGMA user_version=99");
    dg_db_close();
    ck_assert_int_ne(dg_db_open(g_db, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "schema version 99"));
    ck_assert_int_eq(sqlite3_open(g_db, &db), SQLITE_OK);
    sqlite3_exec(db, "PRAGMA user_version=1", NULL, NULL, NULL);
    sqlite3_close(db);
    ck_assert_int_eq(dg_db_open(g_db, err, sizeof err), 0);
}
END_TEST

START_TEST(jobs_queue_and_events) {
    new_job("job_a");
    new_job("job_b");
    ck_assert_int_eq(dg_db_queue_len(), 2);
    ck_assert_int_eq(dg_db_queue_position("job_a"), 0);
    ck_assert_int_eq(dg_db_queue_position("job_b"), 1);
    char id[DG_ID_LEN];
    ck_assert(dg_db_next_queued(id));
    ck_assert_str_eq(id, "job_a");
    /* events get consecutive seqs per job */
    for (int i = 0; i < 10; i++) {
        const char *type = i % 3 == 0 ? "log" : (i % 3 == 1 ? "progress" : "metric");
        ck_assert_int_eq(dg_db_event_add("job_a", type, "{}"), i + 1);
    }
    ck_assert_int_eq(dg_db_event_add("job_b", "status", "{}"), 1);
    dg_db_event evs[32];
    int n = dg_db_events_after("job_a", 0, 0, evs, 32);
    ck_assert_int_eq(n, 10);
    for (int i = 0; i < n; i++) { ck_assert_int_eq(evs[i].seq, i + 1); dg_free(evs[i].data); }
    /* coalescing: progress/metric below seq 8 skipped, logs kept */
    n = dg_db_events_after("job_a", 0, 8, evs, 32);
    for (int i = 0; i < n; i++) {
        if (evs[i].seq < 8) ck_assert_str_eq(evs[i].type, "log");
        dg_free(evs[i].data);
    }
    ck_assert_int_eq(n, 3 + 3);   /* logs 1,4,7 + seqs 8,9,10 */
    n = dg_db_events_after("job_a", 7, 0, evs, 2);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(evs[0].seq, 8);
    for (int i = 0; i < n; i++) dg_free(evs[i].data);
    /* list + tag filter + cursor */
    dg_db_listq q = {.tag = "exp=a", .limit = 1};
    json_t *out = NULL;
    char err[256];
    ck_assert_int_eq(dg_db_list_jobs(&q, &out, err, sizeof err), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(out, "data")), 1);
    ck_assert(json_is_true(json_object_get(out, "has_more")));
    ck_assert_str_eq(json_string_value(json_object_get(out, "next_after")), "job_b");
    json_decref(out);
    q.after = "job_b";
    ck_assert_int_eq(dg_db_list_jobs(&q, &out, err, sizeof err), 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
        json_object_get(out, "data"), 0), "id")), "job_a");
    ck_assert(json_is_false(json_object_get(out, "has_more")));
    json_decref(out);
    dg_db_listq q2 = {.tag = "exp=b"};
    ck_assert_int_eq(dg_db_list_jobs(&q2, &out, err, sizeof err), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(out, "data")), 0);
    json_decref(out);
    dg_db_listq q3 = {.status = "queued,bogus"};
    ck_assert_int_eq(dg_db_list_jobs(&q3, &out, err, sizeof err), DG_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "bogus"));
    /* delete cascades */
    ck_assert_int_eq(dg_db_job_delete("job_a"), 0);
    ck_assert_int_eq(dg_db_event_max("job_a"), 0);
}
END_TEST

START_TEST(metrics_downsample_minmax) {
    new_job("job_m");
    for (int s = 1; s <= 1000; s++) {
        double v = 5.0 - s * 0.001;
        if (s == 500) v = 100.0;        /* a spike that must survive downsampling */
        if (s == 700) v = -3.0;
        ck_assert_int_eq(dg_db_metric_add("job_m", "train_loss", s, 1000 + s, v), 0);
    }
    /* rewriting a step replaces it (no duplicates on resume) */
    ck_assert_int_eq(dg_db_metric_add("job_m", "train_loss", 1000, 9, 1.5), 0);
    json_t *o = NULL;
    ck_assert_int_eq(dg_db_metric_series("job_m", "train_loss", 0, INT64_MAX, 50, &o), 0);
    json_t *pts = json_object_get(o, "points");
    ck_assert_uint_le(json_array_size(pts), 50);
    ck_assert(json_is_true(json_object_get(o, "downsampled")));
    ck_assert_int_eq(json_integer_value(json_object_get(o, "n_points")), 1000);
    bool spike = false, dip = false;
    long long prev = 0;
    for (size_t i = 0; i < json_array_size(pts); i++) {
        json_t *p = json_array_get(pts, i);
        long long s = json_integer_value(json_array_get(p, 0));
        ck_assert_int_gt(s, prev);
        prev = s;
        double v = json_number_value(json_array_get(p, 2));
        if (v == 100.0) spike = true;
        if (v == -3.0) dip = true;
    }
    ck_assert(spike && dip);
    json_decref(o);
    json_t *keys = NULL;
    ck_assert_int_eq(dg_db_metric_keys("job_m", &keys), 0);
    json_t *k = json_array_get(keys, 0);
    ck_assert_double_eq(json_number_value(json_object_get(k, "last")), 1.5);
    ck_assert_double_eq(json_number_value(json_object_get(k, "max")), 100.0);
    ck_assert_int_eq(json_integer_value(json_object_get(k, "n_points")), 1000);
    json_decref(keys);
    ck_assert_int_eq(dg_db_metrics_trim("job_m", 600), 0);
    ck_assert_int_eq(dg_db_metric_series("job_m", "train_loss", 0, INT64_MAX, 0, &o), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(o, "points")), 600);
    json_decref(o);
}
END_TEST

START_TEST(recover_running_job) {
    new_job("job_r");
    new_job("job_q");
    ck_assert_int_eq(dg_db_attempt_open("job_r", NULL, NULL), 0);
    ck_assert_int_eq(dg_db_job_set_status("job_r", "running", NULL, NULL), 0);
    ck_assert_int_eq(dg_db_ckpt_add("job_r", "ckpt_1", 20, "/tmp/x/step-20.dck", 10, NULL, NULL,
                                    NULL), 0);
    ck_assert_int_eq(dg_db_ckpt_add("job_r", "ckpt_2", 40, "/tmp/x/step-40.dck", 10, NULL, NULL,
                                    NULL), 0);
    int rq = 0, fl = 0;
    ck_assert_int_eq(dg_db_recover(true, &rq, &fl), 0);
    ck_assert_int_eq(rq, 1);
    ck_assert_int_eq(fl, 0);
    char st[32];
    dg_db_job_status("job_r", st);
    ck_assert_str_eq(st, "queued");
    dg_db_job_status("job_q", st);
    ck_assert_str_eq(st, "queued");
    dg_db_jobspec sp;
    ck_assert_int_eq(dg_db_job_spec("job_r", &sp), 0);
    ck_assert_str_eq(sp.resume_from, "/tmp/x/step-40.dck");
    ck_assert_int_eq(sp.resume_step, 40);
    dg_db_jobspec_free(&sp);
    json_t *j = dg_db_job_json("job_r", false);
    json_t *a0 = json_array_get(json_object_get(j, "attempts"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(a0, "exit_reason")), "daemon_restart");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "latest_checkpoint"),
                                                        "step_number")), 40);
    json_decref(j);
    /* without resume_on_restart the job fails with daemon_restart */
    ck_assert_int_eq(dg_db_job_set_status("job_r", "running", NULL, NULL), 0);
    ck_assert_int_eq(dg_db_recover(false, &rq, &fl), 0);
    ck_assert_int_eq(fl, 1);
    j = dg_db_job_json("job_r", false);
    ck_assert_str_eq(json_string_value(json_object_get(j, "reason")), "daemon_restart");
    json_decref(j);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("db");
    TCase *tc = tcase_create("db");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, schema_file_matches);
    tcase_add_test(tc, jobs_queue_and_events);
    tcase_add_test(tc, metrics_downsample_minmax);
    tcase_add_test(tc, recover_running_job);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
