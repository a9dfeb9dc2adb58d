/* kernels/cuda/cuda_backend.cu -- the "cuda" backend: every verb of engine/backend.h on one
 * NVIDIA GPU (sm_90a), with the same semantics as kernels/ref (the specification).
 *
 * Buffers are cudaMalloc'd device memory (dg_buf_t.data = device pointer); all work is queued on
 * one stream per backend handle, so verbs are asynchronous except set, get, sumsq, sync, buf_free
 * and the verbs that validate token ids on the host's behalf (embed_fwd, embed_bwd, xent).
 * GEMMs run on cuBLAS over the f32 buffers with tensor cores: compute type
 * CUBLAS_COMPUTE_32F_FAST_16BF (bf16 operands, fp32 accumulation; master data stays f32) by
 * default; DG_CUDA_GEMM=tf32 or =f32 selects FAST_TF32 or exact fp32 (for tests and studies).
 * Output-dominated GEMMs (K small, C large: the encoder projections) stage their operands as dense
 * bf16 first (same precision policy, faster; DG_CUDA_CVT=0 turns that off). Attention (fwd/bwd) is
 * the dense-score causal form built from strided-batched GEMMs plus small mask/decay kernels;
 * attn_step is the sparse active-row decode update (rows with q = 0 are not touched unless a decay
 * must be applied). Elementwise verbs use float4 access when aligned. DG_CUDA_PROFILE=1 prints a
 * per-verb time table when the handle is closed (each verb synced: for breakdowns, not speed).
 *
 * Not here: model logic (engine/model.c), host fallbacks, multi-GPU placement (the daemon opens
 * one handle per device). Errors: every CUDA/cuBLAS failure maps to DG_EDEVICE (DG_EOOM for an
 * allocation failure) with the CUDA message in be->errmsg and in the log; nothing exits.
 * Thread affinity: one handle belongs to one thread; the device is made current on every verb. */
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

extern "C" {
#include "dg.h"
#include "backend.h"
}
#include "dg_hash.h"

// ------------------------------------------------------------------------------------------
// context and error mapping

#define NT 256                     /* threads per block for elementwise kernels */
#define STEP_SLAB 64               /* rows of rho per block in attn_step */
#define CU_MAX_HEADS 64
#define CNT_STEP 16384             /* attn_step counters: one per (sequence, head) */
#define CNT_GEMV 16384             /* few-row GEMM counters: one per (column tile, batch item) */
#define PIN_RING 16                /* pinned staging slots for small host->device arguments */
#define PIN_SLOT 4096            /* = DG_MAX_HEADS of engine/model.h */

typedef struct {
    int                 device;
    cudaStream_t        stream;
    cublasHandle_t      blas;
    cublasComputeType_t compute;   /* for every GEMM */
    void               *scratch;   /* growable device scratch (attention temporaries, partials) */
    size_t              scratch_bytes;
    void               *cvt;       /* growable bf16 staging for output-dominated GEMMs */
    size_t              cvt_bytes;
    int                 cvt_on;    /* DG_CUDA_CVT=0 turns the staging path off */
    int                 gemv_on;   /* DG_CUDA_GEMV=0: few-row GEMMs on cuBLAS too */
    int                 gemv_spb;  /* k_gemv blocks per SM to aim for (DG_CUDA_GEMV_SPB, 2) */
    int                 nsm;       /* multiprocessors */
    void               *args;      /* small device buffer for host arrays (pos0, pointers) */
    size_t              args_bytes;
    double             *freq;      /* pos frequency table (N doubles), cached by (N, theta, mode) */
    int64_t             freq_n;
    float               freq_theta;
    int                 freq_mode;
    char               *pin;       /* PIN_RING pinned slots of PIN_SLOT bytes for args_put */
    cudaEvent_t         pin_ev[PIN_RING];
    int                 pin_next;
    int                *d_flag;    /* device int for input validation */
    int                *h_flag;    /* pinned host copy */
    int                 capturing; /* between graph_begin and graph_end */
    int                 cap_err;   /* first verb error while capturing (graph_end returns it) */
    unsigned           *cnt;       /* CNT_STEP + CNT_GEMV zeroed block counters (last-block sums) */
    uint64_t            gen;       /* bumped when scratch, cvt or freq move (graphs hold them) */
    void               *ws;        /* cuBLAS workspace (set explicitly: no allocation in a graph) */
    int                 prof;      /* DG_CUDA_PROFILE=1: per-verb device time table at free */
    struct prof_ent    *prof_tab;
    int                 prof_n;
} cuda_ctx;

/* Per-verb profile (DG_CUDA_PROFILE=1): each verb is bracketed by stream syncs and timed on the
 * host clock, so the table is exact per verb but the run is slower (no overlap, sync gaps). */
#define PROF_MAX 256
struct prof_ent { char name[64]; double s, first; long n; };

static cuda_ctx *CTX(dg_backend_t *be) { return (cuda_ctx *)be->ctx; }

struct ProfScope {
    cuda_ctx *c;
    int       idx;
    double    t0;
    ProfScope(dg_backend_t *be, const char *name) : c(CTX(be)), idx(-1), t0(0) {
        if (!c->prof) return;
        int i = 0;
        while (i < c->prof_n && strcmp(c->prof_tab[i].name, name)) i++;
        if (i == c->prof_n) {
            if (c->prof_n == PROF_MAX) return;
            snprintf(c->prof_tab[i].name, sizeof c->prof_tab[i].name, "%s", name);
            c->prof_n++;
        }
        idx = i;
        cudaStreamSynchronize(c->stream);
        t0 = dg_now();
    }
    ~ProfScope() {
        if (idx < 0) return;
        cudaStreamSynchronize(c->stream);
        struct prof_ent *e = &c->prof_tab[idx];
        if (e->first == 0) e->first = dg_now() - t0;   /* first call: loading, heuristics */
        else { e->s += dg_now() - t0; e->n++; }
    }
};
#define PROF(name) ProfScope prof_scope_(be, name)

static void prof_print(cuda_ctx *c) {
    double tot = 0;
    for (int i = 0; i < c->prof_n; i++) tot += c->prof_tab[i].s;
    fprintf(stderr, "cuda profile (DG_CUDA_PROFILE): %d verbs/shapes, %.3f s total, first call of "
            "each excluded (shown last)\n", c->prof_n, tot);
    for (int k = 0; k < c->prof_n; k++) {        /* print in descending time */
        int best = -1;
        for (int i = 0; i < c->prof_n; i++)
            if (c->prof_tab[i].n >= 0 && (best < 0 || c->prof_tab[i].s > c->prof_tab[best].s))
                best = i;
        if (best < 0) break;
        struct prof_ent *e = &c->prof_tab[best];
        fprintf(stderr, "  %6.2f%% %10.3f ms %7ld calls %9.3f ms/call  %-36s (first %.3f ms)\n",
                tot > 0 ? 100 * e->s / tot : 0.0, 1e3 * e->s, e->n, 1e3 * e->s / (e->n ? e->n : 1),
                e->name, 1e3 * e->first);
        e->n = -1;
    }
}

static int cuda_fail(dg_backend_t *be, cudaError_t e, const char *what, int line) {
    int rc = (e == cudaErrorMemoryAllocation) ? DG_EOOM : DG_EDEVICE;
    /* An allocation failure is not sticky: clear it, or the next launch check would report it
     * again and fail a verb that did nothing wrong. (Sticky errors stay and fail every verb.) */
    if (e == cudaErrorMemoryAllocation) cudaGetLastError();
    snprintf(be->errmsg, sizeof be->errmsg, "%.120s: %s (%s) [cuda_backend.cu:%d]", what,
             cudaGetErrorString(e), cudaGetErrorName(e), line);
    DG_ERROR("cuda: %s", be->errmsg);
    return rc;
}

static int blas_fail(dg_backend_t *be, cublasStatus_t s, const char *what, int line) {
    int rc = (s == CUBLAS_STATUS_ALLOC_FAILED) ? DG_EOOM : DG_EDEVICE;
    snprintf(be->errmsg, sizeof be->errmsg, "%.120s: %s [cuda_backend.cu:%d]", what,
             cublasGetStatusString(s), line);
    DG_ERROR("cuda: %s", be->errmsg);
    return rc;
}

