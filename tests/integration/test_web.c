/* tests/integration/test_web.c -- the runs page (clients/web/index.html) in headless Chromium
 * against a real dragond after a finished run: the table has a row for the run with status
 * succeeded and the API's losses; the run view draws the train and validation loss series
 * with one SVG point per stored metric point; the checkpoints table lists the API's
 * checkpoints; a daemon with a token shows the token form instead of data; and, driven over
 * the DevTools protocol (--remote-debugging-pipe), the run view of a running job grows its
 * loss curve from the SSE stream alone and shows a cancel (badge, final checkpoint) live;
 * the page's JS SSE parser gives the same events for every split of a stream. Screenshots of both
 * views are written next to the test's temp dir (paths printed) for a human to look at.
 * Skips with a printed message when Debian's `chromium` is not installed (`make deps`).
 * Thread affinity: single-threaded tests (Check fork mode). */
#include "client_util.h"

static dgd D;
static char g_text[700];
static char g_chromium[256];

static bool find_chromium(void) {
    static const char *const cands[] = {"/usr/bin/chromium", "/usr/bin/chromium-browser",
                                        "/usr/lib/chromium/chromium", NULL};
    const char *env = getenv("DG_CHROMIUM");
    if (env && access(env, X_OK) == 0) { snprintf(g_chromium, sizeof g_chromium, "%s", env);
                                         return true; }
    for (int i = 0; cands[i]; i++)
        if (access(cands[i], X_OK) == 0) {
            snprintf(g_chromium, sizeof g_chromium, "%s", cands[i]);
            return true;
        }
    return false;
}

static void setup(void) {
    dgd_init(&D, "dweb");
    dgd_write_text(D.dir, "text.txt", 12000, g_text, sizeof g_text);
}
static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

/* The opening tag of the element that contains `marker` (searching back to '<'), copied. */
static void tag_with(const char *dom, const char *marker, char *out, size_t n) {
    out[0] = 0;
    const char *m = strstr(dom, marker);
    if (!m) return;
    const char *lt = m;
    while (lt > dom && *lt != '<') lt--;
    const char *gt = strchr(m, '>');
    if (!gt) return;
    snprintf(out, n, "%.*s", (int)(gt - lt + 1), lt);
}

/* Counts the M/L commands of a path's d attribute inside a tag. */
static int path_points(const char *tag) {
    const char *d = strstr(tag, " d=\"");
    if (!d) return -1;
    int n = 0;
    for (d += 4; *d && *d != '"'; d++) n += *d == 'M' || *d == 'L';
    return n;
}

/* ---- a page driven over the DevTools protocol (--remote-debugging-pipe) ------------------- */
/* Chromium reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4. */
typedef struct {
    pid_t pid;
    int   wr, rd;
    char  session[128];
    int   next_id;
    char *buf;
    size_t len;
} cdp;

static bool cdp_start(cdp *c, const char *url) {
    int to_chrome[2], from_chrome[2];
    if (pipe(to_chrome) || pipe(from_chrome)) return false;
    char profile[760];
    snprintf(profile, sizeof profile, "--user-data-dir=%s/chrome-cdp", D.dir);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to_chrome[0], 3);
        dup2(from_chrome[1], 4);
        int e = open("/dev/null", O_WRONLY);
        dup2(e, 1);
        dup2(e, 2);
        execl(g_chromium, g_chromium, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
              "--window-size=1280,1000", "--remote-debugging-pipe", profile, url, (char *)NULL);
        _exit(127);
    }
    close(to_chrome[0]);
    close(from_chrome[1]);
    memset(c, 0, sizeof *c);
    c->pid = pid;
    c->wr = to_chrome[1];
    c->rd = from_chrome[0];
    c->next_id = 1;
    return true;
}

static void cdp_stop(cdp *c) {
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
    }
    close(c->wr);
    close(c->rd);
    free(c->buf);
    c->pid = 0;
}

/* Sends method(params) (on the attached page session when session is true) and returns the
 * reply's "result" (a new reference) or NULL on error/timeout. */
