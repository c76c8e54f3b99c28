/* tests/prompts/test_tasks.c — task generators: deterministic, records valid, held-out disjoint,
 * corpora in the documented format and mix; the countdown reference checker. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prompts/prompts.h"

static char tmpdir[256];

static json_t *gen(const char *task, size_t n, uint64_t seed, const char *split, const json_t *exclude) {
    json_t *arr = NULL;
    rlhf_error err = {0};
    int rc = prompt_task_generate(&arr, task, n, seed, split, NULL, exclude, &err);
    if (rc) fprintf(stderr, "\n  generate: %s: %s\n", err.where, err.msg);
    CU_ASSERT_FATAL(rc == 0);
    return arr;
}

static void test_countdown_checker(void) {
    int n3[3] = {3, 5, 7};
    long v;
    CU_ASSERT_TRUE(prompt_countdown_check("3*5+7", n3, 3, 22, &v));
    CU_ASSERT_EQUAL(v, 22);
    CU_ASSERT_TRUE(prompt_countdown_check(" 7 + 5 * 3 ", n3, 3, 22, NULL));
    CU_ASSERT_TRUE(prompt_countdown_check("(7-5)*3", n3, 3, 6, NULL));
    CU_ASSERT_TRUE(prompt_countdown_check("5+7", n3, 3, 12, NULL)); /* a subset is allowed */
    CU_ASSERT_FALSE(prompt_countdown_check("3*5+7", n3, 3, 21, NULL)); /* wrong value */
    CU_ASSERT_FALSE(prompt_countdown_check("7+7+3", n3, 3, 17, NULL)); /* 7 used twice */
    CU_ASSERT_FALSE(prompt_countdown_check("4*5+2", n3, 3, 22, NULL)); /* numbers not given */
    CU_ASSERT_FALSE(prompt_countdown_check("35-13", n3, 3, 22, NULL)); /* digits glued */
    CU_ASSERT_FALSE(prompt_countdown_check("3*5+7;", n3, 3, 22, NULL));
    CU_ASSERT_FALSE(prompt_countdown_check("(3*5+7", n3, 3, 22, NULL));
    CU_ASSERT_FALSE(prompt_countdown_check("", n3, 3, 0, NULL));
    int dup[2] = {4, 4};
    CU_ASSERT_TRUE(prompt_countdown_check("4*4", dup, 2, 16, NULL)); /* a repeated number may be used twice */
    CU_ASSERT_TRUE(prompt_countdown_check("(3+7)/5", n3, 3, 2, NULL));
    CU_ASSERT_FALSE(prompt_countdown_check("7/3", n3, 3, 2, NULL)); /* inexact division */
}

static void test_countdown_records_valid(void) {
    json_t *a = gen("countdown", 500, 11, "train", NULL);
    CU_ASSERT_EQUAL(json_array_size(a), 500);
    size_t i, two = 0;
    json_t *r;
    json_t *prompts = json_object();
    json_array_foreach(a, i, r) {
        json_t *jn = json_object_get(r, "numbers");
        int nums[3], c = (int)json_array_size(jn);
        CU_ASSERT_TRUE_FATAL(c == 2 || c == 3);
        two += c == 2;
        char expect[96];
        int len = snprintf(expect, sizeof expect, "nums");
        for (int k = 0; k < c; k++) {
            nums[k] = (int)json_integer_value(json_array_get(jn, (size_t)k));
            CU_ASSERT_TRUE(nums[k] >= 1 && nums[k] <= (c == 2 ? 25 : 9));
            len += snprintf(expect + len, sizeof expect - (size_t)len, " %d", nums[k]);
        }
        long target = (long)json_integer_value(json_object_get(r, "target"));
        CU_ASSERT_TRUE(target >= 1 && target <= 100);
        snprintf(expect + len, sizeof expect - (size_t)len, " target %ld:", target);
        const char *prompt = json_string_value(json_object_get(r, "prompt"));
        CU_ASSERT_STRING_EQUAL(prompt, expect);
        const char *ans = json_string_value(json_object_get(r, "answer"));
        long v = 0;
        CU_ASSERT_TRUE(prompt_countdown_check(ans, nums, c, target, &v));
        if (!prompt_countdown_check(ans, nums, c, target, &v))
            fprintf(stderr, "\n  bad record: %s -> %s = %ld\n", prompt, ans, v);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "split")), "train");
        CU_ASSERT_PTR_NULL(json_object_get(prompts, prompt)); /* distinct prompts */
        json_object_set(prompts, prompt, json_true());
    }
    CU_ASSERT_TRUE(two > 200 && two < 300); /* p_three = 0.5 */
    json_decref(prompts);
    json_decref(a);
}

static void test_deterministic_and_heldout_disjoint(void) {
    const char *tasks[2] = {"countdown", "arith"};
    for (int t = 0; t < 2; t++) {
        json_t *a = gen(tasks[t], 300, 42, "train", NULL), *b = gen(tasks[t], 300, 42, "train", NULL);
        json_t *c = gen(tasks[t], 300, 43, "train", NULL);
        CU_ASSERT_TRUE(json_equal(a, b));
        CU_ASSERT_FALSE(json_equal(a, c));
        json_t *ex = json_array();
        size_t i;
        json_t *r;
        json_array_foreach(a, i, r) json_array_append(ex, json_object_get(r, "prompt"));
        json_t *h = gen(tasks[t], 100, 42, "heldout", ex);
        json_t *set = json_object();
        json_array_foreach(a, i, r) json_object_set(set, json_string_value(json_object_get(r, "prompt")), json_true());
        json_array_foreach(h, i, r) {
            CU_ASSERT_PTR_NULL(json_object_get(set, json_string_value(json_object_get(r, "prompt"))));
            CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(r, "id")), "-heldout-"));
        }
        json_decref(set);
        json_decref(ex);
        json_decref(h);
        json_decref(a);
        json_decref(b);
        json_decref(c);
    }
}

