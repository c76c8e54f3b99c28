/* tests/dashboard/test_browser.c — the dashboard page in a real browser (headless Chromium, Debian's
 * `chromium`), on a short run that is running (`rlhf run CONFIG --dashboard 127.0.0.1:0`, the easy task on
 * a tiny model) and on fixture run directories served by `rlhf dashboard`:
 *
 *   live_run:      two loads of the page a few steps apart: every chart the run has data for is drawn (its
 *                  container's data-points > 0 and data-ink, the coloured pixels of its canvas, > 0), the
 *                  reward chart's points grow from the first load to the second, the rollouts table shows
 *                  a completion that is in the run's replay log (read here with broker/'s reader), the
 *                  processes table lists the run's broker, updater and generator with a CPU chart, and a
 *                  screenshot is written to BUILD/tests/artifacts/dashboard.png;
 *   missing_files: a run with no metrics yet and one with a torn last metrics line and no replay log: the
 *                  page shows what exists and names what is missing (and the torn line).
 *   run_refusals:  `rlhf run --dashboard` on a non-loopback address without a token, or with a bad address:
 *                  exit 2 naming it, before any process of the run starts.
 * Chromium missing is a failure, not a skip (scripts/install-deps.sh installs it). */
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "broker/wire.h"
#include "common/common.h"
#include "tests/dashboard/dash_util.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static const char *g_chromium = "/usr/bin/chromium";

static int suite_init(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return e2e_suite_dir("dashb", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf);
}