static json_t *cdp_call(cdp *c, const char *method, json_t *params, bool session) {
    int id = c->next_id++;
    json_t *msg = json_pack("{s:i, s:s, s:o}", "id", id, "method", method, "params",
                            params ? params : json_object());
    if (session) json_object_set_new(msg, "sessionId", json_string(c->session));
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    size_t n = strlen(text) + 1;                 /* the NUL is the message separator */
    bool ok = write(c->wr, text, n) == (ssize_t)n;
    free(text);
    if (!ok) return NULL;
    double t_end = dgd_now() + 20;
    while (dgd_now() < t_end) {
        char *z = c->buf ? memchr(c->buf, 0, c->len) : NULL;
        if (z) {
            json_t *m = json_loads(c->buf, 0, NULL);
            size_t used = (size_t)(z - c->buf) + 1;
            memmove(c->buf, z + 1, c->len - used);
            c->len -= used;
            if (m && json_integer_value(json_object_get(m, "id")) == id) {
                json_t *res = json_incref(json_object_get(m, "result"));
                if (!res) fprintf(stderr, "cdp %s: %s\n", method,
                                  json_dumps(m, JSON_COMPACT));
                json_decref(m);
                return res;
            }
            json_decref(m);                      /* an event or another reply */
            continue;
        }
        struct pollfd pf = {c->rd, POLLIN, 0};
        if (poll(&pf, 1, 200) <= 0) continue;
        char tmp[65536];
        ssize_t r = read(c->rd, tmp, sizeof tmp);
        if (r <= 0) return NULL;
        c->buf = realloc(c->buf, c->len + (size_t)r + 1);
        memcpy(c->buf + c->len, tmp, (size_t)r);
        c->len += (size_t)r;
    }
    return NULL;
}

static bool cdp_attach(cdp *c) {
    for (int tries = 0; tries < 50; tries++) {
        json_t *t = cdp_call(c, "Target.getTargets", NULL, false);
        json_t *infos = json_object_get(t, "targetInfos");
        for (size_t i = 0; i < json_array_size(infos); i++) {
            json_t *ti = json_array_get(infos, i);
            if (strcmp(json_string_value(json_object_get(ti, "type")), "page")) continue;
            json_t *a = cdp_call(c, "Target.attachToTarget",
                                 json_pack("{s:O, s:b}", "targetId",
                                           json_object_get(ti, "targetId"), "flatten", 1),
                                 false);
            const char *sid = json_string_value(json_object_get(a, "sessionId"));
            if (sid) snprintf(c->session, sizeof c->session, "%s", sid);
            json_decref(a);
            json_decref(t);
            return c->session[0] != 0;
        }
        json_decref(t);
        dgd_sleep_ms(100);
    }
    return false;
}

/* Evaluates a JS expression returning a string in the page. Returns malloc'd text or NULL. */
static char *cdp_eval(cdp *c, const char *expr) {
    json_t *r = cdp_call(c, "Runtime.evaluate", json_pack("{s:s, s:b}", "expression", expr,
                                                          "returnByValue", 1), true);
    const char *v = json_string_value(json_object_get(json_object_get(r, "result"), "value"));
    char *out = v ? strdup(v) : NULL;
    json_decref(r);
    return out;
}


static int b64val(int ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* Page.captureScreenshot into path; returns the PNG's size in bytes (0 on failure). */
static long cdp_screenshot(cdp *c, const char *path) {
    json_t *r = cdp_call(c, "Page.captureScreenshot", json_pack("{s:s}", "format", "png"), true);
    const char *d = json_string_value(json_object_get(r, "data"));
    long n = 0;
    FILE *f = d ? fopen(path, "wb") : NULL;
    if (f) {
        unsigned acc = 0;
        int bits = 0;
        for (; *d; d++) {
            int v = b64val(*d);
            if (v < 0) continue;
            acc = (acc << 6) | (unsigned)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                fputc((int)((acc >> bits) & 0xff), f);
                n++;
            }
        }
        fclose(f);
    }
    json_decref(r);
    return n;
}

/* Opens url, waits until the JS expression `ready` is true (30 s), and returns the page's
 * HTML (malloc'd; NULL on timeout, after printing the page state). With shot != NULL, also
 * writes a screenshot there. */
static char *page_dom(const char *url, const char *ready, const char *shot) {
    cdp c;
    if (!cdp_start(&c, url)) return NULL;
    char *html = NULL;
    if (!cdp_attach(&c)) { fprintf(stderr, "cannot attach to %s\n", url); goto out; }
    char expr[1200];
    snprintf(expr, sizeof expr, "(%s) ? 'yes' : 'no'", ready);
    double t_end = dgd_now() + 30;
    bool ok = false;
    while (!ok && dgd_now() < t_end) {
        char *v = cdp_eval(&c, expr);
        ok = v && !strcmp(v, "yes");
        free(v);
        if (!ok) dgd_sleep_ms(100);
    }
    html = cdp_eval(&c, "document.documentElement.outerHTML");
    if (!ok) {
        fprintf(stderr, "page %s never became ready (%s); its HTML:\n%.3000s\n", url, ready,
                html ? html : "(none)");
        free(html);
        html = NULL;
        goto out;
    }
    if (shot) {
        dgd_sleep_ms(300);                   /* let layout settle (bars animate 0.3 s) */
        long n = cdp_screenshot(&c, shot);
        if (n <= 0) fprintf(stderr, "screenshot of %s failed\n", url);
    }
out:
    cdp_stop(&c);
    return html;
}

