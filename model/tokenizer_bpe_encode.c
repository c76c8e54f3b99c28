/* model/tokenizer_bpe_encode.c — encoding with a loaded Hugging Face BPE tokenizer, in the order
 * Hugging Face applies the steps: added tokens split off the raw text, then per remaining segment
 * the normalizers, added tokens matched in normalized text, the pre-tokenizers (regex Split,
 * ByteLevel, Metaspace), and BPE per pre-token (lowest merge rank first, leftmost on ties, through a
 * heap; a word cache in front). Decoding is a table of bytes per id built at load time. */
#include "model/tokenizer_bpe_int.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------- growable buffers */

typedef struct piece {
    uint32_t off, len;
} piece;

typedef struct enc_ctx {
    const tokenizer *tok;
    tokenizer_bpe *b;
    int32_t **ids;
    int *n, *cap;
    rlhf_error *err;
    char *sb; /* pre-token text */
    size_t sb_len, sb_cap;
    piece *pc, *pc2;
    int n_pc, n_pc2, pc_cap, pc2_cap;
    pcre2_match_data *md;
    /* BPE scratch */
    struct sym {
        int32_t id, prev, next, len;
    } *sym;
    struct heap_item {
        int32_t rank, pos, new_id;
    } *heap;
    int sym_cap, heap_cap;
    int at_text_start; /* Metaspace prepend_scheme "first" */
} enc_ctx;

static int grow(void **p, int *cap, int need, size_t elem, rlhf_error *err) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory while tokenizing");
    *p = q;
    *cap = nc;
    return 0;
}

static int sb_append(enc_ctx *c, const char *s, size_t n, uint32_t *off) {
    if (c->sb_len + n > c->sb_cap) {
        size_t nc = c->sb_cap ? 2 * c->sb_cap : 4096;
        while (nc < c->sb_len + n) nc *= 2;
        char *p = realloc(c->sb, nc);
        if (!p) return RLHF_FAIL(c->err, RLHF_ENOMEM, "out of memory while tokenizing");
        c->sb = p;
        c->sb_cap = nc;
    }
    if (s && n) memcpy(c->sb + c->sb_len, s, n);
    *off = (uint32_t)c->sb_len;
    c->sb_len += n;
    return 0;
}

static int emit(enc_ctx *c, int32_t id) {
    if (*c->n == *c->cap) {
        int rc = grow((void **)c->ids, c->cap, *c->n + 1, sizeof(int32_t), c->err);
        if (rc) return rc;
    }
    (*c->ids)[(*c->n)++] = id;
    return 0;
}

static int push_piece(enc_ctx *c, uint32_t off, uint32_t len) {
    if (!len) return 0;
    int rc = grow((void **)&c->pc2, &c->pc2_cap, c->n_pc2 + 1, sizeof(piece), c->err);
    if (!rc) c->pc2[c->n_pc2++] = (piece){off, len};
    return rc;
}

static void swap_pieces(enc_ctx *c) {
    piece *t = c->pc;
    int tc = c->pc_cap;
    c->pc = c->pc2, c->pc_cap = c->pc2_cap, c->n_pc = c->n_pc2;
    c->pc2 = t, c->pc2_cap = tc, c->n_pc2 = 0;
}

/* ---------------------------------------------------------------- unicode helpers */

static size_t u8len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (k > n) return 1;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    return k;
}

static uint32_t u8cp(const unsigned char *s, size_t k) {
    if (k == 1) return s[0];
    uint32_t v = s[0] & (0x7F >> k);
    for (size_t i = 1; i < k; i++) v = v << 6 | (s[i] & 0x3F);
    return v;
}

