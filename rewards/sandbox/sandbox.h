/* rewards/sandbox/sandbox.h — the code-execution sandbox supervisor (rewards/sandbox/'s public header;
 * the "exec" and "countdown" reward sources, rewards/exec.c, run programs with it).
 * See docs/SANDBOX.md for the isolation layers and what the start-up probe checks.
 *
 * A run: clone into new user/pid/net/mount/ipc/uts namespaces; the first process (pid 1 in the new
 * pid namespace) maps to uid/gid 65534 inside (host uid host_uid_base + slot, never 0), builds a
 * tmpfs root with read-only binds, pivot_roots into it, mounts a fresh /proc, then forks the program
 * (pid 2) which gets rlimits, no_new_privs, the seccomp filter, a clean environment and execs.
 * pid 1 exits when the program exits, which kills every process left in the namespace. The
 * supervisor (the calling thread) enforces the wall-clock limit and the output caps by SIGKILLing
 * pid 1. No global state: everything lives in a sandbox_pool. */
#ifndef RLHF_REWARDS_SANDBOX_SANDBOX_H
#define RLHF_REWARDS_SANDBOX_SANDBOX_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

struct json_t;

typedef enum sandbox_verdict {
    SANDBOX_PASS = 0,          /* program exited 0 (callers turn it into FAIL when the output is wrong) */
    SANDBOX_FAIL,              /* ran fine, wrong answer (set by callers that check output) */
    SANDBOX_TIMEOUT,           /* wall-clock or CPU limit */
    SANDBOX_MEMORY,            /* address-space limit hit (MemoryError, bad_alloc, ENOMEM) */
    SANDBOX_RUNTIME_ERROR,     /* non-zero exit or killed by a signal */
    SANDBOX_OUTPUT_LIMIT,      /* stdout or stderr exceeded its cap */
    SANDBOX_SANDBOX_ERROR,     /* the sandbox itself failed: a reward ERROR, never a reward of 0 */
} sandbox_verdict;

const char *sandbox_verdict_name(sandbox_verdict v);

/* Feature bits the probe checks; missing ones refuse unless listed in allow_degraded. */
enum {
    SANDBOX_F_NET = 1 << 0,     /* new network namespace */
    SANDBOX_F_IPC = 1 << 1,     /* new IPC namespace */
    SANDBOX_F_UTS = 1 << 2,     /* new UTS namespace */
    SANDBOX_F_SECCOMP = 1 << 3, /* seccomp deny filter */
    SANDBOX_F_CGROUP = 1 << 4,  /* per-run cgroup (pids + memory limits), v1 or v2 */
};

/* A setup step for sandbox_config.fault_fail_step (the value of the child's step enum). */
#define SANDBOX_FAULT_STEP_PIVOT_ROOT 16
/* Injected at this step, the fault also applies to the start-up probe while seccomp is in use:
 * it emulates a host that cannot load seccomp filters (tests of the refuse/degrade logic). */
#define SANDBOX_FAULT_STEP_SECCOMP 25

typedef struct sandbox_config {
    char interpreter[256];      /* default /usr/bin/python3 */
    int64_t wall_ms;            /* wall-clock limit, default 5000 */
    int64_t cpu_s;              /* RLIMIT_CPU, default ceil(wall)+1 */
    int64_t memory_bytes;       /* RLIMIT_AS, default 512 MiB */
    int64_t max_procs;          /* RLIMIT_NPROC for the run's host uid, default 16; max_procs x memory_bytes
                                   (+ tmp_bytes + 2 MiB) is the host memory one run may take, and must
                                   not exceed the host's memory (sandbox_config_memory_bound) */
    int64_t max_file_bytes;     /* RLIMIT_FSIZE, default 16 MiB */
    int64_t max_open_files;     /* RLIMIT_NOFILE, default 64 */
    int64_t tmp_bytes;          /* size of the private /tmp tmpfs, default 16 MiB */
    int64_t stdout_cap;         /* bytes, default 1 MiB */
    int64_t stderr_cap;         /* bytes, default 64 KiB */
    int64_t host_uid_base;      /* slot i runs as host uid/gid base+i; 0 (default) = the pool reserves a
                                   free range of 256 from 100000 on (see sandbox_pool_host_uid_base);
                                   any value is reserved the same way and refused when in use */
    int pool_size;              /* concurrent sandboxes; default = online cores */
    unsigned allow_degraded;    /* SANDBOX_F_* bits allowed to be missing */
    unsigned want;              /* SANDBOX_F_* bits to use when available; default all but CGROUP */
    int fault_fail_step;        /* FAULT INJECTION for tests only (0 = off): every run's setup fails
                                   at this step as if the kernel refused it (JSON "fault_inject_step") */
    char binds[8][256];         /* extra read-only bind mounts (host path = sandbox path) */
    int n_binds;
} sandbox_config;

