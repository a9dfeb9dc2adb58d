/* tests/proto/test_cbor.c -- proto/cbor.c: encoder against RFC 8949 Appendix A, decoder on the
 * same vectors (definite and indefinite), malformed input (truncation at every length, random
 * byte flips, hostile lengths, depth), and the f16 / bf16 conversions (exhaustive round trips,
 * round-to-nearest-even checked against the neighbours). */
#include "check_util.h"
#include "proto/cbor.h"
#include "dg.h"

static size_t unhex(const char *hx, uint8_t *out) {
    size_t n = 0;
    for (; hx[0] && hx[1]; hx += 2) {
        unsigned v;
        sscanf(hx, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

static void expect_bytes(const dg_cbor_buf *b, const char *hx, const char *what) {
    uint8_t want[256];
    size_t n = unhex(hx, want);
    char got[600] = "";
    for (size_t i = 0; i < b->len && i < 200; i++) sprintf(got + 2 * i, "%02x", b->buf[i]);
    ck_assert_msg(b->len == n && memcmp(b->buf, want, n) == 0, "%s: got %s want %s", what, got,
                  hx);
}

// ------------------------------------------------------------------------------------------
START_TEST(test_encode_ints) {
    static const struct { uint64_t v; const char *hx; } pos[] = {
        {0, "00"}, {1, "01"}, {10, "0a"}, {23, "17"}, {24, "1818"}, {25, "1819"},
        {100, "1864"}, {255, "18ff"}, {256, "190100"}, {1000, "1903e8"}, {65535, "19ffff"},
        {65536, "1a00010000"}, {1000000, "1a000f4240"}, {4294967295u, "1affffffff"},
        {4294967296ull, "1b0000000100000000"}, {1000000000000ull, "1b000000e8d4a51000"},
        {18446744073709551615ull, "1bffffffffffffffff"},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
        dg_cbor_buf b = {0};
        dg_cbor_put_uint(&b, pos[i].v);
        expect_bytes(&b, pos[i].hx, "uint");
        dg_cbor_buf_free(&b);
    }
    static const struct { int64_t v; const char *hx; } neg[] = {
        {-1, "20"}, {-10, "29"}, {-24, "37"}, {-25, "3818"}, {-100, "3863"}, {-1000, "3903e7"},
        {INT64_MIN, "3b7fffffffffffffff"}, {5, "05"},
    };
    for (size_t i = 0; i < sizeof neg / sizeof neg[0]; i++) {
        dg_cbor_buf b = {0};
        dg_cbor_put_int(&b, neg[i].v);
        expect_bytes(&b, neg[i].hx, "int");
        dg_cbor_buf_free(&b);
    }
}
END_TEST

START_TEST(test_encode_floats_and_simple) {
    static const struct { double v; const char *hx; } fl[] = {
        {0.0, "f90000"}, {-0.0, "f98000"}, {1.0, "f93c00"}, {1.1, "fb3ff199999999999a"},
        {1.5, "f93e00"}, {65504.0, "f97bff"}, {100000.0, "fa47c35000"},
        {3.4028234663852886e+38, "fa7f7fffff"}, {1.0e+300, "fb7e37e43c8800759c"},
        {5.960464477539063e-8, "f90001"}, {0.00006103515625, "f90400"}, {-4.0, "f9c400"},
        {-4.1, "fbc010666666666666"}, {INFINITY, "f97c00"}, {-INFINITY, "f9fc00"},
        {NAN, "f97e00"},
    };
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) {
        dg_cbor_buf b = {0};
        dg_cbor_put_float(&b, fl[i].v);
        expect_bytes(&b, fl[i].hx, "float");
        dg_cbor_buf_free(&b);
    }
    dg_cbor_buf b = {0};
    dg_cbor_put_bool(&b, false);
    dg_cbor_put_bool(&b, true);
    dg_cbor_put_null(&b);
    dg_cbor_put_simple(&b, 16);
    dg_cbor_put_simple(&b, 255);
    expect_bytes(&b, "f4f5f6f0f8ff", "simple");
    dg_cbor_buf_free(&b);
}
END_TEST

START_TEST(test_encode_containers) {
    dg_cbor_buf b = {0};
    dg_cbor_put_str(&b, "");
    dg_cbor_put_str(&b, "a");
    dg_cbor_put_str(&b, "IETF");
    dg_cbor_put_bytes(&b, "\x01\x02\x03\x04", 4);
    expect_bytes(&b, "606161644945544644" "01020304", "strings");
    dg_cbor_buf_free(&b);
    dg_cbor_put_map(&b, 2);
    dg_cbor_put_str(&b, "a");
    dg_cbor_put_uint(&b, 1);
    dg_cbor_put_str(&b, "b");
    dg_cbor_put_array(&b, 2);
    dg_cbor_put_uint(&b, 2);
    dg_cbor_put_uint(&b, 3);
    expect_bytes(&b, "a26161016162820203", "map");
    dg_cbor_buf_free(&b);
    /* a 24-byte text needs the 1-byte length form */
    dg_cbor_put_str(&b, "abcdefghijklmnopqrstuvwx");
    ck_assert_int_eq(b.len, 26);
    ck_assert_int_eq(b.buf[0], 0x78);
    ck_assert_int_eq(b.buf[1], 24);
    dg_cbor_buf_free(&b);
}
END_TEST

// ------------------------------------------------------------------------------------------
/* Appendix A examples that decode; "canon" is what our encoder writes back (same bytes for the
 * definite, shortest ones). */
static const struct { const char *hx, *canon; } vectors[] = {
    {"00", NULL}, {"17", NULL}, {"1818", NULL}, {"1903e8", NULL},
    {"1bffffffffffffffff", NULL}, {"3bffffffffffffffff", NULL}, {"3903e7", NULL},
    {"f90000", NULL}, {"f98000", NULL}, {"f93c00", NULL}, {"fb3ff199999999999a", NULL},
    {"fa47c35000", NULL}, {"f97c00", NULL}, {"f97e00", NULL}, {"fa7f800000", "f97c00"},
    {"fb7ff8000000000000", "f97e00"}, {"f4", NULL}, {"f5", NULL}, {"f6", NULL}, {"f7", NULL},
    {"f0", NULL}, {"f8ff", NULL}, {"c074323031332d30332d32315432303a30343a30305a", NULL},
    {"c249010000000000000000", NULL}, {"4401020304", NULL}, {"60", NULL}, {"6449455446", NULL},
    {"62c3bc", NULL}, {"63e6b0b4", NULL}, {"64f0908591", NULL}, {"80", NULL},
    {"83010203", NULL}, {"8301820203820405", NULL},
    {"98190102030405060708090a0b0c0d0e0f101112131415161718181819", NULL},
    {"a0", NULL}, {"a201020304", NULL}, {"a26161016162820203", NULL},
    {"5f42010243030405ff", "450102030405"},
    {"7f657374726561646d696e67ff", "6973747265616d696e67"},
    {"9fff", "80"}, {"9f018202039f0405ffff", "8301820203820405"},
    {"bf61610161629f0203ffff", "a26161016162820203"},
    {"bf6346756ef563416d7421ff", "a26346756ef563416d7421"},
    {"1800", "00"},                                  /* non-minimal input is accepted */
};

START_TEST(test_decode_vectors) {
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        uint8_t in[128];
        size_t n = unhex(vectors[i].hx, in);
        dg_cbor_doc d;
        char err[256];
        int rc = dg_cbor_decode(in, n, 0, &d, err, sizeof err);
        ck_assert_msg(rc == 0, "%s: %s", vectors[i].hx, err);
        dg_cbor_buf b = {0};
        dg_cbor_put_item(&b, d.root);
        expect_bytes(&b, vectors[i].canon ? vectors[i].canon : vectors[i].hx, vectors[i].hx);
        dg_cbor_buf_free(&b);
        dg_cbor_doc_free(&d);
    }
    /* values of a few */
    uint8_t in[64];
    dg_cbor_doc d;
    char err[256];
    size_t n = unhex("bf61610161629f0203ffff", in);
    ck_assert_int_eq(dg_cbor_decode(in, n, 0, &d, err, sizeof err), 0);
    const dg_cbor_item *a = dg_cbor_map_get(d.root, "a"), *bb = dg_cbor_map_get(d.root, "b");
    ck_assert(a && a->type == DG_CBOR_UINT && a->u == 1);
    ck_assert(bb && bb->type == DG_CBOR_ARRAY && bb->len == 2 && bb->kids[1].u == 3);
    ck_assert_ptr_null(dg_cbor_map_get(d.root, "c"));
    dg_cbor_doc_free(&d);
    n = unhex("7f657374726561646d696e67ff", in);
    ck_assert_int_eq(dg_cbor_decode(in, n, 0, &d, err, sizeof err), 0);
    ck_assert_str_eq(d.root->s, "streaming");
    dg_cbor_doc_free(&d);
    n = unhex("3903e7", in);
    ck_assert_int_eq(dg_cbor_decode(in, n, 0, &d, err, sizeof err), 0);
    ck_assert(d.root->type == DG_CBOR_NEGINT && d.root->u == 999);   /* -1000 */
    dg_cbor_doc_free(&d);
    n = unhex("fb3ff199999999999a", in);
    ck_assert_int_eq(dg_cbor_decode(in, n, 0, &d, err, sizeof err), 0);
    ck_assert(d.root->type == DG_CBOR_FLOAT && d.root->f == 1.1 && d.root->width == 8);
    dg_cbor_doc_free(&d);
}
END_TEST

static int decode_hex(const char *hx, char *err, size_t errlen) {
    uint8_t in[512];
    size_t n = unhex(hx, in);
    dg_cbor_doc d;
    int rc = dg_cbor_decode(in, n, 0, &d, err, errlen);
    dg_cbor_doc_free(&d);
    return rc;
}

START_TEST(test_decode_malformed) {
    static const char *bad[] = {
        "",                     /* nothing */
        "1c", "3d", "5e", "7f", /* reserved ai / unterminated indefinite text */
        "ff",                   /* break outside indefinite */
        "f818",                 /* two-byte simple < 32 */
        "62c328",               /* invalid UTF-8 */
        "63eda080",             /* UTF-8 surrogate */
        "62c0af",               /* overlong */
        "1f", "3f", "df",       /* indefinite int / tag */
        "5f6161ff",             /* text chunk inside byte string */
        "5f5f4100ffff",         /* nested indefinite chunk */
        "bf6161ff",             /* indefinite map, key without value */
        "9b7fffffffffffffff00", /* hostile array length */
        "bb00000000ffffffff",   /* hostile map length */
        "5b00000000ffffffff00", /* hostile byte-string length */
        "a1616100",             /* ok map... followed below by trailing data check */
    };
    char err[256];
    for (size_t i = 0; i + 1 < sizeof bad / sizeof bad[0]; i++) {
        int rc = decode_hex(bad[i], err, sizeof err);
        ck_assert_msg(rc == DG_ECORRUPT, "'%s' gave %d", bad[i], rc);
        ck_assert_msg(strstr(err, "CBOR at byte") != NULL, "%s: message '%s'", bad[i], err);
    }
    ck_assert_int_eq(decode_hex("a1616100", err, sizeof err), 0);
    ck_assert_int_eq(decode_hex("a161610000", err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "trailing"), "%s", err);
    /* depth: 128 nested arrays decode, 200 do not */
    uint8_t deep[256];
    memset(deep, 0x81, sizeof deep);
    dg_cbor_doc d;
    deep[128] = 0x00;
    ck_assert_int_eq(dg_cbor_decode(deep, 129, 0, &d, err, sizeof err), 0);
    dg_cbor_doc_free(&d);
    memset(deep, 0x81, sizeof deep);
    deep[200] = 0x00;
    ck_assert_int_eq(dg_cbor_decode(deep, 201, 0, &d, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "nesting"), "%s", err);
}
END_TEST

/* A document with every construct, to cut and corrupt. */
static void build_rich(dg_cbor_buf *b) {
    dg_cbor_put_map(b, 4);
    dg_cbor_put_str(b, "tensors");
    dg_cbor_put_map(b, 2);
    for (int t = 0; t < 2; t++) {
        dg_cbor_put_str(b, t ? "encoder_v" : "embed.weight");
        dg_cbor_put_map(b, 4);
        dg_cbor_put_str(b, "dtype");
        dg_cbor_put_str(b, "F32");
        dg_cbor_put_str(b, "shape");
        dg_cbor_put_array(b, 3);
        dg_cbor_put_uint(b, 4);
        dg_cbor_put_uint(b, 256);
        dg_cbor_put_uint(b, 70000);
        dg_cbor_put_str(b, "data_offsets");
        dg_cbor_put_array(b, 2);
        dg_cbor_put_uint(b, 0);
        dg_cbor_put_uint(b, 5000000000ull);
        dg_cbor_put_str(b, "param_id");
        dg_cbor_put_uint(b, 9876543210123456789ull);
    }
    dg_cbor_put_str(b, "scalars");
    dg_cbor_put_array(b, 5);
    dg_cbor_put_float(b, 1.5);
    dg_cbor_put_float(b, 0.1);
    dg_cbor_put_int(b, -70000);
    dg_cbor_put_bool(b, true);
    dg_cbor_put_null(b);
    dg_cbor_put_str(b, "bytes");
    dg_cbor_put_bytes(b, "\x00\x01\x02", 3);
    dg_cbor_put_str(b, "t\xc3\xa9xt");
    dg_cbor_put_tag(b, 1);
    dg_cbor_put_uint(b, 1700000000);
}

START_TEST(test_truncation_everywhere) {
    dg_cbor_buf b = {0};
    build_rich(&b);
    dg_cbor_doc d;
    char err[256];
    ck_assert_int_eq(dg_cbor_decode(b.buf, b.len, 0, &d, err, sizeof err), 0);
    dg_cbor_buf r = {0};
    dg_cbor_put_item(&r, d.root);
    ck_assert(r.len == b.len && memcmp(r.buf, b.buf, b.len) == 0);
    dg_cbor_buf_free(&r);
    dg_cbor_doc_free(&d);
    for (size_t n = 0; n < b.len; n++) {
        /* a copy of exactly n bytes so that ASan would see any over-read */
        uint8_t *cut = dg_malloc(n + 1);
        memcpy(cut, b.buf, n);
        int rc = dg_cbor_decode(cut, n, 0, &d, err, sizeof err);
        ck_assert_msg(rc == DG_ECORRUPT, "prefix of %zu/%zu bytes decoded (rc %d)", n, b.len, rc);
        dg_free(cut);
    }
    dg_cbor_buf_free(&b);
}
END_TEST

START_TEST(test_random_flips) {
    dg_cbor_buf b = {0};
    build_rich(&b);
    dg_rng rng;
    dg_rng_seed(&rng, 12345);
    uint8_t *m = dg_malloc(b.len);
    int ok = 0, bad = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(m, b.buf, b.len);
        int flips = 1 + (int)dg_rng_below(&rng, 4);
        for (int f = 0; f < flips; f++) {
            size_t at = (size_t)dg_rng_below(&rng, b.len);
            if (dg_rng_below(&rng, 2)) m[at] ^= (uint8_t)(1u << dg_rng_below(&rng, 8));
            else m[at] = (uint8_t)dg_rng_next(&rng);
        }
        dg_cbor_doc d;
        char err[256];
        int rc = dg_cbor_decode(m, b.len, 0, &d, err, sizeof err);
        ck_assert_msg(rc == 0 || rc == DG_ECORRUPT, "rc %d", rc);
        if (rc == 0) {
            /* whatever decoded must re-encode and decode again */
            dg_cbor_buf r = {0};
            dg_cbor_put_item(&r, d.root);
            dg_cbor_doc d2;
            ck_assert_int_eq(dg_cbor_decode(r.buf, r.len, 0, &d2, err, sizeof err), 0);
            ck_assert_int_eq(d2.n_items, d.n_items);
            dg_cbor_doc_free(&d2);
            dg_cbor_buf_free(&r);
            ok++;
        } else {
            bad++;
        }
        dg_cbor_doc_free(&d);
    }
    ck_assert(ok > 0 && bad > 0);
    dg_free(m);
    dg_cbor_buf_free(&b);
}
END_TEST

