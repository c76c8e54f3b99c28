/* template/builtins.c — the filters, tests, methods and global functions chat templates call. The
 * string methods strip/lstrip/rstrip take Python's optional CHARS argument (@huggingface/jinja
 * ignores it and strips whitespace; the two agree unless CHARS is given and the text has other
 * whitespace at its ends — docs/CHAT_TEMPLATES.md). Whitespace is JavaScript's (what both trim). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_int.h"

#define FAIL(c, pos, ...) template_fail(template_ctx_src(c), (pos), template_ctx_err(c), RLHF_EINVAL, __VA_ARGS__)

static int is_num(const tval *v) { return v->k == V_JSON && json_is_number(v->j); }
static int is_str(const tval *v) { return v->k == V_JSON && json_is_string(v->j); }
static int is_list(const tval *v) { return v->k == V_JSON && json_is_array(v->j); }
static int is_dict(const tval *v) { return (v->k == V_JSON || v->k == V_NS || v->k == V_LOOP) && json_is_object(v->j); }
static const char *sv(const tval *v) { return json_string_value(v->j); }
static size_t sl(const tval *v) { return json_string_length(v->j); }

static tval str_val(const char *s, size_t n) { return template_val_json(json_stringn_nocheck(s, n)); }

/* the keyword argument NAME, else positional argument I, else NULL */
static const tval *arg(tval *args, int nargs, char **kwn, tval *kwv, int nkw, int i, const char *name) {
    for (int k = 0; k < nkw; k++)
        if (kwn && kwn[k] && !strcmp(kwn[k], name)) return &kwv[k];
    return i >= 0 && i < nargs ? &args[i] : NULL;
}

static size_t ulen(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* strip with Python's CHARS (a set of code points) */
static int in_set(const char *set, size_t setn, const char *s, size_t cl) {
    for (size_t i = 0; i < setn;) {
        size_t j = i + 1;
        while (j < setn && ((unsigned char)set[j] & 0xC0) == 0x80) j++;
        if (j - i == cl && !memcmp(set + i, s, cl)) return 1;
        i = j;
    }
    return 0;
}
static size_t cl_at(const char *s, size_t n, size_t i) {
    size_t j = i + 1;
    while (j < n && ((unsigned char)s[j] & 0xC0) == 0x80) j++;
    return j - i;
}
static tval strip(const tval *in, const tval *chars, int left, int right) {
    const char *s = sv(in);
    size_t n = sl(in), a = 0, b = n;
    if (!chars || (chars->k == V_JSON && json_is_null(chars->j)) || chars->k == V_UNDEF) {
        if (left) a = template_ws_prefix(s, n);
        if (right && a < n) b = n - template_ws_suffix(s + a, n - a);
    } else {
        const char *set = sv(chars);
        size_t setn = sl(chars);
        if (left)
            while (a < n && in_set(set, setn, s + a, cl_at(s, n, a))) a += cl_at(s, n, a);
        if (right)
            while (b > a) {
                size_t st = b - 1;
                while (st > a && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
                if (!in_set(set, setn, s + st, b - st)) break;
                b = st;
            }
    }
    return str_val(s + a, b - a);
}

static tval replace(const char *s, size_t n, const char *old, size_t on, const char *neu, size_t nn, long long count) {
    tmpl_buf b = {0};
    template_buf_add(&b, "", 0);
    size_t i = 0;
    long long done = 0;
    if (on == 0) { /* Python: the replacement goes between every code point */
        for (; i <= n; i += i < n ? cl_at(s, n, i) : 1) {
            if (count < 0 || done < count) template_buf_add(&b, neu, nn), done++;
            if (i < n) template_buf_add(&b, s + i, cl_at(s, n, i));
        }
    } else {
        while (i < n) {
            const char *hit = (count < 0 || done < count) ? memmem(s + i, n - i, old, on) : NULL;
            if (!hit) break;
            template_buf_add(&b, s + i, (size_t)(hit - (s + i)));
            template_buf_add(&b, neu, nn);
            i = (size_t)(hit - s) + on;
            done++;
        }
        template_buf_add(&b, s + i, n - i);
    }
    tval v = str_val(b.s, b.n);
    free(b.s);
    return v;
}

static tval case_map(const tval *in, int upper) {
    size_t n = sl(in);
    char *s = malloc(n + 1);
    if (!s) return template_val_undef();
    memcpy(s, sv(in), n);
    for (size_t i = 0; i < n; i++) s[i] = (char)(upper ? toupper((unsigned char)s[i]) : tolower((unsigned char)s[i]));
    tval v = str_val(s, n);
    free(s);
    return v;
}

/* ---- tojson: JSON.stringify's escaping, Python's default separators ", " and ": " ---- */

static void json_str(const char *s, size_t n, tmpl_buf *b) {
    template_buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == '"') template_buf_add(b, "\\\"", 2);
        else if (ch == '\\') template_buf_add(b, "\\\\", 2);
        else if (ch == '\n') template_buf_add(b, "\\n", 2);
        else if (ch == '\r') template_buf_add(b, "\\r", 2);
        else if (ch == '\t') template_buf_add(b, "\\t", 2);
        else if (ch == '\b') template_buf_add(b, "\\b", 2);
        else if (ch == '\f') template_buf_add(b, "\\f", 2);
        else if (ch < 0x20) snprintf(esc, sizeof esc, "\\u%04x", ch), template_buf_add(b, esc, 6);
        else template_buf_add(b, (const char *)&s[i], 1);
    }
    template_buf_add(b, "\"", 1);
}

