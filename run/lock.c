/* run/lock.c — one run per directory: an advisory flock(2) on RUN_DIR/.lock (see run/run.h).
 *
 * The lock belongs to the lock file's inode, so the file is never replaced or removed while a run
 * may use it: a rename over it (the usual atomic write) would hand the next launcher a fresh,
 * unlocked inode while the old one is still held. Its content — who holds it — is therefore written
 * in place, as one write after truncation, and a reader that finds it empty or cut short (the holder
 * between flock and write) reads again for a moment. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "run/run.h"

/* The holder's line: "pid 1234 started 2026-12-05T12:55:00Z by rlhf run --resume\n". */
static int read_holder(const char *path, long *pid, char *started, size_t ns, char *by, size_t nb) {
    for (int tries = 0; tries < 50; tries++) { /* up to 0.5 s for the holder to write it */
        char buf[512] = "";
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            buf[n > 0 ? n : 0] = 0;
        }
        char st[64], who[256];
        if (strchr(buf, '\n') && sscanf(buf, "pid %ld started %63s by %255[^\n]", pid, st, who) == 3) {
            snprintf(started, ns, "%s", st);
            snprintf(by, nb, "%s", who);
            return 0;
        }
        usleep(10000);
    }
    return -1;
}

/* Makes run_dir (mkdir -p), remembering the highest folder it created, so that a run refused before
 * it starts can remove what it made. */
static int make_dir(run_dir_lock *l, const char *run_dir, rlhf_error *err) {
    char p[sizeof l->created];
    snprintf(p, sizeof p, "%s", run_dir);
    l->created[0] = 0;
    struct stat sb;
    for (;;) { /* walk up while the folder is missing: the last missing one is the top we create */
        size_t n = strlen(p);
        while (n > 1 && p[n - 1] == '/') p[--n] = 0;
        if (stat(p, &sb) == 0) break;
        snprintf(l->created, sizeof l->created, "%s", p);
        char *slash = strrchr(p, '/');
        if (!slash || slash == p) break;
        *slash = 0;
    }
    return rlhf_mkdirs(run_dir, err);
}

int run_dir_lock_acquire(run_dir_lock *l, const char *run_dir, const char *command, rlhf_error *err) {
    memset(l, 0, sizeof *l);
    l->fd = -1;
    snprintf(l->dir, sizeof l->dir, "%s", run_dir);
    snprintf(l->path, sizeof l->path, "%s/.lock", run_dir);
    int rc = make_dir(l, run_dir, err);
    if (rc) return rc;
    /* read-only and inherited on purpose (no O_CLOEXEC): the broker, generators and updater the
     * launcher starts share the lock, so it is free only when the last process of the run has
     * ended. After a kill -9 of the launcher its children stop (PR_SET_PDEATHSIG) — the updater
     * after a final checkpoint — and a resume started meanwhile would race them on the same files.
     * Read-only so that no process below the launcher can write through it. */
    int fd = open(l->path, O_RDONLY | O_CREAT, 0644);
    if (fd < 0) return rlhf_error_set(err, RLHF_ESYS, l->path, "cannot open the run's lock file: %s", strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e != EWOULDBLOCK)
            return rlhf_error_set(err, RLHF_ESYS, l->path, "cannot lock the run directory: %s", strerror(e));
        long pid = 0;
        char started[64], by[256];
        if (read_holder(l->path, &pid, started, sizeof started, by, sizeof by))
            return rlhf_error_set(err, RLHF_ESTATE, run_dir, "in use by another process (see %s)", l->path);
        if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            return rlhf_error_set(err, RLHF_ESTATE, run_dir,
                                  "in use: %s (pid %ld, started %s) has ended but processes it started are still "
                                  "stopping; try again when they are gone",
                                  by, pid, started);
        return rlhf_error_set(err, RLHF_ESTATE, run_dir,
                              "in use by %s (pid %ld, started %s); one run per directory: wait for it to end, "
                              "stop it (kill %ld), or choose another directory",
                              by, pid, started, pid);
    }
    /* ours: say who holds it, in place (see the top of this file) */
    char line[512];
    time_t now = time(NULL);
    struct tm tm;
    char ts[64];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    int n = snprintf(line, sizeof line, "pid %ld started %s by %s\n", (long)getpid(), ts, command);
    int wfd = open(l->path, O_WRONLY | O_CLOEXEC);
    if (wfd < 0 || ftruncate(wfd, 0) != 0 || write(wfd, line, (size_t)n) != n) {
        rc = rlhf_error_set(err, RLHF_ESYS, l->path, "cannot write the run's lock file: %s", strerror(errno));
        if (wfd >= 0) close(wfd);
        close(fd);
        return rc;
    }
    close(wfd);
    l->fd = fd;
    return 0;
}

void run_dir_lock_release(run_dir_lock *l) {
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
}

void run_dir_lock_release_unused(run_dir_lock *l) {
    if (l->fd < 0) return;
    if (l->created[0]) {
        /* still holding the lock: nobody else can be starting in the folder we made */
        unlink(l->path);
        char p[sizeof l->dir];
        snprintf(p, sizeof p, "%s", l->dir);
        size_t top = strlen(l->created);
        for (;;) { /* rmdir only removes empty folders: anything a failed start left stays */
            size_t n = strlen(p);
            while (n > 1 && p[n - 1] == '/') p[--n] = 0;
            if (rmdir(p) != 0 || n <= top) break;
            char *slash = strrchr(p, '/');
            if (!slash) break;
            *slash = 0;
        }
    }
    run_dir_lock_release(l);
}
