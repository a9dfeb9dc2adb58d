/* server/http.c -- libmicrohttpd driven from the libuv loop, the router, responses with the one
 * error envelope, bearer-token and Host-header checks, body limits, and SSE streams.
 *
 * MHD runs in external-select mode. A small poller thread waits in select() on the fd sets MHD
 * asks for (MHD_get_fdset2, taken on the loop thread after every MHD_run) and wakes the loop
 * with uv_async_send; the loop calls MHD_run and re-arms the poller, which then starts a new
 * select at most every 2 ms. Driven only by socket events (epoll, or select with a wake pipe
 * used sparingly), libmicrohttpd 0.9.75 left resumed streaming connections waiting for good
 * when their peer had been slow (a slow SSE reader stalled mid-stream); running MHD this often
 * keeps them moving at ~2.5% of a core when idle. A uv_timer_t follows MHD_get_timeout too.
 * So every handler, content reader and completion callback runs on the LOOP thread and may
 * touch SQLite and the job table directly. SSE streams
 * are content-reader responses backed by the events table: a stream keeps the id of the last
 * event it sent and pulls the next page from SQLite when its small buffer has drained, so a slow
 * reader costs one page of memory and never stalls anyone else. With nothing to send it is
 * suspended (MHD_suspend_connection from the reader) and resumed by new events or by the ping
 * timer (": ping" every sse_ping_interval_s, which also surfaces dead peers). A reader that
 * falls more than sse_soft_limit_events behind gets progress/metric events coalesced (only
 * the newest window is sent; status, log, checkpoint and end are never dropped); a peer that
 * stops reading altogether is closed by the connection timeout (the hard limit).
 * Not here: what the endpoints do (api.c). Thread affinity: LOOP thread only. */
#include "srv.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/select.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct dg_stream dg_stream;

#define MAX_PARAMS 4
#define MAX_EXTRA_HDRS 8

struct dg_req {
    struct MHD_Connection *conn;
    char        method[16];
    char       *path;
    char       *body;
    size_t      len, cap;
    bool        too_large, responded;
    char        request_id[DG_ID_LEN];
    int         route;                    /* index into dg_routes, -1 none */
    int         n_params;
    char        pname[MAX_PARAMS][16];
    char        pval[MAX_PARAMS][256];
    int         n_hdrs;
    char        hname[MAX_EXTRA_HDRS][48];
    char        hval[MAX_EXTRA_HDRS][256];
    dg_stream  *stream;
    dg_live    *live;                     /* infer.c's live response */
    int         status;
};

struct dg_stream {
    bool                   push;          /* dg_reply_pstream (else a job-event stream) */
    bool                   no_drain;      /* live stream: its producer ends it */
    void                 (*on_gone)(void *ud);
    void                  *ud;
    dg_req                *r;
    struct MHD_Connection *conn;
    char                   job_id[DG_ID_LEN];
    char                   types[160];    /* ",status,log," filter; "" = all */
    int64_t                last_seq;
    char                  *buf;
    size_t                 len, off, cap;
    bool                   suspended, ended, ping, drain;
    dg_stream             *prev, *next;
};

static struct {
    uv_loop_t         *loop;
    struct MHD_Daemon *d;
    uv_async_t         wake;          /* the poller saw a ready fd */
    uv_timer_t         timer, ping;
    const dg_settings *s;
    char               token[256];
    char               listen_host[256];
    dg_stream         *streams;
    int                n_streams;
    bool               stopping;
    /* request counters for /metrics */
    struct { int route; int status; uint64_t n; } counters[256];
    int                n_counters;
    uint64_t           requests_total;
} H;

/* ---- request accessors ---------------------------------------------------------------------- */
const char *dg_req_method(dg_req *r) { return r->method; }

const char *dg_req_param(dg_req *r, const char *name) {
    for (int i = 0; i < r->n_params; i++)
        if (!strcmp(r->pname[i], name)) return r->pval[i];
    return NULL;
}
const char *dg_req_query(dg_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}
const char *dg_req_header(dg_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}
const char *dg_req_body(dg_req *r, size_t *len) {
    if (len) *len = r->len;
    return r->body ? r->body : "";
}

void dg_reply_header(dg_req *r, const char *name, const char *value) {
    if (r->n_hdrs >= MAX_EXTRA_HDRS) return;
    snprintf(r->hname[r->n_hdrs], sizeof r->hname[0], "%s", name);
    snprintf(r->hval[r->n_hdrs], sizeof r->hval[0], "%s", value);
    r->n_hdrs++;
}

