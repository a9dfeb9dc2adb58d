/* tests/integration/test_exports.c -- deployment bundles through a real dragond on 127.0.0.1:
 * a tiny run trained by a job, POST /v1/exports (burnpack f32 / f16 / bf16 with parts,
 * safetensors), the listing with sizes and sha256, file downloads with Range (206, 416), ETag and
 * If-None-Match, POST /v1/models/import from dragond's own export URL (parts preferred, cache
 * reused, a resumed .partial) and from a path; the imported model equals the checkpoint (f32:
 * identical parameters and greedy tokens; f16 / bf16: parameters equal to the rounded values,
 * logits within 1e-2 / 4e-2 of the largest logit), parts reassemble to the single file's tensors,
 * and every integrity failure (part missing, flipped byte, manifest sha256 or size wrong,
 * truncated file, tensor shapes that do not fit the config) fails the import with a message that
 * names it and leaves no model behind; the `dragon export` / `dragon pull` commands (skipped
 * with a message when the client binary lacks them). With inference routes present, the imports
 * are listed by GET /v1/models, serve sessions, and greedy completions of the f32 import equal the
 * original checkpoint's. Bundles tampered with on disk are served by dragond when their size is
 * unchanged, and otherwise by a plain static HTTP server (python3 -m http.server, skipped with a
 * message when python3 is absent). Downloads are retried with back-off (nothing listening: 4
 * attempts) but a 404 is not.
 * Thread affinity: single-threaded tests (Check fork mode). */
#include "daemon_util.h"

#include "engine/ckpt.h"
#include "engine/model.h"
#include "proto/burnpack.h"
#include "proto/parts.h"
#include "proto/sha256.h"
#include "server/exports.h"

static dgd D;
static char g_text[700];

static void setup(void) {
    dgd_init(&D, "dexp");
    dgd_write_text(D.dir, "text.txt", 6000, g_text, sizeof g_text);
    ck_assert_int_eq(dgd_start(&D, NULL), 0);
}
static void teardown(void) {
    if (D.pid > 0) dgd_stop(&D, SIGKILL, 5);
}

/* ---- helpers --------------------------------------------------------------------------------- */
typedef struct {
    long   status;
    char  *body;
    size_t len;
    char   etag[100], crange[100];
    long   clen;
} xresp;

static size_t x_write(char *p, size_t sz, size_t nm, void *ud) {
    xresp *r = ud;
    size_t n = sz * nm;
    r->body = realloc(r->body, r->len + n + 1);
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = 0;
    return n;
}
static size_t x_hdr(char *p, size_t sz, size_t nm, void *ud) {
    xresp *r = ud;
    size_t n = sz * nm;
    if (n > 5 && !strncasecmp(p, "ETag:", 5))
        snprintf(r->etag, sizeof r->etag, "%.*s", (int)strcspn(p + 6, "\r\n"), p + 6);
    if (n > 14 && !strncasecmp(p, "Content-Range:", 14))
        snprintf(r->crange, sizeof r->crange, "%.*s", (int)strcspn(p + 15, "\r\n"), p + 15);
    if (n > 15 && !strncasecmp(p, "Content-Length:", 15)) r->clen = atol(p + 15);
    return n;
}
/* GET base+path with an optional extra header; bytes and headers. */
static long xget(const char *url, const char *hdr, xresp *r) {
    memset(r, 0, sizeof *r);
    r->clen = -1;
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    if (hdr) h = curl_slist_append(h, hdr);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, x_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, x_hdr);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return r->status;
}

static char g_rerr[256];
static char *read_all(const char *path, size_t *n) {
    char *buf = NULL;
    int rc = dg_read_file(path, &buf, n, g_rerr, sizeof g_rerr);
    ck_assert_msg(rc == 0, "%s", g_rerr);
    return buf;
}

/* Trains a tiny run (20 steps) and returns its newest checkpoint id and path. */
static void train_tiny(char ckid[64], char ckpath[1024]) {
    char body[1200];
    snprintf(body, sizeof body, "{\"name\":\"exp\",\"config\":{\"preset\":\"tiny\",\"training\":"
             "{\"max_steps\":20}},\"data\":{\"path\":\"%s\"}}", g_text);
    const char *id0 = dgd_submit(&D, body);
    ck_assert_ptr_nonnull(id0);
    char id[64];
    snprintf(id, sizeof id, "%s", id0);
    ck_assert_msg(dgd_wait(&D, id, "succeeded", 0, 120), "training did not succeed");
    char p[200];
    snprintf(p, sizeof p, "/v1/runs/%s/checkpoints", id);
    json_t *l = dgd_get_json(&D, p);
    ck_assert_ptr_nonnull(l);
    json_t *data = json_object_get(l, "data");
    ck_assert_int_ge(json_array_size(data), 1);
    json_t *last = json_array_get(data, json_array_size(data) - 1);
    snprintf(ckid, 64, "%s", json_string_value(json_object_get(last, "id")));
    snprintf(ckpath, 1024, "%s", json_string_value(json_object_get(last, "path")));
    json_decref(l);
}

