/* tests/rewards/test_contract.c — the plugin contract beyond scores: ABI version 2 beside version 1
 * (an old plugin built from a frozen copy of the v1 structs still loads), the training state and
 * metrics of v2, declared and configured score ranges ("out of range" errors or clipping), config
 * keys a plugin declares, items no source scored, and concurrent instances of a slow source. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/rewards/rewards_test.h"

static reward_pipeline *make(const char *json) {
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", &err);
    if (rc) fprintf(stderr, "unexpected config error: %s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return p;
}

static int create_err(const char *json, rlhf_error *err) {
    reward_pipeline *p = NULL;
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", err);
    reward_pipeline_destroy(&p);
    return rc;
}

/* The version bump, and a plugin built against version 1 (its own copy of the v1 structs, abi_version
 * 1) loads and is called through its v1 score_batch with v1 items. */
static void test_v1_plugin_still_loads(void) {
    CU_ASSERT_EQUAL(RLHF_REWARD_ABI_VERSION, 2u);
    CU_ASSERT_EQUAL(RLHF_REWARD_ABI_VERSION_V1, 1u);
    char so[512], json[1024];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/v1_fixture.c", "", "v1.so", so, sizeof so), 0);
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"old\",\"path\":\"%s\"}]", so);
    reward_pipeline *p = make(json);
    rlhf_reward_item items[3] = {rt_item("abc", NULL), rt_item("", NULL), rt_item("xy", "{\"skip\":true}")};
    reward_scores sc = {0};
    rlhf_error err = {0};
    reward_score_opts o = {.step = 5, .policy_version = (int64_t[]){1, 2, 3}};
    CU_ASSERT_EQUAL(reward_pipeline_score_ex(p, items, 3, &o, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 3.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 0.0, 1e-12);
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_SKIP);
    CU_ASSERT_EQUAL(sc.n_metrics, 0);
    CU_ASSERT_EQUAL(sc.source_skipped[0], 1);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    /* a version between the known ones and a struct size of neither layout are refused */
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/abi_fixture.c", "-DFIXTURE_ABI=3", "abi3.so", so, sizeof so), 0);
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\"}]", so);
    CU_ASSERT_EQUAL(create_err(json, &err), RLHF_EUNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "supports 1..2"));
}

/* v2: the step and per-item policy version reach the plugin, its metrics come back named by source,
 * its declared range applies, and its declared config keys are checked. */
static void test_v2_state_metrics_range_keys(void) {
    char so[512], json[1024];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/v2_fixture.c", "", "v2.so", so, sizeof so), 0);
    snprintf(json, sizeof json,
             "[{\"type\":\"regex\",\"pattern\":\"a\"},{\"type\":\"plugin\",\"name\":\"new\",\"path\":\"%s\"}]", so);
    reward_pipeline *p = make(json);
    rlhf_reward_item items[2] = {rt_item("abcd", NULL), rt_item("z", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    reward_score_opts o = {.step = 7, .policy_version = (int64_t[]){3, 4}};
    CU_ASSERT_EQUAL(reward_pipeline_score_ex(p, items, 2, &o, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0 * 2 + 1], 4.0, 1e-12);
    CU_ASSERT_STRING_EQUAL(sc.status[0 * 2 + 1].reason, "step 7 version 3");
    CU_ASSERT_STRING_EQUAL(sc.status[1 * 2 + 1].reason, "step 7 version 4");
    CU_ASSERT_EQUAL_FATAL(sc.n_metrics, 3);
    CU_ASSERT_EQUAL(sc.metrics[0].source, 1);
    CU_ASSERT_STRING_EQUAL(sc.metrics[2].name, "step");
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[2].value, 7.0, 1e-12);
    CU_ASSERT_STRING_EQUAL(sc.metrics[0].name, "calls");
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[0].value, 1.0, 1e-12);
    CU_ASSERT_STRING_EQUAL(sc.metrics[1].name, "items");
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[1].value, 2.0, 1e-12);
    /* without a training state (reward-test): step and versions -1 */
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_STRING_EQUAL(sc.status[0 * 2 + 1].reason, "step -1 version -1");
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);

    /* the declared range [0, 100]: 1e12 per byte is an ERROR naming the value and the range */
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\",\"config\":{\"scale\":1e12}}]", so);
    p = make(json);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_STRING_EQUAL(sc.status[0].reason, "out of range: 4e+12 not in [0, 100]");
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.0, 1e-12);
    CU_ASSERT_EQUAL(sc.source_errors[0], 2);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    /* the config's range wins over the declared one, and "clip" clips and counts */
    snprintf(json, sizeof json,
             "[{\"type\":\"plugin\",\"path\":\"%s\",\"range\":[0,2],\"out_of_range\":\"clip\"}]", so);
    p = make(json);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 2.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 1.0, 1e-12);
    CU_ASSERT_EQUAL(sc.source_clipped[0], 1);
    CU_ASSERT_EQUAL(sc.clipped[0], 1);
    CU_ASSERT_EQUAL(sc.clipped[1], 0);
    CU_ASSERT_EQUAL(sc.source_errors[0], 0);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    /* a key the plugin did not declare is refused by name */
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"path\":\"%s\",\"config\":{\"scael\":2}}]", so);
    CU_ASSERT(create_err(json, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "config.scael: unknown key"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "scale, sleep_ms"));
}