static void pad(tmpl_buf *b, int indent, int depth) {
    template_buf_add(b, "\n", 1);
    for (int i = 0; i < indent * depth; i++) template_buf_add(b, " ", 1);
}

int template_tojson(tmpl_ctx *c, const json_t *j, int indent, int depth, size_t pos, tmpl_buf *b) {
    char num[64];
    const char *item_sep = indent ? "," : ", ";
    switch (json_typeof(j)) {
    case JSON_NULL: template_buf_add(b, "null", 4); return 0;
    case JSON_TRUE: template_buf_add(b, "true", 4); return 0;
    case JSON_FALSE: template_buf_add(b, "false", 5); return 0;
    case JSON_INTEGER: snprintf(num, sizeof num, "%lld", (long long)json_integer_value(j)); break;
    case JSON_REAL: {
        double d = json_real_value(j);
        for (int prec = 1; prec <= 17; prec++) { /* JavaScript's shortest round trip */
            snprintf(num, sizeof num, "%.*g", prec, d);
            if (strtod(num, NULL) == d) break;
        }
        break;
    }
    case JSON_STRING: json_str(json_string_value(j), json_string_length(j), b); return 0;
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        template_buf_add(b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i) template_buf_add(b, item_sep, strlen(item_sep));
            if (indent) pad(b, indent, depth + 1);
            if (template_tojson(c, json_array_get(j, i), indent, depth + 1, pos, b)) return -1;
        }
        if (indent && n) pad(b, indent, depth);
        template_buf_add(b, "]", 1);
        return 0;
    }
    case JSON_OBJECT: {
        const char *k;
        json_t *v;
        int first = 1;
        template_buf_add(b, "{", 1);
        json_object_foreach((json_t *)j, k, v) {
            if (!first) template_buf_add(b, item_sep, strlen(item_sep));
            if (indent) pad(b, indent, depth + 1);
            first = 0;
            json_str(k, strlen(k), b);
            template_buf_add(b, ": ", 2);
            if (template_tojson(c, v, indent, depth + 1, pos, b)) return -1;
        }
        if (indent && !first) pad(b, indent, depth);
        template_buf_add(b, "}", 1);
        return 0;
    }
    }
    template_buf_add(b, num, strlen(num));
    return 0;
}

