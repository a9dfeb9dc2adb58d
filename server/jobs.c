/* server/jobs.c -- the job queue and state machine on the LOOP thread, and the outbox through
 * which the engine thread reports back.
 *
 * States: queued -> running -> (pausing -> paused -> queued ...) -> succeeded | failed(reason)
 * | cancelled, with cancelling between running and cancelled. The queue is the jobs table
 * (status 'queued', priority desc then submission order); the CPU engine thread runs one job at
 * a time. The engine thread posts events (progress, metric, log, checkpoint, dataset, bench,
 * done) into a mutex-protected outbox and wakes the loop with uv_async_send; the loop writes a
 * whole batch to SQLite in one transaction (so nothing a client is told about is lost) and only
 * then wakes the SSE streams of the jobs concerned.
 * Not here: SQL (db.c), the training loop (worker.c), HTTP (api.c).
 * Thread affinity: LOOP thread, except dg_outbox_post (any thread). */
#include "srv.h"
#include "proto/config_json.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static struct {
    uv_loop_t         *loop;
    const dg_settings *s;
    uv_async_t         async;
    pthread_mutex_t    mu;
    dg_outmsg         *head, *tail;
    char               running[DG_MAX_DEVICES][DG_ID_LEN];   /* jobs on devices; "" = free slot */
    double             tps[DG_MAX_DEVICES];                  /* their latest tokens/s */
    bool               draining;
    int64_t            tokens_total;
    int64_t            keep_ckpts;
} J;

bool dg_jobs_draining(void) { return J.draining; }
static int running_slot(const char *id) {
    for (int i = 0; i < DG_MAX_DEVICES; i++)
        if (J.running[i][0] && !strcmp(J.running[i], id)) return i;
    return -1;
}
static void running_add(const char *id) {
    for (int i = 0; i < DG_MAX_DEVICES; i++)
        if (!J.running[i][0]) {
            snprintf(J.running[i], DG_ID_LEN, "%s", id);
            J.tps[i] = 0;
            return;
        }
}
static void running_del(const char *id) {
    int i = running_slot(id);
    if (i >= 0) J.running[i][0] = 0;
}
int dg_jobs_running_count(void) {
    int n = 0;
    for (int i = 0; i < DG_MAX_DEVICES; i++) n += J.running[i][0] != 0;
    return n;
}
/* The first running job ("" when none); dg_worker_devices_json lists them all. */
const char *dg_jobs_running_id(void) {
    for (int i = 0; i < DG_MAX_DEVICES; i++)
        if (J.running[i][0]) return J.running[i];
    return "";
}
double dg_jobs_tokens_per_s(void) {
    double t = 0;
    for (int i = 0; i < DG_MAX_DEVICES; i++)
        if (J.running[i][0]) t += J.tps[i];
    return t;
}
int64_t dg_jobs_tokens_total(void) { return J.tokens_total; }
bool dg_jobs_idle(void) { return dg_jobs_running_count() == 0; }

/* The device a job asked for ("" = any), from its stored request. */
static void device_req_of(const char *request_json, char out[32]) {
    out[0] = 0;
    json_t *req = request_json ? json_loads(request_json, 0, NULL) : NULL;
    const char *d = json_string_value(json_object_get(req, "device"));
    if (d) snprintf(out, 32, "%s", d);
    json_decref(req);
}

void dg_outbox_post(const char *job_id, const char *type, json_t *data) {
    dg_outmsg *m = dg_calloc(1, sizeof *m);
    snprintf(m->job_id, sizeof m->job_id, "%s", job_id);
    snprintf(m->type, sizeof m->type, "%s", type);
    m->data = data ? data : json_object();
    pthread_mutex_lock(&J.mu);
    if (J.tail) J.tail->next = m;
    else J.head = m;
    J.tail = m;
    pthread_mutex_unlock(&J.mu);
    uv_async_send(&J.async);
}

static void emit_nonotify(const char *job_id, const char *type, json_t *data) {
    char *s = dg_json_text(data);
    dg_db_event_add(job_id, type, s);
    dg_free(s);
    json_decref(data);
}

void dg_jobs_emit(const char *job_id, const char *type, json_t *data) {
    emit_nonotify(job_id, type, data);
    dg_http_streams_notify(job_id);
}

static void log_line(const char *job_id, const char *level, const char *msg) {
    int64_t line = 0;
    if (dg_db_log_add(job_id, level, msg, &line) == 0)
        emit_nonotify(job_id, "log", json_pack("{s:I, s:s, s:s}", "line", (json_int_t)line,
                                               "level", level, "msg", msg));
}

