/* tests/e2e/test_e2e.c — the whole system as real processes: `rlhf run` starts a broker, two
 * generators and an updater (fork/exec of the rlhf binary, ZeroMQ over loopback TCP), on an easy
 * task a tiny random model learns in a few dozen steps (a completion containing a digit).
 *
 *   run_with_faults:  reward rises; kill -9 of a generator -> restarted, run completes; kill -9 of the
 *                     updater -> resumes from its checkpoint, metrics continue step by step; kill -9 of
 *                     the broker -> restarted, peers reconnect; and no
 *                     accepted rollout is lost (every replay-log record at or below the highest finished
 *                     sequence number of its generator was trained on or counted as dropped);
 *   resume_after_sigint: SIGINT stops with a final checkpoint; --resume continues the step count and
 *                     the metrics; the prompt selector's metrics are in metrics.jsonl and its state
 *                     (RUN_DIR/selector_state.json) survives the resume (usage counts not reset);
 *   replay_deterministic: two `rlhf replay` of one log -> bit-identical checkpoints;
 *   damaged_log:      a bad length in a middle record of the log: `rlhf replay` refuses (or skips it with
 *                     --skip-corrupt), `--resume` stops naming the offset, `--resume --repair` keeps every
 *                     valid record;
 *   bad_input:        config errors name the JSON path before any process starts; a base checkpoint
 *                     that does not match model.arch; a replay log from another model;
 *   checks_before_start: a prompt too long for the context with generators.max_tokens (the first one,
 *                     with its length), a bad broker.dataset or broker.selector, a broker.max_staleness
 *                     the launcher would replace: refused, nothing created;
 *   relative_paths_resume: a config's relative paths are relative to its folder (started from another
 *                     directory), and --resume works from a third one; checkpoint.keep;
 *                     log.samples_every's samples.jsonl (rewards checked against the regex on the text). */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];

/* ---------------------------------------------------------------- helpers */

/* Starts `rlhf ARGS...` with stdout+stderr to log_path; returns the pid. */
static pid_t start(const char *log_path, const char *const *args) {
    test_proc_opts o = {.out = log_path, .err = log_path};
    return test_proc_spawn_args(g_rlhf, g_rlhf, args, &o);
}

static int run_cmd(const char *log_path, const char *const *args, double timeout) {
    return test_proc_wait(start(log_path, args), timeout);
}

static char *slurp(const char *path) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return NULL;
    return d;
}

static int file_contains(const char *path, const char *needle) {
    char *d = slurp(path);
    int r = d && strstr(d, needle);
    free(d);
    return r;
}

/* The child of `parent` whose command line contains every one of `words`. */
static pid_t find_child(pid_t parent, const char *w1, const char *w2) {
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
        char comm[256], state;
        int ok = fscanf(f, "%*d %255s %c %d", comm, &state, &ppid) == 3;
        fclose(f);
        if (!ok || ppid != parent) continue;
        snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
        int fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        for (ssize_t i = 0; i < n; i++)
            if (!buf[i]) buf[i] = ' ';
        buf[n] = 0;
        if (strstr(buf, w1) && (!w2 || strstr(buf, w2))) found = pid;
    }
    if (d) closedir(d);
    return found;
}

typedef struct metrics {
    int n;
    long step[4096];
    double reward[4096];
    double wall[4096];
} metrics;

static void read_metrics(const char *run_dir, metrics *m) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    m->n = 0;
    char *d = slurp(p);
    if (!d) return;
    char *save = NULL;
    for (char *line = strtok_r(d, "\n", &save); line && m->n < 4096; line = strtok_r(NULL, "\n", &save)) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (!j) continue;
        m->step[m->n] = (long)json_integer_value(json_object_get(j, "step"));
        m->reward[m->n] = json_number_value(json_object_get(j, "reward/mean"));
        m->wall[m->n] = json_number_value(json_object_get(j, "wall_s"));
        m->n++;
        json_decref(j);
    }
    free(d);
}

static long last_step(const char *run_dir) {
    metrics *m = malloc(sizeof *m);
    read_metrics(run_dir, m);
    long s = m->n ? m->step[m->n - 1] : 0;
    free(m);
    return s;
}

/* The value of `key` in the metrics record of `step` (the last such record), or NAN. */
static double metric_at(const char *run_dir, long step, const char *key) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    char *d = slurp(p);
    double v = NAN;
    char *save = NULL;
    for (char *line = d ? strtok_r(d, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        if (j && json_integer_value(json_object_get(j, "step")) == step) {
            json_t *x = json_object_get(j, key);
            v = json_is_number(x) ? json_number_value(x) : NAN;
        }
        json_decref(j);
    }
    free(d);
    return v;
}

