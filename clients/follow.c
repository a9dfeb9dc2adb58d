/* clients/follow.c -- the `dragon` commands that follow a job's SSE stream: submit (with -f),
 * watch, logs -f and bench. One renderer turns stream events (status, progress, metric, log,
 * checkpoint, end; docs/API.md §5.3) into output: on a terminal a live status line (step,
 * progress bar, losses, tokens/s, ETA, loss sparkline) with permanent lines for statuses,
 * evaluations, checkpoints and logs; elsewhere (pipes, tests) plain lines only; with -o json
 * one JSON object per event (JSON lines).
 *
 * Not here: reconnects and SSE framing (http.c, sse.c). Thread affinity: single-threaded. */
#include "clients/cmds.h"
#include "engine/dg.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long a follower keeps trying to reconnect to a daemon that went away (a restart
 * resumes the job, so waiting a while is worth it). */
#define FOLLOW_GIVE_UP_S 120.0

typedef struct {
    const dgc_ctx *c;
    const char    *job;
    bool           all_logs;     /* submit -f: every log line; watch/bench: warnings only */
    bool           quiet;        /* bench: statuses only */
    bool           silent;       /* bench -o json: nothing until the result */
    bool           live;         /* redraw one line (terminal, not -o json) */
    bool           line_open;    /* the live line is on screen */
    char           status[32], reason[64], message[512];
    double         step, total, tps, eta, train_loss, val_loss;
    double        *hist;         /* train_loss values, for the sparkline */
    int            n_hist, cap_hist;
    double         last_draw;
    long long      last_log_line; /* logs -f: lines up to this one were printed already */
    bool           logs_only;    /* logs -f */
} view;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void view_init(view *v, const dgc_ctx *c, const char *job) {
    memset(v, 0, sizeof *v);
    v->c = c;
    v->job = job;
    v->live = c->tty && !c->json;
    v->train_loss = v->val_loss = v->tps = v->eta = NAN;
    snprintf(v->status, sizeof v->status, "?");
}

static void view_free(view *v) { dg_free(v->hist); }

/* Clears the live line so a permanent line can be printed. */
static void view_clear(view *v) {
    if (v->line_open) {
        fputs("\r\033[K", stdout);
        v->line_open = false;
    }
}

/* Terminal width (80 when unknown). */
static int term_cols(void) {
    struct winsize ws;
    if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10) return ws.ws_col;
    return 80;
}

/* Appends to a fixed buffer. */
static void cat(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void cat(char *buf, size_t n, const char *fmt, ...) {
    size_t l = strlen(buf);
    if (l >= n - 1) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + l, n - l, fmt, ap);
    va_end(ap);
}

/* The live line: redrawn in place (throttled to 10 Hz unless it is not on screen), cut to the
 * terminal width so that "\r\033[K" can always erase it. */
static void view_draw(view *v, bool force) {
    if (!v->live || v->logs_only) return;
    double t = now_s();
    if (!force && v->line_open && t - v->last_draw < 0.1) return;
    v->last_draw = t;
    char bar[128], spark[256], eta[32], line[1024] = "";
    double frac = v->total > 0 ? v->step / v->total : 0;
    dgc_fmt_bar(bar, sizeof bar, frac, 20);
    dgc_fmt_spark(spark, sizeof spark, v->hist, v->n_hist, 24);
    dgc_fmt_dur(eta, sizeof eta, isfinite(v->eta) ? v->eta : -1);
    cat(line, sizeof line, "%s step %.0f", v->status, v->step);
    if (v->total > 0) cat(line, sizeof line, "/%.0f %s %3.0f%%", v->total, bar, 100 * frac);
    if (isfinite(v->train_loss)) cat(line, sizeof line, "  train %.4f", v->train_loss);
    if (isfinite(v->val_loss)) cat(line, sizeof line, "  val %.4f", v->val_loss);
    if (isfinite(v->tps)) cat(line, sizeof line, "  %.0f tok/s", v->tps);
    if (isfinite(v->eta) && v->eta > 0) cat(line, sizeof line, "  ETA %s", eta);
    if (v->n_hist > 1) cat(line, sizeof line, "  %s", spark);
    /* cut at cols-1 visible characters (UTF-8: count lead bytes only) */
    int cols = term_cols() - 1, vis = 0;
    size_t i = 0;
    for (; line[i]; i++) {
        if (((unsigned char)line[i] & 0xC0) != 0x80 && ++vis > cols) break;
    }
    line[i] = 0;
    fputs("\r\033[K", stdout);
    fputs(line, stdout);
    fflush(stdout);
    v->line_open = true;
}