/* Process plugins get the training state in the request ("step", and "policy_version" per item) and
 * may reply with "metrics"; so does a .so served by `rlhf reward-plugin-host` (the worker process a
 * plugin source moves to), which passes both to a v2 plugin. */
static void test_process_state_and_metrics(void) {
    char so[512], json[2048], rlhf[1100];
    rlhf_reward_item items[2] = {rt_item("abc", NULL), rt_item("z", NULL)};
    reward_score_opts o = {.step = 7, .policy_version = (int64_t[]){3, 4}};
    reward_scores sc = {0};
    rlhf_error err = {0};
    reward_pipeline *p = make("[{\"type\":\"process\",\"name\":\"st\",\"command\":[\"/usr/bin/python3\","
                              "\"tests/rewards/fixtures/proc_state.py\"]}]");
    CU_ASSERT_EQUAL(reward_pipeline_score_ex(p, items, 2, &o, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 7003, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 7004, 1e-9);
    CU_ASSERT_EQUAL_FATAL(sc.n_metrics, 2);
    CU_ASSERT_STRING_EQUAL(sc.metrics[0].name, "items");
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[0].value, 2, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[1].value, 7, 1e-12);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0); /* no state: -1 */
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], -1001, 1e-9);
    reward_pipeline_destroy(&p);

    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/v2_fixture.c", "", "v2h.so", so, sizeof so), 0);
    snprintf(rlhf, sizeof rlhf, "%s/bin/rlhf", rt_build_dir());
    snprintf(json, sizeof json,
             "[{\"type\":\"process\",\"name\":\"host\",\"command\":[\"%s\",\"reward-plugin-host\",\"%s\"],"
             "\"config\":{\"scale\":2}}]", rlhf, so);
    p = make(json);
    CU_ASSERT_EQUAL(reward_pipeline_score_ex(p, items, 2, &o, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 6.0, 1e-12);
    CU_ASSERT_STRING_EQUAL(sc.status[0].reason, "step 7 version 3"); /* an OK note travels as "note" */
    CU_ASSERT_EQUAL_FATAL(sc.n_metrics, 3);
    CU_ASSERT_STRING_EQUAL(sc.metrics[0].name, "calls");
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[1].value, 2, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.metrics[2].value, 7, 1e-12); /* the step reached the .so through the host */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* A config range on a built-in: 1e12 is an ERROR by default, clipped and counted with "clip";
 * a bad range or policy is a config error naming the key. */
