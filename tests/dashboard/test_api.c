/* tests/dashboard/test_api.c — the dashboard's JSON endpoints against the real server (dashboard_create,
 * libmicrohttpd) with libcurl, on fixture run directories:
 *
 *   runs_missing:      /api/runs names every run and what each lacks (no metrics yet, no replay log);
 *   metrics_torn:      a torn last metrics line is not served and is reported; once completed it is;
 *   metrics_since:     since=N gives the rows from N; a file that started over (a resumed run cuts it)
 *                      gives every row again with a new generation;
 *   rollouts:          the newest groups of a real replay log, newest first, with their rewards, advantages,
 *                      step and fate from scores.jsonl; the filter; limit; a missing log is named;
 *   rollouts_decoded:  a log recorded without completion texts: decoded with the run's tokenizer;
 *   config_masked:     secret-looking values are masked (before cutting), the rest is intact, no secret
 *                      byte is anywhere in the answer;
 *   processes:         a run with no process on this host says so; restarts.jsonl summarised per process;
 *   bad_requests:      unknown run index, bad limit, unknown endpoint, a Host header that is a name (DNS
 *                      rebinding) without a token; the page and the library are served;
 *   refusals:          an unknown run directory, a non-loopback address without a token, a missing charting
 *                      library: each refused with one error naming it; the CLI exits 2 on an unknown dir;
 *   token:             on 127.0.0.2 with a token: none or a wrong one is 401, Bearer or ?token= pass; the
 *                      CLI never prints the token. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "broker/wire.h"
#include "dashboard/dashboard.h"
#include "dashboard/dashboard_int.h"
#include "tests/dashboard/dash_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_run_a[128], g_run_b[128], g_run_c[128], g_run_d[128];
static dashboard *g_dash;
static char g_url[128];

static void write_file(const char *dir, const char *name, const char *text, const char *mode) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, mode);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

/* k=4 groups with texts "g<seq>-c<i>" (seq 0..n-1; none when !texts: the tokens are "ABC", "DEF", "GHI",
 * "JKL" in bytes), versions seq/2, prompts "prompt <seq>". */