/* POST /v1/exports and wait; returns the export object (caller decrefs). */
static json_t *export_wait(const char *ckid, const char *format, const char *dtype,
                           double parts_mib) {
    char body[400];
    if (parts_mib > 0)
        snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"format\":\"%s\",\"dtype\":\"%s\","
                 "\"parts_mib\":%g}", ckid, format, dtype, parts_mib);
    else
        snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"format\":\"%s\",\"dtype\":\"%s\"}",
                 ckid, format, dtype);
    dgd_resp r;
    dgd_http(&D, "POST", "/v1/exports", body, -1, NULL, &r);
    ck_assert_msg(r.status == 202, "POST /v1/exports -> %ld %s", r.status, r.body);
    char id[64], p[200];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(r.json, "id")));
    ck_assert(!strncmp(id, "exp_", 4));
    dgd_resp_free(&r);
    snprintf(p, sizeof p, "/v1/exports/%s", id);
    double t_end = dgd_now() + 60;
    for (;;) {
        json_t *o = dgd_get_json(&D, p);
        ck_assert_ptr_nonnull(o);
        const char *st = json_string_value(json_object_get(o, "status"));
        if (!strcmp(st, "succeeded")) return o;
        ck_assert_msg(strcmp(st, "failed"), "export failed: %s",
                      json_dumps(json_object_get(o, "error"), 0));
        json_decref(o);
        ck_assert_msg(dgd_now() < t_end, "export did not finish");
        dgd_sleep_ms(50);
    }
}

/* POST /v1/models/import and wait; returns the final import object. */
static json_t *import_wait(const char *field, const char *src, const char *name) {
    char body[1500];
    snprintf(body, sizeof body, "{\"%s\":\"%s\",\"name\":\"%s\"}", field, src, name);
    dgd_resp r;
    dgd_http(&D, "POST", "/v1/models/import", body, -1, NULL, &r);
    ck_assert_msg(r.status == 202, "POST /v1/models/import -> %ld %s", r.status, r.body);
    char p[200];
    snprintf(p, sizeof p, "/v1/models/imports/%s",
             json_string_value(json_object_get(r.json, "id")));
    dgd_resp_free(&r);
    double t_end = dgd_now() + 60;
    for (;;) {
        json_t *o = dgd_get_json(&D, p);
        ck_assert_ptr_nonnull(o);
        if (strcmp(json_string_value(json_object_get(o, "status")), "running")) return o;
        json_decref(o);
        ck_assert_msg(dgd_now() < t_end, "import did not finish");
        dgd_sleep_ms(50);
    }
}

static const char *imp_error(json_t *o) {
    return json_string_value(json_object_get(json_object_get(o, "error"), "message"));
}

/* An import that must fail with a message containing want1 and want2; no model is left. */
static void import_fails(const char *field, const char *src, const char *name, const char *want1,
                         const char *want2) {
    json_t *o = import_wait(field, src, name);
    const char *msg = imp_error(o);
    ck_assert_msg(!strcmp(json_string_value(json_object_get(o, "status")), "failed") && msg &&
                  strstr(msg, want1) && (!want2 || strstr(msg, want2)),
                  "import of %s: status %s, error '%s' (wanted '%s' / '%s')", src,
                  json_string_value(json_object_get(o, "status")), msg ? msg : "(none)", want1,
                  want2 ? want2 : "");
    printf("  %s: failed as expected: %s\n", name, msg);
    json_decref(o);
    char p[900];
    snprintf(p, sizeof p, "%s/data/models/%s", D.dir, name);
    ck_assert_msg(access(p, F_OK) != 0, "a failed import left %s", p);
    dgd_resp q;
    if (dgd_http(&D, "GET", "/v1/models", NULL, 0, NULL, &q) == 200) {
        char quoted[80];
        snprintf(quoted, sizeof quoted, "\"%s\"", name);
        ck_assert_msg(!strstr(q.body, quoted), "failed import %s is listed: %s", name, q.body);
    }
    dgd_resp_free(&q);
}

static const char *file_sha(json_t *exp, const char *name) {
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(exp, "files"), i, f)
        if (!strcmp(json_string_value(json_object_get(f, "name")), name))
            return json_string_value(json_object_get(f, "sha256"));
    return NULL;
}

