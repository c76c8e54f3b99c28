/* guided/automaton.c — the byte NFA builders, the live-state pass that detects an empty language, and
 * the lazily determinised DFA (guided/guided_int.h). */
#include <stdlib.h>
#include <string.h>

#include "guided/guided_int.h"

/* ---------------------------------------------------------------- NFA builders */

static int32_t new_state(gnfa *a, int kind, int lo, int hi) {
    if (a->overflow) return 0;
    if (a->n >= GUIDED_MAX_NFA_STATES) {
        a->overflow = 1;
        return 0;
    }
    if (a->n == a->cap) {
        int nc = a->cap ? a->cap * 2 : 1024;
        gnfa_state *p = realloc(a->st, (size_t)nc * sizeof *p);
        if (!p) {
            a->overflow = 1;
            return 0;
        }
        a->st = p;
        a->cap = nc;
    }
    a->st[a->n] = (gnfa_state){-1, -1, (uint8_t)kind, (uint8_t)lo, (uint8_t)hi};
    return a->n++;
}

void guided_nfa_link(gnfa *a, int32_t from, int32_t to) {
    if (a->overflow) return;
    gnfa_state *s = &a->st[from];
    if (s->out1 < 0) s->out1 = to;
    else s->out2 = to;
}

gfrag guided_nfa_empty(gnfa *a) {
    int32_t s = new_state(a, GN_EPS, 0, 0);
    return (gfrag){s, s};
}

gfrag guided_nfa_never(gnfa *a) {
    int32_t s = new_state(a, GN_EPS, 0, 0), e = new_state(a, GN_EPS, 0, 0);
    return (gfrag){s, e}; /* nothing leads from s to e */
}

gfrag guided_nfa_range(gnfa *a, int lo, int hi) {
    int32_t e = new_state(a, GN_EPS, 0, 0), r = new_state(a, GN_RANGE, lo, hi);
    guided_nfa_link(a, r, e);
    return (gfrag){r, e};
}

gfrag guided_nfa_cat(gnfa *a, gfrag x, gfrag y) {
    guided_nfa_link(a, x.end, y.start);
    return (gfrag){x.start, y.end};
}

gfrag guided_nfa_bytes(gnfa *a, const char *s, size_t n) {
    gfrag f = guided_nfa_empty(a);
    for (size_t i = 0; i < n; i++) f = guided_nfa_cat(a, f, guided_nfa_range(a, (uint8_t)s[i], (uint8_t)s[i]));
    return f;
}

gfrag guided_nfa_alt(gnfa *a, gfrag x, gfrag y) {
    int32_t s = new_state(a, GN_EPS, 0, 0), e = new_state(a, GN_EPS, 0, 0);
    guided_nfa_link(a, s, x.start);
    guided_nfa_link(a, s, y.start);
    guided_nfa_link(a, x.end, e);
    guided_nfa_link(a, y.end, e);
    return (gfrag){s, e};
}

gfrag guided_nfa_star(gnfa *a, gfrag x) {
    int32_t s = new_state(a, GN_EPS, 0, 0), e = new_state(a, GN_EPS, 0, 0);
    guided_nfa_link(a, s, x.start);
    guided_nfa_link(a, s, e);
    guided_nfa_link(a, x.end, s);
    return (gfrag){s, e};
}

gfrag guided_nfa_plus(gnfa *a, gfrag x) {
    int32_t l = new_state(a, GN_EPS, 0, 0), e = new_state(a, GN_EPS, 0, 0);
    guided_nfa_link(a, x.end, l);
    guided_nfa_link(a, l, x.start);
    guided_nfa_link(a, l, e);
    return (gfrag){x.start, e};
}

gfrag guided_nfa_opt(gnfa *a, gfrag x) {
    int32_t s = new_state(a, GN_EPS, 0, 0), e = new_state(a, GN_EPS, 0, 0);
    guided_nfa_link(a, s, x.start);
    guided_nfa_link(a, s, e);
    guided_nfa_link(a, x.end, e);
    return (gfrag){s, e};
}

static gfrag seq2(gnfa *a, int l0, int h0, int l1, int h1) {
    return guided_nfa_cat(a, guided_nfa_range(a, l0, h0), guided_nfa_range(a, l1, h1));
}

