/* tests/rewards/test_exec.c — the execution rewards: "exec" (program vs expected output, test
 * cases, test code, partial credit) and "countdown" (sandboxed checker verdicts, partial credit,
 * number rules), and a sandbox failure surfacing as a reward ERROR rather than a 0. */
#include <string.h>

#include "tests/rewards/rewards_test.h"

static reward_pipeline *make(const char *json) {
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", &err);
    if (rc) fprintf(stderr, "unexpected config error: %s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    return p;
}

/* The same verdicts whether the batch goes to one checker process (default items_per_run) or is split
 * over the sandbox slots (items_per_run 1: one chunk per slot, items in order across chunks). */
static void countdown_verdicts(const char *config) {
    reward_pipeline *p = make(config);
    if (!p) return;
    const char *rec = "{\"numbers\":[3,5,3,7],\"target\":24}";
    rlhf_reward_item items[] = {
        rt_item("(3+5)*3", rec),                       /* correct, not every number used */
        rt_item("I think: (3 + 5) * 3 = 24", rec),     /* label and "= 24" stripped */
        rt_item("reasoning...<answer>7*3+3</answer>", rec), /* <answer> tag wins */
        rt_item("3*5+7", rec),                         /* valid numbers, value 22 */
        rt_item("5*5-1", rec),                         /* 5 used twice */
        rt_item("__import__('os').system('id')", rec), /* never evaluated */
        rt_item("2**3*3", rec),                        /* power is not allowed */
        rt_item("7/(5-5)", rec),                       /* 5 twice + division by zero */
        rt_item("", rec),
        rt_item("3+5", "{\"numbers\":[3,5]}"),         /* no target: skip */
    };
    size_t n = sizeof items / sizeof items[0];
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, n, &sc, &err), 0);
    double want[] = {1, 1, 1, 0.1, 0, 0, 0, 0, 0, 0};
    const char *note[] = {"correct", "correct", "correct", "wrong_value", "invalid_numbers", "no_expression",
                          "malformed", NULL, "no_expression", NULL};
    for (size_t i = 0; i < n; i++) {
        if (i == n - 1) {
            CU_ASSERT_EQUAL(sc.status[i].code, RLHF_REWARD_SKIP);
            continue;
        }
        CU_ASSERT_EQUAL(sc.status[i].code, RLHF_REWARD_OK);
        if (sc.raw[i] != want[i] || (note[i] && strcmp(sc.status[i].reason, note[i])))
            fprintf(stderr, "countdown item %zu: got %g (%s), want %g (%s)\n", i, sc.raw[i], sc.status[i].reason,
                    want[i], note[i] ? note[i] : "-");
        CU_ASSERT_DOUBLE_EQUAL(sc.raw[i], want[i], 1e-12);
        if (note[i]) CU_ASSERT_STRING_EQUAL(sc.status[i].reason, note[i]);
    }
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_countdown_verdicts(void) {
    countdown_verdicts("[{\"type\":\"countdown\",\"format_score\":0.1}]");
    countdown_verdicts("[{\"type\":\"countdown\",\"format_score\":0.1,\"items_per_run\":1,"
                       "\"sandbox\":{\"pool_size\":2}}]");
}