/* Greedy tokens (and the logits after the prompt) of a checkpoint through the engine. */
static void greedy(const dg_ckpt *ck, const int32_t *prompt, int np, int steps, int32_t *out,
                   float *logits0) {
    dg_backend_t *be;
    ck_assert_int_eq(dg_backend_open("cpu", NULL, &be), 0);
    dg_model_t *m;
    ck_assert_int_eq(dg_model_create(be, &ck->model, &m), 0);
    ck_assert_int_eq(dg_model_set_params(m, ck->params), 0);
    dg_infer_t *ix;
    ck_assert_int_eq(dg_infer_create(m, 1, 64, &ix), 0);
    dg_state_t *s;
    ck_assert_int_eq(dg_state_create(m, &s), 0);
    int V = ck->model.vocab_size;
    float *lg = malloc((size_t)V * sizeof(float));
    ck_assert_int_eq(dg_infer_prefill(ix, s, prompt, np, lg), 0);
    memcpy(logits0, lg, (size_t)V * sizeof(float));
    for (int t = 0; t < steps; t++) {
        int best = 0;
        for (int v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
        out[t] = best;
        ck_assert_int_eq(dg_infer_step(ix, 1, &s, &out[t], lg), 0);
    }
    free(lg);
    dg_state_free(s);
    dg_infer_free(ix);
    dg_model_free(m);
    dg_backend_close(be);
}

static float round_as(float v, const char *dtype) {
    if (!strcmp(dtype, "f16")) return dg_f16_to_f32(dg_f32_to_f16(v));
    if (!strcmp(dtype, "bf16")) return dg_bf16_to_f32(dg_f32_to_bf16(v));
    return v;
}

/* ---- tests ----------------------------------------------------------------------------------- */
START_TEST(export_import_generation) {
    char ckid[64], ckpath[1024], err[512];
    train_tiny(ckid, ckpath);
    dg_ckpt orig;
    ck_assert_msg(dg_ckpt_read(ckpath, false, &orig, err, sizeof err) == 0, "%s", err);
    int32_t prompt[8];
    size_t np = 0;
    int32_t *ids = NULL;
    ck_assert_int_eq(dg_tokenizer_encode(orig.tokenizer, "the ", 4, false, &ids, &np, err,
                                         sizeof err), 0);
    memcpy(prompt, ids, np * sizeof *ids);
    dg_free(ids);
    int V = orig.model.vocab_size;
    int32_t want[24], got[24];
    float *l0 = malloc((size_t)V * sizeof(float)), *l1 = malloc((size_t)V * sizeof(float));
    greedy(&orig, prompt, (int)np, 24, want, l0);

    static const char *const dts[3] = {"f32", "f16", "bf16"};
    static const double tol[3] = {0, 1e-2, 4e-2};
    for (int k = 0; k < 3; k++) {
        json_t *e = export_wait(ckid, "burnpack", dts[k], 0.02);    /* ~20 KB parts */
        const char *eid = json_string_value(json_object_get(e, "id"));
        json_t *files = json_object_get(e, "files");
        ck_assert_str_eq(json_string_value(json_object_get(e, "manifest")),
                         "model.bpk.parts.json");
        ck_assert_int_ge(json_array_size(files), 4);              /* mono + manifest + >= 2 */
        /* every listed file: served bytes hash to the listed sha256, ETag and length agree */
        size_t i;
        json_t *f;
        json_array_foreach(files, i, f) {
            char url[600];
            snprintf(url, sizeof url, "%s%s", D.base,
                     json_string_value(json_object_get(f, "url")));
            xresp r;
            ck_assert_int_eq(xget(url, NULL, &r), 200);
            uint8_t dig[32];
            char hex[65], quoted[80];
            dg_sha256(r.body, r.len, dig);
            dg_sha256_hex(dig, hex);
            ck_assert_str_eq(hex, json_string_value(json_object_get(f, "sha256")));
            ck_assert_int_eq((long long)r.len, json_integer_value(json_object_get(f, "bytes")));
            ck_assert_int_eq(r.clen, (long)r.len);
            snprintf(quoted, sizeof quoted, "\"%s\"", hex);
            ck_assert_str_eq(r.etag, quoted);
            free(r.body);
        }
        /* parts reassemble to the single file's tensors, byte for byte */
        char mono[900], man[900];
        snprintf(mono, sizeof mono, "%s/data/exports/%s/model.bpk", D.dir, eid);
        snprintf(man, sizeof man, "%s.parts.json", mono);
        dg_bpk_t *b;
        dg_parts_t *p;
        ck_assert_msg(dg_bpk_open(mono, &b, err, sizeof err) == 0, "%s", err);
        ck_assert_msg(dg_parts_open(man, true, &p, err, sizeof err) == 0, "%s", err);
        ck_assert_int_ge(dg_parts_n_parts(p), 2);
        ck_assert_int_eq(dg_parts_n_tensors(p), dg_bpk_n_tensors(b));
        for (int t = 0; t < dg_bpk_n_tensors(b); t++) {
            const dg_bpk_tensor *a = dg_bpk_tensor_at(b, t);
            dg_bpk_t *pp;
            int pi;
            ck_assert_int_ge(dg_parts_find(p, a->name, &pp, &pi), 0);
            const dg_bpk_tensor *c = dg_bpk_tensor_at(pp, pi);
            ck_assert_str_eq(a->dtype, c->dtype);
            ck_assert_int_eq(a->ndim, c->ndim);
            ck_assert(!memcmp(a->shape, c->shape, sizeof a->shape));
            ck_assert_int_eq(a->nbytes, c->nbytes);
            char *x = malloc(a->nbytes + 1), *y = malloc(a->nbytes + 1);
            ck_assert_int_eq(dg_bpk_read_raw(b, t, 0, x, a->nbytes, err, sizeof err), 0);
            ck_assert_int_eq(dg_bpk_read_raw(pp, pi, 0, y, c->nbytes, err, sizeof err), 0);
            ck_assert_msg(!memcmp(x, y, a->nbytes), "tensor %s differs between parts and "
                          "the single file", a->name);
            free(x);
            free(y);
        }
        ck_assert_str_eq(dg_bpk_meta_get(b, "precision"), dts[k]);
        dg_parts_close(p);
        dg_bpk_close(b);
        /* import from dragond's own URL (the parts are preferred) */
        char url[600], name[32];
        snprintf(url, sizeof url, "%s/v1/exports/%s/files/model.bpk", D.base, eid);
        snprintf(name, sizeof name, "m_%s", dts[k]);
        json_t *o = import_wait("url", url, name);
        ck_assert_msg(!strcmp(json_string_value(json_object_get(o, "status")), "succeeded"),
                      "import failed: %s", imp_error(o));
        ck_assert_str_eq(json_string_value(json_object_get(o, "model")), name);
        ck_assert_msg(strstr(json_string_value(json_object_get(o, "note")), "part(s) downloaded"),
                      "%s", json_string_value(json_object_get(o, "note")));
        json_decref(o);
        /* the imported model: parameters, then generation */
        char dck[900];
        snprintf(dck, sizeof dck, "%s/data/models/%s/model.dck", D.dir, name);
        dg_ckpt im;
        ck_assert_msg(dg_ckpt_read(dck, false, &im, err, sizeof err) == 0, "%s", err);
        ck_assert_int_eq(im.n_params, orig.n_params);
        for (int64_t j = 0; j < orig.n_params; j++)
            ck_assert_msg(im.params[j] == round_as(orig.params[j], dts[k]),
                          "%s param %lld: %g vs %g", dts[k], (long long)j, im.params[j],
                          orig.params[j]);
        greedy(&im, prompt, (int)np, 24, got, l1);
        if (k == 0) {
            ck_assert(!memcmp(got, want, sizeof want));
            ck_assert(!memcmp(l0, l1, (size_t)V * sizeof(float)));
        } else {
            double mx = 0, md = 0;
            int agree = 0;
            for (int v = 0; v < V; v++) {
                if (fabs(l0[v]) > mx) mx = fabs(l0[v]);
                if (fabs(l0[v] - l1[v]) > md) md = fabs(l0[v] - l1[v]);
            }
            for (int t = 0; t < 24; t++) agree += got[t] == want[t];
            printf("%s: max |logit diff| %.3g of max |logit| %.3g; %d/24 greedy tokens agree\n",
                   dts[k], md, mx, agree);
            ck_assert_msg(md <= tol[k] * mx, "%s logits differ by %g (max %g)", dts[k], md, mx);
        }
        dg_ckpt_free(&im);
        json_decref(e);
    }
    /* the same URL again comes from the cache */
    {
        json_t *e = export_wait(ckid, "burnpack", "f32", 0.02);
        char url[600];
        snprintf(url, sizeof url, "%s/v1/exports/%s/files/model.bpk", D.base,
                 json_string_value(json_object_get(e, "id")));
        json_t *o = import_wait("url", url, "again1");
        ck_assert_str_eq(json_string_value(json_object_get(o, "status")), "succeeded");
        json_decref(o);
        o = import_wait("url", url, "again2");
        ck_assert_str_eq(json_string_value(json_object_get(o, "status")), "succeeded");
        ck_assert_str_eq(json_string_value(json_object_get(o, "note")), "cache hit (parts)");
        json_decref(o);
        /* the name is taken now */
        dgd_resp r;
        char body[800];
        snprintf(body, sizeof body, "{\"url\":\"%s\",\"name\":\"again2\"}", url);
        ck_assert_int_eq(dgd_http(&D, "POST", "/v1/models/import", body, -1, NULL, &r), 409);
        ck_assert_str_eq(dgd_err_code(&r, NULL, 0), "model_exists");
        dgd_resp_free(&r);
        json_decref(e);
    }
    /* safetensors: export, import by path, same parameters */
    {
        json_t *e = export_wait(ckid, "safetensors", "f32", 0);
        ck_assert_int_eq(json_array_size(json_object_get(e, "files")), 1);
        char path[900];
        snprintf(path, sizeof path, "%s/data/exports/%s/model.safetensors", D.dir,
                 json_string_value(json_object_get(e, "id")));
        json_t *o = import_wait("path", path, "m_st");
        ck_assert_msg(!strcmp(json_string_value(json_object_get(o, "status")), "succeeded"),
                      "%s", imp_error(o));
        json_decref(o);
        char dck[900];
        snprintf(dck, sizeof dck, "%s/data/models/m_st/model.dck", D.dir);
        dg_ckpt im;
        ck_assert_msg(dg_ckpt_read(dck, false, &im, err, sizeof err) == 0, "%s", err);
        ck_assert(!memcmp(im.params, orig.params, (size_t)orig.n_params * sizeof(float)));
        dg_ckpt_free(&im);
        json_decref(e);
    }
    /* over HTTP: the imported models are listed and serve completions and sessions; greedy
     * completions of the f32 import equal those of the original checkpoint */
    dgd_resp q;
    dgd_http(&D, "GET", "/v1/models", NULL, 0, NULL, &q);
    if (q.status == 404) {
        printf("SKIP the /v1/models part of export_import_generation: no inference routes\n");
        dgd_resp_free(&q);
    } else {
        ck_assert_int_eq(q.status, 200);
        static const char *const names[] = {"m_f32", "m_f16", "m_bf16", "m_st"};
        for (int k = 0; k < 4; k++) {
            bool listed = false;
            size_t i;
            json_t *m;
            json_array_foreach(json_object_get(q.json, "data"), i, m)
                listed |= !strcmp(json_string_value(json_object_get(m, "id")), names[k]);
            ck_assert_msg(listed, "%s is not in GET /v1/models: %s", names[k], q.body);
        }
        dgd_resp_free(&q);
        char text[2][4096];
        const char *models[2] = {ckid, "m_f32"};
        for (int k = 0; k < 2; k++) {
            char body[400];
            snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"the \","
                     "\"max_tokens\":24,\"temperature\":0}", models[k]);
            dgd_http(&D, "POST", "/v1/completions", body, -1, NULL, &q);
            ck_assert_msg(q.status == 200, "completions on %s -> %ld %s", models[k], q.status,
                          q.body);
            const char *t = json_string_value(json_object_get(
                json_array_get(json_object_get(q.json, "choices"), 0), "text"));
            ck_assert_ptr_nonnull(t);
            snprintf(text[k], sizeof text[k], "%s", t);
            dgd_resp_free(&q);
        }
        ck_assert_str_eq(text[0], text[1]);
        /* a greedy decode of the token ids we computed through the engine matches too */
        char *dec = NULL;
        size_t dl = 0;
        ck_assert_int_eq(dg_tokenizer_decode(orig.tokenizer, want, 24, &dec, &dl), 0);
        ck_assert_msg(!strncmp(text[1], dec, strlen(text[1])), "'%s' vs engine '%s'", text[1],
                      dec);
        dg_free(dec);
        for (int k = 1; k < 4; k++) {
            char body[400];
            snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"the \"}", names[k]);
            dgd_http(&D, "POST", "/v1/sessions", body, -1, NULL, &q);
            ck_assert_msg(q.status == 200 || q.status == 201, "session on %s -> %ld %s",
                          names[k], q.status, q.body);
            dgd_resp_free(&q);
        }
    }
    free(l0);
    free(l1);
    dg_ckpt_free(&orig);
}
END_TEST

