/* model/tokenizer_bpe.c — loading a Hugging Face BPE tokenizer (tokenizer.json, tokenizer_config.json,
 * generation_config.json) into a tokenizer_bpe, refusing what it does not implement by file and key.
 * Encoding and decoding are in tokenizer_bpe_encode.c. */
#include "model/tokenizer_bpe_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- small containers */

uint64_t tokenizer_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xC2B2AE3D27D4EB4Full;
        h ^= h >> 29;
        s += 8, n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x165667B19E3779F9ull;
    h ^= h >> 32;
    return h;
}

static int strmap_grow(tokenizer_strmap *m) {
    uint32_t size = m->mask ? 2 * (m->mask + 1) : 1024;
    int32_t *slot = malloc(size * sizeof *slot);
    if (!slot) return -1;
    memset(slot, 0xFF, size * sizeof *slot);
    for (int i = 0; i < m->n; i++) {
        uint32_t h = (uint32_t)tokenizer_hash_bytes(m->pool + m->key_off[i], m->key_len[i]) & (size - 1);
        while (slot[h] >= 0) h = (h + 1) & (size - 1);
        slot[h] = i;
    }
    free(m->slot);
    m->slot = slot;
    m->mask = size - 1;
    return 0;
}

int32_t tokenizer_strmap_get(const tokenizer_strmap *m, const char *key, size_t len) {
    if (!m->mask) return -1;
    uint32_t h = (uint32_t)tokenizer_hash_bytes(key, len) & m->mask;
    for (int32_t e; (e = m->slot[h]) >= 0; h = (h + 1) & m->mask)
        if (m->key_len[e] == len && !memcmp(m->pool + m->key_off[e], key, len)) return m->val[e];
    return -1;
}

int tokenizer_strmap_put(tokenizer_strmap *m, const char *key, size_t len, int32_t val) {
    if (tokenizer_strmap_get(m, key, len) >= 0) return 1;
    if (2 * (uint32_t)(m->n + 1) > m->mask + 1 && strmap_grow(m)) return -1;
    if (m->n == m->cap) {
        int nc = m->cap ? 2 * m->cap : 1024;
        uint32_t *o = realloc(m->key_off, nc * sizeof *o);
        if (o) m->key_off = o;
        uint32_t *l = realloc(m->key_len, nc * sizeof *l);
        if (l) m->key_len = l;
        int32_t *v = realloc(m->val, nc * sizeof *v);
        if (v) m->val = v;
        if (!o || !l || !v) return -1;
        m->cap = nc;
    }
    if (m->pool_len + len > m->pool_cap) {
        size_t nc = m->pool_cap ? 2 * m->pool_cap : 1 << 16;
        while (nc < m->pool_len + len) nc *= 2;
        char *p = realloc(m->pool, nc);
        if (!p) return -1;
        m->pool = p;
        m->pool_cap = nc;
    }
    memcpy(m->pool + m->pool_len, key, len);
    m->key_off[m->n] = (uint32_t)m->pool_len;
    m->key_len[m->n] = (uint32_t)len;
    m->val[m->n] = val;
    m->pool_len += len;
    uint32_t h = (uint32_t)tokenizer_hash_bytes(key, len) & m->mask;
    while (m->slot[h] >= 0) h = (h + 1) & m->mask;
    m->slot[h] = m->n++;
    return 0;
}

void tokenizer_strmap_free(tokenizer_strmap *m) {
    free(m->slot), free(m->key_off), free(m->key_len), free(m->val), free(m->pool);
    memset(m, 0, sizeof *m);
}

int tokenizer_trie_add(tokenizer_trie *t, const char *s, size_t len, int32_t added) {
    if (!t->n) { /* root */
        if (!(t->node = malloc((t->cap = 64) * sizeof *t->node))) return -1;
        t->node[t->n++] = (tokenizer_trie_node){-1, -1, -1, 0};
    }
    int32_t cur = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int32_t ch = t->node[cur].child;
        while (ch >= 0 && t->node[ch].byte != c) ch = t->node[ch].sibling;
        if (ch < 0) {
            if (t->n == t->cap) {
                tokenizer_trie_node *p = realloc(t->node, 2 * t->cap * sizeof *p);
                if (!p) return -1;
                t->node = p, t->cap *= 2;
            }
            ch = t->n++;
            t->node[ch] = (tokenizer_trie_node){-1, t->node[cur].child, -1, c};
            t->node[cur].child = ch;
        }
        cur = ch;
    }
    if (len) t->first[(unsigned char)s[0]] = 1;
    if (t->node[cur].added < 0) t->node[cur].added = added; /* same content twice: the first wins */
    return 0;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100.. in
 * byte order, so every byte is a visible character in vocab files. */
static int printable_byte(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); }

uint32_t tokenizer_byte_to_cp(int b) {
    if (printable_byte(b)) return (uint32_t)b;
    int k = 0;
    for (int i = 0; i < b; i++) k += !printable_byte(i);
    return 256u + (uint32_t)k;
}

int tokenizer_cp_to_byte(uint32_t c) {
    if (c < 256) return printable_byte((int)c) ? (int)c : -1;
    if (c >= 256 + 68) return -1;
    int k = (int)(c - 256);
    for (int b = 0; b < 256; b++)
        if (!printable_byte(b) && k-- == 0) return b;
    return -1;
}

