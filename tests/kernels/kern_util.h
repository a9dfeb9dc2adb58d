/* tests/kernels/kern_util.h -- helpers shared by the kernel tests (test_parity, test_gradcheck,
 * test_attn_step): open a backend, put host arrays into backend buffers, read them back, random
 * inputs. Header-only; not a test program itself (the Makefile builds only test_*.c).
 *
 * Every tensor a test uses gets its own buffer, viewed at a non-zero offset (KU_PAD bytes) so that
 * a backend that ignores dg_tensor.offs fails. Buffers live in an arena freed in one call.
 * Thread affinity: the test's thread. */
#ifndef DG_KERN_UTIL_H
#define DG_KERN_UTIL_H

#include "backend.h"
#include "check_util.h"

#define KU_PAD 64            /* bytes before every tensor: catches ignored offsets */
#define KU_MAXBUF 128

typedef struct {
    dg_backend_t *be;
    dg_buf_t     *bufs[KU_MAXBUF];
    int           n;
} ku_arena;

static inline void ku_open(ku_arena *a, const char *name) {
    memset(a, 0, sizeof *a);
    int rc = dg_backend_open(name, NULL, &a->be);
    ck_assert_msg(rc == 0, "cannot open backend %s: %d", name, rc);
}

static inline void ku_close(ku_arena *a) {
    for (int i = 0; i < a->n; i++) dg_buf_free(a->be, a->bufs[i]);
    dg_backend_close(a->be);
    memset(a, 0, sizeof *a);
}

/* A fresh f32 tensor (d3, d2, d1, d0) holding host[] (or NaN when host is NULL). */
static inline dg_tensor ku_t4(ku_arena *a, const float *host, int64_t d3, int64_t d2, int64_t d1,
                              int64_t d0) {
    ck_assert_int_lt(a->n, KU_MAXBUF);
    int64_t n = d3 * d2 * d1 * d0;
    dg_buf_t *b = NULL;
    int rc = dg_buf_alloc(a->be, KU_PAD + (size_t)n * 4, &b);
    ck_assert_int_eq(rc, 0);
    a->bufs[a->n++] = b;
    dg_tensor t = dg_t4(b, KU_PAD, d3, d2, d1, d0);
    if (host) {
        ck_assert_int_eq(dg_set(a->be, t, host), 0);
    } else {
        ck_assert_int_eq(dg_fill(a->be, t, NAN), 0);
    }
    return t;
}
static inline dg_tensor ku_t1(ku_arena *a, const float *host, int64_t n) {
    dg_tensor t = ku_t4(a, host, 1, 1, 1, n);
    t.ne[0] = n; t.ne[1] = t.ne[2] = t.ne[3] = 1;
    return t;
}
static inline dg_tensor ku_t2(ku_arena *a, const float *host, int64_t r, int64_t c) {
    return ku_t4(a, host, 1, 1, r, c);
}
static inline dg_tensor ku_i32(ku_arena *a, const int32_t *host, int64_t n) {
    ck_assert_int_lt(a->n, KU_MAXBUF);
    dg_buf_t *b = NULL;
    ck_assert_int_eq(dg_buf_alloc(a->be, KU_PAD + (size_t)n * 4, &b), 0);
    a->bufs[a->n++] = b;
    dg_tensor t = dg_t_i32(b, KU_PAD, n);
    ck_assert_int_eq(dg_set(a->be, t, host), 0);
    return t;
}

/* Read a tensor back into a fresh malloc'd host array (test code: plain malloc is fine). */
static inline float *ku_get(ku_arena *a, dg_tensor t) {
    float *h = malloc((size_t)dg_nelem(t) * sizeof *h);
    ck_assert_int_eq(dg_get(a->be, h, t), 0);
    return h;
}

/* Random host arrays: normal(0, s), or sparse (ReLU-like: max(normal, 0) with ~half zeros). */
static inline float *ku_randn(dg_rng *r, int64_t n, float s) {
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    for (int64_t i = 0; i < n; i++) h[i] = s * dg_rng_normal(r);
    return h;
}
static inline float *ku_relu_randn(dg_rng *r, int64_t n, float s) {
    float *h = ku_randn(r, n, s);
    for (int64_t i = 0; i < n; i++) h[i] = h[i] > 0 ? h[i] : 0.0f;
    return h;
}
static inline float *ku_dup(const float *x, int64_t n) {
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    memcpy(h, x, (size_t)n * sizeof *h);
    return h;
}

/* Parity metric: max |got - ref| / max |ref| (dg_max_rel_err); prints what failed. */
static inline void ku_expect_rel(const char *what, const float *got, const float *ref, int64_t n,
                                 double tol) {
    double e = dg_max_rel_err(got, ref, n);
    if (!(e <= tol)) dg_check_close(what, got, ref, n, 0.0, tol);
    ck_assert_msg(e <= tol, "%s: relative error %.3g > %.3g", what, e, tol);
}

#endif /* DG_KERN_UTIL_H */
