/* tests/prompts/test_dataset.c — JSONL datasets: loading, errors naming FILE:LINE, skips, splits;
 * and register_suites() for the test_prompts binary. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prompts/prompts.h"

int register_selector_suites(void);
int register_task_suites(void);

static char tmpdir[256];

/* Writes `text` to a fresh file in tmpdir and returns its path (static buffer per call slot). */
static const char *write_tmp(const char *name, const char *text) {
    static char paths[8][512];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(text, f);
    fclose(f);
    return p;
}

static void test_load_ok(void) {
    const char *p = write_tmp("ok.jsonl",
                              "{\"id\": \"a\", \"prompt\": \"1+1=\", \"answer\": \"2\"}\n"
                              "\n"
                              "{\"id\": 7, \"prompt\": \"x\", \"tests\": [1, 2], \"metadata\": {\"k\": 1}, \"other\": true}\n"
                              "   \n"
                              "{\"id\": \"c\", \"prompt\": \"\"}");
    prompt_dataset *ds = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load(&ds, p, &err), 0);
    CU_ASSERT_EQUAL(prompt_dataset_size(ds), 3);
    CU_ASSERT_STRING_EQUAL(prompt_dataset_get(ds, 0)->id, "a");
    CU_ASSERT_STRING_EQUAL(prompt_dataset_get(ds, 0)->prompt, "1+1=");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(prompt_dataset_get(ds, 0)->record, "answer")), "2");
    CU_ASSERT_STRING_EQUAL(prompt_dataset_get(ds, 1)->id, "7"); /* integer ids are kept as their decimal text */
    CU_ASSERT_TRUE(json_is_true(json_object_get(prompt_dataset_get(ds, 1)->record, "other")));
    CU_ASSERT_EQUAL(json_array_size(json_object_get(prompt_dataset_get(ds, 1)->record, "tests")), 2);
    CU_ASSERT_EQUAL(prompt_dataset_find(ds, "c"), 2);
    CU_ASSERT_EQUAL(prompt_dataset_find(ds, "7"), 1);
    CU_ASSERT_EQUAL(prompt_dataset_find(ds, "zz"), -1);
    CU_ASSERT_PTR_NULL(prompt_dataset_get(ds, 3));
    prompt_dataset_destroy(&ds);
    CU_ASSERT_PTR_NULL(ds);
}

/* A bad line must fail the load with where == FILE:LINE, for each kind of defect. */
static void expect_error_at(const char *name, const char *text, int line, const char *msg_part) {
    const char *p = write_tmp(name, text);
    prompt_dataset *ds = NULL;
    rlhf_error err = {0};
    int rc = prompt_dataset_load(&ds, p, &err);
    CU_ASSERT_TRUE(rc < 0);
    CU_ASSERT_PTR_NULL(ds);
    char where[600];
    snprintf(where, sizeof where, "%s:%d", p, line);
    CU_ASSERT_STRING_EQUAL(err.where, where);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, msg_part));
    if (strcmp(err.where, where) != 0 || !strstr(err.msg, msg_part))
        fprintf(stderr, "\n  got: %s: %s (wanted %s, ...%s...)\n", err.where, err.msg, where, msg_part);
}

static void test_errors_name_file_and_line(void) {
    expect_error_at("badjson.jsonl", "{\"id\":\"a\",\"prompt\":\"p\"}\n\n{\"id\":\"b\", \"prompt\": }\n", 3,
                    "invalid JSON");
    expect_error_at("noprompt.jsonl", "{\"id\":\"a\",\"prompt\":\"p\"}\n{\"id\":\"b\",\"text\":\"p\"}\n", 2,
                    "missing `prompt`");
    expect_error_at("nonstr.jsonl", "{\"id\":\"a\",\"prompt\":3}\n", 1, "non-string `prompt`");
    expect_error_at("noid.jsonl", "{\"id\":\"a\",\"prompt\":\"p\"}\n{\"prompt\":\"q\"}\n", 2, "missing `id`");
    expect_error_at("dup.jsonl",
                    "{\"id\":\"a\",\"prompt\":\"p\"}\n{\"id\":\"b\",\"prompt\":\"q\"}\n{\"id\":\"c\",\"prompt\":\"r\"}\n"
                    "{\"id\":\"b\",\"prompt\":\"s\"}\n",
                    4, "duplicate id \"b\"");
    expect_error_at("array.jsonl", "[1,2]\n", 1, "not a JSON object");
    expect_error_at("split.jsonl", "{\"id\":\"a\",\"prompt\":\"p\",\"split\":\"dev\"}\n", 1, "`split`");
}

static void test_empty_is_error(void) {
    rlhf_error err = {0};
    prompt_dataset *ds = NULL;
    const char *p = write_tmp("empty.jsonl", "");
    CU_ASSERT_TRUE(prompt_dataset_load(&ds, p, &err) < 0);
    CU_ASSERT_STRING_EQUAL(err.where, p);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "empty dataset"));
    p = write_tmp("blank.jsonl", "\n  \n\n");
    CU_ASSERT_TRUE(prompt_dataset_load(&ds, p, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "empty dataset"));
    char missing[512];
    snprintf(missing, sizeof missing, "%s/does-not-exist.jsonl", tmpdir);
    CU_ASSERT_EQUAL(prompt_dataset_load(&ds, missing, &err), RLHF_EIO);
    CU_ASSERT_STRING_EQUAL(err.where, missing);
    CU_ASSERT_PTR_NULL(ds);
}