static void count(dg_req *r, int status) {
    H.requests_total++;
    for (int i = 0; i < H.n_counters; i++)
        if (H.counters[i].route == r->route && H.counters[i].status == status) {
            H.counters[i].n++;
            return;
        }
    if (H.n_counters < 256) {
        H.counters[H.n_counters].route = r->route;
        H.counters[H.n_counters].status = status;
        H.counters[H.n_counters].n = 1;
        H.n_counters++;
    }
}

void dg_http_metrics_text(json_t *lines) {
    char buf[512];
    json_array_append_new(lines, json_string(
        "# HELP dragond_requests_total HTTP requests by route and status code.\n"
        "# TYPE dragond_requests_total counter"));
    for (int i = 0; i < H.n_counters; i++) {
        int ri = H.counters[i].route;
        snprintf(buf, sizeof buf, "dragond_requests_total{route=\"%s %s\",code=\"%d\"} %llu",
                 ri >= 0 ? dg_routes[ri].method : "-", ri >= 0 ? dg_routes[ri].pattern : "none",
                 H.counters[i].status, (unsigned long long)H.counters[i].n);
        json_array_append_new(lines, json_string(buf));
    }
    snprintf(buf, sizeof buf, "# HELP dragond_sse_streams Open SSE streams.\n"
             "# TYPE dragond_sse_streams gauge\ndragond_sse_streams %d", H.n_streams);
    json_array_append_new(lines, json_string(buf));
}

/* ---- responses ------------------------------------------------------------------------------ */
static void queue(dg_req *r, int status, struct MHD_Response *resp, const char *ctype) {
    MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    for (int i = 0; i < r->n_hdrs; i++) MHD_add_response_header(resp, r->hname[i], r->hval[i]);
    MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->responded = true;
    r->status = status;
    count(r, status);
}

void dg_reply_text(dg_req *r, int status, const char *ctype, const char *text, size_t n) {
    if (r->responded) return;
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, (void *)text,
                                                                MHD_RESPMEM_MUST_COPY);
    queue(r, status, resp, ctype);
}

void dg_reply_json(dg_req *r, int status, json_t *body) {
    char *s = dg_json_text(body);
    json_decref(body);
    size_t n = strlen(s);
    s = dg_realloc(s, n + 2);
    s[n] = '\n';
    s[n + 1] = 0;
    dg_reply_text(r, status, "application/json", s, n + 1);
    dg_free(s);
}

void dg_reply_error(dg_req *r, int status, const char *type, const char *code, const char *param,
                    const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(msg));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "request_id", json_string(r->request_id));
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    dg_reply_json(r, status, o);
}

void dg_reply_fd(dg_req *r, int status, const char *ctype, int fd, uint64_t offset,
                 uint64_t len) {
    if (r->responded) { close(fd); return; }
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(len, fd, offset);
    if (!resp) {
        close(fd);
        dg_reply_error(r, 500, "internal", "read_failed", NULL, "cannot send the file");
        return;
    }
    MHD_add_response_header(resp, "Accept-Ranges", "bytes");
    queue(r, status, resp, ctype);
}

json_t *dg_req_json(dg_req *r, bool allow_empty) {
    size_t i = 0;
    while (i < r->len && (r->body[i] == ' ' || r->body[i] == '\n' || r->body[i] == '\r' ||
                          r->body[i] == '\t'))
        i++;
    if (i == r->len) {
        if (allow_empty) return json_object();
        dg_reply_error(r, 400, "invalid_request", "empty_body", NULL,
                       "request body is empty; expected a JSON object");
        return NULL;
    }
    json_error_t je;
    json_t *v = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        dg_reply_error(r, 400, "invalid_request", "invalid_json", NULL,
                       "malformed JSON at line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        dg_reply_error(r, 400, "invalid_request", "invalid_json", NULL,
                       "the request body must be a JSON object");
        return NULL;
    }
    return v;
}

/* ---- SSE ------------------------------------------------------------------------------------ */
static void sbuf_add(dg_stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sbuf_add(dg_stream *s, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < s->cap - s->len) { s->len += (size_t)n; return; }
        s->cap = s->cap * 2 + (size_t)(n > 0 ? n : 0) + 64;
        s->buf = dg_realloc(s->buf, s->cap);
    }
}

