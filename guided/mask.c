/* guided/mask.c — token masks: the vocabulary as a trie of byte strings (preorder arrays), one walk of
 * the trie per DFA state (a subtree is skipped as soon as its prefix leaves the language), the mask cached
 * in the DFA state; the per-sequence matcher and its sample_constraint; compiling specs, and the cache
 * of compiled grammars. */
#include <stdlib.h>
#include <string.h>

#include "guided/guided_int.h"

/* cached masks above this many bytes: further masks go to the matcher's own buffer, uncached */
#define GUIDED_MASK_CACHE_BYTES ((size_t)512 << 20)

/* ---------------------------------------------------------------- vocabulary trie */

static int cmp_tok(const void *x, const void *y, void *ctx) {
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    const guided_vocab *v = ctx;
    size_t la = v->len[a], lb = v->len[b], m = la < lb ? la : lb;
    int c = memcmp(v->bytes[a], v->bytes[b], m);
    if (c) return c;
    if (la != lb) return la < lb ? -1 : 1;
    return (a > b) - (a < b);
}

static void trie_free(gtrie *t) {
    free(t->node);
    free(t->end);
    free(t->tok_first);
    free(t->tok_n);
    free(t->ids);
    memset(t, 0, sizeof *t);
}

void guided_vocab_destroy(guided_vocab **vp) {
    if (!vp || !*vp) return;
    guided_vocab *v = *vp;
    if (v->bytes)
        for (int i = 0; i < v->vocab_size; i++) free(v->bytes[i]);
    free(v->bytes);
    free(v->len);
    trie_free(&v->full);
    for (int l = 0; l < GUIDED_LEVELS; l++) {
        trie_free(&v->rest[l]);
        free(v->plen[l]);
        free(v->pcum[l]);
    }
    free(v);
    *vp = NULL;
}

/* The trie of ids[0..n) (sorted by bytes; taken over by t). */
static int trie_build(gtrie *t, const guided_vocab *v, int32_t *ids, int n) {
    memset(t, 0, sizeof *t);
    t->ids = ids;
    size_t cap = 1;
    for (int i = 0; i < n; i++) cap += v->len[ids[i]]; /* at most one node per byte, plus the root */
    t->node = malloc(cap * sizeof *t->node);
    t->end = malloc(cap * sizeof *t->end);
    t->tok_first = malloc(cap * sizeof *t->tok_first);
    t->tok_n = calloc(cap, sizeof *t->tok_n);
    int32_t path[260]; /* node of each depth on the current path */
    if (!t->node || !t->end || !t->tok_first || !t->tok_n) return RLHF_ENOMEM;
    int nn = 1, pd = 0;
    t->node[0] = 0;
    t->tok_first[0] = -1;
    path[0] = 0;
    const char *prev = NULL;
    size_t prev_len = 0;
    for (int i = 0; i < n; i++) {
        const char *b = v->bytes[ids[i]];
        size_t len = v->len[ids[i]], lcp = 0;
        while (prev && lcp < len && lcp < prev_len && b[lcp] == prev[lcp]) lcp++;
        while (pd > (int)lcp) t->end[path[pd--]] = nn; /* close the nodes past the common prefix */
        for (size_t d = lcp; d < len; d++) {
            t->node[nn] = (uint8_t)b[d] | (uint32_t)(d + 1) << 8;
            t->tok_first[nn] = -1;
            path[++pd] = nn++;
        }
        int32_t node = path[pd];
        if (t->tok_first[node] < 0) t->tok_first[node] = i;
        t->tok_n[node]++;
        t->node[node] |= 1u << 31;
        prev = b;
        prev_len = len;
    }
    while (pd > 0) t->end[path[pd--]] = nn;
    t->end[0] = nn;
    t->n_nodes = nn;
    return 0;
}

/* Length of a non-ASCII UTF-8 character at p (valid, no surrogates or overlongs, as guided_nfa_utf8_nonascii),
 * or 0. */
