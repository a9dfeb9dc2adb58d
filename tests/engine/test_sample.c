/* tests/engine/test_sample.c -- the sampler: parameter validation, greedy and its equivalents,
 * determinism by seed, and empirical frequencies against the distribution each filter defines.
 * Thread affinity: single-threaded test program. */
#include "check_util.h"
#include "sample.h"

START_TEST(validate) {
    dg_sample_params p; char err[128];
    dg_sample_params_default(&p);
    ck_assert(p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f);
    ck_assert_int_eq(dg_sample_params_validate(&p, err, sizeof err), 0);
    struct { float t; int k; float tp, mp; const char *msg; } bad[] = {
        {-0.1f, 0, 1, 0, "temperature: must be in [0, 2]"},
        {2.5f, 0, 1, 0, "temperature: must be in [0, 2]"},
        {NAN, 0, 1, 0, "temperature: must be in [0, 2]"},
        {1, -1, 1, 0, "top_k: must be >= 0"},
        {1, 0, 0, 0, "top_p: must be in (0, 1]"},
        {1, 0, 1.01f, 0, "top_p: must be in (0, 1]"},
        {1, 0, 1, 1, "min_p: must be in [0, 1)"},
        {1, 0, 1, -0.5f, "min_p: must be in [0, 1)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p.temperature = bad[i].t; p.top_k = bad[i].k; p.top_p = bad[i].tp; p.min_p = bad[i].mp;
        err[0] = 0;
        ck_assert_int_eq(dg_sample_params_validate(&p, err, sizeof err), DG_EINVAL);
        ck_assert_str_eq(err, bad[i].msg);
    }
    p.temperature = 0; p.top_k = 5; p.top_p = 1; p.min_p = 0.5f;
    ck_assert_int_eq(dg_sample_params_validate(&p, err, sizeof err), 0);
}
END_TEST

static void rand_logits(float *l, int V, uint64_t seed) {
    dg_rng r; dg_rng_seed(&r, seed);
    for (int i = 0; i < V; i++) l[i] = 3.0f * dg_rng_normal(&r);
}

static int32_t argmax_ref(const float *l, int V) {
    int32_t b = 0;
    for (int i = 1; i < V; i++) if (l[i] > l[b]) b = i;
    return b;
}

START_TEST(greedy_equivalents) {
    enum { V = 97 };
    float l[V];
    dg_sample_params p;
    for (uint64_t trial = 0; trial < 50; trial++) {
        rand_logits(l, V, trial);
        int32_t g = argmax_ref(l, V);
        dg_sampler s;
        dg_sample_params_default(&p); p.temperature = 0; p.seed = trial;
        dg_sampler_init(&s, &p);
        ck_assert_int_eq(dg_sampler_sample(&s, l, V), g);
        dg_sampler_free(&s);
        dg_sample_params_default(&p); p.top_k = 1; p.seed = trial;
        dg_sampler_init(&s, &p);
        for (int i = 0; i < 5; i++) ck_assert_int_eq(dg_sampler_sample(&s, l, V), g);
        dg_sampler_free(&s);
        dg_sample_params_default(&p); p.top_p = 1e-6f; p.seed = trial;
        dg_sampler_init(&s, &p);
        for (int i = 0; i < 5; i++) ck_assert_int_eq(dg_sampler_sample(&s, l, V), g);
        dg_sampler_free(&s);
        dg_sample_params_default(&p); p.min_p = 0.999f; p.seed = trial;
        dg_sampler_init(&s, &p);
        for (int i = 0; i < 5; i++) ck_assert_int_eq(dg_sampler_sample(&s, l, V), g);
        dg_sampler_free(&s);
    }
    /* greedy ties: lowest id */
    float tie[5] = {1, 3, 2, 3, 0};
    dg_sample_params_default(&p); p.temperature = 0;
    dg_sampler s; dg_sampler_init(&s, &p);
    ck_assert_int_eq(dg_sampler_sample(&s, tie, 5), 1);
    dg_sampler_free(&s);
}
END_TEST

START_TEST(determinism) {
    enum { V = 64, N = 200 };
    float l[V];
    rand_logits(l, V, 7);
    int32_t a[N], b[N], c[N];
    dg_sample_params p; dg_sample_params_default(&p);
    p.temperature = 1.3f; p.top_k = 20; p.top_p = 0.95f; p.seed = 1234;
    dg_sampler s;
    dg_sampler_init(&s, &p);
    for (int i = 0; i < N; i++) a[i] = dg_sampler_sample(&s, l, V);
    dg_sampler_free(&s);
    dg_sampler_init(&s, &p);
    for (int i = 0; i < N; i++) b[i] = dg_sampler_sample(&s, l, V);
    dg_sampler_free(&s);
    p.seed = 1235;
    dg_sampler_init(&s, &p);
    for (int i = 0; i < N; i++) c[i] = dg_sampler_sample(&s, l, V);
    dg_sampler_free(&s);
    ck_assert(memcmp(a, b, sizeof a) == 0);
    ck_assert(memcmp(a, c, sizeof a) != 0);
}
END_TEST

/* Draws n samples and checks every frequency is within tol of want (V probabilities). */
static void check_freq(const dg_sample_params *p, const float *l, int V, const double *want,
                       int n, double tol) {
    dg_sampler s;
    dg_sampler_init(&s, p);
    int cnt[16] = {0};
    for (int i = 0; i < n; i++) {
        int32_t t = dg_sampler_sample(&s, l, V);
        ck_assert(t >= 0 && t < V);
        cnt[t]++;
    }
    dg_sampler_free(&s);
    for (int i = 0; i < V; i++) {
        double f = (double)cnt[i] / n;
        ck_assert_msg(fabs(f - want[i]) <= tol, "token %d: freq %.4f want %.4f", i, f, want[i]);
    }
}

START_TEST(statistics) {
    /* probabilities 0.4 0.25 0.15 0.1 0.06 0.04 */
    enum { V = 6 };
    double pr[V] = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};
    float l[V];
    for (int i = 0; i < V; i++) l[i] = (float)log(pr[i]) + 1.7f;   /* shift must not matter */
    dg_sample_params p; dg_sample_params_default(&p); p.seed = 99;
    check_freq(&p, l, V, pr, 20000, 0.02);

    /* temperature 2: p ~ pr^(1/2) */
    double w[V], z = 0;
    for (int i = 0; i < V; i++) z += (w[i] = sqrt(pr[i]));
    for (int i = 0; i < V; i++) w[i] /= z;
    p.temperature = 2.0f;
    check_freq(&p, l, V, w, 20000, 0.02);

    /* top-k 3 */
    dg_sample_params_default(&p); p.seed = 5; p.top_k = 3;
    z = 0.8;
    double k3[V] = {0.4 / z, 0.25 / z, 0.15 / z, 0, 0, 0};
    check_freq(&p, l, V, k3, 20000, 0.02);

    /* top-p 0.7: smallest prefix reaching 0.7 is {0.4, 0.25, 0.15} (0.65 < 0.7) */
    dg_sample_params_default(&p); p.seed = 6; p.top_p = 0.7f;
    check_freq(&p, l, V, k3, 20000, 0.02);

    /* min-p 0.3: keep p >= 0.12 -> {0.4, 0.25, 0.15} */
    dg_sample_params_default(&p); p.seed = 8; p.min_p = 0.3f;
    check_freq(&p, l, V, k3, 20000, 0.02);

    /* top-k keeps ties: logits {2, 1, 1, 1, 0, 0}, k = 2 keeps ids 0..3 */
    float lt[V] = {2, 1, 1, 1, 0, 0};
    double e = exp(1.0), zt = e * e + 3 * e;
    double tk[V] = {e * e / zt, e / zt, e / zt, e / zt, 0, 0};
    dg_sample_params_default(&p); p.seed = 9; p.top_k = 2;
    check_freq(&p, lt, V, tk, 20000, 0.02);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("sample");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, validate);
    tcase_add_test(tc, greedy_equivalents);
    tcase_add_test(tc, determinism);
    tcase_add_test(tc, statistics);
    suite_add_tcase(s, tc);
    return s;
}
DG_TEST_MAIN(suite)
