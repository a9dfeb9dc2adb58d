/* tests/integration/infer_util.h -- helpers for the inference integration tests: a tiny model
 * trained by the test itself (`dragond train` on a generated text file, a few steps) and placed
 * in the daemon's <data_dir>/models/<name>.dck, `dragond generate` as the reference, a raw-socket
 * HTTP client that can walk away mid-stream, and /metrics readers.
 * Not here: the assertions (the test files). Thread affinity: the test's thread; infer_stream
 * may run on several threads at once. */
#ifndef DG_INFER_UTIL_H
#define DG_INFER_UTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "daemon_util.h"

/* Trains config/models/tiny.json for `steps` steps on a generated text into dir/run_<tag> and
 * copies its checkpoint to data_dir/models/<name>.dck. Returns 0 or -1 (output shown). */
static inline int inf_make_model(const char *dir, const char *data_dir, const char *name,
                                 int steps) {
    char text[700], out[800], cmd[4096], models[800];
    dgd_write_text(dir, "corpus.txt", 30000, text, sizeof text);
    snprintf(out, sizeof out, "%s/run_%s", dir, name);
    const char *b = getenv("DG_BUILD");
    snprintf(cmd, sizeof cmd, "%s/dragond train --config config/models/tiny.json --data %s "
             "--steps %d --out %s > %s/train_%s.log 2>&1", b && *b ? b : "build", text, steps,
             out, dir, name);
    if (system(cmd) != 0) {
        fprintf(stderr, "training failed: %s\n", cmd);
        return -1;
    }
    snprintf(models, sizeof models, "%s/models", data_dir);
    mkdir(data_dir, 0755);
    mkdir(models, 0755);
    snprintf(cmd, sizeof cmd, "cp %s/ckpt/step-%d.dck %s/%s.dck", out, steps, models, name);
    return system(cmd) == 0 ? 0 : -1;
}

/* Output of `dragond generate` (greedy) for the checkpoint of run <name>; malloc'd, without
 * the trailing newline the CLI prints. */
static inline char *inf_cli_generate(const char *dir, const char *name, const char *prompt,
                                     int max_tokens) {
    char cmd[4096];
    const char *b = getenv("DG_BUILD");
    snprintf(cmd, sizeof cmd, "%s/dragond generate --checkpoint %s/run_%s --prompt '%s' "
             "--temperature 0 --max-tokens %d", b && *b ? b : "build", dir, name, prompt,
             max_tokens);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, p);
    pclose(p);
    buf[n] = 0;
    if (n > 0 && buf[n - 1] == '\n') buf[n - 1] = 0;
    return buf;
}

/* Starts the daemon with the data dir d->dir/data (models already placed) and extra env. */
static inline int inf_start(dgd *d) { return dgd_start(d, (const char *)NULL); }

/* Value of a Prometheus sample line "name value" (or with labels: full "name{...}"). */
static inline double inf_metric(const dgd *d, const char *name) {
    dgd_resp r;
    dgd_http(d, "GET", "/metrics", NULL, 0, NULL, &r);
    double v = -1;
    if (r.body) {
        size_t nl = strlen(name);
        for (char *l = r.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
            if (!strncmp(l, name, nl) && l[nl] == ' ') { v = atof(l + nl + 1); break; }
    }
    dgd_resp_free(&r);
    return v;
}

/* POST body with JSON; returns the parsed response (status in *status); caller decrefs. */
static inline json_t *inf_post(const dgd *d, const char *path, const char *body, long *status) {
    dgd_resp r;
    *status = dgd_http(d, "POST", path, body, -1, NULL, &r);
    json_t *j = r.json ? json_incref(r.json) : NULL;
    if (!j) fprintf(stderr, "POST %s -> %ld: %s\n", path, *status, r.body ? r.body : "");
    dgd_resp_free(&r);
    return j;
}

// ------------------------------------------------------------------------------------------
// raw socket client: lets a test disconnect in the middle of a response

static inline int inf_connect(const dgd *d) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)d->port);
    sa.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static inline void inf_send_post(int fd, const char *path, const char *body) {
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\n\r\n", path, strlen(body));
    if (write(fd, hdr, (size_t)n) != n) return;
    if (write(fd, body, strlen(body)) < 0) return;
}

