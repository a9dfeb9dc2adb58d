/* clients/dragon.c -- `dragon`, the thin command-line client of dragond (docs/API.md §5.5):
 * global options, the command table, and the commands that are one request plus a table
 * (status, jobs, runs, show, cancel, pause, resume, metrics). submit, watch, logs and bench
 * follow job streams and live in clients/follow.c.
 *
 *   dragon [--host URL] [-o json] COMMAND [ARGS]      (dragon help COMMAND for details)
 *
 * Settings: --host or DRAGON_HOST (default http://127.0.0.1:8077), DRAGON_TOKEN (sent as
 * "Authorization: Bearer"). Exit codes: see clients/client.h.
 * Not here: HTTP/SSE mechanics (http.c, sse.c). Thread affinity: single-threaded. */
#include "clients/client.h"
#include "clients/cmds.h"
#include "engine/dg.h"

#include <curl/curl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- optional command modules (clients/dragon_infer.c, clients/dragon_export.c) ---------- */
/* Weak defaults: "not mine" and no help lines. A module's strong definitions replace them
 * when its file is linked in (the Makefile links every C file of clients/). */
__attribute__((weak)) int dgc_infer_dispatch(dgc_ctx *c, const char *cmd, int argc,
                                             char **argv) {
    (void)c; (void)cmd; (void)argc; (void)argv;
    return -1;
}
__attribute__((weak)) void dgc_infer_help(FILE *f) { (void)f; }
__attribute__((weak)) int dgc_export_dispatch(dgc_ctx *c, const char *cmd, int argc,
                                              char **argv) {
    (void)c; (void)cmd; (void)argc; (void)argv;
    return -1;
}
__attribute__((weak)) void dgc_export_help(FILE *f) { (void)f; }

/* Offers cmd to the optional modules; -1 when none of them has it. */
static int module_dispatch(dgc_ctx *c, const char *cmd, int argc, char **argv) {
    int rc = dgc_infer_dispatch(c, cmd, argc, argv);
    if (rc < 0) rc = dgc_export_dispatch(c, cmd, argc, argv);
    return rc;
}

/* ---- option parsing ------------------------------------------------------------------------ */
int dgc_usage(const dgc_ctx *c, const char *cmd, const char *fmt, const char *arg) {
    fprintf(stderr, "%s%s%s: ", c->prog, cmd ? " " : "", cmd ? cmd : "");
    fprintf(stderr, fmt, arg ? arg : "");
    fprintf(stderr, "\n(see `%s%s%s --help`)\n", c->prog, cmd ? " " : "", cmd ? cmd : "");
    return DGC_EXIT_USAGE;
}

int dgc_opt(int argc, char **argv, int *i, const char *lng, const char *shrt, const char **val,
            bool *missing) {
    const char *a = argv[*i];
    size_t ln = lng ? strlen(lng) : 0;
    if ((lng && !strcmp(a, lng)) || (shrt && !strcmp(a, shrt))) {
        if (*i + 1 >= argc) { *missing = true; return 1; }
        *val = argv[++*i];
        return 1;
    }
    if (lng && !strncmp(a, lng, ln) && a[ln] == '=') { *val = a + ln + 1; return 1; }
    return 0;
}

bool dgc_parse_long(const char *s, long long lo, long long hi, long long *out) {
    if (!s || !*s) return false;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!end || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* ---- small shared pieces ---------------------------------------------------------------- */
static const char *status_badge(const dgc_ctx *c, const char *st, char *buf, size_t n) {
    if (!c->tty) { snprintf(buf, n, "%s", st); return buf; }
    const char *col = "0";
    if (!strcmp(st, "succeeded")) col = "32";
    else if (!strcmp(st, "failed")) col = "31";
    else if (!strcmp(st, "running")) col = "36";
    else if (!strcmp(st, "cancelled") || !strcmp(st, "paused") || !strcmp(st, "pausing"))
        col = "33";
    snprintf(buf, n, "\033[%sm%s\033[0m", col, st);
    return buf;
}

/* Column padding that ignores ANSI colour codes (they have no width). */
static void print_cell(const char *s, int width) {
    int vis = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '\033') { while (*p && *p != 'm') p++; if (!*p) break; continue; }
        if (((unsigned char)*p & 0xC0) != 0x80) vis++;
    }
    fputs(s, stdout);
    for (int k = vis; k < width; k++) fputc(' ', stdout);
    fputc(' ', stdout);
}

char *dgc_job_path(const char *job, const char *suffix) {
    char *e = dgc_escape(job);
    size_t n = strlen(e) + strlen(suffix) + 16;
    char *p = dg_malloc(n);
    snprintf(p, n, "/v1/jobs/%s%s", e, suffix);
    dg_free(e);
    return p;
}