static int write_log_texts(const char *path, int n, int texts);
static int write_log(const char *path, int n) { return write_log_texts(path, n, 1); }
static int write_log_texts(const char *path, int n, int with_texts) {
    replay_writer *w = NULL;
    rlhf_error err = {0};
    replay_writer_opts o = {0};
    if (replay_writer_open(&w, path, &o, NULL, NULL, &err)) return -1;
    for (int s = 0; s < n; s++) {
        wire_rollout_group g = {0};
        char pid[32], ptext[64], texts[4][32];
        char *tp[4];
        int32_t ptok[2] = {1, 2}, toks[4 * 3];
        float lps[4 * 3];
        uint32_t nt[4];
        uint8_t fin[4] = {0, 0, 1, 0};
        snprintf(pid, sizeof pid, "p%d", s);
        snprintf(ptext, sizeof ptext, "prompt %d", s);
        for (int i = 0; i < 4; i++) {
            snprintf(texts[i], sizeof texts[i], "g%d-c%d", s, i);
            tp[i] = texts[i];
            nt[i] = 3;
        }
        for (int t = 0; t < 12; t++) toks[t] = 65 + t, lps[t] = -1.0f;
        g.prompt_id = pid;
        g.prompt_text = ptext;
        g.generator_id = "generator-0.1";
        g.seq = (uint64_t)s;
        g.policy_version = (uint64_t)s / 2;
        g.k = 4;
        g.n_prompt_tokens = 2;
        g.prompt_tokens = ptok;
        g.n_tokens = nt;
        g.tokens = toks;
        g.logprobs = lps;
        g.finish = fin;
        g.texts = with_texts ? tp : NULL;
        replay_pos pos;
        if (replay_writer_append_group(w, &g, &pos, &err)) return -1;
    }
    return replay_writer_close(&w, &err);
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_dash_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_run_a, sizeof g_run_a, "%s/torn", g_dir);
    snprintf(g_run_b, sizeof g_run_b, "%s/fresh", g_dir);
    snprintf(g_run_c, sizeof g_run_c, "%s/logged", g_dir);
    snprintf(g_run_d, sizeof g_run_d, "%s/untexted", g_dir);
    mkdir(g_run_a, 0755), mkdir(g_run_b, 0755), mkdir(g_run_c, 0755), mkdir(g_run_d, 0755);
    char p[256];
    FILE *f;
    /* A: three steps and a torn fourth line, a config with secrets, no replay log */
    snprintf(p, sizeof p, "%s/metrics.jsonl", g_run_a);
    if (!(f = fopen(p, "w"))) return -1;
    fputs("{\"step\":1,\"reward/mean\":0.1,\"kl\":0.01}\n{\"step\":2,\"reward/mean\":0.2,\"kl\":0.02}\n"
          "{\"step\":3,\"reward/mean\":0.3,\"kl\":0.03}\n{\"step\":4,\"reward/me", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/config.json", g_run_a);
    if (!(f = fopen(p, "w"))) return -1;
    fputs("{\"name\":\"torn-run\",\"rl\":{\"k\":4,\"max_tokens\":64},\"model\":{\"tokenizer\":\"bytes\"},"
          "\"rewards\":[{\"type\":\"judge\",\"url\":\"https://user:hunter2pass@judge.example/v1\","
          "\"api_key\":\"plainsecret123\",\"headers\":{\"Authorization\":\"Bearer tok-in-header-xyz\"},"
          "\"note\":\"sk-abcdefghijklmnopqrstuvwxyz0123456789\",\"prompt\":\"",
          f);
    for (int i = 0; i < 3000; i++) fputc('x', f);
    fputs("\"}]}\n", f);
    fclose(f);
    /* B: a run that has started: its config only */
    snprintf(p, sizeof p, "%s/config.json", g_run_b);
    if (!(f = fopen(p, "w"))) return -1;
    fputs("{\"name\":\"fresh-run\"}\n", f);
    fclose(f);
    /* C: a replay log of 30 groups and the scores of the first 20 */
    snprintf(p, sizeof p, "%s/rollouts.log", g_run_c);
    if (write_log(p, 30)) return -1;
    snprintf(p, sizeof p, "%s/scores.jsonl", g_run_c);
    if (!(f = fopen(p, "w"))) return -1;
    for (int s = 0; s < 20; s++)
        fprintf(f, "{\"generator\":\"generator-0.1\",\"seq\":%d,\"step\":%d,\"policy_version\":%d,\"fate\":\"trained\","
                   "\"total\":[1.0,0.0,0.5,0.5],\"rewards\":{\"exact\":[1.0,0.0,0.5,0.5]}}\n",
                s, s / 4 + 1, s / 2);
    fclose(f);
    snprintf(p, sizeof p, "%s/metrics.jsonl", g_run_c);
    if (!(f = fopen(p, "w"))) return -1;
    fputs("{\"step\":1,\"reward/mean\":0.5}\n", f);
    fclose(f);

    /* D: a log recorded without completion texts, and a config naming the byte-level tokenizer */
    snprintf(p, sizeof p, "%s/rollouts.log", g_run_d);
    if (write_log_texts(p, 2, 0)) return -1;
    snprintf(p, sizeof p, "%s/config.json", g_run_d);
    if (!(f = fopen(p, "w"))) return -1;
    fputs("{\"name\":\"untexted\",\"model\":{\"arch\":{\"vocab_size\":259},\"tokenizer\":\"bytes\"}}\n", f);
    fclose(f);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    dashboard_config c;
    dashboard_config_default(&c);
    snprintf(c.listen, sizeof c.listen, "127.0.0.1:0");
    c.token_env[0] = 0;
    c.run_dirs[0] = g_run_a, c.run_dirs[1] = g_run_b, c.run_dirs[2] = g_run_c, c.run_dirs[3] = g_run_d;
    c.n_runs = 4;
    rlhf_error err = {0};
    if (dashboard_create(&g_dash, &c, &err)) {
        fprintf(stderr, "dashboard_create: %s: %s\n", err.where, err.msg);
        return -1;
    }
    snprintf(g_url, sizeof g_url, "http://127.0.0.1:%d", dashboard_port(g_dash));
    return 0;
}

