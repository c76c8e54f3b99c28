/* tests/rewards/test_cli.c — `rlhf reward-test` and `rlhf sandbox-run` as a user runs them: output,
 * exit status, one-line errors naming the file and JSON path. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/rewards/rewards_test.h"
#include "tests/test_proc.h"

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

/* A completion with a NUL byte: training scores it with the byte (and whatever follows) as U+FFFD, so
 * "4\0junk" is not the answer "4"; reward-test scores it the same way instead of refusing the line. The
 * regex source sees the replacement character where the NUL was. */
static void test_reward_test_nul(void) {
    char cfg[512], samples[512], args[2048], out[16384];
    snprintf(cfg, sizeof cfg, "%s/nul_rewards.json", rt_scratch());
    snprintf(samples, sizeof samples, "%s/nul_samples.jsonl", rt_scratch());
    write_text(cfg, "[{\"type\":\"exact_match\"},{\"type\":\"regex\",\"name\":\"fffd\",\"pattern\":\"4\\ufffdjunk\"}]");
    write_text(samples, "{\"completion\":\"4\\u0000junk\",\"answer\":\"4\"}\n{\"completion\":\"4\",\"answer\":\"4\"}\n");
    snprintf(args, sizeof args, "reward-test --jsonl %s %s", cfg, samples);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 0);
    char *second = strstr(out, "\"item\":1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(second);
    *second = 0; /* the first item's line(s) only */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"total\":1")); /* fffd matched, exact_match 0: total 0 + 1 */
    CU_ASSERT_PTR_NULL(strstr(out, "\"total\":2"));
}

/* A .so that segfaults on the middle item: reward-test (plugins run in their worker process by default)
 * exits normally and prints every item, the crashing one as an error naming the plugin and signal. */
static void test_reward_test_plugin_crash(void) {
    char so[512], cfg[512], samples[512], args[2048], out[16384], json[1024];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/segv_fixture.c", "", "segv_cli.so", so, sizeof so), 0);
    snprintf(cfg, sizeof cfg, "%s/cli_segv.json", rt_scratch());
    snprintf(samples, sizeof samples, "%s/cli_segv.jsonl", rt_scratch());
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"kw\",\"path\":\"%s\"}]", so);
    write_text(cfg, json);
    write_text(samples, "{\"completion\":\"a\"}\n{\"completion\":\"b SEGV\",\"id\":\"s1\"}\n{\"completion\":\"ccc\"}\n");
    for (int batch = 1; batch <= 64; batch *= 64) {
        snprintf(args, sizeof args, "reward-test --batch %d %s %s", batch, cfg, samples);
        CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "kw=1(ok)"));
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "1        0.0000 error   kw=-(error: plugin segv_cli.so crashed (SIGSEGV) on item"));
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "(id s1)"));
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "2        3.0000 ok      kw=3(ok)"));
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "(1 errors; child "));
        /* one restart per crash: alone in its batch it crashes once, in a batch of 3 twice */
        CU_ASSERT_PTR_NOT_NULL(strstr(out, batch == 1 ? ", 1 restarts)" : ", 2 restarts)"));
    }
    /* under isolate "none" the crash is the caller's (the documented opt-in), but what was scored
     * before the crashing batch is printed */
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"kw\",\"path\":\"%s\",\"isolate\":\"none\"}]", so);
    write_text(cfg, json);
    snprintf(args, sizeof args, "reward-test --batch 1 %s %s", cfg, samples);
    int rc = run_rlhf(args, out, sizeof out);
    CU_ASSERT(rc == -1 || rc == 128 + 11); /* killed by SIGSEGV (the shell reports 139) */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "0        1.0000 ok      kw=1(ok)"));
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

/* Config files that cannot be read or parsed, and an --out that cannot be written, are one error line
 * naming the file (and line:column) with the documented exit status; train-rm reports a bad --out before
 * it loads data or trains. */
