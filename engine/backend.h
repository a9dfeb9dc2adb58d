/* engine/backend.h -- the only door from engine/ to compute.
 *
 * A backend is an opaque handle over a constant, versioned table of verbs (docs/STYLE.md §4.3):
 * lifecycle, memory, and the Dragon (BDH) op set, forward and backward. Only the wrappers in
 * engine/backend.c call the slots; each wrapper asserts shapes and forwards. Backends: "ref"
 * (kernels/ref: naive C, THE specification of every op), "cpu" (kernels/cpu: OpenBLAS + vector
 * loops), "cuda" (kernels/cuda). Every backend is tested op by op against ref.
 *
 * Dimension legend (project-wide): B batch, T time, D embedding, H heads, N latent per head
 * (Nq = N, or 2N under PoPE), V vocab, L layers, R rows (= B*T unless said otherwise).
 * Shapes in comments are listed slowest-varying first: (R, D) means D is contiguous.
 * All float tensors are f32 row-major unless a verb says otherwise.
 *
 * Gradients ACCUMULATE (+=) into their outputs, as in llm.c, unless a verb says "writes".
 * Thread affinity: a backend handle belongs to one thread (its engine thread) for life. */
#ifndef DG_BACKEND_H
#define DG_BACKEND_H

#include "dg.h"

#define DG_BACKEND_IFACE_VERSION 3

typedef enum { DG_DTYPE_F32 = 0, DG_DTYPE_BF16 = 1, DG_DTYPE_I32 = 2, DG_DTYPE_F16 = 3 } dg_dtype;
size_t dg_dtype_size(dg_dtype t);

typedef struct dg_backend_s       dg_backend_t;   /* opaque: iface + private context           */
typedef struct dg_buf_s           dg_buf_t;       /* opaque to engine/: one device allocation  */
typedef struct dg_backend_iface_s dg_backend_iface;

/* A buffer as backends see it. Backends allocate this struct (or embed it first in their own)
 * and fill every field; engine code only reads nbytes. For ref/cpu, data is host memory. */
struct dg_buf_s {
    void   *data;      /* device (or host) pointer to the first byte */
    size_t  nbytes;
    void   *priv;      /* backend-private */
};

/* A view into a buffer; never owns memory. ne[0] is the contiguous (innermost) dimension, so a
 * (R, D) matrix has ne = {D, R, 1, 1}. Views are always contiguous. */
typedef struct {
    dg_buf_t *buf;
    size_t    offs;    /* bytes from the start of buf */
    int64_t   ne[4];
    dg_dtype  type;
} dg_tensor;

/* Constructors: shapes given slowest first, like the comments. */
dg_tensor dg_t1(dg_buf_t *b, size_t offs, int64_t n0);
dg_tensor dg_t2(dg_buf_t *b, size_t offs, int64_t rows, int64_t cols);
dg_tensor dg_t3(dg_buf_t *b, size_t offs, int64_t d2, int64_t d1, int64_t d0);
dg_tensor dg_t4(dg_buf_t *b, size_t offs, int64_t d3, int64_t d2, int64_t d1, int64_t d0);
dg_tensor dg_t_i32(dg_buf_t *b, size_t offs, int64_t n);
dg_tensor dg_t_null(void);                      /* .buf == NULL: "absent" optional operand */
int64_t   dg_nelem(dg_tensor t);
size_t    dg_nbytes(dg_tensor t);
static inline bool dg_t_present(dg_tensor t) { return t.buf != NULL; }
/* Host pointer to the first element; valid only for host backends (ref, cpu). */
static inline void *dg_t_host(dg_tensor t) { return (char *)t.buf->data + t.offs; }

/* A strided, batched matrix operand for GEMM (row-major). Element (i, j) of batch item k lives
 * at byte offs + 4*(k*bstride + i*ld + j) of buf. rows/cols are the STORED matrix; trans says the
 * GEMM uses its transpose. */
typedef struct {
    dg_buf_t *buf;
    size_t    offs;
    int64_t   rows, cols, ld, bstride;
    bool      trans;
} dg_mat;

dg_mat dg_m(dg_tensor t, int64_t rows, int64_t cols, int64_t ld); /* offs from t, not transposed */
dg_mat dg_m_t(dg_mat m);                                         /* the same, transposed          */

/* C[k] = alpha * op(A[k]) * op(B[k]) + beta * C[k], k < batch. op(A) is (M, K), op(B) is (K, N),
 * C is (M, N). beta = 1 accumulates (gradients), beta = 0 writes (C need not be initialised). */
