/* tests/kernels/test_pool.c -- the cpu backend's decode pool (kernels/cpu/pool.c): every chunk
 * of every job runs exactly once, on one thread or two, with jobs posted back to back, with two
 * threads posting at the same time (one of them runs its job alone), and when the worker is
 * slow (it sleeps between jobs); the pool actually shares work when it has two threads.
 * Thread affinity: the test threads named in each test. */
#include "check_util.h"
#include "engine/dg.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

typedef void (*dg_pool_fn)(void *arg, int64_t chunk);
void dg__cpu_pool_run(dg_pool_fn fn, void *arg, int64_t n);
int  dg__cpu_pool_threads(int want);

#define MAXC 4096

typedef struct {
    _Atomic int hits[MAXC];
    _Atomic int on_caller, on_other;
    pthread_t   caller;
    int         spin;              /* busy work per chunk (iterations) */
} job_t;

static void chunk_fn(void *arg, int64_t c) {
    job_t *j = arg;
    atomic_fetch_add(&j->hits[c], 1);
    if (pthread_equal(pthread_self(), j->caller)) atomic_fetch_add(&j->on_caller, 1);
    else atomic_fetch_add(&j->on_other, 1);
    volatile double x = 0;
    for (int i = 0; i < j->spin; i++) x += i * 0.5;
}

static void run_and_check(job_t *j, int64_t n) {
    for (int64_t c = 0; c < n; c++) atomic_store(&j->hits[c], 0);
    j->caller = pthread_self();
    dg__cpu_pool_run(chunk_fn, j, n);
    for (int64_t c = 0; c < n; c++)
        ck_assert_msg(atomic_load(&j->hits[c]) == 1, "chunk %lld of %lld ran %d times",
                      (long long)c, (long long)n, atomic_load(&j->hits[c]));
}

START_TEST(every_chunk_once) {
    static job_t j;
    for (int threads = 1; threads <= 2; threads++) {
        dg__cpu_pool_threads(threads);
        const int64_t sizes[] = {0, 1, 2, 3, 7, 16, 33, 1000, MAXC};
        for (int rep = 0; rep < 200; rep++)
            for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
                j.spin = rep % 3 == 0 ? 2000 : 0;
                run_and_check(&j, sizes[k]);
            }
    }
}
END_TEST

START_TEST(two_threads_share) {
    static job_t j;
    dg__cpu_pool_threads(2);
    atomic_store(&j.on_caller, 0);
    atomic_store(&j.on_other, 0);
    j.spin = 200000;                   /* ~0.1-0.5 ms per chunk: the worker has time to join */
    for (int rep = 0; rep < 20; rep++) run_and_check(&j, 16);
    printf("  chunks on the caller %d, on the worker %d\n", atomic_load(&j.on_caller),
           atomic_load(&j.on_other));
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        printf("SKIP: one core: no sharing expected\n");
        return;
    }
    ck_assert_int_gt(atomic_load(&j.on_other), 0);
    ck_assert_int_gt(atomic_load(&j.on_caller), 0);
}
END_TEST

/* Jobs spaced out so the worker goes to sleep (futex) between them, and is woken again. */
START_TEST(worker_sleeps_and_wakes) {
    static job_t j;
    dg__cpu_pool_threads(2);
    j.spin = 1000;
    for (int rep = 0; rep < 20; rep++) {
        usleep(2000);                  /* > the worker's 50 us spin */
        run_and_check(&j, 64);
    }
}
END_TEST

static void *poster(void *p) {
    job_t *j = p;
    for (int rep = 0; rep < 300; rep++) run_and_check(j, 97);
    return NULL;
}

START_TEST(concurrent_callers) {
    static job_t a, b;
    dg__cpu_pool_threads(2);
    a.spin = b.spin = 500;
    pthread_t t1, t2;
    ck_assert_int_eq(pthread_create(&t1, NULL, poster, &a), 0);
    ck_assert_int_eq(pthread_create(&t2, NULL, poster, &b), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("cpu decode pool");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_chunk_once);
    tcase_add_test(tc, two_threads_share);
    tcase_add_test(tc, worker_sleeps_and_wakes);
    tcase_add_test(tc, concurrent_callers);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