/* One UTF-8 character at s[0..n): its code point and length (an invalid byte: itself, length 1). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!k || k > n) return *cp = 0xFFFFFFFFu, 1;
    uint32_t v = k == 1 ? c : c & (0x7F >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return *cp = 0xFFFFFFFFu, 1;
        v = v << 6 | (s[i] & 0x3F);
    }
    *cp = v;
    return k;
}

/* Vocab string -> raw bytes through the inverse byte-level map; -1 when a character is outside it. */
static int bytelevel_unmap(const char *s, size_t n, char *out, size_t *out_len) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += utf8_next((const unsigned char *)s + i, n - i, &cp);
        int b = tokenizer_cp_to_byte(cp);
        if (b < 0) return -1;
        out[o++] = (char)b;
    }
    *out_len = o;
    return 0;
}

/* ---------------------------------------------------------------- loading */

typedef struct loader {
    const char *file; /* for messages */
    rlhf_error *err;
    tokenizer_bpe *b;
    json_t *vocab_json;
    /* decoder: 1 byte-level inverse map; 0 SentencePiece pieces (replaces, <0xNN>) */
    int dec_bytelevel, dec_byte_fallback, dec_seen;
    char *dec_from[4], *dec_to[4];
    int n_dec_replace;
} loader;

#define BAD(L, code, ...) RLHF_FAIL((L)->err, code, __VA_ARGS__)

static const char *type_of(const json_t *o) {
    const json_t *t = json_object_get(o, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

static int get_bool(loader *L, const json_t *o, const char *key, const char *where, int dflt, int *out) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return *out = dflt, 0;
    if (!json_is_boolean(v)) return BAD(L, RLHF_ECORRUPT, "%s: %s.%s must be true or false", L->file, where, key);
    *out = json_is_true(v);
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n), p[n] = 0;
    return p;
}

/* {"String": s} pattern of Replace / Split; a Regex pattern goes to *regex when allowed. */
static int get_pattern(loader *L, const json_t *o, const char *where, const char **lit, size_t *lit_len,
                       const char **regex) {
    const json_t *p = json_object_get(o, "pattern"), *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    if (json_is_string(s)) return *lit = json_string_value(s), *lit_len = json_string_length(s), 0;
    if (json_is_string(r) && regex) return *regex = json_string_value(r), 0;
    return BAD(L, RLHF_EUNSUPPORTED, "%s: %s.pattern: only %s patterns are supported", L->file, where,
               regex ? "String and Regex" : "String");
}

static int compile_regex(loader *L, const char *pat, size_t len, const char *where, pcre2_code **out) {
    int ec;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return BAD(L, RLHF_ECORRUPT, "%s: %s: regex does not compile at offset %zu: %s", L->file, where, (size_t)off,
                   (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT (unsupported CPU) matching still works */
    *out = re;
    return 0;
}

static int add_norm(loader *L, const json_t *n, const char *where) {
    const char *t = type_of(n);
    tokenizer_bpe *b = L->b;
    if (t && !strcmp(t, "Sequence")) {
        const json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr)) return BAD(L, RLHF_ECORRUPT, "%s: %s.normalizers must be an array", L->file, where);
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x) {
            int rc = add_norm(L, x, where);
            if (rc) return rc;
        }
        return 0;
    }
    tokenizer_norm nm = {0};
    if (t && !strcmp(t, "NFC")) nm.kind = TOKENIZER_NORM_NFC;
    else if (t && !strcmp(t, "Prepend")) {
        const json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p)) return BAD(L, RLHF_ECORRUPT, "%s: %s.prepend must be a string", L->file, where);
        nm.kind = TOKENIZER_NORM_PREPEND;
        nm.alen = json_string_length(p);
        nm.a = dup_n(json_string_value(p), nm.alen);
    } else if (t && !strcmp(t, "Replace")) {
        const char *lit;
        size_t ll;
        int rc = get_pattern(L, n, where, &lit, &ll, NULL);
        if (rc) return rc;
        const json_t *c = json_object_get(n, "content");
        if (!json_is_string(c) || !ll)
            return BAD(L, RLHF_ECORRUPT, "%s: %s: Replace needs a non-empty pattern and a content string", L->file, where);
        nm.kind = TOKENIZER_NORM_REPLACE;
        nm.a = dup_n(lit, nm.alen = ll);
        nm.b = dup_n(json_string_value(c), nm.blen = json_string_length(c));
    } else
        return BAD(L, RLHF_EUNSUPPORTED, "%s: %s.type \"%s\" is not supported (NFC, Prepend, Replace, Sequence)",
                   L->file, where, t ? t : "(missing)");
    tokenizer_norm *p = realloc(b->norm, (b->n_norm + 1) * sizeof *p);
    if (!p || !nm.a != (nm.kind == TOKENIZER_NORM_NFC)) {
        free(nm.a), free(nm.b);
        if (p) b->norm = p;
        return BAD(L, RLHF_ENOMEM, "out of memory");
    }
    b->norm = p;
    b->norm[b->n_norm++] = nm;
    return 0;
}

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_pre(loader *L, const json_t *n, const char *where) {
    const char *t = type_of(n);
    tokenizer_bpe *b = L->b;
    int rc;
    if (t && !strcmp(t, "Sequence")) {
        const json_t *arr = json_object_get(n, "pretokenizers");
        if (!json_is_array(arr)) return BAD(L, RLHF_ECORRUPT, "%s: %s.pretokenizers must be an array", L->file, where);
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x) if ((rc = add_pre(L, x, where))) return rc;
        return 0;
    }
    tokenizer_pre pr = {0};
    if (t && !strcmp(t, "Split")) {
        const json_t *beh = json_object_get(n, "behavior");
        int invert = 0;
        if ((rc = get_bool(L, n, "invert", where, 0, &invert))) return rc;
        if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") || invert)
            return BAD(L, RLHF_EUNSUPPORTED, "%s: %s.behavior: only Split with \"Isolated\" and invert false is supported",
                       L->file, where);
        const char *lit = NULL, *re = NULL;
        size_t ll = 0;
        if ((rc = get_pattern(L, n, where, &lit, &ll, &re))) return rc;
        pr.kind = TOKENIZER_PRE_SPLIT;
        if (re) {
            if ((rc = compile_regex(L, re, PCRE2_ZERO_TERMINATED, where, &pr.re))) return rc;
        } else {
            if (!ll) return BAD(L, RLHF_ECORRUPT, "%s: %s.pattern: empty String", L->file, where);
            pr.literal = dup_n(lit, pr.literal_len = ll);
        }
    } else if (t && !strcmp(t, "ByteLevel")) {
        int use_regex = 1;
        pr.kind = TOKENIZER_PRE_BYTELEVEL;
        if ((rc = get_bool(L, n, "add_prefix_space", where, 1, &pr.add_prefix_space)) ||
            (rc = get_bool(L, n, "use_regex", where, 1, &use_regex)))
            return rc;
        if (use_regex && (rc = compile_regex(L, GPT2_PATTERN, PCRE2_ZERO_TERMINATED, where, &pr.re))) return rc;
        b->byte_level = 1;
    } else if (t && !strcmp(t, "Metaspace")) {
        const json_t *r = json_object_get(n, "replacement"), *ps = json_object_get(n, "prepend_scheme");
        if (!json_is_string(r) || json_string_length(r) == 0 || json_string_length(r) >= sizeof pr.replacement)
            return BAD(L, RLHF_ECORRUPT, "%s: %s.replacement must be one character", L->file, where);
        pr.kind = TOKENIZER_PRE_METASPACE;
        strcpy(pr.replacement, json_string_value(r));
        int aps = 1;
        if ((rc = get_bool(L, n, "add_prefix_space", where, 1, &aps)) || (rc = get_bool(L, n, "split", where, 1, &pr.split)))
            return rc;
        pr.prepend_scheme = aps ? TOKENIZER_PREPEND_ALWAYS : TOKENIZER_PREPEND_NEVER;
        if (json_is_string(ps)) {
            const char *s = json_string_value(ps);
            pr.prepend_scheme = !strcmp(s, "always") ? TOKENIZER_PREPEND_ALWAYS
                                : !strcmp(s, "first") ? TOKENIZER_PREPEND_FIRST
                                : !strcmp(s, "never") ? TOKENIZER_PREPEND_NEVER
                                                      : -1;
            if (pr.prepend_scheme < 0)
                return BAD(L, RLHF_ECORRUPT, "%s: %s.prepend_scheme \"%s\" is not always/first/never", L->file, where, s);
        }
    } else
        return BAD(L, RLHF_EUNSUPPORTED,
                   "%s: %s.type \"%s\" is not supported (Split, ByteLevel, Metaspace, Sequence)", L->file, where,
                   t ? t : "(missing)");
    tokenizer_pre *p = realloc(b->pre, (b->n_pre + 1) * sizeof *p);
    if (!p) {
        pcre2_code_free(pr.re), free(pr.literal);
        return BAD(L, RLHF_ENOMEM, "out of memory");
    }
    b->pre = p;
    b->pre[b->n_pre++] = pr;
    return 0;
}

