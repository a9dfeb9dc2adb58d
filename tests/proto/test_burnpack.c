/* tests/proto/test_burnpack.c -- proto/burnpack.c against a file Burn wrote
 * (../shared/data/burn-mnist.bpk), the worked example of BURNPACK.md §1.10 byte for byte,
 * round trips in f32 / f16 / bf16, and the integrity checks of the reader. */
#include "check_util.h"
#include "proto/burnpack.h"
#include "dg.h"

#include <fcntl.h>

static size_t unhex(const char *hx, uint8_t *out) {
    size_t n = 0;
    for (; hx[0] && hx[1]; hx += 2) {
        if (hx[0] == ' ') { hx--; continue; }
        unsigned v;
        sscanf(hx, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

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

static void spit(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert(f);
    ck_assert_int_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

// ------------------------------------------------------------------------------------------
// (a) the Burn-written golden file

static const struct { const char *name; int ndim; int64_t shape[4]; } mnist[18] = {
    {"conv1.conv.bias", 1, {64}},          {"conv1.conv.weight", 4, {64, 1, 3, 3}},
    {"conv1.norm.beta", 1, {64}},          {"conv1.norm.gamma", 1, {64}},
    {"conv1.norm.running_mean", 1, {64}},  {"conv1.norm.running_var", 1, {64}},
    {"conv2.conv.bias", 1, {64}},          {"conv2.conv.weight", 4, {64, 64, 3, 3}},
    {"conv2.norm.beta", 1, {64}},          {"conv2.norm.gamma", 1, {64}},
    {"conv2.norm.running_mean", 1, {64}},  {"conv2.norm.running_var", 1, {64}},
    {"fc1.bias", 1, {128}},                {"fc1.weight", 2, {1600, 128}},
    {"fc2.bias", 1, {128}},                {"fc2.weight", 2, {128, 128}},
    {"fc3.bias", 1, {10}},                 {"fc3.weight", 2, {128, 10}},
};

static int cmp_start(const void *a, const void *b, void *ctx) {
    dg_bpk_t *bp = ctx;
    uint64_t x = dg_bpk_tensor_at(bp, *(const int *)a)->start;
    uint64_t y = dg_bpk_tensor_at(bp, *(const int *)b)->start;
    return x < y ? -1 : x > y;
}

START_TEST(test_burn_golden) {
    const char *sh = dg_test_shared_dir();
    if (!sh) {
        printf("SKIP test_burn_golden: ../shared is absent (set DG_SHARED)\n");
        return;
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/data/burn-mnist.bpk", sh);
    dg_bpk_t *b;
    char err[512];
    int rc = dg_bpk_open(path, &b, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_int_eq(dg_bpk_file_size(b), 1044776);
    ck_assert_int_eq(dg_bpk_version(b), 1);
    size_t m;
    const uint8_t *meta = dg_bpk_metadata_cbor(b, &m);
    ck_assert_int_eq(m, 1398);
    ck_assert_int_eq(dg_bpk_data_start(b), 1536);
    ck_assert(!dg_bpk_has_metadata(b));
    ck_assert_int_eq(dg_bpk_n_tensors(b), 18);
    for (int i = 0; i < 18; i++) {
        const dg_bpk_tensor *t = dg_bpk_tensor_at(b, i);
        ck_assert_str_eq(t->name, mnist[i].name);       /* bytewise order */
        ck_assert_str_eq(t->dtype, "F32");
        ck_assert_int_eq(t->dtype_id, DG_DTYPE_F32);
        ck_assert_int_eq(t->ndim, mnist[i].ndim);
        for (int j = 0; j < t->ndim; j++) ck_assert_int_eq(t->shape[j], mnist[i].shape[j]);
        ck_assert(t->has_param_id);
        ck_assert_int_eq(t->offset % 256, 0);
        ck_assert_int_eq(t->nbytes, (uint64_t)t->numel * 4);
    }
    /* the data starts with conv1.conv.weight = 42 c3 10 be ... (the first bytes at 0x600) */
    int w = dg_bpk_find(b, "conv1.conv.weight");
    ck_assert_int_eq(dg_bpk_tensor_at(b, w)->offset, 1536);
    float *vals = dg_malloc(576 * sizeof(float));
    ck_assert_int_eq(dg_bpk_read_f32(b, w, vals, 576, err, sizeof err), 0);
    uint32_t u0;
    memcpy(&u0, &vals[0], 4);
    ck_assert_uint_eq(u0, 0xbe10c342u);

    /* re-encoding the decoded metadata reproduces the 1398 bytes */
    dg_cbor_doc d;
    ck_assert_int_eq(dg_cbor_decode(meta, m, 0, &d, err, sizeof err), 0);
    dg_cbor_buf re = {0};
    dg_cbor_put_item(&re, d.root);
    ck_assert_int_eq(re.len, m);
    ck_assert(memcmp(re.buf, meta, m) == 0);
    dg_cbor_buf_free(&re);
    dg_cbor_doc_free(&d);

    /* our writer, fed the tensors in on-disk order with their param ids, reproduces the metadata
     * and then the whole file (padding included) */
    dg_bpk_entry e[18];
    int ix[18];
    for (int i = 0; i < 18; i++) ix[i] = i;
    qsort_r(ix, 18, sizeof(int), cmp_start, b);
    memset(e, 0, sizeof e);
    for (int i = 0; i < 18; i++) {
        const dg_bpk_tensor *t = dg_bpk_tensor_at(b, ix[i]);
        e[i].name = t->name;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        e[i].src = b;
        e[i].src_index = ix[i];
        e[i].has_param_id = true;
        e[i].param_id = t->param_id;
    }
    dg_bpk_opts o = {.dtype = DG_DTYPE_F32};
    uint64_t total;
    ck_assert_int_eq(dg_bpk_plan(e, 18, &o, &re, &total, err, sizeof err), 0);
    ck_assert_int_eq(re.len, m);
    ck_assert(memcmp(re.buf, meta, m) == 0);
    ck_assert_int_eq(total, 1044776);
    dg_cbor_buf_free(&re);
    char *dir = dg_test_tmpdir("bpk");
    char out[600];
    snprintf(out, sizeof out, "%s/copy.bpk", dir);
    char sha[65], sha_src[65];
    uint64_t nb;
    ck_assert_int_eq(dg_bpk_write(out, e, 18, &o, &nb, sha, err, sizeof err), 0);
    ck_assert_int_eq(dg_sha256_file(path, sha_src, NULL, err, sizeof err), 0);
    ck_assert_str_eq(sha, sha_src);
    ck_assert_int_eq(nb, 1044776);
    /* the real file cut short anywhere fails; cut inside the data it says "truncated" */
    size_t fn;
    uint8_t *whole = slurp(path, &fn);
    const size_t cuts[] = {0, 9, 10, 11, 700, 1407, 1408, 1500, 1536, 1537, 500000, fn - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        dg_bpk_t *t;
        int rc2 = dg_bpk_open_mem(whole, cuts[i], &t, err, sizeof err);
        ck_assert_msg(rc2 == DG_ECORRUPT, "cut at %zu: rc %d", cuts[i], rc2);
        ck_assert_msg(cuts[i] < 1408 || strstr(err, "file truncated"), "%zu: %s", cuts[i], err);
    }
    dg_bpk_t *t;
    ck_assert_int_eq(dg_bpk_open_mem(whole, fn, &t, err, sizeof err), 0);
    dg_bpk_close(t);
    dg_free(whole);
    dg_free(vals);
    dg_bpk_close(b);
    free(dir);
}
END_TEST

// ------------------------------------------------------------------------------------------
// (b) BURNPACK.md §1.10, embedded from the doc

static size_t worked_bytes(uint8_t *out) {
    /* the 0xab bytes of header + CBOR from the dump in §1.10, lines 0x00 - 0xaa */
    static const char *lines[] = {
        "4e 52 55 42 01 00 a1 00 00 00 a2 67 74 65 6e 73",
        "6f 72 73 a2 67 64 65 63 6f 64 65 72 a3 65 64 74",
        "79 70 65 63 46 33 32 65 73 68 61 70 65 81 03 6c",
        "64 61 74 61 5f 6f 66 66 73 65 74 73 82 19 01 00",
        "19 01 0c 6c 65 6d 62 65 64 2e 77 65 69 67 68 74",
        "a3 65 64 74 79 70 65 63 46 33 32 65 73 68 61 70",
        "65 82 02 02 6c 64 61 74 61 5f 6f 66 66 73 65 74",
        "73 82 00 10 68 6d 65 74 61 64 61 74 61 a3 66 66",
        "6f 72 6d 61 74 68 62 75 72 6e 70 61 63 6b 68 70",
        "72 6f 64 75 63 65 72 64 62 75 72 6e 67 76 65 72",
        "73 69 6f 6e 66 30 2e 32 31 2e 30",
    };
    memset(out, 0, 524);
    size_t n = 0;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) n += unhex(lines[i], out + n);
    ck_assert_int_eq(n, 0xab);
    n += unhex("00 00 80 3f 00 00 00 40 00 00 40 40 00 00 80 40", out + 0x100);
    n += unhex("00 00 00 3f 00 00 80 bf 00 00 00 40", out + 0x200);
    return 524;
}

static const float ex_embed[4] = {1, 2, 3, 4};
static const float ex_dec[3] = {0.5f, -1, 2};
static const dg_bpk_kv ex_meta[3] = {
    {"version", "0.21.0"}, {"format", "burnpack"}, {"producer", "burn"},   /* sorted on write */
};

static void example_entries(dg_bpk_entry e[2]) {
    memset(e, 0, 2 * sizeof *e);
    e[0].name = "embed.weight";
    e[0].ndim = 2;
    e[0].shape[0] = 2;
    e[0].shape[1] = 2;
    e[0].f32 = ex_embed;
    e[1].name = "decoder";
    e[1].ndim = 1;
    e[1].shape[0] = 3;
    e[1].f32 = ex_dec;
}

static char *write_example(const char *dir, const char *fname, dg_dtype dt, int n_meta,
                           const dg_bpk_kv *meta) {
    dg_bpk_entry e[2];
    example_entries(e);
    dg_bpk_opts o = {.dtype = dt, .meta = meta, .n_meta = n_meta};
    char *path = dg_malloc(600);
    snprintf(path, 600, "%s/%s", dir, fname);
    char err[512];
    int rc = dg_bpk_write(path, e, 2, &o, NULL, NULL, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    return path;
}

START_TEST(test_worked_example) {
    uint8_t want[524];
    ck_assert_int_eq(worked_bytes(want), 524);
    char *dir = dg_test_tmpdir("bpk");
    char *path = write_example(dir, "model-1.bpk", DG_DTYPE_F32, 3, ex_meta);
    size_t n;
    uint8_t *got = slurp(path, &n);
    ck_assert_int_eq(n, 524);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "byte 0x%zx: got %02x want %02x", i, got[i], want[i]);
    char hex[65], err[256];
    ck_assert_int_eq(dg_sha256_file(path, hex, NULL, err, sizeof err), 0);
    ck_assert_str_eq(hex, "e00890a4e3c5c6aa12490587b9cea352413eacfcc80205213861e70ba982ce1d");
    dg_free(got);

    /* the F16 variant: differs in the three places §1.10 lists */
    dg_bpk_kv m4[4] = {ex_meta[0], ex_meta[1], ex_meta[2], {"precision", "f16"}};
    char *p16 = write_example(dir, "model-1_f16.bpk", DG_DTYPE_F16, 4, m4);
    got = slurp(p16, &n);
    ck_assert(got != NULL);
    ck_assert_int_eq(n, 256 + 262);
    ck_assert_int_eq(got[6] | got[7] << 8, 161 + 14);
    uint8_t e16[8], d16[6];
    unhex("00 3c 00 40 00 42 00 44", e16);
    unhex("00 38 00 bc 00 40", d16);
    ck_assert(memcmp(got + 256, e16, 8) == 0);
    ck_assert(memcmp(got + 512, d16, 6) == 0);
    ck_assert(memmem(got, 256, "\x63" "F16", 4) && !memmem(got, 256, "F32", 3));
    const char *fm = memmem(got, 256, "format", 6), *pr = memmem(got, 256, "precision", 9);
    const char *pd = memmem(got, 256, "producer", 8);
    ck_assert(fm && pr && pd && fm < pr && pr < pd);
    /* compared with the F32 file: header length + the "precision" entry, the rest matches */
    dg_bpk_t *b;
    ck_assert_int_eq(dg_bpk_open(p16, &b, err, sizeof err), 0);
    const dg_bpk_tensor *t = dg_bpk_tensor_at(b, dg_bpk_find(b, "decoder"));
    ck_assert_int_eq(t->start, 256);
    ck_assert_int_eq(t->end, 262);
    ck_assert_str_eq(dg_bpk_meta_get(b, "precision"), "f16");
    dg_bpk_close(b);
    dg_free(got);
    dg_free(p16);
    dg_free(path);
    free(dir);
}
END_TEST

// ------------------------------------------------------------------------------------------
// (c) round trips

START_TEST(test_round_trip) {
    char *dir = dg_test_tmpdir("bpk");
    dg_rng rng;
    dg_rng_seed(&rng, 99);
    enum { NT = 5 };
    static const int64_t shp[NT][3] = {{7, 13, 0}, {300, 0, 0}, {2, 3, 65}, {1, 0, 0}, {0, 0, 0}};
    static const int nd[NT] = {2, 1, 3, 1, 0};
    static const char *names[NT] = {"b.weight", "a", "layers.10.w", "layers.2.w", "scalar"};
    float *data[NT];
    dg_bpk_entry e[NT];
    memset(e, 0, sizeof e);
    for (int i = 0; i < NT; i++) {
        int64_t ne = 1;
        for (int j = 0; j < nd[i]; j++) ne *= shp[i][j];
        data[i] = dg_malloc((size_t)ne * sizeof(float));
        for (int64_t k = 0; k < ne; k++)
            data[i][k] = dg_rng_normal(&rng) * (k % 3 == 0 ? 1e-3f : k % 3 == 1 ? 1.f : 300.f);
        e[i].name = names[i];
        e[i].ndim = nd[i];
        memcpy(e[i].shape, shp[i], sizeof shp[i]);
        e[i].f32 = data[i];
        e[i].has_param_id = i == 2;
        e[i].param_id = 9876543210123456789ull;
    }
    const dg_dtype dts[3] = {DG_DTYPE_F32, DG_DTYPE_F16, DG_DTYPE_BF16};
    for (int k = 0; k < 3; k++) {
        char path[600], err[512];
        snprintf(path, sizeof path, "%s/rt%d.bpk", dir, k);
        dg_bpk_opts o = {.dtype = dts[k], .always_meta = true};
        ck_assert_int_eq(dg_bpk_write(path, e, NT, &o, NULL, NULL, err, sizeof err), 0);
        dg_bpk_t *b;
        ck_assert_msg(dg_bpk_open(path, &b, err, sizeof err) == 0, "%s", err);
        ck_assert(dg_bpk_has_metadata(b));
        ck_assert_int_eq(dg_bpk_n_meta(b), 0);
        ck_assert_int_eq(dg_bpk_n_tensors(b), NT);
        /* map order is bytewise: "layers.10.w" < "layers.2.w" */
        ck_assert_str_eq(dg_bpk_tensor_at(b, 0)->name, "a");
        ck_assert_str_eq(dg_bpk_tensor_at(b, 2)->name, "layers.10.w");
        ck_assert_str_eq(dg_bpk_tensor_at(b, 3)->name, "layers.2.w");
        for (int i = 0; i < NT; i++) {
            int j = dg_bpk_find(b, names[i]);
            ck_assert_int_ge(j, 0);
            const dg_bpk_tensor *t = dg_bpk_tensor_at(b, j);
            ck_assert_str_eq(t->dtype, dg_bpk_dtype_name(dts[k]));
            ck_assert_int_eq(t->ndim, nd[i]);
            ck_assert_int_eq(t->offset % 256, 0);
            ck_assert_int_eq(t->has_param_id, i == 2);
            if (i == 2) ck_assert(t->param_id == 9876543210123456789ull);
            float *back = dg_malloc((size_t)t->numel * sizeof(float) + 4);
            ck_assert_int_eq(dg_bpk_read_f32(b, j, back, t->numel, err, sizeof err), 0);
            if (k == 0) {
                ck_assert(memcmp(back, data[i], (size_t)t->numel * 4) == 0);   /* exact */
            } else {
                /* f16: relative 2^-11 in the normal range (|x| >= 2^-14) plus 2^-25 absolute
                 * for subnormals; bf16: relative 2^-8. And exactly the RNE conversion. */
                double rtol = k == 1 ? 0x1p-11 : 0x1p-8, atol = k == 1 ? 0x1p-25 : 0;
                ck_assert_int_eq(dg_check_close(names[i], back, data[i], t->numel, atol, rtol), 0);
                for (int64_t q = 0; q < t->numel; q++) {
                    float want = k == 1 ? dg_f16_to_f32(dg_f32_to_f16(data[i][q]))
                                        : dg_bf16_to_f32(dg_f32_to_bf16(data[i][q]));
                    ck_assert(back[q] == want);
                }
            }
            dg_free(back);
        }
        dg_bpk_close(b);
    }
    for (int i = 0; i < NT; i++) dg_free(data[i]);
    free(dir);
}
END_TEST

START_TEST(test_writer_rejects) {
    char *dir = dg_test_tmpdir("bpk");
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/x.bpk", dir);
    dg_bpk_entry e[2];
    example_entries(e);
    e[1].name = "embed.weight";
    dg_bpk_opts o = {.dtype = DG_DTYPE_F32};
    ck_assert_int_eq(dg_bpk_write(path, e, 2, &o, NULL, NULL, err, sizeof err), DG_EINVAL);
    ck_assert_msg(strstr(err, "duplicate"), "%s", err);
    ck_assert_int_eq(access(path, F_OK), -1);                  /* nothing left behind */
    example_entries(e);
    dg_bpk_kv dup[2] = {{"a", "1"}, {"a", "2"}};
    o.meta = dup;
    o.n_meta = 2;
    ck_assert_int_eq(dg_bpk_write(path, e, 2, &o, NULL, NULL, err, sizeof err), DG_EINVAL);
    o.n_meta = 0;
    o.dtype = DG_DTYPE_I32;
    ck_assert_int_eq(dg_bpk_write(path, e, 2, &o, NULL, NULL, err, sizeof err), DG_EINVAL);
    /* a directory that does not exist */
    o.dtype = DG_DTYPE_F32;
    snprintf(path, sizeof path, "%s/no/such/dir/x.bpk", dir);
    ck_assert_int_lt(dg_bpk_write(path, e, 2, &o, NULL, NULL, err, sizeof err), 0);
    free(dir);
}
END_TEST

// ------------------------------------------------------------------------------------------
// (d) integrity

static int open_bytes(const char *dir, const uint8_t *p, size_t n, char *err, size_t errlen) {
    char path[600];
    snprintf(path, sizeof path, "%s/mut.bpk", dir);
    spit(path, p, n);
    dg_bpk_t *b = NULL;
    int rc = dg_bpk_open(path, &b, err, errlen);
    dg_bpk_close(b);
    /* the in-memory reader must agree */
    char err2[512];
    int rc2 = dg_bpk_open_mem(p, n, &b, err2, sizeof err2);
    dg_bpk_close(b);
    ck_assert_int_eq(rc, rc2);
    return rc;
}

START_TEST(test_integrity) {
    uint8_t good[524], m[524];
    worked_bytes(good);
    char *dir = dg_test_tmpdir("bpk");
    char err[512];
    ck_assert_int_eq(open_bytes(dir, good, 524, err, sizeof err), 0);

    /* truncated file: every cut fails, a cut in the data says "truncated" */
    for (size_t n = 0; n < 524; n++) {
        int rc = open_bytes(dir, good, n, err, sizeof err);
        ck_assert_msg(rc == DG_ECORRUPT, "cut at %zu: rc %d", n, rc);
        if (n < 10 || n >= 0xab) ck_assert_msg(strstr(err, "truncated"), "%zu: %s", n, err);
    }
    open_bytes(dir, good, 520, err, sizeof err);
    ck_assert_msg(strstr(err, "file truncated") && strstr(err, "524"), "%s", err);

    /* flipped magic */
    memcpy(m, good, 524);
    m[0] ^= 0x20;
    ck_assert_int_eq(open_bytes(dir, m, 524, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "bad magic"), "%s", err);

    /* version from the future */
    memcpy(m, good, 524);
    m[4] = 2;
    ck_assert_int_eq(open_bytes(dir, m, 524, err, sizeof err), DG_EVERSION);

    /* bad metadata length: over the limit, past the file, one short, one long */
    const uint32_t lens[4] = {0xfffffff0u, 600, 160, 162};
    for (int i = 0; i < 4; i++) {
        memcpy(m, good, 524);
        for (int k = 0; k < 4; k++) m[6 + k] = (uint8_t)(lens[i] >> (8 * k));
        ck_assert_int_eq(open_bytes(dir, m, 524, err, sizeof err), DG_ECORRUPT);
        if (i < 2) ck_assert_msg(strstr(err, "bad metadata length"), "%s", err);
        else ck_assert_msg(strstr(err, "metadata") && strstr(err, "not valid CBOR"), "%s", err);
    }

    /* tensor out of bounds: decoder's data_offsets [256, 268] -> [4096, 4108] */
    memcpy(m, good, 524);
    ck_assert(m[0x3d] == 0x19 && m[0x3e] == 0x01 && m[0x40] == 0x19 && m[0x41] == 0x01);
    m[0x3e] = 0x10;
    m[0x41] = 0x10;
    ck_assert_int_eq(open_bytes(dir, m, 524, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "'decoder' out of bounds"), "%s", err);

    /* overlap: decoder [0, 12] on top of embed.weight [0, 16] */
    memcpy(m, good, 524);
    /* keep the 3-byte forms: 19 00 00, 19 00 0c */
    m[0x3d] = 0x19; m[0x3e] = 0x00; m[0x3f] = 0x00;
    m[0x40] = 0x19; m[0x41] = 0x00; m[0x42] = 0x0c;
    ck_assert_int_eq(open_bytes(dir, m, 524, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "overlap"), "%s", err);

    /* size that does not match the shape: decoder end 268 -> 264 */
    memcpy(m, good, 524);
    m[0x42] = 0x08;
    ck_assert_int_eq(open_bytes(dir, m, 524, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "'decoder'") && strstr(err, "expected 12"), "%s", err);

    /* random corruption never crashes; what opens can be read */
    dg_rng rng;
    dg_rng_seed(&rng, 4242);
    for (int it = 0; it < 3000; it++) {
        memcpy(m, good, 524);
        int nf = 1 + (int)dg_rng_below(&rng, 3);
        for (int f = 0; f < nf; f++) m[dg_rng_below(&rng, 0xab)] ^= (uint8_t)dg_rng_next(&rng);
        dg_bpk_t *b;
        if (dg_bpk_open_mem(m, 524, &b, err, sizeof err) == 0) {
            for (int i = 0; i < dg_bpk_n_tensors(b); i++) {
                const dg_bpk_tensor *t = dg_bpk_tensor_at(b, i);
                ck_assert(t->offset + t->nbytes <= 524);
                if (t->dtype_id >= 0 && t->numel < 1000) {
                    float tmp[1000];
                    dg_bpk_read_f32(b, i, tmp, t->numel, err, sizeof err);
                }
            }
            dg_bpk_close(b);
        }
    }
    free(dir);
}
END_TEST

static Suite *burnpack_suite(void) {
    Suite *s = suite_create("burnpack");
    TCase *tc = tcase_create("burnpack");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_burn_golden);
    tcase_add_test(tc, test_worked_example);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_integrity);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(burnpack_suite)