gfrag guided_nfa_utf8_nonascii(gnfa *a) {
    gfrag f = seq2(a, 0xC2, 0xDF, 0x80, 0xBF);
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xE0, 0xE0, 0xA0, 0xBF), guided_nfa_range(a, 0x80, 0xBF)));
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xE1, 0xEC, 0x80, 0xBF), guided_nfa_range(a, 0x80, 0xBF)));
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xED, 0xED, 0x80, 0x9F), guided_nfa_range(a, 0x80, 0xBF)));
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xEE, 0xEF, 0x80, 0xBF), guided_nfa_range(a, 0x80, 0xBF)));
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xF0, 0xF0, 0x90, 0xBF), seq2(a, 0x80, 0xBF, 0x80, 0xBF)));
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xF1, 0xF3, 0x80, 0xBF), seq2(a, 0x80, 0xBF, 0x80, 0xBF)));
    f = guided_nfa_alt(a, f, guided_nfa_cat(a, seq2(a, 0xF4, 0xF4, 0x80, 0x8F), seq2(a, 0x80, 0xBF, 0x80, 0xBF)));
    return f;
}

static int cs_has(const gcharset *cs, int c) { return (int)((cs->ascii[c >> 6] >> (c & 63)) & 1); }

gfrag guided_nfa_charset(gnfa *a, const gcharset *cs, int json_body) {
    gfrag f = guided_nfa_never(a);
    int c = json_body ? 0x20 : 0;
    while (c < 128) {
        if (!cs_has(cs, c) || (json_body && (c == '"' || c == '\\'))) {
            c++;
            continue;
        }
        int hi = c;
        while (hi + 1 < 128 && cs_has(cs, hi + 1) && !(json_body && (hi + 1 == '"' || hi + 1 == '\\'))) hi++;
        f = guided_nfa_alt(a, f, guided_nfa_range(a, c, hi));
        c = hi + 1;
    }
    if (json_body && cs_has(cs, '"')) f = guided_nfa_alt(a, f, guided_nfa_bytes(a, "\\\"", 2));
    if (json_body && cs_has(cs, '\\')) f = guided_nfa_alt(a, f, guided_nfa_bytes(a, "\\\\", 2));
    if (cs->nonascii) f = guided_nfa_alt(a, f, guided_nfa_utf8_nonascii(a));
    return f;
}

static gfrag hex(gnfa *a) {
    gfrag f = guided_nfa_range(a, '0', '9');
    f = guided_nfa_alt(a, f, guided_nfa_range(a, 'a', 'f'));
    return guided_nfa_alt(a, f, guided_nfa_range(a, 'A', 'F'));
}

gfrag guided_nfa_json_char(gnfa *a) {
    gfrag f = guided_nfa_range(a, 0x20, 0x21);
    f = guided_nfa_alt(a, f, guided_nfa_range(a, 0x23, 0x5B));
    f = guided_nfa_alt(a, f, guided_nfa_range(a, 0x5D, 0x7F));
    f = guided_nfa_alt(a, f, guided_nfa_utf8_nonascii(a));
    /* escapes; \u outside D800-DFFF so that every escape is one character of the decoded text */
    gfrag esc = guided_nfa_never(a);
    const char *simple = "\"\\/bfnrt";
    for (const char *p = simple; *p; p++) esc = guided_nfa_alt(a, esc, guided_nfa_range(a, (uint8_t)*p, (uint8_t)*p));
    gfrag first = guided_nfa_range(a, '0', '9');
    first = guided_nfa_alt(a, first, guided_nfa_range(a, 'a', 'c'));
    first = guided_nfa_alt(a, first, guided_nfa_range(a, 'A', 'C'));
    first = guided_nfa_alt(a, first, guided_nfa_range(a, 'e', 'f'));
    first = guided_nfa_alt(a, first, guided_nfa_range(a, 'E', 'F'));
    gfrag u_plain = guided_nfa_cat(a, first, guided_nfa_cat(a, hex(a), guided_nfa_cat(a, hex(a), hex(a))));
    gfrag d = guided_nfa_alt(a, guided_nfa_range(a, 'd', 'd'), guided_nfa_range(a, 'D', 'D'));
    gfrag u_d = guided_nfa_cat(a, d, guided_nfa_cat(a, guided_nfa_range(a, '0', '7'), guided_nfa_cat(a, hex(a), hex(a))));
    esc = guided_nfa_alt(a, esc, guided_nfa_cat(a, guided_nfa_range(a, 'u', 'u'), guided_nfa_alt(a, u_plain, u_d)));
    return guided_nfa_alt(a, f, guided_nfa_cat(a, guided_nfa_range(a, '\\', '\\'), esc));
}

/* ---------------------------------------------------------------- DFA */

