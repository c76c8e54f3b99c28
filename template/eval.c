/* template/eval.c — runs a parsed template: scopes (one per for-loop iteration and per macro call, as
 * in Jinja, so that a `set` inside a loop does not leak out of it — hence namespace()), statements, and
 * expressions with Python's semantics for +, -, *, /, //, %, **, comparisons, `in`, and/or (which
 * return an operand) and slicing. Values are JSON (jansson) plus undefined, namespaces, macros and
 * bound methods (template_int.h). Filters, tests and methods are in template/builtins.c. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_int.h"

typedef struct binding {
    const char *name;
    tval v;
} binding;

typedef struct frame {
    binding *b;
    int n, cap;
} frame;

struct tmpl_ctx {
    const template_program *p;
    rlhf_error *err;
    frame *f;
    int nf, capf;
    tmpl_buf *out;
    int brk, cont, depth;
    int base; /* in a macro call: its frame; the caller's frames above the template's own two are hidden */
};

const tmpl_src *template_ctx_src(tmpl_ctx *c) { return &c->p->src; }
rlhf_error *template_ctx_err(tmpl_ctx *c) { return c->err; }

#define FAIL(c, pos, ...) template_fail(&(c)->p->src, (pos), (c)->err, RLHF_EINVAL, __VA_ARGS__)

void template_buf_add(tmpl_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

tval template_val_json(json_t *j) { return (tval){.k = V_JSON, .j = j}; }
tval template_val_undef(void) { return (tval){.k = V_UNDEF}; }
void template_val_free(tval *v) {
    json_decref(v->j);
    memset(v, 0, sizeof *v);
}
tval template_val_copy(const tval *v) {
    tval c = *v;
    json_incref(c.j);
    return c;
}

int template_truthy(const tval *v) {
    switch (v->k) {
    case V_UNDEF: return 0;
    case V_JSON:
        switch (json_typeof(v->j)) {
        case JSON_NULL: return 0;
        case JSON_FALSE: return 0;
        case JSON_TRUE: return 1;
        case JSON_INTEGER: return json_integer_value(v->j) != 0;
        case JSON_REAL: return json_real_value(v->j) != 0;
        case JSON_STRING: return json_string_length(v->j) != 0;
        case JSON_ARRAY: return json_array_size(v->j) != 0;
        case JSON_OBJECT: return json_object_size(v->j) != 0;
        }
        return 0;
    default: return 1;
    }
}

static int is_num(const tval *v) { return v->k == V_JSON && json_is_number(v->j); }

int template_equal(const tval *a, const tval *b) {
    if (a->k == V_UNDEF || b->k == V_UNDEF) return a->k == b->k;
    if (a->k != V_JSON || b->k != V_JSON) return a->k == b->k && a->j == b->j && a->fn == b->fn;
    if (json_is_number(a->j) && json_is_number(b->j)) return json_number_value(a->j) == json_number_value(b->j);
    return json_equal(a->j, b->j);
}

static void fmt_float(double d, char *out, size_t cap) {
    if (isnan(d)) snprintf(out, cap, "nan");
    else if (isinf(d)) snprintf(out, cap, d > 0 ? "inf" : "-inf");
    else if (d == floor(d) && fabs(d) < 1e16) snprintf(out, cap, "%.1f", d);
    else {
        for (int prec = 1; prec <= 17; prec++) { /* Python's repr: the shortest that reads back */
            snprintf(out, cap, "%.*g", prec, d);
            if (strtod(out, NULL) == d) break;
        }
    }
}

static void repr_json(const json_t *j, tmpl_buf *b) {
    char num[64];
    switch (json_typeof(j)) {
    case JSON_NULL: template_buf_add(b, "None", 4); break;
    case JSON_TRUE: template_buf_add(b, "True", 4); break;
    case JSON_FALSE: template_buf_add(b, "False", 5); break;
    case JSON_INTEGER: snprintf(num, sizeof num, "%lld", (long long)json_integer_value(j)), template_buf_add(b, num, strlen(num)); break;
    case JSON_REAL: fmt_float(json_real_value(j), num, sizeof num), template_buf_add(b, num, strlen(num)); break;
    case JSON_STRING:
        template_buf_add(b, "'", 1);
        template_buf_add(b, json_string_value(j), json_string_length(j));
        template_buf_add(b, "'", 1);
        break;
    case JSON_ARRAY:
        template_buf_add(b, "[", 1);
        for (size_t i = 0; i < json_array_size(j); i++) {
            if (i) template_buf_add(b, ", ", 2);
            repr_json(json_array_get(j, i), b);
        }
        template_buf_add(b, "]", 1);
        break;
    case JSON_OBJECT: {
        template_buf_add(b, "{", 1);
        const char *k;
        json_t *v;
        int first = 1;
        json_object_foreach((json_t *)j, k, v) {
            if (!first) template_buf_add(b, ", ", 2);
            first = 0;
            template_buf_add(b, "'", 1);
            template_buf_add(b, k, strlen(k));
            template_buf_add(b, "': ", 3);
            repr_json(v, b);
        }
        template_buf_add(b, "}", 1);
        break;
    }
    }
}

int template_to_string(tmpl_ctx *c, const tval *v, size_t pos, tmpl_buf *b) {
    switch (v->k) {
    case V_UNDEF: return 0;
    case V_JSON:
        if (json_is_string(v->j)) template_buf_add(b, json_string_value(v->j), json_string_length(v->j));
        else repr_json(v->j, b);
        return 0;
    case V_NS: template_buf_add(b, "<Namespace>", 11); return 0;
    default: return FAIL(c, pos, "a macro or function cannot be printed; call it");
    }
}

/* ---- scopes ---- */

static int push_frame(tmpl_ctx *c) {
    if (c->nf == c->capf) {
        int cap = c->capf ? c->capf * 2 : 8;
        frame *f = realloc(c->f, (size_t)cap * sizeof *f);
        if (!f) return -1;
        c->f = f;
        c->capf = cap;
    }
    c->f[c->nf++] = (frame){0};
    return 0;
}

static void pop_frame(tmpl_ctx *c) {
    frame *f = &c->f[--c->nf];
    for (int i = 0; i < f->n; i++) template_val_free(&f->b[i].v);
    free(f->b);
}

/* Binds NAME in the innermost scope; takes v. */
static int bind(tmpl_ctx *c, const char *name, tval v) {
    frame *f = &c->f[c->nf - 1];
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->b[i].name, name)) {
            template_val_free(&f->b[i].v);
            f->b[i].v = v;
            return 0;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 8;
        binding *b = realloc(f->b, (size_t)cap * sizeof *b);
        if (!b) return template_val_free(&v), -1;
        f->b = b;
        f->cap = cap;
    }
    f->b[f->n++] = (binding){name, v};
    return 0;
}

