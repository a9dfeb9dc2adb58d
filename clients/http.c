/* clients/http.c -- the `dragon` client's HTTP layer: libcurl requests with the bearer token,
 * the API's error envelope ({"error":{"message","type","code","param","request_id"}}) printed
 * as "dragon: error <code> (HTTP <status>): <message>", and job streams followed over SSE with
 * Last-Event-ID reconnects.
 *
 * Not here: what commands print (dragon.c, follow.c); SSE framing rules (sse.c).
 * Thread affinity: the client's one thread (curl_global_init is done by main). */
#include "clients/client.h"
#include "clients/sse.h"
#include "engine/dg.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile sig_atomic_t dgc_interrupted;

void dgc_resp_free(dgc_resp *r) {
    dg_free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

char *dgc_escape(const char *s) {
    char *e = curl_easy_escape(NULL, s, 0);
    char *d = dg_strdup(e ? e : "");
    curl_free(e);
    return d;
}

static size_t http_write(char *p, size_t sz, size_t nm, void *ud) {
    dgc_resp *r = ud;
    size_t n = sz * nm;
    r->body = dg_realloc(r->body, r->len + n + 1);
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = 0;
    return n;
}

/* Aborts a transfer once Ctrl-C was pressed. */
static int http_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
    (void)ud; (void)dt; (void)dn; (void)ut; (void)un;
    return dgc_interrupted ? 1 : 0;
}

static struct curl_slist *http_headers(const dgc_ctx *c, bool json_body, const char *extra) {
    struct curl_slist *h = NULL;
    if (c->token[0]) {
        char auth[600];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        h = curl_slist_append(h, auth);
    }
    if (json_body) h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    h = curl_slist_append(h, "User-Agent: dragon-cli/1");
    if (extra) h = curl_slist_append(h, extra);
    return h;
}

long dgc_request(const dgc_ctx *c, const char *method, const char *path, const json_t *body,
                 dgc_resp *out) {
    memset(out, 0, sizeof *out);
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(out->err, sizeof out->err, "libcurl could not start");
        return 0;
    }
    char *url = dg_malloc(strlen(c->host) + strlen(path) + 2);
    sprintf(url, "%s%s", c->host, path);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    struct curl_slist *hd = http_headers(c, body != NULL, "Accept: application/json");
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, http_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, http_progress);
    if (text) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    } else {
        snprintf(out->err, sizeof out->err, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
        if (rc == CURLE_ABORTED_BY_CALLBACK) snprintf(out->err, sizeof out->err, "interrupted");
    }
    if (out->body) out->json = json_loadb(out->body, out->len, 0, NULL);
    curl_slist_free_all(hd);
    free(text);                 /* jansson's buffer (libc allocator) */
    dg_free(url);
    curl_easy_cleanup(h);
    return out->status;
}

int dgc_report_error(const dgc_ctx *c, const char *method, const char *path, const dgc_resp *r) {
    if (r->status == 0) {
        if (dgc_interrupted) {
            fprintf(stderr, "%s: interrupted\n", c->prog);
            return DGC_EXIT_INTERRUPT;
        }
        fprintf(stderr, "%s: cannot reach dragond at %s: %s\n", c->prog, c->host, r->err);
        fprintf(stderr, "hint: is the daemon running? Start it with `make run` (or `dragond`), "
                        "or point --host / DRAGON_HOST at it.\n");
        return DGC_EXIT_ERROR;
    }
    json_t *e = json_object_get(r->json, "error");
    const char *code = dgc_str(json_object_get(e, "code"), NULL);
    const char *msg = dgc_str(json_object_get(e, "message"), NULL);
    const char *param = dgc_str(json_object_get(e, "param"), NULL);
    if (code || msg) {
        fprintf(stderr, "%s: error %s (HTTP %ld): %s\n", c->prog, code ? code : "?", r->status,
                msg ? msg : "");
        if (param) fprintf(stderr, "  at: %s\n", param);
    } else {
        /* not the envelope: show what came back (trimmed) */
        fprintf(stderr, "%s: HTTP %ld from %s %s%s%.*s\n", c->prog, r->status, method, path,
                r->len ? ": " : "", (int)(r->len > 300 ? 300 : r->len),
                r->body ? r->body : "");
    }
    if (r->status == 401)
        fprintf(stderr, "hint: the daemon needs a token: set DRAGON_TOKEN (the contents of its "
                        "--token-file).\n");
    return DGC_EXIT_ERROR;
}

