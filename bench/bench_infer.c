/* bench/bench_infer.c -- inference latency and throughput at S concurrent sessions, through the
 * engine directly and through dragond's HTTP API, so the HTTP overhead is visible.
 *
 *   bench_infer engine --checkpoint F.dck --sessions S --tokens N [--prompt-tokens P]
 *       loads the checkpoint on the cpu backend and runs S requests through the continuous-
 *       batching scheduler (engine/gen.h), all submitted at once, greedy, no EOS stop.
 *   bench_infer http --url http://127.0.0.1:PORT --model M --sessions S --tokens N
 *                    [--prompt-tokens P]
 *       creates S empty sessions, then on every session at once appends a P-token prompt and
 *       streams N tokens (POST /v1/sessions/{id}/generate, SSE, ignore_eos), one thread and one
 *       raw socket per session; token arrival times are taken when each `event: token` frame is
 *       read.
 * Both print one JSON line: {"mode","sessions","tokens","ttft_ms_p50","ttft_ms_p95",
 * "itl_ms_p50","itl_ms_p95","tokens_per_s"} where tokens_per_s = all generated tokens / wall
 * time from the first submit to the last token, TTFT = submit -> first token of a sequence,
 * ITL = gaps between consecutive tokens of a sequence.
 * Not here: the driver that starts the daemon and writes bench/RESULTS.md (bench_infer.sh).
 * Thread affinity: main thread, plus one reader thread per session in http mode. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/gen.h"

typedef struct {
    double  t_submit;
    double *t;                 /* (N) token arrival times */
    int     n;
} seqtimes;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double q) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

static void report(const char *mode, seqtimes *st, int S, int N, double t0) {
    double *ttft = malloc(sizeof(double) * (size_t)S);
    double *itl = malloc(sizeof(double) * (size_t)S * (size_t)N);
    int ni = 0, total = 0;
    double t_end = t0;
    for (int s = 0; s < S; s++) {
        ttft[s] = st[s].n ? st[s].t[0] - st[s].t_submit : 0;
        for (int i = 1; i < st[s].n; i++) itl[ni++] = st[s].t[i] - st[s].t[i - 1];
        if (st[s].n && st[s].t[st[s].n - 1] > t_end) t_end = st[s].t[st[s].n - 1];
        total += st[s].n;
    }
    printf("{\"mode\":\"%s\",\"sessions\":%d,\"tokens\":%d,\"generated\":%d,"
           "\"ttft_ms_p50\":%.2f,\"ttft_ms_p95\":%.2f,\"itl_ms_p50\":%.2f,\"itl_ms_p95\":%.2f,"
           "\"tokens_per_s\":%.1f}\n", mode, S, N, total, pct(ttft, S, 0.5) * 1e3,
           pct(ttft, S, 0.95) * 1e3, pct(itl, ni, 0.5) * 1e3, pct(itl, ni, 0.95) * 1e3,
           total / (t_end - t0));
    free(ttft);
    free(itl);
}

// ------------------------------------------------------------------------------------------
// engine mode

static seqtimes *g_st;

static void on_ev(const dg_gen_event *ev, void *ud) {
    (void)ud;
    if (ev->kind != DG_GEN_EV_TOKEN) return;
    seqtimes *s = &g_st[(intptr_t)ev->cookie];
    s->t[s->n++] = dg_now();
}