/* Defaults as documented above. */
void sandbox_config_default(sandbox_config *cfg);
/* Reads a "sandbox" JSON object over the defaults; unknown keys are errors naming `where`.
 * Keys: interpreter, wall_ms, cpu_s, memory_mb, max_procs, max_file_mb, max_open_files, tmp_mb,
 *       stdout_kb, stderr_kb, host_uid_base (0 = reserve a free range), pool_size, allow_degraded (array of "net", "ipc", "uts",
 *       "seccomp", "cgroup"), cgroup (bool), binds (array of absolute paths). */
int sandbox_config_parse(sandbox_config *cfg, const struct json_t *obj, const char *where, rlhf_error *err);

/* One run's input. The program text is written to /tmp/<file_name> inside the sandbox; argv is
 * the interpreter followed by args (the string "{file}" in args is replaced by that path). */
typedef struct sandbox_request {
    const char *program;        /* may be NULL (then argv runs as is) */
    const char *file_name;      /* default "main.py" */
    const char *const *args;    /* NULL-terminated extra arguments; NULL = {"{file}"} */
    const char *stdin_data;
    size_t stdin_len;
    int64_t wall_ms;            /* 0 = the config's */
} sandbox_request;

typedef struct sandbox_result {
    sandbox_verdict verdict;
    int exit_code;              /* when exited */
    int term_signal;            /* when killed by a signal (0 otherwise) */
    char *out;                  /* stdout (NUL-terminated), up to stdout_cap */
    size_t out_len;
    char *err;                  /* stderr, up to stderr_cap */
    size_t err_len;
    double wall_ms;
    double setup_ms;            /* from the start to the namespaces/filesystem being ready (program not yet forked) */
    char reason[160];           /* for SANDBOX_ERROR and limits: what happened */
} sandbox_result;

void sandbox_result_free(sandbox_result *r);

/* The most host memory one run may take: every process of it (max_procs) at its address-space limit,
 * a full /tmp, the 1 MiB root and 1 MiB of SysV IPC. Kernel memory (page tables, pipe buffers) is not
 * counted. sandbox_config_parse and sandbox_pool_create refuse configs whose bound exceeds the host's
 * physical memory. */
int64_t sandbox_config_memory_bound(const sandbox_config *cfg);

typedef struct sandbox_pool sandbox_pool;

/* Builds the seccomp program, probes what the host allows (a real run of /bin/true with each
 * layer), and refuses (RLHF_EUNSUPPORTED naming what is missing) unless allow_degraded covers it. */
int sandbox_pool_create(sandbox_pool **out, const sandbox_config *cfg, rlhf_error *err);
void sandbox_pool_destroy(sandbox_pool **p);
/* What the probe found, e.g. "userns+pidns+netns+mountns+ipcns+utsns+seccomp" and what is degraded. */
const char *sandbox_pool_features(const sandbox_pool *p);
int sandbox_pool_size(const sandbox_pool *p);
/* The host uid of slot 0 (slot i runs as this + i): reserved for the pool's lifetime, never shared with
 * another live pool of this or any other process on the host (docs/SANDBOX.md, "Host uids"). */
int64_t sandbox_pool_host_uid_base(const sandbox_pool *p);

/* Runs one request on a free slot (blocks while all slots are busy). Always fills *res; returns 0,
 * or a negative code only for bad arguments. Sandbox failures are verdict SANDBOX_ERROR. */
int sandbox_pool_run(sandbox_pool *p, const sandbox_request *req, sandbox_result *res);
/* Runs n requests using up to pool_size threads; res[i] for req[i]. */
int sandbox_pool_run_batch(sandbox_pool *p, const sandbox_request *req, size_t n, sandbox_result *res);

/* Bare fork/exec of the same argv without any isolation: the benchmark's peer. */
int sandbox_bare_run(const sandbox_config *cfg, const sandbox_request *req, sandbox_result *res);

#endif