int dgc_resolve_job(const dgc_ctx *c, const char *arg, char *out, size_t n) {
    if (strcmp(arg, "last") && strcmp(arg, "latest")) {
        snprintf(out, n, "%s", arg);
        return 0;
    }
    int rc;
    json_t *o = dgc_call(c, "GET", "/v1/jobs?limit=1", NULL, &rc);
    if (!o) return rc;
    const char *id = dgc_str(dgc_get(json_array_get(dgc_get(o, "data"), 0), "id"), NULL);
    if (!id) {
        fprintf(stderr, "%s: there are no jobs yet, so '%s' names none\n", c->prog, arg);
        json_decref(o);
        return DGC_EXIT_ERROR;
    }
    snprintf(out, n, "%s", id);
    json_decref(o);
    return 0;
}

static char *run_path(const char *job, const char *suffix) {
    char *e = dgc_escape(job);
    size_t n = strlen(e) + strlen(suffix) + 16;
    char *p = dg_malloc(n);
    snprintf(p, n, "/v1/runs/%s%s", e, suffix);
    dg_free(e);
    return p;
}

/* Appends "&k=v" (escaped) to a query string buffer. */
static void q_add(char *q, size_t n, const char *k, const char *v) {
    if (!v) return;
    char *e = dgc_escape(v);
    size_t l = strlen(q);
    snprintf(q + l, n - l, "%s%s=%s", l ? "&" : "?", k, e);
    dg_free(e);
}

/* ---- status ------------------------------------------------------------------------------- */
static int cmd_status(dgc_ctx *c, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        return dgc_usage(c, "status", "unexpected argument '%s'", argv[i]);
    int rc;
    json_t *sys = dgc_call(c, "GET", "/v1/system", NULL, &rc);
    if (!sys) return rc;
    if (c->json) { dgc_print_json(sys); json_decref(sys); return 0; }
    char b1[64], b2[64];
    printf("dragond %s at %s (api %s), up %s%s\n",
           dgc_str(dgc_get(sys, "build.version"), "?"), c->host,
           dgc_str(dgc_get(sys, "api_version"), "?"),
           dgc_fmt_dur(b1, sizeof b1, dgc_num(dgc_get(sys, "uptime_s"), -1)),
           json_is_true(dgc_get(sys, "draining")) ? ", DRAINING" : "");
    printf("backends: %s\n", dgc_str(dgc_get(sys, "backends"), "-"));
    json_t *devs = dgc_get(sys, "devices");
    for (size_t i = 0; i < json_array_size(devs); i++) {
        json_t *d = json_array_get(devs, i);
        const char *holder = dgc_str(dgc_get(d, "holder.id"), NULL);
        printf("device %s:%d (backend %s): ", dgc_str(dgc_get(d, "kind"), "?"),
               (int)dgc_num(dgc_get(d, "index"), 0), dgc_str(dgc_get(d, "backend"), "?"));
        if (holder)
            printf("running %s at %s tok/s\n", holder,
                   dgc_fmt_num(b2, sizeof b2, dgc_get(d, "tokens_per_s"), "%.0f"));
        else
            printf("idle\n");
    }
    json_t *gpus = dgc_get(sys, "gpus");
    for (size_t i = 0; i < json_array_size(gpus); i++) {
        json_t *g = json_array_get(gpus, i);
        printf("gpu %d %s: %s/%s MB used\n", (int)dgc_num(dgc_get(g, "index"), 0),
               dgc_str(dgc_get(g, "name"), "?"),
               dgc_fmt_num(b1, sizeof b1, dgc_get(g, "mem_used_mb"), "%.0f"),
               dgc_fmt_num(b2, sizeof b2, dgc_get(g, "mem_total_mb"), "%.0f"));
    }
    printf("queue: %s queued, %s running\n",
           dgc_fmt_num(b1, sizeof b1, dgc_get(sys, "queue.jobs_queued"), "%.0f"),
           dgc_fmt_num(b2, sizeof b2, dgc_get(sys, "queue.jobs_running"), "%.0f"));
    json_decref(sys);
    return 0;
}

