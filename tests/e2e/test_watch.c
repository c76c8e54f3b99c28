/* tests/e2e/test_watch.c — watching a run (issue 22): the TensorBoard event file of a real run, the
 * held-out evaluation during training (greedy and sampled) in eval.jsonl, metrics.jsonl and the
 * progress line, and `rlhf plot`.
 *
 *   events_and_eval: `rlhf run` (eval.every 10 over 60 steps) writes one events.out.tfevents.* file
 *                    whose scalars are exactly metrics.jsonl's numbers and the evaluations' figures at
 *                    their checkpoints' steps, checked by tests/oracle/tfevents_check.py (Python's
 *                    protobuf runtime, CRC-32C recomputed); every eval.jsonl record has the greedy and
 *                    the sampled pass rate; the eval/ keys of metrics.jsonl equal the record of the
 *                    step they name; the terminal shows them;
 *   resume:          `rlhf run --resume` with more steps adds a second event file; both files together
 *                    hold the whole run;
 *   updater_restart: kill -9 of the updater between two checkpoints (100 and 200): it resumes from 100 and
 *                    trains some steps again; the event file says so (a restart event at the first
 *                    step after the checkpoint) and, read as TensorBoard reads it, holds exactly the
 *                    final metrics.jsonl;
 *   sampled_refusal: eval.sampled_temperature 0 is refused before start (exit 2, key named); with
 *                    eval.sampled_samples 0 only the greedy figure is recorded;
 *   plot:            two fixture runs (one with a torn last line, said once) give a PNG (signature,
 *                    IHDR size, > 5 KB) and an SVG with one path per run (tests/oracle/plot_svg_check.py,
 *                    Python's XML parser); --x wall and --smooth work;
 *   plot_errors:     a missing directory, a directory without metrics.jsonl, a line that is not JSON, an
 *                    unknown metric, a missing output directory are each one line naming what, with
 *                    status 1 (2 for usage errors, 0 for --help), and leave no file behind. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static char g_run[256];

static int suite_init(void) {
    if (e2e_suite_dir("watch", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf)) return -1;
    snprintf(g_run, sizeof g_run, "%s/watch", g_dir);
    return 0;
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

static int run_cmd(const char *out_path, const char *err_path, const char *const *args, double timeout) {
    test_proc_opts o = {.out = out_path, .err = err_path ? err_path : out_path};
    return test_proc_run_args(g_rlhf, g_rlhf, args, &o, timeout);
}

/* The run's event files, space-separated, sorted; their count. */
static int event_files(const char *run, char *out, size_t cap) {
    struct dirent **names;
    int n = scandir(run, &names, NULL, alphasort), count = 0;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (!strncmp(names[i]->d_name, "events.out.tfevents.", 20)) {
            snprintf(out + strlen(out), cap - strlen(out), "%s%s/%s", count ? " " : "", run, names[i]->d_name);
            count++;
        }
        free(names[i]);
    }
    if (n >= 0) free(names);
    return count;
}

/* RUN/watch_expect.jsonl: metrics.jsonl's lines, then one line per eval.jsonl record with its figures
 * under the eval/ names at its step: what the event files must hold (with --side eval/ eval/step). */