/* A top-level integer of RUN_DIR/selector_state.json, or -1. */
static long selector_state_int(const char *run_dir, const char *key) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", run_dir, BROKER_SELECTOR_STATE);
    json_t *j = json_load_file(p, 0, NULL);
    json_t *x = json_object_get(j, key);
    long v = json_is_integer(x) ? (long)json_integer_value(x) : -1;
    json_decref(j);
    return v;
}

static int wait_step(const char *run_dir, long step, pid_t launcher, double timeout) {
    double t0 = rlhf_now();
    while (rlhf_now() - t0 < timeout) {
        if (last_step(run_dir) >= step) return 1;
        if (waitpid(launcher, NULL, WNOHANG) == launcher) return 0;
        usleep(20000);
    }
    return 0;
}

/* Stops a launcher left running by a failed check (SIGTERM: it stops its children). */
static void abandon(pid_t launcher) { test_proc_stop(launcher, 30); }
#define REQUIRE(cond, launcher)                                                                        \
    do {                                                                                               \
        if (!(cond)) {                                                                                 \
            CU_FAIL(#cond);                                                                            \
            abandon(launcher);                                                                         \
            return;                                                                                    \
        }                                                                                              \
    } while (0)

/* A run config for the easy task; `name` is the run dir under g_dir. */
static void write_config(const char *path, const char *name, int steps, const char *extra_rl) {
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"name\":\"%s\",\"run_dir\":\"%s/%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":%d,\"checkpoint_every\":2,\"seed\":5%s},\n"
             " \"generators\":{\"count\":2,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             name, g_dir, name, g_dir, steps, extra_rl ? extra_rl : "");
    write_text(path, doc);
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_e2e_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    /* the rlhf binary of this build: BUILD/tests/test_e2e -> BUILD/bin/rlhf */
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf)) return -1;
    if (access(g_rlhf, X_OK) != 0) return -1;
    return e2e_write_prompts(g_dir);
}

/* Removes the scratch directory when every check passed (kept for a look otherwise). */
static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* 1 when the run's replay log holds a group whose generator id starts with `prefix`. */
static int log_has_group_of(const char *run_dir, const char *prefix) {
    char p[512];
    snprintf(p, sizeof p, "%s/rollouts.log", run_dir);
    replay_reader *r = NULL;
    if (access(p, F_OK) != 0 || replay_reader_open(&r, p, NULL) != 0) return 0;
    wire_rollout_group g;
    replay_pos pos;
    memset(&g, 0, sizeof g);
    int found = 0;
    while (!found && replay_reader_next(r, &g, &pos, NULL) == 1) {
        found = g.generator_id && !strncmp(g.generator_id, prefix, strlen(prefix));
        wire_rollout_group_free(&g);
    }
    replay_reader_close(&r);
    return found;
}

/* ---------------------------------------------------------------- tests */

