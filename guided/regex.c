/* guided/regex.c — the regular-expression front end: a recursive-descent parser into a small tree, then
 * the tree into NFA fragments (a bounded repetition emits its operand as many times as it says, so the
 * tree, not the text, is walked again). Syntax in guided/guided.h. */
#include <stdlib.h>
#include <string.h>

#include "guided/guided_int.h"

enum { RX_SET, RX_BYTES, RX_CAT, RX_ALT, RX_REP, RX_EMPTY };

typedef struct rx {
    int kind;
    gcharset cs;          /* RX_SET */
    char bytes[4];        /* RX_BYTES: one literal (UTF-8) character */
    int nbytes;
    struct rx **kids;     /* RX_CAT, RX_ALT */
    int nkids;
    struct rx *sub;       /* RX_REP */
    int min, max;         /* max -1: unbounded */
} rx;

typedef struct rxp {
    const char *s;
    size_t n, i;
    int depth;
    const char *where;
    rlhf_error *err;
    int failed;
} rxp;

static void rx_free(rx *r) {
    if (!r) return;
    for (int i = 0; i < r->nkids; i++) rx_free(r->kids[i]);
    free(r->kids);
    rx_free(r->sub);
    free(r);
}

static rx *fail(rxp *p, const char *msg) {
    if (!p->failed) rlhf_error_set(p->err, RLHF_EINVAL, p->where, "at offset %zu: %s", p->i, msg);
    p->failed = 1;
    return NULL;
}

static rx *node(rxp *p, int kind) {
    rx *r = calloc(1, sizeof *r);
    if (!r) return fail(p, "out of memory");
    r->kind = kind;
    return r;
}

static int add_kid(rxp *p, rx *parent, rx *kid) {
    rx **k = realloc(parent->kids, (size_t)(parent->nkids + 1) * sizeof *k);
    if (!k) {
        rx_free(kid);
        fail(p, "out of memory");
        return -1;
    }
    parent->kids = k;
    parent->kids[parent->nkids++] = kid;
    return 0;
}

static void cs_add(gcharset *cs, int lo, int hi) {
    for (int c = lo; c <= hi; c++) cs->ascii[c >> 6] |= 1ull << (c & 63);
}

static void cs_negate(gcharset *cs) {
    cs->ascii[0] = ~cs->ascii[0];
    cs->ascii[1] = ~cs->ascii[1];
    cs->nonascii = !cs->nonascii;
}