static int write_expectation(const char *run, char *path, size_t cap) {
    char p[512];
    snprintf(path, cap, "%s/watch_expect.jsonl", run);
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    char *metrics = e2e_slurp(p);
    snprintf(p, sizeof p, "%s/eval.jsonl", run);
    char *evals = e2e_slurp(p);
    FILE *f = fopen(path, "w");
    if (!metrics || !evals || !f) {
        free(metrics);
        free(evals);
        if (f) fclose(f);
        return -1;
    }
    fputs(metrics, f);
    char *save = NULL;
    int n = 0;
    for (char *line = strtok_r(evals, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *r = json_loads(line, 0, NULL);
        fprintf(f, "{\"step\":%lld,\"eval/pass_rate\":%.17g,\"eval/reward_mean\":%.17g,\"eval/pass_rate_greedy\":%.17g,"
                   "\"eval/pass_rate_sampled\":%.17g}\n",
                (long long)json_integer_value(json_object_get(r, "step")),
                json_number_value(json_object_get(r, "pass_rate")), json_number_value(json_object_get(r, "reward_mean")),
                json_number_value(json_object_get(r, "pass_rate_greedy")),
                json_number_value(json_object_get(r, "pass_rate_sampled")));
        json_decref(r);
        n++;
    }
    fclose(f);
    free(metrics);
    free(evals);
    return n;
}

static int tfevents_oracle(const char *expect, const char *files, const char *log) {
    char script[1200], cmd[4096];
    test_source_path("tests/oracle/tfevents_check.py", script, sizeof script);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s --side eval/ eval/step > %s 2>&1", script, expect, files, log);
    int st = system(cmd);
    char *o = e2e_slurp(log);
    printf("\n  tfevents_check: %s", o ? o : "(no output)");
    free(o);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void test_events_and_eval(void) {
    char cfg[256], out[256], p[512];
    snprintf(cfg, sizeof cfg, "%s/watch.json", g_dir);
    snprintf(out, sizeof out, "%s/watch.out", g_dir);
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"name\":\"watch\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\",\"eval\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":60,\"checkpoint_every\":1,\"seed\":7},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1},\n"
             " \"checkpoint\":{\"keep\":2,\"keep_best\":1},\n"
             " \"eval\":{\"every\":10,\"sampled_samples\":3,\"sampled_temperature\":1.5}}\n",
             g_run);
    write_text(cfg, doc);
    const char *a[] = {"run", cfg, NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, NULL, a, 300), 0);
    CU_ASSERT(e2e_contains(out, "[rlhf run] held-out eval of step 10: pass rate "));
    CU_ASSERT(e2e_contains(out, "; greedy "));
    CU_ASSERT(e2e_contains(out, "(x3 at T=1.5)"));

    /* eval.jsonl: steps 10, 20, ..., 60 with both figures, the sampled one as configured */
    snprintf(p, sizeof p, "%s/eval.jsonl", g_run);
    char *evals = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(evals);
    json_t *by_step = json_object();
    char *save = NULL;
    for (char *line = strtok_r(evals, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *r = json_loads(line, 0, NULL);
        CU_ASSERT(json_is_number(json_object_get(r, "pass_rate_greedy")));
        CU_ASSERT(json_is_number(json_object_get(r, "pass_rate_sampled")));
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "samples_sampled")), 3);
        CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(r, "temperature_sampled")), 1.5, 1e-9);
        /* the configured evaluation is greedy: it is the greedy figure */
        CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(r, "pass_rate_greedy")),
                               json_number_value(json_object_get(r, "pass_rate")), 1e-12);
        char k[32];
        snprintf(k, sizeof k, "%lld", (long long)json_integer_value(json_object_get(r, "step")));
        json_object_set_new(by_step, k, r);
    }
    free(evals);
    CU_ASSERT_EQUAL(json_object_size(by_step), 6);
    CU_ASSERT_PTR_NOT_NULL(json_object_get(by_step, "10"));
    CU_ASSERT_PTR_NOT_NULL(json_object_get(by_step, "60"));

    /* metrics.jsonl: the evaluations that ended during training, each once, equal to their records */
    snprintf(p, sizeof p, "%s/metrics.jsonl", g_run);
    char *metrics = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(metrics);
    int reported = 0;
    long last_eval_step = 0;
    save = NULL;
    for (char *line = strtok_r(metrics, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *m = json_loads(line, 0, NULL);
        json_t *es = json_object_get(m, "eval/step");
        if (es) {
            char k[32];
            snprintf(k, sizeof k, "%lld", (long long)json_integer_value(es));
            json_t *r = json_object_get(by_step, k);
            CU_ASSERT_PTR_NOT_NULL(r);
            CU_ASSERT(json_integer_value(es) > last_eval_step);
            CU_ASSERT(json_integer_value(es) <= json_integer_value(json_object_get(m, "step")));
            last_eval_step = (long)json_integer_value(es);
            CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(m, "eval/pass_rate_greedy")),
                                   json_number_value(json_object_get(r, "pass_rate_greedy")), 1e-6);
            CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(m, "eval/pass_rate_sampled")),
                                   json_number_value(json_object_get(r, "pass_rate_sampled")), 1e-6);
            reported++;
        }
        json_decref(m);
    }
    free(metrics);
    printf("\n  %d of 6 evaluations ended during training (in metrics.jsonl)", reported);
    CU_ASSERT(reported >= 1); /* step 10's has 50 steps to end in */
    if (reported) CU_ASSERT(e2e_contains(out, " eval@"));
    json_decref(by_step);

    /* the event file: one, holding exactly metrics.jsonl and the evaluations */
    char files[2048], expect[512], log[512];
    CU_ASSERT_EQUAL(event_files(g_run, files, sizeof files), 1);
    CU_ASSERT_EQUAL(write_expectation(g_run, expect, sizeof expect), 6);
    snprintf(log, sizeof log, "%s/tfevents_check.out", g_dir);
    CU_ASSERT_EQUAL(tfevents_oracle(expect, files, log), 0);
    CU_ASSERT(e2e_contains(log, "tfevents_check: ok "));
    CU_ASSERT(e2e_contains(log, " over 60 steps in 1 files")); /* 60 training steps; eval steps are among them */
}