/* ---- jobs / runs ---------------------------------------------------------------------------- */
static void print_job_rows(const dgc_ctx *c, json_t *data, bool runs) {
    if (runs)
        printf("%-26s %-16s %-11s %-11s %-9s %-9s %-9s %-19s %-9s %s\n", "ID", "NAME", "STATUS",
               "STEP", "TRAIN", "VAL", "TOK/S", "STARTED", "DURATION", "TAGS");
    else
        printf("%-26s %-5s %-16s %-11s %-11s %-9s %-9s %-9s %s\n", "ID", "KIND", "NAME",
               "STATUS", "STEP", "TRAIN", "VAL", "TOK/S", "CREATED");
    for (size_t i = 0; i < json_array_size(data); i++) {
        json_t *j = json_array_get(data, i);
        char step[48], tl[32], vl[32], tps[32], t1[48], dur[32], badge[96], name[20];
        const char *st = dgc_str(dgc_get(j, "status"), "?");
        const char *reason = dgc_str(dgc_get(j, "reason"), NULL);
        char stx[64];
        snprintf(stx, sizeof stx, "%s%s%s%s", st, reason ? "(" : "", reason ? reason : "",
                 reason ? ")" : "");
        status_badge(c, stx, badge, sizeof badge);
        json_t *s = dgc_get(j, "progress.step"), *t = dgc_get(j, "progress.total_steps");
        snprintf(step, sizeof step, "%.0f/%.0f", dgc_num(s, 0), dgc_num(t, 0));
        dgc_fmt_num(tl, sizeof tl, dgc_get(j, "summary_metrics.train_loss"), "%.4f");
        dgc_fmt_num(vl, sizeof vl, dgc_get(j, "summary_metrics.val_loss"), "%.4f");
        dgc_fmt_num(tps, sizeof tps, dgc_get(j, "progress.tokens_per_s"), "%.0f");
        snprintf(name, sizeof name, "%.16s", dgc_str(dgc_get(j, "name"), "-"));
        print_cell(dgc_str(dgc_get(j, "id"), "?"), 26);
        if (!runs) print_cell(dgc_str(dgc_get(j, "kind"), "?"), 5);
        print_cell(name, 16);
        print_cell(badge, 11);
        print_cell(step, 11);
        print_cell(tl, 9);
        print_cell(vl, 9);
        print_cell(tps, 9);
        if (runs) {
            print_cell(dgc_fmt_time(t1, sizeof t1, dgc_get(j, "started_at")), 19);
            print_cell(dgc_fmt_dur(dur, sizeof dur, dgc_num(dgc_get(j, "duration_s"), -1)), 9);
            json_t *tags = dgc_get(j, "tags");
            const char *k;
            json_t *v;
            bool first = true;
            json_object_foreach(tags, k, v) {
                printf("%s%s=%s", first ? "" : ",", k, dgc_str(v, "?"));
                first = false;
            }
            if (first) fputs("-", stdout);
        } else {
            fputs(dgc_fmt_ago(t1, sizeof t1, dgc_get(j, "created_at")), stdout);
        }
        fputc('\n', stdout);
    }
}

static int list_cmd(dgc_ctx *c, int argc, char **argv, bool runs) {
    const char *cmd = runs ? "runs" : "jobs";
    const char *status = NULL, *tag = NULL, *order = NULL, *kind = NULL, *limit = NULL;
    const char *after = NULL;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (dgc_opt(argc, argv, &i, "--status", "-s", &v, &miss)) status = v;
        else if (dgc_opt(argc, argv, &i, "--tag", NULL, &v, &miss)) tag = v;
        else if (runs && dgc_opt(argc, argv, &i, "--order-by", NULL, &v, &miss)) order = v;
        else if (dgc_opt(argc, argv, &i, "--kind", NULL, &v, &miss)) kind = v;
        else if (dgc_opt(argc, argv, &i, "--limit", "-n", &v, &miss)) limit = v;
        else if (dgc_opt(argc, argv, &i, "--after", NULL, &v, &miss)) after = v;
        else return dgc_usage(c, cmd, "unknown argument '%s'", argv[i]);
        if (miss) return dgc_usage(c, cmd, "%s needs a value", argv[i]);
    }
    long long lim;
    if (limit && !dgc_parse_long(limit, 1, 1000, &lim))
        return dgc_usage(c, cmd, "--limit must be 1..1000, got '%s'", limit);
    char q[1024] = "";
    q_add(q, sizeof q, "status", status);
    q_add(q, sizeof q, "tag", tag);
    q_add(q, sizeof q, "order_by", order);
    q_add(q, sizeof q, "kind", kind);
    q_add(q, sizeof q, "limit", limit);
    q_add(q, sizeof q, "after", after);
    char path[1200];
    snprintf(path, sizeof path, "/v1/%s%s", cmd, q);
    int rc;
    json_t *o = dgc_call(c, "GET", path, NULL, &rc);
    if (!o) return rc;
    if (c->json) { dgc_print_json(o); json_decref(o); return 0; }
    json_t *data = dgc_get(o, "data");
    if (json_array_size(data) == 0) {
        printf("no %s%s\n", cmd, status || tag || kind ? " match" : " yet");
    } else {
        print_job_rows(c, data, runs);
        if (json_is_true(dgc_get(o, "has_more")))
            printf("(more: %s %s --after %s)\n", c->prog, cmd,
                   dgc_str(dgc_get(o, "next_after"), "?"));
    }
    json_decref(o);
    return 0;
}
static int cmd_jobs(dgc_ctx *c, int argc, char **argv) { return list_cmd(c, argc, argv, false); }
static int cmd_runs(dgc_ctx *c, int argc, char **argv) { return list_cmd(c, argc, argv, true); }

