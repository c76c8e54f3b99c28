/* rewards/process.c — process plugins: a long-lived child (any language) speaking JSON lines over
 * its stdin/stdout. Protocol (docs/REWARD_PLUGINS.md):
 *   host -> child, once after start:  {"init": CONFIG, "abi_version": 1}
 *   child -> host:                    {"ok": true}   or   {"error": "why"}
 *   host -> child, per batch:         {"id": N, "budget_ms": MS, "items": [{"prompt", "completion",
 *                                       "completion_ids", "record", "group_id"}, ...]}
 *   child -> host:                    {"id": N, "results": [{"score": 0.5} | {"error": "why"} |
 *                                       {"skip": "why"}, ...]}
 * The child is killed and started again (right away) when it dies, overruns the batch deadline or
 * writes something that is not the expected JSON; the batch's items are then ERROR, never 0. Bare
 * NaN / Infinity tokens in a reply (Python's json.dumps) are an error of their item only.
 * The channel is a socketpair, so writing to a dead child is EPIPE, not a SIGPIPE in the updater.
 * The child's stderr is a pipe that the host drains (to its own stderr) while it waits on the child,
 * keeping the tail for the reasons of a death or a failed init. After each batch the child's RSS and
 * CPU time are read from /proc (published for reward_pipeline_source_resources) and max_rss_mb /
 * restart_every may stop it, to be started afresh at the next batch. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rewards/rewards_int.h"

extern char **environ;

#define PROC_MAX_LINE (64u << 20)
#define PROC_TAIL 2048 /* bytes of the child's stderr kept for error messages */

typedef struct process_ctx {
    char **argv;          // (argc + 1,) NULL-terminated
    char *init_line;      // the init request, with '\n'
    char label[32];       // how messages name the child: "process plugin", "plugin worker"
    int64_t timeout_ms;   // batch budget (the pipeline's timeout_ms)
    int64_t start_timeout_ms;
    int64_t max_rss_mb;   // restart the child after a batch that left it above this (0 = no limit)
    int64_t restart_every; // restart the child after this many batches (0 = never)
    pid_t pid;            // 0 when not running
    int fd;               // our end of the socketpair, -1 when not running
    int errfd;            // read end of the child's stderr pipe, -1 when closed
    char *buf;            // received bytes not yet consumed
    size_t buf_len, buf_cap;
    char tail[PROC_TAIL]; // the last bytes the child wrote to stderr
    size_t tail_len;
    uint64_t next_id;
    int64_t restarts;     // times the child was (re)started after the first
    int64_t starts;
    int64_t batches;      // batches answered by the current child
    int died, died_status; // the child ended by itself during the last call; its wait status (-1 unknown)
    int init_code;        // the RLHF_E* "code" of an init error reply (0 when none)
    int has_range;        // the init reply declared the plugin's score range ("range": [lo, hi])
    double range_lo, range_hi;
    double cpu_reaped_s;  // user+system CPU of the children already reaped
    /* published after each batch for reward_process_resources, read from other threads */
    int64_t pub_rss_kb, pub_cpu_ms, pub_restarts;
    const volatile int *cancel; // the pipeline's cancel flag: stop waiting for the child
    const rlhf_reward_batch *batch; // during a process_score_v2 call: the step and versions to send, metrics out
} process_ctx;

/* Keeps the child's stderr flowing to ours (it is the plugin's log) while remembering its tail for
 * error messages. Reads what is there without blocking; closes the pipe at EOF. */
static void proc_drain_stderr(process_ctx *c) {
    char b[4096];
    while (c->errfd >= 0) {
        ssize_t r = read(c->errfd, b, sizeof b);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                close(c->errfd);
                c->errfd = -1;
            }
            return;
        }
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(2, b + off, (size_t)(r - off));
            if (w <= 0 && errno != EINTR) break;
            if (w > 0) off += w;
        }
        size_t k = (size_t)r;
        if (k >= PROC_TAIL) {
            memcpy(c->tail, b + k - PROC_TAIL, PROC_TAIL);
            c->tail_len = PROC_TAIL;
        } else {
            if (c->tail_len + k > PROC_TAIL) {
                size_t drop = c->tail_len + k - PROC_TAIL;
                memmove(c->tail, c->tail + drop, c->tail_len - drop);
                c->tail_len -= drop;
            }
            memcpy(c->tail + c->tail_len, b, k);
            c->tail_len += k;
        }
    }
}