static void test_resume(void) {
    char out[256], files[2048], expect[512], log[512];
    snprintf(out, sizeof out, "%s/watch_resume.out", g_dir);
    const char *a[] = {"run", "--resume", g_run, "--set", "rl.steps=70", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, NULL, a, 300), 0);
    CU_ASSERT_EQUAL(event_files(g_run, files, sizeof files), 2);
    CU_ASSERT_EQUAL(write_expectation(g_run, expect, sizeof expect), 7); /* 10, 20, ..., 70 */
    snprintf(log, sizeof log, "%s/tfevents_check_resume.out", g_dir);
    CU_ASSERT_EQUAL(tfevents_oracle(expect, files, log), 0);
    CU_ASSERT(e2e_contains(log, " over 70 steps in 2 files"));
}

static int count_in(const char *path, const char *needle);

/* A sampled held-out figure at temperature 0 is refused before anything starts, naming the key. */
static void test_sampled_refusal(void) {
    char out[256], run[256];
    snprintf(out, sizeof out, "%s/refusal.out", g_dir);
    snprintf(run, sizeof run, "%s/refused", g_dir);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/watch.json", g_dir); /* events_and_eval's config */
    char set_dir[300];
    snprintf(set_dir, sizeof set_dir, "run_dir=%s", run);
    const char *a[] = {"run", cfg, "--set", set_dir, "--set", "eval.sampled_temperature=0", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, NULL, a, 60), 2);
    CU_ASSERT(e2e_contains(out, "eval.sampled_temperature: must be > 0"));
    CU_ASSERT_EQUAL(access(run, F_OK), -1);
    /* and eval.sampled_samples 0 turns the sampled figure off: allowed */
    const char *b[] = {"run", cfg, "--set", set_dir, "--set", "eval.sampled_samples=0", "--set",
                       "eval.sampled_temperature=0", "--set", "rl.steps=10", "--quiet", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, NULL, b, 120), 0);
    char p[512];
    snprintf(p, sizeof p, "%s/eval.jsonl", run);
    CU_ASSERT(count_in(p, "\"pass_rate_greedy\"") >= 1);
    CU_ASSERT_EQUAL(count_in(p, "pass_rate_sampled"), 0);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* The child of `parent` whose command line holds `word` (0: none). */
static pid_t child_with(pid_t parent, const char *word) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && (e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0) continue;
        char p[64], buf[4096];
        snprintf(p, sizeof p, "/proc/%d/stat", pid);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        int ppid = 0;
        char state;
        int ok = fscanf(f, "%*d %*s %c %d", &state, &ppid) == 2;
        fclose(f);
        if (!ok || ppid != parent) continue;
        snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
        int fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        for (ssize_t i = 0; i < n; i++)
            if (!buf[i]) buf[i] = ' ';
        if (n > 0 && (buf[n] = 0, strstr(buf, word))) found = pid;
    }
    if (d) closedir(d);
    return found;
}

/* The last step of RUN/metrics.jsonl (0: none). */
static long metrics_last_step(const char *run) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    char *t = e2e_slurp(p);
    long step = 0;
    for (char *q = t; q && (q = strstr(q, "{\"step\":")); q++) step = atol(q + 8);
    free(t);
    return step;
}

