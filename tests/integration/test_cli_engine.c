/* tests/integration/test_cli_engine.c -- the foreground commands as a user runs them:
 * `dragond train` -> `generate` -> `eval` -> `export`, resume, and bad input (corrupt and
 * truncated checkpoints, configs that break a rule, empty or too-short data, a prompt outside
 * the char vocabulary): each gives a clear message and an exit code, never a crash. */
#include "check_util.h"

#include <stdarg.h>
#include <sys/wait.h>

static char g_bin[1024];
static char *g_dir;

/* Runs a shell command, captures stdout+stderr into out (cap), returns the exit status
 * (128+signal when killed by a signal). */
static int run(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t cap, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = 0;
    if (out) {
        while (n + 1 < cap) {
            size_t k = fread(out + n, 1, cap - 1 - n, p);
            if (!k) break;
            n += k;
        }
        out[n] = 0;
    } else {
        char tmp[4096];
        while (fread(tmp, 1, sizeof tmp, p)) {}
    }
    int st = pclose(p);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return WEXITSTATUS(st);
}

static void write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(data, 1, n, f);
    fclose(f);
}

static void setup(void) {
    const char *b = getenv("DG_BUILD");
    snprintf(g_bin, sizeof g_bin, "%s/dragond", b ? b : "build");
    g_dir = dg_test_tmpdir("cli");
    /* a corpus with learnable structure */
    char path[600];
    snprintf(path, sizeof path, "%s/corpus.txt", g_dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 3000; i++) fprintf(f, "the dragon hatches at %d.\n", i % 10);
    fclose(f);
}

static void teardown(void) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) {}
    free(g_dir);
}

static char out[1 << 16];

START_TEST(train_generate_eval_export) {
    int rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s/corpus.txt "
                 "--steps 60 --out %s/run --seed 7", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0, "train failed (%d): %s", rc, out);
    ck_assert_msg(strstr(out, "step 60/60") && strstr(out, "val_loss") && strstr(out, "checkpoint"), "%s", out);
    /* files of the run */
    const char *files[] = {"config.json", "tokenizer.json", "metrics.jsonl", "ckpt/step-60.dck"};
    for (int i = 0; i < 4; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/run/%s", g_dir, files[i]);
        ck_assert_msg(access(p, R_OK) == 0, "missing %s", p);
    }
    /* loss went down: first and last train_loss of metrics.jsonl */
    char p[700];
    snprintf(p, sizeof p, "%s/run/metrics.jsonl", g_dir);
    FILE *f = fopen(p, "r");
    char line[512];
    double first = -1, last = -1;
    while (fgets(line, sizeof line, f)) {
        char *q = strstr(line, "\"train_loss\":");
        if (!q) continue;
        double v = atof(q + 13);
        if (first < 0) first = v;
        last = v;
    }
    fclose(f);
    ck_assert_msg(first > 0 && last < first - 0.5, "loss %g -> %g", first, last);
    /* greedy generation is deterministic and uses the run's vocabulary */
    char a[4096], b2[4096];
    rc = run(a, sizeof a, "%s generate --checkpoint %s/run --prompt 'the dragon' --temperature 0 --max-tokens 40",
             g_bin, g_dir);
    ck_assert_msg(rc == 0, "%s", a);
    rc = run(b2, sizeof b2, "%s generate --checkpoint %s/run/ckpt/step-60.dck --prompt 'the dragon' "
             "--temperature 0 --max-tokens 40", g_bin, g_dir);
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(a, b2);
    ck_assert_uint_gt(strlen(a), 20);
    /* sampled generation: same seed same text, different seed (usually) different text */
    char s1[4096], s2[4096];
    run(s1, sizeof s1, "%s generate --checkpoint %s/run --prompt 'the' --seed 5 --top-k 5 --max-tokens 60", g_bin, g_dir);
    run(s2, sizeof s2, "%s generate --checkpoint %s/run --prompt 'the' --seed 5 --top-k 5 --max-tokens 60", g_bin, g_dir);
    ck_assert_str_eq(s1, s2);
    /* eval prints JSON with a loss close to the final val loss */
    rc = run(out, sizeof out, "%s eval --checkpoint %s/run --data %s/corpus.txt", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0 && strstr(out, "{\"loss\": ") && strstr(out, "\"tokens\": "), "%s", out);
    double ev = atof(strstr(out, "{\"loss\": ") + 9);
    ck_assert_msg(ev > 0 && ev < first, "eval loss %g", ev);
    /* safetensors export */
    rc = run(out, sizeof out, "%s export --checkpoint %s/run --format safetensors --out %s/model.safetensors",
             g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0, "%s", out);
    snprintf(p, sizeof p, "%s/model.safetensors", g_dir);
    f = fopen(p, "rb");
    ck_assert_ptr_nonnull(f);
    uint64_t hl = 0;
    ck_assert_int_eq(fread(&hl, 8, 1, f), 1);
    char *hdr = calloc(1, hl + 1);
    ck_assert_int_eq(fread(hdr, 1, hl, f), hl);
    fclose(f);
    ck_assert_msg(strstr(hdr, "\"encoder\"") && strstr(hdr, "\"embed.weight\"") && strstr(hdr, "\"lm_head\""), "%s", hdr);
    free(hdr);
    /* the decode benchmark on the trained model, prompts from the corpus */
    rc = run(out, sizeof out, "%s bench decode --checkpoint %s/run --data %s/corpus.txt --sessions 3 "
             "--tokens 20", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0 && strstr(out, "\"bench\":\"decode\"") && strstr(out, "\"sessions\":3"), "%s", out);
    double tps = atof(strstr(out, "\"tokens_per_s\":") + 15);
    ck_assert_msg(tps > 0, "%s", out);
    rc = run(out, sizeof out, "%s bench decode --checkpoint %s/nothing-here", g_bin, g_dir);
    ck_assert_msg(rc == 1 && strstr(out, "nothing-here"), "rc %d: %s", rc, out);
    rc = run(out, sizeof out, "%s bench train --checkpoint %s/run", g_bin, g_dir);
    ck_assert_msg(rc == 2 && strstr(out, "--checkpoint is for decode"), "rc %d: %s", rc, out);
}
END_TEST

