/* tests/server/test_exports_unit.c -- the thread-pool halves of server/exports.c and
 * server/models_import.c without a daemon: Range header parsing (206 / whole file / 416 cases of
 * RFC 9110), model names, dg_export_bundle on a real checkpoint file (burnpack with parts: the
 * file list, sizes and sha256 match the files) and dg_model_import_file (a native checkpoint with
 * the same parameters; an existing model is refused; a bad bundle leaves nothing behind).
 * Thread affinity: single-threaded. */
#include "check_util.h"
#include "engine/ckpt.h"
#include "proto/cbor.h"
#include "proto/sha256.h"
#include "server/exports.h"
#include "server/models_import.h"

START_TEST(range_parse) {
    uint64_t s = 0, l = 0;
    ck_assert_int_eq(dg_http_range_parse(NULL, 100, &s, &l), 1);
    ck_assert_int_eq(dg_http_range_parse("bytes=0-9", 100, &s, &l), 0);
    ck_assert(s == 0 && l == 10);
    ck_assert_int_eq(dg_http_range_parse("bytes=90-", 100, &s, &l), 0);
    ck_assert(s == 90 && l == 10);
    ck_assert_int_eq(dg_http_range_parse("bytes=-30", 100, &s, &l), 0);
    ck_assert(s == 70 && l == 30);
    ck_assert_int_eq(dg_http_range_parse("bytes=-300", 100, &s, &l), 0);    /* whole file */
    ck_assert(s == 0 && l == 100);
    ck_assert_int_eq(dg_http_range_parse("bytes=50-5000", 100, &s, &l), 0); /* clipped */
    ck_assert(s == 50 && l == 50);
    ck_assert_int_eq(dg_http_range_parse("bytes=99-99", 100, &s, &l), 0);
    ck_assert(s == 99 && l == 1);
    ck_assert_int_eq(dg_http_range_parse("bytes=100-", 100, &s, &l), DG_ERANGE);
    ck_assert_int_eq(dg_http_range_parse("bytes=200-300", 100, &s, &l), DG_ERANGE);
    ck_assert_int_eq(dg_http_range_parse("bytes=-0", 100, &s, &l), DG_ERANGE);
    ck_assert_int_eq(dg_http_range_parse("bytes=0-", 0, &s, &l), DG_ERANGE);
    /* ignorable: other units, several ranges, garbage, reversed */
    ck_assert_int_eq(dg_http_range_parse("items=0-1", 100, &s, &l), 1);
    ck_assert_int_eq(dg_http_range_parse("bytes=0-1,5-6", 100, &s, &l), 1);
    ck_assert_int_eq(dg_http_range_parse("bytes=a-b", 100, &s, &l), 1);
    ck_assert_int_eq(dg_http_range_parse("bytes=9-3", 100, &s, &l), 1);
    ck_assert_int_eq(dg_http_range_parse("bytes=99999999999999999999999-", 100, &s, &l), 1);
}
END_TEST

START_TEST(model_names) {
    ck_assert(dg_model_name_ok("tiny"));
    ck_assert(dg_model_name_ok("exp_01a2.f16-v1"));
    ck_assert(!dg_model_name_ok(""));
    ck_assert(!dg_model_name_ok(".hidden"));
    ck_assert(!dg_model_name_ok("-x"));
    ck_assert(!dg_model_name_ok("a/b"));
    ck_assert(!dg_model_name_ok("../x"));
    ck_assert(!dg_model_name_ok("sp ace"));
    char l[80];
    memset(l, 'a', 65);
    l[65] = 0;
    ck_assert(!dg_model_name_ok(l));
}
END_TEST

static void make_ckpt_file(const char *path, dg_ckpt *ck) {
    memset(ck, 0, sizeof *ck);
    dg_model_config_default(&ck->model);
    dg_train_config_default(&ck->train);
    ck->model.n_layer = 2;
    ck->model.n_embd = 32;
    ck->model.n_head = 2;
    ck->model.mlp_mult = 4;
    const char *text = "To be, or not to be, that is the question";
    ck_assert_int_eq(dg_tokenizer_fit_char(text, strlen(text), &ck->tokenizer), 0);
    ck->model.vocab_size = dg_tokenizer_vocab(ck->tokenizer);
    ck->n_params = dg_model_n_params(&ck->model);
    ck->params = dg_malloc((size_t)ck->n_params * sizeof(float));
    dg_rng rng;
    dg_rng_seed(&rng, 7);
    for (int64_t i = 0; i < ck->n_params; i++) ck->params[i] = dg_rng_normal(&rng) * 0.05f;
    char err[256];
    ck_assert_msg(dg_ckpt_write(path, ck, err, sizeof err) == 0, "%s", err);
}

