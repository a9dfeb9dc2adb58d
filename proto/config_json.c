/* proto/config_json.c -- JSON <-> dg_model_config + dg_train_config (proto/config_json.h).
 *
 * Every JSON field is one row of the tables below: name, kind, struct offset (house rule 11).
 * "model":
 *   n_layer int, n_embd int, n_head int, mlp_internal_dim_multiplier int | latent_total int
 *   (mutually exclusive; latent_total = mult * n_embd), vocab_size int (optional; the trainer
 *   sets it from the tokenizer), dropout num, positional "alibi"|"rope"|"pope", rope_theta num,
 *   alibi_slopes null | [n_head nums], norm "layer_norm_affine"|"layer_norm", norm_eps num,
 *   relu_threshold num, init "burn_dragon"|"normal_0.02", init_std num, tie_embeddings bool
 * "training":
 *   batch_size, block_size, chunk_size, max_steps, epochs (num), lr, min_lr, warmup_steps,
 *   lr_schedule "cosine"|"constant", weight_decay, beta1, beta2, eps, grad_clip, grad_accum,
 *   log_interval, eval_interval, eval_iters, ckpt_interval, keep_checkpoints, seed (int >= 0),
 *   tokenizer "char"|"byte", train_frac
 * top level: name, description (strings; informational).
 * Integers must be JSON integers; numbers may be integers or reals.
 * Not here: file locations, the daemon config. Thread affinity: any thread.
 */
#include "config_json.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"     /* dg_read_file */

enum { F_INT, F_I64, F_U64, F_FLOAT, F_DOUBLE, F_BOOL, F_ENUM };

typedef struct {
    const char  *json;
    int          kind;
    size_t       off;
    const char  *const *names;   /* F_ENUM: names by value, NULL-terminated */
} field;

static const char *const POS_NAMES[] = {"alibi", "rope", "pope", NULL};
static const char *const NORM_NAMES[] = {"layer_norm_affine", "layer_norm", NULL};
static const char *const INIT_NAMES[] = {"burn_dragon", "normal_0.02", NULL};
static const char *const SCHED_NAMES[] = {"constant", "cosine", NULL};
static const char *const TOK_NAMES[] = {"char", "byte", NULL};

#define MF(j, f, k) {j, k, offsetof(dg_model_config, f), NULL}
#define ME(j, f, n) {j, F_ENUM, offsetof(dg_model_config, f), n}
static const field MODEL_FIELDS[] = {
    MF("n_layer", n_layer, F_INT),
    MF("n_embd", n_embd, F_INT),
    MF("n_head", n_head, F_INT),
    MF("mlp_internal_dim_multiplier", mlp_mult, F_INT),
    MF("vocab_size", vocab_size, F_INT),
    MF("dropout", dropout, F_FLOAT),
    ME("positional", positional, POS_NAMES),
    MF("rope_theta", rope_theta, F_FLOAT),
    ME("norm", norm, NORM_NAMES),
    MF("norm_eps", norm_eps, F_FLOAT),
    MF("relu_threshold", relu_threshold, F_FLOAT),
    ME("init", init, INIT_NAMES),
    MF("init_std", init_std, F_FLOAT),
    MF("tie_embeddings", tie_embeddings, F_BOOL),
};
#define TF(j, f, k) {j, k, offsetof(dg_train_config, f), NULL}
#define TE(j, f, n) {j, F_ENUM, offsetof(dg_train_config, f), n}
static const field TRAIN_FIELDS[] = {
    TF("batch_size", batch_size, F_INT),
    TF("block_size", block_size, F_INT),
    TF("chunk_size", chunk, F_INT),
    TF("max_steps", max_steps, F_I64),
    TF("epochs", epochs, F_DOUBLE),
    TF("lr", lr, F_FLOAT),
    TF("min_lr", min_lr, F_FLOAT),
    TF("warmup_steps", warmup_steps, F_I64),
    TE("lr_schedule", schedule, SCHED_NAMES),
    TF("weight_decay", weight_decay, F_FLOAT),
    TF("beta1", beta1, F_FLOAT),
    TF("beta2", beta2, F_FLOAT),
    TF("eps", eps, F_FLOAT),
    TF("grad_clip", grad_clip, F_FLOAT),
    TF("grad_accum", grad_accum, F_INT),
    TF("log_interval", log_interval, F_I64),
    TF("eval_interval", eval_interval, F_I64),
    TF("eval_iters", eval_iters, F_I64),
    TF("ckpt_interval", ckpt_interval, F_I64),
    TF("keep_checkpoints", keep_checkpoints, F_INT),
    TF("seed", seed, F_U64),
    TE("tokenizer", tokenizer, TOK_NAMES),
    TF("train_frac", train_frac, F_DOUBLE),
};
#define N_MODEL ((int)(sizeof MODEL_FIELDS / sizeof MODEL_FIELDS[0]))
#define N_TRAIN ((int)(sizeof TRAIN_FIELDS / sizeof TRAIN_FIELDS[0]))

