/* model/tokenizer_bpe_int.h — private state of the Hugging Face BPE tokenizer, shared by
 * tokenizer_bpe.c (loading tokenizer.json / tokenizer_config.json) and tokenizer_bpe_encode.c
 * (added-token split, normalizers, pre-tokenizers, BPE merging, token bytes). */
#ifndef RLHF_TOKENIZER_BPE_INT_H
#define RLHF_TOKENIZER_BPE_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

#include "model/model.h"

/* String -> id map, open addressing; keys live in a byte pool (offsets, so the pool may grow). */
typedef struct tokenizer_strmap {
    int32_t *slot; /* (mask + 1) entry indices, -1 empty */
    uint32_t mask;
    uint32_t *key_off, *key_len; /* (n) */
    int32_t *val;                /* (n) */
    int n, cap;
    char *pool;
    size_t pool_len, pool_cap;
} tokenizer_strmap;

/* Added token (tokenizer.json "added_tokens"). */
typedef struct tokenizer_added {
    char *content;      /* as matched in the text */
    size_t len;
    int32_t id;
    unsigned char special, lstrip, rstrip, normalized, single_word;
} tokenizer_added;

/* Byte trie over added-token contents for leftmost-longest matching. */
typedef struct tokenizer_trie_node {
    int32_t child, sibling, added; /* first child, next sibling (-1 none); index into added[] or -1 */
    unsigned char byte;
} tokenizer_trie_node;
typedef struct tokenizer_trie {
    tokenizer_trie_node *node;
    int n, cap;
    unsigned char first[256]; /* 1 when some token starts with this byte */
} tokenizer_trie;

enum { TOKENIZER_NORM_NFC, TOKENIZER_NORM_PREPEND, TOKENIZER_NORM_REPLACE };
typedef struct tokenizer_norm {
    int kind;
    char *a, *b; /* PREPEND: a = prefix; REPLACE: a -> b */
    size_t alen, blen;
} tokenizer_norm;

enum { TOKENIZER_PRE_SPLIT, TOKENIZER_PRE_BYTELEVEL, TOKENIZER_PRE_METASPACE };
enum { TOKENIZER_PREPEND_ALWAYS, TOKENIZER_PREPEND_FIRST, TOKENIZER_PREPEND_NEVER };
typedef struct tokenizer_pre {
    int kind;
    pcre2_code *re;          /* SPLIT (Regex), BYTELEVEL with use_regex */
    char *literal;           /* SPLIT with a String pattern */
    size_t literal_len;
    int add_prefix_space;    /* BYTELEVEL */
    char replacement[8];     /* METASPACE (UTF-8 of one char) */
    int prepend_scheme, split; /* METASPACE */
} tokenizer_pre;

/* One cached word: its ids at cache_ids[off..off+n). */
typedef struct tokenizer_cache_entry {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, n_ids;
} tokenizer_cache_entry;

typedef struct tokenizer_bpe {
    int n_ids;             /* ids with a table entry: 0..n_ids-1 (tok->vocab_size may be larger) */
    /* vocab: id -> lookup key (byte-level: raw bytes; SentencePiece: the vocab string); map key -> id */
    tokenizer_strmap vocab;
    int32_t byte_id[256];  /* byte-level: the id of each single byte */
    int32_t fallback_id[256]; /* byte_fallback: the id of <0xNN>, -1 missing */
    int32_t ascii_id[128];    /* SentencePiece: the id of each one-character ASCII token (-1 none) */
    int byte_level;        /* words are raw bytes with one initial symbol per byte */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    /* merges: (left id << 32 | right id) -> rank, new id */
    uint64_t *merge_key;
    int32_t *merge_rank, *merge_new;
    uint32_t merge_mask;
    int n_merges;
    /* added tokens; tries over raw (normalized == 0) and normalized contents */
    tokenizer_added *added;
    int n_added;
    tokenizer_trie raw_trie, norm_trie;
    int32_t *added_of_id; /* (vocab_size) index into added[] or -1 */
    tokenizer_norm *norm;
    int n_norm;
    tokenizer_pre *pre;
    int n_pre;
    /* post-processing for add_special: ids before and after the text */
    int32_t *prefix_ids, *suffix_ids;
    int n_prefix, n_suffix;
    /* decoding: the bytes of every id (special tokens: none) at dec_pool[dec_off[id]..dec_off[id+1]) */
    uint32_t *dec_off;
    char *dec_pool;
    int strip_start;
    /* word cache (guarded: a tokenizer may be shared by threads) */
    pthread_mutex_t cache_lock;
    tokenizer_cache_entry *cache;
    uint32_t cache_mask;
    int cache_n;
    char *cache_keys;
    int32_t *cache_ids;
    size_t cache_keys_len, cache_keys_cap, cache_ids_len, cache_ids_cap;
} tokenizer_bpe;

uint64_t tokenizer_hash_bytes(const void *p, size_t n);
int tokenizer_strmap_put(tokenizer_strmap *m, const char *key, size_t len, int32_t val); /* -1: OOM, 1: dup */
int32_t tokenizer_strmap_get(const tokenizer_strmap *m, const char *key, size_t len); /* -1 absent */
void tokenizer_strmap_free(tokenizer_strmap *m);
int tokenizer_trie_add(tokenizer_trie *t, const char *s, size_t len, int32_t added);
void tokenizer_bpe_free(tokenizer_bpe *b);
/* The GPT-2 byte <-> unicode mapping: code point of byte b; byte of code point c (-1 if none). */
uint32_t tokenizer_byte_to_cp(int b);
int tokenizer_cp_to_byte(uint32_t c);
/* Applies the normalizers to text[0..len) into a malloc'd *out. */
int tokenizer_bpe_normalize(const tokenizer_bpe *b, const char *text, size_t len, char **out, size_t *out_len,
                            rlhf_error *err);
extern const struct tokenizer_ops tokenizer_bpe_ops;

#endif
