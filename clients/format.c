/* clients/format.c -- small text helpers of the `dragon` client: numbers, times, durations,
 * sizes, progress bars and sparklines, and JSON field access that tolerates nulls (the API
 * sends null for "not known yet").
 * Not here: HTTP, commands. Thread affinity: any thread (no state). */
#include "clients/client.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

json_t *dgc_get(json_t *o, const char *path) {
    char key[128];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof key) return NULL;
        memcpy(key, path, n);
        key[n] = 0;
        o = json_is_object(o) ? json_object_get(o, key) : NULL;
        path += n;
        if (*path == '.') path++;
    }
    return o && !json_is_null(o) ? o : NULL;
}

double dgc_num(json_t *v, double def) {
    if (json_is_integer(v)) return (double)json_integer_value(v);
    if (json_is_real(v)) return json_real_value(v);
    return def;
}

const char *dgc_str(json_t *v, const char *def) {
    return json_is_string(v) ? json_string_value(v) : def;
}

const char *dgc_fmt_num(char *buf, size_t n, json_t *v, const char *fmt) {
    if (!json_is_number(v)) snprintf(buf, n, "-");
    else snprintf(buf, n, fmt, dgc_num(v, 0));
    return buf;
}

const char *dgc_fmt_time(char *buf, size_t n, json_t *unix_s) {
    if (!json_is_number(unix_s)) { snprintf(buf, n, "-"); return buf; }
    time_t t = (time_t)dgc_num(unix_s, 0);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

const char *dgc_fmt_dur(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "-");
    else if (s < 60) snprintf(buf, n, "%.1fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else if (s < 86400) snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
    else snprintf(buf, n, "%dd%02dh", (int)(s / 86400), (int)fmod(s, 86400) / 3600);
    return buf;
}

const char *dgc_fmt_ago(char *buf, size_t n, json_t *unix_s) {
    if (!json_is_number(unix_s)) { snprintf(buf, n, "-"); return buf; }
    double d = (double)time(NULL) - dgc_num(unix_s, 0);
    char t[32];
    dgc_fmt_dur(t, sizeof t, d < 0 ? 0 : d);
    if (d < 60) snprintf(t, sizeof t, "%ds", (int)(d < 0 ? 0 : d));
    snprintf(buf, n, "%s ago", t);
    return buf;
}

const char *dgc_fmt_bytes(char *buf, size_t n, json_t *bytes) {
    if (!json_is_number(bytes)) { snprintf(buf, n, "-"); return buf; }
    double b = dgc_num(bytes, 0);
    static const char *const unit[] = {"B", "kB", "MB", "GB", "TB"};
    int u = 0;
    while (b >= 1000 && u < 4) { b /= 1000; u++; }
    snprintf(buf, n, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

const char *dgc_fmt_bar(char *buf, size_t n, double frac, int width) {
    if (!isfinite(frac) || frac < 0) frac = 0;
    if (frac > 1) frac = 1;
    int full = (int)(frac * width + 0.5);
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < width && off + 4 < n; i++) {
        const char *cell = i < full ? "\u2588" : "\u00b7";     /* █ and · */
        size_t l = strlen(cell);
        memcpy(buf + off, cell, l);
        off += l;
    }
    buf[off] = 0;
    return buf;
}

const char *dgc_fmt_spark(char *buf, size_t n, const double *vals, int count, int width) {
    static const char *const ticks[] = {"\u2581", "\u2582", "\u2583", "\u2584", "\u2585",
                                        "\u2586", "\u2587", "\u2588"};
    int start = count > width ? count - width : 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = start; i < count; i++) {
        if (!isfinite(vals[i])) continue;
        if (vals[i] < lo) lo = vals[i];
        if (vals[i] > hi) hi = vals[i];
    }
    size_t off = 0;
    buf[0] = 0;
    for (int i = start; i < count && off + 4 < n; i++) {
        int k = 0;
        if (isfinite(vals[i]) && hi > lo) k = (int)((vals[i] - lo) / (hi - lo) * 7 + 0.5);
        const char *t = isfinite(vals[i]) ? ticks[k] : " ";
        size_t l = strlen(t);
        memcpy(buf + off, t, l);
        off += l;
    }
    buf[off] = 0;
    return buf;
}

void dgc_print_json(json_t *v) {
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
    }
    free(s);                    /* jansson's buffer (libc allocator) */
}
