/* engine/sample.h -- token sampling from logits (MODEL.md §4.4 plus top-p and min-p).
 *
 * Order: temperature 0 => greedy argmax (lowest id wins ties). Otherwise logits/temperature,
 * top-k (values strictly below the k-th largest dropped, ties kept), softmax with max
 * subtraction, top-p (smallest set whose mass >= p, in descending order), min-p (drop tokens with
 * prob < min_p * max prob), renormalise, one draw from the seeded RNG. The same seed and
 * parameters give the same tokens on every backend (sampling runs on the host).
 * Thread affinity: a sampler belongs to one sequence. */
#ifndef DG_SAMPLE_H
#define DG_SAMPLE_H
#include "dg.h"

typedef struct {
    float temperature;   /* >= 0; 0 = greedy */
    int   top_k;         /* 0 = off */
    float top_p;         /* 1 = off; (0, 1] */
    float min_p;         /* 0 = off; [0, 1) */
    uint64_t seed;
} dg_sample_params;

void dg_sample_params_default(dg_sample_params *p);   /* T 1, top_k 0, top_p 1, min_p 0, seed 0 */
/* DG_EINVAL with "field: rule" in err for out-of-range values. */
int  dg_sample_params_validate(const dg_sample_params *p, char *err, size_t errlen);

typedef struct {
    dg_sample_params p;
    dg_rng           rng;
    float           *scratch;   /* 2V floats + V ints, allocated lazily (dg_malloc) */
    int              V;
} dg_sampler;

void dg_sampler_init(dg_sampler *s, const dg_sample_params *p);
void dg_sampler_free(dg_sampler *s);
/* Picks a token from V logits (not modified). */
int32_t dg_sampler_sample(dg_sampler *s, const float *logits, int V);
#endif
