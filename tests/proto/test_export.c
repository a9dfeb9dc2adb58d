/* tests/proto/test_export.c -- proto/export.c: a real (tiny) model config, a fitted char
 * tokenizer and random parameters go out as burnpack (f32 / f16 / bf16, with and without
 * parts) and safetensors and come back with the same config, tokenizer and values; every
 * bundle carries burn_dragon's DragonNorm tensors (gamma/beta also for a non-affine norm, alpha
 * 1, shift 0); bundles with a wrong, missing or extra tensor, a norm alpha/shift/gamma/beta that
 * dragond's math cannot honour, a foreign file and a vocab mismatch are refused with a message
 * naming the problem, and rwkv_time_decay is tolerated. */
#include "check_util.h"
#include "proto/export.h"
#include "proto/burnpack.h"
#include "proto/parts.h"
#include "dg.h"

static void make_ckpt(dg_ckpt *ck, bool tied_plain) {
    memset(ck, 0, sizeof *ck);
    dg_model_config_default(&ck->model);
    dg_train_config_default(&ck->train);
    ck->model.n_layer = 2;
    ck->model.n_embd = 16;
    ck->model.n_head = 2;
    ck->model.mlp_mult = 4;
    if (tied_plain) {
        ck->model.tie_embeddings = true;
        ck->model.norm = DG_NORM_PLAIN;
    }
    ck->train.lr = 3e-4f;
    const char *text = "First Citizen:\nBefore we proceed any further, hear me speak. \xc3\xa9";
    ck_assert_int_eq(dg_tokenizer_fit_char(text, strlen(text), &ck->tokenizer), 0);
    ck->model.vocab_size = dg_tokenizer_vocab(ck->tokenizer);
    char err[256];
    ck_assert_msg(dg_model_config_validate(&ck->model, err, sizeof err) == 0, "%s", err);
    ck->n_params = dg_model_n_params(&ck->model);
    ck->params = dg_malloc((size_t)ck->n_params * sizeof(float));
    dg_rng rng;
    dg_rng_seed(&rng, 31);
    for (int64_t i = 0; i < ck->n_params; i++) ck->params[i] = dg_rng_normal(&rng) * 0.05f;
}

static void check_same(const dg_ckpt *a, const dg_ckpt *b, dg_dtype dt) {
    ck_assert_int_eq(a->model.n_layer, b->model.n_layer);
    ck_assert_int_eq(a->model.n_embd, b->model.n_embd);
    ck_assert_int_eq(a->model.n_head, b->model.n_head);
    ck_assert_int_eq(a->model.mlp_mult, b->model.mlp_mult);
    ck_assert_int_eq(a->model.vocab_size, b->model.vocab_size);
    ck_assert_int_eq(a->model.norm, b->model.norm);
    ck_assert_int_eq(a->model.tie_embeddings, b->model.tie_embeddings);
    ck_assert_int_eq(a->model.positional, b->model.positional);
    ck_assert(a->train.lr == b->train.lr);
    ck_assert_int_eq(dg_tokenizer_kind(a->tokenizer), dg_tokenizer_kind(b->tokenizer));
    int na, nb;
    const uint32_t *ca = dg_tokenizer_chars(a->tokenizer, &na);
    const uint32_t *cb = dg_tokenizer_chars(b->tokenizer, &nb);
    ck_assert_int_eq(na, nb);
    ck_assert(memcmp(ca, cb, (size_t)na * sizeof(uint32_t)) == 0);
    ck_assert_int_eq(a->n_params, b->n_params);
    for (int64_t i = 0; i < a->n_params; i++) {
        float v = a->params[i];
        float want = dt == DG_DTYPE_F32 ? v : dt == DG_DTYPE_F16
                                                  ? dg_f16_to_f32(dg_f32_to_f16(v))
                                                  : dg_bf16_to_f32(dg_f32_to_bf16(v));
        ck_assert_msg(b->params[i] == want, "param %lld: %g vs %g", (long long)i, b->params[i],
                      want);
    }
}

