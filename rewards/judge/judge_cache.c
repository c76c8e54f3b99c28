/* rewards/judge/judge_cache.c — the judge's answer cache: (model, system, rendered prompt) -> raw score,
 * a hash table with a fixed capacity that evicts the oldest entry first. */
#include "rewards/judge/judge_int.h"

#include <stdlib.h>
#include <string.h>

uint64_t judge_fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

int judge_cache_init(judge_cache *c, size_t cap) {
    memset(c, 0, sizeof *c);
    if (!cap) return 0;
    c->nbuckets = 16;
    while (c->nbuckets < cap * 2) c->nbuckets *= 2;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    c->ring = calloc(cap, sizeof *c->ring);
    c->cap = cap;
    return (c->buckets && c->ring) ? 0 : -1;
}

void judge_cache_free(judge_cache *c) {
    for (size_t i = 0; i < c->count; i++) {
        cache_entry *e = c->ring[(c->head + i) % c->cap];
        free(e->key);
        free(e);
    }
    free(c->buckets);
    free(c->ring);
    memset(c, 0, sizeof *c);
}

cache_entry *judge_cache_find(judge_cache *c, uint64_t h, const char *key) {
    if (!c->cap) return NULL;
    for (cache_entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && !strcmp(e->key, key)) return e;
    return NULL;
}

void judge_cache_put(judge_cache *c, uint64_t h, const char *key, double raw) {
    if (!c->cap || judge_cache_find(c, h, key)) return;
    cache_entry *e = malloc(sizeof *e);
    char *k = strdup(key);
    if (!e || !k) {
        free(e);
        free(k);
        return; /* a cache miss later is the only consequence */
    }
    e->hash = h;
    e->key = k;
    e->raw = raw;
    if (c->count == c->cap) {
        cache_entry *old = c->ring[c->head];
        cache_entry **pp = &c->buckets[old->hash & (c->nbuckets - 1)];
        while (*pp != old) pp = &(*pp)->next;
        *pp = old->next;
        free(old->key);
        free(old);
        c->ring[c->head] = e;
        c->head = (c->head + 1) % c->cap;
    } else {
        c->ring[(c->head + c->count) % c->cap] = e;
        c->count++;
    }
    cache_entry **b = &c->buckets[h & (c->nbuckets - 1)];
    e->next = *b;
    *b = e;
}