/* ---- show ------------------------------------------------------------------------------------ */
static int cmd_show(dgc_ctx *c, int argc, char **argv) {
    if (argc != 1) return dgc_usage(c, "show", "needs exactly one JOB id%s", "");
    char job[128];
    int rc = dgc_resolve_job(c, argv[0], job, sizeof job);
    if (rc) return rc;
    char *p = run_path(job, "");
    json_t *run = dgc_call(c, "GET", p, NULL, &rc);
    dg_free(p);
    if (!run) return rc;
    p = run_path(job, "/checkpoints");
    json_t *ck = dgc_call(c, "GET", p, NULL, &rc);
    dg_free(p);
    if (!ck) { json_decref(run); return rc; }
    if (c->json) {
        json_object_set(run, "checkpoints", dgc_get(ck, "data") ? dgc_get(ck, "data")
                                                                : json_array());
        dgc_print_json(run);
        json_decref(run);
        json_decref(ck);
        return 0;
    }
    char b1[64], b2[64], b3[64], b4[64], badge[96];
    const char *st = dgc_str(dgc_get(run, "status"), "?");
    printf("%s  %s  (%s)\n", dgc_str(dgc_get(run, "id"), "?"), dgc_str(dgc_get(run, "name"), "-"),
           dgc_str(dgc_get(run, "kind"), "?"));
    printf("status:     %s", status_badge(c, st, badge, sizeof badge));
    if (dgc_get(run, "reason")) printf(" (%s)", dgc_str(dgc_get(run, "reason"), ""));
    if (dgc_get(run, "message")) printf(": %s", dgc_str(dgc_get(run, "message"), ""));
    if (dgc_get(run, "queue_position") && !strcmp(st, "queued"))
        printf("  [queue position %.0f]", dgc_num(dgc_get(run, "queue_position"), 0));
    printf("\n");
    bool terminal = !strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled");
    double step = dgc_num(dgc_get(run, "progress.step"), 0);
    double total = dgc_num(dgc_get(run, "progress.total_steps"), 0);
    printf("progress:   %.0f/%.0f steps %s %3.0f%%  tokens %s  %s tok/s  ETA %s\n", step, total,
           dgc_fmt_bar(b1, sizeof b1, total > 0 ? step / total : 0, 20),
           total > 0 ? 100 * step / total : 0,
           dgc_fmt_num(b2, sizeof b2, dgc_get(run, "progress.tokens_seen"), "%.0f"),
           dgc_fmt_num(b3, sizeof b3, dgc_get(run, "progress.tokens_per_s"), "%.0f"),
           dgc_fmt_dur(b4, sizeof b4, terminal ? -1 : dgc_num(dgc_get(run, "progress.eta_s"), -1)));
    printf("losses:     train %s  val %s\n",
           dgc_fmt_num(b1, sizeof b1, dgc_get(run, "summary_metrics.train_loss"), "%.4f"),
           dgc_fmt_num(b2, sizeof b2, dgc_get(run, "summary_metrics.val_loss"), "%.4f"));
    printf("created:    %s\n", dgc_fmt_time(b1, sizeof b1, dgc_get(run, "created_at")));
    printf("started:    %s\n", dgc_fmt_time(b1, sizeof b1, dgc_get(run, "started_at")));
    printf("finished:   %s  (duration %s)\n",
           dgc_fmt_time(b1, sizeof b1, dgc_get(run, "finished_at")),
           dgc_fmt_dur(b2, sizeof b2, dgc_num(dgc_get(run, "duration_s"), -1)));
    const char *k;
    json_t *v;
    json_t *tags = dgc_get(run, "tags");
    if (json_object_size(tags)) {
        printf("tags:      ");
        json_object_foreach(tags, k, v) printf(" %s=%s", k, dgc_str(v, "?"));
        printf("\n");
    }
    if (dgc_get(run, "seed")) printf("seed:       %.0f\n", dgc_num(dgc_get(run, "seed"), 0));
    json_t *data = dgc_get(run, "data");
    if (data) {
        char *t = json_dumps(data, JSON_COMPACT);
        printf("data:       %s\n", t ? t : "-");
        free(t);
    }
    if (dgc_get(run, "dataset.path"))
        printf("dataset:    %s  sha256 %.16s…\n", dgc_str(dgc_get(run, "dataset.path"), "-"),
               dgc_str(dgc_get(run, "dataset.sha256"), "-"));
    /* resume_from is where the job restarts after a pause or a daemon restart */
    if (dgc_get(run, "resume_from") && !terminal)
        printf("resumes at: %s\n", dgc_str(dgc_get(run, "resume_from"), "-"));
    json_t *att = dgc_get(run, "attempts");
    for (size_t i = 0; i < json_array_size(att); i++) {
        json_t *a = json_array_get(att, i);
        printf("attempt %-3.0f %s -> %s  %s%s%s\n", dgc_num(dgc_get(a, "n"), 0),
               dgc_fmt_time(b1, sizeof b1, dgc_get(a, "started_at")),
               dgc_fmt_time(b2, sizeof b2, dgc_get(a, "ended_at")),
               dgc_str(dgc_get(a, "exit_reason"), dgc_get(a, "ended_at") ? "" : "(running)"),
               dgc_get(a, "resumed_from") ? "  resumed from " : "",
               dgc_str(dgc_get(a, "resumed_from"), ""));
    }
    json_t *cks = dgc_get(ck, "data");
    if (json_array_size(cks)) {
        printf("checkpoints:\n  %-28s %7s %9s %9s %9s  %s\n", "ID", "STEP", "TRAIN", "VAL",
               "SIZE", "SHA256");
        for (size_t i = 0; i < json_array_size(cks); i++) {
            json_t *x = json_array_get(cks, i);
            printf("  %-28s %7.0f %9s %9s %9s  %.12s%s\n", dgc_str(dgc_get(x, "id"), "?"),
                   dgc_num(dgc_get(x, "step_number"), 0),
                   dgc_fmt_num(b1, sizeof b1, dgc_get(x, "metrics.train_loss"), "%.4f"),
                   dgc_fmt_num(b2, sizeof b2, dgc_get(x, "metrics.val_loss"), "%.4f"),
                   dgc_fmt_bytes(b3, sizeof b3, dgc_get(x, "bytes")),
                   dgc_str(dgc_get(x, "sha256"), "-"),
                   json_is_false(dgc_get(x, "valid")) ? "  (file missing)" : "");
        }
    } else {
        printf("checkpoints: none\n");
    }
    json_t *params = dgc_get(run, "params");
    if (json_object_size(params)) {
        printf("params:\n");
        json_object_foreach(params, k, v) {
            char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            printf("  %-32s %s\n", k, t ? t : "-");
            free(t);
        }
    }
    json_decref(run);
    json_decref(ck);
    return 0;
}