_Static_assert(sizeof(dg_pos_mode) == sizeof(int), "enums are int-sized");
_Static_assert(sizeof(dg_lr_schedule) == sizeof(int), "enums are int-sized");

static int cfail(char *err, size_t errlen, const char *sect, const char *name, const char *msg) {
    if (err) snprintf(err, errlen, "/%s/%s: %s", sect, name, msg);
    return DG_ECONFIG;
}

/* Stores one JSON value into a field; returns 0 or DG_ECONFIG with a message. */
static int set_field(const field *f, void *base, json_t *v, const char *sect, char *err,
                     size_t errlen) {
    char *p = (char *)base + f->off;
    switch (f->kind) {
    case F_INT: case F_I64: case F_U64: {
        if (!json_is_integer(v)) return cfail(err, errlen, sect, f->json, "expected an integer");
        json_int_t x = json_integer_value(v);
        if (f->kind == F_INT) {
            if (x < INT_MIN || x > INT_MAX)
                return cfail(err, errlen, sect, f->json, "out of range");
            int i = (int)x; memcpy(p, &i, sizeof i);
        } else if (f->kind == F_I64) {
            int64_t i = x; memcpy(p, &i, sizeof i);
        } else {
            if (x < 0) return cfail(err, errlen, sect, f->json, "must be >= 0");
            uint64_t u = (uint64_t)x; memcpy(p, &u, sizeof u);
        }
        return 0;
    }
    case F_FLOAT: case F_DOUBLE: {
        if (!json_is_number(v)) return cfail(err, errlen, sect, f->json, "expected a number");
        double d = json_number_value(v);
        if (f->kind == F_FLOAT) { float x = (float)d; memcpy(p, &x, sizeof x); }
        else memcpy(p, &d, sizeof d);
        return 0;
    }
    case F_BOOL: {
        if (!json_is_boolean(v)) return cfail(err, errlen, sect, f->json, "expected true or false");
        bool b = json_is_true(v); memcpy(p, &b, sizeof b);
        return 0;
    }
    case F_ENUM: {
        char msg[160] = "expected one of";
        for (int i = 0; f->names[i]; i++)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%s \"%s\"", i ? "," : "",
                     f->names[i]);
        if (!json_is_string(v)) return cfail(err, errlen, sect, f->json, msg);
        const char *s = json_string_value(v);
        for (int i = 0; f->names[i]; i++) {
            if (!strcmp(s, f->names[i])) { memcpy(p, &i, sizeof i); return 0; }
        }
        return cfail(err, errlen, sect, f->json, msg);
    }
    }
    return DG_EINTERNAL;
}

/* The double with the fewest significant digits that rounds to x: 1e-3f comes out as 0.001,
 * not 0.0010000000474974513. */