/* The end of the child's stderr on one line for a message: at most `cap - 1` bytes, newlines as " | ",
 * other control bytes as '?'; "" when it wrote nothing. */
static void proc_tail_text(const process_ctx *c, char *out, size_t cap) {
    size_t n = c->tail_len;
    while (n > 0 && (c->tail[n - 1] == '\n' || c->tail[n - 1] == '\r' || c->tail[n - 1] == ' ')) n--;
    /* build the flattened text backwards from the end so the newest bytes survive the cut */
    size_t o = cap - 1;
    out[o] = 0;
    for (size_t i = n; i > 0 && o > 0; i--) {
        unsigned char ch = (unsigned char)c->tail[i - 1];
        if (ch == '\n') {
            if (o < 3) break;
            out[--o] = ' ';
            out[--o] = '|';
            out[--o] = ' ';
        } else {
            out[--o] = (ch < 32 || ch == 127) ? '?' : (char)ch;
        }
    }
    memmove(out, out + o, cap - o);
}

/* Waits for fd events, at most 100 ms at a time so a cancelled pipeline is noticed, forwarding the
 * child's stderr meanwhile. 1: fd ready; 0: nothing yet (call again); -2: cancelled (reason set). */
static int proc_poll(process_ctx *c, short events, double left, char *reason, size_t rlen) {
    if (c->cancel && __atomic_load_n(c->cancel, __ATOMIC_RELAXED)) {
        snprintf(reason, rlen, "cancelled: the pipeline is stopping");
        return -2;
    }
    int ms = (int)(left * 1000) + 1;
    struct pollfd pfd[2] = {{c->fd, events, 0}, {c->errfd, POLLIN, 0}};
    int np = c->errfd >= 0 ? 2 : 1;
    int pr = poll(pfd, (nfds_t)np, ms < 100 ? ms : 100);
    if (pr <= 0) return 0;
    if (np == 2 && pfd[1].revents) proc_drain_stderr(c);
    return pfd[0].revents ? 1 : 0;
}

static void proc_reaped(process_ctx *c, const struct rusage *ru) {
    c->cpu_reaped_s += (double)ru->ru_utime.tv_sec + 1e-6 * (double)ru->ru_utime.tv_usec +
                       (double)ru->ru_stime.tv_sec + 1e-6 * (double)ru->ru_stime.tv_usec;
    c->pid = 0;
}

static void proc_kill(process_ctx *c) {
    if (c->pid > 0) {
        kill(-c->pid, SIGKILL); // its process group: helpers it forked die with it
        kill(c->pid, SIGKILL);
        int st;
        struct rusage ru;
        pid_t w;
        while ((w = wait4(c->pid, &st, 0, &ru)) < 0 && errno == EINTR) {
        }
        if (w == c->pid) proc_reaped(c, &ru);
    }
    if (c->errfd >= 0) {
        proc_drain_stderr(c); /* what it wrote before dying still reaches the log */
        if (c->errfd >= 0) close(c->errfd);
    }
    if (c->fd >= 0) close(c->fd);
    c->pid = 0;
    c->fd = -1;
    c->errfd = -1;
    c->buf_len = 0;
}

/* The child stopped talking (EOF, a reset connection, a broken pipe): gives it a moment to be
 * reaped and says how it ended, with the end of its stderr. `when` is "" or " during init". */
