/* server/srv.h -- the daemon's internal interfaces shared by the server/ modules:
 * settings (settings.c), SQLite (db.c), HTTP + SSE (http.c), routes and handlers (api.c),
 * the job scheduler (jobs.c), the engine thread (worker.c) and the dataset presets (dataset.c).
 *
 * Not here: the public entry point (serve.h). Thread affinity: everything below runs on the
 * LOOP thread except the dg_worker_* functions marked "engine thread" and dg_outbox_post /
 * dg_dataset_fetch, which any thread may call. */
#ifndef DG_SRV_H
#define DG_SRV_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <jansson.h>
#include <uv.h>

#include "engine/dg.h"
#include "engine/model.h"
#include "engine/train.h"

#define DG_ID_LEN 48

/* ------------------------------------------------------------------------------------------
 * Settings (settings.c): one table, one struct. config/dragond.json documents every row. */
typedef enum { DG_SET_INT, DG_SET_DOUBLE, DG_SET_STRING, DG_SET_BOOL } dg_set_type;

typedef struct {
    char    listen[256];
    char    data_dir[1024];
    char    token_file[1024];
    char    backend[32];
    char    infer_device[32];
    char    allowed_hosts[512];
    char    web_root[1024];
    char    shakespeare_url[1024];
    char    log_level[16];
    int64_t max_body_bytes;
    int64_t max_queued_jobs;
    int64_t max_connections;
    int64_t connection_timeout_s;
    int64_t sse_ping_interval_s;
    int64_t sse_page_events;
    int64_t sse_soft_limit_events;
    int64_t shutdown_timeout_s;
    int64_t retry_after_s;
    int64_t download_timeout_s;
    bool    resume_on_restart;
} dg_settings;

typedef struct {
    const char *name;
    dg_set_type type;
    const char *def;          /* default, as text */
    double      min, max;     /* numeric bounds (ints and doubles) */
    size_t      offset;       /* into dg_settings */
    size_t      size;         /* string capacity */
    const char *desc;
} dg_setting_def;

extern const dg_setting_def dg_settings_table[];
extern const int dg_settings_count;

void dg_settings_defaults(dg_settings *s);
/* Applies one "name" = value (JSON) to s; err names the setting and the rule. */
bool dg_settings_cuda_index(const char *p, int *idx);
int  dg_settings_apply_json(dg_settings *s, const char *name, json_t *v, char *err, size_t n);
/* Loads a config file: {"name": value, ..., "_doc": {...}}; unknown names are errors. */
int  dg_settings_load_file(dg_settings *s, const char *path, char *err, size_t n);

/* ------------------------------------------------------------------------------------------
 * Helpers (util in api.c). */
double dg_wall_s(void);                  /* unix time, seconds */
int64_t dg_wall_ms(void);
void   dg_make_id(const char *prefix, char out[DG_ID_LEN]);   /* time-sortable, unique */
int    dg_mkdirs(const char *path);       /* mkdir -p; 0 or DG_EIO */
/* Finds a shipped file (config/models/tiny.json, clients/web/index.html): tried as given
 * (absolute or relative to the working directory), then relative to the directory above the
 * executable's (build/dragond -> repo root). 0 or DG_ENOTFOUND. */
int    dg_find_asset(const char *rel, char *out, size_t n);
/* Compact JSON text of v, dg_malloc'd (jansson's own buffer is released inside). */
char  *dg_json_text(const json_t *v);

/* ------------------------------------------------------------------------------------------
 * SQLite (db.c). All SQL lives there. Functions return 0 or a negative DG_E* code. */
extern const char dg_db_schema_sql[];
#define DG_DB_VERSION 2        /* 1: proto/schema.sql; 2: exports (db_exports.c) */

int  dg_db_open(const char *path, char *err, size_t n);
void dg_db_close(void);
int  dg_db_begin(void);
int  dg_db_commit(void);
int  dg_db_exec(const char *sql);        /* for tests and migrations */

