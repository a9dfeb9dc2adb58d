/* tests/integration/test_openai_client.c -- the official `openai` npm client against a real
 * dragond: runs tests/integration/openai_client/check.mjs (models.list, non-streamed and
 * streamed completions with include_usage, seeded sampling, error envelopes, aborting a stream)
 * with node. Installs the client with `npm ci` (or `npm install`) when node_modules is absent.
 * Skips, with a message, only when npm itself is not installed. */
#include "infer_util.h"

static bool have(const char *prog) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", prog);
    return system(cmd) == 0;
}

START_TEST(openai_npm_client) {
    if (!have("npm") || !have("node")) {
        fprintf(stderr, "SKIP openai_npm_client: npm/node not installed (make deps installs "
                        "nodejs and npm)\n");
        return;
    }
    const char *dir = "tests/integration/openai_client";
    struct stat st;
    ck_assert_msg(stat(dir, &st) == 0, "run from the repository root (%s missing)", dir);
    char cmd[2048];
    if (stat("tests/integration/openai_client/node_modules/openai", &st) != 0) {
        snprintf(cmd, sizeof cmd, "cd %s && (npm ci --no-audit --no-fund || npm install "
                 "--no-audit --no-fund) >&2", dir);
        ck_assert_msg(system(cmd) == 0, "npm could not install the openai package");
    }
    dgd d;
    dgd_init(&d, "inf-npm");
    char data[700];
    snprintf(data, sizeof data, "%s/data", d.dir);
    ck_assert_int_eq(inf_make_model(d.dir, data, "tiny", 20), 0);
    const char *prompt = "the dragon";
    char *expect = inf_cli_generate(d.dir, "tiny", prompt, 24);
    ck_assert_ptr_nonnull(expect);
    ck_assert_int_eq(inf_start(&d), 0);
    char base[128];
    snprintf(base, sizeof base, "%s/v1", d.base);
    setenv("DRAGOND_BASE_URL", base, 1);
    setenv("DRAGOND_MODEL", "tiny", 1);
    setenv("DRAGOND_PROMPT", prompt, 1);
    setenv("DRAGOND_MAX_TOKENS", "24", 1);
    setenv("DRAGOND_EXPECT", expect, 1);
    snprintf(cmd, sizeof cmd, "cd %s && node check.mjs >&2", dir);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "the openai client checks failed (exit %d)", rc);
    /* the client's aborted stream was cancelled on the server */
    double t_end = dgd_now() + 5;
    while (inf_metric(&d, "dragond_gen_cancelled_total") < 1 && dgd_now() < t_end)
        dgd_sleep_ms(20);
    ck_assert(inf_metric(&d, "dragond_gen_cancelled_total") >= 1);
    free(expect);
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("openai_client");
    TCase *t = tcase_create("npm");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, openai_npm_client);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