static void test_config_range(void) {
    const char *items_json = "[{\"type\":\"regex\",\"pattern\":\"a\",\"score_match\":1e12,\"range\":[0,1]%s}]";
    char json[512];
    rlhf_reward_item items[2] = {rt_item("a", NULL), rt_item("b", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    snprintf(json, sizeof json, items_json, "");
    reward_pipeline *p = make(json);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
    CU_ASSERT_STRING_EQUAL(sc.status[0].reason, "out of range: 1e+12 not in [0, 1]");
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_OK);
    CU_ASSERT_EQUAL(sc.item_status[0].code, RLHF_REWARD_SKIP); /* the default on_error, skip_group */
    reward_pipeline_destroy(&p);
    snprintf(json, sizeof json, items_json, ",\"out_of_range\":\"clip\"");
    p = make(json);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[0], 1.0, 1e-12);
    CU_ASSERT_EQUAL(sc.source_clipped[0], 1);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    CU_ASSERT(create_err("[{\"type\":\"regex\",\"pattern\":\"a\",\"range\":[1,0]}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].range"));
    CU_ASSERT(create_err("[{\"type\":\"regex\",\"pattern\":\"a\",\"range\":[0]}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].range"));
    CU_ASSERT(create_err("[{\"type\":\"regex\",\"pattern\":\"a\",\"out_of_range\":\"wrap\"}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].out_of_range"));
    CU_ASSERT(create_err("[{\"type\":\"regex\",\"pattern\":\"a\",\"concurrency\":0}]", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rewards[0].concurrency"));
}

/* An item every source SKIPs is "not scored"; one any source scored is; an ERROR under on_error
 * "zero" counts as scored (a 0 by choice). */
static void test_unscored_items(void) {
    reward_pipeline *p = make("[{\"type\":\"exact_match\"},{\"type\":\"regex\",\"pattern\":\"E\",\"score_match\":1e9,"
                              "\"range\":[0,1],\"on_error\":\"zero\"}]");
    rlhf_reward_item items[3] = {rt_item("x", "{\"answer\":\"x\"}"), rt_item("x", NULL), rt_item("E", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.scored[0], 1);
    CU_ASSERT_EQUAL(sc.scored[1], 1); /* the regex scored it (no match: 0) */
    CU_ASSERT_EQUAL(sc.scored[2], 1); /* ERROR under "zero" */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    p = make("[{\"type\":\"exact_match\"}]");
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.scored[0], 1);
    CU_ASSERT_EQUAL(sc.scored[1], 0);
    CU_ASSERT_EQUAL(sc.scored[2], 0);
    CU_ASSERT_EQUAL(sc.item_status[1].code, RLHF_REWARD_OK); /* not a group skip */
    CU_ASSERT_EQUAL(sc.source_skipped[0], 2);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* concurrency 4: a plugin sleeping 200 ms per call scores 4 sub-batches at once, in about the time
 * of one call (well under 2x), with the same results as one instance. */
static void test_concurrency(void) {
    char so[512], json[1024];
    CU_ASSERT_EQUAL_FATAL(rt_build_so("tests/rewards/fixtures/v2_fixture.c", "", "v2c.so", so, sizeof so), 0);
    enum { N = 10 };
    rlhf_reward_item items[N];
    char texts[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof texts[i], "%.*s", i + 1, "abcdefghijklmnop");
        items[i] = rt_item(texts[i], NULL);
    }
    double secs[2];
    reward_scores sc[2] = {{0}, {0}};
    int conc[2] = {1, 4};
    for (int r = 0; r < 2; r++) {
        snprintf(json, sizeof json,
                 "[{\"type\":\"plugin\",\"path\":\"%s\",\"concurrency\":%d,\"config\":{\"sleep_ms\":200}}]", so,
                 conc[r]);
        reward_pipeline *p = make(json);
        rlhf_error err = {0};
        double t0 = rlhf_now();
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, N, &sc[r], &err), 0);
        secs[r] = rlhf_now() - t0;
        reward_pipeline_destroy(&p);
    }
    /* one instance: one call of >= 0.2 s; four: four calls side by side */
    CU_ASSERT(secs[0] >= 0.2);
    CU_ASSERT(secs[1] < 2 * secs[0]);
    if (!(secs[1] < 2 * secs[0])) fprintf(stderr, "concurrency 4: %.3f s, 1: %.3f s\n", secs[1], secs[0]);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(sc[1].status[i].code, RLHF_REWARD_OK);
        CU_ASSERT_DOUBLE_EQUAL(sc[1].raw[i], sc[0].raw[i], 0);
        CU_ASSERT_DOUBLE_EQUAL(sc[1].raw[i], (double)(i + 1), 0);
    }
    /* each of the 4 sub-batches reported "calls" = 1 and its size; the metric is their mean */
    CU_ASSERT_EQUAL_FATAL(sc[1].n_metrics, 3);
    CU_ASSERT_DOUBLE_EQUAL(sc[1].metrics[0].value, 1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc[1].metrics[1].value, N / 4.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc[0].metrics[1].value, N, 1e-12);
    reward_scores_free(&sc[0]);
    reward_scores_free(&sc[1]);
}

/* The plugin template builds outside the source tree: `make install` into a temporary prefix, the
 * template copied into a directory of its own, built with PKG_CONFIG_PATH pointing at the prefix
 * (rlhf-plugin.pc: the include path and no library), and loaded by the installed `rlhf reward-test`,
 * which prints the score the example's rule gives. */
