/* server/api.c -- the route table (the one list of endpoints: proto/openapi.json must describe
 * exactly these; tests/server/test_openapi.c checks both ways) and the handlers, plus small
 * helpers (ids, time, directories, assets).
 *
 * Request validation: bodies are JSON objects; unknown fields are rejected naming the field
 * (400 unknown_field), wrong types get 400 invalid_type, configs the engine refuses get 422
 * invalid_config with a JSON pointer in "param". Every error uses the envelope of http.c.
 * Not here: MHD, SSE mechanics (http.c), SQL (db.c), the state machine (jobs.c).
 * Thread affinity: LOOP thread. */
#include "srv.h"
#include "infer.h"
#include "engine/ckpt.h"
#include "exports.h"
#include "models_import.h"
#include "proto/config_json.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#ifndef DG_VERSION
#define DG_VERSION "0.1.0"
#endif

/* ---- helpers --------------------------------------------------------------------------------- */
double dg_wall_s(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec * 1e-6;
}
int64_t dg_wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

void dg_make_id(const char *prefix, char out[DG_ID_LEN]) {
    static uint64_t counter;
    static dg_rng rng;
    static bool seeded;
    if (!seeded) {
        dg_rng_seed(&rng, (uint64_t)dg_wall_ms() ^ ((uint64_t)getpid() << 32));
        seeded = true;
    }
    /* 12 hex digits of milliseconds (sortable), 4 of a counter, 6 random */
    snprintf(out, DG_ID_LEN, "%s%012llx%04llx%06llx", prefix,
             (unsigned long long)dg_wall_ms() & 0xffffffffffffull,
             (unsigned long long)(counter++ & 0xffff),
             (unsigned long long)(dg_rng_next(&rng) & 0xffffff));
}

int dg_mkdirs(const char *path) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return DG_EIO;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return DG_EIO;
    return 0;
}

char *dg_json_text(const json_t *v) {
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    char *d = dg_strdup(s ? s : "null");
    free(s);                   /* jansson's buffer (libc allocator) */
    return d;
}

int dg_find_asset(const char *rel, char *out, size_t n) {
    if (access(rel, R_OK) == 0) {
        snprintf(out, n, "%s", rel);
        return 0;
    }
    if (rel[0] == '/') return DG_ENOTFOUND;
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l <= 0) return DG_ENOTFOUND;
    exe[l] = 0;
    for (int up = 0; up < 3; up++) {          /* build/dragond, build/tests/x/test_y */
        char *slash = strrchr(exe, '/');
        if (!slash) break;
        *slash = 0;
        snprintf(out, n, "%s/%s", exe, rel);
        if (access(out, R_OK) == 0) return 0;
    }
    return DG_ENOTFOUND;
}

/* ---- validation helpers ---------------------------------------------------------------------- */
static bool check_fields(dg_req *r, json_t *obj, const char *const *allowed, const char *where) {
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            if (!strcmp(k, allowed[i])) ok = true;
        if (!ok) {
            char param[300];
            snprintf(param, sizeof param, "%s/%s", where, k);
            char list[400] = "";
            for (int i = 0; allowed[i]; i++) {
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", allowed[i]);
            }
            dg_reply_error(r, 400, "invalid_request", "unknown_field", param,
                           "unknown field '%s' in %s (allowed: %s)", k, *where ? where : "body",
                           list);
            return false;
        }
    }
    return true;
}

static bool bad_type(dg_req *r, const char *param, const char *want) {
    dg_reply_error(r, 400, "invalid_request", "invalid_type", param, "%s must be %s", param,
                   want);
    return false;
}

/* Integer query parameter in [lo, hi]; false after replying 400. */
static bool q_int(dg_req *r, const char *name, int64_t def, int64_t lo, int64_t hi,
                  int64_t *out) {
    const char *s = dg_req_query(r, name);
    *out = def;
    if (!s) return true;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || !end || *end || errno || v < lo || v > hi) {
        dg_reply_error(r, 400, "invalid_request", "invalid_query", name,
                       "query parameter %s must be an integer in [%lld, %lld]", name,
                       (long long)lo, (long long)hi);
        return false;
    }
    *out = v;
    return true;
}

static void reply_action_rc(dg_req *r, int rc, const char *msg) {
    if (rc == DG_ENOTFOUND)
        dg_reply_error(r, 404, "not_found", "job_not_found", "id", "%s", msg);
    else
        dg_reply_error(r, 409, "conflict", "invalid_state", NULL, "%s", msg);
}

static bool job_or_404(dg_req *r, const char *id) {
    if (dg_db_job_exists(id)) return true;
    dg_reply_error(r, 404, "not_found", "job_not_found", "id", "no job or run with id '%s'", id);
    return false;
}

