/* template/lexer.c — a chat template's text as tokens, the way @huggingface/jinja reads it: the
 * template's one trailing newline dropped, lstrip_blocks (blanks before a block tag at the start of a
 * line) and trim_blocks (the newline after a block tag) applied first, `{% generation %}` tags removed,
 * then `{%-`, `{{-`, `{#-` strip the text before and `-%}`, `-}}`, `-#}` the whitespace after. Every token
 * keeps its offset in the original template so that errors name its line and column. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_int.h"

void template_where(const tmpl_src *src, size_t pos, char *out, size_t cap) {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < src->len; i++) {
        if (src->text[i] == '\n') line++, col = 1;
        else if (((unsigned char)src->text[i] & 0xC0) != 0x80) col++;
    }
    snprintf(out, cap, "%s:%d:%d", src->name, line, col);
}

int template_fail(const tmpl_src *src, size_t pos, rlhf_error *err, int code, const char *fmt, ...) {
    char where[256], msg[700];
    template_where(src, pos, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return rlhf_error_set(err, code, where, "%s", msg);
}

/* A string being rebuilt with the original offset of each byte. */
typedef struct mapped {
    char *s;
    size_t *at;
    size_t n, cap;
} mapped;

static int m_put(mapped *m, char ch, size_t at) {
    if (m->n + 1 >= m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        char *s = realloc(m->s, cap);
        if (!s) return -1;
        m->s = s;
        size_t *a = realloc(m->at, cap * sizeof *a);
        if (!a) return -1;
        m->at = a;
        m->cap = cap;
    }
    m->s[m->n] = ch;
    m->at[m->n++] = at;
    m->s[m->n] = 0;
    return 0;
}

static void m_free(mapped *m) {
    free(m->s);
    free(m->at);
    memset(m, 0, sizeof *m);
}

/* Code point at s[i..n) and its byte length (1 for a bad byte). */
static unsigned cp_at(const char *s, size_t n, size_t i, int *len) {
    const unsigned char *u = (const unsigned char *)s + i;
    size_t left = n - i;
    if (u[0] < 0x80 || left < 2) return *len = 1, u[0];
    if ((u[0] & 0xE0) == 0xC0) return *len = 2, ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu);
    if ((u[0] & 0xF0) == 0xE0 && left >= 3) return *len = 3, ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu);
    if ((u[0] & 0xF8) == 0xF0 && left >= 4)
        return *len = 4, ((u[0] & 0x07u) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3Fu);
    return *len = 1, u[0];
}

static int is_ws_cp(unsigned c) {
    if (c <= 32) return c == 32 || (c >= 9 && c <= 13);
    return c == 160 || c == 5760 || (c >= 8192 && c <= 8202) || c == 8232 || c == 8233 || c == 8239 || c == 8287 ||
           c == 12288 || c == 65279;
}

size_t template_ws_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int l;
        unsigned c = cp_at(s, n, i, &l);
        if (!is_ws_cp(c)) break;
        i += (size_t)l;
    }
    return i;
}

size_t template_ws_suffix(const char *s, size_t n) {
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80 && end - st < 4) st--;
        int l;
        unsigned c = cp_at(s, end, st, &l);
        if (st + (size_t)l != end || !is_ws_cp(c)) break;
        end = st;
    }
    return n - end;
}