static const char *const GLOBALS[] = {"raise_exception", "namespace", "range", "dict", NULL};

static tval lookup(tmpl_ctx *c, const char *name) {
    for (int k = c->nf - 1; k >= 0; k--) {
        if (c->base && k < c->base && k >= 2) continue; /* a macro sees the template's globals, not its caller's locals */
        for (int i = 0; i < c->f[k].n; i++)
            if (!strcmp(c->f[k].b[i].name, name)) return template_val_copy(&c->f[k].b[i].v);
    }
    for (int i = 0; GLOBALS[i]; i++)
        if (!strcmp(GLOBALS[i], name)) return (tval){.k = V_FUNC, .name = GLOBALS[i]};
    return template_val_undef();
}

/* ---- expressions ---- */

static int eval(tmpl_ctx *c, const tmpl_node *e, tval *out);
static int exec_list(tmpl_ctx *c, const tmpl_list *l);

static const char *type_name(const tval *v) {
    switch (v->k) {
    case V_UNDEF: return "undefined";
    case V_NS: return "namespace";
    case V_MACRO: return "macro";
    case V_METHOD:
    case V_FUNC: return "function";
    case V_LOOP: return "loop";
    case V_JSON: break;
    }
    switch (json_typeof(v->j)) {
    case JSON_NULL: return "none";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "float";
    case JSON_STRING: return "string";
    case JSON_ARRAY: return "list";
    case JSON_OBJECT: return "dict";
    }
    return "value";
}

/* The JSON of a value that goes into a list, dict or namespace (a new reference), or NULL. */
static json_t *as_json(tmpl_ctx *c, const tval *v, size_t pos) {
    if (v->k == V_JSON) return json_incref(v->j);
    if (v->k == V_UNDEF) return json_null(); /* Jinja keeps an Undefined; it prints and tests as empty */
    FAIL(c, pos, "a %s cannot be stored in a list, dict or namespace", type_name(v));
    return NULL;
}

/* Python index of a code point sequence: the byte offsets of code points of s. */
static size_t utf8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}
static size_t utf8_offset(const char *s, size_t n, size_t cp) {
    size_t k = 0, i = 0;
    for (; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (k == cp) return i;
            k++;
        }
    }
    return n;
}

