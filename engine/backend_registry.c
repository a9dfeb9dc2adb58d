/* engine/backend_registry.c -- name -> backend iface. The ONLY engine file with #ifdef DG_USE_*
 * (docs/STYLE.md §5 rule 5). Each backend directory exports exactly one function,
 * dg_backend_<name>_iface(). */
#include "backend.h"

#include <string.h>

const dg_backend_iface *dg_backend_ref_iface(void);
const dg_backend_iface *dg_backend_cpu_iface(void);
#ifdef DG_USE_CUDA
const dg_backend_iface *dg_backend_cuda_iface(void);
#endif

typedef const dg_backend_iface *(*iface_fn)(void);
static const iface_fn REGISTRY[] = {
    dg_backend_ref_iface,
    dg_backend_cpu_iface,
#ifdef DG_USE_CUDA
    dg_backend_cuda_iface,
#endif
};

const dg_backend_iface *dg_backend_find(const char *name) {
    for (size_t i = 0; i < sizeof REGISTRY / sizeof *REGISTRY; i++) {
        const dg_backend_iface *it = REGISTRY[i]();
        if (it && !strcmp(it->name, name)) return it;
    }
    return NULL;
}

const char *dg_backend_list(void) {
    static char buf[128];
    if (!buf[0]) {
        for (size_t i = 0; i < sizeof REGISTRY / sizeof *REGISTRY; i++) {
            if (i) strcat(buf, ",");
            strcat(buf, REGISTRY[i]()->name);
        }
    }
    return buf;
}