static int suite_cleanup(void) {
    dashboard_destroy(&g_dash);
    curl_global_cleanup();
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* GET PATH on the suite's server: the JSON answer (asserts status). */
static json_t *get_json(const char *path, long want_status) {
    char url[512], *body = NULL;
    snprintf(url, sizeof url, "%s%s", g_url, path);
    long st = dash_get(url, NULL, &body);
    CU_ASSERT_EQUAL(st, want_status);
    if (st != want_status) fprintf(stderr, "\nGET %s: %ld %s\n", path, st, body ? body : "");
    json_t *j = json_loads(body ? body : "", 0, NULL);
    free(body);
    CU_ASSERT_PTR_NOT_NULL(j);
    return j;
}

static int missing_has(json_t *o, const char *file) {
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(o, "missing"), i, m) {
        if (!strcmp(json_string_value(json_object_get(m, "file")), file)) return 1;
    }
    return 0;
}

static void test_runs_missing(void) {
    json_t *j = get_json("/api/runs", 200);
    json_t *runs = json_object_get(j, "runs");
    CU_ASSERT_EQUAL_FATAL(json_array_size(runs), 4);
    json_t *a = json_array_get(runs, 0), *b = json_array_get(runs, 1), *c = json_array_get(runs, 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(a, "name")), "torn-run");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "name")), "logged"); /* no config: the dir's name */
    CU_ASSERT_TRUE(missing_has(a, "rollouts.log"));
    CU_ASSERT_FALSE(missing_has(a, "metrics.jsonl"));
    CU_ASSERT_TRUE(missing_has(b, "metrics.jsonl"));
    CU_ASSERT_TRUE(missing_has(b, "rollouts.log"));
    CU_ASSERT_TRUE(missing_has(c, "config.json"));
    CU_ASSERT_FALSE(missing_has(c, "rollouts.log"));
    json_decref(j);
    /* the run with no metrics yet: no rows, metrics.jsonl named */
    j = get_json("/api/metrics?run=1&since=0", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rows")), 0);
    CU_ASSERT_TRUE(missing_has(j, "metrics.jsonl"));
    json_decref(j);
}

static void test_metrics_torn(void) {
    json_t *j = get_json("/api/metrics?run=0&since=0", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rows")), 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "next")), 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "torn")), (json_int_t)strlen("{\"step\":4,\"reward/me"));
    const char *note = json_string_value(json_array_get(json_object_get(j, "notes"), 0));
    CU_ASSERT_PTR_NOT_NULL_FATAL(note);
    CU_ASSERT_PTR_NOT_NULL(strstr(note, "metrics.jsonl: the last line is incomplete"));
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(json_array_get(json_object_get(j, "rows"), 2), "kl")), 0.03,
                           1e-12);
    json_decref(j);
    /* the writer finishes the line: it is served from row 3 on, and nothing is torn any more */
    write_file(g_run_a, "metrics.jsonl", "an\":0.4,\"kl\":0.04}\n", "a");
    j = get_json("/api/metrics?run=0&since=3", 200);
    CU_ASSERT_EQUAL_FATAL(json_array_size(json_object_get(j, "rows")), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(json_object_get(j, "rows"), 0), "step")), 4);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "torn")), 0);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "notes")), 0);
    json_decref(j);
    /* a line that is complete but not JSON is skipped and named with its line number */
    write_file(g_run_a, "metrics.jsonl", "not json\n{\"step\":5,\"reward/mean\":0.5}\n", "a");
    j = get_json("/api/metrics?run=0&since=4", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rows")), 1);
    note = json_string_value(json_array_get(json_object_get(j, "notes"), 0));
    CU_ASSERT_TRUE(note && strstr(note, "metrics.jsonl:5: not a JSON object"));
    json_decref(j);
}

static void test_metrics_since(void) {
    json_t *j = get_json("/api/metrics?run=0&since=0", 200);
    long gen = (long)json_integer_value(json_object_get(j, "generation"));
    long n = (long)json_integer_value(json_object_get(j, "next"));
    CU_ASSERT_EQUAL(n, 5);
    json_decref(j);
    char path[128];
    snprintf(path, sizeof path, "/api/metrics?run=0&since=%ld&generation=%ld", n, gen);
    j = get_json(path, 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rows")), 0); /* nothing new */
    CU_ASSERT_FALSE(json_is_true(json_object_get(j, "reset")));
    json_decref(j);
    /* a resumed run cut the file (steps after its checkpoint): every row again, with a new generation */
    write_file(g_run_a, "metrics.jsonl", "{\"step\":1,\"reward/mean\":0.9}\n", "w");
    j = get_json(path, 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rows")), 1);
    CU_ASSERT_NOT_EQUAL(json_integer_value(json_object_get(j, "generation")), gen);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "next")), 1);
    json_decref(j);
    j = get_json("/api/metrics?run=0&since=x", 400);
    json_decref(j);
}

