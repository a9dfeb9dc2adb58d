/* engine/data.h -- text file -> tokens, train/validation split, seeded random-window batches
 * (MODEL.md §7.2, §7.3).
 *
 * The first 90% (train_frac) of the token stream is train, the rest validation (falling back
 * to train if the tail is shorter than T+1). Each batch row picks a uniform random start in its
 * split and copies T+1 contiguous tokens: inputs = first T, targets = shifted by one.
 * The RNG state and the number of batches drawn (the cursor) go into checkpoints, so a resumed
 * run draws exactly the batches an uninterrupted one would.
 * Thread affinity: one loader per training job thread. */
#ifndef DG_DATA_H
#define DG_DATA_H
#include "dg.h"

typedef struct {
    int32_t *tokens;      /* all tokens of the corpus (owned) */
    size_t   n_tokens;
    size_t   n_train;     /* tokens [0, n_train) are train, [n_train, n_tokens) validation */
} dg_dataset;

/* Split tokens (takes ownership of tokens, allocated with dg_malloc; on error they are freed
 * too). T is the block length:
 * DG_EDATA with a message in err if the train split has fewer than T+1 tokens. */
int  dg_dataset_init(dg_dataset *ds, int32_t *tokens, size_t n, double train_frac, int T,
                     char *err, size_t errlen);
void dg_dataset_free(dg_dataset *ds);

typedef struct {
    dg_rng   rng;
    uint64_t cursor;      /* batches drawn so far */
} dg_loader_state;

typedef struct {
    const dg_dataset *ds;
    int               B, T;
    bool              val;     /* validation split */
    dg_loader_state   st;
} dg_loader;

void dg_loader_init(dg_loader *l, const dg_dataset *ds, int B, int T, bool val, uint64_t seed);
/* Fills inputs and targets (B*T each). */
void dg_loader_next(dg_loader *l, int32_t *inputs, int32_t *targets);
/* Batches per epoch of the train split: ceil(n_train / (B*T)). */
int64_t dg_loader_steps_per_epoch(const dg_dataset *ds, int B, int T);
/* Deterministic evaluation windows: the validation split cut into consecutive blocks of T+1
 * (stride T), up to max_blocks (0 = all). Returns the count; block i fills inputs/targets (T). */
int64_t dg_eval_blocks(const dg_dataset *ds, int T, int64_t max_blocks);
void    dg_eval_block(const dg_dataset *ds, int T, int64_t i, int32_t *inputs, int32_t *targets);
#endif
