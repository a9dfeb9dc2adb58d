/* engine/model.h -- the Dragon (BDH) model: config, parameters, training forward/backward and
 * the cached recurrent form, written as explicit calls of backend verbs (llm.c style).
 *
 * The math is ../shared/docs/MODEL.md §3 (training form) and §4 (cached form), exactly.
 * Not here: the optimizer loop (engine/train.h), files (engine/ckpt.h), JSON (proto/).
 * Thread affinity: a model belongs to the thread that owns its backend. */
#ifndef DG_MODEL_H
#define DG_MODEL_H

#include "backend.h"

typedef enum { DG_NORM_AFFINE = 0, DG_NORM_PLAIN = 1 } dg_norm_kind;
typedef enum { DG_INIT_BURN_DRAGON = 0, DG_INIT_NORMAL = 1 } dg_init_kind;

#define DG_MAX_HEADS 64

/* Every field that changes the math (MODEL.md §1.1). */
typedef struct {
    int          n_layer;                /* L */
    int          n_embd;                 /* D */
    int          n_head;                 /* H */
    int          mlp_mult;               /* Ntot = mult * D; N = Ntot / H */
    int          vocab_size;             /* V (set from the tokenizer) */
    float        dropout;                /* on x*y only; 0 at inference */
    dg_pos_mode  positional;             /* alibi | rope | pope */
    float        rope_theta;             /* 65536 */
    int          n_alibi_slopes;         /* 0 = default 2^(-h/H); else == n_head */
    float        alibi_slopes[DG_MAX_HEADS];
    dg_norm_kind norm;
    float        norm_eps;               /* 1e-5 */
    float        relu_threshold;         /* theta_x = theta_y */
    dg_init_kind init;
    float        init_std;               /* 0.02 */
    bool         tie_embeddings;         /* logits = v * embed^T; lm_head absent */
} dg_model_config;

/* Defaults of DragonConfig::default() (L6 D256 H4 mult4, alibi, affine, burn_dragon init). */
void dg_model_config_default(dg_model_config *c);

/* Validates every rule; on failure returns DG_ECONFIG and writes "field: rule" into err
 * (e.g. "n_head: must divide mlp_internal_dim_multiplier*n_embd (1024)"). */
int  dg_model_config_validate(const dg_model_config *c, char *err, size_t errlen);

/* Derived sizes. */
int64_t dg_model_latent(const dg_model_config *c);      /* N (per head)        */
int64_t dg_model_qdim(const dg_model_config *c);        /* Nq = N or 2N (pope) */
int64_t dg_model_n_params(const dg_model_config *c);
/* Per-head decay gamma_h = exp(-m_h) for alibi; 1 for rope/pope. out: H floats. */
void    dg_model_gammas(const dg_model_config *c, float *out);
/* Bytes of one sequence's recurrent state: L * H * Nq * D * 4. */
size_t  dg_model_state_bytes(const dg_model_config *c);

/* ------------------------------------------------------------------------------------------
 * Parameters: one buffer, a pointer table in a fixed order. The order and names are those of
 * DESIGN.md §5 and are used by checkpoints and exports. */
enum {
    DG_P_EMBED = 0,   /* embed.weight (V, D)    */
    DG_P_GAMMA,       /* norm.gamma   (D)       (absent when plain norm: 0 elements) */
    DG_P_BETA,        /* norm.beta    (D)       (absent when plain norm)             */
    DG_P_ENCODER,     /* encoder      (H, D, N) */
    DG_P_ENCODER_V,   /* encoder_v    (H, D, N) */
    DG_P_DECODER,     /* decoder      (H*N, D)  */
    DG_P_LM_HEAD,     /* lm_head      (D, V)    (absent when tied)                   */
    DG_P_COUNT
};

typedef struct {
    const char *name;
    int         ndim;
    int64_t     shape[3];     /* slowest first */
    int64_t     numel;        /* 0 when absent */
    size_t      offset;       /* float offset in the flat parameter block */
} dg_param_info;

/* Fills info[DG_P_COUNT]; returns the total float count. */
int64_t dg_model_param_layout(const dg_model_config *c, dg_param_info info[DG_P_COUNT]);

typedef struct dg_model_s dg_model_t;

/* Creates a model on be with parameters allocated (uninitialised), no activations. */
int  dg_model_create(dg_backend_t *be, const dg_model_config *c, dg_model_t **out);
void dg_model_free(dg_model_t *m);                        /* NULL is a no-op */
const dg_model_config *dg_model_config_of(const dg_model_t *m);
dg_backend_t *dg_model_backend(const dg_model_t *m);

/* Initialise parameters from seed (MODEL.md §2.2), on the host, then upload. Deterministic. */
int  dg_model_init_params(dg_model_t *m, uint64_t seed);

/* The flat parameter / gradient tensors (n_params floats). Grads exist after
 * dg_model_alloc_train. Whoever writes the parameters through these views (an optimizer step)
 * calls dg_model_params_changed afterwards: inference objects keep derived copies (the
 * transposed encoder_v of gate_proj) and rebuild them when it has been called.
 * dg_model_set_params and dg_model_init_params do it themselves. */