START_TEST(page_shows_finished_run) {
    if (!find_chromium()) {
        printf("SKIP test_web: chromium is not installed (make deps installs it)\n");
        return;
    }
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body,
             "{\"name\":\"web-run\",\"config\":{\"preset\":\"tiny\",\"training\":"
             "{\"max_steps\":30,\"eval_interval\":10,\"ckpt_interval\":10}},"
             "\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "succeeded", 30, 120));
    char p[300];
    snprintf(p, sizeof p, "/v1/runs/%s", id);
    json_t *run = dgd_get_json(&D, p);
    double vl = json_number_value(json_object_get(json_object_get(run, "summary_metrics"),
                                                  "val_loss"));
    json_decref(run);

    /* the runs table */
    char url[300];
    snprintf(url, sizeof url, "%s/", D.base);
    char shot[800];
    snprintf(shot, sizeof shot, "%s/runs.png", D.dir);
    char ready[300];
    snprintf(ready, sizeof ready, "document.querySelector('tr[data-run-id=\"%s\"]')", id);
    char *dom = page_dom(url, ready, shot);
    ck_assert_ptr_nonnull(dom);
    char marker[128], tag[1024];
    snprintf(marker, sizeof marker, "data-run-id=\"%s\"", id);
    tag_with(dom, marker, tag, sizeof tag);
    ck_assert_msg(tag[0], "no row for %s in the runs table", id);
    ck_assert_ptr_nonnull(strstr(tag, "data-status=\"succeeded\""));
    const char *row = strstr(dom, marker);
    const char *row_end = strstr(row, "</tr>");
    ck_assert_ptr_nonnull(row_end);
    size_t rl = (size_t)(row_end - row);
    char *rowtxt = strndup(row, rl);
    char vls[32];
    snprintf(vls, sizeof vls, "%.4f", vl);
    ck_assert_msg(strstr(rowtxt, vls), "row lacks val loss %s: %s", vls, rowtxt);
    ck_assert_ptr_nonnull(strstr(rowtxt, "web-run"));
    ck_assert_ptr_nonnull(strstr(rowtxt, ">succeeded<"));
    ck_assert_ptr_nonnull(strstr(rowtxt, "30 / 30"));
    free(rowtxt);
    free(dom);

    /* the run view: loss chart paths with every stored point */
    snprintf(url, sizeof url, "%s/#/runs/%s", D.base, id);
    snprintf(shot, sizeof shot, "%s/run.png", D.dir);
    dom = page_dom(url, "document.querySelector('#loss-chart path.s-val_loss') && "
                   "document.querySelector('#ckpt-body tr[data-ckpt-id]')", shot);
    ck_assert_ptr_nonnull(dom);
    ck_assert_ptr_nonnull(strstr(dom, "id=\"loss-chart\""));
    static const char *const keys[] = {"train_loss", "val_loss"};
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "/v1/runs/%s/metrics/%s", id, keys[k]);
        json_t *ser = dgd_get_json(&D, p);
        int n = (int)json_integer_value(json_object_get(ser, "n_points"));
        json_decref(ser);
        ck_assert_int_ge(n, k == 0 ? 5 : 3);
        snprintf(marker, sizeof marker, "data-key=\"%s\"", keys[k]);
        /* the first path with this key inside the loss chart (raw + smoothed share the key
         * only when smoothing is on; it is off by default) */
        const char *chart = strstr(dom, "id=\"loss-chart\"");
        tag_with(chart, marker, tag, sizeof tag);
        ck_assert_msg(tag[0], "no %s path in the loss chart", keys[k]);
        char want[64];
        snprintf(want, sizeof want, "data-points=\"%d\"", n);
        ck_assert_msg(strstr(tag, want), "%s path: want %s in %s", keys[k], want, tag);
        ck_assert_int_eq(path_points(tag), n);
    }
    /* checkpoints table: every checkpoint of the API */
    snprintf(p, sizeof p, "/v1/runs/%s/checkpoints", id);
    json_t *ck = dgd_get_json(&D, p);
    json_t *cks = json_object_get(ck, "data");
    ck_assert_uint_ge(json_array_size(cks), 1);
    for (size_t i = 0; i < json_array_size(cks); i++) {
        snprintf(marker, sizeof marker, "data-ckpt-id=\"%s\"",
                 json_string_value(json_object_get(json_array_get(cks, i), "id")));
        ck_assert_ptr_nonnull(strstr(dom, marker));
    }
    json_decref(ck);
    /* the log tail shows the job's closing line */
    ck_assert_ptr_nonnull(strstr(dom, "finished 30 steps"));
    free(dom);

    /* screenshots for a person to look at (taken once each page was ready) */
    struct stat sb;
    snprintf(shot, sizeof shot, "%s/runs.png", D.dir);
    ck_assert_int_eq(stat(shot, &sb), 0);
    ck_assert_int_gt(sb.st_size, 10000);
    snprintf(shot, sizeof shot, "%s/run.png", D.dir);
    ck_assert_int_eq(stat(shot, &sb), 0);
    ck_assert_int_gt(sb.st_size, 20000);
    printf("test_web screenshots: %s/runs.png %s/run.png\n", D.dir, D.dir);
}
END_TEST

