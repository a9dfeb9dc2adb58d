/* engine/tokenizer.h -- the char and byte tokenizers (MODEL.md §7.1, DESIGN.md §5).
 *
 * char: ids 0 PAD, 1 BOS, 2 EOS, 3 UNK, then every distinct character (Unicode code point of the
 *       UTF-8 text) in order of first appearance in the corpus it was fitted on. Bytes that are not
 *       valid UTF-8 are treated as single code points U+DC80+byte ("surrogate escape") so that
 *       every file round-trips exactly.
 * byte: ids 0..255 are bytes; BOS 256, EOS 257, PAD 258 (V = 259).
 * Decoding skips PAD/BOS, stops at EOS, renders UNK as '?'.
 * Serialisation to tokenizer.json lives in proto/ (JSON stops at the edge); here only the native
 * form. Thread affinity: immutable after creation, safe to share read-only. */
#ifndef DG_TOKENIZER_H
#define DG_TOKENIZER_H
#include "dg.h"

typedef enum { DG_TOK_CHAR = 0, DG_TOK_BYTE = 1 } dg_tok_kind;

enum { DG_TOK_PAD = 0, DG_TOK_BOS = 1, DG_TOK_EOS = 2, DG_TOK_UNK = 3 };

typedef struct dg_tokenizer_s dg_tokenizer_t;

int  dg_tokenizer_byte(dg_tokenizer_t **out);
/* Fit a char tokenizer on text (n bytes). DG_EDATA if text is empty. */
int  dg_tokenizer_fit_char(const char *text, size_t n, dg_tokenizer_t **out);
/* Build a char tokenizer from its code points in id order (ids 4.. ), e.g. when loading. */
int  dg_tokenizer_from_chars(const uint32_t *cps, int n_cps, dg_tokenizer_t **out);
void dg_tokenizer_free(dg_tokenizer_t *t);
dg_tok_kind dg_tokenizer_kind(const dg_tokenizer_t *t);
int  dg_tokenizer_vocab(const dg_tokenizer_t *t);           /* V */
int  dg_tokenizer_eos(const dg_tokenizer_t *t);
/* char tokenizer: its code points in id order (ids 4..V-1); *n = V - 4. NULL for byte. */
const uint32_t *dg_tokenizer_chars(const dg_tokenizer_t *t, int *n);

/* Encode n bytes of text. strict: a character outside a char vocabulary is an error (DG_EINVAL,
 * with the byte offset and the character in err); otherwise it maps to UNK.
 * *ids is allocated with dg_malloc (caller frees with dg_free); *n_ids set. */
int  dg_tokenizer_encode(const dg_tokenizer_t *t, const char *text, size_t n, bool strict,
                         int32_t **ids, size_t *n_ids, char *err, size_t errlen);
/* Decode one id to its bytes (up to 4 for char, 1 for byte) into buf; returns the byte count
 * (0 for PAD/BOS/EOS), or DG_EINVAL for an id out of range. */
int  dg_tokenizer_piece(const dg_tokenizer_t *t, int32_t id, char buf[8]);
/* Decode ids into a NUL-terminated string allocated with dg_malloc; stops at EOS. */
int  dg_tokenizer_decode(const dg_tokenizer_t *t, const int32_t *ids, size_t n, char **out,
                         size_t *out_len);

/* Incremental UTF-8 assembly for streaming: feed token pieces, get back only complete UTF-8
 * characters (a byte tokenizer may split one). flush emits what is left (invalid bytes as
 * U+FFFD). */
typedef struct { char pend[8]; int n_pend; } dg_utf8_stream;
/* Appends complete text to out (capacity cap); returns bytes written. */
int  dg_utf8_stream_push(dg_utf8_stream *s, const char *piece, int n, char *out, int cap);
int  dg_utf8_stream_flush(dg_utf8_stream *s, char *out, int cap);
#endif