#if defined(__SANITIZE_ADDRESS__)
#define SAN_MAKE_ARG " SAN=1" /* the same build flags as the binaries already in BUILD: nothing to rebuild */
#else
#define SAN_MAKE_ARG ""
#endif
static int sh_q(const char *cmd, const char *log, int quiet) {
    char full[16384];
    snprintf(full, sizeof full, "(%s) > '%s' 2>&1", cmd, log);
    int rc = system(full);
    if (rc != 0 && !quiet) {
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
        snprintf(full, sizeof full, "tail -n 20 '%s' >&2", log);
        if (system(full)) {
        }
    }
    return rc;
}
static int sh(const char *cmd, const char *log) { return sh_q(cmd, log, 0); }
static void test_template_out_of_tree(void) {
    char dir[1024], cmd[8192], log[1100], out[1100];
    snprintf(dir, sizeof dir, "%s/ootree", rt_scratch());
    snprintf(log, sizeof log, "%s.log", dir);
    snprintf(out, sizeof out, "%s.out", dir);
    /* the outer make's jobserver is not ours: a clean environment for the inner one */
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/src' && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C '%s' BUILD='%s'%s PREFIX='%s/prefix' install",
             dir, rt_root(), rt_build_dir(), SAN_MAKE_ARG, dir);
    CU_ASSERT_EQUAL_FATAL(sh(cmd, log), 0);
    snprintf(cmd, sizeof cmd, "cp '%s/examples/reward-plugin/keyword_reward.c' '%s/examples/reward-plugin/Makefile' '%s/src/'",
             rt_root(), rt_root(), dir);
    CU_ASSERT_EQUAL_FATAL(sh(cmd, log), 0);
    /* header only: no library in --libs, the header installed where --cflags points */
    snprintf(cmd, sizeof cmd,
             "export PKG_CONFIG_PATH='%s/prefix/lib/pkgconfig'; test -z \"$(echo $(pkg-config --libs rlhf-plugin))\" && "
             "test \"$(echo $(pkg-config --cflags rlhf-plugin))\" = '-I%s/prefix/include/rlhf' && "
             "test -f '%s/prefix/include/rlhf/rewards/rewards.h'",
             dir, dir, dir);
    CU_ASSERT_EQUAL(sh(cmd, log), 0);
    /* without PKG_CONFIG_PATH the template says what to do, rather than failing on a missing header */
    snprintf(cmd, sizeof cmd, "cd '%s/src' && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PKG_CONFIG_PATH=/nonexistent "
             "PKG_CONFIG_LIBDIR=/nonexistent make", dir);
    CU_ASSERT_NOT_EQUAL(sh_q(cmd, log, 1), 0);
    snprintf(cmd, sizeof cmd, "grep -q 'set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig' '%s'", log);
    CU_ASSERT_EQUAL(system(cmd), 0);
    snprintf(cmd, sizeof cmd,
             "cd '%s/src' && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PKG_CONFIG_PATH='%s/prefix/lib/pkgconfig' make",
             dir, dir);
    CU_ASSERT_EQUAL_FATAL(sh(cmd, log), 0);
    /* a relative path: resolved against the config's folder, not the working directory */
    snprintf(cmd, sizeof cmd,
             "cd '%s/src' && printf '%%s\\n' '[{\"type\":\"plugin\",\"name\":\"kw\",\"path\":\"keyword_reward.so\","
             "\"config\":{\"keywords\":[\"because\",\"therefore\"],\"per_hit\":0.25}}]' > rewards.json && "
             "printf '%%s\\n' '{\"completion\":\"x because y, therefore z\"}' > samples.jsonl && cd / && "
             "'%s/prefix/bin/rlhf' reward-test --jsonl '%s/src/rewards.json' '%s/src/samples.jsonl'",
             dir, dir, dir, dir);
    CU_ASSERT_EQUAL_FATAL(sh(cmd, out), 0);
    FILE *f = fopen(out, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[4096] = "";
    json_t *j = NULL;
    while (!j && fgets(line, sizeof line, f)) j = json_loads(line, 0, NULL);
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    /* two keywords at 0.25 each */
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(j, "total")), 0.5, 1e-12);
    json_decref(j);
}

int rt_register_contract(void) {
    CU_pSuite s = CU_add_suite("contract", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "ABI v1 plugin (frozen v1 structs) still loads", test_v1_plugin_still_loads);
    CU_add_test(s, "ABI v2: step, policy version, metrics, declared range and keys", test_v2_state_metrics_range_keys);
    CU_add_test(s, "process plugins: step and policy_version in, metrics out", test_process_state_and_metrics);
    CU_add_test(s, "config range: out of range is an ERROR, or clipped and counted", test_config_range);
    CU_add_test(s, "items no source scored", test_unscored_items);
    CU_add_test(s, "concurrency: sub-batches in flight at once, same results", test_concurrency);
    CU_add_test(s, "plugin template builds out of tree with pkg-config rlhf-plugin", test_template_out_of_tree);
    return 0;
}
