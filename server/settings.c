/* server/settings.c -- the daemon's settings: one table (name, type, default, bounds,
 * description), defaults, and loading config/dragond.json ({"name": value, ...} plus a "_doc"
 * object that repeats each description; unknown names are errors that name the setting).
 * Flags override the file (serve.c). tests/server/test_settings.c checks that the shipped
 * config/dragond.json and this table agree row by row.
 * Not here: parsing flags. Thread affinity: LOOP thread (start-up only). */
#include "srv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OFF(f) offsetof(dg_settings, f)
#define SZ(f)  sizeof(((dg_settings *)0)->f)

const dg_setting_def dg_settings_table[] = {
    {"listen", DG_SET_STRING, "127.0.0.1:8077", 0, 0, OFF(listen), SZ(listen),
     "HOST:PORT to listen on; port 0 picks a free port (printed on stdout). A non-loopback "
     "address needs token_file."},
    {"data_dir", DG_SET_STRING, "./dragond-data", 0, 0, OFF(data_dir), SZ(data_dir),
     "Directory for dragond.db, runs/<id>/ (config, tokenizer, checkpoints) and datasets/."},
    {"token_file", DG_SET_STRING, "", 0, 0, OFF(token_file), SZ(token_file),
     "File holding the bearer token (created with a random 256-bit token, mode 0600, if "
     "missing). Empty: no auth (loopback only)."},
    {"backend", DG_SET_STRING, "cpu", 0, 0, OFF(backend), SZ(backend),
     "Engine backend of the CPU device: cpu (OpenBLAS) or ref (naive reference)."},
    {"infer_device", DG_SET_STRING, "auto", 0, 0, OFF(infer_device), SZ(infer_device),
     "Where inference sessions and completions run: auto (the first GPU when the cuda backend "
     "finds one, else the CPU device), cpu, cuda (the first GPU) or cuda:N."},
    {"allowed_hosts", DG_SET_STRING, "", 0, 0, OFF(allowed_hosts), SZ(allowed_hosts),
     "Extra Host header names accepted besides loopback names and the listen host "
     "(comma separated); \"*\" turns the Host check off."},
    {"web_root", DG_SET_STRING, "clients/web", 0, 0, OFF(web_root), SZ(web_root),
     "Directory holding index.html served at /; relative paths are tried against the working "
     "directory, then against the directory above the executable's."},
    {"shakespeare_url", DG_SET_STRING,
     "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
     0, 0, OFF(shakespeare_url), SZ(shakespeare_url),
     "Where the dataset preset 'shakespeare' is downloaded from (sha256-checked)."},
    {"log_level", DG_SET_STRING, "info", 0, 0, OFF(log_level), SZ(log_level),
     "Minimum level of daemon log lines on stderr: debug, info, warn, error."},
    {"max_body_bytes", DG_SET_INT, "1048576", 1024, 1073741824, OFF(max_body_bytes), 0,
     "Largest request body accepted; larger ones get 413."},
    {"max_queued_jobs", DG_SET_INT, "64", 1, 100000, OFF(max_queued_jobs), 0,
     "Bound of the job queue; submissions beyond it get 503 with Retry-After."},
    {"max_connections", DG_SET_INT, "256", 4, 60000, OFF(max_connections), 0,
     "Most simultaneous HTTP connections (SSE streams included)."},
    {"connection_timeout_s", DG_SET_INT, "30", 1, 3600, OFF(connection_timeout_s), 0,
     "Idle connection timeout; also closes SSE peers that stop reading."},
    {"sse_ping_interval_s", DG_SET_INT, "15", 1, 3600, OFF(sse_ping_interval_s), 0,
     "Seconds between ': ping' comments on idle SSE streams."},
    {"sse_page_events", DG_SET_INT, "256", 1, 100000, OFF(sse_page_events), 0,
     "Events an SSE stream buffers at a time (read from SQLite page by page)."},
    {"sse_soft_limit_events", DG_SET_INT, "2000", 10, 10000000, OFF(sse_soft_limit_events), 0,
     "A stream further behind than this many events skips older progress/metric events."},
    {"shutdown_timeout_s", DG_SET_INT, "20", 1, 3600, OFF(shutdown_timeout_s), 0,
     "On SIGTERM/SIGINT: how long to wait for running jobs to checkpoint before exiting."},
    {"retry_after_s", DG_SET_INT, "10", 1, 3600, OFF(retry_after_s), 0,
     "Retry-After value sent with 503 responses."},
    {"download_timeout_s", DG_SET_INT, "120", 1, 86400, OFF(download_timeout_s), 0,
     "Limit for downloading a dataset preset."},
    {"resume_on_restart", DG_SET_BOOL, "true", 0, 0, OFF(resume_on_restart), 0,
     "Requeue training jobs interrupted by a daemon crash to resume from their last "
     "checkpoint (else they fail with daemon_restart)."},
};
const int dg_settings_count = (int)(sizeof dg_settings_table / sizeof dg_settings_table[0]);