static void test_skip_bad_counts(void) {
    const char *p = write_tmp("skip.jsonl",
                              "{\"id\":\"a\",\"prompt\":\"p\"}\nnot json\n{\"id\":\"a\",\"prompt\":\"dup\"}\n"
                              "{\"id\":\"b\"}\n{\"id\":\"c\",\"prompt\":\"r\"}\n");
    prompt_dataset_opts o = {.skip_bad = 1};
    prompt_dataset *ds = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load_opts(&ds, p, &o, &err), 0);
    CU_ASSERT_EQUAL(prompt_dataset_size(ds), 2);
    CU_ASSERT_EQUAL(prompt_dataset_skipped(ds), 3);
    CU_ASSERT_STRING_EQUAL(prompt_dataset_get(ds, 0)->prompt, "p"); /* the first of a duplicate pair is kept */
    prompt_dataset_destroy(&ds);
    /* all lines bad: still an empty-dataset error */
    p = write_tmp("allbad.jsonl", "x\ny\n");
    CU_ASSERT_TRUE(prompt_dataset_load_opts(&ds, p, &o, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "2 lines skipped"));
}

static void test_split(void) {
    /* field-based split wins over the hash */
    const char *p = write_tmp("fsplit.jsonl",
                              "{\"id\":\"a\",\"prompt\":\"p\",\"split\":\"heldout\"}\n{\"id\":\"b\",\"prompt\":\"q\"}\n"
                              "{\"id\":\"c\",\"prompt\":\"r\",\"split\":\"train\"}\n");
    prompt_dataset *ds = NULL;
    rlhf_error err = {0};
    prompt_dataset_opts o = {.split = PROMPT_SPLIT_HELDOUT};
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load_opts(&ds, p, &o, &err), 0);
    CU_ASSERT_EQUAL(prompt_dataset_size(ds), 1);
    CU_ASSERT_STRING_EQUAL(prompt_dataset_get(ds, 0)->id, "a");
    CU_ASSERT_EQUAL(prompt_dataset_other_split(ds), 2);
    prompt_dataset_destroy(&ds);

    /* hash split: deterministic, disjoint, about the asked fraction, independent of file order */
    FILE *f;
    char path[512], rpath[512];
    snprintf(path, sizeof path, "%s/hsplit.jsonl", tmpdir);
    snprintf(rpath, sizeof rpath, "%s/hsplit_rev.jsonl", tmpdir);
    f = fopen(path, "w");
    for (int i = 0; i < 2000; i++) fprintf(f, "{\"id\":\"q%d\",\"prompt\":\"p%d\"}\n", i, i);
    fclose(f);
    f = fopen(rpath, "w");
    for (int i = 1999; i >= 0; i--) fprintf(f, "{\"id\":\"q%d\",\"prompt\":\"p%d\"}\n", i, i);
    fclose(f);
    prompt_dataset *tr = NULL, *ho = NULL, *ho2 = NULL, *all = NULL;
    prompt_dataset_opts ot = {.split = PROMPT_SPLIT_TRAIN, .heldout_fraction = 0.2, .split_seed = 5};
    prompt_dataset_opts oh = ot;
    oh.split = PROMPT_SPLIT_HELDOUT;
    prompt_dataset_opts oa = ot;
    oa.split = PROMPT_SPLIT_ALL;
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load_opts(&tr, path, &ot, &err), 0);
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load_opts(&ho, path, &oh, &err), 0);
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load_opts(&ho2, rpath, &oh, &err), 0);
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load_opts(&all, path, &oa, &err), 0);
    CU_ASSERT_EQUAL(prompt_dataset_size(tr) + prompt_dataset_size(ho), 2000);
    CU_ASSERT_TRUE(prompt_dataset_size(ho) > 330 && prompt_dataset_size(ho) < 470);
    CU_ASSERT_EQUAL(prompt_dataset_size(ho2), prompt_dataset_size(ho));
    size_t held_in_all = 0;
    for (size_t i = 0; i < prompt_dataset_size(all); i++) held_in_all += prompt_dataset_is_heldout(all, i);
    CU_ASSERT_EQUAL(held_in_all, prompt_dataset_size(ho));
    for (size_t i = 0; i < prompt_dataset_size(ho); i++) {
        const char *id = prompt_dataset_get(ho, i)->id;
        CU_ASSERT_EQUAL(prompt_dataset_find(tr, id), -1);
        CU_ASSERT_TRUE(prompt_dataset_find(ho2, id) >= 0);
    }
    prompt_dataset_destroy(&tr);
    prompt_dataset_destroy(&ho);
    prompt_dataset_destroy(&ho2);
    prompt_dataset_destroy(&all);
    o = (prompt_dataset_opts){.heldout_fraction = 1.5};
    CU_ASSERT_EQUAL(prompt_dataset_load_opts(&ds, path, &o, &err), RLHF_EINVAL);
}

static int suite_init(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_prompts.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int suite_clean(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

const char *test_prompts_tmpdir(void) { return tmpdir; }

int register_suites(void) {
    CU_pSuite s = CU_add_suite("dataset", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "load_ok", test_load_ok);
    CU_add_test(s, "errors_name_file_and_line", test_errors_name_file_and_line);
    CU_add_test(s, "empty_is_error", test_empty_is_error);
    CU_add_test(s, "skip_bad_counts", test_skip_bad_counts);
    CU_add_test(s, "split", test_split);
    if (register_selector_suites() != 0) return -1;
    return register_task_suites();
}
