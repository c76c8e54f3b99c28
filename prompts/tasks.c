/* prompts/tasks.c — the default tasks (countdown, arith): prompt generators, pretraining corpora and a
 * reference checker for countdown expressions. Everything is deterministic from a seed. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompts/prompts_int.h"

enum { TASK_COUNTDOWN, TASK_ARITH };

static int task_kind(const char *task) {
    if (task && !strcmp(task, "countdown")) return TASK_COUNTDOWN;
    if (task && !strcmp(task, "arith")) return TASK_ARITH;
    return -1;
}

void prompt_task_opts_default(const char *task, prompt_task_opts *o) {
    o->max_num = task_kind(task) == TASK_ARITH ? 20 : 9;
    o->max_num2 = 25;
    o->p_three = 0.5;
    o->p_correct = 0.5;
}

static int check_opts(const char *task, const prompt_task_opts *o, rlhf_error *err) {
    if (task_kind(task) < 0)
        return rlhf_error_set(err, RLHF_EINVAL, "--task", "unknown task \"%s\" (countdown, arith)", task ? task : "");
    if (o->max_num < 1 || o->max_num > 1000)
        return rlhf_error_set(err, RLHF_EINVAL, "--max-num", "must be in [1, 1000], got %d", o->max_num);
    if (o->max_num2 < 1 || o->max_num2 > 1000)
        return rlhf_error_set(err, RLHF_EINVAL, "--max-num2", "must be in [1, 1000], got %d", o->max_num2);
    if (!(o->p_three >= 0 && o->p_three <= 1))
        return rlhf_error_set(err, RLHF_EINVAL, "--p-three", "must be in [0, 1], got %g", o->p_three);
    if (!(o->p_correct >= 0 && o->p_correct <= 1))
        return rlhf_error_set(err, RLHF_EINVAL, "--p-correct", "must be in [0, 1], got %g", o->p_correct);
    return 0;
}

/* ---------------------------------------------------------------- countdown expressions */

/* A small expression tree over 2..3 leaves: node 0 is the root. */
typedef struct expr_node {
    char op;      /* 0 = leaf */
    long value;   /* leaf number, or the node's value once evaluated */
    int l, r;
} expr_node;

static int prec(char op) { return op == '*' ? 2 : op ? 1 : 3; }

static long eval_node(const expr_node *t, int i) {
    if (!t[i].op) return t[i].value;
    long a = eval_node(t, t[i].l), b = eval_node(t, t[i].r);
    return t[i].op == '+' ? a + b : t[i].op == '-' ? a - b : a * b;
}

/* Prints with the fewest parentheses that keep the tree's meaning. */
static void print_node(const expr_node *t, int i, char *buf, size_t cap) {
    size_t len = strlen(buf);
    if (!t[i].op) {
        snprintf(buf + len, cap - len, "%ld", t[i].value);
        return;
    }
    const expr_node *L = &t[t[i].l], *R = &t[t[i].r];
    int pl = prec(L->op) < prec(t[i].op);
    int pr = prec(R->op) < prec(t[i].op) || (t[i].op == '-' && prec(R->op) == 1);
    if (pl) strncat(buf, "(", cap - strlen(buf) - 1);
    print_node(t, t[i].l, buf, cap);
    if (pl) strncat(buf, ")", cap - strlen(buf) - 1);
    len = strlen(buf);
    snprintf(buf + len, cap - len, "%c", t[i].op);
    if (pr) strncat(buf, "(", cap - strlen(buf) - 1);
    print_node(t, t[i].r, buf, cap);
    if (pr) strncat(buf, ")", cap - strlen(buf) - 1);
}