static int exit_for_status(const char *st) {
    if (!strcmp(st, "succeeded")) return 0;
    if (!strcmp(st, "cancelled")) return 2;
    return 1;
}

static int on_event(const char *ev, long long id, json_t *data, void *ud) {
    view *v = ud;
    const dgc_ctx *c = v->c;
    if (c->json && !v->quiet && !v->logs_only) {
        json_t *o = json_pack("{s:s, s:O}", "event", ev, "data", data);
        json_object_set_new(o, "id", id >= 0 ? json_integer(id) : json_null());
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s) puts(s);
        free(s);                       /* jansson's buffer */
        json_decref(o);
        fflush(stdout);
    }
    bool text = !c->json && !v->silent;
    if (!strcmp(ev, "status")) {
        const char *st = dgc_str(dgc_get(data, "status"), "?");
        snprintf(v->status, sizeof v->status, "%s", st);
        snprintf(v->reason, sizeof v->reason, "%s", dgc_str(dgc_get(data, "reason"), ""));
        snprintf(v->message, sizeof v->message, "%s", dgc_str(dgc_get(data, "message"), ""));
        if (text && !v->logs_only) {
            view_clear(v);
            printf("status: %s", st);
            if (v->reason[0]) printf(" (%s)", v->reason);
            if (dgc_get(data, "attempt")) printf(" (attempt %.0f)",
                                                 dgc_num(dgc_get(data, "attempt"), 0));
            if (v->message[0] && strcmp(st, "succeeded")) printf(": %s", v->message);
            printf("\n");
        }
    } else if (!strcmp(ev, "progress")) {
        v->step = dgc_num(dgc_get(data, "step"), v->step);
        v->total = dgc_num(dgc_get(data, "total_steps"), v->total);
        v->tps = dgc_num(dgc_get(data, "tokens_per_s"), v->tps);
        v->eta = dgc_num(dgc_get(data, "eta_s"), v->eta);
    } else if (!strcmp(ev, "metric")) {
        json_t *vals = dgc_get(data, "values");
        double step = dgc_num(dgc_get(data, "step"), v->step);
        json_t *tl = dgc_get(vals, "train_loss"), *vl = dgc_get(vals, "val_loss");
        if (tl) {
            v->train_loss = dgc_num(tl, NAN);
            if (v->n_hist == v->cap_hist) {
                v->cap_hist = v->cap_hist ? v->cap_hist * 2 : 64;
                v->hist = dg_realloc(v->hist, (size_t)v->cap_hist * sizeof *v->hist);
            }
            v->hist[v->n_hist++] = v->train_loss;
        }
        if (vl) v->val_loss = dgc_num(vl, NAN);
        /* Plain output: one line per metric event. Live: only evaluations stay on screen. */
        if (text && !v->logs_only && !v->quiet && (!v->live || vl)) {
            view_clear(v);
            printf("step %.0f", step);
            if (v->total > 0) printf("/%.0f", v->total);
            const char *k;
            json_t *x;
            json_object_foreach(vals, k, x) {
                if (json_is_number(x)) printf("  %s %.4g", k, dgc_num(x, 0));
            }
            if (!vl && isfinite(v->tps)) printf("  %.0f tok/s", v->tps);
            printf("\n");
        }
    } else if (!strcmp(ev, "log")) {
        const char *lvl = dgc_str(dgc_get(data, "level"), "info");
        long long line = (long long)dgc_num(dgc_get(data, "line"), 0);
        bool important = !strcmp(lvl, "warn") || !strcmp(lvl, "error");
        if (v->logs_only) {
            if (line > v->last_log_line) {
                if (c->json) {                 /* the shape of GET .../logs?format=json rows */
                    json_t *o = json_pack("{s:I, s:n, s:s, s:s}", "line_no", (json_int_t)line,
                                          "ts", "level", lvl, "msg",
                                          dgc_str(dgc_get(data, "msg"), ""));
                    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
                    if (t) puts(t);
                    free(t);
                    json_decref(o);
                } else {
                    printf("[%s] %s\n", lvl, dgc_str(dgc_get(data, "msg"), ""));
                }
                fflush(stdout);
                v->last_log_line = line;
            }
        } else if (text && !v->quiet && (v->all_logs || important)) {
            view_clear(v);
            printf("  [%s] %s\n", lvl, dgc_str(dgc_get(data, "msg"), ""));
        }
    } else if (!strcmp(ev, "checkpoint")) {
        if (text && !v->logs_only && !v->quiet) {
            char b[32];
            view_clear(v);
            printf("checkpoint %s at step %.0f (%s)", dgc_str(dgc_get(data, "id"), "?"),
                   dgc_num(dgc_get(data, "step_number"), 0),
                   dgc_fmt_bytes(b, sizeof b, dgc_get(data, "bytes")));
            if (dgc_get(data, "metrics.val_loss"))
                printf(" val_loss %.4f", dgc_num(dgc_get(data, "metrics.val_loss"), 0));
            printf("\n");
        }
    } else if (!strcmp(ev, "end")) {
        const char *st = dgc_str(dgc_get(data, "status"), "?");
        if (!strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled")) {
            snprintf(v->status, sizeof v->status, "%s", st);
            view_draw(v, true);
            view_clear(v);
            return 1 + exit_for_status(st);
        }
        if (!strcmp(st, "deleted")) {
            view_clear(v);
            fprintf(stderr, "%s: job %s was deleted\n", c->prog, v->job);
            snprintf(v->status, sizeof v->status, "deleted");
            return 1 + 1;
        }
        /* "draining": the daemon is shutting down; the job resumes when it comes back. */
        view_clear(v);
        fprintf(stderr, "%s: the daemon is shutting down (%s); waiting for it to come back "
                        "(Ctrl-C to stop waiting)\n", c->prog, st);
        return 0;
    }
    view_draw(v, false);
    return 0;
}

