/* tests/server/test_infer_proto.c -- the pure parts of inference over HTTP (server/infer_proto.c,
 * server/infer_sessfile.c): completion and session request validation (unsupported fields named,
 * ranges), keep_alive durations, the text assembler (UTF-8 never split, stop sequences held back
 * and removed), the exact OpenAI stream frames, native SSE events, and the session state file
 * (round trip, wrong model, corruption, version). */
#include "check_util.h"

#include "server/infer.h"
#include "server/srv.h"

static json_t *J(const char *s) {
    json_error_t e;
    json_t *v = json_loads(s, 0, &e);
    ck_assert_msg(v != NULL, "bad test JSON %s: %s", s, e.text);
    return v;
}

/* Parses s as kind; returns rc and fills param/code. */
static int parse(const char *s, dg_body_kind kind, dg_cmpl_params *p, char *param,
                 const char **code) {
    json_t *v = J(s);
    char msg[512];
    int rc = dg_cmpl_parse(v, kind, p, param, 64, code, msg, sizeof msg);
    if (rc) fprintf(stderr, "  %s -> %s (%s): %s\n", s, param, *code, msg);
    json_decref(v);
    return rc;
}

START_TEST(completions_valid) {
    dg_cmpl_params p;
    char param[64];
    const char *code = NULL;
    ck_assert_int_eq(parse("{\"model\":\"m1\",\"prompt\":\"Hi\",\"max_tokens\":5,"
                           "\"temperature\":0,\"top_p\":0.9,\"top_k\":3,\"min_p\":0.1,"
                           "\"seed\":42,\"stop\":[\"\\n\",\"ab\"],\"stream\":true,"
                           "\"stream_options\":{\"include_usage\":true},\"n\":1,\"user\":\"u\","
                           "\"echo\":false,\"logprobs\":null,\"frequency_penalty\":0}",
                           DG_BODY_COMPLETIONS, &p, param, &code), 0);
    ck_assert_str_eq(p.model, "m1");
    ck_assert_str_eq(p.prompt_text, "Hi");
    ck_assert_int_eq(p.max_tokens, 5);
    ck_assert(p.sample.temperature == 0.0f);
    ck_assert(fabsf(p.sample.top_p - 0.9f) < 1e-7);
    ck_assert_int_eq(p.sample.top_k, 3);
    ck_assert_int_eq(p.sample.seed, 42);
    ck_assert(p.seed_given && p.stream && p.include_usage);
    ck_assert_int_eq(p.n_stops, 2);
    ck_assert_str_eq(p.stops[1], "ab");
    dg_cmpl_params_free(&p);
    /* token ids, OpenAI default max_tokens 16, no stream */
    ck_assert_int_eq(parse("{\"model\":\"m\",\"prompt\":[5,6,7]}", DG_BODY_COMPLETIONS, &p,
                           param, &code), 0);
    ck_assert_int_eq(p.n_prompt_ids, 3);
    ck_assert_int_eq(p.prompt_ids[2], 7);
    ck_assert_int_eq(p.max_tokens, 16);
    ck_assert(!p.stream && !p.seed_given);
    dg_cmpl_params_free(&p);
    /* ["text"] is one prompt */
    ck_assert_int_eq(parse("{\"model\":\"m\",\"prompt\":[\"x\"],\"stop\":\"q\"}",
                           DG_BODY_COMPLETIONS, &p, param, &code), 0);
    ck_assert_str_eq(p.prompt_text, "x");
    ck_assert_int_eq(p.n_stops, 1);
    dg_cmpl_params_free(&p);
    /* session generate: append, native defaults */
    ck_assert_int_eq(parse("{\"append\":\" more\",\"temperature\":0.5}",
                           DG_BODY_SESSION_GENERATE, &p, param, &code), 0);
    ck_assert_str_eq(p.prompt_text, " more");
    ck_assert(p.stream);
    ck_assert_int_eq(p.max_tokens, 256);
    dg_cmpl_params_free(&p);
}
END_TEST

