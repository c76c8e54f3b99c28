/* cli/plot.c — `rlhf plot RUN_DIR... -o FILE.png|FILE.svg [--metric NAME ...] [--x step|wall]`: the
 * curves of one or more runs overlaid, one panel per metric, drawn by gnuplot (Debian's gnuplot-nox).
 *
 * Each run's metrics.jsonl gives a point per step of every numeric key; the held-out evaluation
 * (eval/pass_rate, eval/reward_mean, eval/pass_rate_greedy, eval/pass_rate_sampled) comes from the run's
 * eval.jsonl, at the step of the checkpoint each record scored (from metrics.jsonl's eval/ keys when a
 * run has no eval.jsonl). The x axis is the step, or with --x wall the seconds since the run started
 * (metrics.jsonl's wall_s). Without --metric the panels are the defaults (DEFAULT_METRICS) that at
 * least one run has. --smooth N draws each training curve as a trailing N-point mean (one run's
 * per-step reward is noisy); the held-out points stay as they are.
 *
 * Bad input is one line naming the run and what is wrong: a missing directory, a run without
 * metrics.jsonl or without a complete step, a line that is not JSON (where it is), a metric no run has.
 * A torn last line (a run still writing, or killed mid-line) is skipped, and said once per run. The
 * data and the gnuplot script go to a temporary directory; the image is written beside FILE under a
 * temporary name and renamed onto it, so FILE is never half-written. Exit 0 on success, 1 for bad
 * input or a gnuplot failure, 2 for a usage error. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"

extern char **environ;

static const char usage[] =
    "usage: rlhf plot RUN_DIR... -o FILE.png|FILE.svg [--metric NAME ...] [--x step|wall] [--smooth N]\n"
    "  Overlays the runs' curves, one panel per metric (gnuplot).\n"
    "  -o FILE           the image: .png or .svg (written whole, via a temporary file)\n"
    "  --metric NAME     a key of metrics.jsonl (reward/mean, kl, ...) or a held-out figure\n"
    "                    (eval/pass_rate_greedy, eval/pass_rate_sampled, eval/pass_rate,\n"
    "                    eval/reward_mean); repeatable. Default: reward/mean, pass_rate,\n"
    "                    eval/pass_rate_greedy, eval/pass_rate_sampled, kl, entropy,\n"
    "                    staleness/mean, gen/tokens_per_s (those some run has)\n"
    "  --x step|wall     x axis: the training step (default) or seconds since the run started\n"
    "  --smooth N        each training curve as the mean of its last N points (default 1 = raw);\n"
    "                    held-out figures are drawn as they are\n";

static const char *const DEFAULT_METRICS[] = {"reward/mean",    "pass_rate", "eval/pass_rate_greedy",
                                              "eval/pass_rate_sampled", "kl", "entropy", "staleness/mean",
                                              "gen/tokens_per_s"};
#define MAX_RUNS 128 /* a benchmark's seeds x variants (issue 19's had 56 runs) */
#define MAX_METRICS 32

typedef struct series {
    double *x, *y;
    size_t n, cap;
} series;

typedef struct run_data {
    const char *dir;
    char label[256];
    json_t *keys;    /* {metric: true}: every numeric key of the run (and its held-out figures) */
    json_t *records; /* the parsed lines of metrics.jsonl, in order */
    json_t *evals;   /* eval.jsonl's records, or NULL */
} run_data;

static int series_add(series *s, double x, double y) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        double *nx = realloc(s->x, cap * sizeof *nx);
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, cap * sizeof *ny);
        if (!ny) return -1;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
    return 0;
}

/* The lines of PATH as JSON objects. A torn last line (no newline, or not JSON at the very end) is
 * skipped and *torn set; any other line that is not a JSON object is an error naming path:line. */