/* Turns dgc_follow's result into an exit code and prints the closing lines. */
static int follow_finish(view *v, int r) {
    const dgc_ctx *c = v->c;
    view_clear(v);
    fflush(stdout);
    if (r == DGC_FOLLOW_INTERRUPTED) {
        fprintf(stderr, "\n%s: detached from %s; the job keeps running.\n"
                        "  follow it again: %s watch %s\n  stop it:         %s cancel %s\n",
                c->prog, v->job, c->prog, v->job, c->prog, v->job);
        return DGC_EXIT_INTERRUPT;
    }
    if (r == DGC_FOLLOW_LOST || r == DGC_FOLLOW_HTTP || r <= 0) return DGC_EXIT_ERROR;
    int code = r - 1;
    if (!c->json && !v->logs_only && strcmp(v->status, "deleted")) {
        printf("%s %s", v->job, v->status);
        if (!strcmp(v->status, "failed") && v->reason[0]) printf(" (%s)", v->reason);
        if (v->total > 0) printf(": %.0f/%.0f steps", v->step, v->total);
        if (isfinite(v->train_loss)) printf(", train_loss %.4f", v->train_loss);
        if (isfinite(v->val_loss)) printf(", val_loss %.4f", v->val_loss);
        if (strcmp(v->status, "succeeded") && v->message[0]) printf(" -- %s", v->message);
        printf("\n");
    }
    return code;
}

/* ---- submit ---------------------------------------------------------------------------------- */
static json_t *ensure_obj(json_t *parent, const char *key) {
    json_t *o = json_object_get(parent, key);
    if (!json_is_object(o)) {
        o = json_object();
        json_object_set_new(parent, key, o);
    }
    return o;
}