static void status_event(const char *job_id, const char *status, const char *reason,
                         const char *message, int attempt) {
    json_t *d = json_pack("{s:s, s:f}", "status", status, "at", dg_wall_s());
    json_object_set_new(d, "reason", reason ? json_string(reason) : json_null());
    if (message) json_object_set_new(d, "message", json_string(message));
    if (attempt > 0) json_object_set_new(d, "attempt", json_integer(attempt));
    json_t *g = json_deep_copy(d);
    json_object_set_new(g, "job_id", json_string(job_id));
    dg_api_publish("job", g);
    emit_nonotify(job_id, "status", d);
    if (!strcmp(status, "succeeded") || !strcmp(status, "failed") ||
        !strcmp(status, "cancelled"))
        emit_nonotify(job_id, "end", json_pack("{s:s}", "status", status));
}

/* ---- config resolution ------------------------------------------------------------------- */
static void deep_merge(json_t *dst, json_t *src) {
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v) {
        json_t *d = json_object_get(dst, k);
        if (json_is_object(d) && json_is_object(v)) deep_merge(d, v);
        else json_object_set(dst, k, v);
    }
}

int dg_jobs_resolve_config(json_t *config, dg_model_config *m, dg_train_config *t,
                           char *param, size_t pn, char *msg, size_t mn) {
    json_t *merged = NULL;
    json_t *preset = json_object_get(config, "preset");
    if (preset) {
        const char *name = json_string_value(preset);
        bool ok = name && *name && strlen(name) < 64;
        for (const char *c = name; ok && *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                  *c == '-'))
                ok = false;
        char rel[128], path[1200];
        if (ok) {
            snprintf(rel, sizeof rel, "config/models/%s.json", name);
            ok = dg_find_asset(rel, path, sizeof path) == 0;
        }
        if (!ok) {
            snprintf(param, pn, "/config/preset");
            snprintf(msg, mn, "unknown model preset%s%s (config/models/<name>.json)",
                     name ? " " : "", name ? name : "");
            return DG_ECONFIG;
        }
        json_error_t je;
        merged = json_load_file(path, 0, &je);
        if (!merged) {
            snprintf(param, pn, "/config/preset");
            snprintf(msg, mn, "%s:%d: %s", path, je.line, je.text);
            return DG_ECONFIG;
        }
        json_object_del(merged, "name");
        json_object_del(merged, "description");
    } else {
        merged = json_object();
    }
    json_t *rest = json_deep_copy(config);
    json_object_del(rest, "preset");
    deep_merge(merged, rest);
    json_decref(rest);
    char err[512] = "";
    int rc = dg_config_from_json(merged, m, t, err, sizeof err);
    json_decref(merged);
    if (rc) {
        /* "/model/n_head: rule" -> param "/config/model/n_head" */
        const char *colon = strstr(err, ": ");
        if (err[0] == '/' && colon) {
            snprintf(param, pn, "/config%.*s", (int)(colon - err), err);
            snprintf(msg, mn, "config%.*s: %s", (int)(colon - err), err, colon + 2);
        } else {
            snprintf(param, pn, "/config");
            snprintf(msg, mn, "%s", err[0] ? err : "invalid config");
        }
        return DG_ECONFIG;
    }
    return 0;
}