static int add_decoder(loader *L, const json_t *n) {
    const char *t = type_of(n), *where = "decoder";
    if (t && !strcmp(t, "Sequence")) {
        const json_t *arr = json_object_get(n, "decoders");
        if (!json_is_array(arr)) return BAD(L, RLHF_ECORRUPT, "%s: decoder.decoders must be an array", L->file);
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x) {
            int rc = add_decoder(L, x);
            if (rc) return rc;
        }
        return 0;
    }
    L->dec_seen = 1;
    if (t && !strcmp(t, "ByteLevel")) L->dec_bytelevel = 1;
    else if (t && !strcmp(t, "ByteFallback")) L->dec_byte_fallback = 1;
    else if (t && !strcmp(t, "Fuse")) { /* decoding always fuses */
    } else if (t && !strcmp(t, "Replace")) {
        const char *lit;
        size_t ll;
        int rc = get_pattern(L, n, where, &lit, &ll, NULL);
        if (rc) return rc;
        const json_t *c = json_object_get(n, "content");
        if (!json_is_string(c) || !ll) return BAD(L, RLHF_ECORRUPT, "%s: decoder: Replace needs pattern and content", L->file);
        if (L->n_dec_replace == 4) return BAD(L, RLHF_EUNSUPPORTED, "%s: decoder: more than 4 Replace steps", L->file);
        L->dec_from[L->n_dec_replace] = dup_n(lit, ll);
        L->dec_to[L->n_dec_replace++] = dup_n(json_string_value(c), json_string_length(c));
    } else if (t && !strcmp(t, "Strip")) {
        const json_t *c = json_object_get(n, "content"), *st = json_object_get(n, "start"), *sp = json_object_get(n, "stop");
        if (!json_is_string(c) || strcmp(json_string_value(c), " ") || !json_is_integer(st) || json_integer_value(st) < 0 ||
            json_integer_value(st) > 8 || (sp && json_integer_value(sp) != 0))
            return BAD(L, RLHF_EUNSUPPORTED, "%s: decoder: only Strip of up to 8 leading \" \" (stop 0) is supported",
                       L->file);
        L->b->strip_start += (int)json_integer_value(st);
    } else if (t && !strcmp(t, "Metaspace")) {
        const json_t *r = json_object_get(n, "replacement"), *ps = json_object_get(n, "prepend_scheme");
        if (!json_is_string(r) || L->n_dec_replace == 4)
            return BAD(L, RLHF_ECORRUPT, "%s: decoder.replacement must be a string", L->file);
        L->dec_from[L->n_dec_replace] = dup_n(json_string_value(r), json_string_length(r));
        L->dec_to[L->n_dec_replace++] = dup_n(" ", 1);
        int aps = 1;
        int rc = get_bool(L, n, "add_prefix_space", where, 1, &aps);
        if (rc) return rc;
        if (json_is_string(ps)) aps = strcmp(json_string_value(ps), "never") != 0;
        L->b->strip_start += aps;
    } else
        return BAD(L, RLHF_EUNSUPPORTED,
                   "%s: decoder.type \"%s\" is not supported (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, "
                   "Sequence)",
                   L->file, t ? t : "(missing)");
    return 0;
}

