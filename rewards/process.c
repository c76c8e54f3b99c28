/* rewards/process.c — process plugins: a long-lived child (any language) speaking JSON lines over
 * its stdin/stdout. Protocol (docs/REWARD_PLUGINS.md):
 *   host -> child, once after start:  {"init": CONFIG, "abi_version": 1}
 *   child -> host:                    {"ok": true}   or   {"error": "why"}
 *   host -> child, per batch:         {"id": N, "items": [{"prompt", "completion", "completion_ids",
 *                                       "record", "group_id"}, ...]}
 *   child -> host:                    {"id": N, "results": [{"score": 0.5} | {"error": "why"} |
 *                                       {"skip": "why"}, ...]}
 * The child is killed and restarted (at the next batch) when it dies, overruns the batch deadline or
 * writes something that is not the expected JSON; the batch's items are then ERROR, never 0.
 * The channel is a socketpair, so writing to a dead child is EPIPE, not a SIGPIPE in the updater. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rewards/rewards_int.h"

extern char **environ;

#define PROC_MAX_LINE (64u << 20)

typedef struct process_ctx {
    char **argv;          // (argc + 1,) NULL-terminated
    char *init_line;      // the init request, with '\n'
    int64_t timeout_ms;   // batch budget (the pipeline's timeout_ms)
    int64_t start_timeout_ms;
    pid_t pid;            // 0 when not running
    int fd;               // our end of the socketpair, -1 when not running
    char *buf;            // received bytes not yet consumed
    size_t buf_len, buf_cap;
    uint64_t next_id;
    int64_t restarts;     // times the child was (re)started after the first
    int64_t starts;
    const volatile int *cancel; // the pipeline's cancel flag: stop waiting for the child
    const rlhf_reward_batch *batch; // during a process_score_v2 call: the step and versions to send, metrics out
} process_ctx;

/* Waits for fd events like poll, but at most 100 ms at a time so a cancelled pipeline is noticed;
 * returns -2 (reason set) once it is cancelled. */
static int proc_poll(process_ctx *c, struct pollfd *pfd, double left, char *reason, size_t rlen) {
    if (c->cancel && __atomic_load_n(c->cancel, __ATOMIC_RELAXED)) {
        snprintf(reason, rlen, "cancelled: the pipeline is stopping");
        return -2;
    }
    int ms = (int)(left * 1000) + 1;
    return poll(pfd, 1, ms < 100 ? ms : 100);
}