// ------------------------------------------------------------------------------------------
static float bits_to_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

START_TEST(test_f16_exhaustive_and_rne) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dg_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            ck_assert(isnan(dg_f16_to_f32(dg_f32_to_f16(f))));
            continue;
        }
        ck_assert_msg(dg_f32_to_f16(f) == h, "h=%04x f=%g back=%04x", h, f, dg_f32_to_f16(f));
    }
    ck_assert_int_eq(dg_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);        /* tie -> even */
    ck_assert_int_eq(dg_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);    /* tie -> even (up) */
    ck_assert_int_eq(dg_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_int_eq(dg_f32_to_f16(65520.0f), 0x7c00);               /* rounds to inf */
    ck_assert_int_eq(dg_f32_to_f16(0x1p-24f), 0x0001);
    ck_assert_int_eq(dg_f32_to_f16(0x1p-25f), 0x0000);               /* tie -> even 0 */
    ck_assert_int_eq(dg_f32_to_f16(3 * 0x1p-26f), 0x0001);
    ck_assert_int_eq(dg_f32_to_f16(-2.0f), 0xc000);
    ck_assert_int_eq(dg_f32_to_f16(0.5f), 0x3800);
    /* random f32: the result is the nearest f16, ties to even */
    dg_rng rng;
    dg_rng_seed(&rng, 7);
    for (int i = 0; i < 200000; i++) {
        float x = bits_to_f((uint32_t)dg_rng_next(&rng));
        if (isnan(x) || fabsf(x) >= 65504.0f) continue;
        uint16_t h = dg_f32_to_f16(x);
        double got = dg_f16_to_f32(h), dx = x;
        double e = fabs(got - dx);
        for (int s = -1; s <= 1; s += 2) {
            uint16_t nb = (uint16_t)(h + s);
            if (((h & 0x7fff) == 0 && s < 0) || (nb & 0x7c00) == 0x7c00) continue;
            double en = fabs((double)dg_f16_to_f32(nb) - dx);
            ck_assert_msg(e < en || (e == en && (h & 1) == 0), "x=%a h=%04x", (double)x, h);
        }
    }
}
END_TEST