static int get_item(tmpl_ctx *c, const tval *obj, const tval *idx, size_t pos, tval *out) {
    *out = template_val_undef();
    if (obj->k == V_UNDEF) return FAIL(c, pos, "cannot index an undefined value");
    if ((obj->k == V_JSON || obj->k == V_NS || obj->k == V_LOOP) && json_is_object(obj->j)) {
        if (idx->k != V_JSON || !json_is_string(idx->j)) return 0;
        json_t *v = json_object_get(obj->j, json_string_value(idx->j));
        if (v) *out = template_val_json(json_incref(v));
        return 0;
    }
    if (obj->k == V_JSON && (json_is_array(obj->j) || json_is_string(obj->j))) {
        if (idx->k != V_JSON || !json_is_integer(idx->j))
            return FAIL(c, pos, "a %s index must be an integer, not a %s", type_name(obj), type_name(idx));
        long long i = json_integer_value(idx->j);
        if (json_is_array(obj->j)) {
            long long n = (long long)json_array_size(obj->j);
            if (i < 0) i += n;
            if (i >= 0 && i < n) *out = template_val_json(json_incref(json_array_get(obj->j, (size_t)i)));
        } else {
            const char *s = json_string_value(obj->j);
            size_t bl = json_string_length(obj->j);
            long long n = (long long)utf8_count(s, bl);
            if (i < 0) i += n;
            if (i >= 0 && i < n) {
                size_t a = utf8_offset(s, bl, (size_t)i), b = utf8_offset(s, bl, (size_t)i + 1);
                *out = template_val_json(json_stringn_nocheck(s + a, b - a));
            }
        }
        return 0;
    }
    return FAIL(c, pos, "cannot index a %s", type_name(obj));
}

static int slice_bound(tmpl_ctx *c, const tmpl_node *e, long long n, long long step, int is_start, long long *out) {
    if (!e) {
        *out = step > 0 ? (is_start ? 0 : n) : (is_start ? n - 1 : -1);
        return 0;
    }
    tval v;
    if (eval(c, e, &v)) return -1;
    if (v.k == V_JSON && json_is_null(v.j)) {
        template_val_free(&v);
        *out = step > 0 ? (is_start ? 0 : n) : (is_start ? n - 1 : -1);
        return 0;
    }
    if (v.k != V_JSON || !json_is_integer(v.j)) {
        template_val_free(&v);
        return FAIL(c, e->pos, "slice bounds must be integers");
    }
    long long i = json_integer_value(v.j);
    template_val_free(&v);
    if (i < 0) i += n;
    if (step > 0) i = i < 0 ? 0 : i > n ? n : i;
    else i = i < -1 ? -1 : i > n - 1 ? n - 1 : i;
    *out = i;
    return 0;
}

static int eval_slice(tmpl_ctx *c, const tmpl_node *e, tval *out) {
    tval obj;
    if (eval(c, e->a, &obj)) return -1;
    int rc = -1;
    long long step = 1, a, b;
    if (e->body.n) {
        tval s;
        if (eval(c, e->body.v[0], &s)) goto done;
        if (s.k == V_JSON && json_is_integer(s.j)) step = json_integer_value(s.j);
        else if (!(s.k == V_JSON && json_is_null(s.j))) {
            template_val_free(&s);
            FAIL(c, e->pos, "a slice step must be an integer");
            goto done;
        }
        template_val_free(&s);
        if (step == 0) {
            FAIL(c, e->pos, "a slice step cannot be zero");
            goto done;
        }
    }
    if (obj.k != V_JSON || !(json_is_array(obj.j) || json_is_string(obj.j))) {
        FAIL(c, e->pos, "cannot slice a %s", type_name(&obj));
        goto done;
    }
    int str = json_is_string(obj.j);
    const char *s = str ? json_string_value(obj.j) : NULL;
    size_t bl = str ? json_string_length(obj.j) : 0;
    long long n = str ? (long long)utf8_count(s, bl) : (long long)json_array_size(obj.j);
    if (slice_bound(c, e->b, n, step, 1, &a) || slice_bound(c, e->c, n, step, 0, &b)) goto done;
    if (str) {
        tmpl_buf buf = {0};
        template_buf_add(&buf, "", 0);
        /* a step past the 64-bit range ends the slice (no overflowing index) */
        for (long long i = a; step > 0 ? i < b : i > b;) {
            size_t x = utf8_offset(s, bl, (size_t)i), y = utf8_offset(s, bl, (size_t)i + 1);
            template_buf_add(&buf, s + x, y - x);
            if (__builtin_add_overflow(i, step, &i)) break;
        }
        *out = template_val_json(json_stringn_nocheck(buf.s ? buf.s : "", buf.n));
        free(buf.s);
    } else {
        json_t *arr = json_array();
        for (long long i = a; step > 0 ? i < b : i > b;) {
            json_array_append(arr, json_array_get(obj.j, (size_t)i));
            if (__builtin_add_overflow(i, step, &i)) break;
        }
        *out = template_val_json(arr);
    }
    rc = 0;
done:
    template_val_free(&obj);
    return rc;
}

typedef struct call_args {
    tval *pos, *kw;
    char **kwn;
    int npos, nkw;
} call_args;

static void args_free(call_args *a) {
    for (int i = 0; i < a->npos; i++) template_val_free(&a->pos[i]);
    for (int i = 0; i < a->nkw; i++) template_val_free(&a->kw[i]);
    free(a->pos);
    free(a->kw);
}

