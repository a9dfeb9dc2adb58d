/* tests/integration/test_infer_client.c -- the inference commands of the `dragon` client
 * (clients/dragon_infer.c) against a real dragond: `dragon generate --stream` prints what
 * `dragond generate` prints (greedy), non-streamed too; `dragon session new/ls/show/save/rm` and
 * `dragon generate --session` continue a session; errors exit 1 with the server's code. */
#include "infer_util.h"
#include "client_util.h"

START_TEST(client_generate_and_sessions) {
    dgd d;
    dgd_init(&d, "inf-client");
    char data[700];
    snprintf(data, sizeof data, "%s/data", d.dir);
    ck_assert_int_eq(inf_make_model(d.dir, data, "tiny", 20), 0);
    char *ref = inf_cli_generate(d.dir, "tiny", "the dragon", 30);
    ck_assert_int_eq(inf_start(&d), 0);
    dcl_run r;
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "generate", "-m", "tiny", "--stream", "-t", "0",
            "-n", "30", "the dragon");
    char want[4200];
    snprintf(want, sizeof want, "%s\n", ref);
    ck_assert_str_eq(r.out, want);
    dcl_free(&r);
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "generate", "-t", "0", "-n", "30", "the dragon");
    ck_assert_str_eq(r.out, want);                    /* -m defaults to the first model */
    dcl_free(&r);
    /* sessions */
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "session", "new", "-m", "tiny", "the dragon");
    char sid[80];
    snprintf(sid, sizeof sid, "%.*s", (int)strcspn(r.out, "\n"), r.out);
    ck_assert(!strncmp(sid, "sess_", 5));
    dcl_free(&r);
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "generate", "--session", sid, "--stream", "-t", "0",
            "-n", "12", " sleeps");
    ck_assert_int_ge((int)strlen(r.out), 2);
    dcl_free(&r);
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "session", "ls");
    ck_assert_ptr_nonnull(strstr(r.out, sid));
    dcl_free(&r);
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "-o", "json", "session", "show", sid);
    json_t *j = json_loads(r.out, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "n_tokens")), 10 + 7 + 12);
    json_decref(j);
    dcl_free(&r);
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "session", "save", sid);
    ck_assert_ptr_nonnull(strstr(r.out, ".dst"));
    dcl_free(&r);
    DCL_RUN(0, &r, d.dir, d.base, NULL, 30, "session", "rm", sid);
    dcl_free(&r);
    DCL_RUN(1, &r, d.dir, d.base, NULL, 30, "session", "show", sid);
    ck_assert_ptr_nonnull(strstr(r.err, "session_not_found"));
    dcl_free(&r);
    DCL_RUN(1, &r, d.dir, d.base, NULL, 30, "generate", "-m", "nope", "the");
    ck_assert_ptr_nonnull(strstr(r.err, "model_not_found"));
    dcl_free(&r);
    DCL_RUN(2, &r, d.dir, d.base, NULL, 30, "generate", "--bogus", "the");
    dcl_free(&r);
    free(ref);
    ck_assert_int_eq(dgd_stop(&d, SIGTERM, 20), 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("infer_client");
    TCase *t = tcase_create("client");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, client_generate_and_sessions);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
