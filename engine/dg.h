/* engine/dg.h -- the shared base of dragond: status codes, assertions, allocation wrappers,
 * logging hook and the deterministic random numbers every backend agrees on.
 *
 * Not here: anything about tensors (engine/backend.h), the model (engine/model.h) or I/O.
 * Thread affinity: everything here is safe from any thread (the log hook must be too).
 *
 * Conventions (docs/STYLE.md §4.6): a function that can fail returns int, 0 on success or a
 * negative DG_E* code from DG_ERRNO_MAP; results go through out-params. Our own invariants are
 * DG_ASSERT (file:line, abort); bytes from outside return a code and never assert. */
#ifndef DG_H
#define DG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ------------------------------------------------------------------------------------------
 * Status codes: one table generates the enum, dg_strerror and dg_err_name. */
#define DG_ERRNO_MAP(XX)                                   \
    XX(EINVAL,    -1,  "invalid argument")                 \
    XX(ENOMEM,    -2,  "out of memory")                    \
    XX(EIO,       -3,  "i/o error")                        \
    XX(ECORRUPT,  -4,  "corrupt file")                     \
    XX(EVERSION,  -5,  "unsupported format version")       \
    XX(ENOTSUP,   -6,  "operation not supported")          \
    XX(EDEVICE,   -7,  "device error")                     \
    XX(EBUSY,     -8,  "resource busy")                    \
    XX(ENOTFOUND, -9,  "not found")                        \
    XX(ECANCELED, -10, "canceled")                         \
    XX(ESHAPE,    -11, "shape mismatch")                   \
    XX(ECONFIG,   -12, "invalid configuration")            \
    XX(EDATA,     -13, "bad data")                         \
    XX(ENAN,      -14, "loss is not finite")               \
    XX(EOOM,      -15, "device out of memory")             \
    XX(EEXIST,    -16, "already exists")                   \
    XX(ETIMEDOUT, -17, "timed out")                        \
    XX(ERANGE,    -18, "value out of range")               \
    XX(EINTERNAL, -19, "internal error")                   \
    XX(ESTALE,    -20, "recorded graph is stale")

typedef enum {
    DG_OK = 0,
#define DG__ERR_ENUM(name, code, msg) DG_##name = code,
    DG_ERRNO_MAP(DG__ERR_ENUM)
#undef DG__ERR_ENUM
} dg_status;

const char *dg_strerror(int rc);   /* "corrupt file"; "unknown error" for codes not in the table */
const char *dg_err_name(int rc);   /* "ECORRUPT"; "OK" for 0                                      */

/* ------------------------------------------------------------------------------------------
 * Assertions. DG_ASSERT stays on in release builds: it guards OUR invariants only. */
void dg__assert_fail(const char *expr, const char *file, int line, const char *func);
#define DG_ASSERT(x) \
    do { if (!(x)) dg__assert_fail(#x, __FILE__, __LINE__, __func__); } while (0)
#define DG_NEVER(x) (x)           /* defended-but-impossible branch: handled, not asserted */

/* ------------------------------------------------------------------------------------------
 * Allocation. Small allocations abort on OOM (no NULL checks at call sites); large buffers use
 * dg_try_malloc and return DG_ENOMEM. libc malloc is used nowhere else. */
void  *dg_malloc(size_t n);
void  *dg_calloc(size_t n, size_t sz);
void  *dg_realloc(void *p, size_t n);
char  *dg_strdup(const char *s);
void  *dg_try_malloc(size_t n);    /* NULL on failure */
void  *dg_try_calloc(size_t n, size_t sz);
void   dg_free(void *p);           /* NULL is a no-op */
size_t dg_mem_in_use(void);        /* bytes currently held through these wrappers */

/* ------------------------------------------------------------------------------------------
 * Logging. Engine code logs through dg_log; the daemon installs a hook that forwards lines to its
 * log (and SQLite); the default hook prints to stderr. */
typedef enum { DG_LOG_DEBUG = 0, DG_LOG_INFO = 1, DG_LOG_WARN = 2, DG_LOG_ERROR = 3 } dg_log_level;
typedef void (*dg_log_fn)(dg_log_level lvl, const char *msg, void *ud);
void dg_log_set_hook(dg_log_fn fn, void *ud);
void dg_log_set_level(dg_log_level min_level);
void dg_log(dg_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define DG_INFO(...)  dg_log(DG_LOG_INFO, __VA_ARGS__)
#define DG_WARN(...)  dg_log(DG_LOG_WARN, __VA_ARGS__)
#define DG_ERROR(...) dg_log(DG_LOG_ERROR, __VA_ARGS__)

/* ------------------------------------------------------------------------------------------
 * Random numbers. dg_rng is xoshiro256** seeded by splitmix64: small, fast, its state is four
 * words that go into checkpoints verbatim so a resumed run draws the same numbers. */
typedef struct { uint64_t s[4]; } dg_rng;
void     dg_rng_seed(dg_rng *r, uint64_t seed);
uint64_t dg_rng_next(dg_rng *r);
double   dg_rng_uniform(dg_rng *r);              /* [0, 1) with 53 random bits        */
uint64_t dg_rng_below(dg_rng *r, uint64_t n);     /* uniform in [0, n), n > 0, unbiased */
float    dg_rng_normal(dg_rng *r);               /* standard normal (Box-Muller)      */

/* Monotonic wall time in seconds (for tokens/s and timings). */
double dg_now(void);

#endif /* DG_H */