static void test_run_with_faults(void) {
    char cfg[256], run[256], log[256], p[512];
    snprintf(cfg, sizeof cfg, "%s/faults.json", g_dir);
    snprintf(run, sizeof run, "%s/faults", g_dir);
    snprintf(log, sizeof log, "%s/faults.out", g_dir);
    /* a generous staleness bound: nothing is dropped as stale, so every accepted group must be
     * trained on or still be waiting when the run ends */
    write_config(cfg, "faults", 40, ",\"max_staleness\":1000");
    const char *args[] = {"run", cfg, "--quiet", NULL};
    pid_t launcher = start(log, args);
    REQUIRE(wait_step(run, 3, launcher, 60), launcher);
    /* generator-1 alone can make the first steps on a loaded machine: kill generator-0 only once the
     * broker accepted a group of it, so that both of its incarnations have groups to account for */
    for (double t0 = test_proc_now(); !log_has_group_of(run, "generator-0.") && test_proc_now() - t0 < 60;)
        usleep(50000);
    pid_t gen0 = find_child(launcher, "generator", "--id 0");
    REQUIRE(gen0 > 0, launcher);
    kill(gen0, SIGKILL);
    REQUIRE(wait_step(run, 9, launcher, 60), launcher);
    CU_ASSERT(latest_ckpt(run) >= 2);
    pid_t upd = find_child(launcher, "updater", NULL);
    REQUIRE(upd > 0, launcher);
    kill(upd, SIGKILL);
    /* and the broker: accepted groups it held are in the replay log, where the updater finds them */
    REQUIRE(wait_step(run, 20, launcher, 60), launcher);
    pid_t brk = find_child(launcher, "broker", NULL);
    REQUIRE(brk > 0, launcher);
    kill(brk, SIGKILL);
    int rc = test_proc_wait(launcher, 120);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0) {
        char *out = slurp(log);
        fprintf(stderr, "\nlauncher output:\n%s\n", out ? out : "(none)");
        free(out);
    }
    /* supervision happened and the processes say so */
    CU_ASSERT(file_contains(log, "generator-0 (pid"));
    CU_ASSERT(file_contains(log, "updater (pid"));
    CU_ASSERT(file_contains(log, "broker (pid"));
    snprintf(p, sizeof p, "%s/logs/updater.log", run);
    CU_ASSERT(file_contains(p, "resumed at step"));
    snprintf(p, sizeof p, "%s/logs/generator-0.log", run);
    char *glog = slurp(p);
    int connects = 0;
    for (char *s = glog; s && (s = strstr(s, ": connected to ")); s++) connects++; /* ipc:// or tcp:// */
    free(glog);
    CU_ASSERT_EQUAL(connects, 2);
    /* metrics: every step exactly once, in order, despite the updater's restart */
    metrics *m = malloc(sizeof *m);
    read_metrics(run, m);
    CU_ASSERT_EQUAL(m->n, 40);
    for (int i = 0; i < m->n; i++) CU_ASSERT_EQUAL(m->step[i], i + 1);
    /* reward rises: a random model rarely writes a digit, the trained one nearly always */
    double first = 0, last = 0;
    for (int i = 0; i < 3 && i < m->n; i++) first += m->reward[i] / 3;
    for (int i = m->n - 5; i < m->n; i++)
        if (i >= 0) last += m->reward[i] / 5;
    CU_ASSERT(last > first + 0.3);
    CU_ASSERT(last > 0.7);
    free(m);
    CU_ASSERT_EQUAL(latest_ckpt(run), 40);

    /* no accepted rollout lost: read the replay log, the updater's finished list, and the final
     * checkpoint's highest finished seq per generator */
    snprintf(p, sizeof p, "%s/checkpoints/step_40/state.json", run);
    json_error_t je;
    json_t *state = json_load_file(p, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(state);
    json_t *consumed_max = json_object_get(json_object_get(state, "extra"), "consumed");
    CU_ASSERT_FATAL(json_object_size(consumed_max) >= 3); /* generator-0 twice (restart), generator-1 */
    snprintf(p, sizeof p, "%s/consumed.log", run);
    char *cons = slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cons);
    json_t *finished = json_object(); /* "gen seq" -> true */
    char *save = NULL;
    for (char *line = strtok_r(cons, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char gid[128];
        unsigned long long seq;
        if (sscanf(line, "%127s %llu", gid, &seq) == 2) {
            char key[200];
            snprintf(key, sizeof key, "%s %llu", gid, seq);
            json_object_set_new(finished, key, json_true());
        }
    }
    free(cons);
    snprintf(p, sizeof p, "%s/rollouts.log", run);
    replay_reader *rr = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &err), 0);
    long records = 0, below = 0, lost = 0;
    for (;;) {
        wire_rollout_group g;
        memset(&g, 0, sizeof g);
        replay_pos pos;
        int r = replay_reader_next(rr, &g, &pos, &err);
        CU_ASSERT(r >= 0);
        if (r <= 0) break;
        records++;
        json_t *mx = json_object_get(consumed_max, g.generator_id);
        if (mx && g.seq <= (uint64_t)json_integer_value(mx)) {
            below++;
            char key[200];
            snprintf(key, sizeof key, "%s %llu", g.generator_id, (unsigned long long)g.seq);
            if (!json_object_get(finished, key)) lost++;
        }
        wire_rollout_group_free(&g);
    }
    replay_reader_close(&rr);
    CU_ASSERT(records >= 40 * 8);
    CU_ASSERT(below >= 40 * 8);
    CU_ASSERT_EQUAL(lost, 0);
    json_decref(finished);
    json_decref(state);
    snprintf(p, sizeof p, "%s/logs/updater.log", run);
    char *ulog = slurp(p);
    long recovered = -1;
    /* the restarted incarnation's line (every incarnation reports one) */
    for (char *rp = ulog; rp && (rp = strstr(rp, "updater: recovered ")); rp += 19) recovered = atol(rp + 19);
    free(ulog);
    /* the killed updater held groups it had not finished: the restart took them from the log */
    CU_ASSERT(recovered > 0);
}