/* ---- system ---------------------------------------------------------------------------------- */
static void h_health(dg_req *r) {
    if (dg_srv.draining) {
        json_t *o = json_pack("{s:s}", "status", "draining");
        dg_reply_header(r, "Retry-After", "5");
        dg_reply_json(r, 503, o);
        return;
    }
    dg_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static void h_index(dg_req *r) {
    char rel[1200], path[1300];
    snprintf(rel, sizeof rel, "%s/index.html", dg_srv.settings.web_root);
    char *data = NULL;
    size_t n = 0;
    char err[256];
    if (dg_find_asset(rel, path, sizeof path) != 0 ||
        dg_read_file(path, &data, &n, err, sizeof err) != 0) {
        dg_reply_error(r, 404, "not_found", "web_page_missing", NULL,
                       "the runs page %s was not found (web_root setting)", rel);
        return;
    }
    dg_reply_header(r, "Content-Security-Policy",
                    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                    "style-src 'self' 'unsafe-inline'");
    dg_reply_text(r, 200, "text/html; charset=utf-8", data, n);
    dg_free(data);
}

static void h_system(dg_req *r) {
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("system"));
    json_object_set_new(o, "api_version", json_string("1"));
    json_object_set_new(o, "build", json_pack("{s:s, s:s, s:s}", "version", DG_VERSION,
                                              "compiler", __VERSION__, "date", __DATE__));
    json_object_set_new(o, "uptime_s", json_real(dg_wall_s() - dg_srv.started_at));
    json_object_set_new(o, "backends", json_string(dg_backend_list()));
    json_t *devs = dg_worker_devices_json(), *gpus = json_array();
    size_t di;
    json_t *dv;
    json_array_foreach(devs, di, dv)
        if (!strcmp(json_string_value(json_object_get(dv, "kind")), "cuda"))
            json_array_append(gpus, dv);
    json_object_set_new(o, "devices", devs);
    json_object_set_new(o, "gpus", gpus);
    json_object_set_new(o, "inference", json_pack("{s:s}", "device", dg_infer_device()));
    json_object_set_new(o, "tokens_per_s", json_real(dg_jobs_tokens_per_s()));
    json_object_set_new(o, "queue", json_pack("{s:I, s:i}", "jobs_queued",
                                              (json_int_t)dg_db_queue_len(), "jobs_running",
                                              dg_jobs_running_count()));
    const dg_settings *s = &dg_srv.settings;
    json_object_set_new(o, "limits", json_pack("{s:I, s:I, s:I, s:I}", "max_body_bytes",
                                               (json_int_t)s->max_body_bytes, "max_queued_jobs",
                                               (json_int_t)s->max_queued_jobs, "max_connections",
                                               (json_int_t)s->max_connections,
                                               "connection_timeout_s",
                                               (json_int_t)s->connection_timeout_s));
    json_object_set_new(o, "draining", json_boolean(dg_srv.draining));
    json_object_set_new(o, "listen", json_string(dg_srv.bound));
    dg_reply_json(r, 200, o);
}

static void h_metrics(dg_req *r) {
    json_t *lines = json_array();
    dg_http_metrics_text(lines);
    dg_infer_metrics_text(lines);
    json_t *counts = json_object();
    dg_db_jobs_by_state(counts);
    char buf[256];
    json_array_append_new(lines, json_string("# HELP dragond_jobs Jobs by state.\n"
                                             "# TYPE dragond_jobs gauge"));
    const char *k;
    json_t *v;
    json_object_foreach(counts, k, v) {
        snprintf(buf, sizeof buf, "dragond_jobs{state=\"%s\"} %lld", k,
                 (long long)json_integer_value(v));
        json_array_append_new(lines, json_string(buf));
    }
    json_decref(counts);
    snprintf(buf, sizeof buf, "# HELP dragond_queue_length Queued jobs.\n"
             "# TYPE dragond_queue_length gauge\ndragond_queue_length %lld",
             (long long)dg_db_queue_len());
    json_array_append_new(lines, json_string(buf));
    snprintf(buf, sizeof buf, "# HELP dragond_train_tokens_per_second Training throughput of "
             "the running job.\n# TYPE dragond_train_tokens_per_second gauge\n"
             "dragond_train_tokens_per_second %.3f", dg_jobs_tokens_per_s());
    json_array_append_new(lines, json_string(buf));
    snprintf(buf, sizeof buf, "# HELP dragond_train_tokens_total Tokens trained on since start."
             "\n# TYPE dragond_train_tokens_total counter\ndragond_train_tokens_total %lld",
             (long long)dg_jobs_tokens_total());
    json_array_append_new(lines, json_string(buf));
    {   /* devices: memory in use, utilisation, whether a job holds them */
        json_t *devs = dg_worker_devices_json();
        json_array_append_new(lines, json_string(
            "# HELP dragond_device_mem_used_bytes Memory in use on each device.\n"
            "# TYPE dragond_device_mem_used_bytes gauge"));
        size_t i;
        json_t *d;
        json_array_foreach(devs, i, d) {
            snprintf(buf, sizeof buf, "dragond_device_mem_used_bytes{device=\"%s\"} %lld",
                     json_string_value(json_object_get(d, "name")),
                     (long long)json_integer_value(json_object_get(d, "mem_used_mb")) << 20);
            json_array_append_new(lines, json_string(buf));
        }
        json_array_append_new(lines, json_string(
            "# HELP dragond_device_utilization_percent GPU utilisation (NVML).\n"
            "# TYPE dragond_device_utilization_percent gauge"));
        json_array_foreach(devs, i, d) {
            json_t *u = json_object_get(d, "util_pct");
            if (!json_is_integer(u)) continue;
            snprintf(buf, sizeof buf, "dragond_device_utilization_percent{device=\"%s\"} %lld",
                     json_string_value(json_object_get(d, "name")), (long long)json_integer_value(u));
            json_array_append_new(lines, json_string(buf));
        }
        json_array_append_new(lines, json_string(
            "# HELP dragond_device_busy 1 when a job runs on the device.\n"
            "# TYPE dragond_device_busy gauge"));
        json_array_foreach(devs, i, d) {
            snprintf(buf, sizeof buf, "dragond_device_busy{device=\"%s\"} %d",
                     json_string_value(json_object_get(d, "name")),
                     !json_is_null(json_object_get(d, "holder")));
            json_array_append_new(lines, json_string(buf));
        }
        json_decref(devs);
    }
    snprintf(buf, sizeof buf, "# HELP dragond_uptime_seconds Seconds since start.\n"
             "# TYPE dragond_uptime_seconds gauge\ndragond_uptime_seconds %.3f",
             dg_wall_s() - dg_srv.started_at);
    json_array_append_new(lines, json_string(buf));
    size_t total = 1;
    for (size_t i = 0; i < json_array_size(lines); i++)
        total += strlen(json_string_value(json_array_get(lines, i))) + 1;
    char *text = dg_malloc(total);
    size_t off = 0;
    for (size_t i = 0; i < json_array_size(lines); i++)
        off += (size_t)snprintf(text + off, total - off, "%s\n",
                                json_string_value(json_array_get(lines, i)));
    json_decref(lines);
    dg_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, off);
    dg_free(text);
}