#define CK(call) do { cudaError_t e_ = (call); \
    if (e_ != cudaSuccess) return cuda_fail(be, e_, #call, __LINE__); } while (0)
#define CKB(call) do { cublasStatus_t s_ = (call); \
    if (s_ != CUBLAS_STATUS_SUCCESS) return blas_fail(be, s_, #call, __LINE__); } while (0)
#define LAUNCHED(what) do { cudaError_t e_ = cudaGetLastError(); \
    if (e_ != cudaSuccess) return cuda_fail(be, e_, what, __LINE__); } while (0)
#define RET(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

/* While a graph is being recorded, work that needs the host (a sync, a staged host array, a
 * buffer that must grow) cannot be recorded: the verb fails with DG_ENOTSUP and graph_end
 * reports it (the engine then runs the step without a graph). */
static int capture_refuse(dg_backend_t *be, const char *what) {
    snprintf(be->errmsg, sizeof be->errmsg, "%s cannot be recorded in a graph", what);
    cuda_ctx *c = (cuda_ctx *)be->ctx;
    if (!c->cap_err) c->cap_err = DG_ENOTSUP;
    return DG_ENOTSUP;
}
#define NO_CAPTURE(what) do { if (CTX(be)->capturing) return capture_refuse(be, what); } while (0)

static float *F(dg_tensor t) { return (float *)((char *)t.buf->data + t.offs); }
static const int32_t *I(dg_tensor t) { return (const int32_t *)((char *)t.buf->data + t.offs); }
static float *FM(const dg_mat &m) { return (float *)((char *)m.buf->data + m.offs); }

static unsigned blocks_for(int64_t n) {
    int64_t b = (n + NT - 1) / NT;
    if (b < 1) b = 1;
    if (b > (1 << 20)) b = 1 << 20;   /* grid-stride loops cover the rest */
    return (unsigned)b;
}

static int scratch_get(dg_backend_t *be, size_t bytes, void **out) {
    cuda_ctx *c = CTX(be);
    if (bytes > c->scratch_bytes) {
        NO_CAPTURE("growing the scratch buffer");
        if (c->scratch) {
            CK(cudaStreamSynchronize(c->stream));
            CK(cudaFree(c->scratch));
            c->scratch = NULL;
            c->scratch_bytes = 0;
        }
        size_t nb = bytes + bytes / 4 + 256;
        c->gen++;
        CK(cudaMalloc(&c->scratch, nb));
        c->scratch_bytes = nb;
    }
    *out = c->scratch;
    return 0;
}

/* Copies n bytes of host data into the small device args buffer (stream-ordered, so the previous
 * user of the buffer has finished reading it when the copy lands). Small copies go through a ring
 * of pinned host slots, so they stay asynchronous: a copy from pageable memory would first wait
 * for the whole stream to drain, exposing every launch behind it (decode issues two per layer). A
 * slot is reused only after the event recorded behind its copy has completed. */
static int args_put(dg_backend_t *be, const void *host, size_t n, void **out) {
    cuda_ctx *c = CTX(be);
    NO_CAPTURE("a host argument array");
    if (n > c->args_bytes) {
        if (c->args) { CK(cudaStreamSynchronize(c->stream)); CK(cudaFree(c->args)); }
        c->args = NULL; c->args_bytes = 0;
        size_t nb = n < PIN_SLOT ? PIN_SLOT : 2 * n;
        CK(cudaMalloc(&c->args, nb));
        c->args_bytes = nb;
    }
    if (n <= PIN_SLOT) {
        int k = c->pin_next;
        c->pin_next = (k + 1) % PIN_RING;
        CK(cudaEventSynchronize(c->pin_ev[k]));   /* recorded at init, so always valid */
        memcpy(c->pin + (size_t)k * PIN_SLOT, host, n);
        CK(cudaMemcpyAsync(c->args, c->pin + (size_t)k * PIN_SLOT, n, cudaMemcpyHostToDevice,
                           c->stream));
        CK(cudaEventRecord(c->pin_ev[k], c->stream));
    } else {
        CK(cudaMemcpyAsync(c->args, host, n, cudaMemcpyHostToDevice, c->stream));
    }
    *out = c->args;
    return 0;
}

#define SETDEV() do { CK(cudaSetDevice(CTX(be)->device)); } while (0)

// ------------------------------------------------------------------------------------------
// lifecycle and memory

static int cu_init(dg_backend_t *be, const dg_backend_params *p) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) return cuda_fail(be, e, "cudaGetDeviceCount", __LINE__);
    if (p->device < 0 || p->device >= n) {
        snprintf(be->errmsg, sizeof be->errmsg, "device %d requested, %d CUDA device(s) present",
                 p->device, n);
        DG_ERROR("cuda: %s", be->errmsg);
        return DG_ENOTFOUND;
    }
    cuda_ctx *c = (cuda_ctx *)dg_calloc(1, sizeof *c);
    be->ctx = c;
    c->device = p->device;
    c->compute = CUBLAS_COMPUTE_32F_FAST_16BF;
    const char *cv = getenv("DG_CUDA_CVT");
    c->cvt_on = !(cv && !strcmp(cv, "0"));
    const char *gv = getenv("DG_CUDA_GEMV");
    c->gemv_on = !(gv && !strcmp(gv, "0"));
    const char *gs = getenv("DG_CUDA_GEMV_SPB");
    c->gemv_spb = gs && atoi(gs) > 0 && atoi(gs) <= 64 ? atoi(gs) : 2;
    const char *pe = getenv("DG_CUDA_PROFILE");
    if (pe && *pe && strcmp(pe, "0")) {
        c->prof = 1;
        c->prof_tab = (struct prof_ent *)dg_calloc(PROF_MAX, sizeof *c->prof_tab);
    }
    const char *g = getenv("DG_CUDA_GEMM");
    if (g && !strcmp(g, "tf32")) c->compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    if (g && !strcmp(g, "f32")) c->compute = CUBLAS_COMPUTE_32F;
    int rc = 0;
    if ((e = cudaSetDevice(c->device)) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaSetDevice", __LINE__);
    if (!rc && (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaStreamCreate", __LINE__);
    cublasStatus_t s;
    if (!rc && (s = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS)
        rc = blas_fail(be, s, "cublasCreate", __LINE__);
    if (!rc && (s = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
        rc = blas_fail(be, s, "cublasSetStream", __LINE__);
    /* cuBLAS gets its workspace up front (32 MiB, as NVIDIA advises for Hopper), so no GEMM
     * allocates one later, in particular not while a graph is being recorded. */
    if (!rc && (e = cudaMalloc(&c->ws, (size_t)32 << 20)) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaMalloc(cublas workspace)", __LINE__);
    if (!rc && (s = cublasSetWorkspace(c->blas, c->ws, (size_t)32 << 20)) != CUBLAS_STATUS_SUCCESS)
        rc = blas_fail(be, s, "cublasSetWorkspace", __LINE__);
    if (!rc && (e = cudaMalloc(&c->cnt, (CNT_STEP + CNT_GEMV) * sizeof(unsigned))) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaMalloc(counters)", __LINE__);
    if (!rc && (e = cudaMemset(c->cnt, 0, (CNT_STEP + CNT_GEMV) * sizeof(unsigned))) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaMemset(counters)", __LINE__);
    if (!rc && (e = cudaMalloc(&c->d_flag, sizeof(int))) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaMalloc(flag)", __LINE__);
    if (!rc && (e = cudaMallocHost(&c->h_flag, sizeof(int))) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaMallocHost(flag)", __LINE__);
    if (!rc && (e = cudaMallocHost(&c->pin, (size_t)PIN_RING * PIN_SLOT)) != cudaSuccess)
        rc = cuda_fail(be, e, "cudaMallocHost(args ring)", __LINE__);
    for (int k = 0; k < PIN_RING && !rc; k++) {
        if ((e = cudaEventCreateWithFlags(&c->pin_ev[k], cudaEventDisableTiming)) != cudaSuccess ||
            (e = cudaEventRecord(c->pin_ev[k], c->stream)) != cudaSuccess)
            rc = cuda_fail(be, e, "cudaEventCreate(args ring)", __LINE__);
    }
    if (rc) {
        for (int k = 0; k < PIN_RING; k++)
            if (c->pin_ev[k]) cudaEventDestroy(c->pin_ev[k]);
        if (c->pin) cudaFreeHost(c->pin);
        if (c->d_flag) cudaFree(c->d_flag);
        if (c->h_flag) cudaFreeHost(c->h_flag);
        if (c->blas) cublasDestroy(c->blas);
        if (c->ws) cudaFree(c->ws);
        if (c->cnt) cudaFree(c->cnt);
        if (c->stream) cudaStreamDestroy(c->stream);
        dg_free(c);
        be->ctx = NULL;
        return rc;
    }
    cudaDeviceProp prop;
    c->nsm = 132;                 /* an H100's, should the query fail */
    if (cudaGetDeviceProperties(&prop, c->device) == cudaSuccess) {
        c->nsm = prop.multiProcessorCount;
        DG_INFO("cuda: device %d: %s, %.1f GiB, sm_%d%d, gemm %s", c->device, prop.name,
                prop.totalGlobalMem / 1073741824.0, prop.major, prop.minor,
                c->compute == CUBLAS_COMPUTE_32F_FAST_16BF ? "bf16 tensor cores (fp32 acc)" :
                c->compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? "tf32 tensor cores" : "fp32");
    }
    return 0;
}

static void cu_free(dg_backend_t *be) {
    cuda_ctx *c = CTX(be);
    if (!c) return;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream);
    if (c->prof) { prof_print(c); dg_free(c->prof_tab); }
    if (c->scratch) cudaFree(c->scratch);
    if (c->cvt) cudaFree(c->cvt);
    if (c->args) cudaFree(c->args);
    if (c->freq) cudaFree(c->freq);
    cudaFree(c->d_flag);
    cudaFreeHost(c->h_flag);
    for (int k = 0; k < PIN_RING; k++) cudaEventDestroy(c->pin_ev[k]);
    cudaFreeHost(c->pin);
    cublasDestroy(c->blas);
    if (c->ws) cudaFree(c->ws);
    if (c->cnt) cudaFree(c->cnt);
    cudaStreamDestroy(c->stream);
    dg_free(c);
    be->ctx = NULL;
}

static int cu_buf_alloc(dg_backend_t *be, size_t nbytes, dg_buf_t **out) {
    SETDEV();
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, nbytes);
    if (e != cudaSuccess) {
        char what[64];
        snprintf(what, sizeof what, "cudaMalloc(%zu bytes)", nbytes);
        return cuda_fail(be, e, what, __LINE__);
    }
    dg_buf_t *b = (dg_buf_t *)dg_calloc(1, sizeof *b);
    b->data = p;
    b->nbytes = nbytes;
    *out = b;
    return 0;
}

static void cu_buf_free(dg_backend_t *be, dg_buf_t *buf) {
    cuda_ctx *c = CTX(be);
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream);     /* no queued kernel may still use it */
    cudaError_t e = cudaFree(buf->data);
    if (e != cudaSuccess) cuda_fail(be, e, "cudaFree", __LINE__);
    dg_free(buf);
}

static int cu_set(dg_backend_t *be, dg_tensor dst, const void *host) {
    SETDEV();
    NO_CAPTURE("set");
    CK(cudaMemcpyAsync(F(dst), host, dg_nbytes(dst), cudaMemcpyHostToDevice, CTX(be)->stream));
    CK(cudaStreamSynchronize(CTX(be)->stream));
    return 0;
}

static int cu_get(dg_backend_t *be, void *host, dg_tensor src) {
    SETDEV();
    NO_CAPTURE("get");
    CK(cudaMemcpyAsync(host, F(src), dg_nbytes(src), cudaMemcpyDeviceToHost, CTX(be)->stream));
    CK(cudaStreamSynchronize(CTX(be)->stream));
    return 0;
}

static int cu_copy(dg_backend_t *be, dg_tensor dst, dg_tensor src) {
    SETDEV();
    PROF("copy");
    CK(cudaMemcpyAsync(F(dst), F(src), dg_nbytes(src), cudaMemcpyDeviceToDevice,
                       CTX(be)->stream));
    return 0;
}

#define GRID_LOOP(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
         i += (int64_t)gridDim.x * blockDim.x)

/* Elementwise kernels have a float4 twin, used when every pointer is 16-byte aligned and the
 * count is a multiple of 4 (one thread, four consecutive elements, same index order: the
 * aliasing rules of the scalar form still hold). */
static bool al16(const void *p) { return ((uintptr_t)p & 15) == 0; }
#define V4(a, b, c, n) (al16(a) && al16(b) && al16(c) && (n) % 4 == 0)

__global__ void k_fill(float *x, int64_t n, float v) { GRID_LOOP(i, n) x[i] = v; }
__global__ void k_fill4(float4 *x, int64_t n4, float v) {
    GRID_LOOP(i, n4) x[i] = make_float4(v, v, v, v);
}

static int cu_fill(dg_backend_t *be, dg_tensor t, float value) {
    SETDEV();
    PROF("fill");
    int64_t n = dg_nelem(t);
    if (V4(F(t), F(t), F(t), n))
        k_fill4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>((float4 *)F(t), n / 4, value);
    else
        k_fill<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(t), n, value);
    LAUNCHED("fill");
    return 0;
}

static int cu_sync(dg_backend_t *be) {
    SETDEV();
    NO_CAPTURE("sync");
    CK(cudaStreamSynchronize(CTX(be)->stream));
    return 0;
}

// ------------------------------------------------------------------------------------------
// dense algebra

/* Row-major C[k] (M, N) = alpha op(A[k]) op(B[k]) + beta C[k], as cuBLAS column-major
 * C^T = op(B)^T op(A)^T. lda etc. are row-major leading dimensions of the STORED matrices. */
static int gemm_rm(dg_backend_t *be, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, int64_t sA, const float *B,
                   int64_t ldb, int64_t sB, float beta, float *C, int64_t ldc, int64_t sC,
                   int64_t batch) {
    cuda_ctx *c = CTX(be);
    CKB(cublasGemmStridedBatchedEx(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha,
                                   B, CUDA_R_32F, (int)ldb, (long long)sB, A, CUDA_R_32F, (int)lda,
                                   (long long)sA, &beta, C, CUDA_R_32F, (int)ldc, (long long)sC,
                                   (int)batch, c->compute, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* Packs a strided batched f32 operand into dense bf16 (batch, rows, cols); batch 1 when the
 * operand is shared (bstride 0). */
__global__ void k_pack_bf16(__nv_bfloat16 *dst, const float *src, int64_t rows, int64_t cols,
                            int64_t ld, int64_t bstride, int64_t batch) {
    GRID_LOOP(i, batch * rows * cols) {
        int64_t c = i % cols, r = (i / cols) % rows, k = i / (rows * cols);
        dst[i] = __float2bfloat16_rn(src[k * bstride + r * ld + c]);
    }
}

/* Output-dominated GEMMs (the encoder projections: K = D = 256, C = 2 GiB of f32) run faster with
 * the operands staged as dense bf16 than with cuBLAS' FAST_16BF on f32 operands; the numbers are
 * the same policy (bf16 operands, fp32 accumulation, f32 C). Returns 1 if it did not apply. */
static int gemm_staged(dg_backend_t *be, const dg_gemm_desc *d) {
    cuda_ctx *c = CTX(be);
    if (!c->cvt_on || c->compute != CUBLAS_COMPUTE_32F_FAST_16BF) return 1;
    int64_t na = d->A.rows * d->A.cols * (d->A.bstride ? d->batch : 1);
    int64_t nb = d->B.rows * d->B.cols * (d->B.bstride ? d->batch : 1);
    int64_t nc = d->M * d->N * d->batch;
    if ((na + nb) * 8 > nc || nc < (1 << 22)) return 1;
    size_t bytes = (size_t)(na + nb) * 2 + 256;
    if (bytes > c->cvt_bytes) {
        NO_CAPTURE("growing the bf16 staging buffer");
        if (c->cvt) { CK(cudaStreamSynchronize(c->stream)); CK(cudaFree(c->cvt)); }
        c->cvt = NULL; c->cvt_bytes = 0;
        c->gen++;
        CK(cudaMalloc(&c->cvt, bytes + bytes / 4));
        c->cvt_bytes = bytes + bytes / 4;
    }
    __nv_bfloat16 *A = (__nv_bfloat16 *)c->cvt, *B = A + ((na + 63) / 64) * 64;
    k_pack_bf16<<<blocks_for(na), NT, 0, c->stream>>>(A, FM(d->A), d->A.rows, d->A.cols, d->A.ld,
                                                     d->A.bstride, d->A.bstride ? d->batch : 1);
    LAUNCHED("gemm pack A");
    k_pack_bf16<<<blocks_for(nb), NT, 0, c->stream>>>(B, FM(d->B), d->B.rows, d->B.cols, d->B.ld,
                                                     d->B.bstride, d->B.bstride ? d->batch : 1);
    LAUNCHED("gemm pack B");
    long long sA = d->A.bstride ? d->A.rows * d->A.cols : 0;
    long long sB = d->B.bstride ? d->B.rows * d->B.cols : 0;
    CKB(cublasGemmStridedBatchedEx(c->blas, d->B.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   d->A.trans ? CUBLAS_OP_T : CUBLAS_OP_N, (int)d->N, (int)d->M,
                                   (int)d->K, &d->alpha, B, CUDA_R_16BF, (int)d->B.cols, sB, A,
                                   CUDA_R_16BF, (int)d->A.cols, sA, &d->beta, FM(d->C), CUDA_R_32F,
                                   (int)d->C.ld, (long long)d->C.bstride, (int)d->batch,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* Few-row GEMMs (M <= 8: the decode step's projections) are memory-bound on B: cuBLAS reaches a
 * fraction of the bandwidth there. k_gemv streams B once with float4 loads in exact fp32: a block
 * owns 128 columns (32 lanes x float4) of one batch item and a slice of KB rows of K, its 8 warps
 * take the rows in turn (8 in flight each) and skip rows where every A[m][k] is zero (the
 * decoder's input is a ReLU product, mostly zero); the warps' sums meet in shared memory. With one
 * slice per item the block writes C; else it writes partial sums and the slices are added
 * in a fixed order (deterministic), in the last block of each column tile to finish. */
#define GV_WARPS 8
#define GV_MAXM  8
#define GV_KB    512

#define GV_NC    4                /* columns per lane: one float4 */
/* Lane `lane` of every warp has put its NC column sums in red[warp]; warp 0 adds them in warp
 * order and writes alpha * sum + beta * C to C, or the plain sum to part when part is set.
 * Callers sync before (red filled) and after (red reused). */
template <int NC>
__device__ __forceinline__ void gv_emit(float (*red)[32 * GV_NC], int warp, int lane, bool colok,
                                        float *c, float alpha, float beta, float *part) {
    if (warp != 0 || !colok) return;
#pragma unroll
    for (int j = 0; j < NC; j++) {
        float t = red[0][lane * NC + j];
        for (int w2 = 1; w2 < GV_WARPS; w2++) t += red[w2][lane * NC + j];
        if (part) part[j] = t;
        else c[j] = beta != 0.f ? alpha * t + beta * c[j] : alpha * t;
    }
}

template <int M>
__global__ void __launch_bounds__(GV_WARPS * 32)
k_gemv(const float *A, int64_t lda, int64_t sA, const float *B, int64_t ldb, int64_t sB,
       float *C, int64_t ldc, int64_t sC, int64_t N, int64_t K, int64_t KB, float alpha,
       float beta, float *part, int64_t batch, unsigned *cnt) {
    const int NC = GV_NC;
    int64_t tile = blockIdx.x, sl = blockIdx.y, bi = blockIdx.z;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t k0 = sl * KB, kn = K - k0 < KB ? K - k0 : KB;
    __shared__ float as[GV_MAXM * GV_KB];
    __shared__ unsigned char live[GV_KB];
    __shared__ float red[GV_WARPS][32 * GV_NC];
    const float *Ab = A + bi * sA;
    for (int64_t k = threadIdx.x; k < kn; k += blockDim.x) {
        bool any = false;
#pragma unroll
        for (int m = 0; m < M; m++) {
            float a = Ab[m * lda + k0 + k];
            as[m * GV_KB + k] = a;
            any |= a != 0.f;
        }
        live[k] = any;
    }
    __syncthreads();
    int64_t col = (tile * 32 + lane) * NC;      /* first of this lane's NC columns */
    bool colok = col < N;
    const float *Bp = B + bi * sB + k0 * ldb;
    float acc[M][NC];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int j = 0; j < NC; j++) acc[m][j] = 0.f;
    const int U = 8;
    for (int64_t kk = warp; kk < kn; kk += (int64_t)GV_WARPS * U) {
        float w[U][NC];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t k = kk + (int64_t)u * GV_WARPS;
            float4 b4 = k < kn && live[k] && colok ? __ldg((const float4 *)(Bp + k * ldb + col))
                                                   : make_float4(0.f, 0.f, 0.f, 0.f);
            w[u][0] = b4.x; w[u][1] = b4.y; w[u][2] = b4.z; w[u][3] = b4.w;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t k = kk + (int64_t)u * GV_WARPS;
            if (k >= kn || !live[k]) continue;
#pragma unroll
            for (int m = 0; m < M; m++) {
                float a = as[m * GV_KB + k];
#pragma unroll
                for (int j = 0; j < NC; j++) acc[m][j] += a * w[u][j];
            }
        }
    }
    int S = gridDim.y;
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int j = 0; j < NC; j++) red[warp][lane * NC + j] = acc[m][j];
        __syncthreads();
        gv_emit<NC>(red, warp, lane, colok, C + bi * sC + m * ldc + col, alpha, beta,
                    S == 1 ? NULL : part + ((sl * batch + bi) * M + m) * N + col);
        __syncthreads();
    }
    if (S == 1) return;
    /* the last slice block of (tile, item) to finish adds the S partial sums: warp w takes the
     * slices w, w + 8, ..., then the 8 warp sums are added in order (deterministic) */
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    unsigned *ct = cnt + tile * batch + bi;
    if (threadIdx.x == 0) last = atomicAdd(ct, 1u) == (unsigned)(S - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int m = 0; m < M; m++) {
        float t[NC];
#pragma unroll
        for (int j = 0; j < NC; j++) t[j] = 0.f;
        if (colok)
            for (int64_t k = warp; k < S; k += 4 * GV_WARPS) {   /* 4 rows in flight, in order */
                float o[4][NC];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    int64_t kk = k + (int64_t)u * GV_WARPS;
                    const float *pr = part + ((kk * batch + bi) * M + m) * N + col;
#pragma unroll
                    for (int j = 0; j < NC; j += 4) {
                        float4 v = kk < S ? __ldcg((const float4 *)(pr + j))
                                          : make_float4(0.f, 0.f, 0.f, 0.f);
                        o[u][j] = v.x; o[u][j + 1] = v.y; o[u][j + 2] = v.z; o[u][j + 3] = v.w;
                    }
                }
#pragma unroll
                for (int u = 0; u < 4; u++)
#pragma unroll
                    for (int j = 0; j < NC; j++) t[j] += o[u][j];
            }
#pragma unroll
        for (int j = 0; j < NC; j++) red[warp][lane * NC + j] = t[j];
        __syncthreads();
        gv_emit<NC>(red, warp, lane, colok, C + bi * sC + m * ldc + col, alpha, beta, NULL);
        __syncthreads();
    }
    if (threadIdx.x == 0) *ct = 0;
}

/* Returns 1 when the shape is not for k_gemv. */
static int gemm_few_rows(dg_backend_t *be, const dg_gemm_desc *d) {
    cuda_ctx *c = CTX(be);
    if (!c->gemv_on || d->M > GV_MAXM || d->A.trans || d->B.trans) return 1;
    const int NC = GV_NC;
    const float *B = FM(d->B);
    float *C = FM(d->C);
    bool ok = d->N % NC == 0 && d->B.ld % NC == 0 && d->B.bstride % NC == 0 && al16(B) &&
              d->K >= 1;
    int64_t tiles = (d->N + 32 * NC - 1) / (32 * NC), items = tiles * d->batch;
    if (!ok || items > CNT_GEMV) return 1;
    int64_t S = (c->gemv_spb * (int64_t)c->nsm + items - 1) / items;   /* blocks per SM */
    int64_t smax = (d->K + 31) / 32, smin = (d->K + GV_KB - 1) / GV_KB;
    if (S > smax) S = smax;
    if (S < smin) S = smin;
    int64_t KB = (d->K + S - 1) / S;
    S = (d->K + KB - 1) / KB;
    float *part = NULL;
    if (S > 1)
        RET(scratch_get(be, (size_t)(S * d->batch * d->M * d->N) * sizeof(float), (void **)&part));
    dim3 grid((unsigned)tiles, (unsigned)S, (unsigned)d->batch);
#define GV(MM) case MM: k_gemv<MM><<<grid, GV_WARPS * 32, 0, c->stream>>>(FM(d->A), d->A.ld, \
        d->A.bstride, B, d->B.ld, d->B.bstride, C, d->C.ld, d->C.bstride, d->N, d->K, KB, \
        d->alpha, d->beta, part, d->batch, c->cnt + CNT_STEP); break;
    switch (d->M) { GV(1) GV(2) GV(3) GV(4) GV(5) GV(6) GV(7) default: GV(8) }
#undef GV
    LAUNCHED("gemv");
    return 0;
}

static int cu_gemm(dg_backend_t *be, const dg_gemm_desc *d) {
    SETDEV();
    char pn[64] = "gemm";
    if (CTX(be)->prof)
        snprintf(pn, sizeof pn, "gemm M%lld N%lld K%lld b%lld %c%c", (long long)d->M,
                 (long long)d->N, (long long)d->K, (long long)d->batch, d->A.trans ? 'T' : 'N',
                 d->B.trans ? 'T' : 'N');
    PROF(pn);
    int st = gemm_few_rows(be, d);
    if (st <= 0) return st;
    st = gemm_staged(be, d);
    if (st <= 0) return st;
    return gemm_rm(be, d->A.trans, d->B.trans, d->M, d->N, d->K, d->alpha, FM(d->A), d->A.ld,
                   d->A.bstride, FM(d->B), d->B.ld, d->B.bstride, d->beta, FM(d->C), d->C.ld,
                   d->C.bstride, d->batch);
}

__global__ void k_axpy(float *y, float a, const float *x, int64_t n) {
    GRID_LOOP(i, n) y[i] += a * x[i];
}
__global__ void k_scale(float *x, float a, int64_t n) { GRID_LOOP(i, n) x[i] *= a; }
__global__ void k_add(float *o, const float *a, const float *b, int64_t n) {
    GRID_LOOP(i, n) o[i] = a[i] + b[i];
}
__global__ void k_axpy4(float4 *y, float a, const float4 *x, int64_t n4) {
    GRID_LOOP(i, n4) {
        float4 u = y[i], v = x[i];
        u.x += a * v.x; u.y += a * v.y; u.z += a * v.z; u.w += a * v.w;
        y[i] = u;
    }
}
__global__ void k_add4(float4 *o, const float4 *a, const float4 *b, int64_t n4) {
    GRID_LOOP(i, n4) {
        float4 u = a[i], v = b[i];
        o[i] = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
    }
}

static int cu_axpy(dg_backend_t *be, dg_tensor y, float a, dg_tensor x) {
    SETDEV();
    PROF("axpy");
    int64_t n = dg_nelem(y);
    if (V4(F(y), F(x), F(x), n))
        k_axpy4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>((float4 *)F(y), a,
                                                               (const float4 *)F(x), n / 4);
    else
        k_axpy<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(y), a, F(x), n);
    LAUNCHED("axpy");
    return 0;
}

static int cu_scale(dg_backend_t *be, dg_tensor x, float a) {
    SETDEV();
    PROF("scale");
    int64_t n = dg_nelem(x);
    k_scale<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(x), a, n);
    LAUNCHED("scale");
    return 0;
}

static int cu_add(dg_backend_t *be, dg_tensor out, dg_tensor a, dg_tensor b) {
    SETDEV();
    PROF("add");
    int64_t n = dg_nelem(out);
    if (V4(F(out), F(a), F(b), n))
        k_add4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>(
            (float4 *)F(out), (const float4 *)F(a), (const float4 *)F(b), n / 4);
    else
        k_add<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(out), F(a), F(b), n);
    LAUNCHED("add");
    return 0;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    __shared__ float res;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : 0.f;
        t = warp_sum(t);
        if (lane == 0) res = t;
    }
    __syncthreads();
    return res;
}
__device__ float block_max(float v) {
    __shared__ float sh[32];
    __shared__ float res;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) res = t;
    }
    __syncthreads();
    return res;
}

#define SUMSQ_BLOCKS 1024
__global__ void k_sumsq_part(double *part, const float *x, int64_t n) {
    double s = 0;
    GRID_LOOP(i, n) { double v = x[i]; s += v * v; }
    __shared__ double sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    s = warp_sum_d(s);
    if (lane == 0) sh[w] = s;
    __syncthreads();
    if (w == 0) {
        double t = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) part[blockIdx.x] = t;
    }
}
__global__ void k_sumsq_final(double *part, int n) {
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
    __shared__ double sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    s = warp_sum_d(s);
    if (lane == 0) sh[w] = s;
    __syncthreads();
    if (w == 0) {
        double t = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) part[0] = t;
    }
}