static void test_resume_after_sigint(void) {
    char cfg[256], run[256], log[256];
    snprintf(cfg, sizeof cfg, "%s/resume.json", g_dir);
    snprintf(run, sizeof run, "%s/resume", g_dir);
    snprintf(log, sizeof log, "%s/resume.out", g_dir);
    write_config(cfg, "resume", 14, NULL);
    /* this run's generators sample with bf16 weights (the updater trains fp32) */
    const char *args[] = {"run", cfg, "--quiet", "--set", "generators.weights=\"bf16\"", NULL};
    pid_t launcher = start(log, args);
    REQUIRE(wait_step(run, 4, launcher, 60), launcher);
    kill(launcher, SIGINT);
    CU_ASSERT_EQUAL(test_proc_wait(launcher, 60), 0);
    CU_ASSERT(file_contains(log, "continue with: rlhf run --resume"));
    int stopped = latest_ckpt(run);
    long stopped_metrics = last_step(run);
    CU_ASSERT(stopped >= 4 && stopped < 14);
    CU_ASSERT_EQUAL(stopped_metrics, stopped); /* the final checkpoint is the last step logged */
    /* the selector's metrics are in every step's record, and its state was saved at shutdown */
    for (long st = 1; st <= stopped; st++) {
        CU_ASSERT(metric_at(run, st, "prompts/groups") >= 1);
        CU_ASSERT(isfinite(metric_at(run, st, "prompts/zero_spread_share")));
        CU_ASSERT(isfinite(metric_at(run, st, "prompts/mean_cohesion")));
        CU_ASSERT(metric_at(run, st, "prompts/sampling_entropy") > 0);
    }
    long served_before = selector_state_int(run, "served"), updates_before = selector_state_int(run, "updates");
    CU_ASSERT(served_before >= 8L * stopped); /* every trained group was served first */
    CU_ASSERT(updates_before >= stopped);
    CU_ASSERT(metric_at(run, stopped, "prompts/groups") <= updates_before);
    /* starting it again without --resume is refused: the run dir holds a run */
    CU_ASSERT_NOT_EQUAL(run_cmd(log, args, 30), 0);
    CU_ASSERT(file_contains(log, "--resume"));
    const char *rargs[] = {"run", "--resume", run, "--quiet", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, rargs, 90), 0);
    metrics *m = malloc(sizeof *m);
    read_metrics(run, m);
    CU_ASSERT_EQUAL(m->n, 14);
    for (int i = 0; i < m->n; i++) {
        CU_ASSERT_EQUAL(m->step[i], i + 1);
        if (i > 0) CU_ASSERT(m->wall[i] >= m->wall[i - 1]); /* wall_s continues across the resume */
    }
    free(m);
    CU_ASSERT_EQUAL(latest_ckpt(run), 14);
    /* the resumed broker continued the selector's statistics instead of starting them over: the
     * first resumed step already counts every group fed back before the stop */
    char blog_path[512];
    snprintf(blog_path, sizeof blog_path, "%s/logs/broker.log", run);
    CU_ASSERT(file_contains(blog_path, "selector state restored from"));
    snprintf(blog_path, sizeof blog_path, "%s/logs/generator-0.log", run);
    CU_ASSERT(file_contains(blog_path, "bf16 weights")); /* kept across the resume (config.json) */
    CU_ASSERT(metric_at(run, stopped + 1, "prompts/groups") > updates_before);
    CU_ASSERT(selector_state_int(run, "served") > served_before);
    CU_ASSERT(selector_state_int(run, "updates") >= updates_before + 8L * (14 - stopped));
}

static int files_equal(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int eq = rlhf_read_file(a, &x, &nx, NULL) == 0 && rlhf_read_file(b, &y, &ny, NULL) == 0 && nx == ny &&
             memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return eq;
}

static void test_replay_deterministic(void) {
    char cfg[256], logf[256], out1[256], out2[256], log[256], a[512], b[512];
    snprintf(cfg, sizeof cfg, "%s/faults/config.json", g_dir);
    snprintf(logf, sizeof logf, "%s/faults/rollouts.log", g_dir);
    snprintf(out1, sizeof out1, "%s/replay1", g_dir);
    snprintf(out2, sizeof out2, "%s/replay2", g_dir);
    snprintf(log, sizeof log, "%s/replay.out", g_dir);
    CU_ASSERT_FATAL(access(logf, F_OK) == 0);
    const char *r1[] = {"replay", logf, "--config", cfg, "--out", out1, "--threads", "2", "--set", "rl.steps=12", NULL};
    const char *r2[] = {"replay", logf, "--config", cfg, "--out", out2, "--threads", "2", "--set", "rl.steps=12", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(log, r1, 60), 0);
    CU_ASSERT_EQUAL_FATAL(run_cmd(log, r2, 60), 0);
    snprintf(a, sizeof a, "%s/checkpoints/step_12/model.safetensors", out1);
    snprintf(b, sizeof b, "%s/checkpoints/step_12/model.safetensors", out2);
    CU_ASSERT(access(a, F_OK) == 0);
    CU_ASSERT(files_equal(a, b));
    snprintf(a, sizeof a, "%s/checkpoints/step_12/optimizer.safetensors", out1);
    snprintf(b, sizeof b, "%s/checkpoints/step_12/optimizer.safetensors", out2);
    CU_ASSERT(files_equal(a, b));
    /* and the weights did move away from the base */
    snprintf(a, sizeof a, "%s/checkpoints/step_12/model.safetensors", out1);
    snprintf(b, sizeof b, "%s/faults/base.safetensors", g_dir);
    CU_ASSERT(!files_equal(a, b));
    CU_ASSERT_EQUAL(last_step(out1), 12);
}