typedef struct {
    char        id[DG_ID_LEN];
    const char *kind;          /* train | bench */
    const char *name;
    int64_t     priority;
    const char *request_json;  /* what the client sent */
    const char *config_json;   /* resolved {"model":..,"training":..} */
    const char *data_json;     /* {"path":..} or {"preset":..} */
    const char *tags_json;     /* {"k":"v"} */
    const char *resume_from;   /* checkpoint path or NULL */
    int64_t     seed;
    int64_t     total_steps;
    const char *idem_key;      /* Idempotency-Key header or NULL */
} dg_db_newjob;

int     dg_db_job_insert(const dg_db_newjob *j);
/* The job created with this Idempotency-Key: its id and request body (dg_malloc'd). */
int     dg_db_job_by_idem(const char *key, char id[DG_ID_LEN], char **request_json);
bool    dg_db_job_exists(const char *id);
/* Status text of a job into out (32 bytes); DG_ENOTFOUND. */
int     dg_db_job_status(const char *id, char out[32]);
int     dg_db_job_set_status(const char *id, const char *status, const char *reason,
                             const char *message);
int64_t dg_db_queue_len(void);
int64_t dg_db_queue_position(const char *id);
/* Queued jobs in start order: [{job_id, kind, name, priority, created_at, position}]. */
int     dg_db_queue_list(json_t **out);
/* The next queued job (priority desc, then submission order) into id; false when none. */
bool    dg_db_next_queued(char id[DG_ID_LEN]);
/* Job JSON as the API returns it (GET /v1/jobs/{id}); NULL when absent. full adds params etc. */
json_t *dg_db_job_json(const char *id, bool full);
/* Everything the worker needs about a job. */
typedef struct {
    char    kind[16];
    char   *config_json, *data_json, *resume_from;    /* dg_free */
    int64_t seed;
    int64_t resume_step;       /* step of resume_from, 0 if none */
    int64_t n_events;
    char   *request_json;      /* what the client sent (dg_free) */
} dg_db_jobspec;
int     dg_db_job_spec(const char *id, dg_db_jobspec *out);
void    dg_db_jobspec_free(dg_db_jobspec *s);
int     dg_db_job_progress(const char *id, int64_t step, int64_t total, int64_t tokens_seen,
                           double tps, double eta_s);
int     dg_db_job_set_losses(const char *id, const double *train_loss, const double *val_loss);
int     dg_db_job_set_dataset(const char *id, const char *path, const char *sha256);
int     dg_db_job_set_resume(const char *id, const char *ckpt_path);
int     dg_db_job_delete(const char *id);
int     dg_db_attempt_open(const char *id, const char *resumed_from, int *n_out);
int     dg_db_attempt_close(const char *id, const char *exit_reason);

/* Lists: filters (NULL = any) -> {"object":"list","data":[...],"has_more":..,"next_after":..}.
 * runs=true gives run rows; order_metric e.g. "val_loss" (ascending, nulls last). */
typedef struct {
    const char *status;        /* comma separated */
    const char *kind;
    const char *tag;           /* k or k=v */
    const char *order_metric;  /* runs only */
    const char *after;
    int64_t     limit;
    bool        runs;
} dg_db_listq;
int     dg_db_list_jobs(const dg_db_listq *q, json_t **out, char *err, size_t n);
int     dg_db_jobs_by_state(json_t *counts_out);   /* {"queued":n,...} into an object */

/* Events: one row per SSE event, seq per job (the SSE id). Returns the new seq. */
int64_t dg_db_event_add(const char *job_id, const char *type, const char *data_json);
typedef struct { int64_t seq; char type[16]; char *data; } dg_db_event;
/* Events with seq > after_seq, up to max; skip_noisy_below: progress/metric events with seq
 * below it are skipped (SSE coalescing). Returns the count; evs[i].data is dg_malloc'd. */
