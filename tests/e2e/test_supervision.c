/* tests/e2e/test_supervision.c — how `rlhf run` treats each exit status class of its processes
 * (RLHF_EXIT_*, common/common.h; docs/RUNNING.md "When things go wrong"), with real processes:
 *
 *   config:      a broker override the broker cannot bind -> the broker exits 2, the run stops at once
 *                with status 2, the key named on the terminal, no restart;
 *   environment: metrics.jsonl turned into /dev/full mid-run (every write fails with ENOSPC, as on a
 *                full disk) -> the updater exits 3, the run stops with the file and "No space left";
 *   plugin:      a reward plugin that segfaults on every call -> the updater exits 4 naming the .so,
 *                the run stops instead of restarting it;
 *   transient:   a generator killed with SIGSEGV -> restarted after a backoff, the restart printed with
 *                its signal, recorded in RUN_DIR/restarts.jsonl and counted in the step metrics
 *                (supervision/restarts), and the run completes.
 * Also: `rlhf run`'s own status for what its checks before start find (3 missing file, 2 bad value), and
 * SIGTERM while a dead updater waits out its backoff. And a CONTROL stop (issue 17): from no credential or a
 * generator's it is refused and the run goes on; from the run's control credential it ends the run, and
 * `rlhf run` exits 1 naming it instead of printing "done". test_e2e.c's run_with_faults covers SIGKILL of each process (transient, restarted). */
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char s_dir[64];
static char s_rlhf[1024];

static char *slurp(const char *path) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return NULL;
    return d;
}

static int contains(const char *path, const char *needle) {
    char *d = slurp(path);
    int r = d && strstr(d, needle);
    free(d);
    return r;
}

/* Counts occurrences of needle in the file. */
static int count_in(const char *path, const char *needle) {
    char *d = slurp(path);
    int n = 0;
    for (char *p = d; p && (p = strstr(p, needle)); p++) n++;
    free(d);
    return n;
}

static void show_on_failure(int ok, const char *out) {
    if (ok) return;
    char *d = slurp(out);
    fprintf(stderr, "\nlauncher output (%s):\n%s\n", out, d ? d : "(none)");
    free(d);
}

/* A run config for the easy task of test_e2e.c; `rewards` is the JSON array of reward sources. */
static void write_config(const char *path, const char *name, int steps, const char *rewards) {
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"name\":\"%s\",\"run_dir\":\"%s/%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":%s,\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":%d,\"checkpoint_every\":2,\"seed\":5},\n"
             " \"generators\":{\"count\":2,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             name, s_dir, name, s_dir, rewards ? rewards : "[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}]",
             steps);
    write_text(path, doc);
}

static pid_t start_run(const char *cfg, const char *out, const char *set) {
    const char *args[] = {"run", cfg, "--quiet", set ? "--set" : NULL, set, NULL};
    test_proc_opts o = {.out = out, .err = out};
    return test_proc_spawn_args(s_rlhf, s_rlhf, args, &o);
}

/* Lines of RUN_DIR/restarts.jsonl with "action" == action and "process" starting with proc. */
static int supervision_records(const char *run_dir, const char *proc, const char *action, json_t **last) {
    char p[512];
    snprintf(p, sizeof p, "%s/restarts.jsonl", run_dir);
    char *d = slurp(p);
    int n = 0;
    char *save = NULL;
    for (char *l = d ? strtok_r(d, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        const char *pr = json_string_value(json_object_get(j, "process"));
        const char *ac = json_string_value(json_object_get(j, "action"));
        if (pr && ac && !strncmp(pr, proc, strlen(proc)) && !strcmp(ac, action)) {
            n++;
            if (last) {
                json_decref(*last);
                *last = json_incref(j);
            }
        }
        json_decref(j);
    }
    free(d);
    return n;
}

static int suite_init(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/rlhf_sup_XXXXXX");
    if (!mkdtemp(s_dir)) return -1;
    if (test_bin_path("rlhf", s_rlhf, sizeof s_rlhf) || access(s_rlhf, X_OK) != 0) return -1;
    return e2e_write_prompts(s_dir);
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && s_dir[0]) test_remove_tree(s_dir);
    return 0;
}