START_TEST(ranges_etag_and_errors) {
    char ckid[64], ckpath[1024];
    train_tiny(ckid, ckpath);
    json_t *e = export_wait(ckid, "burnpack", "f16", 0);
    const char *eid = json_string_value(json_object_get(e, "id"));
    const char *sha = file_sha(e, "model.bpk");
    char url[600], path[900], quoted[80];
    snprintf(url, sizeof url, "%s/v1/exports/%s/files/model.bpk", D.base, eid);
    snprintf(path, sizeof path, "%s/data/exports/%s/model.bpk", D.dir, eid);
    snprintf(quoted, sizeof quoted, "\"%s\"", sha);
    size_t n;
    char *bytes = read_all(path, &n);
    xresp r;
    /* bytes=a-b */
    ck_assert_int_eq(xget(url, "Range: bytes=10-265", &r), 206);
    ck_assert_int_eq(r.len, 256);
    ck_assert(!memcmp(r.body, bytes + 10, 256));
    char cr[100];
    snprintf(cr, sizeof cr, "bytes 10-265/%zu", n);
    ck_assert_str_eq(r.crange, cr);
    ck_assert_str_eq(r.etag, quoted);
    free(r.body);
    /* bytes=a- (a resumed download) and bytes=-n (the tail) */
    ck_assert_int_eq(xget(url, "Range: bytes=1000-", &r), 206);
    ck_assert_int_eq(r.len, n - 1000);
    ck_assert(!memcmp(r.body, bytes + 1000, n - 1000));
    free(r.body);
    ck_assert_int_eq(xget(url, "Range: bytes=-7", &r), 206);
    ck_assert_int_eq(r.len, 7);
    ck_assert(!memcmp(r.body, bytes + n - 7, 7));
    free(r.body);
    /* an end past the file is clipped; a start past it is 416 */
    ck_assert_int_eq(xget(url, "Range: bytes=5-999999999", &r), 206);
    ck_assert_int_eq(r.len, n - 5);
    free(r.body);
    char h[100];
    snprintf(h, sizeof h, "Range: bytes=%zu-", n);
    ck_assert_int_eq(xget(url, h, &r), 416);
    snprintf(cr, sizeof cr, "bytes */%zu", n);
    ck_assert_str_eq(r.crange, cr);
    free(r.body);
    /* If-None-Match with the ETag: 304; If-Range with another ETag: the whole file */
    snprintf(h, sizeof h, "If-None-Match: %s", quoted);
    ck_assert_int_eq(xget(url, h, &r), 304);
    free(r.body);
    /* the other errors */
    char u2[700];
    snprintf(u2, sizeof u2, "%s/v1/exports/%s/files/nope.bpk", D.base, eid);
    ck_assert_int_eq(xget(u2, NULL, &r), 404);
    free(r.body);
    snprintf(u2, sizeof u2, "%s/v1/exports/exp_missing/files/model.bpk", D.base);
    ck_assert_int_eq(xget(u2, NULL, &r), 404);
    free(r.body);
    dgd_resp q;
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", "{\"checkpoint_id\":\"ckpt_nope\"}", -1,
                              NULL, &q), 404);
    ck_assert_str_eq(dgd_err_code(&q, NULL, 0), "checkpoint_not_found");
    dgd_resp_free(&q);
    char body[300];
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"format\":\"gguf\"}", ckid);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, NULL, &q), 422);
    dgd_resp_free(&q);
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"format\":\"safetensors\","
             "\"parts_mib\":1}", ckid);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, NULL, &q), 422);
    dgd_resp_free(&q);
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"dtype\":\"f8\"}", ckid);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, NULL, &q), 400);
    dgd_resp_free(&q);
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"bogus\":1}", ckid);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, NULL, &q), 400);
    ck_assert_str_eq(dgd_err_code(&q, NULL, 0), "unknown_field");
    dgd_resp_free(&q);
    /* Idempotency-Key: same body -> same export; other body -> 409 */
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\"}", ckid);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, "Idempotency-Key: k1", &q),
                     202);
    char first[64];
    snprintf(first, sizeof first, "%s", json_string_value(json_object_get(q.json, "id")));
    dgd_resp_free(&q);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, "Idempotency-Key: k1", &q),
                     200);
    ck_assert_str_eq(json_string_value(json_object_get(q.json, "id")), first);
    dgd_resp_free(&q);
    snprintf(body, sizeof body, "{\"checkpoint_id\":\"%s\",\"dtype\":\"bf16\"}", ckid);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/exports", body, -1, "Idempotency-Key: k1", &q),
                     409);
    dgd_resp_free(&q);
    /* the list has them, newest first */
    json_t *l = dgd_get_json(&D, "/v1/exports");
    ck_assert_ptr_nonnull(l);
    ck_assert_int_ge(json_array_size(json_object_get(l, "data")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(l, "data"),
                                                                      0), "id")), first);
    json_decref(l);
    dg_free(bytes);
    json_decref(e);
}
END_TEST

