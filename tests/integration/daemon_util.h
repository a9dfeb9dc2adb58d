/* tests/integration/daemon_util.h -- drive a real dragond from a Check test: start the build
 * dir's binary ($DG_BUILD/dragond, else ./build/dragond) on 127.0.0.1 port 0 with a temporary
 * data directory, read the "dragond listening on http://HOST:PORT" line, talk HTTP with libcurl
 * (JSON bodies, SSE streams), stop it with a signal and collect its exit status.
 * Not here: assertions about the API (the test files). Thread affinity: the test's thread;
 * dgd_http may be called from several threads at once (one easy handle per call). */
#ifndef DG_DAEMON_UTIL_H
#define DG_DAEMON_UTIL_H

#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_util.h"

typedef struct {
    pid_t pid;
    int   port;
    char  base[64];
    char  dir[512];        /* test's temp dir; data dir is dir/data */
    char  token[128];      /* sent as Bearer when non-empty */
    char  log[600];
} dgd;

static inline double dgd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static inline void dgd_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline const char *dgd_binary(void) {
    static char path[1024];
    const char *b = getenv("DG_BUILD");
    snprintf(path, sizeof path, "%s/dragond", b && *b ? b : "build");
    return path;
}

/* Starts dragond with --listen 127.0.0.1:0 --data-dir DIR/data plus extra args (NULL-ended).
 * Returns 0 when it printed its address, -1 (with the log shown) otherwise. */
static inline int dgd_start_v(dgd *d, const char *const *extra) {
    int pfd[2];
    if (pipe(pfd) != 0) return -1;
    char data[700];
    snprintf(data, sizeof data, "%s/data", d->dir);
    snprintf(d->log, sizeof d->log, "%s/daemon.log", d->dir);
    const char *argv[40];
    int n = 0;
    argv[n++] = dgd_binary();
    argv[n++] = "serve";
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--data-dir";
    argv[n++] = data;
    for (int i = 0; extra && extra[i] && n < 38; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        int lf = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (lf >= 0) dup2(lf, 2);
        close(pfd[0]);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    d->pid = pid;
    char line[512] = "";
    size_t len = 0;
    double t_end = dgd_now() + 20;
    while (dgd_now() < t_end && len < sizeof line - 1) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(pfd[0], line + len, 1);
        if (r <= 0) break;
        len++;
        if (line[len - 1] == '\n') break;
    }
    line[len] = 0;
    close(pfd[0]);
    const char *pfx = "dragond listening on http://127.0.0.1:";
    const char *at = strstr(line, pfx);
    if (!at) {
        fprintf(stderr, "dragond did not start (stdout: '%s'); log %s:\n", line, d->log);
        char cmd[700];
        snprintf(cmd, sizeof cmd, "tail -20 %s >&2", d->log);
        if (system(cmd)) {}
        return -1;
    }
    d->port = atoi(at + strlen(pfx));
    snprintf(d->base, sizeof d->base, "http://127.0.0.1:%d", d->port);
    return 0;
}

static inline int dgd_start(dgd *d, ...) {
    const char *extra[32];
    int n = 0;
    va_list ap;
    va_start(ap, d);
    for (const char *a; n < 31 && (a = va_arg(ap, const char *)); ) extra[n++] = a;
    va_end(ap);
    extra[n] = NULL;
    return dgd_start_v(d, extra);
}

/* New temp dir for a test; the daemon is not started. */
static inline void dgd_init(dgd *d, const char *tag) {
    memset(d, 0, sizeof *d);
    char *t = dg_test_tmpdir(tag);
    snprintf(d->dir, sizeof d->dir, "%s", t);
    free(t);
}

/* Sends sig and waits up to timeout_s; returns the exit status, or -1 if still running (then
 * SIGKILLs it), or 128+signal when it died from a signal. */
static inline int dgd_stop(dgd *d, int sig, double timeout_s) {
    if (d->pid <= 0) return -1;
    kill(d->pid, sig);
    double t_end = dgd_now() + timeout_s;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid) break;
        if (dgd_now() > t_end) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &st, 0);
            d->pid = 0;
            return -1;
        }
        dgd_sleep_ms(10);
    }
    d->pid = 0;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

/* ---- HTTP ------------------------------------------------------------------------------------ */
typedef struct {
    long   status;
    char  *body;          /* malloc'd, NUL-terminated */
    size_t len;
    json_t *json;         /* parsed body when it is JSON, else NULL */
    char   retry_after[32];
    char   ctype[128];
} dgd_resp;

static inline size_t dgd__write(char *p, size_t sz, size_t nm, void *ud) {
    dgd_resp *r = ud;
    size_t n = sz * nm;
    r->body = realloc(r->body, r->len + n + 1);
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = 0;
    return n;
}
static inline size_t dgd__hdr(char *p, size_t sz, size_t nm, void *ud) {
    dgd_resp *r = ud;
    size_t n = sz * nm;
    if (n > 12 && !strncasecmp(p, "Retry-After:", 12))
        snprintf(r->retry_after, sizeof r->retry_after, "%.*s", (int)strcspn(p + 13, "\r\n"),
                 p + 13);
    if (n > 13 && !strncasecmp(p, "Content-Type:", 13))
        snprintf(r->ctype, sizeof r->ctype, "%.*s", (int)strcspn(p + 14, "\r\n"), p + 14);
    return n;
}

