/* tests/engine/test_tokenizer.c -- the char and byte tokenizers and the streaming UTF-8
 * assembler: ids in order of first appearance, exact round trips (including bytes that are not
 * valid UTF-8), strict-mode errors, decode rules, and streams that never split a character.
 * Thread affinity: single-threaded test program. */
#include "check_util.h"
#include "tokenizer.h"

static int32_t *enc(const dg_tokenizer_t *t, const char *s, size_t n, size_t *k) {
    int32_t *ids; char err[256] = "";
    ck_assert_int_eq(dg_tokenizer_encode(t, s, n, true, &ids, k, err, sizeof err), 0);
    return ids;
}

START_TEST(char_first_appearance) {
    const char *txt = "First Citizen:\nBefore";
    dg_tokenizer_t *t;
    ck_assert_int_eq(dg_tokenizer_fit_char(txt, strlen(txt), &t), 0);
    ck_assert_int_eq(dg_tokenizer_kind(t), DG_TOK_CHAR);
    int n; const uint32_t *cps = dg_tokenizer_chars(t, &n);
    const char *order = "First Czen:\nBfo";         /* distinct chars, first appearance */
    ck_assert_int_eq(n, (int)strlen(order));
    for (int i = 0; i < n; i++) ck_assert_uint_eq(cps[i], (unsigned char)order[i]);
    ck_assert_int_eq(dg_tokenizer_vocab(t), 4 + n);
    ck_assert_int_eq(dg_tokenizer_eos(t), DG_TOK_EOS);
    size_t k; int32_t *ids = enc(t, "Fir", 3, &k);
    ck_assert_uint_eq(k, 3);
    ck_assert_int_eq(ids[0], 4); ck_assert_int_eq(ids[1], 5); ck_assert_int_eq(ids[2], 6);
    dg_free(ids);
    dg_tokenizer_free(t);
    ck_assert_int_eq(dg_tokenizer_fit_char("", 0, &t), DG_EDATA);
}
END_TEST

START_TEST(char_round_trip_utf8_and_invalid) {
    /* valid multibyte text, then invalid bytes: lone continuation, overlong, surrogate, cut */
    const char txt[] =
        "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x90\x89 \x80\xFF\xC0\xAF\xED\xA0\x80 z\xE2\x82";
    size_t n = sizeof txt - 1;
    dg_tokenizer_t *t;
    ck_assert_int_eq(dg_tokenizer_fit_char(txt, n, &t), 0);
    size_t k; int32_t *ids = enc(t, txt, n, &k);
    char *out; size_t on;
    ck_assert_int_eq(dg_tokenizer_decode(t, ids, k, &out, &on), 0);
    ck_assert_uint_eq(on, n);
    ck_assert(memcmp(out, txt, n) == 0);
    /* é, €, the dragon are one id each */
    int nc; const uint32_t *cps = dg_tokenizer_chars(t, &nc);
    bool e = false, euro = false, dragon = false, esc_ff = false;
    for (int i = 0; i < nc; i++) {
        e |= cps[i] == 0xE9; euro |= cps[i] == 0x20AC; dragon |= cps[i] == 0x1F409;
        esc_ff |= cps[i] == 0xDCFF;
    }
    ck_assert(e && euro && dragon && esc_ff);
    dg_free(out); dg_free(ids);

    /* every byte value round-trips */
    char all[512];
    for (int i = 0; i < 512; i++) all[i] = (char)(unsigned char)((i * 37 + 11) & 0xFF);
    dg_tokenizer_t *t2;
    ck_assert_int_eq(dg_tokenizer_fit_char(all, sizeof all, &t2), 0);
    ids = enc(t2, all, sizeof all, &k);
    ck_assert_int_eq(dg_tokenizer_decode(t2, ids, k, &out, &on), 0);
    ck_assert_uint_eq(on, sizeof all);
    ck_assert(memcmp(out, all, sizeof all) == 0);
    dg_free(out); dg_free(ids);

    /* rebuilt from its code points it is the same tokenizer */
    const uint32_t *c2 = dg_tokenizer_chars(t, &nc);
    dg_tokenizer_t *t3;
    ck_assert_int_eq(dg_tokenizer_from_chars(c2, nc, &t3), 0);
    size_t k3; int32_t *i1 = enc(t, txt, n, &k), *i3 = enc(t3, txt, n, &k3);
    ck_assert_uint_eq(k, k3);
    ck_assert(memcmp(i1, i3, k * 4) == 0);
    dg_free(i1); dg_free(i3);
    dg_tokenizer_free(t); dg_tokenizer_free(t2); dg_tokenizer_free(t3);
}
END_TEST