static void test_config_class_stops_once(void) {
    char cfg[256], run[256], out[256];
    snprintf(cfg, sizeof cfg, "%s/cfgerr.json", s_dir);
    snprintf(run, sizeof run, "%s/cfgerr", s_dir);
    snprintf(out, sizeof out, "%s/cfgerr.out", s_dir);
    write_config(cfg, "cfgerr", 6, NULL);
    /* a syntactically fine endpoint no interface has: only the broker, binding it, can tell */
    int rc = test_proc_wait(start_run(cfg, out, "broker.endpoint=tcp://256.0.0.1:1"), 60);
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_CONFIG);
    CU_ASSERT(contains(out, "broker (pid"));
    CU_ASSERT(contains(out, "exit status 2 (config)"));
    CU_ASSERT(contains(out, "involves: broker.endpoint"));
    CU_ASSERT(contains(out, "cannot bind tcp://256.0.0.1:1"));
    CU_ASSERT(contains(out, "--resume"));
    CU_ASSERT_EQUAL(count_in(out, "stopping the run"), 1);
    CU_ASSERT_EQUAL(count_in(out, "restarting"), 0);
    CU_ASSERT_EQUAL(supervision_records(run, "broker", "stop", NULL), 1);
    CU_ASSERT_EQUAL(supervision_records(run, "", "restart", NULL), 0);
    show_on_failure(rc == RLHF_EXIT_CONFIG, out);
}

static long last_step(const char *run_dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    char *d = slurp(p);
    long s = -1;
    for (char *q = d; q && (q = strstr(q, "\"step\":")); q++) s = atol(q + 7);
    free(d);
    return s;
}

static void test_environment_class_disk_full(void) {
    char cfg[256], run[256], out[256], metrics[512], tmp[512];
    snprintf(cfg, sizeof cfg, "%s/full.json", s_dir);
    snprintf(run, sizeof run, "%s/full", s_dir);
    snprintf(out, sizeof out, "%s/full.out", s_dir);
    write_config(cfg, "full", 200, NULL);
    pid_t launcher = start_run(cfg, out, NULL);
    int started = 0;
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 60 && !started;) {
        started = last_step(run) >= 2;
        if (waitpid(launcher, NULL, WNOHANG) == launcher) break;
        usleep(20000);
    }
    if (!started) {
        CU_FAIL("the run made no steps");
        test_proc_stop(launcher, 30);
        show_on_failure(0, out);
        return;
    }
    /* the disk fills: from now on every write to metrics.jsonl fails with ENOSPC (rename: atomic) */
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run);
    snprintf(tmp, sizeof tmp, "%s/metrics.full", run);
    CU_ASSERT_EQUAL_FATAL(symlink("/dev/full", tmp), 0);
    CU_ASSERT_EQUAL_FATAL(rename(tmp, metrics), 0);
    int rc = test_proc_wait(launcher, 120);
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_ENV);
    CU_ASSERT(contains(out, "updater (pid"));
    CU_ASSERT(contains(out, "exit status 3 (environment)"));
    CU_ASSERT(contains(out, "No space left on device"));
    CU_ASSERT(contains(out, "involves: "));
    CU_ASSERT(contains(out, "metrics.jsonl"));
    CU_ASSERT_EQUAL(count_in(out, "restarting"), 0);
    CU_ASSERT_EQUAL(supervision_records(run, "updater", "stop", NULL), 1);
    show_on_failure(rc == RLHF_EXIT_ENV, out);
}

static void test_plugin_class_crash_stops(void) {
    char so[256], cmd[2048], cfg[256], run[256], out[256], rewards[512];
    snprintf(so, sizeof so, "%s/crash.so", s_dir);
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -w -I%s -o %s %s/tests/rewards/fixtures/crash_fixture.c",
             RLHF_SOURCE_ROOT, so, RLHF_SOURCE_ROOT);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    snprintf(cfg, sizeof cfg, "%s/crash.json", s_dir);
    snprintf(run, sizeof run, "%s/crash", s_dir);
    snprintf(out, sizeof out, "%s/crash.out", s_dir);
    /* isolate "none": the plugin runs in the updater, whose fault handler names it (the default, a
     * worker process, turns the crash into per-item errors: tests/rewards/test_isolation.c) */
    snprintf(rewards, sizeof rewards, "[{\"type\":\"plugin\",\"name\":\"crashy\",\"path\":\"%s\",\"isolate\":\"none\"}]",
             so);
    write_config(cfg, "crash", 6, rewards);
    int rc = test_proc_wait(start_run(cfg, out, NULL), 120);
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_PLUGIN);
    CU_ASSERT(contains(out, "updater (pid"));
    CU_ASSERT(contains(out, "exit status 4 (plugin)"));
    CU_ASSERT(contains(out, "reward plugin crashed"));
    CU_ASSERT(contains(out, "involves: "));
    CU_ASSERT(contains(out, so));
    CU_ASSERT(contains(out, "SIGSEGV"));
    CU_ASSERT_EQUAL(count_in(out, "restarting"), 0);
    CU_ASSERT_EQUAL(supervision_records(run, "updater", "stop", NULL), 1);
    show_on_failure(rc == RLHF_EXIT_PLUGIN, out);
}