START_TEST(test_round_trips) {
    char *dir = dg_test_tmpdir("export");
    char path[700], err[512];
    for (int tp = 0; tp < 2; tp++) {
        dg_ckpt ck;
        make_ckpt(&ck, tp == 1);
        const dg_dtype dts[3] = {DG_DTYPE_F32, DG_DTYPE_F16, DG_DTYPE_BF16};
        for (int k = 0; k < 3; k++)
            for (int fmt = 0; fmt < 2; fmt++) {
                snprintf(path, sizeof path, "%s/m%d%d%d.%s", dir, tp, k, fmt,
                         fmt ? "safetensors" : "bpk");
                int rc = dg_export_model(path, fmt, dts[k], &ck, 0, err, sizeof err);
                ck_assert_msg(rc == 0, "%s", err);
                dg_ckpt back;
                rc = dg_import_model(path, &back, err, sizeof err);
                ck_assert_msg(rc == 0, "%s", err);
                check_same(&ck, &back, dts[k]);
                dg_ckpt_free(&back);
            }
        /* names in the file are DESIGN.md §5's */
        snprintf(path, sizeof path, "%s/m%d00.bpk", dir, tp);
        dg_bpk_t *b;
        ck_assert_int_eq(dg_bpk_open(path, &b, err, sizeof err), 0);
        ck_assert_int_eq(dg_bpk_n_tensors(b), tp ? 8 : 9);
        ck_assert_int_ge(dg_bpk_find(b, "embed.weight"), 0);
        ck_assert_int_ge(dg_bpk_find(b, "encoder_v"), 0);
        ck_assert_int_eq(dg_bpk_find(b, "lm_head") >= 0, tp == 0);
        /* what burn_dragon's DragonNorm loads is always there (BURNPACK.md §1.9) */
        float g[16], be[16], al[2], sh[2];
        int ig = dg_bpk_find(b, "norm.gamma"), ib = dg_bpk_find(b, "norm.beta");
        int ia = dg_bpk_find(b, "norm.alpha"), is = dg_bpk_find(b, "norm.shift");
        ck_assert(ig >= 0 && ib >= 0 && ia >= 0 && is >= 0);
        ck_assert_int_eq(dg_bpk_tensor_at(b, ia)->ndim, 1);
        ck_assert_int_eq(dg_bpk_tensor_at(b, ia)->shape[0], 1);
        ck_assert_int_eq(dg_bpk_tensor_at(b, is)->shape[0], 1);
        ck_assert_int_eq(dg_bpk_tensor_at(b, ig)->shape[0], 16);
        ck_assert_int_eq(dg_bpk_read_f32(b, ia, al, 1, err, sizeof err), 0);
        ck_assert_int_eq(dg_bpk_read_f32(b, is, sh, 1, err, sizeof err), 0);
        ck_assert(al[0] == 1.0f && sh[0] == 0.0f);
        ck_assert_int_eq(dg_bpk_read_f32(b, ig, g, 16, err, sizeof err), 0);
        ck_assert_int_eq(dg_bpk_read_f32(b, ib, be, 16, err, sizeof err), 0);
        dg_param_info info[DG_P_COUNT];
        dg_model_param_layout(&ck.model, info);
        for (int j = 0; j < 16; j++) {
            float wg = tp ? 1.0f : ck.params[info[DG_P_GAMMA].offset + (size_t)j];
            float wb = tp ? 0.0f : ck.params[info[DG_P_BETA].offset + (size_t)j];
            ck_assert(g[j] == wg && be[j] == wb);
        }
        const dg_bpk_tensor *t = dg_bpk_tensor_at(b, dg_bpk_find(b, "encoder"));
        ck_assert_int_eq(t->ndim, 3);
        ck_assert_int_eq(t->shape[0], 2);
        ck_assert_int_eq(t->shape[1], 16);
        ck_assert_int_eq(t->shape[2], 32);
        ck_assert_str_eq(dg_bpk_meta_get(b, "producer"), "dragond");
        ck_assert_str_eq(dg_bpk_meta_get(b, "precision"), "f32");
        ck_assert_str_eq(dg_bpk_meta_get(b, "format"), "burnpack");
        dg_bpk_close(b);
        dg_ckpt_free(&ck);
    }
    free(dir);
}
END_TEST