typedef struct {
    int64_t M, N, K, batch;
    dg_mat  A, B, C;
    float   alpha, beta;
} dg_gemm_desc;

/* Positional modes. */
typedef enum { DG_POS_ALIBI = 0, DG_POS_ROPE = 1, DG_POS_POPE = 2 } dg_pos_mode;

/* AdamW hyper-parameters for one update (MODEL.md §6.1):
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mh = m/(1-b1^t); vh = v/(1-b2^t);
 * p = p*(1 - lr*wd) - lr * mh / (sqrt(vh) + eps). grad_scale multiplies g first (clipping and
 * accumulation averaging fold into it). */
typedef struct {
    float   lr, beta1, beta2, eps, weight_decay, grad_scale;
    int64_t step;      /* t, starting at 1 */
} dg_adamw_hp;

/* One device a backend can run on (dg_backend_devices). */
typedef struct {
    int      index;
    char     name[128];
    uint64_t mem_total, mem_used;   /* bytes; 0 when unknown */
    int      util_pct;              /* -1 when unknown */
} dg_device_info;

typedef struct {
    int device;        /* device index for GPU backends; ignored by ref/cpu */
    int n_threads;     /* 0 = backend default */
} dg_backend_params;

/* ------------------------------------------------------------------------------------------
 * The verb table. Slots marked optional may be NULL. */
struct dg_backend_iface_s {
    int         version;          /* must equal DG_BACKEND_IFACE_VERSION */
    const char *name;

    /* lifecycle */
    int  (*init)(dg_backend_t *be, const dg_backend_params *p);
    void (*free)(dg_backend_t *be);

    /* memory */
    int  (*buf_alloc)(dg_backend_t *be, size_t nbytes, dg_buf_t **out);
    void (*buf_free) (dg_backend_t *be, dg_buf_t *buf);
    int  (*set)      (dg_backend_t *be, dg_tensor dst, const void *host);    /* host -> dst  */
    int  (*get)      (dg_backend_t *be, void *host, dg_tensor src);          /* src  -> host */
    int  (*copy)     (dg_backend_t *be, dg_tensor dst, dg_tensor src);       /* same nbytes  */
    int  (*fill)     (dg_backend_t *be, dg_tensor t, float value);           /* f32 tensors  */
    int  (*sync)     (dg_backend_t *be);                                     /* optional     */

    /* dense algebra */
    int  (*gemm)  (dg_backend_t *be, const dg_gemm_desc *d);
    /* y += a * x (n elements) */
    int  (*axpy)  (dg_backend_t *be, dg_tensor y, float a, dg_tensor x);
    /* x *= a */
    int  (*scale) (dg_backend_t *be, dg_tensor x, float a);
    /* *out = sum of x^2 over the tensor, accumulated in double (grad-norm clipping) */
    int  (*sumsq) (dg_backend_t *be, double *out, dg_tensor x);

    /* embedding: out (R, D) = wte[tok[r]] (writes); bwd: dwte (V, D) += scatter of dout (R, D) */
    int  (*embed_fwd)(dg_backend_t *be, dg_tensor out, dg_tensor tok, dg_tensor wte);
    int  (*embed_bwd)(dg_backend_t *be, dg_tensor dwte, dg_tensor dout, dg_tensor tok);

    /* LayerNorm over the last axis with biased variance, eps (1e-5):
     * out = (inp - mean) * rstd * gamma + beta; gamma/beta absent => non-affine.
     * fwd writes out (R, D), mean (R), rstd (R); out may alias inp.
     * bwd: dinp (R, D) += ..., dgamma (D) += ..., dbeta (D) += ... (absent when non-affine).
     * bwd reads the fwd INPUT inp (not out), so inp must not have been overwritten. */
    int  (*layernorm_fwd)(dg_backend_t *be, dg_tensor out, dg_tensor mean, dg_tensor rstd,
                          dg_tensor inp, dg_tensor gamma, dg_tensor beta, float eps);
    int  (*layernorm_bwd)(dg_backend_t *be, dg_tensor dinp, dg_tensor dgamma, dg_tensor dbeta,
                          dg_tensor dout, dg_tensor inp, dg_tensor mean, dg_tensor rstd,
                          dg_tensor gamma);

    /* out = max(inp - thr, 0) (writes; may alias). bwd: dinp += dout * (out > 0).
     * dinp may alias dout only when dinp is zero before the call (it then becomes the masked
     * dout) -- backends implement "dinp += dout*mask" element by element, which is alias-safe. */
    int  (*relu_fwd)(dg_backend_t *be, dg_tensor out, dg_tensor inp, float thr);
    int  (*relu_bwd)(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor out);

