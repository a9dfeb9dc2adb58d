/* kernels/cpu/pool.c -- a small fork/join pool for the cpu backend's decode path.
 *
 * Decode steps are made of many small GEMMs (one row per sequence). On two cores the weights of
 * the shared Dragon block (encoder, encoder_v, decoder: 3 MB for the base config) do not fit in
 * one core's L2, but half of them fits in each: splitting every small GEMM by columns the same
 * way each time keeps each core's half L2-resident across layers and tokens.
 *
 * dg__cpu_pool_run(fn, arg) runs fn(arg, tid, nt) on nt threads (the caller is tid 0) and
 * returns when all are done. Workers spin briefly after a job (decode calls come microseconds
 * apart), then sleep on a condition variable so they never steal a core from OpenBLAS during
 * training. If the pool is in use by another thread, the job runs on the caller alone.
 * Thread affinity: any thread. */
#include "dg.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <unistd.h>

typedef void (*dg_pool_fn)(void *arg, int tid, int nt);
int dg__cpu_pool_threads(void);
void dg__cpu_pool_run(dg_pool_fn fn, void *arg);

#define MAX_THREADS 4
#define SPIN_ITERS 20000

static pthread_mutex_t g_use = PTHREAD_MUTEX_INITIALIZER;   /* one job at a time */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  g_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t  g_once = PTHREAD_ONCE_INIT;
static int             g_nt = 1;
static atomic_ulong    g_gen;            /* job generation */
static atomic_int      g_pending;        /* workers still running the current job */
static dg_pool_fn      g_fn;
static void           *g_arg;

static void *worker(void *p) {
    int tid = (int)(intptr_t)p;
    unsigned long seen = 0;
    for (;;) {
        unsigned long gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&g_gen, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ITERS) continue;
            pthread_mutex_lock(&g_mu);
            while ((gen = atomic_load(&g_gen)) == seen) pthread_cond_wait(&g_cv, &g_mu);
            pthread_mutex_unlock(&g_mu);
            break;
        }
        seen = gen;
        g_fn(g_arg, tid, g_nt);
        atomic_fetch_sub_explicit(&g_pending, 1, memory_order_release);
    }
    return NULL;
}

static void pool_start(void) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("DG_CPU_THREADS");      /* override, e.g. 1 to disable */
    if (env && atoi(env) > 0) ncpu = atoi(env);
    int nt = ncpu < 1 ? 1 : (ncpu > MAX_THREADS ? MAX_THREADS : (int)ncpu);
    for (int t = 1; t < nt; t++) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &at, worker, (void *)(intptr_t)t);
        pthread_attr_destroy(&at);
        if (rc) { nt = t; break; }
    }
    g_nt = nt;
}

int dg__cpu_pool_threads(void) {
    pthread_once(&g_once, pool_start);
    return g_nt;
}

void dg__cpu_pool_run(dg_pool_fn fn, void *arg) {
    pthread_once(&g_once, pool_start);
    if (g_nt == 1 || pthread_mutex_trylock(&g_use)) { fn(arg, 0, 1); return; }
    g_fn = fn;
    g_arg = arg;
    atomic_store(&g_pending, g_nt - 1);
    pthread_mutex_lock(&g_mu);
    atomic_fetch_add_explicit(&g_gen, 1, memory_order_release);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    fn(arg, 0, g_nt);
    while (atomic_load_explicit(&g_pending, memory_order_acquire) > 0) {}
    pthread_mutex_unlock(&g_use);
}
