/* tests/proto/test_config_json.c -- config JSON (the shipped presets, round trips, unknown
 * fields, wrong types, rule violations, parse errors with line:column) and tokenizer.json
 * (round trips, newer versions, damaged documents). Thread affinity: single-threaded. */
#include "check_util.h"
#include "proto/config_json.h"
#include "proto/tokenizer_json.h"

#include <dirent.h>

/* config/models/<name>.json from the repository root (cwd of `make test`, or $DG_BUILD/..). */
static const char *preset(const char *name) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "config/models/%s.json", name);
    if (access(buf, R_OK) == 0) return buf;
    const char *b = getenv("DG_BUILD");
    if (b) {
        snprintf(buf, sizeof buf, "%s/../config/models/%s.json", b, name);
        if (access(buf, R_OK) == 0) return buf;
    }
    ck_abort_msg("cannot find config/models/%s.json (run from the repository root)", name);
    return NULL;
}

static int from_str(const char *js, dg_model_config *m, dg_train_config *t, char *err, size_t n) {
    json_error_t je;
    json_t *root = json_loads(js, 0, &je);
    ck_assert_msg(root != NULL, "test JSON does not parse: %s", je.text);
    int rc = dg_config_from_json(root, m, t, err, n);
    json_decref(root);
    return rc;
}

