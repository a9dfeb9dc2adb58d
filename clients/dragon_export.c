/* clients/dragon_export.c -- the `dragon export` and `dragon pull` commands (deployment bundles):
 *
 *   dragon export CKPT [--format burnpack|safetensors] [--dtype f32|f16|bf16] [--parts-mib N]
 *                      [--out DIR] [--wait]
 *       POST /v1/exports; --wait polls until the export is done and lists its files; --out DIR
 *       (implies --wait) downloads every file into DIR and checks each sha256.
 *   dragon pull URL|PATH [--name N] [--no-wait]
 *       POST /v1/models/import {url | path, name}; waits and prints the model id (or the reason
 *       the import failed: which part, file or tensor).
 *
 * clients/dragon.c reaches these through dgc_export_dispatch (returns -1 for another command)
 * and prints their help lines with dgc_export_help.
 * Not here: the HTTP plumbing (clients/http.c). Thread affinity: single-threaded. */
#include "clients/client.h"
#include "clients/cmds.h"
#include "engine/dg.h"
#include "proto/sha256.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int  dgc_export_dispatch(dgc_ctx *c, const char *cmd, int argc, char **argv);
void dgc_export_help(FILE *f);

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls path until status is not one of the running ones; returns the final object. */
static json_t *poll_until_done(const dgc_ctx *c, const char *path, int *rc) {
    for (;;) {
        json_t *o = dgc_call(c, "GET", path, NULL, rc);
        if (!o) return NULL;
        const char *st = dgc_str(json_object_get(o, "status"), "?");
        if (strcmp(st, "queued") && strcmp(st, "running")) return o;
        json_decref(o);
        if (dgc_interrupted) {
            fprintf(stderr, "%s: interrupted (the daemon keeps going; poll %s)\n", c->prog,
                    path);
            *rc = DGC_EXIT_INTERRUPT;
            return NULL;
        }
        nap_ms(200);
    }
}

static size_t file_write(char *p, size_t sz, size_t nm, void *ud) {
    return fwrite(p, sz, nm, (FILE *)ud);
}

