/* template/parser.c — tokens to the statement / expression tree, with Jinja's precedence (lowest
 * first): `a if c else b`, or, and, not, comparisons and `in`, + -, ~, * / // %, **, unary - +, then
 * filters `|f(...)` and tests `is [not] t`, then postfix `.attr`, `[i]`, `[a:b:c]`, `(...)`. A construct
 * chat templates do not use (include, extends, call blocks, filter blocks, ...) is an error at its
 * line and column rather than being skipped. */
#include <stdlib.h>
#include <string.h>

#include "template/template_int.h"

typedef struct parser {
    template_program *p;
    tmpl_tok *t;
    int n, i;
    rlhf_error *err;
    int failed;
    int depth; /* nesting of expressions and blocks: bounded, so a hostile template cannot exhaust the stack */
} parser;

static tmpl_tok *cur(parser *P) { return &P->t[P->i]; }
static int is_op(parser *P, const char *op) { return cur(P)->kind == TT_OP && !strcmp(cur(P)->s, op); }
static int is_name(parser *P, const char *w) { return cur(P)->kind == TT_NAME && !strcmp(cur(P)->s, w); }
static int is_name_at(parser *P, int k, const char *w) {
    return P->i + k < P->n && P->t[P->i + k].kind == TT_NAME && !strcmp(P->t[P->i + k].s, w);
}

static int fail_at(parser *P, size_t pos, const char *fmt, const char *arg) {
    if (!P->failed) template_fail(&P->p->src, pos, P->err, RLHF_EINVAL, fmt, arg);
    P->failed = 1;
    return -1;
}

static const char *tok_desc(tmpl_tok *t) {
    switch (t->kind) {
    case TT_END: return "the end of the template";
    case TT_TEXT: return "text";
    case TT_CLOSE_STMT: return "%}";
    case TT_CLOSE_EXPR: return "}}";
    case TT_OPEN_STMT: return "{%";
    case TT_OPEN_EXPR: return "{{";
    default: return t->s;
    }
}

static int expect_op(parser *P, const char *op) {
    if (!is_op(P, op)) {
        char msg[96];
        snprintf(msg, sizeof msg, "expected `%s` here, found `%%s`", op);
        return fail_at(P, cur(P)->pos, msg, tok_desc(cur(P)));
    }
    P->i++;
    return 0;
}

static int expect_kind(parser *P, tmpl_tok_kind k, const char *what) {
    if (cur(P)->kind != k) {
        char msg[96];
        snprintf(msg, sizeof msg, "expected `%s` here, found `%%s`", what);
        return fail_at(P, cur(P)->pos, msg, tok_desc(cur(P)));
    }
    P->i++;
    return 0;
}

static tmpl_node *node(parser *P, tmpl_node_kind k, size_t pos) {
    tmpl_node *n = calloc(1, sizeof *n);
    if (!n) {
        fail_at(P, pos, "%s", "out of memory");
        return NULL;
    }
    n->kind = k;
    n->pos = pos;
    return n;
}

static int list_add(parser *P, tmpl_list *l, tmpl_node *n) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 4;
        tmpl_node **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) {
            template_node_free(n);
            return fail_at(P, 0, "%s", "out of memory");
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
    return 0;
}

static int add_name(parser *P, tmpl_node *n, const char *s) {
    char **v = realloc(n->names, (size_t)(n->n_names + 1) * sizeof *v);
    if (!v) return fail_at(P, n->pos, "%s", "out of memory");
    n->names = v;
    n->names[n->n_names] = s ? strdup(s) : NULL;
    if (s && !n->names[n->n_names]) return fail_at(P, n->pos, "%s", "out of memory");
    n->n_names++;
    return 0;
}