static double short_double(float x) {
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)x);
        double d = strtod(buf, NULL);
        if ((float)d == x) return d;
    }
    return (double)x;
}

static json_t *get_field(const field *f, const void *base) {
    const char *p = (const char *)base + f->off;
    switch (f->kind) {
    case F_INT: { int i; memcpy(&i, p, sizeof i); return json_integer(i); }
    case F_I64: { int64_t i; memcpy(&i, p, sizeof i); return json_integer((json_int_t)i); }
    case F_U64: { uint64_t u; memcpy(&u, p, sizeof u); return json_integer((json_int_t)u); }
    case F_FLOAT: { float x; memcpy(&x, p, sizeof x); return json_real(short_double(x)); }
    case F_DOUBLE: { double d; memcpy(&d, p, sizeof d); return json_real(d); }
    case F_BOOL: { bool b; memcpy(&b, p, sizeof b); return json_boolean(b); }
    case F_ENUM: {
        int i; memcpy(&i, p, sizeof i);
        for (int k = 0; f->names[k]; k++) if (k == i) return json_string(f->names[k]);
        return json_null();
    }
    }
    return json_null();
}

static const field *find(const field *tab, int n, const char *key) {
    for (int i = 0; i < n; i++) if (!strcmp(tab[i].json, key)) return &tab[i];
    return NULL;
}

static int overlay_model(json_t *o, dg_model_config *m, char *err, size_t errlen) {
    if (!json_is_object(o)) {
        if (err) snprintf(err, errlen, "/model: expected an object");
        return DG_ECONFIG;
    }
    const char *key; json_t *v;
    json_t *mult = json_object_get(o, "mlp_internal_dim_multiplier");
    json_t *latent = json_object_get(o, "latent_total");
    if (mult && latent)
        return cfail(err, errlen, "model", "latent_total",
                     "mutually exclusive with mlp_internal_dim_multiplier (give one)");
    json_object_foreach(o, key, v) {
        if (!strcmp(key, "latent_total") || !strcmp(key, "alibi_slopes")) continue;
        const field *f = find(MODEL_FIELDS, N_MODEL, key);
        if (!f) return cfail(err, errlen, "model", key, "unknown field");
        int rc = set_field(f, m, v, "model", err, errlen);
        if (rc) return rc;
    }
    if (latent) {
        if (!json_is_integer(latent))
            return cfail(err, errlen, "model", "latent_total", "expected an integer");
        json_int_t lt = json_integer_value(latent);
        if (lt < 1 || m->n_embd < 1 || lt % m->n_embd || lt / m->n_embd > INT_MAX) {
            char msg[128];
            snprintf(msg, sizeof msg, "must be a positive multiple of n_embd (%d)", m->n_embd);
            return cfail(err, errlen, "model", "latent_total", msg);
        }
        m->mlp_mult = (int)(lt / m->n_embd);
    }
    json_t *sl = json_object_get(o, "alibi_slopes");
    if (sl) {
        if (json_is_null(sl)) {
            m->n_alibi_slopes = 0;
        } else if (json_is_array(sl)) {
            size_t n = json_array_size(sl);
            if (n == 0 || n > DG_MAX_HEADS || (int)n != m->n_head) {
                char msg[128];
                snprintf(msg, sizeof msg, "expected null or n_head (%d) numbers, got %zu",
                         m->n_head, n);
                return cfail(err, errlen, "model", "alibi_slopes", msg);
            }
            for (size_t i = 0; i < n; i++) {
                json_t *x = json_array_get(sl, i);
                if (!json_is_number(x)) {
                    char name[48];
                    snprintf(name, sizeof name, "alibi_slopes/%zu", i);
                    return cfail(err, errlen, "model", name, "expected a number");
                }
                m->alibi_slopes[i] = (float)json_number_value(x);
            }
            m->n_alibi_slopes = (int)n;
        } else {
            return cfail(err, errlen, "model", "alibi_slopes", "expected null or an array");
        }
    }
    return 0;
}