/* The vocab id of a token named by content: an added token first, then the vocab. -1 when absent. */
static int32_t token_id(const tokenizer_bpe *b, const char *s, size_t n) {
    for (int i = 0; i < b->n_added; i++)
        if (b->added[i].len == n && !memcmp(b->added[i].content, s, n)) return b->added[i].id;
    if (!b->byte_level) return tokenizer_strmap_get(&b->vocab, s, n);
    char *raw = malloc(n + 1);
    size_t rl;
    int32_t id = raw && !bytelevel_unmap(s, n, raw, &rl) ? tokenizer_strmap_get(&b->vocab, raw, rl) : -1;
    free(raw);
    return id;
}

static int template_side(loader *L, const json_t *tp, int32_t **ids, int *n_ids, const json_t *items, size_t from,
                         size_t to) {
    const json_t *specials = json_object_get(tp, "special_tokens");
    for (size_t i = from; i < to; i++) {
        const json_t *st = json_object_get(json_object_get(json_array_get(items, i), "SpecialToken"), "id");
        const json_t *ent = json_object_get(specials, json_string_value(st));
        const json_t *arr = json_object_get(ent, "ids");
        if (!json_is_string(st) || !json_is_array(arr))
            return BAD(L, RLHF_ECORRUPT, "%s: post_processor.single[%zu]: special token not in special_tokens", L->file, i);
        size_t k;
        json_t *v;
        json_array_foreach(arr, k, v) {
            int32_t *p = realloc(*ids, (*n_ids + 1) * sizeof *p);
            if (!p) return BAD(L, RLHF_ENOMEM, "out of memory");
            *ids = p;
            p[(*n_ids)++] = (int32_t)json_integer_value(v);
        }
    }
    return 0;
}

/* Returns 1 when a TemplateProcessing was found (and applied to prefix/suffix ids). */
static int add_post(loader *L, const json_t *n, int *templ) {
    const char *t = type_of(n);
    if (!n || json_is_null(n)) return 0;
    if (t && !strcmp(t, "Sequence")) {
        const json_t *arr = json_object_get(n, "processors");
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x) {
            int rc = add_post(L, x, templ);
            if (rc) return rc;
        }
        return 0;
    }
    if (t && !strcmp(t, "ByteLevel")) return 0; /* offsets only */
    if (!t || strcmp(t, "TemplateProcessing"))
        return BAD(L, RLHF_EUNSUPPORTED,
                   "%s: post_processor.type \"%s\" is not supported (TemplateProcessing, ByteLevel, Sequence)", L->file,
                   t ? t : "(missing)");
    const json_t *single = json_object_get(n, "single");
    size_t seq = (size_t)-1, i;
    json_t *x;
    json_array_foreach(single, i, x) if (json_object_get(x, "Sequence")) seq = i;
    if (seq == (size_t)-1) return BAD(L, RLHF_ECORRUPT, "%s: post_processor.single has no Sequence", L->file);
    int rc = template_side(L, n, &L->b->prefix_ids, &L->b->n_prefix, single, 0, seq);
    if (!rc) rc = template_side(L, n, &L->b->suffix_ids, &L->b->n_suffix, single, seq + 1, json_array_size(single));
    *templ = 1;
    return rc;
}

/* Token named by tokenizer_config.json key (string or {"content": ...}); -1 when null/absent. */
static int config_token(loader *L, const json_t *cfg, const char *key, int32_t *id) {
    const json_t *v = json_object_get(cfg, key);
    *id = -1;
    if (!v || json_is_null(v)) return 0;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return BAD(L, RLHF_ECORRUPT, "%s: %s must be a string or {\"content\": ...}", L->file, key);
    *id = token_id(L->b, json_string_value(v), json_string_length(v));
    if (*id < 0) return BAD(L, RLHF_ECORRUPT, "%s: %s \"%s\" is not in the vocabulary", L->file, key, json_string_value(v));
    return 0;
}

static json_t *load_json(loader *L, const char *path, int required, size_t flags) {
    json_error_t je;
    if (!required && access(path, F_OK) != 0) return NULL;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL | flags, &je);
    if (!j) BAD(L, RLHF_EIO, "%s: %s (line %d)", path, je.text, je.line);
    else if (!json_is_object(j)) {
        json_decref(j);
        j = NULL;
        BAD(L, RLHF_ECORRUPT, "%s: not a JSON object", path);
    }
    return j;
}