static void proc_death(process_ctx *c, const char *when, char *reason, size_t rlen) {
    int st = 0;
    pid_t w = 0;
    struct rusage ru;
    for (int k = 0; k < 100 && w == 0 && c->pid > 0; k++) {
        w = wait4(c->pid, &st, WNOHANG, &ru);
        if (w == 0) usleep(2000);
    }
    /* the pipe may still hold its last words; the child is gone, so EOF comes soon */
    for (int k = 0; k < 20 && c->errfd >= 0; k++) {
        struct pollfd pfd = {c->errfd, POLLIN, 0};
        if (poll(&pfd, 1, 10) > 0) proc_drain_stderr(c);
        else break;
    }
    c->died = 1;
    c->died_status = -1;
    int n;
    if (w == c->pid && w > 0) {
        proc_reaped(c, &ru);
        c->died_status = st;
        if (WIFSIGNALED(st)) {
            const char *ab = sigabbrev_np(WTERMSIG(st));
            n = snprintf(reason, rlen, "%s died%s (SIG%s)", c->label, when, ab ? ab : "?");
        } else {
            n = snprintf(reason, rlen, "%s exited%s (status %d)", c->label, when, WEXITSTATUS(st));
        }
    } else {
        n = snprintf(reason, rlen, "%s closed its stdout%s", c->label, when);
    }
    if (n > 0 && (size_t)n + 24 < rlen && c->tail_len) {
        char t[1024];
        size_t room = rlen - (size_t)n - 10;
        proc_tail_text(c, t, room < sizeof t ? room : sizeof t);
        if (t[0]) snprintf(reason + n, rlen - (size_t)n, "; stderr: %s", t);
    }
}