static void h_queue(dg_req *r) {
    json_t *arr = NULL;
    if (dg_db_queue_list(&arr)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read the queue");
        return;
    }
    const char *run = dg_jobs_running_id();
    json_t *o = json_pack("{s:s, s:o, s:b}", "object", "list", "data", arr, "has_more", 0);
    json_object_set_new(o, "running", run[0] ? json_string(run) : json_null());
    dg_reply_json(r, 200, o);
}

/* ---- daemon-wide events: /v1/events ---------------------------------------------------------- */
typedef struct ev_sub { dg_pstream *ps; struct ev_sub *next; } ev_sub;
static ev_sub *g_subs;
static int64_t g_ev_seq;

static void ev_gone(void *ud) {
    for (ev_sub **pp = &g_subs; *pp; pp = &(*pp)->next)
        if (*pp == ud) { *pp = ((ev_sub *)ud)->next; break; }
    dg_free(ud);
}

void dg_api_publish(const char *type, json_t *data) {
    g_ev_seq++;
    if (g_subs) {
        char *d = dg_json_text(data);
        size_t n = strlen(d) + strlen(type) + 64;
        char *frame = dg_malloc(n);
        int len = snprintf(frame, n, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)g_ev_seq,
                           type, d);
        for (ev_sub *s = g_subs; s; s = s->next) dg_pstream_write(s->ps, frame, (size_t)len);
        dg_free(frame);
        dg_free(d);
    }
    json_decref(data);
}

static void h_events(dg_req *r) {
    ev_sub *s = dg_calloc(1, sizeof *s);
    s->ps = dg_reply_pstream(r, "text/event-stream", ev_gone, s);
    s->next = g_subs;
    g_subs = s;
    static const char hello[] = "retry: 2000\n\n";
    dg_pstream_write(s->ps, hello, sizeof hello - 1);
}