/* The same plugin with the default isolation (a worker process): the updater is never killed; every
 * item is an ERROR naming the plugin and the signal, and the source's error rate stops the run with
 * the plugin class and a sample reason. */
static void test_plugin_crash_isolated_stops(void) {
    char so[256], cmd[2048], cfg[256], out[256], rewards[512];
    snprintf(so, sizeof so, "%s/crash_iso.so", s_dir);
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -w -I%s -o %s %s/tests/rewards/fixtures/crash_fixture.c",
             RLHF_SOURCE_ROOT, so, RLHF_SOURCE_ROOT);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    snprintf(cfg, sizeof cfg, "%s/crash_iso.json", s_dir);
    snprintf(out, sizeof out, "%s/crash_iso.out", s_dir);
    snprintf(rewards, sizeof rewards, "[{\"type\":\"plugin\",\"name\":\"crashy\",\"path\":\"%s\"}]", so);
    write_config(cfg, "crash_iso", 6, rewards);
    /* ASan (make sanitize) would turn the worker's SIGSEGV into an exit status */
    const char *asan = getenv("ASAN_OPTIONS");
    char *asan_saved = asan ? strdup(asan) : NULL, opts[1024];
    snprintf(opts, sizeof opts, "%s%shandle_segv=0", asan ? asan : "", asan && asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    pid_t launcher = start_run(cfg, out, NULL);
    if (asan_saved) setenv("ASAN_OPTIONS", asan_saved, 1);
    else unsetenv("ASAN_OPTIONS");
    free(asan_saved);
    int rc = test_proc_wait(launcher, 120);
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_PLUGIN);
    CU_ASSERT(contains(out, "exit status 4 (plugin)"));
    CU_ASSERT(contains(out, "more than max_error_rate 0.5"));
    CU_ASSERT(contains(out, "plugin crash_iso.so crashed (SIGSEGV) on item"));
    CU_ASSERT(!contains(out, "reward plugin crashed with"));
    CU_ASSERT_EQUAL(count_in(out, "restarting"), 0);
    show_on_failure(rc == RLHF_EXIT_PLUGIN, out);
}

/* The child of `parent` whose command line contains `word` and `word2`. */
static pid_t child_of(pid_t parent, const char *word, const char *word2) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "pgrep -P %d -f '%s.*%s'", (int)parent, word, word2);
    FILE *p = popen(cmd, "r");
    int pid = 0;
    if (p && fscanf(p, "%d", &pid) != 1) pid = 0;
    if (p) pclose(p);
    return pid;
}

static void test_transient_restarted_and_counted(void) {
    char cfg[256], run[256], out[256];
    snprintf(cfg, sizeof cfg, "%s/segv.json", s_dir);
    snprintf(run, sizeof run, "%s/segv", s_dir);
    snprintf(out, sizeof out, "%s/segv.out", s_dir);
    write_config(cfg, "segv", 30, NULL);
    /* under `make sanitize` ASan would catch the SIGSEGV and exit 1 instead of dying by it: the
     * run's processes (they inherit this environment) leave the signal alone */
    const char *asan = getenv("ASAN_OPTIONS");
    char *asan_saved = asan ? strdup(asan) : NULL, opts[1024];
    snprintf(opts, sizeof opts, "%s%shandle_segv=0", asan ? asan : "", asan && asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    pid_t launcher = start_run(cfg, out, NULL);
    if (asan_saved) setenv("ASAN_OPTIONS", asan_saved, 1);
    else unsetenv("ASAN_OPTIONS");
    free(asan_saved);
    pid_t gen = 0;
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 60 && (gen <= 0 || last_step(run) < 1);) {
        if (gen <= 0) gen = child_of(launcher, "generator", "--id 1");
        if (waitpid(launcher, NULL, WNOHANG) == launcher) break;
        usleep(20000);
    }
    if (gen <= 0 || last_step(run) < 1) {
        CU_FAIL("the run did not start");
        test_proc_stop(launcher, 30);
        show_on_failure(0, out);
        return;
    }
    kill(gen, SIGSEGV);
    int rc = test_proc_wait(launcher, 120);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(contains(out, "generator-1 (pid"));
    CU_ASSERT(contains(out, "signal 11 (SIGSEGV)"));
    CU_ASSERT(contains(out, "restarting in"));
    CU_ASSERT(contains(out, "1 restart(s) during the run"));
    json_t *rec = NULL;
    CU_ASSERT_EQUAL(supervision_records(run, "generator-1", "restart", &rec), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rec, "signal")), SIGSEGV);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rec, "pid")), gen);
    CU_ASSERT(json_real_value(json_object_get(rec, "delay_s")) > 0);
    json_decref(rec);
    CU_ASSERT_EQUAL(supervision_records(run, "", "stop", NULL), 0);
    /* and in the metrics: the last step counts the restart */
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    char *d = slurp(p);
    char *lastrec = d ? strrchr(d, '{') : NULL;
    while (lastrec && lastrec > d && lastrec[-1] != '\n') lastrec--; /* start of the last line */
    json_t *m = lastrec ? json_loads(lastrec, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "supervision/restarts")), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "step")), 30);
    json_decref(m);
    free(d);
    show_on_failure(rc == 0, out);
}

