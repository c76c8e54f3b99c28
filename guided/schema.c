/* guided/schema.c — the JSON Schema front end: a schema (subset in guided/guided.h) into NFA fragments
 * of compact JSON text. Objects keep the schema's property order; optional properties share their
 * tails (an epsilon edge may skip a property), so an object of n properties emits each value twice, not
 * n times. Every keyword outside the subset is an error naming its JSON path. */
#include <stdlib.h>
#include <string.h>

#include "guided/guided_int.h"

typedef struct sctx {
    gnfa *a;
    rlhf_error *err;
} sctx;

static const char *const IGNORED[] = {"title", "description", "default", "examples", "$schema", "$id",
                                      "$comment", "deprecated", "readOnly", "writeOnly", NULL};
static const char *const KNOWN[] = {"type", "enum", "const", "anyOf", "properties", "required",
                                    "additionalProperties", "items", "minItems", "maxItems", "pattern",
                                    "minLength", "maxLength", NULL};
static const char *const TYPES[] = {"object", "array", "string", "number", "integer", "boolean", "null", NULL};

static int in_list(const char *const *l, const char *k) {
    for (; *l; l++)
        if (!strcmp(*l, k)) return 1;
    return 0;
}

static int bad(sctx *c, const char *path, const char *kw, const char *msg) {
    char where[256];
    if (kw) snprintf(where, sizeof where, "%s.%s", path, kw);
    else snprintf(where, sizeof where, "%s", path);
    return rlhf_error_set(c->err, RLHF_EINVAL, where, "%s", msg);
}

static gfrag lit(gnfa *a, const char *s) { return guided_nfa_bytes(a, s, strlen(s)); }

static gfrag json_string_any(gnfa *a) {
    return guided_nfa_cat(a, lit(a, "\""), guided_nfa_cat(a, guided_nfa_star(a, guided_nfa_json_char(a)), lit(a, "\"")));
}

static gfrag digits(gnfa *a) { return guided_nfa_plus(a, guided_nfa_range(a, '0', '9')); }

static gfrag jint(gnfa *a) {
    gfrag nz = guided_nfa_cat(a, guided_nfa_range(a, '1', '9'), guided_nfa_star(a, guided_nfa_range(a, '0', '9')));
    return guided_nfa_cat(a, guided_nfa_opt(a, lit(a, "-")), guided_nfa_alt(a, lit(a, "0"), nz));
}

static gfrag jnum(gnfa *a) {
    gfrag frac = guided_nfa_opt(a, guided_nfa_cat(a, lit(a, "."), digits(a)));
    gfrag e = guided_nfa_alt(a, lit(a, "e"), lit(a, "E"));
    gfrag sign = guided_nfa_opt(a, guided_nfa_alt(a, lit(a, "+"), lit(a, "-")));
    gfrag exp = guided_nfa_opt(a, guided_nfa_cat(a, e, guided_nfa_cat(a, sign, digits(a))));
    return guided_nfa_cat(a, jint(a), guided_nfa_cat(a, frac, exp));
}

/* [ item (, item)* ] with min..max items (max -1: unbounded); item() emits a fresh copy each call */
typedef gfrag (*emit_fn)(sctx *c, const void *arg, int *rc);

static gfrag repeat_list(sctx *c, const char *open, const char *close, emit_fn item, const void *arg, int min,
                         int max, int *rc) {
    gnfa *a = c->a;
    gfrag f = lit(a, open);
    if (max == 0) return guided_nfa_cat(a, f, lit(a, close));
    gfrag body = item(c, arg, rc);
    for (int i = 1; i < min && !*rc && !a->overflow; i++) body = guided_nfa_cat(a, body, guided_nfa_cat(a, lit(a, ","), item(c, arg, rc)));
    if (max < 0) {
        body = guided_nfa_cat(a, body, guided_nfa_star(a, guided_nfa_cat(a, lit(a, ","), item(c, arg, rc))));
    } else {
        gfrag tail = guided_nfa_empty(a);
        for (int i = (min > 1 ? min : 1); i < max && !*rc && !a->overflow; i++)
            tail = guided_nfa_opt(a, guided_nfa_cat(a, guided_nfa_cat(a, lit(a, ","), item(c, arg, rc)), tail));
        body = guided_nfa_cat(a, body, tail);
    }
    if (min == 0) body = guided_nfa_opt(a, body);
    return guided_nfa_cat(a, f, guided_nfa_cat(a, body, lit(a, close)));
}