static int set_from_text(dg_settings *s, const dg_setting_def *d, const char *text) {
    char *p = (char *)s + d->offset;
    switch (d->type) {
    case DG_SET_STRING: snprintf(p, d->size, "%s", text); return 0;
    case DG_SET_INT:    *(int64_t *)p = strtoll(text, NULL, 10); return 0;
    case DG_SET_DOUBLE: *(double *)p = strtod(text, NULL); return 0;
    case DG_SET_BOOL:   *(bool *)p = !strcmp(text, "true"); return 0;
    }
    return DG_EINVAL;
}

/* true when p is "cuda:N" (N a decimal device index); *idx gets N. */
bool dg_settings_cuda_index(const char *p, int *idx) {
    if (strncmp(p, "cuda:", 5) || !p[5]) return false;
    int v = 0;
    for (const char *c = p + 5; *c; c++) {
        if (*c < '0' || *c > '9' || v > 1000) return false;
        v = v * 10 + (*c - '0');
    }
    if (idx) *idx = v;
    return true;
}

void dg_settings_defaults(dg_settings *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < dg_settings_count; i++)
        set_from_text(s, &dg_settings_table[i], dg_settings_table[i].def);
}

int dg_settings_apply_json(dg_settings *s, const char *name, json_t *v, char *err, size_t n) {
    const dg_setting_def *d = NULL;
    for (int i = 0; i < dg_settings_count; i++)
        if (!strcmp(dg_settings_table[i].name, name)) d = &dg_settings_table[i];
    if (!d) {
        snprintf(err, n, "%s: unknown setting", name);
        return DG_EINVAL;
    }
    char *p = (char *)s + d->offset;
    switch (d->type) {
    case DG_SET_STRING:
        if (!json_is_string(v)) break;
        if (json_string_length(v) >= d->size) {
            snprintf(err, n, "%s: longer than %zu bytes", name, d->size - 1);
            return DG_EINVAL;
        }
        snprintf(p, d->size, "%s", json_string_value(v));
        if (!strcmp(name, "backend") && strcmp(p, "cpu") && strcmp(p, "ref") &&
            strcmp(p, "cuda")) {
            snprintf(err, n, "backend: must be cpu, ref or cuda, got '%s'", p);
            return DG_EINVAL;
        }
        if (!strcmp(name, "infer_device") && strcmp(p, "auto") && strcmp(p, "cpu") &&
            strcmp(p, "cuda") && !dg_settings_cuda_index(p, NULL)) {
            snprintf(err, n, "infer_device: must be auto, cpu, cuda or cuda:N, got '%s'", p);
            return DG_EINVAL;
        }
        if (!strcmp(name, "log_level") && strcmp(p, "debug") && strcmp(p, "info") &&
            strcmp(p, "warn") && strcmp(p, "error")) {
            snprintf(err, n, "log_level: must be debug, info, warn or error, got '%s'", p);
            return DG_EINVAL;
        }
        return 0;
    case DG_SET_INT: {
        if (!json_is_integer(v)) break;
        json_int_t x = json_integer_value(v);
        if ((double)x < d->min || (double)x > d->max) {
            snprintf(err, n, "%s: %lld is outside [%.0f, %.0f]", name, (long long)x, d->min,
                     d->max);
            return DG_EINVAL;
        }
        *(int64_t *)p = x;
        return 0;
    }
    case DG_SET_DOUBLE: {
        if (!json_is_number(v)) break;
        double x = json_number_value(v);
        if (!isfinite(x) || x < d->min || x > d->max) {
            snprintf(err, n, "%s: %g is outside [%g, %g]", name, x, d->min, d->max);
            return DG_EINVAL;
        }
        *(double *)p = x;
        return 0;
    }
    case DG_SET_BOOL:
        if (!json_is_boolean(v)) break;
        *(bool *)p = json_is_true(v);
        return 0;
    }
    static const char *const tn[] = {"an integer", "a number", "a string", "a boolean"};
    snprintf(err, n, "%s: must be %s", name, tn[d->type]);
    return DG_EINVAL;
}

int dg_settings_load_file(dg_settings *s, const char *path, char *err, size_t n) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, n, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return DG_EINVAL;
    }
    if (!json_is_object(root)) {
        snprintf(err, n, "%s: expected a JSON object of settings", path);
        json_decref(root);
        return DG_EINVAL;
    }
    const char *k;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, k, v) {
        if (k[0] == '_') continue;            /* "_doc", "_comment" */
        char e2[512];
        rc = dg_settings_apply_json(s, k, v, e2, sizeof e2);
        if (rc) {
            snprintf(err, n, "%s: %s", path, e2);
            break;
        }
    }
    json_decref(root);
    return rc;
}