/* `rlhf run` itself: the class of what its checks before start find, no process started. */
static void test_launcher_prestart_classes(void) {
    char cfg[256], out[256], missing[256], doc[1024];
    snprintf(out, sizeof out, "%s/prestart.out", s_dir);
    snprintf(missing, sizeof missing, "%s/no-such-run", s_dir);
    const char *a1[] = {"run", "--resume", missing, NULL};
    test_proc_opts o = {.out = out, .err = out};
    CU_ASSERT_EQUAL(test_proc_run_args(s_rlhf, s_rlhf, a1, &o, 30), RLHF_EXIT_ENV);
    CU_ASSERT(contains(out, "no config.json here"));
    /* a dataset that is not there: environment */
    snprintf(cfg, sizeof cfg, "%s/nodata.json", s_dir);
    write_config(cfg, "nodata", 4, NULL);
    char *d = slurp(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    char *at = strstr(d, "prompts.jsonl");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    snprintf(doc, sizeof doc, "%.*smissing.jsonl%s", (int)(at - d), d, at + strlen("prompts.jsonl"));
    free(d);
    write_text(cfg, doc);
    const char *a2[] = {"run", cfg, "--quiet", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(s_rlhf, s_rlhf, a2, &o, 30), RLHF_EXIT_ENV);
    CU_ASSERT(contains(out, "missing.jsonl"));
    /* a bad value: config */
    write_config(cfg, "badvalue", 4, NULL);
    const char *a3[] = {"run", cfg, "--quiet", "--set", "rl.k=0", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(s_rlhf, s_rlhf, a3, &o, 30), RLHF_EXIT_CONFIG);
    CU_ASSERT(contains(out, "rl.k"));
}

/* SIGTERM while the updater waits out its restart backoff: the launcher still stops (it used to wait
 * for an updater that would never be started again). */
static void test_stop_during_backoff(void) {
    char cfg[256], run[256], out[256];
    snprintf(cfg, sizeof cfg, "%s/backoff.json", s_dir);
    snprintf(run, sizeof run, "%s/backoff", s_dir);
    snprintf(out, sizeof out, "%s/backoff.out", s_dir);
    write_config(cfg, "backoff", 400, NULL);
    pid_t launcher = start_run(cfg, out, NULL);
    pid_t upd = 0;
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 60 && (upd <= 0 || last_step(run) < 2);) {
        if (upd <= 0) upd = child_of(launcher, "updater", "--config");
        if (waitpid(launcher, NULL, WNOHANG) == launcher) break;
        usleep(20000);
    }
    if (upd <= 0 || last_step(run) < 2) {
        CU_FAIL("the run did not start");
        test_proc_stop(launcher, 30);
        show_on_failure(0, out);
        return;
    }
    kill(upd, SIGKILL);
    /* the launcher reaps it within its 50 ms poll and schedules the restart 0.25 s later */
    usleep(120000);
    kill(launcher, SIGTERM);
    int rc = test_proc_wait(launcher, 30);
    CU_ASSERT_NOT_EQUAL(rc, -1); /* -1: still running after 30 s (killed by test_proc_wait) */
    CU_ASSERT(contains(out, "continue with: rlhf run --resume"));
    show_on_failure(rc != -1, out);
}