START_TEST(bundle_and_import) {
    char *dir = dg_test_tmpdir("xunit");
    char ck_path[700], out[700], err[1024];
    snprintf(ck_path, sizeof ck_path, "%s/c.dck", dir);
    dg_ckpt ck;
    make_ckpt_file(ck_path, &ck);
    snprintf(out, sizeof out, "%s/exp1", dir);
    dg_export_file *files = NULL;
    int n = 0;
    int rc = dg_export_bundle(ck_path, out, DG_EXPORT_BURNPACK, DG_DTYPE_BF16, 16384, &files, &n,
                              err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_ge(n, 4);
    ck_assert_str_eq(files[0].name, "model.bpk");
    ck_assert_str_eq(files[1].name, "model.bpk.parts.json");
    ck_assert_str_eq(files[2].name, "model.bpk.part-00000.bpk");
    for (int i = 0; i < n; i++) {
        char p[900], hex[65];
        uint64_t sz;
        snprintf(p, sizeof p, "%s/%s", out, files[i].name);
        ck_assert_int_eq(dg_sha256_file(p, hex, &sz, err, sizeof err), 0);
        ck_assert_str_eq(hex, files[i].sha256);
        ck_assert_int_eq(sz, files[i].bytes);
        if (i >= 2) ck_assert_int_le(files[i].bytes, 16384);
    }
    dg_free(files);
    /* import the parts (by manifest) as a model */
    char models[700], man[800], dck[900];
    snprintf(models, sizeof models, "%s/models", dir);
    snprintf(man, sizeof man, "%s/model.bpk.parts.json", out);
    rc = dg_model_import_file(man, models, "m1", "{}", err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    snprintf(dck, sizeof dck, "%s/m1/model.dck", models);
    dg_ckpt back;
    ck_assert_msg(dg_ckpt_read(dck, false, &back, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(back.n_params, ck.n_params);
    for (int64_t i = 0; i < ck.n_params; i++)
        ck_assert(back.params[i] == dg_bf16_to_f32(dg_f32_to_bf16(ck.params[i])));
    ck_assert_int_eq(back.model.n_embd, 32);
    dg_ckpt_free(&back);
    ck_assert_int_eq(dg_model_import_file(man, models, "m1", "{}", err, sizeof err), DG_EEXIST);
    /* a bad bundle leaves no model directory */
    char bad[800];
    snprintf(bad, sizeof bad, "%s/model.bpk.part-00001.bpk", out);
    ck_assert_int_eq(unlink(bad), 0);
    rc = dg_model_import_file(man, models, "m2", "{}", err, sizeof err);
    ck_assert_int_ne(rc, 0);
    ck_assert_msg(strstr(err, "part 1"), "%s", err);
    snprintf(dck, sizeof dck, "%s/m2", models);
    ck_assert_int_ne(access(dck, F_OK), 0);
    /* a safetensors bundle of the same checkpoint */
    snprintf(out, sizeof out, "%s/exp2", dir);
    rc = dg_export_bundle(ck_path, out, DG_EXPORT_SAFETENSORS, DG_DTYPE_F32, 0, &files, &n, err,
                          sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(files[0].name, "model.safetensors");
    dg_free(files);
    /* a missing checkpoint says so */
    rc = dg_export_bundle("/nonexistent.dck", out, DG_EXPORT_BURNPACK, DG_DTYPE_F32, 0, &files,
                          &n, err, sizeof err);
    ck_assert_int_ne(rc, 0);
    ck_assert_msg(strstr(err, "reading the checkpoint"), "%s", err);
    dg_ckpt_free(&ck);
    free(dir);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("exports_unit");
    TCase *tc = tcase_create("exports_unit");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, range_parse);
    tcase_add_test(tc, model_names);
    tcase_add_test(tc, bundle_and_import);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
