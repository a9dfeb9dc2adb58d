/* proto/export.h -- deployment bundles of a model: the engine-facing API that turns a dg_ckpt
 * (config + tokenizer + parameters) into a burnpack (optionally split into parts) or a
 * safetensors file, and back. The engine never sees JSON: config and tokenizer travel inside the
 * files as JSON strings in the metadata map (burnpack "metadata", safetensors "__metadata__"):
 *   "format"            "burnpack" | "safetensors"
 *   "producer"          "dragond"
 *   "version"           DG_EXPORT_PRODUCER_VERSION
 *   "precision"         "f32" | "f16" | "bf16"
 *   "dragond.config"    {"model": {...}, "training": {...}}   (proto/config_json.h)
 *   "dragond.tokenizer" tokenizer.json                         (proto/tokenizer_json.h)
 * Tensor names and shapes are DESIGN.md §5 (dg_model_param_layout) plus what burn_dragon's
 * DragonModel loads (BURNPACK.md §1.9): embed.weight [V,D], norm.gamma [D], norm.beta [D],
 * norm.alpha [1], norm.shift [1], encoder [H,D,N], encoder_v [H,D,N], decoder [H*N,D],
 * lm_head [D,V] (untied only); tensor bytes in that order. norm.gamma / norm.beta are written
 * for a non-affine config too (as 1 / 0), norm.alpha as 1 and norm.shift as 0. The importer
 * accepts them only with those values (and tolerates their absence, and ignores
 * rwkv_time_decay of older BDH bundles with a logged note).
 *
 * Thread affinity: any thread (pure file I/O). */
#ifndef DG_EXPORT_H
#define DG_EXPORT_H
#include "ckpt.h"
#include "backend.h"

#define DG_EXPORT_PRODUCER_VERSION "0.1.0"
#define DG_EXPORT_NORM_ALPHA "norm.alpha"
#define DG_EXPORT_NORM_SHIFT "norm.shift"

typedef enum { DG_EXPORT_BURNPACK = 0, DG_EXPORT_SAFETENSORS = 1 } dg_export_format;

/* Writes ck's parameters to path atomically, stored as dtype (F32, F16 or BF16, RNE). For
 * burnpack with parts_bytes > 0 it also writes "<path>.parts.json" and
 * "<path>.part-NNNNN.bpk" (each part at most parts_bytes unless one tensor is larger; BURNPACK.md
 * §2). ck->params must hold dg_model_n_params(&ck->model) floats; ck->tokenizer is required and
 * must match model.vocab_size. Returns 0 or a DG_E* code with a message. */
int dg_export_model(const char *path, dg_export_format format, dg_dtype dtype, const dg_ckpt *ck,
                    int64_t parts_bytes, char *err, size_t errlen);

/* Reads a bundle written by dg_export_model: a .bpk (its parts are used when the monolith is
 * absent), a .parts.json manifest (every part verified by size and sha256) or a .safetensors.
 * Fills out->model, out->train, out->tokenizer (owned), out->n_params and out->params (f32,
 * layout order); step 0, no optimizer state. Checks every tensor name and shape against the
 * config and says which tensor is missing, extra or of the wrong shape.
 * Free with dg_ckpt_free. */
int dg_import_model(const char *path, dg_ckpt *out, char *err, size_t errlen);
#endif
