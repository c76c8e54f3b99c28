/* tests/rewards/test_isolation.c — plugins as their authors write them, misbehaving: a .so that
 * segfaults on one item (isolated in its worker process: only that item is ERROR, naming the plugin,
 * the signal and the item; quarantined after two crashes), one that leaks (max_rss_mb restarts its
 * worker), restart_every, and process plugins that write NaN, print on stdout, die in init, or whose
 * script is missing; per-source resources. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/rewards/rewards_test.h"

static reward_pipeline *make(const char *json) {
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", &err);
    if (rc) fprintf(stderr, "%s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    return p;
}

static int create_err(const char *json, rlhf_error *err) {
    reward_pipeline *p = NULL;
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", err);
    reward_pipeline_destroy(&p);
    return rc;
}

/* Lines of `path` equal to `line` (0 when the file does not exist). */
static int count_lines(const char *path, const char *line) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[512];
    int n = 0;
    while (fgets(buf, sizeof buf, f)) {
        buf[strcspn(buf, "\n")] = 0;
        n += !strcmp(buf, line);
    }
    fclose(f);
    return n;
}

static void segv_pipeline(char *json, size_t cap, const char *log) {
    char so[512];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/segv_fixture.c", "", "segv.so", so, sizeof so), 0);
    snprintf(json, cap, "[{\"type\":\"plugin\",\"name\":\"segv\",\"path\":\"%s\",\"config\":{\"log\":\"%s\"}}]", so, log);
}

/* The old loader called the .so in the caller: the SIGSEGV ended the process. Now the worker dies,
 * the batch is rescored item by item, and exactly the crashing item is ERROR. */
static void test_so_segv_isolated(void) {
    char json[1200], log[512];
    snprintf(log, sizeof log, "%s/segv_isolated.log", rt_scratch());
    unlink(log);
    segv_pipeline(json, sizeof json, log);
    reward_pipeline *p = make(json);
    if (!p) return;
    rlhf_reward_item items[3] = {rt_item("aa", "{\"id\":\"r0\"}"), rt_item("b SEGV", "{\"id\":\"r1\"}"),
                                 rt_item("cccc", "{\"id\":\"r2\"}")};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 2, 1e-12);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[1].reason, "plugin segv.so crashed (SIGSEGV) on item 1 (id r1)"));
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[2], 4, 1e-12);
    CU_ASSERT_EQUAL(sc.source_errors[0], 1);
    /* the worker is back for the next batch */
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items + 2, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 4, 1e-12);
    /* the plugin in its worker sees the batch's deadline (timeout_ms 10000 by default) */
    rlhf_reward_item dl[1] = {rt_item("DEADLINE", NULL)};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, dl, 1, &sc, &err), 0);
    CU_ASSERT(sc.raw[0] > 5 && sc.raw[0] <= 10.0);
    int64_t restarts = -1;
    double rss = -1, cpu = -1;
    CU_ASSERT_EQUAL(reward_pipeline_source_resources(p, 0, &rss, &cpu, &restarts), 0);
    CU_ASSERT_EQUAL(restarts, 2); /* the crash on the batch, then the crash on the item alone */
    CU_ASSERT(rss > 0);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    /* an in-process plugin is opt-in and says what it costs */
    CU_ASSERT(create_err("[{\"type\":\"plugin\",\"path\":\"x.so\",\"isolate\":\"thread\"}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].isolate"));
}