static void test_rollouts(void) {
    json_t *j = get_json("/api/rollouts?run=2&limit=5", 200);
    json_t *rows = json_object_get(j, "rollouts");
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 5);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "records")), 30);
    json_t *newest = json_array_get(rows, 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(newest, "seq")), 29);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(newest, "policy_version")), 14);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(newest, "generator")), "generator-0.1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(newest, "prompt")), "prompt 29");
    CU_ASSERT_TRUE(json_is_null(json_object_get(newest, "fate"))); /* not scored yet */
    json_t *c2 = json_array_get(json_object_get(newest, "completions"), 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c2, "text")), "g29-c2");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c2, "finish")), "length");
    CU_ASSERT_PTR_NULL(json_object_get(c2, "reward"));
    json_decref(j);
    /* a scored group: rewards per source, RLOO advantage, step, fate */
    j = get_json("/api/rollouts?run=2&limit=1&filter=g13-c", 200);
    rows = json_object_get(j, "rollouts");
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 1);
    json_t *g = json_array_get(rows, 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(g, "seq")), 13);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(g, "step")), 4);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(g, "fate")), "trained");
    json_t *c0 = json_array_get(json_object_get(g, "completions"), 0);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(c0, "reward")), 1.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(json_object_get(c0, "rewards"), "exact")), 1.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(c0, "advantage")), 1.0 - (0.0 + 0.5 + 0.5) / 3, 1e-9);
    json_decref(j);
    /* scores.jsonl replaced (a new file): read again from its start */
    char tmp[256], dst[256];
    snprintf(tmp, sizeof tmp, "%s/scores.jsonl.tmp", g_run_c);
    snprintf(dst, sizeof dst, "%s/scores.jsonl", g_run_c);
    FILE *f = fopen(tmp, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("{\"generator\":\"generator-0.1\",\"seq\":13,\"step\":9,\"fate\":\"zero_var\",\"total\":[1,1,1,1],"
          "\"rewards\":{\"exact\":[1,1,1,1]}}\n", f);
    fclose(f);
    CU_ASSERT_EQUAL(rename(tmp, dst), 0);
    j = get_json("/api/rollouts?run=2&limit=30", 200);
    rows = json_object_get(j, "rollouts");
    size_t i;
    json_array_foreach(rows, i, g) {
        json_int_t seq = json_integer_value(json_object_get(g, "seq"));
        if (seq == 13) {
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(g, "fate")), "zero_var");
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(g, "step")), 9);
            CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(json_array_get(json_object_get(g, "completions"), 0),
                                                                     "advantage")), 0.0, 1e-12);
        } else {
            CU_ASSERT_TRUE(json_is_null(json_object_get(g, "fate"))); /* the old file's scores are gone */
        }
    }
    json_decref(j);
    /* the filter matches prompts too, case-insensitively; nothing matching: an empty list */
    j = get_json("/api/rollouts?run=2&limit=50&filter=PROMPT%202", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rollouts")), 11); /* 2, 20..29 */
    json_decref(j);
    j = get_json("/api/rollouts?run=2&limit=50&filter=nowhere", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rollouts")), 0);
    json_decref(j);
    /* the log grows: the new group is first */
    char p[256];
    snprintf(p, sizeof p, "%s/rollouts.log", g_run_c);
    CU_ASSERT_EQUAL(write_log(p, 31), 0); /* rewritten with one more */
    j = get_json("/api/rollouts?run=2&limit=1", 200);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(json_object_get(j, "rollouts"), 0), "seq")), 30);
    json_decref(j);
    /* no replay log: named, nothing else wrong */
    j = get_json("/api/rollouts?run=0", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rollouts")), 0);
    CU_ASSERT_TRUE(missing_has(j, "rollouts.log"));
    CU_ASSERT_TRUE(missing_has(j, "scores.jsonl"));
    json_decref(j);
}