static int cu_sumsq(dg_backend_t *be, double *out, dg_tensor x) {
    SETDEV();
    NO_CAPTURE("sumsq");
    PROF("sumsq");
    cuda_ctx *c = CTX(be);
    double *part;
    RET(scratch_get(be, SUMSQ_BLOCKS * sizeof(double), (void **)&part));
    int64_t n = dg_nelem(x);
    unsigned nb = blocks_for(n);
    if (nb > SUMSQ_BLOCKS) nb = SUMSQ_BLOCKS;
    k_sumsq_part<<<nb, NT, 0, c->stream>>>(part, F(x), n);
    LAUNCHED("sumsq");
    k_sumsq_final<<<1, NT, 0, c->stream>>>(part, (int)nb);
    LAUNCHED("sumsq_final");
    CK(cudaMemcpyAsync(out, part, sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    CK(cudaStreamSynchronize(c->stream));
    return 0;
}

// ------------------------------------------------------------------------------------------
// embedding

/* Token ids come from outside (tokenizers, requests): an id outside [0, V) is DG_EINVAL before
 * anything is written, as in ref. Costs one small device->host read. */
__global__ void k_check_ids(int *flag, const int32_t *ids, int64_t n, int64_t V) {
    GRID_LOOP(i, n) if (ids[i] < 0 || ids[i] >= V) atomicMin(flag, (int)i);
}

static int check_ids(dg_backend_t *be, const int32_t *ids, int64_t n, int64_t V, const char *what) {
    cuda_ctx *c = CTX(be);
    if (c->capturing) return 0;   /* recorded work: the caller validated the ids (backend.h) */
    CK(cudaMemsetAsync(c->d_flag, 0x7f, sizeof(int), c->stream));   /* 0x7f7f7f7f = none */
    k_check_ids<<<blocks_for(n), NT, 0, c->stream>>>(c->d_flag, ids, n, V);
    LAUNCHED(what);
    CK(cudaMemcpyAsync(c->h_flag, c->d_flag, sizeof(int), cudaMemcpyDeviceToHost, c->stream));
    CK(cudaStreamSynchronize(c->stream));
    if (*c->h_flag != 0x7f7f7f7f) {
        int32_t bad = 0;
        cudaMemcpy(&bad, ids + *c->h_flag, sizeof bad, cudaMemcpyDeviceToHost);
        snprintf(be->errmsg, sizeof be->errmsg, "%s: id %d at row %d is outside [0, %lld)", what,
                 (int)bad, *c->h_flag, (long long)V);
        DG_ERROR("cuda: %s", be->errmsg);
        return DG_EINVAL;
    }
    return 0;
}

__global__ void k_embed_fwd(float *out, const int32_t *tok, const float *wte, int64_t R,
                            int64_t D, int64_t V) {
    GRID_LOOP(i, R * D) {
        int64_t r = i / D, d = i % D;
        int64_t t = tok[r];
        out[i] = (t >= 0 && t < V) ? wte[t * D + d] : 0.f;
    }
}
__global__ void k_embed_bwd(float *dwte, const float *dout, const int32_t *tok, int64_t R,
                            int64_t D, int64_t V) {
    GRID_LOOP(i, R * D) {
        int64_t r = i / D, d = i % D;
        int64_t t = tok[r];
        if (t >= 0 && t < V) atomicAdd(&dwte[t * D + d], dout[i]);
    }
}

static int cu_embed_fwd(dg_backend_t *be, dg_tensor out, dg_tensor tok, dg_tensor wte) {
    SETDEV();
    PROF("embed_fwd");
    int64_t D = wte.ne[0], V = dg_nelem(wte) / D, R = dg_nelem(tok);
    RET(check_ids(be, I(tok), R, V, "embed_fwd"));
    k_embed_fwd<<<blocks_for(R * D), NT, 0, CTX(be)->stream>>>(F(out), I(tok), F(wte), R, D, V);
    LAUNCHED("embed_fwd");
    return 0;
}
static int cu_embed_bwd(dg_backend_t *be, dg_tensor dwte, dg_tensor dout, dg_tensor tok) {
    SETDEV();
    PROF("embed_bwd");
    int64_t D = dwte.ne[0], V = dg_nelem(dwte) / D, R = dg_nelem(tok);
    RET(check_ids(be, I(tok), R, V, "embed_bwd"));
    k_embed_bwd<<<blocks_for(R * D), NT, 0, CTX(be)->stream>>>(F(dwte), F(dout), I(tok), R, D, V);
    LAUNCHED("embed_bwd");
    return 0;
}

// ------------------------------------------------------------------------------------------
// LayerNorm: one warp per row

#define LN_REG 16   /* rows up to 512 wide are kept in registers */
__global__ void k_ln_fwd(float *out, float *mean, float *rstd, const float *inp,
                         const float *gamma, const float *beta, int64_t R, int D, float eps) {
    int lane = threadIdx.x & 31;
    int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= R) return;
    const float *x = inp + r * D;
    if (D <= 32 * LN_REG) {   /* the row in registers: one pass over memory */
        float xv[LN_REG];
        float s = 0;
#pragma unroll
        for (int j = 0; j < LN_REG; j++) {
            int i = lane + 32 * j;
            xv[j] = i < D ? x[i] : 0.f;
            s += xv[j];
        }
        float m = warp_sum(s) / D;
        float v = 0;
#pragma unroll
        for (int j = 0; j < LN_REG; j++)
            if (lane + 32 * j < D) { float d = xv[j] - m; v += d * d; }
        float rs = rsqrtf(warp_sum(v) / D + eps);
        float *o = out + r * D;
#pragma unroll
        for (int j = 0; j < LN_REG; j++) {
            int i = lane + 32 * j;
            if (i >= D) break;
            float n = (xv[j] - m) * rs;
            o[i] = gamma ? n * gamma[i] + beta[i] : n;
        }
        if (lane == 0) { mean[r] = m; rstd[r] = rs; }
        return;
    }
    float s = 0;
    for (int i = lane; i < D; i += 32) s += x[i];
    float m = warp_sum(s) / D;
    float v = 0;
    for (int i = lane; i < D; i += 32) { float d = x[i] - m; v += d * d; }
    float rs = rsqrtf(warp_sum(v) / D + eps);
    float *o = out + r * D;
    for (int i = lane; i < D; i += 32) {
        float n = (x[i] - m) * rs;
        o[i] = gamma ? n * gamma[i] + beta[i] : n;
    }
    if (lane == 0) { mean[r] = m; rstd[r] = rs; }
}

static int cu_layernorm_fwd(dg_backend_t *be, dg_tensor out, dg_tensor mean, dg_tensor rstd,
                            dg_tensor inp, dg_tensor gamma, dg_tensor beta, float eps) {
    SETDEV();
    PROF("layernorm_fwd");
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    const int wpb = NT / 32;
    k_ln_fwd<<<(unsigned)((R + wpb - 1) / wpb), NT, 0, CTX(be)->stream>>>(
        F(out), F(mean), F(rstd), F(inp), dg_t_present(gamma) ? F(gamma) : NULL,
        dg_t_present(beta) ? F(beta) : NULL, R, (int)D, eps);
    LAUNCHED("layernorm_fwd");
    return 0;
}

/* dinp += rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dout * gamma; per-block partial sums of
 * dgamma (sum dout*n) and dbeta (sum dout) go to part (nblk, 2, D), reduced by k_ln_bwd_red. */
__global__ void k_ln_bwd(float *dinp, float *part, const float *dout, const float *inp,
                         const float *mean, const float *rstd, const float *gamma, int64_t R,
                         int D) {
    extern __shared__ float sh[];   /* 2*D when affine */
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (gamma) {
        for (int i = threadIdx.x; i < 2 * D; i += blockDim.x) sh[i] = 0.f;
        __syncthreads();
    }
    for (int64_t r = (int64_t)blockIdx.x * nw + w; r < R; r += (int64_t)gridDim.x * nw) {
        const float *x = inp + r * D, *dy = dout + r * D;
        float m = mean[r], rs = rstd[r];
        float a = 0, b = 0;
        for (int i = lane; i < D; i += 32) {
            float n = (x[i] - m) * rs;
            float dn = dy[i] * (gamma ? gamma[i] : 1.f);
            a += dn;
            b += dn * n;
        }
        a = warp_sum(a) / D;
        b = warp_sum(b) / D;
        float *dx = dinp + r * D;
        for (int i = lane; i < D; i += 32) {
            float n = (x[i] - m) * rs;
            float g = dy[i];
            float dn = g * (gamma ? gamma[i] : 1.f);
            dx[i] += rs * (dn - a - n * b);
            if (gamma) { atomicAdd(&sh[i], g * n); atomicAdd(&sh[D + i], g); }
        }
    }
    if (gamma) {
        __syncthreads();
        for (int i = threadIdx.x; i < 2 * D; i += blockDim.x)
            part[(int64_t)blockIdx.x * 2 * D + i] = sh[i];
    }
}
__global__ void k_ln_bwd_red(float *dgamma, float *dbeta, const float *part, int nblk, int D) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * D) return;
    float s = 0;
    for (int b = 0; b < nblk; b++) s += part[(int64_t)b * 2 * D + i];
    if (i < D) dgamma[i] += s; else dbeta[i - D] += s;
}