static void sse_fill(dg_stream *s) {
    int page = (int)H.s->sse_page_events;
    dg_db_event *evs = dg_malloc((size_t)page * sizeof *evs);
    int64_t max = dg_db_event_max(s->job_id);
    int64_t soft = H.s->sse_soft_limit_events;
    int64_t skip_below = max - s->last_seq > soft ? max - soft + 1 : 0;
    int n = dg_db_events_after(s->job_id, s->last_seq, skip_below, evs, page);
    for (int i = 0; i < n; i++) {
        if (!s->ended) {
            char key[24];
            snprintf(key, sizeof key, ",%s,", evs[i].type);
            bool end = !strcmp(evs[i].type, "end");
            if (end || !s->types[0] || strstr(s->types, key))
                sbuf_add(s, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)evs[i].seq,
                         evs[i].type, evs[i].data ? evs[i].data : "{}");
            s->last_seq = evs[i].seq;
            if (end) s->ended = true;
        }
        dg_free(evs[i].data);
    }
    dg_free(evs);
    if (n > 0) {
        s->ping = false;
        if (s->len == 0 && !s->ended) sse_fill(s);    /* a whole page was filtered out */
        return;
    }
    if (!dg_db_job_exists(s->job_id)) {
        sbuf_add(s, "event: end\ndata: {\"status\":\"deleted\"}\n\n");
        s->ended = true;
    } else if (s->drain) {
        sbuf_add(s, "event: end\ndata: {\"status\":\"draining\"}\n\n");
        s->ended = true;
    } else if (s->ping) {
        sbuf_add(s, ": ping\n\n");
        s->ping = false;
    }
}

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    dg_stream *s = cls;
    if (s->off >= s->len) {
        s->off = s->len = 0;
        if (s->push) {
            if (!s->ended && s->drain && !s->no_drain) {
                sbuf_add(s, "event: end\ndata: {\"status\":\"draining\"}\n\n");
                s->ended = true;
            } else if (!s->ended && s->ping) {
                sbuf_add(s, ": ping\n\n");
            }
            s->ping = false;
        } else if (!s->ended) {
            sse_fill(s);
        }
    }
    if (s->off < s->len) {
        size_t n = s->len - s->off < max ? s->len - s->off : max;
        memcpy(out, s->buf + s->off, n);
        s->off += n;
        return (ssize_t)n;
    }
    if (s->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    s->suspended = true;
    MHD_suspend_connection(s->conn);
    return 0;
}

void dg_reply_sse(dg_req *r, const char *job_id, int64_t after_seq, const char *types) {
    dg_stream *s = dg_calloc(1, sizeof *s);
    s->r = r;
    s->conn = r->conn;
    snprintf(s->job_id, sizeof s->job_id, "%s", job_id);
    if (types && *types) snprintf(s->types, sizeof s->types, ",%s,", types);
    s->last_seq = after_seq;
    s->cap = 4096;
    s->buf = dg_malloc(s->cap);
    sbuf_add(s, "retry: 2000\n\n");
    s->next = H.streams;
    if (H.streams) H.streams->prev = s;
    H.streams = s;
    H.n_streams++;
    r->stream = s;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                                   sse_read, s, NULL);
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    queue(r, 200, resp, "text/event-stream");
}

#define PSTREAM_HARD_LIMIT (8u << 20)

dg_pstream *dg_reply_pstream(dg_req *r, const char *ctype, void (*on_gone)(void *ud),
                             void *ud) {
    dg_stream *s = dg_calloc(1, sizeof *s);
    s->push = true;
    s->on_gone = on_gone;
    s->ud = ud;
    s->r = r;
    s->conn = r->conn;
    s->cap = 4096;
    s->buf = dg_malloc(s->cap);
    s->next = H.streams;
    if (H.streams) H.streams->prev = s;
    H.streams = s;
    H.n_streams++;
    r->stream = s;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
                                                                   sse_read, s, NULL);
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    queue(r, 200, resp, ctype);
    return (dg_pstream *)s;
}

static void stream_wake(dg_stream *s);