static int to_str_val(tmpl_ctx *c, const tval *in, size_t pos, tval *out) {
    tmpl_buf b = {0};
    template_buf_add(&b, "", 0);
    if (template_to_string(c, in, pos, &b)) return free(b.s), -1;
    *out = str_val(b.s, b.n);
    free(b.s);
    return 0;
}

static int join(tmpl_ctx *c, const tval *in, const tval *sep, size_t pos, tval *out) {
    if (!is_list(in)) return FAIL(c, pos, "join needs a list, not this value");
    tmpl_buf b = {0};
    template_buf_add(&b, "", 0);
    for (size_t i = 0; i < json_array_size(in->j); i++) {
        if (i && sep) template_buf_add(&b, sv(sep), sl(sep));
        tval item = {.k = V_JSON, .j = json_array_get(in->j, i)};
        if (template_to_string(c, &item, pos, &b)) return free(b.s), -1;
    }
    *out = str_val(b.s, b.n);
    free(b.s);
    return 0;
}

static json_t *items_of(const json_t *obj) {
    json_t *arr = json_array();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) json_array_append_new(arr, json_pack("[sO]", k, v));
    return arr;
}

/* selectattr / rejectattr / map(attribute=...) read an attribute of each item */
static json_t *attr_of(const json_t *item, const char *name) { return json_is_object(item) ? json_object_get(item, name) : NULL; }