static inline void dgd_resp_free(dgd_resp *r) {
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* One request. hdr: extra header line or NULL (e.g. "Host: evil.example"). body may be NULL;
 * body_len < 0 means strlen. Returns the status (0 on transport failure). */
static inline long dgd_http(const dgd *d, const char *method, const char *path, const char *body,
                            long body_len, const char *hdr, dgd_resp *out) {
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    char url[1200];
    snprintf(url, sizeof url, "%s%s", d->base, path);
    struct curl_slist *h = NULL;
    char auth[200];
    if (d->token[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", d->token);
        h = curl_slist_append(h, auth);
    }
    if (hdr) h = curl_slist_append(h, hdr);
    if (body) h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body_len < 0 ? (long)strlen(body) : body_len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dgd__write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, dgd__hdr);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out->body) out->json = json_loads(out->body, 0, NULL);
    return out->status;
}

/* GET that must return 200 JSON; returns the parsed JSON (caller decrefs) or NULL. */
static inline json_t *dgd_get_json(const dgd *d, const char *path) {
    dgd_resp r;
    dgd_http(d, "GET", path, NULL, 0, NULL, &r);
    json_t *j = r.status == 200 ? json_incref(r.json) : NULL;
    if (!j) fprintf(stderr, "GET %s -> %ld %s\n", path, r.status, r.body ? r.body : "");
    dgd_resp_free(&r);
    return j;
}

/* Checks the error envelope and returns error.code (static copy). */
static inline const char *dgd_err_code(const dgd_resp *r, char *param_out, size_t pn) {
    static char code[64];
    json_t *e = json_object_get(r->json, "error");
    code[0] = 0;
    if (param_out) param_out[0] = 0;
    if (!json_is_object(e) || !json_is_string(json_object_get(e, "message")) ||
        !json_is_string(json_object_get(e, "type")) ||
        !json_is_string(json_object_get(e, "request_id")) || !json_object_get(e, "param") ||
        !json_object_get(e, "code"))
        return "BAD_ENVELOPE";
    const char *c = json_string_value(json_object_get(e, "code"));
    snprintf(code, sizeof code, "%s", c ? c : "");
    const char *p = json_string_value(json_object_get(e, "param"));
    if (param_out && p) snprintf(param_out, pn, "%s", p);
    return code;
}

/* Submits a job; returns its id (static buffer) or NULL. */
static inline const char *dgd_submit(const dgd *d, const char *body) {
    static __thread char id[64];
    dgd_resp r;
    dgd_http(d, "POST", "/v1/jobs", body, -1, NULL, &r);
    const char *s = json_string_value(json_object_get(r.json, "id"));
    if (r.status != 201 || !s) {
        fprintf(stderr, "submit -> %ld %s\n", r.status, r.body ? r.body : "");
        dgd_resp_free(&r);
        return NULL;
    }
    snprintf(id, sizeof id, "%s", s);
    dgd_resp_free(&r);
    return id;
}

/* Job field helpers. */
static inline json_t *dgd_job(const dgd *d, const char *id) {
    char p[200];
    snprintf(p, sizeof p, "/v1/jobs/%s", id);
    return dgd_get_json(d, p);
}
static inline void dgd_job_status(const dgd *d, const char *id, char out[32], long long *step) {
    json_t *j = dgd_job(d, id);
    const char *s = json_string_value(json_object_get(j, "status"));
    snprintf(out, 32, "%s", s ? s : "?");
    if (step) *step = json_integer_value(json_object_get(json_object_get(j, "progress"),
                                                         "step"));
    json_decref(j);
}
/* Polls until status is one of the comma-separated list (and step >= min_step); true if so. */
static inline bool dgd_wait(const dgd *d, const char *id, const char *statuses,
                            long long min_step, double timeout_s) {
    double t_end = dgd_now() + timeout_s;
    char st[32];
    long long step = 0;
    while (dgd_now() < t_end) {
        dgd_job_status(d, id, st, &step);
        char list[200];
        snprintf(list, sizeof list, ",%s,", statuses);
        char key[40];
        snprintf(key, sizeof key, ",%s,", st);
        if (strstr(list, key) && step >= min_step) return true;
        dgd_sleep_ms(15);
    }
    fprintf(stderr, "wait for %s (step >= %lld) timed out: status %s step %lld\n", statuses,
            min_step, st, step);
    return false;
}

/* ---- SSE ------------------------------------------------------------------------------------- */
typedef struct {
    json_t *events;        /* [{"id":n|null, "event":..., "data":...}] */
    char   *buf;
    size_t  len;
    char    cur_id[32], cur_event[32];
    char   *cur_data;
    const char *until;     /* stop after this event type */
    const char *until_sub; /* ... whose data contains this (NULL: any) */
    bool    done;
    int     pings;
} dgd_sse;

