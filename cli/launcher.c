/* cli/launcher.c — `rlhf run CONFIG [--set a.b=c ...] | --resume RUN_DIR`: the launcher.
 *
 * Validates the whole config before any process starts, creates the run directory, writes the
 * resolved config, then starts the broker, G generators and one updater as child processes of
 * this same binary (/proc/self/exe), each logging to logs/<proc>.log. It supervises them:
 *   - a generator that dies is restarted (its in-flight prompts are re-served by the broker);
 *   - an updater that dies is restarted and resumes from its last checkpoint, then re-reads the
 *     replay log from the checkpoint's offset, so accepted rollouts are not lost;
 *   - a broker that dies is restarted; it reopens the append-only replay log.
 * The run ends when the updater exits 0 after rl.steps steps. SIGINT/SIGTERM: the updater is asked
 * to stop (it writes a final checkpoint), then generators and broker are stopped.
 *
 * Supervision reads each exit status as a class (RLHF_EXIT_*, common/common.h; docs/RUNNING.md "When
 * things go wrong"): config (2), environment (3) and plugin (4) failures repeat at every restart, so
 * the first one stops the whole run and its cause is printed once (process, status, the last lines of
 * its log, the file or key it names); anything else (exit 1, a signal) is transient: the process is
 * restarted after an exponential backoff, and a crash loop (RESTART_QUICK_MAX quick deaths in a row)
 * stops the run. Every restart and stop is one line of RUN_DIR/restarts.jsonl. */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/run_events_int.h"
#include "dashboard/dashboard.h"
#include "run/run.h"
#include "updater/updater.h"

static volatile sig_atomic_t g_stop_requested;
static void on_stop_signal(int sig) {
    (void)sig;
    g_stop_requested++;
}

typedef struct child {
    char name[32];     /* "broker", "generator-0", "updater" */
    char *argv[16];
    int argc;
    pid_t pid;
    int restarts;
    double started;
    int quick;         /* deaths in a row, each within RESTART_QUICK_S of its start */
    double restart_at; /* > 0: dead, to be started again at this rlhf_now() */
    int mpi_ranks;     /* > 1: argv is an mpirun command line starting that many ranks */
    int mpi_hostfile;  /* 1: with --hostfile (ranks on other hosts: TCP between them) */
    /* the ranks' shared-memory segments go here, not loose in /dev/shm: a rank killed by a signal cannot
     * remove its own, so the launcher empties this directory whenever the group has ended ("" none) */
    char mpi_shm_dir[64];
    /* CPU seconds of this child's processes that ended (every restart; with their own waited-for
     * children: reward sandboxes, MPI ranks), from wait4 */
    double cpu_user, cpu_sys;
} child;

/* Adds a reaped child's rusage to its account. */
static void account(child *c, const struct rusage *ru) {
    if (!c || !ru) return;
    c->cpu_user += (double)ru->ru_utime.tv_sec + 1e-6 * (double)ru->ru_utime.tv_usec;
    c->cpu_sys += (double)ru->ru_stime.tv_sec + 1e-6 * (double)ru->ru_stime.tv_usec;
}

/* RUN_DIR/cpu.json: each process's CPU seconds this launcher saw end (user, system; a process's reward
 * sandboxes and MPI ranks included), the wall time, and their ratio (cores busy on average): where a
 * run's machine time went. One line on stderr too (not with --quiet). Best effort: a run's result does
 * not depend on it. */
static void write_cpu_account(const run_config *cfg, const child *kids, int n, double wall, int quiet) {
    json_t *procs = json_object();
    double total = 0;
    char line[1024];
    size_t len = 0;
    line[0] = 0;
    for (int i = 0; i < n; i++) {
        const child *c = &kids[i];
        if (!c->name[0]) continue;
        double t = c->cpu_user + c->cpu_sys;
        total += t;
        json_object_set_new(procs, c->name, json_pack("{s:f, s:f}", "user_s", c->cpu_user, "sys_s", c->cpu_sys));
        if (len < sizeof line)
            len += (size_t)snprintf(line + len, sizeof line - len, "%s%s %.1f s", len ? ", " : "", c->name, t);
    }
    json_t *doc = json_pack("{s:o, s:f, s:f, s:f}", "processes", procs, "cpu_s", total, "wall_s", wall, "cores_busy",
                            wall > 0 ? total / wall : 0.0);
    char *txt = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    char path[2048];
    snprintf(path, sizeof path, "%s/cpu.json", cfg->run_dir);
    rlhf_error err = {0};
    if (txt && rlhf_write_file_atomic(path, txt, strlen(txt), &err)) rlhf_error_print("rlhf run (cpu.json)", &err);
    free(txt);
    if (!quiet)
        fprintf(stderr, "[rlhf run] CPU time: %s; %.1f s in all over %.1f s: %.2f cores busy on average\n", line, total,
                wall, wall > 0 ? total / wall : 0.0);
}