START_TEST(page_asks_for_token) {
    if (!find_chromium()) {
        printf("SKIP test_web: chromium is not installed (make deps installs it)\n");
        return;
    }
    char tf[700];
    snprintf(tf, sizeof tf, "%s/token", D.dir);
    FILE *f = fopen(tf, "w");
    fputs("web-test-token-0123456789abcdef\n", f);
    fclose(f);
    chmod(tf, 0600);
    ck_assert_int_eq(dgd_start(&D, "--token-file", tf, NULL), 0);
    char url[300];
    snprintf(url, sizeof url, "%s/", D.base);
    /* the page itself is public; its API calls get 401 */
    char *dom = page_dom(url, "!document.getElementById('auth').hidden && "
                         "document.querySelector('.card.error')", NULL);
    ck_assert_ptr_nonnull(dom);
    char tag[512];
    tag_with(dom, "id=\"auth\"", tag, sizeof tag);
    ck_assert_msg(tag[0] && !strstr(tag, "hidden"), "token form not shown: %s", tag);
    ck_assert_ptr_nonnull(strstr(dom, "This daemon needs a token."));
    ck_assert_ptr_nonnull(strstr(dom, "invalid_token"));
    ck_assert_ptr_null(strstr(dom, "data-run-id="));
    free(dom);
}
END_TEST

static const char PROBE[] =
    "JSON.stringify({pts: +((document.querySelector('#loss-chart path.s-train_loss') || "
    "{dataset: {}}).dataset.points || 0), val: +((document.querySelector("
    "'#loss-chart path.s-val_loss') || {dataset: {}}).dataset.points || 0), live: "
    "(document.getElementById('live') || {}).textContent || '', status: "
    "(document.querySelector('.runhead .badge') || {}).textContent || '', ckpts: "
    "document.querySelectorAll('#ckpt-body tr[data-ckpt-id]').length})";

/* The page's state as JSON, or NULL. */
static json_t *probe(cdp *c) {
    char *s = cdp_eval(c, PROBE);
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    free(s);
    return j;
}

