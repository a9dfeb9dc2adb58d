/* tests/proto/test_safetensors.c -- proto/safetensors.c: exact bytes of a small file, round
 * trips (f32 exact, f16 / bf16 = the RNE conversion), a file laid out the way other writers do
 * (data not in name order, header padded, other dtypes), and every validation rule. */
#include "check_util.h"
#include "proto/safetensors.h"
#include "dg.h"

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = dg_malloc((size_t)len + 1);
    ck_assert_int_eq(fread(p, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return p;
}

/* A file from a header string and data bytes (header length is strlen(hdr)). */
static size_t make_file(uint8_t *out, const char *hdr, const void *data, size_t dn) {
    uint64_t n = strlen(hdr);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(n >> (8 * i));
    memcpy(out + 8, hdr, n);
    if (dn) memcpy(out + 8 + n, data, dn);
    return 8 + n + dn;
}

START_TEST(test_exact_bytes) {
    char *dir = dg_test_tmpdir("st");
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    static const float b[2] = {1.0f, -2.0f}, a[3] = {0.5f, 0.25f, 8.0f};
    dg_bpk_entry e[2] = {{.name = "b", .ndim = 1, .shape = {2}, .f32 = b},
                         {.name = "a", .ndim = 2, .shape = {1, 3}, .f32 = a}};
    dg_bpk_kv kv[2] = {{"z", "1"}, {"format", "pt"}};
    char sha[65];
    uint64_t nb;
    ck_assert_int_eq(dg_st_write(path, e, 2, DG_DTYPE_F32, kv, 2, &nb, sha, err, sizeof err), 0);
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\",\"z\":\"1\"},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1,3],\"data_offsets\":[0,12]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}";
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    size_t n;
    uint8_t *got = slurp(path, &n);
    ck_assert_int_eq(n, 8 + padded + 20);
    ck_assert_int_eq(nb, n);
    ck_assert_int_eq(got[0] | got[1] << 8, padded);
    for (int i = 2; i < 8; i++) ck_assert_int_eq(got[i], 0);
    ck_assert(memcmp(got + 8, hdr, hl) == 0);
    for (size_t i = hl; i < padded; i++) ck_assert_int_eq(got[8 + i], ' ');
    ck_assert(memcmp(got + 8 + padded, a, 12) == 0);
    ck_assert(memcmp(got + 8 + padded + 12, b, 8) == 0);
    uint8_t d[32];
    char hx[65];
    dg_sha256(got, n, d);
    dg_sha256_hex(d, hx);
    ck_assert_str_eq(hx, sha);
    dg_free(got);
    free(dir);
}
END_TEST

START_TEST(test_round_trip) {
    char *dir = dg_test_tmpdir("st");
    dg_rng rng;
    dg_rng_seed(&rng, 5);
    enum { N1 = 1000, N2 = 70000 };
    float *x1 = dg_malloc(N1 * sizeof(float)), *x2 = dg_malloc(N2 * sizeof(float));
    for (int i = 0; i < N1; i++) x1[i] = dg_rng_normal(&rng);
    for (int i = 0; i < N2; i++) x2[i] = dg_rng_normal(&rng) * 1e-2f;
    dg_bpk_entry e[3] = {{.name = "encoder", .ndim = 3, .shape = {4, 10, 25}, .f32 = x1},
                         {.name = "encoder_v", .ndim = 2, .shape = {700, 100}, .f32 = x2},
                         {.name = "s", .ndim = 0, .f32 = x1}};
    const char *cfg = "{\"model\": {\"n_layer\": 2}, \"q\": \"a \\\"quoted\\\"\\nline \xc3\xa9\"}";
    dg_bpk_kv kv[2] = {{"dragond.config", cfg}, {"format", "dragond"}};
    const dg_dtype dts[3] = {DG_DTYPE_F32, DG_DTYPE_F16, DG_DTYPE_BF16};
    for (int k = 0; k < 3; k++) {
        char path[600], err[512];
        snprintf(path, sizeof path, "%s/rt%d.safetensors", dir, k);
        ck_assert_int_eq(dg_st_write(path, e, 3, dts[k], kv, 2, NULL, NULL, err, sizeof err), 0);
        dg_st_t *s;
        ck_assert_msg(dg_st_open(path, &s, err, sizeof err) == 0, "%s", err);
        ck_assert_int_eq(dg_st_n_tensors(s), 3);
        ck_assert_str_eq(dg_st_meta_get(s, "dragond.config"), cfg);
        ck_assert_str_eq(dg_st_meta_get(s, "format"), "dragond");
        ck_assert_str_eq(dg_st_tensor_at(s, 0)->name, "encoder");
        ck_assert_str_eq(dg_st_tensor_at(s, 1)->name, "encoder_v");
        for (int t = 0; t < 3; t++) {
            int i = dg_st_find(s, e[t].name);
            const dg_st_tensor *ti = dg_st_tensor_at(s, i);
            ck_assert_str_eq(ti->dtype, dg_bpk_dtype_name(dts[k]));
            ck_assert_int_eq(ti->ndim, e[t].ndim);
            float *back = dg_malloc((size_t)ti->numel * sizeof(float));
            ck_assert_int_eq(dg_st_read_f32(s, i, back, ti->numel, err, sizeof err), 0);
            for (int64_t q = 0; q < ti->numel; q++) {
                float v = e[t].f32[q];
                float want = k == 0 ? v : k == 1 ? dg_f16_to_f32(dg_f32_to_f16(v))
                                                 : dg_bf16_to_f32(dg_f32_to_bf16(v));
                ck_assert_msg(back[q] == want, "%s[%lld]", e[t].name, (long long)q);
            }
            dg_free(back);
        }
        ck_assert_int_eq(dg_st_read_f32(s, 0, x1, 5, err, sizeof err), DG_ESHAPE);
        dg_st_close(s);
    }
    dg_free(x1);
    dg_free(x2);
    free(dir);
}
END_TEST

START_TEST(test_foreign_layout) {
    /* data in the order w, b (not by name), an I64 tensor, F16, metadata last, padded */
    uint8_t data[2 * 2 + 2 * 8];
    uint16_t h[2] = {0x3c00, 0xc000};          /* 1.0, -2.0 */
    memcpy(data, h, 4);
    int64_t ids[2] = {7, -1};
    memcpy(data + 4, ids, 16);
    const char *hdr = "{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                      "\"b\":{\"dtype\":\"I64\",\"shape\":[2,1],\"data_offsets\":[4,20]},"
                      "\"__metadata__\":{\"format\":\"pt\"}}      ";
    uint8_t file[512];
    size_t n = make_file(file, hdr, data, sizeof data);
    dg_st_t *s;
    char err[512];
    ck_assert_msg(dg_st_open_mem(file, n, &s, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(dg_st_n_tensors(s), 2);
    ck_assert_str_eq(dg_st_tensor_at(s, 0)->name, "b");
    ck_assert_str_eq(dg_st_tensor_at(s, 1)->name, "w");
    float v[2];
    ck_assert_int_eq(dg_st_read_f32(s, 1, v, 2, err, sizeof err), 0);
    ck_assert(v[0] == 1.0f && v[1] == -2.0f);
    ck_assert_int_eq(dg_st_read_f32(s, 0, v, 2, err, sizeof err), DG_ENOTSUP);
    ck_assert_str_eq(dg_st_meta_get(s, "format"), "pt");
    dg_st_close(s);
}
END_TEST

static void expect_bad(const char *hdr, const void *data, size_t dn, const char *needle) {
    uint8_t file[1024];
    size_t n = make_file(file, hdr, data, dn);
    dg_st_t *s = NULL;
    char err[512] = "";
    int rc = dg_st_open_mem(file, n, &s, err, sizeof err);
    ck_assert_msg(rc == DG_ECORRUPT, "%s: rc %d", hdr, rc);
    ck_assert_msg(strstr(err, needle), "%s: message '%s' lacks '%s'", hdr, err, needle);
}

START_TEST(test_validation) {
    uint8_t z[64] = {0};
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", z, 4,
               "out of bounds");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", z, 8, "overlaps");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", z, 8, "gap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", z, 8,
               "cover 4 bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", z, 8,
               "8 bytes for 3");
    expect_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", z, 8,
               "unknown dtype");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", z, 8,
               "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", z, 8,
               "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", z, 8, "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", z, 8,
               "header JSON");
    expect_bad("{\"__metadata__\":{\"k\":1}}", z, 0, "not a string");
    expect_bad("{\"a\":", z, 0, "header JSON");
    expect_bad("[1, 2, 3]", z, 0, "start with");
    /* header length fields */
    uint8_t f[32] = {0};
    char err[512];
    dg_st_t *s;
    ck_assert_int_eq(dg_st_open_mem(f, 5, &s, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "truncated"), "%s", err);
    f[0] = 100;                                           /* past the end of a 32-byte file */
    ck_assert_int_eq(dg_st_open_mem(f, 32, &s, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "header length 100 out of bounds"), "%s", err);
    memset(f, 0xff, 8);                                   /* 2^64-1 */
    ck_assert_int_eq(dg_st_open_mem(f, 32, &s, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "out of bounds"), "%s", err);
    /* an empty file of tensors is fine */
    uint8_t ok[64];
    size_t n = make_file(ok, "{}      ", NULL, 0);
    ck_assert_int_eq(dg_st_open_mem(ok, n, &s, err, sizeof err), 0);
    ck_assert_int_eq(dg_st_n_tensors(s), 0);
    dg_st_close(s);
}
END_TEST

