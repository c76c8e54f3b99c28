/* template/template_int.h — the lexer's tokens, the parser's tree and the evaluator's values, shared by
 * template/lexer.c, template/parser.c, template/eval.c and template/builtins.c. */
#ifndef RLHF_TEMPLATE_INT_H
#define RLHF_TEMPLATE_INT_H

#include <jansson.h>
#include <stddef.h>

#include "common/common.h"
#include "template/template.h"

/* ---- lexer ---- */
typedef enum {
    TT_TEXT, TT_NUM, TT_STR, TT_NAME, TT_OP, /* TT_OP: punctuation and operators, text in s */
    TT_OPEN_STMT, TT_CLOSE_STMT, TT_OPEN_EXPR, TT_CLOSE_EXPR, TT_END
} tmpl_tok_kind;

typedef struct tmpl_tok {
    tmpl_tok_kind kind;
    char *s;      /* text, string value, name, operator or number spelling */
    size_t len;
    size_t pos;   /* offset in the ORIGINAL template (for line:column) */
} tmpl_tok;

typedef struct tmpl_src {
    const char *text; /* the original template */
    size_t len;
    const char *name;
} tmpl_src;

/* "NAME:LINE:COL" of an original offset. */
void template_where(const tmpl_src *src, size_t pos, char *out, size_t cap);
int template_fail(const tmpl_src *src, size_t pos, rlhf_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

int template_lex(const tmpl_src *src, tmpl_tok **toks, int *n, rlhf_error *err);
void template_toks_free(tmpl_tok *toks, int n);

/* ---- parser ---- */
typedef enum {
    /* statements */
    N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_BLOCK, N_MACRO, N_BREAK, N_CONTINUE,
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NOT, E_NEG, E_POS, E_BIN,
    E_AND, E_OR, E_COND, E_LIST, E_DICT
} tmpl_node_kind;

typedef struct tmpl_node tmpl_node;
typedef struct tmpl_list {
    tmpl_node **v;
    int n, cap;
} tmpl_list;

struct tmpl_node {
    tmpl_node_kind kind;
    size_t pos;
    char *str;              /* name, attribute, filter/test/macro name, operator, N_TEXT text */
    size_t str_len;
    json_t *lit;            /* E_LIT */
    tmpl_node *a, *b, *c;   /* operands; N_IF: a=cond; N_FOR: a=iterable, b=filter cond; N_SET: a=target, b=value */
    tmpl_list body, alt;    /* N_IF/N_FOR/N_MACRO/N_SET_BLOCK bodies; alt: else; E_CALL/E_FILTER/E_TEST/E_LIST: body=args;
                             * E_DICT: body=keys, alt=values */
    char **names;           /* N_FOR targets, N_MACRO parameters, call keyword-argument names (NULL for positional) */
    int n_names;
    tmpl_list kw;           /* E_CALL/E_FILTER/E_TEST keyword-argument values (names[i]); N_MACRO parameter defaults (NULL: none) */
    int negated;            /* E_TEST: `is not` */
};

struct template_program {
    tmpl_src src;
    char *text_copy, *name_copy;
    tmpl_list body;
};

int template_parse(template_program *p, tmpl_tok *toks, int n, rlhf_error *err);
void template_node_free(tmpl_node *n);
void template_list_free(tmpl_list *l);

/* ---- values ---- */
typedef enum { V_UNDEF, V_JSON, V_NS, V_MACRO, V_METHOD, V_FUNC, V_LOOP } tval_kind;
typedef struct tval {
    tval_kind k;
    json_t *j;            /* V_JSON: the value; V_NS: its object; V_METHOD: the receiver; V_LOOP: the loop object */
    const tmpl_node *fn;  /* V_MACRO */
    const char *name;     /* V_METHOD: method name; V_FUNC: global function name */
} tval;

typedef struct tmpl_buf {
    char *s;
    size_t n, cap;
    int oom;
} tmpl_buf;
void template_buf_add(tmpl_buf *b, const char *s, size_t n);

typedef struct tmpl_ctx tmpl_ctx;
/* evaluator services for builtins.c */
const tmpl_src *template_ctx_src(tmpl_ctx *c);
rlhf_error *template_ctx_err(tmpl_ctx *c);
int template_call_macro(tmpl_ctx *c, const tmpl_node *macro, tval *args, int nargs, char **kwn, tval *kwv, int nkw,
                        size_t pos, tval *out);

tval template_val_json(json_t *j); /* takes the reference */
tval template_val_undef(void);
void template_val_free(tval *v);
tval template_val_copy(const tval *v);
int template_truthy(const tval *v);
/* Appends the printed form ({{ v }}, `string`, `~`) of v. */
int template_to_string(tmpl_ctx *c, const tval *v, size_t pos, tmpl_buf *b);
int template_equal(const tval *a, const tval *b);
int template_tojson(tmpl_ctx *c, const json_t *j, int indent, int depth, size_t pos, tmpl_buf *b);
/* Unicode whitespace as JavaScript's trim() sees it (what @huggingface/jinja strips). */
size_t template_ws_prefix(const char *s, size_t n);
size_t template_ws_suffix(const char *s, size_t n);

int template_filter(tmpl_ctx *c, const tmpl_node *e, tval *in, tval *args, int nargs, char **kwn, tval *kwv,
                    int nkw, tval *out);
int template_test(tmpl_ctx *c, const tmpl_node *e, tval *in, tval *args, int nargs, int *result);
int template_method(tmpl_ctx *c, const tmpl_node *e, const tval *recv, const char *name, tval *args, int nargs,
                    char **kwn, tval *kwv, int nkw, tval *out);
int template_global(tmpl_ctx *c, const tmpl_node *e, const char *name, tval *args, int nargs, char **kwn,
                    tval *kwv, int nkw, tval *out);
/* Whether NAME is a method of v's type (so that v.NAME is a bound method rather than undefined). */
int template_has_method(const tval *v, const char *name);

#endif
