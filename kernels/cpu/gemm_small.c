/* kernels/cpu/gemm_small.c -- GEMMs with few rows (M <= 16): the decode path.
 *
 * OpenBLAS packs the whole B operand on every sgemm call; for one or a few rows (a decode step
 * of 1..16 sequences) that packing costs more than the arithmetic. Here C rows are built
 * directly. For B stored (K, N):
 *   - AVX-512 (chosen at run time where the CPU has it): register tiles of up to 8 rows x 32..128
 *     columns. The k indices where any row of the tile is non-zero are listed first, so a weight
 *     row is read once per tile and never when every A[i,k] of the tile is zero (the Dragon
 *     activations feeding the decoder are ReLU products, mostly zero);
 *   - otherwise: C[i] += A[i,k] * B[k] over k in L1-sized column blocks, skipping A[i,k] == 0.
 * For B stored transposed (N, K), C[i,j] = A[i] . B[j].
 * Accumulation is f32 in a different order than sgemm: results agree with ref within the
 * usual 1e-5 relative. Not for transposed A (the caller uses sgemm). No allocation: the k
 * lists live on the stack, K is taken in chunks of KC.
 * Column chunks are shared between two cores by kernels/cpu/pool.c.
 * Thread affinity: the calling thread (plus the pool worker); shared state: the ISA choice. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define DG_X86 1
#endif

int dg__cpu_gemm_small(const dg_gemm_desc *d);
int dg__cpu_isa_avx512(int want);

typedef void (*dg_pool_fn)(void *arg, int64_t chunk);   /* kernels/cpu/pool.c */
void dg__cpu_pool_run(dg_pool_fn fn, void *arg, int64_t n);

#define SMALL_M 16

static inline void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] += a * x[j];
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        s0 += a[j] * b[j];         s1 += a[j + 1] * b[j + 1];
        s2 += a[j + 2] * b[j + 2]; s3 += a[j + 3] * b[j + 3];
        s4 += a[j + 4] * b[j + 4]; s5 += a[j + 5] * b[j + 5];
        s6 += a[j + 6] * b[j + 6]; s7 += a[j + 7] * b[j + 7];
    }
    for (; j < n; j++) s0 += a[j] * b[j];
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

/* Columns [j_lo, j_hi) of every batch item and row. */
static void gemm_cols(const dg_gemm_desc *d, int64_t j_lo, int64_t j_hi) {
    int64_t M = d->M, K = d->K;
    float acc[SMALL_M * 512];
    for (int64_t bi = 0; bi < d->batch; bi++) {
        const float *A = (const float *)((const char *)d->A.buf->data + d->A.offs);
        const float *B = (const float *)((const char *)d->B.buf->data + d->B.offs);
        A += bi * d->A.bstride;
        B += bi * d->B.bstride;
        float *C = (float *)((char *)d->C.buf->data + d->C.offs) + bi * d->C.bstride;
        if (!d->B.trans) {
            /* column blocks of 512 keep the accumulator rows in L1 */
            for (int64_t j0 = j_lo; j0 < j_hi; j0 += 512) {
                int64_t nj = j_hi - j0 < 512 ? j_hi - j0 : 512;
                memset(acc, 0, sizeof(float) * (size_t)(M * nj));
                for (int64_t k = 0; k < K; k++) {
                    const float *brow = B + k * d->B.ld + j0;
                    for (int64_t i = 0; i < M; i++) {
                        float a = A[i * d->A.ld + k];
                        if (a != 0.0f) axpy(acc + i * nj, a, brow, nj);
                    }
                }
                for (int64_t i = 0; i < M; i++) {
                    float *c = C + i * d->C.ld + j0;
                    const float *sr = acc + i * nj;
                    if (d->beta == 0.0f)
                        for (int64_t j = 0; j < nj; j++) c[j] = d->alpha * sr[j];
                    else
                        for (int64_t j = 0; j < nj; j++) c[j] = d->beta * c[j] + d->alpha * sr[j];
                }
            }
        } else {
            for (int64_t i = 0; i < M; i++) {
                const float *a = A + i * d->A.ld;
                float *c = C + i * d->C.ld;
                for (int64_t j = j_lo; j < j_hi; j++) {
                    float sv = d->alpha * dot(a, B + j * d->B.ld, K);
                    c[j] = d->beta == 0.0f ? sv : d->beta * c[j] + sv;
                }
            }
        }
    }
}

/* Worth a second core: at least ~64K multiply-adds. */
static int64_t pool_chunks(const dg_gemm_desc *d, int64_t n) {
    return d->M * d->N * d->K * d->batch >= 65536 ? n : 1;
}

#ifdef DG_X86
#define T512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define KC   2048                 /* k indices listed per chunk (stack: KC * 36 bytes) */
#define TM 8                     /* rows per register tile */
#define CW(d) ((d)->M <= 2 ? 128 : (d)->M <= 4 ? 64 : 32)   /* pool chunk: one tile wide */