static void test_cli_file_errors(void) {
    char cfg[512], samples[512], prog[512], args[2048], out[16384], want[700];
    snprintf(cfg, sizeof cfg, "%s/cli_bad.json", rt_scratch());
    snprintf(samples, sizeof samples, "%s/cli_bad_samples.jsonl", rt_scratch());
    snprintf(prog, sizeof prog, "%s/cli_bad_prog.py", rt_scratch());
    write_text(cfg, "[{\"type\": \"exact_match\"}\n");
    write_text(samples, "{\"completion\": \"a\", \"answer\": \"a\"}\n");
    write_text(prog, "print(1)\n");
    snprintf(args, sizeof args, "reward-test %s %s", cfg, samples);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 2);
    snprintf(want, sizeof want, "rlhf reward-test: error: %s:2:0: ", cfg);
    CU_ASSERT_EQUAL(strncmp(out, want, strlen(want)), 0);
    CU_ASSERT_PTR_EQUAL(strchr(out, '\n'), out + strlen(out) - 1);
    snprintf(args, sizeof args, "sandbox-run --config %s/none.json %s", rt_scratch(), prog);
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 2);
    snprintf(want, sizeof want, "rlhf sandbox-run: error: %s/none.json: cannot open: No such file or directory\n",
             rt_scratch());
    CU_ASSERT_STRING_EQUAL(out, want);
    snprintf(args, sizeof args, "train-rm --model %s/none.safetensors --data %s --out %s/no_dir/rm.safetensors",
             rt_scratch(), samples, rt_scratch());
    CU_ASSERT_EQUAL(run_rlhf(args, out, sizeof out), 1);
    snprintf(want, sizeof want, "rlhf train-rm: error: %s/no_dir/rm.safetensors: cannot create ", rt_scratch());
    CU_ASSERT_EQUAL(strncmp(out, want, strlen(want)), 0);
    CU_ASSERT_PTR_EQUAL(strchr(out, '\n'), out + strlen(out) - 1);
}

/* Host processes whose real uid is `uid`. */
static int procs_with_uid(long uid) {
    char cmd[128], out[64];
    snprintf(cmd, sizeof cmd, "awk '/^Uid:/ && $2 == %ld' /proc/[0-9]*/status 2>/dev/null | wc -l", uid);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    int n = fgets(out, sizeof out, f) ? atoi(out) : -1;
    pclose(f);
    return n;
}

static void test_supervisor_death_kills_sandbox(void) {
    /* the updater dying mid-run must not leave the sandboxed program running on the host */
    char prog[512], bin[600];
    snprintf(prog, sizeof prog, "%s/sleeper.py", rt_scratch());
    write_text(prog, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n");
    snprintf(bin, sizeof bin, "%s/bin/rlhf", rt_build_dir());
    char *argv[] = {bin, "sandbox-run", "--set", "{\"wall_ms\":60000}", prog, NULL};
    test_proc_opts o = {.out = "/dev/null", .err = "/dev/null"};
    pid_t pid = test_proc_spawn(NULL, argv, &o);
    long uid = 100000 + (long)(pid % 8192) * 256; /* slot 0 of that process's pool */
    int seen = 0;
    for (int i = 0; i < 100 && seen < 2; i++) { /* program and its daemon child are up */
        usleep(20000);
        seen = procs_with_uid(uid);
    }
    CU_ASSERT(seen >= 2);
    test_proc_kill(pid);
    int left = -1;
    for (int i = 0; i < 100 && left != 0; i++) {
        usleep(20000);
        left = procs_with_uid(uid);
    }
    CU_ASSERT_EQUAL(left, 0);
}

int rt_register_cli(void) {
    CU_pSuite s = CU_add_suite("cli", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "rlhf reward-test", test_reward_test_cli);
    CU_add_test(s, "rlhf reward-test with a .so that segfaults", test_reward_test_plugin_crash);
    CU_add_test(s, "rlhf reward-test: a NUL byte is scored as training scores it", test_reward_test_nul);
    CU_add_test(s, "rlhf sandbox-run", test_sandbox_run_cli);
    CU_add_test(s, "config / output file errors: one line naming the file", test_cli_file_errors);
    CU_add_test(s, "killing the supervisor kills the sandbox", test_supervisor_death_kills_sandbox);
    return 0;
}