static gfrag any_value(sctx *c, int depth);

static gfrag any_item(sctx *c, const void *arg, int *rc) {
    (void)rc;
    return any_value(c, *(const int *)arg);
}

static gfrag any_member(sctx *c, const void *arg, int *rc) {
    (void)rc;
    gnfa *a = c->a;
    return guided_nfa_cat(a, json_string_any(a), guided_nfa_cat(a, lit(a, ":"), any_value(c, *(const int *)arg)));
}

static gfrag any_value(sctx *c, int depth) {
    gnfa *a = c->a;
    int rc = 0, sub = depth - 1;
    gfrag f = json_string_any(a);
    f = guided_nfa_alt(a, f, jnum(a));
    f = guided_nfa_alt(a, f, lit(a, "true"));
    f = guided_nfa_alt(a, f, lit(a, "false"));
    f = guided_nfa_alt(a, f, lit(a, "null"));
    if (depth > 0) {
        f = guided_nfa_alt(a, f, repeat_list(c, "{", "}", any_member, &sub, 0, -1, &rc));
        f = guided_nfa_alt(a, f, repeat_list(c, "[", "]", any_item, &sub, 0, -1, &rc));
    }
    return f;
}

gfrag guided_schema_any_object(gnfa *a) {
    sctx c = {a, NULL};
    int rc = 0, sub = GUIDED_ANY_DEPTH;
    return repeat_list(&c, "{", "}", any_member, &sub, 0, -1, &rc);
}

static int emit(sctx *c, const json_t *s, const char *path, int depth, gfrag *out);