/* ---- starting jobs ----------------------------------------------------------------------- */
static char *join_path(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = dg_malloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static void fail_now(const char *id, const char *reason, const char *msg) {
    dg_db_begin();
    dg_db_job_set_status(id, "failed", reason, msg);
    dg_db_attempt_close(id, reason);
    log_line(id, "error", msg);
    status_event(id, "failed", reason, msg, 0);
    dg_db_commit();
    dg_http_streams_notify(id);
}

static int start_job(const char *id) {
    dg_db_jobspec sp;
    if (dg_db_job_spec(id, &sp)) return DG_EIO;
    dg_work *w = dg_calloc(1, sizeof *w);
    snprintf(w->job_id, sizeof w->job_id, "%s", id);
    snprintf(w->kind, sizeof w->kind, "%s", sp.kind);
    json_t *cfg = json_loads(sp.config_json, 0, NULL);
    json_t *data = json_loads(sp.data_json, 0, NULL);
    char param[128], msg[600];
    int rc = cfg ? dg_jobs_resolve_config(cfg, &w->model, &w->train, param, sizeof param, msg,
                                          sizeof msg) : DG_ECONFIG;
    if (rc) {
        fail_now(id, "invalid_config", cfg ? msg : "stored config is not JSON");
        goto out_free;
    }
    w->train.seed = (uint64_t)sp.seed;
    const char *dpath = json_string_value(json_object_get(data, "path"));
    const char *preset = json_string_value(json_object_get(data, "preset"));
    if (dpath) w->data_path = dg_strdup(dpath);
    if (preset) w->preset = dg_strdup(preset);
    if (sp.resume_from) w->resume_path = dg_strdup(sp.resume_from);
    char rel[128];
    snprintf(rel, sizeof rel, "runs/%s", id);
    w->run_dir = join_path(J.s->data_dir, rel);
    w->data_dir = dg_strdup(J.s->data_dir);
    w->backend = dg_strdup(J.s->backend);
    w->preset_url = dg_strdup(J.s->shakespeare_url);
    w->download_timeout_s = J.s->download_timeout_s;
    json_t *bs = json_object_get(data, "bench_steps");
    w->bench_steps = json_is_integer(bs) ? json_integer_value(bs) : 5;
    J.keep_ckpts = w->train.keep_checkpoints > 0 ? w->train.keep_checkpoints : 1;
    device_req_of(sp.request_json, w->device_req);

    dg_db_begin();
    int attempt = 0;
    dg_db_attempt_open(id, sp.resume_from, &attempt);
    if (sp.resume_from) {
        dg_db_metrics_trim(id, sp.resume_step);
        char m2[1400];
        snprintf(m2, sizeof m2, "attempt %d resumes from %s (step %lld)", attempt,
                 sp.resume_from, (long long)sp.resume_step);
        log_line(id, "info", m2);
    } else {
        dg_db_metrics_trim(id, 0);
        char m2[128];
        snprintf(m2, sizeof m2, "attempt %d starts from step 0", attempt);
        log_line(id, "info", m2);
    }
    dg_db_job_set_status(id, "running", NULL, NULL);
    status_event(id, "running", NULL, NULL, attempt);
    dg_db_commit();
    running_add(id);
    char dev[32] = "";
    if (dg_worker_submit(w, dev) != 0) {
        running_del(id);
        fail_now(id, "internal", "no engine thread could take the job");
        dg_work_free(w);
    } else {
        char m3[96];
        snprintf(m3, sizeof m3, "placed on device %s", dev);
        log_line(id, "info", m3);
    }
    dg_http_streams_notify(id);
    w = NULL;
out_free:
    if (w) dg_work_free(w);
    json_decref(cfg);
    json_decref(data);
    dg_db_jobspec_free(&sp);
    return 0;
}

void dg_jobs_kick(void) {
    char id[DG_ID_LEN];
    while (!J.draining && dg_db_next_queued(id)) {
        dg_db_jobspec sp;                     /* the head of the queue waits for its device */
        char req[32] = "";
        if (dg_db_job_spec(id, &sp) == 0) {
            device_req_of(sp.request_json, req);
            dg_db_jobspec_free(&sp);
        }
        if (!dg_worker_can_place(req)) break;
        if (start_job(id) != 0) {            /* the database failed us: try again later */
            DG_ERROR("cannot start job %s", id);
            break;
        }
    }
}

/* ---- the outbox on the loop --------------------------------------------------------------- */
static double num(json_t *o, const char *k, double def) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : def;
}

static void on_done(const char *id, json_t *d) {
    const char *outcome = json_string_value(json_object_get(d, "outcome"));
    const char *reason = json_string_value(json_object_get(d, "reason"));
    const char *msg = json_string_value(json_object_get(d, "message"));
    if (!outcome) outcome = "failed";
    char path[1100];
    int64_t step = 0;
    bool has_ckpt = dg_db_ckpt_latest(id, path, sizeof path, &step) == 0;
    if (!strcmp(outcome, "paused") || !strcmp(outcome, "parked")) {
        bool parked = !strcmp(outcome, "parked");
        const char *to = parked ? "queued" : "paused";
        dg_db_job_set_resume(id, has_ckpt ? path : NULL);
        dg_db_attempt_close(id, parked ? "daemon_shutdown" : "paused");
        dg_db_job_set_status(id, to, NULL, NULL);
        char m2[1400];
        snprintf(m2, sizeof m2, "%s at step %lld%s%s", parked ? "parked for daemon shutdown" :
                 "paused", (long long)step, has_ckpt ? "; checkpoint " : "",
                 has_ckpt ? path : "");
        log_line(id, "info", m2);
        status_event(id, to, parked ? "daemon_shutdown" : NULL, NULL, 0);
    } else {
        dg_db_attempt_close(id, !strcmp(outcome, "failed") && reason ? reason : outcome);
        dg_db_job_set_status(id, outcome, !strcmp(outcome, "failed") ? reason : NULL, msg);
        if (msg) log_line(id, !strcmp(outcome, "failed") ? "error" : "info", msg);
        status_event(id, outcome, !strcmp(outcome, "failed") ? reason : NULL, msg, 0);
    }
    running_del(id);
}