int dgc_cmd_submit(dgc_ctx *c, int argc, char **argv) {
    const char *file = NULL, *name = NULL, *data = NULL, *preset = NULL, *steps = NULL;
    const char *seed = NULL, *prio = NULL, *resume = NULL;
    bool follow = false;
    json_t *tags = json_object();
    int rc = DGC_EXIT_USAGE;
    json_t *spec = NULL;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow")) follow = true;
        else if (!strcmp(argv[i], "--detach")) follow = false;
        else if (dgc_opt(argc, argv, &i, "--name", "-n", &v, &miss)) name = v;
        else if (dgc_opt(argc, argv, &i, "--data", "-d", &v, &miss)) data = v;
        else if (dgc_opt(argc, argv, &i, "--preset", NULL, &v, &miss)) preset = v;
        else if (dgc_opt(argc, argv, &i, "--steps", NULL, &v, &miss)) steps = v;
        else if (dgc_opt(argc, argv, &i, "--seed", NULL, &v, &miss)) seed = v;
        else if (dgc_opt(argc, argv, &i, "--priority", NULL, &v, &miss)) prio = v;
        else if (dgc_opt(argc, argv, &i, "--resume-from", NULL, &v, &miss)) resume = v;
        else if (dgc_opt(argc, argv, &i, "--tag", "-t", &v, &miss)) {
            if (miss) break;
            const char *eq = strchr(v, '=');
            if (!eq || eq == v) {
                rc = dgc_usage(c, "submit", "--tag takes key=value, got '%s'", v);
                goto out;
            }
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(eq - v), v);
            json_object_set_new(tags, key, json_string(eq + 1));
        } else if (argv[i][0] == '-' && argv[i][1]) {
            rc = dgc_usage(c, "submit", "unknown option '%s'", argv[i]);
            goto out;
        } else if (file) {
            rc = dgc_usage(c, "submit", "unexpected argument '%s' (one FILE only)", argv[i]);
            goto out;
        } else {
            file = argv[i];
        }
        if (miss) { rc = dgc_usage(c, "submit", "%s needs a value", argv[i]); goto out; }
    }
    if (!file) { rc = dgc_usage(c, "submit", "needs a FILE (job spec or model config)%s", "");
                 goto out; }
    if (data && preset) {
        rc = dgc_usage(c, "submit", "give --data or --preset, not both%s", "");
        goto out;
    }
    long long n_steps = 0, n_seed = 0, n_prio = 0;
    if (steps && !dgc_parse_long(steps, 1, 1000000000LL, &n_steps)) {
        rc = dgc_usage(c, "submit", "--steps must be a positive integer, got '%s'", steps);
        goto out;
    }
    if (seed && !dgc_parse_long(seed, 0, LLONG_MAX, &n_seed)) {
        rc = dgc_usage(c, "submit", "--seed must be a non-negative integer, got '%s'", seed);
        goto out;
    }
    if (prio && !dgc_parse_long(prio, -1000, 1000, &n_prio)) {
        rc = dgc_usage(c, "submit", "--priority must be in -1000..1000, got '%s'", prio);
        goto out;
    }
    json_error_t je;
    json_t *in = !strcmp(file, "-") ? json_loadf(stdin, 0, &je) : json_load_file(file, 0, &je);
    if (!in) {
        fprintf(stderr, "%s submit: cannot read %s: %s (line %d, column %d)\n", c->prog, file,
                je.text, je.line, je.column);
        rc = DGC_EXIT_USAGE;
        goto out;
    }
    if (!json_is_object(in)) {
        fprintf(stderr, "%s submit: %s must hold a JSON object\n", c->prog, file);
        json_decref(in);
        goto out;
    }
    bool is_spec = json_object_get(in, "kind") || json_object_get(in, "config") ||
                   json_object_get(in, "data");
    if (is_spec) {
        spec = in;
    } else {
        /* A model config ({"name"?, "description"?, "model", "training"} as in
         * config/models/NAME.json): wrap it into a train job. */
        spec = json_object();
        json_object_set_new(spec, "kind", json_string("train"));
        json_t *nm = json_object_get(in, "name");
        if (json_is_string(nm)) json_object_set(spec, "name", nm);
        json_object_del(in, "name");
        json_object_del(in, "description");
        json_object_set_new(spec, "config", in);
    }
    bool bench = !strcmp(dgc_str(json_object_get(spec, "kind"), "train"), "bench");
    if (name) json_object_set_new(spec, "name", json_string(name));
    if (json_object_size(tags)) {
        json_t *t = ensure_obj(spec, "tags");
        json_object_update(t, tags);
    }
    if (seed) json_object_set_new(spec, "seed", json_integer(n_seed));
    if (prio) json_object_set_new(spec, "priority", json_integer(n_prio));
    if (resume) json_object_set_new(spec, "resume_from", json_string(resume));
    if (data || preset) {
        json_t *d = json_object();
        if (preset) json_object_set_new(d, "preset", json_string(preset));
        else json_object_set_new(d, "path", json_string(data));
        json_object_set_new(spec, "data", d);
    }
    /* A relative data path means "relative to where I run dragon": the daemon resolves paths
     * against its own directory, so send an absolute one when the file is here. */
    json_t *dpath = dgc_get(spec, "data.path");
    if (json_is_string(dpath)) {
        char abs[PATH_MAX];
        const char *p = json_string_value(dpath);
        if (p[0] != '/') {
            if (realpath(p, abs)) json_object_set_new(json_object_get(spec, "data"), "path",
                                                      json_string(abs));
            else if (data) {
                fprintf(stderr, "%s submit: data file %s not found\n", c->prog, p);
                goto out;
            }
        }
    }
    if (steps) {
        if (bench) {
            json_object_set_new(ensure_obj(spec, "data"), "bench_steps", json_integer(n_steps));
        } else {
            json_t *cfg = ensure_obj(spec, "config");
            json_object_set_new(ensure_obj(cfg, "training"), "max_steps", json_integer(n_steps));
        }
    }
    if (!bench && !json_object_get(spec, "data")) {
        rc = dgc_usage(c, "submit", "%s has no data: add --data PATH or --preset shakespeare",
                       file);
        goto out;
    }
    json_t *job = dgc_call(c, "POST", "/v1/jobs", spec, &rc);
    if (!job) goto out;
    const char *id = dgc_str(dgc_get(job, "id"), NULL);
    if (!id) {
        fprintf(stderr, "%s submit: the daemon answered without a job id\n", c->prog);
        json_decref(job);
        rc = DGC_EXIT_ERROR;
        goto out;
    }
    char jid[128];
    snprintf(jid, sizeof jid, "%s", id);
    if (c->json) {
        if (follow) {
            json_t *o = json_pack("{s:s, s:n, s:O}", "event", "submitted", "id", "data", job);
            char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
            if (s) puts(s);
            free(s);
            json_decref(o);
        } else {
            dgc_print_json(job);
        }
    } else {
        const char *nm = dgc_str(dgc_get(job, "name"), NULL);
        printf("submitted %s%s%s%s: %s", jid, nm ? " (" : "", nm ? nm : "", nm ? ")" : "",
               dgc_str(dgc_get(job, "status"), "?"));
        if (dgc_get(job, "queue_position") && dgc_num(dgc_get(job, "queue_position"), 0) > 0)
            printf(", queue position %.0f", dgc_num(dgc_get(job, "queue_position"), 0));
        printf("\n");
        if (!follow) printf("follow it: %s watch %s\n", c->prog, jid);
    }
    fflush(stdout);
    json_decref(job);
    rc = 0;
    if (follow) {
        view v;
        view_init(&v, c, jid);
        v.all_logs = true;
        int r = dgc_follow(c, jid, 0, FOLLOW_GIVE_UP_S, on_event, &v);
        rc = follow_finish(&v, r);
        view_free(&v);
    }