static int json_key(gnfa *a, const char *key, gfrag *out) {
    json_t *k = json_string(key);
    char *t = k ? json_dumps(k, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    json_decref(k);
    if (!t) return RLHF_ENOMEM;
    *out = guided_nfa_cat(a, lit(a, t), lit(a, ":"));
    free(t);
    return 0;
}

/* "key":value for property i (schema NULL: any value) */
static int member(sctx *c, const char *key, const json_t *sub, const char *path, int depth, gfrag *out) {
    gfrag k, v;
    int rc = json_key(c->a, key, &k);
    if (rc) return RLHF_FAIL(c->err, rc, "out of memory");
    if (sub) {
        char p[256];
        snprintf(p, sizeof p, "%s.properties.%s", path, key);
        if ((rc = emit(c, sub, p, depth + 1, &v))) return rc;
    } else {
        v = any_value(c, GUIDED_ANY_DEPTH);
    }
    *out = guided_nfa_cat(c->a, k, v);
    return 0;
}

static int emit_object(sctx *c, const json_t *s, const char *path, int depth, gfrag *out) {
    gnfa *a = c->a;
    const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required"),
                 *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) return bad(c, path, "properties", "must be an object");
    if (req && !json_is_array(req)) return bad(c, path, "required", "must be an array of strings");
    if (addl && !json_is_boolean(addl))
        return bad(c, path, "additionalProperties", "only true or false is supported");
    int closed = addl && json_is_false(addl);
    size_t nreq = req ? json_array_size(req) : 0, np = props ? json_object_size(props) : 0;
    for (size_t i = 0; i < nreq; i++)
        if (!json_is_string(json_array_get(req, i))) return bad(c, path, "required", "must be an array of strings");
    if (!props && !req && !closed) { /* any object */
        int rc = 0, sub = GUIDED_ANY_DEPTH;
        *out = repeat_list(c, "{", "}", any_member, &sub, 0, -1, &rc);
        return 0;
    }
    /* entries: the properties in order, then required names that no property declares */
    size_t n = np + nreq;
    const char **keys = calloc(n ? n : 1, sizeof *keys);
    const json_t **subs = calloc(n ? n : 1, sizeof *subs);
    char *reqd = calloc(n ? n : 1, 1);
    if (!keys || !subs || !reqd) {
        free(keys), free(subs), free(reqd);
        return RLHF_FAIL(c->err, RLHF_ENOMEM, "out of memory");
    }
    n = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)props, key, v) {
        keys[n] = key;
        subs[n] = v;
        for (size_t i = 0; i < nreq; i++)
            if (!strcmp(json_string_value(json_array_get(req, i)), key)) reqd[n] = 1;
        n++;
    }
    int impossible = 0;
    for (size_t i = 0; i < nreq; i++) {
        const char *r = json_string_value(json_array_get(req, i));
        if (props && json_object_get(props, r)) continue;
        int dup = 0;
        for (size_t j = np; j < n; j++) dup |= !strcmp(keys[j], r);
        if (dup) continue;
        if (closed) impossible = 1; /* required but not allowed: no object satisfies it */
        keys[n] = r;
        subs[n] = NULL;
        reqd[n++] = 1;
    }
    int rc = 0;
    /* Astart[i]: the members from i on, each with a leading comma; Bstart[i]: the same with the first
     * present one without it. Both end in `tail` (before the closing brace). */
    gfrag tail = guided_nfa_empty(a);
    int32_t next_a = tail.start, next_b = tail.start;
    for (size_t ii = n; ii-- > 0 && !rc;) {
        gfrag pa, pb;
        if ((rc = member(c, keys[ii], subs[ii], path, depth, &pa))) break;
        if ((rc = member(c, keys[ii], subs[ii], path, depth, &pb))) break;
        gfrag sa = guided_nfa_empty(a), sb = guided_nfa_empty(a);
        gfrag ca = guided_nfa_cat(a, lit(a, ","), pa);
        guided_nfa_link(a, sa.start, ca.start);
        guided_nfa_link(a, ca.end, next_a);
        guided_nfa_link(a, sb.start, pb.start);
        guided_nfa_link(a, pb.end, next_a);
        if (!reqd[ii]) {
            guided_nfa_link(a, sa.start, next_a);
            guided_nfa_link(a, sb.start, next_b);
        }
        next_a = sa.start;
        next_b = sb.start;
    }
    free(keys), free(subs), free(reqd);
    if (rc) return rc;
    gfrag open = lit(a, "{");
    guided_nfa_link(a, open.end, next_b);
    gfrag f = guided_nfa_cat(a, (gfrag){open.start, tail.end}, lit(a, "}"));
    *out = impossible ? guided_nfa_cat(a, guided_nfa_never(a), f) : f;
    return 0;
}

typedef struct item_arg {
    const json_t *items;
    const char *path;
    int depth;
} item_arg;

static gfrag array_item(sctx *c, const void *arg, int *rc) {
    const item_arg *ia = arg;
    if (!ia->items) return any_value(c, GUIDED_ANY_DEPTH);
    gfrag f = guided_nfa_empty(c->a);
    if (!*rc) *rc = emit(c, ia->items, ia->path, ia->depth + 1, &f);
    return f;
}

static int get_count(sctx *c, const json_t *s, const char *path, const char *kw, int *v) {
    const json_t *x = json_object_get(s, kw);
    if (!x) return 0;
    if (!json_is_integer(x) || json_integer_value(x) < 0) return bad(c, path, kw, "must be a non-negative integer");
    if (json_integer_value(x) > GUIDED_MAX_REPEAT) return bad(c, path, kw, "above 1000 is not supported");
    *v = (int)json_integer_value(x);
    return 0;
}

