/* tests/gpu/test_daemon_gpu.c -- the daemon on a GPU machine: dragond discovers the GPUs (one
 * engine thread each), lists them with memory in /v1/system and /metrics, places a job that asks
 * for "cuda" on a GPU, trains it there to `succeeded`, and reports an impossible allocation as a
 * failed job with reason "oom" while it keeps serving; inference sessions run on the first GPU
 * (infer_device auto) and give the same greedy text as a daemon serving the same run on the CPU.
 *
 * Without a GPU (the cuda backend finds no device) every test prints SKIP and passes.
 * Thread affinity: one thread per process. */
#include "check_util.h"
#include "../integration/daemon_util.h"
#include "engine/backend.h"

static dgd D;
static char g_text[512];

static int n_gpus(const char *test) {
    dg_device_info info[16];
    int n = dg_backend_find("cuda") ? dg_backend_devices("cuda", info, 16) : 0;
    if (n <= 0) printf("SKIP %s: no CUDA device (backends: %s)\n", test, dg_backend_list());
    return n;
}

static void setup(void) {
    dgd_init(&D, "dgpu");
    dgd_write_text(D.dir, "text.txt", 20000, g_text, sizeof g_text);
}

static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

START_TEST(gpu_discovery_and_training) {
    int n = n_gpus("gpu_discovery_and_training");
    if (n <= 0) return;
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    json_t *sys = dgd_get_json(&D, "/v1/system");
    ck_assert_ptr_nonnull(sys);
    json_t *gpus = json_object_get(sys, "gpus");
    ck_assert_uint_eq(json_array_size(gpus), (size_t)n);
    json_t *g0 = json_array_get(gpus, 0);
    ck_assert_str_eq(json_string_value(json_object_get(g0, "name")), "cuda:0");
    ck_assert(json_integer_value(json_object_get(g0, "mem_total_mb")) > 1024);
    printf("gpu 0: %s, %lld MiB\n", json_string_value(json_object_get(g0, "model")),
           (long long)json_integer_value(json_object_get(g0, "mem_total_mb")));
    json_decref(sys);
    char body[1200];
    snprintf(body, sizeof body,
             "{\"name\":\"gpu\",\"device\":\"cuda\",\"config\":{\"preset\":\"tiny\","
             "\"training\":{\"max_steps\":30}},\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64], p[200];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 120));
    dgd_resp r;
    snprintf(p, sizeof p, "/v1/jobs/%s/logs", id);
    ck_assert_int_eq(dgd_http(&D, "GET", p, NULL, 0, NULL, &r), 200);
    ck_assert_msg(strstr(r.body, "placed on device cuda:0"), "%s", r.body);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_http(&D, "GET", "/metrics", NULL, 0, NULL, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "dragond_device_mem_used_bytes{device=\"cuda:0\"}"));
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 30), 0);
}
END_TEST

START_TEST(gpu_oom_fails_job_daemon_keeps_serving) {
    if (n_gpus("gpu_oom_fails_job_daemon_keeps_serving") <= 0) return;
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    /* ~100 TB of activations: no card has that */
    char body[1200];
    snprintf(body, sizeof body,
             "{\"device\":\"cuda:0\",\"config\":{\"preset\":\"tiny\",\"model\":{\"n_embd\":4096,"
             "\"mlp_internal_dim_multiplier\":256},\"training\":{\"batch_size\":4096,"
             "\"block_size\":4096,\"max_steps\":1}},\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "failed", 0, 120));
    json_t *j = dgd_job(&D, id);
    ck_assert_str_eq(json_string_value(json_object_get(j, "reason")), "oom");
    json_decref(j);
    dgd_resp r;
    ck_assert_int_eq(dgd_http(&D, "GET", "/health", NULL, 0, NULL, &r), 200);
    dgd_resp_free(&r);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 30), 0);
}
END_TEST

/* POST /v1/completions (greedy, 64 tokens) on run "verse"; the text into out. */
static void complete(char *out, size_t n) {
    dgd_resp r;
    long st = dgd_http(&D, "POST", "/v1/completions", "{\"model\":\"verse\",\"prompt\":"
                       "\"the dragon \",\"max_tokens\":64,\"temperature\":0,"
                       "\"ignore_eos\":true}", -1, NULL, &r);
    ck_assert_msg(st == 200, "completion: %ld %s", st, r.body);
    ck_assert_ptr_nonnull(r.json);
    const char *t = json_string_value(json_object_get(
        json_array_get(json_object_get(r.json, "choices"), 0), "text"));
    ck_assert_ptr_nonnull(t);
    snprintf(out, n, "%s", t);
    dgd_resp_free(&r);
}

START_TEST(gpu_sessions_match_cpu) {
    if (n_gpus("gpu_sessions_match_cpu") <= 0) return;
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    json_t *sys = dgd_get_json(&D, "/v1/system");
    ck_assert_ptr_nonnull(sys);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(sys, "inference"),
                                                       "device")), "cuda:0");
    json_decref(sys);
    /* learn the verse well enough that greedy decoding has clear winners */
    char body[1200];
    snprintf(body, sizeof body,
             "{\"name\":\"verse\",\"device\":\"cuda\",\"config\":{\"preset\":\"tiny\","
             "\"training\":{\"max_steps\":300,\"batch_size\":16,\"block_size\":64}},"
             "\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "succeeded", 0, 240));
    static char gpu_text[4096], cpu_text[4096];
    complete(gpu_text, sizeof gpu_text);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 30), 0);
    /* the same data dir, sessions on the CPU */
    ck_assert_int_eq(dgd_start(&D, "--infer-device", "cpu", NULL), 0);
    complete(cpu_text, sizeof cpu_text);
    ck_assert_int_eq(dgd_stop(&D, SIGTERM, 30), 0);
    printf("  greedy on cuda:0: \"%s\"\n  greedy on cpu   : \"%s\"\n", gpu_text, cpu_text);
    ck_assert_uint_gt(strlen(gpu_text), 16);
    ck_assert_str_eq(gpu_text, cpu_text);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("daemon_gpu");
    TCase *t = tcase_create("gpu");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 300);
    tcase_add_test(t, gpu_discovery_and_training);
    tcase_add_test(t, gpu_oom_fails_job_daemon_keeps_serving);
    tcase_add_test(t, gpu_sessions_match_cpu);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