static int eval_args(tmpl_ctx *c, const tmpl_node *e, call_args *a) {
    memset(a, 0, sizeof *a);
    a->pos = calloc((size_t)e->body.n + 1, sizeof *a->pos);
    a->kw = calloc((size_t)e->kw.n + 1, sizeof *a->kw);
    if (!a->pos || !a->kw) return args_free(a), FAIL(c, e->pos, "out of memory");
    for (int i = 0; i < e->body.n; i++, a->npos++)
        if (eval(c, e->body.v[i], &a->pos[i])) return args_free(a), -1;
    for (int i = 0; i < e->kw.n; i++, a->nkw++)
        if (eval(c, e->kw.v[i], &a->kw[i])) return args_free(a), -1;
    a->kwn = e->names;
    return 0;
}

static int binop(tmpl_ctx *c, const tmpl_node *e, tval *l, tval *r, tval *out) {
    const char *op = e->str;
    if (!strcmp(op, "==") || !strcmp(op, "!=")) {
        int eq = template_equal(l, r);
        *out = template_val_json(json_boolean(op[0] == '=' ? eq : !eq));
        return 0;
    }
    if (!strcmp(op, "in") || !strcmp(op, "not in")) {
        int found = 0;
        if (r->k == V_UNDEF) found = 0;
        else if (r->k == V_JSON && json_is_string(r->j)) {
            if (l->k != V_JSON || !json_is_string(l->j))
                return FAIL(c, e->pos, "`in <string>` needs a string on the left, not a %s", type_name(l));
            found = memmem(json_string_value(r->j), json_string_length(r->j), json_string_value(l->j),
                           json_string_length(l->j)) != NULL || json_string_length(l->j) == 0;
        } else if (r->k == V_JSON && json_is_array(r->j)) {
            for (size_t i = 0; i < json_array_size(r->j) && !found; i++) {
                tval item = {.k = V_JSON, .j = json_array_get(r->j, i)};
                found = template_equal(l, &item);
            }
        } else if ((r->k == V_JSON || r->k == V_NS) && json_is_object(r->j)) {
            found = l->k == V_JSON && json_is_string(l->j) && json_object_get(r->j, json_string_value(l->j));
        } else {
            return FAIL(c, e->pos, "`in` needs a string, list or dict on the right, not a %s", type_name(r));
        }
        *out = template_val_json(json_boolean(op[0] == 'i' ? found : !found));
        return 0;
    }
    if (!strcmp(op, "~")) {
        tmpl_buf b = {0};
        template_buf_add(&b, "", 0);
        if (template_to_string(c, l, e->pos, &b) || template_to_string(c, r, e->pos, &b)) return free(b.s), -1;
        *out = template_val_json(json_stringn_nocheck(b.s, b.n));
        free(b.s);
        return 0;
    }
    if (is_num(l) && is_num(r)) {
        int ints = json_is_integer(l->j) && json_is_integer(r->j);
        long long x = ints ? json_integer_value(l->j) : 0, y = ints ? json_integer_value(r->j) : 0;
        double a = json_number_value(l->j), b = json_number_value(r->j);
        json_t *res = NULL;
        long long z = 0;
        /* integers are 64-bit here (Python's are unbounded): a result beyond that is an error, never UB */
        if (ints && ((!strcmp(op, "+") && __builtin_add_overflow(x, y, &z)) ||
                     (!strcmp(op, "-") && __builtin_sub_overflow(x, y, &z)) ||
                     (!strcmp(op, "*") && __builtin_mul_overflow(x, y, &z))))
            return FAIL(c, e->pos, "integer overflow in `%s` (integers are 64-bit)", op);
        if (!strcmp(op, "+")) res = ints ? json_integer(z) : json_real(a + b);
        else if (!strcmp(op, "-")) res = ints ? json_integer(z) : json_real(a - b);
        else if (!strcmp(op, "*")) res = ints ? json_integer(z) : json_real(a * b);
        else if (!strcmp(op, "<")) res = json_boolean(a < b);
        else if (!strcmp(op, ">")) res = json_boolean(a > b);
        else if (!strcmp(op, "<=")) res = json_boolean(a <= b);
        else if (!strcmp(op, ">=")) res = json_boolean(a >= b);
        else if (!strcmp(op, "**")) {
            double pw = ints && y >= 0 ? pow((double)x, (double)y) : pow(a, b);
            if (ints && y >= 0 && !(fabs(pw) < 9.2e18))
                return FAIL(c, e->pos, "integer overflow in `**` (integers are 64-bit)");
            res = ints && y >= 0 ? json_integer((long long)pw) : json_real(pw);
        }
        else {
            if (b == 0) return FAIL(c, e->pos, "division by zero");
            if (!strcmp(op, "/")) res = json_real(a / b);
            else if (!strcmp(op, "//")) {
                double q = floor(a / b);
                if (ints && !(fabs(q) < 9.2e18)) return FAIL(c, e->pos, "integer overflow in `//` (integers are 64-bit)");
                res = ints ? json_integer((long long)q) : json_real(q);
            } else if (!strcmp(op, "%")) {
                if (ints) {
                    long long m = y == -1 ? 0 : x % y; /* LLONG_MIN % -1 overflows in C */
                    if (m != 0 && ((m < 0) != (y < 0))) m += y;
                    res = json_integer(m);
                } else {
                    double m = fmod(a, b);
                    if (m != 0 && ((m < 0) != (b < 0))) m += b;
                    res = json_real(m);
                }
            }
        }
        if (!res) return FAIL(c, e->pos, "operator `%s` is not supported", op);
        *out = template_val_json(res);
        return 0;
    }
    int lstr = l->k == V_JSON && json_is_string(l->j), rstr = r->k == V_JSON && json_is_string(r->j);
    if (lstr && rstr) {
        const char *a = json_string_value(l->j), *b = json_string_value(r->j);
        size_t la = json_string_length(l->j), lb = json_string_length(r->j);
        if (!strcmp(op, "+")) {
            char *s = malloc(la + lb + 1);
            if (!s) return FAIL(c, e->pos, "out of memory");
            memcpy(s, a, la);
            memcpy(s + la, b, lb);
            *out = template_val_json(json_stringn_nocheck(s, la + lb));
            free(s);
            return 0;
        }
        int cmp = memcmp(a, b, la < lb ? la : lb);
        if (cmp == 0) cmp = la < lb ? -1 : la > lb;
        json_t *res = !strcmp(op, "<") ? json_boolean(cmp < 0) : !strcmp(op, ">") ? json_boolean(cmp > 0)
                    : !strcmp(op, "<=") ? json_boolean(cmp <= 0) : !strcmp(op, ">=") ? json_boolean(cmp >= 0) : NULL;
        if (res) {
            *out = template_val_json(res);
            return 0;
        }
    }
    if (!strcmp(op, "+") && l->k == V_JSON && r->k == V_JSON && json_is_array(l->j) && json_is_array(r->j)) {
        json_t *arr = json_copy(l->j);
        json_array_extend(arr, r->j);
        *out = template_val_json(arr);
        return 0;
    }
    if (!strcmp(op, "*") && ((lstr && r->k == V_JSON && json_is_integer(r->j)) || (rstr && l->k == V_JSON && json_is_integer(l->j)))) {
        const tval *s = lstr ? l : r, *k = lstr ? r : l;
        tmpl_buf b = {0};
        template_buf_add(&b, "", 0);
        for (long long i = 0; i < json_integer_value(k->j); i++) template_buf_add(&b, json_string_value(s->j), json_string_length(s->j));
        *out = template_val_json(json_stringn_nocheck(b.s, b.n));
        free(b.s);
        return 0;
    }
    return FAIL(c, e->pos, "operator `%s` cannot combine a %s and a %s", op, type_name(l), type_name(r));
}