void template_list_free(tmpl_list *l) {
    for (int i = 0; i < l->n; i++) template_node_free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

void template_node_free(tmpl_node *n) {
    if (!n) return;
    free(n->str);
    json_decref(n->lit);
    template_node_free(n->a);
    template_node_free(n->b);
    template_node_free(n->c);
    template_list_free(&n->body);
    template_list_free(&n->alt);
    template_list_free(&n->kw);
    for (int i = 0; i < n->n_names; i++) free(n->names[i]);
    free(n->names);
    free(n);
}

static tmpl_node *parse_expr(parser *P);
static tmpl_node *parse_or(parser *P);
static tmpl_node *parse_unary(parser *P, int with_filter);

static int is_keyword(const char *s) {
    static const char *const kw[] = {"and", "or", "not", "in", "is", "if", "else", "elif", NULL};
    for (int i = 0; kw[i]; i++)
        if (!strcmp(s, kw[i])) return 1;
    return 0;
}

/* ( args ) after the `(`: positional expressions and name=value keyword arguments */
static int parse_args(parser *P, tmpl_node *n) {
    while (!is_op(P, ")")) {
        if (cur(P)->kind == TT_NAME && P->i + 1 < P->n && P->t[P->i + 1].kind == TT_OP && !strcmp(P->t[P->i + 1].s, "=")) {
            const char *name = cur(P)->s;
            P->i += 2;
            tmpl_node *v = parse_expr(P);
            if (!v || add_name(P, n, name) || list_add(P, &n->kw, v)) return template_node_free(v), -1;
        } else {
            if (n->kw.n) return fail_at(P, cur(P)->pos, "%s", "a positional argument after a keyword argument");
            tmpl_node *v = parse_expr(P);
            if (!v || list_add(P, &n->body, v)) return -1;
        }
        if (!is_op(P, ",")) break;
        P->i++;
    }
    return expect_op(P, ")");
}

static tmpl_node *parse_primary(parser *P) {
    tmpl_tok *t = cur(P);
    tmpl_node *n = NULL;
    if (t->kind == TT_NUM) {
        if (!(n = node(P, E_LIT, t->pos))) return NULL;
        n->lit = strchr(t->s, '.') ? json_real(strtod(t->s, NULL)) : json_integer(strtoll(t->s, NULL, 10));
        P->i++;
        return n;
    }
    if (t->kind == TT_STR) {
        /* adjacent literals concatenate, as in Python */
        size_t len = 0;
        int k = P->i;
        for (; k < P->n && P->t[k].kind == TT_STR; k++) len += P->t[k].len;
        char *s = malloc(len + 1);
        if (!s || !(n = node(P, E_LIT, t->pos))) return free(s), NULL;
        len = 0;
        for (; P->i < k; P->i++) memcpy(s + len, P->t[P->i].s, P->t[P->i].len), len += P->t[P->i].len;
        n->lit = json_stringn_nocheck(s, len);
        free(s);
        return n;
    }
    if (t->kind == TT_NAME) {
        if (is_keyword(t->s)) {
            fail_at(P, t->pos, "unexpected `%s` where a value should be", t->s);
            return NULL;
        }
        if (!(n = node(P, E_LIT, t->pos))) return NULL;
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->lit = json_true();
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->lit = json_false();
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->lit = json_null();
        else {
            n->kind = E_NAME;
            n->str = strdup(t->s);
        }
        P->i++;
        return n;
    }
    if (t->kind == TT_OP && (!strcmp(t->s, "(") || !strcmp(t->s, "["))) {
        int paren = t->s[0] == '(';
        const char *close = paren ? ")" : "]";
        P->i++;
        if (!(n = node(P, E_LIST, t->pos))) return NULL;
        int commas = 0;
        while (!is_op(P, close)) {
            tmpl_node *v = parse_expr(P);
            if (!v || list_add(P, &n->body, v)) return template_node_free(n), NULL;
            if (!is_op(P, ",")) break;
            commas++;
            P->i++;
        }
        if (expect_op(P, close)) return template_node_free(n), NULL;
        if (paren && n->body.n == 1 && !commas) { /* (x) is x, (x,) a tuple */
            tmpl_node *inner = n->body.v[0];
            n->body.n = 0;
            template_node_free(n);
            return inner;
        }
        return n;
    }
    if (t->kind == TT_OP && !strcmp(t->s, "{")) {
        P->i++;
        if (!(n = node(P, E_DICT, t->pos))) return NULL;
        while (!is_op(P, "}")) {
            tmpl_node *k = parse_expr(P);
            if (!k || list_add(P, &n->body, k) || expect_op(P, ":")) return template_node_free(n), NULL;
            tmpl_node *v = parse_expr(P);
            if (!v || list_add(P, &n->alt, v)) return template_node_free(n), NULL;
            if (!is_op(P, ",")) break;
            P->i++;
        }
        if (expect_op(P, "}")) return template_node_free(n), NULL;
        return n;
    }
    fail_at(P, t->pos, "unexpected `%s` where a value should be", tok_desc(t));
    return NULL;
}

static tmpl_node *parse_postfix(parser *P) {
    tmpl_node *n = parse_primary(P);
    while (n) {
        tmpl_tok *t = cur(P);
        if (is_op(P, ".")) {
            P->i++;
            tmpl_tok *a = cur(P);
            if (a->kind != TT_NAME && a->kind != TT_NUM) {
                fail_at(P, a->pos, "expected an attribute name after `.`, found `%s`", tok_desc(a));
                return template_node_free(n), NULL;
            }
            tmpl_node *m = node(P, a->kind == TT_NAME ? E_ATTR : E_INDEX, t->pos);
            if (!m) return template_node_free(n), NULL;
            m->a = n;
            if (a->kind == TT_NAME) m->str = strdup(a->s);
            else if (!(m->b = node(P, E_LIT, a->pos))) return template_node_free(m), NULL;
            else m->b->lit = json_integer(strtoll(a->s, NULL, 10));
            P->i++;
            n = m;
        } else if (is_op(P, "[")) {
            P->i++;
            tmpl_node *m = node(P, E_INDEX, t->pos);
            if (!m) return template_node_free(n), NULL;
            m->a = n;
            n = m;
            tmpl_node *parts[3] = {NULL, NULL, NULL};
            int part = 0;
            while (1) {
                if (!is_op(P, ":") && !is_op(P, "]")) {
                    if (!(parts[part] = parse_expr(P))) goto slice_fail;
                }
                if (is_op(P, ":") && part < 2) {
                    part++;
                    P->i++;
                    continue;
                }
                break;
            }
            if (expect_op(P, "]")) goto slice_fail;
            if (part == 0) {
                if (!parts[0]) {
                    fail_at(P, t->pos, "%s", "empty subscript `[]`");
                    goto slice_fail;
                }
                m->b = parts[0];
            } else {
                m->kind = E_SLICE;
                m->b = parts[0], m->c = parts[1];
                if (parts[2]) {
                    m->body.n = 0;
                    if (list_add(P, &m->body, parts[2])) return template_node_free(n), NULL;
                }
            }
            continue;
        slice_fail:
            for (int k = 0; k < 3; k++) template_node_free(parts[k]);
            return template_node_free(n), NULL;
        } else if (is_op(P, "(")) {
            P->i++;
            tmpl_node *m = node(P, E_CALL, n->pos); /* errors point at the callee */
            if (!m) return template_node_free(n), NULL;
            m->a = n;
            n = m;
            if (parse_args(P, m)) return template_node_free(n), NULL;
        } else {
            break;
        }
    }
    return n;
}

static int starts_value(parser *P) {
    tmpl_tok *t = cur(P);
    if (t->kind == TT_NUM || t->kind == TT_STR) return 1;
    if (t->kind == TT_NAME) return !is_keyword(t->s);
    return t->kind == TT_OP && (!strcmp(t->s, "(") || !strcmp(t->s, "[") || !strcmp(t->s, "{"));
}

static tmpl_node *parse_filters(parser *P, tmpl_node *n) {
    while (n) {
        if (is_op(P, "|")) {
            size_t pos = cur(P)->pos;
            P->i++;
            if (cur(P)->kind != TT_NAME) {
                fail_at(P, cur(P)->pos, "expected a filter name after `|`, found `%s`", tok_desc(cur(P)));
                return template_node_free(n), NULL;
            }
            tmpl_node *m = node(P, E_FILTER, pos);
            if (!m) return template_node_free(n), NULL;
            m->a = n;
            n = m;
            m->str = strdup(cur(P)->s);
            P->i++;
            if (is_op(P, "(")) {
                P->i++;
                if (parse_args(P, m)) return template_node_free(n), NULL;
            }
        } else if (is_name(P, "is")) {
            size_t pos = cur(P)->pos;
            P->i++;
            tmpl_node *m = node(P, E_TEST, pos);
            if (!m) return template_node_free(n), NULL;
            m->a = n;
            n = m;
            if (is_name(P, "not")) m->negated = 1, P->i++;
            tmpl_tok *t = cur(P);
            if (t->kind != TT_NAME) {
                fail_at(P, t->pos, "expected a test name after `is`, found `%s`", tok_desc(t));
                return template_node_free(n), NULL;
            }
            m->str = strdup(t->s);
            P->i++;
            if (is_op(P, "(")) {
                P->i++;
                if (parse_args(P, m)) return template_node_free(n), NULL;
            } else if (starts_value(P)) {
                tmpl_node *arg = parse_postfix(P);
                if (!arg || list_add(P, &m->body, arg)) return template_node_free(n), NULL;
            }
        } else {
            break;
        }
    }
    return n;
}

static tmpl_node *parse_unary(parser *P, int with_filter) {
    tmpl_node *n;
    if (P->depth > 200) {
        fail_at(P, cur(P)->pos, "%s", "the template nests more than 200 deep (expressions, blocks or elif chains)");
        return NULL;
    }
    if (is_op(P, "-") || is_op(P, "+")) {
        P->depth++;
        tmpl_node *m = node(P, is_op(P, "-") ? E_NEG : E_POS, cur(P)->pos);
        if (!m) return NULL;
        P->i++;
        m->a = parse_unary(P, 0);
        P->depth--;
        if (!m->a) return template_node_free(m), NULL;
        n = m;
    } else {
        n = parse_postfix(P);
    }
    return with_filter ? parse_filters(P, n) : n;
}

static tmpl_node *binary(parser *P, tmpl_node *l, tmpl_node *(*sub)(parser *), tmpl_node_kind kind) {
    tmpl_tok *t = cur(P);
    tmpl_node *m = node(P, kind, t->pos);
    if (!m) return template_node_free(l), NULL;
    m->str = strdup(t->s);
    P->i++;
    m->a = l;
    if (!(m->b = sub(P))) return template_node_free(m), NULL;
    return m;
}

static tmpl_node *parse_pow(parser *P) {
    tmpl_node *n = parse_unary(P, 1);
    while (n && is_op(P, "**")) n = binary(P, n, parse_pow, E_BIN);
    return n;
}
static tmpl_node *parse_math2(parser *P) {
    tmpl_node *n = parse_pow(P);
    while (n && (is_op(P, "*") || is_op(P, "/") || is_op(P, "//") || is_op(P, "%"))) n = binary(P, n, parse_pow, E_BIN);
    return n;
}
static tmpl_node *parse_concat(parser *P) {
    tmpl_node *n = parse_math2(P);
    while (n && is_op(P, "~")) n = binary(P, n, parse_math2, E_BIN);
    return n;
}
static tmpl_node *parse_math1(parser *P) {
    tmpl_node *n = parse_concat(P);
    while (n && (is_op(P, "+") || is_op(P, "-"))) n = binary(P, n, parse_concat, E_BIN);
    return n;
}
static tmpl_node *parse_compare(parser *P) {
    tmpl_node *n = parse_math1(P);
    while (n) {
        if (is_op(P, "==") || is_op(P, "!=") || is_op(P, "<") || is_op(P, ">") || is_op(P, "<=") || is_op(P, ">=") ||
            is_name(P, "in")) {
            n = binary(P, n, parse_math1, E_BIN);
        } else if (is_name(P, "not") && is_name_at(P, 1, "in")) {
            P->i++;
            n = binary(P, n, parse_math1, E_BIN);
            if (n) {
                free(n->str);
                n->str = strdup("not in");
            }
        } else {
            break;
        }
    }
    return n;
}
static tmpl_node *parse_not(parser *P) {
    if (is_name(P, "not")) {
        if (P->depth > 200) {
            fail_at(P, cur(P)->pos, "%s", "the template nests more than 200 deep (expressions, blocks or elif chains)");
            return NULL;
        }
        tmpl_node *m = node(P, E_NOT, cur(P)->pos);
        if (!m) return NULL;
        P->i++;
        P->depth++;
        m->a = parse_not(P);
        P->depth--;
        if (!m->a) return template_node_free(m), NULL;
        return m;
    }
    return parse_compare(P);
}
static tmpl_node *parse_and(parser *P) {
    tmpl_node *n = parse_not(P);
    while (n && is_name(P, "and")) n = binary(P, n, parse_not, E_AND);
    return n;
}
static tmpl_node *parse_or(parser *P) {
    tmpl_node *n = parse_and(P);
    while (n && is_name(P, "or")) n = binary(P, n, parse_and, E_OR);
    return n;
}
static tmpl_node *parse_expr_inner(parser *P);
static tmpl_node *parse_expr(parser *P) {
    if (++P->depth > 200) {
        fail_at(P, cur(P)->pos, "%s", "the template nests more than 200 deep (expressions, blocks or elif chains)");
        P->depth--;
        return NULL;
    }
    tmpl_node *n = parse_expr_inner(P);
    P->depth--;
    return n;
}
static tmpl_node *parse_expr_inner(parser *P) {
    tmpl_node *n = parse_or(P);
    while (n && is_name(P, "if")) {
        tmpl_node *m = node(P, E_COND, cur(P)->pos);
        if (!m) return template_node_free(n), NULL;
        P->i++;
        m->a = n;
        n = m;
        if (!(m->b = parse_or(P))) return template_node_free(n), NULL;
        if (is_name(P, "else")) {
            P->i++;
            if (!(m->c = parse_expr(P))) return template_node_free(n), NULL;
        }
    }
    return n;
}

/* ---- statements ---- */

static int parse_body(parser *P, tmpl_list *body, const char *const *stops, int *stopped, size_t open_pos);

static int close_stmt(parser *P) { return expect_kind(P, TT_CLOSE_STMT, "%}"); }

static tmpl_node *parse_if(parser *P, size_t pos) {
    static const char *const stops[] = {"elif", "else", "endif", NULL};
    tmpl_node *n = node(P, N_IF, pos);
    if (!n || !(n->a = parse_expr(P)) || close_stmt(P)) return template_node_free(n), NULL;
    int which = -1;
    if (parse_body(P, &n->body, stops, &which, pos)) return template_node_free(n), NULL;
    size_t at = P->t[P->i - 1].pos;
    if (which == 0) { /* elif: the rest is an if nested in the else branch; it consumes the endif */
        P->depth++; /* an elif chain nests: it counts toward the bound */
        tmpl_node *e = parse_if(P, at);
        P->depth--;
        if (!e || list_add(P, &n->alt, e)) return template_node_free(n), NULL;
        return n;
    }
    if (which == 1) {
        static const char *const end[] = {"endif", NULL};
        if (close_stmt(P) || parse_body(P, &n->alt, end, &which, pos)) return template_node_free(n), NULL;
    }
    if (close_stmt(P)) return template_node_free(n), NULL;
    return n;
}

static tmpl_node *parse_for(parser *P, size_t pos) {
    static const char *const stops[] = {"else", "endfor", NULL};
    tmpl_node *n = node(P, N_FOR, pos);
    if (!n) return NULL;
    while (1) {
        if (cur(P)->kind != TT_NAME || is_keyword(cur(P)->s)) {
            fail_at(P, cur(P)->pos, "expected a loop variable name, found `%s`", tok_desc(cur(P)));
            return template_node_free(n), NULL;
        }
        if (add_name(P, n, cur(P)->s)) return template_node_free(n), NULL;
        P->i++;
        if (!is_op(P, ",")) break;
        P->i++;
    }
    if (!is_name(P, "in")) {
        fail_at(P, cur(P)->pos, "expected `in` in a for loop, found `%s`", tok_desc(cur(P)));
        return template_node_free(n), NULL;
    }
    P->i++;
    if (!(n->a = parse_or(P))) return template_node_free(n), NULL;
    if (is_name(P, "if")) {
        P->i++;
        if (!(n->b = parse_or(P))) return template_node_free(n), NULL;
    }
    if (is_name(P, "recursive")) {
        fail_at(P, cur(P)->pos, "%s", "recursive for loops are not supported");
        return template_node_free(n), NULL;
    }
    int which = -1;
    if (close_stmt(P) || parse_body(P, &n->body, stops, &which, pos)) return template_node_free(n), NULL;
    if (which == 0) {
        static const char *const end[] = {"endfor", NULL};
        if (close_stmt(P) || parse_body(P, &n->alt, end, &which, pos)) return template_node_free(n), NULL;
    }
    if (close_stmt(P)) return template_node_free(n), NULL;
    return n;
}

static tmpl_node *parse_set(parser *P, size_t pos) {
    tmpl_node *n = node(P, N_SET, pos);
    if (!n) return NULL;
    tmpl_tok *t = cur(P);
    if (t->kind != TT_NAME || is_keyword(t->s)) {
        fail_at(P, t->pos, "expected a variable name after `set`, found `%s`", tok_desc(t));
        return template_node_free(n), NULL;
    }
    if (!(n->a = parse_postfix(P))) return template_node_free(n), NULL;
    if (n->a->kind != E_NAME && !(n->a->kind == E_ATTR && n->a->a->kind == E_NAME)) {
        fail_at(P, n->a->pos, "%s", "`set` assigns to a name or to name.attribute only");
        return template_node_free(n), NULL;
    }
    if (is_op(P, ",")) {
        fail_at(P, cur(P)->pos, "%s", "`set a, b = ...` (unpacking) is not supported");
        return template_node_free(n), NULL;
    }
    if (is_op(P, "=")) {
        P->i++;
        if (!(n->b = parse_expr(P)) || close_stmt(P)) return template_node_free(n), NULL;
        return n;
    }
    n->kind = N_SET_BLOCK;
    static const char *const end[] = {"endset", NULL};
    int which;
    if (n->a->kind != E_NAME) {
        fail_at(P, n->a->pos, "%s", "a `set` block assigns to a plain name only");
        return template_node_free(n), NULL;
    }
    if (close_stmt(P) || parse_body(P, &n->body, end, &which, pos) || close_stmt(P)) return template_node_free(n), NULL;
    return n;
}

static tmpl_node *parse_macro(parser *P, size_t pos) {
    tmpl_node *n = node(P, N_MACRO, pos);
    if (!n) return NULL;
    if (cur(P)->kind != TT_NAME) {
        fail_at(P, cur(P)->pos, "expected a macro name, found `%s`", tok_desc(cur(P)));
        return template_node_free(n), NULL;
    }
    n->str = strdup(cur(P)->s);
    P->i++;
    if (expect_op(P, "(")) return template_node_free(n), NULL;
    while (!is_op(P, ")")) {
        if (cur(P)->kind != TT_NAME) {
            fail_at(P, cur(P)->pos, "expected a parameter name, found `%s`", tok_desc(cur(P)));
            return template_node_free(n), NULL;
        }
        if (add_name(P, n, cur(P)->s)) return template_node_free(n), NULL;
        P->i++;
        tmpl_node *def = NULL;
        if (is_op(P, "=")) {
            P->i++;
            if (!(def = parse_expr(P))) return template_node_free(n), NULL;
        }
        /* a NULL default is kept as a hole: kw.v[i] pairs with names[i] */
        if (n->kw.n == n->kw.cap) {
            int cap = n->kw.cap ? n->kw.cap * 2 : 4;
            tmpl_node **v = realloc(n->kw.v, (size_t)cap * sizeof *v);
            if (!v) return template_node_free(def), template_node_free(n), NULL;
            n->kw.v = v, n->kw.cap = cap;
        }
        n->kw.v[n->kw.n++] = def;
        if (!is_op(P, ",")) break;
        P->i++;
    }
    static const char *const end[] = {"endmacro", NULL};
    int which;
    if (expect_op(P, ")") || close_stmt(P) || parse_body(P, &n->body, end, &which, pos) || close_stmt(P))
        return template_node_free(n), NULL;
    return n;
}

/* Parses statements until `{% STOP` for one of STOPS (the tag's name consumed, its `%}` not) or the end. */
static int parse_body(parser *P, tmpl_list *body, const char *const *stops, int *stopped, size_t open_pos) {
    if (P->depth > 200) return fail_at(P, open_pos, "%s", "the template nests more than 200 deep (expressions, blocks or elif chains)");
    while (1) {
        tmpl_tok *t = cur(P);
        if (t->kind == TT_END) {
            if (stops) {
                char msg[160] = "this block is never closed";
                for (int k = 0; stops[k]; k++)
                    if (!strncmp(stops[k], "end", 3)) snprintf(msg, sizeof msg, "this block is never closed with `{%% %s %%}`", stops[k]);
                return fail_at(P, open_pos, "%s", msg);
            }
            return 0;
        }
        if (t->kind == TT_TEXT) {
            tmpl_node *n = node(P, N_TEXT, t->pos);
            if (!n) return -1;
            n->str = malloc(t->len + 1);
            if (!n->str) return template_node_free(n), fail_at(P, t->pos, "%s", "out of memory");
            memcpy(n->str, t->s, t->len + 1);
            n->str_len = t->len;
            P->i++;
            if (list_add(P, body, n)) return -1;
            continue;
        }
        if (t->kind == TT_OPEN_EXPR) {
            P->i++;
            tmpl_node *n = node(P, N_OUTPUT, t->pos);
            if (!n) return -1;
            if (!(n->a = parse_expr(P)) || expect_kind(P, TT_CLOSE_EXPR, "}}")) return template_node_free(n), -1;
            if (list_add(P, body, n)) return -1;
            continue;
        }
        if (t->kind != TT_OPEN_STMT) return fail_at(P, t->pos, "unexpected `%s`", tok_desc(t));
        tmpl_tok *kw = &P->t[P->i + 1];
        if (kw->kind != TT_NAME) return fail_at(P, kw->pos, "expected a statement name after `{%%`, found `%s`", tok_desc(kw));
        if (stops)
            for (int k = 0; stops[k]; k++)
                if (!strcmp(kw->s, stops[k])) {
                    P->i += 2;
                    *stopped = k;
                    return 0;
                }
        P->i += 2;
        tmpl_node *n = NULL;
        P->depth++;
        if (!strcmp(kw->s, "if")) n = parse_if(P, kw->pos);
        else if (!strcmp(kw->s, "for")) n = parse_for(P, kw->pos);
        else if (!strcmp(kw->s, "set")) n = parse_set(P, kw->pos);
        else if (!strcmp(kw->s, "macro")) n = parse_macro(P, kw->pos);
        else if (!strcmp(kw->s, "break") || !strcmp(kw->s, "continue")) {
            n = node(P, kw->s[0] == 'b' ? N_BREAK : N_CONTINUE, kw->pos);
            if (n && close_stmt(P)) template_node_free(n), n = NULL;
        } else if (!strncmp(kw->s, "end", 3) || !strcmp(kw->s, "else") || !strcmp(kw->s, "elif")) {
            P->depth--;
            return fail_at(P, kw->pos, "`%s` without a block it closes", kw->s);
        } else {
            P->depth--;
            return fail_at(P, kw->pos, "the `%s` statement is not supported in chat templates", kw->s);
        }
        P->depth--;
        if (!n || list_add(P, body, n)) return -1;
    }
}

int template_parse(template_program *p, tmpl_tok *toks, int n, rlhf_error *err) {
    parser P = {.p = p, .t = toks, .n = n, .i = 0, .err = err};
    int which;
    if (parse_body(&P, &p->body, NULL, &which, 0) || P.failed) {
        if (!P.failed) template_fail(&p->src, 0, err, RLHF_EINVAL, "could not parse the template");
        return err ? err->code : RLHF_EINVAL;
    }
    return 0;
}