/* One register tile: rows [0, MR) of the packed A values ap (nk x MR, k-major), columns
 * [0, NV*16) of B from brow0 with masks mk, over the listed k. first: C = beta C + alpha acc,
 * else C += alpha acc (a later K chunk). */
static inline __attribute__((always_inline)) T512 void
tile512(const int MR, const int NV, int64_t nk, const int32_t *idx, const float *ap,
        const float *B, int64_t ldb, float *C, int64_t ldc, const __mmask16 *mk, float alpha,
        float beta, int first) {
    __m512 acc[TM][8];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t t = 0; t < nk; t++) {
        const float *brow = B + (int64_t)idx[t] * ldb;
        if (t + 4 < nk) {
            const char *nx = (const char *)(B + (int64_t)idx[t + 4] * ldb);
            for (int v = 0; v < NV; v++) _mm_prefetch(nx + 64 * v, _MM_HINT_T0);
        }
        __m512 b[8];
        for (int v = 0; v < NV; v++) b[v] = _mm512_maskz_loadu_ps(mk[v], brow + 16 * v);
        for (int r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(ap[t * MR + r]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    __m512 al = _mm512_set1_ps(alpha), be = _mm512_set1_ps(beta);
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            float *c = C + r * ldc + 16 * v;
            __m512 o = _mm512_mul_ps(al, acc[r][v]);
            if (!first)
                o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(mk[v], c));
            else if (beta != 0.0f)
                o = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(mk[v], c), o);
            _mm512_mask_storeu_ps(c, mk[v], o);
        }
}

static T512 void masks(__mmask16 *mk, int NV, int64_t nj) {
    for (int v = 0; v < NV; v++) {
        int64_t left = nj - 16 * v;
        mk[v] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
}

/* Lists the k in [k0, k0 + kn) where any of rows [i0, i0+MR) of A is non-zero: idx[], and the
 * MR values of each in ap[] (k-major). Branch-free: the zero pattern of ReLU activations is
 * random, a branch would mispredict on every other k. Returns the count. */
static T512 int64_t list_k(const float *A, int64_t lda, int64_t i0, int MR, int64_t k0,
                           int64_t kn, int32_t *idx, float *ap) {
    int64_t nk = 0;
    for (int64_t k = k0; k < k0 + kn; k++) {
        int any = 0;
        for (int r = 0; r < MR; r++) {
            float a = A[(i0 + r) * lda + k];
            ap[nk * MR + r] = a;
            any |= a != 0.0f;
        }
        idx[nk] = (int32_t)k;
        nk += any;
    }
    return nk;
}

/* Columns [j_lo, j_hi) of rows [i0, i0+MR) over one listed k chunk. */
static T512 void cols512(const dg_gemm_desc *d, const float *B, float *C, int64_t i0, int MR,
                         int64_t j_lo, int64_t j_hi, int64_t nk, const int32_t *idx,
                         const float *ap, int first) {
    int64_t ldb = d->B.ld, ldc = d->C.ld;
    int NV = MR <= 2 ? 8 : 4, W = 16 * NV;
    __mmask16 mk[8];
    for (int64_t j0 = j_lo; j0 < j_hi; j0 += W) {
        masks(mk, NV, j_hi - j0);
        const float *Bj = B + j0;
        float *Cj = C + i0 * ldc + j0;
        switch (MR) {
#define TILE(R, V) case R: tile512(R, V, nk, idx, ap, Bj, ldb, Cj, ldc, mk, d->alpha, d->beta, \
                                  first); break;
        TILE(1, 8) TILE(2, 8) TILE(3, 4) TILE(4, 4) TILE(5, 2) TILE(6, 2) TILE(7, 2)
        default: tile512(8, 2, nk, idx, ap, Bj, ldb, Cj, ldc, mk, d->alpha, d->beta, first);
#undef TILE
        }
    }
}

/* The k lists of every (A batch item, row tile), built once per call when K <= KC and they fit
 * on the stack (the column chunks of one call share them); else each chunk lists its own. */
typedef struct {
    const dg_gemm_desc *d;
    int64_t             ntile;
    const int32_t      *idx;     /* [item][tile][K]   or NULL */
    const float        *ap;      /* [item][tile][TM K]        */
    const int64_t      *nk;      /* [item][tile]              */
} g512_job;

#define LIST_STACK (160 * 1024)