static int eval(tmpl_ctx *c, const tmpl_node *e, tval *out) {
    *out = template_val_undef();
    switch (e->kind) {
    case E_LIT: *out = template_val_json(json_incref(e->lit)); return 0;
    case E_NAME: *out = lookup(c, e->str); return 0;
    case E_ATTR: {
        tval obj;
        if (eval(c, e->a, &obj)) return -1;
        int rc = 0;
        if (obj.k == V_UNDEF) rc = FAIL(c, e->pos, "cannot read `.%s` of an undefined value", e->str);
        else if ((obj.k == V_JSON || obj.k == V_NS || obj.k == V_LOOP) && json_is_object(obj.j) && json_object_get(obj.j, e->str))
            *out = template_val_json(json_incref(json_object_get(obj.j, e->str)));
        else if (obj.k == V_JSON && template_has_method(&obj, e->str))
            *out = (tval){.k = V_METHOD, .j = json_incref(obj.j), .name = e->str};
        template_val_free(&obj);
        return rc;
    }
    case E_INDEX: {
        tval obj, idx;
        if (eval(c, e->a, &obj)) return -1;
        if (eval(c, e->b, &idx)) return template_val_free(&obj), -1;
        int rc = get_item(c, &obj, &idx, e->pos, out);
        template_val_free(&obj);
        template_val_free(&idx);
        return rc;
    }
    case E_SLICE: return eval_slice(c, e, out);
    case E_CALL: {
        tval fn;
        call_args a;
        if (eval(c, e->a, &fn)) return -1;
        if (eval_args(c, e, &a)) return template_val_free(&fn), -1;
        int rc;
        if (fn.k == V_METHOD) rc = template_method(c, e, &(tval){.k = V_JSON, .j = fn.j}, fn.name, a.pos, a.npos, a.kwn, a.kw, a.nkw, out);
        else if (fn.k == V_FUNC) rc = template_global(c, e, fn.name, a.pos, a.npos, a.kwn, a.kw, a.nkw, out);
        else if (fn.k == V_MACRO) rc = template_call_macro(c, fn.fn, a.pos, a.npos, a.kwn, a.kw, a.nkw, e->pos, out);
        else if (fn.k == V_UNDEF && e->a->kind == E_NAME) rc = FAIL(c, e->pos, "`%s` is not defined (no such function or macro)", e->a->str);
        else if (fn.k == V_UNDEF && e->a->kind == E_ATTR) rc = FAIL(c, e->pos, "`%s` is not a method of this value", e->a->str);
        else rc = FAIL(c, e->pos, "a %s cannot be called", type_name(&fn));
        template_val_free(&fn);
        args_free(&a);
        return rc;
    }
    case E_FILTER: {
        tval in;
        call_args a;
        if (eval(c, e->a, &in)) return -1;
        if (eval_args(c, e, &a)) return template_val_free(&in), -1;
        int rc = template_filter(c, e, &in, a.pos, a.npos, a.kwn, a.kw, a.nkw, out);
        template_val_free(&in);
        args_free(&a);
        return rc;
    }
    case E_TEST: {
        tval in;
        call_args a;
        if (eval(c, e->a, &in)) return -1;
        if (eval_args(c, e, &a)) return template_val_free(&in), -1;
        int result = 0;
        int rc = a.nkw ? FAIL(c, e->pos, "test `%s` takes no keyword arguments", e->str)
                       : template_test(c, e, &in, a.pos, a.npos, &result);
        if (!rc) *out = template_val_json(json_boolean(e->negated ? !result : result));
        template_val_free(&in);
        args_free(&a);
        return rc;
    }
    case E_NOT: {
        tval v;
        if (eval(c, e->a, &v)) return -1;
        *out = template_val_json(json_boolean(!template_truthy(&v)));
        template_val_free(&v);
        return 0;
    }
    case E_NEG:
    case E_POS: {
        tval v;
        if (eval(c, e->a, &v)) return -1;
        if (!is_num(&v)) {
            template_val_free(&v);
            return FAIL(c, e->pos, "unary `%c` needs a number", e->kind == E_NEG ? '-' : '+');
        }
        if (e->kind == E_POS) *out = v;
        else {
            if (json_is_integer(v.j) && json_integer_value(v.j) == LLONG_MIN) {
                template_val_free(&v);
                return FAIL(c, e->pos, "integer overflow in unary `-` (integers are 64-bit)");
            }
            *out = template_val_json(json_is_integer(v.j) ? json_integer(-json_integer_value(v.j)) : json_real(-json_real_value(v.j)));
            template_val_free(&v);
        }
        return 0;
    }
    case E_AND:
    case E_OR: {
        tval l;
        if (eval(c, e->a, &l)) return -1;
        int t = template_truthy(&l);
        if ((e->kind == E_AND) != t) {
            *out = l;
            return 0;
        }
        template_val_free(&l);
        return eval(c, e->b, out);
    }
    case E_COND: {
        tval cond;
        if (eval(c, e->b, &cond)) return -1;
        int t = template_truthy(&cond);
        template_val_free(&cond);
        if (t) return eval(c, e->a, out);
        return e->c ? eval(c, e->c, out) : 0;
    }
    case E_BIN: {
        tval l, r;
        if (eval(c, e->a, &l)) return -1;
        if (eval(c, e->b, &r)) return template_val_free(&l), -1;
        int rc = binop(c, e, &l, &r, out);
        template_val_free(&l);
        template_val_free(&r);
        return rc;
    }
    case E_LIST: {
        json_t *arr = json_array();
        for (int i = 0; i < e->body.n; i++) {
            tval v;
            if (eval(c, e->body.v[i], &v)) return json_decref(arr), -1;
            json_t *j = as_json(c, &v, e->body.v[i]->pos);
            template_val_free(&v);
            if (!j) return json_decref(arr), -1;
            json_array_append_new(arr, j);
        }
        *out = template_val_json(arr);
        return 0;
    }
    case E_DICT: {
        json_t *obj = json_object();
        for (int i = 0; i < e->body.n; i++) {
            tval k, v;
            if (eval(c, e->body.v[i], &k)) return json_decref(obj), -1;
            if (k.k != V_JSON || !json_is_string(k.j)) {
                template_val_free(&k);
                json_decref(obj);
                return FAIL(c, e->body.v[i]->pos, "dict keys must be strings");
            }
            if (eval(c, e->alt.v[i], &v)) return template_val_free(&k), json_decref(obj), -1;
            json_t *j = as_json(c, &v, e->alt.v[i]->pos);
            template_val_free(&v);
            if (!j) return template_val_free(&k), json_decref(obj), -1;
            json_object_set_new(obj, json_string_value(k.j), j);
            template_val_free(&k);
        }
        *out = template_val_json(obj);
        return 0;
    }
    default: return FAIL(c, e->pos, "internal: not an expression");
    }
}