START_TEST(test_bf16) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dg_bf16_to_f32((uint16_t)h);
        if (isnan(f)) {
            ck_assert(isnan(dg_bf16_to_f32(dg_f32_to_bf16(f))));
            continue;
        }
        ck_assert_int_eq(dg_f32_to_bf16(f), h);
    }
    ck_assert_int_eq(dg_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);         /* tie -> even */
    ck_assert_int_eq(dg_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    ck_assert_int_eq(dg_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    ck_assert(isnan(dg_bf16_to_f32(dg_f32_to_bf16(bits_to_f(0x7f800001u)))));  /* sNaN stays NaN */
    ck_assert_int_eq(dg_f32_to_bf16(INFINITY), 0x7f80);
}
END_TEST

static Suite *cbor_suite(void) {
    Suite *s = suite_create("cbor");
    TCase *tc = tcase_create("cbor");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_encode_ints);
    tcase_add_test(tc, test_encode_floats_and_simple);
    tcase_add_test(tc, test_encode_containers);
    tcase_add_test(tc, test_decode_vectors);
    tcase_add_test(tc, test_decode_malformed);
    tcase_add_test(tc, test_truncation_everywhere);
    tcase_add_test(tc, test_random_flips);
    tcase_add_test(tc, test_f16_exhaustive_and_rne);
    tcase_add_test(tc, test_bf16);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(cbor_suite)
