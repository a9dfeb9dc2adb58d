/* tests/integration/client_util.h -- run the `dragon` client binary ($DG_BUILD/dragon, else
 * ./build/dragon) from a Check test: spawn it with DRAGON_HOST / DRAGON_TOKEN set, capture
 * stdout and stderr in files, wait with a timeout, and small text helpers (count lines, find
 * the job id it printed, the repo's config/models/tiny.json).
 * Not here: the daemon (daemon_util.h). Thread affinity: the test's thread. */
#ifndef DG_CLIENT_UTIL_H
#define DG_CLIENT_UTIL_H

#include "daemon_util.h"

typedef struct {
    pid_t pid;
    char  out_path[600], err_path[600];
    int   rc;                /* exit code; 128+sig if killed by a signal; -1 on timeout */
    char *out, *err;         /* captured text (malloc'd) after dcl_wait */
} dcl_run;

static inline const char *dcl_binary(void) {
    static char path[1024];
    const char *b = getenv("DG_BUILD");
    snprintf(path, sizeof path, "%s/dragon", b && *b ? b : "build");
    return path;
}

/* The repo file rel (tests run from the repo root; fall back to DG_BUILD/..). */
static inline const char *dcl_repo_file(const char *rel) {
    static char path[1200];
    if (access(rel, R_OK) == 0) { snprintf(path, sizeof path, "%s", rel); return path; }
    const char *b = getenv("DG_BUILD");
    snprintf(path, sizeof path, "%s/../%s", b && *b ? b : "build", rel);
    return path;
}

static inline char *dcl_slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

/* Starts `dragon ARGS...` (NULL-ended) against host with token (NULL: DRAGON_TOKEN unset). */
static inline void dcl_spawn_v(dcl_run *r, const char *dir, const char *host, const char *token,
                               const char *const *args) {
    static int seq;
    memset(r, 0, sizeof *r);
    snprintf(r->out_path, sizeof r->out_path, "%s/dragon-%d-%d.out", dir, (int)getpid(), seq);
    snprintf(r->err_path, sizeof r->err_path, "%s/dragon-%d-%d.err", dir, (int)getpid(), seq++);
    const char *argv[48];
    int n = 0;
    argv[n++] = dcl_binary();
    for (int i = 0; args[i] && n < 47; i++) argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(r->out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(r->err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int in = open("/dev/null", O_RDONLY);
        dup2(o, 1);
        dup2(e, 2);
        dup2(in, 0);
        if (host) setenv("DRAGON_HOST", host, 1);
        else unsetenv("DRAGON_HOST");
        if (token) setenv("DRAGON_TOKEN", token, 1);
        else unsetenv("DRAGON_TOKEN");
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    r->pid = pid;
}

/* Waits up to timeout_s (then SIGKILL, rc -1) and reads the captured output. */
static inline int dcl_wait(dcl_run *r, double timeout_s) {
    double t_end = dgd_now() + timeout_s;
    int st = 0;
    r->rc = -1;
    for (;;) {
        pid_t w = waitpid(r->pid, &st, WNOHANG);
        if (w == r->pid) {
            r->rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            break;
        }
        if (dgd_now() > t_end) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &st, 0);
            break;
        }
        dgd_sleep_ms(10);
    }
    r->out = dcl_slurp(r->out_path);
    r->err = dcl_slurp(r->err_path);
    return r->rc;
}

static inline void dcl_free(dcl_run *r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* Runs to completion: dcl_run_sync(&r, dir, host, token, timeout, "status", NULL). */
static inline int dcl_run_sync(dcl_run *r, const char *dir, const char *host, const char *token,
                               double timeout_s, ...) {
    const char *args[40];
    int n = 0;
    va_list ap;
    va_start(ap, timeout_s);
    for (const char *a; n < 39 && (a = va_arg(ap, const char *)); ) args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    dcl_spawn_v(r, dir, host, token, args);
    return dcl_wait(r, timeout_s);
}

/* Runs dragon and asserts its exit code, showing its output when the code is wrong. */
#define DCL_RUN(want, r, ...)                                                                 \
    do {                                                                                      \
        int dcl_rc_ = dcl_run_sync(r, __VA_ARGS__, NULL);                                     \
        ck_assert_msg(dcl_rc_ == (want),                                                      \
                      "dragon exit %d, want %d\n--- stdout:\n%s--- stderr:\n%s", dcl_rc_,     \
                      (want), (r)->out, (r)->err);                                            \
    } while (0)

static inline int dcl_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* The id in "submitted job_..." (static buffer) or "". */
static inline const char *dcl_submitted_id(const char *out) {
    static char id[64];
    id[0] = 0;
    const char *p = strstr(out, "submitted job_");
    if (p) {
        p += 10;
        size_t n = strcspn(p, " :\n");
        snprintf(id, sizeof id, "%.*s", (int)n, p);
    }
    return id;
}
#endif