/* Reads a replay log skipping damage: the records' "generator:seq" keys into keys (n returned), the
 * number of damaged stretches into *damaged. */
static int log_keys(const char *path, char keys[][48], int cap, size_t *damaged) {
    replay_reader *r;
    *damaged = 0;
    if (replay_reader_open(&r, path, NULL) != 0) return -1;
    replay_reader_skip_corrupt(r, 1);
    wire_rollout_group g;
    int n = 0;
    while (n < cap && replay_reader_next(r, &g, NULL, NULL) == 1) {
        snprintf(keys[n++], 48, "%s:%llu", g.generator_id, (unsigned long long)g.seq);
        wire_rollout_group_free(&g);
    }
    *damaged = replay_reader_damage(r, NULL);
    replay_reader_close(&r);
    return n;
}

/* A bad length field in a middle record of a run's replay log (finding: it was taken for a torn tail,
 * `rlhf replay` trained on half the log and exited 0, a restarted broker truncated the rest).
 * Now: `rlhf replay` lists it and exits 1, or trains on every valid record with --skip-corrupt;
 * `rlhf run --resume` stops (environment class) naming the offset, changes nothing and keeps a copy;
 * `--resume --repair` continues with every valid record still in the log. */
static void test_damaged_log(void) {
    char run[256], logf[512], cfg[256], out[256], log[256], cmd[700];
    snprintf(run, sizeof run, "%s/damaged", g_dir);
    snprintf(logf, sizeof logf, "%s/rollouts.log", run);
    snprintf(cfg, sizeof cfg, "%s/faults/config.json", g_dir);
    snprintf(out, sizeof out, "%s/replay_damaged", g_dir);
    snprintf(log, sizeof log, "%s/damaged.out", g_dir);
    snprintf(cmd, sizeof cmd, "cp -a '%s/faults' '%s' && rm -f '%s/run.lock'", g_dir, run, run);
    CU_ASSERT_FATAL(system(cmd) == 0);
    /* positions of the records; damage the length of the middle one */
    replay_reader *r;
    CU_ASSERT_FATAL(replay_reader_open(&r, logf, NULL) == 0);
    replay_pos pos[4096];
    int n = 0;
    wire_rollout_group g;
    while (n < 4096 && replay_reader_next(r, &g, &pos[n], NULL) == 1) {
        wire_rollout_group_free(&g);
        n++;
    }
    replay_reader_close(&r);
    CU_ASSERT_FATAL(n >= 20 && pos[n - 1].segment == 0);
    static char before[4096][48], after[4096][48];
    size_t damaged;
    CU_ASSERT_EQUAL_FATAL(log_keys(logf, before, 4096, &damaged), n);
    int mid = n / 2;
    int fd = open(logf, O_RDWR);
    uint8_t b = 0x7f;
    CU_ASSERT_EQUAL(pwrite(fd, &b, 1, (off_t)pos[mid].offset + 6), 1); /* length field, third byte */
    close(fd);
    char *damaged_bytes = slurp(logf);
    /* rlhf replay: refused with the list, or all valid records with --skip-corrupt */
    char want[128];
    snprintf(want, sizeof want, "1 damaged stretch(es)");
    const char *r1[] = {"replay", logf, "--config", cfg, "--out", out, "--set", "rl.steps=2", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, r1, 60), 1);
    CU_ASSERT(file_contains(log, want));
    snprintf(want, sizeof want, "0:%llu", (unsigned long long)pos[mid].offset);
    CU_ASSERT(file_contains(log, want));
    const char *r2[] = {"replay", logf, "--config", cfg, "--out", out, "--set", "rl.steps=2", "--skip-corrupt", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, r2, 60), 0);
    snprintf(want, sizeof want, "training on the %d valid records", n - 1);
    CU_ASSERT(file_contains(log, want));
    /* a resume over it: stopped, nothing changed, a copy kept */
    int last = latest_ckpt(run);
    char steps[64];
    snprintf(steps, sizeof steps, "rl.steps=%d", last + 2);
    const char *a1[] = {"run", "--resume", run, "--quiet", "--set", steps, NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a1, 90), RLHF_EXIT_ENV);
    snprintf(want, sizeof want, "damaged record at offset %llu", (unsigned long long)pos[mid].offset);
    char blog[512];
    snprintf(blog, sizeof blog, "%s/logs/broker.log", run);
    CU_ASSERT(file_contains(blog, want));
    CU_ASSERT(file_contains(blog, "--repair"));
    char *now = slurp(logf);
    CU_ASSERT(now && damaged_bytes && memcmp(now, damaged_bytes, (size_t)pos[n - 1].offset) == 0);
    free(now);
    snprintf(cmd, sizeof cmd, "ls '%s'.damaged-* >/dev/null 2>&1", logf);
    CU_ASSERT(system(cmd) == 0);
    /* --repair: continues; every record but the damaged one is still there */
    const char *a2[] = {"run", "--resume", run, "--quiet", "--repair", "--set", steps, NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a2, 120), 0);
    CU_ASSERT_EQUAL(latest_ckpt(run), last + 2);
    CU_ASSERT(file_contains(blog, "repaired 1 segment(s)"));
    int m = log_keys(logf, after, 4096, &damaged);
    CU_ASSERT_EQUAL(damaged, 0);
    CU_ASSERT(m >= n - 1);
    int missing = 0;
    for (int i = 0; i < n; i++) {
        if (i == mid) continue;
        int found = 0;
        for (int j = 0; j < m && !found; j++) found = strcmp(before[i], after[j]) == 0;
        missing += !found;
    }
    CU_ASSERT_EQUAL(missing, 0);
    free(damaged_bytes);
}

