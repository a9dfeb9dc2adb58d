/* proto/tokenizer_json.c -- tokenizer.json read and write (proto/tokenizer_json.h).
 *
 * Writing builds the document and replaces the file atomically with dg_write_atomic. Reading
 * parses with line:column errors, checks "format", "version" (newer => DG_EVERSION with a
 * HINT), "kind", that "specials" are exactly the fixed ids of that kind, and that "chars" holds
 * valid, distinct code points (anything else => DG_ECORRUPT naming the JSON pointer).
 * Not here: the tokenizer itself (engine/tokenizer.c). Thread affinity: any thread.
 */
#include "tokenizer_json.h"

#include <stdio.h>
#include <string.h>

#include "ckpt.h"     /* dg_write_atomic, dg_read_file */

#define FORMAT_NAME "dragond-tokenizer"

json_t *dg_tokenizer_to_json(const dg_tokenizer_t *tok) {
    bool byte = dg_tokenizer_kind(tok) == DG_TOK_BYTE;
    json_t *sp = byte ? json_pack("{s:i,s:i,s:i}", "pad", 258, "bos", 256, "eos", 257)
                      : json_pack("{s:i,s:i,s:i,s:i}", "pad", DG_TOK_PAD, "bos", DG_TOK_BOS,
                                  "eos", DG_TOK_EOS, "unk", DG_TOK_UNK);
    json_t *chars = json_array();
    int n = 0;
    const uint32_t *cps = dg_tokenizer_chars(tok, &n);
    for (int i = 0; i < n; i++) json_array_append_new(chars, json_integer(cps[i]));
    return json_pack("{s:s,s:i,s:s,s:o,s:o}", "format", FORMAT_NAME, "version",
                     DG_TOKENIZER_JSON_VERSION, "kind", byte ? "byte" : "char", "specials", sp,
                     "chars", chars);
}

int dg_tokenizer_save_json(const char *path, const dg_tokenizer_t *tok, char *err,
                           size_t errlen) {
    json_t *doc = dg_tokenizer_to_json(tok);
    size_t n = json_dumpb(doc, NULL, 0, JSON_COMPACT);
    char *s = n ? dg_try_malloc(n + 1) : NULL;
    if (!s || json_dumpb(doc, s, n, JSON_COMPACT) != n) {
        json_decref(doc);
        dg_free(s);
        if (err) snprintf(err, errlen, "%s: cannot serialise the tokenizer (out of memory)", path);
        return DG_ENOMEM;
    }
    json_decref(doc);
    s[n] = '\n';
    int rc = dg_write_atomic(path, s, n + 1, err, errlen);
    dg_free(s);
    return rc;
}

static int bad(char *err, size_t errlen, const char *what, const char *ptr, const char *msg) {
    if (err) snprintf(err, errlen, "%s: %s: %s; the file is corrupt", what, ptr, msg);
    return DG_ECORRUPT;
}

static bool int_is(json_t *o, const char *k, json_int_t v) {
    json_t *x = json_object_get(o, k);
    return x && json_is_integer(x) && json_integer_value(x) == v;
}

int dg_tokenizer_from_json(json_t *root, const char *what, dg_tokenizer_t **out, char *err,
                           size_t errlen) {
    *out = NULL;
    if (!json_is_object(root)) return bad(err, errlen, what, "/", "expected an object");
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), FORMAT_NAME)) {
        if (err) snprintf(err, errlen, "%s: not a dragond tokenizer (\"format\" is not \"%s\"); "
                          "HINT: give the tokenizer.json of a dragond run", what, FORMAT_NAME);
        return DG_ECORRUPT;
    }
    json_t *ver = json_object_get(root, "version");
    if (!json_is_integer(ver) || json_integer_value(ver) < 1)
        return bad(err, errlen, what, "/version", "expected an integer >= 1");
    if (json_integer_value(ver) > DG_TOKENIZER_JSON_VERSION) {
        if (err) snprintf(err, errlen, "%s: tokenizer version %lld > supported %d; HINT: upgrade "
                          "dragond", what, (long long)json_integer_value(ver),
                          DG_TOKENIZER_JSON_VERSION);
        return DG_EVERSION;
    }
    const char *key; json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "format") && strcmp(key, "version") && strcmp(key, "kind") &&
            strcmp(key, "specials") && strcmp(key, "chars")) {
            char p[300];
            snprintf(p, sizeof p, "/%s", key);
            return bad(err, errlen, what, p, "unknown field");
        }
    }
    json_t *kind = json_object_get(root, "kind");
    const char *ks = json_is_string(kind) ? json_string_value(kind) : "";
    bool byte = !strcmp(ks, "byte");
    if (!byte && strcmp(ks, "char"))
        return bad(err, errlen, what, "/kind", "expected \"char\" or \"byte\"");
    json_t *sp = json_object_get(root, "specials");
    bool sp_ok = json_is_object(sp) &&
                 (byte ? json_object_size(sp) == 3 && int_is(sp, "pad", 258) &&
                             int_is(sp, "bos", 256) && int_is(sp, "eos", 257)
                       : json_object_size(sp) == 4 && int_is(sp, "pad", DG_TOK_PAD) &&
                             int_is(sp, "bos", DG_TOK_BOS) && int_is(sp, "eos", DG_TOK_EOS) &&
                             int_is(sp, "unk", DG_TOK_UNK));
    if (!sp_ok)
        return bad(err, errlen, what, "/specials",
                   byte ? "expected {\"pad\":258,\"bos\":256,\"eos\":257}"
                        : "expected {\"pad\":0,\"bos\":1,\"eos\":2,\"unk\":3}");
    json_t *chars = json_object_get(root, "chars");
    if (byte) {
        if (chars && !(json_is_array(chars) && json_array_size(chars) == 0))
            return bad(err, errlen, what, "/chars", "a byte tokenizer has no characters");
        return dg_tokenizer_byte(out);
    }
    if (!json_is_array(chars)) return bad(err, errlen, what, "/chars", "expected an array");
    size_t n = json_array_size(chars);
    if (n > 0x110000) return bad(err, errlen, what, "/chars", "too many characters");
    uint32_t *cps = dg_malloc(sizeof(uint32_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(chars, i);
        json_int_t x = json_is_integer(c) ? json_integer_value(c) : -1;
        if (x < 0 || x > 0x10FFFF ||
            (x >= 0xD800 && x <= 0xDFFF && !(x >= 0xDC80 && x <= 0xDCFF))) {
            dg_free(cps);
            char p[48];
            snprintf(p, sizeof p, "/chars/%zu", i);
            return bad(err, errlen, what, p, "expected a code point (0..0x10FFFF, no surrogates "
                       "other than the U+DC80..U+DCFF byte escapes)");
        }
        cps[i] = (uint32_t)x;
    }
    int rc = dg_tokenizer_from_chars(cps, (int)n, out);
    dg_free(cps);
    if (rc) return bad(err, errlen, what, "/chars", "a code point appears twice");
    return 0;
}

int dg_tokenizer_load_json(const char *path, dg_tokenizer_t **out, char *err, size_t errlen) {
    *out = NULL;
    char *data; size_t n;
    int rc = dg_read_file(path, &data, &n, err, errlen);
    if (rc) return rc;
    json_error_t je;
    json_t *root = json_loadb(data, n, JSON_REJECT_DUPLICATES, &je);
    dg_free(data);
    if (!root) {
        if (err) snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return DG_ECORRUPT;
    }
    rc = dg_tokenizer_from_json(root, path, out, err, errlen);
    json_decref(root);
    return rc;
}