/* Sends all of `data` before `deadline`. 0, or -1 with reason. */
static int proc_send(process_ctx *c, const char *data, size_t len, double deadline, const char *when, char *reason,
                     size_t rlen) {
    size_t off = 0;
    while (off < len) {
        double left = deadline - rlhf_now();
        if (left <= 0) {
            snprintf(reason, rlen, "timeout writing request");
            return -1;
        }
        int pr = proc_poll(c, POLLOUT, left, reason, rlen);
        if (pr == -2) return -1;
        if (pr <= 0) continue;
        ssize_t w = send(c->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            if (errno == EPIPE || errno == ECONNRESET) proc_death(c, when, reason, rlen);
            else snprintf(reason, rlen, "%s gone (write: %s)", c->label, strerror(errno));
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* Receives one line (without '\n') into a malloc'd string before `deadline`. */
static char *proc_recv_line(process_ctx *c, double deadline, const char *when, char *reason, size_t rlen) {
    for (;;) {
        char *nl = c->buf_len ? memchr(c->buf, '\n', c->buf_len) : NULL;
        if (nl) {
            size_t l = (size_t)(nl - c->buf);
            char *line = malloc(l + 1);
            if (!line) {
                snprintf(reason, rlen, "out of memory");
                return NULL;
            }
            memcpy(line, c->buf, l);
            line[l] = 0;
            memmove(c->buf, nl + 1, c->buf_len - l - 1);
            c->buf_len -= l + 1;
            return line;
        }
        if (c->buf_len >= PROC_MAX_LINE) {
            snprintf(reason, rlen, "%s reply line longer than %u bytes", c->label, PROC_MAX_LINE);
            return NULL;
        }
        double left = deadline - rlhf_now();
        if (left <= 0) {
            snprintf(reason, rlen, "timeout: no reply within %lld ms", (long long)c->timeout_ms);
            return NULL;
        }
        int pr = proc_poll(c, POLLIN, left, reason, rlen);
        if (pr == -2) return NULL;
        if (pr <= 0) continue;
        if (c->buf_cap - c->buf_len < 65536) {
            size_t nc = c->buf_cap ? c->buf_cap * 2 : 131072;
            char *nb = realloc(c->buf, nc);
            if (!nb) {
                snprintf(reason, rlen, "out of memory");
                return NULL;
            }
            c->buf = nb;
            c->buf_cap = nc;
        }
        ssize_t r = recv(c->fd, c->buf + c->buf_len, c->buf_cap - c->buf_len, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            /* a child that exits with our request unread resets the connection: that is its death,
             * and how it died is the news, not the socket error */
            if (errno == ECONNRESET) proc_death(c, when, reason, rlen);
            else snprintf(reason, rlen, "%s read: %s", c->label, strerror(errno));
            return NULL;
        }
        if (r == 0) {
            proc_death(c, when, reason, rlen);
            return NULL;
        }
        c->buf_len += (size_t)r;
    }
}

/* A protocol line quoted for a message: printable ASCII only, cut at `max` bytes. */
static void quote_line(const char *line, char *out, size_t cap, size_t max) {
    size_t o = 0, i = 0;
    for (; line[i] && i < max && o + 4 < cap; i++) {
        unsigned char ch = (unsigned char)line[i];
        out[o++] = (ch < 32 || ch > 126) ? '?' : (char)ch;
    }
    if (line[i] && o + 4 < cap) o += (size_t)snprintf(out + o, cap - o, "...");
    out[o] = 0;
}

static void not_protocol(const process_ctx *c, const char *line, char *reason, size_t rlen) {
    char q[64];
    quote_line(line, q, sizeof q, 40);
    char full[320];
    snprintf(full, sizeof full, "%.160s wrote a line that is not the protocol: \"%s\" (stdout is the protocol channel; "
                                "log to stderr)", c->label, q);
    /* cut to the caller's buffer (a cut reason is still one line) */
    size_t n = strlen(full);
    if (!rlen) return;
    if (n >= rlen) n = rlen - 1;
    memcpy(reason, full, n);
    reason[n] = 0;
}

/* Starts the child and performs the init handshake, which must finish by `deadline`. */
static int proc_start(process_ctx *c, double deadline, char *reason, size_t rlen) {
    int sv[2], ep[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(reason, rlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    if (pipe2(ep, O_CLOEXEC) < 0) {
        snprintf(reason, rlen, "pipe: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    /* room for a burst of log lines between our reads (the pipe is drained while we wait on the child) */
    (void)fcntl(ep[0], F_SETPIPE_SZ, 1 << 20);
    fcntl(ep[0], F_SETFL, fcntl(ep[0], F_GETFL) | O_NONBLOCK);
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
    posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
    posix_spawnattr_init(&at);
    posix_spawnattr_setpgroup(&at, 0);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int e = posix_spawnp(&pid, c->argv[0], &fa, &at, c->argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(sv[1]);
    close(ep[1]);
    if (e) {
        close(sv[0]);
        close(ep[0]);
        snprintf(reason, rlen, "cannot start %s: %s", c->argv[0], strerror(e));
        return -1;
    }
    c->pid = pid;
    c->fd = sv[0];
    c->errfd = ep[0];
    c->buf_len = 0;
    c->tail_len = 0;
    c->batches = 0;
    c->init_code = 0;
    if (c->starts++ > 0) c->restarts++;
    if (proc_send(c, c->init_line, strlen(c->init_line), deadline, " during init", reason, rlen)) {
        proc_kill(c);
        return -1;
    }
    char *line = proc_recv_line(c, deadline, " during init", reason, rlen);
    if (!line) {
        proc_kill(c);
        return -1;
    }
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    int ok = j && json_is_true(json_object_get(j, "ok"));
    json_t *range = json_object_get(j, "range");
    if (ok && json_array_size(range) == 2 && json_is_number(json_array_get(range, 0)) &&
        json_is_number(json_array_get(range, 1))) {
        c->has_range = 1;
        c->range_lo = json_number_value(json_array_get(range, 0));
        c->range_hi = json_number_value(json_array_get(range, 1));
    }
    if (!ok) {
        const char *m = json_string_value(json_object_get(j, "error"));
        json_t *code = json_object_get(j, "code");
        if (json_is_integer(code) && json_integer_value(code) < 0 && json_integer_value(code) > -100)
            c->init_code = (int)json_integer_value(code);
        if (m) snprintf(reason, rlen, "%s init failed: %s", c->label, m);
        else not_protocol(c, line, reason, rlen);
    }
    json_decref(j);
    free(line);
    if (!ok) {
        proc_kill(c);
        return -1;
    }
    return 0;
}

/* Starts the child again right after it was stopped (a death, timeout or bad output in a batch whose
 * items are already ERROR, or a limit after a batch): the start gets its own start_timeout_ms instead
 * of eating into the next batch's timeout_ms (a plugin that loads a model for longer than timeout_ms
 * would otherwise never come back). On failure the next batch tries again and reports why. The
 * last call's death, if any, stays recorded. */
static void proc_restart_now(process_ctx *c) {
    if (c->pid > 0 || (c->cancel && __atomic_load_n(c->cancel, __ATOMIC_RELAXED))) return;
    int died = c->died, st = c->died_status;
    char why[RLHF_REWARD_REASON_MAX];
    if (proc_start(c, rlhf_now() + (double)c->start_timeout_ms / 1000.0, why, sizeof why))
        fprintf(stderr, "rewards: %s %s did not restart: %s\n", c->label, c->argv[c->argv[1] ? 1 : 0], why);
    c->died = died;
    c->died_status = st;
}

/* /proc/PID/status VmRSS in KiB, -1 when unreadable. */
static int64_t proc_rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int64_t kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* utime + stime of a running process from /proc/PID/stat, seconds; 0 when unreadable. */
static double proc_cpu_s(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* the command name (field 2) may hold spaces and parentheses: count fields after its last ')' */
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long long ut = 0, stt = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2) return 0;
    long hz = sysconf(_SC_CLK_TCK);
    return (double)(ut + stt) / (double)(hz > 0 ? hz : 100);
}

static void proc_publish(process_ctx *c, int64_t rss_kb, double cpu) {
    __atomic_store_n(&c->pub_rss_kb, rss_kb > 0 ? rss_kb : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&c->pub_cpu_ms, (int64_t)(cpu * 1000.0), __ATOMIC_RELAXED);
    /* a child stopped now is restarted at the next batch: count it already */
    __atomic_store_n(&c->pub_restarts, c->restarts + (c->pid <= 0 && c->starts > 0), __ATOMIC_RELAXED);
}

/* After each batch: enforce restart_every and max_rss_mb (the child is stopped and started afresh
 * now, so the restart counts toward this batch's time, not the next one's) and publish the resource
 * figures. */
static void proc_after_batch(process_ctx *c, int answered) {
    int64_t rss_kb = 0;
    double cpu = c->cpu_reaped_s;
    if (c->pid > 0) {
        c->batches += answered;
        rss_kb = proc_rss_kb(c->pid);
        cpu += proc_cpu_s(c->pid);
        if (c->max_rss_mb > 0 && rss_kb > c->max_rss_mb * 1024) {
            fprintf(stderr, "rewards: %s %s uses %.1f MB, more than max_rss_mb %lld: restarting it\n", c->label,
                    c->argv[c->argv[1] && c->argv[2] ? 2 : 0], (double)rss_kb / 1024.0, (long long)c->max_rss_mb);
            proc_kill(c);
        } else if (c->restart_every > 0 && c->batches >= c->restart_every) {
            proc_kill(c);
        }
        if (c->pid <= 0) {
            proc_restart_now(c);
            rss_kb = c->pid > 0 ? proc_rss_kb(c->pid) : 0;
            cpu = c->cpu_reaped_s + (c->pid > 0 ? proc_cpu_s(c->pid) : 0);
        }
    }
    proc_publish(c, rss_kb, cpu);
}

int reward_process_resources(void *vctx, double *rss_mb, double *cpu_s, int64_t *restarts) {
    process_ctx *c = vctx;
    if (!c) return 1;
    if (rss_mb) *rss_mb = (double)__atomic_load_n(&c->pub_rss_kb, __ATOMIC_RELAXED) / 1024.0;
    if (cpu_s) *cpu_s = (double)__atomic_load_n(&c->pub_cpu_ms, __ATOMIC_RELAXED) / 1000.0;
    if (restarts) *restarts = __atomic_load_n(&c->pub_restarts, __ATOMIC_RELAXED);
    return 0;
}

int reward_process_last_death(void *vctx, int *wstatus) {
    process_ctx *c = vctx;
    if (wstatus) *wstatus = c->died_status;
    return c->died;
}

/* A copy of `line` where the bare tokens NaN, Infinity and -Infinity (outside strings), which Python's
 * json.dumps writes for non-finite floats but JSON does not allow, are the strings "\u0001NaN", ... so
 * the reply still parses and the item that carried one gets its own error. NULL when there is none. */
static char *mark_nonfinite(const char *line) {
    static const char *const toks[] = {"-Infinity", "Infinity", "NaN"};
    size_t n = strlen(line), extra = 0;
    char *out = NULL;
    for (int pass = 0; pass < 2; pass++) {
        int in_str = 0;
        size_t o = 0;
        for (size_t i = 0; i < n;) {
            char ch = line[i];
            if (in_str) {
                if (ch == '\\' && i + 1 < n) {
                    if (pass) out[o++] = line[i];
                    i++;
                } else if (ch == '"') {
                    in_str = 0;
                }
                if (pass) out[o++] = line[i];
                i++;
                continue;
            }
            if (ch == '"') in_str = 1;
            size_t tl = 0;
            int prev_ok = i == 0 || !((line[i - 1] >= 'A' && line[i - 1] <= 'Z') || (line[i - 1] >= 'a' && line[i - 1] <= 'z'));
            for (int t = 0; prev_ok && t < 3 && !tl; t++) {
                size_t l = strlen(toks[t]);
                char after = line[i + l < n ? i + l : n];
                if (!strncmp(line + i, toks[t], l) &&
                    !((after >= 'A' && after <= 'Z') || (after >= 'a' && after <= 'z') || (after >= '0' && after <= '9')))
                    tl = l;
            }
            if (tl) {
                if (pass) {
                    memcpy(out + o, "\"\\u0001", 7);
                    o += 7;
                    memcpy(out + o, line + i, tl);
                    o += tl;
                    out[o++] = '"';
                } else {
                    extra += 8;
                }
                i += tl;
                continue;
            }
            if (pass) out[o++] = ch;
            i++;
        }
        if (!pass) {
            if (!extra) return NULL;
            if (!(out = malloc(n + extra + 1))) return NULL;
        } else {
            out[o] = 0;
        }
    }
    return out;
}

static void all_error(rlhf_reward_status *status, size_t n, const char *reason) {
    for (size_t i = 0; i < n; i++) rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", reason);
}

static int process_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                         rlhf_reward_status *status) {
    process_ctx *c = vctx;
    char reason[RLHF_REWARD_REASON_MAX] = "";
    c->died = 0;
    c->died_status = -1;
    if (n == 0) return 0;
    double deadline = items[0].deadline > 0 ? items[0].deadline : rlhf_now() + (double)c->timeout_ms / 1000.0;
    if (c->pid <= 0) {
        /* a restart inside a batch shares the batch's budget */
        double start_by = rlhf_now() + (double)c->start_timeout_ms / 1000.0;
        if (proc_start(c, start_by < deadline ? start_by : deadline, reason, sizeof reason)) {
            /* it did not get to see the batch: not a death on these items (no quarantine count) */
            c->died = 0;
            all_error(status, n, reason);
            proc_after_batch(c, 0);
            return 0;
        }
    }
    uint64_t id = ++c->next_id;
    json_t *req = json_object();
    json_t *arr = json_array();
    json_object_set_new(req, "id", json_integer((json_int_t)id));
    /* what is left of the batch's budget, so the child can see its deadline (the plugin host gives
     * it to a .so as items[].deadline) */
    double left_ms = (deadline - rlhf_now()) * 1000.0;
    json_object_set_new(req, "budget_ms", json_integer((json_int_t)(left_ms > 0 ? left_ms : 0)));
    json_object_set_new(req, "items", arr);
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_object();
        json_object_set_new(it, "prompt", reward_json_string_lossy(items[i].prompt));
        json_object_set_new(it, "completion", reward_json_string_lossy(items[i].completion));
        json_t *ids = json_array();
        for (int64_t k = 0; items[i].completion_ids && k < items[i].n_completion_ids; k++)
            json_array_append_new(ids, json_integer(items[i].completion_ids[k]));
        json_object_set_new(it, "completion_ids", ids);
        json_t *rec = json_loads(items[i].record_json, 0, NULL);
        json_object_set_new(it, "record", rec ? rec : json_object());
        json_object_set_new(it, "group_id", json_integer(items[i].group_id));
        if (c->batch && c->batch->policy_version)
            json_object_set_new(it, "policy_version", json_integer(c->batch->policy_version[i]));
        json_array_append_new(arr, it);
    }
    if (c->batch) json_object_set_new(req, "step", json_integer(c->batch->step));
    char *txt = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!txt) {
        all_error(status, n, "cannot encode request (invalid UTF-8 in an item?)");
        return 0;
    }
    size_t tl = strlen(txt);
    char *line = realloc(txt, tl + 2);
    if (!line) {
        free(txt);
        all_error(status, n, "out of memory");
        return 0;
    }
    line[tl] = '\n';
    line[tl + 1] = 0;
    int rc = proc_send(c, line, tl + 1, deadline, "", reason, sizeof reason);
    free(line);
    if (rc) {
        proc_kill(c);
        all_error(status, n, reason);
        proc_restart_now(c);
        proc_after_batch(c, 0);
        return 0;
    }
    char *reply = proc_recv_line(c, deadline, "", reason, sizeof reason);
    if (!reply) {
        proc_kill(c);
        all_error(status, n, reason);
        proc_restart_now(c);
        proc_after_batch(c, 0);
        return 0;
    }
    json_error_t je;
    json_t *j = json_loads(reply, 0, &je);
    if (!j) {
        /* NaN / Infinity from json.dumps: one item's fault, not the reply's */
        char *marked = mark_nonfinite(reply);
        if (marked) j = json_loads(marked, 0, &je);
        free(marked);
    }
    json_t *res = j ? json_object_get(j, "results") : NULL;
    json_t *jid = j ? json_object_get(j, "id") : NULL;
    if (!j || !json_is_object(j) || (!jid && !res)) not_protocol(c, reply, reason, sizeof reason);
    else if (!json_is_integer(jid) || (uint64_t)json_integer_value(jid) != id)
        snprintf(reason, sizeof reason, "%s reply has wrong or missing \"id\" (want %llu)", c->label,
                 (unsigned long long)id);
    else if (!json_is_array(res) || json_array_size(res) != n)
        snprintf(reason, sizeof reason, "%s reply needs \"results\" with %zu entries", c->label, n);
    free(reply);
    if (reason[0]) {
        json_decref(j);
        proc_kill(c); // the stream is out of step: start afresh
        all_error(status, n, reason);
        proc_restart_now(c);
        proc_after_batch(c, 0);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(res, i);
        json_t *sc = json_object_get(r, "score");
        const char *er = json_string_value(json_object_get(r, "error"));
        const char *sk = json_string_value(json_object_get(r, "skip"));
        const char *marked = json_string_value(sc);
        if (er) rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", er);
        else if (sk) rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "%s", sk);
        else if (json_is_number(sc)) {
            scores[i] = json_number_value(sc);
            const char *note = json_string_value(json_object_get(r, "note")); /* optional: OK's reason */
            if (note) rlhf_reward_status_set(&status[i], RLHF_REWARD_OK, "%s", note);
        } else if (marked && marked[0] == '\001')
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "non-finite score: %s is not a JSON number (send "
                                   "{\"error\": ...} for an item you cannot score)", marked + 1);
        else rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "result %zu has no numeric \"score\"", i);
    }
    /* optional "metrics": {"name": number, ...} of the batch (reward/<source>/<name>) */
    const char *mk;
    json_t *mv;
    if (c->batch && c->batch->metrics)
        json_object_foreach(json_object_get(j, "metrics"), mk, mv) {
            if (*c->batch->n_metrics >= c->batch->max_metrics) break;
            if (!json_is_number(mv)) continue;
            rlhf_reward_metric *m = &c->batch->metrics[(*c->batch->n_metrics)++];
            snprintf(m->name, sizeof m->name, "%s", mk);
            m->value = json_number_value(mv);
        }
    json_decref(j);
    proc_after_batch(c, 1);
    return 0;
}

/* The same with the batch's training state: "step" in the request, "policy_version" per item. */
static int process_score_v2(void *vctx, const rlhf_reward_batch *b, double *scores, rlhf_reward_status *status) {
    process_ctx *c = vctx;
    c->batch = b;
    int rc = process_score(vctx, b->items, b->n, scores, status);
    c->batch = NULL;
    return rc;
}

static void process_destroy(void *vctx) {
    process_ctx *c = vctx;
    if (!c) return;
    proc_kill(c);
    for (char **a = c->argv; a && *a; a++) free(*a);
    free(c->argv);
    free(c->init_line);
    free(c->buf);
    free(c);
}

static int process_resources_fn(void *vctx, double *rss_mb, double *cpu_s, int64_t *restarts) {
    return reward_process_resources(vctx, rss_mb, cpu_s, restarts);
}

static const rlhf_reward_plugin_v1 process_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "process", NULL, process_score, process_destroy};