static void test_updater_restart(void) {
    char cfg[256], out[256], run[256], files[2048], expect[512], log[512];
    snprintf(cfg, sizeof cfg, "%s/restart.json", g_dir);
    snprintf(out, sizeof out, "%s/restart.out", g_dir);
    snprintf(run, sizeof run, "%s/restart", g_dir);
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"name\":\"restart\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":24},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":8,\"prompts_per_step\":16,\"lr\":0.01,\"steps\":200,\"checkpoint_every\":100,"
             "\"seed\":7,\"max_staleness\":1000},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":12,\"batch\":8,\"threads\":1}}\n",
             run);
    write_text(cfg, doc);
    const char *a[] = {"run", cfg, "--quiet", NULL};
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    pid_t launcher = test_proc_spawn_args(g_rlhf, g_rlhf, a, &o);
    CU_ASSERT_FATAL(launcher > 0);
    /* kill the updater between checkpoints 100 and 200, once the launcher has mirrored a step after 100:
     * it reads metrics.jsonl once a second, so the event file grows after step 101 is in metrics.jsonl */
    long at = 0;
    for (double t0 = test_proc_now(); test_proc_now() - t0 < 120; usleep(2000)) {
        at = metrics_last_step(run);
        if (at >= 101 || waitpid(launcher, NULL, WNOHANG) == launcher) break;
    }
    pid_t upd = 0;
    if (at >= 101 && at < 199 && event_files(run, files, sizeof files) == 1) {
        long size0 = file_size(files);
        for (double t0 = test_proc_now(); file_size(files) == size0 && test_proc_now() - t0 < 10;) usleep(2000);
        at = metrics_last_step(run);
        if (at < 199) upd = child_with(launcher, " updater ");
        if (upd > 0) kill(upd, SIGKILL);
    }
    int rc = test_proc_wait(launcher, 300);
    printf("\n  updater killed after step %ld%s", at, upd > 0 ? "" : " (missed the window: too fast or too slow)");
    CU_ASSERT_FATAL(upd > 0);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(event_files(run, files, sizeof files), 1);
    snprintf(expect, sizeof expect, "%s/metrics.jsonl", run);
    snprintf(log, sizeof log, "%s/tfevents_check_restart.out", g_dir);
    CU_ASSERT_EQUAL(tfevents_oracle(expect, files, log), 0);
    CU_ASSERT(e2e_contains(log, " over 200 steps in 1 files"));
    CU_ASSERT(e2e_contains(log, ": restart at step 101: "));
}

/* ---------------------------------------------------------------- rlhf plot */

/* A fixture run: N steps of reward/mean, pass_rate, kl, wall_s; torn: a last line cut short. */
static void write_fixture(const char *dir, int n, double slope, int torn, int with_eval) {
    char p[512];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    FILE *f = fopen(p, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int s = 1; s <= n; s++)
        fprintf(f, "{\"step\":%d,\"reward/mean\":%.4f,\"pass_rate\":%.4f,\"kl\":%.5f,\"wall_s\":%.2f}\n", s,
                0.1 + slope * s + 0.05 * sin(s), 0.05 + slope * s, 0.001 * s, 0.7 * s);
    if (torn) fputs("{\"step\":99,\"reward/me", f);
    fclose(f);
    if (with_eval) {
        snprintf(p, sizeof p, "%s/eval.jsonl", dir);
        f = fopen(p, "w");
        for (int s = 10; s <= n; s += 10)
            fprintf(f, "{\"step\":%d,\"pass_rate\":%.3f,\"reward_mean\":0.5,\"pass_rate_greedy\":%.3f,"
                       "\"pass_rate_sampled\":%.3f}\n", s, 0.01 * s, 0.01 * s, 0.005 * s);
        fclose(f);
    }
}

static int count_in(const char *path, const char *needle) {
    char *t = e2e_slurp(path);
    int n = 0;
    for (const char *q = t; q && (q = strstr(q, needle)); q += strlen(needle)) n++;
    free(t);
    return n;
}

static int lines_in(const char *path) { return count_in(path, "\n"); }

