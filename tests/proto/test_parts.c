/* tests/proto/test_parts.c -- proto/sha256.c (FIPS 180-2 vectors) and proto/parts.c: the
 * manifest text of BURNPACK.md §2.3, splitting the §1.10 example (one part identical to the
 * monolith; a forced two-part split with the hashes the doc gives), splitting the Burn-written
 * MNIST file, verified reassembly, and the failures (missing part, wrong size, wrong sha256,
 * tensor in two parts, unsafe paths, bad JSON). */
#include "check_util.h"
#include "proto/parts.h"
#include "dg.h"

static void hex_of(const char *s, size_t n, char out[65]) {
    uint8_t d[32];
    dg_sha256(s, n, d);
    dg_sha256_hex(d, out);
}

START_TEST(test_sha256_vectors) {
    char h[65];
    hex_of("abc", 3, h);
    ck_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m448, strlen(m448), h);
    ck_assert_str_eq(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    hex_of("", 0, h);
    ck_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* a million 'a', fed in uneven pieces */
    char *a = dg_malloc(1000000);
    memset(a, 'a', 1000000);
    dg_sha256_ctx c;
    dg_sha256_init(&c);
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t k = 1000000 - off < step ? 1000000 - off : step;
        dg_sha256_update(&c, a + off, k);
        off += k;
        step = step * 3 % 1000 + 1;
    }
    uint8_t d[32];
    dg_sha256_final(&c, d);
    dg_sha256_hex(d, h);
    ck_assert_str_eq(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    hex_of(a, 1000000, h);
    ck_assert_str_eq(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    /* every length around the padding boundary agrees between one-shot and byte-wise */
    for (size_t n = 50; n < 140; n++) {
        char h2[65];
        hex_of(a, n, h);
        dg_sha256_init(&c);
        for (size_t i = 0; i < n; i++) dg_sha256_update(&c, a + i, 1);
        dg_sha256_final(&c, d);
        dg_sha256_hex(d, h2);
        ck_assert_str_eq(h, h2);
    }
    dg_free(a);
}
END_TEST

START_TEST(test_manifest_text) {
    static const char *doc =
        "{\n"
        "  \"version\": 1,\n"
        "  \"source_file\": \"model-1.bpk\",\n"
        "  \"source_modified_unix_ms\": 1767225600000,\n"
        "  \"total_bytes\": 524,\n"
        "  \"max_part_bytes\": 67108864,\n"
        "  \"parts\": [\n"
        "    {\n"
        "      \"path\": \"model-1.bpk.part-00000.bpk\",\n"
        "      \"bytes\": 524,\n"
        "      \"sha256\": \"e00890a4e3c5c6aa12490587b9cea352413eacfcc80205213861e70ba982ce1d\",\n"
        "      \"tensors\": 2\n"
        "    }\n"
        "  ]\n"
        "}";
    dg_part_entry pe = {.path = "model-1.bpk.part-00000.bpk", .bytes = 524, .tensors = 2};
    strcpy(pe.sha256, "e00890a4e3c5c6aa12490587b9cea352413eacfcc80205213861e70ba982ce1d");
    dg_parts_manifest m = {.version = 1, .source_file = "model-1.bpk",
                           .source_modified_unix_ms = 1767225600000ull, .total_bytes = 524,
                           .max_part_bytes = 67108864, .n_parts = 1, .parts = &pe};
    char *txt = dg_parts_manifest_to_json(&m);
    ck_assert_str_eq(txt, doc);
    dg_free(txt);
    /* parse it back; defaults for missing fields; unknown keys ignored; upper-case sha */
    dg_parts_manifest r;
    char err[512];
    ck_assert_int_eq(dg_parts_manifest_parse(doc, strlen(doc), &r, err, sizeof err), 0);
    ck_assert_int_eq(r.n_parts, 1);
    ck_assert_str_eq(r.parts[0].sha256, pe.sha256);
    ck_assert_int_eq(r.total_bytes, 524);
    ck_assert_int_eq(r.source_modified_unix_ms, 1767225600000ull);
    dg_parts_manifest_free(&r);
    const char *mini = "{\"parts\":[{\"path\":\"x.bpk\",\"sha256\":\" ABCDEF0123456789abcdef01234"
                       "56789abcdef0123456789abcdef0123456789 \",\"extra\":1}],\"zzz\":[]}";
    ck_assert_int_eq(dg_parts_manifest_parse(mini, strlen(mini), &r, err, sizeof err), 0);
    ck_assert_int_eq(r.version, 1);
    ck_assert_str_eq(r.source_file, "");
    ck_assert_int_eq(r.parts[0].bytes, 0);
    ck_assert_str_eq(r.parts[0].sha256,
                     "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    dg_parts_manifest_free(&r);
    /* an empty parts list prints as [] */
    m.n_parts = 0;
    txt = dg_parts_manifest_to_json(&m);
    ck_assert(strstr(txt, "\"parts\": []\n}") != NULL);
    dg_free(txt);
    static const char *bad[] = {"{", "[]", "{\"parts\":[{}]}", "{\"parts\":[{\"path\":1}]}",
                                "{\"version\":2,\"parts\":[]}", "{\"total_bytes\":-1}",
                                "{\"parts\":[{\"path\":\"a\",\"sha256\":\"xyz\"}]}",
                                "{\"parts\":[{\"path\":\"a\"}],\"parts\":[]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = dg_parts_manifest_parse(bad[i], strlen(bad[i]), &r, err, sizeof err);
        ck_assert_msg(rc == DG_ECORRUPT || rc == DG_EVERSION, "%s: rc %d", bad[i], rc);
    }
}
END_TEST

// ------------------------------------------------------------------------------------------

static const float ex_embed[4] = {1, 2, 3, 4};
static const float ex_dec[3] = {0.5f, -1, 2};

static char *write_example(const char *dir) {
    dg_bpk_entry e[2];
    memset(e, 0, sizeof e);
    e[0] = (dg_bpk_entry){.name = "embed.weight", .ndim = 2, .shape = {2, 2}, .f32 = ex_embed};
    e[1] = (dg_bpk_entry){.name = "decoder", .ndim = 1, .shape = {3}, .f32 = ex_dec};
    static const dg_bpk_kv meta[3] = {
        {"format", "burnpack"}, {"producer", "burn"}, {"version", "0.21.0"}};
    dg_bpk_opts o = {.dtype = DG_DTYPE_F32, .meta = meta, .n_meta = 3};
    char *path = dg_malloc(600);
    snprintf(path, 600, "%s/model-1.bpk", dir);
    char err[512];
    ck_assert_int_eq(dg_bpk_write(path, e, 2, &o, NULL, NULL, err, sizeof err), 0);
    return path;
}

static char *pj(const char *a, const char *b) {
    char *s = dg_malloc(700);
    snprintf(s, 700, "%s/%s", a, b);
    return s;
}

START_TEST(test_split_example) {
    char *dir = dg_test_tmpdir("parts");
    char *mono = write_example(dir);
    char err[512];
    dg_parts_manifest m;
    ck_assert_int_eq(dg_parts_write(mono, 64ull << 20, &m, err, sizeof err), 0);
    ck_assert_int_eq(m.n_parts, 1);
    ck_assert_str_eq(m.source_file, "model-1.bpk");
    ck_assert_int_eq(m.total_bytes, 524);
    ck_assert_int_eq(m.max_part_bytes, 67108864);
    ck_assert(m.source_modified_unix_ms > 1600000000000ull);
    ck_assert_str_eq(m.parts[0].path, "model-1.bpk.part-00000.bpk");
    ck_assert_int_eq(m.parts[0].bytes, 524);
    ck_assert_int_eq(m.parts[0].tensors, 2);
    /* §2.3: the single part is byte-identical to the monolith */
    ck_assert_str_eq(m.parts[0].sha256,
                     "e00890a4e3c5c6aa12490587b9cea352413eacfcc80205213861e70ba982ce1d");
    dg_parts_manifest_free(&m);

    /* forced split (the real tool never goes below 1 MiB): 272 + 268 bytes */
    ck_assert_int_eq(dg_parts_write(mono, 400, &m, err, sizeof err), 0);
    ck_assert_int_eq(m.n_parts, 2);
    ck_assert_int_eq(m.parts[0].bytes, 272);
    ck_assert_int_eq(m.parts[1].bytes, 268);
    ck_assert_int_eq(m.parts[0].tensors, 1);
    ck_assert_msg(!strncmp(m.parts[0].sha256, "e3330e29", 8) &&
                  !strcmp(m.parts[0].sha256 + 64 - 9, "6de742d85"), "%s", m.parts[0].sha256);
    ck_assert_msg(!strncmp(m.parts[1].sha256, "87e5b6b9", 8) &&
                  !strcmp(m.parts[1].sha256 + 64 - 9, "fccee4f03"), "%s", m.parts[1].sha256);
    dg_parts_manifest_free(&m);

    /* reassemble */
    char *man = pj(dir, "model-1.bpk.parts.json");
    dg_parts_t *p;
    ck_assert_msg(dg_parts_open(man, true, &p, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(dg_parts_n_parts(p), 2);
    ck_assert_int_eq(dg_parts_n_tensors(p), 2);
    dg_bpk_t *part;
    int idx;
    ck_assert_int_eq(dg_parts_find(p, "embed.weight", &part, &idx), 1);   /* sorted by name */
    ck_assert_ptr_eq(part, dg_parts_part(p, 0));
    ck_assert_str_eq(dg_bpk_meta_get(part, "producer"), "burn");
    float v[4];
    ck_assert_int_eq(dg_bpk_read_f32(part, idx, v, 4, err, sizeof err), 0);
    ck_assert(memcmp(v, ex_embed, sizeof v) == 0);
    ck_assert_int_eq(dg_parts_find(p, "decoder", &part, &idx), 0);
    ck_assert_ptr_eq(part, dg_parts_part(p, 1));
    ck_assert_int_eq(dg_bpk_read_f32(part, idx, v, 3, err, sizeof err), 0);
    ck_assert(memcmp(v, ex_dec, 3 * sizeof(float)) == 0);
    ck_assert_int_eq(dg_parts_find(p, "nope", NULL, NULL), -1);
    dg_parts_close(p);

    /* a re-split into one part removes the stale part-00001 */
    ck_assert_int_eq(dg_parts_write(mono, 1 << 20, NULL, err, sizeof err), 0);
    char *p1 = pj(dir, "model-1.bpk.part-00001.bpk");
    ck_assert_int_eq(access(p1, F_OK), -1);
    dg_free(p1);
    dg_free(man);
    dg_free(mono);
    free(dir);
}
END_TEST

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    ck_assert(f);
    fputs(s, f);
    fclose(f);
}

START_TEST(test_reassembly_failures) {
    char *dir = dg_test_tmpdir("parts");
    char *mono = write_example(dir);
    char err[512];
    ck_assert_int_eq(dg_parts_write(mono, 400, NULL, err, sizeof err), 0);
    char *man = pj(dir, "model-1.bpk.parts.json");
    char *p0 = pj(dir, "model-1.bpk.part-00000.bpk"), *p1 = pj(dir, "model-1.bpk.part-00001.bpk");
    char *keep = pj(dir, "keep.bpk");
    dg_parts_t *p;

    /* missing part */
    ck_assert_int_eq(rename(p1, keep), 0);
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ENOTFOUND);
    ck_assert_msg(strstr(err, "part 1 (model-1.bpk.part-00001.bpk) is missing"), "%s", err);
    ck_assert_int_eq(rename(keep, p1), 0);

    /* same size, one byte changed: sha256 mismatch (and accepted when not verifying) */
    FILE *f = fopen(p0, "r+b");
    fseek(f, 256, SEEK_SET);
    fputc(0x7f, f);
    fclose(f);
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "part 0") && strstr(err, "sha256 mismatch"), "%s", err);
    ck_assert_int_eq(dg_parts_open(man, false, &p, err, sizeof err), 0);
    dg_parts_close(p);

    /* wrong size (after a fresh split) */
    ck_assert_int_eq(dg_parts_write(mono, 400, NULL, err, sizeof err), 0);
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), 0);
    dg_parts_close(p);
    ck_assert_int_eq(truncate(p1, 200), 0);
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "part 1") && strstr(err, "200 bytes, the manifest says 268"), "%s",
                  err);

    /* a tensor in two parts; an unsafe path; no parts; bad JSON */
    ck_assert_int_eq(dg_parts_write(mono, 400, NULL, err, sizeof err), 0);
    write_text(man, "{\"parts\":[{\"path\":\"model-1.bpk.part-00000.bpk\"},"
                    "{\"path\":\"./model-1.bpk.part-00000.bpk\"}]}");
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "'embed.weight' is in part 0 and in part 1"), "%s", err);
    write_text(man, "{\"parts\":[{\"path\":\"../etc/passwd\"}]}");
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ENOTSUP);
    write_text(man, "{\"parts\":[]}");
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "no parts"), "%s", err);
    write_text(man, "{\"parts\":[");
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ECORRUPT);
    /* a part that is not a burnpack */
    write_text(man, "{\"parts\":[{\"path\":\"junk.bpk\"}]}");
    char *junk = pj(dir, "junk.bpk");
    write_text(junk, "this is not a burnpack at all");
    ck_assert_int_eq(dg_parts_open(man, true, &p, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "part 0") && strstr(err, "bad magic"), "%s", err);
    dg_free(junk);
    dg_free(keep);
    dg_free(p0);
    dg_free(p1);
    dg_free(man);
    dg_free(mono);
    free(dir);
}
END_TEST