static int overlay_train(json_t *o, dg_train_config *t, char *err, size_t errlen) {
    if (!json_is_object(o)) {
        if (err) snprintf(err, errlen, "/training: expected an object");
        return DG_ECONFIG;
    }
    const char *key; json_t *v;
    json_object_foreach(o, key, v) {
        const field *f = find(TRAIN_FIELDS, N_TRAIN, key);
        if (!f) return cfail(err, errlen, "training", key, "unknown field");
        int rc = set_field(f, t, v, "training", err, errlen);
        if (rc) return rc;
    }
    return 0;
}

int dg_config_from_json(json_t *root, dg_model_config *m, dg_train_config *t, char *err,
                        size_t errlen) {
    if (!json_is_object(root)) {
        if (err) snprintf(err, errlen, "/: expected an object");
        return DG_ECONFIG;
    }
    dg_model_config mc;
    dg_train_config tc;
    dg_model_config_default(&mc);
    dg_train_config_default(&tc);
    const char *key; json_t *v;
    json_object_foreach(root, key, v) {
        int rc = 0;
        if (!strcmp(key, "model")) rc = overlay_model(v, &mc, err, errlen);
        else if (!strcmp(key, "training")) rc = overlay_train(v, &tc, err, errlen);
        else if (!strcmp(key, "name") || !strcmp(key, "description")) {
            if (!json_is_string(v)) {
                if (err) snprintf(err, errlen, "/%s: expected a string", key);
                return DG_ECONFIG;
            }
        } else {
            if (err) snprintf(err, errlen, "/%s: unknown field", key);
            return DG_ECONFIG;
        }
        if (rc) return rc;
    }
    char msg[256];
    if (dg_model_config_validate(&mc, msg, sizeof msg) != 0) {
        if (err) snprintf(err, errlen, "/model/%s", msg);
        return DG_ECONFIG;
    }
    if (dg_train_config_validate(&tc, msg, sizeof msg) != 0) {
        if (err) snprintf(err, errlen, "/training/%s", msg);
        return DG_ECONFIG;
    }
    *m = mc;
    *t = tc;
    return 0;
}

int dg_config_load_file(const char *path, dg_model_config *m, dg_train_config *t, char *err,
                        size_t errlen) {
    char *data; size_t n;
    int rc = dg_read_file(path, &data, &n, err, errlen);
    if (rc) return rc;
    json_error_t je;
    json_t *root = json_loadb(data, n, JSON_REJECT_DUPLICATES, &je);
    dg_free(data);
    if (!root) {
        if (err) snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return DG_ECONFIG;
    }
    char e2[512] = "";
    rc = dg_config_from_json(root, m, t, e2, sizeof e2);
    json_decref(root);
    if (rc && err) snprintf(err, errlen, "%s: %s", path, e2);
    return rc;
}

json_t *dg_config_to_json(const dg_model_config *m, const dg_train_config *t) {
    json_t *root = json_object(), *mo = json_object(), *to = json_object();
    for (int i = 0; i < N_MODEL; i++) {
        json_object_set_new(mo, MODEL_FIELDS[i].json, get_field(&MODEL_FIELDS[i], m));
        if (!strcmp(MODEL_FIELDS[i].json, "rope_theta")) {
            json_t *sl = json_null();
            if (m->n_alibi_slopes > 0) {
                sl = json_array();
                for (int h = 0; h < m->n_alibi_slopes && h < DG_MAX_HEADS; h++)
                    json_array_append_new(sl, json_real(short_double(m->alibi_slopes[h])));
            }
            json_object_set_new(mo, "alibi_slopes", sl);
        }
    }
    for (int i = 0; i < N_TRAIN; i++)
        json_object_set_new(to, TRAIN_FIELDS[i].json, get_field(&TRAIN_FIELDS[i], t));
    json_object_set_new(root, "model", mo);
    json_object_set_new(root, "training", to);
    return root;
}