/* ---- jobs ------------------------------------------------------------------------------------ */
static void h_jobs_create(dg_req *r) {
    json_t *b = dg_req_json(r, false);
    if (!b) return;
    static const char *const top[] = {"kind", "name", "config", "data", "resume_from", "seed",
                                      "tags", "priority", "device", NULL};
    char param[256] = "", msg[1024] = "";
    char resume_path[1100] = "";
    dg_model_config mc;
    dg_train_config tc;
    if (!check_fields(r, b, top, "")) goto out;
    const char *ikey = dg_req_header(r, "Idempotency-Key");
    if (ikey) {
        if (!*ikey || strlen(ikey) > 200) {
            dg_reply_error(r, 400, "invalid_request", "invalid_header", "Idempotency-Key",
                           "Idempotency-Key must be 1..200 characters");
            goto out;
        }
        char eid[DG_ID_LEN];
        char *ereq = NULL;
        if (dg_db_job_by_idem(ikey, eid, &ereq) == 0) {
            json_t *prev = json_loads(ereq, 0, NULL);
            bool same = prev && json_equal(prev, b);
            json_decref(prev);
            dg_free(ereq);
            if (!same) {
                dg_reply_error(r, 409, "conflict", "idempotency_conflict", "Idempotency-Key",
                               "Idempotency-Key '%s' was used for job %s with a different body",
                               ikey, eid);
            } else {
                dg_reply_header(r, "Idempotent-Replayed", "true");
                dg_reply_json(r, 200, dg_db_job_json(eid, false));
            }
            goto out;
        }
    }
    json_t *kind = json_object_get(b, "kind"), *name = json_object_get(b, "name");
    json_t *config = json_object_get(b, "config"), *data = json_object_get(b, "data");
    json_t *resume = json_object_get(b, "resume_from"), *seed = json_object_get(b, "seed");
    json_t *tags = json_object_get(b, "tags"), *prio = json_object_get(b, "priority");
    const char *k = kind ? json_string_value(kind) : "train";
    if (!k) { bad_type(r, "/kind", "a string: train or bench"); goto out; }
    bool bench = !strcmp(k, "bench");
    if (!bench && strcmp(k, "train") != 0) {
        dg_reply_error(r, 400, "invalid_request", "invalid_value", "/kind",
                       "kind must be train or bench, got '%s'", k);
        goto out;
    }
    if (name && !json_is_null(name) && (!json_is_string(name) || json_string_length(name) > 200))
        { bad_type(r, "/name", "a string of at most 200 bytes"); goto out; }
    if (config && !json_is_object(config)) { bad_type(r, "/config", "an object"); goto out; }
    if (!config && !bench) {
        dg_reply_error(r, 400, "invalid_request", "missing_field", "/config",
                       "config is required for train jobs ({\"preset\"?, \"model\"?, "
                       "\"training\"?})");
        goto out;
    }
    json_t *device = json_object_get(b, "device");
    if (device && !json_is_string(device))
        { bad_type(r, "/device", "a string: auto, cpu, cuda or cuda:N"); goto out; }
    if (device && !dg_worker_device_exists(json_string_value(device))) {
        dg_reply_error(r, 422, "validation_failed", "unknown_device", "/device",
                       "no device '%s' here (this daemon has %d: see GET /v1/system)",
                       json_string_value(device), dg_worker_count());
        goto out;
    }
    if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0))
        { bad_type(r, "/seed", "a non-negative integer"); goto out; }
    if (prio && (!json_is_integer(prio) || json_integer_value(prio) < -1000 ||
                 json_integer_value(prio) > 1000))
        { bad_type(r, "/priority", "an integer in [-1000, 1000]"); goto out; }
    if (tags) {
        if (!json_is_object(tags)) { bad_type(r, "/tags", "an object of strings"); goto out; }
        const char *tk;
        json_t *tv;
        json_object_foreach(tags, tk, tv) {
            if (!json_is_string(tv) || strlen(tk) > 100 || strchr(tk, '"')) {
                char p2[300];
                snprintf(p2, sizeof p2, "/tags/%s", tk);
                bad_type(r, p2, "a string (keys up to 100 bytes, no quotes)");
                goto out;
            }
        }
    }
    json_t *data_norm = json_object();
    if (data) {
        if (!json_is_object(data)) { json_decref(data_norm); bad_type(r, "/data", "an object");
                                     goto out; }
        static const char *const dk[] = {"path", "preset", "bench_steps", NULL};
        if (!check_fields(r, data, dk, "/data")) { json_decref(data_norm); goto out; }
        json_t *p = json_object_get(data, "path"), *pr = json_object_get(data, "preset");
        json_t *bsteps = json_object_get(data, "bench_steps");
        if ((p && pr) || (!bench && !p && !pr)) {
            json_decref(data_norm);
            dg_reply_error(r, 400, "invalid_request", "invalid_value", "/data",
                           "data needs exactly one of path or preset");
            goto out;
        }
        if (p) {
            if (!json_is_string(p)) { json_decref(data_norm); bad_type(r, "/data/path",
                                                                       "a string"); goto out; }
            char abs[PATH_MAX];
            if (!realpath(json_string_value(p), abs) || access(abs, R_OK) != 0) {
                json_decref(data_norm);
                dg_reply_error(r, 422, "validation_failed", "data_not_found", "/data/path",
                               "data file %s does not exist or is not readable by the daemon",
                               json_string_value(p));
                goto out;
            }
            json_object_set_new(data_norm, "path", json_string(abs));
        }
        if (pr) {
            if (!json_is_string(pr) || strcmp(json_string_value(pr), "shakespeare") != 0) {
                json_decref(data_norm);
                dg_reply_error(r, 422, "validation_failed", "unknown_preset", "/data/preset",
                               "unknown dataset preset (known: shakespeare)");
                goto out;
            }
            json_object_set(data_norm, "preset", pr);
        }
        if (bsteps) {
            if (!json_is_integer(bsteps) || json_integer_value(bsteps) < 1 ||
                json_integer_value(bsteps) > 100000) {
                json_decref(data_norm);
                bad_type(r, "/data/bench_steps", "an integer in [1, 100000]");
                goto out;
            }
            json_object_set(data_norm, "bench_steps", bsteps);
        }
    } else if (!bench) {
        json_decref(data_norm);
        dg_reply_error(r, 400, "invalid_request", "missing_field", "/data",
                       "data is required for train jobs ({\"path\": FILE} or {\"preset\": "
                       "\"shakespeare\"})");
        goto out;
    }
    json_t *cfg = config ? json_incref(config) : json_pack("{s:s}", "preset", "tiny");
    if (dg_jobs_resolve_config(cfg, &mc, &tc, param, sizeof param, msg, sizeof msg)) {
        json_decref(cfg);
        json_decref(data_norm);
        dg_reply_error(r, 422, "validation_failed", "invalid_config", param, "%s", msg);
        goto out;
    }
    if (resume && !json_is_null(resume)) {
        const char *rs = json_string_value(resume);
        char run_id[DG_ID_LEN];
        int64_t st = 0;
        bool ok = false;
        if (rs && !strncmp(rs, "ckpt_", 5))
            ok = dg_db_ckpt_by_id(rs, resume_path, sizeof resume_path, run_id) == 0;
        else if (rs && strlen(rs) < DG_ID_LEN + 8 && strstr(rs, ":latest")) {
            snprintf(run_id, sizeof run_id, "%.*s", (int)(strstr(rs, ":latest") - rs), rs);
            ok = dg_db_ckpt_latest(run_id, resume_path, sizeof resume_path, &st) == 0;
        }
        if (!ok) {
            json_decref(cfg);
            json_decref(data_norm);
            dg_reply_error(r, 422, "validation_failed", "checkpoint_not_found", "/resume_from",
                           "resume_from must name a checkpoint (ckpt_...) or JOB_ID:latest of a "
                           "job that has one");
            goto out;
        }
    }
    if (dg_srv.draining) {
        json_decref(cfg);
        json_decref(data_norm);
        dg_reply_header(r, "Retry-After", "30");
        dg_reply_error(r, 503, "server_overloaded", "draining", NULL,
                       "the daemon is shutting down and accepts no new jobs");
        goto out;
    }
    if (dg_db_queue_len() >= dg_srv.settings.max_queued_jobs) {
        json_decref(cfg);
        json_decref(data_norm);
        char ra[32];
        snprintf(ra, sizeof ra, "%lld", (long long)dg_srv.settings.retry_after_s);
        dg_reply_header(r, "Retry-After", ra);
        dg_reply_error(r, 503, "server_overloaded", "queue_full", NULL,
                       "queue is full (%lld waiting)", (long long)dg_db_queue_len());
        goto out;
    }
    dg_db_newjob nj = {0};
    dg_make_id("job_", nj.id);
    nj.kind = bench ? "bench" : "train";
    nj.name = name ? json_string_value(name) : NULL;
    nj.priority = prio ? json_integer_value(prio) : 0;
    size_t blen;
    const char *btext = dg_req_body(r, &blen);
    char *req_text = dg_malloc(blen + 1);
    memcpy(req_text, btext, blen);
    req_text[blen] = 0;
    nj.request_json = req_text;
    /* store the resolved config (every field), so a later change of a preset file does not
     * change a queued job; the request as sent stays in request_json */
    json_t *resolved = dg_config_to_json(&mc, &tc);
    char *cfg_text = dg_json_text(resolved);
    json_decref(resolved);
    char *data_text = dg_json_text(data_norm);
    char *tags_text = tags ? dg_json_text(tags) : NULL;
    nj.config_json = cfg_text;
    nj.data_json = data_text;
    nj.tags_json = tags_text;
    nj.resume_from = resume_path[0] ? resume_path : NULL;
    nj.seed = seed ? json_integer_value(seed) : (int64_t)tc.seed;
    nj.total_steps = tc.max_steps;
    nj.idem_key = ikey;
    json_decref(cfg);
    json_decref(data_norm);
    int rc = dg_db_begin();
    if (!rc) rc = dg_db_job_insert(&nj);
    if (!rc) {
        json_t *ev = json_pack("{s:s, s:n, s:f}", "status", "queued", "reason", "at",
                               dg_wall_s());
        char *evs = dg_json_text(ev);
        json_decref(ev);
        dg_db_event_add(nj.id, "status", evs);
        dg_free(evs);
        rc = dg_db_commit();
    } else {
        dg_db_exec("ROLLBACK");
    }
    dg_free(req_text);
    dg_free(cfg_text);
    dg_free(data_text);
    dg_free(tags_text);
    if (rc) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "could not store the job");
        goto out;
    }
    int64_t pos = dg_db_queue_position(nj.id);
    dg_api_publish("job", json_pack("{s:s, s:s, s:n, s:f}", "job_id", nj.id, "status", "queued",
                                    "reason", "at", dg_wall_s()));
    dg_jobs_kick();
    json_t *o = dg_db_job_json(nj.id, false);
    json_object_set_new(o, "queue_position", json_integer(pos));
    char loc[128];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", nj.id);
    dg_reply_header(r, "Location", loc);
    dg_reply_json(r, 201, o);
