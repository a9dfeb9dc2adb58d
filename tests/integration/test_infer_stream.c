/* tests/integration/test_infer_stream.c -- streaming under load and failure against a real
 * dragond: a client that disconnects stops its generation (the server-side token count stops
 * growing; /metrics counts the cancellation), also while its prompt is being prefilled; 32
 * concurrent streams all complete with correct OpenAI framing and the same text as alone; a full
 * wait queue answers 503 with Retry-After. */
#include <pthread.h>

#include "infer_util.h"

static void up(dgd *d, const char *tag) {
    dgd_init(d, tag);
    char data[700];
    snprintf(data, sizeof data, "%s/data", d->dir);
    ck_assert_int_eq(inf_make_model(d->dir, data, "tiny", 20), 0);
    ck_assert_int_eq(inf_start(d), 0);
}

/* Waits until metric `name` holds still for 300 ms; returns its value. */
static double settled(const dgd *d, const char *name) {
    double prev = inf_metric(d, name);
    for (int i = 0; i < 50; i++) {
        dgd_sleep_ms(300);
        double v = inf_metric(d, name);
        if (v == prev) return v;
        prev = v;
    }
    return -1;
}

START_TEST(cancel_on_disconnect) {
    dgd d;
    up(&d, "inf-cancel");
    int fd = inf_connect(&d);
    ck_assert_int_ge(fd, 0);
    /* ignore_eos: without a disconnect this runs for a long time */
    inf_send_post(fd, "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"the dragon\","
                  "\"max_tokens\":1000000,\"ignore_eos\":true,\"stream\":true}");
    char buf[65536];
    inf_read_until(fd, buf, sizeof buf, "\"finish_reason\":null}]}\n\n", 20);
    ck_assert_ptr_nonnull(strstr(buf, "data: {"));
    double running = inf_metric(&d, "dragond_gen_running");
    ck_assert(running == 1);
    double t0 = inf_metric(&d, "dragond_tokens_generated_total");
    dgd_sleep_ms(200);
    ck_assert(inf_metric(&d, "dragond_tokens_generated_total") > t0);   /* it is generating */
    close(fd);
    double n = settled(&d, "dragond_tokens_generated_total");
    ck_assert(n > 0);
    ck_assert(inf_metric(&d, "dragond_gen_cancelled_total") == 1);
    ck_assert(inf_metric(&d, "dragond_gen_running") == 0);
    fprintf(stderr, "tokens generated before the disconnect stopped it: %.0f\n", n);

    /* cancel while prefilling: a long prompt fed one token per unit would take seconds */
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
    setenv("DRAGOND_GEN_PREFILL_CHUNK", "1", 1);
    ck_assert_int_eq(inf_start(&d), 0);
    unsetenv("DRAGOND_GEN_PREFILL_CHUNK");
    static char body[400000];
    int w = snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":\"");
    for (int i = 0; i < 60000; i++) body[w++] = "the dragon "[i % 11];
    snprintf(body + w, sizeof body - w, "\",\"max_tokens\":5,\"stream\":true}");
    fd = inf_connect(&d);
    inf_send_post(fd, "/v1/completions", body);
    double t_end = dgd_now() + 10;
    while (inf_metric(&d, "dragond_gen_waiting") < 1 && dgd_now() < t_end) dgd_sleep_ms(10);
    dgd_sleep_ms(100);
    ck_assert(inf_metric(&d, "dragond_gen_waiting") == 1);          /* prefilling */
    close(fd);
    double fed = settled(&d, "dragond_prompt_tokens_total");
    fprintf(stderr, "prompt tokens fed before the disconnect stopped the prefill: %.0f of 60000\n",
            fed);
    ck_assert(fed >= 0 && fed < 60000);
    ck_assert(inf_metric(&d, "dragond_gen_cancelled_total") == 1);
    ck_assert(inf_metric(&d, "dragond_gen_waiting") == 0);
    ck_assert(inf_metric(&d, "dragond_tokens_generated_total") == 0);

    /* explicit cancel by id: the stream ends with an error frame and [DONE] */
    fd = inf_connect(&d);
    inf_send_post(fd, "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"the dragon\","
                  "\"max_tokens\":1000000,\"ignore_eos\":true,\"stream\":true}");
    static char b2[1 << 20];
    inf_read_until(fd, b2, sizeof b2, "\"finish_reason\":null}]}\n\n", 20);
    char *idp = strstr(b2, "\"id\":\"cmpl-");
    ck_assert_ptr_nonnull(idp);
    char cid[64], path[128];
    sscanf(idp + 6, "%63[^\"]", cid);
    snprintf(path, sizeof path, "/v1/requests/%s/cancel", cid);
    long st;
    json_t *j = inf_post(&d, path, "{}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert(json_is_true(json_object_get(j, "cancelled")));
    json_decref(j);
    size_t n2 = inf_read_until(fd, b2, sizeof b2, "data: [DONE]", 20);
    close(fd);
    ck_assert(n2 > 0);
    ck_assert_ptr_nonnull(strstr(b2, "data: [DONE]"));
    ck_assert_ptr_nonnull(strstr(b2, "\"error\""));
    ck_assert(inf_metric(&d, "dragond_gen_cancelled_total") == 2);
    j = inf_post(&d, path, "{}", &st);
    ck_assert_int_eq(st, 404);
    json_decref(j);
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
}
END_TEST