static void test_countdown_exact_numbers(void) {
    reward_pipeline *p = make("[{\"type\":\"countdown\",\"use_all_numbers\":true,\"format_score\":0}]");
    if (!p) return;
    const char *rec = "{\"numbers\":[3,5,3,7],\"target\":24}";
    rlhf_reward_item items[] = {rt_item("(3+5)*3", rec), rt_item("(3+5)*3+7-7", rec), rt_item("(7-3)*(3+3)", rec),
                                rt_item("(7+5)*(3-3)", rec)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 4, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0, 0); /* 7 unused */
    CU_ASSERT_STRING_EQUAL(sc.status[0].reason, "invalid_numbers");
    CU_ASSERT_STRING_EQUAL(sc.status[1].reason, "invalid_numbers"); /* 7 twice */
    CU_ASSERT_STRING_EQUAL(sc.status[2].reason, "invalid_numbers"); /* 3 three times, no 5 */
    CU_ASSERT_STRING_EQUAL(sc.status[3].reason, "wrong_value");
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[3], 0, 0); /* format_score 0 */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_sandbox_failure_is_error(void) {
    /* FAULT INJECTION: every run's setup fails; the reward must be ERROR (counted), never 0 */
    reward_pipeline *p = make("[{\"type\":\"countdown\",\"sandbox\":{\"fault_inject_step\":16}},"
                              " {\"type\":\"exec\",\"sandbox\":{\"fault_inject_step\":16}}]");
    if (!p) return;
    rlhf_reward_item items[] = {rt_item("3+5", "{\"numbers\":[3,5],\"target\":8,\"expected_stdout\":\"8\"}")};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, "sandbox_error"));
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[1].reason, "sandbox_error"));
    CU_ASSERT_EQUAL(sc.source_errors[0], 1);
    CU_ASSERT_EQUAL(sc.source_errors[1], 1);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_exec_outputs_and_tests(void) {
    reward_pipeline *p = make("[{\"type\":\"exec\",\"name\":\"all\",\"sandbox\":{\"wall_ms\":1500}},"
                              " {\"type\":\"exec\",\"name\":\"partial\",\"partial_credit\":true,\"sandbox\":{\"wall_ms\":1500}}]");
    if (!p) return;
    const char *tests = "{\"tests\":[{\"stdin\":\"2 3\\n\",\"stdout\":\"5\\n\"},{\"stdin\":\"10 -4\",\"stdout\":\"6\"},"
                        "{\"stdin\":\"1 1\",\"stdout\":\"2\"}]}";
    rlhf_reward_item items[] = {
        rt_item("Here you go:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```\n", tests),
        rt_item("```\na, b = map(int, input().split())\nprint(a + b if a < 5 else 0)   \n```", tests),
        rt_item("```python\nwhile True: pass\n```", "{\"expected_stdout\":\"x\"}"),
        rt_item("def f(x):\n    return x * 2\n", "{\"test_code\":\"assert f(2) == 4\\nassert f(5) == 10\"}"),
        rt_item("def f(x):\n    return x + 2\n", "{\"test_code\":\"assert f(2) == 4\\nassert f(5) == 10\"}"),
        rt_item("print('hi')", "{}"),
    };
    size_t n = sizeof items / sizeof items[0];
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, n, &sc, &err), 0);
    /* (item, source) with sources all=0, partial=1 */
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0 * 2 + 0], 1.0, 0);
    CU_ASSERT_STRING_EQUAL(sc.status[0 * 2 + 0].reason, "pass 3/3");
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1 * 2 + 0], 0.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1 * 2 + 1], 2.0 / 3.0, 1e-12);
    CU_ASSERT_STRING_EQUAL(sc.status[1 * 2 + 1].reason, "fail 2/3");
    CU_ASSERT_EQUAL(sc.status[2 * 2 + 0].code, RLHF_REWARD_OK); /* a timeout is the program's fault: score 0 */
    CU_ASSERT_STRING_EQUAL(sc.status[2 * 2 + 0].reason, "timeout 0/1");
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[3 * 2 + 0], 1.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[4 * 2 + 0], 0.0, 0);
    CU_ASSERT_STRING_EQUAL(sc.status[4 * 2 + 0].reason, "runtime_error 0/1");
    CU_ASSERT_EQUAL(sc.status[5 * 2 + 0].code, RLHF_REWARD_SKIP);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* test_code: the verdict comes from the appended tests having run to their end, not from the exit
 * status; a program that leaves early, exits 0 from a hook, patches builtins or prints a marker of its
 * own scores 0 (docs/SANDBOX.md, "exec with test_code"). */
