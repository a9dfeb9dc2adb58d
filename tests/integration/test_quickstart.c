/* tests/integration/test_quickstart.c -- runs the daemon quickstart exactly as documented.
 * The commands are the lines starting with "$ " inside fenced blocks (a trailing backslash
 * continues a line) of README.md's "## Quickstart: the daemon" section, or, until the README
 * has that section, of tests/integration/QUICKSTART.md; when both exist their command lists
 * must be identical, so the README and this test cannot drift.
 *
 * `make run` starts dragond the way the Makefile does ($DG_BUILD/dragond serve) but on a free
 * port with a temporary data directory, and with shakespeare_url pointing at a file that does
 * not exist, so nothing is downloaded: Tiny Shakespeare is copied from ../shared/data into the
 * data directory first (the test skips with a message when ../shared is absent). Every other
 * command runs through bash in the repository root with 127.0.0.1:8077 replaced by the real
 * address, build/dragon by $DG_BUILD/dragon (with DRAGON_HOST set to the real address) and
 * JOB_ID by the id the curl POST printed; each must exit 0, and the commands' output is checked against what the quickstart promises.
 * Thread affinity: single-threaded test (Check fork mode). */
#include "client_util.h"

#define MAX_CMDS 32

static dgd D;

static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

/* Commands of the "$ " lines in fenced blocks of text (from `start` up to the next "\n## "
 * heading when section is true). Returns the count; cmds[i] are malloc'd. */
static int parse_commands(const char *text, bool section, char **cmds, int max) {
    const char *end = text + strlen(text);
    if (section) {
        const char *next = strstr(text + 3, "\n## ");
        if (next) end = next;
    }
    int n = 0;
    bool fenced = false;
    char *cur = NULL;
    for (const char *l = text; l < end && *l; ) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        size_t len = nl ? (size_t)(nl - l) : (size_t)(end - l);
        if (len >= 3 && !strncmp(l, "```", 3)) {
            fenced = !fenced;
        } else if (fenced && (cur || (len > 2 && !strncmp(l, "$ ", 2)))) {
            const char *s = l;
            size_t sl = len;
            if (!cur) { s += 2; sl -= 2; }
            else while (sl && (*s == ' ' || *s == '\t')) { s++; sl--; }   /* continuation */
            bool cont = sl && s[sl - 1] == '\\';
            if (cont) sl--;
            size_t have = cur ? strlen(cur) : 0;
            cur = realloc(cur, have + sl + 2);
            memcpy(cur + have, s, sl);
            cur[have + sl] = 0;
            if (!cont) {
                if (n < max) cmds[n++] = cur;
                else free(cur);
                cur = NULL;
            }
        }
        if (!nl) break;
        l = nl + 1;
    }
    free(cur);
    return n;
}

/* Replaces every occurrence of from with to in *s (malloc'd string, reallocated). */
static void replace_all(char **s, const char *from, const char *to) {
    size_t fl = strlen(from), tl = strlen(to);
    for (char *p = strstr(*s, from); p; ) {
        size_t off = (size_t)(p - *s), rest = strlen(p + fl);
        char *n = malloc(off + tl + rest + 1);
        memcpy(n, *s, off);
        memcpy(n + off, to, tl);
        memcpy(n + off + tl, p + fl, rest + 1);
        free(*s);
        *s = n;
        p = strstr(*s + off + tl, from);
    }
}

static bool copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    bool ok = a && b;
    char buf[65536];
    size_t k;
    while (ok && (k = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, k, b) == k;
    if (a) fclose(a);
    if (b && fclose(b) != 0) ok = false;
    return ok;
}