/* Unicode White_Space (Rust's char::is_whitespace, which Hugging Face's lstrip/rstrip use). */
static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* A regex \w character (Hugging Face's single_word test): letters, marks, decimal digits, letter numbers,
 * connector punctuation, joiners. */
static int is_word_char(uint32_t c) {
    if (c < 0x80) return (c | 32) - 'a' < 26 || c - '0' < 10 || c == '_';
    if (c == 0x200C || c == 0x200D) return 1;
    if (c > 0x10FFFF) return 0;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* The character ending at s[end) (its start in *start). */
static uint32_t cp_before(const unsigned char *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && end - i < 4 && (s[i] & 0xC0) == 0x80) i--;
    size_t k = u8len(s + i, end - i);
    if (i + k != end) i = end - 1, k = 1;
    *start = i;
    return u8cp(s + i, k);
}

/* ---------------------------------------------------------------- normalizers */

int tokenizer_bpe_normalize(const tokenizer_bpe *b, const char *text, size_t len, char **out, size_t *out_len,
                            rlhf_error *err) {
    char *cur = malloc(len + 1);
    if (!cur) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    memcpy(cur, text, len);
    size_t n = len;
    for (int k = 0; k < b->n_norm; k++) {
        const tokenizer_norm *nm = &b->norm[k];
        char *next = NULL;
        size_t nn = 0;
        if (nm->kind == TOKENIZER_NORM_NFC) {
            int quick = 1; /* no code point >= U+0300 (lead byte >= 0xCC): NFC changes nothing */
            for (size_t i = 0; i < n && quick; i++) quick = (unsigned char)cur[i] < 0xCC;
            if (quick) continue;
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)cur, (utf8proc_ssize_t)n, &dst,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (r < 0) continue; /* invalid UTF-8 (only reachable from C callers): left as it is */
            next = (char *)dst, nn = (size_t)r;
        } else if (nm->kind == TOKENIZER_NORM_PREPEND) {
            if (!n) continue;
            if (!(next = malloc(n + nm->alen + 1))) {
                free(cur), cur = NULL;
                break;
            }
            memcpy(next, nm->a, nm->alen), memcpy(next + nm->alen, cur, n), nn = n + nm->alen;
        } else { /* REPLACE */
            size_t hits = 0;
            for (size_t i = 0; i + nm->alen <= n;)
                if (!memcmp(cur + i, nm->a, nm->alen)) hits++, i += nm->alen;
                else i++;
            if (!hits) continue;
            if (!(next = malloc(n + hits * nm->blen + 1))) {
                free(cur), cur = NULL;
                break;
            }
            for (size_t i = 0; i < n;)
                if (i + nm->alen <= n && !memcmp(cur + i, nm->a, nm->alen)) memcpy(next + nn, nm->b, nm->blen), nn += nm->blen, i += nm->alen;
                else next[nn++] = cur[i++];
        }
        free(cur);
        cur = next, n = nn;
    }
    if (!cur) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    cur[n] = 0; /* every buffer above has room for it */
    *out = cur;
    *out_len = n;
    return 0;
}

/* ---------------------------------------------------------------- BPE on one pre-token */

static inline int merge_get(const tokenizer_bpe *b, int32_t l, int32_t r, int32_t *rank, int32_t *nid) {
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & b->merge_mask;
    for (; b->merge_key[h] != UINT64_MAX; h = (h + 1) & b->merge_mask)
        if (b->merge_key[h] == key) return *rank = b->merge_rank[h], *nid = b->merge_new[h], 1;
    return 0;
}