int template_filter(tmpl_ctx *c, const tmpl_node *e, tval *in, tval *args, int nargs, char **kwn, tval *kwv, int nkw,
                    tval *out) {
    const char *f = e->str;
    size_t pos = e->pos;
    *out = template_val_undef();
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        const tval *dv = arg(args, nargs, kwn, kwv, nkw, 0, "default_value");
        const tval *boolean = arg(args, nargs, kwn, kwv, nkw, 1, "boolean");
        int use_default = in->k == V_UNDEF || (boolean && template_truthy(boolean) && !template_truthy(in));
        if (!use_default) *out = template_val_copy(in);
        else if (dv) *out = template_val_copy(dv);
        else *out = str_val("", 0);
        return 0;
    }
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        if (is_str(in)) *out = template_val_json(json_integer((json_int_t)ulen(sv(in), sl(in))));
        else if (is_list(in)) *out = template_val_json(json_integer((json_int_t)json_array_size(in->j)));
        else if (is_dict(in)) *out = template_val_json(json_integer((json_int_t)json_object_size(in->j)));
        else if (in->k == V_UNDEF) *out = template_val_json(json_integer(0));
        else return FAIL(c, pos, "`length` of a value that has none");
        return 0;
    }
    if (!strcmp(f, "string")) return to_str_val(c, in, pos, out);
    if (!strcmp(f, "safe")) return *out = template_val_copy(in), 0;
    if (!strcmp(f, "tojson")) {
        const tval *ind = arg(args, nargs, kwn, kwv, nkw, 0, "indent");
        int indent = ind && ind->k == V_JSON && json_is_integer(ind->j) ? (int)json_integer_value(ind->j) : 0;
        json_t *j = in->k == V_UNDEF ? json_null() : json_incref(in->j);
        if (in->k != V_JSON && in->k != V_UNDEF && in->k != V_NS) return json_decref(j), FAIL(c, pos, "`tojson` of a function or macro");
        tmpl_buf b = {0};
        template_buf_add(&b, "", 0);
        int rc = template_tojson(c, j, indent, 0, pos, &b);
        json_decref(j);
        if (!rc) *out = str_val(b.s, b.n);
        free(b.s);
        return rc;
    }
    if (!strcmp(f, "join")) {
        const tval *sep = arg(args, nargs, kwn, kwv, nkw, 0, "d");
        if (sep && !is_str(sep)) return FAIL(c, pos, "join's separator must be a string");
        return join(c, in, sep, pos, out);
    }
    if (!strcmp(f, "items")) {
        if (in->k == V_UNDEF) return *out = template_val_json(json_array()), 0;
        if (!is_dict(in)) return FAIL(c, pos, "`items` needs a dict");
        *out = template_val_json(items_of(in->j));
        return 0;
    }
    if (!strcmp(f, "list")) {
        if (is_list(in)) return *out = template_val_copy(in), 0;
        if (is_dict(in)) {
            json_t *arr = json_array();
            const char *k;
            json_t *v;
            json_object_foreach(in->j, k, v) json_array_append_new(arr, json_string(k));
            return *out = template_val_json(arr), 0;
        }
        if (is_str(in)) {
            json_t *arr = json_array();
            for (size_t i = 0; i < sl(in); i += cl_at(sv(in), sl(in), i))
                json_array_append_new(arr, json_stringn_nocheck(sv(in) + i, cl_at(sv(in), sl(in), i)));
            return *out = template_val_json(arr), 0;
        }
        return FAIL(c, pos, "`list` of a value that is not iterable");
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        if (!is_list(in)) return FAIL(c, pos, "`%s` needs a list", f);
        size_t n = json_array_size(in->j);
        if (n) *out = template_val_json(json_incref(json_array_get(in->j, f[0] == 'f' ? 0 : n - 1)));
        return 0;
    }
    if (!strcmp(f, "reverse")) {
        if (is_list(in)) {
            json_t *arr = json_array();
            for (size_t i = json_array_size(in->j); i > 0; i--) json_array_append(arr, json_array_get(in->j, i - 1));
            return *out = template_val_json(arr), 0;
        }
        return FAIL(c, pos, "`reverse` needs a list");
    }
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr") || !strcmp(f, "map")) {
        int is_map = f[0] == 'm';
        const tval *name = is_map ? arg(args, nargs, kwn, kwv, nkw, -1, "attribute") : arg(args, nargs, kwn, kwv, nkw, 0, "attr");
        if (!is_list(in) && in->k != V_UNDEF) return FAIL(c, pos, "`%s` needs a list", f);
        if (!name || !is_str(name)) return FAIL(c, pos, "`%s` is supported with an attribute name only", f);
        const tval *test = is_map ? NULL : arg(args, nargs, NULL, NULL, 0, 1, "");
        if (test && !is_str(test)) return FAIL(c, pos, "`%s`'s test must be a test name", f);
        json_t *arr = json_array();
        for (size_t i = 0; in->k != V_UNDEF && i < json_array_size(in->j); i++) {
            json_t *item = json_array_get(in->j, i), *a = attr_of(item, sv(name));
            if (is_map) {
                json_array_append(arr, a ? a : json_null());
                continue;
            }
            int keep;
            if (!test) keep = a && template_truthy(&(tval){.k = V_JSON, .j = a});
            else {
                tmpl_node fake = *e;
                fake.str = (char *)sv(test);
                tval av = a ? (tval){.k = V_JSON, .j = a} : template_val_undef();
                if (template_test(c, &fake, &av, args + 2, nargs > 2 ? nargs - 2 : 0, &keep)) return json_decref(arr), -1;
            }
            if (keep == (f[0] == 's')) json_array_append(arr, item);
        }
        *out = template_val_json(arr);
        return 0;
    }
    if (!strcmp(f, "int")) {
        if (is_num(in)) return *out = template_val_json(json_integer((json_int_t)json_number_value(in->j))), 0;
        if (is_str(in)) return *out = template_val_json(json_integer(strtoll(sv(in), NULL, 10))), 0;
        return *out = template_val_json(json_integer(0)), 0;
    }
    if (!strcmp(f, "float")) {
        if (is_num(in)) return *out = template_val_json(json_real(json_number_value(in->j))), 0;
        if (is_str(in)) return *out = template_val_json(json_real(strtod(sv(in), NULL))), 0;
        return *out = template_val_json(json_real(0)), 0;
    }
    if (!strcmp(f, "abs")) {
        if (!is_num(in)) return FAIL(c, pos, "`abs` needs a number");
        if (json_is_integer(in->j)) return *out = template_val_json(json_integer(llabs(json_integer_value(in->j)))), 0;
        double d = json_real_value(in->j);
        return *out = template_val_json(json_real(d < 0 ? -d : d)), 0;
    }
    /* the string filters */
    if (!strcmp(f, "trim") || !strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "capitalize") ||
        !strcmp(f, "title") || !strcmp(f, "replace")) {
        if (!is_str(in)) return FAIL(c, pos, "`%s` needs a string", f);
        if (!strcmp(f, "trim")) {
            const tval *chars = arg(args, nargs, kwn, kwv, nkw, 0, "chars");
            if (chars && !is_str(chars)) return FAIL(c, pos, "trim's chars must be a string");
            *out = strip(in, chars, 1, 1);
            return 0;
        }
        return template_method(c, e, in, f, args, nargs, kwn, kwv, nkw, out);
    }
    return FAIL(c, pos, "the filter `%s` is not supported", f);
}