/* a log without texts: the completions decoded with the run's tokenizer, marked so; the filter sees them */
static void test_rollouts_decoded(void) {
    json_t *j = get_json("/api/rollouts?run=3&limit=5", 200);
    json_t *rows = json_object_get(j, "rollouts");
    CU_ASSERT_EQUAL_FATAL(json_array_size(rows), 2);
    json_t *cs = json_object_get(json_array_get(rows, 0), "completions");
    const char *want[] = {"ABC", "DEF", "GHI", "JKL"};
    for (int i = 0; i < 4; i++) {
        json_t *c = json_array_get(cs, (size_t)i);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "text")), want[i]);
        CU_ASSERT_TRUE(json_is_true(json_object_get(c, "decoded")));
    }
    json_decref(j);
    j = get_json("/api/rollouts?run=3&limit=5&filter=ghi", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "rollouts")), 2);
    json_decref(j);
}

static void test_config_masked(void) {
    char url[256], *body = NULL;
    snprintf(url, sizeof url, "%s/api/config?run=0", g_url);
    CU_ASSERT_EQUAL(dash_get(url, NULL, &body), 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    const char *secrets[] = {"hunter2pass", "plainsecret123", "tok-in-header-xyz", "abcdefghijklmnop", NULL};
    for (int i = 0; secrets[i]; i++) {
        CU_ASSERT_PTR_NULL(strstr(body, secrets[i]));
        if (strstr(body, secrets[i])) fprintf(stderr, "\nsecret %s in the config answer\n", secrets[i]);
    }
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    json_t *cfg = json_object_get(j, "config");
    json_t *r0 = json_array_get(json_object_get(cfg, "rewards"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "api_key")), "***");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "url")), "https://user:***@judge.example/v1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(r0, "headers"), "Authorization")), "***");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "note")), "***");
    CU_ASSERT_TRUE(json_string_length(json_object_get(r0, "prompt")) < 2100); /* cut */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(cfg, "rl"), "max_tokens")), 64);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(cfg, "model"), "tokenizer")), "bytes");
    json_decref(j);
    j = get_json("/api/config?run=2", 200);
    CU_ASSERT_TRUE(json_is_null(json_object_get(j, "config")));
    CU_ASSERT_TRUE(missing_has(j, "config.json"));
    json_decref(j);
}

static void test_processes(void) {
    /* a finished run: no process, said so; its supervision events per process */
    write_file(g_run_c, "restarts.jsonl",
               "{\"time\":1.0,\"process\":\"generator-0\",\"pid\":11,\"signal\":9,\"class\":\"signal\","
               "\"action\":\"restart\",\"restarts\":1}\n"
               "{\"time\":2.0,\"process\":\"generator-0\",\"pid\":12,\"exit_status\":1,\"class\":\"transient\","
               "\"action\":\"restart\",\"restarts\":2}\n"
               "{\"time\":3.0,\"process\":\"broker\",\"pid\":13,\"exit_status\":3,\"class\":\"environment\","
               "\"action\":\"stop\",\"restarts\":0}\n",
               "w");
    json_t *j = get_json("/api/processes?run=2", 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "processes")), 0);
    const char *note = json_string_value(json_array_get(json_object_get(j, "notes"), 0));
    CU_ASSERT_TRUE(note && strstr(note, "no process of this run"));
    json_t *g0 = json_object_get(json_object_get(j, "supervision"), "generator-0");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(g0, "events")), 2);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(g0, "restarts")), 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(g0, "last_class")), "transient");
    json_t *b = json_object_get(json_object_get(j, "supervision"), "broker");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b, "last_action")), "stop");
    json_decref(j);
}

