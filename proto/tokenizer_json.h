/* proto/tokenizer_json.h -- tokenizer.json, the tokenizer that travels with every run and
 * export:
 *   {"format": "dragond-tokenizer", "version": 1, "kind": "char" | "byte",
 *    "specials": {"pad": 0, "bos": 1, "eos": 2, "unk": 3}       (char)
 *                {"pad": 258, "bos": 256, "eos": 257}            (byte)
 *    "chars": [70, 105, ...]}   code points of ids 4.. in id order (char only; U+DC80..U+DCFF
 *                               stand for raw bytes 0x80..0xFF that were not valid UTF-8)
 * Saved atomically (tmp, fsync, rename, fsync dir). Loading checks format, version, kind,
 * specials and every code point, and fails with DG_ECORRUPT / DG_EVERSION and a message.
 * Thread affinity: any thread. */
#ifndef DG_TOKENIZER_JSON_H
#define DG_TOKENIZER_JSON_H
#include <jansson.h>
#include "tokenizer.h"

#define DG_TOKENIZER_JSON_VERSION 1

json_t *dg_tokenizer_to_json(const dg_tokenizer_t *tok);
/* From a parsed document; what names the source in messages. */
int     dg_tokenizer_from_json(json_t *root, const char *what, dg_tokenizer_t **out, char *err,
                               size_t errlen);
int     dg_tokenizer_save_json(const char *path, const dg_tokenizer_t *tok, char *err,
                               size_t errlen);
int     dg_tokenizer_load_json(const char *path, dg_tokenizer_t **out, char *err, size_t errlen);
#endif