    /* Positional transform of the neuron activations (MODEL.md §5).
     * inp (B, T, H, N) -> out (B, T, H, Nq) with Nq = N (rope) or 2N (pope: [mu cos | mu sin]);
     * row (b, t) has absolute position pos0[b] + t (pos0: host array of B entries).
     * rope: f_i = theta^(-2 floor(i/2) / N) / (2 pi); phi = 2 pi frac(p f_i) computed with p*f_i
     *   in double; pairs (2k, 2k+1) rotate. pope: f_i = theta^(-i/N) / (2 pi), mu = softplus(x).
     * fwd writes out; bwd: dinp += J^T dout (reads inp for pope's softplus derivative).
     * Not called for alibi. */
    int  (*pos_fwd)(dg_backend_t *be, dg_tensor out, dg_tensor inp, const int64_t *pos0,
                    dg_pos_mode mode, float theta);
    int  (*pos_bwd)(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor inp,
                    const int64_t *pos0, dg_pos_mode mode, float theta);

    /* Strictly causal linear attention, dense-score form, with optional carried state
     * (MODEL.md §3.3). Per (b, h), q_t = q[b, t, h, :] (Nq), v_t = v[b, t, :] (D), g = gamma[h]
     * (host array of H floats; exactly 1 for rope/pope):
     *   out[b, t, h, :] = sum_{s<t} g^(t-s) (q_t . q_s) v_s  +  g^t * rho_in[b, h]^T q_t
     *   rho_out[b, h]   = g^T rho_in[b, h] + sum_{s<T} g^(T-s) q_s v_s^T
     * Shapes: out (B, T, H, D) writes; q (B, T, H, Nq); v (B, T, D); rho_in, rho_out
     * (B, H, Nq, D), each optional (absent = zero state / not wanted); rho_out must not alias
     * rho_in.
     * bwd: given dout (B, T, H, D) and optional drho_out (B, H, Nq, D) (gradient w.r.t. rho_out),
     *   dq += ..., dv += ..., drho_in += ... (if present). */
    int  (*attn_fwd)(dg_backend_t *be, dg_tensor out, dg_tensor rho_out, dg_tensor q, dg_tensor v,
                     dg_tensor rho_in, const float *gamma);
    int  (*attn_bwd)(dg_backend_t *be, dg_tensor dq, dg_tensor dv, dg_tensor drho_in,
                     dg_tensor dout, dg_tensor drho_out, dg_tensor q, dg_tensor v,
                     dg_tensor rho_in, const float *gamma);

    /* Hebbian gating with inverted dropout: z = x * y * keep / (1 - p), keep =
     * dg_dropout_keep(seed, i, p) for flat element index i (kernels/common/dg_hash.h); p = 0
     * means no dropout (no hashing). fwd writes z; bwd: dx += dz*y*k, dy += dz*x*k. */
    int  (*gate_fwd)(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor y, float p,
                     uint64_t seed);
    int  (*gate_bwd)(dg_backend_t *be, dg_tensor dx, dg_tensor dy, dg_tensor dz, dg_tensor x,
                     dg_tensor y, float p, uint64_t seed);

    /* out = a + b (writes; out may alias a or b). */
    int  (*add)(dg_backend_t *be, dg_tensor out, dg_tensor a, dg_tensor b);

    /* Cross-entropy with the softmax fused: for each row r of logits (R, V) and target tgt[r]
     * (i32): loss[r] = logsumexp(logits[r]) - logits[r][tgt[r]] (writes loss (R)).
     * If dlogits is present: dlogits[r] += dscale * (softmax(logits[r]) - onehot(tgt[r])). */
    int  (*xent)(dg_backend_t *be, dg_tensor loss, dg_tensor dlogits, dg_tensor logits,
                 dg_tensor tgt, float dscale);

    /* Fused AdamW over flat f32 tensors of equal size (see dg_adamw_hp). */
    int  (*adamw)(dg_backend_t *be, dg_tensor p, dg_tensor g, dg_tensor m, dg_tensor v,
                  const dg_adamw_hp *hp);