/* Reads until `needle` appeared in what was read (or timeout); returns bytes read. */
static inline size_t inf_read_until(int fd, char *buf, size_t cap, const char *needle,
                                    double timeout_s) {
    size_t len = 0;
    double t_end = dgd_now() + timeout_s;
    buf[0] = 0;
    while (len < cap - 1 && dgd_now() < t_end) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
        buf[len] = 0;
        if (needle && strstr(buf, needle)) break;
    }
    return len;
}

/* Decodes an HTTP/1.1 chunked body in place (headers stripped); returns the body length. */
static inline size_t inf_dechunk(char *resp) {
    char *b = strstr(resp, "\r\n\r\n");
    if (!b) return 0;
    b += 4;
    if (!strcasestr(resp, "Transfer-Encoding: chunked")) {
        memmove(resp, b, strlen(b) + 1);
        return strlen(resp);
    }
    size_t w = 0;
    char *p = b;
    for (;;) {
        char *end;
        long n = strtol(p, &end, 16);
        if (end == p || n <= 0) break;
        p = strstr(end, "\r\n");
        if (!p) break;
        p += 2;
        if ((size_t)n > strlen(p)) n = (long)strlen(p);
        memmove(resp + w, p, (size_t)n);
        w += (size_t)n;
        p += n;
        if (!strncmp(p, "\r\n", 2)) p += 2;
    }
    resp[w] = 0;
    return w;
}

/* Checks OpenAI stream framing of body: only "data: <json>\n\n" frames (comments allowed), the
 * last one "data: [DONE]\n\n", exactly one chunk with a finish_reason, usage chunk last when
 * want_usage. Concatenated text into text (cap). Returns NULL or what is wrong. */
static inline const char *inf_check_oai_stream(const char *body, bool want_usage, char *text,
                                               size_t cap, char *finish, size_t fcap) {
    size_t tl = 0;
    int n_finish = 0, n_usage = 0, n_after_usage = 0;
    bool done = false;
    text[0] = 0;
    finish[0] = 0;
    const char *p = body;
    while (*p) {
        const char *e = strstr(p, "\n\n");
        if (!e) return "a frame does not end with a blank line";
        if (done) return "data after [DONE]";
        if (*p == ':') { p = e + 2; continue; }
        if (strncmp(p, "data: ", 6)) return "a frame does not start with 'data: '";
        const char *d = p + 6;
        if (!strncmp(d, "[DONE]", 6) && d + 6 == e) { done = true; p = e + 2; continue; }
        json_error_t je;
        json_t *j = json_loadb(d, (size_t)(e - d), 0, &je);
        if (!j) return "a frame's data is not JSON";
        if (json_object_get(j, "error")) { json_decref(j); return "an error frame"; }
        if (n_usage) n_after_usage++;
        json_t *ch = json_object_get(j, "choices");
        if (strcmp(json_string_value(json_object_get(j, "object")) ?: "", "text_completion")) {
            json_decref(j);
            return "object is not text_completion";
        }
        if (json_array_size(ch) == 0) {
            n_usage++;
            if (!json_is_object(json_object_get(j, "usage"))) { json_decref(j); return "no usage"; }
        } else {
            json_t *c0 = json_array_get(ch, 0);
            const char *t = json_string_value(json_object_get(c0, "text"));
            size_t l = t ? strlen(t) : 0;
            if (tl + l < cap) { memcpy(text + tl, t, l); tl += l; text[tl] = 0; }
            const char *fr = json_string_value(json_object_get(c0, "finish_reason"));
            if (fr) { n_finish++; snprintf(finish, fcap, "%s", fr); }
        }
        json_decref(j);
        p = e + 2;
    }
    if (!done) return "no data: [DONE]";
    if (n_finish != 1) return "not exactly one finish_reason";
    if (want_usage && (n_usage != 1 || n_after_usage)) return "usage chunk missing or not last";
    if (!want_usage && n_usage) return "usage chunk without include_usage";
    return NULL;
}
#endif