/* Empties (and with `remove_dir`, removes) a child's MPI shared-memory directory. */
static void clear_mpi_shm(const child *c, int remove_dir) {
    if (!c->mpi_shm_dir[0]) return;
    DIR *d = opendir(c->mpi_shm_dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", c->mpi_shm_dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    if (remove_dir) rmdir(c->mpi_shm_dir);
}

/* A child that lived less than this died "quickly"; its next restart waits twice as long as the last,
 * from RESTART_DELAY0_S up to RESTART_DELAY_MAX_S; RESTART_QUICK_MAX quick deaths in a row is a crash
 * loop and stops the run (about a minute and a half of trying). A child that ran longer starts over. */
#define RESTART_QUICK_S 30.0
#define RESTART_DELAY0_S 0.25
#define RESTART_DELAY_MAX_S 30.0
#define RESTART_QUICK_MAX 8
#define RESTART_TOTAL_MAX 50

static int spawn(child *c, const char *run_dir, rlhf_error *err) {
    char log_path[2048];
    snprintf(log_path, sizeof log_path, "%s/logs/%s.log", run_dir, c->name);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return rlhf_error_set(err, RLHF_ESYS, log_path, "cannot open log: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        return RLHF_FAIL(err, RLHF_ESYS, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        /* a process group of its own: a terminal ^C reaches only the launcher, which decides who
         * stops when (the updater first, for its final checkpoint) */
        setpgid(0, 0);
        /* if the launcher itself dies (kill -9), its children stop too instead of running orphaned */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1) _exit(1);
        /* SIGUSR1 means "reconnect" once a child has installed its handler; ignored until then */
        signal(SIGUSR1, SIG_IGN);
        setenv("RLHF_PROC_NAME", c->name, 1);
        if (c->mpi_ranks > 1) {
            /* data-parallel updaters: mpirun starts the ranks on this host. Root is allowed (containers,
             * CI); shared memory between the ranks; no network probing; more ranks than cores is fine */
            run_mpirun_env(c->mpi_hostfile);
            if (c->mpi_shm_dir[0] && (mkdir(c->mpi_shm_dir, 0700) == 0 || errno == EEXIST))
                setenv("OMPI_MCA_btl_vader_backing_directory", c->mpi_shm_dir, 1);
            execvp("mpirun", c->argv);
            fprintf(stderr, "exec mpirun: %s (updaters.count > 1 needs openmpi-bin)\n", strerror(errno));
            _exit(127);
        }
        execv("/proc/self/exe", c->argv);
        fprintf(stderr, "exec /proc/self/exe: %s\n", strerror(errno));
        _exit(127);
    }
    close(fd);
    c->pid = pid;
    c->started = rlhf_now();
    return 0;
}

static void child_args(child *c, const char *name, const char *const *args) {
    snprintf(c->name, sizeof c->name, "%s", name);
    c->argc = 0;
    c->argv[c->argc++] = strdup("rlhf");
    for (int i = 0; args[i] && c->argc < 15; i++) c->argv[c->argc++] = strdup(args[i]);
    c->argv[c->argc] = NULL;
}

static void child_free(child *c) {
    if (c->pid <= 0) clear_mpi_shm(c, 1); /* a group that still runs keeps its segments */
    for (int i = 0; i < c->argc; i++) free(c->argv[i]);
    c->argc = 0;
}

static const char *status_text(int st, char *buf, size_t n) {
    if (WIFEXITED(st) && WEXITSTATUS(st) > 128 && WEXITSTATUS(st) < 128 + 65 && sigabbrev_np(WEXITSTATUS(st) - 128)) {
        /* mpirun's way of saying one of its ranks died by a signal (as a shell does) */
        snprintf(buf, n, "exit status %d (128 + SIG%s: a process it started was killed)", WEXITSTATUS(st),
                 sigabbrev_np(WEXITSTATUS(st) - 128));
    } else if (WIFEXITED(st))
        snprintf(buf, n, "exit status %d (%s)", WEXITSTATUS(st), rlhf_exit_class_name(WEXITSTATUS(st)));
    else if (WIFSIGNALED(st)) {
        const char *abbrev = sigabbrev_np(WTERMSIG(st));
        snprintf(buf, n, "signal %d (SIG%s)", WTERMSIG(st), abbrev ? abbrev : "?");
    }
    else snprintf(buf, n, "status %d", st);
    return buf;
}

/* 1 when a child's wait status is one a restart cannot cure: the config, environment and plugin
 * classes. Exit 1, other codes (127: exec failed) and signals are transient. */
static int status_fatal(int st) {
    if (!WIFEXITED(st)) return 0;
    int c = WEXITSTATUS(st);
    return c == RLHF_EXIT_CONFIG || c == RLHF_EXIT_ENV || c == RLHF_EXIT_PLUGIN;
}

static const char *class_meaning(int st) {
    if (WIFSIGNALED(st)) return "killed by a signal";
    switch (WIFEXITED(st) ? WEXITSTATUS(st) : -1) {
    case RLHF_EXIT_CONFIG: return "a configuration error: fix the config or the --set value";
    case RLHF_EXIT_ENV: return "an environment error: disk space, permissions or a missing file";
    case RLHF_EXIT_PLUGIN: return "a reward plugin crashed";
    default: return "a transient failure";
    }
}

/* One line of RUN_DIR/restarts.jsonl: what ended, how, and what the launcher did about it. */
static void log_supervision(const char *run_dir, const child *c, pid_t pid, int st, const char *action,
                            double delay_s) {
    json_t *r = json_object();
    json_object_set_new(r, "time", json_real(rlhf_wall_time()));
    json_object_set_new(r, "process", json_string(c->name));
    json_object_set_new(r, "pid", json_integer(pid));
    if (WIFEXITED(st)) {
        json_object_set_new(r, "exit_status", json_integer(WEXITSTATUS(st)));
        json_object_set_new(r, "class", json_string(rlhf_exit_class_name(WEXITSTATUS(st))));
    } else if (WIFSIGNALED(st)) {
        json_object_set_new(r, "signal", json_integer(WTERMSIG(st)));
        json_object_set_new(r, "class", json_string("signal"));
    }
    json_object_set_new(r, "action", json_string(action));
    json_object_set_new(r, "restarts", json_integer(c->restarts));
    if (delay_s >= 0) json_object_set_new(r, "delay_s", json_real(delay_s));
    json_object_set_new(r, "uptime_s", json_real(rlhf_now() - c->started));
    char path[2048];
    snprintf(path, sizeof path, "%s/restarts.jsonl", run_dir);
    char *line = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER);
    FILE *f = fopen(path, "a");
    if (f && line) fprintf(f, "%s\n", line);
    if (f) fclose(f);
    free(line);
    json_decref(r);
}

/* The cause of a fatal exit, printed once: the process, its status and class, the last lines of its log,
 * and the file or key of its last "error: WHERE: message" line. */