/* ---- cancel / pause / resume ----------------------------------------------------------------- */
static int action_cmd(dgc_ctx *c, const char *cmd, int argc, char **argv) {
    const char *job = NULL;
    bool no_ckpt = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(cmd, "cancel") && !strcmp(argv[i], "--no-checkpoint")) no_ckpt = true;
        else if (argv[i][0] == '-' && argv[i][1])
            return dgc_usage(c, cmd, "unknown option '%s'", argv[i]);
        else if (job) return dgc_usage(c, cmd, "unexpected argument '%s'", argv[i]);
        else job = argv[i];
    }
    if (!job) return dgc_usage(c, cmd, "needs a JOB id%s", "");
    char jb[128];
    int rc = dgc_resolve_job(c, job, jb, sizeof jb);
    if (rc) return rc;
    job = jb;
    char suffix[32];
    snprintf(suffix, sizeof suffix, "/%s", cmd);
    char *p = dgc_job_path(job, suffix);
    json_t *body = no_ckpt ? json_pack("{s:b}", "checkpoint", 0) : NULL;
    json_t *o = dgc_call(c, "POST", p, body, &rc);
    json_decref(body);
    dg_free(p);
    if (!o) return rc;
    if (c->json) dgc_print_json(o);
    else
        printf("%s: %s\n", dgc_str(dgc_get(o, "id"), job), dgc_str(dgc_get(o, "status"), "?"));
    json_decref(o);
    return 0;
}
static int cmd_cancel(dgc_ctx *c, int argc, char **argv) {
    return action_cmd(c, "cancel", argc, argv);
}
static int cmd_pause(dgc_ctx *c, int argc, char **argv) {
    return action_cmd(c, "pause", argc, argv);
}
static int cmd_resume(dgc_ctx *c, int argc, char **argv) {
    return action_cmd(c, "resume", argc, argv);
}