START_TEST(test_split_burn_file) {
    const char *sh = dg_test_shared_dir();
    if (!sh) {
        printf("SKIP test_split_burn_file: ../shared is absent (set DG_SHARED)\n");
        return;
    }
    char src[1200], err[512];
    snprintf(src, sizeof src, "%s/data/burn-mnist.bpk", sh);
    char *dir = dg_test_tmpdir("parts");
    char *mono = pj(dir, "mnist.bpk");
    /* copy the monolith next to where the parts go */
    dg_bpk_t *b;
    ck_assert_int_eq(dg_bpk_open(src, &b, err, sizeof err), 0);
    size_t cap = (size_t)dg_bpk_file_size(b);
    uint8_t *all = dg_malloc(cap);
    FILE *f = fopen(src, "rb");
    ck_assert_int_eq(fread(all, 1, cap, f), cap);
    fclose(f);
    ck_assert_int_eq(dg_write_file_atomic(mono, all, cap, err, sizeof err), 0);
    const uint64_t budget = 256 << 10;
    dg_parts_manifest m;
    ck_assert_msg(dg_parts_write(mono, budget, &m, err, sizeof err) == 0, "%s", err);
    /* fc1.weight (819 200 bytes) is larger than the budget: alone in its part */
    ck_assert_int_ge(m.n_parts, 3);
    int64_t nt = 0;
    for (int i = 0; i < m.n_parts; i++) {
        nt += m.parts[i].tensors;
        ck_assert(m.parts[i].bytes <= budget || m.parts[i].tensors == 1);
    }
    ck_assert_int_eq(nt, 18);
    dg_parts_manifest_free(&m);
    char *man = pj(dir, "mnist.bpk.parts.json");
    dg_parts_t *p;
    ck_assert_msg(dg_parts_open(man, true, &p, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(dg_parts_n_tensors(p), 18);
    for (int i = 0; i < 18; i++) {
        const dg_bpk_tensor *t = dg_bpk_tensor_at(b, i);
        dg_bpk_t *part;
        int idx;
        ck_assert_int_ge(dg_parts_find(p, t->name, &part, &idx), 0);
        const dg_bpk_tensor *u = dg_bpk_tensor_at(part, idx);
        ck_assert_int_eq(u->param_id, t->param_id);
        ck_assert_str_eq(u->dtype, t->dtype);
        ck_assert_int_eq(u->nbytes, t->nbytes);
        ck_assert_int_eq(u->offset % 256, 0);
        uint8_t *x = dg_malloc(t->nbytes + 1);
        ck_assert_int_eq(dg_bpk_read_raw(part, idx, 0, x, t->nbytes, err, sizeof err), 0);
        ck_assert(memcmp(x, all + t->offset, t->nbytes) == 0);
        dg_free(x);
        ck_assert(dg_bpk_has_metadata(part));              /* written even when empty */
        ck_assert_int_eq(dg_bpk_version(part), 1);
    }
    dg_parts_close(p);
    dg_bpk_close(b);
    dg_free(all);
    dg_free(man);
    dg_free(mono);
    free(dir);
}
END_TEST

static Suite *parts_suite(void) {
    Suite *s = suite_create("parts");
    TCase *tc = tcase_create("parts");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sha256_vectors);
    tcase_add_test(tc, test_manifest_text);
    tcase_add_test(tc, test_split_example);
    tcase_add_test(tc, test_reassembly_failures);
    tcase_add_test(tc, test_split_burn_file);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(parts_suite)