START_TEST(readme_daemon_quickstart) {
    const char *shared = dg_test_shared_dir();
    char src[1200];
    if (shared) snprintf(src, sizeof src, "%s/data/tinyshakespeare.txt", shared);
    if (!shared || access(src, R_OK) != 0) {
        printf("SKIP test_quickstart: ../shared/data/tinyshakespeare.txt is absent (the "
               "quickstart trains on the shakespeare preset and this test never downloads)\n");
        return;
    }
    /* the commands, from the README when it has the section */
    char *qs = dcl_slurp(dcl_repo_file("tests/integration/QUICKSTART.md"));
    char *readme = dcl_slurp(dcl_repo_file("README.md"));
    char *cq[MAX_CMDS], *cr[MAX_CMDS];
    int nq = parse_commands(qs, false, cq, MAX_CMDS);
    const char *sec = strstr(readme, "## Quickstart: the daemon");
    int nr = sec ? parse_commands(sec, true, cr, MAX_CMDS) : 0;
    ck_assert_int_ge(nq, 8);
    char **cmds = cq;
    int n = nq;
    if (sec) {
        ck_assert_msg(nr == nq, "README has %d quickstart commands, QUICKSTART.md %d", nr, nq);
        for (int i = 0; i < nq; i++)
            ck_assert_msg(!strcmp(cr[i], cq[i]), "README command %d differs:\n  %s\n  %s", i,
                          cr[i], cq[i]);
        cmds = cr;
        n = nr;
    } else {
        printf("note: README.md has no '## Quickstart: the daemon' section yet; using "
               "tests/integration/QUICKSTART.md\n");
    }
    ck_assert_str_eq(cmds[0], "make run");

    /* the daemon, as `make run` starts it, on a free port and a temp data dir */
    dgd_init(&D, "dquick");
    char dsdir[700], dst[800], cfg[700];
    snprintf(dsdir, sizeof dsdir, "%s/data/datasets", D.dir);
    char ddir[700];
    snprintf(ddir, sizeof ddir, "%s/data", D.dir);
    mkdir(ddir, 0755);
    ck_assert_int_eq(mkdir(dsdir, 0755), 0);
    snprintf(dst, sizeof dst, "%s/tinyshakespeare.txt", dsdir);
    ck_assert(copy_file(src, dst));
    snprintf(cfg, sizeof cfg, "%s/offline.json", D.dir);
    FILE *f = fopen(cfg, "w");
    fprintf(f, "{\"shakespeare_url\": \"file://%s/no-such-file.txt\"}\n", D.dir);
    fclose(f);
    ck_assert_int_eq(dgd_start(&D, "--config", cfg, NULL), 0);

    const char *build = getenv("DG_BUILD");
    char dragon[1100], hostport[64];
    snprintf(dragon, sizeof dragon, "%s/dragon ", build && *build ? build : "build");
    snprintf(hostport, sizeof hostport, "127.0.0.1:%d", D.port);
    char job_id[64] = "";
    int ran = 0;
    for (int i = 1; i < n; i++) {
        char *cmd = strdup(cmds[i]);
        replace_all(&cmd, "127.0.0.1:8077", hostport);
        if (!strncmp(cmd, "build/dragon ", 13)) {
            char *t = malloc(strlen(cmd) + strlen(dragon) + 1);
            sprintf(t, "%s%s", dragon, cmd + 13);
            free(cmd);
            cmd = t;
        }
        if (strstr(cmd, "JOB_ID")) {
            ck_assert_msg(job_id[0], "'%s' needs JOB_ID but no command printed a job id",
                          cmds[i]);
            replace_all(&cmd, "JOB_ID", job_id);
        }
        dcl_run r;                    /* bash -c CMD, captured like a dragon run */
        memset(&r, 0, sizeof r);
        snprintf(r.out_path, sizeof r.out_path, "%s/cmd-%d.out", D.dir, i);
        snprintf(r.err_path, sizeof r.err_path, "%s/cmd-%d.err", D.dir, i);
        pid_t pid = fork();
        if (pid == 0) {
            int o = open(r.out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int e = open(r.err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int in = open("/dev/null", O_RDONLY);
            dup2(o, 1);
            dup2(e, 2);
            dup2(in, 0);
            unsetenv("DRAGON_TOKEN");
            setenv("DRAGON_HOST", D.base, 1);     /* the client's default is :8077 */
            execl("/bin/bash", "bash", "-c", cmd, (char *)NULL);
            _exit(127);
        }
        r.pid = pid;
        int rc = dcl_wait(&r, 240);
        printf("$ %s  -> exit %d\n", cmds[i], rc);
        ck_assert_msg(rc == 0, "quickstart command failed (exit %d): %s\n--- stdout:\n%s"
                      "--- stderr:\n%s", rc, cmd, r.out, r.err);
        ck_assert_msg(r.out[0], "quickstart command printed nothing: %s", cmd);
        /* what each command promises */
        const char *c0 = cmds[i];
        if (strstr(c0, "/health")) ck_assert_ptr_nonnull(strstr(r.out, "\"ok\""));
        const char *idp = strstr(r.out, "\"id\":\"job_");
        if (strstr(c0, "curl") && strstr(c0, "/v1/jobs -H")) {
            ck_assert_msg(idp != NULL, "the POST printed no job id: %s", r.out);
            snprintf(job_id, sizeof job_id, "%.*s", (int)strcspn(idp + 6, "\""), idp + 6);
        }
        if (strstr(c0, "/stream")) {
            ck_assert_ptr_nonnull(strstr(r.out, "event: metric"));
            ck_assert_ptr_nonnull(strstr(r.out, "event: checkpoint"));
            ck_assert_ptr_nonnull(strstr(r.out, "event: end\ndata: {\"status\":\"succeeded\"}"));
        }
        if (strstr(c0, "dragon status")) ck_assert_ptr_nonnull(strstr(r.out, "queue:"));
        if (strstr(c0, "dragon submit")) {
            ck_assert_ptr_nonnull(strstr(r.out, "succeeded"));
            ck_assert_ptr_nonnull(strstr(r.out, "val_loss"));
        }
        if (strstr(c0, "dragon runs")) {
            ck_assert_ptr_nonnull(strstr(r.out, "quickstart"));
            ck_assert_ptr_nonnull(strstr(r.out, "tiny-cli"));
        }
        if (strstr(c0, "dragon show")) ck_assert_ptr_nonnull(strstr(r.out, "tiny-cli"));
        if (strstr(c0, "--csv")) {
            ck_assert_ptr_nonnull(strstr(r.out, "step,timestamp_ms,val_loss\n"));
            ck_assert_int_ge(dcl_count_lines(r.out), 2);
        }
        if (strstr(c0, "--tail 5")) ck_assert_int_le(dcl_count_lines(r.out), 5);
        dcl_free(&r);
        free(cmd);
        ran++;
    }
    ck_assert_int_eq(ran, n - 1);
    /* the page the quickstart points at */
    dgd_resp page;
    ck_assert_int_eq(dgd_http(&D, "GET", "/", NULL, 0, NULL, &page), 200);
    ck_assert_ptr_nonnull(strstr(page.ctype, "text/html"));
    ck_assert_ptr_nonnull(strstr(page.body, "loss-chart"));
    dgd_resp_free(&page);
    /* both jobs trained on Tiny Shakespeare (the copy: no download happened) */
    json_t *runs = dgd_get_json(&D, "/v1/runs?status=succeeded");
    ck_assert_uint_eq(json_array_size(json_object_get(runs, "data")), 2);
    json_decref(runs);
    for (int i = 0; i < nq; i++) free(cq[i]);
    for (int i = 0; i < nr; i++) free(cr[i]);
    free(qs);
    free(readme);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("quickstart");
    TCase *t = tcase_create("daemon");
    tcase_add_checked_fixture(t, NULL, teardown);
    tcase_set_timeout(t, 400);
    tcase_add_test(t, readme_daemon_quickstart);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