static void test_bad_requests(void) {
    json_decref(get_json("/api/metrics?run=4", 400));
    json_decref(get_json("/api/metrics?run=-1", 400));
    json_decref(get_json("/api/rollouts?run=2&limit=0", 400));
    json_decref(get_json("/api/nothing?run=0", 404));
    char url[256], *body = NULL;
    snprintf(url, sizeof url, "%s/", g_url);
    CU_ASSERT_EQUAL(dash_get(url, NULL, &body), 200);
    CU_ASSERT_TRUE(body && strstr(body, "uPlot.iife.min.js") && strstr(body, "dashboard.js"));
    free(body);
    /* a page that reaches the server through a name of its own (DNS rebinding) is refused */
    snprintf(url, sizeof url, "%s/api/runs", g_url);
    CU_ASSERT_EQUAL(dash_get_host(url, NULL, "evil.example:8420", NULL), 403);
    CU_ASSERT_EQUAL(dash_get_host(url, NULL, "localhost:8420", NULL), 200);
    CU_ASSERT_EQUAL(dash_get_host(url, NULL, "127.0.0.1", NULL), 200);
    snprintf(url, sizeof url, "%s/uPlot.iife.min.js", g_url);
    CU_ASSERT_EQUAL(dash_get(url, NULL, &body), 200);
    CU_ASSERT_TRUE(body && strstr(body, "uPlot") && strlen(body) > 10000);
    free(body);
    snprintf(url, sizeof url, "%s/dashboard.js", g_url);
    CU_ASSERT_EQUAL(dash_get(url, NULL, &body), 200);
    CU_ASSERT_TRUE(body && strstr(body, "/api/metrics"));
    free(body);
}