/* The decoded bytes of a token string (vocab or added content) into out (cap >= 4 * n + 1). */
static size_t decode_piece(const loader *L, const char *s, size_t n, char *out) {
    size_t o = 0;
    if (L->dec_bytelevel) {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t k = utf8_next((const unsigned char *)s + i, n - i, &cp);
            int b = tokenizer_cp_to_byte(cp);
            if (b >= 0) out[o++] = (char)b;
            else memcpy(out + o, s + i, k), o += k; /* outside the alphabet: the character itself */
            i += k;
        }
        return o;
    }
    unsigned v;
    char tail;
    if (L->dec_byte_fallback && n == 6 && sscanf(s, "<0x%2X%c", &v, &tail) == 2 && tail == '>' && s[3] != '-' && s[3] != '+')
        return out[0] = (char)v, 1;
    memcpy(out, s, n);
    o = n;
    for (int r = 0; r < L->n_dec_replace; r++) { /* in order, each over the whole piece */
        size_t fl = strlen(L->dec_from[r]), tl = strlen(L->dec_to[r]), w = 0;
        char *tmp = out + 2 * n + 2; /* scratch half of out; tl <= fl for the supported replaces */
        for (size_t i = 0; i < o;) {
            if (i + fl <= o && !memcmp(out + i, L->dec_from[r], fl)) memcpy(tmp + w, L->dec_to[r], tl), w += tl, i += fl;
            else tmp[w++] = out[i++];
        }
        memcpy(out, tmp, w);
        o = w;
    }
    return o;
}

static int build_decoder_table(loader *L, tokenizer *t) {
    tokenizer_bpe *b = L->b;
    int V = t->vocab_size;
    for (int r = 0; r < L->n_dec_replace; r++)
        if (strlen(L->dec_to[r]) > strlen(L->dec_from[r]))
            return BAD(L, RLHF_EUNSUPPORTED, "%s: decoder: a Replace that lengthens text is not supported", L->file);
    const char **str = calloc(V, sizeof *str);
    size_t *len = calloc(V, sizeof *len), total = 0, longest = 0;
    b->dec_off = malloc((V + 1) * sizeof *b->dec_off);
    if (!str || !len || !b->dec_off) goto oom;
    const char *k;
    json_t *v;
    json_object_foreach(L->vocab_json, k, v) {
        int32_t id = (int32_t)json_integer_value(v);
        str[id] = k, len[id] = strlen(k);
    }
    /* special: nothing; others: their content, normalized when they match normalized text (Hugging Face
     * decodes them as that: Llama-2's "World" -> "▁World" -> " World") */
    char **norm_content = calloc(b->n_added + 1, sizeof *norm_content);
    if (!norm_content) goto oom;
    for (int i = 0; i < b->n_added; i++) {
        tokenizer_added *a = &b->added[i];
        str[a->id] = a->special ? NULL : a->content;
        len[a->id] = a->special ? 0 : a->len;
        if (!a->special && a->normalized && b->n_norm) {
            int rc = tokenizer_bpe_normalize(b, a->content, a->len, &norm_content[i], &len[a->id], L->err);
            if (rc) {
                for (int k = 0; k < i; k++) free(norm_content[k]);
                free(norm_content), free(str), free(len);
                return rc;
            }
            str[a->id] = norm_content[i];
        }
    }
    for (int i = 0; i < V; i++) total += len[i], longest = len[i] > longest ? len[i] : longest;
    b->dec_pool = malloc(total + 1);
    char *scratch = malloc(8 * longest + 16);
    if (!b->dec_pool || !scratch) {
        free(scratch);
        for (int i = 0; i < b->n_added; i++) free(norm_content[i]);
        free(norm_content);
        goto oom;
    }
    size_t off = 0;
    for (int i = 0; i < V; i++) {
        b->dec_off[i] = (uint32_t)off;
        if (!str[i]) continue;
        size_t m = decode_piece(L, str[i], len[i], scratch);
        memcpy(b->dec_pool + off, scratch, m);
        off += m;
    }
    b->dec_off[V] = (uint32_t)off;
    for (int i = 0; i < b->n_added; i++) free(norm_content[i]);
    free(norm_content), free(scratch), free(str), free(len);
    return 0;
oom:
    free(str), free(len);
    return BAD(L, RLHF_ENOMEM, "out of memory for the decoding table");
}

static int merge_put(tokenizer_bpe *b, uint64_t key, int32_t rank, int32_t nid) {
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & b->merge_mask;
    while (b->merge_key[h] != UINT64_MAX && b->merge_key[h] != key) h = (h + 1) & b->merge_mask;
    if (b->merge_key[h] == UINT64_MAX) b->n_merges++;
    b->merge_key[h] = key, b->merge_rank[h] = rank, b->merge_new[h] = nid; /* a repeated pair: the later wins, as in HF */
    return 0;
}

static int load_merges(loader *L, const json_t *merges) {
    tokenizer_bpe *b = L->b;
    size_t n = json_array_size(merges), i;
    uint32_t size = 1024;
    while (size < 2 * n + 2) size *= 2;
    b->merge_mask = size - 1;
    b->merge_key = malloc(size * sizeof *b->merge_key);
    b->merge_rank = malloc(size * sizeof *b->merge_rank);
    b->merge_new = malloc(size * sizeof *b->merge_new);
    char *buf = NULL;
    size_t buf_cap = 0;
    if (!b->merge_key || !b->merge_rank || !b->merge_new) return BAD(L, RLHF_ENOMEM, "out of memory for merges");
    memset(b->merge_key, 0xFF, size * sizeof *b->merge_key);
    json_t *m;
    json_array_foreach(merges, i, m) {
        const char *part[2];
        size_t plen[2];
        if (json_is_string(m)) {
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(buf);
                return BAD(L, RLHF_ECORRUPT, "%s: model.merges[%zu] \"%s\" is not two tokens separated by one space",
                           L->file, i, s);
            }
            part[0] = s, plen[0] = (size_t)(sp - s), part[1] = sp + 1, plen[1] = strlen(sp + 1);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            for (int k = 0; k < 2; k++)
                part[k] = json_string_value(json_array_get(m, k)), plen[k] = json_string_length(json_array_get(m, k));
        } else {
            free(buf);
            return BAD(L, RLHF_ECORRUPT, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", L->file, i);
        }
        if (buf_cap < plen[0] + plen[1] + 1) {
            free(buf);
            if (!(buf = malloc(buf_cap = 2 * (plen[0] + plen[1] + 16)))) return BAD(L, RLHF_ENOMEM, "out of memory");
        }
        int32_t id[3];
        size_t kl[2];
        for (int k = 0; k < 2; k++) {
            char *dst = buf + (k ? kl[0] : 0);
            if (b->byte_level) {
                if (bytelevel_unmap(part[k], plen[k], dst, &kl[k])) kl[k] = (size_t)-1;
            } else
                memcpy(dst, part[k], kl[k] = plen[k]);
            id[k] = kl[k] == (size_t)-1 ? -1 : tokenizer_strmap_get(&b->vocab, dst, kl[k]);
            if (id[k] < 0) {
                free(buf);
                return BAD(L, RLHF_ECORRUPT, "%s: model.merges[%zu] uses \"%.*s\", which is not in model.vocab", L->file, i,
                           (int)plen[k], part[k]);
            }
        }
        id[2] = tokenizer_strmap_get(&b->vocab, buf, kl[0] + kl[1]);
        if (id[2] < 0) {
            free(buf);
            return BAD(L, RLHF_ECORRUPT, "%s: model.merges[%zu] makes \"%.*s%.*s\", which is not in model.vocab", L->file,
                       i, (int)plen[0], part[0], (int)plen[1], part[1]);
        }
        merge_put(b, (uint64_t)(uint32_t)id[0] << 32 | (uint32_t)id[1], (int32_t)i, id[2]);
    }
    free(buf);
    return 0;
}