static int utf8_char_len(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    int len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!len || (size_t)len > n) return 0;
    for (int k = 1; k < len; k++)
        if ((p[k] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;
    if (c == 0xED && p[1] > 0x9F) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;
    if (c == 0xF4 && p[1] > 0x8F) return 0;
    return len;
}

/* The token's length in its level's class (bytes for plain, characters for text), or -1 outside it. */
static int class_len(const uint8_t *b, size_t n, int level) {
    int chars = 0;
    for (size_t i = 0; i < n; chars++) {
        if (GUIDED_PLAIN(b[i])) {
            i++;
            continue;
        }
        int k = level == 1 ? utf8_char_len(b + i, n - i) : 0;
        if (!k) return -1;
        i += (size_t)k;
    }
    return chars;
}

int guided_vocab_create(guided_vocab **out, const tokenizer *tok, rlhf_error *err) {
    *out = NULL;
    if (tok->n_eos_ids < 1 && tok->eos_id < 0)
        return RLHF_FAIL(err, RLHF_EINVAL, "guided generation needs a tokenizer with an EOS id");
    guided_vocab *v = calloc(1, sizeof *v);
    if (!v) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int V = tok->vocab_size;
    v->vocab_size = V;
    v->bytes = calloc((size_t)V, sizeof *v->bytes);
    v->len = calloc((size_t)V, sizeof *v->len);
    int32_t *ids = malloc((size_t)V * sizeof *ids);
    if (!v->bytes || !v->len || !ids) {
        free(ids);
        goto oom;
    }
    if (tok->n_eos_ids > 0)
        for (int i = 0; i < tok->n_eos_ids && v->n_eos < 8; i++) v->eos[v->n_eos++] = tok->eos_ids[i];
    else
        v->eos[v->n_eos++] = tok->eos_id;
    int n_tok = 0;
    char buf[256];
    for (int id = 0; id < V; id++) {
        int special = 0;
        for (int k = 0; k < v->n_eos; k++) special |= v->eos[k] == id;
        if (special || (tok->ops->special_text && tok->ops->special_text(tok, id))) continue;
        size_t n = tok->ops->token_bytes(tok, id, buf, sizeof buf);
        if (n == 0 || n > sizeof buf) continue; /* special, unused, or longer than any walk goes */
        if (!(v->bytes[id] = malloc(n))) {
            free(ids);
            goto oom;
        }
        memcpy(v->bytes[id], buf, n);
        v->len[id] = (uint16_t)n;
        ids[n_tok++] = id;
        if ((int)n > v->max_depth) v->max_depth = (int)n;
        for (int l = 0; l < GUIDED_LEVELS; l++) {
            int cl = class_len((const uint8_t *)buf, n, l);
            if (cl > v->lmax[l]) v->lmax[l] = cl;
        }
    }
    qsort_r(ids, (size_t)n_tok, sizeof *ids, cmp_tok, v);
    size_t words = (size_t)(V + 63) / 64;
    int rc = 0;
    for (int l = 0; l < GUIDED_LEVELS && !rc; l++) {
        int32_t *rest = malloc((size_t)(n_tok ? n_tok : 1) * sizeof *rest);
        v->plen[l] = calloc((size_t)(v->lmax[l] + 1) * words, sizeof(uint64_t));
        v->pcum[l] = calloc((size_t)(v->lmax[l] + 1) * words, sizeof(uint64_t));
        if (!rest || !v->plen[l] || !v->pcum[l]) {
            free(rest);
            rc = RLHF_ENOMEM;
            break;
        }
        int n_rest = 0;
        for (int i = 0; i < n_tok; i++) {
            int32_t id = ids[i];
            int cl = class_len((const uint8_t *)v->bytes[id], v->len[id], l);
            if (cl > 0) v->plen[l][(size_t)cl * words + (size_t)(id >> 6)] |= 1ull << (id & 63);
            else rest[n_rest++] = id; /* stays sorted */
        }
        for (int L = 1; L <= v->lmax[l]; L++)
            for (size_t w = 0; w < words; w++)
                v->pcum[l][(size_t)L * words + w] = v->pcum[l][(size_t)(L - 1) * words + w] | v->plen[l][(size_t)L * words + w];
        rc = trie_build(&v->rest[l], v, rest, n_rest);
    }
    if (!rc) rc = trie_build(&v->full, v, ids, n_tok);
    else free(ids);
    if (rc) goto oom;
    *out = v;
    return 0;
oom:
    guided_vocab_destroy(&v);
    return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for the vocabulary");
}

/* ---------------------------------------------------------------- masks */

static int overflow_error(guided_grammar *g, rlhf_error *err) {
    return rlhf_error_set(err, RLHF_EINVAL, g->desc, "the automaton exceeds %d DFA states (too large)",
                          GUIDED_MAX_DFA_STATES);
}

/* Sets in bits the tokens of trie t whose bytes keep DFA state d live: one preorder walk (a dead step
 * skips the node's subtree). */
static int walk_trie(guided_grammar *g, const gtrie *t, int32_t d, uint64_t *bits, rlhf_error *err) {
    int32_t stack[260];
    stack[0] = d;
    const uint32_t *node = t->node;
    for (int i = 1; i < t->n_nodes;) {
        uint32_t x = node[i];
        int dep = (int)((x >> 8) & 0xFFFF), b = (int)(x & 0xFF);
        int32_t nd = g->trans[(size_t)stack[dep - 1] * 256 + b]; /* computed already: the common case */
        if (nd == -2) nd = guided_dfa_step(g, stack[dep - 1], (uint8_t)b);
        if (nd < 0) {
            if (nd == -3) return overflow_error(g, err);
            i = t->end[i];
            continue;
        }
        stack[dep] = nd;
        if (x >> 31)
            for (int k = 0; k < t->tok_n[i]; k++) {
                int32_t id = t->ids[t->tok_first[i] + k];
                bits[id >> 6] |= 1ull << (id & 63);
            }
        i++;
    }
    return 0;
}

static int32_t step(guided_grammar *g, int32_t c, int b) {
    int32_t nd = g->trans[(size_t)c * 256 + b];
    return nd == -2 ? guided_dfa_step(g, c, (uint8_t)b) : nd;
}

/* Whether every byte sequence of ranges r[k..n) (each [lo, hi]) leads from c to u; byte classes make one
 * representative per interval enough. -3 on the DFA bound. */
static int all_reach(guided_grammar *g, int32_t c, const uint8_t (*r)[2], int k, int n, int32_t u) {
    if (k == n) return c == u;
    if (c < 0) return u == -1; /* dead stays dead */
    for (int b = r[k][0]; b <= r[k][1]; b = g->cls_hi[b] + 1) {
        int32_t nd = step(g, c, b);
        if (nd == -3) return -3;
        int ok = all_reach(g, nd, r, k + 1, n, u);
        if (ok != 1) return ok;
        if (g->cls_hi[b] == 0xFF) break;
    }
    return 1;
}

/* The uniform successor of c on its level's class of characters: a state, -1 (all dead), -4 when not
 * uniform, -3 on the DFA bound. */
static int32_t uniform_next(guided_grammar *g, int32_t c, int level) {
    int32_t u = -4;
    for (int b = 0x20; b < 0x7f; b++) {
        if (!GUIDED_PLAIN(b)) continue;
        int32_t nd = step(g, c, b);
        if (nd == -3) return -3;
        if (u == -4) u = nd;
        else if (nd != u) return -4;
    }
    if (level == 0) return u;
    static const uint8_t seqs[8][4][2] = {
        {{0xC2, 0xDF}, {0x80, 0xBF}},
        {{0xE0, 0xE0}, {0xA0, 0xBF}, {0x80, 0xBF}},
        {{0xE1, 0xEC}, {0x80, 0xBF}, {0x80, 0xBF}},
        {{0xED, 0xED}, {0x80, 0x9F}, {0x80, 0xBF}},
        {{0xEE, 0xEF}, {0x80, 0xBF}, {0x80, 0xBF}},
        {{0xF0, 0xF0}, {0x90, 0xBF}, {0x80, 0xBF}, {0x80, 0xBF}},
        {{0xF1, 0xF3}, {0x80, 0xBF}, {0x80, 0xBF}, {0x80, 0xBF}},
        {{0xF4, 0xF4}, {0x80, 0x8F}, {0x80, 0xBF}, {0x80, 0xBF}},
    };
    static const int lens[8] = {2, 3, 3, 3, 3, 4, 4, 4};
    for (int q = 0; q < 8; q++) {
        int ok = all_reach(g, c, (const uint8_t (*)[2])seqs[q], 0, lens[q], u);
        if (ok == -3) return -3;
        if (ok != 1) return -4;
    }
    return u;
}

/* The chain of d at a level: live[L] = 1 when L characters of the class from d end in a live state.
 * 1 when every state on the way is uniform, 0 when not (a walk of the full trie is needed), negative on
 * the DFA bound. */
static int class_chain(guided_grammar *g, int32_t d, int level, int max, uint8_t *live, rlhf_error *err) {
    int32_t c = d;
    memset(live, 0, (size_t)max + 1);
    for (int L = 1; L <= max; L++) {
        int32_t u = uniform_next(g, c, level);
        if (u == -3) return overflow_error(g, err);
        if (u == -4) return 0;
        if (u < 0) return 1; /* dead: no longer token of the class lives */
        live[L] = 1;
        c = u;
    }
    return 1;
}

/* The mask of DFA state d into bits (V bits, zeroed here). */
static int walk_mask(guided_grammar *g, const guided_vocab *v, int32_t d, uint64_t *bits, int *n_allowed,
                     int32_t *only, rlhf_error *err) {
    size_t words = (size_t)(v->vocab_size + 63) / 64;
    memset(bits, 0, words * sizeof(uint64_t));
    uint8_t live[260];
    int rc = 0, level = GUIDED_LEVELS;
    while (!g->no_plain_shortcut && level-- > 0) {
        rc = class_chain(g, d, level, v->lmax[level], live, err);
        if (rc < 0) return rc;
        if (rc == 1) break;
    }
    if (rc == 1) { /* the class's tokens by length, the others by a walk of their own trie */
        int m = 0, max = v->lmax[level];
        while (m < max && live[m + 1]) m++;
        const uint64_t *cum = v->pcum[level] + (size_t)m * words;
        for (size_t w = 0; w < words; w++) bits[w] = cum[w];
        for (int L = m + 2; L <= max; L++)
            if (live[L])
                for (size_t w = 0; w < words; w++) bits[w] |= v->plen[level][(size_t)L * words + w];
        rc = walk_trie(g, &v->rest[level], d, bits, err);
    } else {
        rc = walk_trie(g, &v->full, d, bits, err);
    }
    if (rc) return rc;
    if (g->ds[d].accepting)
        for (int k = 0; k < v->n_eos; k++) {
            int32_t id = v->eos[k];
            if (id >= 0 && id < v->vocab_size) bits[id >> 6] |= 1ull << (id & 63);
        }
    int n = 0;
    int32_t last = -1;
    for (size_t w = 0; w < words; w++)
        if (bits[w]) {
            n += __builtin_popcountll(bits[w]);
            last = (int32_t)(w * 64 + 63 - (size_t)__builtin_clzll(bits[w]));
        }
    *n_allowed = n;
    *only = n == 1 ? last : -1;
    return 0;
}

int guided_matcher_mask(guided_matcher *m, const uint64_t **bits, int *n_allowed, int32_t *only, rlhf_error *err) {
    guided_grammar *g = m->g;
    if (m->state < 0) return rlhf_error_set(err, RLHF_ESTATE, g->desc, "the sequence already ended (EOS)");
    gdfa_state *x = &g->ds[m->state];
    if (!x->mask) {
        size_t words = (size_t)(m->v->vocab_size + 63) / 64;
        uint64_t *b = NULL;
        if (g->mask_bytes + words * 8 <= GUIDED_MASK_CACHE_BYTES) b = malloc(words * 8);
        int cached = b != NULL;
        if (!b) {
            if (!m->own && !(m->own = malloc(words * 8))) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            b = m->own;
        }
        int n;
        int32_t one;
        int rc = walk_mask(g, m->v, m->state, b, &n, &one, err);
        x = &g->ds[m->state]; /* the walk may have grown the state array */
        if (rc) {
            if (cached) free(b);
            return rc;
        }
        if (n == 0) {
            if (cached) free(b);
            return rlhf_error_set(err, RLHF_EINVAL, g->desc, "no token of the vocabulary continues the output here");
        }
        if (!cached) {
            *bits = b, *n_allowed = n, *only = one;
            return 0;
        }
        x->mask = b;
        x->n_allowed = n;
        x->only = one;
        g->mask_bytes += words * 8;
    }
    *bits = x->mask;
    *n_allowed = x->n_allowed;
    *only = x->only;
    return 0;
}

int guided_matcher_accept(guided_matcher *m, int32_t id, rlhf_error *err) {
    guided_grammar *g = m->g;
    const guided_vocab *v = m->v;
    if (m->state < 0) return rlhf_error_set(err, RLHF_ESTATE, g->desc, "token after the end of the sequence");
    for (int k = 0; k < v->n_eos; k++)
        if (id == v->eos[k]) {
            if (!g->ds[m->state].accepting)
                return rlhf_error_set(err, RLHF_EINVAL, g->desc, "EOS before the output is complete");
            m->state = -1;
            return 0;
        }
    if (id < 0 || id >= v->vocab_size || !v->bytes[id])
        return rlhf_error_set(err, RLHF_EINVAL, g->desc, "token %d is not allowed here", id);
    int32_t d = m->state;
    for (int i = 0; i < v->len[id] && d >= 0; i++) d = guided_dfa_step(g, d, (uint8_t)v->bytes[id][i]);
    if (d < 0) return rlhf_error_set(err, RLHF_EINVAL, g->desc, "token %d is not allowed here", id);
    m->state = d;
    return 0;
}

int guided_matcher_accepting(const guided_matcher *m) { return m->state < 0 || m->g->ds[m->state].accepting; }

static int hook_mask(void *ctx, const uint64_t **bits, int *n, int32_t *only, rlhf_error *err) {
    return guided_matcher_mask(ctx, bits, n, only, err);
}
static int hook_accept(void *ctx, int32_t id, rlhf_error *err) { return guided_matcher_accept(ctx, id, err); }

int guided_matcher_create(guided_matcher **out, guided_grammar *g, const guided_vocab *v, rlhf_error *err) {
    *out = NULL;
    if (g->vocab && g->vocab != v)
        return rlhf_error_set(err, RLHF_EINVAL, g->desc, "the grammar serves another vocabulary already");
    guided_matcher *m = calloc(1, sizeof *m);
    if (!m) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    g->vocab = v;
    m->g = g;
    m->v = v;
    m->hook = (sample_constraint){m, hook_mask, hook_accept};
    *out = m;
    return 0;
}

void guided_matcher_reset(guided_matcher *m) { m->state = 0; }

void guided_matcher_destroy(guided_matcher **mp) {
    if (!mp || !*mp) return;
    free((*mp)->own);
    free(*mp);
    *mp = NULL;
}

const sample_constraint *guided_matcher_constraint(guided_matcher *m) { return &m->hook; }

/* ---------------------------------------------------------------- compiling */

int guided_compile_schema(guided_grammar **out, const json_t *schema, rlhf_error *err) {
    gnfa a = {0};
    gfrag f;
    int rc = guided_schema_build(&a, schema, &f, err);
    if (rc) {
        free(a.st);
        return rc;
    }
    return guided_grammar_from_nfa(out, &a, f, "$", err);
}

int guided_compile_regex(guided_grammar **out, const char *regex, rlhf_error *err) {
    gnfa a = {0};
    gfrag f;
    int rc = guided_regex_build(&a, regex, strlen(regex), 0, "regex", &f, err);
    if (rc) {
        free(a.st);
        return rc;
    }
    return guided_grammar_from_nfa(out, &a, f, "regex", err);
}

int guided_compile_json_object(guided_grammar **out, rlhf_error *err) {
    gnfa a = {0};
    gfrag f = guided_schema_any_object(&a);
    return guided_grammar_from_nfa(out, &a, f, "json_object", err);
}

int guided_compile_spec(guided_grammar **out, const json_t *spec, const char *where, rlhf_error *err) {
    *out = NULL;
    if (!json_is_object(spec) || json_object_size(spec) != 1)
        return rlhf_error_set(err, RLHF_EINVAL, where,
                              "must be an object with one key: \"schema\", \"regex\" or \"json_object\"");
    const json_t *x;
    int rc;
    char w[256];
    if ((x = json_object_get(spec, "schema"))) {
        rc = guided_compile_schema(out, x, err);
        if (rc && strncmp(err->where, "$", 1) == 0) { /* the JSON path inside the spec */
            snprintf(w, sizeof w, "%s.schema%s", where, err->where + 1);
            snprintf(err->where, sizeof err->where, "%s", w);
        }
        return rc;
    }
    if ((x = json_object_get(spec, "regex"))) {
        if (!json_is_string(x)) return rlhf_error_set(err, RLHF_EINVAL, where, "regex must be a string");
        rc = guided_compile_regex(out, json_string_value(x), err);
        if (rc && !strcmp(err->where, "regex")) {
            snprintf(w, sizeof w, "%s.regex", where);
            snprintf(err->where, sizeof err->where, "%s", w);
        }
        return rc;
    }
    if ((x = json_object_get(spec, "json_object"))) {
        if (!json_is_true(x)) return rlhf_error_set(err, RLHF_EINVAL, where, "json_object must be true");
        return guided_compile_json_object(out, err);
    }
    return rlhf_error_set(err, RLHF_EINVAL, where, "must be an object with one key: \"schema\", \"regex\" or \"json_object\"");
}

/* ---------------------------------------------------------------- cache */

typedef struct centry {
    char *key;
    guided_grammar *g;
    int refs;
    unsigned long used;
} centry;

struct guided_cache {
    centry *e;
    int n, cap;
    unsigned long clock;
};

int guided_cache_create(guided_cache **out, int capacity, rlhf_error *err) {
    *out = NULL;
    if (capacity < 1) return RLHF_FAIL(err, RLHF_EINVAL, "cache capacity must be >= 1");
    guided_cache *c = calloc(1, sizeof *c);
    if (!c || !(c->e = calloc((size_t)capacity, sizeof *c->e))) {
        free(c);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    c->cap = capacity;
    *out = c;
    return 0;
}

void guided_cache_destroy(guided_cache **cp) {
    if (!cp || !*cp) return;
    guided_cache *c = *cp;
    for (int i = 0; i < c->n; i++) {
        free(c->e[i].key);
        guided_grammar_destroy(&c->e[i].g);
    }
    free(c->e);
    free(c);
    *cp = NULL;
}

int guided_cache_get(guided_cache *c, const json_t *spec, const char *where, guided_grammar **g, int *hit,
                     rlhf_error *err) {
    *g = NULL;
    if (hit) *hit = 0;
    char *key = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (!key) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->e[i].key, key)) {
            free(key);
            c->e[i].refs++;
            c->e[i].used = ++c->clock;
            *g = c->e[i].g;
            if (hit) *hit = 1;
            return 0;
        }
    int slot = c->n;
    if (c->n == c->cap) { /* the least recently used grammar no matcher holds */
        slot = -1;
        for (int i = 0; i < c->n; i++)
            if (c->e[i].refs == 0 && (slot < 0 || c->e[i].used < c->e[slot].used)) slot = i;
        if (slot < 0) {
            free(key);
            return rlhf_error_set(err, RLHF_ESTATE, where, "every one of the %d cached grammars is in use", c->cap);
        }
    }
    guided_grammar *ng;
    int rc = guided_compile_spec(&ng, spec, where, err);
    if (rc) {
        free(key);
        return rc;
    }
    if (slot < c->n) {
        free(c->e[slot].key);
        guided_grammar_destroy(&c->e[slot].g);
    } else {
        c->n++;
    }
    c->e[slot] = (centry){key, ng, 1, ++c->clock};
    *g = ng;
    return 0;
}

void guided_cache_release(guided_cache *c, guided_grammar *g) {
    for (int i = 0; i < c->n; i++)
        if (c->e[i].g == g && c->e[i].refs > 0) c->e[i].refs--;
}