out:
    json_decref(b);
}

static void list_common(dg_req *r, bool runs) {
    dg_db_listq q = {0};
    q.status = dg_req_query(r, "status");
    q.kind = dg_req_query(r, "kind");
    q.tag = dg_req_query(r, "tag");
    q.after = dg_req_query(r, "after");
    q.order_metric = runs ? dg_req_query(r, "order_by") : NULL;
    q.runs = runs;
    if (!q_int(r, "limit", 100, 1, 1000, &q.limit)) return;
    json_t *out = NULL;
    char err[300];
    int rc = dg_db_list_jobs(&q, &out, err, sizeof err);
    if (rc == DG_EINVAL) {
        char p[64];
        snprintf(p, sizeof p, "%.*s", (int)strcspn(err, ":"), err);
        dg_reply_error(r, 400, "invalid_request", "invalid_filter", p, "%s", err);
        return;
    }
    if (rc) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "%s", err);
        return;
    }
    dg_reply_json(r, 200, out);
}
static void h_jobs_list(dg_req *r) { list_common(r, false); }
static void h_runs_list(dg_req *r) { list_common(r, true); }

static void h_job_get(dg_req *r) {
    json_t *o = dg_db_job_json(dg_req_param(r, "id"), false);
    if (!o) { job_or_404(r, dg_req_param(r, "id")); return; }
    dg_reply_json(r, 200, o);
}