static int load_model(loader *L, tokenizer *t, const json_t *model) {
    tokenizer_bpe *b = L->b;
    const char *ty = type_of(model);
    if (!json_is_object(model)) return BAD(L, RLHF_ECORRUPT, "%s: model is missing", L->file);
    if (ty ? strcmp(ty, "BPE") != 0 : !json_object_get(model, "merges"))
        return BAD(L, RLHF_EUNSUPPORTED, "%s: model.type \"%s\" is not supported (only BPE)", L->file, ty ? ty : "(missing)");
    const json_t *drop = json_object_get(model, "dropout");
    if (drop && !json_is_null(drop) && json_number_value(drop) != 0)
        return BAD(L, RLHF_EUNSUPPORTED, "%s: model.dropout is not supported (it must be null)", L->file);
    const char *affix[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const json_t *v = json_object_get(model, affix[k]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return BAD(L, RLHF_EUNSUPPORTED, "%s: model.%s is not supported (it must be null or \"\")", L->file, affix[k]);
    }
    int rc;
    if ((rc = get_bool(L, model, "byte_fallback", "model", 0, &b->byte_fallback)) ||
        (rc = get_bool(L, model, "fuse_unk", "model", 0, &b->fuse_unk)) ||
        (rc = get_bool(L, model, "ignore_merges", "model", 0, &b->ignore_merges)))
        return rc;
    const json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return BAD(L, RLHF_ECORRUPT, "%s: model.vocab must be an object and model.merges an array", L->file);
    L->vocab_json = (json_t *)vocab;
    /* ids: 0..max, each once */
    int64_t max_id = -1;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 28))
            return BAD(L, RLHF_ECORRUPT, "%s: model.vocab[\"%s\"] is not an id in 0..2^28", L->file, k);
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    t->vocab_size = (int)max_id + 1;
    unsigned char *seen = calloc((size_t)max_id + 1, 1);
    char *raw = NULL;
    size_t raw_cap = 0;
    if (!seen) return BAD(L, RLHF_ENOMEM, "out of memory");
    json_object_foreach((json_t *)vocab, k, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t kl = strlen(k);
        if (seen[id]++) {
            rc = BAD(L, RLHF_ECORRUPT, "%s: model.vocab: id %d is given to more than one token (\"%s\" is one)", L->file,
                     id, k);
            break;
        }
        const char *key = k;
        if (b->byte_level) {
            if (raw_cap < kl + 1 && !(raw = realloc(raw, raw_cap = 2 * kl + 16))) {
                rc = BAD(L, RLHF_ENOMEM, "out of memory");
                break;
            }
            if (bytelevel_unmap(k, kl, raw, &kl)) {
                rc = BAD(L, RLHF_ECORRUPT, "%s: model.vocab[\"%s\"] has a character outside the ByteLevel alphabet",
                         L->file, k);
                break;
            }
            key = raw;
        }
        int p = tokenizer_strmap_put(&b->vocab, key, kl, id);
        if (p) {
            rc = p < 0 ? BAD(L, RLHF_ENOMEM, "out of memory")
                       : BAD(L, RLHF_ECORRUPT, "%s: model.vocab[\"%s\"] duplicates another token's bytes", L->file, k);
            break;
        }
    }
    free(seen), free(raw);
    if (rc) return rc;
    if ((rc = load_merges(L, merges))) return rc;
    if (b->byte_level)
        for (int c = 0; c < 256; c++) {
            char ch = (char)c;
            if ((b->byte_id[c] = tokenizer_strmap_get(&b->vocab, &ch, 1)) < 0)
                return BAD(L, RLHF_ECORRUPT, "%s: model.vocab lacks the ByteLevel token of byte 0x%02X", L->file, c);
        }
    for (int c = 0; c < 256; c++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", c);
        b->fallback_id[c] = b->byte_level ? -1 : tokenizer_strmap_get(&b->vocab, name, 6);
        if (b->byte_fallback && b->fallback_id[c] < 0)
            return BAD(L, RLHF_ECORRUPT, "%s: model.byte_fallback is set but model.vocab lacks %s", L->file, name);
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        b->ascii_id[c] = tokenizer_strmap_get(&b->vocab, &ch, 1);
    }
    const json_t *unk = json_object_get(model, "unk_token");
    b->unk_id = -1;
    if (json_is_string(unk) && (b->unk_id = tokenizer_strmap_get(&b->vocab, json_string_value(unk), json_string_length(unk))) < 0)
        return BAD(L, RLHF_ECORRUPT, "%s: model.unk_token \"%s\" is not in model.vocab", L->file, json_string_value(unk));
    return 0;
}