static inline void dgd__sse_line(dgd_sse *s, const char *line) {
    if (!*line) {
        if (s->cur_event[0] || s->cur_data) {
            json_t *e = json_object();
            json_object_set_new(e, "id", s->cur_id[0] ? json_integer(atoll(s->cur_id))
                                                      : json_null());
            json_object_set_new(e, "event", json_string(s->cur_event[0] ? s->cur_event
                                                                        : "message"));
            json_t *dj = s->cur_data ? json_loads(s->cur_data, 0, NULL) : NULL;
            json_object_set_new(e, "data", dj ? dj : json_null());
            json_array_append_new(s->events, e);
            if (s->until && !strcmp(s->cur_event, s->until) &&
                (!s->until_sub || (s->cur_data && strstr(s->cur_data, s->until_sub))))
                s->done = true;
        }
        s->cur_id[0] = s->cur_event[0] = 0;
        free(s->cur_data);
        s->cur_data = NULL;
        return;
    }
    if (line[0] == ':') { s->pings++; return; }
    if (!strncmp(line, "id: ", 4)) snprintf(s->cur_id, sizeof s->cur_id, "%s", line + 4);
    else if (!strncmp(line, "event: ", 7))
        snprintf(s->cur_event, sizeof s->cur_event, "%s", line + 7);
    else if (!strncmp(line, "data: ", 6)) s->cur_data = strdup(line + 6);
}

static inline size_t dgd__sse_write(char *p, size_t sz, size_t nm, void *ud) {
    dgd_sse *s = ud;
    size_t n = sz * nm;
    s->buf = realloc(s->buf, s->len + n + 1);
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
    char *nl;
    while ((nl = memchr(s->buf, '\n', s->len))) {
        *nl = 0;
        dgd__sse_line(s, s->buf);
        size_t used = (size_t)(nl - s->buf) + 1;
        memmove(s->buf, nl + 1, s->len - used);
        s->len -= used;
        s->buf[s->len] = 0;
    }
    return s->done ? 0 : n;       /* 0 aborts the transfer once `until` arrived */
}

static int dgd_last_pings;    /* ": ping" comments seen by the last dgd_follow */

/* Reads the SSE stream at path until an event of type `until` whose data contains until_sub
 * (or the stream ends, or timeout). last_event_id < 0: no header. Returns the events array
 * (caller decrefs). */
static inline json_t *dgd_sse_get(const dgd *d, const char *path, long long last_event_id,
                                  const char *until, const char *until_sub, double timeout_s) {
    dgd_sse s = {0};
    s.events = json_array();
    s.until = until;
    s.until_sub = until_sub;
    CURL *c = curl_easy_init();
    char url[300], auth[200], lei[64];
    snprintf(url, sizeof url, "%s%s", d->base, path);
    struct curl_slist *h = NULL;
    if (d->token[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", d->token);
        h = curl_slist_append(h, auth);
    }
    if (last_event_id >= 0) {
        snprintf(lei, sizeof lei, "Last-Event-ID: %lld", last_event_id);
        h = curl_slist_append(h, lei);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dgd__sse_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_perform(c);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    free(s.buf);
    free(s.cur_data);
    dgd_last_pings = s.pings;
    return s.events;
}

/* Follows /v1/jobs/{id}/stream until an event of type `until`. */
static inline json_t *dgd_follow(const dgd *d, const char *id, long long last_event_id,
                                 const char *until, double timeout_s) {
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s/stream", id);
    return dgd_sse_get(d, path, last_event_id, until, NULL, timeout_s);
}

/* Last event of a type in an events array, or NULL. */
static inline json_t *dgd_last_event(json_t *evs, const char *type) {
    json_t *found = NULL;
    for (size_t i = 0; i < json_array_size(evs); i++) {
        json_t *e = json_array_get(evs, i);
        if (!strcmp(json_string_value(json_object_get(e, "event")), type)) found = e;
    }
    return found;
}
static inline int dgd_count_events(json_t *evs, const char *type) {
    int n = 0;
    for (size_t i = 0; i < json_array_size(evs); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(evs, i), "event")), type))
            n++;
    return n;
}

/* A learnable text file of n bytes (a repeated verse with a counter) at dir/name. */
static inline void dgd_write_text(const char *dir, const char *name, size_t n, char *path_out,
                                  size_t pn) {
    snprintf(path_out, pn, "%s/%s", dir, name);
    FILE *f = fopen(path_out, "w");
    static const char *const lines[] = {
        "the dragon sleeps beneath the hill,\n", "and all the valley lies so still;\n",
        "but when the morning wakes the sky,\n", "the dragon spreads its wings to fly.\n"};
    size_t w = 0;
    for (int i = 0; w < n; i++) {
        const char *l = lines[i % 4];
        fputs(l, f);
        w += strlen(l);
    }
    fclose(f);
}
#endif