static int run_engine(const char *ckpt, int S, int N, int P) {
    dg_ckpt ck;
    char err[512];
    if (dg_ckpt_read(ckpt, false, &ck, err, sizeof err)) {
        fprintf(stderr, "bench_infer: %s\n", err);
        return 1;
    }
    dg_backend_t *be;
    dg_model_t *m;
    ck.model.dropout = 0;
    if (dg_backend_open("cpu", NULL, &be) || dg_model_create(be, &ck.model, &m) ||
        dg_model_set_params(m, ck.params)) {
        fprintf(stderr, "bench_infer: cannot create the model\n");
        return 1;
    }
    dg_gen_config gc = {S, S, 128};
    dg_gen_t *g;
    if (dg_gen_create(m, &gc, on_ev, NULL, &g)) return 1;
    g_st = calloc((size_t)S, sizeof *g_st);
    dg_state_t **st = calloc((size_t)S, sizeof *st);
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)P);
    int V = ck.model.vocab_size;
    for (int s = 0; s < S; s++) {
        g_st[s].t = calloc((size_t)N + 8, sizeof(double));
        dg_state_create(m, &st[s]);
    }
    {   /* warm-up (threads of the BLAS, first touches), like the daemon's first request */
        dg_state_t *w;
        dg_state_create(m, &w);
        int32_t t[4] = {4, 5, 6, 7};
        dg_gen_request rq;
        memset(&rq, 0, sizeof rq);
        rq.state = w;
        rq.tokens = t;
        rq.n_tokens = 4;
        dg_sample_params_default(&rq.sample);
        rq.max_tokens = 4;
        rq.eos = -1;
        rq.cookie = (void *)(intptr_t)0;
        g_st[0].t = calloc(8, sizeof(double));
        dg_gen_submit(g, &rq, NULL);
        while (dg_gen_step(g)) {}
        free(g_st[0].t);
        g_st[0].t = calloc((size_t)N + 1, sizeof(double));
        g_st[0].n = 0;
        dg_state_free(w);
    }
    double t0 = dg_now();
    for (int s = 0; s < S; s++) {
        for (int i = 0; i < P; i++) prompt[i] = (int32_t)(4 + (i * 7 + s) % (V - 4));
        dg_gen_request rq;
        memset(&rq, 0, sizeof rq);
        rq.state = st[s];
        rq.tokens = prompt;
        rq.n_tokens = P;
        dg_sample_params_default(&rq.sample);
        rq.sample.temperature = 0;
        rq.max_tokens = N;
        rq.eos = -1;
        rq.cookie = (void *)(intptr_t)s;
        g_st[s].t_submit = dg_now();
        if (dg_gen_submit(g, &rq, NULL)) return 1;
    }
    while (dg_gen_step(g)) {}
    report("engine", g_st, S, N, t0);
    dg_gen_free(g);
    for (int s = 0; s < S; s++) dg_state_free(st[s]);
    dg_model_free(m);
    dg_backend_close(be);
    dg_ckpt_free(&ck);
    return 0;
}

// ------------------------------------------------------------------------------------------
// http mode

static char g_host[64];
static int g_port;

static int connect_to(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)g_port);
    inet_pton(AF_INET, g_host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void send_post(int fd, const char *path, const char *body) {
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                     "application/json\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n",
                     path, g_host, strlen(body));
    if (write(fd, hdr, (size_t)n) != n || write(fd, body, strlen(body)) < 0) perror("write");
}

/* Blocking POST returning the whole response (malloc'd). */
static char *post_all(const char *path, const char *body) {
    int fd = connect_to();
    if (fd < 0) return NULL;
    send_post(fd, path, body);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0) break;
        len += (size_t)r;
    }
    buf[len] = 0;
    close(fd);
    return buf;
}

typedef struct {
    char      sid[64];
    char      prompt[4096];          /* appended by the generate request (prefilled there) */
    int       N;
    seqtimes *st;
} hjob;