void dg_pstream_write(dg_pstream *ps, const char *data, size_t n) {
    dg_stream *s = (dg_stream *)ps;
    if (s->ended) return;
    if (s->len - s->off + n > PSTREAM_HARD_LIMIT) {      /* the peer is not reading */
        s->len = s->off = 0;
        sbuf_add(s, "event: error\ndata: {\"error\":{\"message\":\"client too slow; stream "
                 "closed\",\"type\":\"server_overloaded\",\"code\":\"stream_overflow\","
                 "\"param\":null,\"request_id\":\"%s\"}}\n\n", s->r->request_id);
        s->ended = true;
        stream_wake(s);
        return;
    }
    if (s->off > 0 && s->off == s->len) s->off = s->len = 0;
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->buf = dg_realloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    stream_wake(s);
}

void dg_pstream_end(dg_pstream *ps) {
    dg_stream *s = (dg_stream *)ps;
    s->ended = true;
    stream_wake(s);
}

static void stream_unlink(dg_stream *s) {
    if (s->push && s->on_gone) s->on_gone(s->ud);
    if (s->prev) s->prev->next = s->next;
    else H.streams = s->next;
    if (s->next) s->next->prev = s->prev;
    H.n_streams--;
    dg_free(s->buf);
    dg_free(s);
}

static void http_kick(void);

static void stream_wake(dg_stream *s) {
    if (s->suspended) {
        s->suspended = false;
        MHD_resume_connection(s->conn);
        http_kick();
    }
}

void dg_http_streams_notify(const char *job_id) {
    for (dg_stream *s = H.streams; s; s = s->next)
        if (!s->push && (!job_id || !strcmp(job_id, s->job_id))) stream_wake(s);
}

void dg_http_streams_end_all(void) {
    for (dg_stream *s = H.streams; s; s = s->next) {
        s->drain = true;
        stream_wake(s);
    }
}

int dg_http_stream_count(void) { return H.n_streams; }

static void on_ping(uv_timer_t *t) {
    (void)t;
    for (dg_stream *s = H.streams; s; s = s->next) {
        s->ping = true;
        stream_wake(s);
    }
}

/* ---- live responses (generations: server/infer.c) -------------------------------------------
 * A live response is answered later by the loop: either a pushed stream (dg_live_stream, on top
 * of the pstream machinery above, but exempt from the drain's final "event: end" because the
 * producer ends it itself) or a deferred reply (dg_live_defer: the connection is suspended until
 * dg_live_reply stores the answer and resumes it; the access handler then queues it). gone(ud,
 * client_gone) runs exactly once from on_completed. dg_live_peer_gone peeks at the socket, which
 * is how a disconnect is seen while MHD has the connection suspended (MHD itself cannot). */
static void run_mhd(void);
static uv_timer_t kick_timer;          /* runs MHD on the next loop turn after a resume */
static bool       kick_ready;

static void on_kick(uv_timer_t *t) {
    (void)t;
    run_mhd();
}

/* A resumed connection only moves when MHD runs again: run it on the next loop iteration
 * instead of waiting for MHD's timeout (up to a second), so streamed tokens leave as they are
 * produced. */
static void http_kick(void) {
    if (!H.d) return;
    if (!kick_ready) {
        uv_timer_init(H.loop, &kick_timer);
        kick_ready = true;
    }
    uv_timer_start(&kick_timer, on_kick, 0, 0);
}

struct dg_live {
    dg_req         *r;
    dg_stream      *s;              /* stream kind */
    bool            deferred, has_reply, closed;
    int             status;
    json_t         *body;
    dg_live_gone_fn gone;
    void           *ud;
};

dg_live *dg_live_stream(dg_req *r, const char *ctype, dg_live_gone_fn gone, void *ud) {
    dg_live *l = dg_calloc(1, sizeof *l);
    l->r = r;
    l->gone = gone;
    l->ud = ud;
    l->s = (dg_stream *)dg_reply_pstream(r, ctype, NULL, NULL);
    l->s->no_drain = true;
    r->live = l;
    return l;
}

dg_live *dg_live_defer(dg_req *r, dg_live_gone_fn gone, void *ud) {
    dg_live *l = dg_calloc(1, sizeof *l);
    l->r = r;
    l->gone = gone;
    l->ud = ud;
    l->deferred = true;
    r->live = l;
    r->responded = true;              /* dispatch must not answer 500 */
    MHD_suspend_connection(r->conn);
    return l;
}

void dg_live_rebind(dg_live *l, dg_live_gone_fn gone, void *ud) {
    l->gone = gone;
    l->ud = ud;
}

