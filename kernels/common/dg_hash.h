/* kernels/common/dg_hash.h -- the counter-based hash every backend uses for dropout masks.
 *
 * Dropout must give the same mask on ref, cpu and cuda so that backends can be compared and a
 * resumed run is bit-identical; a stateless hash of (seed, element index) does that without
 * storing a mask (the backward pass recomputes it). Header-only, valid C11 and CUDA C++.
 * keep(seed, i, p) is true when element i survives dropout with drop probability p. */
#ifndef DG_HASH_H
#define DG_HASH_H
#include <stdint.h>

#ifdef __CUDACC__
#define DG_HD __host__ __device__ __forceinline__
#else
#define DG_HD static inline
#endif

/* splitmix64 finaliser over seed ^ golden*index: full avalanche, 1 multiply-chain per element. */
DG_HD uint64_t dg_hash64(uint64_t seed, uint64_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The top 24 bits as a uniform in [0,1): exact in float, identical on every backend. */
DG_HD float dg_hash_uniform(uint64_t seed, uint64_t i) {
    return (float)(dg_hash64(seed, i) >> 40) * (1.0f / 16777216.0f);
}

DG_HD int dg_dropout_keep(uint64_t seed, uint64_t i, float p) {
    return dg_hash_uniform(seed, i) >= p;
}
#endif