int template_test(tmpl_ctx *c, const tmpl_node *e, tval *in, tval *args, int nargs, int *r) {
    const char *t = e->str;
    int isj = in->k == V_JSON;
    if (!strcmp(t, "defined")) *r = in->k != V_UNDEF;
    else if (!strcmp(t, "undefined")) *r = in->k == V_UNDEF;
    else if (!strcmp(t, "none")) *r = isj && json_is_null(in->j);
    else if (!strcmp(t, "string")) *r = is_str(in);
    else if (!strcmp(t, "mapping")) *r = is_dict(in);
    else if (!strcmp(t, "iterable")) *r = is_str(in) || is_list(in) || is_dict(in);
    else if (!strcmp(t, "sequence")) *r = is_str(in) || is_list(in) || is_dict(in);
    else if (!strcmp(t, "number")) *r = isj && json_is_number(in->j);
    else if (!strcmp(t, "integer")) *r = isj && json_is_integer(in->j);
    else if (!strcmp(t, "float")) *r = isj && json_is_real(in->j);
    else if (!strcmp(t, "boolean")) *r = isj && json_is_boolean(in->j);
    else if (!strcmp(t, "true")) *r = isj && json_is_true(in->j);
    else if (!strcmp(t, "false")) *r = isj && json_is_false(in->j);
    else if (!strcmp(t, "callable")) *r = in->k == V_MACRO || in->k == V_FUNC || in->k == V_METHOD;
    else if (!strcmp(t, "odd") || !strcmp(t, "even")) {
        if (!isj || !json_is_integer(in->j)) return FAIL(c, e->pos, "test `%s` needs an integer", t);
        *r = (json_integer_value(in->j) % 2 != 0) == (t[0] == 'o');
    } else if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
        if (!is_str(in)) return FAIL(c, e->pos, "test `%s` needs a string", t);
        *r = 1;
        for (size_t i = 0; i < sl(in); i++) {
            unsigned char ch = (unsigned char)sv(in)[i];
            if (t[0] == 'l' ? isupper(ch) : islower(ch)) *r = 0;
        }
    } else if (!strcmp(t, "eq") || !strcmp(t, "equalto") || !strcmp(t, "==") || !strcmp(t, "ne") || !strcmp(t, "!=") ||
               !strcmp(t, "sameas")) {
        if (nargs < 1) return FAIL(c, e->pos, "test `%s` needs an argument", t);
        *r = template_equal(in, &args[0]);
        if (t[0] == 'n' || t[0] == '!') *r = !*r;
    } else if (!strcmp(t, "divisibleby")) {
        if (nargs < 1 || !isj || !json_is_integer(in->j) || args[0].k != V_JSON || !json_is_integer(args[0].j) ||
            json_integer_value(args[0].j) == 0)
            return FAIL(c, e->pos, "test `divisibleby` needs two non-zero integers");
        *r = json_integer_value(in->j) % json_integer_value(args[0].j) == 0;
    } else if (!strcmp(t, "in")) {
        if (nargs < 1) return FAIL(c, e->pos, "test `in` needs an argument");
        *r = 0;
        if (args[0].k == V_JSON && json_is_array(args[0].j))
            for (size_t i = 0; i < json_array_size(args[0].j); i++)
                *r |= template_equal(in, &(tval){.k = V_JSON, .j = json_array_get(args[0].j, i)});
        else if (is_str(&args[0]) && is_str(in)) *r = memmem(sv(&args[0]), sl(&args[0]), sv(in), sl(in)) != NULL;
        else if (is_dict(&args[0]) && is_str(in)) *r = json_object_get(args[0].j, sv(in)) != NULL;
    } else {
        return FAIL(c, e->pos, "the test `%s` is not supported", t);
    }
    return 0;
}