int     dg_db_events_after(const char *job_id, int64_t after_seq, int64_t skip_noisy_below,
                           dg_db_event *evs, int max);
int64_t dg_db_event_max(const char *job_id);

int     dg_db_metric_add(const char *run_id, const char *key, int64_t step, int64_t ts_ms,
                         double value);
int     dg_db_metrics_trim(const char *run_id, int64_t after_step);
int     dg_db_metric_keys(const char *run_id, json_t **out);
int     dg_db_metric_series(const char *run_id, const char *key, int64_t from_step,
                            int64_t to_step, int64_t max_points, json_t **out);
int     dg_db_log_add(const char *run_id, const char *level, const char *msg, int64_t *line);
int     dg_db_logs(const char *run_id, int64_t after_line, int64_t tail, json_t **out);
int     dg_db_ckpt_add(const char *run_id, const char *id, int64_t step, const char *path,
                       int64_t bytes, const char *sha256, const double *train_loss,
                       const double *val_loss);
/* Keeps the newest `keep` checkpoints of a run; unlinks and deletes the rest. */
int     dg_db_ckpt_retain(const char *run_id, int64_t keep);
int     dg_db_ckpt_latest(const char *run_id, char *path, size_t n, int64_t *step);
int     dg_db_ckpt_by_id(const char *id, char *path, size_t n, char run_id[DG_ID_LEN]);
int     dg_db_ckpt_list(const char *run_id, json_t **out);
int     dg_db_bench_add(const char *id, const char *job_id, const char *env_json,
                        const char *results_json);
int     dg_db_bench_get(const char *id, json_t **out);
int     dg_db_bench_list(json_t **out);
/* Restart recovery: closes attempts of jobs that were running; returns how many were
 * requeued (with their latest checkpoint) and failed. */
int     dg_db_recover(bool resume, int *requeued, int *failed);

/* ------------------------------------------------------------------------------------------
 * HTTP (http.c). */
typedef struct dg_req dg_req;

typedef enum { DG_AUTH_PUBLIC = 0, DG_AUTH_TOKEN = 1 } dg_auth;
typedef void (*dg_handler)(dg_req *r);
typedef struct {
    const char *method;
    const char *pattern;      /* "/v1/jobs/{id}/cancel": {name} matches one segment */
    dg_handler  fn;
    dg_auth     auth;
    const char *summary;
} dg_route;

extern const dg_route dg_routes[];
extern const int dg_routes_count;

int  dg_http_start(uv_loop_t *loop, const dg_settings *s, const char *token, char *bound,
                   size_t bound_n, char *err, size_t n);
void dg_http_quiesce(void);                  /* stop accepting */
void dg_http_stop(void);
void dg_http_streams_notify(const char *job_id);   /* new events for job_id (NULL = all) */
void dg_http_streams_end_all(void);          /* drain: every stream gets a final event */
int  dg_http_stream_count(void);

const char *dg_req_method(dg_req *r);
const char *dg_req_param(dg_req *r, const char *name);    /* {name} from the pattern */
const char *dg_req_query(dg_req *r, const char *name);
const char *dg_req_header(dg_req *r, const char *name);
const char *dg_req_body(dg_req *r, size_t *len);
/* Parses the body as a JSON object (empty body -> {} when allow_empty); on error answers 400
 * and returns NULL. */