static int load_added(loader *L, tokenizer *t, const json_t *arr) {
    tokenizer_bpe *b = L->b;
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return BAD(L, RLHF_ECORRUPT, "%s: added_tokens must be an array", L->file);
    size_t n = json_array_size(arr), i;
    if (!(b->added = calloc(n + 1, sizeof *b->added))) return BAD(L, RLHF_ENOMEM, "out of memory");
    json_t *a;
    int64_t n_vocab = (int64_t)json_object_size(L->vocab_json), max_added = -1;
    json_array_foreach(arr, i, a) {
        const json_t *id = json_object_get(a, "id"), *c = json_object_get(a, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 28) || !json_is_string(c) ||
            !json_string_length(c))
            return BAD(L, RLHF_ECORRUPT, "%s: added_tokens[%zu] needs an id in 0..2^28 and a non-empty content", L->file, i);
        tokenizer_added *x = &b->added[b->n_added++];
        x->id = (int32_t)json_integer_value(id);
        x->content = dup_n(json_string_value(c), x->len = json_string_length(c));
        if (!x->content) return BAD(L, RLHF_ENOMEM, "out of memory");
        /* Hugging Face gives an added token the vocab's id when its content is a vocab entry (whatever
         * "id" says), else the next id after the vocab and the added tokens so far; a file whose "id"
         * disagrees with the latter would not encode as it says, so it is refused. */
        const json_t *in_vocab = json_object_get(L->vocab_json, x->content);
        int32_t hf_id = (int32_t)(max_added >= n_vocab ? max_added + 1 : n_vocab);
        if (json_is_integer(in_vocab)) x->id = (int32_t)json_integer_value(in_vocab);
        else if (x->id != hf_id)
            return BAD(L, RLHF_ECORRUPT, "%s: added_tokens[%zu] \"%s\" has id %d, but Hugging Face assigns it %d", L->file,
                       i, x->content, x->id, hf_id);
        if (x->id > max_added) max_added = x->id;
        int f[5], rc;
        const char *names[5] = {"special", "lstrip", "rstrip", "normalized", "single_word"};
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        for (int k = 0; k < 5; k++)
            if ((rc = get_bool(L, a, names[k], where, k == 3 ? !json_is_true(json_object_get(a, "special")) : 0, &f[k])))
                return rc;
        x->special = (unsigned char)f[0], x->lstrip = (unsigned char)f[1], x->rstrip = (unsigned char)f[2];
        x->normalized = (unsigned char)f[3], x->single_word = (unsigned char)f[4];
        if (x->id >= t->vocab_size) t->vocab_size = x->id + 1;
        for (int j = 0; j < b->n_added - 1; j++)
            if (b->added[j].id == x->id)
                return BAD(L, RLHF_ECORRUPT, "%s: added_tokens: id %d is given to both \"%s\" and \"%s\"", L->file, x->id,
                           b->added[j].content, x->content);
    }
    return 0;
}

static int build_tries(loader *L, tokenizer *t) {
    tokenizer_bpe *b = L->b;
    if (!(b->added_of_id = malloc((size_t)t->vocab_size * sizeof *b->added_of_id))) return BAD(L, RLHF_ENOMEM, "out of memory");
    memset(b->added_of_id, 0xFF, (size_t)t->vocab_size * sizeof *b->added_of_id);
    for (int i = 0; i < b->n_added; i++) {
        tokenizer_added *a = &b->added[i];
        b->added_of_id[a->id] = i;
        int rc;
        if (a->normalized && b->n_norm) { /* matched in normalized text, by its normalized content (as HF) */
            char *nc;
            size_t nl;
            if ((rc = tokenizer_bpe_normalize(b, a->content, a->len, &nc, &nl, L->err))) return rc;
            rc = nl ? tokenizer_trie_add(&b->norm_trie, nc, nl, i) : 0;
            free(nc);
        } else
            rc = tokenizer_trie_add(&b->raw_trie, a->content, a->len, i);
        if (rc) return BAD(L, RLHF_ENOMEM, "out of memory");
    }
    return 0;
}

