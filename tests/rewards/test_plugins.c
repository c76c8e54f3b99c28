/* tests/rewards/test_plugins.c — shared-object plugins (the documented example, ABI mismatch,
 * missing symbol, failing init, unloadable path) and process plugins (working, crashing, hanging,
 * printing garbage, refusing init). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/rewards/rewards_test.h"

static int create_err(const char *json, rlhf_error *err) {
    reward_pipeline *p = NULL;
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", err);
    reward_pipeline_destroy(&p);
    return rc;
}

static void test_so_example(void) {
    char so[512], json[1024];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("examples/reward-plugin/keyword_reward.c", "", "keyword.so", so, sizeof so), 0);
    snprintf(json, sizeof json,
             "[{\"type\":\"plugin\",\"name\":\"kw\",\"path\":\"%s\",\"weight\":2,"
             "  \"config\":{\"keywords\":[\"because\",\"therefore\"],\"per_hit\":0.25}}]", so);
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, json, "cfg: rewards", &err), 0);
    rlhf_reward_item items[4] = {rt_item("because therefore", NULL), rt_item("because", NULL), rt_item("", NULL),
                                 rt_item("x", "{\"skip_keywords\":true}")};
    reward_scores sc = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 4, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.5, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[0], 1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 0.25, 1e-12);
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_ERROR);
    CU_ASSERT_EQUAL(sc.status[3].code, RLHF_REWARD_SKIP);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    /* the example's own config validation surfaces as a create error naming the source */
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\",\"config\":{\"keywords\":[]}}]", so);
    CU_ASSERT(create_err(json, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "config.keywords"));
}