/* Who may stop a run: only the launcher's control credential; an early end is not "done". */
static void test_control_stop_needs_credential(void) {
    char cfg[256], run[256], out[256], p[512], cred[512];
    snprintf(cfg, sizeof cfg, "%s/ctl.json", s_dir);
    snprintf(run, sizeof run, "%s/ctl", s_dir);
    snprintf(out, sizeof out, "%s/ctl.out", s_dir);
    write_config(cfg, "ctl", 400, NULL);
    pid_t launcher = start_run(cfg, out, NULL);
    int started = 0;
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 60 && !started;) {
        started = last_step(run) >= 2;
        if (waitpid(launcher, NULL, WNOHANG) == launcher) break;
        usleep(20000);
    }
    if (!started) {
        CU_FAIL("the run made no steps");
        test_proc_stop(launcher, 30);
        show_on_failure(0, out);
        return;
    }
    snprintf(p, sizeof p, "%s/config.json", run);
    json_t *c = json_load_file(p, 0, NULL);
    const char *ep = json_string_value(json_object_get(json_object_get(c, "broker"), "endpoint"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(ep);
    snprintf(cred, sizeof cred, "%s/credentials", run);
    rlhf_error e;
    rlhf_error_clear(&e);
    broker_client *bc = NULL;
    /* no credential: no connection at all */
    CU_ASSERT_EQUAL(broker_client_connect(&bc, ep, WIRE_ROLE_OBSERVER, "anon", 1000, &e), RLHF_ETIMEOUT);
    /* a generator's credential: connected, but its stop is refused */
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&bc, ep, WIRE_ROLE_GENERATOR, "rogue", cred, 5000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_control(bc, WIRE_CONTROL_STOP, "rogue stop", &e), 0);
    json_t *st = NULL;
    for (int i = 0; i < 50 && broker_client_rejections(bc, NULL) == 0; i++) {
        if (broker_client_get_stats(bc, &st, 1000, &e) == 0) json_decref(st);
        st = NULL;
    }
    rlhf_error last;
    CU_ASSERT_EQUAL(broker_client_rejections(bc, &last), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(last.msg, "not_authorized"));
    broker_client_close(&bc);
    long before = last_step(run);
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 60 && last_step(run) <= before + 1;) usleep(50000);
    CU_ASSERT(last_step(run) > before + 1); /* still training */
    CU_ASSERT_EQUAL(waitpid(launcher, NULL, WNOHANG), 0);
    /* the control credential ends it: not the run's own end, so not "done" and not 0 */
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&bc, ep, WIRE_ROLE_OBSERVER, "operator", cred, 5000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_control(bc, WIRE_CONTROL_STOP, "maintenance", &e), 0);
    broker_client_close(&bc);
    json_decref(c);
    int rc = test_proc_wait(launcher, 120);
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT(contains(out, "before its end"));
    CU_ASSERT(contains(out, "the broker said stop (CONTROL stop from operator: maintenance)"));
    CU_ASSERT_FALSE(contains(out, "[rlhf run] done"));
    show_on_failure(rc == 1, out);
}

void e2e_register_supervision(void);
void e2e_register_supervision(void) {
    CU_pSuite s = CU_add_suite("e2e_supervision", suite_init, suite_cleanup);
    CU_add_test(s, "config class: a bad broker override stops the run once, key named", test_config_class_stops_once);
    CU_add_test(s, "environment class: a full disk under metrics.jsonl stops the run with ENOSPC",
                test_environment_class_disk_full);
    CU_add_test(s, "plugin class: a reward plugin that segfaults stops the run, naming it", test_plugin_class_crash_stops);
    CU_add_test(s, "plugin class: a segfaulting plugin in its worker: item errors, then the error rate stops the run",
                test_plugin_crash_isolated_stops);
    CU_add_test(s, "transient: a SIGSEGV'd generator is restarted after a backoff and counted",
                test_transient_restarted_and_counted);
    CU_add_test(s, "SIGTERM while the updater waits out its backoff still stops the run", test_stop_during_backoff);
    CU_add_test(s, "CONTROL stop: refused without the control credential; with it the run exits 1, not done",
                test_control_stop_needs_credential);
    CU_add_test(s, "rlhf run before start: missing run dir or dataset -> 3, bad value -> 2", test_launcher_prestart_classes);
}