// ------------------------------------------------------------------------------------------
// 32 concurrent streams

typedef struct {
    const dgd *d;
    int        k;
    char       text[4096];
    const char *bad;
    long       status;
} job;

static void *stream_one(void *arg) {
    job *j = arg;
    char body[512];
    /* two prompt families, sampled with per-stream seeds: every stream has its own answer */
    snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":\"%s\",\"max_tokens\":48,"
             "\"temperature\":0.8,\"top_k\":8,\"seed\":%d,\"stream\":true,\"ignore_eos\":true,"
             "\"stream_options\":{\"include_usage\":true}}", j->k % 2 ? "the dragon" : "and all",
             j->k);
    dgd_resp r;
    j->status = dgd_http(j->d, "POST", "/v1/completions", body, -1, NULL, &r);
    char fin[32];
    j->bad = r.body ? inf_check_oai_stream(r.body, true, j->text, sizeof j->text, fin,
                                           sizeof fin) : "no body";
    dgd_resp_free(&r);
    return NULL;
}

START_TEST(concurrent_32_streams) {
    dgd d;
    up(&d, "inf-32");
    enum { N = 32 };
    static job jobs[N];
    pthread_t th[N];
    for (int k = 0; k < N; k++) {
        jobs[k].d = &d;
        jobs[k].k = k;
        pthread_create(&th[k], NULL, stream_one, &jobs[k]);
    }
    for (int k = 0; k < N; k++) pthread_join(th[k], NULL);
    double steps = inf_metric(&d, "dragond_decode_steps_total");
    double tokens = inf_metric(&d, "dragond_tokens_generated_total");
    fprintf(stderr, "32 streams: %.0f tokens in %.0f decode steps\n", tokens, steps);
    /* the same requests one at a time give the same texts (batching does not change them) */
    int differ = 0;
    for (int k = 0; k < N; k++) {
        ck_assert_int_eq(jobs[k].status, 200);
        ck_assert_msg(jobs[k].bad == NULL, "stream %d: %s", k, jobs[k].bad);
        job alone = {&d, k, "", NULL, 0};
        stream_one(&alone);
        ck_assert(alone.bad == NULL);
        if (strcmp(alone.text, jobs[k].text)) {
            differ++;
            fprintf(stderr, "stream %d differs:\n  batched '%s'\n  alone   '%s'\n", k,
                    jobs[k].text, alone.text);
        }
    }
    ck_assert_int_eq(differ, 0);
    ck_assert(tokens >= N * 40);
    ck_assert(steps < tokens * 0.75);          /* several sequences per decode step */
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
}
END_TEST

START_TEST(queue_full_503) {
    dgd d;
    dgd_init(&d, "inf-503");
    char data[700];
    snprintf(data, sizeof data, "%s/data", d.dir);
    ck_assert_int_eq(inf_make_model(d.dir, data, "tiny", 20), 0);
    setenv("DRAGOND_GEN_MAX_BATCH", "1", 1);
    setenv("DRAGOND_GEN_MAX_WAITING", "1", 1);
    ck_assert_int_eq(inf_start(&d), 0);
    unsetenv("DRAGOND_GEN_MAX_BATCH");
    unsetenv("DRAGOND_GEN_MAX_WAITING");
    int fds[2];
    char buf[4096];
    for (int i = 0; i < 2; i++) {
        fds[i] = inf_connect(&d);
        inf_send_post(fds[i], "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"the\","
                      "\"max_tokens\":1000000,\"ignore_eos\":true,\"stream\":true}");
        inf_read_until(fds[i], buf, sizeof buf, "\r\n\r\n", 10);
        ck_assert_ptr_nonnull(strstr(buf, "200"));
    }
    dgd_resp r;
    long st = dgd_http(&d, "POST", "/v1/completions",
                       "{\"model\":\"tiny\",\"prompt\":\"the\",\"max_tokens\":5}", -1, NULL, &r);
    char param[64];
    ck_assert_int_eq(st, 503);
    ck_assert_str_eq(dgd_err_code(&r, param, sizeof param), "queue_full");
    ck_assert(r.retry_after[0] != 0);
    dgd_resp_free(&r);
    ck_assert(inf_metric(&d, "dragond_gen_rejected_total") == 1);
    for (int i = 0; i < 2; i++) close(fds[i]);
    settled(&d, "dragond_tokens_generated_total");
    st = dgd_http(&d, "POST", "/v1/completions",
                  "{\"model\":\"tiny\",\"prompt\":\"the\",\"max_tokens\":5}", -1, NULL, &r);
    ck_assert_int_eq(st, 200);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("infer_stream");
    TCase *t = tcase_create("stream");
    tcase_set_timeout(t, 180);
    tcase_add_test(t, cancel_on_disconnect);
    tcase_add_test(t, concurrent_32_streams);
    tcase_add_test(t, queue_full_503);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