static int read_jsonl(const char *path, json_t **out, int *torn, rlhf_error *err) {
    char *text = NULL;
    size_t n = 0;
    *out = NULL;
    *torn = 0;
    if (rlhf_read_file(path, &text, &n, err)) return -1;
    json_t *arr = json_array();
    long lineno = 0;
    for (size_t pos = 0; pos < n;) {
        char *nl = memchr(text + pos, '\n', n - pos);
        size_t end = nl ? (size_t)(nl - text) : n;
        lineno++;
        text[end] = 0;
        const char *line = text + pos;
        pos = end + 1;
        while (*line == ' ' || *line == '\t' || *line == '\r') line++;
        if (!*line) continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        int last = !nl || pos >= n;
        if (!json_is_object(o)) {
            json_decref(o);
            if (last && (!nl || !o)) { /* cut off mid-line: a run still writing, or a kill */
                *torn = 1;
                break;
            }
            char where[1200];
            snprintf(where, sizeof where, "%.1100s:%ld", path, lineno);
            json_decref(arr);
            free(text);
            return rlhf_error_set(err, RLHF_ECORRUPT, where, "not a JSON object%s%s", o ? "" : ": ", o ? "" : je.text);
        }
        json_array_append_new(arr, o);
    }
    free(text);
    *out = arr;
    return 0;
}

static void add_numeric_keys(json_t *keys, json_t *o, const char *prefix) {
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (!json_is_number(v) || !strcmp(k, "step")) continue;
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, k);
        json_object_set_new(keys, name, json_true());
    }
}

static int load_run(run_data *r, const char *dir, rlhf_error *err) {
    memset(r, 0, sizeof *r);
    r->dir = dir;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return rlhf_error_set(err, RLHF_EINVAL, dir, "no such run directory");
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (stat(path, &st) != 0)
        return rlhf_error_set(err, RLHF_EINVAL, dir, "no metrics.jsonl (not a run directory, or the run has not "
                                                     "finished a step yet)");
    if (!S_ISREG(st.st_mode)) return rlhf_error_set(err, RLHF_EINVAL, path, "not a regular file");
    int torn = 0;
    if (read_jsonl(path, &r->records, &torn, err)) return -1;
    if (torn) fprintf(stderr, "rlhf plot: note: %s: torn last line skipped (the run is writing it, or was killed)\n", path);
    if (json_array_size(r->records) == 0)
        return rlhf_error_set(err, RLHF_EINVAL, path, "no complete step yet");
    r->keys = json_object();
    size_t i;
    json_t *o;
    json_array_foreach(r->records, i, o) add_numeric_keys(r->keys, o, "");
    snprintf(path, sizeof path, "%s/eval.jsonl", dir);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        if (read_jsonl(path, &r->evals, &torn, err)) return -1;
        if (torn) fprintf(stderr, "rlhf plot: note: %s: torn last line skipped\n", path);
        json_array_foreach(r->evals, i, o) add_numeric_keys(r->keys, o, "eval/");
    }
    /* the label: the directory's last name */
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    const char *b = dir + len;
    while (b > dir && b[-1] != '/') b--;
    snprintf(r->label, sizeof r->label, "%.*s", (int)(dir + len - b), b);
    return 0;
}

static void free_run(run_data *r) {
    json_decref(r->keys);
    json_decref(r->records);
    json_decref(r->evals);
}

/* wall_s of the metrics line of `step` (for a held-out point with --x wall), or NAN. */
static double wall_of_step(const run_data *r, long step) {
    size_t i;
    json_t *o;
    json_array_foreach(r->records, i, o) {
        if (json_integer_value(json_object_get(o, "step")) == step) return json_number_value(json_object_get(o, "wall_s"));
    }
    return NAN;
}