/* The three rewrites @huggingface/jinja makes before it tokenizes (its preprocess()). */
static int preprocess(const tmpl_src *src, mapped *out) {
    mapped a = {0}, b = {0};
    size_t n = src->len;
    if (n > 0 && src->text[n - 1] == '\n') n--;
    /* lstrip_blocks: /^[ \t]*({[#%-])/gm */
    for (size_t i = 0; i < n;) {
        int line_start = i == 0 || src->text[i - 1] == '\n' || src->text[i - 1] == '\r';
        if (line_start) {
            size_t j = i;
            while (j < n && (src->text[j] == ' ' || src->text[j] == '\t')) j++;
            if (j > i && j + 1 < n && src->text[j] == '{' && strchr("#%-", src->text[j + 1]) && src->text[j + 1]) i = j;
        }
        if (i < n && m_put(&a, src->text[i], i)) goto oom;
        i++;
    }
    /* trim_blocks: /([#%-]})\n/g */
    for (size_t i = 0; i < a.n; i++) {
        if (m_put(&b, a.s[i], a.at[i])) goto oom;
        if (a.s[i] == '}' && i > 0 && strchr("#%-", a.s[i - 1]) && a.s[i - 1] && i + 1 < a.n && a.s[i + 1] == '\n') i++;
    }
    /* {%-? (end)?generation -?%} tags go; with `-` the whitespace on that side goes too */
    size_t last = 0;
    for (size_t i = 0; i < b.n; i++) {
        if (b.s[i] != '{' || i + 1 >= b.n || b.s[i + 1] != '%') continue;
        size_t j = i + 2;
        int lstrip = 0, rstrip = 0;
        if (j < b.n && b.s[j] == '-') lstrip = 1, j++;
        while (j < b.n && template_ws_prefix(b.s + j, 1)) j++;
        if (j + 3 <= b.n && !strncmp(b.s + j, "end", 3)) j += 3;
        if (j + 10 > b.n || strncmp(b.s + j, "generation", 10)) continue;
        j += 10;
        while (j < b.n && template_ws_prefix(b.s + j, 1)) j++;
        if (j < b.n && b.s[j] == '-') rstrip = 1, j++;
        if (j + 2 > b.n || b.s[j] != '%' || b.s[j + 1] != '}') continue;
        j += 2;
        size_t end = i;
        if (lstrip)
            while (end > last && template_ws_prefix(b.s + end - 1, 1)) end--;
        for (size_t k = last; k < end; k++)
            if (m_put(out, b.s[k], b.at[k])) goto oom;
        size_t after = j;
        while (after < b.n && template_ws_prefix(b.s + after, 1)) after++;
        if (!rstrip)
            for (size_t k = j; k < after; k++)
                if (m_put(out, b.s[k], b.at[k])) goto oom;
        last = after;
        i = after - 1;
    }
    for (size_t k = last; k < b.n; k++)
        if (m_put(out, b.s[k], b.at[k])) goto oom;
    if (!out->s && m_put(out, 0, 0) == 0) out->n = 0;
    m_free(&a);
    m_free(&b);
    return 0;
oom:
    m_free(&a);
    m_free(&b);
    return -1;
}

typedef struct lexer {
    tmpl_tok *v;
    int n, cap;
} lexer;

static int push(lexer *L, tmpl_tok_kind k, const char *s, size_t len, size_t pos) {
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 64;
        tmpl_tok *v = realloc(L->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        L->v = v;
        L->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, s, len);
    c[len] = 0;
    L->v[L->n++] = (tmpl_tok){k, c, len, pos};
    return 0;
}

static void strip_last_text(lexer *L) {
    if (L->n == 0 || L->v[L->n - 1].kind != TT_TEXT) return;
    tmpl_tok *t = &L->v[L->n - 1];
    t->len -= template_ws_suffix(t->s, t->len);
    t->s[t->len] = 0;
    if (t->len == 0) free(t->s), L->n--;
}

