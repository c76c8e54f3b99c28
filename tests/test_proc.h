/* tests/test_proc.h — running programs from tests: start a child (fork + exec) with its stdout/stderr
 * sent to files, wait for it with a timeout, stop or kill it, or all in one (run). Header-only (static
 * inline) like tests/test_paths.h, so any test binary or benchmark can use it without a module.mk
 * change. Tests that do something special with a child (a pipe to read its first line, a child that
 * is not a program) keep their own fork. */
#ifndef RLHF_TEST_PROC_H
#define RLHF_TEST_PROC_H

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct test_proc_opts {
    const char *out;        /* stdout to this file; NULL: inherited */
    const char *err;        /* stderr to this file; NULL: inherited; the same path as out: one file for both */
    int append;             /* 1: append to out/err; 0: truncate them */
    int die_with_parent;    /* 1: the child gets SIGTERM when the test process dies (nothing left behind) */
    const char *const *env; /* NULL, or NULL-terminated "NAME=VALUE" strings set in the child only */
} test_proc_opts;

static inline double test_proc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* In the child: fd <- path. 0, or -1 when the file cannot be opened. */
static inline int test_proc_redirect_(int fd, const char *path, int append) {
    int f = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
    if (f < 0) return -1;
    dup2(f, fd);
    close(f);
    return 0;
}

/* Starts the program at `path` (NULL: argv[0]) with argv; returns its pid, or -1 if fork failed. In the
 * child a file that cannot be opened is exit status 126, a failed exec 127. */
static inline pid_t test_proc_spawn(const char *path, char *const argv[], const test_proc_opts *o) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    if (o && o->die_with_parent) prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (o && o->out && test_proc_redirect_(1, o->out, o->append)) _exit(126);
    if (o && o->err) {
        if (o->out && !strcmp(o->out, o->err)) dup2(1, 2); /* one open file: writes do not overwrite each other */
        else if (test_proc_redirect_(2, o->err, o->append)) _exit(126);
    }
    for (const char *const *e = o ? o->env : NULL; e && *e; e++) putenv((char *)*e);
    execv(path ? path : argv[0], argv);
    _exit(127);
}

enum { TEST_PROC_MAX_ARGS = 256 };

/* test_proc_spawn with argv = {argv0, args[0], args[1], ..., NULL}: args is NULL-terminated; at most
 * TEST_PROC_MAX_ARGS - 2 of them are passed. */
static inline pid_t test_proc_spawn_args(const char *path, const char *argv0, const char *const *args,
                                         const test_proc_opts *o) {
    char *argv[TEST_PROC_MAX_ARGS];
    int n = 0;
    argv[n++] = (char *)argv0;
    for (int i = 0; args && args[i] && n < TEST_PROC_MAX_ARGS - 1; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return test_proc_spawn(path, argv, o);
}

/* Waits for pid: its exit status, 128 + N when signal N ended it, -1 on error or after timeout_s seconds
 * (then it is killed and reaped). timeout_s <= 0 waits without a limit. */
static inline int test_proc_wait(pid_t pid, double timeout_s) {
    if (pid <= 0) return -1;
    int st = 0;
    if (timeout_s <= 0) {
        if (waitpid(pid, &st, 0) != pid) return -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    double end = test_proc_now() + timeout_s;
    while (test_proc_now() < end) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0) return -1;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* Spawn + wait: the exit status as test_proc_wait gives it (-1 also when fork failed). */
static inline int test_proc_run(const char *path, char *const argv[], const test_proc_opts *o, double timeout_s) {
    pid_t pid = test_proc_spawn(path, argv, o);
    return pid < 0 ? -1 : test_proc_wait(pid, timeout_s);
}

/* test_proc_spawn_args + test_proc_wait. */
static inline int test_proc_run_args(const char *path, const char *argv0, const char *const *args,
                                     const test_proc_opts *o, double timeout_s) {
    pid_t pid = test_proc_spawn_args(path, argv0, args, o);
    return pid < 0 ? -1 : test_proc_wait(pid, timeout_s);
}

/* SIGKILL and reap. */
static inline void test_proc_kill(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* SIGTERM, up to grace_s seconds to exit, then SIGKILL; always reaped. Returns as test_proc_wait. */
static inline int test_proc_stop(pid_t pid, double grace_s) {
    if (pid <= 0) return -1;
    kill(pid, SIGTERM);
    return test_proc_wait(pid, grace_s);
}

#endif