json_t *dg_req_json(dg_req *r, bool allow_empty);
void dg_reply_json(dg_req *r, int status, json_t *body);           /* steals body */
void dg_reply_text(dg_req *r, int status, const char *ctype, const char *text, size_t n);
void dg_reply_error(dg_req *r, int status, const char *type, const char *code, const char *param,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void dg_reply_header(dg_req *r, const char *name, const char *value);   /* before dg_reply_* */
/* Answers with len bytes of fd from offset (fd is closed when the response is done); headers
 * set with dg_reply_header before the call are added. */
void dg_reply_fd(dg_req *r, int status, const char *ctype, int fd, uint64_t offset,
                 uint64_t len);
/* Turns the request into an SSE stream of job_id's events after after_seq; types: comma list
 * of event types to send (NULL = all; "end" always comes). */
void dg_reply_sse(dg_req *r, const char *job_id, int64_t after_seq, const char *types);
/* A pushed stream (e.g. token SSE): the producer appends bytes (already framed) with
 * dg_pstream_write and finishes with dg_pstream_end; the response drains as the peer reads.
 * on_gone(ud) runs on the LOOP thread when the connection is finished or dropped (client gone,
 * daemon stopping): after it the handle is invalid and must not be used. Idle streams get
 * ": ping" comments; during a drain they get a final "event: end". A peer more than 8 MiB
 * behind gets an error event and is closed. */
typedef struct dg_pstream dg_pstream;
dg_pstream *dg_reply_pstream(dg_req *r, const char *ctype, void (*on_gone)(void *ud),
                             void *ud);
void dg_pstream_write(dg_pstream *s, const char *data, size_t n);
void dg_pstream_end(dg_pstream *s);
/* Live responses of generations (http.c; used by infer.c). The handler creates one instead of
 * replying: dg_live_stream sends 200 + ctype headers now and streams what dg_live_write pushes
 * until dg_live_end (a drain does not end it: the producer does); dg_live_defer sends nothing
 * until dg_live_reply (any status, JSON body stolen). gone(ud, client_gone) runs exactly once,
 * when the connection is finished (client_gone: not completed normally); the handle is invalid
 * afterwards. dg_live_peer_gone peeks at the socket (a disconnect is visible even while MHD has
 * the connection suspended); dg_live_close ends the response early. LOOP thread. */
typedef struct dg_live dg_live;
typedef void (*dg_live_gone_fn)(void *ud, bool client_gone);
dg_live *dg_live_stream(dg_req *r, const char *ctype, dg_live_gone_fn gone, void *ud);
dg_live *dg_live_defer(dg_req *r, dg_live_gone_fn gone, void *ud);
void dg_live_rebind(dg_live *l, dg_live_gone_fn gone, void *ud);
void dg_live_write(dg_live *l, const char *data, size_t n);
void dg_live_end(dg_live *l);
void dg_live_reply(dg_live *l, int status, json_t *body);
void dg_live_close(dg_live *l);
bool dg_live_peer_gone(dg_live *l);
void dg_http_metrics_text(json_t *sb_lines);     /* appends request counters (Prometheus) */

/* Daemon-wide event to every /v1/events subscriber (not stored; ids count from daemon start).
 * Steals data. */
void dg_api_publish(const char *type, json_t *data);

/* ------------------------------------------------------------------------------------------
 * Jobs (jobs.c): the queue and state machine on the loop thread. */
int  dg_jobs_init(uv_loop_t *loop, const dg_settings *s, char *err, size_t n);
void dg_jobs_shutdown_begin(void);      /* checkpoint + park running jobs */
bool dg_jobs_idle(void);                /* no job on the engine */
void dg_jobs_close(void);
void dg_jobs_kick(void);                /* start the next queued job if the engine is free */
/* Actions; return 0, DG_ENOTFOUND or DG_EBUSY (with a message) for a state conflict. */
int  dg_jobs_cancel(const char *id, char *msg, size_t n);
int  dg_jobs_pause(const char *id, char *msg, size_t n);
int  dg_jobs_resume(const char *id, char *msg, size_t n);
int  dg_jobs_checkpoint(const char *id, char *msg, size_t n);
const char *dg_jobs_running_id(void);   /* the first running job, "" when idle */
int  dg_jobs_running_count(void);
double dg_jobs_tokens_per_s(void);
int64_t dg_jobs_tokens_total(void);
bool dg_jobs_draining(void);
/* Resolves a submitted config {"model":..,"training":..} (optionally with "preset") into
 * structs; on error fills param (JSON pointer) and msg. */
int  dg_jobs_resolve_config(json_t *config, dg_model_config *m, dg_train_config *t,
                            char *param, size_t pn, char *msg, size_t mn);
/* Records a job event (DB + streams): used by jobs.c and api.c. */
void dg_jobs_emit(const char *job_id, const char *type, json_t *data);   /* steals data */

/* ------------------------------------------------------------------------------------------
 * Worker (worker.c): the engine thread of one device. */
typedef struct {
    char            job_id[DG_ID_LEN];
    char            kind[16];           /* train | bench */
    dg_model_config model;
    dg_train_config train;
    char           *data_path;          /* file to train on, or NULL with preset */
    char           *preset;             /* "shakespeare" or NULL */
    char           *resume_path;        /* .dck or NULL */
    char           *run_dir;            /* <data_dir>/runs/<id> */
    char           *data_dir;
    char           *backend;
    char           *preset_url;
    int64_t         download_timeout_s;
    int64_t         bench_steps;
    char            device_req[32];     /* "" or "auto", "cpu", "cuda", "cuda:N" */
    int             device;             /* device index, set by the worker that runs it */
} dg_work;

typedef struct {
    atomic_int cancel;       /* 1 = cancel with a final checkpoint */
    atomic_int pause;        /* 1 = checkpoint and stop as paused; 2 = shutdown park */
    atomic_int checkpoint;   /* 1 = write a checkpoint at the next step boundary */
} dg_work_flags;

/* Outbox: events from the engine thread to the loop. type: status, progress, metric, log,
 * checkpoint, bench, done. data is stolen. */
typedef struct dg_outmsg {
    char              job_id[DG_ID_LEN];
    char              type[16];
    json_t           *data;
    struct dg_outmsg *next;
} dg_outmsg;
void dg_outbox_post(const char *job_id, const char *type, json_t *data);

/* One engine thread per device: the CPU ("cpu", backend from the settings) and every GPU the
 * cuda backend finds ("cuda:0", "cuda:1", ...). */
#define DG_MAX_DEVICES 17
int  dg_worker_start(uv_loop_t *loop, void (*on_events)(dg_outmsg *list));
int  dg_worker_count(void);
/* true when device_req ("", auto, cpu, cuda, cuda:N) names a device this daemon has */
bool dg_worker_device_exists(const char *device_req);
/* true when a device for device_req is idle now */
bool dg_worker_can_place(const char *device_req);
/* Devices with kind, backend, holder job, memory and utilisation (for /v1/system, /metrics). */
json_t *dg_worker_devices_json(void);
/* Flags of the device running job_id, or NULL when no device runs it. */
dg_work_flags *dg_worker_flags_for(const char *job_id);
/* Hands a job to the engine thread of a device for w->device_req (exact name; "cuda": any GPU;
 * "" or auto: an idle GPU, else the CPU), which owns w afterwards. Writes the device name into
 * dev_out (32 bytes). DG_EBUSY when no such device is idle, DG_ENOTFOUND when none exists. */
int  dg_worker_submit(dg_work *w, char *dev_out);
void dg_worker_stop(double timeout_s);   /* asks the thread to exit, joins if it does */
void dg_work_free(dg_work *w);

/* Dataset presets (dataset.c). Any thread. Ensures <data_dir>/datasets/<file> exists with the
 * right sha256 (downloading from url when absent); path_out gets its path. DG_EDATA with a
 * message naming the file to place by hand when it cannot. */
int  dg_dataset_preset(const char *preset, const char *data_dir, const char *url,
                       int64_t timeout_s, atomic_int *cancel, char *path_out, size_t pn,
                       char *err, size_t errlen);
extern const char dg_shakespeare_sha256[];

/* The daemon's global state the handlers need. */
typedef struct {
    dg_settings settings;
    double      started_at;
    char        bound[300];        /* "127.0.0.1:8077" */
    char        db_path[1100];
    bool        draining;
} dg_server;
extern dg_server dg_srv;

#endif