    /* One recurrent decode step of one layer for B sequences (MODEL.md §4.2), read before write:
     *   out[b, h, :] = rho[b][h]^T q[b, h, :];   rho[b][h] = (rho[b][h] + q[b, h, :] v[b, :]^T) * g_h
     * rho: host array of B views, each (H, Nq, D) (sequences need not be contiguous);
     * out (B, H, D) writes; q (B, H, Nq); v (B, D). Backends touch only rows with q != 0, except
     * for the decay, which must be applied to every row when g_h != 1. */
    int  (*attn_step)(dg_backend_t *be, int B, const dg_tensor *rho, dg_tensor out, dg_tensor q,
                      dg_tensor v, const float *gamma);

    /* ---- optional slots (NULL = not offered; the engine falls back) ---- */

    /* attn_step with the decay applied lazily (optional). scale: host array of B*H floats,
     * in/out; the true state of sequence b, head h is scale[b*H + h] * rho[b][h]. Instead of
     * multiplying every row by g_h, a backend multiplies the scale by g_h and writes the rank-1
     * update divided by the scale, touching only the active rows; when a scale falls below
     * DG_LAZY_SCALE_MIN it folds it into the rows and resets it to 1. With all scales 1 and
     * g = 1 this is attn_step exactly. */
    int  (*attn_step_lazy)(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                           dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma);

    /* pos_fwd with the positions in a device tensor (optional): pos (B) i32, row (b, t) at
     * pos[b] + t. For work recorded in a graph, whose positions change between replays. */
    int  (*pos_fwd_dev)(dg_backend_t *be, dg_tensor out, dg_tensor inp, dg_tensor pos,
                        dg_pos_mode mode, float theta);

    /* The decode step's encoder_v GEMM, its ReLU and the gate in one (optional), reading only
     * the weights of active neurons:
     *   z[r, h, j] = x[r, h, j] * max(a[r, h, :] . wt[h, j, :] - thr, 0)  where x[r, h, j] != 0,
     *   z[r, h, j] = 0                                                     elsewhere.
     * wt (H, N, D) is encoder_v (H, D, N) transposed per head, so the row of neuron j is
     * contiguous and the rows of inactive neurons (x = 0: ReLU zeros) are never read.
     * z (R, H*N) writes; x (R, H*N); a (R, H*D). Equal to gemm + relu_fwd + gate_fwd (p = 0). */
    int  (*gate_proj)(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt,
                      float thr);

    /* Graphs (optional, all four or none): between graph_begin and graph_end the verbs called on
     * this handle are recorded, not run; graph_end returns a replayable graph that graph_launch
     * runs (asynchronously, like any verb) with whatever the recorded buffers hold then. While
     * recording, verbs that need the host (set, get, sumsq, sync, host-array arguments that would
     * have to be staged) fail with DG_ENOTSUP, and token ids are not validated (the caller has
     * validated them); graph_end after a failed verb ends the recording and returns that error.
     * The engine records the decode step once per set of sequences (engine/model.c). */
    int  (*graph_begin) (dg_backend_t *be);
    int  (*graph_end)   (dg_backend_t *be, void **graph);
    int  (*graph_launch)(dg_backend_t *be, void *graph);
    void (*graph_free)  (dg_backend_t *be, void *graph);

    /* Devices this backend can open (optional; needs no handle): fills up to max entries and
     * returns how many devices exist (0 when none, e.g. no GPU or no driver), or a negative
     * code. NULL: one host device. */
    int  (*devices)(dg_device_info *out, int max);
};

#define DG_LAZY_SCALE_MIN 1e-18f

/* ------------------------------------------------------------------------------------------
 * The handle (backends embed nothing else in it; private state hangs off ctx). */
struct dg_backend_s {
    const dg_backend_iface *iface;
    void                   *ctx;
    char                    errmsg[256];  /* last device error text, for logs */
};

/* Registry (engine/backend_registry.c): name -> iface. "cpu" is the default. */
const dg_backend_iface *dg_backend_find(const char *name);
/* Comma-separated list of compiled-in backend names, e.g. "ref,cpu,cuda". */
const char *dg_backend_list(void);

/* Devices of the named backend (see the devices slot): count, or a negative code; a host
 * backend reports one device "cpu" with the machine's memory. Any thread. */
int  dg_backend_devices(const char *name, dg_device_info *out, int max);

/* Open a backend: checks the iface version and that every required slot is non-NULL (a missing
 * op fails with DG_ENOTSUP, naming the op in the log). Returns 0 or a negative DG_E* code. */
int  dg_backend_open(const char *name, const dg_backend_params *p, dg_backend_t **out);
void dg_backend_close(dg_backend_t *be);            /* NULL is a no-op */
const char *dg_backend_name(const dg_backend_t *be);
bool dg_backend_is_host(const dg_backend_t *be);    /* ref and cpu: buffers are host memory */