typedef int (*action_fn)(const char *id, char *msg, size_t n);
static void action(dg_req *r, action_fn fn, int ok_status, const char *const *allowed) {
    json_t *b = dg_req_json(r, true);
    if (!b) return;
    static const char *const none[] = {NULL};
    if (!check_fields(r, b, allowed ? allowed : none, "")) { json_decref(b); return; }
    json_decref(b);
    const char *id = dg_req_param(r, "id");
    char msg[512];
    int rc = fn(id, msg, sizeof msg);
    if (rc) { reply_action_rc(r, rc, msg); return; }
    json_t *o = dg_db_job_json(id, false);
    if (ok_status == 202) {
        char rid[DG_ID_LEN];
        dg_make_id("ckreq_", rid);
        json_object_set_new(o, "checkpoint_request_id", json_string(rid));
    }
    dg_reply_json(r, ok_status, o);
}
static void h_job_cancel(dg_req *r) {
    static const char *const f[] = {"checkpoint", NULL};
    action(r, dg_jobs_cancel, 200, f);
}
static void h_job_pause(dg_req *r)      { action(r, dg_jobs_pause, 200, NULL); }
static void h_job_resume(dg_req *r)     { action(r, dg_jobs_resume, 200, NULL); }
static void h_job_checkpoint(dg_req *r) { action(r, dg_jobs_checkpoint, 202, NULL); }

static void h_job_logs(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    if (!job_or_404(r, id)) return;
    int64_t after, tail;
    if (!q_int(r, "after_line", 0, 0, INT64_MAX, &after)) return;
    if (!q_int(r, "tail", 0, 0, 100000, &tail)) return;
    const char *fmt = dg_req_query(r, "format");
    if (fmt && strcmp(fmt, "ndjson") && strcmp(fmt, "text") && strcmp(fmt, "json")) {
        dg_reply_error(r, 400, "invalid_request", "invalid_query", "format",
                       "format must be ndjson, text or json");
        return;
    }
    json_t *lines = NULL;
    if (dg_db_logs(id, after, tail, &lines)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read logs");
        return;
    }
    if (fmt && !strcmp(fmt, "json")) {
        dg_reply_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", lines));
        return;
    }
    bool text = fmt && !strcmp(fmt, "text");
    size_t cap = 256, len = 0;
    char *out = dg_malloc(cap);
    out[0] = 0;
    for (size_t i = 0; i < json_array_size(lines); i++) {
        json_t *l = json_array_get(lines, i);
        char *s;
        if (text) {
            const char *m = json_string_value(json_object_get(l, "msg"));
            const char *lv = json_string_value(json_object_get(l, "level"));
            size_t n = strlen(m) + strlen(lv) + 8;
            s = dg_malloc(n);
            snprintf(s, n, "[%s] %s", lv, m);
        } else {
            s = dg_json_text(l);
        }
        size_t n = strlen(s);
        if (len + n + 2 > cap) { cap = (len + n + 2) * 2; out = dg_realloc(out, cap); }
        memcpy(out + len, s, n);
        len += n;
        out[len++] = '\n';
        dg_free(s);
    }
    json_decref(lines);
    dg_reply_text(r, 200, text ? "text/plain; charset=utf-8" : "application/x-ndjson", out, len);
    dg_free(out);
}

static void h_job_stream(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    if (!job_or_404(r, id)) return;
    const char *lei = dg_req_header(r, "Last-Event-ID");
    if (!lei) lei = dg_req_query(r, "last_event_id");
    int64_t after = 0;
    if (lei) {
        char *end = NULL;
        after = strtoll(lei, &end, 10);
        if (!*lei || !end || *end || after < 0) {
            dg_reply_error(r, 400, "invalid_request", "invalid_header", "Last-Event-ID",
                           "Last-Event-ID must be a non-negative integer event id");
            return;
        }
    }
    const char *types = dg_req_query(r, "types");
    if (types) {
        static const char *const known[] = {"status", "progress", "metric", "log", "checkpoint",
                                            "end"};
        char tmp[160];
        snprintf(tmp, sizeof tmp, "%s", types);
        for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t;
             t = strtok_r(NULL, ",", &save)) {
            bool ok = false;
            for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
                if (!strcmp(t, known[i])) ok = true;
            if (!ok || strlen(types) >= 150) {
                dg_reply_error(r, 400, "invalid_request", "invalid_query", "types",
                               "types is a comma list of status, progress, metric, log, "
                               "checkpoint, end");
                return;
            }
        }
    }
    dg_reply_sse(r, id, after, types);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void h_job_delete(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    char st[32];
    if (dg_db_job_status(id, st) != 0) { job_or_404(r, id); return; }
    if (strcmp(st, "succeeded") && strcmp(st, "failed") && strcmp(st, "cancelled")) {
        dg_reply_error(r, 409, "conflict", "invalid_state", NULL,
                       "job %s is %s; only finished jobs can be deleted (cancel it first)", id,
                       st);
        return;
    }
    const char *purge = dg_req_query(r, "purge_checkpoints");
    if (purge && strcmp(purge, "true") && strcmp(purge, "false")) {
        dg_reply_error(r, 400, "invalid_request", "invalid_query", "purge_checkpoints",
                       "purge_checkpoints must be true or false");
        return;
    }
    if (dg_db_job_delete(id)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "could not delete %s", id);
        return;
    }
    if (purge && !strcmp(purge, "true")) {
        char dir[1200];
        snprintf(dir, sizeof dir, "%s/runs/%s", dg_srv.settings.data_dir, id);
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    }
    dg_http_streams_notify(id);
    dg_reply_text(r, 204, "application/json", "", 0);
}

