/* clients/client.h -- what the `dragon` client's modules share: the connection context (host,
 * token, output mode), HTTP calls to dragond with the API's error envelope turned into a
 * printed message and an exit code (clients/http.c), following a job's SSE stream with
 * Last-Event-ID reconnects (clients/http.c), small formatting helpers (clients/format.c), and
 * the hook through which an optional clients/dragon_infer.c adds commands.
 *
 * Exit codes of every command: 0 success, 1 the daemon answered with an error or could not be
 * reached (or a followed job failed), 2 usage error (or a followed job was cancelled), 130
 * interrupted with Ctrl-C (a followed job keeps running).
 *
 * Not here: argument parsing and rendering of each command (clients/dragon.c,
 * clients/follow.c). Thread affinity: the client is single-threaded; the SIGINT handler only
 * sets dgc_interrupted. */
#ifndef DG_CLIENT_H
#define DG_CLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

#define DGC_DEFAULT_HOST "http://127.0.0.1:8077"

enum { DGC_OK = 0, DGC_EXIT_ERROR = 1, DGC_EXIT_USAGE = 2, DGC_EXIT_INTERRUPT = 130 };

typedef struct {
    char host[512];          /* base URL without a trailing slash */
    char token[512];         /* bearer token or "" */
    bool json;               /* -o json: print the API's JSON instead of tables */
    bool tty;                /* stdout is a terminal (live redraws, colours) */
    const char *prog;        /* argv[0] basename, for messages */
} dgc_ctx;

extern volatile sig_atomic_t dgc_interrupted;   /* set by SIGINT */

/* ---- HTTP (clients/http.c) -------------------------------------------------------------- */
typedef struct {
    long    status;          /* HTTP status; 0 when the request did not complete */
    char   *body;            /* dg_malloc'd, NUL-terminated; NULL when empty */
    size_t  len;
    json_t *json;            /* body parsed as JSON, or NULL */
    char    err[256];        /* transport error text when status is 0 */
} dgc_resp;

/* One request to c->host + path (path already escaped; see dgc_escape). body may be NULL.
 * Returns the HTTP status, 0 on transport failure. Caller frees with dgc_resp_free. */
long dgc_request(const dgc_ctx *c, const char *method, const char *path, const json_t *body,
                 dgc_resp *out);
void dgc_resp_free(dgc_resp *r);

/* Prints why a response is an error: the server's error.code, message and param, or the
 * transport failure with a hint. Returns the exit code (DGC_EXIT_ERROR). */
int dgc_report_error(const dgc_ctx *c, const char *method, const char *path, const dgc_resp *r);

/* Request that must succeed with 2xx: returns the parsed JSON (a new reference; an empty
 * object for bodies that are not JSON) or NULL after printing the error (*rc = exit code). */
json_t *dgc_call(const dgc_ctx *c, const char *method, const char *path, const json_t *body,
                 int *rc);

/* URL-escapes one path segment or query value into a dg_malloc'd string. */
char *dgc_escape(const char *s);

/* ---- following a job stream (clients/http.c) ------------------------------------------- */
/* Called with every event of /v1/jobs/{id}/stream; data is the parsed JSON (never NULL: a
 * non-JSON payload becomes a JSON string). Return 0 to continue, nonzero to stop following
 * (dgc_follow returns that value). */
typedef int (*dgc_event_fn)(const char *event, long long id, json_t *data, void *ud);

enum { DGC_FOLLOW_INTERRUPTED = -1000, DGC_FOLLOW_LOST = -1001, DGC_FOLLOW_HTTP = -1002 };

/* Follows job_id's stream from event after_id (0 = from the start). Reconnects with
 * Last-Event-ID after a dropped connection or a daemon restart, for up to give_up_s seconds
 * without progress. Returns the callback's nonzero value; DGC_FOLLOW_INTERRUPTED on Ctrl-C;
 * DGC_FOLLOW_LOST when the daemon stayed unreachable; DGC_FOLLOW_HTTP after printing an HTTP
 * error (e.g. 404). The stream's natural end ("end" event) reaches the callback like any
 * other event: the callback decides to stop there. */
int dgc_follow(const dgc_ctx *c, const char *job_id, long long after_id, double give_up_s,
               dgc_event_fn fn, void *ud);

/* ---- formatting (clients/format.c) ------------------------------------------------------ */
/* Each returns buf. Missing (NULL/null) values print as "-". */
const char *dgc_fmt_num(char *buf, size_t n, json_t *v, const char *fmt);
const char *dgc_fmt_time(char *buf, size_t n, json_t *unix_s);       /* 2026-11-28 01:02:03 */
const char *dgc_fmt_ago(char *buf, size_t n, json_t *unix_s);        /* "3m ago" */
const char *dgc_fmt_dur(char *buf, size_t n, double seconds);        /* "1h02m", "12.3s" */
const char *dgc_fmt_bytes(char *buf, size_t n, json_t *bytes);       /* "1.2 MB" */
/* "█" bars for a progress fraction in [0, 1], width cells. */
const char *dgc_fmt_bar(char *buf, size_t n, double frac, int width);
/* A sparkline of vals (the last `width` ones) from ▁▂▃▄▅▆▇█. */
const char *dgc_fmt_spark(char *buf, size_t n, const double *vals, int count, int width);
/* Prints a JSON value the way -o json does (indented, one trailing newline). */
void dgc_print_json(json_t *v);
/* Reads a JSON field path like "progress.step" (dots separate keys); NULL when absent. */
json_t *dgc_get(json_t *o, const char *path);
double  dgc_num(json_t *v, double def);       /* integer or real, else def */
const char *dgc_str(json_t *v, const char *def);

/* ---- optional command modules ------------------------------------------------------------ */
/* dragon.c offers a command it does not know to these hooks, in this order. The defaults
 * (weak symbols in dragon.c) return -1: "not mine". A module file defines them strongly:
 * clients/dragon_infer.c (generate, session) and clients/dragon_export.c (export, pull). A
 * dispatch function returns an exit code, or -1 for a command that is not its own; called
 * with argv = {"--help"} it prints the command's help. The *_help functions print the
 * module's lines of the command list ("  %-9s %s\n"). */
int  dgc_infer_dispatch(dgc_ctx *c, const char *cmd, int argc, char **argv);
void dgc_infer_help(FILE *f);
int  dgc_export_dispatch(dgc_ctx *c, const char *cmd, int argc, char **argv);
void dgc_export_help(FILE *f);

#endif