static void test_refusals(void) {
    dashboard *d = NULL;
    dashboard_config c;
    rlhf_error err = {0};
    char nowhere[128];
    snprintf(nowhere, sizeof nowhere, "%s/no-such-run", g_dir);
    dashboard_config_default(&c);
    snprintf(c.listen, sizeof c.listen, "127.0.0.1:0");
    c.run_dirs[0] = nowhere;
    c.n_runs = 1;
    CU_ASSERT_EQUAL(dashboard_create(&d, &c, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NULL(d);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "no-such-run"));
    /* a directory that holds no run */
    c.run_dirs[0] = g_dir;
    CU_ASSERT_EQUAL(dashboard_create(&d, &c, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a run directory"));
    /* not loopback, no token */
    c.run_dirs[0] = g_run_a;
    snprintf(c.listen, sizeof c.listen, "0.0.0.0:0");
    snprintf(c.token_env, sizeof c.token_env, "RLHF_TEST_DASH_UNSET_TOKEN");
    unsetenv("RLHF_TEST_DASH_UNSET_TOKEN");
    CU_ASSERT_EQUAL(dashboard_create(&d, &c, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "RLHF_TEST_DASH_UNSET_TOKEN"));
    /* the charting library missing: said at start-up */
    snprintf(c.listen, sizeof c.listen, "127.0.0.1:0");
    snprintf(c.assets_dir, sizeof c.assets_dir, "%s", g_run_b);
    CU_ASSERT_NOT_EQUAL(dashboard_create(&d, &c, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "uPlot.iife.min.js"));
    CU_ASSERT_PTR_NULL(d);
    /* the CLI: one error line, exit 2 */
    char rlhf[1024], out[256];
    CU_ASSERT_EQUAL_FATAL(test_bin_path("rlhf", rlhf, sizeof rlhf), 0);
    snprintf(out, sizeof out, "%s/cli.out", g_dir);
    test_proc_opts o = {.out = out, .err = out};
    const char *args[] = {"dashboard", nowhere, "--listen", "127.0.0.1:0", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(rlhf, rlhf, args, &o, 30), 2);
    char *text = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(rlhf_read_file(out, &text, &n, &err), 0);
    CU_ASSERT_TRUE(text && strstr(text, "no-such-run") && strchr(text, '\n') == text + n - 1);
    free(text);
    const char *bad[] = {"dashboard", g_run_a, "--listen", "127.0.0.1:99999", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(rlhf, rlhf, bad, &o, 30), 2);
    const char *help[] = {"dashboard", "--help", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(rlhf, rlhf, help, &o, 30), 0);
}

static void test_token(void) {
    const char *secret = "s3cret-dashboard-token-42";
    setenv("RLHF_TEST_DASH_TOKEN", secret, 1);
    dashboard *d = NULL;
    dashboard_config c;
    rlhf_error err = {0};
    dashboard_config_default(&c);
    snprintf(c.listen, sizeof c.listen, "127.0.0.2:0");
    snprintf(c.token_env, sizeof c.token_env, "RLHF_TEST_DASH_TOKEN");
    c.run_dirs[0] = g_run_a;
    c.n_runs = 1;
    CU_ASSERT_EQUAL_FATAL(dashboard_create(&d, &c, &err), 0);
    char url[256], *body = NULL;
    snprintf(url, sizeof url, "http://127.0.0.2:%d/api/runs", dashboard_port(d));
    CU_ASSERT_EQUAL(dash_get(url, NULL, &body), 401);
    CU_ASSERT_TRUE(body && !strstr(body, secret));
    free(body);
    CU_ASSERT_EQUAL(dash_get(url, "s3cret-dashboard-token-41", NULL), 401);
    CU_ASSERT_EQUAL(dash_get(url, "s3cret-dashboard-token-4", NULL), 401); /* a prefix */
    CU_ASSERT_EQUAL(dash_get(url, "s3cret-dashboard-token-420", NULL), 401);
    CU_ASSERT_EQUAL(dash_get(url, secret, NULL), 200);
    snprintf(url, sizeof url, "http://127.0.0.2:%d/?token=%s", dashboard_port(d), secret);
    CU_ASSERT_EQUAL(dash_get(url, NULL, NULL), 200);
    snprintf(url, sizeof url, "http://127.0.0.2:%d/uPlot.iife.min.js", dashboard_port(d));
    CU_ASSERT_EQUAL(dash_get(url, NULL, NULL), 401);
    dashboard_destroy(&d);
    CU_ASSERT_PTR_NULL(d);
    /* the CLI on 127.0.0.2: it starts, answers with the token, and never prints it */
    char rlhf[1024], out[256];
    CU_ASSERT_EQUAL_FATAL(test_bin_path("rlhf", rlhf, sizeof rlhf), 0);
    snprintf(out, sizeof out, "%s/token.out", g_dir);
    test_proc_opts o = {.out = out, .err = out};
    const char *args[] = {"dashboard", g_run_a, "--listen", "127.0.0.2:0", "--token-env", "RLHF_TEST_DASH_TOKEN",
                          "--log-requests", NULL};
    pid_t pid = test_proc_spawn_args(rlhf, rlhf, args, &o);
    CU_ASSERT_FATAL(pid > 0);
    char *text = NULL, *at = NULL;
    size_t n = 0;
    for (int i = 0; i < 300 && !at; i++) {
        usleep(50000);
        free(text);
        text = NULL;
        if (rlhf_read_file(out, &text, &n, &err) == 0) at = strstr(text, "http://127.0.0.2:");
    }
    CU_ASSERT_PTR_NOT_NULL(at);
    if (at) {
        int port = atoi(at + strlen("http://127.0.0.2:"));
        snprintf(url, sizeof url, "http://127.0.0.2:%d/api/config?run=0", port);
        CU_ASSERT_EQUAL(dash_get(url, secret, NULL), 200);
        CU_ASSERT_EQUAL(dash_get(url, "wrong", NULL), 401);
    }
    free(text);
    CU_ASSERT_EQUAL(test_proc_stop(pid, 10), 0);
    text = NULL;
    CU_ASSERT_EQUAL(rlhf_read_file(out, &text, &n, &err), 0);
    CU_ASSERT_TRUE(text && !strstr(text, secret));
    free(text);
    unsetenv("RLHF_TEST_DASH_TOKEN");
}

int register_api_suite(void);
int register_api_suite(void) {
    CU_pSuite s = CU_add_suite("dashboard_api", suite_init, suite_cleanup);
    if (!s) return -1;
    if (!CU_add_test(s, "runs_missing", test_runs_missing) || !CU_add_test(s, "metrics_torn", test_metrics_torn) ||
        !CU_add_test(s, "metrics_since", test_metrics_since) || !CU_add_test(s, "rollouts", test_rollouts) ||
        !CU_add_test(s, "rollouts_decoded", test_rollouts_decoded) ||
        !CU_add_test(s, "config_masked", test_config_masked) || !CU_add_test(s, "processes", test_processes) || !CU_add_test(s, "bad_requests", test_bad_requests) ||
        !CU_add_test(s, "refusals", test_refusals) || !CU_add_test(s, "token", test_token))
        return -1;
    return 0;
}