START_TEST(page_updates_live) {
    if (!find_chromium()) {
        printf("SKIP test_web: chromium is not installed (make deps installs it)\n");
        return;
    }
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    char body[1200];
    snprintf(body, sizeof body,
             "{\"name\":\"live\",\"config\":{\"preset\":\"tiny\",\"training\":"
             "{\"max_steps\":200000,\"eval_interval\":20,\"ckpt_interval\":40}},"
             "\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert(dgd_wait(&D, id, "running", 10, 60));
    char url[300];
    snprintf(url, sizeof url, "%s/#/runs/%s", D.base, id);
    cdp c;
    ck_assert(cdp_start(&c, url));
    ck_assert_msg(cdp_attach(&c), "could not attach to the page over the DevTools pipe");
    /* the chart appears with the points stored so far, and the stream connects */
    long long p0 = 0;
    double t_end = dgd_now() + 30;
    json_t *st = NULL;
    while (dgd_now() < t_end) {
        json_decref(st);
        st = probe(&c);
        p0 = json_integer_value(json_object_get(st, "pts"));
        if (p0 > 0 && !strcmp(json_string_value(json_object_get(st, "live")), "live")) break;
        dgd_sleep_ms(100);
    }
    ck_assert_msg(p0 > 0, "no train_loss points drawn");
    ck_assert_str_eq(json_string_value(json_object_get(st, "live")), "live");
    ck_assert_str_eq(json_string_value(json_object_get(st, "status")), "running");
    json_decref(st);
    st = NULL;
    /* new points arrive through the stream alone (the run view does not poll) */
    long long p1 = p0;
    t_end = dgd_now() + 30;
    while (dgd_now() < t_end && p1 < p0 + 5) {
        json_decref(st);
        st = probe(&c);
        p1 = json_integer_value(json_object_get(st, "pts"));
        dgd_sleep_ms(100);
    }
    ck_assert_msg(p1 >= p0 + 5, "the loss curve did not grow: %lld -> %lld points", p0, p1);
    ck_assert_int_gt(json_integer_value(json_object_get(st, "val")), 0);
    json_decref(st);
    st = NULL;
    /* cancelling shows up live too: badge, and the final checkpoint in the table */
    dgd_resp resp;
    char p[200];
    snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
    ck_assert_int_eq(dgd_http(&D, "POST", p, "{}", -1, NULL, &resp), 200);
    dgd_resp_free(&resp);
    ck_assert(dgd_wait(&D, id, "cancelled", 0, 60));
    snprintf(p, sizeof p, "/v1/runs/%s/checkpoints", id);
    json_t *ck = dgd_get_json(&D, p);
    long long n_ck = (long long)json_array_size(json_object_get(ck, "data"));
    json_decref(ck);
    const char *status = "";
    t_end = dgd_now() + 30;
    while (dgd_now() < t_end) {
        json_decref(st);
        st = probe(&c);
        status = json_string_value(json_object_get(st, "status"));
        if (status && !strcmp(status, "cancelled") &&
            json_integer_value(json_object_get(st, "ckpts")) == n_ck)
            break;
        dgd_sleep_ms(100);
    }
    ck_assert_str_eq(status ? status : "(none)", "cancelled");
    ck_assert_int_eq(json_integer_value(json_object_get(st, "ckpts")), n_ck);
    json_decref(st);
    cdp_stop(&c);
}
END_TEST

/* The page's own SSE parser (sseParser in index.html), fed a daemon-like stream split at every
 * position, with LF, CRLF and CR line ends: the same events each time. */
static const char JS_SSE_CHECK[] =
    "(() => {"
    "  const src = 'retry: 2000\\n\\nid: 1\\r\\nevent: status\\r\\ndata: {\"a\":1}\\r\\n\\r\\n'"
    "    + ': ping\\n\\nid: 2\\revent: log\\rdata: x\\rdata: y\\r\\rid: 3\\nevent: end\\n"
    "data: {}\\n\\n';"
    "  const want = JSON.stringify([['1','status','{\"a\":1}'],['2','log','x\\ny'],"
    "                               ['3','end','{}']]);"
    "  for (let cut = 0; cut <= src.length; cut++) {"
    "    for (let cut2 = cut; cut2 <= src.length; cut2 += 7) {"
    "      const got = [];"
    "      const p = sseParser((e) => { got.push([e.id, e.event, e.data]); });"
    "      p.feed(src.slice(0, cut)); p.feed(src.slice(cut, cut2)); p.feed(src.slice(cut2));"
    "      if (JSON.stringify(got) !== want) return 'cut ' + cut + '/' + cut2 + ': ' +"
    "        JSON.stringify(got);"
    "      if (p.lastId !== '3') return 'lastId ' + p.lastId;"
    "    }"
    "  }"
    "  return 'ok';"
    "})()";

START_TEST(page_sse_parser) {
    if (!find_chromium()) {
        printf("SKIP test_web: chromium is not installed (make deps installs it)\n");
        return;
    }
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
    char url[300];
    snprintf(url, sizeof url, "%s/", D.base);
    cdp c;
    ck_assert(cdp_start(&c, url));
    ck_assert(cdp_attach(&c));
    char *v = NULL;
    double t_end = dgd_now() + 30;
    while (dgd_now() < t_end) {                 /* until the page's script has run */
        free(v);
        v = cdp_eval(&c, "typeof sseParser === 'function' ? 'yes' : 'no'");
        if (v && !strcmp(v, "yes")) break;
        dgd_sleep_ms(100);
    }
    ck_assert_str_eq(v ? v : "(none)", "yes");
    free(v);
    v = cdp_eval(&c, JS_SSE_CHECK);
    ck_assert_str_eq(v ? v : "(evaluation failed)", "ok");
    free(v);
    cdp_stop(&c);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("web");
    TCase *t = tcase_create("runs_page");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 300);
    tcase_add_test(t, page_shows_finished_run);
    tcase_add_test(t, page_asks_for_token);
    tcase_add_test(t, page_updates_live);
    tcase_add_test(t, page_sse_parser);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