/* ---- metrics --------------------------------------------------------------------------------- */
static int cmd_metrics(dgc_ctx *c, int argc, char **argv) {
    const char *job = NULL, *key = NULL, *maxp = NULL;
    bool csv = false;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (dgc_opt(argc, argv, &i, "--key", "-k", &v, &miss)) key = v;
        else if (dgc_opt(argc, argv, &i, "--max-points", NULL, &v, &miss)) maxp = v;
        else if (!strcmp(argv[i], "--csv")) csv = true;
        else if (argv[i][0] == '-' && argv[i][1])
            return dgc_usage(c, "metrics", "unknown option '%s'", argv[i]);
        else if (job) return dgc_usage(c, "metrics", "unexpected argument '%s'", argv[i]);
        else job = argv[i];
        if (miss) return dgc_usage(c, "metrics", "%s needs a value", argv[i]);
    }
    if (!job) return dgc_usage(c, "metrics", "needs a JOB id%s", "");
    long long mp = 0;
    if (maxp && !dgc_parse_long(maxp, 1, 1000000, &mp))
        return dgc_usage(c, "metrics", "--max-points must be 1..1000000, got '%s'", maxp);
    char jb[128];
    int rc = dgc_resolve_job(c, job, jb, sizeof jb);
    if (rc) return rc;
    job = jb;
    if (!key) {
        char *p = run_path(job, "/metrics");
        json_t *o = dgc_call(c, "GET", p, NULL, &rc);
        dg_free(p);
        if (!o) return rc;
        json_t *keys = dgc_get(o, "keys");
        if (c->json) dgc_print_json(o);
        else if (csv) {
            printf("key,last,min,max,last_step,n_points\n");
            for (size_t i = 0; i < json_array_size(keys); i++) {
                json_t *k = json_array_get(keys, i);
                printf("%s,%.9g,%.9g,%.9g,%.0f,%.0f\n", dgc_str(dgc_get(k, "key"), ""),
                       dgc_num(dgc_get(k, "last"), NAN), dgc_num(dgc_get(k, "min"), NAN),
                       dgc_num(dgc_get(k, "max"), NAN), dgc_num(dgc_get(k, "last_step"), 0),
                       dgc_num(dgc_get(k, "n_points"), 0));
            }
        } else if (!json_array_size(keys)) {
            printf("no metrics recorded for %s yet\n", job);
        } else {
            printf("%-16s %12s %12s %12s %9s %8s\n", "KEY", "LAST", "MIN", "MAX", "LAST_STEP",
                   "POINTS");
            for (size_t i = 0; i < json_array_size(keys); i++) {
                json_t *k = json_array_get(keys, i);
                char b1[32], b2[32], b3[32];
                printf("%-16s %12s %12s %12s %9.0f %8.0f\n", dgc_str(dgc_get(k, "key"), "?"),
                       dgc_fmt_num(b1, sizeof b1, dgc_get(k, "last"), "%.6g"),
                       dgc_fmt_num(b2, sizeof b2, dgc_get(k, "min"), "%.6g"),
                       dgc_fmt_num(b3, sizeof b3, dgc_get(k, "max"), "%.6g"),
                       dgc_num(dgc_get(k, "last_step"), 0), dgc_num(dgc_get(k, "n_points"), 0));
            }
            printf("(one series: %s metrics %s --key KEY [--csv])\n", c->prog, job);
        }
        json_decref(o);
        return 0;
    }
    char *ek = dgc_escape(key);
    char suffix[400];
    snprintf(suffix, sizeof suffix, "/metrics/%s", ek);
    dg_free(ek);
    if (maxp) {
        size_t l = strlen(suffix);
        snprintf(suffix + l, sizeof suffix - l, "?max_points=%lld", mp);
    }
    char *p = run_path(job, suffix);
    json_t *o = dgc_call(c, "GET", p, NULL, &rc);
    dg_free(p);
    if (!o) return rc;
    json_t *pts = dgc_get(o, "points");
    if (c->json) {
        dgc_print_json(o);
    } else if (csv) {
        printf("step,timestamp_ms,%s\n", key);
        for (size_t i = 0; i < json_array_size(pts); i++) {
            json_t *pt = json_array_get(pts, i);
            json_t *val = json_array_get(pt, 2);
            printf("%.0f,%.0f,", dgc_num(json_array_get(pt, 0), 0),
                   dgc_num(json_array_get(pt, 1), 0));
            if (json_is_number(val)) printf("%.9g\n", dgc_num(val, 0));
            else printf("\n");
        }
    } else {
        printf("%-8s %-23s %s\n", "STEP", "TIME", key);
        for (size_t i = 0; i < json_array_size(pts); i++) {
            json_t *pt = json_array_get(pts, i);
            char tb[48], vb[32];
            json_t *ts = json_real(dgc_num(json_array_get(pt, 1), 0) / 1000.0);
            printf("%-8.0f %-23s %s\n", dgc_num(json_array_get(pt, 0), 0),
                   dgc_fmt_time(tb, sizeof tb, ts),
                   dgc_fmt_num(vb, sizeof vb, json_array_get(pt, 2), "%.6g"));
            json_decref(ts);
        }
        if (json_is_true(dgc_get(o, "downsampled")))
            printf("(%zu of %.0f points, %s downsampled)\n", json_array_size(pts),
                   dgc_num(dgc_get(o, "n_points"), 0), dgc_str(dgc_get(o, "method"), "?"));
    }
    json_decref(o);
    return 0;
}