/* A random expression using every number once, in a random order and shape; returns its value. */
static long random_expr(rlhf_rng *rng, const int *nums, int c, char *buf, size_t cap) {
    static const char ops[3] = {'+', '-', '*'};
    int order[3] = {0, 1, 2};
    for (int i = c; i > 1; i--) {
        int j = (int)prompts_rng_below(rng, (uint64_t)i);
        int t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    expr_node t[5];
    memset(t, 0, sizeof t);
    if (c == 2) {
        t[0] = (expr_node){ops[prompts_rng_below(rng, 3)], 0, 1, 2};
        t[1] = (expr_node){0, nums[order[0]], 0, 0};
        t[2] = (expr_node){0, nums[order[1]], 0, 0};
    } else {
        int left_deep = (int)prompts_rng_below(rng, 2);
        t[0] = (expr_node){ops[prompts_rng_below(rng, 3)], 0, left_deep ? 1 : 2, left_deep ? 2 : 1};
        t[1] = (expr_node){ops[prompts_rng_below(rng, 3)], 0, 3, 4}; /* the inner node */
        t[2] = (expr_node){0, nums[order[0]], 0, 0};
        t[3] = (expr_node){0, nums[order[1]], 0, 0};
        t[4] = (expr_node){0, nums[order[2]], 0, 0};
    }
    buf[0] = 0;
    print_node(t, 0, buf, cap);
    return eval_node(t, 0);
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

#define COUNTDOWN_MAX_TARGET 100

/* One countdown problem: sorted numbers, a reachable target in [1, 100] and one expression reaching it. */
static int countdown_problem(rlhf_rng *rng, const prompt_task_opts *o, int *nums, long *target, char *answer,
                             size_t cap) {
    int c = prompts_rng_double(rng) < o->p_three ? 3 : 2;
    for (;;) {
        int top = c == 2 ? o->max_num2 : o->max_num;
        for (int i = 0; i < c; i++) nums[i] = 1 + (int)prompts_rng_below(rng, (uint64_t)top);
        qsort(nums, (size_t)c, sizeof *nums, cmp_int);
        for (int tries = 0; tries < 8; tries++) {
            long v = random_expr(rng, nums, c, answer, cap);
            if (v >= 1 && v <= COUNTDOWN_MAX_TARGET) {
                *target = v;
                return c;
            }
        }
    }
}

static void countdown_prompt(char *buf, size_t cap, const int *nums, int c, long target) {
    int len = snprintf(buf, cap, "nums");
    for (int i = 0; i < c; i++) len += snprintf(buf + len, cap - (size_t)len, " %d", nums[i]);
    snprintf(buf + len, cap - (size_t)len, " target %ld:", target);
}

/* ---------------------------------------------------------------- the reference checker */

typedef struct parser {
    const char *s;
    int used[3];
    const int *numbers;
    int n_numbers;
    int bad;
} parser;

static void skip_ws(parser *p) {
    while (*p->s == ' ') p->s++;
}

static long parse_expr(parser *p, int depth);

static long parse_factor(parser *p, int depth) {
    skip_ws(p);
    if (depth > 32) {
        p->bad = 1;
        return 0;
    }
    if (*p->s == '(') {
        p->s++;
        long v = parse_expr(p, depth + 1);
        skip_ws(p);
        if (*p->s != ')') p->bad = 1;
        else p->s++;
        return v;
    }
    if (!isdigit((unsigned char)*p->s)) {
        p->bad = 1;
        return 0;
    }
    long v = 0;
    int digits = 0;
    while (isdigit((unsigned char)*p->s)) {
        v = v * 10 + (*p->s++ - '0');
        if (++digits > 9) p->bad = 1;
    }
    /* each use consumes one unused copy of a given number */
    int ok = 0;
    for (int i = 0; i < p->n_numbers; i++)
        if (!p->used[i] && p->numbers[i] == v) {
            p->used[i] = 1;
            ok = 1;
            break;
        }
    if (!ok) p->bad = 1;
    return v;
}

static long parse_term(parser *p, int depth) {
    long v = parse_factor(p, depth);
    for (;;) {
        skip_ws(p);
        char op = *p->s;
        if (op != '*' && op != '/') return v;
        p->s++;
        long b = parse_factor(p, depth);
        if (op == '*') v *= b;
        else if (b != 0 && v % b == 0) v /= b; /* division only when exact */
        else p->bad = 1;
        if (v > 1000000000L || v < -1000000000L) p->bad = 1;
        if (p->bad) return 0;
    }
}

static long parse_expr(parser *p, int depth) {
    long v = parse_term(p, depth);
    for (;;) {
        skip_ws(p);
        char op = *p->s;
        if (op != '+' && op != '-') return v;
        p->s++;
        long b = parse_term(p, depth);
        v = op == '+' ? v + b : v - b;
        if (p->bad) return 0;
    }
}

int prompt_countdown_check(const char *expr, const int *numbers, int n_numbers, long target, long *value_out) {
    if (!expr || n_numbers < 1 || n_numbers > 3) return 0;
    parser p = {.s = expr, .numbers = numbers, .n_numbers = n_numbers};
    long v = parse_expr(&p, 0);
    skip_ws(&p);
    if (*p.s) p.bad = 1;
    if (value_out) *value_out = v;
    return !p.bad && v == target;
}

/* ---------------------------------------------------------------- arith */

static void arith_problem(rlhf_rng *rng, const prompt_task_opts *o, char *prompt, size_t pcap, long *answer) {
    static const char ops[3] = {'+', '-', '*'};
    long a = (long)prompts_rng_below(rng, (uint64_t)o->max_num + 1);
    long b = (long)prompts_rng_below(rng, (uint64_t)o->max_num + 1);
    char op = ops[prompts_rng_below(rng, 3)];
    if (op == '-' && b > a) { /* answers stay non-negative */
        long t = a;
        a = b;
        b = t;
    }
    snprintf(prompt, pcap, "%ld%c%ld=", a, op, b);
    *answer = op == '+' ? a + b : op == '-' ? a - b : a * b;
}

/* ---------------------------------------------------------------- datasets */

int prompt_task_generate(json_t **out, const char *task, size_t n, uint64_t seed, const char *split,
                         const prompt_task_opts *opts, const json_t *exclude, rlhf_error *err) {
    *out = NULL;
    prompt_task_opts o;
    prompt_task_opts_default(task, &o);
    if (opts) o = *opts;
    int rc = check_opts(task, &o, err);
    if (rc) return rc;
    if (!split) split = "train";
    if (exclude && !json_is_array(exclude)) return RLHF_FAIL(err, RLHF_EINVAL, "exclude must be an array");
    int kind = task_kind(task);
    rlhf_rng rng;
    /* the split name is part of the stream, so train and held-out sets from one seed differ */
    rlhf_rng_seed(&rng, seed ^ prompts_mix64(prompts_hash_str(split)) ^ (kind == TASK_ARITH ? 0xA7u : 0xC0u));
    json_t *seen = json_object(), *arr = json_array();
    size_t i;
    json_t *v;
    if (exclude) json_array_foreach(exclude, i, v) if (json_is_string(v)) json_object_set(seen, json_string_value(v), json_true());
    size_t misses = 0;
    while (json_array_size(arr) < n) {
        char prompt[96], answer[64], id[64];
        int nums[3];
        long target = 0, value = 0;
        int c = 0;
        if (kind == TASK_COUNTDOWN) {
            c = countdown_problem(&rng, &o, nums, &target, answer, sizeof answer);
            countdown_prompt(prompt, sizeof prompt, nums, c, target);
        } else {
            arith_problem(&rng, &o, prompt, sizeof prompt, &value);
            snprintf(answer, sizeof answer, "%ld", value);
        }
        if (json_object_get(seen, prompt)) {
            if (++misses > 200000 + 100 * n) {
                size_t got = json_array_size(arr);
                json_decref(seen);
                json_decref(arr);
                return rlhf_error_set(err, RLHF_EINVAL, "--n",
                                      "cannot generate %zu distinct %s prompts (found %zu); raise --max-num", n, task,
                                      got);
            }
            continue;
        }
        json_object_set(seen, prompt, json_true());
        snprintf(id, sizeof id, "%s-%s-%06zu", task, split, json_array_size(arr) + 1);
        json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:s}", "id", id, "prompt", prompt, "answer", answer, "task",
                                task, "split", split);
        if (kind == TASK_COUNTDOWN) {
            json_t *jn = json_array();
            for (int k = 0; k < c; k++) json_array_append_new(jn, json_integer(nums[k]));
            json_object_set_new(rec, "numbers", jn);
            json_object_set_new(rec, "target", json_integer(target));
        }
        json_array_append_new(arr, rec);
    }
    json_decref(seen);
    *out = arr;
    return 0;
}