void dg_live_write(dg_live *l, const char *data, size_t n) {
    if (l->s && !l->closed) dg_pstream_write((dg_pstream *)l->s, data, n);
}

void dg_live_end(dg_live *l) {
    if (l->s && !l->closed) dg_pstream_end((dg_pstream *)l->s);
}

void dg_live_reply(dg_live *l, int status, json_t *body) {
    if (!l->deferred || l->has_reply) {
        json_decref(body);
        return;
    }
    l->has_reply = true;
    l->status = status;
    l->body = body;
    MHD_resume_connection(l->r->conn);
    http_kick();
}

void dg_live_close(dg_live *l) {
    if (l->closed) return;
    l->closed = true;
    if (l->s) {
        dg_pstream_end((dg_pstream *)l->s);
    } else if (!l->has_reply) {
        dg_live_reply(l, 499, json_pack("{s:{s:s, s:s}}", "error", "message",
                                         "client closed the request", "type", "cancelled"));
    }
}

bool dg_live_peer_gone(dg_live *l) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(l->r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return true;
    char c;
    ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;                                   /* orderly shutdown (FIN) */
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
    return false;
}

/* From on_access after a resume: queue the stored reply. */
static void live_deliver(dg_req *r) {
    dg_live *l = r->live;
    if (!l->has_reply || l->body == NULL) return;
    json_t *b = l->body;
    l->body = NULL;
    json_t *e = json_object_get(b, "error");
    if (json_is_object(e)) {              /* the one envelope: code, param, request_id always */
        if (!json_object_get(e, "code")) json_object_set_new(e, "code", json_null());
        if (!json_object_get(e, "param")) json_object_set_new(e, "param", json_null());
        json_object_set_new(e, "request_id", json_string(r->request_id));
    }
    r->responded = false;
    dg_reply_json(r, l->status, b);
}

/* From on_completed. */
static void live_gone(dg_req *r, enum MHD_RequestTerminationCode toe) {
    dg_live *l = r->live;
    r->live = NULL;
    json_decref(l->body);
    if (l->gone) l->gone(l->ud, toe != MHD_REQUEST_TERMINATED_COMPLETED_OK);
    dg_free(l);
}

/* ---- routing -------------------------------------------------------------------------------- */
/* Matches path against pattern, capturing {name} segments. */
static bool match(const char *pattern, const char *path, dg_req *r) {
    int np = 0;
    const char *p = pattern, *q = path;
    while (*p && *q) {
        if (*p == '{') {
            const char *pe = strchr(p, '}');
            const char *qe = strchr(q, '/');
            if (!qe) qe = q + strlen(q);
            if (qe == q || np >= MAX_PARAMS || (size_t)(qe - q) >= sizeof r->pval[0])
                return false;
            if (r) {
                snprintf(r->pname[np], sizeof r->pname[0], "%.*s", (int)(pe - p - 1), p + 1);
                snprintf(r->pval[np], sizeof r->pval[0], "%.*s", (int)(qe - q), q);
            }
            np++;
            p = pe + 1;
            q = qe;
        } else {
            if (*p != *q) return false;
            p++;
            q++;
        }
    }
    if (*p || *q) return false;
    if (r) r->n_params = np;
    return true;
}

