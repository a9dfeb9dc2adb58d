/* tests/check_util.h -- shared helpers for the Check test programs.
 *
 * dg_check_close compares two float arrays under atol + rtol*|ref| (llm.c's validate_result),
 * printing the first few values and the worst element, and returns the number of failures.
 * DG_TEST_MAIN(suite_fn) defines main(): runs the suite in fork mode, exits non-zero on failure. */
#ifndef DG_CHECK_UTIL_H
#define DG_CHECK_UTIL_H
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

static inline int dg_check_close(const char *what, const float *got, const float *ref, long n,
                                 double atol, double rtol) {
    long bad = 0, worst = -1;
    double worst_excess = -1;
    for (long i = 0; i < n; i++) {
        double g = got[i], r = ref[i], tol = atol + rtol * fabs(r), d = fabs(g - r);
        if (!(d <= tol)) bad++;       /* NaN counts as bad */
        double ex = (d != d) ? 1e300 : d - tol;
        if (ex > worst_excess) { worst_excess = ex; worst = i; }
    }
    if (bad) {
        fprintf(stderr, "%s: %ld/%ld elements out of tolerance (atol %g rtol %g)\n", what, bad, n,
                atol, rtol);
        for (long i = 0; i < n && i < 5; i++)
            fprintf(stderr, "  [%ld] got %.9g ref %.9g %s\n", i, got[i], ref[i],
                    fabs(got[i] - ref[i]) <= atol + rtol * fabs(ref[i]) ? "OK" : "NOT OK");
        if (worst >= 0)
            fprintf(stderr, "  worst [%ld] got %.9g ref %.9g\n", worst, got[worst], ref[worst]);
    }
    return (int)bad;
}

/* Max relative error max|g-r| / max(max|r|, tiny): the "relative error" the issues quote. */
static inline double dg_max_rel_err(const float *got, const float *ref, long n) {
    double md = 0, mr = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d != d) return INFINITY;
        if (d > md) md = d;
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    return md / (mr > 1e-30 ? mr : 1e-30);
}

/* A fresh temporary directory (mkdtemp under $TMPDIR or /tmp); caller frees. */
static inline char *dg_test_tmpdir(const char *tag) {
    const char *base = getenv("TMPDIR");
    char *p = malloc(512);
    snprintf(p, 512, "%s/dg-%s-XXXXXX", base ? base : "/tmp", tag);
    if (!mkdtemp(p)) { perror("mkdtemp"); abort(); }
    return p;
}

/* Path of ../shared (the team's data), or NULL with a skip message when absent. */
static inline const char *dg_test_shared_dir(void) {
    static char buf[1024];
    const char *env = getenv("DG_SHARED");
    const char *cands[] = {env, "../shared", "../../shared"};
    for (int i = 0; i < 3; i++) {
        if (!cands[i]) continue;
        snprintf(buf, sizeof buf, "%s/data", cands[i]);
        struct stat st;
        if (stat(buf, &st) == 0) { snprintf(buf, sizeof buf, "%s", cands[i]); return buf; }
    }
    return NULL;
}

#define DG_TEST_MAIN(suite_fn)                                   \
    int main(void) {                                             \
        SRunner *sr = srunner_create(suite_fn());                \
        srunner_run_all(sr, CK_NORMAL);                          \
        int nf = srunner_ntests_failed(sr);                      \
        srunner_free(sr);                                        \
        return nf ? 1 : 0;                                       \
    }
#endif