/* GET c->host + path into dst (via dst.part), then checks its sha256. */
static int download(const dgc_ctx *c, const char *path, const char *dst, const char *sha) {
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.part", dst);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "%s export: cannot write %s: %s\n", c->prog, tmp, strerror(errno));
        return DGC_EXIT_ERROR;
    }
    char url[2048], auth[600];
    snprintf(url, sizeof url, "%s%s", c->host, path);
    CURL *h = curl_easy_init();
    struct curl_slist *hd = NULL;
    if (c->token[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hd = curl_slist_append(hd, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, file_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    bool wrote = fclose(f) == 0;
    if (cc != CURLE_OK || !wrote) {
        fprintf(stderr, "%s export: GET %s: %s (HTTP %ld)\n", c->prog, path,
                curl_easy_strerror(cc), code);
        unlink(tmp);
        return DGC_EXIT_ERROR;
    }
    char hex[65], err[256];
    if (dg_sha256_file(tmp, hex, NULL, err, sizeof err) || strcmp(hex, sha)) {
        fprintf(stderr, "%s export: %s: sha256 %s, the daemon listed %s\n", c->prog, dst, hex,
                sha);
        unlink(tmp);
        return DGC_EXIT_ERROR;
    }
    if (rename(tmp, dst) != 0) {
        fprintf(stderr, "%s export: cannot rename %s: %s\n", c->prog, tmp, strerror(errno));
        return DGC_EXIT_ERROR;
    }
    return 0;
}

static void print_export(const dgc_ctx *c, json_t *o) {
    if (c->json) {
        dgc_print_json(o);
        return;
    }
    printf("export %s: %s (%s, %s)\n", dgc_str(json_object_get(o, "id"), "?"),
           dgc_str(json_object_get(o, "status"), "?"), dgc_str(json_object_get(o, "format"), "?"),
           dgc_str(json_object_get(o, "dtype"), "?"));
    json_t *err = json_object_get(o, "error");
    if (json_is_object(err))
        printf("  error: %s\n", dgc_str(json_object_get(err, "message"), "?"));
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(o, "files"), i, f) {
        char b[32];
        printf("  %-32s %10s  %s\n", dgc_str(json_object_get(f, "name"), "?"),
               dgc_fmt_bytes(b, sizeof b, json_object_get(f, "bytes")),
               dgc_str(json_object_get(f, "sha256"), "-"));
    }
}

static int cmd_export(dgc_ctx *c, int argc, char **argv) {
    const char *ckpt = NULL, *format = "burnpack", *dtype = NULL, *parts = NULL, *out = NULL;
    bool wait = false;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (dgc_opt(argc, argv, &i, "--format", "-f", &v, &miss)) format = v;
        else if (dgc_opt(argc, argv, &i, "--dtype", NULL, &v, &miss)) dtype = v;
        else if (dgc_opt(argc, argv, &i, "--parts-mib", NULL, &v, &miss)) parts = v;
        else if (dgc_opt(argc, argv, &i, "--out", "-o", &v, &miss)) out = v;
        else if (!strcmp(argv[i], "--wait") || !strcmp(argv[i], "-w")) wait = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            dgc_export_help(stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1])
            return dgc_usage(c, "export", "unknown option '%s'", argv[i]);
        else if (ckpt) return dgc_usage(c, "export", "unexpected argument '%s'", argv[i]);
        else ckpt = argv[i];
        if (miss) return dgc_usage(c, "export", "%s needs a value", argv[i]);
    }
    if (!ckpt)
        return dgc_usage(c, "export", "needs a checkpoint id (ckpt_..., or JOB:latest)%s", "");
    json_t *body = json_pack("{s:s, s:s}", "checkpoint_id", ckpt, "format", format);
    if (dtype) json_object_set_new(body, "dtype", json_string(dtype));
    if (parts) {
        char *end = NULL;
        double mib = strtod(parts, &end);
        if (!end || *end || !(mib > 0)) {
            json_decref(body);
            return dgc_usage(c, "export", "--parts-mib needs a positive number, got '%s'", parts);
        }
        json_object_set_new(body, "parts_mib", json_real(mib));
    }
    int rc = 0;
    json_t *o = dgc_call(c, "POST", "/v1/exports", body, &rc);
    json_decref(body);
    if (!o) return rc;
    char path[200];
    char *eid = dgc_escape(dgc_str(json_object_get(o, "id"), ""));
    snprintf(path, sizeof path, "/v1/exports/%s", eid);
    dg_free(eid);
    if (!wait && !out) {
        if (c->json) dgc_print_json(o);
        else printf("%s %s\n", dgc_str(json_object_get(o, "id"), "?"),
                    dgc_str(json_object_get(o, "status"), "?"));
        json_decref(o);
        return 0;
    }
    json_decref(o);
    o = poll_until_done(c, path, &rc);
    if (!o) return rc;
    bool ok = !strcmp(dgc_str(json_object_get(o, "status"), ""), "succeeded");
    if (!out || !ok) print_export(c, o);
    if (ok && out) {
        if (mkdir(out, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "%s export: cannot create %s: %s\n", c->prog, out, strerror(errno));
            json_decref(o);
            return DGC_EXIT_ERROR;
        }
        size_t i;
        json_t *f;
        json_array_foreach(json_object_get(o, "files"), i, f) {
            const char *name = dgc_str(json_object_get(f, "name"), "");
            if (!*name || strchr(name, '/')) continue;
            char dst[PATH_MAX];
            snprintf(dst, sizeof dst, "%s/%s", out, name);
            if ((rc = download(c, dgc_str(json_object_get(f, "url"), ""), dst,
                               dgc_str(json_object_get(f, "sha256"), ""))))
                break;
            if (!c->json) printf("%s\n", dst);
        }
        if (c->json && !rc) dgc_print_json(o);
    }
    json_decref(o);
    return rc ? rc : ok ? 0 : DGC_EXIT_ERROR;
}