/* The points of one metric of one run. */
static int collect(const run_data *r, const char *metric, int x_wall, series *s, rlhf_error *err) {
    int is_eval = !strncmp(metric, "eval/", 5) && strcmp(metric, "eval/step");
    size_t i;
    json_t *o;
    if (is_eval && r->evals) {
        json_array_foreach(r->evals, i, o) {
            json_t *v = json_object_get(o, metric + 5);
            if (!json_is_number(v)) continue;
            long step = (long)json_integer_value(json_object_get(o, "step"));
            double x = x_wall ? wall_of_step(r, step) : (double)step;
            if (!isnan(x) && series_add(s, x, json_number_value(v))) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        }
        return 0;
    }
    json_array_foreach(r->records, i, o) {
        json_t *v = json_object_get(o, metric);
        if (!json_is_number(v)) continue;
        double x;
        if (is_eval) { /* a held-out figure copied into metrics.jsonl: at the step it scored */
            long step = (long)json_integer_value(json_object_get(o, "eval/step"));
            x = x_wall ? wall_of_step(r, step) : (double)step;
            if (isnan(x)) continue;
        } else if (x_wall) {
            json_t *w = json_object_get(o, "wall_s");
            if (!json_is_number(w)) {
                char where[4200];
                snprintf(where, sizeof where, "%s/metrics.jsonl", r->dir);
                return rlhf_error_set(err, RLHF_EINVAL, where, "step %lld has no wall_s: plot it with --x step",
                                      (long long)json_integer_value(json_object_get(o, "step")));
            }
            x = json_number_value(w);
        } else {
            x = (double)json_integer_value(json_object_get(o, "step"));
        }
        if (series_add(s, x, json_number_value(v))) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    return 0;
}

/* s as a gnuplot single-quoted string body ('' is a quote). */
static void put_quoted(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        if (*s != '\n') fputc(*s, f);
    }
    fputc('\'', f);
}

