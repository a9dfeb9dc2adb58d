/* tests/server/test_settings.c -- config/dragond.json documents every row of the settings table
 * (server/settings.c) with its default value and a "_doc" description, and nothing else; the
 * loader applies values, rejects unknown names, wrong types and out-of-range values naming the
 * setting. Thread affinity: single-threaded. */
#include "check_util.h"
#include "server/srv.h"

#include <jansson.h>

START_TEST(shipped_file_matches_table) {
    char path[1200];
    ck_assert_int_eq(dg_find_asset("config/dragond.json", path, sizeof path), 0);
    json_error_t je;
    json_t *f = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(f != NULL, "%s:%d: %s", path, je.line, je.text);
    json_t *doc = json_object_get(f, "_doc");
    ck_assert(json_is_object(doc));
    dg_settings def;
    dg_settings_defaults(&def);
    for (int i = 0; i < dg_settings_count; i++) {
        const dg_setting_def *d = &dg_settings_table[i];
        json_t *v = json_object_get(f, d->name);
        ck_assert_msg(v != NULL, "config/dragond.json lacks setting %s", d->name);
        ck_assert_msg(json_is_string(json_object_get(doc, d->name)),
                      "config/dragond.json _doc lacks %s", d->name);
        ck_assert_msg(strstr(json_string_value(json_object_get(doc, d->name)), d->desc) != NULL,
                      "_doc.%s differs from the table's description", d->name);
        /* the shipped value is the default */
        dg_settings s;
        dg_settings_defaults(&s);
        char err[300];
        ck_assert_msg(dg_settings_apply_json(&s, d->name, v, err, sizeof err) == 0, "%s", err);
        ck_assert_msg(memcmp((char *)&s + d->offset, (char *)&def + d->offset,
                             d->type == DG_SET_STRING ? strlen((char *)&def + d->offset) + 1 :
                             d->type == DG_SET_BOOL ? sizeof(bool) : 8) == 0,
                      "config/dragond.json: %s is not the default %s", d->name, d->def);
    }
    const char *k;
    json_t *v;
    json_object_foreach(f, k, v) {
        if (k[0] == '_') continue;
        bool known = false;
        for (int i = 0; i < dg_settings_count; i++)
            if (!strcmp(dg_settings_table[i].name, k)) known = true;
        ck_assert_msg(known, "config/dragond.json has %s, which is not in the table", k);
    }
    json_object_foreach(doc, k, v) {
        if (k[0] == '_') continue;
        ck_assert_msg(json_object_get(f, k) != NULL, "_doc.%s documents no setting", k);
    }
    /* the loader takes the file as it is */
    dg_settings s;
    dg_settings_defaults(&s);
    char err[300];
    ck_assert_msg(dg_settings_load_file(&s, path, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(s.listen, "127.0.0.1:8077");
    json_decref(f);
}
END_TEST

START_TEST(loader_rejects_bad_values) {
    dg_settings s;
    dg_settings_defaults(&s);
    char err[300];
    json_t *v = json_integer(5);
    ck_assert_int_eq(dg_settings_apply_json(&s, "max_queued_jobs", v, err, sizeof err), 0);
    ck_assert_int_eq(s.max_queued_jobs, 5);
    json_decref(v);
    v = json_integer(0);
    ck_assert_int_ne(dg_settings_apply_json(&s, "max_queued_jobs", v, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "max_queued_jobs"));
    json_decref(v);
    v = json_string("12");
    ck_assert_int_ne(dg_settings_apply_json(&s, "max_body_bytes", v, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "integer"));
    ck_assert_int_ne(dg_settings_apply_json(&s, "no_such", v, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "no_such: unknown setting"));
    json_decref(v);
    v = json_string("gpu9");
    ck_assert_int_ne(dg_settings_apply_json(&s, "backend", v, err, sizeof err), 0);
    json_decref(v);
    v = json_false();
    ck_assert_int_eq(dg_settings_apply_json(&s, "resume_on_restart", v, err, sizeof err), 0);
    ck_assert(!s.resume_on_restart);
    json_decref(v);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("settings");
    TCase *tc = tcase_create("settings");
    tcase_add_test(tc, shipped_file_matches_table);
    tcase_add_test(tc, loader_rejects_bad_values);
    suite_add_tcase(s, tc);
    return s;
}

DG_TEST_MAIN(suite)