static int suite_cleanup(void) {
    curl_global_cleanup();
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* Chromium, headless, on URL: --dump-dom into OUT (mode "dom") or --screenshot=OUT (mode "png"). The
 * page polls every 2 s; the virtual-time budget lets it run a few polls before the DOM is taken. */
static int chromium(const char *url, const char *mode, const char *out) {
    char profile[256], shot[600], log[256];
    snprintf(profile, sizeof profile, "%s/chromium-profile", g_dir);
    snprintf(shot, sizeof shot, "--screenshot=%s", out);
    snprintf(log, sizeof log, "%s/chromium.log", g_dir);
    char prof_arg[300];
    snprintf(prof_arg, sizeof prof_arg, "--user-data-dir=%s", profile);
    int png = !strcmp(mode, "png");
    const char *args[] = {"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                          "--hide-scrollbars", prof_arg, "--window-size=1400,2400", "--virtual-time-budget=6000",
                          png ? shot : "--dump-dom", url, NULL};
    test_proc_opts o = {.out = png ? log : out, .err = log, .die_with_parent = 1};
    return test_proc_run_args(g_chromium, "chromium", args, &o, 180);
}

static char *slurp(const char *path) {
    char *t = NULL;
    size_t n = 0;
    rlhf_error err = {0};
    return rlhf_read_file(path, &t, &n, &err) == 0 ? t : NULL;
}

/* The value of attribute ATTR of the element with id ID in a serialized DOM, or -1. */
static long attr_of(const char *dom, const char *id, const char *attr) {
    char key[128];
    snprintf(key, sizeof key, "id=\"%s\"", id);
    const char *at = dom ? strstr(dom, key) : NULL;
    if (!at) return -1;
    const char *start = at;
    while (start > dom && *start != '<') start--;
    const char *end = strchr(at, '>');
    char a[128];
    snprintf(a, sizeof a, " %s=\"", attr);
    const char *v = strstr(start, a);
    if (!v || !end || v > end) return -1;
    return atol(v + strlen(a));
}

/* rows of RUN_DIR/metrics.jsonl the server has (via /api/metrics), -1 on error */
static long metric_rows(const char *base) {
    char url[256], *body = NULL;
    snprintf(url, sizeof url, "%s/api/metrics?run=0&since=0", base);
    long rows = -1;
    if (dash_get(url, NULL, &body) == 200) {
        json_t *j = json_loads(body, 0, NULL);
        rows = j ? (long)json_integer_value(json_object_get(j, "next")) : -1;
        json_decref(j);
    }
    free(body);
    return rows;
}

/* The completions shown in the rollouts table (<span class="completion">TEXT</span>), unescaped. */
static int dom_completions(const char *dom, char ***out) {
    const char *open = "<span class=\"completion\">";
    int n = 0, cap = 0;
    char **v = NULL;
    for (const char *p = dom ? strstr(dom, open) : NULL; p; p = strstr(p, open)) {
        p += strlen(open);
        const char *e = strstr(p, "</span>");
        if (!e) break;
        char *t = malloc((size_t)(e - p) + 1);
        size_t k = 0;
        for (const char *q = p; q < e;) {
            if (!strncmp(q, "&amp;", 5)) t[k++] = '&', q += 5;
            else if (!strncmp(q, "&lt;", 4)) t[k++] = '<', q += 4;
            else if (!strncmp(q, "&gt;", 4)) t[k++] = '>', q += 4;
            else if (!strncmp(q, "&nbsp;", 6)) t[k++] = (char)0xc2, t[k++] = (char)0xa0, q += 6;
            else t[k++] = *q++;
        }
        t[k] = 0;
        if (n == cap) v = realloc(v, (size_t)(cap = cap ? cap * 2 : 64) * sizeof *v);
        v[n++] = t;
        p = e;
    }
    *out = v;
    return n;
}

/* How many of the shown completions are completions of the replay log (sanitised as the server does). */
static int shown_in_log(const char *log, char **shown, int n_shown, int *checked) {
    replay_reader *r = NULL;
    rlhf_error err = {0};
    *checked = 0;
    if (replay_reader_open(&r, log, &err)) return -1;
    int found = 0;
    int *hit = calloc((size_t)n_shown + 1, sizeof *hit);
    wire_rollout_group g;
    replay_pos pos;
    while (replay_reader_next(r, &g, &pos, &err) == 1) {
        for (uint32_t i = 0; g.texts && i < g.k; i++) {
            if (!g.texts[i] || !g.texts[i][0]) continue;
            char *s = rlhf_utf8_sanitize(g.texts[i], strlen(g.texts[i]));
            for (int j = 0; j < n_shown; j++)
                if (!hit[j] && shown[j][0] && s && !strcmp(s, shown[j])) hit[j] = 1, found++;
            free(s);
        }
        wire_rollout_group_free(&g);
    }
    replay_reader_close(&r);
    for (int j = 0; j < n_shown; j++) *checked += shown[j][0] != 0;
    free(hit);
    return found;
}

static const char *const DRAWN[] = {"chart-reward", "chart-pass_rate", "chart-kl", "chart-entropy", "chart-is_ratio",
                                    "chart-staleness", "chart-throughput", "chart-queue", "chart-dropped", NULL};

static void test_live_run(void) {
    CU_ASSERT_EQUAL_FATAL(access(g_chromium, X_OK), 0); /* scripts/install-deps.sh installs chromium */
    char cfg[256], run[128], out[256], doc[2048];
    snprintf(cfg, sizeof cfg, "%s/live.json", g_dir);
    snprintf(run, sizeof run, "%s/live", g_dir);
    snprintf(out, sizeof out, "%s/live.out", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"live\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":100000,\"checkpoint_every\":1000,\"seed\":7},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             run, g_dir);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    const char *args[] = {"run", cfg, "--quiet", "--dashboard", "127.0.0.1:0", NULL};
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    pid_t pid = test_proc_spawn_args(g_rlhf, g_rlhf, args, &o);
    CU_ASSERT_FATAL(pid > 0);
    char base[128] = "";
    for (int i = 0; i < 600 && !base[0]; i++) {
        usleep(100000);
        char *t = slurp(out), *at = t ? strstr(t, "dashboard: http://127.0.0.1:") : NULL;
        if (at) snprintf(base, sizeof base, "http://127.0.0.1:%d", atoi(at + strlen("dashboard: http://127.0.0.1:")));
        free(t);
    }
    CU_ASSERT_FATAL(base[0] != 0);
    /* a few steps first, so that every chart has something */
    long rows = 0;
    for (int i = 0; i < 1200 && (rows = metric_rows(base)) < 3; i++) usleep(100000);
    CU_ASSERT_FATAL(rows >= 3);

    char page[200], dom1[256], dom2[256];
    snprintf(page, sizeof page, "%s/", base);
    snprintf(dom1, sizeof dom1, "%s/dom1.html", g_dir);
    snprintf(dom2, sizeof dom2, "%s/dom2.html", g_dir);
    CU_ASSERT_EQUAL_FATAL(chromium(page, "dom", dom1), 0);
    char *d1 = slurp(dom1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d1);
    CU_ASSERT_PTR_NOT_NULL(strstr(d1, "data-ready=\"1\""));
    long p1 = attr_of(d1, "chart-reward", "data-points");
    CU_ASSERT(p1 > 0);
    for (int i = 0; DRAWN[i]; i++) {
        long pts = attr_of(d1, DRAWN[i], "data-points"), ink = attr_of(d1, DRAWN[i], "data-ink");
        if (pts <= 0 || ink <= 0) fprintf(stderr, "\n%s: %ld points, %ld coloured pixels\n", DRAWN[i], pts, ink);
        CU_ASSERT(pts > 0);
        CU_ASSERT(ink > 0);
    }
    CU_ASSERT(attr_of(d1, "chart-reward", "data-series") >= 2); /* reward/mean and reward/digit/mean */

    /* more steps, then the second load: more points */
    long want = metric_rows(base) + 3;
    for (int i = 0; i < 1200 && metric_rows(base) < want; i++) usleep(100000);
    CU_ASSERT_EQUAL_FATAL(chromium(page, "dom", dom2), 0);
    char *d2 = slurp(dom2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d2);
    long p2 = attr_of(d2, "chart-reward", "data-points");
    CU_ASSERT(p2 > p1);
    if (p2 <= p1) fprintf(stderr, "\nreward points: %ld then %ld\n", p1, p2);

    /* the rollouts table shows completions of the replay log */
    CU_ASSERT(attr_of(d2, "rollouts", "data-rows") > 0);
    char **shown = NULL;
    int n_shown = dom_completions(d2, &shown), checked = 0;
    CU_ASSERT(n_shown > 0);
    char log[256];
    snprintf(log, sizeof log, "%s/rollouts.log", run);
    int found = shown_in_log(log, shown, n_shown, &checked);
    CU_ASSERT(found > 0);
    if (found <= 0) fprintf(stderr, "\nnone of %d shown completions (%d non-empty) is in %s\n", n_shown, checked, log);
    for (int i = 0; i < n_shown; i++) free(shown[i]);
    free(shown);

    /* the run's processes, found on this host, in the table and the CPU chart */
    CU_ASSERT(attr_of(d2, "processes", "data-rows") >= 3);
    CU_ASSERT_PTR_NOT_NULL(strstr(d2, "data-process=\"updater\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(d2, "data-process=\"broker\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(d2, "data-process=\"generator-0\""));
    CU_ASSERT(attr_of(d2, "chart-proc_cpu", "data-points") > 0);

    /* the screenshot, a test artifact in the build directory */
    char build[1024], shot[1200];
    CU_ASSERT_EQUAL_FATAL(test_build_dir(build, sizeof build), 0);
    snprintf(shot, sizeof shot, "%s/tests/artifacts", build);
    mkdir(shot, 0755);
    snprintf(shot, sizeof shot, "%s/tests/artifacts/dashboard.png", build);
    unlink(shot);
    CU_ASSERT_EQUAL(chromium(page, "png", shot), 0);
    struct stat st;
    CU_ASSERT_EQUAL(stat(shot, &st), 0);
    CU_ASSERT(st.st_size > 20000);
    char *png = slurp(shot);
    CU_ASSERT_TRUE(png && !memcmp(png, "\x89PNG", 4));
    free(png);
    free(d1);
    free(d2);
    /* the run stops cleanly, and its dashboard with it */
    CU_ASSERT_EQUAL(test_proc_stop(pid, 120), 0);
    CU_ASSERT_EQUAL(metric_rows(base), -1);
}

static void test_missing_files(void) {
    CU_ASSERT_EQUAL_FATAL(access(g_chromium, X_OK), 0);
    char fresh[128], torn[128], p[256], out[256];
    snprintf(fresh, sizeof fresh, "%s/fresh", g_dir);
    snprintf(torn, sizeof torn, "%s/torn", g_dir);
    mkdir(fresh, 0755), mkdir(torn, 0755);
    snprintf(p, sizeof p, "%s/config.json", fresh);
    CU_ASSERT_EQUAL_FATAL(write_text(p, "{\"name\":\"fresh\"}\n"), 0);
    snprintf(p, sizeof p, "%s/config.json", torn);
    CU_ASSERT_EQUAL_FATAL(write_text(p, "{\"name\":\"torn\"}\n"), 0);
    snprintf(p, sizeof p, "%s/metrics.jsonl", torn);
    CU_ASSERT_EQUAL_FATAL(write_text(p, "{\"step\":1,\"reward/mean\":0.25,\"kl\":0.5}\n{\"step\":2,\"reward/mean\":0.5,"
                                        "\"kl\":0.25}\n{\"step\":3,\"rew"), 0);
    snprintf(out, sizeof out, "%s/dash.out", g_dir);
    const char *args[] = {"dashboard", torn, fresh, "--listen", "127.0.0.1:0", NULL};
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    pid_t pid = test_proc_spawn_args(g_rlhf, g_rlhf, args, &o);
    CU_ASSERT_FATAL(pid > 0);
    char base[128] = "";
    for (int i = 0; i < 300 && !base[0]; i++) {
        usleep(50000);
        char *t = slurp(out), *at = t ? strstr(t, "http://127.0.0.1:") : NULL;
        if (at) snprintf(base, sizeof base, "http://127.0.0.1:%d/", atoi(at + strlen("http://127.0.0.1:")));
        free(t);
    }
    CU_ASSERT_FATAL(base[0] != 0);
    char dom[256];
    snprintf(dom, sizeof dom, "%s/missing.html", g_dir);
    CU_ASSERT_EQUAL(chromium(base, "dom", dom), 0);
    char *d = slurp(dom);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_PTR_NOT_NULL(strstr(d, "data-ready=\"1\""));
    /* what exists is drawn: the torn run's two complete steps */
    CU_ASSERT_EQUAL(attr_of(d, "chart-reward", "data-points"), 2);
    CU_ASSERT(attr_of(d, "chart-reward", "data-ink") > 0);
    CU_ASSERT_EQUAL(attr_of(d, "chart-kl", "data-points"), 2);
    /* what is missing is named */
    CU_ASSERT_PTR_NOT_NULL(strstr(d, "metrics.jsonl: the last line is incomplete"));
    CU_ASSERT_PTR_NOT_NULL(strstr(d, "missing: metrics.jsonl")); /* the fresh run */
    CU_ASSERT_PTR_NOT_NULL(strstr(d, "missing: rollouts.log"));
    CU_ASSERT_EQUAL(attr_of(d, "rollouts", "data-rows"), 0);
    free(d);
    CU_ASSERT_EQUAL(test_proc_stop(pid, 10), 0);
}

/* rlhf run --dashboard refuses what `rlhf dashboard` refuses, before any process of the run starts */
static void test_run_refusals(void) {
    char cfg[256], run[128], out[256], doc[2048];
    snprintf(cfg, sizeof cfg, "%s/refused.json", g_dir);
    snprintf(run, sizeof run, "%s/refused", g_dir);
    snprintf(out, sizeof out, "%s/refused.out", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"refused\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"steps\":2},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             run, g_dir);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    const char *const env[] = {"RLHF_DASHBOARD_TOKEN=", NULL};
    o.env = env;
    const char *open[] = {"run", cfg, "--quiet", "--dashboard", "0.0.0.0:0", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, open, &o, 120), 2);
    char *t = slurp(out);
    CU_ASSERT_TRUE(t && strstr(t, "not a loopback address") && strstr(t, "RLHF_DASHBOARD_TOKEN"));
    free(t);
    char p[256];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    CU_ASSERT_NOT_EQUAL(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/logs/broker.log", run);
    CU_ASSERT_NOT_EQUAL(access(p, F_OK), 0); /* no process started */
    const char *bad[] = {"run", cfg, "--quiet", "--dashboard=127.0.0.1:70000", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, bad, &o, 60), 2);
    t = slurp(out);
    CU_ASSERT_TRUE(t && strstr(t, "--dashboard") && strstr(t, "70000"));
    free(t);
}

int register_browser_suite(void);
int register_browser_suite(void) {
    CU_pSuite s = CU_add_suite("dashboard_browser", suite_init, suite_cleanup);
    if (!s) return -1;
    if (!CU_add_test(s, "live_run", test_live_run) || !CU_add_test(s, "missing_files", test_missing_files) ||
        !CU_add_test(s, "run_refusals", test_run_refusals))
        return -1;
    return 0;
}