static int cu_layernorm_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dgamma, dg_tensor dbeta,
                            dg_tensor dout, dg_tensor inp, dg_tensor mean, dg_tensor rstd,
                            dg_tensor gamma) {
    SETDEV();
    PROF("layernorm_bwd");
    cuda_ctx *c = CTX(be);
    int64_t D = inp.ne[0], R = dg_nelem(inp) / D;
    bool aff = dg_t_present(gamma);
    const int wpb = NT / 32;
    int64_t nblk = (R + wpb - 1) / wpb;
    if (nblk > 1024) nblk = 1024;
    float *part = NULL;
    if (aff) RET(scratch_get(be, (size_t)nblk * 2 * D * sizeof(float), (void **)&part));
    size_t shm = aff ? 2 * D * sizeof(float) : 0;
    if (shm > 48 * 1024) {
        snprintf(be->errmsg, sizeof be->errmsg, "layernorm_bwd: D=%lld too large", (long long)D);
        return DG_ENOTSUP;
    }
    k_ln_bwd<<<(unsigned)nblk, NT, shm, c->stream>>>(F(dinp), part, F(dout), F(inp), F(mean),
                                                      F(rstd), aff ? F(gamma) : NULL, R, (int)D);
    LAUNCHED("layernorm_bwd");
    if (aff) {
        k_ln_bwd_red<<<(unsigned)((2 * D + NT - 1) / NT), NT, 0, c->stream>>>(
            F(dgamma), F(dbeta), part, (int)nblk, (int)D);
        LAUNCHED("layernorm_bwd_red");
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// ReLU, gate

__global__ void k_relu_fwd(float *o, const float *x, float thr, int64_t n) {
    GRID_LOOP(i, n) o[i] = fmaxf(x[i] - thr, 0.f);
}
__global__ void k_relu_bwd(float *dx, const float *dy, const float *o, int64_t n) {
    GRID_LOOP(i, n) if (o[i] > 0.f) dx[i] += dy[i];
}
__global__ void k_relu_fwd4(float4 *o, const float4 *x, float thr, int64_t n4) {
    GRID_LOOP(i, n4) {
        float4 v = x[i];
        o[i] = make_float4(fmaxf(v.x - thr, 0.f), fmaxf(v.y - thr, 0.f), fmaxf(v.z - thr, 0.f),
                           fmaxf(v.w - thr, 0.f));
    }
}
__global__ void k_relu_bwd4(float4 *dx, const float4 *dy, const float4 *o, int64_t n4) {
    GRID_LOOP(i, n4) {
        float4 m = o[i], g = dy[i], d = dx[i];
        d.x += m.x > 0.f ? g.x : 0.f; d.y += m.y > 0.f ? g.y : 0.f;
        d.z += m.z > 0.f ? g.z : 0.f; d.w += m.w > 0.f ? g.w : 0.f;
        dx[i] = d;
    }
}

static int cu_relu_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, float thr) {
    SETDEV();
    PROF("relu_fwd");
    int64_t n = dg_nelem(out);
    if (V4(F(out), F(inp), F(inp), n))
        k_relu_fwd4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>(
            (float4 *)F(out), (const float4 *)F(inp), thr, n / 4);
    else
        k_relu_fwd<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(out), F(inp), thr, n);
    LAUNCHED("relu_fwd");
    return 0;
}
static int cu_relu_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor out) {
    SETDEV();
    PROF("relu_bwd");
    int64_t n = dg_nelem(out);
    if (V4(F(dinp), F(dout), F(out), n))
        k_relu_bwd4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>(
            (float4 *)F(dinp), (const float4 *)F(dout), (const float4 *)F(out), n / 4);
    else
        k_relu_bwd<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(dinp), F(dout), F(out), n);
    LAUNCHED("relu_bwd");
    return 0;
}