static void print_cause(const char *run_dir, const child *c, pid_t pid, int st, const char *consequence) {
    char why[96], path[2048];
    status_text(st, why, sizeof why);
    snprintf(path, sizeof path, "%s/logs/%s.log", run_dir, c->name);
    fprintf(stderr, "\n[rlhf run] %s (pid %d) ended with %s: %s; %s\n", c->name, (int)pid, why,
            class_meaning(st), consequence);
    char *text = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &text, &n, NULL)) {
        fprintf(stderr, "[rlhf run]   (no log at %s)\n", path);
        return;
    }
    while (n > 0 && text[n - 1] == '\n') text[--n] = 0;
    const char *tail = text + n;
    for (int lines = 0; tail > text && lines < 8;)
        if (*--tail == '\n' && ++lines == 8) tail++;
    fprintf(stderr, "[rlhf run]   last lines of %s:\n", path);
    for (const char *l = tail; *l;) {
        const char *e = strchr(l, '\n');
        int len = e ? (int)(e - l) : (int)strlen(l);
        fprintf(stderr, "[rlhf run]   | %.*s\n", len > 300 ? 300 : len, l);
        l = e ? e + 1 : l + len;
    }
    /* the last "error: WHERE: ..." line names the file or key */
    const char *last = NULL;
    for (const char *p = text; (p = strstr(p, "error: ")) != NULL; p++) last = p + 7;
    if (last) {
        const char *end = strstr(last, ": ");
        const char *nl = strchr(last, '\n');
        if (end && (!nl || end < nl))
            fprintf(stderr, "[rlhf run]   involves: %.*s\n", (int)(end - last), last);
    }
    free(text);
}

/* The updater exited 0 before rl.steps: says so with the cause its log names (its "the broker said stop
 * (REASON)" line, or its last line). */
static void print_early_end(const char *run_dir, int step, int steps) {
    char path[2048];
    snprintf(path, sizeof path, "%s/logs/updater.log", run_dir);
    char *text = NULL;
    size_t n = 0;
    const char *cause = NULL;
    int len = 0;
    if (rlhf_read_file(path, &text, &n, NULL) == 0) {
        const char *last = NULL;
        for (const char *p = text; (p = strstr(p, "said stop")) != NULL; p++) last = p;
        if (last) {
            while (last > text && last[-1] != '\n') last--;
            cause = last;
            const char *e = strchr(cause, '\n');
            len = e ? (int)(e - cause) : (int)strlen(cause);
        }
    }
    if (cause)
        fprintf(stderr, "\n[rlhf run] the run ended at step %d of %d before its end: %.*s\n", step, steps,
                len > 300 ? 300 : len, cause);
    else
        fprintf(stderr, "\n[rlhf run] the run ended at step %d of %d before its end: the updater stopped (see %s)\n",
                step, steps, path);
    free(text);
}

/* The updater ended cleanly before rl.steps because a peer told it to stop. When that peer is the
 * broker failing (a full replay log: it says "broker shutting down" to everyone, then syncs and exits
 * with its class), the updater's exit is reaped first; waits up to `timeout` seconds for the broker's
 * own exit so the run reports the broker's cause and class rather than the updater's "said stop".
 * Returns the fatal exit status it reported, or 0. */
static int reap_failed_broker(const char *run_dir, child *broker, double timeout) {
    double t0 = rlhf_now();
    while (broker->pid > 0 && rlhf_now() - t0 < timeout) {
        int st;
        struct rusage ru;
        pid_t r = wait4(broker->pid, &st, WNOHANG, &ru);
        if (r == 0) {
            usleep(20000);
            continue;
        }
        pid_t pid = broker->pid;
        if (r == pid) account(broker, &ru);
        broker->pid = 0;
        clear_mpi_shm(broker, 0);
        if (r != pid || !status_fatal(st)) return 0;
        print_cause(run_dir, broker, pid, st, "stopping the run");
        log_supervision(run_dir, broker, pid, st, "stop", -1);
        return WEXITSTATUS(st);
    }
    return 0;
}

/* Waits up to `timeout` seconds for pid; SIGKILL after that. */
static void stop_child(child *c, int sig, double timeout) {
    if (c->pid <= 0) return;
    kill(c->pid, sig);
    double t0 = rlhf_now();
    int st;
    struct rusage ru;
    while (rlhf_now() - t0 < timeout) {
        pid_t r = wait4(c->pid, &st, WNOHANG, &ru);
        if (r == c->pid || (r < 0 && errno == ECHILD)) {
            if (r == c->pid) account(c, &ru);
            c->pid = 0;
            return;
        }
        usleep(20000);
    }
    kill(c->pid, SIGKILL);
    if (wait4(c->pid, &st, 0, &ru) == c->pid) account(c, &ru);
    c->pid = 0;
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e7) snprintf(buf, n, "?");
    else if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
    else if (s >= 60) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%ds", (int)s);
}

/* The step's reward errors for the progress line: "errors 0", or "errors 7 (judge: timeout 5)" naming
 * the source and reason kind with the most (reward/<source>/errors/<kind> in the record). */
static void progress_errors(json_t *m, char *buf, size_t n) {
    long all = (long)json_integer_value(json_object_get(m, "reward/errors"));
    snprintf(buf, n, "errors %ld", all);
    const char *key, *best = NULL;
    json_t *v;
    long most = 0;
    json_object_foreach(m, key, v) {
        const char *e = strstr(key, "/errors/");
        if (strncmp(key, "reward/", 7) != 0 || !e || json_integer_value(v) <= most) continue;
        most = (long)json_integer_value(v);
        best = key;
    }
    if (best) {
        const char *e = strstr(best, "/errors/");
        snprintf(buf + strlen(buf), n - strlen(buf), " (%.*s: %s %ld)", (int)(e - best - 7), best + 7, e + 8, most);
    }
}