static void proc_kill(process_ctx *c) {
    if (c->pid > 0) {
        kill(-c->pid, SIGKILL); // its process group: helpers it forked die with it
        kill(c->pid, SIGKILL);
        int st;
        while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    if (c->fd >= 0) close(c->fd);
    c->pid = 0;
    c->fd = -1;
    c->buf_len = 0;
}

/* Sends all of `data` before `deadline`. 0, or -1 with reason. */
static int proc_send(process_ctx *c, const char *data, size_t len, double deadline, char *reason, size_t rlen) {
    size_t off = 0;
    while (off < len) {
        double left = deadline - rlhf_now();
        if (left <= 0) {
            snprintf(reason, rlen, "timeout writing request");
            return -1;
        }
        struct pollfd pfd = {c->fd, POLLOUT, 0};
        int pr = proc_poll(c, &pfd, left, reason, rlen);
        if (pr == -2) return -1;
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        ssize_t w = send(c->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            snprintf(reason, rlen, "process plugin gone (write: %s)", strerror(errno));
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* Receives one line (without '\n') into a malloc'd string before `deadline`. */
static char *proc_recv_line(process_ctx *c, double deadline, char *reason, size_t rlen) {
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
            snprintf(reason, rlen, "process plugin reply line longer than %u bytes", PROC_MAX_LINE);
            return NULL;
        }
        double left = deadline - rlhf_now();
        if (left <= 0) {
            snprintf(reason, rlen, "timeout: no reply within %lld ms", (long long)c->timeout_ms);
            return NULL;
        }
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int pr = proc_poll(c, &pfd, left, reason, rlen);
        if (pr == -2) return NULL;
        if (pr < 0 && errno == EINTR) continue;
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
            snprintf(reason, rlen, "process plugin read: %s", strerror(errno));
            return NULL;
        }
        if (r == 0) {
            /* EOF: give an exiting child a moment to be reaped so the reason can say how it ended */
            int st = 0;
            pid_t w = 0;
            for (int k = 0; k < 50 && w == 0; k++) {
                w = waitpid(c->pid, &st, WNOHANG);
                if (w == 0) usleep(2000);
            }
            if (w == c->pid) {
                c->pid = 0;
                if (WIFSIGNALED(st)) snprintf(reason, rlen, "process plugin died (signal %d)", WTERMSIG(st));
                else snprintf(reason, rlen, "process plugin exited (status %d)", WEXITSTATUS(st));
            } else {
                snprintf(reason, rlen, "process plugin closed its stdout");
            }
            return NULL;
        }
        c->buf_len += (size_t)r;
    }
}

/* Starts the child and performs the init handshake, which must finish by `deadline`. */
static int proc_start(process_ctx *c, double deadline, char *reason, size_t rlen) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(reason, rlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
    posix_spawnattr_init(&at);
    posix_spawnattr_setpgroup(&at, 0);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
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
    if (e) {
        close(sv[0]);
        snprintf(reason, rlen, "cannot start %s: %s", c->argv[0], strerror(e));
        return -1;
    }
    c->pid = pid;
    c->fd = sv[0];
    c->buf_len = 0;
    c->starts++;
    if (proc_send(c, c->init_line, strlen(c->init_line), deadline, reason, rlen)) {
        proc_kill(c);
        return -1;
    }
    char *line = proc_recv_line(c, deadline, reason, rlen);
    if (!line) {
        proc_kill(c);
        return -1;
    }
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    int ok = j && json_is_true(json_object_get(j, "ok"));
    if (!ok) {
        const char *m = json_string_value(json_object_get(j, "error"));
        if (m) snprintf(reason, rlen, "process plugin init failed: %s", m);
        else snprintf(reason, rlen, "process plugin init reply is not {\"ok\":true}: %.60s", line);
    }
    json_decref(j);
    free(line);
    if (!ok) {
        proc_kill(c);
        return -1;
    }
    return 0;
}

static void all_error(rlhf_reward_status *status, size_t n, const char *reason) {
    for (size_t i = 0; i < n; i++) rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", reason);
}

static int process_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                         rlhf_reward_status *status) {
    process_ctx *c = vctx;
    char reason[RLHF_REWARD_REASON_MAX] = "";
    if (n == 0) return 0;
    double deadline = items[0].deadline > 0 ? items[0].deadline : rlhf_now() + (double)c->timeout_ms / 1000.0;
    if (c->pid <= 0) {
        /* a restart inside a batch shares the batch's budget */
        if (c->starts > 0) c->restarts++;
        double start_by = rlhf_now() + (double)c->start_timeout_ms / 1000.0;
        if (proc_start(c, start_by < deadline ? start_by : deadline, reason, sizeof reason)) {
            all_error(status, n, reason);
            return 0;
        }
    }
    uint64_t id = ++c->next_id;
    json_t *req = json_object();
    json_t *arr = json_array();
    json_object_set_new(req, "id", json_integer((json_int_t)id));
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
    int rc = proc_send(c, line, tl + 1, deadline, reason, sizeof reason);
    free(line);
    if (rc) {
        proc_kill(c);
        all_error(status, n, reason);
        return 0;
    }
    char *reply = proc_recv_line(c, deadline, reason, sizeof reason);
    if (!reply) {
        proc_kill(c);
        all_error(status, n, reason);
        return 0;
    }
    json_error_t je;
    json_t *j = json_loads(reply, 0, &je);
    json_t *res = j ? json_object_get(j, "results") : NULL;
    json_t *jid = j ? json_object_get(j, "id") : NULL;
    if (!j) snprintf(reason, sizeof reason, "process plugin wrote non-JSON: %.60s", reply);
    else if (!json_is_integer(jid) || (uint64_t)json_integer_value(jid) != id)
        snprintf(reason, sizeof reason, "process plugin reply has wrong or missing \"id\" (want %llu)",
                 (unsigned long long)id);
    else if (!json_is_array(res) || json_array_size(res) != n)
        snprintf(reason, sizeof reason, "process plugin reply needs \"results\" with %zu entries", n);
    free(reply);
    if (reason[0]) {
        json_decref(j);
        proc_kill(c); // the stream is out of step: start afresh next batch
        all_error(status, n, reason);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(res, i);
        json_t *sc = json_object_get(r, "score");
        const char *er = json_string_value(json_object_get(r, "error"));
        const char *sk = json_string_value(json_object_get(r, "skip"));
        if (er) rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", er);
        else if (sk) rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "%s", sk);
        else if (json_is_number(sc)) scores[i] = json_number_value(sc);
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

static const rlhf_reward_plugin_v1 process_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "process", NULL, process_score, process_destroy};

int reward_source_process_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"command", "config", "start_timeout_ms", NULL};
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
    if ((rc = reward_get_int(src, "start_timeout_ms", where, 0, &c->start_timeout_ms, err))) {
        process_destroy(c);
        return rc;
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
    char reason[RLHF_REWARD_REASON_MAX];
    if (proc_start(c, rlhf_now() + (double)c->start_timeout_ms / 1000.0, reason, sizeof reason)) {
        process_destroy(c);
        return rlhf_error_set(err, RLHF_EIO, where, "%s", reason);
    }
    impl->plugin = &process_plugin;
    impl->score_v2 = process_score_v2;
    impl->ctx = c;
    return 0;
}
