/* tests/e2e/test_lock.c — one run per directory (run/lock.c), with real launches of the rlhf binary:
 *
 *   second_launch_refused: while `rlhf run` trains, a `rlhf run --resume` of its directory, a fresh
 *                     `rlhf run` of the same config and a `rlhf replay --out` into it each exit
 *                     non-zero at once with one line naming the holder's pid and start time, and
 *                     write nothing (config.json, the logs and the lock file are unchanged);
 *   stale_after_kill9: after kill -9 of the launcher the kernel frees the lock once the run's last
 *                     process is gone; the lock file is still there, names the dead launcher, and a
 *                     resume starts and finishes. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static char g_run[256], g_cfg[256];
static pid_t g_launcher = -1;

static char *slurp(const char *path) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return NULL;
    return d;
}

/* the number of lines of a file (0 when missing) */
static int count_lines(const char *path) {
    char *d = slurp(path);
    int n = 0;
    for (char *p = d; p && *p; p++) n += *p == '\n';
    free(d);
    return n;
}

static long last_step(const char *run_dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    char *d = slurp(p);
    long s = -1;
    for (char *l = d; l && *l;) {
        char *nl = strchr(l, '\n');
        if (nl) *nl = 0;
        json_t *j = json_loads(l, 0, NULL);
        if (j) s = (long)json_integer_value(json_object_get(j, "step"));
        json_decref(j);
        if (!nl) break;
        l = nl + 1;
    }
    free(d);
    return s;
}

/* names of the files in RUN_DIR/logs, concatenated: what a refused start must not add to */
static void list_logs(char *out, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/logs", g_run);
    out[0] = 0;
    DIR *d = opendir(p);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%s,", e->d_name);
    }
    if (d) closedir(d);
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_lock_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf) || access(g_rlhf, X_OK) != 0) return -1;
    char doc[4096];
    if (e2e_write_prompts(g_dir)) return -1;
    snprintf(g_run, sizeof g_run, "%s/locked", g_dir);
    snprintf(g_cfg, sizeof g_cfg, "%s/locked.json", g_dir);
    /* long enough (rl.steps) that it is still training when the second launches come */
    snprintf(doc, sizeof doc,
             "{\"name\":\"locked\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":100000,\"checkpoint_every\":2,\"seed\":5},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             g_run, g_dir);
    return write_text(g_cfg, doc);
}