/* A script argument (by its extension) that does not exist: python3 would only say so on its stderr
 * after starting, so say it here, naming the argument. */
static int check_script_args(char **argv, const char *where, rlhf_error *err) {
    static const char *const exts[] = {".py", ".js", ".mjs", ".cjs", ".sh", ".rb", ".pl", ".lua", ".R", ".jl", ".php", NULL};
    for (size_t i = 1; argv[i]; i++) {
        const char *a = argv[i], *dot = strrchr(a, '.');
        if (a[0] == '-' || !dot || strchr(a, '=')) continue;
        int script = 0;
        for (const char *const *e = exts; *e && !script; e++) script = !strcmp(dot, *e);
        if (!script || access(a, F_OK) == 0 || errno != ENOENT) continue;
        char w[400], cwd[512];
        snprintf(w, sizeof w, "%s.command[%zu]", where, i);
        if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, "?");
        return rlhf_error_set(err, RLHF_EIO, w, "script '%s' does not exist%s%s%s", a, a[0] == '/' ? "" : " (relative to the current directory ",
                              a[0] == '/' ? "" : cwd, a[0] == '/' ? "" : ")");
    }
    return 0;
}

int reward_process_create_labelled(const json_t *src, const char *where, const char *label, reward_source_impl *impl,
                                   rlhf_error *err) {
    static const char *const keys[] = {"command", "config", "start_timeout_ms", "max_rss_mb", "restart_every", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    char w[300];
    snprintf(w, sizeof w, "%s.command", where);
    json_t *cmd = json_object_get(src, "command");
    if (!json_is_array(cmd) || json_array_size(cmd) == 0)
        return rlhf_error_set(err, RLHF_EINVAL, w, "required: a non-empty array of strings (program and arguments)");
    process_ctx *c = calloc(1, sizeof *c);
    if (!c) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    c->fd = -1;
    c->errfd = -1;
    c->died_status = -1;
    snprintf(c->label, sizeof c->label, "%s", label);
    c->timeout_ms = impl->timeout_ms;
    c->cancel = impl->cancel;
    c->start_timeout_ms = 10000;
    c->argv = calloc(json_array_size(cmd) + 1, sizeof *c->argv);
    if (!c->argv) {
        process_destroy(c);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < json_array_size(cmd); i++) {
        const char *a = json_string_value(json_array_get(cmd, i));
        if (!a) {
            process_destroy(c);
            snprintf(w, sizeof w, "%s.command[%zu]", where, i);
            return rlhf_error_set(err, RLHF_EINVAL, w, "expected a string");
        }
        c->argv[i] = strdup(a);
    }
    if ((rc = check_script_args(c->argv, where, err)) ||
        (rc = reward_get_int(src, "start_timeout_ms", where, 0, &c->start_timeout_ms, err)) ||
        (rc = reward_get_int(src, "max_rss_mb", where, 0, &c->max_rss_mb, err)) ||
        (rc = reward_get_int(src, "restart_every", where, 0, &c->restart_every, err))) {
        process_destroy(c);
        return rc;
    }
    if (c->max_rss_mb < 0 || c->restart_every < 0) {
        snprintf(w, sizeof w, "%s.%s", where, c->max_rss_mb < 0 ? "max_rss_mb" : "restart_every");
        process_destroy(c);
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be >= 0 (0 = no limit)");
    }
    json_t *init = json_object();
    json_t *cfg = json_object_get(src, "config");
    json_object_set_new(init, "init", cfg ? json_incref(cfg) : json_object());
    json_object_set_new(init, "abi_version", json_integer(RLHF_REWARD_ABI_VERSION));
    char *t = json_dumps(init, JSON_COMPACT);
    json_decref(init);
    c->init_line = t ? malloc(strlen(t) + 2) : NULL;
    if (!c->init_line) {
        free(t);
        process_destroy(c);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    sprintf(c->init_line, "%s\n", t);
    free(t);
    /* start now so a broken command or a bad config is a create-time error naming the source */
    char reason[600];
    if (proc_start(c, rlhf_now() + (double)c->start_timeout_ms / 1000.0, reason, sizeof reason)) {
        rc = c->init_code ? c->init_code : RLHF_EIO;
        process_destroy(c);
        return rlhf_error_set(err, rc, where, "%s", reason);
    }
    proc_publish(c, proc_rss_kb(c->pid), proc_cpu_s(c->pid));
    impl->plugin = &process_plugin;
    impl->score_v2 = process_score_v2;
    impl->has_range = c->has_range; /* declared in the init reply (a .so's own, through reward-plugin-host) */
    impl->range_lo = c->range_lo;
    impl->range_hi = c->range_hi;
    impl->ctx = c;
    impl->resources = process_resources_fn;
    return 0;
}

int reward_source_process_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    return reward_process_create_labelled(src, where, "process plugin", impl, err);
}
