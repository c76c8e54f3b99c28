/* tests/e2e/test_diskfull.c — a run whose directory fills up or turns read-only, with real processes on
 * a real filesystem: the run directory is a small tmpfs this test mounts (it runs as root; a failed
 * mount is a failure, not a skip).
 *
 *   disk_full:  mid-run a filler file takes every free byte of the run's filesystem. Whichever process
 *               writes next (the broker's replay log, the updater's metrics or checkpoint, the
 *               selector state) fails with ENOSPC: the run stops with status 3 (environment) and the
 *               launcher names the file. Nothing written before is damaged: the replay log reads clean
 *               (no damage, no torn tail), metrics.jsonl is whole lines, steps 1..N once each, the latest
 *               checkpoint loads. After the filler is removed, `--resume` continues to its new end,
 *               the replay log still begins with every byte it held at the stop, and no accepted rollout
 *               is lost: the log holds every group the broker accepted (their count in broker.log),
 *               and each group of the log up to its generator's highest finished seq was trained on
 *               (consumed.log);
 *   read_only:  the checkpoints directory remounted read-only mid-run: the updater's next checkpoint
 *               fails with EROFS, the run stops with status 3 naming it; after the remount is undone,
 *               `--resume` continues, no rollout lost;
 *   replay_log_full: the replay log on a filesystem of its own (256 KiB) that fills: the broker refuses
 *               the group it cannot log and stops the run (status 3) naming the log; every group it
 *               accepted is in the log; after a remount with room, `--resume` continues, nothing lost. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "common/common.h"
#include "model/model.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char d_dir[64], d_fs[128], d_logfs[128], d_rlhf[1024];
static char d_run1[256], d_run2[256];
static const char *d_run = d_run1; /* the run the helpers look at */
static char d_log[512];            /* its replay log */
static int d_mounted, d_log_mounted;

static char *slurp(const char *path, size_t *n) {
    char *d = NULL;
    size_t k = 0;
    if (rlhf_read_file(path, &d, &k, NULL)) return NULL;
    if (n) *n = k;
    return d;
}

static int contains(const char *path, const char *needle) {
    char *d = slurp(path, NULL);
    int r = d && strstr(d, needle);
    free(d);
    return r;
}

static void show(const char *out) {
    char *d = slurp(out, NULL);
    fprintf(stderr, "\nlauncher output (%s):\n%s\n", out, d ? d : "(none)");
    free(d);
}

static pid_t start(const char *out, const char *const *args) {
    test_proc_opts o = {.out = out, .err = out};
    return test_proc_spawn_args(d_rlhf, d_rlhf, args, &o);
}

/* Steps of metrics.jsonl in order; -1 when a line is not a whole JSON record. */
static int read_steps(long *steps, int cap) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", d_run);
    char *d = slurp(p, NULL);
    int n = 0;
    if (!d) return 0;
    for (char *line = d, *nl; *line && n < cap; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) { /* a last line without its end: half a record */
            n = -1;
            break;
        }
        *nl = 0;
        json_t *j = json_loads(line, 0, NULL);
        if (!j) {
            n = -1;
            break;
        }
        steps[n++] = (long)json_integer_value(json_object_get(j, "step"));
        json_decref(j);
    }
    free(d);
    return n;
}

static long last_step(void) {
    static long s[8192];
    int n = read_steps(s, 8192);
    return n > 0 ? s[n - 1] : 0;
}

/* metrics.jsonl is whole records, steps 1..N once each; returns N (-1 otherwise). */
static long steps_whole_and_in_order(void) {
    static long s[8192];
    int n = read_steps(s, 8192);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++)
        if (s[i] != i + 1) return -1;
    return n;
}

static int wait_step(long step, pid_t launcher, double timeout) {
    double t0 = rlhf_now();
    while (rlhf_now() - t0 < timeout) {
        if (last_step() >= step) return 1;
        if (waitpid(launcher, NULL, WNOHANG) == launcher) return 0;
        usleep(20000);
    }
    return 0;
}

/* The replay log reads clean to its end: records counted, no damage, no torn tail. */
static long log_clean_records(void) {
    char p[512];
    snprintf(p, sizeof p, "%s", d_log);
    replay_reader *r;
    if (replay_reader_open(&r, p, NULL) != 0) return -1;
    wire_rollout_group g;
    long n = 0;
    int rc;
    while ((rc = replay_reader_next(r, &g, NULL, NULL)) == 1) {
        wire_rollout_group_free(&g);
        n++;
    }
    int torn = replay_reader_torn(r, NULL, NULL);
    replay_reader_close(&r);
    return rc == 0 && !torn ? n : -1;
}

