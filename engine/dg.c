/* engine/dg.c -- status strings, assertions, allocation wrappers, logging, RNG, clock.
 * The only file that calls libc malloc/free. Thread affinity: any thread. */
#include "dg.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ------------------------------------------------------------------------------------------
// status codes

const char *dg_strerror(int rc) {
    switch (rc) {
    case 0: return "ok";
#define DG__STR(name, code, msg) case code: return msg;
    DG_ERRNO_MAP(DG__STR)
#undef DG__STR
    default: return "unknown error";
    }
}

const char *dg_err_name(int rc) {
    switch (rc) {
    case 0: return "OK";
#define DG__NAME(name, code, msg) case code: return #name;
    DG_ERRNO_MAP(DG__NAME)
#undef DG__NAME
    default: return "EUNKNOWN";
    }
}

void dg__assert_fail(const char *expr, const char *file, int line, const char *func) {
    fprintf(stderr, "%s:%d: %s: assertion failed: %s\n", file, line, func, expr);
    fflush(stderr);
    abort();
}

// ------------------------------------------------------------------------------------------
// allocation: a size header in front of every block keeps the byte count exact.

static atomic_size_t g_mem_in_use;

typedef union { size_t n; max_align_t align; } mem_hdr;

void *dg_try_malloc(size_t n) {
    mem_hdr *h = malloc(sizeof(mem_hdr) + n);
    if (!h) return NULL;
    h->n = n;
    atomic_fetch_add(&g_mem_in_use, n);
    return h + 1;
}

void *dg_try_calloc(size_t n, size_t sz) {
    if (sz && n > SIZE_MAX / sz) return NULL;
    mem_hdr *h = calloc(1, sizeof(mem_hdr) + n * sz);
    if (!h) return NULL;
    h->n = n * sz;
    atomic_fetch_add(&g_mem_in_use, n * sz);
    return h + 1;
}

static void oom(size_t n) {
    fprintf(stderr, "dragond: out of memory allocating %zu bytes\n", n);
    abort();
}

void *dg_malloc(size_t n) {
    void *p = dg_try_malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *dg_calloc(size_t n, size_t sz) {
    void *p = dg_try_calloc(n ? n : 1, sz ? sz : 1);
    if (!p) oom(n * sz);
    return p;
}

void *dg_realloc(void *p, size_t n) {
    if (!p) return dg_malloc(n);
    mem_hdr *h = (mem_hdr *)p - 1;
    size_t old = h->n;
    mem_hdr *nh = realloc(h, sizeof(mem_hdr) + (n ? n : 1));
    if (!nh) oom(n);
    nh->n = n;
    atomic_fetch_sub(&g_mem_in_use, old);
    atomic_fetch_add(&g_mem_in_use, n);
    return nh + 1;
}

char *dg_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = dg_malloc(n);
    memcpy(d, s, n);
    return d;
}

void dg_free(void *p) {
    if (!p) return;
    mem_hdr *h = (mem_hdr *)p - 1;
    atomic_fetch_sub(&g_mem_in_use, h->n);
    free(h);
}

size_t dg_mem_in_use(void) { return atomic_load(&g_mem_in_use); }

// ------------------------------------------------------------------------------------------
// logging

static dg_log_fn    g_log_fn;
static void        *g_log_ud;
static dg_log_level g_log_min = DG_LOG_INFO;

void dg_log_set_hook(dg_log_fn fn, void *ud) { g_log_fn = fn; g_log_ud = ud; }
void dg_log_set_level(dg_log_level min_level) { g_log_min = min_level; }

void dg_log(dg_log_level lvl, const char *fmt, ...) {
    if (lvl < g_log_min) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (g_log_fn) { g_log_fn(lvl, buf, g_log_ud); return; }
    static const char *names[] = {"debug", "info", "warn", "error"};
    fprintf(stderr, "[%s] %s\n", names[lvl & 3], buf);
}

// ------------------------------------------------------------------------------------------
// random numbers: xoshiro256** seeded through splitmix64

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dg_rng_seed(dg_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t dg_rng_next(dg_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double dg_rng_uniform(dg_rng *r) { return (double)(dg_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

uint64_t dg_rng_below(dg_rng *r, uint64_t n) {
    DG_ASSERT(n > 0);
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;   /* reject the biased tail */
    uint64_t x;
    do { x = dg_rng_next(r); } while (x >= lim);
    return x % n;
}

float dg_rng_normal(dg_rng *r) {
    double u1 = dg_rng_uniform(r), u2 = dg_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

double dg_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
