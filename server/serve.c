/* server/serve.c -- dg_serve_main: flags and settings, the data directory, SQLite and restart
 * recovery, the token file, the libuv loop with the HTTP server, the engine thread and the
 * export runner (exports.c), and the SIGTERM/SIGINT drain.
 *
 * Drain: the first signal stops accepting (MHD_quiesce_daemon), turns /health to 503, refuses
 * new jobs, asks the running job to checkpoint and park (it goes back to 'queued' with its
 * checkpoint as resume_from, attempt closed as daemon_shutdown), ends every SSE stream with a
 * final event, then closes HTTP and SQLite and returns 0 -- at the latest after
 * shutdown_timeout_s. A second signal skips the wait.
 * Not here: endpoints (api.c). Thread affinity: the main thread, which runs the loop. */
#include "srv.h"
#include "infer.h"
#include "exports.h"
#include "models_import.h"
#include "serve.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

dg_server dg_srv;

static uv_loop_t   g_loop;
static uv_signal_t g_sigterm, g_sigint;
static uv_timer_t  g_drain_timer;
static double      g_drain_deadline;
static bool        g_finishing;

static void usage(FILE *f) {
    fprintf(f,
        "usage: dragond [serve] [--config FILE] [--listen HOST:PORT] [--data-dir DIR]\n"
        "                       [--token-file FILE] [--backend cpu|ref]\n"
        "                       [--infer-device auto|cpu|cuda|cuda:N] [--help]\n"
        "  --config FILE      settings file (default config/dragond.json when present)\n"
        "  --listen HOST:PORT address to listen on (default 127.0.0.1:8077; port 0 = any free\n"
        "                     port, printed as 'dragond listening on http://HOST:PORT')\n"
        "  --data-dir DIR     data directory (default ./dragond-data)\n"
        "  --token-file FILE  bearer token file (created with a random token if missing);\n"
        "                     required to listen on a non-loopback address\n"
        "  --backend NAME     engine backend of the CPU device: cpu (default) or ref\n"
        "  --infer-device D   where inference sessions run: auto (default: the first GPU when\n"
        "                     one is found, else the CPU), cpu, cuda or cuda:N\n"
        "Every setting is documented in config/dragond.json.\n");
}

static int read_or_create_token(const char *path, char *out, size_t n, char *err, size_t en) {
    FILE *f = fopen(path, "r");
    if (!f) {
        uint8_t rnd[32];
        int fd = open("/dev/urandom", O_RDONLY);
        if (fd < 0 || read(fd, rnd, sizeof rnd) != (ssize_t)sizeof rnd) {
            if (fd >= 0) close(fd);
            snprintf(err, en, "cannot read /dev/urandom for a new token");
            return DG_EIO;
        }
        close(fd);
        char hex[65];
        for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
        int wfd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (wfd < 0 || write(wfd, hex, 64) != 64 || write(wfd, "\n", 1) != 1 ||
            fsync(wfd) != 0) {
            if (wfd >= 0) close(wfd);
            snprintf(err, en, "cannot create token file %s", path);
            return DG_EIO;
        }
        close(wfd);
        fprintf(stderr, "dragond: created a new token in %s (mode 0600)\n", path);
        snprintf(out, n, "%s", hex);
        return 0;
    }
    char buf[512] = "";
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = 0;
    char *s = buf;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    size_t l = strcspn(s, " \t\r\n");
    s[l] = 0;
    if (l < 16 || l >= n) {
        snprintf(err, en, "token file %s must hold one token of 16..%zu characters", path, n - 1);
        return DG_EINVAL;
    }
    snprintf(out, n, "%s", s);
    return 0;
}

static void on_close_noop(uv_handle_t *h) { (void)h; }

static void finish(void) {
    if (g_finishing) return;
    g_finishing = true;
    uv_timer_stop(&g_drain_timer);
    dg_infer_cancel_all();
    dg_http_stop();
    dg_infer_shutdown();
    dg_exports_close();
    dg_models_import_close();
    dg_jobs_close();
    dg_worker_stop(g_drain_deadline > 0 ? 2.0 : 0.5);
    dg_db_close();
    uv_signal_stop(&g_sigterm);
    uv_signal_stop(&g_sigint);
    uv_close((uv_handle_t *)&g_sigterm, on_close_noop);
    uv_close((uv_handle_t *)&g_sigint, on_close_noop);
    uv_close((uv_handle_t *)&g_drain_timer, on_close_noop);
    uv_stop(&g_loop);
}

static void on_drain_tick(uv_timer_t *t) {
    (void)t;
    bool idle = dg_infer_idle() && dg_jobs_idle() && dg_exports_idle() && dg_models_import_idle();
    if (idle) dg_http_streams_end_all();
    if ((idle && dg_http_stream_count() == 0) || dg_now() > g_drain_deadline) finish();
}

static void on_signal(uv_signal_t *s, int signum) {
    (void)s;
    if (dg_srv.draining) {
        fprintf(stderr, "dragond: second signal, stopping now\n");
        finish();
        return;
    }
    fprintf(stderr, "dragond: %s: draining (up to %llds)\n", signum == SIGTERM ? "SIGTERM" :
            "SIGINT", (long long)dg_srv.settings.shutdown_timeout_s);
    dg_srv.draining = true;
    g_drain_deadline = dg_now() + (double)dg_srv.settings.shutdown_timeout_s;
    dg_http_quiesce();
    dg_jobs_shutdown_begin();
    dg_exports_close();
    dg_models_import_close();
    dg_http_streams_end_all();
    uv_timer_start(&g_drain_timer, on_drain_tick, 20, 50);
}