/* Groups the broker accepted, over all its incarnations (their "stopping (...): accepted N" lines). */
static long broker_accepted(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/logs/broker.log", d_run);
    char *d = slurp(p, NULL);
    long n = 0;
    for (char *q = d; q && (q = strstr(q, "): accepted ")); q++) n += atol(q + strlen("): accepted "));
    free(d);
    return n;
}

static int latest_loads(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/checkpoints/latest/model.safetensors", d_run);
    model *m = NULL;
    rlhf_error err = {0};
    int ok = model_load(&m, p, NULL, &err) == 0;
    if (!ok) rlhf_error_print("disk_full: latest checkpoint", &err);
    model_destroy(&m);
    return ok;
}

static int suite_init(void) {
    snprintf(d_dir, sizeof d_dir, "/tmp/rlhf_diskfull_XXXXXX");
    if (!mkdtemp(d_dir)) return -1;
    if (test_bin_path("rlhf", d_rlhf, sizeof d_rlhf) || access(d_rlhf, X_OK) != 0) return -1;
    if (e2e_write_prompts(d_dir)) return -1;
    snprintf(d_fs, sizeof d_fs, "%s/fs", d_dir);
    snprintf(d_run1, sizeof d_run1, "%s/run", d_fs);
    snprintf(d_run2, sizeof d_run2, "%s/run2", d_fs);
    snprintf(d_log, sizeof d_log, "%s/rollouts.log", d_run1);
    snprintf(d_logfs, sizeof d_logfs, "%s/logfs", d_dir);
    if (mkdir(d_logfs, 0755) != 0) return -1;
    if (mkdir(d_fs, 0755) != 0) return -1;
    /* 32 MiB: room for the run's first steps, then the filler takes the rest */
    if (mount("tmpfs", d_fs, "tmpfs", 0, "size=32m") != 0) {
        fprintf(stderr, "\n  disk_full: cannot mount a tmpfs on %s: %s (these tests need root)\n", d_fs,
                strerror(errno));
        return -1; /* CUnit reports the suite as failed, never as passed */
    }
    d_mounted = 1;
    char cfg[256], doc[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", d_dir);
    /* max_staleness: nothing dropped as stale, so every accepted group is trained on or still waiting */
    snprintf(doc, sizeof doc,
             "{\"name\":\"run\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":100000,\"checkpoint_every\":2,\"seed\":5,"
             "\"max_staleness\":1000},\n"
             " \"generators\":{\"count\":2,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             d_run, d_dir);
    if (write_text(cfg, doc)) return -1;
    /* run2: its replay log alone on a 256 KiB filesystem (about 50 steps of this run) */
    if (mount("tmpfs", d_logfs, "tmpfs", 0, "size=256k") != 0) return -1;
    d_log_mounted = 1;
    snprintf(cfg, sizeof cfg, "%s/config2.json", d_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"run2\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
             " \"broker\":{\"replay\":{\"path\":\"%s/rollouts.log\"}},\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":400,\"checkpoint_every\":2,\"seed\":5,"
             "\"max_staleness\":1000},\n"
             " \"generators\":{\"count\":2,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             d_run2, d_dir, d_logfs);
    return write_text(cfg, doc);
}

static int suite_cleanup(void) {
    if (d_mounted) umount2(d_fs, MNT_DETACH);
    if (d_log_mounted) umount2(d_logfs, MNT_DETACH);
    if (CU_get_number_of_failures() == 0 && d_dir[0]) test_remove_tree(d_dir);
    return 0;
}

/* Fills the filesystem of `dir` with one file until the disk refuses; returns its size. */
static long long fill(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    static char buf[65536];
    long long n = 0;
    for (;;) {
        ssize_t w = write(fd, buf, sizeof buf);
        if (w <= 0) break;
        n += w;
    }
    for (;;) { /* the last partial page */
        ssize_t w = write(fd, buf, 1);
        if (w <= 0) break;
        n += w;
    }
    close(fd);
    return n;
}

/* Every line of RUN/consumed.log is whole: "GENERATOR SEQ STEP" and nothing more. An append cut short by
 * a full disk must be taken back, or the next append runs into it and the line it ends is lost. */
static int consumed_log_whole(void) {
    char p[600];
    snprintf(p, sizeof p, "%s/consumed.log", d_run);
    char *text = slurp(p, NULL);
    if (!text) return 0;
    int ok = 1;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l && ok; l = strtok_r(NULL, "\n", &save)) {
        char gid[128], extra[8];
        unsigned long long seq;
        long step;
        ok = sscanf(l, "%127s %llu %ld %7s", gid, &seq, &step, extra) == 3;
        if (!ok) fprintf(stderr, "\n  consumed.log: torn line \"%s\"\n", l);
    }
    free(text);
    return ok;
}

/* Resumes to `steps` and checks the run finishes with nothing lost. */
static void resume_and_check(const char *out, long steps) {
    char set[64];
    snprintf(set, sizeof set, "rl.steps=%ld", steps);
    const char *args[] = {"run", "--resume", d_run, "--quiet", "--set", set, NULL};
    int rc = test_proc_wait(start(out, args), 120);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0) show(out);
    CU_ASSERT_EQUAL(latest_ckpt(d_run), steps);
    CU_ASSERT_EQUAL(steps_whole_and_in_order(), steps);
    CU_ASSERT(log_clean_records() > 0);
    CU_ASSERT_EQUAL(e2e_lost_rollouts(d_run, d_log), 0);
    CU_ASSERT(consumed_log_whole());
}

static void test_disk_full(void) {
    char cfg[256], out[256], filler[256], logp[512];
    snprintf(cfg, sizeof cfg, "%s/config.json", d_dir);
    snprintf(out, sizeof out, "%s/full.out", d_dir);
    snprintf(filler, sizeof filler, "%s/filler", d_fs);
    snprintf(logp, sizeof logp, "%s", d_log);
    const char *args[] = {"run", cfg, "--quiet", NULL};
    pid_t launcher = start(out, args);
    int started = wait_step(6, launcher, 60);
    CU_ASSERT(started);
    long long filled = fill(filler);
    CU_ASSERT(filled > 0);
    int rc = test_proc_wait(launcher, 90);
    if (rc == -1) test_proc_stop(launcher, 30);
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_ENV);
    /* one cause, naming the file in the run directory */
    char want[400];
    snprintf(want, sizeof want, "involves: %s/", d_run);
    CU_ASSERT(contains(out, want));
    CU_ASSERT(contains(out, "No space left on device"));
    CU_ASSERT(contains(out, "continue with: rlhf run --resume"));
    if (rc != RLHF_EXIT_ENV || !contains(out, want)) show(out);
    /* nothing written before the disk filled is damaged, and every group the broker accepted is in
     * the log (a group it could not log was refused, not queued) */
    long records = log_clean_records();
    CU_ASSERT_EQUAL(broker_accepted(), records);
    CU_ASSERT(records >= 6 * 8);
    long steps = steps_whole_and_in_order();
    CU_ASSERT(steps >= 6);
    CU_ASSERT(latest_loads());
    size_t n_before = 0;
    char *log_before = slurp(logp, &n_before);
    CU_ASSERT_FATAL(log_before != NULL);
    /* space freed: the run continues, every byte of the old log still first in it, nothing lost */
    CU_ASSERT_EQUAL(unlink(filler), 0);
    long last = latest_ckpt(d_run);
    CU_ASSERT(last >= 6);
    char out2[300];
    snprintf(out2, sizeof out2, "%s.resume", out);
    resume_and_check(out2, last + 6);
    size_t n_after = 0;
    char *log_after = slurp(logp, &n_after);
    CU_ASSERT(log_after && n_after > n_before && memcmp(log_after, log_before, n_before) == 0);
    char *o = slurp(out, NULL), *inv = o ? strstr(o, "involves: ") : NULL;
    if (inv) inv[strcspn(inv, "\n")] = 0;
    fprintf(stderr, "\n  disk full at step %ld (%ld records in the log, %lld filler bytes; %s); resumed to step %ld\n",
            steps, records, filled, inv ? inv : "?", last + 6);
    free(o);
    free(log_before);
    free(log_after);
}