static void test_bad_input(void) {
    char cfg[256], log[256], p[512];
    snprintf(cfg, sizeof cfg, "%s/bad.json", g_dir);
    snprintf(log, sizeof log, "%s/bad.out", g_dir);
    /* a bad range: named by JSON path, nothing started */
    write_config(cfg, "bad", 10, ",\"max_staleness\":-1");
    const char *args[] = {"run", cfg, "--quiet", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, args, 30), 0);
    CU_ASSERT(file_contains(log, "rl.max_staleness: must be an integer >= 0"));
    snprintf(p, sizeof p, "%s/bad", g_dir);
    CU_ASSERT(access(p, F_OK) != 0); /* nothing created */
    /* an unknown key and a wrong type through --set */
    write_config(cfg, "bad", 10, NULL);
    const char *a2[] = {"run", cfg, "--set", "generators.colour=1", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a2, 30), 0);
    CU_ASSERT(file_contains(log, "generators.colour: unknown key"));
    const char *a3[] = {"run", cfg, "--set", "rl.k=\"many\"", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a3, 30), 0);
    CU_ASSERT(file_contains(log, "rl.k: must be an integer"));
    const char *a3c[] = {"run", cfg, "--set", "generators.weights=\"fp16\"", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a3c, 30), 0);
    CU_ASSERT(file_contains(log, "bad.json: generators.weights"));
    CU_ASSERT(file_contains(log, "\"fp16\""));
    /* a reward source the pipeline does not know, named by file and JSON path */
    const char *a3b[] = {"run", cfg, "--set", "rewards=[{\"type\":\"no_such_reward\"}]", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a3b, 30), 0);
    CU_ASSERT(file_contains(log, "bad.json: rewards[0].type"));
    CU_ASSERT(access(p, F_OK) != 0);
    /* a base checkpoint that does not match model.arch */
    char base[512], set[700];
    snprintf(base, sizeof base, "%s/faults/base.safetensors", g_dir);
    snprintf(set, sizeof set, "model.base_checkpoint=%s", base);
    const char *a4[] = {"run", cfg, "--set", set, "--set", "model.arch.dim=64", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a4, 30), 0);
    CU_ASSERT(file_contains(log, "dim"));
    CU_ASSERT(file_contains(log, base));
    /* a replay log recorded with another model: vocabulary too small for its token ids */
    char logf[256], fcfg[256], out[256];
    snprintf(logf, sizeof logf, "%s/faults/rollouts.log", g_dir);
    snprintf(fcfg, sizeof fcfg, "%s/faults/config.json", g_dir);
    snprintf(out, sizeof out, "%s/replay_bad", g_dir);
    const char *a5[] = {"replay", logf, "--config", fcfg, "--out", out, "--set", "model.base_checkpoint=",
                        "--set", "model.arch.max_seq_len=6", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a5, 30), 0);
    CU_ASSERT(file_contains(log, "the log was sampled from another model than this config's base"));
    /* told to go on anyway, the records themselves still do not fit */
    const char *a5b[] = {"replay", logf, "--config", fcfg, "--out", out, "--set", "model.base_checkpoint=",
                         "--set", "model.arch.max_seq_len=6", "--allow-other-model", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, a5b, 30), 0);
    CU_ASSERT(file_contains(log, "a log from another model?"));
    CU_ASSERT(file_contains(log, "record 0"));
}