/* Copies every file of an export into dir (for tampering). */
static void copy_export(json_t *e, const char *dir) {
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(e, "files"), i, f) {
        char src[900], dst[900], err[256];
        snprintf(src, sizeof src, "%s/data/exports/%s/%s", D.dir,
                 json_string_value(json_object_get(e, "id")),
                 json_string_value(json_object_get(f, "name")));
        snprintf(dst, sizeof dst, "%s/%s", dir, json_string_value(json_object_get(f, "name")));
        size_t n;
        char *b = read_all(src, &n);
        ck_assert_int_eq(dg_write_atomic(dst, b, n, err, sizeof err), 0);
        dg_free(b);
    }
}

static void flip_byte(const char *path, long off) {
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, off, off < 0 ? SEEK_END : SEEK_SET);
    int c = fgetc(f);
    fseek(f, off < 0 ? -1 : off, off < 0 ? SEEK_CUR : SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

/* Rewrites text in a file keeping its length (from -> to, same length). */
static void replace_in_file(const char *path, const char *from, const char *to) {
    ck_assert_int_eq(strlen(from), strlen(to));
    size_t n;
    char *b = read_all(path, &n), err[256];
    size_t fl = strlen(from), at = 0;
    while (at + fl <= n && memcmp(b + at, from, fl)) at++;
    ck_assert_msg(at + fl <= n, "'%s' not in %s", from, path);
    for (size_t i = 0; i < fl; i++) b[at + i] = to[i];
    ck_assert_int_eq(dg_write_atomic(path, b, n, err, sizeof err), 0);
    dg_free(b);
}

/* python3 -m http.server on a free port serving dir; returns its pid (0 = unavailable). */
static pid_t static_server(const char *dir, int *port) {
    int pfd[2];
    if (system("python3 -c 'import http.server' >/dev/null 2>&1") != 0) return 0;
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 2);
        close(pfd[0]);
        execlp("python3", "python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
               "--directory", dir, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[300] = "";
    size_t len = 0;
    double t_end = dgd_now() + 10;
    while (dgd_now() < t_end && len < sizeof line - 1) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        if (read(pfd[0], line + len, 1) <= 0) break;
        if (line[len++] == '\n') break;
    }
    line[len] = 0;
    close(pfd[0]);
    const char *at = strstr(line, " port ");
    if (!at) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 0;
    }
    *port = atoi(at + 6);
    return pid;
}