static void test_plot(void) {
    char a[256], b[256], png[256], svg[256], out[256], err[256];
    snprintf(a, sizeof a, "%s/plot_sync", g_dir);
    snprintf(b, sizeof b, "%s/plot_async", g_dir);
    write_fixture(a, 40, 0.01, 0, 1);
    write_fixture(b, 30, 0.02, 1, 0);
    snprintf(png, sizeof png, "%s/curves.png", g_dir);
    snprintf(svg, sizeof svg, "%s/curves.svg", g_dir);
    snprintf(out, sizeof out, "%s/plot.out", g_dir);
    snprintf(err, sizeof err, "%s/plot.err", g_dir);

    const char *pa[] = {"plot", a, b, "-o", png, NULL};
    CU_ASSERT_EQUAL(run_cmd(out, err, pa, 60), 0);
    CU_ASSERT_EQUAL(count_in(err, "torn last line skipped"), 1);
    CU_ASSERT(e2e_contains(err, "plot_async/metrics.jsonl: torn last line skipped"));
    FILE *f = fopen(png, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    unsigned char h[24];
    CU_ASSERT_EQUAL_FATAL(fread(h, 1, sizeof h, f), sizeof h);
    fclose(f);
    CU_ASSERT_EQUAL(memcmp(h, "\x89PNG\r\n\x1a\n", 8), 0);
    CU_ASSERT_EQUAL(memcmp(h + 12, "IHDR", 4), 0);
    unsigned w = (unsigned)h[16] << 24 | (unsigned)h[17] << 16 | (unsigned)h[18] << 8 | h[19];
    unsigned ht = (unsigned)h[20] << 24 | (unsigned)h[21] << 16 | (unsigned)h[22] << 8 | h[23];
    /* the defaults these runs have: reward/mean, pass_rate, eval/pass_rate_greedy, eval/pass_rate_sampled,
     * kl: five panels, two columns of 560, three rows of 340 */
    CU_ASSERT_EQUAL(w, 1120u);
    CU_ASSERT_EQUAL(ht, 1020u);
    CU_ASSERT(file_size(png) > 20000);
    CU_ASSERT(e2e_contains(err, "2 runs, 5 metrics"));

    const char *ps[] = {"plot", a, b, "-o", svg, "--metric", "reward/mean", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, err, ps, 60), 0);
    char script[1200], cmd[2400], log[300];
    test_source_path("tests/oracle/plot_svg_check.py", script, sizeof script);
    snprintf(log, sizeof log, "%s/svg_check.out", g_dir);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s plot_sync:40 plot_async:30 > %s 2>&1", script, svg, log);
    int st = system(cmd);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CU_ASSERT(e2e_contains(log, "plot_svg_check: ok 2 runs"));
    /* the held-out figure from eval.jsonl: one run has it (4 points) */
    const char *pe[] = {"plot", a, b, "-o", svg, "--metric", "eval/pass_rate_sampled", "--x", "wall", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, err, pe, 60), 0);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s plot_sync:4 > %s 2>&1", script, svg, log);
    st = system(cmd);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* a smoothed curve keeps its points */
    const char *pm[] = {"plot", a, b, "-o", svg, "--metric", "kl", "--smooth", "5", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, err, pm, 60), 0);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s plot_sync:40 plot_async:30 > %s 2>&1", script, svg, log);
    st = system(cmd);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CU_ASSERT(count_in(svg, "kl (mean of the last 5 points)") == 1);
    /* no temporary file is left beside the image */
    DIR *d = opendir(g_dir);
    struct dirent *e;
    int tmp = 0;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) tmp++;
    if (d) closedir(d);
    CU_ASSERT_EQUAL(tmp, 0);
}

/* One bad invocation: its status, one line on stderr containing `want`, and no file at `png`. */
static void bad_plot(const char *const *args, int want_status, const char *want, const char *png) {
    char out[256], err[256];
    snprintf(out, sizeof out, "%s/bad.out", g_dir);
    snprintf(err, sizeof err, "%s/bad.err", g_dir);
    CU_ASSERT_EQUAL(run_cmd(out, err, args, 60), want_status);
    if (!e2e_contains(err, want)) {
        char *t = e2e_slurp(err);
        printf("\n  want \"%s\" in: %s", want, t ? t : "");
        free(t);
        CU_FAIL("the error does not say what is wrong");
    }
    if (want_status == 1) CU_ASSERT_EQUAL(lines_in(err), 1);
    CU_ASSERT_EQUAL(access(png, F_OK), -1);
}

