/* tests/proto/test_client_sse.c -- the `dragon` client's SSE parser (clients/sse.c): events
 * split across reads at every byte position, LF / CRLF / CR line ends (a CRLF split between
 * two reads is one line end), multi-line data, comments, id persistence, retry, early stop,
 * and the partial-state reset used on reconnect. The parser is included directly (it has no
 * dependencies besides engine/dg.h); the end-to-end path against a real daemon is in
 * tests/integration/test_client.c.
 * Thread affinity: single-threaded. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "check_util.h"
#include "clients/sse.c"

typedef struct {
    char ids[32][32], types[32][32], data[32][256];
    int  n;
    int  stop_at;             /* return 7 from the callback at this event index (-1: never) */
} rec;

static int rec_cb(const dgc_sse_event *ev, void *ud) {
    rec *r = ud;
    ck_assert_int_lt(r->n, 32);
    ck_assert_uint_eq(strlen(ev->data), ev->data_len);
    snprintf(r->ids[r->n], 32, "%s", ev->id);
    snprintf(r->types[r->n], 32, "%s", ev->event);
    snprintf(r->data[r->n], 256, "%s", ev->data);
    r->n++;
    return r->n - 1 == r->stop_at ? 7 : 0;
}

static void parse_chunks(const char *s, size_t chunk, rec *r, dgc_sse *p) {
    memset(r, 0, sizeof *r);
    r->stop_at = -1;
    dgc_sse_init(p, rec_cb, r);
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        ck_assert_int_eq(dgc_sse_feed(p, s + i, k), 0);
    }
}

/* What dragond sends on /v1/jobs/{id}/stream (server/http.c), with a ping and a retry. */
static const char DAEMON[] =
    "retry: 2000\n\n"
    "id: 1\nevent: status\ndata: {\"status\":\"queued\",\"reason\":null}\n\n"
    ": ping\n\n"
    "id: 2\nevent: progress\ndata: {\"step\":5,\"total_steps\":40}\n\n"
    "id: 3\nevent: metric\ndata: {\"step\":5,\"values\":{\"train_loss\":3.84}}\n\n"
    "id: 4\nevent: end\ndata: {\"status\":\"succeeded\"}\n\n";

START_TEST(daemon_stream_whole) {
    rec r;
    dgc_sse p;
    parse_chunks(DAEMON, sizeof DAEMON, &r, &p);
    ck_assert_int_eq(r.n, 4);
    ck_assert_str_eq(r.types[0], "status");
    ck_assert_str_eq(r.ids[0], "1");
    ck_assert_str_eq(r.data[0], "{\"status\":\"queued\",\"reason\":null}");
    ck_assert_str_eq(r.types[2], "metric");
    ck_assert_str_eq(r.types[3], "end");
    ck_assert_str_eq(r.ids[3], "4");
    ck_assert_str_eq(p.last_id, "4");
    ck_assert_int_eq(p.retry_ms, 2000);
    ck_assert_int_eq(p.n_comments, 1);
    ck_assert_int_eq(p.n_events, 4);
    dgc_sse_free(&p);
}
END_TEST

/* Every chunk size from 1 byte up gives exactly the events of the whole-buffer parse. */
START_TEST(daemon_stream_every_split) {
    rec whole, part;
    dgc_sse p;
    parse_chunks(DAEMON, sizeof DAEMON, &whole, &p);
    dgc_sse_free(&p);
    for (size_t chunk = 1; chunk < sizeof DAEMON; chunk++) {
        parse_chunks(DAEMON, chunk, &part, &p);
        ck_assert_int_eq(part.n, whole.n);
        for (int i = 0; i < whole.n; i++) {
            ck_assert_str_eq(part.types[i], whole.types[i]);
            ck_assert_str_eq(part.ids[i], whole.ids[i]);
            ck_assert_str_eq(part.data[i], whole.data[i]);
        }
        dgc_sse_free(&p);
    }
}
END_TEST

/* Two feeds split at every position of the stream (not just even chunks). */
START_TEST(two_piece_splits) {
    const char *s = "id: 9\r\nevent: log\r\ndata: a\r\ndata: b\r\n\r\nevent: x\rdata: y\r\r";
    size_t n = strlen(s);
    for (size_t cut = 0; cut <= n; cut++) {
        rec r;
        memset(&r, 0, sizeof r);
        r.stop_at = -1;
        dgc_sse p;
        dgc_sse_init(&p, rec_cb, &r);
        dgc_sse_feed(&p, s, cut);
        dgc_sse_feed(&p, s + cut, n - cut);
        ck_assert_msg(r.n == 2, "cut %zu: %d events", cut, r.n);
        ck_assert_str_eq(r.types[0], "log");
        ck_assert_str_eq(r.data[0], "a\nb");
        ck_assert_str_eq(r.ids[0], "9");
        ck_assert_str_eq(r.types[1], "x");
        ck_assert_str_eq(r.data[1], "y");
        ck_assert_str_eq(r.ids[1], "9");          /* the id stays in effect */
        dgc_sse_free(&p);
    }
}
END_TEST