static int load_all(loader *L, tokenizer *t, const char *dir) {
    char path[4096];
    tokenizer_bpe *b = L->b;
    int rc;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    L->file = path;
    json_t *root = load_json(L, path, 1, 0);
    if (!root) return L->err ? L->err->code : RLHF_EIO;
    const json_t *x;
    if ((x = json_object_get(root, "normalizer")) && !json_is_null(x) && (rc = add_norm(L, x, "normalizer"))) goto out;
    if ((x = json_object_get(root, "pre_tokenizer")) && !json_is_null(x) && (rc = add_pre(L, x, "pre_tokenizer"))) goto out;
    if (!(x = json_object_get(root, "decoder")) || json_is_null(x)) {
        rc = BAD(L, RLHF_EUNSUPPORTED, "%s: decoder is missing (decoding needs one)", path);
        goto out;
    }
    if ((rc = add_decoder(L, x))) goto out;
    if ((rc = load_model(L, t, json_object_get(root, "model")))) goto out;
    if ((rc = load_added(L, t, json_object_get(root, "added_tokens")))) goto out;
    int templ = 0;
    if ((rc = add_post(L, json_object_get(root, "post_processor"), &templ))) goto out;
    for (int i = 0; i < b->n_prefix + b->n_suffix; i++) {
        int32_t id = i < b->n_prefix ? b->prefix_ids[i] : b->suffix_ids[i - b->n_prefix];
        if (id < 0 || id >= t->vocab_size) {
            rc = BAD(L, RLHF_ECORRUPT, "%s: post_processor.special_tokens: id %d is outside the vocabulary", path, id);
            goto out;
        }
    }
    if ((rc = build_tries(L, t)) || (rc = build_decoder_table(L, t))) goto out;

    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *cfg = load_json(L, path, 1, JSON_DECODE_INT_AS_REAL); /* model_max_length can be 1e30 */
    if (!cfg) {
        rc = L->err ? L->err->code : RLHF_EIO;
        goto out;
    }
    int32_t unk_cfg;
    int add_bos = 0, add_eos = 0;
    if (!(rc = config_token(L, cfg, "bos_token", &t->bos_id)) && !(rc = config_token(L, cfg, "eos_token", &t->eos_id)) &&
        !(rc = config_token(L, cfg, "pad_token", &t->pad_id)) && !(rc = config_token(L, cfg, "unk_token", &unk_cfg)) &&
        !(rc = get_bool(L, cfg, "add_bos_token", "tokenizer_config", 0, &add_bos)))
        rc = get_bool(L, cfg, "add_eos_token", "tokenizer_config", 0, &add_eos);
    if (!rc && !templ) { /* no template in tokenizer.json: the config's flags say what add_special adds */
        if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0))
            rc = BAD(L, RLHF_ECORRUPT, "%s: add_%s_token is true but %s_token is not set", path, add_bos ? "bos" : "eos",
                     add_bos ? "bos" : "eos");
        else {
            if (add_bos && (b->prefix_ids = malloc(sizeof(int32_t)))) b->prefix_ids[b->n_prefix++] = t->bos_id;
            if (add_eos && (b->suffix_ids = malloc(sizeof(int32_t)))) b->suffix_ids[b->n_suffix++] = t->eos_id;
        }
    }
    json_decref(cfg);
    if (rc) goto out;
    if (t->eos_id >= 0) t->eos_ids[t->n_eos_ids++] = t->eos_id;

    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    json_t *gen = load_json(L, path, 0, 0);
    if (!gen && access(path, F_OK) == 0) {
        rc = L->err ? L->err->code : RLHF_EIO;
        goto out;
    }
    if (gen) {
        json_t *e = json_object_get(gen, "eos_token_id"), *one = json_array();
        if (json_is_integer(e)) json_array_append(one, e), e = one;
        size_t i;
        json_t *v;
        if (e && !json_is_array(e)) rc = BAD(L, RLHF_ECORRUPT, "%s: eos_token_id must be an id or a list of ids", path);
        json_array_foreach(e, i, v) {
            int32_t id = (int32_t)json_integer_value(v), dup = 0;
            if (!json_is_integer(v) || id < 0 || id >= t->vocab_size) {
                rc = BAD(L, RLHF_ECORRUPT, "%s: eos_token_id[%zu] is not an id of the vocabulary", path, i);
                break;
            }
            for (int k = 0; k < t->n_eos_ids; k++) dup |= t->eos_ids[k] == id;
            if (dup) continue;
            if (t->n_eos_ids == TOKENIZER_MAX_EOS) {
                rc = BAD(L, RLHF_EUNSUPPORTED, "%s: eos_token_id: more than %d ids", path, TOKENIZER_MAX_EOS);
                break;
            }
            t->eos_ids[t->n_eos_ids++] = id;
        }
        if (t->eos_id < 0 && t->n_eos_ids) t->eos_id = t->eos_ids[0];
        json_decref(one);
        json_decref(gen);
    }
out:
    json_decref(root);
    for (int r = 0; r < L->n_dec_replace; r++) free(L->dec_from[r]), free(L->dec_to[r]);
    return rc;
}

void tokenizer_bpe_free(tokenizer_bpe *b) {
    if (!b) return;
    tokenizer_strmap_free(&b->vocab);
    free(b->merge_key), free(b->merge_rank), free(b->merge_new);
    for (int i = 0; i < b->n_added; i++) free(b->added[i].content);
    free(b->added), free(b->raw_trie.node), free(b->norm_trie.node), free(b->added_of_id);
    for (int i = 0; i < b->n_norm; i++) free(b->norm[i].a), free(b->norm[i].b);
    free(b->norm);
    for (int i = 0; i < b->n_pre; i++) pcre2_code_free(b->pre[i].re), free(b->pre[i].literal);
    free(b->pre);
    free(b->prefix_ids), free(b->suffix_ids), free(b->dec_off), free(b->dec_pool);
    pthread_mutex_destroy(&b->cache_lock);
    free(b->cache), free(b->cache_keys), free(b->cache_ids);
    free(b);
}

int tokenizer_create_hf(tokenizer **out, const char *dir, rlhf_error *err) {
    *out = NULL;
    tokenizer *t = calloc(1, sizeof *t);
    tokenizer_bpe *b = calloc(1, sizeof *b);
    if (!t || !b) {
        free(t), free(b);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&b->cache_lock, NULL);
    t->ops = &tokenizer_bpe_ops;
    t->impl = b;
    t->bos_id = t->eos_id = t->pad_id = -1;
    rlhf_error local = {0};
    loader L = {.err = err ? err : &local, .b = b};
    int rc = load_all(&L, t, dir);
    if (rc) {
        tokenizer_destroy(&t);
        return rc;
    }
    b->n_ids = t->vocab_size; /* a caller may widen vocab_size to the model's; tables stop here */
    *out = t;
    return 0;
}