static void test_so_refused(void) {
    char so[512], json[1024];
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/abi_fixture.c", "-DFIXTURE_ABI=99", "abi99.so", so, sizeof so), 0);
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\"}]", so);
    CU_ASSERT_EQUAL(create_err(json, &err), RLHF_EUNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "ABI version 99"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "abi99.so"));

    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/abi_fixture.c", "-DFIXTURE_NO_ENTRY", "noentry.so", so, sizeof so), 0);
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\"}]", so);
    CU_ASSERT(create_err(json, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "missing symbol rlhf_reward_plugin_entry"));

    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/abi_fixture.c", "-DFIXTURE_BAD_INIT", "badinit.so", so, sizeof so), 0);
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\"}]", so);
    CU_ASSERT(create_err(json, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "fixture refuses to start"));

    CU_ASSERT(create_err("[{\"type\":\"plugin\",\"path\":\"/nonexistent/x.so\"}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "cannot load plugin"));
    CU_ASSERT(create_err("[{\"type\":\"plugin\"}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].path"));
}

#define PROC_CMD "\"command\":[\"/usr/bin/python3\",\"tests/rewards/fixtures/proc_plugin.py\"]"

static reward_pipeline *make_proc(const char *mode, int timeout_ms) {
    char json[1024];
    snprintf(json, sizeof json, "[{\"type\":\"process\",\"name\":\"proc\"," PROC_CMD ",\"timeout_ms\":%d,"
             "\"config\":{\"mode\":\"%s\"}}]", timeout_ms, mode);
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", &err);
    if (rc) fprintf(stderr, "%s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    return p;
}

static void test_process_ok_and_crash(void) {
    reward_pipeline *p = make_proc("ok", 5000);
    if (!p) return;
    rlhf_reward_item items[3] = {rt_item("abcd", NULL), rt_item("ERR", NULL), rt_item("SKIP", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.4, 1e-12);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_STRING_EQUAL(sc.status[1].reason, "asked to fail");
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_SKIP);
    /* invalid UTF-8 from the model is passed on with U+FFFD, not dropped: "ab\xff" -> 3 characters */
    rlhf_reward_item bad_utf8[1] = {rt_item("ab\xff", NULL)};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, bad_utf8, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.3, 1e-12);
    /* a crash mid-batch: every item of the batch is ERROR (never 0) ... */
    rlhf_reward_item crash[2] = {rt_item("fine", NULL), rt_item("CRASH", NULL)};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, crash, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "exited"));
    /* ... and the next batch restarts the child */
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.4, 1e-12);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_process_hang(void) {
    reward_pipeline *p = make_proc("ok", 400);
    if (!p) return;
    rlhf_reward_item items[2] = {rt_item("HANG", NULL), rt_item("x", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    double t0 = rlhf_now();
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    double dt = rlhf_now() - t0;
    CU_ASSERT(dt < 3.0); /* bounded by timeout_ms, not by the child's sleep(3600) */
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "timeout"));
    CU_ASSERT_EQUAL(reward_pipeline_source_errors_total(p, 0), 2);
    /* restarted on the next batch */
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items + 1, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* An in-process plugin that loops forever: the watchdog returns at timeout_ms with ERROR "timeout",
 * the plugin then runs in a worker process (rlhf reward-plugin-host), which scores the next batches,
 * and a second hang there is again a timeout followed by a restart. */
static void test_so_hang_watchdog(void) {
    char so[512], json[1024], host[4200];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/hang_fixture.c", "", "hang.so", so, sizeof so), 0);
    snprintf(host, sizeof host, "%s/bin/rlhf", rt_build_dir());
    CU_ASSERT_EQUAL_FATAL(access(host, X_OK), 0);
    setenv("RLHF_PLUGIN_HOST", host, 1); /* this test binary is not rlhf */
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"hang\",\"path\":\"%s\",\"timeout_ms\":300,"
             "\"isolate\":\"none\"}]", so);
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, json, "cfg: rewards", &err), 0);
    rlhf_reward_item items[2] = {rt_item("x", NULL), rt_item("HANG", NULL)};
    reward_scores sc = {0};
    double t0 = rlhf_now();
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT(rlhf_now() - t0 < 2.0);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(sc.status[i].code, RLHF_REWARD_ERROR);
        char kind[48];
        reward_reason_kind(sc.status[i].reason, kind, sizeof kind);
        CU_ASSERT_STRING_EQUAL(kind, "timeout");
    }
    /* isolated: the worker process scores */
    rlhf_reward_item ok[2] = {rt_item("abc", NULL), rt_item("zz", NULL)};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, ok, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 3, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 2, 1e-12);
    /* a hang in the worker: killed at the timeout, restarted for the next batch */
    t0 = rlhf_now();
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items + 1, 1, &sc, &err), 0);
    CU_ASSERT(rlhf_now() - t0 < 2.0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "timeout"));
    CU_ASSERT_EQUAL(reward_pipeline_score(p, ok, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 3, 1e-12);
    CU_ASSERT_EQUAL(reward_pipeline_source_errors_total(p, 0), 3);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void *cancel_later(void *arg) {
    usleep(300000);
    reward_pipeline_cancel(arg);
    return NULL;
}

/* reward_pipeline_cancel ends a wait on a hung plugin (in-process or process) long before its
 * timeout_ms: what lets a stopping updater exit within seconds whatever a plugin does. */
static void test_cancel_ends_waits(void) {
    char so[512], json[1024];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/hang_fixture.c", "", "hang.so", so, sizeof so), 0);
    for (int kind = 0; kind < 3; kind++) {
        if (kind < 2) /* in this process (the watchdog) and in the worker process (the default) */
            snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\",\"timeout_ms\":60000%s}]", so,
                     kind == 0 ? ",\"isolate\":\"none\"" : "");
        else
            snprintf(json, sizeof json, "[{\"type\":\"process\"," PROC_CMD ",\"timeout_ms\":60000}]");
        reward_pipeline *p = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, json, "cfg: rewards", &err), 0);
        rlhf_reward_item items[1] = {rt_item("HANG", NULL)};
        reward_scores sc = {0};
        pthread_t th;
        double t0 = rlhf_now();
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, cancel_later, p), 0);
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
        double dt = rlhf_now() - t0;
        pthread_join(th, NULL);
        CU_ASSERT(dt >= 0.25 && dt < 1.5);
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
        CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "cancelled"));
        /* and a later call does not wait at all */
        t0 = rlhf_now();
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
        CU_ASSERT(rlhf_now() - t0 < 0.1);
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
        reward_scores_free(&sc);
        reward_pipeline_destroy(&p);
    }
}

static void test_process_garbage_and_bad_init(void) {
    reward_pipeline *p = make_proc("garbage", 5000);
    if (!p) return;
    rlhf_reward_item items[1] = {rt_item("x", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "\"this is not json\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "stdout is the protocol channel; log to stderr"));
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);

    CU_ASSERT(create_err("[{\"type\":\"process\"," PROC_CMD ",\"config\":{\"mode\":\"bad_init\"}}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "bad_init requested"));
    CU_ASSERT(create_err("[{\"type\":\"process\",\"command\":[\"/nonexistent/plugin\"]}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent/plugin"));
    CU_ASSERT(create_err("[{\"type\":\"process\",\"command\":\"python3 x.py\"}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].command"));
}

int rt_register_plugins(void) {
    CU_pSuite s = CU_add_suite("plugins", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "example .so plugin loads and scores", test_so_example);
    CU_add_test(s, ".so with ABI 99, no entry, failing init, bad path refused", test_so_refused);
    CU_add_test(s, "process plugin scores; crash is ERROR then restart", test_process_ok_and_crash);
    CU_add_test(s, "process plugin hang is a timeout ERROR", test_process_hang);
    CU_add_test(s, "process plugin garbage and refused init", test_process_garbage_and_bad_init);
    CU_add_test(s, ".so that loops forever: watchdog timeout, then a worker process", test_so_hang_watchdog);
    CU_add_test(s, "cancel ends the wait on a hung plugin", test_cancel_ends_waits);
    return 0;
}