/* A completion that looks right but is not: countdown, another expression over the same numbers with a
 * different value; arith, the answer off by 1..3 or with its digits swapped. */
static void wrong_completion(rlhf_rng *rng, int kind, const int *nums, int c, long target, char *buf, size_t cap) {
    if (kind == TASK_COUNTDOWN) {
        for (int tries = 0; tries < 64; tries++)
            if (random_expr(rng, nums, c, buf, cap) != target) return;
        snprintf(buf, cap, "%d", nums[0]); /* every expression hits the target: a bare number is wrong */
        if (nums[0] == target) snprintf(buf, cap, "%d+%d", nums[0], nums[c - 1]);
        return;
    }
    long w = target;
    if (target >= 10 && prompts_rng_below(rng, 3) == 0) {
        char d[32];
        snprintf(d, sizeof d, "%ld", target);
        size_t l = strlen(d);
        char t = d[l - 1];
        d[l - 1] = d[l - 2];
        d[l - 2] = t;
        w = strtol(d, NULL, 10);
    }
    while (w == target) {
        long delta = 1 + (long)prompts_rng_below(rng, 3);
        w = prompts_rng_below(rng, 2) && target - delta >= 0 ? target - delta : target + delta;
    }
    snprintf(buf, cap, "%ld", w);
}

