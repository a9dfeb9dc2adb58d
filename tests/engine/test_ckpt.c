/* tests/engine/test_ckpt.c -- the .dck checkpoint: round trips with and without optimizer
 * state (and with absent tensors), atomic writes leave no temporaries, and every kind of damage
 * (bad magic, newer version, byte flips anywhere, truncation at any length, trailing bytes, a
 * shape that disagrees with the config) fails cleanly with a message instead of crashing or
 * returning different data. Thread affinity: single-threaded test program. */
#include "check_util.h"
#include "ckpt.h"

#include <dirent.h>

static char g_dir[512];

static void setup(void) {
    char *d = dg_test_tmpdir("ckpt");
    snprintf(g_dir, sizeof g_dir, "%s", d);
    free(d);
}

static void teardown(void) {
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(g_dir);
}

/* A small checkpoint: tiny model, char tokenizer (with an escaped byte), random tensors. */
static void make_ckpt(dg_ckpt *c, bool optim, bool tied, dg_norm_kind norm) {
    memset(c, 0, sizeof *c);
    const char txt[] = "To be, or not to be: \xC3\xA9\xFF";
    ck_assert_int_eq(dg_tokenizer_fit_char(txt, sizeof txt - 1, &c->tokenizer), 0);
    dg_model_config_default(&c->model);
    c->model.n_layer = 2; c->model.n_embd = 16; c->model.n_head = 2; c->model.mlp_mult = 4;
    c->model.vocab_size = dg_tokenizer_vocab(c->tokenizer);
    c->model.tie_embeddings = tied;
    c->model.norm = norm;
    c->model.n_alibi_slopes = 2;
    c->model.alibi_slopes[0] = 0.75f; c->model.alibi_slopes[1] = 0.125f;
    dg_train_config_default(&c->train);
    c->train.batch_size = 3; c->train.block_size = 17; c->train.lr = 3e-4f; c->train.seed = 77;
    c->train.max_steps = 1234; c->train.epochs = 2.5; c->train.schedule = DG_LR_CONSTANT;
    c->step = 321;
    dg_rng_seed(&c->loader.rng, 5);
    dg_rng_next(&c->loader.rng);
    c->loader.cursor = 321;
    c->n_params = dg_model_n_params(&c->model);
    dg_rng r; dg_rng_seed(&r, 11);
    c->params = dg_malloc(sizeof(float) * (size_t)c->n_params);
    for (int64_t i = 0; i < c->n_params; i++) c->params[i] = dg_rng_normal(&r);
    if (optim) {
        c->adam_m = dg_malloc(sizeof(float) * (size_t)c->n_params);
        c->adam_v = dg_malloc(sizeof(float) * (size_t)c->n_params);
        for (int64_t i = 0; i < c->n_params; i++) {
            c->adam_m[i] = 0.01f * dg_rng_normal(&r);
            c->adam_v[i] = (float)dg_rng_uniform(&r) * 1e-4f;
        }
    }
}

static void free_made(dg_ckpt *c) {
    dg_tokenizer_free(c->tokenizer);
    dg_free(c->params); dg_free(c->adam_m); dg_free(c->adam_v);
}