json_t *dgc_call(const dgc_ctx *c, const char *method, const char *path, const json_t *body,
                 int *rc) {
    dgc_resp r;
    long st = dgc_request(c, method, path, body, &r);
    if (st < 200 || st >= 300) {
        *rc = dgc_report_error(c, method, path, &r);
        dgc_resp_free(&r);
        return NULL;
    }
    json_t *j = r.json ? json_incref(r.json) : json_object();
    dgc_resp_free(&r);
    *rc = 0;
    return j;
}

/* ---- following SSE ------------------------------------------------------------------------ */
typedef struct {
    CURL        *h;
    dgc_sse      sse;
    dgc_event_fn fn;
    void        *ud;
    int          stop;       /* the callback's nonzero value */
    long         status;     /* HTTP status once known */
    char        *errbody;    /* body of a non-200 answer */
    size_t       errlen;
    bool         got_bytes;
} follow_state;

static int follow_event(const dgc_sse_event *ev, void *ud) {
    follow_state *f = ud;
    json_t *data = json_loadb(ev->data, ev->data_len, JSON_DECODE_ANY, NULL);
    if (!data) data = json_stringn(ev->data, ev->data_len);
    long long id = ev->id[0] ? atoll(ev->id) : -1;
    int rc = f->fn(ev->event, id, data, f->ud);
    json_decref(data);
    if (rc) f->stop = rc;
    return rc;
}

static size_t follow_write(char *p, size_t sz, size_t nm, void *ud) {
    follow_state *f = ud;
    size_t n = sz * nm;
    if (!f->status) curl_easy_getinfo(f->h, CURLINFO_RESPONSE_CODE, &f->status);
    if (f->status != 200) {              /* keep the error body for the message */
        f->errbody = dg_realloc(f->errbody, f->errlen + n + 1);
        memcpy(f->errbody + f->errlen, p, n);
        f->errlen += n;
        f->errbody[f->errlen] = 0;
        return n;
    }
    f->got_bytes = true;
    return dgc_sse_feed(&f->sse, p, n) ? 0 : n;     /* 0 aborts the transfer */
}