static int emit_array(sctx *c, const json_t *s, const char *path, int depth, gfrag *out) {
    const json_t *items = json_object_get(s, "items");
    if (items && !json_is_object(items) && !json_is_boolean(items))
        return bad(c, path, "items", "must be a schema (tuple validation with an array of schemas is not supported)");
    int min = 0, max = -1, rc;
    if ((rc = get_count(c, s, path, "minItems", &min)) || (rc = get_count(c, s, path, "maxItems", &max))) return rc;
    if (max >= 0 && max < min) {
        *out = guided_nfa_never(c->a);
        return 0;
    }
    char p[256];
    snprintf(p, sizeof p, "%s.items", path);
    item_arg ia = {items, p, depth};
    rc = 0;
    *out = repeat_list(c, "[", "]", array_item, &ia, min, max, &rc);
    return rc;
}

static int emit_string(sctx *c, const json_t *s, const char *path, gfrag *out) {
    gnfa *a = c->a;
    const json_t *pat = json_object_get(s, "pattern");
    int min = 0, max = -1, rc;
    if ((rc = get_count(c, s, path, "minLength", &min)) || (rc = get_count(c, s, path, "maxLength", &max))) return rc;
    gfrag body;
    if (pat) {
        if (!json_is_string(pat)) return bad(c, path, "pattern", "must be a string");
        if (json_object_get(s, "minLength") || json_object_get(s, "maxLength"))
            return bad(c, path, "pattern", "pattern together with minLength/maxLength is not supported");
        char where[256];
        snprintf(where, sizeof where, "%s.pattern", path);
        if ((rc = guided_regex_build(a, json_string_value(pat), json_string_length(pat), 1, where, &body, c->err)))
            return rc;
    } else if (max >= 0 && max < min) {
        body = guided_nfa_never(a);
    } else {
        body = guided_nfa_empty(a);
        for (int i = 0; i < min && !a->overflow; i++) body = guided_nfa_cat(a, body, guided_nfa_json_char(a));
        if (max < 0) {
            body = guided_nfa_cat(a, body, guided_nfa_star(a, guided_nfa_json_char(a)));
        } else {
            gfrag tail = guided_nfa_empty(a);
            for (int i = min; i < max && !a->overflow; i++) tail = guided_nfa_opt(a, guided_nfa_cat(a, guided_nfa_json_char(a), tail));
            body = guided_nfa_cat(a, body, tail);
        }
    }
    *out = guided_nfa_cat(a, lit(a, "\""), guided_nfa_cat(a, body, lit(a, "\"")));
    return 0;
}

static int value_has_type(const json_t *v, const char *t) {
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "integer")) return json_is_integer(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    return json_is_null(v);
}

static int emit_type(sctx *c, const json_t *s, const char *t, const char *path, int depth, gfrag *out) {
    gnfa *a = c->a;
    if (!strcmp(t, "object")) return emit_object(c, s, path, depth, out);
    if (!strcmp(t, "array")) return emit_array(c, s, path, depth, out);
    if (!strcmp(t, "string")) return emit_string(c, s, path, out);
    if (!strcmp(t, "number")) *out = jnum(a);
    else if (!strcmp(t, "integer")) *out = jint(a);
    else if (!strcmp(t, "boolean")) *out = guided_nfa_alt(a, lit(a, "true"), lit(a, "false"));
    else *out = lit(a, "null");
    return 0;
}