/* One progress line from the last metrics.jsonl record. */
static void progress(const run_config *cfg, double t_start, int start_step, int tty, int restarts) {
    char path[2048];
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->run_dir);
    json_t *m = updater_metrics_last_record(path);
    if (!m) {
        if (tty) fprintf(stderr, "\r[rlhf run] waiting for the first step (%.0fs)   ", rlhf_now() - t_start);
        return;
    }
    int step = (int)json_integer_value(json_object_get(m, "step"));
    double el = rlhf_now() - t_start;
    double per = step > start_step ? el / (step - start_step) : -1;
    char eta[32];
    fmt_duration(eta, sizeof eta, per > 0 ? per * (cfg->steps - step) : -1);
    double pr = json_number_value(json_object_get(m, "pass_rate"));
    char restarts_text[32] = "";
    if (restarts) snprintf(restarts_text, sizeof restarts_text, "  restarts %d", restarts);
    char errs[160];
    progress_errors(m, errs, sizeof errs);
    /* the newest held-out evaluation (eval.every): greedy and sampled pass rates of its checkpoint */
    char eval_text[96] = "";
    if (cfg->eval_every > 0) {
        snprintf(path, sizeof path, "%s/eval.jsonl", cfg->run_dir);
        json_t *r = updater_metrics_last_record(path);
        json_t *g = json_object_get(r, "pass_rate_greedy"), *sp = json_object_get(r, "pass_rate_sampled");
        if (json_is_number(g))
            snprintf(eval_text, sizeof eval_text, "  eval@%lld greedy %.2f",
                     (long long)json_integer_value(json_object_get(r, "step")), json_number_value(g));
        if (json_is_number(g) && json_is_number(sp))
            snprintf(eval_text + strlen(eval_text), sizeof eval_text - strlen(eval_text), " sampled %.2f",
                     json_number_value(sp));
        json_decref(r);
    }
    fprintf(stderr,
            "%s[rlhf run] step %d/%d  reward %.3f  pass %.2f%s  %s  staleness %.1f  gen %.0f tok/s  train %.0f tok/s  "
            "ETA %s%s   %s",
            tty ? "\r" : "", step, cfg->steps, json_number_value(json_object_get(m, "reward/mean")), pr, eval_text, errs,
            json_number_value(json_object_get(m, "staleness/mean")),
            json_number_value(json_object_get(m, "gen/tokens_per_s")),
            json_number_value(json_object_get(m, "train/tokens_per_s")), eta, restarts_text, tty ? "" : "\n");
    json_decref(m);
}

/* The launcher's own exit status for a failure before any process starts: its class (2 config, 3
 * environment), as the children's. */
static int prestart_status(const rlhf_error *err) {
    int st = rlhf_exit_status(err);
    return st == RLHF_EXIT_OK ? RLHF_EXIT_TRANSIENT : st;
}

/* The newest samples.jsonl record (log.samples_every), once: the prompt and the first completion with
 * its rewards, cut to one short line; the whole record stays in the file. */
static void print_new_sample(const run_config *cfg, long *last_step, int tty) {
    char path[2048];
    snprintf(path, sizeof path, "%s/samples.jsonl", cfg->run_dir);
    json_t *r = updater_metrics_last_record(path);
    if (!r) return;
    long step = (long)json_integer_value(json_object_get(r, "step"));
    json_t *one = json_array_get(json_object_get(r, "samples"), 0);
    if (step > *last_step && one) {
        *last_step = step;
        const char *t = json_string_value(json_object_get(one, "text"));
        size_t n = t ? strlen(t) : 0;
        if (n > 60) /* cut at a character boundary */
            for (n = 60; n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80; n--) {
            }
        json_t *short_text = t ? json_stringn(t, n) : NULL;
        char *text = short_text ? json_dumps(short_text, JSON_ENCODE_ANY) : NULL;
        char *rewards = json_dumps(json_object_get(one, "rewards"), JSON_COMPACT | JSON_PRESERVE_ORDER |
                                                                      JSON_REAL_PRECISION(3));
        fprintf(stderr, "%s[rlhf run] sample at step %ld, prompt %s: %s  reward %.3f %s\n", tty ? "\n" : "", step,
                json_string_value(json_object_get(r, "prompt_id")), text ? text : "?",
                json_number_value(json_object_get(one, "reward")), rewards ? rewards : "");
        free(text);
        free(rewards);
        json_decref(short_text);
    }
    json_decref(r);
}

/* Held-out evaluation during training (eval.every): the updater marks the checkpoints due for it
 * (step_N/eval.pending); one `rlhf eval RUN_DIR --checkpoint N --record` child at a time evaluates
 * the oldest, with one thread so training keeps the rest of the machine. A failed evaluation is
 * printed with its cause and marked step_N/eval.failed; training goes on (the run's product, the
 * checkpoints, is unaffected). */
typedef struct evaluator {
    child c;
    long step;      /* the checkpoint being evaluated, -1 when idle */
    double next_scan;
} evaluator;

static int eval_start(evaluator *ev, const run_config *cfg, rlhf_error *err) {
    ev->step = updater_checkpoint_pending_eval(cfg->run_dir);
    if (ev->step < 0) return 0;
    char step[32];
    snprintf(step, sizeof step, "%ld", ev->step);
    child_free(&ev->c);
    const char *a[] = {"eval", cfg->run_dir, "--checkpoint", step, "--record", "--threads", "1", NULL};
    child_args(&ev->c, "eval", a);
    return spawn(&ev->c, cfg->run_dir, err);
}