/* Twice crashed on the same item (prompt, completion and record): the plugin is not given it again. */
static void test_so_quarantine(void) {
    char json[1200], log[512];
    snprintf(log, sizeof log, "%s/segv_quarantine.log", rt_scratch());
    unlink(log);
    segv_pipeline(json, sizeof json, log);
    reward_pipeline *p = make(json);
    if (!p) return;
    rlhf_reward_item items[2] = {rt_item("fine", NULL), rt_item("x SEGV", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0); /* the batch, then each item alone */
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NULL(strstr(sc.status[1].reason, "quarantined"));
    CU_ASSERT_EQUAL(count_lines(log, "x SEGV"), 2);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items + 1, 1, &sc, &err), 0); /* second crash on it */
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "crashed (SIGSEGV)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "quarantined for this item"));
    CU_ASSERT_EQUAL(count_lines(log, "x SEGV"), 3);
    int fine_before = count_lines(log, "fine");
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_STRING_EQUAL(sc.status[1].reason, "quarantined: crashed twice on this item (plugin segv.so)");
    CU_ASSERT_EQUAL(count_lines(log, "x SEGV"), 3); /* not called with it */
    CU_ASSERT_EQUAL(count_lines(log, "fine"), fine_before + 1);
    /* the same completion with another record is another item */
    rlhf_reward_item other[1] = {rt_item("x SEGV", "{\"id\":7}")};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, other, 1, &sc, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "crashed (SIGSEGV) on item 0 (id 7)"));
    CU_ASSERT_EQUAL(count_lines(log, "x SEGV"), 4);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* 8 MiB leaked per call: without a limit the worker grows by 160 MB over 20 batches; with max_rss_mb
 * it is restarted whenever a batch leaves it above the limit, and the restarts are counted. */
static void test_so_leak_max_rss(void) {
    char so[512], json[1200];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/leak_fixture.c", "", "leak.so", so, sizeof so), 0);
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"leak\",\"path\":\"%s\"}]", so);
    reward_pipeline *p = make(json);
    if (!p) return;
    rlhf_reward_item items[1] = {rt_item("x", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    double rss0 = 0, rss = 0, cpu = 0;
    int64_t restarts = -1;
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(reward_pipeline_source_resources(p, 0, &rss0, &cpu, &restarts), 0);
    for (int i = 0; i < 5; i++) CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(reward_pipeline_source_resources(p, 0, &rss, &cpu, &restarts), 0);
    CU_ASSERT(rss - rss0 > 35); /* the oracle: 5 more calls, 40 MiB more resident */
    CU_ASSERT_EQUAL(restarts, 0);
    reward_pipeline_destroy(&p);
    int limit = (int)rss0 + 40;
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"leak\",\"path\":\"%s\",\"max_rss_mb\":%d}]", so, limit);
    p = make(json);
    if (!p) return;
    double peak = 0;
    for (int i = 0; i < 20; i++) {
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
        CU_ASSERT_EQUAL(reward_pipeline_source_resources(p, 0, &rss, &cpu, &restarts), 0);
        if (rss > peak) peak = rss;
    }
    CU_ASSERT(peak <= limit);
    CU_ASSERT(peak > limit - 16);
    CU_ASSERT(restarts >= 3 && restarts <= 6); /* 160 MiB leaked, a restart every ~40 */
    CU_ASSERT(cpu > 0);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    /* an in-process plugin cannot be restarted */
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\",\"isolate\":\"none\",\"max_rss_mb\":100}]", so);
    CU_ASSERT(create_err(json, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].max_rss_mb"));
}

#define PROC_CMD "\"command\":[\"/usr/bin/python3\",\"tests/rewards/fixtures/proc_plugin.py\"]"
#define BAD_CMD "\"command\":[\"/usr/bin/python3\",\"tests/rewards/fixtures/proc_misbehave.py\"]"

