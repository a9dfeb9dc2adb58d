/* proto/export.c -- dg_export_model / dg_import_model: DESIGN.md §5 tensors plus config and
 * tokenizer as JSON metadata, in burnpack (+ parts) or safetensors (see export.h).
 * Not here: the container formats themselves (burnpack.c, parts.c, safetensors.c).
 * Thread affinity: any thread. */
#include "export.h"
#include "burnpack.h"
#include "config_json.h"
#include "dg.h"
#include "parts.h"
#include "safetensors.h"
#include "tokenizer_json.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* json -> dg_malloc'd compact text (NULL if it cannot be encoded). Steals j. */
static char *json_text(json_t *j) {
    size_t n = j ? json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_PRESERVE_ORDER) : 0;
    char *s = NULL;
    if (n) {
        s = dg_malloc(n + 1);
        if (json_dumpb(j, s, n, JSON_COMPACT | JSON_PRESERVE_ORDER) != n) {
            dg_free(s);
            s = NULL;
        } else {
            s[n] = 0;
        }
    }
    if (j) json_decref(j);
    return s;
}

static const char *precision_name(dg_dtype t) {
    return t == DG_DTYPE_F32 ? "f32" : t == DG_DTYPE_F16 ? "f16" : t == DG_DTYPE_BF16 ? "bf16"
                                                                                      : NULL;
}

