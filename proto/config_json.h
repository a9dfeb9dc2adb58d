/* proto/config_json.h -- JSON <-> dg_model_config + dg_train_config (a whole config file such
 * as config/models/base.json; the format is documented in proto/config_json.c's field table).
 *
 * A file is {"name"?, "description"?, "model"?: {...}, "training"?: {...}}. Loading starts from
 * dg_model_config_default / dg_train_config_default and overlays the fields given; unknown
 * fields and wrong types are errors naming a JSON pointer ("/model/n_heads: unknown field",
 * "/training/lr: expected a number"); then the engine validators run and their "field: rule"
 * comes back as "/model/field: rule". Errors return DG_ECONFIG (DG_ENOTFOUND / DG_EIO for the
 * file itself). Not here: the daemon's own settings (config/dragond.conf).
 * Thread affinity: any thread (no shared state). */
#ifndef DG_CONFIG_JSON_H
#define DG_CONFIG_JSON_H
#include <jansson.h>
#include "model.h"
#include "train.h"

/* Overlays root on the defaults, then validates. m and t are written only on success. */
int     dg_config_from_json(json_t *root, dg_model_config *m, dg_train_config *t, char *err,
                            size_t errlen);
/* Reads and parses path (parse errors as "path:line:column: message"), then as above. */
int     dg_config_load_file(const char *path, dg_model_config *m, dg_train_config *t, char *err,
                            size_t errlen);
/* Every field, as a new object {"model": {...}, "training": {...}}; NULL never (aborts on OOM). */
json_t *dg_config_to_json(const dg_model_config *m, const dg_train_config *t);
#endif
