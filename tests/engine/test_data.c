/* tests/engine/test_data.c -- the dataset split, the seeded random-window loader (determinism,
 * state save/restore, window contents) and the evaluation blocks.
 * Thread affinity: single-threaded test program. */
#include "check_util.h"
#include "data.h"

/* tokens[i] = i, so a window's contents tell where it started */
static int32_t *iota(size_t n) {
    int32_t *t = dg_malloc(sizeof(int32_t) * n);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)i;
    return t;
}

START_TEST(split_and_errors) {
    dg_dataset ds; char err[256] = "";
    ck_assert_int_eq(dg_dataset_init(&ds, iota(1000), 1000, 0.9, 16, err, sizeof err), 0);
    ck_assert_uint_eq(ds.n_tokens, 1000);
    ck_assert_uint_eq(ds.n_train, 900);
    ck_assert_int_eq(dg_loader_steps_per_epoch(&ds, 4, 16), 15);   /* ceil(900 / 64) */
    dg_dataset_free(&ds);

    ck_assert_int_eq(dg_dataset_init(&ds, dg_malloc(4), 0, 0.9, 16, err, sizeof err), DG_EDATA);
    ck_assert_msg(strstr(err, "empty"), "err: %s", err);
    ck_assert_int_eq(dg_dataset_init(&ds, iota(20), 20, 0.9, 18, err, sizeof err), DG_EDATA);
    ck_assert_msg(strstr(err, "block_size") && strstr(err, "19"), "err: %s", err);
    ck_assert_int_eq(dg_dataset_init(&ds, iota(20), 20, 1.5, 4, err, sizeof err), DG_EINVAL);
    ck_assert_msg(strstr(err, "train_frac"), "err: %s", err);
}
END_TEST

START_TEST(windows_and_determinism) {
    dg_dataset ds; char err[256];
    ck_assert_int_eq(dg_dataset_init(&ds, iota(10000), 10000, 0.9, 32, err, sizeof err), 0);
    int B = 8, T = 32;
    int32_t *x = dg_malloc(4 * B * T), *y = dg_malloc(4 * B * T);
    int32_t *x2 = dg_malloc(4 * B * T), *y2 = dg_malloc(4 * B * T);
    dg_loader a, b, c, v;
    dg_loader_init(&a, &ds, B, T, false, 42);
    dg_loader_init(&b, &ds, B, T, false, 42);
    dg_loader_init(&c, &ds, B, T, false, 43);
    dg_loader_init(&v, &ds, B, T, true, 42);
    int differ = 0;
    for (int it = 0; it < 50; it++) {
        dg_loader_next(&a, x, y);
        dg_loader_next(&b, x2, y2);
        ck_assert(memcmp(x, x2, 4 * B * T) == 0 && memcmp(y, y2, 4 * B * T) == 0);
        for (int r = 0; r < B; r++) {
            int32_t s0 = x[r * T];
            ck_assert_int_ge(s0, 0);
            ck_assert_int_le(s0 + T, 8999);                   /* whole window inside train */
            for (int t = 0; t < T; t++) {
                ck_assert_int_eq(x[r * T + t], s0 + t);
                ck_assert_int_eq(y[r * T + t], s0 + t + 1);
            }
        }
        dg_loader_next(&c, x2, y2);
        differ += memcmp(x, x2, 4 * B * T) != 0;
        dg_loader_next(&v, x2, y2);
        for (int r = 0; r < B; r++) {
            ck_assert_int_ge(x2[r * T], 9000);
            ck_assert_int_le(x2[r * T] + T, 9999);
        }
    }
    ck_assert_int_eq(differ, 50);
    ck_assert_uint_eq(a.st.cursor, 50);

    /* saving the state and restoring it into a fresh loader continues the same sequence */
    dg_loader_state saved = a.st;
    int32_t ref[5][8 * 32];
    for (int i = 0; i < 5; i++) dg_loader_next(&a, ref[i], y);
    dg_loader r2;
    dg_loader_init(&r2, &ds, B, T, false, 999);
    r2.st = saved;
    for (int i = 0; i < 5; i++) {
        dg_loader_next(&r2, x, y);
        ck_assert(memcmp(x, ref[i], 4 * B * T) == 0);
    }
    ck_assert_uint_eq(r2.st.cursor, 55);

    /* starts cover the whole range roughly uniformly: min near 0, max near the end */
    int32_t lo = 1 << 30, hi = -1;
    for (int i = 0; i < 400; i++) {
        dg_loader_next(&a, x, y);
        for (int r = 0; r < B; r++) {
            if (x[r * T] < lo) lo = x[r * T];
            if (x[r * T] > hi) hi = x[r * T];
        }
    }
    ck_assert_int_lt(lo, 60);
    ck_assert_int_gt(hi, 8999 - T - 60);
    dg_free(x); dg_free(y); dg_free(x2); dg_free(y2);
    dg_dataset_free(&ds);
}
END_TEST

START_TEST(val_fallback_and_eval_blocks) {
    dg_dataset ds; char err[256];
    /* 100 tokens, T 16: val tail 10 < 17 -> validation reads the train split */
    ck_assert_int_eq(dg_dataset_init(&ds, iota(100), 100, 0.9, 16, err, sizeof err), 0);
    dg_loader v;
    dg_loader_init(&v, &ds, 4, 16, true, 1);
    int32_t x[64], y[64];
    for (int i = 0; i < 20; i++) {
        dg_loader_next(&v, x, y);
        for (int r = 0; r < 4; r++) ck_assert_int_le(x[r * 16] + 16, 89);
    }
    ck_assert_int_eq(dg_eval_blocks(&ds, 16, 0), (90 - 1) / 16);   /* 5 blocks of train */
    dg_eval_block(&ds, 16, 4, x, y);
    ck_assert_int_eq(x[0], 64); ck_assert_int_eq(y[15], 80);
    dg_dataset_free(&ds);

    /* 1000 tokens, T 10: val = [900, 1000) -> 9 blocks of 11 at stride 10 */
    ck_assert_int_eq(dg_dataset_init(&ds, iota(1000), 1000, 0.9, 10, err, sizeof err), 0);
    ck_assert_int_eq(dg_eval_blocks(&ds, 10, 0), 9);
    ck_assert_int_eq(dg_eval_blocks(&ds, 10, 4), 4);
    for (int64_t i = 0; i < 9; i++) {
        dg_eval_block(&ds, 10, i, x, y);
        for (int t = 0; t < 10; t++) {
            ck_assert_int_eq(x[t], 900 + 10 * i + t);
            ck_assert_int_eq(y[t], 901 + 10 * i + t);
        }
    }
    dg_dataset_free(&ds);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, split_and_errors);
    tcase_add_test(tc, windows_and_determinism);
    tcase_add_test(tc, val_fallback_and_eval_blocks);
    suite_add_tcase(s, tc);
    return s;
}
DG_TEST_MAIN(suite)
