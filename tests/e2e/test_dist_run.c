/* tests/e2e/test_dist_run.c — a run with updaters.count = 2 (data-parallel updaters under mpirun):
 *
 *   two_updaters: `rlhf run` starts the updater as two MPI ranks; the run finishes its 6 steps, rank 0
 *                 logs that it leads 2 ranks and rank 1 that it stopped with rank 0, every
 *                 step is in metrics.jsonl, and a --resume to step 8 starts both ranks from the step-6
 *                 checkpoint and finishes. (That 2 ranks compute what 1 does is tests/updater/test_dist.c.)
 *                 Scoring: both ranks score a share of the groups (scoring/remote_groups > 0 in the
 *                 metrics), and every group's rewards in scores.jsonl are the ones a single-rank
 *                 `rlhf replay --rewards recompute` of the same log computes.
 *   rank_killed:  kill -9 of updater rank 1 in the middle of a run: mpirun ends the group, the launcher
 *                 restarts the whole updater group from the last checkpoint (as data-parallel trainers do),
 *                 the run reaches its last step with every step once in metrics.jsonl, and no rollout the
 *                 broker accepted is lost (the replay log against consumed.log and the checkpoint). */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];

static int suite_init(void) { return e2e_suite_dir("distrun", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf); }

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* The last value of an integer metric in metrics.jsonl, or -1. */
static long last_int_metric(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    char line[65536];
    long v = -1;
    while (f && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *x = o ? json_object_get(o, key) : NULL;
        if (json_is_integer(x)) v = (long)json_integer_value(x);
        json_decref(o);
    }
    if (f) fclose(f);
    return v;
}

/* Line by line: the recorded total of each replay-export row (`exp`; null when its group was never
 * consumed) against reward-test's total of the same item (`rescored`). Returns the rows that differ;
 * *matched those that agree. */
static int compare_totals(const char *exp, const char *rescored, int *matched) {
    FILE *a = fopen(exp, "r"), *b = fopen(rescored, "r");
    static char la[65536], lb[65536];
    int differ = 0;
    *matched = 0;
    while (a && b && fgets(la, sizeof la, a) && fgets(lb, sizeof lb, b)) {
        json_t *x = json_loads(la, 0, NULL), *y = json_loads(lb, 0, NULL);
        json_t *tx = x ? json_object_get(x, "total") : NULL, *ty = y ? json_object_get(y, "total") : NULL;
        if (json_is_number(tx)) {
            if (json_is_number(ty) && json_number_value(tx) == json_number_value(ty)) (*matched)++;
            else differ++;
        }
        json_decref(x);
        json_decref(y);
    }
    if (a) fclose(a);
    if (b) fclose(b);
    return differ;
}

