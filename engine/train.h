/* engine/train.h -- the training job executor: owns a backend, a model, the AdamW moments, the
 * data loaders and the schedule, and runs one optimizer step per call so that its driver (the
 * `dragond train` command, or a daemon engine thread) can interleave other work, pause, cancel
 * and checkpoint between steps.
 *
 * Not here: JSON, files other than checkpoints, printing. Thread affinity: one thread per
 * trainer (the one that owns its backend). */
#ifndef DG_TRAIN_H
#define DG_TRAIN_H
#include "model.h"
#include "data.h"
#include "tokenizer.h"

typedef enum { DG_LR_CONSTANT = 0, DG_LR_COSINE = 1 } dg_lr_schedule;

/* Training settings (MODEL.md §6). */
typedef struct {
    int            batch_size;       /* B */
    int            block_size;       /* T */
    int            chunk;            /* 0 = parallel form over T; else chunked with carried state */
    int64_t        max_steps;        /* optimizer steps; if epochs > 0 it is derived from them */
    double         epochs;           /* 0 = use max_steps */
    float          lr;               /* peak */
    float          min_lr;           /* cosine floor */
    int64_t        warmup_steps;
    dg_lr_schedule schedule;
    float          weight_decay;
    float          beta1, beta2, eps;
    float          grad_clip;        /* 0 = off; clip global L2 norm to this */
    int            grad_accum;       /* micro-batches per optimizer step (>= 1) */
    int64_t        log_interval;     /* steps between progress lines (>= 1) */
    int64_t        eval_interval;    /* 0 = only at the end */
    int64_t        eval_iters;       /* validation blocks of B rows per evaluation (0 = all) */
    int64_t        ckpt_interval;    /* 0 = only at the end */
    int            keep_checkpoints; /* retention count (>= 1) */
    uint64_t       seed;
    dg_tok_kind    tokenizer;
    double         train_frac;       /* 0.9 */
} dg_train_config;

void dg_train_config_default(dg_train_config *t);
int  dg_train_config_validate(const dg_train_config *t, char *err, size_t errlen);
/* Learning rate at optimizer step k (1-based), MODEL.md §6.2. */
float dg_lr_at(const dg_train_config *t, int64_t total_steps, int64_t k);

typedef struct dg_trainer_s dg_trainer_t;

typedef struct {
    const char            *backend;      /* "cpu" (default), "ref", "cuda" */
    int                    device;
    dg_model_config        model;        /* vocab_size is set from the tokenizer */
    dg_train_config        train;
    const dg_tokenizer_t  *tokenizer;    /* borrowed; must outlive the trainer */
    const int32_t         *tokens;       /* the encoded corpus (copied) */
    size_t                 n_tokens;
    const char            *resume_path;  /* a .dck to resume from, or NULL */
    /* Optional fixed batch order (benchmarks against a peer): row r of micro-batch k of step s
     * starts at offsets[((s * grad_accum) + k) * B + r] (mod n_offsets) of the train split
     * instead of a random start. Copied. */
    const int64_t         *offsets;
    int64_t                n_offsets;
} dg_trainer_spec;

/* Creates the trainer: opens the backend, builds the model, initialises or resumes. On error
 * returns a negative code with a human message in err (config, data, checkpoint problems). */
int  dg_trainer_create(const dg_trainer_spec *spec, dg_trainer_t **out, char *err, size_t errlen);
void dg_trainer_free(dg_trainer_t *tr);

typedef struct {
    int64_t step;          /* optimizer steps completed (after this one) */
    int64_t total_steps;
    float   loss;          /* mean training loss of this step's micro-batches */
    float   lr;
    float   grad_norm;     /* before clipping */
    double  step_seconds;
    double  tokens_per_s;
    int64_t tokens_seen;
} dg_step_info;

/* One optimizer step. DG_ENAN if the loss is not finite (parameters unchanged). */
int  dg_trainer_step(dg_trainer_t *tr, dg_step_info *info);
bool dg_trainer_done(const dg_trainer_t *tr);
int64_t dg_trainer_step_count(const dg_trainer_t *tr);
int64_t dg_trainer_total_steps(const dg_trainer_t *tr);
/* Mean validation loss over eval_iters batches (deterministic blocks). */
int  dg_trainer_eval(dg_trainer_t *tr, float *val_loss, int64_t *n_tokens);
/* Writes a checkpoint of the full training state atomically. */
int  dg_trainer_save(dg_trainer_t *tr, const char *path, char *err, size_t errlen);
dg_model_t *dg_trainer_model(dg_trainer_t *tr);
const dg_train_config *dg_trainer_config(const dg_trainer_t *tr);
#endif