START_TEST(field_rules) {
    rec r;
    dgc_sse p;
    /* no space after the colon; only one space is stripped; "data" alone is an empty line;
     * unknown fields are ignored; a bad retry is ignored; no event: gives "message" */
    parse_chunks("data:x\ndata:  two\ndata\nfoo: bar\nretry: 12a\n\n", 1000, &r, &p);
    ck_assert_int_eq(r.n, 1);
    ck_assert_str_eq(r.types[0], "message");
    ck_assert_str_eq(r.data[0], "x\n two\n");
    ck_assert_int_eq(p.retry_ms, -1);
    dgc_sse_free(&p);
    /* an id without data updates the last id but dispatches nothing; an event type without
     * data is forgotten at the blank line */
    parse_chunks("id: 5\nevent: lonely\n\ndata: d\n\n", 1000, &r, &p);
    ck_assert_int_eq(r.n, 1);
    ck_assert_str_eq(r.ids[0], "5");
    ck_assert_str_eq(r.types[0], "message");
    ck_assert_str_eq(r.data[0], "d");
    dgc_sse_free(&p);
    /* a BOM at the start is skipped; an event without a final blank line is not dispatched */
    parse_chunks("\xEF\xBB\xBF" "data: a\n\ndata: pending\n", 1000, &r, &p);
    ck_assert_int_eq(r.n, 1);
    ck_assert_str_eq(r.data[0], "a");
    dgc_sse_free(&p);
}
END_TEST

START_TEST(stop_and_reset) {
    rec r;
    memset(&r, 0, sizeof r);
    r.stop_at = 1;
    dgc_sse p;
    dgc_sse_init(&p, rec_cb, &r);
    /* the callback's nonzero value comes back and the rest of the buffer is not parsed */
    ck_assert_int_eq(dgc_sse_feed(&p, DAEMON, strlen(DAEMON)), 7);
    ck_assert_int_eq(r.n, 2);
    ck_assert_str_eq(p.last_id, "2");
    dgc_sse_free(&p);
    /* a connection dropped mid-event: reset forgets the half event, keeps id and retry */
    memset(&r, 0, sizeof r);
    r.stop_at = -1;
    dgc_sse_init(&p, rec_cb, &r);
    dgc_sse_feed(&p, "retry: 500\nid: 3\ndata: {\"a\":1}\n\nid: 4\nevent: metric\ndata: {\"tr", 60);
    ck_assert_int_eq(r.n, 1);
    dgc_sse_reset_partial(&p);
    ck_assert_str_eq(p.last_id, "4");       /* the id line of the half event was complete */
    ck_assert_int_eq(p.retry_ms, 500);
    const char *rest = "id: 5\nevent: end\ndata: {}\n\n";
    dgc_sse_feed(&p, rest, strlen(rest));
    ck_assert_int_eq(r.n, 2);
    ck_assert_str_eq(r.types[1], "end");
    ck_assert_str_eq(r.data[1], "{}");
    dgc_sse_free(&p);
}
END_TEST

/* A data payload far larger than the initial buffers, split into odd pieces. */
typedef struct { size_t len; char first, last; int n; } big_rec;
static int big_cb(const dgc_sse_event *ev, void *ud) {
    big_rec *b = ud;
    b->len = ev->data_len;
    b->first = ev->data[0];
    b->last = ev->data[ev->data_len - 1];
    b->n++;
    return 0;
}

START_TEST(large_event) {
    size_t big = 100000;
    char *s = dg_malloc(big + 64);
    strcpy(s, "event: log\ndata: ");
    size_t off = strlen(s);
    for (size_t i = 0; i < big; i++) s[off + i] = (char)('a' + i % 26);
    strcpy(s + off + big, "\n\n");
    size_t n = strlen(s);
    big_rec br = {0};
    dgc_sse p;
    dgc_sse_init(&p, big_cb, &br);
    for (size_t i = 0; i < n; i += 777) dgc_sse_feed(&p, s + i, n - i < 777 ? n - i : 777);
    ck_assert_int_eq(br.n, 1);
    ck_assert_uint_eq(br.len, big);
    ck_assert_int_eq(br.first, 'a');
    ck_assert_int_eq(br.last, 'a' + (big - 1) % 26);
    dgc_sse_free(&p);
    dg_free(s);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("client_sse");
    TCase *t = tcase_create("parser");
    tcase_add_test(t, daemon_stream_whole);
    tcase_add_test(t, daemon_stream_every_split);
    tcase_add_test(t, two_piece_splits);
    tcase_add_test(t, field_rules);
    tcase_add_test(t, stop_and_reset);
    tcase_add_test(t, large_event);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