/* ---- runs ------------------------------------------------------------------------------------ */
static void h_run_get(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    json_t *o = dg_db_job_json(id, true);
    if (!o) { job_or_404(r, id); return; }
    json_object_set_new(o, "object", json_string("run"));
    json_object_set_new(o, "env", json_pack("{s:s, s:s, s:s, s:s}", "build", DG_VERSION,
                                            "compiler", __VERSION__, "backend",
                                            dg_srv.settings.backend, "backends",
                                            dg_backend_list()));
    dg_reply_json(r, 200, o);
}

static void h_run_metrics(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    if (!job_or_404(r, id)) return;
    json_t *keys = NULL;
    if (dg_db_metric_keys(id, &keys)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read metrics");
        return;
    }
    dg_reply_json(r, 200, json_pack("{s:s, s:o}", "run_id", id, "keys", keys));
}

static void h_run_metric_series(dg_req *r) {
    const char *id = dg_req_param(r, "id"), *key = dg_req_param(r, "key");
    if (!job_or_404(r, id)) return;
    int64_t from, to, maxp;
    if (!q_int(r, "from_step", 0, 0, INT64_MAX, &from)) return;
    if (!q_int(r, "to_step", INT64_MAX, 0, INT64_MAX, &to)) return;
    if (!q_int(r, "max_points", 2000, 1, 1000000, &maxp)) return;
    json_t *o = NULL;
    if (dg_db_metric_series(id, key, from, to, maxp, &o)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read metrics");
        return;
    }
    if (json_integer_value(json_object_get(o, "n_points")) == 0) {
        json_t *keys = NULL;
        dg_db_metric_keys(id, &keys);
        bool known = false;
        for (size_t i = 0; i < json_array_size(keys); i++)
            if (!strcmp(json_string_value(json_object_get(json_array_get(keys, i), "key")),
                        key))
                known = true;
        json_decref(keys);
        if (!known) {
            json_decref(o);
            dg_reply_error(r, 404, "not_found", "metric_not_found", "key",
                           "run %s has no metric '%s'", id, key);
            return;
        }
    }
    json_object_set_new(o, "run_id", json_string(id));
    dg_reply_json(r, 200, o);
}

static void h_run_ckpts(dg_req *r) {
    const char *id = dg_req_param(r, "id");
    if (!job_or_404(r, id)) return;
    json_t *arr = NULL;
    if (dg_db_ckpt_list(id, &arr)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read checkpoints");
        return;
    }
    dg_reply_json(r, 200, json_pack("{s:s, s:o, s:b}", "object", "list", "data", arr,
                                    "has_more", 0));
}

/* ---- benchmarks ------------------------------------------------------------------------------ */
static void h_bench_list(dg_req *r) {
    json_t *o = NULL;
    if (dg_db_bench_list(&o)) {
        dg_reply_error(r, 500, "internal", "db_error", NULL, "cannot read benchmarks");
        return;
    }
    dg_reply_json(r, 200, o);
}
static void h_bench_get(dg_req *r) {
    json_t *o = NULL;
    const char *id = dg_req_param(r, "id");
    if (dg_db_bench_get(id, &o)) {
        dg_reply_error(r, 404, "not_found", "benchmark_not_found", "id",
                       "no benchmark with id '%s' (benchmark ids are the ids of bench jobs)", id);
        return;
    }
    dg_reply_json(r, 200, o);
}