static void test_two_updaters(void) {
    char cfg[256], out[256], run[256], log[300], doc[2048];
    snprintf(cfg, sizeof cfg, "%s/dist.json", g_dir);
    snprintf(out, sizeof out, "%s/dist.out", g_dir);
    snprintf(run, sizeof run, "%s/dist", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"dist\",\"run_dir\":\"dist\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":6,\"checkpoint_every\":2,\"seed\":5},\n"
             " \"updaters\":{\"count\":2},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n");
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    /* Open MPI's own allocations live until exit by design: under `make sanitize` the leak check of this
     * run's processes (the MPI ranks among them) is off; every other e2e run keeps it */
    static const char *const env[] = {"ASAN_OPTIONS=detect_leaks=0:abort_on_error=1", NULL};
    test_proc_opts o = {.out = out, .err = out, .env = env};
    const char *a[] = {"run", cfg, "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, a, &o, 180), 0);
    CU_ASSERT(e2e_contains(out, "2 updaters (data-parallel, MPI)"));
    snprintf(log, sizeof log, "%s/logs/updater.log", run);
    CU_ASSERT(e2e_contains(log, "updater: rank 0 of 2 data-parallel updaters (MPI)"));
    CU_ASSERT(e2e_contains(log, "scoring on every rank"));
    CU_ASSERT(e2e_contains(log, "updater rank 1: stopped with rank 0 after its step "));
    CU_ASSERT_EQUAL(latest_ckpt(run), 6);
    char m[300];
    snprintf(m, sizeof m, "%s/metrics.jsonl", run);
    long remote = last_int_metric(m, "scoring/remote_groups");
    printf("\n  groups scored by rank 1: %ld of 48\n", remote);
    CU_ASSERT(remote > 0 && remote <= 48);
    /* the oracle: every logged completion scored again in one process (`rlhf reward-test`) against
     * the rewards the run trained with (replay-export shows scores.jsonl's beside each completion) */
    char logf[300], exp[300], rescored[300], rcfg[300];
    snprintf(logf, sizeof logf, "%s/rollouts.log", run);
    snprintf(exp, sizeof exp, "%s/dist-export.jsonl", g_dir);
    snprintf(rescored, sizeof rescored, "%s/dist-rescored.jsonl", g_dir);
    snprintf(rcfg, sizeof rcfg, "%s/config.json", run);
    const char *ex[] = {"replay-export", logf, "--jsonl", exp, NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, ex, &o, 60), 0);
    test_proc_opts ro = {.out = rescored, .err = out, .env = env};
    const char *rt[] = {"reward-test", "--jsonl", rcfg, exp, NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, rt, &ro, 60), 0);
    int matched = 0, differ = compare_totals(exp, rescored, &matched);
    printf("  %d trained-with reward(s) equal a single-process rescoring, %d differ\n", matched, differ);
    CU_ASSERT(matched >= 4 * 40);
    CU_ASSERT_EQUAL(differ, 0);
    for (int s = 1; s <= 6; s++) {
        char want[32];
        snprintf(want, sizeof want, "{\"step\":%d,", s);
        CU_ASSERT(e2e_contains(m, want));
    }
    const char *b[] = {"run", "--resume", run, "--quiet", "--set", "rl.steps=8", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, b, &o, 180), 0);
    CU_ASSERT_EQUAL(latest_ckpt(run), 8);
    CU_ASSERT(e2e_contains(log, "resumed at step 6"));
}

/* The pid of the MPI rank `rank` of the updater group whose --config is `cfg_path` (its environment
 * holds OMPI_COMM_WORLD_RANK, which Open MPI sets in every rank), or 0. */
static pid_t updater_rank_pid(const char *cfg_path, int rank) {
    char cmd[600], want[64];
    snprintf(cmd, sizeof cmd, "pgrep -f 'updater --config %s'", cfg_path);
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    FILE *p = popen(cmd, "r");
    int pid = 0, found = 0;
    while (p && !found && fscanf(p, "%d", &pid) == 1) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/environ", pid);
        FILE *f = fopen(path, "r");
        char var[4096];
        size_t n = 0;
        int c;
        while (f && !found && (c = fgetc(f)) != EOF) {
            if (c && n + 1 < sizeof var) var[n++] = (char)c;
            if (c == 0) {
                var[n] = 0;
                found = strcmp(var, want) == 0;
                n = 0;
            }
        }
        if (f) fclose(f);
    }
    if (p) pclose(p);
    return found ? pid : 0;
}

static long metrics_last_step(const char *run_dir) {
    char p[300];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    char *d = e2e_slurp(p);
    long s = -1;
    for (char *q = d; q && (q = strstr(q, "\"step\":")); q++) s = atol(q + 7);
    free(d);
    return s;
}