static void handle(dg_outmsg *m) {
    const char *id = m->job_id;
    json_t *d = m->data;
    if (!strcmp(m->type, "progress")) {
        int64_t step = (int64_t)num(d, "step", 0), total = (int64_t)num(d, "total_steps", 0);
        int64_t seen = (int64_t)num(d, "tokens_seen", 0);
        double tps = num(d, "tokens_per_s", 0), eta = num(d, "eta_s", 0);
        J.tokens_total += (int64_t)num(d, "tokens_delta", 0);
        json_object_del(d, "tokens_delta");
        int slot = running_slot(id);
        if (slot >= 0) J.tps[slot] = tps;
        dg_db_job_progress(id, step, total, seen, tps, eta);
        emit_nonotify(id, "progress", json_incref(d));
    } else if (!strcmp(m->type, "metric")) {
        int64_t step = (int64_t)num(d, "step", 0), ts = (int64_t)num(d, "ts_ms", 0);
        json_t *vals = json_object_get(d, "values");
        const char *k;
        json_t *v;
        json_object_foreach(vals, k, v) dg_db_metric_add(id, k, step, ts, json_number_value(v));
        double tl = num(vals, "train_loss", NAN), vl = num(vals, "val_loss", NAN);
        dg_db_job_set_losses(id, tl == tl ? &tl : NULL, vl == vl ? &vl : NULL);
        emit_nonotify(id, "metric", json_incref(d));
    } else if (!strcmp(m->type, "log")) {
        const char *lvl = json_string_value(json_object_get(d, "level"));
        const char *msg = json_string_value(json_object_get(d, "msg"));
        log_line(id, lvl ? lvl : "info", msg ? msg : "");
    } else if (!strcmp(m->type, "checkpoint")) {
        char cid[DG_ID_LEN];
        dg_make_id("ckpt_", cid);
        double tl = num(d, "train_loss", NAN), vl = num(d, "val_loss", NAN);
        const char *path = json_string_value(json_object_get(d, "path"));
        const char *sha = json_string_value(json_object_get(d, "sha256"));
        int64_t step = (int64_t)num(d, "step", 0), bytes = (int64_t)num(d, "bytes", 0);
        dg_db_ckpt_add(id, cid, step, path, bytes, sha, tl == tl ? &tl : NULL,
                       vl == vl ? &vl : NULL);
        dg_db_ckpt_retain(id, (int64_t)num(d, "keep", (double)J.keep_ckpts));
        dg_db_job_set_resume(id, path);
        json_t *e = json_pack("{s:s, s:I, s:I, s:s?, s:s?}", "id", cid, "step_number",
                              (json_int_t)step, "bytes", (json_int_t)bytes, "sha256", sha,
                              "path", path);
        json_t *mm = json_object();
        json_object_set_new(mm, "train_loss", tl == tl ? json_real(tl) : json_null());
        json_object_set_new(mm, "val_loss", vl == vl ? json_real(vl) : json_null());
        json_object_set_new(e, "metrics", mm);
        emit_nonotify(id, "checkpoint", e);
    } else if (!strcmp(m->type, "dataset")) {
        dg_db_job_set_dataset(id, json_string_value(json_object_get(d, "path")),
                              json_string_value(json_object_get(d, "sha256")));
    } else if (!strcmp(m->type, "bench")) {
        char *env = dg_json_text(json_object_get(d, "env"));
        char *res = dg_json_text(json_object_get(d, "results"));
        dg_db_bench_add(id, id, env, res);
        dg_free(env);
        dg_free(res);
    } else if (!strcmp(m->type, "done")) {
        on_done(id, d);
    }
}

static void on_async(uv_async_t *a) {
    (void)a;
    pthread_mutex_lock(&J.mu);
    dg_outmsg *list = J.head;
    J.head = J.tail = NULL;
    pthread_mutex_unlock(&J.mu);
    if (!list) return;
    dg_db_begin();
    for (dg_outmsg *m = list; m; m = m->next) handle(m);
    dg_db_commit();
    bool any_done = false;
    while (list) {
        dg_outmsg *next = list->next;
        dg_http_streams_notify(list->job_id);
        if (!strcmp(list->type, "done")) any_done = true;
        json_decref(list->data);
        dg_free(list);
        list = next;
    }
    if (any_done) dg_jobs_kick();
}