static bool host_ok(dg_req *r) {
    const char *allowed = H.s->allowed_hosts;
    if (!strcmp(allowed, "*")) return true;
    const char *host = dg_req_header(r, "Host");
    if (!host) return false;
    char h[300];
    snprintf(h, sizeof h, "%s", host);
    /* strip :port (keep [v6]) */
    char *end = h[0] == '[' ? strchr(h, ']') : NULL;
    char *colon = strrchr(end ? end : h, ':');
    if (colon) *colon = 0;
    static const char *const loop_names[] = {"localhost", "127.0.0.1", "[::1]", "::1"};
    for (size_t i = 0; i < sizeof loop_names / sizeof loop_names[0]; i++)
        if (!strcasecmp(h, loop_names[i])) return true;
    if (!strcasecmp(h, H.listen_host)) return true;
    char list[600];
    snprintf(list, sizeof list, "%s", allowed);
    for (char *save = NULL, *t = strtok_r(list, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
        if (!strcasecmp(h, t)) return true;
    return false;
}

static bool token_ok(dg_req *r) {
    if (!H.token[0]) return true;
    const char *given = NULL;
    const char *auth = dg_req_header(r, "Authorization");
    if (auth && !strncasecmp(auth, "Bearer ", 7)) given = auth + 7;
    if (!given) given = dg_req_header(r, "X-Api-Key");
    if (!given) given = dg_req_query(r, "access_token");
    if (!given) return false;
    size_t a = strlen(given), b = strlen(H.token);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)(given[i < a ? i : 0] ^ H.token[i]);
    return diff == 0;
}

static void dispatch(dg_req *r) {
    if (!host_ok(r)) {
        dg_reply_error(r, 403, "forbidden", "host_not_allowed", NULL,
                       "Host header '%s' is not allowed (DNS-rebinding protection). HINT: add it "
                       "to the allowed_hosts setting",
                       dg_req_header(r, "Host") ? dg_req_header(r, "Host") : "");
        return;
    }
    int path_match = -1;
    for (int i = 0; i < dg_routes_count; i++) {
        if (!match(dg_routes[i].pattern, r->path, NULL)) continue;
        path_match = i;
        if (!strcmp(dg_routes[i].method, r->method)) { r->route = i; break; }
    }
    if (r->route < 0) {
        if (path_match >= 0) {
            char allow[128] = "";
            for (int i = 0; i < dg_routes_count; i++)
                if (match(dg_routes[i].pattern, r->path, NULL)) {
                    size_t l = strlen(allow);
                    snprintf(allow + l, sizeof allow - l, "%s%s", l ? ", " : "",
                             dg_routes[i].method);
                }
            dg_reply_header(r, "Allow", allow);
            dg_reply_error(r, 405, "invalid_request", "method_not_allowed", NULL,
                           "%s is not allowed on %s (allowed: %s)", r->method, r->path, allow);
        } else {
            dg_reply_error(r, 404, "not_found", "route_not_found", NULL,
                           "no route for %s %s", r->method, r->path);
        }
        return;
    }
    match(dg_routes[r->route].pattern, r->path, r);
    if (dg_routes[r->route].auth == DG_AUTH_TOKEN && !token_ok(r)) {
        dg_reply_header(r, "WWW-Authenticate", "Bearer");
        dg_reply_error(r, 401, "unauthorized", "invalid_token", NULL,
                       "missing or wrong bearer token. HINT: send 'Authorization: Bearer "
                       "<token>' with the token from the daemon's --token-file");
        return;
    }
    if (r->too_large) {
        dg_reply_error(r, 413, "payload_too_large", "body_too_large", NULL,
                       "request body exceeds %lld bytes", (long long)H.s->max_body_bytes);
        return;
    }
    dg_routes[r->route].fn(r);
    if (!r->responded)
        dg_reply_error(r, 500, "internal", "no_response", NULL, "handler produced no response");
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload, size_t *upload_size, void **con_cls) {
    (void)cls; (void)version;
    dg_req *r = *con_cls;
    if (!r) {
        r = dg_calloc(1, sizeof *r);
        *con_cls = r;
        r->conn = conn;
        r->route = -1;
        snprintf(r->method, sizeof r->method, "%s", method);
        r->path = dg_strdup(url);
        const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
        bool rid_ok = rid && *rid && strlen(rid) < DG_ID_LEN;
        for (const char *c = rid; rid_ok && *c; c++)
            if (!(isalnum((unsigned char)*c) || *c == '-' || *c == '_' || *c == '.'))
                rid_ok = false;
        if (rid_ok) snprintf(r->request_id, sizeof r->request_id, "%s", rid);
        else dg_make_id("req_", r->request_id);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoll(cl, NULL, 10) > H.s->max_body_bytes) {
            r->too_large = true;
            dg_reply_error(r, 413, "payload_too_large", "body_too_large", NULL,
                           "request body of %s bytes exceeds the limit of %lld bytes", cl,
                           (long long)H.s->max_body_bytes);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->too_large) {
            if (r->len + *upload_size > (size_t)H.s->max_body_bytes) {
                r->too_large = true;
                dg_free(r->body);
                r->body = NULL;
                r->len = r->cap = 0;
            } else {
                if (r->len + *upload_size + 1 > r->cap) {
                    r->cap = (r->len + *upload_size + 1) * 2;
                    r->body = dg_realloc(r->body, r->cap);
                }
                memcpy(r->body + r->len, upload, *upload_size);
                r->len += *upload_size;
                r->body[r->len] = 0;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->live && r->live->deferred) {
        live_deliver(r);
        return MHD_YES;
    }
    if (!r->responded) dispatch(r);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)conn; (void)toe;
    dg_req *r = *con_cls;
    if (!r) return;
    if (r->live) live_gone(r, toe);
    if (r->stream) stream_unlink(r->stream);
    dg_free(r->path);
    dg_free(r->body);
    dg_free(r);
    *con_cls = NULL;
}

/* ---- the loop side -------------------------------------------------------------------------- */
static void run_mhd(void);

/* Safety net for job streams: a suspended stream whose job has events it has not sent yet is
 * woken here too (at least once a second), so a wake-up lost anywhere between the outbox and
 * MHD costs at most a second, never a stalled stream. */
static void wake_behind_streams(void) {
    for (dg_stream *s = H.streams; s; s = s->next)
        if (s->suspended && !s->push && (s->drain || dg_db_event_max(s->job_id) > s->last_seq))
            stream_wake(s);
}

static void on_timer(uv_timer_t *t) {
    (void)t;
    wake_behind_streams();
    run_mhd();
}
static void on_wake(uv_async_t *a) { (void)a; run_mhd(); }

/* The poller thread: select() over the fd sets the loop thread handed it, then one
 * uv_async_send. It never calls MHD. Every re-arm writes the self-pipe, so each select returns
 * at once and the loop runs MHD about every 2 ms (the usleep); see the file comment for why. */
static struct {
    pthread_t       th;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    bool            armed, quit, started, in_select;
    fd_set          rs, ws, es;
    int             maxfd;
    int             pipe[2];
} P;

static void *poller_main(void *arg) {
    (void)arg;
    for (;;) {
        usleep(2000);                  /* at most ~500 MHD_run calls a second */
        pthread_mutex_lock(&P.mu);
        while (!P.armed && !P.quit) pthread_cond_wait(&P.cv, &P.mu);
        if (P.quit) { pthread_mutex_unlock(&P.mu); return NULL; }
        fd_set rs = P.rs, ws = P.ws, es = P.es;
        int maxfd = P.maxfd;
        P.armed = false;
        P.in_select = true;
        pthread_mutex_unlock(&P.mu);
        FD_SET(P.pipe[0], &rs);
        if (P.pipe[0] > maxfd) maxfd = P.pipe[0];
        struct timeval tv = {1, 0};
        int n = select(maxfd + 1, &rs, &ws, &es, &tv);
        pthread_mutex_lock(&P.mu);
        P.in_select = false;
        pthread_mutex_unlock(&P.mu);
        char b[64];
        while (read(P.pipe[0], b, sizeof b) > 0) {}     /* drop interrupts meant for this one */
        (void)n;
        uv_async_send(&H.wake);
    }
}

/* Hands MHD's current fd sets to the poller (loop thread, after MHD_run). */
static void poller_arm(void) {
    pthread_mutex_lock(&P.mu);
    FD_ZERO(&P.rs);
    FD_ZERO(&P.ws);
    FD_ZERO(&P.es);
    MHD_socket maxfd = 0;
    if (MHD_get_fdset2(H.d, &P.rs, &P.ws, &P.es, &maxfd, FD_SETSIZE) != MHD_YES) maxfd = 0;
    P.maxfd = (int)maxfd;
    P.armed = true;
    pthread_cond_signal(&P.cv);
    pthread_mutex_unlock(&P.mu);
    if (write(P.pipe[1], "x", 1) < 0) {}      /* see poller_main: MHD runs again soon */
}

static void run_mhd(void) {
    if (!H.d) return;
    MHD_run(H.d);
    poller_arm();
    /* With streams open MHD runs at least every 20 ms: libmicrohttpd 0.9.75 can leave a resumed
     * streaming connection waiting for a socket event that never comes (a slow SSE reader then
     * stalls for good); a short tick bounds that. Idle daemons tick once a second. */
    MHD_UNSIGNED_LONG_LONG ms = 1000, cap = H.n_streams > 0 ? 20 : 1000;
    if (MHD_get_timeout(H.d, &ms) != MHD_YES || ms > cap) ms = cap;
    uv_timer_start(&H.timer, on_timer, (uint64_t)ms, 0);
}

static int parse_listen(const char *listen, struct sockaddr_in *sa, char *host, size_t hn,
                        char *err, size_t n) {
    const char *colon = strrchr(listen, ':');
    if (!colon) {
        snprintf(err, n, "listen: expected HOST:PORT, got '%s'", listen);
        return DG_EINVAL;
    }
    snprintf(host, hn, "%.*s", (int)(colon - listen), listen);
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (!end || *end || port < 0 || port > 65535) {
        snprintf(err, n, "listen: bad port in '%s'", listen);
        return DG_EINVAL;
    }
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    const char *ip = !strcmp(host, "localhost") ? "127.0.0.1" : host;
    if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1) {
        snprintf(err, n, "listen: '%s' is not an IPv4 address (or localhost)", host);
        return DG_EINVAL;
    }
    return 0;
}