static int cmd_pull(dgc_ctx *c, int argc, char **argv) {
    const char *src = NULL, *name = NULL;
    bool wait = true;
    for (int i = 0; i < argc; i++) {
        bool miss = false;
        const char *v = NULL;
        if (dgc_opt(argc, argv, &i, "--name", "-n", &v, &miss)) name = v;
        else if (!strcmp(argv[i], "--no-wait")) wait = false;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            dgc_export_help(stdout);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1])
            return dgc_usage(c, "pull", "unknown option '%s'", argv[i]);
        else if (src) return dgc_usage(c, "pull", "unexpected argument '%s'", argv[i]);
        else src = argv[i];
        if (miss) return dgc_usage(c, "pull", "%s needs a value", argv[i]);
    }
    if (!src) return dgc_usage(c, "pull", "needs a URL (or a path on the daemon's machine)%s", "");
    json_t *body = json_object();
    if (!strncmp(src, "http://", 7) || !strncmp(src, "https://", 8)) {
        json_object_set_new(body, "url", json_string(src));
    } else {
        char abs[PATH_MAX];
        /* a relative path means the same file to a daemon on this machine */
        bool rel = src[0] != '/' && realpath(src, abs);
        json_object_set_new(body, "path", json_string(rel ? abs : src));
    }
    if (name) json_object_set_new(body, "name", json_string(name));
    int rc = 0;
    json_t *o = dgc_call(c, "POST", "/v1/models/import", body, &rc);
    json_decref(body);
    if (!o) return rc;
    if (wait) {
        char path[200];
        char *iid = dgc_escape(dgc_str(json_object_get(o, "id"), ""));
        snprintf(path, sizeof path, "/v1/models/imports/%s", iid);
        dg_free(iid);
        json_decref(o);
        o = poll_until_done(c, path, &rc);
        if (!o) return rc;
    }
    const char *st = dgc_str(json_object_get(o, "status"), "?");
    if (c->json) {
        dgc_print_json(o);
    } else if (!strcmp(st, "succeeded")) {
        const char *note = dgc_str(json_object_get(o, "note"), "");
        printf("model %s ready%s%s%s\n", dgc_str(json_object_get(o, "model"), "?"),
               *note ? " (" : "", note, *note ? ")" : "");
    } else if (!strcmp(st, "failed")) {
        fprintf(stderr, "%s pull: %s\n", c->prog,
                dgc_str(json_object_get(json_object_get(o, "error"), "message"), "failed"));
    } else {
        printf("%s %s (model %s)\n", dgc_str(json_object_get(o, "id"), "?"), st,
               dgc_str(json_object_get(o, "name"), "?"));
    }
    rc = strcmp(st, "failed") ? 0 : DGC_EXIT_ERROR;
    json_decref(o);
    return rc;
}

int dgc_export_dispatch(dgc_ctx *c, const char *cmd, int argc, char **argv) {
    if (!strcmp(cmd, "export")) return cmd_export(c, argc, argv);
    if (!strcmp(cmd, "pull")) return cmd_pull(c, argc, argv);
    return -1;
}

void dgc_export_help(FILE *f) {
    fprintf(f,
            "  export    CKPT [--format burnpack|safetensors] [--dtype f32|f16|bf16]\n"
            "            [--parts-mib N] [--out DIR] [--wait]: export a checkpoint (ckpt_... or\n"
            "            JOB:latest) as a deployment bundle; --out downloads and checks the files\n"
            "  pull      URL|PATH [--name N] [--no-wait]: import a .bpk (parts preferred),\n"
            "            .bpk.parts.json or .safetensors as a servable model\n");
}