START_TEST(integrity_failures) {
    char ckid[64], ckpath[1024], err[512];
    train_tiny(ckid, ckpath);
    json_t *e = export_wait(ckid, "burnpack", "f32", 0.02);
    const char *eid = json_string_value(json_object_get(e, "id"));
    char edir[800], url[700], p[1000];
    snprintf(edir, sizeof edir, "%s/data/exports/%s", D.dir, eid);
    snprintf(url, sizeof url, "%s/v1/exports/%s/files/model.bpk", D.base, eid);

    /* 1. a resumed download: a correct .partial prefix completes, a wrong one is caught */
    {
        char mono_url[700], hex[65], cdir[1000];
        uint8_t dig[32];
        snprintf(mono_url, sizeof mono_url, "%s", url);
        dg_sha256(mono_url, strlen(mono_url), dig);
        dg_sha256_hex(dig, hex);
        snprintf(cdir, sizeof cdir, "%s/data/cache/models/%.16s", D.dir, hex);
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "mkdir -p %s", cdir);
        ck_assert_int_eq(system(cmd), 0);
        snprintf(p, sizeof p, "%s/model.bpk.part-00000.bpk", edir);
        size_t n;
        char *b = read_all(p, &n);
        snprintf(p, sizeof p, "%s/model.bpk.part-00000.bpk.partial", cdir);
        b[100] ^= 0x01;                                       /* wrong prefix */
        ck_assert_int_eq(dg_write_atomic(p, b, n / 2, err, sizeof err), 0);
        import_fails("url", url, "resumed_bad", "part 0", "sha256 mismatch");
        b[100] ^= 0x01;                                       /* right prefix */
        ck_assert_int_eq(dg_write_atomic(p, b, n / 2, err, sizeof err), 0);
        json_t *o = import_wait("url", url, "resumed_ok");
        ck_assert_msg(!strcmp(json_string_value(json_object_get(o, "status")), "succeeded"),
                      "%s", imp_error(o));
        json_decref(o);
        dg_free(b);
    }
    /* 2. served by dragond: a flipped byte in a part, then a part missing */
    json_t *e2 = export_wait(ckid, "burnpack", "f32", 0.02);
    const char *eid2 = json_string_value(json_object_get(e2, "id"));
    snprintf(url, sizeof url, "%s/v1/exports/%s/files/model.bpk", D.base, eid2);
    snprintf(p, sizeof p, "%s/data/exports/%s/model.bpk.part-00001.bpk", D.dir, eid2);
    flip_byte(p, 300);
    import_fails("url", url, "flipped", "part 1", "sha256 mismatch");
    ck_assert_int_eq(unlink(p), 0);
    import_fails("url", url, "missing_part", "part 1", "missing");
    /* a flipped byte in a single safetensors file: the ETag (its sha256) catches it */
    json_t *e3 = export_wait(ckid, "safetensors", "f32", 0);
    snprintf(p, sizeof p, "%s/data/exports/%s/model.safetensors", D.dir,
             json_string_value(json_object_get(e3, "id")));
    flip_byte(p, -5);
    snprintf(url, sizeof url, "%s/v1/exports/%s/files/model.safetensors", D.base,
             json_string_value(json_object_get(e3, "id")));
    import_fails("url", url, "flipped_st", "sha256 mismatch", "ETag");

    /* 3. a plain static server for bundles whose sizes changed */
    char sdir[800];
    snprintf(sdir, sizeof sdir, "%s/static", D.dir);
    ck_assert_int_eq(mkdir(sdir, 0755), 0);
    int port = 0;
    pid_t srv = static_server(sdir, &port);
    if (!srv) {
        printf("SKIP part of integrity_failures: python3 http.server is not available\n");
    } else {
        char base[100], sub[900];
        snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
        const char *cases[] = {"trunc_part", "man_sha", "no_part", "trunc_mono", "shapes"};
        for (int k = 0; k < 5; k++) {
            snprintf(sub, sizeof sub, "%s/%s", sdir, cases[k]);
            ck_assert_int_eq(mkdir(sub, 0755), 0);
            copy_export(e, sub);
        }
        char man[1000], part0[1000];
        /* a truncated part (the manifest promises more bytes) */
        snprintf(part0, sizeof part0, "%s/trunc_part/model.bpk.part-00000.bpk", sdir);
        ck_assert_int_eq(truncate(part0, 1000), 0);
        snprintf(url, sizeof url, "%s/trunc_part/model.bpk", base);
        import_fails("url", url, "trunc_part", "part 0", "truncated");
        /* the manifest's sha256 of a part does not match the part */
        snprintf(man, sizeof man, "%s/man_sha/model.bpk.parts.json", sdir);
        const char *s0 = file_sha(e, "model.bpk.part-00000.bpk");
        char bad[65];
        snprintf(bad, sizeof bad, "%s", s0);
        bad[10] = bad[10] == '0' ? '1' : '0';
        replace_in_file(man, s0, bad);
        snprintf(url, sizeof url, "%s/man_sha/model.bpk", base);
        import_fails("url", url, "man_sha", "part 0", "sha256 mismatch: the manifest says");
        /* the manifest URL itself, with a part missing on the server */
        snprintf(p, sizeof p, "%s/no_part/model.bpk.part-00001.bpk", sdir);
        ck_assert_int_eq(unlink(p), 0);
        snprintf(url, sizeof url, "%s/no_part/model.bpk.parts.json", base);
        import_fails("url", url, "no_part", "part 1", "missing");
        /* a truncated single file (no manifest on the server) */
        snprintf(p, sizeof p, "%s/trunc_mono/model.bpk.parts.json", sdir);
        ck_assert_int_eq(unlink(p), 0);
        snprintf(p, sizeof p, "%s/trunc_mono/model.bpk", sdir);
        uint64_t sz = (uint64_t)json_integer_value(json_object_get(
            json_array_get(json_object_get(e, "files"), 0), "bytes"));
        ck_assert_int_eq(truncate(p, (off_t)(sz - 100)), 0);
        snprintf(url, sizeof url, "%s/trunc_mono/model.bpk", base);
        import_fails("url", url, "trunc_mono", "model.bpk", NULL);
        /* tensors that do not fit the config: the config says n_embd 64, the tensors are 32 */
        snprintf(p, sizeof p, "%s/shapes/model.bpk.parts.json", sdir);
        ck_assert_int_eq(unlink(p), 0);
        snprintf(p, sizeof p, "%s/shapes/model.bpk", sdir);
        {
            dg_bpk_t *b;
            ck_assert_msg(dg_bpk_open(p, &b, err, sizeof err) == 0, "%s", err);
            const char *cfg = dg_bpk_meta_get(b, "dragond.config");
            ck_assert_ptr_nonnull(cfg);
            json_t *cj = json_loads(cfg, 0, NULL);
            json_t *mo = json_object_get(cj, "model");
            json_int_t d0 = json_integer_value(json_object_get(mo, "n_embd"));
            json_object_set_new(mo, "n_embd", json_integer(d0 * 2));
            char *cfg2 = json_dumps(cj, JSON_COMPACT);
            dg_bpk_entry en[16];
            dg_bpk_kv kv[8];
            memset(en, 0, sizeof en);
            int nt = dg_bpk_n_tensors(b), nm = dg_bpk_n_meta(b);
            for (int i = 0; i < nt; i++) {
                const dg_bpk_tensor *t = dg_bpk_tensor_at(b, i);
                en[i] = (dg_bpk_entry){.name = t->name, .ndim = t->ndim, .src = b,
                                       .src_index = i};
                memcpy(en[i].shape, t->shape, sizeof t->shape);
            }
            for (int i = 0; i < nm; i++) {
                kv[i] = (dg_bpk_kv){dg_bpk_meta_key(b, i), dg_bpk_meta_value(b, i)};
                if (!strcmp(kv[i].key, "dragond.config")) kv[i].value = cfg2;
            }
            dg_bpk_opts o = {.dtype = DG_DTYPE_F32, .meta = kv, .n_meta = nm};
            char tmp[1000];
            snprintf(tmp, sizeof tmp, "%s.new", p);
            ck_assert_msg(dg_bpk_write(tmp, en, nt, &o, NULL, NULL, err, sizeof err) == 0, "%s",
                          err);
            dg_bpk_close(b);
            ck_assert_int_eq(rename(tmp, p), 0);
            free(cfg2);
            json_decref(cj);
        }
        snprintf(url, sizeof url, "%s/shapes/model.bpk", base);
        import_fails("url", url, "shapes", "has shape", "the config needs");
        kill(srv, SIGTERM);
        waitpid(srv, NULL, 0);
    }
    /* 4. the same by path: a truncated single file, a manifest with a part gone */
    {
        char cpy[900];
        snprintf(cpy, sizeof cpy, "%s/local", D.dir);
        ck_assert_int_eq(mkdir(cpy, 0755), 0);
        copy_export(e, cpy);
        snprintf(p, sizeof p, "%s/model.bpk", cpy);
        ck_assert_int_eq(truncate(p, 700), 0);
        import_fails("path", p, "path_trunc", "model.bpk", NULL);
        snprintf(p, sizeof p, "%s/model.bpk.part-00000.bpk", cpy);
        ck_assert_int_eq(unlink(p), 0);
        snprintf(p, sizeof p, "%s/model.bpk.parts.json", cpy);
        import_fails("path", p, "path_nopart", "part 0", NULL);
    }
    /* nothing listening: tried 4 times with back-off 250 + 500 + 1000 ms; a 404 is not retried */
    {
        double t0 = dgd_now();
        import_fails("url", "http://127.0.0.1:1/model.safetensors", "refused", "attempt 4 of 4",
                     NULL);
        double dt = dgd_now() - t0;
        ck_assert_msg(dt >= 1.7 && dt < 20, "4 attempts took %.2fs", dt);
        t0 = dgd_now();
        snprintf(url, sizeof url, "%s/v1/exports/exp_none/files/model.safetensors", D.base);
        import_fails("url", url, "gone404", "HTTP 404", NULL);
        ck_assert_msg(dgd_now() - t0 < 1.5, "a 404 was retried");
    }
    /* bad requests */
    dgd_resp q;
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/models/import", "{\"url\":\"ftp://x/m.bpk\"}", -1,
                              NULL, &q), 400);
    dgd_resp_free(&q);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/models/import",
                              "{\"path\":\"/nonexistent/m.bpk\"}", -1, NULL, &q), 404);
    dgd_resp_free(&q);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/models/import",
                              "{\"path\":\"/x.bpk\",\"url\":\"http://x/y.bpk\"}", -1, NULL, &q),
                     400);
    dgd_resp_free(&q);
    ck_assert_int_eq(dgd_http(&D, "POST", "/v1/models/import",
                              "{\"url\":\"http://x/y.bpk\",\"name\":\"../evil\"}", -1, NULL, &q),
                     400);
    dgd_resp_free(&q);
    json_decref(e);
    json_decref(e2);
    json_decref(e3);
}
END_TEST

