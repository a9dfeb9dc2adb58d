/* clients/cmds.h -- the pieces clients/dragon.c and clients/follow.c share: option parsing
 * helpers and the streaming commands (submit, logs, watch, bench) that follow.c implements.
 * Not here: HTTP (client.h). Thread affinity: single-threaded. */
#ifndef DG_CLIENT_CMDS_H
#define DG_CLIENT_CMDS_H

#include "clients/client.h"

/* Prints "dragon CMD: <fmt with arg>" and a --help pointer to stderr; returns DGC_EXIT_USAGE. */
int  dgc_usage(const dgc_ctx *c, const char *cmd, const char *fmt, const char *arg);
/* Matches argv[*i] against "--long"/"-s" (value in the next argument) or "--long=value".
 * Returns 1 on a match (sets *val, or *missing when the value is absent), else 0. */
int  dgc_opt(int argc, char **argv, int *i, const char *lng, const char *shrt, const char **val,
             bool *missing);
bool dgc_parse_long(const char *s, long long lo, long long hi, long long *out);
/* Copies arg into out, except "last"/"latest", which become the newest job's id (one GET).
 * Returns 0 or an exit code after printing why. */
int  dgc_resolve_job(const dgc_ctx *c, const char *arg, char *out, size_t n);
/* "/v1/jobs/<escaped id><suffix>", dg_malloc'd. */
char *dgc_job_path(const char *job, const char *suffix);

int dgc_cmd_submit(dgc_ctx *c, int argc, char **argv);
int dgc_cmd_logs(dgc_ctx *c, int argc, char **argv);
int dgc_cmd_watch(dgc_ctx *c, int argc, char **argv);
int dgc_cmd_bench(dgc_ctx *c, int argc, char **argv);

#endif