/* ---- statements ---- */

static int render_to(tmpl_ctx *c, const tmpl_list *body, tval *out) {
    tmpl_buf buf = {0}, *saved = c->out;
    template_buf_add(&buf, "", 0);
    c->out = &buf;
    int rc = exec_list(c, body);
    c->out = saved;
    if (!rc && buf.oom) rc = FAIL(c, 0, "out of memory rendering the template");
    if (!rc) *out = template_val_json(json_stringn_nocheck(buf.s, buf.n));
    free(buf.s);
    return rc;
}

int template_call_macro(tmpl_ctx *c, const tmpl_node *m, tval *args, int nargs, char **kwn, tval *kwv, int nkw,
                        size_t pos, tval *out) {
    if (nargs > m->n_names) return FAIL(c, pos, "macro `%s` takes %d arguments, %d given", m->str, m->n_names, nargs);
    if (c->depth > 64) return FAIL(c, pos, "macro calls nest deeper than 64 (recursion?)");
    if (push_frame(c)) return FAIL(c, pos, "out of memory");
    int rc = 0, saved_base = c->base;
    for (int i = 0; i < m->n_names && !rc; i++) {
        tval v = template_val_undef();
        int given = 0;
        if (i < nargs) v = template_val_copy(&args[i]), given = 1;
        for (int k = 0; k < nkw; k++)
            if (kwn[k] && !strcmp(kwn[k], m->names[i])) {
                if (given) {
                    template_val_free(&v);
                    rc = FAIL(c, pos, "macro `%s` got argument `%s` twice", m->str, m->names[i]);
                    break;
                }
                v = template_val_copy(&kwv[k]), given = 1;
            }
        if (!rc && !given && m->kw.v[i]) rc = eval(c, m->kw.v[i], &v);
        if (!rc && bind(c, m->names[i], v)) rc = FAIL(c, pos, "out of memory");
    }
    for (int k = 0; k < nkw && !rc; k++) {
        int known = 0;
        for (int i = 0; i < m->n_names; i++) known |= kwn[k] && !strcmp(kwn[k], m->names[i]);
        if (!known) rc = FAIL(c, pos, "macro `%s` has no parameter `%s`", m->str, kwn[k] ? kwn[k] : "?");
    }
    c->depth++;
    c->base = c->nf - 1;
    if (!rc) rc = render_to(c, &m->body, out);
    c->base = saved_base;
    c->depth--;
    pop_frame(c);
    return rc;
}