/* Checks before start: each refused with one line naming the key, before any run directory exists. */
static void test_checks_before_start(void) {
    char cfg[256], log[256], p[512];
    snprintf(cfg, sizeof cfg, "%s/check.json", g_dir);
    snprintf(log, sizeof log, "%s/check.out", g_dir);
    snprintf(p, sizeof p, "%s/check", g_dir);
    write_config(cfg, "check", 10, NULL);
    /* context 16: "qN:" is BOS + 3 bytes = 4 tokens, 4 + 12 fits; "q10:" is 5 tokens, 5 + 12 = 17 does not */
    const char *a1[] = {"run", cfg, "--quiet", "--set", "generators.max_tokens=12", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a1, 30), RLHF_EXIT_CONFIG); /* status class */
    CU_ASSERT(file_contains(log, "check.json: task.train"));
    CU_ASSERT(file_contains(log, "prompt \"p10\" (line 11) is 5 tokens; with generators.max_tokens 12 that is 17, "
                                 "more than the model's context of 16 positions"));
    CU_ASSERT(access(p, F_OK) != 0);
    const char *a2[] = {"run", cfg, "--quiet", "--set", "broker.dataset=no_such.jsonl", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a2, 30), RLHF_EXIT_ENV); /* status class */
    CU_ASSERT(file_contains(log, "broker.dataset"));
    CU_ASSERT(file_contains(log, "no_such.jsonl"));
    const char *a3[] = {"run", cfg, "--quiet", "--set", "broker.selector={\"policy\":\"nope\"}", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a3, 30), RLHF_EXIT_CONFIG); /* status class */
    CU_ASSERT(file_contains(log, "check.json: broker.selector"));
    const char *a4[] = {"run", cfg, "--quiet", "--set", "broker.max_staleness=2", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a4, 30), RLHF_EXIT_CONFIG); /* status class */
    CU_ASSERT(file_contains(log, "check.json: broker.max_staleness: the broker always uses rl.max_staleness (4)"));
    const char *a5[] = {"run", cfg, "--quiet", "--set", "rl.lr=abc", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a5, 30), RLHF_EXIT_CONFIG); /* status class */
    CU_ASSERT(file_contains(log, "--set rl.lr: must be a number, got 'abc'"));
    CU_ASSERT(access(p, F_OK) != 0);
}

/* A config whose paths are relative to its own folder, started from another directory; then --resume
 * from a third. The sync-mode replacement of rl.max_staleness is printed with the value used. */