static uint32_t set_hash(const int32_t *s, int n, int acc) {
    uint32_t h = 2166136261u ^ (uint32_t)acc;
    for (int i = 0; i < n; i++) {
        h ^= (uint32_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static int cmp_i32(const void *x, const void *y) {
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

/* Epsilon closure of the `n_seeds` states in g->tmp[0..n_seeds): the live byte-range states into g->tmp
 * (sorted), count returned, *acc = the accept state is in it. */
static int closure(guided_grammar *g, int n_seeds, int *acc) {
    const gnfa_state *st = g->nfa.st;
    g->gen++;
    int sp = 0, n = 0;
    *acc = 0;
    for (int i = 0; i < n_seeds; i++) {
        int32_t s = g->tmp[i];
        if (s >= 0 && g->live[s] && g->mark[s] != g->gen) {
            g->mark[s] = g->gen;
            g->stack[sp++] = s;
        }
    }
    while (sp) {
        int32_t s = g->stack[--sp];
        if (s == g->accept) *acc = 1;
        if (st[s].kind == GN_RANGE) {
            g->tmp[n++] = s; /* n <= number popped so far: never overwrites an unread seed */
            continue;
        }
        int32_t o[2] = {st[s].out1, st[s].out2};
        for (int k = 0; k < 2; k++)
            if (o[k] >= 0 && g->live[o[k]] && g->mark[o[k]] != g->gen) {
                g->mark[o[k]] = g->gen;
                g->stack[sp++] = o[k];
            }
    }
    qsort(g->tmp, (size_t)n, sizeof *g->tmp, cmp_i32);
    return n;
}

/* The DFA state of subset g->tmp[0..n) (found or added); -1 for the empty non-accepting subset (dead),
 * -3 past the bound. */
static int32_t intern(guided_grammar *g, int n, int acc) {
    if (n == 0 && !acc) return -1;
    uint32_t h = set_hash(g->tmp, n, acc);
    int mask = g->hcap - 1;
    for (int i = (int)(h & (uint32_t)mask);; i = (i + 1) & mask) {
        int32_t d = g->htab[i];
        if (d < 0) break;
        const gdfa_state *x = &g->ds[d];
        if (x->hash == h && x->n == n && x->accepting == acc && !memcmp(x->set, g->tmp, (size_t)n * sizeof(int32_t)))
            return d;
    }
    if (g->n_ds >= GUIDED_MAX_DFA_STATES) {
        g->overflow = 1;
        return -3;
    }
    if (g->n_ds == g->cap_ds) {
        int nc = g->cap_ds * 2;
        gdfa_state *p = realloc(g->ds, (size_t)nc * sizeof *p);
        if (!p) return -3;
        g->ds = p;
        int32_t *t = realloc(g->trans, (size_t)nc * 256 * sizeof(int32_t));
        if (!t) return -3;
        g->trans = t;
        g->cap_ds = nc;
    }
    if (2 * (g->n_ds + 1) > g->hcap) { /* grow and rehash */
        int nh = g->hcap * 2;
        int32_t *t = malloc((size_t)nh * sizeof(int32_t));
        if (!t) return -3;
        for (int i = 0; i < nh; i++) t[i] = -1;
        for (int d = 0; d < g->n_ds; d++) {
            int j = (int)(g->ds[d].hash & (uint32_t)(nh - 1));
            while (t[j] >= 0) j = (j + 1) & (nh - 1);
            t[j] = d;
        }
        free(g->htab);
        g->htab = t;
        g->hcap = nh;
    }
    gdfa_state *x = &g->ds[g->n_ds];
    memset(x, 0, sizeof *x);
    x->set = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!x->set) return -3;
    memcpy(x->set, g->tmp, (size_t)n * sizeof(int32_t));
    x->n = n;
    x->accepting = acc;
    x->hash = h;
    for (int b = 0; b < 256; b++) g->trans[(size_t)g->n_ds * 256 + b] = -2;
    int j = (int)(h & (uint32_t)(g->hcap - 1));
    while (g->htab[j] >= 0) j = (j + 1) & (g->hcap - 1);
    g->htab[j] = g->n_ds;
    return g->n_ds++;
}

int32_t guided_dfa_step(guided_grammar *g, int32_t d, uint8_t b) {
    int32_t t = g->trans[(size_t)d * 256 + b];
    if (t != -2) return t;
    const gdfa_state *x = &g->ds[d];
    int n = 0;
    for (int i = 0; i < x->n; i++) {
        const gnfa_state *s = &g->nfa.st[x->set[i]];
        if (b >= s->lo && b <= s->hi) g->tmp[n++] = s->out1;
    }
    int acc;
    n = closure(g, n, &acc);
    t = intern(g, n, acc);
    if (t == -3) return -3;
    for (int c = g->cls_lo[b]; c <= g->cls_hi[b]; c++) g->trans[(size_t)d * 256 + c] = t;
    return t;
}

int guided_grammar_from_nfa(guided_grammar **out, gnfa *a, gfrag f, const char *where, rlhf_error *err) {
    *out = NULL;
    if (a->overflow) {
        free(a->st);
        return rlhf_error_set(err, RLHF_EINVAL, where, "the automaton exceeds %d states (schema or regex too large)",
                              GUIDED_MAX_NFA_STATES);
    }
    guided_grammar *g = calloc(1, sizeof *g);
    if (!g) {
        free(a->st);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    g->nfa = *a;
    memset(a, 0, sizeof *a);
    g->accept = f.end;
    snprintf(g->desc, sizeof g->desc, "%s", where);
    int n = g->nfa.n;
    g->live = calloc((size_t)n, 1);
    g->mark = calloc((size_t)n, sizeof(uint32_t));
    g->stack = malloc((size_t)n * sizeof(int32_t));
    g->tmp = malloc((size_t)n * sizeof(int32_t));
    g->cap_ds = 64;
    g->hcap = 256;
    g->ds = malloc((size_t)g->cap_ds * sizeof *g->ds);
    g->trans = malloc((size_t)g->cap_ds * 256 * sizeof(int32_t));
    g->htab = malloc((size_t)g->hcap * sizeof(int32_t));
    /* reverse adjacency (CSR) for the live pass: which states reach `accept` */
    int32_t *deg = calloc((size_t)n + 1, sizeof(int32_t)), *radj = malloc((size_t)2 * n * sizeof(int32_t) + 4);
    if (!g->live || !g->mark || !g->stack || !g->tmp || !g->ds || !g->trans || !g->htab || !deg || !radj) {
        free(deg);
        free(radj);
        guided_grammar_destroy(&g);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (int i = 0; i < g->hcap; i++) g->htab[i] = -1;
    const gnfa_state *st = g->nfa.st;
    for (int s = 0; s < n; s++) {
        if (st[s].out1 >= 0) deg[st[s].out1 + 1]++;
        if (st[s].out2 >= 0) deg[st[s].out2 + 1]++;
    }
    for (int s = 0; s < n; s++) deg[s + 1] += deg[s];
    int32_t *fill = g->tmp; /* scratch: next free slot per state */
    for (int s = 0; s < n; s++) fill[s] = deg[s];
    for (int s = 0; s < n; s++) {
        if (st[s].out1 >= 0) radj[fill[st[s].out1]++] = s;
        if (st[s].out2 >= 0) radj[fill[st[s].out2]++] = s;
    }
    int sp = 0;
    g->live[g->accept] = 1;
    g->stack[sp++] = g->accept;
    while (sp) {
        int32_t s = g->stack[--sp];
        for (int k = deg[s]; k < deg[s + 1]; k++)
            if (!g->live[radj[k]]) {
                g->live[radj[k]] = 1;
                g->stack[sp++] = radj[k];
            }
    }
    free(deg);
    free(radj);
    if (!g->live[f.start]) {
        guided_grammar_destroy(&g);
        return rlhf_error_set(err, RLHF_EINVAL, where, "no string satisfies it (the language is empty)");
    }
    /* byte classes from the range boundaries */
    uint8_t cut[257] = {0};
    for (int s2 = 0; s2 < n; s2++)
        if (st[s2].kind == GN_RANGE) cut[st[s2].lo] = 1, cut[st[s2].hi + 1] = 1;
    for (int lo = 0; lo < 256;) {
        int hi = lo;
        while (hi + 1 < 256 && !cut[hi + 1]) hi++;
        for (int b = lo; b <= hi; b++) g->cls_lo[b] = (uint8_t)lo, g->cls_hi[b] = (uint8_t)hi;
        lo = hi + 1;
    }
    g->tmp[0] = f.start;
    int acc;
    int k = closure(g, 1, &acc);
    if (intern(g, k, acc) != 0) {
        guided_grammar_destroy(&g);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    *out = g;
    return 0;
}

void guided_grammar_destroy(guided_grammar **gp) {
    if (!gp || !*gp) return;
    guided_grammar *g = *gp;
    for (int d = 0; d < g->n_ds; d++) {
        free(g->ds[d].set);
        free(g->ds[d].mask);
    }
    free(g->ds);
    free(g->trans);
    free(g->htab);
    free(g->live);
    free(g->mark);
    free(g->stack);
    free(g->tmp);
    free(g->nfa.st);
    free(g);
    *gp = NULL;
}

int guided_grammar_matches(guided_grammar *g, const char *bytes, size_t len) {
    int32_t d = 0;
    for (size_t i = 0; i < len; i++) {
        d = guided_dfa_step(g, d, (uint8_t)bytes[i]);
        if (d < 0) return 0;
    }
    return g->ds[d].accepting;
}

int guided_grammar_dfa_states(const guided_grammar *g) { return g->n_ds; }