static void test_read_only(void) {
    char out[256], ck[512];
    snprintf(out, sizeof out, "%s/ro.out", d_dir);
    snprintf(ck, sizeof ck, "%s/checkpoints", d_run);
    long from = latest_ckpt(d_run);
    CU_ASSERT_FATAL(from > 0);
    char set[64];
    snprintf(set, sizeof set, "rl.steps=%ld", from + 100000);
    const char *args[] = {"run", "--resume", d_run, "--quiet", "--set", set, NULL};
    pid_t launcher = start(out, args);
    CU_ASSERT(wait_step(from + 3, launcher, 60));
    /* the checkpoints directory turns read-only under the running updater */
    int ro = mount(ck, ck, NULL, MS_BIND, NULL) == 0 &&
             mount(NULL, ck, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) == 0;
    if (!ro) fprintf(stderr, "\n  read_only: cannot bind-mount %s read-only: %s\n", ck, strerror(errno));
    CU_ASSERT_FATAL(ro);
    int rc = test_proc_wait(launcher, 90);
    if (rc == -1) test_proc_stop(launcher, 30);
    umount2(ck, MNT_DETACH);
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_ENV);
    char want[600];
    snprintf(want, sizeof want, "involves: %s/checkpoints/step_", d_run);
    CU_ASSERT(contains(out, want));
    CU_ASSERT(contains(out, "Read-only file system"));
    if (rc != RLHF_EXIT_ENV || !contains(out, want)) show(out);
    CU_ASSERT(log_clean_records() > 0);
    CU_ASSERT_EQUAL(broker_accepted(), log_clean_records());
    CU_ASSERT(steps_whole_and_in_order() > from);
    CU_ASSERT(latest_loads());
    long last = latest_ckpt(d_run);
    resume_and_check(out, last + 4);
}

