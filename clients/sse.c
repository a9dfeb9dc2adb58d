/* clients/sse.c -- the incremental SSE parser of clients/sse.h (WHATWG event-stream rules).
 * Not here: transport. Thread affinity: one parser per thread. */
#include "clients/sse.h"

#include <stdlib.h>
#include <string.h>

#include "engine/dg.h"

void dgc_sse_init(dgc_sse *p, dgc_sse_cb cb, void *ud) {
    memset(p, 0, sizeof *p);
    p->cb = cb;
    p->ud = ud;
    p->retry_ms = -1;
    p->line_cap = 256;
    p->line = dg_malloc(p->line_cap);
    p->data_cap = 256;
    p->data = dg_malloc(p->data_cap);
    p->data[0] = 0;
}

void dgc_sse_free(dgc_sse *p) {
    dg_free(p->line);
    dg_free(p->data);
    p->line = p->data = NULL;
}

void dgc_sse_reset_partial(dgc_sse *p) {
    p->line_len = 0;
    p->data_len = 0;
    p->data[0] = 0;
    p->have_data = false;
    p->event[0] = 0;
    p->after_cr = false;
    p->started = false;       /* a new response may start with a BOM again */
}

static void sse_data_append(dgc_sse *p, const char *s, size_t n) {
    if (p->data_len + n + 2 > p->data_cap) {
        while (p->data_len + n + 2 > p->data_cap) p->data_cap *= 2;
        p->data = dg_realloc(p->data, p->data_cap);
    }
    memcpy(p->data + p->data_len, s, n);
    p->data_len += n;
    p->data[p->data_len++] = '\n';
    p->data[p->data_len] = 0;
}

/* A blank line: dispatch the event being assembled. */
static int sse_dispatch(dgc_sse *p) {
    int rc = 0;
    if (p->have_data) {
        if (p->data_len > 0 && p->data[p->data_len - 1] == '\n') p->data[--p->data_len] = 0;
        dgc_sse_event ev = {p->last_id, p->event[0] ? p->event : "message", p->data,
                            p->data_len};
        p->n_events++;
        rc = p->cb ? p->cb(&ev, p->ud) : 0;
    }
    p->data_len = 0;
    p->data[0] = 0;
    p->have_data = false;
    p->event[0] = 0;
    return rc;
}

/* One complete line (without its terminator). */
static int sse_line(dgc_sse *p, const char *line, size_t n) {
    if (n == 0) return sse_dispatch(p);
    if (line[0] == ':') { p->n_comments++; return 0; }
    const char *colon = memchr(line, ':', n);
    size_t fn = colon ? (size_t)(colon - line) : n;
    const char *val = colon ? colon + 1 : line + n;
    size_t vn = colon ? n - fn - 1 : 0;
    if (vn > 0 && val[0] == ' ') { val++; vn--; }
    if (fn == 4 && !memcmp(line, "data", 4)) {
        sse_data_append(p, val, vn);
        p->have_data = true;
    } else if (fn == 5 && !memcmp(line, "event", 5)) {
        size_t k = vn < sizeof p->event - 1 ? vn : sizeof p->event - 1;
        memcpy(p->event, val, k);
        p->event[k] = 0;
    } else if (fn == 2 && !memcmp(line, "id", 2)) {
        if (!memchr(val, 0, vn)) {
            size_t k = vn < sizeof p->last_id - 1 ? vn : sizeof p->last_id - 1;
            memcpy(p->last_id, val, k);
            p->last_id[k] = 0;
        }
    } else if (fn == 5 && !memcmp(line, "retry", 5)) {
        bool digits = vn > 0 && vn < 10;
        for (size_t i = 0; digits && i < vn; i++)
            if (val[i] < '0' || val[i] > '9') digits = false;
        if (digits) {
            long v = 0;
            for (size_t i = 0; i < vn; i++) v = v * 10 + (val[i] - '0');
            p->retry_ms = v;
        }
    }
    /* other fields are ignored, as the spec says */
    return 0;
}

int dgc_sse_feed(dgc_sse *p, const char *buf, size_t n) {
    size_t i = 0;
    if (!p->started) {
        /* drop a UTF-8 BOM at the very start (it may itself be split: keep it simple and only
         * strip it when the first piece holds it whole) */
        if (n >= 3 && (unsigned char)buf[0] == 0xEF && (unsigned char)buf[1] == 0xBB &&
            (unsigned char)buf[2] == 0xBF)
            i = 3;
        if (n > 0) p->started = true;
    }
    for (; i < n; i++) {
        char c = buf[i];
        if (p->after_cr) {
            p->after_cr = false;
            if (c == '\n') continue;           /* the LF of a CRLF split across pieces */
        }
        if (c == '\n' || c == '\r') {
            if (c == '\r') p->after_cr = true;
            p->line[p->line_len] = 0;
            size_t len = p->line_len;
            p->line_len = 0;
            int rc = sse_line(p, p->line, len);
            if (rc) return rc;
            continue;
        }
        if (p->line_len + 2 > p->line_cap) {
            p->line_cap *= 2;
            p->line = dg_realloc(p->line, p->line_cap);
        }
        p->line[p->line_len++] = c;
    }
    return 0;
}