static int emit(sctx *c, const json_t *s, const char *path, int depth, gfrag *out) {
    gnfa *a = c->a;
    if (depth > GUIDED_MAX_DEPTH) return bad(c, path, NULL, "schema nested too deeply (more than 32 levels)");
    if (json_is_true(s)) {
        *out = any_value(c, GUIDED_ANY_DEPTH);
        return 0;
    }
    if (json_is_false(s)) {
        *out = guided_nfa_never(a);
        return 0;
    }
    if (!json_is_object(s)) return bad(c, path, NULL, "a schema must be an object or a boolean");
    const char *key;
    json_t *v;
    int n_value_kw = 0;
    json_object_foreach((json_t *)s, key, v) {
        if (in_list(IGNORED, key)) continue;
        if (!in_list(KNOWN, key)) return bad(c, path, key, "unsupported keyword");
        if (strcmp(key, "type") && strcmp(key, "enum") && strcmp(key, "const") && strcmp(key, "anyOf")) n_value_kw++;
    }
    const json_t *type = json_object_get(s, "type"), *en = json_object_get(s, "enum"),
                 *cn = json_object_get(s, "const"), *any = json_object_get(s, "anyOf");
    const char *types[8];
    int nt = 0;
    if (type) {
        if (json_is_string(type)) {
            types[nt++] = json_string_value(type);
        } else if (json_is_array(type) && json_array_size(type) <= 7) {
            for (size_t i = 0; i < json_array_size(type); i++) {
                if (!json_is_string(json_array_get(type, i))) return bad(c, path, "type", "must be a string or an array of strings");
                types[nt++] = json_string_value(json_array_get(type, i));
            }
        } else {
            return bad(c, path, "type", "must be a string or an array of strings");
        }
        for (int i = 0; i < nt; i++)
            if (!in_list(TYPES, types[i])) {
                char msg[128];
                snprintf(msg, sizeof msg, "unknown type \"%.60s\"", types[i]);
                return bad(c, path, "type", msg);
            }
    }
    if (any) {
        if (type || en || cn || n_value_kw) return bad(c, path, "anyOf", "anyOf beside other keywords is not supported");
        if (!json_is_array(any) || !json_array_size(any)) return bad(c, path, "anyOf", "must be a non-empty array of schemas");
        gfrag f = guided_nfa_never(a);
        for (size_t i = 0; i < json_array_size(any); i++) {
            char p[256];
            snprintf(p, sizeof p, "%s.anyOf[%zu]", path, i);
            gfrag g;
            int rc = emit(c, json_array_get(any, i), p, depth + 1, &g);
            if (rc) return rc;
            f = guided_nfa_alt(a, f, g);
        }
        *out = f;
        return 0;
    }
    if (en || cn) {
        if (en && cn) return bad(c, path, "const", "const beside enum is not supported");
        if (n_value_kw) return bad(c, path, en ? "enum" : "const", "enum/const beside other value keywords is not supported");
        if (en && !json_is_array(en)) return bad(c, path, "enum", "must be an array");
        gfrag f = guided_nfa_never(a);
        size_t nv = en ? json_array_size(en) : 1;
        for (size_t i = 0; i < nv; i++) {
            const json_t *val = en ? json_array_get(en, i) : cn;
            int ok = nt == 0;
            for (int t = 0; t < nt; t++) ok |= value_has_type(val, types[t]);
            if (!ok) continue; /* a value of another type than `type` allows: not in the language */
            char *txt = json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT);
            if (!txt) return RLHF_FAIL(c->err, RLHF_ENOMEM, "out of memory");
            f = guided_nfa_alt(a, f, lit(a, txt));
            free(txt);
        }
        *out = f;
        return 0;
    }
    if (nt == 0) { /* the keywords say which type; none: any value */
        if (json_object_get(s, "properties") || json_object_get(s, "required") ||
            json_object_get(s, "additionalProperties"))
            types[nt++] = "object";
        else if (json_object_get(s, "items") || json_object_get(s, "minItems") || json_object_get(s, "maxItems"))
            types[nt++] = "array";
        else if (json_object_get(s, "pattern") || json_object_get(s, "minLength") || json_object_get(s, "maxLength"))
            types[nt++] = "string";
        else {
            *out = any_value(c, GUIDED_ANY_DEPTH);
            return 0;
        }
    }
    gfrag f = guided_nfa_never(a);
    for (int t = 0; t < nt; t++) {
        gfrag g;
        int rc = emit_type(c, s, types[t], path, depth, &g);
        if (rc) return rc;
        f = guided_nfa_alt(a, f, g);
    }
    *out = f;
    return 0;
}

int guided_schema_build(gnfa *a, const json_t *schema, gfrag *out, rlhf_error *err) {
    sctx c = {a, err};
    return emit(&c, schema, "$", 0, out);
}