__global__ void k_gate_fwd(float *z, const float *x, const float *y, float p, uint64_t seed,
                           int64_t n) {
    float sc = 1.f / (1.f - p);
    GRID_LOOP(i, n) {
        float v = x[i] * y[i];
        if (p > 0.f) v = dg_dropout_keep(seed, (uint64_t)i, p) ? v * sc : 0.f;
        z[i] = v;
    }
}
__global__ void k_gate_bwd(float *dx, float *dy, const float *dz, const float *x,
                           const float *y, float p, uint64_t seed, int64_t n) {
    float sc = 1.f / (1.f - p);
    GRID_LOOP(i, n) {
        float k = 1.f;
        if (p > 0.f) k = dg_dropout_keep(seed, (uint64_t)i, p) ? sc : 0.f;
        float g = dz[i] * k;
        float xv = x[i], yv = y[i];
        dx[i] += g * yv;
        dy[i] += g * xv;
    }
}

__device__ __forceinline__ float keepf(uint64_t seed, int64_t i, float p, float sc) {
    return p > 0.f ? (dg_dropout_keep(seed, (uint64_t)i, p) ? sc : 0.f) : 1.f;
}
__global__ void k_gate_fwd4(float4 *z, const float4 *x, const float4 *y, float p, uint64_t seed,
                            int64_t n4) {
    float sc = 1.f / (1.f - p);
    GRID_LOOP(i, n4) {
        float4 a = x[i], b = y[i];
        int64_t e = 4 * i;
        z[i] = make_float4(a.x * b.x * keepf(seed, e, p, sc),
                           a.y * b.y * keepf(seed, e + 1, p, sc),
                           a.z * b.z * keepf(seed, e + 2, p, sc),
                           a.w * b.w * keepf(seed, e + 3, p, sc));
    }
}
__global__ void k_gate_bwd4(float4 *dx, float4 *dy, const float4 *dz, const float4 *x,
                            const float4 *y, float p, uint64_t seed, int64_t n4) {
    float sc = 1.f / (1.f - p);
    GRID_LOOP(i, n4) {
        float4 g = dz[i], a = x[i], b = y[i], gx = dx[i], gy = dy[i];
        int64_t e = 4 * i;
        g.x *= keepf(seed, e, p, sc); g.y *= keepf(seed, e + 1, p, sc);
        g.z *= keepf(seed, e + 2, p, sc); g.w *= keepf(seed, e + 3, p, sc);
        gx.x += g.x * b.x; gx.y += g.y * b.y; gx.z += g.z * b.z; gx.w += g.w * b.w;
        gy.x += g.x * a.x; gy.y += g.y * a.y; gy.z += g.z * a.z; gy.w += g.w * a.w;
        dx[i] = gx;
        dy[i] = gy;
    }
}

static int cu_gate_fwd(dg_backend_t *be, dg_tensor z, dg_tensor x, dg_tensor y, float p,
                       uint64_t seed) {
    SETDEV();
    PROF("gate_fwd");
    int64_t n = dg_nelem(z);
    if (V4(F(z), F(x), F(y), n))
        k_gate_fwd4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>(
            (float4 *)F(z), (const float4 *)F(x), (const float4 *)F(y), p, seed, n / 4);
    else
        k_gate_fwd<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(z), F(x), F(y), p, seed, n);
    LAUNCHED("gate_fwd");
    return 0;
}
static int cu_gate_bwd(dg_backend_t *be, dg_tensor dx, dg_tensor dy, dg_tensor dz, dg_tensor x,
                       dg_tensor y, float p, uint64_t seed) {
    SETDEV();
    PROF("gate_bwd");
    int64_t n = dg_nelem(dz);
    if (V4(F(dx), F(dy), F(dz), n) && V4(F(x), F(y), F(x), n))
        k_gate_bwd4<<<blocks_for(n / 4), NT, 0, CTX(be)->stream>>>(
            (float4 *)F(dx), (float4 *)F(dy), (const float4 *)F(dz), (const float4 *)F(x),
            (const float4 *)F(y), p, seed, n / 4);
    else
        k_gate_bwd<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(dx), F(dy), F(dz), F(x), F(y), p,
                                                              seed, n);
    LAUNCHED("gate_bwd");
    return 0;
}

// ------------------------------------------------------------------------------------------
// positional transforms (MODEL.md §5)

/* Frequencies in turns per position: rope f_i = theta^(-2 floor(i/2)/N)/(2 pi) (i < N),
 * pope f_i = theta^(-i/N)/(2 pi). Computed on the host in double, cached on the device. */
static int freq_table(dg_backend_t *be, int64_t N, dg_pos_mode mode, float theta, double **out) {
    cuda_ctx *c = CTX(be);
    if (!c->freq || c->freq_n != N || c->freq_theta != theta || c->freq_mode != (int)mode) {
        NO_CAPTURE("building the frequency table");
        if (c->freq) {
            CK(cudaStreamSynchronize(c->stream));
            CK(cudaFree(c->freq));
            c->freq = NULL;
        }
        c->gen++;
        double *h = (double *)dg_malloc((size_t)N * sizeof(double));
        for (int64_t i = 0; i < N; i++) {
            double ex = mode == DG_POS_ROPE ? -2.0 * (double)(i / 2) / (double)N
                                            : -(double)i / (double)N;
            h[i] = pow((double)theta, ex) / (2.0 * M_PI);
        }
        cudaError_t e = cudaMalloc(&c->freq, (size_t)N * sizeof(double));
        if (e == cudaSuccess)
            e = cudaMemcpy(c->freq, h, (size_t)N * sizeof(double), cudaMemcpyHostToDevice);
        dg_free(h);
        if (e != cudaSuccess) { c->freq = NULL; return cuda_fail(be, e, "freq table", __LINE__); }
        c->freq_n = N; c->freq_theta = theta; c->freq_mode = (int)mode;
    }
    *out = c->freq;
    return 0;
}

__device__ __forceinline__ void phase(double p, double f, float *cs, float *sn) {
    double x = p * f;
    double fr = x - floor(x);
    float ph = (float)(2.0 * M_PI * fr);
    sincosf(ph, sn, cs);
}

/* rope over pairs: n = B*T*H*(N/2) pair index; row (b, t) has position pos0[b] + t. */
template <typename P>
__global__ void k_rope(float *out, const float *inp, const P *pos0, const double *freq,
                       int64_t B, int64_t T, int64_t H, int64_t N, int bwd) {
    int64_t half = N / 2, n = B * T * H * half;
    GRID_LOOP(i, n) {
        int64_t k = i % half, row = i / half;      /* row = (b, t, h) */
        int64_t bt = row / H, t = bt % T, b = bt / T;
        float cs, sn;
        phase((double)(pos0[b] + t), freq[2 * k], &cs, &sn);
        const float *x = inp + row * N + 2 * k;
        float *o = out + row * N + 2 * k;
        float x0 = x[0], x1 = x[1];
        if (!bwd) {
            o[0] = x0 * cs - x1 * sn;
            o[1] = x1 * cs + x0 * sn;
        } else {       /* o = dinp (+=), x = dout: R^T */
            o[0] += x0 * cs + x1 * sn;
            o[1] += -x0 * sn + x1 * cs;
        }
    }
}