/* Runs `gnuplot SCRIPT`; its stderr to LOG. 0, or an error with gnuplot's last line. */
static int run_gnuplot(const char *script, const char *log, rlhf_error *err) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char *argv[] = {"gnuplot", (char *)script, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return rlhf_error_set(err, RLHF_EIO, "gnuplot", "cannot start: %s (scripts/install-deps.sh installs gnuplot-nox)",
                              strerror(rc));
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        return rlhf_error_set(err, RLHF_EIO, "gnuplot", "not found (scripts/install-deps.sh installs gnuplot-nox)");
    char *text = NULL;
    size_t n = 0;
    rlhf_read_file(log, &text, &n, NULL);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ')) text[--n] = 0;
    const char *last = text ? strrchr(text, '\n') : NULL;
    last = last ? last + 1 : text ? text : "";
    rc = rlhf_error_set(err, RLHF_EIO, "gnuplot", "failed (status %d): %s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, last);
    free(text);
    return rc;
}

static void remove_dir(const char *dir, int n_runs, int n_metrics) {
    char p[4200];
    for (int r = 0; r < n_runs; r++)
        for (int m = 0; m < n_metrics; m++) {
            snprintf(p, sizeof p, "%s/run%d_metric%d.dat", dir, r, m);
            unlink(p);
        }
    snprintf(p, sizeof p, "%s/plot.gp", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/gnuplot.err", dir);
    unlink(p);
    rmdir(dir);
}

int cmd_plot(int argc, char **argv) {
    const char *out = NULL, *x_axis = "step";
    int smooth = 1;
    /* room for every argument, so that too many runs is this command's own error, not the parser's */
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    if (!dirs) {
        fprintf(stderr, "rlhf plot: error: out of memory\n");
        return 1;
    }
    char *metric_v[MAX_METRICS + 1];
    rlhf_opt_strs metric_opt = {.v = metric_v, .cap = MAX_METRICS};
    const rlhf_opt opts[] = {RLHF_OPT("-o", RLHF_OPT_STR, &out), RLHF_OPT("--out", RLHF_OPT_STR, &out),
                             RLHF_OPT("--metric", RLHF_OPT_STRS, &metric_opt), RLHF_OPT("--x", RLHF_OPT_STR, &x_axis),
                             RLHF_OPT_RANGE("--smooth", RLHF_OPT_INT, &smooth, 1, 1000000), RLHF_OPT_END};
    int n_runs = 0;
    int prc = rlhf_opts_parse(argc, argv, "rlhf plot", usage, opts, dirs, argc + 1, &n_runs);
    if (prc >= 0) {
        free(dirs);
        return prc;
    }
    const char *ext = out ? strrchr(out, '.') : NULL;
    const char *bad = !n_runs                                   ? "give at least one RUN_DIR"
                      : n_runs > MAX_RUNS                       ? "at most " RLHF_STR(MAX_RUNS) " runs"
                      : !out                                    ? "-o FILE.png|FILE.svg is required"
                      : !ext || (strcmp(ext, ".png") && strcmp(ext, ".svg")) ? "-o must name a .png or .svg file"
                      : strcmp(x_axis, "step") && strcmp(x_axis, "wall")      ? "--x must be step or wall"
                                                                              : NULL;
    if (bad) {
        fprintf(stderr, "rlhf plot: error: %s\n%s", bad, usage);
        free(dirs);
        return 2;
    }
    int svg = !strcmp(ext, ".svg"), x_wall = !strcmp(x_axis, "wall");
    rlhf_error err = {0};
    run_data runs[MAX_RUNS];
    int loaded = 0, rc = 0;
    for (; loaded < n_runs; loaded++)
        if (load_run(&runs[loaded], dirs[loaded], &err)) {
            free_run(&runs[loaded]);
            break;
        }
    free(dirs); /* the runs keep argv's strings, not this array */
    if (loaded < n_runs) {
        rlhf_error_print("rlhf plot", &err);
        for (int r = 0; r < loaded; r++) free_run(&runs[r]);
        return 1;
    }
    /* two runs of the same name are told apart by the path given */
    for (int a = 0; a < n_runs; a++)
        for (int b = 0; b < n_runs; b++)
            if (a != b && !strcmp(runs[a].label, runs[b].label) && strcmp(runs[a].dir, runs[b].dir)) {
                snprintf(runs[a].label, sizeof runs[a].label, "%.255s", runs[a].dir);
                break;
            }
    /* the panels */
    const char *metrics[MAX_METRICS];
    int n_metrics = 0;
    if (metric_opt.n) {
        for (int i = 0; i < metric_opt.n; i++) {
            int found = 0;
            for (int r = 0; r < n_runs; r++) found |= json_object_get(runs[r].keys, metric_v[i]) != NULL;
            if (!found) {
                char known[600] = "";
                const char *k;
                json_t *v;
                int shown = 0;
                json_object_foreach(runs[0].keys, k, v) {
                    if (shown++ == 8) {
                        strncat(known, ", ...", sizeof known - strlen(known) - 1);
                        break;
                    }
                    snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", shown > 1 ? ", " : "", k);
                }
                fprintf(stderr, "rlhf plot: error: --metric %s: no run has it (%s has %s)\n", metric_v[i], runs[0].dir,
                        known);
                for (int r = 0; r < n_runs; r++) free_run(&runs[r]);
                return 2;
            }
            metrics[n_metrics++] = metric_v[i];
        }
    } else {
        for (size_t i = 0; i < sizeof DEFAULT_METRICS / sizeof DEFAULT_METRICS[0]; i++)
            for (int r = 0; r < n_runs; r++)
                if (json_object_get(runs[r].keys, DEFAULT_METRICS[i])) {
                    metrics[n_metrics++] = DEFAULT_METRICS[i];
                    break;
                }
        if (!n_metrics) {
            fprintf(stderr, "rlhf plot: error: %s: none of the default metrics (reward/mean, pass_rate, ...); name "
                            "some with --metric\n", runs[0].dir);
            for (int r = 0; r < n_runs; r++) free_run(&runs[r]);
            return 1;
        }
    }
    /* the data files and the script, in a temporary directory */
    char tmp[1100];
    const char *td = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%.1000s/rlhf-plot-XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(tmp)) {
        fprintf(stderr, "rlhf plot: error: %s: cannot create a temporary directory: %s\n", tmp, strerror(errno));
        for (int r = 0; r < n_runs; r++) free_run(&runs[r]);
        return 1;
    }
    char out_tmp[4200], script[1200], log[1200], p[1200];
    snprintf(out_tmp, sizeof out_tmp, "%s.tmp.%ld", out, (long)getpid());
    snprintf(script, sizeof script, "%s/plot.gp", tmp);
    snprintf(log, sizeof log, "%s/gnuplot.err", tmp);
    if ((rc = rlhf_check_writable(out, &err))) goto out;
    int any_points = 0;
    for (int r = 0; r < n_runs && !rc; r++)
        for (int m = 0; m < n_metrics && !rc; m++) {
            series s = {0};
            rc = collect(&runs[r], metrics[m], x_wall, &s, &err);
            snprintf(p, sizeof p, "%s/run%d_metric%d.dat", tmp, r, m);
            FILE *f = rc ? NULL : fopen(p, "w");
            if (!rc && !f) rc = rlhf_error_set(&err, RLHF_EIO, p, "cannot write: %s", strerror(errno));
            int window = strncmp(metrics[m], "eval/", 5) ? smooth : 1;
            double sum = 0;
            for (size_t i = 0; f && i < s.n; i++) { /* the trailing mean of up to `window` points */
                sum += s.y[i];
                if (i >= (size_t)window) sum -= s.y[i - (size_t)window];
                fprintf(f, "%.17g %.9g\n", s.x[i], sum / (double)(i + 1 < (size_t)window ? i + 1 : (size_t)window));
            }
            if (f && fclose(f) != 0) rc = rlhf_error_set(&err, RLHF_EIO, p, "cannot write: %s", strerror(errno));
            any_points |= s.n > 0;
            free(s.x);
            free(s.y);
        }
    if (rc) goto out;
    if (!any_points) {
        rc = rlhf_error_set(&err, RLHF_EINVAL, "rlhf plot", "the runs have no points of the metrics asked for");
        goto out;
    }
    FILE *g = fopen(script, "w");
    if (!g) {
        rc = rlhf_error_set(&err, RLHF_EIO, script, "cannot write: %s", strerror(errno));
        goto out;
    }
    int cols = n_metrics > 1 ? 2 : 1, rows = (n_metrics + cols - 1) / cols;
    fprintf(g, "set terminal %s size %d,%d%s\n", svg ? "svg" : "pngcairo", 560 * cols, 340 * rows,
            svg ? " dynamic background rgb 'white'" : " background rgb 'white'");
    fputs("set output ", g);
    put_quoted(g, out_tmp);
    fprintf(g, "\nset multiplot layout %d,%d\nset grid\nset key top left noenhanced box\nset xlabel '%s'\n", rows, cols,
            x_wall ? "seconds since the run started" : "step");
    for (int m = 0; m < n_metrics; m++) {
        char title[300];
        if (smooth > 1 && strncmp(metrics[m], "eval/", 5))
            snprintf(title, sizeof title, "%s (mean of the last %d points)", metrics[m], smooth);
        else
            snprintf(title, sizeof title, "%s", metrics[m]);
        fputs("set title ", g);
        put_quoted(g, title);
        fputs(" noenhanced\nplot", g);
        int plotted = 0;
        for (int r = 0; r < n_runs; r++) {
            snprintf(p, sizeof p, "%s/run%d_metric%d.dat", tmp, r, m);
            struct stat st;
            if (stat(p, &st) != 0 || st.st_size == 0) continue; /* this run lacks the metric */
            fprintf(g, "%s ", plotted++ ? "," : "");
            put_quoted(g, p);
            fprintf(g, " using 1:2 with linespoints pointsize 0.4 linecolor %d title ", r + 1);
            put_quoted(g, runs[r].label);
        }
        if (!plotted) fputs(" NaN notitle", g); /* an empty panel keeps the layout */
        fputc('\n', g);
    }
    fputs("unset multiplot\nset output\n", g);
    if (fclose(g) != 0) {
        rc = rlhf_error_set(&err, RLHF_EIO, script, "cannot write: %s", strerror(errno));
        goto out;
    }
    if ((rc = run_gnuplot(script, log, &err))) goto out;
    struct stat st;
    if (stat(out_tmp, &st) != 0 || st.st_size == 0) {
        rc = rlhf_error_set(&err, RLHF_EIO, out, "gnuplot wrote nothing");
        goto out;
    }
    if (rename(out_tmp, out) != 0) {
        rc = rlhf_error_set(&err, RLHF_EIO, out, "cannot rename %s onto it: %s", out_tmp, strerror(errno));
        goto out;
    }
    fprintf(stderr, "rlhf plot: %s: %d run%s, %d metric%s\n", out, n_runs, n_runs > 1 ? "s" : "", n_metrics,
            n_metrics > 1 ? "s" : "");
out:
    if (rc) {
        rlhf_error_print("rlhf plot", &err);
        unlink(out_tmp);
    }
    remove_dir(tmp, n_runs, n_metrics);
    for (int r = 0; r < n_runs; r++) free_run(&runs[r]);
    return rc ? 1 : 0;
}
