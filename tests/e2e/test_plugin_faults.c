/* tests/e2e/test_plugin_faults.c — `rlhf run` with an in-process reward plugin (isolate "none", the
 * watchdog path) that never returns (tests/rewards/fixtures/hang_fixture.c built with -DFIXTURE_HANG_ALWAYS):
 *   - with a long timeout_ms, SIGTERM to the launcher ends the whole run within 5 s;
 *   - with a short one, every item is ERROR "timeout", the plugin moves to a worker process, and the
 *     source's error rate stops the run with the cause in the updater's log.
 * And a run whose process plugin (tests/rewards/fixtures/proc_plugin.py) fails every other item under
 * on_error "zero": the counts reach metrics.jsonl and the progress line. */
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static char g_so[256];

static int file_contains(const char *path, const char *needle) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return 0;
    int r = strstr(d, needle) != NULL;
    free(d);
    return r;
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_pfault_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf) || access(g_rlhf, X_OK) != 0) return -1;
    char src[1024], cmd[4096];
    if (test_source_path("tests/rewards/fixtures/hang_fixture.c", src, sizeof src)) return -1;
    snprintf(g_so, sizeof g_so, "%s/hang_always.so", g_dir);
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -DFIXTURE_HANG_ALWAYS -I%s -o %s %s", RLHF_SOURCE_ROOT, g_so, src);
    if (system(cmd) != 0) return -1;
    return e2e_write_prompts(g_dir);
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

static void write_config(const char *path, const char *name, int timeout_ms) {
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"name\":\"%s\",\"run_dir\":\"%s/%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"},\n"
             "   {\"type\":\"plugin\",\"name\":\"stuck\",\"path\":\"%s\",\"timeout_ms\":%d,\"isolate\":\"none\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":20,\"seed\":5},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             name, g_dir, name, g_dir, g_so, timeout_ms);
    write_text(path, doc);
}

/* Waits until `path` contains `needle` (or the launcher ended); 1 when found. */
static int wait_contains(const char *path, const char *needle, pid_t launcher, double timeout) {
    double t0 = rlhf_now();
    while (rlhf_now() - t0 < timeout) {
        if (file_contains(path, needle)) return 1;
        if (waitpid(launcher, NULL, WNOHANG) == launcher) return 0;
        usleep(50000);
    }
    return 0;
}

static void test_sigterm_with_hung_plugin(void) {
    char cfg[256], ulog[256], out[256];
    snprintf(cfg, sizeof cfg, "%s/hung.json", g_dir);
    snprintf(ulog, sizeof ulog, "%s/hung/logs/updater.log", g_dir);
    snprintf(out, sizeof out, "%s/hung.out", g_dir);
    write_config(cfg, "hung", 600000);
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    pid_t launcher = test_proc_spawn_args(g_rlhf, g_rlhf, (const char *const[]){"run", cfg, "--quiet", NULL}, &o);
    int started = wait_contains(ulog, "accepted group(s) from the replay log", launcher, 60);
    CU_ASSERT(started);
    /* the scorer is now inside the plugin's endless call (groups arrive within a second) */
    sleep(3);
    double t0 = rlhf_now();
    kill(launcher, SIGTERM);
    int rc = test_proc_wait(launcher, 30);
    double dt = rlhf_now() - t0;
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(dt < 5.0);
    if (dt >= 5.0) fprintf(stderr, "rlhf run took %.1f s to stop\n", dt);
    CU_ASSERT(file_contains(out, "continue with: rlhf run --resume"));
}

static void test_timeouts_stop_the_run(void) {
    char cfg[256], ulog[256], out[256];
    snprintf(cfg, sizeof cfg, "%s/rate.json", g_dir);
    snprintf(ulog, sizeof ulog, "%s/rate/logs/updater.log", g_dir);
    snprintf(out, sizeof out, "%s/rate.out", g_dir);
    write_config(cfg, "rate", 300);
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    pid_t launcher = test_proc_spawn_args(g_rlhf, g_rlhf, (const char *const[]){"run", cfg, "--quiet", NULL}, &o);
    int rc = test_proc_wait(launcher, 120);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    /* the first timeout moved the plugin into a worker process; its failures were logged with the
     * prompt id; the error rate stopped the run naming the source, the rate and a reason */
    CU_ASSERT(file_contains(ulog, "now runs in a worker process"));
    CU_ASSERT(file_contains(ulog, "reward source 'stuck' failed on prompt p"));
    CU_ASSERT(file_contains(ulog, "timeout: score_batch did not return within 300 ms"));
    CU_ASSERT(file_contains(ulog, "more than max_error_rate 0.5 over error_window 200; e.g. prompt p"));
    /* the launcher stops the run once, with the reward-source class and the cause on the terminal */
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_PLUGIN);
    CU_ASSERT(file_contains(out, "ended with exit status 4 (plugin)"));
    CU_ASSERT(file_contains(out, "more than max_error_rate 0.5"));
}

static void test_errors_in_metrics_and_progress(void) {
    char cfg[256], out[256], py[1024], doc[4096], met[256];
    snprintf(cfg, sizeof cfg, "%s/flaky.json", g_dir);
    snprintf(out, sizeof out, "%s/flaky.out", g_dir);
    snprintf(met, sizeof met, "%s/flaky/metrics.jsonl", g_dir);
    CU_ASSERT_EQUAL_FATAL(test_source_path("tests/rewards/fixtures/proc_plugin.py", py, sizeof py), 0);
    snprintf(doc, sizeof doc,
             "{\"name\":\"flaky\",\"run_dir\":\"%s/flaky\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"},\n"
             "   {\"type\":\"process\",\"name\":\"flaky\",\"command\":[\"/usr/bin/python3\",\"%s\"],"
             "\"on_error\":\"zero\",\"max_error_rate\":1,\"config\":{\"fail_every\":2}}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":2,\"seed\":5},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             g_dir, g_dir, py);
    write_text(cfg, doc);
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, (const char *const[]){"run", cfg, NULL}, &o, 120), 0);
    CU_ASSERT(file_contains(met, "\"reward/flaky/errors/flaky_backend\""));
    CU_ASSERT(file_contains(met, "\"reward/digit/errors\":0"));
    /* the final progress line names the source and the reason kind */
    CU_ASSERT(file_contains(out, " (flaky: flaky_backend "));
}

int register_plugin_faults_suite(void);
int register_plugin_faults_suite(void) {
    CU_pSuite s = CU_add_suite("e2e_plugin_faults", suite_init, suite_cleanup);
    CU_add_test(s, "sigterm_with_hung_plugin", test_sigterm_with_hung_plugin);
    CU_add_test(s, "timeouts_stop_the_run", test_timeouts_stop_the_run);
    CU_add_test(s, "errors_in_metrics_and_progress", test_errors_in_metrics_and_progress);
    return 0;
}