static void shape_str(int nd, const int64_t *s, char *out, size_t n) {
    size_t at = 0;
    at += (size_t)snprintf(out + at, n - at, "[");
    for (int i = 0; i < nd && at < n; i++)
        at += (size_t)snprintf(out + at, n - at, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (at < n) snprintf(out + at, n - at, "]");
}

int dg_export_model(const char *path, dg_export_format format, dg_dtype dtype, const dg_ckpt *ck,
                    int64_t parts_bytes, char *err, size_t errlen) {
    const char *prec = precision_name(dtype);
    if (!prec) return fail(err, errlen, DG_EINVAL, "export: dtype must be f32, f16 or bf16");
    if (format != DG_EXPORT_BURNPACK && format != DG_EXPORT_SAFETENSORS)
        return fail(err, errlen, DG_EINVAL, "export: unknown format %d", (int)format);
    if (parts_bytes < 0 || (parts_bytes > 0 && format != DG_EXPORT_BURNPACK))
        return fail(err, errlen, DG_EINVAL, "export: parts are a burnpack feature (and >= 0)");
    if (!ck->tokenizer || !ck->params)
        return fail(err, errlen, DG_EINVAL, "export: checkpoint has no %s",
                    !ck->tokenizer ? "tokenizer" : "parameters");
    char cerr[256];
    int rc = dg_model_config_validate(&ck->model, cerr, sizeof cerr);
    if (rc) return fail(err, errlen, rc, "export: model config: %s", cerr);
    if (dg_tokenizer_vocab(ck->tokenizer) != ck->model.vocab_size)
        return fail(err, errlen, DG_ECONFIG, "export: tokenizer has %d ids, model vocab_size is "
                    "%d", dg_tokenizer_vocab(ck->tokenizer), ck->model.vocab_size);
    dg_param_info info[DG_P_COUNT];
    int64_t total = dg_model_param_layout(&ck->model, info);
    if (ck->n_params != total)
        return fail(err, errlen, DG_ESHAPE, "export: checkpoint has %lld parameters, the config "
                    "needs %lld", (long long)ck->n_params, (long long)total);
    /* Module order of burn_dragon's DragonModel: embed, norm (gamma, beta, alpha, shift), encoder,
     * encoder_v, decoder, lm_head. DragonNorm always has all four parameters (BURNPACK.md §1.9):
     * a non-affine config is written as gamma 1 / beta 0, and alpha [1] = 1, shift [1] = 0 (only
     * DyT / Derf norms use them) so that a Burn DragonModel finds every tensor it loads. */
    const int64_t D = ck->model.n_embd;
    float *ones = dg_malloc((size_t)D * sizeof(float)), *zeros = dg_calloc((size_t)D,
                                                                            sizeof(float));
    for (int64_t j = 0; j < D; j++) ones[j] = 1.0f;
    dg_bpk_entry e[DG_P_COUNT + 4];
    int n = 0;
    memset(e, 0, sizeof e);
    for (int i = 0; i < DG_P_COUNT; i++) {
        if (info[i].numel == 0 && (i == DG_P_GAMMA || i == DG_P_BETA)) {
            e[n].name = i == DG_P_GAMMA ? "norm.gamma" : "norm.beta";
            e[n].ndim = 1;
            e[n].shape[0] = D;
            e[n].f32 = i == DG_P_GAMMA ? ones : zeros;
            n++;
        } else if (info[i].numel > 0) {
            e[n].name = info[i].name;
            e[n].ndim = info[i].ndim;
            for (int j = 0; j < info[i].ndim; j++) e[n].shape[j] = info[i].shape[j];
            e[n].f32 = ck->params + info[i].offset;
            n++;
        }
        if (i == DG_P_BETA) {
            e[n++] = (dg_bpk_entry){.name = DG_EXPORT_NORM_ALPHA, .ndim = 1, .shape = {1},
                                    .f32 = ones};
            e[n++] = (dg_bpk_entry){.name = DG_EXPORT_NORM_SHIFT, .ndim = 1, .shape = {1},
                                    .f32 = zeros};
        }
    }
    char *cfg = json_text(dg_config_to_json(&ck->model, &ck->train));
    char *tok = json_text(dg_tokenizer_to_json(ck->tokenizer));
    if (!cfg || !tok) {
        dg_free(cfg);
        dg_free(tok);
        dg_free(ones);
        dg_free(zeros);
        return fail(err, errlen, DG_EINTERNAL, "export: cannot encode config / tokenizer JSON");
    }
    dg_bpk_kv kv[6] = {
        {"format", format == DG_EXPORT_BURNPACK ? "burnpack" : "safetensors"},
        {"producer", "dragond"},
        {"version", DG_EXPORT_PRODUCER_VERSION},
        {"precision", prec},
        {"dragond.config", cfg},
        {"dragond.tokenizer", tok},
    };
    if (format == DG_EXPORT_SAFETENSORS) {
        rc = dg_st_write(path, e, n, dtype, kv, 6, NULL, NULL, err, errlen);
    } else {
        dg_bpk_opts o = {.dtype = dtype, .meta = kv, .n_meta = 6};
        rc = dg_bpk_write(path, e, n, &o, NULL, NULL, err, errlen);
        if (!rc && parts_bytes > 0) rc = dg_parts_write(path, (uint64_t)parts_bytes, NULL, err,
                                                        errlen);
    }
    dg_free(cfg);
    dg_free(tok);
    dg_free(ones);
    dg_free(zeros);
    return rc;
}

// ------------------------------------------------------------------------------------------
// import

typedef struct {
    dg_bpk_t   *bpk;
    dg_parts_t *parts;
    dg_st_t    *st;
} msrc;

static const char *src_meta(msrc *s, const char *key) {
    if (s->st) return dg_st_meta_get(s->st, key);
    if (s->parts) return dg_bpk_meta_get(dg_parts_part(s->parts, 0), key);
    return dg_bpk_meta_get(s->bpk, key);
}

static int src_n(msrc *s) {
    return s->st ? dg_st_n_tensors(s->st) : s->parts ? dg_parts_n_tensors(s->parts)
                                                     : dg_bpk_n_tensors(s->bpk);
}

/* name, ndim, shape of tensor i */
static const char *src_at(msrc *s, int i, int *nd, const int64_t **shape) {
    if (s->st) {
        const dg_st_tensor *t = dg_st_tensor_at(s->st, i);
        *nd = t->ndim;
        *shape = t->shape;
        return t->name;
    }
    const dg_bpk_tensor *t = s->parts ? dg_parts_tensor(s->parts, i, NULL, NULL)
                                      : dg_bpk_tensor_at(s->bpk, i);
    *nd = t->ndim;
    *shape = t->shape;
    return t->name;
}

static int src_find(msrc *s, const char *name) {
    if (s->st) return dg_st_find(s->st, name);
    if (s->parts) return dg_parts_find(s->parts, name, NULL, NULL);
    return dg_bpk_find(s->bpk, name);
}

static int src_read(msrc *s, int i, float *dst, int64_t numel, char *err, size_t errlen) {
    if (s->st) return dg_st_read_f32(s->st, i, dst, numel, err, errlen);
    if (s->parts) {
        dg_bpk_t *p;
        int k;
        dg_parts_tensor(s->parts, i, &p, &k);
        return dg_bpk_read_f32(p, k, dst, numel, err, errlen);
    }
    return dg_bpk_read_f32(s->bpk, i, dst, numel, err, errlen);
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int src_open(const char *path, msrc *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (ends_with(path, ".parts.json")) return dg_parts_open(path, true, &s->parts, err, errlen);
    if (ends_with(path, ".safetensors")) return dg_st_open(path, &s->st, err, errlen);
    struct stat st;
    if (stat(path, &st) != 0) {
        /* a monolith that was never downloaded: its parts */
        size_t n = strlen(path) + 16;
        char *man = dg_malloc(n);
        snprintf(man, n, "%s.parts.json", path);
        int rc = DG_ENOTFOUND;
        if (stat(man, &st) == 0) rc = dg_parts_open(man, true, &s->parts, err, errlen);
        else fail(err, errlen, rc, "%s: no such file (and no %s)", path, man);
        dg_free(man);
        return rc;
    }
    FILE *f = fopen(path, "rb");
    uint8_t magic[4] = {0};
    if (f) {
        size_t got = fread(magic, 1, 4, f);
        (void)got;
        fclose(f);
    }
    if (!memcmp(magic, "NRUB", 4)) return dg_bpk_open(path, &s->bpk, err, errlen);
    return dg_st_open(path, &s->st, err, errlen);
}

static void src_close(msrc *s) {
    dg_bpk_close(s->bpk);
    dg_parts_close(s->parts);
    dg_st_close(s->st);
}

/* Tensors of burn_dragon's DragonModel that dragond's math holds fixed (BURNPACK.md §1.9):
 * norm.alpha [1] must be 1 and norm.shift [1] must be 0 (only DyT / Derf norms use them); with a
 * non-affine config, norm.gamma [D] must be all 1 and norm.beta [D] all 0; rwkv_time_decay (older
 * mosure BDH) is ignored with a note. Returns 1 when tensor i is one of these and acceptable, 0
 * when it is none of them, or an error. */
static int check_fixed(msrc *s, int i, const char *name, int nd, const int64_t *shape,
                       const dg_model_config *mc, const char *path, char *err, size_t errlen) {
    if (!strcmp(name, "rwkv_time_decay")) {
        DG_WARN("%s: ignoring tensor 'rwkv_time_decay' (an older burn_dragon BDH parameter that "
                "the Dragon model of dragond does not use)", path);
        return 1;
    }
    bool alpha = !strcmp(name, DG_EXPORT_NORM_ALPHA), shift = !strcmp(name, DG_EXPORT_NORM_SHIFT);
    bool gamma = !strcmp(name, "norm.gamma"), beta = !strcmp(name, "norm.beta");
    if (!alpha && !shift && !gamma && !beta) return 0;
    if ((gamma || beta) && mc->norm != DG_NORM_PLAIN) return 0;     /* a layout param */
    int64_t want = (alpha || shift) ? 1 : mc->n_embd;
    int64_t numel = 1;
    for (int d = 0; d < nd; d++) numel *= shape[d];
    if (nd != 1 || shape[0] != want) {
        char got[96];
        shape_str(nd, shape, got, sizeof got);
        return fail(err, errlen, DG_ESHAPE, "%s: tensor '%s' has shape %s, the config needs "
                    "[%lld]", path, name, got, (long long)want);
    }
    float *v = dg_try_malloc((size_t)numel * sizeof(float) + 1);
    if (!v) return fail(err, errlen, DG_ENOMEM, "%s: no memory for tensor '%s'", path, name);
    char e2[512];
    int rc = src_read(s, i, v, numel, e2, sizeof e2);
    if (rc) {
        dg_free(v);
        return fail(err, errlen, rc, "%s: %s", path, e2);
    }
    float need = (alpha || gamma) ? 1.0f : 0.0f;
    for (int64_t j = 0; j < numel; j++) {
        if (v[j] == need) continue;
        float got = v[j];
        dg_free(v);
        if (alpha || shift)
            return fail(err, errlen, DG_EDATA, "%s: tensor '%s' is %g, dragond's layer norm "
                        "needs %s = %g (HINT: alpha and shift are used only by DyT / Derf norms, "
                        "which dragond does not implement)", path, name, (double)got,
                        alpha ? "alpha" : "shift", (double)need);
        return fail(err, errlen, DG_EDATA, "%s: tensor '%s'[%lld] is %g but the config has a "
                    "non-affine layer norm, which needs %s all %g (HINT: export with "
                    "normalization layer_norm_affine in the config)", path, name, (long long)j,
                    (double)got, gamma ? "gamma" : "beta", (double)need);
    }
    dg_free(v);
    return 1;
}

int dg_import_model(const char *path, dg_ckpt *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    msrc s;
    int rc = src_open(path, &s, err, errlen);
    if (rc) return rc;
    char e2[512];
    json_t *root = NULL;
    dg_tokenizer_t *tok = NULL;
    const char *cfg = src_meta(&s, "dragond.config"), *tj = src_meta(&s, "dragond.tokenizer");
    if (!cfg || !tj) {
        rc = fail(err, errlen, DG_ECORRUPT, "%s: no \"dragond.%s\" metadata (HINT: not a dragond "
                  "export; only bundles written by dragond carry their config and tokenizer)",
                  path, !cfg ? "config" : "tokenizer");
        goto fail_meta;
    }
    json_error_t je;
    root = json_loads(cfg, 0, &je);
    if (!root) {
        rc = fail(err, errlen, DG_ECORRUPT, "%s: dragond.config: %s", path, je.text);
        goto fail_meta;
    }
    if ((rc = dg_config_from_json(root, &out->model, &out->train, e2, sizeof e2))) {
        fail(err, errlen, rc, "%s: dragond.config: %s", path, e2);
        goto fail_meta;
    }
    json_decref(root);
    root = json_loads(tj, 0, &je);
    if (!root) {
        rc = fail(err, errlen, DG_ECORRUPT, "%s: dragond.tokenizer: %s", path, je.text);
        goto fail_meta;
    }
    if ((rc = dg_tokenizer_from_json(root, "dragond.tokenizer", &tok, e2, sizeof e2))) {
        fail(err, errlen, rc, "%s: %s", path, e2);
        goto fail_meta;
    }
    if (dg_tokenizer_vocab(tok) != out->model.vocab_size) {
        rc = fail(err, errlen, DG_ECORRUPT, "%s: tokenizer has %d ids but the config says "
                  "vocab_size %d", path, dg_tokenizer_vocab(tok), out->model.vocab_size);
        goto fail_meta;
    }
    dg_param_info info[DG_P_COUNT];
    int64_t total = dg_model_param_layout(&out->model, info);
    /* every tensor of the file must be one the config expects ... */
    for (int i = 0; i < src_n(&s); i++) {
        int nd;
        const int64_t *shape;
        const char *name = src_at(&s, i, &nd, &shape);
        bool known = false;
        for (int k = 0; k < DG_P_COUNT; k++)
            known |= info[k].numel > 0 && !strcmp(info[k].name, name);
        if (known) continue;
        if ((rc = check_fixed(&s, i, name, nd, shape, &out->model, path, err, errlen)) < 0)
            goto fail_meta;
        if (rc == 1) continue;
        rc = fail(err, errlen, DG_ESHAPE, "%s: unexpected tensor '%s' (not a parameter of "
                  "this model config)", path, name);
        goto fail_meta;
    }
    out->params = dg_try_malloc((size_t)total * sizeof(float) + 1);
    if (!out->params) {
        rc = fail(err, errlen, DG_ENOMEM, "%s: no memory for %lld parameters", path,
                  (long long)total);
        goto fail_meta;
    }
    /* ... and every parameter must be there with its shape */
    for (int k = 0; k < DG_P_COUNT; k++) {
        if (info[k].numel == 0) continue;
        char want[96], got[96];
        shape_str(info[k].ndim, info[k].shape, want, sizeof want);
        int i = src_find(&s, info[k].name);
        if (i < 0) {
            rc = fail(err, errlen, DG_ESHAPE, "%s: missing tensor '%s' (expected shape %s)", path,
                      info[k].name, want);
            goto fail_params;
        }
        int nd;
        const int64_t *shape;
        src_at(&s, i, &nd, &shape);
        if (nd != info[k].ndim || memcmp(shape, info[k].shape, sizeof(int64_t) * (size_t)nd)) {
            shape_str(nd, shape, got, sizeof got);
            rc = fail(err, errlen, DG_ESHAPE, "%s: tensor '%s' has shape %s, the config needs %s",
                      path, info[k].name, got, want);
            goto fail_params;
        }
        if ((rc = src_read(&s, i, out->params + info[k].offset, info[k].numel, e2, sizeof e2))) {
            fail(err, errlen, rc, "%s: %s", path, e2);
            goto fail_params;
        }
    }
    json_decref(root);
    src_close(&s);
    out->tokenizer = tok;
    out->n_params = total;
    return 0;
fail_params:
    dg_free(out->params);
fail_meta:
    if (root) json_decref(root);
    dg_tokenizer_free(tok);
    src_close(&s);
    memset(out, 0, sizeof *out);
    return rc;
}
