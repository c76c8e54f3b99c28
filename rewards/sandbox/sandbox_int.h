/* rewards/sandbox/sandbox_int.h — what the sandbox's files share (rewards/sandbox/ only; the public
 * header is rewards/sandbox/sandbox.h): the pool, the plan of one run, the setup steps and the messages
 * pid 1 sends the supervisor. */
#ifndef RLHF_REWARDS_SANDBOX_SANDBOX_INT_H
#define RLHF_REWARDS_SANDBOX_SANDBOX_INT_H

#include <linux/filter.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "rewards/sandbox/sandbox.h"

#define SB_UID 65534 /* uid and gid inside the sandbox: "nobody", never 0 */
#define SB_MAX_OPS 48

/* Setup steps, reported by the child on failure so the supervisor can name what broke. */
enum sb_step {
    ST_SYNC = 1, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_CAPS, ST_MNT_PRIVATE, ST_ROOT_TMPFS, ST_MKDIR, ST_SYMLINK,
    ST_BIND, ST_BIND_RO, ST_DEVFILE, ST_TMP_TMPFS, ST_WRITE_FILE, ST_PROC, ST_PIVOT, ST_UMOUNT_OLD, ST_ROOT_RO,
    ST_HOSTNAME, ST_FORK, ST_STDIO, ST_RLIMIT, ST_CHDIR, ST_NNP, ST_SECCOMP, ST_EXEC, ST_DROPCAPS, ST_SETSID,
    ST_MASK_PROC, ST_NSTEPS
};
_Static_assert(ST_PIVOT == SANDBOX_FAULT_STEP_PIVOT_ROOT, "fault step constant out of date");
_Static_assert(ST_SECCOMP == SANDBOX_FAULT_STEP_SECCOMP, "fault step constant out of date");

enum { MSG_SETUP_ERROR = 1, MSG_EXIT = 2, MSG_READY = 3 };
typedef struct sb_msg {
    int32_t kind, step, err, status;
} sb_msg;

enum { OP_MKDIR, OP_SYMLINK, OP_BIND_RO, OP_BIND_DEV, OP_BIND_FILE_RO, OP_WRITE };

/* SysV IPC limits written into each run's IPC namespace (kernel.shmmax, shmall in pages, shmmni,
 * msgmni): 1 MiB of shared memory and 4 message queues of the default 16 KiB in all. */
#define SB_SHM_BYTES (1 << 20)
/* Files of the run's fresh /proc that would show the host (kernel command line, boot id) or the
 * mount table (host devices, filesystems and paths): /dev/null is bound over them. Relative to /proc;
 * "self" entries are masked for pid 1 and for the program's first process. */
#define SB_PROC_MASKED {"cmdline", "sys/kernel/random/boot_id"}
#define SB_PROC_SELF_MASKED {"mountinfo", "mounts", "mountstats"}
typedef struct mount_op {
    int kind;
    char src[256];  /* host path (bind), symlink target, or file content (write) */
    char dst[320];  /* absolute path under the root mount point before pivot */
} mount_op;

struct sandbox_pool {
    sandbox_config cfg;
    /* where the new root's tmpfs is mounted in the private mount namespace before pivot_root: an
     * existing host directory that no bind source lies under (the mount hides what is below it) */
    char root[64], root_tmp[80], root_proc[80], root_old[80], root_null[80];
    char proc_masks[8][128]; /* absolute paths before pivot_root of the /proc files pid 1 masks */
    int n_proc_masks;
    int64_t uid_base; /* slot i runs as host uid uid_base + i; reserved through uid_lock_fd */
    int uid_lock_fd;
    /* the supervisor's argv and environment strings (from /proc/self/stat), which pid 1, a copy of
     * the supervisor, overwrites so that /proc/1/cmdline and /proc/1/environ show nothing of it */
    unsigned long arg_start, arg_end, env_start, env_end;
    unsigned features; /* SANDBOX_F_* in use after the probe */
    char features_text[1024];
    mount_op ops[SB_MAX_OPS];
    int n_ops;
    struct sock_filter *bpf; /* (bpf_len,) the exported seccomp program */
    unsigned short bpf_len;
    int netns_fd; /* the pool's shared empty network namespace, or -1 (then one per run) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_slots;
    unsigned char *slot_busy; /* (n_slots,) */
};

/* Everything the child needs for one run, prepared by the supervisor. */
typedef struct run_plan {
    const sandbox_pool *pool;
    uid_t host_uid;
    int fd_out, fd_err, fd_ctl; /* child ends: stdout pipe, stderr pipe, control socket */
    const char *program;
    size_t program_len;
    char program_path[320];     /* <root>/tmp/<file> */
    const char *stdin_data;
    size_t stdin_len;
    char tmp_opts[96];
    char *argv[40];
    char *const *envp;
    struct rlimit rl_as, rl_cpu, rl_nproc, rl_fsize, rl_nofile, rl_core;
    unsigned long clone_flags;
    int use_seccomp;
    int fault_step; /* FAULT INJECTION (tests): fail setup at this step */
} run_plan;

/* ------------------------------------------------------------------ rewards/sandbox/sandbox_child.c */

/* pid 1 of a run (the function clone's child runs); system calls only. Reports to the supervisor over
 * pl->fd_ctl and returns only by _exit. */
int sandbox_child_main(const run_plan *pl);
/* Writes all of p[0..n) to fd, retrying on EINTR; 0 or -1. Async-signal-safe. */
int sandbox_write_all_fd(int fd, const char *p, size_t n);

/* ------------------------------------------------------------------ rewards/sandbox/sandbox.c */

/* One run on slot `slot` with the layers in `features` (SANDBOX_F_*); allow_fault: apply the config's
 * fault-injection step. Always fills *res. */
void sandbox_run_one(sandbox_pool *p, int slot, unsigned features, int allow_fault, const sandbox_request *req,
                     sandbox_result *res);

#endif