/* The same, two pairs per thread with float4 access (N % 4 == 0, 16-byte aligned rows). */
template <typename P>
__global__ void k_rope4(float4 *out, const float4 *inp, const P *pos0, const double *freq,
                        int64_t B, int64_t T, int64_t H, int64_t N, int bwd) {
    int64_t q4 = N / 4, n = B * T * H * q4;
    GRID_LOOP(i, n) {
        int64_t k = i % q4, row = i / q4;
        int64_t bt = row / H, t = bt % T, b = bt / T;
        double p = (double)(pos0[b] + t);
        float c0, s0, c1, s1;
        phase(p, freq[4 * k], &c0, &s0);
        phase(p, freq[4 * k + 2], &c1, &s1);
        float4 x = inp[i];
        if (!bwd) {
            out[i] = make_float4(x.x * c0 - x.y * s0, x.y * c0 + x.x * s0,
                                 x.z * c1 - x.w * s1, x.w * c1 + x.z * s1);
        } else {
            float4 o = out[i];
            o.x += x.x * c0 + x.y * s0; o.y += -x.x * s0 + x.y * c0;
            o.z += x.z * c1 + x.w * s1; o.w += -x.z * s1 + x.w * c1;
            out[i] = o;
        }
    }
}

__device__ __forceinline__ float softplusf(float x) {
    return x > 20.f ? x : log1pf(expf(x));
}

/* pope fwd: out (row, 2N) = [mu cos | mu sin]; bwd: dinp (row, N) += sigmoid(x)(dc cos + ds sin) */
template <typename P>
__global__ void k_pope(float *o, const float *a, const float *x, const P *pos0,
                       const double *freq, int64_t B, int64_t T, int64_t H, int64_t N, int bwd) {
    int64_t n = B * T * H * N;
    GRID_LOOP(i, n) {
        int64_t k = i % N, row = i / N;
        int64_t bt = row / H, t = bt % T, b = bt / T;
        float cs, sn;
        phase((double)(pos0[b] + t), freq[k], &cs, &sn);
        if (!bwd) {
            float mu = softplusf(a[i]);
            o[row * 2 * N + k] = mu * cs;
            o[row * 2 * N + N + k] = mu * sn;
        } else {        /* o = dinp, a = dout (row, 2N), x = inp */
            float xv = x[i];
            float sg = 1.f / (1.f + expf(-xv));
            o[i] += sg * (a[row * 2 * N + k] * cs + a[row * 2 * N + N + k] * sn);
        }
    }
}

/* pos0 is a device array of B positions (int64_t or int32_t). */
template <typename P>
static int pos_launch(dg_backend_t *be, dg_tensor o, dg_tensor a, dg_tensor x, const P *dpos,
                      dg_pos_mode mode, float theta, int bwd) {
    cuda_ctx *c = CTX(be);
    dg_tensor inp = bwd ? x : a;
    int64_t N = inp.ne[0], H = inp.ne[1], T = inp.ne[2], B = inp.ne[3];
    double *freq;
    RET(freq_table(be, N, mode, theta, &freq));
    if (mode == DG_POS_ROPE && N % 4 == 0 && al16(F(o)) && al16(F(a))) {
        k_rope4<P><<<blocks_for(B * T * H * N / 4), NT, 0, c->stream>>>(
            (float4 *)F(o), (const float4 *)F(a), dpos, freq, B, T, H, N, bwd);
    } else if (mode == DG_POS_ROPE) {
        k_rope<P><<<blocks_for(B * T * H * N / 2), NT, 0, c->stream>>>(F(o), F(a), dpos, freq, B,
                                                                     T, H, N, bwd);
    } else {
        k_pope<P><<<blocks_for(B * T * H * N), NT, 0, c->stream>>>(F(o), F(a), bwd ? F(x) : NULL,
                                                                 dpos, freq, B, T, H, N, bwd);
    }
    LAUNCHED("pos");
    return 0;
}

static int cu_pos(dg_backend_t *be, dg_tensor o, dg_tensor a, dg_tensor x, const int64_t *pos0,
                  dg_pos_mode mode, float theta, int bwd) {
    SETDEV();
    PROF(bwd ? "pos_bwd" : "pos_fwd");
    int64_t B = (bwd ? x : a).ne[3];
    int64_t *dpos;
    RET(args_put(be, pos0, (size_t)B * sizeof(int64_t), (void **)&dpos));
    return pos_launch<int64_t>(be, o, a, x, dpos, mode, theta, bwd);
}

static int cu_pos_fwd_dev(dg_backend_t *be, dg_tensor out, dg_tensor inp, dg_tensor pos,
                          dg_pos_mode mode, float theta) {
    SETDEV();
    PROF("pos_fwd");
    return pos_launch<int32_t>(be, out, inp, inp, I(pos), mode, theta, 0);
}

static int cu_pos_fwd(dg_backend_t *be, dg_tensor out, dg_tensor inp, const int64_t *pos0,
                      dg_pos_mode mode, float theta) {
    return cu_pos(be, out, inp, inp, pos0, mode, theta, 0);
}
static int cu_pos_bwd(dg_backend_t *be, dg_tensor dinp, dg_tensor dout, dg_tensor inp,
                      const int64_t *pos0, dg_pos_mode mode, float theta) {
    return cu_pos(be, dinp, dout, inp, pos0, mode, theta, 1);
}

// ------------------------------------------------------------------------------------------
// attention, dense-score causal form (MODEL.md §3.3), one head at a time, batched over B

/* S (B, T, T) *= M: M[t, s] = g^(t-s) for s < t, else 0 (writes zeros above the diagonal). */
__global__ void k_causal_mask(float *S, int64_t B, int64_t T, float g) {
    GRID_LOOP(i, B * T * T) {
        int64_t s = i % T, t = (i / T) % T;
        S[i] = s < t ? (g == 1.f ? S[i] : S[i] * powf(g, (float)(t - s))) : 0.f;
    }
}

/* dS = dP * M made symmetric in place: X[t,s] = X[s,t] = M[t,s] dP[t,s] for s < t, diag 0.
 * One thread per lower-triangle pair (t > s) plus the diagonal. */
__global__ void k_mask_sym(float *X, int64_t B, int64_t T, float g) {
    GRID_LOOP(i, B * T * T) {
        int64_t s = i % T, t = (i / T) % T, b = i / (T * T);
        if (s > t) continue;
        float *Xb = X + b * T * T;
        if (s == t) { Xb[t * T + t] = 0.f; continue; }
        float v = Xb[t * T + s];
        if (g != 1.f) v *= powf(g, (float)(t - s));
        Xb[t * T + s] = v;
        Xb[s * T + t] = v;
    }
}

/* dst (B, T, D) [+]= scale_t * src, rows strided: dst row (b,t) at dst + (b*T+t)*dld, src row at
 * src + (b*T+t)*sld; scale_t = g^(e0 + esign*t). */
__global__ void k_rowscale(float *dst, int64_t dld, const float *src, int64_t sld, int64_t B,
                           int64_t T, int64_t D, float g, int64_t e0, int esign, int accum) {
    GRID_LOOP(i, B * T * D) {
        int64_t d = i % D, bt = i / D, t = bt % T;
        float sc = g == 1.f ? 1.f : powf(g, (float)(e0 + esign * t));
        float v = sc * src[bt * sld + d];
        if (accum) dst[bt * dld + d] += v; else dst[bt * dld + d] = v;
    }
}

/* y (B, H-strided (Nq, D) blocks) += a * x, only head h: y + b*bs, bs = H*Nq*D, n = Nq*D. */
__global__ void k_axpy_heads(float *y, const float *x, float a, int64_t B, int64_t bs, int64_t n,
                             int accum) {
    GRID_LOOP(i, B * n) {
        int64_t b = i / n, k = i % n;
        if (accum) y[b * bs + k] += a * x[b * bs + k]; else y[b * bs + k] = a * x[b * bs + k];
    }
}

static int cu_attn_fwd(dg_backend_t *be, dg_tensor out, dg_tensor rho_out, dg_tensor q,
                       dg_tensor v, dg_tensor rho_in, const float *gamma) {
    SETDEV();
    PROF("attn_fwd");
    cuda_ctx *c = CTX(be);
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    bool ri = dg_t_present(rho_in), ro = dg_t_present(rho_out);
    float *S, *tmp;
    size_t sS = (size_t)B * T * T, sT = (size_t)B * T * D;
    RET(scratch_get(be, (sS + sT) * sizeof(float), (void **)&S));
    tmp = S + sS;
    const float *Q = F(q), *Vv = F(v);
    float *O = F(out);
    int64_t qld = H * Nq, qbs = T * H * Nq, old = H * D, obs = T * H * D, rbs = H * Nq * D;
    for (int64_t h = 0; h < H; h++) {
        float g = gamma[h];
        const float *Qh = Q + h * Nq;
        /* S_b = Q_h Q_h^T, masked */
        RET(gemm_rm(be, false, true, T, T, Nq, 1.f, Qh, qld, qbs, Qh, qld, qbs, 0.f, S, T, T * T,
                    B));
        k_causal_mask<<<blocks_for(sS), NT, 0, c->stream>>>(S, B, T, g);
        LAUNCHED("attn mask");
        /* out_h = S V */
        RET(gemm_rm(be, false, false, T, D, T, 1.f, S, T, T * T, Vv, D, T * D, 0.f, O + h * D, old,
                    obs, B));
        if (ri) {
            const float *Rh = F(rho_in) + h * Nq * D;
            if (g == 1.f) {
                RET(gemm_rm(be, false, false, T, D, Nq, 1.f, Qh, qld, qbs, Rh, D, rbs, 1.f,
                            O + h * D, old, obs, B));
            } else {
                RET(gemm_rm(be, false, false, T, D, Nq, 1.f, Qh, qld, qbs, Rh, D, rbs, 0.f, tmp, D,
                            T * D, B));
                k_rowscale<<<blocks_for(sT), NT, 0, c->stream>>>(O + h * D, old, tmp, D, B, T, D, g,
                                                                0, 1, 1);
                LAUNCHED("attn rho_in scale");
            }
        }
        if (ro) {
            float *RO = F(rho_out) + h * Nq * D;
            float beta = 0.f;
            if (ri) {
                float gT = g == 1.f ? 1.f : powf(g, (float)T);
                k_axpy_heads<<<blocks_for(B * Nq * D), NT, 0, c->stream>>>(
                    RO, F(rho_in) + h * Nq * D, gT, B, rbs, Nq * D, 0);
                LAUNCHED("attn rho carry");
                beta = 1.f;
            }
            const float *Vw = Vv;
            if (g != 1.f) {      /* Vw[s] = g^(T-s) v[s] */
                k_rowscale<<<blocks_for(sT), NT, 0, c->stream>>>(tmp, D, Vv, D, B, T, D, g, T, -1,
                                                                 0);
                LAUNCHED("attn vw");
                Vw = tmp;
            }
            RET(gemm_rm(be, true, false, Nq, D, T, 1.f, Qh, qld, qbs, Vw, D, T * D, beta, RO, D,
                        rbs, B));
        }
    }
    return 0;
}