START_TEST(resume_continues) {
    int rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s/corpus.txt --steps 20 "
                 "--out %s/r --quiet", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0, "%s", out);
    rc = run(out, sizeof out, "%s train --resume %s/r --data %s/corpus.txt --steps 30", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_msg(strstr(out, "step 30/30") && !strstr(out, "step 1/"), "resume restarted from scratch: %s", out);
}
END_TEST

/* --time-limit ends a run early, as a success: final eval, checkpoint, elapsed seconds logged. */
START_TEST(time_limit_stops) {
    int rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s/corpus.txt "
                 "--steps 10000000 --time-limit 1.5 --out %s/t", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
    ck_assert_msg(strstr(out, "--time-limit 1.5 s reached after step") && strstr(out, "done: step"), "%s", out);
    long long step = atoll(strstr(out, "reached after step") + 19);
    ck_assert_msg(step > 1 && step < 10000000, "step %lld", step);
    char p[700];
    snprintf(p, sizeof p, "%s/t/ckpt/step-%lld.dck", g_dir, step);
    ck_assert_msg(access(p, R_OK) == 0, "no final checkpoint %s", p);
    /* the last metrics row is the final eval, with its elapsed seconds just past the limit */
    snprintf(p, sizeof p, "%s/t/metrics.jsonl", g_dir);
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    char line[512], last[512] = "";
    while (fgets(line, sizeof line, f)) memcpy(last, line, sizeof last);
    fclose(f);
    char *e = strstr(last, "\"elapsed\":"), *v = strstr(last, "\"val_loss\":");
    ck_assert_msg(e && v, "last row: %s", last);
    double el = atof(e + 10);
    ck_assert_msg(el >= 1.5 && el < 30, "elapsed %g", el);
    /* and a bad value is refused before anything runs */
    rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s/corpus.txt "
             "--time-limit -3 --out %s/t2", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 2 && strstr(out, "--time-limit"), "rc %d: %s", rc, out);
    snprintf(p, sizeof p, "%s/t2", g_dir);
    ck_assert_msg(access(p, F_OK) != 0, "a refused run created %s", p);
}
END_TEST