START_TEST(char_strict_and_unk) {
    dg_tokenizer_t *t;
    ck_assert_int_eq(dg_tokenizer_fit_char("abc", 3, &t), 0);
    int32_t *ids; size_t k; char err[256] = "";
    const char *s = "ab\xC3\xA9z";
    ck_assert_int_eq(dg_tokenizer_encode(t, s, strlen(s), true, &ids, &k, err, sizeof err),
                     DG_EINVAL);
    ck_assert_ptr_null(ids);
    ck_assert_msg(strstr(err, "byte offset 2") && strstr(err, "U+00E9"), "err: %s", err);
    ck_assert_int_eq(dg_tokenizer_encode(t, "a\xFF", 2, true, &ids, &k, err, sizeof err),
                     DG_EINVAL);
    ck_assert_msg(strstr(err, "byte offset 1") && strstr(err, "0xFF"), "err: %s", err);
    ck_assert_int_eq(dg_tokenizer_encode(t, s, strlen(s), false, &ids, &k, err, sizeof err), 0);
    ck_assert_uint_eq(k, 4);
    ck_assert_int_eq(ids[2], DG_TOK_UNK); ck_assert_int_eq(ids[3], DG_TOK_UNK);
    char *out;
    ck_assert_int_eq(dg_tokenizer_decode(t, ids, k, &out, NULL), 0);
    ck_assert_str_eq(out, "ab??");
    dg_free(out); dg_free(ids);
    /* decode skips PAD/BOS, stops at EOS, rejects ids out of range */
    int32_t seq[] = {DG_TOK_BOS, 4, DG_TOK_PAD, 5, DG_TOK_EOS, 6};
    ck_assert_int_eq(dg_tokenizer_decode(t, seq, 6, &out, NULL), 0);
    ck_assert_str_eq(out, "ab");
    dg_free(out);
    int32_t bad[] = {4, 7};
    ck_assert_int_eq(dg_tokenizer_decode(t, bad, 2, &out, NULL), DG_EINVAL);
    char b[8];
    ck_assert_int_eq(dg_tokenizer_piece(t, -1, b), DG_EINVAL);
    ck_assert_int_eq(dg_tokenizer_piece(t, DG_TOK_EOS, b), 0);
    ck_assert_int_eq(dg_tokenizer_piece(t, 6, b), 1);
    ck_assert_int_eq(b[0], 'c');
    dg_tokenizer_free(t);
    /* from_chars rejects duplicates and non-characters */
    uint32_t dup[] = {'a', 'b', 'a'}, sur[] = {'a', 0xD800}, big[] = {0x110000};
    ck_assert_int_eq(dg_tokenizer_from_chars(dup, 3, &t), DG_EINVAL);
    ck_assert_int_eq(dg_tokenizer_from_chars(sur, 2, &t), DG_EINVAL);
    ck_assert_int_eq(dg_tokenizer_from_chars(big, 1, &t), DG_EINVAL);
}
END_TEST

START_TEST(byte_tokenizer) {
    dg_tokenizer_t *t;
    ck_assert_int_eq(dg_tokenizer_byte(&t), 0);
    ck_assert_int_eq(dg_tokenizer_kind(t), DG_TOK_BYTE);
    ck_assert_int_eq(dg_tokenizer_vocab(t), 259);
    ck_assert_int_eq(dg_tokenizer_eos(t), 257);
    int n = -1;
    ck_assert_ptr_null(dg_tokenizer_chars(t, &n));
    char all[256];
    for (int i = 0; i < 256; i++) all[i] = (char)(unsigned char)i;
    size_t k; int32_t *ids = enc(t, all, 256, &k);
    ck_assert_uint_eq(k, 256);
    for (int i = 0; i < 256; i++) ck_assert_int_eq(ids[i], i);
    char *out; size_t on;
    ck_assert_int_eq(dg_tokenizer_decode(t, ids, k, &out, &on), 0);
    ck_assert_uint_eq(on, 256);
    ck_assert(memcmp(out, all, 256) == 0);
    dg_free(out); dg_free(ids);
    int32_t seq[] = {256, 'h', 258, 'i', 257, 'x'};
    ck_assert_int_eq(dg_tokenizer_decode(t, seq, 6, &out, &on), 0);
    ck_assert_str_eq(out, "hi");
    dg_free(out);
    char b[8];
    ck_assert_int_eq(dg_tokenizer_piece(t, 259, b), DG_EINVAL);
    dg_tokenizer_free(t);
}
END_TEST