static int cu_attn_bwd(dg_backend_t *be, dg_tensor dq, dg_tensor dv, dg_tensor drho_in,
                       dg_tensor dout, dg_tensor drho_out, dg_tensor q, dg_tensor v,
                       dg_tensor rho_in, const float *gamma) {
    SETDEV();
    PROF("attn_bwd");
    cuda_ctx *c = CTX(be);
    int64_t Nq = q.ne[0], H = q.ne[1], T = q.ne[2], B = q.ne[3], D = v.ne[0];
    bool ri = dg_t_present(rho_in), dri = dg_t_present(drho_in), dro = dg_t_present(drho_out);
    size_t sS = (size_t)B * T * T, sT = (size_t)B * T * D;
    float *P, *dP, *tmp, *tmp2;
    RET(scratch_get(be, (2 * sS + 2 * sT) * sizeof(float), (void **)&P));
    dP = P + sS; tmp = dP + sS; tmp2 = tmp + sT;
    const float *Q = F(q), *Vv = F(v), *dO = F(dout);
    float *dQ = F(dq), *dV = F(dv);
    int64_t qld = H * Nq, qbs = T * H * Nq, old = H * D, obs = T * H * D, rbs = H * Nq * D;
    for (int64_t h = 0; h < H; h++) {
        float g = gamma[h];
        const float *Qh = Q + h * Nq, *dOh = dO + h * D;
        float *dQh = dQ + h * Nq;
        /* P = (Q Q^T) o M; dP = dO V^T -> symmetric masked dS */
        RET(gemm_rm(be, false, true, T, T, Nq, 1.f, Qh, qld, qbs, Qh, qld, qbs, 0.f, P, T, T * T,
                    B));
        k_causal_mask<<<blocks_for(sS), NT, 0, c->stream>>>(P, B, T, g);
        LAUNCHED("attn_bwd mask");
        RET(gemm_rm(be, false, true, T, T, D, 1.f, dOh, old, obs, Vv, D, T * D, 0.f, dP, T, T * T,
                    B));
        k_mask_sym<<<blocks_for(sS), NT, 0, c->stream>>>(dP, B, T, g);
        LAUNCHED("attn_bwd sym");
        /* dQ_h += (dS + dS^T) Q_h ; dV += P^T dO_h */
        RET(gemm_rm(be, false, false, T, Nq, T, 1.f, dP, T, T * T, Qh, qld, qbs, 1.f, dQh, qld, qbs,
                    B));
        RET(gemm_rm(be, true, false, T, D, T, 1.f, P, T, T * T, dOh, old, obs, 1.f, dV, D, T * D,
                    B));
        if (ri) {
            const float *Rh = F(rho_in) + h * Nq * D;
            /* dOs[t] = g^t dO_h[t] */
            const float *dOs = dOh;
            int64_t dld = old, dbs = obs;
            if (g != 1.f) {
                k_rowscale<<<blocks_for(sT), NT, 0, c->stream>>>(tmp, D, dOh, old, B, T, D, g, 0, 1,
                                                                 0);
                LAUNCHED("attn_bwd dOs");
                dOs = tmp; dld = D; dbs = T * D;
            }
            /* dQ_h += dOs rho_in^T ; drho_in += Q_h^T dOs */
            RET(gemm_rm(be, false, true, T, Nq, D, 1.f, dOs, dld, dbs, Rh, D, rbs, 1.f, dQh, qld,
                        qbs, B));
            if (dri)
                RET(gemm_rm(be, true, false, Nq, D, T, 1.f, Qh, qld, qbs, dOs, dld, dbs, 1.f,
                            F(drho_in) + h * Nq * D, D, rbs, B));
        }
        if (dro) {
            const float *dRh = F(drho_out) + h * Nq * D;
            if (dri) {
                float gT = g == 1.f ? 1.f : powf(g, (float)T);
                k_axpy_heads<<<blocks_for(B * Nq * D), NT, 0, c->stream>>>(
                    F(drho_in) + h * Nq * D, dRh, gT, B, rbs, Nq * D, 1);
                LAUNCHED("attn_bwd drho carry");
            }
            /* dQ_h += Vw drho_out^T, Vw[s] = g^(T-s) v[s] */
            const float *Vw = Vv;
            if (g != 1.f) {
                k_rowscale<<<blocks_for(sT), NT, 0, c->stream>>>(tmp, D, Vv, D, B, T, D, g, T, -1,
                                                                 0);
                LAUNCHED("attn_bwd vw");
                Vw = tmp;
            }
            RET(gemm_rm(be, false, true, T, Nq, D, 1.f, Vw, D, T * D, dRh, D, rbs, 1.f, dQh, qld,
                        qbs, B));
            /* dV[s] += g^(T-s) (Q_h drho_out)[s] */
            if (g == 1.f) {
                RET(gemm_rm(be, false, false, T, D, Nq, 1.f, Qh, qld, qbs, dRh, D, rbs, 1.f, dV, D,
                            T * D, B));
            } else {
                RET(gemm_rm(be, false, false, T, D, Nq, 1.f, Qh, qld, qbs, dRh, D, rbs, 0.f, tmp2,
                            D, T * D, B));
                k_rowscale<<<blocks_for(sT), NT, 0, c->stream>>>(dV, D, tmp2, D, B, T, D, g, T, -1,
                                                                 1);
                LAUNCHED("attn_bwd dv rho");
            }
        }
    }
    return 0;
}

// ------------------------------------------------------------------------------------------
// cross-entropy, AdamW

__global__ void k_xent(float *loss, float *dlogits, const float *logits, const int32_t *tgt,
                       int64_t V, float dscale) {
    int64_t r = blockIdx.x;
    const float *x = logits + r * V;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, x[i]);
    m = block_max(m);
    float s = 0;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += expf(x[i] - m);
    s = block_sum(s);
    int64_t t = tgt[r];
    float lse = m + logf(s);
    if (threadIdx.x == 0) loss[r] = lse - ((t >= 0 && t < V) ? x[t] : 0.f);
    if (dlogits) {
        float *dx = dlogits + r * V;
        float inv = 1.f / s;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
            dx[i] += dscale * (expf(x[i] - m) * inv - (i == t ? 1.f : 0.f));
    }
}

static int cu_xent(dg_backend_t *be, dg_tensor loss, dg_tensor dlogits, dg_tensor logits,
                   dg_tensor tgt, float dscale) {
    SETDEV();
    PROF("xent");
    int64_t V = logits.ne[0], R = dg_nelem(logits) / V;
    RET(check_ids(be, I(tgt), R, V, "xent"));
    int th = V >= 1024 ? 1024 : (int)((V + 31) / 32 * 32);
    k_xent<<<(unsigned)R, th, 0, CTX(be)->stream>>>(
        F(loss), dg_t_present(dlogits) ? F(dlogits) : NULL, F(logits), I(tgt), V, dscale);
    LAUNCHED("xent");
    return 0;
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr,
                        float b1, float b2, float eps, float wd, float gs, float bc1, float bc2) {
    GRID_LOOP(i, n) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mh = mi / bc1, vh = vi / bc2;
        p[i] = p[i] * (1.f - lr * wd) - lr * mh / (sqrtf(vh) + eps);
    }
}

static int cu_adamw(dg_backend_t *be, dg_tensor p, dg_tensor g, dg_tensor m, dg_tensor v,
                    const dg_adamw_hp *hp) {
    SETDEV();
    PROF("adamw");
    int64_t n = dg_nelem(p);
    float bc1 = (float)(1.0 - pow((double)hp->beta1, (double)hp->step));
    float bc2 = (float)(1.0 - pow((double)hp->beta2, (double)hp->step));
    k_adamw<<<blocks_for(n), NT, 0, CTX(be)->stream>>>(F(p), F(g), F(m), F(v), n, hp->lr,
                                                       hp->beta1, hp->beta2, hp->eps,
                                                       hp->weight_decay, hp->grad_scale, bc1, bc2);
    LAUNCHED("adamw");
    return 0;
}

// ------------------------------------------------------------------------------------------
// cached decode step (MODEL.md §4.2): sparse active-row read + rank-1 update

typedef struct { float g[CU_MAX_HEADS]; } gamma_arr;

/* The state pointers of a step: by value in the kernel parameters for up to STEP_PTRS sequences
 * (nothing to stage, so the step can be recorded in a graph), else a device array. */
#define STEP_PTRS 64
struct rho_list {
    float *p[STEP_PTRS];
    __device__ float *operator[](int64_t i) const { return p[i]; }
};
struct rho_array {
    float *const *p;
    __device__ float *operator[](int64_t i) const { return p[i]; }
};

/* grid (nslab, H, B); each block owns STEP_SLAB rows of rho[b][h] and all D columns; it reads
 * the old row (dot with q) before writing (row + q v^T) * g. Rows with q == 0 are skipped unless
 * g != 1. Partial outputs go to part (B, H, nslab, D). */
template <typename RP>
__global__ void k_step(float *part, RP rho, const float *q, const float *v,
                       gamma_arr gm, int64_t H, int64_t Nq, int64_t D) {
    int64_t slab = blockIdx.x, h = blockIdx.y, b = blockIdx.z, nslab = gridDim.x;
    float g = gm.g[h];
    float *R = rho[b] + h * Nq * D;
    const float *qb = q + (b * H + h) * Nq;
    const float *vb = v + b * D;
    int64_t n0 = slab * STEP_SLAB, n1 = n0 + STEP_SLAB < Nq ? n0 + STEP_SLAB : Nq;
    __shared__ float qs[STEP_SLAB];
    for (int64_t n = n0 + threadIdx.x; n < n1; n += blockDim.x) qs[n - n0] = qb[n];
    __syncthreads();
    const int U = 8;   /* rows in flight per thread: independent loads hide memory latency */
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.f, vd = vb[d];
        for (int64_t n = n0; n < n1; n += U) {
            float r[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int64_t nn = n + u;
                r[u] = (nn < n1 && (qs[nn - n0] != 0.f || g != 1.f)) ? R[nn * D + d] : 0.f;
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                int64_t nn = n + u;
                if (nn >= n1) break;
                float qn = qs[nn - n0];
                if (qn != 0.f) {
                    acc += qn * r[u];
                    float w = r[u] + qn * vd;
                    R[nn * D + d] = g == 1.f ? w : w * g;
                } else if (g != 1.f) {
                    R[nn * D + d] = r[u] * g;
                }
            }
        }
        part[((b * H + h) * nslab + slab) * D + d] = acc;
    }
}
/* The same with float4 columns: a block of 256 threads is RL = 256/(D/4) row lanes x D/4 column
 * threads; lane l handles rows n0+l, n0+l+RL, ...; partial dots are reduced over the lanes in
 * shared memory. Needs D % 4 == 0, 256 % (D/4) == 0 and 16-byte aligned rows. */
/* Lane 0's float4 plus those of lanes 1..RL-1 of the same column, in lane order. */
__device__ __forceinline__ float4 lanes_sum(const float4 *red, float4 acc, int RL, int D4, int c4) {
    for (int l = 1; l < RL; l++) {
        float4 o = red[l * D4 + c4];
        acc.x += o.x; acc.y += o.y; acc.z += o.z; acc.w += o.w;
    }
    return acc;
}

