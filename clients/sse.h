/* clients/sse.h -- an incremental Server-Sent Events parser for the `dragon` client (the
 * WHATWG "event stream interpretation" rules): bytes arrive in arbitrary pieces (a line, an
 * event, even a CR/LF pair may be split across reads); lines end in LF, CRLF or CR; `data:`
 * lines are joined with "\n"; one optional space after the colon is dropped; `id:` sets the
 * last event id (kept across events, as a browser does, so a reconnect can send it as
 * Last-Event-ID); `retry:` with digits only sets the reconnect delay; lines starting with ':'
 * are comments (the daemon's ": ping"); a blank line dispatches the event, unless no data
 * line was seen (then only the id is taken).
 *
 * Not here: HTTP, reconnecting, JSON (clients/http.c does those). Thread affinity: a parser
 * belongs to one thread; separate parsers are independent. */
#ifndef DG_CLIENT_SSE_H
#define DG_CLIENT_SSE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *id;           /* the last event id in effect ("" when none was ever sent) */
    const char *event;        /* event type; "message" when the event had no event: line */
    const char *data;         /* data lines joined with '\n' (NUL-terminated) */
    size_t      data_len;
} dgc_sse_event;

/* Called once per dispatched event; the strings live until the callback returns. A nonzero
 * return stops dgc_sse_feed, which returns that value. */
typedef int (*dgc_sse_cb)(const dgc_sse_event *ev, void *ud);

typedef struct {
    dgc_sse_cb cb;
    void      *ud;
    char      *line;          /* the line being assembled (no terminator) */
    size_t     line_len, line_cap;
    char      *data;          /* data buffer of the event being assembled */
    size_t     data_len, data_cap;
    bool       have_data;     /* a data: field was seen since the last dispatch */
    char       event[64];
    char       last_id[128];
    long       retry_ms;      /* -1 until the server sent retry: */
    long       n_comments;    /* ": ping" and other comment lines seen */
    long       n_events;      /* events dispatched */
    bool       after_cr;      /* the previous byte was CR: a following LF belongs to it */
    bool       started;       /* past the optional UTF-8 BOM */
} dgc_sse;

void dgc_sse_init(dgc_sse *p, dgc_sse_cb cb, void *ud);
/* Feeds n bytes. Returns 0, or the callback's nonzero value (the rest of buf is dropped). */
int  dgc_sse_feed(dgc_sse *p, const char *buf, size_t n);
/* Forgets a half-received line/event (after a dropped connection) but keeps last_id and
 * retry_ms, which the reconnect needs. */
void dgc_sse_reset_partial(dgc_sse *p);
void dgc_sse_free(dgc_sse *p);

#endif