START_TEST(completions_rejected) {
    static const struct { const char *body; int rc; const char *param, *code; } cases[] = {
        {"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":-1}",
         DG_EINVAL, "max_tokens", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":2.5}",
         DG_EINVAL, "temperature", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":\"hot\"}",
         DG_EINVAL, "temperature", "invalid_type"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":0}", DG_EINVAL, "top_p", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"min_p\":1}", DG_EINVAL, "min_p", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"n\":2}", DG_ENOTSUP, "n", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"echo\":true}",
         DG_ENOTSUP, "echo", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":3}",
         DG_ENOTSUP, "logprobs", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"presence_penalty\":0.5}",
         DG_ENOTSUP, "presence_penalty", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"repetition_penalty\":1.1}",
         DG_ENOTSUP, "repetition_penalty", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"continuous_usa"
         "ge_stats\":true}}",
         DG_ENOTSUP, "stream_options.continuous_usage_stats", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}",
         DG_EINVAL, "stream_options", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}",
         DG_ENOTSUP, "prompt", "unsupported_parameter"},
        {"{\"model\":\"m\",\"prompt\":[1,-2]}", DG_EINVAL, "prompt", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}",
         DG_EINVAL, "stop", "invalid_value"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stop\":\"\"}", DG_EINVAL, "stop", "invalid_value"},
        {"{\"prompt\":\"x\"}", DG_EINVAL, "model", "missing_field"},
        {"{\"model\":\"m\"}", DG_EINVAL, "prompt", "missing_field"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":1.5}",
         DG_EINVAL, "max_tokens", "invalid_type"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dg_cmpl_params p;
        char param[64] = "";
        const char *code = NULL;
        int rc = parse(cases[i].body, DG_BODY_COMPLETIONS, &p, param, &code);
        ck_assert_msg(rc == cases[i].rc, "case %zu: rc %d", i, rc);
        ck_assert_str_eq(param, cases[i].param);
        ck_assert_str_eq(code, cases[i].code);
        dg_cmpl_params_free(&p);
    }
    /* native: model/prompt are not generate fields */
    dg_cmpl_params p;
    char param[64] = "";
    const char *code = NULL;
    ck_assert_int_eq(parse("{\"prompt\":\"x\"}", DG_BODY_SESSION_GENERATE, &p, param, &code),
                     DG_ENOTSUP);
    ck_assert_str_eq(param, "prompt");
    ck_assert_str_eq(code, "unknown_field");
    dg_cmpl_params_free(&p);
}
END_TEST

START_TEST(session_create_and_durations) {
    dg_sess_create_params p;
    char param[64], msg[256];
    const char *code;
    json_t *v = J("{\"model\":\"r\",\"prompt\":\"abc\",\"keep_alive\":\"30m\"}");
    ck_assert_int_eq(dg_sess_create_parse(v, &p, param, 64, &code, msg, sizeof msg), 0);
    ck_assert_str_eq(p.prompt_text, "abc");
    ck_assert(p.keep_alive_given && p.keep_alive_s == 1800);
    dg_sess_create_params_free(&p);
    json_decref(v);
    v = J("{\"model\":\"r\",\"keep_alive\":\"soon\"}");
    ck_assert_int_eq(dg_sess_create_parse(v, &p, param, 64, &code, msg, sizeof msg), DG_EINVAL);
    ck_assert_str_eq(param, "keep_alive");
    dg_sess_create_params_free(&p);
    json_decref(v);
    v = J("{\"model\":\"r\",\"persist\":true}");
    ck_assert_int_eq(dg_sess_create_parse(v, &p, param, 64, &code, msg, sizeof msg), DG_ENOTSUP);
    ck_assert_str_eq(param, "persist");
    dg_sess_create_params_free(&p);
    json_decref(v);
    static const struct { const char *json; double want; } durs[] = {
        {"\"90s\"", 90}, {"\"2h\"", 7200}, {"-1", -1}, {"1.5", 1.5}, {"\"30m\"", 1800},
    };
    double s;
    json_t *d;
    for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
        d = json_loads(durs[i].json, JSON_DECODE_ANY, NULL);
        ck_assert_int_eq(dg_parse_duration(d, &s), 0);
        ck_assert(s == durs[i].want);
        json_decref(d);
    }
    d = json_string("5y");  ck_assert_int_eq(dg_parse_duration(d, &s), DG_EINVAL); json_decref(d);
}
END_TEST

// ------------------------------------------------------------------------------------------
// text assembly

/* Feeds ids through an assembler; returns the concatenated text (static buffer). */
static const char *assemble(dg_textasm *a, const int32_t *ids, int n, int stop_index,
                            int *released) {
    static char all[4096];
    char out[512];
    int32_t rel[64];
    int nr, w = 0;
    *released = 0;
    for (int i = 0; i < n; i++) {
        int m = dg_textasm_push(a, ids[i], rel, &nr, out, sizeof out);
        ck_assert_int_eq((int)strlen(out), m);
        memcpy(all + w, out, (size_t)m);
        w += m;
        *released += nr;
    }
    int m = dg_textasm_finish(a, stop_index, rel, &nr, out, sizeof out);
    memcpy(all + w, out, (size_t)m);
    w += m;
    *released += nr;
    all[w] = 0;
    return all;
}