/* Chunk c of a GEMM: batch item c / nj, columns [CW * (c % nj), +CW), every row tile. */
static T512 void chunk512(const g512_job *g, int64_t c) {
    const dg_gemm_desc *d = g->d;
    int64_t nj = (d->N + CW(d) - 1) / CW(d), bi = c / nj, j_lo = CW(d) * (c % nj);
    int64_t j_hi = j_lo + CW(d) < d->N ? j_lo + CW(d) : d->N, K = d->K;
    const float *A = (const float *)((const char *)d->A.buf->data + d->A.offs) + bi * d->A.bstride;
    const float *B = (const float *)((const char *)d->B.buf->data + d->B.offs) + bi * d->B.bstride;
    float *C = (float *)((char *)d->C.buf->data + d->C.offs) + bi * d->C.bstride;
    int64_t item = d->A.bstride ? bi : 0;
    for (int64_t t = 0; t < g->ntile; t++) {
        int64_t i0 = TM * t;
        int MR = d->M - i0 < TM ? (int)(d->M - i0) : TM;
        if (g->idx) {
            int64_t s = item * g->ntile + t;
            cols512(d, B, C, i0, MR, j_lo, j_hi, g->nk[s], g->idx + s * K, g->ap + s * TM * K, 1);
            continue;
        }
        int32_t idx[KC];
        float ap[KC * TM];
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kn = K - k0 < KC ? K - k0 : KC;
            int64_t nk = list_k(A, d->A.ld, i0, MR, k0, kn, idx, ap);
            if (nk == 0 && k0 > 0) continue;
            cols512(d, B, C, i0, MR, j_lo, j_hi, nk, idx, ap, k0 == 0);
        }
    }
}

static void chunk512_fn(void *arg, int64_t c) { chunk512(arg, c); }

/* Pool chunk: the k list of slot s = (A item, row tile), into the job's prebuilt arrays. */
static T512 void list_slot(g512_job *g, int64_t s) {
    const dg_gemm_desc *d = g->d;
    int64_t K = d->K, it = s / g->ntile, i0 = TM * (s % g->ntile);
    int MR = d->M - i0 < TM ? (int)(d->M - i0) : TM;
    const float *A = (const float *)((const char *)d->A.buf->data + d->A.offs) + it * d->A.bstride;
    ((int64_t *)g->nk)[s] = list_k(A, d->A.ld, i0, MR, 0, K, (int32_t *)g->idx + s * K,
                                   (float *)g->ap + s * TM * K);
}

static void list_fn(void *arg, int64_t s) { list_slot(arg, s); }

static T512 void gemm512(const dg_gemm_desc *d) {
    int64_t ntile = (d->M + TM - 1) / TM, items = d->A.bstride ? d->batch : 1, K = d->K;
    int64_t slots = items * ntile;
    size_t bytes = (size_t)(slots * K * (4 + 4 * TM) + slots * 8);
    int pre = K <= KC && bytes <= LIST_STACK;
    _Alignas(64) char buf[pre ? bytes : 1];
    g512_job g = {.d = d, .ntile = ntile};
    if (pre) {
        float *ap = (float *)buf;
        int32_t *idx = (int32_t *)(ap + slots * TM * K);
        int64_t *nk = (int64_t *)(idx + slots * K);
        g.idx = idx; g.ap = ap; g.nk = nk;
        if (slots > 1 && pool_chunks(d, slots) > 1) dg__cpu_pool_run(list_fn, &g, slots);
        else for (int64_t sl = 0; sl < slots; sl++) list_fn(&g, sl);
    }
    int64_t n = d->batch * ((d->N + CW(d) - 1) / CW(d));
    if (pool_chunks(d, n) > 1) dg__cpu_pool_run(chunk512_fn, &g, n);
    else for (int64_t c = 0; c < n; c++) chunk512(&g, c);
}

#endif

/* Portable path, chunk c: columns [64 c, 64 c + 64) of every batch item. */
static void chunk_cols_fn(void *arg, int64_t c) {
    const dg_gemm_desc *d = arg;
    int64_t lo = 64 * c, hi = lo + 64 < d->N ? lo + 64 : d->N;
    gemm_cols(d, lo, hi);
}


/* -1: not decided yet; 0: portable loops; 1: AVX-512. DG_CPU_ISA=avx2 forces the portable
 * loops (for comparison); tests switch with dg__cpu_isa_avx512(). */
static int g_isa512 = -1;

static int isa512(void) {
    if (g_isa512 < 0) {
#ifdef DG_X86
        const char *e = getenv("DG_CPU_ISA");
        g_isa512 = (e && strcmp(e, "avx512")) ? 0 : __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512bw");
#else
        g_isa512 = 0;
#endif
    }
    return g_isa512;
}

/* want 0/1 selects the path (1 only where the CPU has AVX-512), -1 just asks. Returns the
 * path in use before the call. Not thread safe: for tests and start-up. */
int dg__cpu_isa_avx512(int want) {
    int prev = isa512();
#ifdef DG_X86
    if (want == 0) g_isa512 = 0;
    if (want == 1) { g_isa512 = -1; g_isa512 = isa512(); }
#endif
    return prev;
}

/* Returns 1 when it computed the GEMM, 0 when the shape is not for it (caller uses sgemm). */
int dg__cpu_gemm_small(const dg_gemm_desc *d) {
    if (d->M > SMALL_M || d->A.trans) return 0;
#ifdef DG_X86
    if (!d->B.trans && isa512()) {
        gemm512(d);
        return 1;
    }
#endif
    int64_t n = (d->N + 63) / 64;
    if (pool_chunks(d, n) > 1) dg__cpu_pool_run(chunk_cols_fn, (void *)d, n);
    else gemm_cols(d, 0, d->N);
    return 1;
}