out:
    json_decref(spec);
    json_decref(tags);
    return rc;
}

/* ---- watch ----------------------------------------------------------------------------------- */
int dgc_cmd_watch(dgc_ctx *c, int argc, char **argv) {
    const char *job = NULL;
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1])
            return dgc_usage(c, "watch", "unknown option '%s'", argv[i]);
        if (job) return dgc_usage(c, "watch", "unexpected argument '%s'", argv[i]);
        job = argv[i];
    }
    if (!job) return dgc_usage(c, "watch", "needs a JOB id%s", "");
    char jb[128];
    int rc0 = dgc_resolve_job(c, job, jb, sizeof jb);
    if (rc0) return rc0;
    job = jb;
    view v;
    view_init(&v, c, job);
    int r = dgc_follow(c, job, 0, FOLLOW_GIVE_UP_S, on_event, &v);
    int rc = follow_finish(&v, r);
    view_free(&v);
    return rc;
}

/* ---- logs ------------------------------------------------------------------------------------ */
int dgc_cmd_logs(dgc_ctx *c, int argc, char **argv) {
    const char *job = NULL, *tail = NULL;
    bool follow = false;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow")) follow = true;
        else if (dgc_opt(argc, argv, &i, "--tail", "-n", &v, &miss)) tail = v;
        else if (argv[i][0] == '-' && argv[i][1])
            return dgc_usage(c, "logs", "unknown option '%s'", argv[i]);
        else if (job) return dgc_usage(c, "logs", "unexpected argument '%s'", argv[i]);
        else job = argv[i];
        if (miss) return dgc_usage(c, "logs", "%s needs a value", argv[i]);
    }
    if (!job) return dgc_usage(c, "logs", "needs a JOB id%s", "");
    long long n_tail = 0;
    if (tail && !dgc_parse_long(tail, 0, 100000, &n_tail))
        return dgc_usage(c, "logs", "--tail must be 0..100000, got '%s'", tail);
    char jb[128];
    int rc0 = dgc_resolve_job(c, job, jb, sizeof jb);
    if (rc0) return rc0;
    job = jb;
    char q[64];
    snprintf(q, sizeof q, "/logs?format=json%s", "");
    if (tail) snprintf(q, sizeof q, "/logs?format=json&tail=%lld", n_tail);
    char *p = dgc_job_path(job, q);
    int rc;
    json_t *o = dgc_call(c, "GET", p, NULL, &rc);
    dg_free(p);
    if (!o) return rc;
    json_t *lines = dgc_get(o, "data");
    long long last = 0;
    if (c->json && !follow) {
        dgc_print_json(o);
    } else {
        for (size_t i = 0; i < json_array_size(lines); i++) {
            json_t *l = json_array_get(lines, i);
            long long n = (long long)dgc_num(dgc_get(l, "line_no"), 0);
            if (n > last) last = n;
            if (c->json) {
                char *s = json_dumps(l, JSON_COMPACT | JSON_PRESERVE_ORDER);
                if (s) puts(s);
                free(s);
                continue;
            }
            char tb[48];
            dgc_fmt_time(tb, sizeof tb, dgc_get(l, "ts"));
            printf("%s [%s] %s\n", tb, dgc_str(dgc_get(l, "level"), "?"),
                   dgc_str(dgc_get(l, "msg"), ""));
        }
    }
    fflush(stdout);
    json_decref(o);
    if (!follow) return 0;
    if (tail && n_tail == 0) {
        /* --tail 0 -f: only new lines; the newest line number comes from an untrimmed read */
        p = dgc_job_path(job, "/logs?format=json&tail=1");
        o = dgc_call(c, "GET", p, NULL, &rc);
        dg_free(p);
        if (!o) return rc;
        json_t *l = json_array_get(dgc_get(o, "data"), 0);
        last = (long long)dgc_num(dgc_get(l, "line_no"), 0);
        json_decref(o);
    }
    view v;
    view_init(&v, c, job);
    v.logs_only = true;
    v.last_log_line = last;
    int r = dgc_follow(c, job, 0, FOLLOW_GIVE_UP_S, on_event, &v);
    int code = follow_finish(&v, r);
    view_free(&v);
    /* logs -f ends with 0 once the job is over, whatever its outcome (as kubectl logs -f) */
    return code == 1 || code == 2 ? 0 : code;
}