START_TEST(utf8_stream) {
    /* bytes of multibyte characters arrive one at a time: output only whole characters */
    const char txt[] = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x90\x89z";
    dg_utf8_stream s = {0};
    char out[64]; int w = 0;
    int sizes[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    int expect_after[] = {1, 1, 3, 3, 3, 6, 6, 6, 6, 10, 11};
    int off = 0;
    for (int i = 0; i < 11; i++) {
        int r = dg_utf8_stream_push(&s, txt + off, sizes[i], out + w, (int)sizeof out - w);
        ck_assert_int_ge(r, 0);
        w += r; off += sizes[i];
        ck_assert_int_eq(w, expect_after[i]);
    }
    ck_assert_int_eq(dg_utf8_stream_flush(&s, out + w, (int)sizeof out - w), 0);
    ck_assert(memcmp(out, txt, 11) == 0);

    /* invalid bytes become U+FFFD; a cut character is U+FFFD at flush */
    dg_utf8_stream s2 = {0};
    w = dg_utf8_stream_push(&s2, "x\xFF" "y\xE2\x82", 5, out, sizeof out);
    ck_assert_int_eq(w, 5);
    ck_assert(memcmp(out, "x\xEF\xBF\xBDy", 5) == 0);
    int f = dg_utf8_stream_flush(&s2, out, sizeof out);
    ck_assert_int_eq(f, 6);
    ck_assert(memcmp(out, "\xEF\xBF\xBD\xEF\xBF\xBD", 6) == 0);
    ck_assert_int_eq(s2.n_pend, 0);

    /* a byte tokenizer's pieces reassemble into valid text */
    dg_tokenizer_t *t;
    dg_tokenizer_byte(&t);
    dg_utf8_stream s3 = {0};
    char acc[64]; int aw = 0;
    for (int i = 0; i < 11; i++) {
        char piece[8];
        int pn = dg_tokenizer_piece(t, (unsigned char)txt[i], piece);
        aw += dg_utf8_stream_push(&s3, piece, pn, acc + aw, (int)sizeof acc - aw);
    }
    ck_assert_int_eq(aw, 11);
    ck_assert(memcmp(acc, txt, 11) == 0);
    dg_tokenizer_free(t);
    /* too little room is an error, not an overflow */
    dg_utf8_stream s4 = {0};
    ck_assert_int_eq(dg_utf8_stream_push(&s4, "\xFF\xFF", 2, out, 4), DG_ERANGE);
}
END_TEST

START_TEST(shakespeare_vocab) {
    const char *sh = dg_test_shared_dir();
    if (!sh) { printf("SKIP shakespeare_vocab: ../shared/data is absent\n"); return; }
    char path[1200], err[256];
    snprintf(path, sizeof path, "%s/data/tinyshakespeare.txt", sh);
    FILE *f = fopen(path, "rb");
    if (!f) { printf("SKIP shakespeare_vocab: %s is absent\n", path); return; }
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *txt = malloc((size_t)n);
    ck_assert_uint_eq(fread(txt, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    dg_tokenizer_t *t;
    ck_assert_int_eq(dg_tokenizer_fit_char(txt, (size_t)n, &t), 0);
    ck_assert_int_eq(dg_tokenizer_vocab(t), 69);              /* MODEL.md §7.1 */
    int nc; const uint32_t *cps = dg_tokenizer_chars(t, &nc);
    const char *start = "First C";
    for (int i = 0; i < 7; i++) ck_assert_uint_eq(cps[i], (unsigned char)start[i]);
    int32_t *ids; size_t k;
    ck_assert_int_eq(dg_tokenizer_encode(t, txt, (size_t)n, true, &ids, &k, err, sizeof err), 0);
    ck_assert_uint_eq(k, (size_t)n);
    char *out; size_t on;
    ck_assert_int_eq(dg_tokenizer_decode(t, ids, k, &out, &on), 0);
    ck_assert_uint_eq(on, (size_t)n);
    ck_assert(memcmp(out, txt, (size_t)n) == 0);
    dg_free(out); dg_free(ids); free(txt);
    dg_tokenizer_free(t);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, char_first_appearance);
    tcase_add_test(tc, char_round_trip_utf8_and_invalid);
    tcase_add_test(tc, char_strict_and_unk);
    tcase_add_test(tc, byte_tokenizer);
    tcase_add_test(tc, utf8_stream);
    tcase_add_test(tc, shakespeare_vocab);
    suite_add_tcase(s, tc);
    return s;
}
DG_TEST_MAIN(suite)