START_TEST(test_parts_bundle) {
    char *dir = dg_test_tmpdir("export");
    char path[700], man[720], err[512];
    dg_ckpt ck, back;
    make_ckpt(&ck, false);
    snprintf(path, sizeof path, "%s/model.bpk", dir);
    snprintf(man, sizeof man, "%s.parts.json", path);
    ck_assert_int_eq(dg_export_model(path, DG_EXPORT_BURNPACK, DG_DTYPE_F16, &ck, 4096, err,
                                     sizeof err), 0);
    dg_parts_t *p;
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), 0);
    ck_assert_int_gt(dg_parts_n_parts(p), 2);
    dg_parts_close(p);
    ck_assert_msg(dg_import_model(man, &back, err, sizeof err) == 0, "%s", err);
    check_same(&ck, &back, DG_DTYPE_F16);
    dg_ckpt_free(&back);
    /* without the monolith, the .bpk path falls back to its parts */
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_msg(dg_import_model(path, &back, err, sizeof err) == 0, "%s", err);
    check_same(&ck, &back, DG_DTYPE_F16);
    dg_ckpt_free(&back);
    /* a corrupted part is named */
    char part[740];
    snprintf(part, sizeof part, "%s.part-00001.bpk", path);
    FILE *f = fopen(part, "r+b");
    fseek(f, -1, SEEK_END);
    fputc(0x55, f);
    fclose(f);
    ck_assert_int_eq(dg_import_model(path, &back, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "part 1") && strstr(err, "sha256"), "%s", err);
    dg_ckpt_free(&ck);
    free(dir);
}
END_TEST

/* Writes a bundle with the good metadata but tensors changed by `how`. */
/* how: 1 lm_head missing, 2 an extra unknown tensor, 3 norm.alpha = 0.5, 4 norm.shift = 0.25,
 * 5 norm.gamma[3] = 2, 6 norm.beta[0] = 0.5, 7 rwkv_time_decay added, 8 norm.alpha / norm.shift
 * left out, 9 norm.alpha of shape [2]. */
static int write_bad(const char *good, const char *out, int how) {
    dg_bpk_t *b;
    char err[512];
    ck_assert_int_eq(dg_bpk_open(good, &b, err, sizeof err), 0);
    dg_bpk_entry e[16];
    dg_bpk_kv kv[8];
    static float val[64], ones[64], zeros[64], decay[2 * 32];
    for (int j = 0; j < 64; j++) ones[j] = 1.0f;
    int n = 0;
    memset(e, 0, sizeof e);
    for (int i = 0; i < dg_bpk_n_tensors(b); i++) {
        const dg_bpk_tensor *t = dg_bpk_tensor_at(b, i);
        if (how == 1 && !strcmp(t->name, "lm_head")) continue;           /* missing */
        e[n] = (dg_bpk_entry){.name = t->name, .ndim = t->ndim, .src = b, .src_index = i};
        memcpy(e[n].shape, t->shape, sizeof t->shape);
        bool al = !strcmp(t->name, "norm.alpha"), sh = !strcmp(t->name, "norm.shift");
        if (how == 8 && (al || sh)) continue;
        if ((how == 3 || how == 9) && al) {
            memcpy(val, ones, sizeof val);
            val[0] = 0.5f;
            if (how == 9) e[n].shape[0] = 2;
            e[n].src = NULL;
            e[n].f32 = val;
        }
        if (how == 4 && sh) {
            memcpy(val, zeros, sizeof val);
            val[0] = 0.25f;
            e[n].src = NULL;
            e[n].f32 = val;
        }
        if ((how == 5 && !strcmp(t->name, "norm.gamma")) ||
            (how == 6 && !strcmp(t->name, "norm.beta"))) {
            memcpy(val, how == 5 ? ones : zeros, sizeof val);
            val[how == 5 ? 3 : 0] = how == 5 ? 2.0f : 0.5f;
            e[n].src = NULL;
            e[n].f32 = val;
        }
        n++;
    }
    static float extra[4];
    if (how == 2) e[n++] = (dg_bpk_entry){.name = "bogus.weight", .ndim = 1, .shape = {1},
                                          .f32 = extra};
    if (how == 7) e[n++] = (dg_bpk_entry){.name = "rwkv_time_decay", .ndim = 2,
                                          .shape = {2, 32}, .f32 = decay};
    for (int i = 0; i < dg_bpk_n_meta(b); i++)
        kv[i] = (dg_bpk_kv){dg_bpk_meta_key(b, i), dg_bpk_meta_value(b, i)};
    dg_bpk_opts o = {.dtype = DG_DTYPE_F32, .meta = kv, .n_meta = dg_bpk_n_meta(b)};
    int rc = dg_bpk_write(out, e, n, &o, NULL, NULL, err, sizeof err);
    dg_bpk_close(b);
    return rc;
}