/* Sleeps ms, waking early on Ctrl-C. */
static void follow_sleep(long ms) {
    while (ms > 0 && !dgc_interrupted) {
        long step = ms < 100 ? ms : 100;
        struct timespec ts = {0, step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

int dgc_follow(const dgc_ctx *c, const char *job_id, long long after_id, double give_up_s,
               dgc_event_fn fn, void *ud) {
    follow_state f = {0};
    f.fn = fn;
    f.ud = ud;
    dgc_sse_init(&f.sse, follow_event, &f);
    if (after_id > 0) snprintf(f.sse.last_id, sizeof f.sse.last_id, "%lld", after_id);
    char *eid = dgc_escape(job_id);
    char *url = dg_malloc(strlen(c->host) + strlen(eid) + 32);
    sprintf(url, "%s/v1/jobs/%s/stream", c->host, eid);
    int result = 0;
    int failures = 0;
    bool warned = false;
    double last_ok = dg_now();
    char prev_id[128];
    snprintf(prev_id, sizeof prev_id, "%s", f.sse.last_id);
    bool ever_connected = false;
    for (;;) {
        f.h = curl_easy_init();
        f.status = 0;
        f.got_bytes = false;
        char lei[200] = "";
        if (f.sse.last_id[0]) snprintf(lei, sizeof lei, "Last-Event-ID: %s", f.sse.last_id);
        struct curl_slist *hd = http_headers(c, false, "Accept: text/event-stream");
        if (lei[0]) hd = curl_slist_append(hd, lei);
        char ebuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(f.h, CURLOPT_URL, url);
        curl_easy_setopt(f.h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(f.h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(f.h, CURLOPT_CONNECTTIMEOUT, 10L);
        /* The daemon pings idle streams (every 15 s by default): 45 s of silence means the
         * connection is dead even if TCP has not noticed. */
        curl_easy_setopt(f.h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(f.h, CURLOPT_LOW_SPEED_TIME, 45L);
        curl_easy_setopt(f.h, CURLOPT_ERRORBUFFER, ebuf);
        curl_easy_setopt(f.h, CURLOPT_WRITEFUNCTION, follow_write);
        curl_easy_setopt(f.h, CURLOPT_WRITEDATA, &f);
        curl_easy_setopt(f.h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(f.h, CURLOPT_XFERINFOFUNCTION, http_progress);
        CURLcode rc = curl_easy_perform(f.h);
        if (!f.status) curl_easy_getinfo(f.h, CURLINFO_RESPONSE_CODE, &f.status);
        curl_slist_free_all(hd);
        curl_easy_cleanup(f.h);
        f.h = NULL;
        if (f.stop) { result = f.stop; break; }
        if (dgc_interrupted) { result = DGC_FOLLOW_INTERRUPTED; break; }
        if (f.status && f.status != 200 && f.status != 502 && f.status != 503) {
            dgc_resp r = {0};
            r.status = f.status;
            r.body = f.errbody;
            r.len = f.errlen;
            r.json = f.errbody ? json_loadb(f.errbody, f.errlen, 0, NULL) : NULL;
            char path[300];
            snprintf(path, sizeof path, "/v1/jobs/%s/stream", eid);
            dgc_report_error(c, "GET", path, &r);
            json_decref(r.json);
            result = DGC_FOLLOW_HTTP;
            break;
        }
        dg_free(f.errbody);
        f.errbody = NULL;
        f.errlen = 0;
        if (f.status == 200) ever_connected = true;
        if (!ever_connected && rc != CURLE_OK) {
            /* never reached the daemon at all: a wrong host, not a dropped stream */
            dgc_resp r = {0};
            snprintf(r.err, sizeof r.err, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
            dgc_report_error(c, "GET", url, &r);
            result = DGC_FOLLOW_LOST;
            break;
        }
        /* The stream ended or broke without the callback stopping: reconnect. Progress means
         * new events arrived (the last id moved), not merely bytes: a draining daemon that
         * answers and closes again must not keep us here forever. */
        bool progress = strcmp(prev_id, f.sse.last_id) != 0;
        snprintf(prev_id, sizeof prev_id, "%s", f.sse.last_id);
        if (progress) { failures = 0; last_ok = dg_now(); }
        else failures++;
        if (dg_now() - last_ok > give_up_s) {
            fprintf(stderr, "%s: lost the stream of %s (%s); gave up after %.0f s\n", c->prog,
                    job_id, rc != CURLE_OK ? (ebuf[0] ? ebuf : curl_easy_strerror(rc))
                                           : "closed", give_up_s);
            result = DGC_FOLLOW_LOST;
            break;
        }
        if (!warned && failures > 0) {
            fprintf(stderr, "%s: stream of %s interrupted (%s); reconnecting%s%s\n", c->prog,
                    job_id, rc != CURLE_OK ? (ebuf[0] ? ebuf : curl_easy_strerror(rc))
                                           : "closed by the daemon",
                    f.sse.last_id[0] ? " from event " : "", f.sse.last_id);
            warned = true;
        }
        if (progress) warned = false;
        dgc_sse_reset_partial(&f.sse);
        long wait = f.sse.retry_ms >= 0 ? f.sse.retry_ms : 2000;
        if (progress) wait = wait < 200 ? wait : 200;          /* it was working: come back */
        else if (failures > 1) wait = wait * (failures < 5 ? failures : 5);
        if (wait > 10000) wait = 10000;
        follow_sleep(wait);
        if (dgc_interrupted) { result = DGC_FOLLOW_INTERRUPTED; break; }
    }
    dg_free(f.errbody);
    dgc_sse_free(&f.sse);
    dg_free(url);
    dg_free(eid);
    return result;
}