/* ---- bench ----------------------------------------------------------------------------------- */
int dgc_cmd_bench(dgc_ctx *c, int argc, char **argv) {
    const char *steps = NULL;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (dgc_opt(argc, argv, &i, "--steps", NULL, &v, &miss)) steps = v;
        else return dgc_usage(c, "bench", "unknown argument '%s'", argv[i]);
        if (miss) return dgc_usage(c, "bench", "%s needs a value", argv[i]);
    }
    long long n = 0;
    if (steps && !dgc_parse_long(steps, 1, 100000, &n))
        return dgc_usage(c, "bench", "--steps must be 1..100000, got '%s'", steps);
    json_t *body = json_pack("{s:s}", "kind", "bench");
    if (steps) json_object_set_new(body, "data", json_pack("{s:I}", "bench_steps",
                                                           (json_int_t)n));
    int rc;
    json_t *job = dgc_call(c, "POST", "/v1/jobs", body, &rc);
    json_decref(body);
    if (!job) return rc;
    char jid[128];
    snprintf(jid, sizeof jid, "%s", dgc_str(dgc_get(job, "id"), "?"));
    json_decref(job);
    if (!c->json) {
        printf("benchmark job %s submitted; waiting for it\n", jid);
        fflush(stdout);
    }
    view v;
    view_init(&v, c, jid);
    v.quiet = true;
    dgc_ctx quiet = *c;
    quiet.json = false;
    if (c->json) {                       /* no event lines; the result JSON comes at the end */
        v.c = &quiet;
        v.live = false;
        v.silent = true;
    }
    int r = dgc_follow(v.c, jid, 0, FOLLOW_GIVE_UP_S, on_event, &v);
    bool ok = r == 1;
    if (!ok) {
        if (c->json) v.c = c;
        rc = follow_finish(&v, r);
        view_free(&v);
        return rc ? rc : DGC_EXIT_ERROR;
    }
    view_clear(&v);
    view_free(&v);
    char path[200];
    snprintf(path, sizeof path, "/v1/benchmarks/%s", jid);
    json_t *b = dgc_call(c, "GET", path, NULL, &rc);
    if (!b) return rc;
    if (c->json) { dgc_print_json(b); json_decref(b); return 0; }
    json_t *env = dgc_get(b, "env");
    printf("benchmark %s: device %s, backend %s, model %s parameters\n", jid,
           dgc_str(dgc_get(env, "device"), "?"), dgc_str(dgc_get(env, "backend"), "?"),
           dgc_fmt_num(path, sizeof path, dgc_get(env, "n_params"), "%.0f"));
    printf("%-20s %6s %8s %12s %10s\n", "PHASE", "BATCH", "TOKENS", "TOK/S", "SECONDS");
    json_t *res = dgc_get(b, "results");
    for (size_t i = 0; i < json_array_size(res); i++) {
        json_t *x = json_array_get(res, i);
        double tps = dgc_num(dgc_get(x, "tok_s"), dgc_num(dgc_get(x, "decode_tok_s"), NAN));
        double toks = dgc_num(dgc_get(x, "gen_tokens"), NAN) * dgc_num(dgc_get(x, "batch"), 1);
        if (!isfinite(toks) && dgc_get(x, "block"))
            toks = dgc_num(dgc_get(x, "block"), 0) * dgc_num(dgc_get(x, "batch"), 1) *
                   dgc_num(dgc_get(x, "iters"), 1);
        printf("%-20s %6.0f %8.0f %12.1f %10.3f\n", dgc_str(dgc_get(x, "phase"), "?"),
               dgc_num(dgc_get(x, "batch"), 0), toks, tps, dgc_num(dgc_get(x, "seconds"), NAN));
    }
    json_decref(b);
    return 0;
}