/* ---- the command table ------------------------------------------------------------------ */
typedef struct {
    const char *name;
    int (*fn)(dgc_ctx *c, int argc, char **argv);
    const char *usage;
    const char *help;         /* first line: the summary in the command list */
} dgc_cmd;

static const dgc_cmd CMDS[] = {
    {"status", cmd_status, "status", "Daemon build, uptime, devices and queue."},
    {"submit", dgc_cmd_submit,
     "submit FILE [-f] [--name N] [--tag k=v]... [--data PATH | --preset shakespeare]\n"
     "              [--steps N] [--seed N] [--priority N] [--resume-from CKPT|JOB:latest]",
     "Submit a training job; -f follows it to the end.\n"
     "  FILE is a job spec {kind, name?, config:{model,training}, data:{path|preset}, ...}\n"
     "  or a model config {model, training} (e.g. config/models/tiny.json) that is wrapped\n"
     "  into a train job. --data/--preset give the data, --steps overrides training.max_steps.\n"
     "  -f/--follow streams progress, losses, checkpoints and logs until the job ends and exits\n"
     "  0 succeeded, 1 failed, 2 cancelled; Ctrl-C detaches (exit 130) without cancelling."},
    {"jobs", cmd_jobs, "jobs [--status S[,S]] [--kind train|bench] [--limit N] [--after ID]",
     "List jobs, newest first."},
    {"runs", cmd_runs,
     "runs [--order-by val_loss|-val_loss|train_loss|tokens_per_s|...] [--status S] [--tag k=v]\n"
     "            [--limit N]",
     "List runs (run history) with losses, throughput and duration."},
    {"show", cmd_show, "show JOB",
     "A job or run in full: status, progress, losses, attempts, dataset, checkpoints, params."},
    {"logs", dgc_cmd_logs, "logs JOB [-f] [--tail N]",
     "Print a job's log lines; -f keeps following until the job ends."},
    {"watch", dgc_cmd_watch, "watch JOB",
     "Live view of a job: progress, losses, tokens/s and a loss sparkline.\n"
     "  Exits like submit -f when the job ends (0 succeeded, 1 failed, 2 cancelled)."},
    {"cancel", cmd_cancel, "cancel JOB [--no-checkpoint]",
     "Cancel a queued or running job (a running job writes a final checkpoint first)."},
    {"pause", cmd_pause, "pause JOB", "Pause a running job (checkpoint, then paused)."},
    {"resume", cmd_resume, "resume JOB", "Requeue a paused job; it continues from its checkpoint."},
    {"metrics", cmd_metrics, "metrics JOB [--key K] [--csv] [--max-points N]",
     "Metric keys of a run, or one series with --key (table or --csv).\n"
     "  Without --key: every metric key with last/min/max. With --key: that series (step, time,\n"
     "  value), downsampled by the daemon to --max-points; --csv for spreadsheets and scripts."},
    {"bench", dgc_cmd_bench, "bench [--steps N]",
     "Benchmark the engine on the daemon's device and print the results.\n"
     "  Runs as a job of kind bench; waits for it, then prints train tokens/s and cached decode\n"
     "  tokens/s (GET /v1/benchmarks/{id})."},
};
static const int N_CMDS = (int)(sizeof CMDS / sizeof CMDS[0]);

static void print_help(const dgc_ctx *c, FILE *f) {
    fprintf(f,
            "usage: %s [--host URL] [-o json] COMMAND [ARGS]\n\n"
            "The command-line client of dragond, the Dragon training daemon.\n\ncommands:\n",
            c->prog);
    for (int i = 0; i < N_CMDS; i++) {
        const char *nl = strchr(CMDS[i].help, '\n');
        fprintf(f, "  %-9s %.*s\n", CMDS[i].name,
                (int)(nl ? nl - CMDS[i].help : (long)strlen(CMDS[i].help)), CMDS[i].help);
    }
    dgc_infer_help(f);
    dgc_export_help(f);
    fprintf(f,
            "\nglobal options:\n"
            "  --host URL     daemon address (env DRAGON_HOST; default %s)\n"
            "  -o json        print the API's JSON (for scripts); -o table is the default\n"
            "  -h, --help     help; `%s help COMMAND` or `%s COMMAND --help` for one command\n"
            "JOB is a job id (job_...), or `last` for the newest job\n"
            "environment:\n"
            "  DRAGON_HOST    as --host\n"
            "  DRAGON_TOKEN   bearer token, for a daemon started with --token-file\n"
            "exit codes: 0 ok, 1 error from or reaching the daemon (or the followed job failed),\n"
            "            2 usage error (or the followed job was cancelled), 130 Ctrl-C\n",
            DGC_DEFAULT_HOST, c->prog, c->prog);
}