START_TEST(textasm_utf8_and_stops) {
    dg_tokenizer_t *bt;
    ck_assert_int_eq(dg_tokenizer_byte(&bt), 0);
    /* "é€" as bytes: never split, whatever the chunking */
    const unsigned char s[] = {0xC3, 0xA9, 0xE2, 0x82, 0xAC, 'x'};
    int32_t ids[6];
    for (int i = 0; i < 6; i++) ids[i] = s[i];
    dg_textasm a;
    ck_assert_int_eq(dg_textasm_init(&a, bt, NULL, 0), 0);
    char out[512];
    int nr;
    ck_assert_int_eq(dg_textasm_push(&a, ids[0], NULL, &nr, out, sizeof out), 0);
    ck_assert_int_eq(dg_textasm_push(&a, ids[1], NULL, &nr, out, sizeof out), 2);
    ck_assert_str_eq(out, "é");
    ck_assert_int_eq(dg_textasm_push(&a, ids[2], NULL, &nr, out, sizeof out), 0);
    ck_assert_int_eq(dg_textasm_push(&a, ids[3], NULL, &nr, out, sizeof out), 0);
    ck_assert_int_eq(nr, 1);                   /* ids are released even when text waits */
    ck_assert_int_eq(dg_textasm_push(&a, ids[4], NULL, &nr, out, sizeof out), 3);
    ck_assert_str_eq(out, "€");
    /* a dangling lead byte becomes U+FFFD at the end */
    ck_assert_int_eq(dg_textasm_push(&a, 0xE2, NULL, &nr, out, sizeof out), 0);
    ck_assert_int_eq(dg_textasm_finish(&a, -1, NULL, &nr, out, sizeof out), 3);
    ck_assert_str_eq(out, "\xEF\xBF\xBD");
    ck_assert_str_eq(a.text, "é€\xEF\xBF\xBD");
    dg_textasm_free(&a);

    /* stop "END": held back while it could start, dropped when it matched */
    char *stops[2] = {"END", "zz"};
    ck_assert_int_eq(dg_textasm_init(&a, bt, stops, 2), 2);
    const char *txt = "abENxEND";
    int32_t t2[8];
    for (int i = 0; i < 8; i++) t2[i] = (unsigned char)txt[i];
    int rel;
    ck_assert_str_eq(assemble(&a, t2, 8, 0, &rel), "abENx");
    ck_assert_int_eq(rel, 5);
    dg_textasm_free(&a);
    /* no match at the end: what was held comes out */
    ck_assert_int_eq(dg_textasm_init(&a, bt, stops, 2), 2);
    ck_assert_str_eq(assemble(&a, t2, 7, -1, &rel), "abENxEN");
    ck_assert_int_eq(rel, 7);
    dg_textasm_free(&a);
    /* a stop with a character outside a char vocabulary is dropped */
    dg_tokenizer_t *ct;
    ck_assert_int_eq(dg_tokenizer_fit_char("hello", 5, &ct), 0);
    char *st2[2] = {"lo", "QQ"};
    ck_assert_int_eq(dg_textasm_init(&a, ct, st2, 2), 1);
    ck_assert_int_eq(a.stop_lens[0], 2);
    dg_textasm_free(&a);
    dg_tokenizer_free(ct);
    dg_tokenizer_free(bt);
}
END_TEST

// ------------------------------------------------------------------------------------------
// frames

