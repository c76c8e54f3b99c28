/* prompts/prompts_int.h — internals shared by the prompts/ sources (not installed). */
#ifndef RLHF_PROMPTS_INT_H
#define RLHF_PROMPTS_INT_H

#include <stdint.h>

#include "prompts/prompts.h"

/* 64-bit FNV-1a of a NUL-terminated string: the key of the id index and of the hash split. */
static inline uint64_t prompts_hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* splitmix64 finaliser: mixes a hash with a seed into well-spread bits. */
static inline uint64_t prompts_mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1) with 53 random bits. */
static inline double prompts_rng_double(rlhf_rng *r) { return (double)(rlhf_rng_u64(r) >> 11) * 0x1.0p-53; }

/* Uniform integer in [0, n), n > 0 (rejection sampling, no modulo bias). */
static inline uint64_t prompts_rng_below(rlhf_rng *r, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = rlhf_rng_u64(r);
    while (x >= lim);
    return x % n;
}

#endif