static void test_exec_test_code_cannot_be_skipped(void) {
    reward_pipeline *p = make("[{\"type\":\"exec\",\"extract\":\"full\",\"sandbox\":{\"wall_ms\":5000}}]");
    if (!p) return;
    const char *rec = "{\"test_code\":\"assert f(2) == 4\\nassert f(5) == 10\\nassert len(g(3)) == 3\"}";
    rlhf_reward_item items[] = {
        rt_item("def f(x):\n    return x * 2\ndef g(n):\n    return [0] * n\nprint('hello')\n", rec),
        rt_item("def f(x):\n    return 0\nimport os\nos._exit(0)\n", rec),
        rt_item("def f(x):\n    return 0\nimport sys\nsys.exit(0)\n", rec),
        rt_item("def f(x):\n    return 0\ntry:\n    import sys\n    sys.exit(0)\nexcept SystemExit:\n    pass\n"
                "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n", rec),
        rt_item("def f(x):\n    return 0\nimport atexit, os\natexit.register(lambda: os._exit(0))\n", rec),
        rt_item("import builtins\ndef f(x):\n    return x * 2\ndef g(n):\n    return []\nbuiltins.len = lambda x: 3\n", rec),
        rt_item("import sys, os\ndef f(x):\n    return 0\nfor m in ['PASS', 'OK', 'rlhf-tests-passed', 'rlhf-tests-passed 0']:\n"
                "    print(m)\nsys.stdout.flush()\nos._exit(0)\n", rec),
        rt_item("import os, threading, time\ndef f(x):\n    return 0\n"
                "threading.Thread(target=lambda: (time.sleep(0.01), os._exit(0))).start()\n", rec),
    };
    size_t n = sizeof items / sizeof items[0];
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, n, &sc, &err), 0);
    CU_ASSERT_STRING_EQUAL(sc.status[0].reason, "pass 1/1");
    for (size_t i = 0; i < n; i++) {
        double want = i == 0 ? 1.0 : 0.0;
        if (sc.raw[i] != want) fprintf(stderr, "test_code item %zu: got %g (%s)\n", i, sc.raw[i], sc.status[i].reason);
        CU_ASSERT_EQUAL(sc.status[i].code, RLHF_REWARD_OK);
        CU_ASSERT_DOUBLE_EQUAL(sc.raw[i], want, 0);
    }
    reward_scores_free(&sc);
    /* unittest.main() ends the tests with SystemExit: 0 only when its tests ran and passed; a program
     * function raising SystemExit(0) does not count */
    const char *ut = "{\"test_code\":\"import unittest\\nclass T(unittest.TestCase):\\n    def test_f(self):\\n"
                     "        self.assertEqual(f(2), 4)\\nunittest.main()\\n\"}";
    rlhf_reward_item uitems[] = {
        rt_item("def f(x):\n    return 2 * x\n", ut),
        rt_item("def f(x):\n    return 5\n", ut),
        rt_item("def f(x):\n    raise SystemExit(0)\n", ut),
        rt_item("def f(x):\n    return 2 * x\n", "{\"test_code\":\"def helper():\\n    raise SystemExit(0)\\n"
                "assert f(2) == 5 or helper()\\n\"}"),
        /* the record's stdin still reaches the program (after the harness took the nonce line) */
        rt_item("import sys\nx = int(input()) * 2\nrest = sys.stdin.read()\n",
                "{\"stdin\":\"21\\nmore\\n\",\"test_code\":\"assert x == 42 and rest == 'more\\\\n'\"}"),
    };
    CU_ASSERT_EQUAL(reward_pipeline_score(p, uitems, 5, &sc, &err), 0);
    double uwant[] = {1, 0, 0, 1, 1};
    for (size_t i = 0; i < 5; i++) {
        if (sc.raw[i] != uwant[i]) fprintf(stderr, "unittest item %zu: got %g (%s)\n", i, sc.raw[i], sc.status[i].reason);
        CU_ASSERT_DOUBLE_EQUAL(sc.raw[i], uwant[i], 0);
    }
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

int rt_register_exec(void) {
    CU_pSuite s = CU_add_suite("exec_rewards", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "countdown verdicts and partial credit (one checker, split over slots)", test_countdown_verdicts);
    CU_add_test(s, "countdown use_all_numbers", test_countdown_exact_numbers);
    CU_add_test(s, "sandbox failure is a reward ERROR", test_sandbox_failure_is_error);
    CU_add_test(s, "exec: stdout, test cases, test code, partial credit", test_exec_outputs_and_tests);
    CU_add_test(s, "exec: test_code cannot be skipped or forged", test_exec_test_code_cannot_be_skipped);
    return 0;
}