static void cs_union(gcharset *a, const gcharset *b) {
    a->ascii[0] |= b->ascii[0];
    a->ascii[1] |= b->ascii[1];
    a->nonascii |= b->nonascii;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* After a backslash: a class escape (\d ...) into *cs (returns 1), or one ASCII character into *ch
 * (returns 0); -1 on error. */
static int parse_escape(rxp *p, gcharset *cs, int *ch) {
    if (p->i >= p->n) return fail(p, "trailing backslash"), -1;
    int c = (uint8_t)p->s[p->i++];
    memset(cs, 0, sizeof *cs);
    switch (c) {
    case 'd': case 'D': cs_add(cs, '0', '9'); if (c == 'D') cs_negate(cs); return 1;
    case 'w': case 'W':
        cs_add(cs, '0', '9'), cs_add(cs, 'a', 'z'), cs_add(cs, 'A', 'Z'), cs_add(cs, '_', '_');
        if (c == 'W') cs_negate(cs);
        return 1;
    case 's': case 'S':
        cs_add(cs, '\t', '\r'), cs_add(cs, ' ', ' ');
        if (c == 'S') cs_negate(cs);
        return 1;
    case 'n': *ch = '\n'; return 0;
    case 'r': *ch = '\r'; return 0;
    case 't': *ch = '\t'; return 0;
    case 'f': *ch = '\f'; return 0;
    case 'v': *ch = '\v'; return 0;
    case '0': *ch = 0; return 0;
    case 'x': case 'u': {
        int nd = c == 'x' ? 2 : 4, v = 0;
        for (int k = 0; k < nd; k++) {
            int h = p->i < p->n ? hexval((uint8_t)p->s[p->i]) : -1;
            if (h < 0) return fail(p, "bad hexadecimal escape"), -1;
            v = v * 16 + h;
            p->i++;
        }
        if (v >= 128) return fail(p, "escapes of non-ASCII characters are not supported (write the character)"), -1;
        *ch = v;
        return 0;
    }
    default:
        if (c < 128 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
            *ch = c;
            return 0;
        }
        p->i--;
        return fail(p, "unsupported escape (back-references, \\b and other letter escapes are not supported)"), -1;
    }
}

static rx *parse_class(rxp *p) {
    rx *r = node(p, RX_SET);
    if (!r) return NULL;
    int neg = 0, any = 0;
    if (p->i < p->n && p->s[p->i] == '^') neg = 1, p->i++;
    for (;;) {
        if (p->i >= p->n) return rx_free(r), fail(p, "unterminated character class");
        int c = (uint8_t)p->s[p->i];
        if (c == ']' && any) {
            p->i++;
            break;
        }
        if (c >= 128) return rx_free(r), fail(p, "non-ASCII characters in a class are not supported");
        p->i++;
        int lo;
        if (c == '\\') {
            gcharset cs;
            int k = parse_escape(p, &cs, &lo);
            if (k < 0) return rx_free(r), NULL;
            if (k == 1) {
                cs_union(&r->cs, &cs);
                any = 1;
                continue;
            }
        } else {
            lo = c;
        }
        int hi = lo;
        if (p->i + 1 < p->n && p->s[p->i] == '-' && p->s[p->i + 1] != ']') {
            p->i++;
            int c2 = (uint8_t)p->s[p->i++];
            if (c2 >= 128) return rx_free(r), fail(p, "non-ASCII characters in a class are not supported");
            if (c2 == '\\') {
                gcharset cs;
                int k = parse_escape(p, &cs, &hi);
                if (k != 0) return rx_free(r), k < 0 ? NULL : fail(p, "a class escape cannot end a range");
            } else {
                hi = c2;
            }
            if (hi < lo) return rx_free(r), fail(p, "range out of order");
        }
        cs_add(&r->cs, lo, hi);
        any = 1;
    }
    if (neg) cs_negate(&r->cs);
    return r;
}

static rx *parse_alt(rxp *p);

static rx *parse_atom(rxp *p) {
    int c = (uint8_t)p->s[p->i];
    if (c == '(') {
        p->i++;
        if (p->i < p->n && p->s[p->i] == '?') {
            if (p->i + 1 < p->n && p->s[p->i + 1] == ':') p->i += 2;
            else return fail(p, "only (?:...) groups are supported (no look-around, flags or named groups)");
        }
        if (++p->depth > GUIDED_MAX_DEPTH) return fail(p, "groups nested too deeply");
        rx *r = parse_alt(p);
        p->depth--;
        if (!r) return NULL;
        if (p->i >= p->n || p->s[p->i] != ')') return rx_free(r), fail(p, "missing )");
        p->i++;
        return r;
    }
    if (c == '[') {
        p->i++;
        return parse_class(p);
    }
    if (c == '.') {
        p->i++;
        rx *r = node(p, RX_SET);
        if (r) cs_add(&r->cs, '\n', '\n'), cs_negate(&r->cs);
        return r;
    }
    if (c == '\\') {
        p->i++;
        gcharset cs;
        int ch;
        int k = parse_escape(p, &cs, &ch);
        if (k < 0) return NULL;
        rx *r = node(p, RX_SET);
        if (!r) return NULL;
        if (k == 1) r->cs = cs;
        else cs_add(&r->cs, ch, ch);
        return r;
    }
    if (c == '*' || c == '+' || c == '?' || c == '{') return fail(p, "nothing to repeat");
    if (c == ')') return fail(p, "unbalanced )");
    if (c == '^' || c == '$') return fail(p, "anchors are supported only at the very start and end");
    rx *r = node(p, RX_BYTES);
    if (!r) return NULL;
    int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (p->i + (size_t)len > p->n) return rx_free(r), fail(p, "truncated UTF-8 character");
    memcpy(r->bytes, p->s + p->i, (size_t)len);
    r->nbytes = len;
    p->i += (size_t)len;
    return r;
}

static int parse_int(rxp *p, int *v) {
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') return -1;
    long x = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        x = x * 10 + (p->s[p->i++] - '0');
        if (x > GUIDED_MAX_REPEAT) return -2;
    }
    *v = (int)x;
    return 0;
}

static rx *parse_repeat(rxp *p) {
    rx *a = parse_atom(p);
    while (a && p->i < p->n) {
        int c = p->s[p->i], min, max;
        if (c == '*') min = 0, max = -1, p->i++;
        else if (c == '+') min = 1, max = -1, p->i++;
        else if (c == '?') min = 0, max = 1, p->i++;
        else if (c == '{') {
            p->i++;
            int r1 = parse_int(p, &min), r2 = 0;
            if (r1 == 0 && p->i < p->n && p->s[p->i] == '}') max = min;
            else if (r1 == 0 && p->i < p->n && p->s[p->i] == ',') {
                p->i++;
                if (p->i < p->n && p->s[p->i] == '}') max = -1;
                else r2 = parse_int(p, &max);
            } else if (r1 == 0) r2 = -1;
            if (r1 == -2 || r2 == -2) return rx_free(a), fail(p, "repetition count above 1000");
            if (r1 < 0 || r2 < 0 || p->i >= p->n || p->s[p->i] != '}')
                return rx_free(a), fail(p, "bad {n,m} repetition");
            p->i++;
            if (max >= 0 && max < min) return rx_free(a), fail(p, "repetition {n,m} with m < n");
        } else break;
        if (p->i < p->n && (p->s[p->i] == '?')) p->i++; /* lazy: same language */
        if (p->i < p->n && (p->s[p->i] == '+')) return rx_free(a), fail(p, "possessive quantifiers are not supported");
        rx *r = node(p, RX_REP);
        if (!r) return rx_free(a), NULL;
        r->sub = a;
        r->min = min;
        r->max = max;
        a = r;
    }
    return a;
}