/* Runs a shell command; its output (stdout + stderr) into out. Returns the exit status. */
static int run_cmd(char *out, size_t n, const char *fmt, ...) {
    char cmd[3000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[3100];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t got = fread(out, 1, n - 1, p);
    out[got] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(client_export_and_pull) {
    char ckid[64], ckpath[1024], out[8192];
    train_tiny(ckid, ckpath);
    const char *b = getenv("DG_BUILD");
    char bin[600];
    snprintf(bin, sizeof bin, "%s/dragon", b && *b ? b : "build");
    if (run_cmd(out, sizeof out, "%s help", bin) != 0 || !strstr(out, "export")) {
        printf("SKIP client_export_and_pull: %s has no export command\n", bin);
        return;
    }
    /* export with parts, downloaded into a directory and checked */
    int rc = run_cmd(out, sizeof out, "DRAGON_HOST=%s %s export %s --parts-mib 0.02 --dtype bf16 "
                     "--out %s/dl", D.base, bin, ckid, D.dir);
    ck_assert_msg(rc == 0, "%s", out);
    char p[900], err[256];
    snprintf(p, sizeof p, "%s/dl/model.bpk.parts.json", D.dir);
    dg_parts_t *parts;
    ck_assert_msg(dg_parts_open(p, true, &parts, err, sizeof err) == 0, "%s", err);
    ck_assert_int_ge(dg_parts_n_parts(parts), 2);
    dg_parts_close(parts);
    /* pull a local path and a URL */
    rc = run_cmd(out, sizeof out, "DRAGON_HOST=%s %s pull %s/dl/model.bpk.parts.json --name "
                 "cli_path", D.base, bin, D.dir);
    ck_assert_msg(rc == 0 && strstr(out, "model cli_path ready"), "%d %s", rc, out);
    json_t *l = dgd_get_json(&D, "/v1/exports");
    const char *eid = json_string_value(json_object_get(json_array_get(
        json_object_get(l, "data"), 0), "id"));
    rc = run_cmd(out, sizeof out, "DRAGON_HOST=%s %s pull %s/v1/exports/%s/files/model.bpk "
                 "--name cli_url", D.base, bin, D.base, eid);
    ck_assert_msg(rc == 0 && strstr(out, "model cli_url ready") && strstr(out, "part(s)"),
                  "%d %s", rc, out);
    json_decref(l);
    /* a failing pull exits 1 with the reason */
    rc = run_cmd(out, sizeof out, "DRAGON_HOST=%s %s pull %s/v1/exports/exp_nope/files/model.bpk "
                 "--name cli_bad", D.base, bin, D.base);
    ck_assert_msg(rc == 1 && strstr(out, "no bundle at"), "%d %s", rc, out);
    rc = run_cmd(out, sizeof out, "DRAGON_HOST=%s %s export ckpt_nope", D.base, bin);
    ck_assert_msg(rc == 1 && strstr(out, "checkpoint_not_found"), "%d %s", rc, out);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("exports");
    TCase *tc = tcase_create("exports");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, export_import_generation);
    tcase_add_test(tc, ranges_etag_and_errors);
    tcase_add_test(tc, integrity_failures);
    tcase_add_test(tc, client_export_and_pull);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