START_TEST(test_refusals) {
    char *dir = dg_test_tmpdir("export");
    char good[700], bad[700], err[512];
    dg_ckpt ck, back;
    make_ckpt(&ck, false);
    snprintf(good, sizeof good, "%s/good.bpk", dir);
    snprintf(bad, sizeof bad, "%s/bad.bpk", dir);
    ck_assert_int_eq(dg_export_model(good, DG_EXPORT_BURNPACK, DG_DTYPE_F32, &ck, 0, err,
                                     sizeof err), 0);
    ck_assert_int_eq(write_bad(good, bad, 1), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_ESHAPE);
    ck_assert_msg(strstr(err, "missing tensor 'lm_head'"), "%s", err);
    ck_assert_int_eq(write_bad(good, bad, 2), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_ESHAPE);
    ck_assert_msg(strstr(err, "unexpected tensor 'bogus.weight'"), "%s", err);
    /* DragonNorm's fixed parameters (BURNPACK.md §1.9) */
    ck_assert_int_eq(write_bad(good, bad, 3), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_EDATA);
    ck_assert_msg(strstr(err, "'norm.alpha' is 0.5") && strstr(err, "alpha = 1"), "%s", err);
    ck_assert_int_eq(write_bad(good, bad, 4), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_EDATA);
    ck_assert_msg(strstr(err, "'norm.shift' is 0.25") && strstr(err, "shift = 0"), "%s", err);
    ck_assert_int_eq(write_bad(good, bad, 9), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_ESHAPE);
    ck_assert_msg(strstr(err, "'norm.alpha' has shape [2], the config needs [1]"), "%s", err);
    /* rwkv_time_decay is tolerated; alpha / shift may be absent (older dragond exports) */
    for (int how = 7; how <= 8; how++) {
        ck_assert_int_eq(write_bad(good, bad, how), 0);
        ck_assert_msg(dg_import_model(bad, &back, err, sizeof err) == 0, "%d: %s", how, err);
        check_same(&ck, &back, DG_DTYPE_F32);
        dg_ckpt_free(&back);
    }
    /* a non-affine config needs gamma 1 / beta 0 */
    dg_ckpt plain;
    make_ckpt(&plain, true);
    char ppath[700];
    snprintf(ppath, sizeof ppath, "%s/plain.bpk", dir);
    ck_assert_int_eq(dg_export_model(ppath, DG_EXPORT_BURNPACK, DG_DTYPE_BF16, &plain, 0, err,
                                     sizeof err), 0);
    ck_assert_int_eq(write_bad(ppath, bad, 5), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_EDATA);
    ck_assert_msg(strstr(err, "'norm.gamma'[3] is 2") && strstr(err, "non-affine"), "%s", err);
    ck_assert_int_eq(write_bad(ppath, bad, 6), 0);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_EDATA);
    ck_assert_msg(strstr(err, "'norm.beta'[0] is 0.5"), "%s", err);
    ck_assert_int_eq(write_bad(ppath, bad, 8), 0);
    ck_assert_msg(dg_import_model(bad, &back, err, sizeof err) == 0, "%s", err);
    check_same(&plain, &back, DG_DTYPE_BF16);
    dg_ckpt_free(&back);
    dg_ckpt_free(&plain);
    /* a model with a different width against the good file's tensors: the shapes differ */
    dg_ckpt wide;
    make_ckpt(&wide, false);
    wide.model.n_embd = 32;
    dg_free(wide.params);
    wide.n_params = dg_model_n_params(&wide.model);
    wide.params = dg_calloc((size_t)wide.n_params, sizeof(float));
    char wpath[700];
    snprintf(wpath, sizeof wpath, "%s/wide.bpk", dir);
    ck_assert_int_eq(dg_export_model(wpath, DG_EXPORT_BURNPACK, DG_DTYPE_F32, &wide, 0, err,
                                     sizeof err), 0);
    /* wide metadata + narrow tensors */
    dg_bpk_t *w, *g;
    ck_assert_int_eq(dg_bpk_open(wpath, &w, err, sizeof err), 0);
    ck_assert_int_eq(dg_bpk_open(good, &g, err, sizeof err), 0);
    dg_bpk_entry e[16];
    dg_bpk_kv kv[8];
    memset(e, 0, sizeof e);
    int n = dg_bpk_n_tensors(g);
    for (int i = 0; i < n; i++) {
        const dg_bpk_tensor *t = dg_bpk_tensor_at(g, i);
        e[i] = (dg_bpk_entry){.name = t->name, .ndim = t->ndim, .src = g, .src_index = i};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
    }
    for (int i = 0; i < dg_bpk_n_meta(w); i++)
        kv[i] = (dg_bpk_kv){dg_bpk_meta_key(w, i), dg_bpk_meta_value(w, i)};
    dg_bpk_opts o = {.dtype = DG_DTYPE_F32, .meta = kv, .n_meta = dg_bpk_n_meta(w)};
    ck_assert_int_eq(dg_bpk_write(bad, e, n, &o, NULL, NULL, err, sizeof err), 0);
    dg_bpk_close(w);
    dg_bpk_close(g);
    ck_assert_int_eq(dg_import_model(bad, &back, err, sizeof err), DG_ESHAPE);
    char want[128];
    snprintf(want, sizeof want, "tensor 'embed.weight' has shape [%d, 16], the config needs "
             "[%d, 32]", ck.model.vocab_size, ck.model.vocab_size);
    ck_assert_msg(strstr(err, want), "%s", err);
    /* export refuses a vocab mismatch and a short parameter block */
    wide.model.vocab_size += 1;
    ck_assert_int_eq(dg_export_model(wpath, DG_EXPORT_BURNPACK, DG_DTYPE_F32, &wide, 0, err,
                                     sizeof err), DG_ECONFIG);
    wide.model.vocab_size -= 1;
    wide.n_params -= 1;
    ck_assert_int_eq(dg_export_model(wpath, DG_EXPORT_BURNPACK, DG_DTYPE_F32, &wide, 0, err,
                                     sizeof err), DG_ESHAPE);
    dg_ckpt_free(&wide);
    /* a foreign burnpack */
    const char *sh = dg_test_shared_dir();
    if (sh) {
        char p[1200];
        snprintf(p, sizeof p, "%s/data/burn-mnist.bpk", sh);
        ck_assert_int_eq(dg_import_model(p, &back, err, sizeof err), DG_ECORRUPT);
        ck_assert_msg(strstr(err, "no \"dragond.config\"") && strstr(err, "HINT"), "%s", err);
    } else {
        printf("SKIP part of test_refusals: ../shared is absent\n");
    }
    ck_assert_int_eq(dg_import_model("/nonexistent/x.bpk", &back, err, sizeof err),
                     DG_ENOTFOUND);
    dg_ckpt_free(&ck);
    free(dir);
}
END_TEST

static Suite *export_suite(void) {
    Suite *s = suite_create("export");
    TCase *tc = tcase_create("export");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_round_trips);
    tcase_add_test(tc, test_parts_bundle);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(export_suite)