/* Same configs, step, loader, tokenizer and tensors (moments only if want_m). */
static bool same(const dg_ckpt *a, const dg_ckpt *b, bool want_m) {
    const dg_model_config *x = &a->model, *y = &b->model;
    bool ok = x->n_layer == y->n_layer && x->n_embd == y->n_embd && x->n_head == y->n_head &&
              x->mlp_mult == y->mlp_mult && x->vocab_size == y->vocab_size &&
              x->dropout == y->dropout && x->positional == y->positional &&
              x->rope_theta == y->rope_theta && x->n_alibi_slopes == y->n_alibi_slopes &&
              x->norm == y->norm && x->norm_eps == y->norm_eps &&
              x->relu_threshold == y->relu_threshold && x->init == y->init &&
              x->init_std == y->init_std && x->tie_embeddings == y->tie_embeddings;
    for (int h = 0; ok && h < x->n_alibi_slopes; h++) ok = x->alibi_slopes[h] == y->alibi_slopes[h];
    const dg_train_config *s = &a->train, *t = &b->train;
    ok = ok && s->batch_size == t->batch_size && s->block_size == t->block_size &&
         s->chunk == t->chunk && s->max_steps == t->max_steps && s->epochs == t->epochs &&
         s->lr == t->lr && s->min_lr == t->min_lr && s->warmup_steps == t->warmup_steps &&
         s->schedule == t->schedule && s->weight_decay == t->weight_decay &&
         s->beta1 == t->beta1 && s->beta2 == t->beta2 && s->eps == t->eps &&
         s->grad_clip == t->grad_clip && s->grad_accum == t->grad_accum &&
         s->log_interval == t->log_interval && s->eval_interval == t->eval_interval &&
         s->eval_iters == t->eval_iters && s->ckpt_interval == t->ckpt_interval &&
         s->keep_checkpoints == t->keep_checkpoints && s->seed == t->seed &&
         s->tokenizer == t->tokenizer && s->train_frac == t->train_frac;
    ok = ok && a->step == b->step && a->loader.cursor == b->loader.cursor &&
         memcmp(a->loader.rng.s, b->loader.rng.s, sizeof a->loader.rng.s) == 0;
    int na, nb;
    const uint32_t *ca = dg_tokenizer_chars(a->tokenizer, &na),
                   *cb = dg_tokenizer_chars(b->tokenizer, &nb);
    ok = ok && dg_tokenizer_kind(a->tokenizer) == dg_tokenizer_kind(b->tokenizer) && na == nb &&
         (na == 0 || memcmp(ca, cb, 4 * (size_t)na) == 0);
    ok = ok && a->n_params == b->n_params &&
         memcmp(a->params, b->params, 4 * (size_t)a->n_params) == 0;
    if (want_m)
        ok = ok && b->adam_m && b->adam_v &&
             memcmp(a->adam_m, b->adam_m, 4 * (size_t)a->n_params) == 0 &&
             memcmp(a->adam_v, b->adam_v, 4 * (size_t)a->n_params) == 0;
    return ok;
}