START_TEST(openai_frames_exact) {
    char *c = dg_cmpl_chunk("cmpl-1", 1700000000, "m", "h\"i", 3, NULL, false);
    ck_assert_str_eq(c, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":"
                        "1700000000,\"model\":\"m\",\"choices\":[{\"text\":\"h\\\"i\","
                        "\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    dg_free(c);
    c = dg_cmpl_chunk("cmpl-1", 1, "m", "", 0, "length", true);
    ck_assert_str_eq(c, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,"
                        "\"model\":\"m\",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":"
                        "null,\"finish_reason\":\"length\"}],\"usage\":null}\n\n");
    dg_free(c);
    c = dg_cmpl_usage_chunk("cmpl-1", 1, "m", 3, 4);
    ck_assert_str_eq(c, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,"
                        "\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                        "\"completion_tokens\":4,\"total_tokens\":7}}\n\n");
    dg_free(c);
    c = dg_sse_error_frame("internal", "engine_error", "boom");
    ck_assert_str_eq(c, "data: {\"error\":{\"message\":\"boom\",\"type\":\"internal\",\"code\":"
                        "\"engine_error\",\"param\":null}}\n\n");
    dg_free(c);
    c = dg_sse_event(7, "token", json_pack("{s:i, s:s, s:i}", "i", 0, "text", "a", "id", 97));
    ck_assert_str_eq(c, "id: 7\nevent: token\ndata: {\"i\":0,\"text\":\"a\",\"id\":97}\n\n");
    dg_free(c);
    json_t *o = dg_cmpl_object("cmpl-2", 5, "m", "abc", 3, "stop", 2, 3);
    char *t = dg_json_text(o);
    ck_assert_str_eq(t, "{\"id\":\"cmpl-2\",\"object\":\"text_completion\",\"created\":5,"
                        "\"model\":\"m\",\"choices\":[{\"text\":\"abc\",\"index\":0,\"logprobs\":"
                        "null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,"
                        "\"completion_tokens\":3,\"total_tokens\":5}}");
    dg_free(t);
    json_decref(o);
    ck_assert_str_eq(dg_infer_finish_reason(DG_GEN_STOP_EOS), "stop");
    ck_assert_str_eq(dg_infer_finish_reason(DG_GEN_STOP_SEQUENCE), "stop");
    ck_assert_str_eq(dg_infer_finish_reason(DG_GEN_STOP_LENGTH), "length");
    ck_assert(dg_infer_finish_reason(DG_GEN_STOP_CANCELLED) == NULL);
}
END_TEST

// ------------------------------------------------------------------------------------------
// session file

START_TEST(sessfile_round_trip_and_failures) {
    char *dir = dg_test_tmpdir("sessfile");
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/s1.dst", dir);
    dg_sessfile f = {0};
    snprintf(f.id, sizeof f.id, "sess_abc");
    snprintf(f.model, sizeof f.model, "run_x");
    for (int i = 0; i < 32; i++) f.model_fp[i] = (uint8_t)(i * 7);
    f.pos = 1234;
    f.n_floats = 1000;
    f.state = malloc(4000);
    for (int i = 0; i < 1000; i++) f.state[i] = (float)i * 0.25f - 3.0f;
    int32_t unfed[2] = {17, 4};
    f.n_unfed = 2;
    f.unfed = unfed;
    f.created_at = 1700000000.5;
    f.keep_alive_s = 600;
    ck_assert_int_eq(dg_sessfile_write(path, &f, err, sizeof err), 0);
    dg_sessfile g;
    ck_assert_int_eq(dg_sessfile_read(path, f.model_fp, &g, err, sizeof err), 0);
    ck_assert_str_eq(g.id, "sess_abc");
    ck_assert_str_eq(g.model, "run_x");
    ck_assert_int_eq(g.pos, 1234);
    ck_assert_int_eq(g.n_floats, 1000);
    ck_assert(memcmp(g.state, f.state, 4000) == 0);
    ck_assert_int_eq(g.n_unfed, 2);
    ck_assert_int_eq(g.unfed[1], 4);
    ck_assert(g.created_at == f.created_at && g.keep_alive_s == 600);
    dg_sessfile_free(&g);
    /* another model */
    uint8_t other[32] = {1};
    ck_assert_int_eq(dg_sessfile_read(path, other, &g, err, sizeof err), DG_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "run_x"));
    /* one flipped bit in the state: checksum */
    FILE *fp = fopen(path, "r+b");
    fseek(fp, 128 + 8 + 5 + 8 + 100, SEEK_SET);
    int ch = fgetc(fp);
    fseek(fp, -1, SEEK_CUR);
    fputc(ch ^ 1, fp);
    fclose(fp);
    ck_assert_int_eq(dg_sessfile_read(path, NULL, &g, err, sizeof err), DG_ECORRUPT);
    ck_assert_ptr_nonnull(strstr(err, "checksum"));
    /* truncated */
    ck_assert_int_eq(dg_sessfile_write(path, &f, err, sizeof err), 0);
    ck_assert_int_eq(truncate(path, 2000), 0);
    ck_assert_int_eq(dg_sessfile_read(path, NULL, &g, err, sizeof err), DG_ECORRUPT);
    /* version */
    ck_assert_int_eq(dg_sessfile_write(path, &f, err, sizeof err), 0);
    fp = fopen(path, "r+b");
    fseek(fp, 4, SEEK_SET);
    fputc(9, fp);
    fclose(fp);
    ck_assert_int_eq(dg_sessfile_read(path, NULL, &g, err, sizeof err), DG_EVERSION);
    /* absent */
    snprintf(path, sizeof path, "%s/none.dst", dir);
    ck_assert_int_eq(dg_sessfile_read(path, NULL, &g, err, sizeof err), DG_ENOTFOUND);
    free(f.state);
    free(dir);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("infer_proto");
    TCase *t = tcase_create("proto");
    tcase_set_timeout(t, 30);
    tcase_add_test(t, completions_valid);
    tcase_add_test(t, completions_rejected);
    tcase_add_test(t, session_create_and_durations);
    tcase_add_test(t, textasm_utf8_and_stops);
    tcase_add_test(t, openai_frames_exact);
    tcase_add_test(t, sessfile_round_trip_and_failures);
    suite_add_tcase(s, t);
    return s;
}

DG_TEST_MAIN(suite)
