/* kernels/cpu/pool.c -- a two-ended work-sharing pool for the cpu backend's decode path.
 *
 * A decode step is a few dozen small pieces of work (few-row GEMMs, the recurrent attention
 * step) of 5..100 us each: too small for OpenBLAS threads, large enough that a second core pays.
 * dg__cpu_pool_run(fn, arg, n) runs fn(arg, c) for every chunk c in [0, n):
 *   - the caller takes chunks from the front, the worker from the back, so on a quiet machine
 *     each thread gets the same half every call (each core keeps its half of the weights and of
 *     the state in its own L2);
 *   - nothing waits for a thread that is not running: if the worker is asleep or descheduled
 *     (another process holds the core), the caller simply takes every chunk itself and waits
 *     only for a chunk the worker has already started; when that wait is long (the worker was
 *     preempted mid-chunk), the next BACKOFF_CALLS calls run on the caller alone.
 * The worker spins ~50 us after a job (decode calls come microseconds apart), then sleeps on a
 * futex, so an idle daemon or a training job (OpenBLAS threads) loses nothing to it.
 * Threads: DG_CPU_THREADS (default 2 when the machine has 2+ cores; 1 turns the pool off).
 * If the pool is in use by another thread, the call runs on the caller alone.
 * Thread affinity: any thread; one job at a time. */
#include "dg.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef void (*dg_pool_fn)(void *arg, int64_t chunk);
void dg__cpu_pool_run(dg_pool_fn fn, void *arg, int64_t n);
int  dg__cpu_pool_threads(int want);

#define SPIN_NS 50000            /* worker spin after a job before it sleeps */
#define LATE_NS 300000           /* waiting this long for the worker's chunk ... */
#define BACKOFF_CALLS 2000       /* ... runs the next calls on the caller alone */
#define GEN_BITS 16
#define IDX_BITS 24              /* chunk indices < 2^24 */
#define IDX_MASK ((UINT64_C(1) << IDX_BITS) - 1)

typedef struct {
    dg_pool_fn fn;
    void      *arg;
} pool_job;

static pthread_once_t   g_once = PTHREAD_ONCE_INIT;
static int              g_threads = 1;          /* 1 or 2 */
static int              g_have_worker;
static atomic_flag      g_busy = ATOMIC_FLAG_INIT;
static _Atomic uint32_t g_seq;                  /* bumped per job: the worker's futex word */
static _Atomic int      g_sleeping;
static _Atomic(pool_job *) g_job;
static _Atomic uint64_t g_range;                /* gen | lo | hi: chunks [lo, hi) unclaimed */
static _Atomic int64_t  g_left;                 /* chunks claimed or not, not yet finished */

static inline uint64_t pack(uint64_t gen, uint64_t lo, uint64_t hi) {
    return (gen << (2 * IDX_BITS)) | (lo << IDX_BITS) | hi;
}