static void test_arith_records_valid(void) {
    json_t *a = gen("arith", 400, 3, "train", NULL);
    size_t i;
    json_t *r;
    json_array_foreach(a, i, r) {
        const char *p = json_string_value(json_object_get(r, "prompt"));
        long x, y;
        char op, eq;
        CU_ASSERT_EQUAL_FATAL(sscanf(p, "%ld%c%ld%c", &x, &op, &y, &eq), 4);
        CU_ASSERT_EQUAL(eq, '=');
        CU_ASSERT_TRUE(x >= 0 && x <= 20 && y >= 0 && y <= 20);
        long want = op == '+' ? x + y : op == '-' ? x - y : x * y;
        CU_ASSERT_TRUE(op == '+' || op == '-' || op == '*');
        CU_ASSERT_EQUAL(strtol(json_string_value(json_object_get(r, "answer")), NULL, 10), want);
        CU_ASSERT_TRUE(want >= 0);
    }
    json_decref(a);
    /* asking for more distinct prompts than exist is an error, not a hang */
    prompt_task_opts o;
    prompt_task_opts_default("arith", &o);
    o.max_num = 2; /* 3*3*3 problems at most */
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(prompt_task_generate(&a, "arith", 100, 1, "train", &o, NULL, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT_EQUAL(prompt_task_generate(&a, "sudoku", 1, 1, "train", NULL, NULL, &err), RLHF_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "--task");
}

/* The corpus: one example per line, prompt then completion; about p_correct of them correct. */
static void test_corpus(void) {
    const char *tasks[2] = {"countdown", "arith"};
    for (int t = 0; t < 2; t++) {
        char path[512];
        snprintf(path, sizeof path, "%s/corpus_%s.txt", tmpdir, tasks[t]);
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(prompt_task_write_corpus(path, tasks[t], 2000, 9, NULL, &err), 0);
        FILE *f = fopen(path, "r");
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        char line[256];
        int n = 0, correct = 0;
        while (fgets(line, sizeof line, f)) {
            size_t len = strlen(line);
            CU_ASSERT_TRUE_FATAL(len > 0 && line[len - 1] == '\n');
            line[len - 1] = 0;
            n++;
            if (t == 0) {
                int nums[3], c, pos = 0;
                long target;
                CU_ASSERT_TRUE_FATAL(strncmp(line, "nums", 4) == 0);
                char *s = line + 4;
                for (c = 0; c < 3 && sscanf(s, " %d%n", &nums[c], &pos) == 1; c++) s += pos;
                CU_ASSERT_TRUE(c == 2 || c == 3);
                CU_ASSERT_EQUAL_FATAL(sscanf(s, " target %ld:%n", &target, &pos), 1);
                const char *completion = s + pos;
                CU_ASSERT_TRUE(strlen(completion) > 0);
                correct += prompt_countdown_check(completion, nums, c, target, NULL);
            } else {
                long x, y, ans;
                char op;
                int pos = 0;
                CU_ASSERT_EQUAL_FATAL(sscanf(line, "%ld%c%ld=%n", &x, &op, &y, &pos), 3);
                CU_ASSERT_TRUE_FATAL(pos > 0);
                ans = strtol(line + pos, NULL, 10);
                correct += ans == (op == '+' ? x + y : op == '-' ? x - y : x * y);
            }
        }
        fclose(f);
        CU_ASSERT_EQUAL(n, 2000);
        /* p_correct = 0.5 by default: the wrong completions are never right by accident */
        CU_ASSERT_TRUE(correct > 900 && correct < 1100);
        if (correct <= 900 || correct >= 1100) fprintf(stderr, "\n  %s corpus: %d/2000 correct\n", tasks[t], correct);
    }
}

/* The JSONL form: {"prompt", "completion"} with the completion ending in a newline, same mix. */
static void test_corpus_jsonl(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/corpus_arith.jsonl", tmpdir);
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_task_write_corpus(path, "arith", 1000, 9, NULL, &err), 0);
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[512];
    int n = 0, correct = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(o);
        const char *p = json_string_value(json_object_get(o, "prompt"));
        const char *c = json_string_value(json_object_get(o, "completion"));
        CU_ASSERT_TRUE_FATAL(p && c && strlen(c) >= 2 && c[strlen(c) - 1] == '\n');
        long x, y;
        char op;
        CU_ASSERT_EQUAL(sscanf(p, "%ld%c%ld=", &x, &op, &y), 3);
        correct += strtol(c, NULL, 10) == (op == '+' ? x + y : op == '-' ? x - y : x * y);
        json_decref(o);
        n++;
    }
    fclose(f);
    CU_ASSERT_EQUAL(n, 1000);
    CU_ASSERT_TRUE(correct > 430 && correct < 570);
}

static int suite_init(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_prompts_tasks.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int suite_clean(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int register_task_suites(void) {
    CU_pSuite s = CU_add_suite("tasks", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "countdown_checker", test_countdown_checker);
    CU_add_test(s, "countdown_records_valid", test_countdown_records_valid);
    CU_add_test(s, "deterministic_and_heldout_disjoint", test_deterministic_and_heldout_disjoint);
    CU_add_test(s, "arith_records_valid", test_arith_records_valid);
    CU_add_test(s, "corpus", test_corpus);
    CU_add_test(s, "corpus_jsonl", test_corpus_jsonl);
    return 0;
}