/* The evaluator child ended with status st: print its result (or its cause). */
static void eval_finished(evaluator *ev, const run_config *cfg, pid_t pid, int st, cmd_run_events *events) {
    char p[2200], q[2200];
    ev->c.pid = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        print_cause(cfg->run_dir, &ev->c, pid, st, "training goes on; step_N/eval.failed marks the checkpoint");
        snprintf(p, sizeof p, "%s/checkpoints/step_%ld/eval.pending", cfg->run_dir, ev->step);
        snprintf(q, sizeof q, "%s/checkpoints/step_%ld/eval.failed", cfg->run_dir, ev->step);
        rename(p, q);
        ev->step = -1;
        return;
    }
    /* eval.jsonl, not step_N/eval.json: the evaluation may have pruned a checkpoint that is neither
     * among the newest nor the best */
    snprintf(p, sizeof p, "%s/eval.jsonl", cfg->run_dir);
    json_t *r = updater_metrics_last_record(p);
    if (json_integer_value(json_object_get(r, "step")) != ev->step) {
        json_decref(r);
        r = NULL;
    }
    long best = -1;
    updater_checkpoint_ranking(cfg->run_dir, &best, 1);
    if (r) cmd_run_events_eval(events, r);
    char sampled[64] = "";
    if (json_is_number(json_object_get(r, "pass_rate_sampled")))
        snprintf(sampled, sizeof sampled, ", sampled %.1f%% (x%lld at T=%.2g)",
                 100.0 * json_number_value(json_object_get(r, "pass_rate_sampled")),
                 (long long)json_integer_value(json_object_get(r, "samples_sampled")),
                 json_number_value(json_object_get(r, "temperature_sampled")));
    fprintf(stderr, "\n[rlhf run] held-out eval of step %ld: pass rate %.1f%%, reward mean %.3f (%lld prompts x %lld); "
                    "greedy %.1f%%%s%s\n",
            ev->step, 100.0 * json_number_value(json_object_get(r, "pass_rate")),
            json_number_value(json_object_get(r, "reward_mean")),
            (long long)json_integer_value(json_object_get(r, "prompts")),
            (long long)json_integer_value(json_object_get(r, "samples")),
            100.0 * json_number_value(json_object_get(r, "pass_rate_greedy")), sampled,
            best == ev->step ? ": the best so far (checkpoints/best)" : "");
    json_decref(r);
    ev->step = -1;
}

/* The best checkpoint, said once at the end of a run that evaluated any. */
static void eval_summary(const run_config *cfg) {
    long best;
    if (updater_checkpoint_ranking(cfg->run_dir, &best, 1) != 1) return;
    char p[2200];
    snprintf(p, sizeof p, "%s/checkpoints/step_%ld/eval.json", cfg->run_dir, best);
    json_t *r = json_load_file(p, 0, NULL);
    fprintf(stderr, "[rlhf run] best held-out pass rate: %.1f%% at step %ld (%s/checkpoints/best; all in eval.jsonl)\n",
            100.0 * json_number_value(json_object_get(r, "pass_rate")), best, cfg->run_dir);
    json_decref(r);
}

static const char usage[] = "usage: rlhf run CONFIG.json [--set a.b=VALUE ...] [--quiet] [--dashboard [ADDR:PORT]]\n"
                            "       rlhf run --resume RUN_DIR [--repair] [--set a.b=VALUE ...] [--quiet] [--continue-live]\n"
                            "                [--dashboard [ADDR:PORT]]\n"
                            "Starts the broker, generators and updater of a training run and supervises them.\n"
                            "  --dashboard      serve the run's live dashboard while it runs (default " DASHBOARD_DEFAULT_LISTEN ";\n"
                            "                   an ADDR that is not loopback needs a token in $" DASHBOARD_DEFAULT_TOKEN_ENV ")\n"
                            "  --repair         the broker rewrites a damaged replay log keeping every valid record\n"
                            "                   (a copy of it is kept as LOG.damaged-<time>); without it a damaged\n"
                            "                   log stops the run\n"
                            "  --continue-live  RUN_DIR is the output of `rlhf replay`: continue it as a live run\n"
                            "                   (generators, a new replay log) from its last checkpoint\n";

/* Weights files (broker.weights_shm_dir) that a broker of this run left when it died by kill -9: removed
 * with the run (a broker removes its own when it stops, and stale ones of dead brokers at its start). */
static void sweep_weights_files(const run_config *cfg) {
    broker_config bc;
    if (broker_config_parse(&bc, cfg->broker, "broker", NULL) == 0 && bc.weights_shm)
        broker_weights_shm_sweep(bc.weights_shm_dir);
    broker_config_free(&bc);
}

/* "--dashboard" takes an optional value: the next argument when it looks like ADDR:PORT or PORT (a config
 * path never does). Removes it from argv; *listen gets the address, NULL without the option. */
static int take_dashboard_option(int *argc, char **argv, const char **listen) {
    int w = 1, i = 1;
    *listen = NULL;
    for (; i < *argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) break;
        if (!strcmp(a, "--dashboard")) {
            const char *v = i + 1 < *argc ? argv[i + 1] : NULL;
            int addr = v && v[0] && v[0] != '-' && !strchr(v, '/') && !strstr(v, ".json") &&
                       (strchr(v, ':') || strspn(v, "0123456789") == strlen(v));
            *listen = addr ? argv[++i] : DASHBOARD_DEFAULT_LISTEN;
            continue;
        }
        if (!strncmp(a, "--dashboard=", 12)) {
            *listen = a + 12;
            continue;
        }
        argv[w++] = argv[i];
    }
    for (; i < *argc; i++) argv[w++] = argv[i];
    *argc = w;
    char host[64];
    int port;
    rlhf_error err = {0};
    if (*listen && dashboard_parse_listen(*listen, host, &port, &err)) {
        fprintf(stderr, "rlhf run: error: --dashboard: %s: %s\n", err.where, err.msg);
        return 2;
    }
    return -1;
}

/* The run's dashboard, a thread of this launcher (libmicrohttpd's): it only reads the run directory, so
 * it needs no supervision of its own, lives exactly as long as the run, and a bad address, a missing
 * token or a missing charting library stop the run before any process starts. */
static int start_dashboard(dashboard **out, const char *listen, const char *run_dir, rlhf_error *err) {
    dashboard_config dc;
    dashboard_config_default(&dc);
    snprintf(dc.listen, sizeof dc.listen, "%s", listen);
    dc.run_dirs[0] = run_dir;
    dc.n_runs = 1;
    int rc = dashboard_create(out, &dc, err);
    if (rc) return rc;
    char host[64];
    int port;
    dashboard_parse_listen(listen, host, &port, NULL);
    fprintf(stderr, "[rlhf run] dashboard: http://%s:%d/\n", host, dashboard_port(*out));
    return 0;
}