static int exec_for(tmpl_ctx *c, const tmpl_node *s) {
    tval it;
    if (eval(c, s->a, &it)) return -1;
    json_t *items = NULL;
    if (it.k == V_UNDEF) items = json_array();
    else if (it.k == V_JSON && json_is_array(it.j)) items = json_copy(it.j);
    else if ((it.k == V_JSON || it.k == V_NS) && json_is_object(it.j)) {
        items = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(it.j, k, v) json_array_append_new(items, json_string(k));
    } else if (it.k == V_JSON && json_is_string(it.j)) {
        items = json_array();
        const char *str = json_string_value(it.j);
        size_t n = json_string_length(it.j);
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            while (j < n && ((unsigned char)str[j] & 0xC0) == 0x80) j++;
            json_array_append_new(items, json_stringn_nocheck(str + i, j - i));
            i = j;
        }
    } else {
        int rc = FAIL(c, s->a->pos, "cannot loop over a %s", type_name(&it));
        template_val_free(&it);
        return rc;
    }
    template_val_free(&it);
    int rc = 0;
    size_t ntargets = (size_t)s->n_names;
#define BIND_TARGETS(item)                                                                                             \
    do {                                                                                                               \
        if (ntargets == 1) rc = bind(c, s->names[0], template_val_json(json_incref(item)));                          \
        else if (!json_is_array(item) || json_array_size(item) != ntargets)                                            \
            rc = FAIL(c, s->pos, "cannot unpack a loop item into %zu names", ntargets);                                \
        else                                                                                                           \
            for (size_t t = 0; t < ntargets && !rc; t++)                                                               \
                rc = bind(c, s->names[t], template_val_json(json_incref(json_array_get(item, t))));                    \
    } while (0)
    if (s->b) { /* `for x in xs if cond`: filtered first, so loop.* counts the kept items */
        json_t *kept = json_array();
        for (size_t i = 0; i < json_array_size(items) && !rc; i++) {
            if (push_frame(c)) { rc = FAIL(c, s->pos, "out of memory"); break; }
            BIND_TARGETS(json_array_get(items, i));
            tval cond;
            if (!rc && !(rc = eval(c, s->b, &cond))) {
                if (template_truthy(&cond)) json_array_append(kept, json_array_get(items, i));
                template_val_free(&cond);
            }
            pop_frame(c);
        }
        json_decref(items);
        items = kept;
    }
    size_t n = json_array_size(items);
    for (size_t i = 0; i < n && !rc; i++) {
        if (push_frame(c)) { rc = FAIL(c, s->pos, "out of memory"); break; }
        json_t *loop = json_pack("{sI sI sI sI sb sb sI}", "index", (json_int_t)(i + 1), "index0", (json_int_t)i,
                                 "revindex", (json_int_t)(n - i), "revindex0", (json_int_t)(n - i - 1), "first", i == 0,
                                 "last", i + 1 == n, "length", (json_int_t)n);
        if (i > 0) json_object_set(loop, "previtem", json_array_get(items, i - 1));
        if (i + 1 < n) json_object_set(loop, "nextitem", json_array_get(items, i + 1));
        rc = bind(c, "loop", (tval){.k = V_LOOP, .j = loop});
        if (!rc) BIND_TARGETS(json_array_get(items, i));
        if (!rc) rc = exec_list(c, &s->body);
        pop_frame(c);
        c->cont = 0;
        if (c->brk) {
            c->brk = 0;
            break;
        }
    }
