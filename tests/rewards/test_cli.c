/* tests/rewards/test_cli.c — `rlhf reward-test` and `rlhf sandbox-run` as a user runs them: output,
 * exit status, one-line errors naming the file and JSON path. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/rewards/rewards_test.h"

/* Runs `rlhf ARGS` (the binary next to this test's build dir) capturing stdout+stderr. */
static int run_rlhf(const char *args, char *out, size_t cap) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/bin/rlhf %s 2>&1", rt_build_dir(), args);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = 0;
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void test_reward_test_cli(void) {
    char cfg[512], samples[512], args[2048], out[16384];
    snprintf(cfg, sizeof cfg, "%s/cli_rewards.json", rt_scratch());
    snprintf(samples, sizeof samples, "%s/cli_samples.jsonl", rt_scratch());
    write_text(cfg, "{\"rewards\": [{\"type\":\"countdown\"}, {\"type\":\"regex\",\"name\":\"fmt\",\"pattern\":\"^[0-9+*() -]+$\",\"weight\":0.5}]}");
    write_text(samples, "{\"completion\":\"(3+5)*3\",\"numbers\":[3,5,3],\"target\":24}\n\n"
                        "{\"completion\":\"7*7\",\"record\":{\"numbers\":[7],\"target\":49}}\n");
    snprintf(args, sizeof args, "reward-test --jsonl %s %s", cfg, samples);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"item\": 0") ? out : strstr(out, "\"item\":0"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"reason\":\"correct\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"reason\":\"invalid_numbers\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"total\":1.5"));
    snprintf(args, sizeof args, "reward-test %s %s", cfg, samples);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "countdown=1(ok: correct)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "# batch of 2"));
    /* bad config: one line naming the file and the JSON path, exit 2 */
    write_text(cfg, "[{\"type\":\"countdown\",\"weight\":-1}]");
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "cli_rewards.json: rewards[0].weight"));
    /* bad sample line: names file:line */
    write_text(cfg, "[{\"type\":\"countdown\"}]");
    write_text(samples, "{\"completion\":\"1\"}\n{\"prompt\":\"no completion\"}\n");
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "cli_samples.jsonl:2"));
}

static void test_sandbox_run_cli(void) {
    char prog[512], args[2048], out[16384];
    snprintf(prog, sizeof prog, "%s/cli_prog.py", rt_scratch());
    write_text(prog, "import sys\nprint('echo', sys.stdin.read().strip(), sys.argv[1:])\n");
    snprintf(args, sizeof args, "sandbox-run --json --stdin %s %s a b", prog, prog);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"verdict\":\"pass\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "echo import sys"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "['a', 'b']"));
    write_text(prog, "import time\ntime.sleep(10)\n");
    snprintf(args, sizeof args, "sandbox-run --set '{\"wall_ms\":300}' %s", prog);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "verdict=timeout"));
    snprintf(args, sizeof args, "sandbox-run --set '{\"wall_mss\":300}' %s", prog);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "--set.wall_mss: unknown key"));
}

int rt_register_cli(void) {
    CU_pSuite s = CU_add_suite("cli", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "rlhf reward-test", test_reward_test_cli);
    CU_add_test(s, "rlhf sandbox-run", test_sandbox_run_cli);
    return 0;
}