static int count_files(void) {
    DIR *d = opendir(g_dir);
    int n = 0; struct dirent *e;
    while ((e = readdir(d))) if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

START_TEST(round_trip) {
    char path[600], err[512] = "";
    for (int variant = 0; variant < 4; variant++) {
        bool optim = variant & 1, tied = variant == 2;
        dg_norm_kind norm = variant >= 2 ? DG_NORM_PLAIN : DG_NORM_AFFINE;
        dg_ckpt c, r;
        make_ckpt(&c, optim, tied, norm);
        snprintf(path, sizeof path, "%s/step-%d.dck", g_dir, variant);
        ck_assert_msg(dg_ckpt_write(path, &c, err, sizeof err) == 0, "%s", err);
        ck_assert_int_eq(count_files(), variant + 1);           /* no temporaries left */
        ck_assert_msg(dg_ckpt_read(path, false, &r, err, sizeof err) == 0, "%s", err);
        ck_assert(same(&c, &r, false));
        ck_assert_ptr_null(r.adam_m);
        dg_ckpt_free(&r);
        int rc = dg_ckpt_read(path, true, &r, err, sizeof err);
        if (optim) {
            ck_assert_msg(rc == 0, "%s", err);
            ck_assert(same(&c, &r, true));
            dg_ckpt_free(&r);
        } else {
            ck_assert_int_eq(rc, DG_ENOTFOUND);
            ck_assert_msg(strstr(err, "no optimizer state"), "%s", err);
        }
        free_made(&c);
    }
    /* byte tokenizer */
    dg_ckpt c, r;
    make_ckpt(&c, false, false, DG_NORM_AFFINE);
    dg_tokenizer_free(c.tokenizer);
    dg_tokenizer_byte(&c.tokenizer);
    c.model.vocab_size = 259;
    c.train.tokenizer = DG_TOK_BYTE;
    dg_free(c.params);
    c.n_params = dg_model_n_params(&c.model);
    c.params = dg_calloc((size_t)c.n_params, sizeof(float));
    c.params[c.n_params - 1] = 42.0f;
    snprintf(path, sizeof path, "%s/byte.dck", g_dir);
    ck_assert_msg(dg_ckpt_write(path, &c, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(dg_ckpt_read(path, false, &r, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(dg_tokenizer_kind(r.tokenizer), DG_TOK_BYTE);
    ck_assert(same(&c, &r, false));
    dg_ckpt_free(&r);
    /* overwriting an existing checkpoint replaces it */
    c.step = 999;
    ck_assert_msg(dg_ckpt_write(path, &c, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(dg_ckpt_read(path, false, &r, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.step, 999);
    dg_ckpt_free(&r);
    free_made(&c);
}
END_TEST

static unsigned char *slurp(const char *path, size_t *n) {
    char *d; char err[256];
    ck_assert_int_eq(dg_read_file(path, &d, n, err, sizeof err), 0);
    return (unsigned char *)d;
}

static void spit(const char *path, const void *d, size_t n) {
    unlink(path);          /* a fresh file: truncating one in place makes ext4 flush it */
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(d, 1, n, f), n);
    fclose(f);
}

static uint64_t fnv(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}

START_TEST(bad_files) {
    char path[600], bad[600], err[512];
    dg_ckpt c, r;
    make_ckpt(&c, true, false, DG_NORM_AFFINE);
    snprintf(path, sizeof path, "%s/good.dck", g_dir);
    snprintf(bad, sizeof bad, "%s/bad.dck", g_dir);
    ck_assert_msg(dg_ckpt_write(path, &c, err, sizeof err) == 0, "%s", err);
    size_t n; unsigned char *img = slurp(path, &n);
    unsigned char *m = malloc(n + 16);

    /* missing file */
    snprintf(bad, sizeof bad, "%s/none.dck", g_dir);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_ENOTFOUND);
    snprintf(bad, sizeof bad, "%s/bad.dck", g_dir);

    /* magic */
    memcpy(m, img, n); memcpy(m, "PK\x03\x04", 4); spit(bad, m, n);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "not a dragond checkpoint (magic") && strstr(err, "HINT"), "%s", err);
    spit(bad, "", 0);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_ECORRUPT);

    /* version */
    memcpy(m, img, n); m[4] = 7; spit(bad, m, n);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_EVERSION);
    ck_assert_msg(strstr(err, "checkpoint version 7 > supported 1; HINT: upgrade dragond"), "%s",
                  err);

    /* trailing bytes */
    memcpy(m, img, n); m[n] = 0; spit(bad, m, n + 1);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "trailing"), "%s", err);

    /* truncation */
    memcpy(m, img, n); spit(bad, m, n - 5);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "truncated"), "%s", err);

    /* a shape that disagrees with the config, with a valid header checksum */
    uint32_t hb; memcpy(&hb, img + 8, 4);
    memcpy(m, img, n);
    unsigned char *e = memmem(m, hb, "\x07\x00" "encoder", 9);
    ck_assert_ptr_nonnull(e);
    int64_t h3 = 3; memcpy(e + 9 + 8, &h3, 8);              /* shape[0] = H -> 3 */
    uint64_t hs = fnv(m, hb - 8); memcpy(m + hb - 8, &hs, 8);
    spit(bad, m, n);
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "tensor encoder: shape [3,16,32] does not match"), "%s", err);

    /* a flipped data byte: checksum or zstd error naming the tensor */
    memcpy(m, img, n); m[n - 3] ^= 0x40; spit(bad, m, n);
    ck_assert_int_eq(dg_ckpt_read(bad, true, &r, err, sizeof err), DG_ECORRUPT);
    ck_assert_msg(strstr(err, "tensor adamw.v.lm_head") && strstr(err, "corrupt"), "%s", err);
    /* ... which an inference read does not even look at */
    ck_assert_int_eq(dg_ckpt_read(bad, false, &r, err, sizeof err), 0);
    ck_assert(same(&c, &r, false));
    dg_ckpt_free(&r);
    free(m); dg_free(img);
    free_made(&c);
}
END_TEST