static void test_plot_errors(void) {
    char a[256], empty[256], broken[256], missing[256], png[256], p[512], outdir_png[256];
    snprintf(a, sizeof a, "%s/plot_ok", g_dir);
    write_fixture(a, 10, 0.01, 0, 0);
    snprintf(empty, sizeof empty, "%s/plot_empty", g_dir);
    mkdir(empty, 0755);
    snprintf(broken, sizeof broken, "%s/plot_broken", g_dir);
    write_fixture(broken, 5, 0.01, 0, 0);
    snprintf(p, sizeof p, "%s/metrics.jsonl", broken);
    write_text(p, "{\"step\":1,\"kl\":0}\n{\"step\":2,\"kl\":0}\nnot json\n{\"step\":4,\"kl\":0}\n");
    snprintf(missing, sizeof missing, "%s/plot_missing", g_dir);
    snprintf(png, sizeof png, "%s/bad.png", g_dir);
    snprintf(outdir_png, sizeof outdir_png, "%s/no/such/dir/bad.png", g_dir);

    const char *m1[] = {"plot", a, missing, "-o", png, NULL};
    bad_plot(m1, 1, "plot_missing: no such run directory", png);
    const char *m2[] = {"plot", empty, "-o", png, NULL};
    bad_plot(m2, 1, "plot_empty: no metrics.jsonl", png);
    const char *m3[] = {"plot", broken, "-o", png, NULL};
    bad_plot(m3, 1, "plot_broken/metrics.jsonl:3: not a JSON object", png);
    const char *m4[] = {"plot", a, "-o", png, "--metric", "reward/mean", "--metric", "no/such", NULL};
    bad_plot(m4, 2, "--metric no/such: no run has it", png);
    const char *m5[] = {"plot", a, "-o", outdir_png, NULL};
    bad_plot(m5, 1, "no/such/dir/bad.png", outdir_png);
    const char *u1[] = {"plot", a, "-o", "x.jpg", NULL};
    bad_plot(u1, 2, "-o must name a .png or .svg file", png);
    const char *u2[] = {"plot", a, NULL};
    bad_plot(u2, 2, "-o FILE.png|FILE.svg is required", png);
    const char *u3[] = {"plot", a, "-o", png, "--x", "time", NULL};
    bad_plot(u3, 2, "--x must be step or wall", png);
    const char *u5[] = {"plot", a, "-o", png, "--smooth", "0", NULL};
    bad_plot(u5, 2, "--smooth", png);
    const char *u4[] = {"plot", "-o", png, NULL};
    bad_plot(u4, 2, "give at least one RUN_DIR", png);
    /* more runs than a plot takes: the command's own limit, not the option parser's "unexpected argument"
     * (which is what 33 runs got when the limit was 32) */
    const char *many[136];
    int nm = 0;
    many[nm++] = "plot";
    many[nm++] = "-o";
    many[nm++] = png;
    for (int i = 0; i < 129; i++) many[nm++] = a;
    many[nm] = NULL;
    bad_plot(many, 2, "at most 128 runs", png);
    /* 40 runs (a benchmark's seeds x variants) are drawn */
    many[3 + 40] = NULL;
    char out40[256];
    snprintf(out40, sizeof out40, "%s/plot40.out", g_dir);
    CU_ASSERT_EQUAL(run_cmd(out40, NULL, many, 60), 0);
    CU_ASSERT_EQUAL(access(png, F_OK), 0);
    unlink(png);
    const char *h[] = {"plot", "--help", NULL};
    char out[256];
    snprintf(out, sizeof out, "%s/help.out", g_dir);
    CU_ASSERT_EQUAL(run_cmd(out, NULL, h, 30), 0);
    CU_ASSERT(e2e_contains(out, "usage: rlhf plot RUN_DIR..."));
}

void e2e_register_watch(void);
void e2e_register_watch(void) {
    CU_pSuite s = CU_add_suite("e2e_watch", suite_init, suite_cleanup);
    CU_add_test(s, "events_and_eval", test_events_and_eval);
    CU_add_test(s, "resume", test_resume);
    CU_add_test(s, "updater_restart", test_updater_restart);
    CU_add_test(s, "sampled_refusal", test_sampled_refusal);
    CU_add_test(s, "plot", test_plot);
    CU_add_test(s, "plot_errors", test_plot_errors);
}