START_TEST(bad_inputs) {
    char p[700];
    /* empty data */
    snprintf(p, sizeof p, "%s/empty.txt", g_dir);
    write_file(p, "", 0);
    int rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s --steps 2 --out %s/e",
                 g_bin, p, g_dir);
    ck_assert_msg(rc == 1 && strstr(out, "empty"), "rc %d: %s", rc, out);
    /* too short for one block */
    snprintf(p, sizeof p, "%s/short.txt", g_dir);
    write_file(p, "abc", 3);
    rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s --steps 2 --out %s/s",
             g_bin, p, g_dir);
    ck_assert_msg(rc != 0 && rc < 128 && strstr(out, "token"), "rc %d: %s", rc, out);
    /* a config that breaks a rule names the field */
    snprintf(p, sizeof p, "%s/bad.json", g_dir);
    const char *bad = "{\"model\":{\"n_layer\":2,\"n_embd\":30,\"n_head\":7,\"mlp_internal_dim_multiplier\":1},"
                      "\"training\":{\"batch_size\":2,\"block_size\":8}}";
    write_file(p, bad, strlen(bad));
    rc = run(out, sizeof out, "%s train --config %s --data %s/corpus.txt --steps 2 --out %s/b", g_bin, p, g_dir, g_dir);
    ck_assert_msg(rc == 2 && strstr(out, "n_head"), "rc %d: %s", rc, out);
    /* unknown field */
    const char *unk = "{\"model\":{\"n_layers\":2},\"training\":{}}";
    write_file(p, unk, strlen(unk));
    rc = run(out, sizeof out, "%s train --config %s --data %s/corpus.txt --steps 2", g_bin, p, g_dir);
    ck_assert_msg(rc == 2 && strstr(out, "n_layers"), "rc %d: %s", rc, out);
    /* a checkpoint to damage */
    rc = run(out, sizeof out, "%s train --config config/models/tiny.json --data %s/corpus.txt --steps 3 --out %s/c --quiet",
             g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 0, "%s", out);
    char ck[700], dmg[700];
    snprintf(ck, sizeof ck, "%s/c/ckpt/step-3.dck", g_dir);
    FILE *f = fopen(ck, "rb");
    ck_assert_ptr_nonnull(f);
    static char buf[1 << 22];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    ck_assert_uint_gt(n, 1000);
    /* truncated */
    snprintf(dmg, sizeof dmg, "%s/trunc.dck", g_dir);
    write_file(dmg, buf, n / 2);
    rc = run(out, sizeof out, "%s generate --checkpoint %s --prompt the --max-tokens 3", g_bin, dmg);
    ck_assert_msg(rc == 1 && (strstr(out, "truncat") || strstr(out, "corrupt")), "rc %d: %s", rc, out);
    /* flipped bytes in the tensor data */
    memcpy(buf + n / 4, "\xde\xad\xbe\xef", 4);   /* inside the parameter frames */
    snprintf(dmg, sizeof dmg, "%s/flip.dck", g_dir);
    write_file(dmg, buf, n);
    rc = run(out, sizeof out, "%s generate --checkpoint %s --prompt the --max-tokens 3", g_bin, dmg);
    ck_assert_msg(rc == 1 && strstr(out, "corrupt"), "rc %d: %s", rc, out);
    /* not a checkpoint at all */
    rc = run(out, sizeof out, "%s eval --checkpoint %s/corpus.txt --data %s/corpus.txt", g_bin, g_dir, g_dir);
    ck_assert_msg(rc == 1 && strstr(out, "HINT"), "rc %d: %s", rc, out);
    /* a prompt character outside the char vocabulary */
    rc = run(out, sizeof out, "%s generate --checkpoint %s --prompt 'the \xe2\x82\xac' --max-tokens 3", g_bin, ck);
    ck_assert_msg(rc == 2 && strstr(out, "vocabulary") && strstr(out, "U+20AC"), "rc %d: %s", rc, out);
    /* bad sampling parameter, unknown command, missing flags */
    rc = run(out, sizeof out, "%s generate --checkpoint %s --prompt the --temperature -1", g_bin, ck);
    ck_assert_msg(rc == 2 && strstr(out, "temperature"), "rc %d: %s", rc, out);
    rc = run(out, sizeof out, "%s frobnicate", g_bin);
    ck_assert_msg(rc == 2 && strstr(out, "unknown command"), "rc %d: %s", rc, out);
    rc = run(out, sizeof out, "%s train --steps 3", g_bin);
    ck_assert_msg(rc == 2 && strstr(out, "--config"), "rc %d: %s", rc, out);
    /* --help on every subcommand */
    const char *cmds[] = {"train", "generate", "eval", "export", "bench", "serve"};
    for (int i = 0; i < 6; i++) {
        rc = run(out, sizeof out, "%s %s --help", g_bin, cmds[i]);
        ck_assert_msg(rc == 0 && strstr(out, "usage"), "%s --help: rc %d: %s", cmds[i], rc, out);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("cli_engine");
    TCase *t = tcase_create("cli");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 240);
    tcase_add_test(t, train_generate_eval_export);
    tcase_add_test(t, resume_continues);
    tcase_add_test(t, time_limit_stops);
    tcase_add_test(t, bad_inputs);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
