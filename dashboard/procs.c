/* dashboard/procs.c — /api/processes: the processes of a run that run on this host (found by their command
 * line: `rlhf broker|generator|updater --config RUN_DIR/config.json ...`, `rlhf eval RUN_DIR ...`), their
 * CPU time, CPU share since the previous call, resident memory and threads from /proc; and per process the
 * supervision events of restarts.jsonl. Generators on other hosts are not seen (their groups are). */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dashboard/dashboard_int.h"

/* /proc/PID/cmdline as argv (pointers into buf); argc, 0 when unreadable. */
static int read_cmdline(int pid, char *buf, size_t cap, const char **argv, int max) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    int argc = 0;
    for (char *s = buf; s < buf + n && argc < max; s += strlen(s) + 1) argv[argc++] = s;
    return argc;
}

/* The process's name in the run ("broker", "generator-0", "updater", "eval"), or 0 when it is not one of
 * RUN_DIR's. */
static int run_process_name(dashboard_run *r, const char **argv, int argc, char *name, size_t cap) {
    if (argc < 3) return 0;
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strncmp(base, "rlhf", 4) != 0) return 0;
    const char *role = argv[1];
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", r->dir);
    if (!strcmp(role, "eval")) {
        char *real = realpath(argv[2], NULL);
        int same = real && !strcmp(real, r->dir);
        free(real);
        if (!same) return 0;
        snprintf(name, cap, "eval");
        return 1;
    }
    if (strcmp(role, "broker") && strcmp(role, "generator") && strcmp(role, "updater")) return 0;
    int ours = 0;
    const char *id = NULL;
    for (int i = 2; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--config") && !strcmp(argv[i + 1], cfg)) ours = 1;
        else if (!strcmp(argv[i], "--config")) { /* the same file by another path (a symlink on the way) */
            char *real = realpath(argv[i + 1], NULL);
            ours = real && !strcmp(real, cfg);
            free(real);
        }
        if (!strcmp(argv[i], "--id")) id = argv[i + 1];
    }
    if (!ours) return 0;
    if (id) snprintf(name, cap, "%s-%s", role, id);
    else snprintf(name, cap, "%s", role);
    return 1;
}

/* utime + stime (s), RSS (MiB), threads of /proc/PID/stat; 0 or -1. */
static int read_stat(int pid, double *cpu_s, double *rss_mb, long *threads) {
    char p[64], buf[2048];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *s = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!s) return -1;
    unsigned long utime = 0, stime = 0;
    long nthreads = 0, rss = 0;
    /* fields after ")": 3 state ... 14 utime 15 stime ... 20 num_threads ... 24 rss */
    int field = 2;
    for (char *tok = strtok(s + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14) utime = strtoul(tok, NULL, 10);
        else if (field == 15) stime = strtoul(tok, NULL, 10);
        else if (field == 20) nthreads = strtol(tok, NULL, 10);
        else if (field == 24) {
            rss = strtol(tok, NULL, 10);
            break;
        }
    }
    double tick = (double)sysconf(_SC_CLK_TCK);
    *cpu_s = (double)(utime + stime) / (tick > 0 ? tick : 100);
    *rss_mb = (double)rss * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
    *threads = nthreads;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

json_t *dashboard_api_processes(dashboard_run *r) {
    json_t *procs = json_array(), *missing = json_array(), *notes = json_array();
    double t = now_s();
    DIR *d = opendir("/proc");
    dashboard_cpu_sample next[DASHBOARD_MAX_PROCS];
    int n_next = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        char buf[8192], name[128];
        const char *argv[32];
        int pid = atoi(e->d_name);
        int argc = read_cmdline(pid, buf, sizeof buf, argv, 32);
        if (!run_process_name(r, argv, argc, name, sizeof name)) continue;
        double cpu, rss;
        long threads;
        if (read_stat(pid, &cpu, &rss, &threads)) continue;
        json_t *o = json_pack("{s:s, s:i, s:f, s:f, s:I}", "name", name, "pid", pid, "cpu_s", cpu, "rss_mb", rss,
                              "threads", (json_int_t)threads);
        for (int i = 0; i < r->n_cpu; i++) {
            if (r->cpu[i].pid != pid || t - r->cpu[i].t <= 0.05) continue;
            double pct = 100.0 * (cpu - r->cpu[i].cpu_s) / (t - r->cpu[i].t);
            json_object_set_new(o, "cpu_pct", json_real(pct < 0 ? 0 : pct));
        }
        json_array_append_new(procs, o);
        if (n_next < DASHBOARD_MAX_PROCS) next[n_next++] = (dashboard_cpu_sample){pid, cpu, t};
    }
    if (d) closedir(d);
    /* keep the previous sample of a process sampled less than 1 s ago, so that two pages polling do not
     * each see a 0-length interval */
    for (int i = 0; i < n_next; i++) {
        for (int j = 0; j < r->n_cpu; j++)
            if (r->cpu[j].pid == next[i].pid && t - r->cpu[j].t < 1.0) next[i] = r->cpu[j];
    }
    memcpy(r->cpu, next, (size_t)n_next * sizeof *next);
    r->n_cpu = n_next;
    if (!json_array_size(procs))
        json_array_append_new(notes, json_string("no process of this run is running on this host (a finished run, "
                                                 "or generators on other hosts)"));
    /* supervision: per process, the events of restarts.jsonl */
    dashboard_jsonl_refresh(&r->restarts);
    json_t *sup = json_object();
    size_t i;
    json_t *row;
    json_array_foreach(r->restarts.rows, i, row) {
        const char *p = json_string_value(json_object_get(row, "process"));
        if (!p) continue;
        json_t *s = json_object_get(sup, p);
        if (!s) json_object_set_new(sup, p, s = json_pack("{s:i}", "events", 0));
        json_object_set_new(s, "events", json_integer(json_integer_value(json_object_get(s, "events")) + 1));
        json_object_set(s, "restarts", json_object_get(row, "restarts"));
        json_object_set(s, "last_action", json_object_get(row, "action"));
        json_object_set(s, "last_class", json_object_get(row, "class"));
        json_object_set(s, "last_time", json_object_get(row, "time"));
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "processes", procs, "supervision", sup, "missing", missing, "notes", notes);
}