START_TEST(presets) {
    dg_model_config m; dg_train_config t; char err[512] = "";
    ck_assert_msg(dg_config_load_file(preset("base"), &m, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.n_layer, 4); ck_assert_int_eq(m.n_embd, 256);
    ck_assert_int_eq(m.n_head, 4); ck_assert_int_eq(m.mlp_mult, 4);
    ck_assert_int_eq(m.positional, DG_POS_ALIBI); ck_assert_int_eq(m.norm, DG_NORM_AFFINE);
    ck_assert_int_eq(m.init, DG_INIT_BURN_DRAGON);
    ck_assert(m.dropout == 0.1f && m.n_alibi_slopes == 0 && !m.tie_embeddings);
    ck_assert_int_eq(t.batch_size, 24); ck_assert_int_eq(t.block_size, 512);
    ck_assert_int_eq(t.max_steps, 2460); ck_assert_int_eq(t.schedule, DG_LR_COSINE);
    ck_assert(t.lr == 1e-3f && t.min_lr == 5e-5f && t.weight_decay == 0.1f && t.eps == 1e-5f);
    ck_assert(t.beta1 == 0.9f && t.beta2 == 0.999f);
    ck_assert_int_eq(t.tokenizer, DG_TOK_CHAR);

    ck_assert_msg(dg_config_load_file(preset("paper"), &m, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.n_layer, 6); ck_assert_int_eq(m.mlp_mult, 128);
    ck_assert_int_eq(dg_model_latent(&m), 8192);
    ck_assert_int_eq(m.positional, DG_POS_ROPE); ck_assert(m.rope_theta == 65536.0f);
    ck_assert_int_eq(m.norm, DG_NORM_PLAIN); ck_assert_int_eq(m.init, DG_INIT_NORMAL);
    ck_assert_int_eq(t.batch_size, 32); ck_assert_int_eq(t.max_steps, 3000);
    ck_assert(t.eps == 1e-8f); ck_assert_int_eq(t.schedule, DG_LR_CONSTANT);
    ck_assert_int_eq(t.tokenizer, DG_TOK_BYTE);

    ck_assert_msg(dg_config_load_file(preset("tiny"), &m, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.n_layer, 2); ck_assert_int_eq(m.n_embd, 32); ck_assert_int_eq(m.n_head, 2);
    ck_assert_int_eq(t.block_size, 32); ck_assert_int_eq(t.batch_size, 8);
    ck_assert_int_eq(t.tokenizer, DG_TOK_CHAR);

    /* the issue-6 quality recipe: the paper model with its own regularisation and schedule */
    ck_assert_msg(dg_config_load_file(preset("paper-5min"), &m, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.n_layer, 6); ck_assert_int_eq(dg_model_latent(&m), 8192);
    ck_assert_int_eq(m.positional, DG_POS_ROPE); ck_assert(m.dropout == 0.5f);
    ck_assert_int_eq(t.max_steps, 650); ck_assert_int_eq(t.schedule, DG_LR_COSINE);
    ck_assert(t.lr == 1.5e-3f && t.min_lr == 5e-5f && t.weight_decay == 1.0f && t.grad_clip == 1.0f);
    ck_assert_int_eq(t.warmup_steps, 50); ck_assert_int_eq(t.tokenizer, DG_TOK_BYTE);

    /* every preset has a description and round-trips */
    const char *names[] = {"tiny", "base", "paper", "paper-5min"};
    for (int i = 0; i < 4; i++) {
        json_error_t je;
        json_t *doc = json_load_file(preset(names[i]), 0, &je);
        ck_assert_ptr_nonnull(doc);
        ck_assert(json_is_string(json_object_get(doc, "description")));
        ck_assert_int_eq(dg_config_from_json(doc, &m, &t, err, sizeof err), 0);
        json_t *a = dg_config_to_json(&m, &t);
        dg_model_config m2; dg_train_config t2;
        ck_assert_msg(dg_config_from_json(a, &m2, &t2, err, sizeof err) == 0, "%s", err);
        json_t *b = dg_config_to_json(&m2, &t2);
        ck_assert(json_equal(a, b));
        /* the file's own fields all come back with the same values */
        const char *sect[] = {"model", "training"};
        for (int s = 0; s < 2; s++) {
            const char *k; json_t *v;
            json_object_foreach(json_object_get(doc, sect[s]), k, v) {
                json_t *w = json_object_get(json_object_get(a, sect[s]), k);
                ck_assert_msg(w != NULL, "%s: /%s/%s not written", names[i], sect[s], k);
                if (json_is_number(v))
                    ck_assert_msg(fabs(json_number_value(v) - json_number_value(w)) <=
                                  1e-7 * fabs(json_number_value(v)),
                                  "%s: /%s/%s differs", names[i], sect[s], k);
                else
                    ck_assert_msg(json_equal(v, w), "%s: /%s/%s differs", names[i], sect[s], k);
            }
        }
        json_decref(a); json_decref(b); json_decref(doc);
    }
}
END_TEST

START_TEST(round_trip_all_fields) {
    dg_model_config m; dg_train_config t; char err[512] = "";
    const char *js =
        "{\"name\":\"x\",\"model\":{\"n_layer\":3,\"n_embd\":48,\"n_head\":3,"
        "\"latent_total\":384,\"vocab_size\":100,\"dropout\":0.25,\"positional\":\"alibi\","
        "\"alibi_slopes\":[0.5,0.25,0.125],\"norm\":\"layer_norm\",\"norm_eps\":1e-6,"
        "\"relu_threshold\":0.01,\"init\":\"normal_0.02\",\"init_std\":0.03,"
        "\"tie_embeddings\":true},"
        "\"training\":{\"batch_size\":5,\"block_size\":64,\"chunk_size\":16,\"max_steps\":77,"
        "\"epochs\":1.5,\"lr\":0.002,\"min_lr\":0.0001,\"warmup_steps\":7,"
        "\"lr_schedule\":\"constant\",\"weight_decay\":0.05,\"beta1\":0.8,\"beta2\":0.95,"
        "\"eps\":1e-7,\"grad_clip\":1.0,\"grad_accum\":2,\"log_interval\":3,"
        "\"eval_interval\":11,\"eval_iters\":4,\"ckpt_interval\":13,\"keep_checkpoints\":5,"
        "\"seed\":9007199254740993,\"tokenizer\":\"byte\",\"train_frac\":0.8}}";
    ck_assert_msg(from_str(js, &m, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.mlp_mult, 8);
    ck_assert_int_eq(m.n_alibi_slopes, 3); ck_assert(m.alibi_slopes[2] == 0.125f);
    ck_assert(m.tie_embeddings); ck_assert_int_eq(m.norm, DG_NORM_PLAIN);
    ck_assert_int_eq(t.chunk, 16); ck_assert(t.epochs == 1.5);
    ck_assert_uint_eq(t.seed, 9007199254740993ull);
    json_t *a = dg_config_to_json(&m, &t);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(a, "model"),
                                                        "mlp_internal_dim_multiplier")), 8);
    ck_assert(json_real_value(json_object_get(json_object_get(a, "training"), "lr")) == 0.002);
    dg_model_config m2; dg_train_config t2;
    ck_assert_msg(dg_config_from_json(a, &m2, &t2, err, sizeof err) == 0, "%s", err);
    json_t *b = dg_config_to_json(&m2, &t2);
    ck_assert(json_equal(a, b));
    ck_assert(m2.alibi_slopes[1] == 0.25f && t2.lr == 0.002f && t2.beta2 == 0.95f);
    json_decref(a); json_decref(b);
}
END_TEST

START_TEST(errors) {
    dg_model_config m; dg_train_config t; char err[512];
    struct { const char *js; const char *want;
    } cases[] = {
        {"{\"model\":{\"n_heads\":4}}", "/model/n_heads: unknown field"},
        {"{\"trainig\":{}}", "/trainig: unknown field"},
        {"{\"training\":{\"lr\":\"fast\"}}", "/training/lr: expected a number"},
        {"{\"training\":{\"batch_size\":2.5}}", "/training/batch_size: expected an integer"},
        {"{\"training\":{\"seed\":-1}}", "/training/seed: must be >= 0"},
        {"{\"model\":{\"n_layer\":4294967296}}", "/model/n_layer: out of range"},
        {"{\"model\":{\"tie_embeddings\":1}}", "/model/tie_embeddings: expected true or false"},
        {"{\"model\":{\"positional\":\"alibi2\"}}",
         "/model/positional: expected one of \"alibi\", \"rope\", \"pope\""},
        {"{\"training\":{\"tokenizer\":\"bpe\"}}", "/training/tokenizer: expected one of"},
        {"{\"model\":{\"n_head\":3}}", "/model/n_head: must divide"},
        {"{\"training\":{\"lr\":-1}}", "/training/lr: must be > 0"},
        {"{\"model\":{\"mlp_internal_dim_multiplier\":4,\"latent_total\":1024}}",
         "/model/latent_total: mutually exclusive"},
        {"{\"model\":{\"latent_total\":1000}}", "/model/latent_total: must be a positive multiple"},
        {"{\"model\":{\"alibi_slopes\":[1,2]}}",
         "/model/alibi_slopes: expected null or n_head (4)"},
        {"{\"model\":{\"alibi_slopes\":[1,2,\"x\",4]}}",
         "/model/alibi_slopes/2: expected a number"},
        {"{\"model\":[1]}", "/model: expected an object"},
        {"{\"name\":5}", "/name: expected a string"},
        {"[1,2]", "/: expected an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = 0;
        ck_assert_int_eq(from_str(cases[i].js, &m, &t, err, sizeof err), DG_ECONFIG);
        ck_assert_msg(strstr(err, cases[i].want) == err, "case %zu: got \"%s\", want \"%s...\"",
                      i, err, cases[i].want);
    }
    /* an empty object is the defaults */
    ck_assert_int_eq(from_str("{}", &m, &t, err, sizeof err), 0);
    dg_model_config dm; dg_model_config_default(&dm);
    ck_assert_int_eq(m.n_layer, dm.n_layer);
}
END_TEST

START_TEST(files) {
    char *dir = dg_test_tmpdir("cfg");
    char path[600], err[512];
    dg_model_config m; dg_train_config t;
    snprintf(path, sizeof path, "%s/broken.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\n  \"model\": {\n    \"n_layer\": ,\n  }\n}\n", f);
    fclose(f);
    ck_assert_int_eq(dg_config_load_file(path, &m, &t, err, sizeof err), DG_ECONFIG);
    char want[700];
    snprintf(want, sizeof want, "%s:3:", path);
    ck_assert_msg(strstr(err, want) == err, "%s", err);
    f = fopen(path, "w");
    fputs("{\"model\": {\"n_layer\": 1, \"n_layer\": 2}}", f);
    fclose(f);
    ck_assert_int_eq(dg_config_load_file(path, &m, &t, err, sizeof err), DG_ECONFIG);
    ck_assert_msg(strstr(err, "duplicate"), "%s", err);
    f = fopen(path, "w");
    fputs("{\"model\": {\"n_heads\": 1}}", f);
    fclose(f);
    ck_assert_int_eq(dg_config_load_file(path, &m, &t, err, sizeof err), DG_ECONFIG);
    ck_assert_msg(strstr(err, "/model/n_heads: unknown field"), "%s", err);
    unlink(path);
    snprintf(path, sizeof path, "%s/none.json", dir);
    ck_assert_int_eq(dg_config_load_file(path, &m, &t, err, sizeof err), DG_ENOTFOUND);
    rmdir(dir);
    free(dir);
}
END_TEST

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0; struct dirent *e;
    while ((e = readdir(d))) if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

START_TEST(tokenizer_json) {
    char *dir = dg_test_tmpdir("tokjson");
    char path[600], err[512] = "";
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    const char txt[] = "Fair is foul \xE2\x9C\x93 \xF0\x9F\x90\x89 \xFF\x80";
    dg_tokenizer_t *t, *r;
    ck_assert_int_eq(dg_tokenizer_fit_char(txt, sizeof txt - 1, &t), 0);
    ck_assert_msg(dg_tokenizer_save_json(path, t, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(dg_tokenizer_save_json(path, t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(count_files(dir), 1);
    ck_assert_msg(dg_tokenizer_load_json(path, &r, err, sizeof err) == 0, "%s", err);
    int na, nb;
    const uint32_t *a = dg_tokenizer_chars(t, &na), *b = dg_tokenizer_chars(r, &nb);
    ck_assert_int_eq(na, nb);
    ck_assert(memcmp(a, b, 4 * (size_t)na) == 0);
    int32_t *ids; size_t k; char *out; size_t on;
    ck_assert_int_eq(dg_tokenizer_encode(r, txt, sizeof txt - 1, true, &ids, &k, err, sizeof err),
                     0);
    ck_assert_int_eq(dg_tokenizer_decode(t, ids, k, &out, &on), 0);
    ck_assert_uint_eq(on, sizeof txt - 1);
    ck_assert(memcmp(out, txt, on) == 0);
    dg_free(ids); dg_free(out);
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "format")), "dragond-tokenizer");
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "version")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "kind")), "char");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(doc, "chars"), 0)), 'F');
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(doc, "specials"), "unk")),
                     3);
    json_decref(doc);
    dg_tokenizer_free(r); dg_tokenizer_free(t);

    dg_tokenizer_byte(&t);
    ck_assert_int_eq(dg_tokenizer_save_json(path, t, err, sizeof err), 0);
    ck_assert_msg(dg_tokenizer_load_json(path, &r, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(dg_tokenizer_kind(r), DG_TOK_BYTE);
    ck_assert_int_eq(dg_tokenizer_vocab(r), 259);
    dg_tokenizer_free(r); dg_tokenizer_free(t);

    struct { const char *js; int rc; const char *want; } cases[] = {
        {"{\"format\":\"dragond-tokenizer\",\"version\":2,\"kind\":\"char\"}", DG_EVERSION,
         "tokenizer version 2 > supported 1; HINT: upgrade dragond"},
        {"{\"format\":\"hf\",\"version\":1}", DG_ECORRUPT, "not a dragond tokenizer"},
        {"{\"format\":\"dragond-tokenizer\",\"version\":1,\"kind\":\"char\","
         "\"specials\":{\"pad\":0,\"bos\":1,\"eos\":2,\"unk\":3},\"chars\":[65,66,65]}",
         DG_ECORRUPT, "/chars: a code point appears twice"},
        {"{\"format\":\"dragond-tokenizer\",\"version\":1,\"kind\":\"char\","
         "\"specials\":{\"pad\":0,\"bos\":1,\"eos\":2,\"unk\":3},\"chars\":[65,55296]}",
         DG_ECORRUPT, "/chars/1: expected a code point"},
        {"{\"format\":\"dragond-tokenizer\",\"version\":1,\"kind\":\"char\","
         "\"specials\":{\"pad\":1,\"bos\":0,\"eos\":2,\"unk\":3},\"chars\":[65]}",
         DG_ECORRUPT, "/specials: expected"},
        {"{\"format\":\"dragond-tokenizer\",\"version\":1,\"kind\":\"wordpiece\"}",
         DG_ECORRUPT, "/kind: expected"},
        {"{\"format\":\"dragond-tokenizer\",\"version\":1,\"kind\":\"byte\",\"extra\":1}",
         DG_ECORRUPT, "/extra: unknown field"},
        {"{\"format\":\"dragond-tokenizer\",", DG_ECORRUPT, ":1:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        fputs(cases[i].js, f);
        fclose(f);
        err[0] = 0;
        ck_assert_int_eq(dg_tokenizer_load_json(path, &r, err, sizeof err), cases[i].rc);
        ck_assert_ptr_null(r);
        ck_assert_msg(strstr(err, cases[i].want), "case %zu: %s", i, err);
    }
    unlink(path);
    rmdir(dir);
    free(dir);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("config_json");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, presets);
    tcase_add_test(tc, round_trip_all_fields);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, files);
    tcase_add_test(tc, tokenizer_json);
    suite_add_tcase(s, tc);
    return s;
}
DG_TEST_MAIN(suite)
