/* engine/sample.c -- token sampling from logits on the host (engine/sample.h).
 *
 * Pipeline for temperature > 0: z = logits / temperature; top-k keeps every z >= the k-th
 * largest (ties kept); p = softmax over the kept (max subtracted); top-p keeps the smallest
 * prefix of the kept ids sorted by p descending (ties by id ascending) whose mass reaches top_p;
 * min-p drops p < min_p * max p; one uniform draw u in [0, total) picks the first id (ascending)
 * whose running sum exceeds u. temperature 0 is greedy argmax, lowest id on ties. A NaN logit
 * counts as -inf. Sums are in double and the draw walks ids in ascending order, so the same
 * seed, params and logits give the same token on every backend.
 * Not here: repetition penalties, batching. Thread affinity: a sampler belongs to one sequence.
 */
#include "sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dg_sample_params_default(dg_sample_params *p) {
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->seed = 0;
}

int dg_sample_params_validate(const dg_sample_params *p, char *err, size_t errlen) {
    const char *msg = NULL;
    if (!(p->temperature >= 0.0f && p->temperature <= 2.0f)) msg = "temperature: must be in [0, 2]";
    else if (p->top_k < 0) msg = "top_k: must be >= 0";
    else if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) msg = "top_p: must be in (0, 1]";
    else if (!(p->min_p >= 0.0f && p->min_p < 1.0f)) msg = "min_p: must be in [0, 1)";
    if (!msg) return 0;
    if (err) snprintf(err, errlen, "%s", msg);
    return DG_EINVAL;
}

void dg_sampler_init(dg_sampler *s, const dg_sample_params *p) {
    memset(s, 0, sizeof *s);
    s->p = *p;
    dg_rng_seed(&s->rng, p->seed);
}

void dg_sampler_free(dg_sampler *s) {
    if (!s) return;
    dg_free(s->scratch);
    s->scratch = NULL;
    s->V = 0;
}

static int32_t argmax(const float *x, int V) {
    int32_t best = 0;
    float bv = -INFINITY;
    bool any = false;
    for (int i = 0; i < V; i++) {
        float v = x[i];
        if (v != v) continue;
        if (!any || v > bv) { bv = v; best = i; any = true; }
    }
    return best;
}

static int cmp_desc_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Sort context for top-p: probabilities descending, ids ascending on ties. */
static _Thread_local const float *tl_sort_p;
static int cmp_idx_by_p(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float pi = tl_sort_p[i], pj = tl_sort_p[j];
    if (pi != pj) return pi > pj ? -1 : 1;
    return (i > j) - (i < j);
}

int32_t dg_sampler_sample(dg_sampler *s, const float *logits, int V) {
    DG_ASSERT(V > 0);
    if (s->p.temperature == 0.0f) return argmax(logits, V);
    if (s->V < V) {
        dg_free(s->scratch);
        s->scratch = dg_malloc(sizeof(float) * 3 * (size_t)V);
        s->V = V;
    }
    float   *z   = s->scratch;                       /* (V) scaled logits, -inf = dropped  */
    float   *tmp = s->scratch + V;                   /* (V) sort buffer, then probabilities */
    int32_t *idx = (int32_t *)(s->scratch + 2 * (size_t)V);   /* (V) ids                   */
    float inv_t = 1.0f / s->p.temperature;
    for (int i = 0; i < V; i++) {
        float v = logits[i];
        z[i] = (v != v) ? -INFINITY : v * inv_t;
    }
    if (s->p.top_k > 0 && s->p.top_k < V) {
        memcpy(tmp, z, sizeof(float) * (size_t)V);
        qsort(tmp, (size_t)V, sizeof(float), cmp_desc_float);
        float kth = tmp[s->p.top_k - 1];
        for (int i = 0; i < V; i++) if (z[i] < kth) z[i] = -INFINITY;
    }
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) if (z[i] > mx) mx = z[i];
    if (mx == -INFINITY) return argmax(logits, V);   /* nothing finite: defended fallback */
    float *p = tmp;                                   /* (V) probabilities, unnormalised */
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        p[i] = z[i] == -INFINITY ? 0.0f : expf(z[i] - mx);
        sum += p[i];
    }
    if (s->p.top_p < 1.0f) {
        int n = 0;
        for (int i = 0; i < V; i++) if (p[i] > 0.0f) idx[n++] = i;
        tl_sort_p = p;
        qsort(idx, (size_t)n, sizeof(int32_t), cmp_idx_by_p);
        tl_sort_p = NULL;
        double need = (double)s->p.top_p * sum, acc = 0.0;
        int keep = 0;
        while (keep < n) {
            acc += p[idx[keep++]];
            if (acc >= need) break;
        }
        for (int j = keep; j < n; j++) p[idx[j]] = 0.0f;
    }
    if (s->p.min_p > 0.0f) {
        float pmax = 0.0f;                      /* the max prob is exp(0) = 1 unscaled */
        for (int i = 0; i < V; i++) if (p[i] > pmax) pmax = p[i];
        float cut = s->p.min_p * pmax;
        for (int i = 0; i < V; i++) if (p[i] < cut) p[i] = 0.0f;
    }
    double total = 0.0;
    int32_t last = -1;
    for (int i = 0; i < V; i++) if (p[i] > 0.0f) { total += p[i]; last = i; }
    DG_ASSERT(last >= 0);
    double u = dg_rng_uniform(&s->rng) * total, acc = 0.0;
    for (int i = 0; i < V; i++) {
        if (p[i] <= 0.0f) continue;
        acc += p[i];
        if (u < acc) return i;
    }
    return last;
}
