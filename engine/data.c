/* engine/data.c -- the token dataset, its train/validation split, the seeded random-window
 * loader and the deterministic evaluation blocks (engine/data.h, MODEL.md §7.2-§7.3).
 *
 * Split: n_train = floor(n * train_frac) tokens of train, the rest validation. When the
 * validation tail is shorter than T+1 tokens, validation reads the train split instead (the
 * burn_dragon fallback). A row of a batch is a window of T+1 tokens starting at a uniform start
 * s in [lo, hi-T-1] of its split, drawn with dg_rng_below, rows in order.
 * Not here: reading files or tokenizing. Thread affinity: a loader belongs to one thread; a
 * dataset is read-only after init and may be shared.
 */
#include "data.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* dg_dataset_init always takes ownership of tokens: on error they are freed too. */
int dg_dataset_init(dg_dataset *ds, int32_t *tokens, size_t n, double train_frac, int T,
                    char *err, size_t errlen) {
    memset(ds, 0, sizeof *ds);
    if (!(train_frac > 0.0 && train_frac <= 1.0)) {
        if (err) snprintf(err, errlen, "train_frac: must be in (0, 1], got %g", train_frac);
        dg_free(tokens);
        return DG_EINVAL;
    }
    if (T < 1) {
        if (err) snprintf(err, errlen, "block_size: must be >= 1, got %d", T);
        dg_free(tokens);
        return DG_EINVAL;
    }
    if (n == 0) {
        if (err) snprintf(err, errlen, "data: the corpus is empty; HINT: give a non-empty text");
        dg_free(tokens);
        return DG_EDATA;
    }
    size_t n_train = (size_t)floor((double)n * train_frac);
    if (n_train > n) n_train = n;
    if (n_train < (size_t)T + 1) {
        if (err) snprintf(err, errlen,
                          "data: the train split has %zu tokens (%zu in all, train_frac %g), "
                          "fewer than block_size+1 = %d; HINT: use more text or a smaller "
                          "block_size", n_train, n, train_frac, T + 1);
        dg_free(tokens);
        return DG_EDATA;
    }
    ds->tokens = tokens;
    ds->n_tokens = n;
    ds->n_train = n_train;
    return 0;
}

void dg_dataset_free(dg_dataset *ds) {
    if (!ds) return;
    dg_free(ds->tokens);
    memset(ds, 0, sizeof *ds);
}

/* The token range [*lo, *hi) a split reads, with the validation fallback. */
static void split_range(const dg_dataset *ds, int T, bool val, size_t *lo, size_t *hi) {
    if (val && ds->n_tokens - ds->n_train >= (size_t)T + 1) {
        *lo = ds->n_train; *hi = ds->n_tokens;
    } else {
        *lo = 0; *hi = ds->n_train;
    }
}

void dg_loader_init(dg_loader *l, const dg_dataset *ds, int B, int T, bool val, uint64_t seed) {
    DG_ASSERT(ds && ds->tokens && B >= 1 && T >= 1 && ds->n_train >= (size_t)T + 1);
    memset(l, 0, sizeof *l);
    l->ds = ds; l->B = B; l->T = T; l->val = val;
    dg_rng_seed(&l->st.rng, seed);
    l->st.cursor = 0;
}

void dg_loader_next(dg_loader *l, int32_t *inputs, int32_t *targets) {
    size_t lo, hi;
    split_range(l->ds, l->T, l->val, &lo, &hi);
    uint64_t n_starts = (uint64_t)(hi - lo - (size_t)l->T);   /* >= 1 */
    for (int b = 0; b < l->B; b++) {
        size_t s = lo + (size_t)dg_rng_below(&l->st.rng, n_starts);
        const int32_t *w = l->ds->tokens + s;          /* (T+1) */
        memcpy(inputs + (size_t)b * l->T, w, sizeof(int32_t) * (size_t)l->T);
        memcpy(targets + (size_t)b * l->T, w + 1, sizeof(int32_t) * (size_t)l->T);
    }
    l->st.cursor++;
}

int64_t dg_loader_steps_per_epoch(const dg_dataset *ds, int B, int T) {
    uint64_t bt = (uint64_t)B * (uint64_t)T;
    DG_ASSERT(bt > 0);
    return (int64_t)((ds->n_train + bt - 1) / bt);
}

int64_t dg_eval_blocks(const dg_dataset *ds, int T, int64_t max_blocks) {
    size_t lo, hi;
    split_range(ds, T, true, &lo, &hi);
    int64_t n = (int64_t)((hi - lo - 1) / (size_t)T);
    if (max_blocks > 0 && n > max_blocks) n = max_blocks;
    return n;
}

void dg_eval_block(const dg_dataset *ds, int T, int64_t i, int32_t *inputs, int32_t *targets) {
    size_t lo, hi;
    split_range(ds, T, true, &lo, &hi);
    DG_ASSERT(i >= 0 && lo + (size_t)i * (size_t)T + (size_t)T + 1 <= hi);
    const int32_t *w = ds->tokens + lo + (size_t)i * (size_t)T;   /* (T+1) */
    memcpy(inputs, w, sizeof(int32_t) * (size_t)T);
    memcpy(targets, w + 1, sizeof(int32_t) * (size_t)T);
}