template <typename RP>
__global__ void k_step4(float *part, RP rho, const float *q, const float *v,
                        gamma_arr gm, int64_t H, int64_t Nq, int64_t D, float *out,
                        unsigned *cnt) {
    int64_t slab = blockIdx.x, h = blockIdx.y, b = blockIdx.z, nslab = gridDim.x;
    int D4 = (int)(D / 4), RL = blockDim.x / D4;
    int lane = threadIdx.x / D4, c4 = threadIdx.x % D4;
    float g = gm.g[h];
    float4 *R = (float4 *)(rho[b] + h * Nq * D);
    const float *qb = q + (b * H + h) * Nq;
    float4 vd = ((const float4 *)(v + b * D))[c4];
    int64_t n0 = slab * STEP_SLAB, n1 = n0 + STEP_SLAB < Nq ? n0 + STEP_SLAB : Nq;
    __shared__ float qs[STEP_SLAB];
    __shared__ float4 red[256];
    for (int64_t n = n0 + threadIdx.x; n < n1; n += blockDim.x) qs[n - n0] = qb[n];
    __syncthreads();
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    const int U = 4;
    for (int64_t n = n0 + lane; n < n1; n += (int64_t)U * RL) {
        float4 r[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t nn = n + (int64_t)u * RL;
            bool live = nn < n1 && (qs[nn - n0] != 0.f || g != 1.f);
            r[u] = live ? R[nn * D4 + c4] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int64_t nn = n + (int64_t)u * RL;
            if (nn >= n1) break;
            float qn = qs[nn - n0];
            float4 w = r[u];
            if (qn != 0.f) {
                acc.x += qn * w.x; acc.y += qn * w.y; acc.z += qn * w.z; acc.w += qn * w.w;
                w.x += qn * vd.x; w.y += qn * vd.y; w.z += qn * vd.z; w.w += qn * vd.w;
            } else if (g == 1.f) {
                continue;
            }
            if (g != 1.f) { w.x *= g; w.y *= g; w.z *= g; w.w *= g; }
            R[nn * D4 + c4] = w;
        }
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    if (lane == 0)
        ((float4 *)(part + ((b * H + h) * nslab + slab) * D))[c4] = lanes_sum(red, acc, RL, D4, c4);
    /* the last block of (b, h) to finish adds the slabs' partial sums, in slab order */
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&cnt[b * H + h], 1u) == (unsigned)(nslab - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float4 *pp = (const float4 *)(part + (b * H + h) * nslab * D);
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int64_t k = lane; k < nslab; k += 8 * RL) {   /* 8 loads in flight, added in order */
        float4 o[8];
#pragma unroll
        for (int u = 0; u < 8; u++)
            o[u] = k + u * RL < nslab ? __ldcg(pp + (k + u * RL) * D4 + c4)
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int u = 0; u < 8; u++) { t.x += o[u].x; t.y += o[u].y; t.z += o[u].z; t.w += o[u].w; }
    }
    red[threadIdx.x] = t;
    __syncthreads();
    if (lane == 0) ((float4 *)(out + (b * H + h) * D))[c4] = lanes_sum(red, t, RL, D4, c4);
    if (threadIdx.x == 0) cnt[b * H + h] = 0;
}

__global__ void k_step_red(float *out, const float *part, int64_t BH, int64_t nslab, int64_t D) {
    GRID_LOOP(i, BH * D) {
        int64_t d = i % D, bh = i / D;
        float s = 0;
        for (int64_t k = 0; k < nslab; k++) s += part[(bh * nslab + k) * D + d];
        out[i] = s;
    }
}

/* k_step4 (float4 rows, slab sums in its last block) or k_step (partials for k_step_red) */
template <typename RP>
static void step_launch(cuda_ctx *c, dim3 grid, bool v4, float *part, RP rho, dg_tensor q,
                        dg_tensor v, gamma_arr gm, int64_t H, int64_t Nq, int64_t D,
                        dg_tensor out) {
    if (v4) {
        k_step4<<<grid, NT, 0, c->stream>>>(part, rho, F(q), F(v), gm, H, Nq, D, F(out), c->cnt);
    } else {
        int th = D >= NT ? NT : (int)((D + 31) / 32 * 32);
        k_step<<<grid, th, 0, c->stream>>>(part, rho, F(q), F(v), gm, H, Nq, D);
    }
}

static int cu_attn_step(dg_backend_t *be, int B, const dg_tensor *rho, dg_tensor out, dg_tensor q,
                        dg_tensor v, const float *gamma) {
    SETDEV();
    PROF("attn_step");
    cuda_ctx *c = CTX(be);
    int64_t Nq = q.ne[0], H = dg_nelem(q) / ((int64_t)B * Nq), D = v.ne[0];
    if (H > CU_MAX_HEADS) {
        snprintf(be->errmsg, sizeof be->errmsg, "attn_step: %lld heads > %d", (long long)H,
                 CU_MAX_HEADS);
        return DG_ENOTSUP;
    }
    gamma_arr gm;
    for (int64_t h = 0; h < H; h++) gm.g[h] = gamma[h];
    int64_t nslab = (Nq + STEP_SLAB - 1) / STEP_SLAB;
    float *part;
    RET(scratch_get(be, (size_t)B * H * nslab * D * sizeof(float), (void **)&part));
    dim3 grid((unsigned)nslab, (unsigned)H, (unsigned)B);
    bool v4 = D % 4 == 0 && D / 4 <= NT && NT % (D / 4) == 0 && al16(F(v)) && al16(F(out)) &&
              (int64_t)B * H <= CNT_STEP;
    for (int b = 0; b < B && v4; b++) v4 = al16(F(rho[b]));
    if (B <= STEP_PTRS) {
        rho_list rl;
        memset(&rl, 0, sizeof rl);
        for (int b = 0; b < B; b++) rl.p[b] = F(rho[b]);
        step_launch(c, grid, v4, part, rl, q, v, gm, H, Nq, D, out);
    } else {
        float **ptrs = (float **)dg_malloc((size_t)B * sizeof(float *));
        for (int b = 0; b < B; b++) ptrs[b] = F(rho[b]);
        void *dptr;
        int rc = args_put(be, ptrs, (size_t)B * sizeof(float *), &dptr);
        dg_free(ptrs);
        RET(rc);
        rho_array ra = {(float *const *)dptr};
        step_launch(c, grid, v4, part, ra, q, v, gm, H, Nq, D, out);
    }
    LAUNCHED("attn_step");
    if (v4) return 0;   /* k_step4 reduced the slabs itself */
    k_step_red<<<blocks_for((int64_t)B * H * D), NT, 0, c->stream>>>(F(out), part, (int64_t)B * H,
                                                                     nslab, D);
    LAUNCHED("attn_step_red");
    return 0;
}

// ------------------------------------------------------------------------------------------
// graphs: stream capture of a verb sequence (the decode step), replayed with one launch

typedef struct { cudaGraphExec_t exec; uint64_t gen; } cu_graph;

static int cu_graph_begin(dg_backend_t *be) {
    SETDEV();
    cuda_ctx *c = CTX(be);
    if (c->prof) {   /* the profile syncs around every verb */
        snprintf(be->errmsg, sizeof be->errmsg, "graphs are off under DG_CUDA_PROFILE");
        return DG_ENOTSUP;
    }
    DG_ASSERT(!c->capturing);
    CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = 1;
    c->cap_err = 0;
    return 0;
}

static int cu_graph_end(dg_backend_t *be, void **out) {
    SETDEV();
    cuda_ctx *c = CTX(be);
    DG_ASSERT(c->capturing);
    c->capturing = 0;
    int rc = c->cap_err;
    c->cap_err = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess || rc) {
        cudaGetLastError();                       /* a failed recording is not sticky */
        if (g) cudaGraphDestroy(g);
        if (rc) return rc;
        return cuda_fail(be, e, "cudaStreamEndCapture", __LINE__);
    }
    cudaGraphExec_t x = NULL;
    e = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return cuda_fail(be, e, "cudaGraphInstantiate", __LINE__);
    cu_graph *h = (cu_graph *)dg_malloc(sizeof *h);
    h->exec = x;
    h->gen = c->gen;
    *out = h;
    return 0;
}

/* DG_ESTALE when a backend buffer the recording refers to (scratch, staging, frequency table) has
 * been reallocated since: the caller records again. */
static int cu_graph_launch(dg_backend_t *be, void *graph) {
    SETDEV();
    NO_CAPTURE("graph_launch");
    cu_graph *h = (cu_graph *)graph;
    if (h->gen != CTX(be)->gen) {
        snprintf(be->errmsg, sizeof be->errmsg, "graph refers to reallocated backend buffers");
        return DG_ESTALE;
    }
    CK(cudaGraphLaunch(h->exec, CTX(be)->stream));
    return 0;
}

static void cu_graph_free(dg_backend_t *be, void *graph) {
    cuda_ctx *c = CTX(be);
    if (!graph || !c) return;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream);   /* a queued launch may still run it */
    cudaGraphExecDestroy(((cu_graph *)graph)->exec);
    dg_free(graph);
}

// ------------------------------------------------------------------------------------------
// device discovery: the CUDA runtime for the list, NVML (loaded at run time, so nothing links
// against the driver's library) for memory in use and utilisation when it is there.

#include <dlfcn.h>

typedef int (*nvml_fn0)(void);
typedef int (*nvml_handle_fn)(unsigned, void **);
typedef struct { unsigned long long total, free, used; } nvml_mem;
typedef struct { unsigned gpu, memory; } nvml_util;
typedef int (*nvml_mem_fn)(void *, nvml_mem *);
typedef int (*nvml_util_fn)(void *, nvml_util *);

static int cu_devices(dg_device_info *out, int max) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {   /* no driver or no GPU: zero devices */
        cudaGetLastError();
        return 0;
    }
    static void *nvml;
    static nvml_handle_fn get_handle;
    static nvml_mem_fn get_mem;
    static nvml_util_fn get_util;
    if (!nvml && (nvml = dlopen("libnvidia-ml.so.1", RTLD_LAZY))) {
        nvml_fn0 init = (nvml_fn0)dlsym(nvml, "nvmlInit_v2");
        get_handle = (nvml_handle_fn)dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
        get_mem = (nvml_mem_fn)dlsym(nvml, "nvmlDeviceGetMemoryInfo");
        get_util = (nvml_util_fn)dlsym(nvml, "nvmlDeviceGetUtilizationRates");
        if (!init || init() != 0) get_handle = NULL;
    }
    for (int d = 0; d < n && d < max; d++) {
        dg_device_info *o = &out[d];
        memset(o, 0, sizeof *o);
        o->index = d;
        o->util_pct = -1;
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, d) == cudaSuccess) {
            snprintf(o->name, sizeof o->name, "%s", p.name);
            o->mem_total = p.totalGlobalMem;
        }
        void *h = NULL;
        if (get_handle && get_handle((unsigned)d, &h) == 0) {
            nvml_mem m;
            nvml_util u;
            if (get_mem && get_mem(h, &m) == 0) { o->mem_total = m.total; o->mem_used = m.used; }
            if (get_util && get_util(h, &u) == 0) o->util_pct = (int)u.gpu;
        }
    }
    return n;
}

// ------------------------------------------------------------------------------------------
// the table

static dg_backend_iface make_iface(void) {
    dg_backend_iface i;
    memset(&i, 0, sizeof i);
    i.version = DG_BACKEND_IFACE_VERSION;
    i.name = "cuda";
    i.init = cu_init;
    i.free = cu_free;
    i.buf_alloc = cu_buf_alloc;
    i.buf_free = cu_buf_free;
    i.set = cu_set;
    i.get = cu_get;
    i.copy = cu_copy;
    i.fill = cu_fill;
    i.sync = cu_sync;
    i.gemm = cu_gemm;
    i.axpy = cu_axpy;
    i.scale = cu_scale;
    i.sumsq = cu_sumsq;
    i.embed_fwd = cu_embed_fwd;
    i.embed_bwd = cu_embed_bwd;
    i.layernorm_fwd = cu_layernorm_fwd;
    i.layernorm_bwd = cu_layernorm_bwd;
    i.relu_fwd = cu_relu_fwd;
    i.relu_bwd = cu_relu_bwd;
    i.pos_fwd = cu_pos_fwd;
    i.pos_bwd = cu_pos_bwd;
    i.attn_fwd = cu_attn_fwd;
    i.attn_bwd = cu_attn_bwd;
    i.gate_fwd = cu_gate_fwd;
    i.gate_bwd = cu_gate_bwd;
    i.add = cu_add;
    i.xent = cu_xent;
    i.adamw = cu_adamw;
    i.attn_step = cu_attn_step;
    i.pos_fwd_dev = cu_pos_fwd_dev;
    i.graph_begin = cu_graph_begin;
    i.graph_end = cu_graph_end;
    i.graph_launch = cu_graph_launch;
    i.graph_free = cu_graph_free;
    i.devices = cu_devices;
    return i;
}

static const dg_backend_iface CUDA_IFACE = make_iface();

extern "C" const dg_backend_iface *dg_backend_cuda_iface(void) { return &CUDA_IFACE; }