int dg_jobs_init(uv_loop_t *loop, const dg_settings *s, char *err, size_t n) {
    memset(&J, 0, sizeof J);
    J.loop = loop;
    J.s = s;
    pthread_mutex_init(&J.mu, NULL);
    uv_async_init(loop, &J.async, on_async);
    if (dg_worker_start(loop, NULL) != 0) {
        snprintf(err, n, "cannot start the engine thread");
        return DG_EINTERNAL;
    }
    return 0;
}

void dg_jobs_close(void) {
    on_async(&J.async);
    uv_close((uv_handle_t *)&J.async, NULL);
}

void dg_jobs_shutdown_begin(void) {
    J.draining = true;
    for (int i = 0; i < DG_MAX_DEVICES; i++) {
        dg_work_flags *f = J.running[i][0] ? dg_worker_flags_for(J.running[i]) : NULL;
        if (f) atomic_store(&f->pause, 2);
    }
}

/* ---- actions ------------------------------------------------------------------------------ */
static int status_of(const char *id, char st[32], char *msg, size_t n) {
    if (dg_db_job_status(id, st) != 0) {
        snprintf(msg, n, "no job with id '%s'", id);
        return DG_ENOTFOUND;
    }
    return 0;
}

int dg_jobs_cancel(const char *id, char *msg, size_t n) {
    char st[32];
    int rc = status_of(id, st, msg, n);
    if (rc) return rc;
    if (!strcmp(st, "queued") || !strcmp(st, "paused")) {
        dg_db_begin();
        dg_db_job_set_status(id, "cancelled", NULL, "cancelled by request");
        log_line(id, "info", "cancelled by request");
        status_event(id, "cancelled", NULL, NULL, 0);
        dg_db_commit();
        dg_http_streams_notify(id);
        return 0;
    }
    if (!strcmp(st, "running") || !strcmp(st, "pausing")) {
        dg_work_flags *f = running_slot(id) >= 0 ? dg_worker_flags_for(id) : NULL;
        if (!f) {
            snprintf(msg, n, "job %s is %s but not on an engine", id, st);
            return DG_EBUSY;
        }
        atomic_store(&f->cancel, 1);
        dg_db_begin();
        dg_db_job_set_status(id, "cancelling", NULL, NULL);
        status_event(id, "cancelling", NULL, NULL, 0);
        dg_db_commit();
        dg_http_streams_notify(id);
        return 0;
    }
    snprintf(msg, n, "job %s is %s and cannot be cancelled", id, st);
    return DG_EBUSY;
}

int dg_jobs_pause(const char *id, char *msg, size_t n) {
    char st[32];
    int rc = status_of(id, st, msg, n);
    if (rc) return rc;
    if (!strcmp(st, "queued")) {
        dg_db_begin();
        dg_db_job_set_status(id, "paused", NULL, NULL);
        status_event(id, "paused", NULL, NULL, 0);
        dg_db_commit();
        dg_http_streams_notify(id);
        return 0;
    }
    dg_work_flags *f = !strcmp(st, "running") ? dg_worker_flags_for(id) : NULL;
    if (f) {
        atomic_store(&f->pause, 1);
        dg_db_begin();
        dg_db_job_set_status(id, "pausing", NULL, NULL);
        status_event(id, "pausing", NULL, NULL, 0);
        dg_db_commit();
        dg_http_streams_notify(id);
        return 0;
    }
    snprintf(msg, n, "job %s is %s and cannot be paused (only queued or running jobs)", id, st);
    return DG_EBUSY;
}

int dg_jobs_resume(const char *id, char *msg, size_t n) {
    char st[32];
    int rc = status_of(id, st, msg, n);
    if (rc) return rc;
    if (strcmp(st, "paused") != 0) {
        snprintf(msg, n, "job %s is %s; only paused jobs can be resumed", id, st);
        return DG_EBUSY;
    }
    dg_db_begin();
    dg_db_job_set_status(id, "queued", NULL, NULL);
    status_event(id, "queued", NULL, NULL, 0);
    dg_db_commit();
    dg_http_streams_notify(id);
    dg_jobs_kick();
    return 0;
}

int dg_jobs_checkpoint(const char *id, char *msg, size_t n) {
    char st[32];
    int rc = status_of(id, st, msg, n);
    if (rc) return rc;
    dg_work_flags *f = !strcmp(st, "running") ? dg_worker_flags_for(id) : NULL;
    if (!f) {
        snprintf(msg, n, "job %s is %s; checkpoints can be requested only while it runs", id,
                 st);
        return DG_EBUSY;
    }
    atomic_store(&f->checkpoint, 1);
    return 0;
}