START_TEST(test_random_corruption) {
    char *dir = dg_test_tmpdir("st");
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/f.safetensors", dir);
    static const float a[6] = {1, 2, 3, 4, 5, 6};
    dg_bpk_entry e[2] = {{.name = "a", .ndim = 2, .shape = {2, 2}, .f32 = a},
                         {.name = "b", .ndim = 1, .shape = {2}, .f32 = a + 4}};
    dg_bpk_kv kv[1] = {{"k", "v"}};
    ck_assert_int_eq(dg_st_write(path, e, 2, DG_DTYPE_BF16, kv, 1, NULL, NULL, err, sizeof err),
                     0);
    size_t n;
    uint8_t *good = slurp(path, &n), *m = dg_malloc(n);
    dg_rng rng;
    dg_rng_seed(&rng, 77);
    int opened = 0;
    for (int it = 0; it < 5000; it++) {
        memcpy(m, good, n);
        int nf = 1 + (int)dg_rng_below(&rng, 3);
        for (int k = 0; k < nf; k++) m[dg_rng_below(&rng, n)] ^= (uint8_t)dg_rng_next(&rng);
        dg_st_t *s;
        if (dg_st_open_mem(m, n, &s, err, sizeof err) == 0) {
            opened++;
            for (int i = 0; i < dg_st_n_tensors(s); i++) {
                const dg_st_tensor *t = dg_st_tensor_at(s, i);
                ck_assert(t->offset + t->nbytes <= n);
                float tmp[64];
                if (t->numel <= 64) dg_st_read_f32(s, i, tmp, t->numel, err, sizeof err);
            }
            dg_st_close(s);
        }
    }
    ck_assert_int_gt(opened, 0);
    dg_free(m);
    dg_free(good);
    free(dir);
}
END_TEST

static Suite *st_suite(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_exact_bytes);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_foreign_layout);
    tcase_add_test(tc, test_validation);
    tcase_add_test(tc, test_random_corruption);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(st_suite)