int dg_http_start(uv_loop_t *loop, const dg_settings *s, const char *token, char *bound,
                  size_t bound_n, char *err, size_t n) {
    memset(&H, 0, sizeof H);
    H.loop = loop;
    H.s = s;
    snprintf(H.token, sizeof H.token, "%s", token ? token : "");
    struct sockaddr_in sa;
    int rc = parse_listen(s->listen, &sa, H.listen_host, sizeof H.listen_host, err, n);
    if (rc) return rc;
    bool loopback = (ntohl(sa.sin_addr.s_addr) >> 24) == 127;
    if (!loopback && !H.token[0]) {
        snprintf(err, n, "refusing to listen on non-loopback address %s without a token. HINT: "
                 "pass --token-file FILE (created with a random token if missing)", s->listen);
        return DG_EINVAL;
    }
    H.d = MHD_start_daemon(MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
                           0, NULL, NULL, on_access, NULL,
                           MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                           MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                           MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->connection_timeout_s,
                           MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->max_connections,
                           MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536,
                           MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
                           MHD_OPTION_END);
    if (!H.d) {
        snprintf(err, n, "cannot listen on %s (address in use or not available)", s->listen);
        return DG_EIO;
    }
    const union MHD_DaemonInfo *li = MHD_get_daemon_info(H.d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_in got;
    socklen_t gl = sizeof got;
    if (!li || getsockname(li->listen_fd, (struct sockaddr *)&got, &gl) != 0) {
        snprintf(err, n, "cannot read the bound address");
        MHD_stop_daemon(H.d);
        H.d = NULL;
        return DG_EIO;
    }
    snprintf(bound, bound_n, "%s:%u", H.listen_host, (unsigned)ntohs(got.sin_port));
    memset(&P, 0, sizeof P);
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.cv, NULL);
    if (pipe2(P.pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, n, "cannot create the poller's pipe");
        MHD_stop_daemon(H.d);
        H.d = NULL;
        return DG_EIO;
    }
    uv_async_init(loop, &H.wake, on_wake);
    if (pthread_create(&P.th, NULL, poller_main, NULL) != 0) {
        snprintf(err, n, "cannot start the poller thread");
        MHD_stop_daemon(H.d);
        H.d = NULL;
        return DG_EIO;
    }
    P.started = true;
    uv_timer_init(loop, &H.timer);
    uv_timer_init(loop, &H.ping);
    uint64_t pi = (uint64_t)s->sse_ping_interval_s * 1000;
    uv_timer_start(&H.ping, on_ping, pi, pi);
    run_mhd();
    return 0;
}

void dg_http_quiesce(void) {
    if (!H.d) return;
    MHD_socket fd = MHD_quiesce_daemon(H.d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void dg_http_stop(void) {
    if (!H.d) return;
    for (dg_stream *s = H.streams; s; s = s->next) stream_wake(s);
    if (P.started) {
        pthread_mutex_lock(&P.mu);
        P.quit = true;
        pthread_cond_signal(&P.cv);
        pthread_mutex_unlock(&P.mu);
        if (write(P.pipe[1], "q", 1) < 0) {}
        pthread_join(P.th, NULL);
        P.started = false;
        close(P.pipe[0]);
        close(P.pipe[1]);
    }
    uv_timer_stop(&H.timer);
    uv_timer_stop(&H.ping);
    uv_close((uv_handle_t *)&H.wake, NULL);
    uv_close((uv_handle_t *)&H.timer, NULL);
    uv_close((uv_handle_t *)&H.ping, NULL);
    if (kick_ready) {
        uv_close((uv_handle_t *)&kick_timer, NULL);
        kick_ready = false;
    }
    MHD_stop_daemon(H.d);
    H.d = NULL;
}
