/* tests/e2e/test_dist_run.c — a run with updaters.count = 2 (data-parallel updaters under mpirun):
 *
 *   two_updaters: `rlhf run` starts the updater as two MPI ranks; the run finishes its 6 steps, rank 0
 *                 logs that it leads 2 ranks and rank 1 that it stopped with rank 0, every
 *                 step is in metrics.jsonl, and a --resume to step 8 starts both ranks from the step-6
 *                 checkpoint and finishes. (That 2 ranks compute what 1 does is tests/updater/test_dist.c.) */
#include <CUnit/CUnit.h>
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

static int suite_init(void) { return e2e_suite_dir("distrun", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf); }

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
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
    CU_ASSERT(e2e_contains(log, "updater rank 1: stopped with rank 0 after its step "));
    CU_ASSERT_EQUAL(latest_ckpt(run), 6);
    char m[300];
    snprintf(m, sizeof m, "%s/metrics.jsonl", run);
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

void e2e_register_dist_run(void);
void e2e_register_dist_run(void) {
    CU_pSuite s = CU_add_suite("e2e_dist_run", suite_init, suite_cleanup);
    CU_add_test(s, "two_updaters", test_two_updaters);
}