static void test_process_restart_every_and_resources(void) {
    reward_pipeline *p = make("[{\"type\":\"process\",\"name\":\"proc\"," PROC_CMD ",\"restart_every\":3},"
                              " {\"type\":\"exact_match\"}]");
    if (!p) return;
    rlhf_reward_item items[1] = {rt_item("abcd", "{\"answer\":\"abcd\"}")};
    reward_scores sc = {0};
    rlhf_error err = {0};
    for (int i = 0; i < 7; i++) {
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    }
    double rss = 0, cpu = 0;
    int64_t restarts = -1;
    CU_ASSERT_EQUAL(reward_pipeline_source_resources(p, 0, &rss, &cpu, &restarts), 0);
    CU_ASSERT_EQUAL(restarts, 2);
    CU_ASSERT(rss > 1 && rss < 1000); /* a python3 process */
    CU_ASSERT(cpu > 0);               /* three interpreters started and ran */
    CU_ASSERT_EQUAL(reward_pipeline_source_resources(p, 1, &rss, &cpu, &restarts), 1); /* in-process */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* json.dumps(float('nan')) writes NaN: that item is an ERROR, the others of the reply count. */
static void test_process_nan_per_item(void) {
    reward_pipeline *p = make("[{\"type\":\"process\"," BAD_CMD ",\"config\":{\"mode\":\"nan\"}}]");
    if (!p) return;
    rlhf_reward_item items[4] = {rt_item("ab", NULL), rt_item("NAN", NULL), rt_item("INF", NULL), rt_item("abcd", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 4, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.2, 1e-12);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[1].reason, "non-finite score: NaN"));
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[2].reason, "non-finite score: Infinity"));
    CU_ASSERT_EQUAL(sc.status[3].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[3], 0.4, 1e-12);
    CU_ASSERT_EQUAL(sc.source_errors[0], 2);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_process_stdout_junk(void) {
    reward_pipeline *p = make("[{\"type\":\"process\"," BAD_CMD ",\"config\":{\"mode\":\"stdout\"}}]");
    if (!p) return;
    rlhf_reward_item items[1] = {rt_item("ab", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "\"debug: scoring 1 items\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "stdout is the protocol channel; log to stderr"));
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* A child that dies in init, a script that is not there, a misspelt config key: each a create-time
 * error that says so (it used to read "Connection reset by peer" or nothing). */
static void test_process_start_failures(void) {
    rlhf_error err = {0};
    CU_ASSERT(create_err("[{\"type\":\"process\"," BAD_CMD ",\"config\":{\"mode\":\"init_exit\"}}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "process plugin exited during init (status 5)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "loading model... | fatal: cannot open /models/style.bin"));
    CU_ASSERT_PTR_NULL(strstr(err.msg, "Connection reset"));
    CU_ASSERT(create_err("[{\"type\":\"process\",\"command\":[\"python3\",\"tests/rewards/fixtures/no_such.py\"]}]",
                         &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].command[1]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "script 'tests/rewards/fixtures/no_such.py' does not exist"));
    /* without a script extension the interpreter's own words arrive, with its status */
    CU_ASSERT(create_err("[{\"type\":\"process\",\"command\":[\"python3\",\"tests/rewards/fixtures/no_such\"]}]",
                         &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "exited during init (status 2)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "No such file or directory"));
    CU_ASSERT(create_err("[{\"type\":\"process\"," PROC_CMD ",\"config\":{\"mdoe\":\"ok\"}}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "config.mdoe: unknown key"));
}

int rt_register_isolation(void) {
    /* under `make sanitize` ASan would turn the worker's SIGSEGV into exit 1: the children leave it alone */
    const char *asan = getenv("ASAN_OPTIONS");
    static char opts[1024];
    snprintf(opts, sizeof opts, "%s%shandle_segv=0", asan ? asan : "", asan && asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    CU_pSuite s = CU_add_suite("isolation", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, ".so that segfaults on one item: that item ERROR, the rest scored", test_so_segv_isolated);
    CU_add_test(s, ".so that crashes twice on an item is not given it again", test_so_quarantine);
    CU_add_test(s, ".so that leaks: max_rss_mb restarts the worker", test_so_leak_max_rss);
    CU_add_test(s, "process plugin: restart_every, RSS and CPU", test_process_restart_every_and_resources);
    CU_add_test(s, "process plugin writing NaN: that item ERROR", test_process_nan_per_item);
    CU_add_test(s, "process plugin printing on stdout: the reason says so", test_process_stdout_junk);
    CU_add_test(s, "process plugin exiting in init, missing script, unknown key", test_process_start_failures);
    return 0;
}