#undef BIND_TARGETS
    if (!rc && n == 0 && s->alt.n) rc = exec_list(c, &s->alt);
    json_decref(items);
    return rc;
}

static int exec_stmt(tmpl_ctx *c, const tmpl_node *s) {
    switch (s->kind) {
    case N_TEXT: template_buf_add(c->out, s->str, s->str_len); return 0;
    case N_OUTPUT: {
        tval v;
        if (eval(c, s->a, &v)) return -1;
        int rc = template_to_string(c, &v, s->a->pos, c->out);
        template_val_free(&v);
        return rc;
    }
    case N_IF: {
        tval v;
        if (eval(c, s->a, &v)) return -1;
        int t = template_truthy(&v);
        template_val_free(&v);
        return exec_list(c, t ? &s->body : &s->alt);
    }
    case N_FOR: return exec_for(c, s);
    case N_SET:
    case N_SET_BLOCK: {
        tval v;
        if (s->kind == N_SET ? eval(c, s->b, &v) : render_to(c, &s->body, &v)) return -1;
        if (s->a->kind == E_NAME) return bind(c, s->a->str, v) ? FAIL(c, s->pos, "out of memory") : 0;
        tval ns = lookup(c, s->a->a->str);
        int rc = 0;
        if (ns.k != V_NS) rc = FAIL(c, s->a->pos, "`set %s.%s`: `%s` is a %s, not a namespace()", s->a->a->str, s->a->str,
                                    s->a->a->str, type_name(&ns));
        else {
            json_t *j = as_json(c, &v, s->b->pos);
            if (!j) rc = -1;
            else json_object_set_new(ns.j, s->a->str, j);
        }
        template_val_free(&ns);
        template_val_free(&v);
        return rc;
    }
    case N_MACRO: return bind(c, s->str, (tval){.k = V_MACRO, .fn = s}) ? FAIL(c, s->pos, "out of memory") : 0;
    case N_BREAK: c->brk = 1; return 0;
    case N_CONTINUE: c->cont = 1; return 0;
    default: return FAIL(c, s->pos, "internal: not a statement");
    }
}

static int exec_list(tmpl_ctx *c, const tmpl_list *l) {
    for (int i = 0; i < l->n; i++) {
        if (exec_stmt(c, l->v[i])) return -1;
        if (c->brk || c->cont) return 0;
    }
    return 0;
}

int template_render(const template_program *p, const json_t *context, char **out, size_t *out_len, rlhf_error *err) {
    tmpl_ctx c = {.p = p, .err = err};
    tmpl_buf buf = {0};
    template_buf_add(&buf, "", 0);
    c.out = &buf;
    int rc = 0;
    if (push_frame(&c)) rc = rlhf_error_set(err, RLHF_ENOMEM, p->src.name, "out of memory");
    if (!rc && context) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)context, k, v) if (bind(&c, k, template_val_json(json_incref(v)))) rc = -1;
    }
    if (!rc && push_frame(&c)) rc = -1; /* the template's own `set`s shadow the caller's variables */
    if (!rc) rc = exec_list(&c, &p->body);
    while (c.nf) pop_frame(&c);
    free(c.f);
    if (!rc && buf.oom) rc = rlhf_error_set(err, RLHF_ENOMEM, p->src.name, "out of memory rendering the template");
    if (rc) {
        free(buf.s);
        return err && err->code ? err->code : RLHF_EINVAL;
    }
    *out = buf.s;
    if (out_len) *out_len = buf.n;
    return 0;
}