static int print_cmd_help(const dgc_ctx *c, const char *name) {
    for (int i = 0; i < N_CMDS; i++) {
        if (strcmp(CMDS[i].name, name)) continue;
        printf("usage: %s %s\n\n%s\n", c->prog, CMDS[i].usage, CMDS[i].help);
        printf("\nglobal options: --host URL (DRAGON_HOST), -o json; DRAGON_TOKEN for auth\n");
        return 0;
    }
    return dgc_usage(c, NULL, "unknown command '%s'", name);
}

static void on_sigint(int sig) {
    (void)sig;
    dgc_interrupted = 1;
}

int main(int argc, char **argv) {
    dgc_ctx c;
    memset(&c, 0, sizeof c);
    const char *slash = strrchr(argv[0], '/');
    c.prog = slash ? slash + 1 : argv[0];
    c.tty = isatty(1);
    const char *host = getenv("DRAGON_HOST");
    const char *token = getenv("DRAGON_TOKEN");
    /* Global options may come before or after the command; collect the rest in order. */
    char **rest = dg_calloc((size_t)argc + 1, sizeof *rest);
    int n_rest = 0;
    bool help = false;
    for (int i = 1; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (!strcmp(argv[i], "--")) {
            for (i++; i < argc; i++) rest[n_rest++] = argv[i];
            break;
        }
        if (dgc_opt(argc, argv, &i, "--host", "-H", &v, &miss)) {
            if (miss) return dgc_usage(&c, NULL, "--host needs a URL%s", "");
            host = v;
        } else if (dgc_opt(argc, argv, &i, "--output", "-o", &v, &miss)) {
            if (miss) return dgc_usage(&c, NULL, "-o needs json or table%s", "");
            if (!strcmp(v, "json")) c.json = true;
            else if (!strcmp(v, "table") || !strcmp(v, "wide")) c.json = false;
            else if (n_rest > 0 && !strcmp(rest[0], "export")) {   /* export -o DIR */
                rest[n_rest++] = (char *)"--out";
                rest[n_rest++] = (char *)v;
            } else return dgc_usage(&c, NULL, "-o takes json or table, not '%s'", v);
        } else if (!strcmp(argv[i], "-ojson")) {
            c.json = true;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help = true;
        } else {
            rest[n_rest++] = argv[i];
        }
    }
    if (!host || !*host) host = DGC_DEFAULT_HOST;
    if (!strstr(host, "://")) snprintf(c.host, sizeof c.host, "http://%s", host);
    else snprintf(c.host, sizeof c.host, "%s", host);
    size_t hl = strlen(c.host);
    while (hl > 0 && c.host[hl - 1] == '/') c.host[--hl] = 0;
    if (token) {
        snprintf(c.token, sizeof c.token, "%s", token);
        c.token[strcspn(c.token, "\r\n")] = 0;     /* $(cat token_file) keeps no newline */
    }
    int rc;
    if (n_rest == 0) {
        print_help(&c, help ? stdout : stderr);
        rc = help ? 0 : DGC_EXIT_USAGE;
        goto out;
    }
    const char *cmd = rest[0];
    if (!strcmp(cmd, "help")) {
        if (n_rest > 1) rc = print_cmd_help(&c, rest[1]);
        else { print_help(&c, stdout); rc = 0; }
        goto out;
    }
    if (help) {
        bool known = false;
        for (int i = 0; i < N_CMDS; i++) known |= !strcmp(CMDS[i].name, cmd);
        if (known) { rc = print_cmd_help(&c, cmd); goto out; }
        char *hargv[2] = {(char *)"--help", NULL};
        rc = module_dispatch(&c, cmd, 1, hargv);
        if (rc < 0) rc = dgc_usage(&c, NULL, "unknown command '%s'", cmd);
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = -1;
    for (int i = 0; i < N_CMDS; i++)
        if (!strcmp(CMDS[i].name, cmd)) rc = CMDS[i].fn(&c, n_rest - 1, rest + 1);
    if (rc < 0) rc = module_dispatch(&c, cmd, n_rest - 1, rest + 1);
    if (rc < 0) rc = dgc_usage(&c, NULL, "unknown command '%s'", cmd);
    fflush(stdout);
    curl_global_cleanup();
out:
    dg_free(rest);
    return rc;
}