static void test_relative_paths_resume(void) {
    char sub[128], cfg[256], log[256], run_dir[256], cwd[1024];
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof cwd));
    snprintf(sub, sizeof sub, "%s/cfgdir", g_dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0755), 0);
    snprintf(cfg, sizeof cfg, "%s/rel.json", sub);
    snprintf(log, sizeof log, "%s/rel.out", g_dir);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, "{\"name\":\"rel\",\"run_dir\":\"../relrun\",\"mode\":\"sync\",\n"
                                          " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,"
                                          "\"vocab_size\":259,\"max_seq_len\":16},\"threads\":1},\n"
                                          " \"task\":{\"train\":\"../prompts.jsonl\"},\n"
                                          " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
                                          " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"steps\":3,\"checkpoint_every\":1,"
                                          "\"max_staleness\":3},\n"
                                          " \"log\":{\"samples_every\":2},\n"
                                          " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4}}\n"),
                          0);
    snprintf(run_dir, sizeof run_dir, "%s/relrun", g_dir);
    CU_ASSERT_EQUAL_FATAL(chdir("/"), 0); /* neither the config's folder nor its parent */
    const char *a1[] = {"run", cfg, NULL};
    int rc1 = run_cmd(log, a1, 120);
    CU_ASSERT_EQUAL(rc1, 0);
    CU_ASSERT(file_contains(log, "rl.max_staleness: 3 is replaced by 0 in sync mode"));
    CU_ASSERT(file_contains(log, "[rlhf run] sample at step 2, prompt p")); /* the terminal's short line */
    CU_ASSERT_EQUAL(latest_ckpt(run_dir), 3);
    /* checkpoint.keep's default keeps more than the last two */
    char ck[400];
    for (int i = 1; i <= 3; i++) {
        snprintf(ck, sizeof ck, "%s/checkpoints/step_%d/model.safetensors", run_dir, i);
        CU_ASSERT(access(ck, F_OK) == 0);
    }
    /* the saved config names the prompts by an absolute path */
    char saved[600], want[600];
    snprintf(saved, sizeof saved, "%s/config.json", run_dir);
    snprintf(want, sizeof want, "\"train\": \"%s/prompts.jsonl\"", g_dir); /* "cfgdir/.." collapsed */
    CU_ASSERT(file_contains(saved, want));
    CU_ASSERT_EQUAL_FATAL(chdir(sub), 0);
    const char *a2[] = {"run", "--resume", "../relrun", "--quiet", "--set", "rl.steps=4", "--set", "checkpoint.keep=2",
                        NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a2, 120), 0);
    CU_ASSERT_EQUAL(latest_ckpt(run_dir), 4);
    for (int i = 1; i <= 4; i++) {
        snprintf(ck, sizeof ck, "%s/checkpoints/step_%d", run_dir, i);
        CU_ASSERT_EQUAL(access(ck, F_OK) == 0, i >= 3); /* checkpoint.keep=2: the two newest */
    }
    CU_ASSERT_EQUAL_FATAL(chdir(cwd), 0);
    /* log.samples_every=2: a group of steps 2 and 4, each completion with the digit source's reward,
     * which must be what the regex [0-9] says of the text recorded */
    char sp[300];
    snprintf(sp, sizeof sp, "%s/samples.jsonl", run_dir);
    char *txt = slurp(sp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    int n_rec = 0, n_samples = 0;
    char *save = NULL;
    for (char *line = strtok_r(txt, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *r = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "step")), 2 * (n_rec + 1));
        CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(r, "prompt")), "q"));
        json_t *arr = json_object_get(r, "samples");
        CU_ASSERT_EQUAL(json_array_size(arr), 4);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            json_t *one = json_array_get(arr, i);
            const char *text = json_string_value(json_object_get(one, "text"));
            CU_ASSERT_PTR_NOT_NULL_FATAL(text);
            double want = strpbrk(text, "0123456789") ? 1.0 : 0.0;
            CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(json_object_get(one, "rewards"), "digit")), want,
                                   1e-6);
            CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(one, "reward")), want, 1e-6);
            n_samples++;
        }
        json_decref(r);
        n_rec++;
    }
    free(txt);
    CU_ASSERT_EQUAL(n_rec, 2);
    CU_ASSERT_EQUAL(n_samples, 8);
}

void e2e_register_generation(void); /* tests/e2e/test_generation.c */
void e2e_register_hf_run(void);     /* tests/e2e/test_hf_run.c */
void e2e_register_supervision(void); /* tests/e2e/test_supervision.c */
void e2e_register_lock(void);       /* tests/e2e/test_lock.c */
void e2e_register_cli(void);        /* tests/e2e/test_cli.c */
void e2e_register_eval_during(void); /* tests/e2e/test_eval_during.c */
void e2e_register_replay_tool(void); /* tests/e2e/test_replay_tool.c */
void e2e_register_dist_run(void);    /* tests/e2e/test_dist_run.c */
void e2e_register_remote_gen(void);  /* tests/e2e/test_remote_gen.c */
void e2e_register_multihost(void);   /* tests/e2e/test_multihost.c */
int register_plugin_faults_suite(void); /* tests/e2e/test_plugin_faults.c */
void e2e_register_diskfull(void);   /* tests/e2e/test_diskfull.c */
void e2e_register_rl_recipes(void); /* tests/e2e/test_rl_recipes.c */
void e2e_register_watch(void);      /* tests/e2e/test_watch.c */
void e2e_register_lora(void);       /* tests/e2e/test_lora_run.c */

int register_suites(void) {
    e2e_register_generation();
    e2e_register_hf_run();
    e2e_register_supervision();
    e2e_register_lock();
    e2e_register_cli();
    e2e_register_eval_during();
    e2e_register_replay_tool();
    e2e_register_dist_run();
    e2e_register_remote_gen();
    e2e_register_multihost();
    register_plugin_faults_suite();
    e2e_register_diskfull();
    e2e_register_rl_recipes();
    e2e_register_watch();
    e2e_register_lora();
    CU_pSuite s = CU_add_suite("e2e", suite_init, suite_cleanup);
    CU_add_test(s, "run_with_faults", test_run_with_faults);
    CU_add_test(s, "resume_after_sigint", test_resume_after_sigint);
    CU_add_test(s, "replay_deterministic", test_replay_deterministic);
    CU_add_test(s, "damaged_log", test_damaged_log);
    CU_add_test(s, "bad_input", test_bad_input);
    CU_add_test(s, "checks_before_start", test_checks_before_start);
    CU_add_test(s, "relative_paths_resume", test_relative_paths_resume);
    return 0;
}