/* Only the replay log's filesystem is full (it has one of its own): the broker is the process that
 * fails, deterministically. It refuses the group it cannot log and stops the run naming the log;
 * every group it accepted is in the log; with room again, --resume continues, nothing lost. */
static void test_replay_log_full(void) {
    char cfg[256], out[256], want[600];
    d_run = d_run2;
    snprintf(d_log, sizeof d_log, "%s/rollouts.log", d_logfs);
    snprintf(cfg, sizeof cfg, "%s/config2.json", d_dir);
    snprintf(out, sizeof out, "%s/logfull.out", d_dir);
    const char *args[] = {"run", cfg, "--quiet", NULL};
    /* the broker lingers after telling its peers to stop, so the updater's clean exit is seen first: the
     * run must still end with the broker's class and cause (CI once saw that order by chance) */
    setenv("RLHF_TEST_FAULT_BROKER_EXIT_DELAY_MS", "1500", 1);
    int rc = test_proc_wait(start(out, args), 120);
    unsetenv("RLHF_TEST_FAULT_BROKER_EXIT_DELAY_MS");
    CU_ASSERT_EQUAL(rc, RLHF_EXIT_ENV);
    snprintf(want, sizeof want, "involves: %s", d_log);
    CU_ASSERT(contains(out, want));
    CU_ASSERT(contains(out, "No space left on device"));
    if (rc != RLHF_EXIT_ENV || !contains(out, want)) show(out);
    long records = log_clean_records();
    CU_ASSERT(records > 0);
    CU_ASSERT_EQUAL(broker_accepted(), records);
    long steps = steps_whole_and_in_order();
    CU_ASSERT(steps > 0 && steps < 400);
    CU_ASSERT(latest_loads());
    /* room again (tmpfs grows by remount) */
    CU_ASSERT_EQUAL_FATAL(mount(NULL, d_logfs, NULL, MS_REMOUNT, "size=32m"), 0);
    long last = latest_ckpt(d_run);
    CU_ASSERT(last > 0);
    char out2[300];
    snprintf(out2, sizeof out2, "%s.resume", out);
    resume_and_check(out2, last + 4);
    CU_ASSERT_EQUAL(broker_accepted(), log_clean_records());
    fprintf(stderr, "\n  replay log full at step %ld (%ld records); resumed to step %ld\n", steps,
            records, last + 4);
}

void e2e_register_diskfull(void);
void e2e_register_diskfull(void) {
    CU_pSuite s = CU_add_suite("diskfull", suite_init, suite_cleanup);
    CU_add_test(s, "disk_full", test_disk_full);
    CU_add_test(s, "read_only", test_read_only);
    CU_add_test(s, "replay_log_full", test_replay_log_full);
}