int prompt_task_write_corpus(const char *path, const char *task, size_t n, uint64_t seed,
                             const prompt_task_opts *opts, rlhf_error *err) {
    prompt_task_opts o;
    prompt_task_opts_default(task, &o);
    if (opts) o = *opts;
    int rc = check_opts(task, &o, err);
    if (rc) return rc;
    if (n == 0) return rlhf_error_set(err, RLHF_EINVAL, "--n", "corpus needs at least one line");
    int kind = task_kind(task);
    rlhf_rng rng;
    /* a different stream from the dataset generator's, so corpus lines are not the train prompts in order */
    rlhf_rng_seed(&rng, prompts_mix64(seed ^ 0xC0C0u) ^ (uint64_t)kind);
    size_t plen = strlen(path);
    int jsonl = plen > 6 && !strcmp(path + plen - 6, ".jsonl");
    rlhf_atomic_file af;
    if ((rc = rlhf_atomic_open(&af, path, err))) return rc;
    for (size_t i = 0; i < n; i++) {
        char prompt[96], completion[64];
        int nums[3], c = 0;
        long target = 0;
        if (kind == TASK_COUNTDOWN) {
            c = countdown_problem(&rng, &o, nums, &target, completion, sizeof completion);
            countdown_prompt(prompt, sizeof prompt, nums, c, target);
        } else {
            arith_problem(&rng, &o, prompt, sizeof prompt, &target);
            snprintf(completion, sizeof completion, "%ld", target);
        }
        if (prompts_rng_double(&rng) >= o.p_correct)
            wrong_completion(&rng, kind, nums, c, target, completion, sizeof completion);
        if (jsonl) {
            /* the completion keeps its newline, so a model stops at "\n" or at EOS alike */
            size_t cl = strlen(completion);
            completion[cl] = '\n';
            completion[cl + 1] = 0;
            json_t *o = json_pack("{s:s, s:s}", "prompt", prompt, "completion", completion);
            char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(o);
            if (!line) {
                rlhf_atomic_abort(&af);
                return rlhf_error_set(err, RLHF_ENOMEM, path, "out of memory");
            }
            fprintf(af.fp, "%s\n", line);
            free(line);
        } else {
            fprintf(af.fp, "%s%s\n", prompt, completion);
        }
    }
    return rlhf_atomic_commit(&af, err);
}
