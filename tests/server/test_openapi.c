/* tests/server/test_openapi.c -- proto/openapi.json and the server's route table (dg_routes in
 * server/api.c) must list the same (method, path) pairs: a route missing from the spec, or a
 * spec operation the server does not serve, fails. Also checks that every operation documents
 * its responses and that every $ref resolves.
 * Thread affinity: single-threaded. */
#include "check_util.h"
#include "server/srv.h"

#include <ctype.h>
#include <jansson.h>

static json_t *load_spec(void) {
    char path[1200];
    ck_assert_int_eq(dg_find_asset("proto/openapi.json", path, sizeof path), 0);
    json_error_t je;
    json_t *spec = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(spec != NULL, "%s:%d: %s", path, je.line, je.text);
    return spec;
}

static void lower(const char *in, char *out, size_t n) {
    size_t i = 0;
    for (; in[i] && i + 1 < n; i++) out[i] = (char)tolower((unsigned char)in[i]);
    out[i] = 0;
}

START_TEST(routes_match_spec) {
    json_t *spec = load_spec();
    ck_assert_str_eq(json_string_value(json_object_get(spec, "openapi")), "3.1.0");
    json_t *paths = json_object_get(spec, "paths");
    ck_assert(json_is_object(paths));
    /* every route is in the spec */
    for (int i = 0; i < dg_routes_count; i++) {
        char m[16];
        lower(dg_routes[i].method, m, sizeof m);
        json_t *item = json_object_get(paths, dg_routes[i].pattern);
        ck_assert_msg(item != NULL, "route %s %s is not in proto/openapi.json",
                      dg_routes[i].method, dg_routes[i].pattern);
        ck_assert_msg(json_object_get(item, m) != NULL,
                      "route %s %s: the spec has the path but not the method",
                      dg_routes[i].method, dg_routes[i].pattern);
    }
    /* every spec operation is a route */
    static const char *const methods[] = {"get", "post", "put", "patch", "delete", "head",
                                          "options"};
    const char *p;
    json_t *item;
    int n_ops = 0;
    json_object_foreach(paths, p, item) {
        for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
            json_t *op = json_object_get(item, methods[k]);
            if (!op) continue;
            n_ops++;
            bool found = false;
            for (int i = 0; i < dg_routes_count; i++) {
                char m[16];
                lower(dg_routes[i].method, m, sizeof m);
                if (!strcmp(m, methods[k]) && !strcmp(dg_routes[i].pattern, p)) found = true;
            }
            ck_assert_msg(found, "spec operation %s %s has no route in server/api.c",
                          methods[k], p);
            ck_assert_msg(json_object_size(json_object_get(op, "responses")) > 0,
                          "%s %s documents no responses", methods[k], p);
            bool public_route = false;
            for (int i = 0; i < dg_routes_count; i++)
                if (!strcmp(dg_routes[i].pattern, p) && dg_routes[i].auth == DG_AUTH_PUBLIC)
                    public_route = true;
            json_t *sec = json_object_get(op, "security");
            ck_assert_msg(public_route == (sec && json_array_size(sec) == 0),
                          "%s %s: security in the spec disagrees with the route table",
                          methods[k], p);
        }
    }
    ck_assert_int_eq(n_ops, dg_routes_count);
    json_decref(spec);
}
END_TEST

static void check_refs(json_t *root, json_t *v, int *n) {
    if (json_is_object(v)) {
        json_t *ref = json_object_get(v, "$ref");
        if (json_is_string(ref)) {
            const char *r = json_string_value(ref);
            ck_assert_msg(!strncmp(r, "#/", 2), "non-local $ref %s", r);
            char buf[300];
            snprintf(buf, sizeof buf, "%s", r + 2);
            json_t *cur = root;
            for (char *save = NULL, *t = strtok_r(buf, "/", &save); t;
                 t = strtok_r(NULL, "/", &save))
                cur = json_object_get(cur, t);
            ck_assert_msg(cur != NULL, "dangling $ref %s", r);
            (*n)++;
        }
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) check_refs(root, x, n);
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) check_refs(root, json_array_get(v, i), n);
    }
}

START_TEST(refs_resolve) {
    json_t *spec = load_spec();
    int n = 0;
    check_refs(spec, spec, &n);
    ck_assert_int_gt(n, 20);
    json_t *err = json_object_get(json_object_get(json_object_get(spec, "components"),
                                                  "schemas"), "Error");
    ck_assert_ptr_nonnull(err);
    json_decref(spec);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("openapi");
    TCase *tc = tcase_create("spec");
    tcase_add_test(tc, routes_match_spec);
    tcase_add_test(tc, refs_resolve);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
