/* tests/integration/test_infer_train.c -- inference next to training on one daemon: while a
 * training job runs on the device, a streamed generation keeps flowing (no gap of a second
 * between tokens) and the job keeps stepping; when the job has finished, its run is servable
 * under the run name and the job id (the model registry reads the runs' checkpoints). */
#include "infer_util.h"

START_TEST(generation_while_training) {
    dgd d;
    dgd_init(&d, "inf-train");
    char data[700], text[700];
    snprintf(data, sizeof data, "%s/data", d.dir);
    ck_assert_int_eq(inf_make_model(d.dir, data, "tiny", 20), 0);
    ck_assert_int_eq(inf_start(&d), 0);
    dgd_write_text(d.dir, "train.txt", 60000, text, sizeof text);
    char body[2048];
    snprintf(body, sizeof body, "{\"name\":\"trainrun\",\"config\":{\"preset\":\"tiny\","
             "\"training\":{\"max_steps\":300,\"batch_size\":16,\"block_size\":64,"
             "\"log_interval\":1,"
             "\"ckpt_interval\":100,\"eval_interval\":100}},\"data\":{\"path\":\"%s\"}}", text);
    const char *id0 = dgd_submit(&d, body);
    ck_assert_ptr_nonnull(id0);
    char job[64];
    snprintf(job, sizeof job, "%s", id0);
    ck_assert(dgd_wait(&d, job, "running", 2, 30));
    char st[32];
    long long step0, step1;
    dgd_job_status(&d, job, st, &step0);
    /* stream 20000 tokens (a few seconds) while it trains; note when each frame arrives */
    int fd = inf_connect(&d);
    inf_send_post(fd, "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"the dragon\","
                  "\"max_tokens\":20000,\"temperature\":0,\"ignore_eos\":true,"
                  "\"stream\":true}");
    static char buf[1 << 16];
    const char *pat = "\"finish_reason\":null";
    size_t pl = strlen(pat), carry = 0;
    int frames = 0;
    bool done = false;
    double t_last = dgd_now(), max_gap = 0, t_end = dgd_now() + 120;
    while (dgd_now() < t_end && !done) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) continue;
        ssize_t r = read(fd, buf + carry, sizeof buf - 1 - carry);
        if (r <= 0) break;
        size_t len = carry + (size_t)r;
        buf[len] = 0;
        double now = dgd_now();
        int n = 0;
        for (char *q = buf; (q = strstr(q, pat)); q += pl) n++;
        if (n > 0) {
            if (frames > 0 && now - t_last > max_gap) max_gap = now - t_last;
            frames += n;
            t_last = now;
        }
        done = strstr(buf, "data: [DONE]") != NULL;
        carry = len < 24 ? len : 24;                 /* a pattern may straddle two reads */
        memmove(buf, buf + len - carry, carry);
        char *q = strstr(buf, "\"finish_reason\":n");  /* never count a tail twice */
        if (q && (size_t)(q - buf) + pl <= carry) carry = 0;
    }
    close(fd);
    dgd_job_status(&d, job, st, &step1);
    fprintf(stderr, "while training (steps %lld -> %lld, %s): %d token frames, max gap %.3f s\n",
            step0, step1, st, frames, max_gap);
    ck_assert(done);
    ck_assert_int_ge(frames, 19990);
    ck_assert(max_gap < 1.0);
    ck_assert(step1 > step0 || !strcmp(st, "succeeded"));
    /* the finished run is a model: by name and by job id */
    ck_assert(dgd_wait(&d, job, "succeeded", 300, 120));
    json_t *ml = dgd_get_json(&d, "/v1/models");
    ck_assert_ptr_nonnull(ml);
    bool by_name = false, by_id = false;
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(ml, "data"), i, m) {
        const char *mid = json_string_value(json_object_get(m, "id"));
        by_name |= !strcmp(mid, "trainrun");
        by_id |= !strcmp(mid, job);
    }
    json_decref(ml);
    ck_assert(by_name);
    long status;
    json_t *c = inf_post(&d, "/v1/completions", "{\"model\":\"trainrun\",\"prompt\":\"the\","
                         "\"max_tokens\":8,\"temperature\":0}", &status);
    ck_assert_int_eq(status, 200);
    json_decref(c);
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"the\",\"max_tokens\":8}", job);
    c = inf_post(&d, "/v1/completions", body, &status);
    ck_assert_int_eq(status, 200);
    json_decref(c);
    (void)by_id;
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("infer_train");
    TCase *t = tcase_create("train");
    tcase_set_timeout(t, 240);
    tcase_add_test(t, generation_while_training);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
