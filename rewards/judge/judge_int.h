/* rewards/judge/judge_int.h — what the judge's files share (rewards/judge/ only; the public header is
 * rewards/judge/judge.h): a growable string, the answer cache, and the config pieces the client reuses. */
#ifndef RLHF_REWARDS_JUDGE_JUDGE_INT_H
#define RLHF_REWARDS_JUDGE_JUDGE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* ------------------------------------------------------------------ judge_parse.c */

/* The template a config without "template" uses. */
extern const char judge_default_template[];

/* Checks that base_url is an absolute http(s) URL with a host; errors name `where`. */
int judge_check_base_url(const char *url, const char *where, rlhf_error *err);
/* The URL chat requests are posted to, from base_url (0, or -1 when it does not fit cap). */
int judge_chat_url(const char *base_url, char *out, size_t cap);

/* A growable NUL-terminated string; oom is set (and the text kept as it was) when an append fails. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

void judge_sbuf_add(sbuf *b, const char *s, size_t n);

/* ------------------------------------------------------------------ judge_cache.c */

typedef struct cache_entry {
    uint64_t hash;
    char *key;
    double raw;
    struct cache_entry *next;
} cache_entry;

typedef struct judge_cache {
    cache_entry **buckets; /* (nbuckets,) chains */
    size_t nbuckets;
    cache_entry **ring;    /* (cap,) insertion order; the oldest is evicted first */
    size_t cap, head, count;
} judge_cache;

/* FNV-1a of s[0..n): the cache's and the batch's key hash. */
uint64_t judge_fnv1a(const char *s, size_t n);
/* cap 0: a cache that holds nothing. -1 when out of memory. */
int judge_cache_init(judge_cache *c, size_t cap);
void judge_cache_free(judge_cache *c);
cache_entry *judge_cache_find(judge_cache *c, uint64_t h, const char *key);
/* Adds (key, raw) unless present, evicting the oldest entry when full. */
void judge_cache_put(judge_cache *c, uint64_t h, const char *key, double raw);

#endif