static rx *parse_cat(rxp *p) {
    rx *r = node(p, RX_CAT);
    if (!r) return NULL;
    while (p->i < p->n && p->s[p->i] != '|' && p->s[p->i] != ')') {
        if (p->s[p->i] == '$' && p->depth == 0 && p->i + 1 == p->n) break;
        rx *a = parse_repeat(p);
        if (!a || add_kid(p, r, a)) return rx_free(r), NULL;
    }
    return r;
}

static rx *parse_alt(rxp *p) {
    rx *r = node(p, RX_ALT);
    if (!r) return NULL;
    for (;;) {
        rx *c = parse_cat(p);
        if (!c || add_kid(p, r, c)) return rx_free(r), NULL;
        if (p->i < p->n && p->s[p->i] == '|') {
            p->i++;
            continue;
        }
        return r;
    }
}

static gfrag emit(gnfa *a, const rx *r, int json_body) {
    switch (r->kind) {
    case RX_SET: return guided_nfa_charset(a, &r->cs, json_body);
    case RX_BYTES:
        if (json_body && r->nbytes == 1) { /* an ASCII literal: a one-character set */
            gcharset cs = {{0, 0}, 0};
            cs_add(&cs, (uint8_t)r->bytes[0], (uint8_t)r->bytes[0]);
            return guided_nfa_charset(a, &cs, 1);
        }
        return guided_nfa_bytes(a, r->bytes, (size_t)r->nbytes);
    case RX_CAT: {
        gfrag f = guided_nfa_empty(a);
        for (int i = 0; i < r->nkids; i++) f = guided_nfa_cat(a, f, emit(a, r->kids[i], json_body));
        return f;
    }
    case RX_ALT: {
        gfrag f = emit(a, r->kids[0], json_body);
        for (int i = 1; i < r->nkids; i++) f = guided_nfa_alt(a, f, emit(a, r->kids[i], json_body));
        return f;
    }
    case RX_REP: {
        gfrag f = guided_nfa_empty(a);
        for (int i = 0; i < r->min && !a->overflow; i++) f = guided_nfa_cat(a, f, emit(a, r->sub, json_body));
        if (r->max < 0) return guided_nfa_cat(a, f, guided_nfa_star(a, emit(a, r->sub, json_body)));
        for (int i = r->min; i < r->max && !a->overflow; i++) f = guided_nfa_cat(a, f, guided_nfa_opt(a, emit(a, r->sub, json_body)));
        return f;
    }
    default: return guided_nfa_empty(a);
    }
}

int guided_regex_build(gnfa *a, const char *re, size_t len, int json_body, const char *where, gfrag *out,
                       rlhf_error *err) {
    if (len > GUIDED_MAX_REGEX_LEN)
        return rlhf_error_set(err, RLHF_EINVAL, where, "regex longer than %d bytes", GUIDED_MAX_REGEX_LEN);
    rxp p = {.s = re, .n = len, .where = where, .err = err};
    int anchored_start = 0, anchored_end = 0;
    if (p.n && re[0] == '^') anchored_start = 1, p.i = 1;
    rx *r = parse_alt(&p);
    if (r && p.i < p.n && re[p.i] == '$' && p.i + 1 == p.n) anchored_end = 1, p.i++;
    if (r && p.i < p.n) {
        rx_free(r);
        r = fail(&p, re[p.i] == ')' ? "unbalanced )" : "unexpected character");
    }
    if (!r) return err->code ? err->code : RLHF_EINVAL;
    gfrag f = emit(a, r, json_body);
    rx_free(r);
    if (json_body) { /* search semantics: anything before and after unless anchored */
        if (!anchored_start) f = guided_nfa_cat(a, guided_nfa_star(a, guided_nfa_json_char(a)), f);
        if (!anchored_end) f = guided_nfa_cat(a, f, guided_nfa_star(a, guided_nfa_json_char(a)));
    }
    *out = f;
    return 0;
}