static void test_rank_killed(void) {
    char cfg[256], out[256], run[256], run_cfg[300], doc[2048], log[300];
    snprintf(cfg, sizeof cfg, "%s/kill.json", g_dir);
    snprintf(out, sizeof out, "%s/kill.out", g_dir);
    snprintf(run, sizeof run, "%s/kill", g_dir);
    snprintf(run_cfg, sizeof run_cfg, "%s/config.json", run);
    snprintf(doc, sizeof doc,
             "{\"name\":\"kill\",\"run_dir\":\"kill\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":14,\"checkpoint_every\":2,\"seed\":7},\n"
             " \"updaters\":{\"count\":2},\n"
             " \"generators\":{\"count\":2,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n");
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    static const char *const env[] = {"ASAN_OPTIONS=detect_leaks=0:abort_on_error=1", NULL};
    test_proc_opts o = {.out = out, .err = out, .env = env};
    const char *a[] = {"run", cfg, "--quiet", NULL};
    pid_t launcher = test_proc_spawn_args(g_rlhf, g_rlhf, a, &o);
    CU_ASSERT_FATAL(launcher > 0);
    /* past the step-2 checkpoint, and with the group's rank 1 found */
    pid_t rank1 = 0;
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 120 && (rank1 <= 0 || metrics_last_step(run) < 3);) {
        if (rank1 <= 0) rank1 = updater_rank_pid(run_cfg, 1);
        if (waitpid(launcher, NULL, WNOHANG) == launcher) break;
        usleep(20000);
    }
    long at = metrics_last_step(run);
    if (rank1 <= 0 || at < 3 || at >= 14) {
        CU_FAIL("the two-updater run did not get to step 3 with rank 1 running (or finished before the kill)");
        test_proc_stop(launcher, 30);
        return;
    }
    /* where the group's shared-memory segments are (the launcher names a directory per run) */
    char shm[4096] = "";
    char envp[64];
    snprintf(envp, sizeof envp, "/proc/%d/environ", (int)rank1);
    FILE *ef = fopen(envp, "r");
    char var[4096];
    size_t vn = 0;
    int ch;
    while (ef && (ch = fgetc(ef)) != EOF) {
        if (ch && vn + 1 < sizeof var) var[vn++] = (char)ch;
        if (ch == 0) {
            var[vn] = 0;
            if (!strncmp(var, "OMPI_MCA_btl_vader_backing_directory=", 37)) snprintf(shm, sizeof shm, "%s", var + 37);
            vn = 0;
        }
    }
    if (ef) fclose(ef);
    CU_ASSERT_EQUAL(kill(rank1, SIGKILL), 0);
    int rc = test_proc_wait(launcher, 300);
    CU_ASSERT_EQUAL(rc, 0);
    /* the segments of the killed group and of its restart are gone with the run: nothing is left in
     * /dev/shm (a killed rank cannot remove its own) */
    CU_ASSERT(strncmp(shm, "/dev/shm/rlhf-mpi.", 18) == 0);
    CU_ASSERT(shm[0] && access(shm, F_OK) != 0);
    /* the group was restarted as a whole, from a checkpoint, and finished */
    CU_ASSERT(e2e_contains(out, "(128 + SIGKILL: a process it started was killed): a transient failure; restarting"));
    snprintf(log, sizeof log, "%s/logs/updater.log", run);
    CU_ASSERT(e2e_contains(log, "resumed at step"));
    CU_ASSERT_EQUAL(latest_ckpt(run), 14);
    char rs[300];
    snprintf(rs, sizeof rs, "%s/restarts.jsonl", run);
    CU_ASSERT(e2e_contains(rs, "\"process\":\"updater\""));
    /* every step exactly once, in order, despite the restart from an older checkpoint */
    char m[300];
    snprintf(m, sizeof m, "%s/metrics.jsonl", run);
    char *d = e2e_slurp(m);
    long expect = 1, bad = d ? 0 : 1;
    for (char *q = d; q && (q = strstr(q, "{\"step\":")); q++, expect++) bad += atol(q + 8) != expect;
    free(d);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(expect - 1, 14);
    char rlog[300];
    snprintf(rlog, sizeof rlog, "%s/rollouts.log", run);
    CU_ASSERT_EQUAL(e2e_lost_rollouts(run, rlog), 0);
}

void e2e_register_dist_run(void);
void e2e_register_dist_run(void) {
    CU_pSuite s = CU_add_suite("e2e_dist_run", suite_init, suite_cleanup);
    CU_add_test(s, "two_updaters", test_two_updaters);
    CU_add_test(s, "kill -9 of updater rank 1: the group restarts from a checkpoint, nothing lost", test_rank_killed);
}