static int suite_cleanup(void) {
    if (g_launcher > 0) test_proc_stop(g_launcher, 30);
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* Runs `rlhf ARGS` to completion with stdout+stderr in out_path; its exit status. */
static int run_cmd(const char *out_path, const char *const *args, double timeout) {
    test_proc_opts o = {.out = out_path, .err = out_path};
    return test_proc_run_args(g_rlhf, g_rlhf, args, &o, timeout);
}

static void test_second_launch_refused(void) {
    char out[256], lock[512], want[64];
    snprintf(out, sizeof out, "%s/first.out", g_dir);
    snprintf(lock, sizeof lock, "%s/.lock", g_run);
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    const char *args[] = {"run", g_cfg, "--quiet", NULL};
    g_launcher = test_proc_spawn_args(g_rlhf, g_rlhf, args, &o);
    CU_ASSERT_FATAL(g_launcher > 0);
    /* training: a step logged, so every process of the run is up */
    double t0 = rlhf_now();
    while (last_step(g_run) < 2 && rlhf_now() - t0 < 120 && waitpid(g_launcher, NULL, WNOHANG) == 0) usleep(50000);
    CU_ASSERT_FATAL(last_step(g_run) >= 2);
    char *holder = slurp(lock);
    snprintf(want, sizeof want, "pid %d started ", (int)g_launcher);
    CU_ASSERT_FATAL(holder && !strncmp(holder, want, strlen(want)));
    CU_ASSERT(strstr(holder, " by rlhf run\n") != NULL);
    char cfg_json[512];
    snprintf(cfg_json, sizeof cfg_json, "%s/config.json", g_run);
    char *cfg_before = slurp(cfg_json);
    char logs_before[1024], logs_after[1024];
    list_logs(logs_before, sizeof logs_before);

    /* each refused at once, one line naming the holder; nothing written */
    char log[512], rout[256], rlog[512];
    snprintf(rout, sizeof rout, "%s/second.out", g_dir);
    snprintf(log, sizeof log, "%s/rollouts.log", g_run);
    snprintf(rlog, sizeof rlog, "%s/second.out", g_dir);
    const char *resume[] = {"run", "--resume", g_run, "--quiet", NULL};
    const char *fresh[] = {"run", g_cfg, "--quiet", NULL};
    const char *replay[] = {"replay", log, "--config", cfg_json, "--out", g_run, NULL};
    const char *const *tries[] = {resume, fresh, replay};
    for (int i = 0; i < 3; i++) {
        double t = rlhf_now();
        int rc = run_cmd(rout, tries[i], 30);
        CU_ASSERT(rc != 0 && rc > 0 && rc < 128);
        CU_ASSERT(rlhf_now() - t < 10);
        char *msg = slurp(rout);
        char pidtxt[64];
        snprintf(pidtxt, sizeof pidtxt, "(pid %d, started ", (int)g_launcher);
        CU_ASSERT(msg && strstr(msg, "error: ") && strstr(msg, g_run) && strstr(msg, "in use by rlhf run"));
        CU_ASSERT(msg && strstr(msg, pidtxt));
        CU_ASSERT_EQUAL(count_lines(rout), 1);
        if (msg && count_lines(rout) != 1) fprintf(stderr, "attempt %d said: %s\n", i, msg);
        free(msg);
    }
    char *cfg_after = slurp(cfg_json);
    CU_ASSERT(cfg_before && cfg_after && !strcmp(cfg_before, cfg_after));
    list_logs(logs_after, sizeof logs_after);
    CU_ASSERT_STRING_EQUAL(logs_before, logs_after);
    char *holder_after = slurp(lock);
    CU_ASSERT(holder && holder_after && !strcmp(holder, holder_after));
    free(holder);
    free(holder_after);
    free(cfg_before);
    free(cfg_after);
    CU_ASSERT_EQUAL(waitpid(g_launcher, NULL, WNOHANG), 0); /* the first run goes on */
}

static void test_stale_after_kill9(void) {
    CU_ASSERT_FATAL(g_launcher > 0);
    char lock[512];
    snprintf(lock, sizeof lock, "%s/.lock", g_run);
    double t0 = rlhf_now();
    while (latest_ckpt(g_run) < 2 && rlhf_now() - t0 < 60) usleep(50000);
    pid_t dead = g_launcher;
    test_proc_kill(g_launcher);
    g_launcher = -1;
    /* the kernel frees the lock when the run's last process (the children stop on their own) ends */
    int fd = open(lock, O_RDONLY);
    CU_ASSERT_FATAL(fd >= 0);
    int got = 0;
    t0 = rlhf_now();
    while (!(got = flock(fd, LOCK_EX | LOCK_NB) == 0) && rlhf_now() - t0 < 60) usleep(50000);
    CU_ASSERT_FATAL(got);
    flock(fd, LOCK_UN);
    close(fd);
    char *holder = slurp(lock), want[64];
    snprintf(want, sizeof want, "pid %d started ", (int)dead);
    CU_ASSERT(holder && !strncmp(holder, want, strlen(want))); /* the stale file is still there */
    free(holder);
    /* and does not block a resume, which runs to its end */
    int at = latest_ckpt(g_run);
    CU_ASSERT_FATAL(at >= 2);
    char steps[64], out[256];
    snprintf(steps, sizeof steps, "rl.steps=%d", at + 2);
    snprintf(out, sizeof out, "%s/resume.out", g_dir);
    const char *resume[] = {"run", "--resume", g_run, "--quiet", "--set", steps, NULL};
    int rc = run_cmd(out, resume, 120);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc) {
        char *m = slurp(out);
        fprintf(stderr, "resume said: %s\n", m ? m : "");
        free(m);
    }
    CU_ASSERT(latest_ckpt(g_run) >= at + 2);
    holder = slurp(lock);
    CU_ASSERT(holder && strstr(holder, " by rlhf run --resume\n"));
    free(holder);
}

void e2e_register_lock(void);
void e2e_register_lock(void) {
    CU_pSuite s = CU_add_suite("e2e_lock", suite_init, suite_cleanup);
    CU_add_test(s, "second_launch_refused", test_second_launch_refused);
    CU_add_test(s, "stale_after_kill9", test_stale_after_kill9);
}