START_TEST(fuzz) {
    char path[600], bad[600], err[512];
    dg_ckpt c, r;
    make_ckpt(&c, true, false, DG_NORM_AFFINE);
    snprintf(path, sizeof path, "%s/good.dck", g_dir);
    snprintf(bad, sizeof bad, "%s/bad.dck", g_dir);
    ck_assert_msg(dg_ckpt_write(path, &c, err, sizeof err) == 0, "%s", err);
    size_t n; unsigned char *img = slurp(path, &n);
    unsigned char *m = malloc(n);
    uint32_t hb; memcpy(&hb, img + 8, 4);
    dg_rng rng; dg_rng_seed(&rng, 2024);
    int failed = 0, ok = 0;
    /* every header byte, then many random positions anywhere, each with a random bit pattern */
    int trials = (int)hb + 1500;
    for (int i = 0; i < trials; i++) {
        size_t pos = i < (int)hb ? (size_t)i : (size_t)dg_rng_below(&rng, n);
        unsigned char x = (unsigned char)(1 + dg_rng_below(&rng, 255));
        memcpy(m, img, n); m[pos] ^= x;
        spit(bad, m, n);
        bool want_m = i & 1;
        err[0] = 0;
        int rc = dg_ckpt_read(bad, want_m, &r, err, sizeof err);
        if (rc == 0) {
            ck_assert_msg(same(&c, &r, want_m), "flip at %zu: read succeeded with other data", pos);
            dg_ckpt_free(&r);
            ok++;
        } else {
            ck_assert_msg(rc == DG_ECORRUPT || rc == DG_EVERSION, "flip at %zu: rc %d", pos, rc);
            ck_assert_msg(err[0] != 0, "flip at %zu: no message", pos);
            ck_assert_ptr_null(r.params);
            failed++;
        }
    }
    ck_assert_int_ge(failed, (int)hb);       /* every header flip is caught */
    ck_assert_int_ge(ok, 1);
    /* truncation at every length up to the header end, then many more */
    for (size_t len = 0; len < n; len += (len < hb + 64 ? 1 : 1 + len / 50)) {
        spit(bad, img, len);
        err[0] = 0;
        ck_assert_int_eq(dg_ckpt_read(bad, true, &r, err, sizeof err), DG_ECORRUPT);
        ck_assert(err[0] != 0);
    }
    printf("fuzz: %d flips failed cleanly, %d harmless (identical data)\n", failed, ok);

    /* the same, with the header checksum recomputed after the flip, so the parser itself sees
     * the damaged bytes: it must still fail cleanly, or succeed with the same tensors */
    int parsed_ok = 0;
    for (int i = 0; i < 4 * (int)hb; i++) {
        size_t pos = 16 + (size_t)dg_rng_below(&rng, hb - 24);   /* past magic..flags */
        memcpy(m, img, n);
        m[pos] ^= (unsigned char)(1 + dg_rng_below(&rng, 255));
        if (i & 1) m[16 + (size_t)dg_rng_below(&rng, hb - 24)] = (unsigned char)dg_rng_next(&rng);
        uint64_t hs = fnv(m, hb - 8); memcpy(m + hb - 8, &hs, 8);
        spit(bad, m, n);
        err[0] = 0;
        int rc = dg_ckpt_read(bad, true, &r, err, sizeof err);
        if (rc == 0) {
            ck_assert(r.n_params == c.n_params);
            ck_assert(memcmp(r.params, c.params, 4 * (size_t)c.n_params) == 0);
            ck_assert(memcmp(r.adam_v, c.adam_v, 4 * (size_t)c.n_params) == 0);
            dg_ckpt_free(&r);
            parsed_ok++;
        } else {
            ck_assert_msg(rc == DG_ECORRUPT || rc == DG_ENOTFOUND, "pos %zu: rc %d (%s)", pos, rc,
                          err);
            ck_assert_msg(err[0] != 0, "pos %zu: no message", pos);
        }
    }
    printf("fuzz: %d re-checksummed header flips parsed (configs may differ), %d rejected\n",
           parsed_ok, 4 * (int)hb - parsed_ok);
    free(m); dg_free(img);
    free_made(&c);
}
END_TEST

START_TEST(atomic_files) {
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/blob.bin", g_dir);
    const char msg[] = "hello\0world";
    ck_assert_int_eq(dg_write_atomic(path, msg, sizeof msg, err, sizeof err), 0);
    ck_assert_int_eq(dg_write_atomic(path, msg, sizeof msg, err, sizeof err), 0);
    ck_assert_int_eq(count_files(), 1);
    char *d; size_t n;
    ck_assert_int_eq(dg_read_file(path, &d, &n, err, sizeof err), 0);
    ck_assert_uint_eq(n, sizeof msg);
    ck_assert(memcmp(d, msg, n) == 0 && d[n] == 0);
    dg_free(d);
    snprintf(path, sizeof path, "%s/no/such/dir/x", g_dir);
    ck_assert_int_lt(dg_write_atomic(path, msg, 3, err, sizeof err), 0);
    ck_assert_int_eq(dg_read_file(path, &d, &n, err, sizeof err), DG_ENOTFOUND);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("ckpt");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, bad_files);
    tcase_add_test(tc, fuzz);
    tcase_add_test(tc, atomic_files);
    suite_add_tcase(s, tc);
    return s;
}
DG_TEST_MAIN(suite)