static const char *const STR_METHODS[] = {"startswith", "endswith", "split", "strip", "lstrip", "rstrip", "replace",
                                          "upper", "lower", "title", "capitalize", "find", "count", "join", "splitlines", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", NULL};

int template_has_method(const tval *v, const char *name) {
    const char *const *m = is_str(v) ? STR_METHODS : is_dict(v) ? DICT_METHODS : NULL;
    for (; m && *m; m++)
        if (!strcmp(*m, name)) return 1;
    return 0;
}

static int starts_ends(tmpl_ctx *c, size_t pos, const tval *in, const tval *p, int ends, int *r) {
    const char *s = sv(in);
    size_t n = sl(in);
    *r = 0;
    if (p && is_str(p)) {
        size_t m = sl(p);
        *r = m <= n && !memcmp(ends ? s + n - m : s, sv(p), m);
        return 0;
    }
    if (p && is_list(p)) {
        for (size_t i = 0; i < json_array_size(p->j); i++) {
            tval item = {.k = V_JSON, .j = json_array_get(p->j, i)};
            int one;
            if (!is_str(&item)) return FAIL(c, pos, "%s() tuple elements must be strings", ends ? "endswith" : "startswith");
            starts_ends(c, pos, in, &item, ends, &one);
            *r |= one;
        }
        return 0;
    }
    return FAIL(c, pos, "%s() needs a string or a tuple of strings", ends ? "endswith" : "startswith");
}

static int split(tmpl_ctx *c, size_t pos, const tval *in, const tval *sep, const tval *maxv, tval *out) {
    long long max = -1;
    if (maxv) {
        if (maxv->k != V_JSON || !json_is_integer(maxv->j)) return FAIL(c, pos, "split()'s maxsplit must be an integer");
        max = json_integer_value(maxv->j);
    }
    const char *s = sv(in);
    size_t n = sl(in);
    json_t *arr = json_array();
    if (!sep || (sep->k == V_JSON && json_is_null(sep->j))) { /* runs of whitespace; none at the ends */
        size_t i = template_ws_prefix(s, n);
        while (i < n) {
            if (max >= 0 && (long long)json_array_size(arr) >= max) {
                size_t end = n - template_ws_suffix(s + i, n - i);
                json_array_append_new(arr, json_stringn_nocheck(s + i, end - i));
                break;
            }
            size_t j = i;
            while (j < n && !template_ws_prefix(s + j, n - j)) j += cl_at(s, n, j);
            json_array_append_new(arr, json_stringn_nocheck(s + i, j - i));
            i = j + template_ws_prefix(s + j, n - j);
        }
    } else {
        if (!is_str(sep)) return json_decref(arr), FAIL(c, pos, "split()'s separator must be a string");
        if (sl(sep) == 0) return json_decref(arr), FAIL(c, pos, "split(): empty separator");
        size_t i = 0;
        while (1) {
            const char *hit = (max < 0 || (long long)json_array_size(arr) < max) ? memmem(s + i, n - i, sv(sep), sl(sep)) : NULL;
            if (!hit) {
                json_array_append_new(arr, json_stringn_nocheck(s + i, n - i));
                break;
            }
            json_array_append_new(arr, json_stringn_nocheck(s + i, (size_t)(hit - (s + i))));
            i = (size_t)(hit - s) + sl(sep);
        }
    }
    *out = template_val_json(arr);
    return 0;
}

int template_method(tmpl_ctx *c, const tmpl_node *e, const tval *recv, const char *m, tval *args, int nargs,
                    char **kwn, tval *kwv, int nkw, tval *out) {
    size_t pos = e->pos;
    *out = template_val_undef();
    if (is_dict(recv)) {
        if (!strcmp(m, "items")) return *out = template_val_json(items_of(recv->j)), 0;
        if (!strcmp(m, "keys") || !strcmp(m, "values")) {
            json_t *arr = json_array();
            const char *k;
            json_t *v;
            json_object_foreach(recv->j, k, v) json_array_append_new(arr, m[0] == 'k' ? json_string(k) : json_incref(v));
            return *out = template_val_json(arr), 0;
        }
        if (!strcmp(m, "get")) {
            if (nargs < 1 || !is_str(&args[0])) return FAIL(c, pos, "get() needs a key");
            json_t *v = json_object_get(recv->j, sv(&args[0]));
            if (v) *out = template_val_json(json_incref(v));
            else if (nargs > 1) *out = template_val_copy(&args[1]);
            else *out = template_val_json(json_null());
            return 0;
        }
    }
    if (!is_str(recv)) return FAIL(c, pos, "`%s` is not a method of this value", m);
    const tval *a0 = arg(args, nargs, kwn, kwv, nkw, 0, "");
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        if (a0 && !is_str(a0) && !(a0->k == V_JSON && json_is_null(a0->j))) return FAIL(c, pos, "%s()'s chars must be a string", m);
        *out = strip(recv, a0, m[0] != 'r', m[0] != 'l');
        return 0;
    }
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        int r;
        if (starts_ends(c, pos, recv, a0, m[0] == 'e', &r)) return -1;
        *out = template_val_json(json_boolean(r));
        return 0;
    }
    if (!strcmp(m, "split")) return split(c, pos, recv, arg(args, nargs, kwn, kwv, nkw, 0, "sep"), arg(args, nargs, kwn, kwv, nkw, 1, "maxsplit"), out);
    if (!strcmp(m, "splitlines")) {
        json_t *arr = json_array();
        const char *s = sv(recv);
        size_t n = sl(recv), i = 0;
        while (i < n) {
            size_t j = i;
            while (j < n && s[j] != '\n' && s[j] != '\r') j++;
            json_array_append_new(arr, json_stringn_nocheck(s + i, j - i));
            if (j < n && s[j] == '\r' && j + 1 < n && s[j + 1] == '\n') j++;
            i = j + 1;
        }
        return *out = template_val_json(arr), 0;
    }
    if (!strcmp(m, "replace")) {
        const tval *o = arg(args, nargs, kwn, kwv, nkw, 0, "old"), *nw = arg(args, nargs, kwn, kwv, nkw, 1, "new");
        const tval *cnt = arg(args, nargs, kwn, kwv, nkw, 2, "count");
        if (!o || !nw || !is_str(o) || !is_str(nw)) return FAIL(c, pos, "replace() needs two strings");
        long long count = cnt && cnt->k == V_JSON && json_is_integer(cnt->j) ? json_integer_value(cnt->j) : -1;
        *out = replace(sv(recv), sl(recv), sv(o), sl(o), sv(nw), sl(nw), count);
        return 0;
    }
    if (!strcmp(m, "upper") || !strcmp(m, "lower")) return *out = case_map(recv, m[0] == 'u'), 0;
    if (!strcmp(m, "capitalize") || !strcmp(m, "title")) {
        size_t n = sl(recv);
        char *s = malloc(n + 1);
        if (!s) return FAIL(c, pos, "out of memory");
        memcpy(s, sv(recv), n);
        int start = 1;
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)s[i];
            s[i] = (char)(start ? toupper(ch) : m[0] == 'c' || isalpha(ch) ? tolower(ch) : ch);
            start = m[0] == 't' ? !isalpha(ch) && !(ch & 0x80) : 0;
        }
        *out = str_val(s, n);
        free(s);
        return 0;
    }
    if (!strcmp(m, "find") || !strcmp(m, "count")) {
        if (!a0 || !is_str(a0)) return FAIL(c, pos, "%s() needs a string", m);
        const char *s = sv(recv);
        size_t n = sl(recv);
        if (m[0] == 'f') {
            const char *hit = memmem(s, n, sv(a0), sl(a0));
            *out = template_val_json(json_integer(hit ? (json_int_t)ulen(s, (size_t)(hit - s)) : -1));
        } else {
            long long k = 0;
            for (size_t i = 0; sl(a0) && i < n;) {
                const char *hit = memmem(s + i, n - i, sv(a0), sl(a0));
                if (!hit) break;
                k++;
                i = (size_t)(hit - s) + sl(a0);
            }
            *out = template_val_json(json_integer(sl(a0) ? k : (json_int_t)ulen(s, n) + 1));
        }
        return 0;
    }
    if (!strcmp(m, "join")) return a0 ? join(c, a0, recv, pos, out) : FAIL(c, pos, "join() needs a list");
    return FAIL(c, pos, "`%s` is not a method of a string", m);
}