/* ---- the route table ------------------------------------------------------------------------- */
const dg_route dg_routes[] = {
    {"GET",    "/",                              h_index,             DG_AUTH_PUBLIC,
     "The runs web page (clients/web/index.html)"},
    {"GET",    "/health",                        h_health,            DG_AUTH_PUBLIC,
     "Liveness; 503 while draining"},
    {"GET",    "/metrics",                       h_metrics,           DG_AUTH_TOKEN,
     "Prometheus metrics"},
    {"GET",    "/v1/system",                     h_system,            DG_AUTH_TOKEN,
     "Build, devices, queue and limits"},
    {"GET",    "/v1/events",                     h_events,            DG_AUTH_TOKEN,
     "SSE of daemon-wide job state changes"},
    {"GET",    "/v1/queue",                      h_queue,             DG_AUTH_TOKEN,
     "Queued jobs in start order"},
    {"POST",   "/v1/jobs",                       h_jobs_create,       DG_AUTH_TOKEN,
     "Submit a train or bench job"},
    {"GET",    "/v1/jobs",                       h_jobs_list,         DG_AUTH_TOKEN,
     "List jobs"},
    {"GET",    "/v1/jobs/{id}",                  h_job_get,           DG_AUTH_TOKEN,
     "One job with progress and attempts"},
    {"DELETE", "/v1/jobs/{id}",                  h_job_delete,        DG_AUTH_TOKEN,
     "Delete a finished job"},
    {"POST",   "/v1/jobs/{id}/cancel",           h_job_cancel,        DG_AUTH_TOKEN,
     "Cancel (with a final checkpoint)"},
    {"POST",   "/v1/jobs/{id}/pause",            h_job_pause,         DG_AUTH_TOKEN,
     "Pause (checkpoint, then paused)"},
    {"POST",   "/v1/jobs/{id}/resume",           h_job_resume,        DG_AUTH_TOKEN,
     "Requeue a paused job"},
    {"POST",   "/v1/jobs/{id}/checkpoint",       h_job_checkpoint,    DG_AUTH_TOKEN,
     "Ask a running job for a checkpoint"},
    {"GET",    "/v1/jobs/{id}/logs",             h_job_logs,          DG_AUTH_TOKEN,
     "Job log lines"},
    {"GET",    "/v1/jobs/{id}/stream",           h_job_stream,        DG_AUTH_TOKEN,
     "SSE stream of job events"},
    {"GET",    "/v1/runs",                       h_runs_list,         DG_AUTH_TOKEN,
     "List runs (filter, order by metric)"},
    {"GET",    "/v1/runs/{id}",                  h_run_get,           DG_AUTH_TOKEN,
     "One run with config, params, env, dataset"},
    {"GET",    "/v1/runs/{id}/metrics",          h_run_metrics,       DG_AUTH_TOKEN,
     "Metric keys with last/min/max"},
    {"GET",    "/v1/runs/{id}/metrics/{key}",    h_run_metric_series, DG_AUTH_TOKEN,
     "One metric series, min/max downsampled"},
    {"GET",    "/v1/runs/{id}/checkpoints",      h_run_ckpts,         DG_AUTH_TOKEN,
     "Checkpoints of a run"},
    {"POST",   "/v1/exports",                    dg_h_exports_create, DG_AUTH_TOKEN,
     "Export a checkpoint as a deployment bundle (exports.c)"},
    {"GET",    "/v1/exports",                    dg_h_exports_list,   DG_AUTH_TOKEN,
     "List exports"},
    {"GET",    "/v1/exports/{id}",               dg_h_export_get,     DG_AUTH_TOKEN,
     "One export with its files"},
    {"GET",    "/v1/exports/{id}/files/{name}",  dg_h_export_file,    DG_AUTH_TOKEN,
     "Download an export file (Range, ETag)"},
    {"POST",   "/v1/models/import",              dg_h_models_import,  DG_AUTH_TOKEN,
     "Import a bundle (path or URL) as a servable model (models_import.c)"},
    {"GET",    "/v1/models/imports/{id}",        dg_h_models_import_get, DG_AUTH_TOKEN,
     "One model import: status, error"},
    {"GET",    "/v1/benchmarks",                 h_bench_list,        DG_AUTH_TOKEN,
     "Benchmark results"},
    {"GET",    "/v1/benchmarks/{id}",            h_bench_get,         DG_AUTH_TOKEN,
     "One benchmark result"},
    {"GET",    "/v1/models",                     dg_h_models,         DG_AUTH_TOKEN,
     "Servable models (every run checkpoint)"},
    {"POST",   "/v1/completions",                dg_h_completions,    DG_AUTH_TOKEN,
     "OpenAI-compatible text completion (streamed or not)"},
    {"POST",   "/v1/tokenize",                   dg_h_tokenize,       DG_AUTH_TOKEN,
     "Text to token ids"},
    {"POST",   "/v1/detokenize",                 dg_h_detokenize,     DG_AUTH_TOKEN,
     "Token ids to text"},
    {"POST",   "/v1/sessions",                   dg_h_sessions_create, DG_AUTH_TOKEN,
     "Create a session (prefill the prompt)"},
    {"GET",    "/v1/sessions",                   dg_h_sessions_list,  DG_AUTH_TOKEN,
     "List sessions"},
    {"GET",    "/v1/sessions/{id}",              dg_h_session_get,    DG_AUTH_TOKEN,
     "One session"},
    {"DELETE", "/v1/sessions/{id}",              dg_h_session_delete, DG_AUTH_TOKEN,
     "Delete a session"},
    {"POST",   "/v1/sessions/{id}/generate",     dg_h_session_generate, DG_AUTH_TOKEN,
     "Append and generate on a session (SSE or JSON)"},
    {"POST",   "/v1/sessions/{id}/fork",         dg_h_session_fork,   DG_AUTH_TOKEN,
     "Copy a session's state into a new session"},
    {"POST",   "/v1/sessions/{id}/save",         dg_h_session_save,   DG_AUTH_TOKEN,
     "Save a session's state to <data_dir>/sessions/<id>.dst"},
    {"POST",   "/v1/sessions/{id}/load",         dg_h_session_load,   DG_AUTH_TOKEN,
     "Load a saved session state (same model only)"},
    {"POST",   "/v1/requests/{id}/cancel",       dg_h_request_cancel, DG_AUTH_TOKEN,
     "Cancel a generation by its id"},
};
const int dg_routes_count = (int)(sizeof dg_routes / sizeof dg_routes[0]);