dg_tensor dg_model_params(dg_model_t *m);
dg_tensor dg_model_grads(dg_model_t *m);
dg_tensor dg_model_param(dg_model_t *m, int which);       /* view of one parameter tensor  */

/* Host copies of all parameters (n_params floats), in layout order. */
int  dg_model_get_params(dg_model_t *m, float *host);
int  dg_model_set_params(dg_model_t *m, const float *host);
void dg_model_params_changed(dg_model_t *m);

/* ------------------------------------------------------------------------------------------
 * Training. dg_model_alloc_train sizes activations for (B, T) once (nothing allocates later).
 * chunk: if 0 < chunk < T, the attention runs in the chunked form with a carried state and exact
 * gradients through it (MODEL.md §3.3 / PERF.md §4.3); 0 = one parallel block. */
int  dg_model_alloc_train(dg_model_t *m, int B, int T, int chunk);

/* Bytes of activations plus gradient scratch that dg_model_alloc_train(B, T, chunk) would
 * allocate for c (automatic recompute choice), without allocating anything. Parameters,
 * gradients, optimizer moments and backend workspaces are not included. 0 if c or B, T are
 * invalid. */
size_t dg_model_train_bytes(const dg_model_config *c, int B, int T, int chunk);

/* Whether training keeps every layer's activations or recomputes each layer in the backward
 * pass. AUTO (the default) recomputes when the stored activations would exceed ~2 GiB; ON/OFF
 * force it (tests: the recompute path on small configs). Takes effect at the next
 * dg_model_alloc_train. dg_model_train_recomputes says what the current allocation does. */
typedef enum { DG_RECOMPUTE_AUTO = 0, DG_RECOMPUTE_OFF = 1, DG_RECOMPUTE_ON = 2 } dg_recompute_mode;
void dg_model_set_recompute(dg_model_t *m, dg_recompute_mode mode);
bool dg_model_train_recomputes(const dg_model_t *m);

/* Forward + loss: tokens/targets are host arrays of B*T ids. Writes *loss (mean CE).
 * train=true applies dropout with the given seed and keeps what backward needs.
 * targets may be NULL for forward only (then *loss is not written). */
int  dg_model_forward(dg_model_t *m, const int32_t *tokens, const int32_t *targets, bool train,
                      uint64_t dropout_seed, float *loss);
/* Backward of the last forward (which must have had train=true and targets); grads accumulate
 * (call dg_model_zero_grad first). */
int  dg_model_backward(dg_model_t *m);
int  dg_model_zero_grad(dg_model_t *m);
/* Logits of the last forward, rows (B*T, V), for tests (host copy). */
int  dg_model_get_logits(dg_model_t *m, float *host);
/* Per-position losses (B*T floats, host) of the last forward that had targets. */
const float *dg_model_last_losses(const dg_model_t *m);

/* ------------------------------------------------------------------------------------------
 * Cached (recurrent) inference. A state holds rho for every layer, (L, H, Nq, D) floats, plus
 * the absolute position. States live on the model's backend. */
typedef struct dg_state_s dg_state_t;

int   dg_state_create(dg_model_t *m, dg_state_t **out);
void  dg_state_free(dg_state_t *s);                       /* NULL is a no-op */
int   dg_state_reset(dg_state_t *s);
int   dg_state_copy(dg_state_t *dst, const dg_state_t *src);   /* fork */
int64_t dg_state_pos(const dg_state_t *s);
size_t  dg_state_bytes(const dg_state_t *s);
/* Host image of the state: L*H*Nq*D floats (then pos separately) for save/load. */
int   dg_state_get(const dg_state_t *s, float *host, int64_t *pos);
int   dg_state_set(dg_state_t *s, const float *host, int64_t pos);

/* Inference context: activation buffers for prefill of up to max_T tokens and batched steps of
 * up to max_B sequences. One per engine thread is enough. */
typedef struct dg_infer_s dg_infer_t;
int  dg_infer_create(dg_model_t *m, int max_B, int max_T, dg_infer_t **out);
void dg_infer_free(dg_infer_t *ix);

/* Prefill: runs n tokens through the parallel form starting from s (carried state, position),
 * updates s, and writes the logits of the LAST token into logits_out (V floats, host) if not
 * NULL. n may exceed max_T: the prompt is then fed in chunks of max_T. */
int  dg_infer_prefill(dg_infer_t *ix, dg_state_t *s, const int32_t *tokens, int n,
                      float *logits_out);
/* One token step for B sequences at once: tokens[b] goes into states[b]; logits_out (B, V)
 * host floats. On a backend with graphs (cuda) the step is recorded once per set of sequences
 * (on its second consecutive step) and then replayed with one launch; DG_DECODE_GRAPH=0 in the
 * environment (read by dg_infer_create) runs every step verb by verb. Same results either way. */
int  dg_infer_step(dg_infer_t *ix, int B, dg_state_t **states, const int32_t *tokens,
                   float *logits_out);
/* Steps run through a recorded graph so far, and graphs recorded (for tests and benchmarks). */
int64_t dg_infer_graph_steps(const dg_infer_t *ix);
int64_t dg_infer_graph_records(const dg_infer_t *ix);

#endif /* DG_MODEL_H */
