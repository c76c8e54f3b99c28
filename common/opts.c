/* common/opts.c — command-line options from a table, for every `rlhf` subcommand (see common/common.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

/* Prints "PROG: error: MESSAGE" and, when USAGE is given, the usage; returns the exit status 2. */
static int usage_error(const char *prog, const char *usage, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int usage_error(const char *prog, const char *usage, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n%s", usage ? usage : "");
    va_end(ap);
    return 2;
}

/* A bad value of a known option: the line names the option and what it takes, so no usage follows
 * (the error stays one line, like the commands' other errors). */
#define value_error(prog, ...) usage_error((prog), NULL, __VA_ARGS__)

static int out_of_range(const rlhf_opt *o, double x, const char *v, const char *prog) {
    if (!(o->lo < o->hi) || (x >= o->lo && x <= o->hi)) return 0;
    return value_error(prog, "%s: expected a value in [%.15g, %.15g], got '%s'", o->name, o->lo, o->hi, v);
}

static int set_value(const rlhf_opt *o, const char *v, const char *prog) {
    char *end = NULL;
    if (o->given) *o->given = 1;
    switch (o->kind) {
    case RLHF_OPT_STR: *(const char **)o->out = v; return -1;
    case RLHF_OPT_INT: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < INT_MIN || x > INT_MAX)
            return value_error(prog, "%s: expected an integer, got '%s'", o->name, v);
        if (out_of_range(o, (double)x, v, prog)) return 2;
        *(int *)o->out = (int)x;
        return -1;
    }
    case RLHF_OPT_U64: {
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *end || errno || v[0] == '-')
            return value_error(prog, "%s: expected an integer >= 0, got '%s'", o->name, v);
        if (out_of_range(o, (double)x, v, prog)) return 2;
        *(uint64_t *)o->out = (uint64_t)x;
        return -1;
    }
    case RLHF_OPT_FLOAT:
    case RLHF_OPT_DOUBLE: {
        errno = 0;
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return value_error(prog, "%s: expected a number, got '%s'", o->name, v);
        if (out_of_range(o, x, v, prog)) return 2;
        if (o->kind == RLHF_OPT_FLOAT) *(float *)o->out = (float)x;
        else *(double *)o->out = x;
        return -1;
    }
    case RLHF_OPT_STRS: {
        rlhf_opt_strs *l = o->out;
        if (l->n >= l->cap) {
            return value_error(prog, "%s: given more than %d times", o->name, l->cap);
        }
        l->v[l->n++] = (char *)v;
        return -1;
    }
    case RLHF_OPT_FLAG: break;
    }
    return -1;
}

/* The one option loop. leading: stop at the first positional argument (*rest = its index) instead of
 * collecting positionals. "--" ends the options either way: what follows it is positional. */
static int parse(int argc, char **argv, const char *prog, const char *usage, const rlhf_opt *opts, const char **pos,
                 int max_pos, int *n_pos, int leading, int *rest) {
    int np = 0, only_pos = 0;
    if (n_pos) *n_pos = 0;
    if (rest) *rest = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && !strcmp(a, "--")) {
            only_pos = 1;
            if (leading) {
                *rest = i + 1;
                break;
            }
            continue;
        }
        if (!only_pos && (!strcmp(a, "-h") || !strcmp(a, "--help"))) {
            fputs(usage ? usage : "", stdout);
            return 0;
        }
        if (only_pos || a[0] != '-' || !a[1]) { /* a positional argument ("-" alone is one too: stdin) */
            if (leading) {
                *rest = i;
                break;
            }
            if (np >= max_pos) return usage_error(prog, usage, "unexpected argument '%s'", a);
            pos[np++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const rlhf_opt *o = opts;
        while (o && o->name && !(strlen(o->name) == len && !strncmp(o->name, a, len))) o++;
        if (!o || !o->name) {
            return usage_error(prog, usage, "unknown option '%.*s'", (int)(len < 64 ? len : 64), a);
        }
        if (o->kind == RLHF_OPT_FLAG) {
            if (eq) return usage_error(prog, usage, "%s takes no value", o->name);
            *(int *)o->out = 1;
            if (o->given) *o->given = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) return usage_error(prog, usage, "%s needs a value", o->name);
        int rc = set_value(o, v, prog);
        if (rc >= 0) return rc;
    }
    if (n_pos) *n_pos = np;
    return -1;
}

int rlhf_opts_parse(int argc, char **argv, const char *prog, const char *usage, const rlhf_opt *opts,
                    const char **pos, int max_pos, int *n_pos) {
    return parse(argc, argv, prog, usage, opts, pos, max_pos, n_pos, 0, NULL);
}

int rlhf_opts_parse_leading(int argc, char **argv, const char *prog, const char *usage, const rlhf_opt *opts,
                            int *rest) {
    return parse(argc, argv, prog, usage, opts, NULL, 0, NULL, 1, rest);
}