static int is_word(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static const char *const OPS[] = {"<=", ">=", "==", "!=", "**", "//", "(", ")", "{", "}", "[", "]", ",", ".", ":",
                                  "|", "<", ">", "+", "-", "~", "*", "/", "%", "=", NULL};

int template_lex(const tmpl_src *src, tmpl_tok **toks, int *ntoks, rlhf_error *err) {
    mapped m = {0};
    lexer L = {0};
    if (preprocess(src, &m)) goto oom;
    const char *s = m.s;
    size_t n = m.n, i = 0;
    int depth = 0;
#define AT(k) ((k) < n ? m.at[k] : src->len)
#define FAIL(k, ...)                                                                                                     \
    do {                                                                                                               \
        template_fail(src, AT(k), err, RLHF_EINVAL, __VA_ARGS__);                                                      \
        goto fail;                                                                                                     \
    } while (0)
    while (i < n) {
        tmpl_tok_kind last = L.n ? L.v[L.n - 1].kind : TT_END;
        if (last == TT_END || last == TT_CLOSE_STMT || last == TT_CLOSE_EXPR) {
            size_t end = i;
            while (end < n && !(s[end] == '{' && end + 1 < n && strchr("%{#", s[end + 1]) && s[end + 1])) end++;
            if (end > i) {
                if (push(&L, TT_TEXT, s + i, end - i, AT(i))) goto oom;
                i = end;
                continue;
            }
        }
        if (s[i] == '{' && i + 1 < n && s[i + 1] == '#') {
            size_t st = i;
            i += 2;
            int before = i < n && s[i] == '-';
            char *e = strstr(s + i, "#}");
            if (!e) FAIL(st, "comment `{#` is never closed with `#}`");
            int after = e > s + i && e[-1] == '-';
            if (before) strip_last_text(&L);
            i = (size_t)(e - s) + 2;
            if (after) i += template_ws_prefix(s + i, n - i);
            /* a comment ends like a tag: the text after it is text */
            if (push(&L, TT_CLOSE_STMT, "", 0, AT(st))) goto oom;
            L.v[L.n - 1].kind = TT_CLOSE_STMT;
            L.v[L.n - 1].len = (size_t)-1; /* marks a comment: dropped below */
            continue;
        }
        if (s[i] == '{' && i + 2 < n && s[i + 2] == '-' && (s[i + 1] == '%' || s[i + 1] == '{')) {
            strip_last_text(&L);
            if (push(&L, s[i + 1] == '%' ? TT_OPEN_STMT : TT_OPEN_EXPR, s + i, 2, AT(i))) goto oom;
            if (s[i + 1] == '{') depth = 0;
            i += 3;
            continue;
        }
        i += template_ws_prefix(s + i, n - i);
        if (i >= n) break;
        if (s[i] == '-' && i + 2 < n && s[i + 2] == '}' && (s[i + 1] == '%' || s[i + 1] == '}')) {
            if (push(&L, s[i + 1] == '%' ? TT_CLOSE_STMT : TT_CLOSE_EXPR, s + i + 1, 2, AT(i))) goto oom;
            i += 3;
            i += template_ws_prefix(s + i, n - i);
            continue;
        }
        if (s[i] == '{' && i + 1 < n && (s[i + 1] == '%' || s[i + 1] == '{')) {
            if (push(&L, s[i + 1] == '%' ? TT_OPEN_STMT : TT_OPEN_EXPR, s + i, 2, AT(i))) goto oom;
            if (s[i + 1] == '{') depth = 0;
            i += 2;
            continue;
        }
        if (s[i] == '%' && i + 1 < n && s[i + 1] == '}') {
            if (push(&L, TT_CLOSE_STMT, s + i, 2, AT(i))) goto oom;
            i += 2;
            continue;
        }
        if (s[i] == '}' && i + 1 < n && s[i + 1] == '}' && depth == 0) {
            if (push(&L, TT_CLOSE_EXPR, s + i, 2, AT(i))) goto oom;
            i += 2;
            continue;
        }
        if (s[i] == '\'' || s[i] == '"') {
            char q = s[i];
            size_t st = i++;
            char *buf = malloc(n - i + 1);
            size_t bl = 0;
            if (!buf) goto oom;
            while (i < n && s[i] != q) {
                if (s[i] != '\\') {
                    buf[bl++] = s[i++];
                    continue;
                }
                if (++i >= n) break;
                char e = s[i++];
                const char *map = "n\nt\tr\rb\bf\fv\v''\"\"\\\\";
                const char *hit = NULL;
                for (const char *p = map; *p; p += 2)
                    if (*p == e) hit = p;
                if (hit) buf[bl++] = hit[1];
                else {
                    free(buf);
                    FAIL(i - 2, "unsupported escape `\\%c` in a string literal", e);
                }
            }
            if (i >= n) {
                free(buf);
                FAIL(st, "string literal is never closed");
            }
            i++;
            int rc = push(&L, TT_STR, buf, bl, AT(st));
            free(buf);
            if (rc) goto oom;
            continue;
        }
        if (is_digit(s[i])) {
            size_t st = i;
            while (i < n && is_digit(s[i])) i++;
            int after_dot = L.n && L.v[L.n - 1].kind == TT_OP && !strcmp(L.v[L.n - 1].s, ".");
            if (!after_dot && i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
                i++;
                while (i < n && is_digit(s[i])) i++;
            }
            if (push(&L, TT_NUM, s + st, i - st, AT(st))) goto oom;
            continue;
        }
        if (is_word(s[i])) {
            size_t st = i;
            while (i < n && is_word(s[i])) i++;
            if (push(&L, TT_NAME, s + st, i - st, AT(st))) goto oom;
            continue;
        }
        int matched = 0;
        for (int k = 0; OPS[k]; k++) {
            size_t ol = strlen(OPS[k]);
            if (i + ol <= n && !strncmp(s + i, OPS[k], ol)) {
                if (push(&L, TT_OP, s + i, ol, AT(i))) goto oom;
                if (!strcmp(OPS[k], "{")) depth++;
                if (!strcmp(OPS[k], "}")) depth--;
                i += ol;
                matched = 1;
                break;
            }
        }
        if (!matched) FAIL(i, "unexpected character `%c`", s[i]);
    }
    /* drop the comment markers: they only served to start text after them */
    int w = 0;
    for (int k = 0; k < L.n; k++) {
        if (L.v[k].kind == TT_CLOSE_STMT && L.v[k].len == (size_t)-1) {
            free(L.v[k].s);
            continue;
        }
        L.v[w++] = L.v[k];
    }
    L.n = w;
    if (push(&L, TT_END, "", 0, src->len)) goto oom;
    m_free(&m);
    *toks = L.v;
    *ntoks = L.n;
    return 0;
oom:
    rlhf_error_set(err, RLHF_ENOMEM, src->name, "out of memory reading the template");
fail:
    template_toks_free(L.v, L.n);
    m_free(&m);
    return err ? err->code : RLHF_EINVAL;
#undef AT
#undef FAIL
}

void template_toks_free(tmpl_tok *toks, int n) {
    for (int i = 0; i < n; i++) free(toks[i].s);
    free(toks);
}