/* Asserting wrappers: one per slot, same arguments. */
int  dg_buf_alloc(dg_backend_t *be, size_t nbytes, dg_buf_t **out);
void dg_buf_free(dg_backend_t *be, dg_buf_t *buf);  /* NULL buf is a no-op */
int  dg_set(dg_backend_t *be, dg_tensor dst, const void *host);
int  dg_get(dg_backend_t *be, void *host, dg_tensor src);
int  dg_copy(dg_backend_t *be, dg_tensor dst, dg_tensor src);
int  dg_fill(dg_backend_t *be, dg_tensor t, float value);
int  dg_sync(dg_backend_t *be);
int  dg_gemm(dg_backend_t *be, const dg_gemm_desc *d);
int  dg_axpy(dg_backend_t *be, dg_tensor y, float a, dg_tensor x);
int  dg_scale(dg_backend_t *be, dg_tensor x, float a);
int  dg_sumsq(dg_backend_t *be, double *out, dg_tensor x);
int  dg_embed_fwd(dg_backend_t *be, dg_tensor out, dg_tensor tok, dg_tensor wte);
int  dg_embed_bwd(dg_backend_t *be, dg_tensor dwte, dg_tensor dout, dg_tensor tok);
int  dg_layernorm_fwd(dg_backend_t *be, dg_tensor out, dg_tensor mean, dg_tensor rstd,
                      dg_tensor inp, dg_tensor gamma, dg_tensor beta, float eps);
int  dg_layernorm_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dgamma, dg_tensor dbeta,
                      dg_tensor dout, dg_tensor inp, dg_tensor mean, dg_tensor rstd,
                      dg_tensor gamma);
int  dg_relu_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, float thr);
int  dg_relu_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor out);
int  dg_pos_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, const int64_t *pos0,
                dg_pos_mode mode, float theta);
int  dg_pos_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor inp,
                const int64_t *pos0, dg_pos_mode mode, float theta);
int  dg_attn_fwd(dg_backend_t *be, dg_tensor out, dg_tensor rho_out, dg_tensor q, dg_tensor v,
                 dg_tensor rho_in, const float *gamma);
int  dg_attn_bwd(dg_backend_t *be, dg_tensor dq, dg_tensor dv, dg_tensor drho_in, dg_tensor dout,
                 dg_tensor drho_out, dg_tensor q, dg_tensor v, dg_tensor rho_in,
                 const float *gamma);
int  dg_gate_fwd(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor y, float p, uint64_t seed);
int  dg_gate_bwd(dg_backend_t *be, dg_tensor dx, dg_tensor dy, dg_tensor dz, dg_tensor x,
                 dg_tensor y, float p, uint64_t seed);
int  dg_add(dg_backend_t *be, dg_tensor out, dg_tensor a, dg_tensor b);
int  dg_xent(dg_backend_t *be, dg_tensor loss, dg_tensor dlogits, dg_tensor logits, dg_tensor tgt,
             float dscale);
int  dg_adamw(dg_backend_t *be, dg_tensor p, dg_tensor g, dg_tensor m, dg_tensor v,
              const dg_adamw_hp *hp);
int  dg_attn_step(dg_backend_t *be, int B, const dg_tensor *rho, dg_tensor out, dg_tensor q,
                  dg_tensor v, const float *gamma);
/* true when the backend offers graphs (graph_begin .. graph_free) and pos_fwd_dev */
bool dg_has_graphs(const dg_backend_t *be);
int  dg_pos_fwd_dev(dg_backend_t *be, dg_tensor out, dg_tensor inp, dg_tensor pos,
                    dg_pos_mode mode, float theta);
int  dg_graph_begin(dg_backend_t *be);
int  dg_graph_end(dg_backend_t *be, void **graph);
int  dg_graph_launch(dg_backend_t *be, void *graph);
void dg_graph_free(dg_backend_t *be, void *graph);

/* true when the backend offers gate_proj */
bool dg_has_gate_proj(const dg_backend_t *be);
int  dg_gate_proj(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor a, dg_tensor wt, float thr);

/* true when the backend offers attn_step_lazy */
bool dg_has_attn_step_lazy(const dg_backend_t *be);
int  dg_attn_step_lazy(dg_backend_t *be, int B, const dg_tensor *rho, float *scale,
                       dg_tensor out, dg_tensor q, dg_tensor v, const float *gamma);

#endif /* DG_BACKEND_H */