static void *http_one(void *arg) {
    hjob *j = arg;
    char path[128], body[4400];
    snprintf(path, sizeof path, "/v1/sessions/%s/generate", j->sid);
    snprintf(body, sizeof body, "{\"append\":\"%s\",\"max_tokens\":%d,\"temperature\":0,"
             "\"ignore_eos\":true,\"stream\":true}", j->prompt, j->N);
    int fd = connect_to();
    j->st->t_submit = dg_now();
    send_post(fd, path, body);
    /* count "event: token" occurrences as bytes arrive (a frame may straddle reads) */
    char buf[65536], carry[16] = "";
    const char *pat = "event: token";
    size_t pl = strlen(pat);
    for (;;) {
        ssize_t r = read(fd, buf + strlen(carry), sizeof buf - 1 - strlen(carry));
        if (r <= 0) break;
        double now = dg_now();
        size_t cl = strlen(carry);
        memcpy(buf, carry, cl);
        size_t len = cl + (size_t)r;
        buf[len] = 0;
        for (char *p = buf; (p = strstr(p, pat)); p += pl)
            if (j->st->n < j->N) j->st->t[j->st->n++] = now;
        size_t keep = len < pl - 1 ? len : pl - 1;
        memcpy(carry, buf + len - keep, keep);
        carry[keep] = 0;
        if (strstr(buf, "event: end")) break;
    }
    close(fd);
    return NULL;
}

static int run_http(const char *url, const char *model, int S, int N, int P) {
    if (sscanf(url, "http://%63[^:]:%d", g_host, &g_port) != 2) {
        fprintf(stderr, "bench_infer: --url must be http://HOST:PORT\n");
        return 1;
    }
    char *prompt = malloc((size_t)P + 1);
    static const char words[] = "the king and the queen of england ";
    hjob *jobs = calloc((size_t)S, sizeof *jobs);
    seqtimes *st = calloc((size_t)S, sizeof *st);
    for (int s = 0; s < S; s++) {
        for (int i = 0; i < P; i++) prompt[i] = words[(i + s) % (sizeof words - 1)];
        prompt[P] = 0;
        char body[8192];
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"keep_alive\":600}", model);
        snprintf(jobs[s].prompt, sizeof jobs[s].prompt, "%s", prompt);
        char *resp = post_all("/v1/sessions", body);
        char *id = resp ? strstr(resp, "\"id\":\"") : NULL;
        if (!id) {
            fprintf(stderr, "bench_infer: session create failed: %s\n", resp ? resp : "");
            return 1;
        }
        sscanf(id + 6, "%63[^\"]", jobs[s].sid);
        free(resp);
        jobs[s].N = N;
        st[s].t = calloc((size_t)N + 1, sizeof(double));
        jobs[s].st = &st[s];
    }
    pthread_t *th = calloc((size_t)S, sizeof *th);
    double t0 = dg_now();
    for (int s = 0; s < S; s++) pthread_create(&th[s], NULL, http_one, &jobs[s]);
    for (int s = 0; s < S; s++) pthread_join(th[s], NULL);
    report("http", st, S, N, t0);
    for (int s = 0; s < S; s++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s", jobs[s].sid);
        int fd = connect_to();
        char req[256];
        int n = snprintf(req, sizeof req, "DELETE %s HTTP/1.1\r\nHost: %s\r\nConnection: "
                         "close\r\n\r\n", path, g_host);
        if (write(fd, req, (size_t)n) == n) { char b[512]; while (read(fd, b, sizeof b) > 0) {} }
        close(fd);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_infer engine --checkpoint F --sessions S --tokens N "
                "[--prompt-tokens P]\n       bench_infer http --url URL --model M --sessions S "
                "--tokens N [--prompt-tokens P]\n");
        return 2;
    }
    const char *ckpt = NULL, *url = NULL, *model = NULL;
    int S = 1, N = 64, P = 32;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--checkpoint")) ckpt = argv[i + 1];
        else if (!strcmp(argv[i], "--url")) url = argv[i + 1];
        else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--sessions")) S = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokens")) N = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prompt-tokens")) P = atoi(argv[i + 1]);
    }
    if (S < 1 || N < 1 || P < 1 || P > 4000) return 2;
    if (!strcmp(argv[1], "engine") && ckpt) return run_engine(ckpt, S, N, P);
    if (!strcmp(argv[1], "http") && url && model) return run_http(url, model, S, N, P);
    fprintf(stderr, "bench_infer: missing arguments\n");
    return 2;
}