/* Claims one chunk of generation gen from the front (front != 0) or the back; -1 when none. */
static int64_t claim(uint64_t gen, int front) {
    uint64_t r = atomic_load_explicit(&g_range, memory_order_acquire);
    for (;;) {
        uint64_t g = r >> (2 * IDX_BITS), lo = (r >> IDX_BITS) & IDX_MASK, hi = r & IDX_MASK;
        if (g != gen || lo >= hi) return -1;
        uint64_t nr = front ? pack(g, lo + 1, hi) : pack(g, lo, hi - 1);
        if (atomic_compare_exchange_weak_explicit(&g_range, &r, nr, memory_order_acq_rel,
                                                  memory_order_acquire))
            return front ? (int64_t)lo : (int64_t)hi - 1;
    }
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *worker(void *p) {
    (void)p;
    uint32_t seen = atomic_load(&g_seq);
    for (;;) {
        int64_t t0 = now_ns();
        int spins = 0;
        while (atomic_load_explicit(&g_seq, memory_order_acquire) == seen) {
            cpu_relax();
            if (++spins % 256 || now_ns() - t0 < SPIN_NS) continue;
            atomic_store(&g_sleeping, 1);
            while (atomic_load(&g_seq) == seen)
                syscall(SYS_futex, &g_seq, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            atomic_store(&g_sleeping, 0);
            break;
        }
        seen = atomic_load_explicit(&g_seq, memory_order_acquire);
        uint64_t gen = atomic_load_explicit(&g_range, memory_order_acquire) >> (2 * IDX_BITS);
        pool_job *j = atomic_load_explicit(&g_job, memory_order_acquire);
        int64_t c;
        /* a claim of generation gen succeeds only while that job is running, so j is its job */
        while ((c = claim(gen, 0)) >= 0) {
            j->fn(j->arg, c);
            atomic_fetch_sub_explicit(&g_left, 1, memory_order_acq_rel);
        }
    }
    return NULL;
}

static void pool_init(void) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = ncpu >= 2 ? 2 : 1;
    const char *e = getenv("DG_CPU_THREADS");
    if (e && *e) n = atoi(e) >= 2 ? 2 : 1;
    if (n < 2) return;
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, worker, NULL) == 0) g_threads = 2, g_have_worker = 1;
    else dg_log(DG_LOG_WARN, "cpu: no decode worker thread; running on one core");
    pthread_attr_destroy(&at);
}

/* want 1 or 2 (tests: compare both), 0 asks. Returns the thread count before the call. */
int dg__cpu_pool_threads(int want) {
    pthread_once(&g_once, pool_init);
    int prev = g_threads;
    if (want == 1) g_threads = 1;
    else if (want == 2) {
        if (!g_have_worker) {                  /* DG_CPU_THREADS=1 or one core: start anyway */
            pthread_t t;
            if (pthread_create(&t, NULL, worker, NULL) == 0) { pthread_detach(t); g_have_worker = 1; }
        }
        if (g_have_worker) g_threads = 2;
    }
    return prev;
}

void dg__cpu_pool_run(dg_pool_fn fn, void *arg, int64_t n) {
    DG_ASSERT(n >= 0 && (uint64_t)n <= IDX_MASK);
    pthread_once(&g_once, pool_init);
    static int backoff;                        /* calls left to run alone; guarded by g_busy */
    if (n <= 1 || g_threads < 2 || atomic_flag_test_and_set(&g_busy)) {
        for (int64_t c = 0; c < n; c++) fn(arg, c);
        return;
    }
    if (backoff > 0) {                         /* the worker was late: run alone for a while */
        backoff--;
        for (int64_t c = 0; c < n; c++) fn(arg, c);
        atomic_flag_clear(&g_busy);
        return;
    }
    static uint64_t gen;                       /* guarded by g_busy */
    gen = (gen + 1) & ((UINT64_C(1) << GEN_BITS) - 1);
    pool_job job = {fn, arg};
    atomic_store_explicit(&g_left, n, memory_order_relaxed);
    atomic_store_explicit(&g_job, &job, memory_order_release);
    atomic_store_explicit(&g_range, pack(gen, 0, (uint64_t)n), memory_order_release);
    atomic_fetch_add(&g_seq, 1);          /* seq_cst: pairs with the worker's g_sleeping */
    if (atomic_load(&g_sleeping)) syscall(SYS_futex, &g_seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    int64_t c;
    while ((c = claim(gen, 1)) >= 0) {
        fn(arg, c);
        atomic_fetch_sub_explicit(&g_left, 1, memory_order_acq_rel);
    }
    if (atomic_load_explicit(&g_left, memory_order_acquire) > 0) {
        int64_t t0 = now_ns();
        while (atomic_load_explicit(&g_left, memory_order_acquire) > 0) cpu_relax();
        /* a chunk held this long means the worker's core is shared with something else */
        if (now_ns() - t0 > LATE_NS) backoff = BACKOFF_CALLS;
    }
    atomic_flag_clear(&g_busy);
}