static inline int heap_less(const struct heap_item *a, const struct heap_item *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct heap_item *h, int *n, struct heap_item x) {
    int i = (*n)++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!heap_less(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static struct heap_item heap_pop(struct heap_item *h, int *n) {
    struct heap_item top = h[0], x = h[--(*n)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < *n && heap_less(&h[l], &x)) m = l;
        if (l + 1 < *n && heap_less(&h[l + 1], m == i ? &x : &h[l])) m = l + 1;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = x;
    return top;
}

enum { CACHE_MAX_WORD = 96, CACHE_SLOTS = 1 << 16 };

/* Cached ids of a word: 1 and appended, or 0. */
static int cache_lookup(enc_ctx *c, const char *s, size_t n, uint64_t h) {
    tokenizer_bpe *b = c->b;
    int found = 0, rc = 0;
    pthread_mutex_lock(&b->cache_lock);
    if (b->cache) {
        for (uint32_t i = (uint32_t)h & b->cache_mask;; i = (i + 1) & b->cache_mask) {
            tokenizer_cache_entry *e = &b->cache[i];
            if (!e->key_len) break;
            if (e->hash == h && e->key_len == n && !memcmp(b->cache_keys + e->key_off, s, n)) {
                found = 1;
                for (uint32_t k = 0; k < e->n_ids && !rc; k++) rc = emit(c, b->cache_ids[e->ids_off + k]);
                break;
            }
        }
    }
    pthread_mutex_unlock(&b->cache_lock);
    return rc ? rc : found;
}

/* Best effort: a full or failing cache only costs speed. */
static void cache_insert(tokenizer_bpe *b, const char *s, size_t n, uint64_t h, const int32_t *ids, int n_ids) {
    pthread_mutex_lock(&b->cache_lock);
    if (!b->cache && (b->cache = calloc(CACHE_SLOTS, sizeof *b->cache))) b->cache_mask = CACHE_SLOTS - 1;
    if (b->cache && (b->cache_n >= CACHE_SLOTS / 2 || b->cache_keys_len + n > (1u << 24) ||
                     b->cache_ids_len + (size_t)n_ids > (1u << 22))) { /* full: start over */
        memset(b->cache, 0, CACHE_SLOTS * sizeof *b->cache);
        b->cache_n = 0, b->cache_keys_len = b->cache_ids_len = 0;
    }
    if (b->cache && b->cache_keys_len + n > b->cache_keys_cap) {
        size_t nc = b->cache_keys_cap ? 2 * b->cache_keys_cap : 1 << 16;
        char *p = realloc(b->cache_keys, nc);
        if (p) b->cache_keys = p, b->cache_keys_cap = nc;
    }
    if (b->cache && b->cache_ids_len + (size_t)n_ids > b->cache_ids_cap) {
        size_t nc = b->cache_ids_cap ? 2 * b->cache_ids_cap : 1 << 14;
        int32_t *p = realloc(b->cache_ids, nc * sizeof *p);
        if (p) b->cache_ids = p, b->cache_ids_cap = nc;
    }
    if (b->cache && b->cache_keys_len + n <= b->cache_keys_cap && b->cache_ids_len + (size_t)n_ids <= b->cache_ids_cap) {
        uint32_t i = (uint32_t)h & b->cache_mask;
        while (b->cache[i].key_len) i = (i + 1) & b->cache_mask;
        memcpy(b->cache_keys + b->cache_keys_len, s, n);
        memcpy(b->cache_ids + b->cache_ids_len, ids, (size_t)n_ids * sizeof *ids);
        b->cache[i] = (tokenizer_cache_entry){h, (uint32_t)b->cache_keys_len, (uint32_t)n, (uint32_t)b->cache_ids_len,
                                              (uint32_t)n_ids};
        b->cache_keys_len += n, b->cache_ids_len += (size_t)n_ids, b->cache_n++;
    }
    pthread_mutex_unlock(&b->cache_lock);
}

static int add_sym(enc_ctx *c, int *ns, int32_t id, int32_t len) {
    int rc = grow((void **)&c->sym, &c->sym_cap, *ns + 1, sizeof *c->sym, c->err);
    if (rc) return rc;
    c->sym[*ns] = (struct sym){id, *ns - 1, *ns + 1, len};
    (*ns)++;
    return 0;
}

static int bpe_word(enc_ctx *c, const char *s, size_t n) {
    tokenizer_bpe *b = c->b;
    int rc;
    if (b->ignore_merges) {
        int32_t id = tokenizer_strmap_get(&b->vocab, s, n);
        if (id >= 0) return emit(c, id);
    }
    uint64_t h = 0;
    if (n <= CACHE_MAX_WORD) {
        h = tokenizer_hash_bytes(s, n);
        if ((rc = cache_lookup(c, s, n, h))) return rc < 0 ? rc : 0;
    }
    /* initial symbols */
    int ns = 0;
    const unsigned char *u = (const unsigned char *)s;
    if (b->byte_level) {
        if ((rc = grow((void **)&c->sym, &c->sym_cap, (int)n, sizeof *c->sym, c->err))) return rc;
        for (size_t i = 0; i < n; i++) c->sym[i] = (struct sym){b->byte_id[u[i]], (int32_t)i - 1, (int32_t)i + 1, 1};
        ns = (int)n;
    } else {
        for (size_t i = 0; i < n;) {
            size_t k = u8len(u + i, n - i);
            int32_t id = k == 1 && u[i] < 0x80 ? b->ascii_id[u[i]] : tokenizer_strmap_get(&b->vocab, s + i, k);
            if (id >= 0) rc = add_sym(c, &ns, id, (int32_t)k);
            else if (b->byte_fallback)
                for (size_t j = 0; j < k && !rc; j++) rc = add_sym(c, &ns, b->fallback_id[u[i + j]], 1);
            else if (b->unk_id < 0)
                return RLHF_FAIL(c->err, RLHF_EINVAL,
                                 "text has a character (bytes at offset %zu) the vocabulary lacks, and the tokenizer has "
                                 "no unk_token or byte_fallback",
                                 i);
            else if (b->fuse_unk && ns && c->sym[ns - 1].id == b->unk_id)
                c->sym[ns - 1].len += (int32_t)k;
            else
                rc = add_sym(c, &ns, b->unk_id, (int32_t)k);
            if (rc) return rc;
            i += k;
        }
    }
    if (!ns) return 0;
    c->sym[ns - 1].next = -1;
    /* merges: lowest rank first, leftmost among equal ranks; stale entries are skipped */
    if ((rc = grow((void **)&c->heap, &c->heap_cap, ns, sizeof *c->heap, c->err))) return rc;
    int nh = 0;
    for (int i = 0; i + 1 < ns; i++) {
        int32_t rank, nid;
        if (merge_get(b, c->sym[i].id, c->sym[i + 1].id, &rank, &nid)) heap_push(c->heap, &nh, (struct heap_item){rank, i, nid});
    }
    while (nh) {
        struct heap_item top = heap_pop(c->heap, &nh);
        struct sym *cur = &c->sym[top.pos];
        if (!cur->len || cur->next < 0) continue;
        struct sym *right = &c->sym[cur->next];
        int32_t rank, nid;
        if (!merge_get(b, cur->id, right->id, &rank, &nid) || nid != top.new_id) continue;
        cur->id = top.new_id;
        cur->len += right->len;
        right->len = 0;
        cur->next = right->next;
        if (cur->next >= 0) c->sym[cur->next].prev = top.pos;
        /* at most two new pairs per merge, and one pair popped: the heap never outgrows ns */
        if ((rc = grow((void **)&c->heap, &c->heap_cap, nh + 2, sizeof *c->heap, c->err))) return rc;
        if (cur->prev >= 0 && merge_get(b, c->sym[cur->prev].id, cur->id, &rank, &nid))
            heap_push(c->heap, &nh, (struct heap_item){rank, cur->prev, nid});
        if (cur->next >= 0 && merge_get(b, cur->id, c->sym[cur->next].id, &rank, &nid))
            heap_push(c->heap, &nh, (struct heap_item){rank, top.pos, nid});
    }
    int first = *c->n;
    for (int i = 0; i >= 0; i = c->sym[i].next)
        if ((rc = emit(c, c->sym[i].id))) return rc;
    if (n <= CACHE_MAX_WORD) cache_insert(b, s, n, h, *c->ids + first, *c->n - first);
    return 0;
}

/* ---------------------------------------------------------------- pre-tokenizers */

static int split_regex(enc_ctx *c, const pcre2_code *re) {
    int rc;
    for (int p = 0; p < c->n_pc; p++) {
        uint32_t off = c->pc[p].off, len = c->pc[p].len, at = 0;
        while (at < len) {
            int m = pcre2_match(re, (PCRE2_SPTR)(c->sb + off), len, at, 0, c->md, NULL);
            if (m == PCRE2_ERROR_NOMATCH) break;
            if (m < 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(m, msg, sizeof msg);
                return RLHF_FAIL(c->err, RLHF_EINVAL, "pre-tokenizer regex failed: %s", (char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            uint32_t s = (uint32_t)ov[0], e = (uint32_t)ov[1];
            if ((rc = push_piece(c, off + at, s - at)) || (rc = push_piece(c, off + s, e - s))) return rc;
            at = e > s ? e : e + (uint32_t)u8len((const unsigned char *)c->sb + off + e, len - e);
            if (e == s && (rc = push_piece(c, off + s, at - s))) return rc;
        }
        if (at < len && (rc = push_piece(c, off + at, len - at))) return rc;
    }
    swap_pieces(c);
    return 0;
}

static int split_literal(enc_ctx *c, const char *lit, size_t ll, int merged_with_next) {
    int rc;
    for (int p = 0; p < c->n_pc; p++) {
        uint32_t off = c->pc[p].off, len = c->pc[p].len, at = 0, from = 0;
        const char *s = c->sb + off;
        while (at + ll <= len) {
            const char *hit = memmem(s + at, len - at, lit, ll);
            if (!hit) break;
            uint32_t h = (uint32_t)(hit - s);
            if (merged_with_next) { /* the delimiter starts the next piece */
                if ((rc = push_piece(c, off + from, h - from))) return rc;
                from = h;
            } else { /* isolated */
                if ((rc = push_piece(c, off + from, h - from)) || (rc = push_piece(c, off + h, (uint32_t)ll))) return rc;
                from = h + (uint32_t)ll;
            }
            at = h + (uint32_t)ll;
        }
        if ((rc = push_piece(c, off + from, len - from))) return rc;
    }
    swap_pieces(c);
    return 0;
}

static int pre_tokenize(enc_ctx *c) {
    int rc;
    for (int k = 0; k < c->b->n_pre; k++) {
        const tokenizer_pre *pr = &c->b->pre[k];
        if (pr->kind == TOKENIZER_PRE_SPLIT) {
            rc = pr->re ? split_regex(c, pr->re) : split_literal(c, pr->literal, pr->literal_len, 0);
        } else if (pr->kind == TOKENIZER_PRE_BYTELEVEL) {
            if (pr->add_prefix_space)
                for (int p = 0; p < c->n_pc; p++) {
                    if (c->sb[c->pc[p].off] == ' ') continue;
                    uint32_t off = 0;
                    if ((rc = sb_append(c, " ", 1, &off)) || (rc = sb_append(c, NULL, c->pc[p].len, &(uint32_t){0})))
                        return rc;
                    memcpy(c->sb + off + 1, c->sb + c->pc[p].off, c->pc[p].len);
                    c->pc[p] = (piece){off, c->pc[p].len + 1};
                }
            rc = pr->re ? split_regex(c, pr->re) : 0;
        } else { /* METASPACE */
            size_t rl = strlen(pr->replacement);
            for (int p = 0; p < c->n_pc; p++) {
                uint32_t off = c->pc[p].off, len = c->pc[p].len, spaces = 0, no = 0;
                for (uint32_t i = 0; i < len; i++) spaces += c->sb[off + i] == ' ';
                int prepend = pr->prepend_scheme == TOKENIZER_PREPEND_ALWAYS ||
                              (pr->prepend_scheme == TOKENIZER_PREPEND_FIRST && c->at_text_start && p == 0);
                size_t nl = len + spaces * (rl - 1) + (prepend ? rl : 0);
                if ((rc = sb_append(c, NULL, nl, &no))) return rc;
                char *d = c->sb + no, *s = c->sb + off;
                size_t w = 0;
                for (uint32_t i = 0; i < len; i++)
                    if (s[i] == ' ') memcpy(d + w, pr->replacement, rl), w += rl;
                    else d[w++] = s[i];
                if (prepend && !(w >= rl && !memcmp(d, pr->replacement, rl))) {
                    memmove(d + rl, d, w), memcpy(d, pr->replacement, rl), w += rl;
                }
                c->pc[p] = (piece){no, (uint32_t)w};
            }
            rc = pr->split ? split_literal(c, pr->replacement, rl, 1) : 0;
        }
        if (rc) return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- added tokens and segments */

/* Leftmost-longest added token in s[from..n): 1 with its span (after lstrip/rstrip) and index. */
static int next_added(const tokenizer_bpe *b, const tokenizer_trie *t, const unsigned char *s, size_t n, size_t from,
                      size_t floor, size_t *ms, size_t *me, size_t *scan_end, int *idx) {
    if (!t->n) return 0;
    for (size_t i = from; i < n; i++) {
        if (!t->first[s[i]]) continue;
        int32_t cur = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t ch = t->node[cur].child;
            while (ch >= 0 && t->node[ch].byte != s[j]) ch = t->node[ch].sibling;
            if (ch < 0) break;
            cur = ch;
            if (t->node[cur].added >= 0) best = t->node[cur].added, best_end = j + 1;
        }
        if (best < 0) continue;
        const tokenizer_added *a = &b->added[best];
        size_t st = i, en = best_end, cs;
        *scan_end = best_end;
        if (a->single_word && ((st > 0 && is_word_char(cp_before(s, st, &cs))) ||
                               (en < n && is_word_char(u8cp(s + en, u8len(s + en, n - en)))))) {
            i = best_end - 1; /* skipped; the search goes on after it */
            continue;
        }
        if (a->lstrip)
            while (st > floor && is_ws(cp_before(s, st, &cs))) st = cs;
        if (a->rstrip)
            while (en < n && is_ws(u8cp(s + en, u8len(s + en, n - en)))) en += u8len(s + en, n - en);
        *ms = st, *me = en, *idx = best;
        if (en > *scan_end) *scan_end = en;
        return 1;
    }
    return 0;
}

/* Normalized, pre-tokenized, BPE'd text without raw added tokens. */
static int encode_normalized_piece(enc_ctx *c, const char *s, size_t n) {
    c->sb_len = 0;
    c->n_pc = c->n_pc2 = 0;
    uint32_t off = 0;
    int rc = sb_append(c, s, n, &off);
    if (rc || (rc = grow((void **)&c->pc, &c->pc_cap, 1, sizeof(piece), c->err))) return rc;
    if (n) c->pc[c->n_pc++] = (piece){off, (uint32_t)n};
    if ((rc = pre_tokenize(c))) return rc;
    c->at_text_start = 0;
    for (int p = 0; p < c->n_pc; p++)
        if ((rc = bpe_word(c, c->sb + c->pc[p].off, c->pc[p].len))) return rc;
    return 0;
}

static int encode_segment(enc_ctx *c, const char *s, size_t n) {
    if (!n) return 0;
    tokenizer_bpe *b = c->b;
    char *norm = NULL;
    size_t nl = n;
    int rc = 0; /* read by the loop below also when there is no normaliser */
    if (b->n_norm) {
        if ((rc = tokenizer_bpe_normalize(b, s, n, &norm, &nl, c->err))) return rc;
        s = norm;
    }
    size_t at = 0, ms, me, se;
    int idx;
    while (!rc && next_added(b, &b->norm_trie, (const unsigned char *)s, nl, at, at, &ms, &me, &se, &idx)) {
        if (!(rc = encode_normalized_piece(c, s + at, ms - at))) rc = emit(c, b->added[idx].id);
        at = se;
    }
    if (!rc) rc = encode_normalized_piece(c, s + at, nl - at);
    free(norm);
    return rc;
}

static int bpe_encode_impl(const tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids, int *n,
                           int *cap, rlhf_error *err) {
    tokenizer_bpe *b = tok->impl;
    if (len > (size_t)(1 << 29)) return RLHF_FAIL(err, RLHF_EINVAL, "text too long to tokenize (%zu bytes)", len);
    enc_ctx c = {.tok = tok, .b = b, .ids = ids, .n = n, .cap = cap, .err = err, .at_text_start = 1};
    int rc = 0;
    if (!(c.md = pcre2_match_data_create(1, NULL))) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i = 0; add_special && i < b->n_prefix && !rc; i++) rc = emit(&c, b->prefix_ids[i]);
    size_t at = 0, ms, me, se;
    int idx;
    while (!rc && next_added(b, &b->raw_trie, (const unsigned char *)text, len, at, at, &ms, &me, &se, &idx)) {
        if (!(rc = encode_segment(&c, text + at, ms - at))) rc = emit(&c, b->added[idx].id);
        c.at_text_start = 0;
        at = se;
    }
    if (!rc) rc = encode_segment(&c, text + at, len - at);
    for (int i = 0; add_special && i < b->n_suffix && !rc; i++) rc = emit(&c, b->suffix_ids[i]);
    pcre2_match_data_free(c.md);
    free(c.sb), free(c.pc), free(c.pc2), free(c.sym), free(c.heap);
    return rc;
}

static int bpe_encode(const tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n, int *cap,
                      rlhf_error *err) {
    return bpe_encode_impl(tok, text, len, 0, ids, n, cap, err);
}

static size_t bpe_token_bytes(const tokenizer *tok, int32_t id, char *buf, size_t cap) {
    const tokenizer_bpe *b = tok->impl;
    if (id < 0 || id >= b->n_ids || !b->dec_off) return 0;
    size_t o = b->dec_off[id], k = b->dec_off[id + 1] - o;
    memcpy(buf, b->dec_pool + o, k < cap ? k : cap);
    return k;
}

static int bpe_strip_start(const tokenizer *tok) { return ((const tokenizer_bpe *)tok->impl)->strip_start; }

static const char *bpe_special_text(const tokenizer *tok, int32_t id) {
    const tokenizer_bpe *b = tok->impl;
    if (id < 0 || id >= b->n_ids || b->added_of_id[id] < 0) return NULL;
    const tokenizer_added *a = &b->added[b->added_of_id[id]];
    return a->special ? a->content : NULL;
}

static void bpe_destroy(void *impl) { tokenizer_bpe_free(impl); }

const tokenizer_ops tokenizer_bpe_ops = {
    .kind = "bpe",
    .encode = bpe_encode,
    .token_bytes = bpe_token_bytes,
    .destroy_impl = bpe_destroy,
    .encode_special = bpe_encode_impl,
    .strip_start = bpe_strip_start,
    .special_text = bpe_special_text,
};