int cmd_run(int argc, char **argv) {
    const char *config_path = NULL, *resume_dir = NULL, *dash_listen = NULL;
    int drc = take_dashboard_option(&argc, argv, &dash_listen);
    if (drc >= 0) return drc;
    char *sets[64];
    rlhf_opt_strs set = {sets, 0, 64};
    int quiet = 0, npos = 0, continue_live = 0, repair = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--set", RLHF_OPT_STRS, &set), RLHF_OPT("--resume", RLHF_OPT_STR, &resume_dir),
                             RLHF_OPT("--quiet", RLHF_OPT_FLAG, &quiet), RLHF_OPT("--repair", RLHF_OPT_FLAG, &repair),
                             RLHF_OPT("--continue-live", RLHF_OPT_FLAG, &continue_live), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf run", usage, opts, &config_path, 1, &npos);
    if (prc >= 0) return prc;
    if (!config_path == !resume_dir) {
        fprintf(stderr, "rlhf run: error: give either CONFIG.json or --resume RUN_DIR\n%s", usage);
        return 2;
    }
    if (repair && !resume_dir) {
        fprintf(stderr, "rlhf run: error: --repair goes with --resume RUN_DIR (a new run has no log to repair)\n");
        return 2;
    }
    char resume_cfg[2048];
    if (resume_dir) {
        snprintf(resume_cfg, sizeof resume_cfg, "%s/config.json", resume_dir);
        config_path = resume_cfg;
        if (access(resume_cfg, F_OK) != 0) {
            fprintf(stderr, "rlhf run: error: %s: no config.json here (not a run directory?)\n", resume_dir);
            return RLHF_EXIT_ENV;
        }
    }
    rlhf_error err = {0};
    run_config cfg;
    if (run_config_load(&cfg, config_path, sets, set.n, &err)) {
        rlhf_error_print("rlhf run", &err);
        return prestart_status(&err);
    }
    const char *replay_of = json_string_value(json_object_get(json_object_get(cfg.resolved, "launcher"), "replay_of"));
    if (resume_dir && replay_of && replay_of[0]) {
        if (!continue_live) {
            fprintf(stderr, "rlhf run: error: %s: the output of `rlhf replay` of %s; --resume would continue it as a "
                            "live run (generators, a new replay log); say --continue-live to do that\n",
                    resume_dir, replay_of);
            run_config_free(&cfg);
            return RLHF_EXIT_CONFIG;
        }
        /* from here on it is a live run: its later metrics lines carry no "replayed" mark */
        fprintf(stderr, "[rlhf run] %s: continuing the replay of %s as a live run\n", resume_dir, replay_of);
        json_object_set_new(json_object_get(cfg.resolved, "launcher"), "replay_of", json_string(""));
    } else if (continue_live) {
        fprintf(stderr, "rlhf run: error: --continue-live is for --resume of a replay's output directory\n%s", usage);
        run_config_free(&cfg);
        return 2;
    }
    char *resume_abs = resume_dir ? realpath(resume_dir, NULL) : NULL;
    if (resume_abs && strcmp(cfg.run_dir, resume_abs) != 0) {
        /* the run directory moved: follow the directory given on the command line (saved absolute, as
         * every path of the resolved config) */
        snprintf(cfg.run_dir, sizeof cfg.run_dir, "%s", resume_abs);
        json_object_set_new(cfg.resolved, "run_dir", json_string(resume_abs));
    }
    free(resume_abs);
    /* one run per directory, before anything is written there; held until this process ends (see
     * run/lock.c for why the processes it starts share it) */
    run_dir_lock lock;
    if (run_dir_lock_acquire(&lock, cfg.run_dir, resume_dir ? "rlhf run --resume" : "rlhf run", &err)) {
        rlhf_error_print("rlhf run", &err);
        run_config_free(&cfg);
        return 1;
    }
    char path[2048];
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg.run_dir);
    if (!resume_dir && access(path, F_OK) == 0) {
        rlhf_error_set(&err, RLHF_EINVAL, cfg.run_dir,
                       "run directory already holds a run; continue it with --resume %s or choose another name",
                       cfg.run_dir);
        rlhf_error_print("rlhf run", &err);
        run_dir_lock_release(&lock);
        run_config_free(&cfg);
        return RLHF_EXIT_CONFIG;
    }
    /* everything the children will need is checked here, before any process starts */
    if (run_prepare(&cfg, &err)) {
        rlhf_error_print("rlhf run", &err);
        run_dir_lock_release_unused(&lock);
        run_config_free(&cfg);
        return prestart_status(&err);
    }
    char cfg_out[2048];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", cfg.run_dir);
    if (run_config_write(&cfg, cfg_out, &err)) {
        rlhf_error_print("rlhf run", &err);
        run_config_free(&cfg);
        return prestart_status(&err);
    }

    /* fresh credentials at every launch (docs/BROKER.md "Authentication"): the broker admits only the
     * processes started here; keys of an earlier launch stop working */
    {
        char cred[2100];
        snprintf(cred, sizeof cred, "%s/%s", cfg.run_dir, BROKER_CREDENTIALS_DIR);
        /* launcher.keep_credentials: a resumed run keeps its keys, so generators on other hosts holding
         * `rlhf credentials` copies can rejoin */
        broker_credential probe;
        int keep = json_is_true(json_object_get(json_object_get(cfg.resolved, "launcher"), "keep_credentials")) &&
                   broker_credential_load(&probe, cred, WIRE_ROLE_GENERATOR, NULL) == 0;
        broker_credential_clear(&probe);
        if (!keep && broker_credentials_create(cred, &err)) {
            rlhf_error_print("rlhf run", &err);
            run_config_free(&cfg);
            return prestart_status(&err);
        }
    }

    int start_step = updater_latest_checkpoint_step(cfg.run_dir);
    if (start_step < 0) start_step = 0;
    if (start_step >= cfg.steps) {
        fprintf(stderr, "rlhf run: %s already reached step %d of rl.steps=%d (raise it with --set rl.steps=N)\n",
                cfg.run_dir, start_step, cfg.steps);
        run_config_free(&cfg);
        return 0;
    }

    dashboard *dash = NULL;
    if (dash_listen && start_dashboard(&dash, dash_listen, cfg.run_dir, &err)) {
        rlhf_error_print("rlhf run: --dashboard", &err);
        run_config_free(&cfg);
        return err.code == RLHF_EINVAL ? RLHF_EXIT_CONFIG : RLHF_EXIT_ENV;
    }
    rlhf_on_signals(on_stop_signal, (const int[]){SIGINT, SIGTERM, 0});

    int G = cfg.gen_count;
    child *kids = calloc((size_t)G + 2, sizeof *kids);
    child *broker = &kids[0], *upd = &kids[1], *gens = &kids[2];
    {
        const char *a[] = {"broker", "--config", cfg_out, "--run-dir", cfg.run_dir, repair ? "--repair" : NULL, NULL};
        child_args(broker, "broker", a);
    }
    if (cfg.upd_count > 1) {
        /* rank 0 is the updater the broker knows; the others follow it (updater/dist.c) */
        char np[16], self[4096];
        snprintf(np, sizeof np, "%d", cfg.upd_count);
        ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
        self[sl > 0 ? sl : 0] = 0;
        const char *a[] = {"-np", np, "--quiet", self, "updater", "--config", cfg_out, NULL};
        const char *ah[] = {"-np", np, "--hostfile", cfg.upd_hostfile, "--quiet", self, "updater", "--config", cfg_out, NULL};
        child_args(upd, "updater", cfg.upd_hostfile[0] ? ah : a);
        upd->mpi_hostfile = cfg.upd_hostfile[0] != 0;
        free(upd->argv[0]);
        upd->argv[0] = strdup("mpirun");
        upd->mpi_ranks = cfg.upd_count;
        if (access("/dev/shm", W_OK) == 0)
            snprintf(upd->mpi_shm_dir, sizeof upd->mpi_shm_dir, "/dev/shm/rlhf-mpi.%d", (int)getpid());
    } else {
        const char *a[] = {"updater", "--config", cfg_out, NULL};
        child_args(upd, "updater", a);
    }
    for (int g = 0; g < G; g++) {
        char id[16], name[32];
        snprintf(id, sizeof id, "%d", g);
        snprintf(name, sizeof name, "generator-%d", g);
        const char *a[] = {"generator", "--config", cfg_out, "--id", id, NULL};
        child_args(&gens[g], name, a);
    }
    int rc = 0;
    evaluator ev = {.step = -1};
    cmd_run_events events;
    cmd_run_events_init(&events, cfg.run_dir, start_step);
    fprintf(stderr, "[rlhf run] %s: %s mode, %d generator(s), %d updater%s, steps %d..%d; logs in %s/logs/\n",
            cfg.name, cfg.mode == RUN_MODE_SYNC ? "sync" : "async", G, cfg.upd_count,
            cfg.upd_count > 1 ? "s (data-parallel, MPI)" : "", start_step, cfg.steps, cfg.run_dir);
    if (spawn(broker, cfg.run_dir, &err)) goto fail;
    usleep(200000); /* let the broker bind before peers connect (they retry anyway) */
    if (spawn(upd, cfg.run_dir, &err)) goto fail;
    for (int g = 0; g < G; g++)
        if (spawn(&gens[g], cfg.run_dir, &err)) goto fail;

    int tty = isatty(2) && !quiet;
    double t_start = rlhf_now(), last_progress = 0, last_events = 0;
    long last_sample = start_step; /* samples of earlier launches were shown then */
    int updater_done = 0, stopping = 0, fatal = 0, total_restarts = 0;
    double stop_sent = 0;
    while (!updater_done) {
        if (g_stop_requested && !stopping) {
            stopping = 1;
            stop_sent = rlhf_now();
            fprintf(stderr, "\n[rlhf run] stopping: asking the updater for a final checkpoint\n");
            if (upd->pid > 0) kill(upd->pid, SIGTERM);
        }
        if (stopping && rlhf_now() - stop_sent > 60 && upd->pid > 0) {
            fprintf(stderr, "[rlhf run] updater did not stop in 60 s: killing it\n");
            kill(upd->pid, SIGKILL);
        }
        if (stopping && upd->pid <= 0) {
            /* the updater was dead, waiting out its restart backoff: its last checkpoint is the final one */
            upd->restart_at = 0;
            break;
        }
        int st;
        pid_t pid;
        struct rusage ru;
        while ((pid = wait4(-1, &st, WNOHANG, &ru)) > 0) {
            char why[96];
            status_text(st, why, sizeof why);
            child *c = NULL;
            if (ev.c.pid == pid) {
                eval_finished(&ev, &cfg, pid, st, &events);
                continue;
            }
            for (int i = 0; i < G + 2; i++)
                if (kids[i].pid == pid) c = &kids[i];
            if (!c) continue;
            account(c, &ru);
            c->pid = 0;
            clear_mpi_shm(c, 0);
            if (c == upd) {
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
                    updater_done = 1;
                    if (!stopping && updater_latest_checkpoint_step(cfg.run_dir) < cfg.steps) {
                        int brc = reap_failed_broker(cfg.run_dir, broker, 10.0);
                        if (brc) {
                            rc = brc;
                            fatal = 1;
                        }
                    }
                    break;
                }
                if (stopping) {
                    updater_done = 1;
                    rc = 1;
                    fprintf(stderr, "[rlhf run] updater ended with %s while stopping\n", why);
                    break;
                }
            } else if (stopping) {
                continue;
            }
            if (status_fatal(st)) {
                /* the same failure would come back at every restart: stop with its cause, once */
                print_cause(cfg.run_dir, c, pid, st, "stopping the run");
                log_supervision(cfg.run_dir, c, pid, st, "stop", -1);
                rc = WEXITSTATUS(st);
                fatal = 1;
                updater_done = 1;
                break;
            }
            double lived = rlhf_now() - c->started;
            c->quick = lived < RESTART_QUICK_S ? c->quick + 1 : 1;
            if (c->quick > RESTART_QUICK_MAX || c->restarts >= RESTART_TOTAL_MAX) {
                print_cause(cfg.run_dir, c, pid, st, "stopping the run");
                fprintf(stderr, "[rlhf run] %s died %d times in a row within %.0f s of starting (%d restarts in all): "
                                "giving up\n", c->name, c->quick, RESTART_QUICK_S, c->restarts);
                log_supervision(cfg.run_dir, c, pid, st, "stop", -1);
                rc = 1;
                fatal = 1;
                updater_done = 1;
                break;
            }
            double delay = RESTART_DELAY0_S;
            for (int q = 1; q < c->quick && delay < RESTART_DELAY_MAX_S; q++) delay *= 2;
            if (delay > RESTART_DELAY_MAX_S) delay = RESTART_DELAY_MAX_S;
            c->restarts++;
            total_restarts++;
            c->restart_at = rlhf_now() + delay;
            fprintf(stderr, "\n[rlhf run] %s (pid %d) ended with %s: %s; restarting in %.2g s (restart #%d)\n",
                    c->name, (int)pid, why, class_meaning(st), delay, c->restarts);
            log_supervision(cfg.run_dir, c, pid, st, "restart", delay);
        }
        if (updater_done) break;
        /* restarts whose backoff has passed */
        for (int i = 0; i < G + 2 && !stopping; i++) {
            child *c = &kids[i];
            if (c->restart_at <= 0 || rlhf_now() < c->restart_at) continue;
            c->restart_at = 0;
            if (spawn(c, cfg.run_dir, &err)) goto fail;
            if (c == broker) {
                /* the new broker knows no peers: tell everyone to connect and say HELLO again */
                usleep(300000);
                for (int j = 1; j < G + 2; j++)
                    if (kids[j].pid > 0) kill(kids[j].pid, SIGUSR1);
            }
        }
        if (updater_done) break;
        double now = rlhf_now();
        if (cfg.eval_every > 0 && !stopping && ev.c.pid <= 0 && now >= ev.next_scan) {
            ev.next_scan = now + 0.25; /* a checkpoint due for evaluation is picked up within a few steps */
            if (eval_start(&ev, &cfg, &err)) goto fail;
        }
        if (now - last_events > 1.0) {
            cmd_run_events_poll(&events);
            last_events = now;
        }
        if (!quiet && now - last_progress > (tty ? 1.0 : 15.0)) {
            print_new_sample(&cfg, &last_sample, tty);
            progress(&cfg, t_start, start_step, tty, total_restarts);
            last_progress = now;
        }
        usleep(50000);
    }
    cmd_run_events_poll(&events); /* the last steps */
    if (!quiet) {
        print_new_sample(&cfg, &last_sample, 0);
        progress(&cfg, t_start, start_step, 0, total_restarts);
    }
    for (int g = 0; g < G; g++) stop_child(&gens[g], SIGTERM, 5);
    stop_child(upd, SIGTERM, 30);
    stop_child(broker, SIGTERM, 10);
    /* weights files a broker of this run left when it died (kill -9) go with the run (BROKER.md) */
    sweep_weights_files(&cfg);
    /* a run that reached its end evaluates what is still due (its last checkpoint at least) before it says
     * done; a stopped one leaves them marked, and --resume evaluates them */
    if (cfg.eval_every > 0 && !fatal && !stopping && !g_stop_requested) {
        while (!g_stop_requested) {
            if (ev.c.pid <= 0 && (eval_start(&ev, &cfg, &err) || ev.step < 0)) break;
            int st;
            pid_t pid = waitpid(ev.c.pid, &st, WNOHANG);
            if (pid == ev.c.pid) eval_finished(&ev, &cfg, pid, st, &events);
            else usleep(50000);
        }
        if (err.code) rlhf_error_print("rlhf run", &err);
    }
    stop_child(&ev.c, SIGTERM, 5);
    child_free(&ev.c);
    int final_step = updater_latest_checkpoint_step(cfg.run_dir);
    if (!fatal && !stopping && !rc && final_step < cfg.steps) {
        /* the updater ended cleanly before rl.steps: something stopped the run (a CONTROL stop at the
         * broker); that is not the run's own end */
        print_early_end(cfg.run_dir, final_step < 0 ? 0 : final_step, cfg.steps);
        rc = RLHF_EXIT_TRANSIENT;
        fatal = 1;
    }
    if (fatal)
        fprintf(stderr, "[rlhf run] run stopped at step %d; after fixing the cause continue with: rlhf run --resume %s\n",
                final_step < 0 ? 0 : final_step, cfg.run_dir);
    else if (stopping)
        fprintf(stderr, "[rlhf run] stopped at step %d; continue with: rlhf run --resume %s\n", final_step,
                cfg.run_dir);
    else if (!rc)
        fprintf(stderr, "[rlhf run] done: %d steps in %.1f s; checkpoints in %s/checkpoints/\n", final_step,
                rlhf_now() - t_start, cfg.run_dir);
    write_cpu_account(&cfg, kids, G + 2, rlhf_now() - t_start, quiet);
    if (total_restarts)
        fprintf(stderr, "[rlhf run] %d restart(s) during the run: %s/restarts.jsonl\n", total_restarts, cfg.run_dir);
    if (cfg.eval_every > 0) eval_summary(&cfg);
    cmd_run_events_fini(&events);
    for (int i = 0; i < G + 2; i++) child_free(&kids[i]);
    free(kids);
    dashboard_destroy(&dash);
    run_config_free(&cfg);
    return rc;
fail:
    rlhf_error_print("rlhf run", &err);
    stop_child(&ev.c, SIGTERM, 5);
    child_free(&ev.c);
    for (int i = 0; i < G + 2; i++) stop_child(&kids[i], SIGTERM, 5);
    for (int i = 0; i < G + 2; i++) child_free(&kids[i]);
    sweep_weights_files(&cfg);
    cmd_run_events_fini(&events);
    free(kids);
    dashboard_destroy(&dash);
    run_config_free(&cfg);
    return 1;
}