static int apply_flag(dg_settings *s, const char *name, const char *val) {
    char err[512];
    json_t *v = json_string(val);
    int rc = dg_settings_apply_json(s, name, v, err, sizeof err);
    json_decref(v);
    if (rc) fprintf(stderr, "dragond: %s\n", err);
    return rc;
}

int dg_serve_main(int argc, char **argv) {
    dg_settings *s = &dg_srv.settings;
    memset(&dg_srv, 0, sizeof dg_srv);
    dg_settings_defaults(s);
    g_finishing = false;
    g_drain_deadline = 0;
    const char *config = NULL;
    static const char *const map[][2] = {{"--listen", "listen"}, {"--data-dir", "data_dir"},
        {"--token-file", "token_file"}, {"--backend", "backend"},
        {"--infer-device", "infer_device"}};
    enum { NFLAGS = sizeof map / sizeof *map };
    const char *over[NFLAGS] = {0};
    int first = 1;
    if (argc > 1 && !strcmp(argv[1], "serve")) first = 2;    /* tolerated when passed through */
    for (int i = first; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        char flag[64];
        const char *eq = strchr(a, '=');
        if (eq && (size_t)(eq - a) < sizeof flag) {
            snprintf(flag, sizeof flag, "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(flag, sizeof flag, "%s", a);
        }
        bool known = false;
        if (!strcmp(flag, "--config")) known = true;
        for (int k = 0; k < NFLAGS; k++) if (!strcmp(flag, map[k][0])) known = true;
        if (!known) {
            fprintf(stderr, "dragond: unknown flag '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dragond: %s needs a value\n", flag);
                return 2;
            }
            val = argv[++i];
        }
        if (!strcmp(flag, "--config")) config = val;
        for (int k = 0; k < NFLAGS; k++) if (!strcmp(flag, map[k][0])) over[k] = val;
    }
    char err[2048];
    if (config || access("config/dragond.json", R_OK) == 0) {
        const char *path = config ? config : "config/dragond.json";
        if (dg_settings_load_file(s, path, err, sizeof err)) {
            fprintf(stderr, "dragond: config error: %s\n", err);
            return 1;
        }
    }
    for (int k = 0; k < NFLAGS; k++)
        if (over[k] && apply_flag(s, map[k][1], over[k])) return 2;
    static const char *const lv[] = {"debug", "info", "warn", "error"};
    for (int k = 0; k < 4; k++) if (!strcmp(s->log_level, lv[k])) dg_log_set_level(k);

    signal(SIGPIPE, SIG_IGN);
    if (dg_mkdirs(s->data_dir) || dg_mkdirs(s->data_dir) != 0) {
        fprintf(stderr, "dragond: cannot create data directory %s\n", s->data_dir);
        return 1;
    }
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/runs", s->data_dir);
    dg_mkdirs(sub);
    char token[256] = "";
    if (s->token_file[0] && read_or_create_token(s->token_file, token, sizeof token, err,
                                                 sizeof err)) {
        fprintf(stderr, "dragond: %s\n", err);
        return 1;
    }
    snprintf(dg_srv.db_path, sizeof dg_srv.db_path, "%s/dragond.db", s->data_dir);
    if (dg_db_open(dg_srv.db_path, err, sizeof err)) {
        fprintf(stderr, "dragond: %s\n", err);
        return 1;
    }
    int requeued = 0, failed = 0;
    if (dg_db_recover(s->resume_on_restart, &requeued, &failed) == 0 && (requeued || failed))
        fprintf(stderr, "dragond: recovered after restart: %d job(s) requeued, %d failed\n",
                requeued, failed);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    uv_loop_init(&g_loop);
    dg_srv.started_at = dg_wall_s();
    if (dg_jobs_init(&g_loop, s, err, sizeof err)) {
        fprintf(stderr, "dragond: %s\n", err);
        dg_db_close();
        return 1;
    }
    if (dg_exports_init(&g_loop, s->data_dir, err, sizeof err) ||
        dg_models_import_init(&g_loop, s, err, sizeof err)) {
        fprintf(stderr, "dragond: %s\n", err);
        dg_jobs_close();
        dg_worker_stop(1.0);
        dg_db_close();
        uv_run(&g_loop, UV_RUN_NOWAIT);
        return 1;
    }
    if (dg_infer_init(&g_loop, s, err, sizeof err)) {
        fprintf(stderr, "dragond: %s\n", err);
        dg_jobs_close();
        dg_worker_stop(1.0);
        dg_db_close();
        return 1;
    }
    if (dg_http_start(&g_loop, s, token, dg_srv.bound, sizeof dg_srv.bound, err, sizeof err)) {
        dg_infer_shutdown();
        fprintf(stderr, "dragond: %s\n", err);
        dg_exports_close();
        dg_jobs_close();
        dg_worker_stop(1.0);
        dg_db_close();
        uv_run(&g_loop, UV_RUN_NOWAIT);
        return 1;
    }
    printf("dragond listening on http://%s\n", dg_srv.bound);
    fflush(stdout);
    uv_signal_init(&g_loop, &g_sigterm);
    uv_signal_init(&g_loop, &g_sigint);
    uv_signal_start(&g_sigterm, on_signal, SIGTERM);
    uv_signal_start(&g_sigint, on_signal, SIGINT);
    uv_timer_init(&g_loop, &g_drain_timer);
    dg_jobs_kick();
    uv_run(&g_loop, UV_RUN_DEFAULT);
    /* let close callbacks run */
    uv_run(&g_loop, UV_RUN_NOWAIT);
    uv_loop_close(&g_loop);
    curl_global_cleanup();
    fprintf(stderr, "dragond: stopped\n");
    return 0;
}