int template_global(tmpl_ctx *c, const tmpl_node *e, const char *name, tval *args, int nargs, char **kwn, tval *kwv,
                    int nkw, tval *out) {
    size_t pos = e->pos;
    if (!strcmp(name, "raise_exception")) {
        tmpl_buf b = {0};
        template_buf_add(&b, "", 0);
        if (nargs > 0) template_to_string(c, &args[0], pos, &b);
        int rc = FAIL(c, pos, "the template raised an exception: %s", b.s ? b.s : "");
        free(b.s);
        return rc;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        if (nargs > 0) return FAIL(c, pos, "%s() takes keyword arguments only", name);
        json_t *obj = json_object();
        for (int k = 0; k < nkw; k++) {
            if (kwv[k].k != V_JSON && kwv[k].k != V_UNDEF) return json_decref(obj), FAIL(c, pos, "%s(): `%s` must be a plain value", name, kwn[k]);
            json_object_set_new(obj, kwn[k], kwv[k].k == V_UNDEF ? json_null() : json_incref(kwv[k].j));
        }
        *out = (tval){.k = name[0] == 'n' ? V_NS : V_JSON, .j = obj};
        return 0;
    }
    if (!strcmp(name, "range")) {
        long long v[3] = {0, 0, 1};
        if (nargs < 1 || nargs > 3) return FAIL(c, pos, "range() takes 1 to 3 integers");
        for (int i = 0; i < nargs; i++)
            if (args[i].k != V_JSON || !json_is_integer(args[i].j)) return FAIL(c, pos, "range() takes integers");
        if (nargs == 1) v[1] = json_integer_value(args[0].j);
        else {
            v[0] = json_integer_value(args[0].j), v[1] = json_integer_value(args[1].j);
            if (nargs == 3) v[2] = json_integer_value(args[2].j);
        }
        if (v[2] == 0) return FAIL(c, pos, "range() step cannot be zero");
        if ((v[1] - v[0]) / v[2] > 1000000) return FAIL(c, pos, "range() of more than a million items");
        json_t *arr = json_array();
        for (long long i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) json_array_append_new(arr, json_integer(i));
        *out = template_val_json(arr);
        return 0;
    }
    return FAIL(c, pos, "the function `%s` is not supported", name);
}
