/* rewards/sandbox/sandbox_setup.c — what a sandbox pool prepares before its first run: the config
 * (defaults, JSON parsing), the new root's mount plan, the seccomp program, the pool's shared network
 * namespace, and the start-up probe of what the host allows; sandbox_pool_create/_destroy. */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <jansson.h>

#include "rewards/sandbox/sandbox.h"
#include "rewards/sandbox/sandbox_int.h"

const char *sandbox_verdict_name(sandbox_verdict v) {
    switch (v) {
    case SANDBOX_PASS: return "pass";
    case SANDBOX_FAIL: return "fail";
    case SANDBOX_TIMEOUT: return "timeout";
    case SANDBOX_MEMORY: return "memory";
    case SANDBOX_RUNTIME_ERROR: return "runtime_error";
    case SANDBOX_OUTPUT_LIMIT: return "output_limit";
    case SANDBOX_SANDBOX_ERROR: return "sandbox_error";
    }
    return "?";
}

void sandbox_config_default(sandbox_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->interpreter, sizeof c->interpreter, "/usr/bin/python3");
    c->wall_ms = 5000;
    c->cpu_s = 0; /* derived from wall_ms per run */
    c->memory_bytes = 512ll << 20;
    c->max_procs = 16; /* x memory_mb = 8 GiB, the most one run may take (sandbox_config_memory_bound) */
    c->max_file_bytes = 16ll << 20;
    c->max_open_files = 64;
    c->tmp_bytes = 16ll << 20;
    c->stdout_cap = 1ll << 20;
    c->stderr_cap = 64ll << 10;
    c->host_uid_base = 0; /* the pool reserves a free range (reserve_uids) */
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->pool_size = n > 0 ? (int)n : 1;
    c->allow_degraded = 0;
    c->want = SANDBOX_F_NET | SANDBOX_F_IPC | SANDBOX_F_UTS | SANDBOX_F_SECCOMP;
}

static int feature_bit(const char *name) {
    if (!strcmp(name, "net")) return SANDBOX_F_NET;
    if (!strcmp(name, "ipc")) return SANDBOX_F_IPC;
    if (!strcmp(name, "uts")) return SANDBOX_F_UTS;
    if (!strcmp(name, "seccomp")) return SANDBOX_F_SECCOMP;
    if (!strcmp(name, "cgroup")) return SANDBOX_F_CGROUP;
    return 0;
}

int64_t sandbox_config_memory_bound(const sandbox_config *c) {
    /* the 1 MiB root tmpfs and SB_SHM_BYTES of SysV IPC */
    return c->max_procs * c->memory_bytes + c->tmp_bytes + (1 << 20) + SB_SHM_BYTES;
}

/* Without a memory cgroup, RLIMIT_AS per process is all that bounds a run: a config whose runs may
 * each take more than the host has is refused rather than left to the OOM killer. */
static int check_memory_bound(const sandbox_config *c, const char *where, rlhf_error *err) {
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || psize <= 0) return rlhf_error_set(err, RLHF_ESYS, where, "cannot read the host's memory size");
    int64_t host = (int64_t)pages * psize, bound = sandbox_config_memory_bound(c);
    if (bound > host)
        return rlhf_error_set(err, RLHF_EINVAL, where,
                              "max_procs x memory_mb + tmp_mb = %lld x %lld + %lld MiB, the most host memory one run "
                              "may take, exceeds the host's %lld MiB; lower max_procs or memory_mb",
                              (long long)c->max_procs, (long long)(c->memory_bytes >> 20),
                              (long long)(c->tmp_bytes >> 20), (long long)(host >> 20));
    return 0;
}

int sandbox_config_parse(sandbox_config *c, const json_t *obj, const char *where, rlhf_error *err) {
    if (!obj) return 0;
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "expected a JSON object");
    static const struct {
        const char *key;
        size_t off;
        int64_t scale, min, max;
    } nums[] = {
        {"wall_ms", offsetof(sandbox_config, wall_ms), 1, 1, 3600000},
        {"cpu_s", offsetof(sandbox_config, cpu_s), 1, 1, 3600},
        {"memory_mb", offsetof(sandbox_config, memory_bytes), 1 << 20, 16, 1 << 20},
        {"max_procs", offsetof(sandbox_config, max_procs), 1, 2, 100000}, /* pid 1 counts too */
        {"max_file_mb", offsetof(sandbox_config, max_file_bytes), 1 << 20, 1, 1 << 20},
        {"max_open_files", offsetof(sandbox_config, max_open_files), 1, 8, 65536},
        {"tmp_mb", offsetof(sandbox_config, tmp_bytes), 1 << 20, 1, 1 << 16},
        {"stdout_kb", offsetof(sandbox_config, stdout_cap), 1 << 10, 1, 1 << 20},
        {"stderr_kb", offsetof(sandbox_config, stderr_cap), 1 << 10, 1, 1 << 20},
        {"host_uid_base", offsetof(sandbox_config, host_uid_base), 1, 1000, 2000000000},
        /* 0 in the struct means "reserve a free range"; in JSON leave the key out for that */
    };
    const char *k;
    json_t *v;
    char w[300];
    json_object_foreach((json_t *)obj, k, v) {
        snprintf(w, sizeof w, "%s.%s", where, k);
        int done = 0;
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
            if (strcmp(k, nums[i].key)) continue;
            if (!json_is_integer(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer");
            int64_t x = (int64_t)json_integer_value(v);
            if (x < nums[i].min || x > nums[i].max)
                return rlhf_error_set(err, RLHF_EINVAL, w, "must be in %lld..%lld, got %lld", (long long)nums[i].min,
                                      (long long)nums[i].max, (long long)x);
            *(int64_t *)((char *)c + nums[i].off) = x * nums[i].scale;
            done = 1;
        }
        if (done) continue;
        if (!strcmp(k, "interpreter")) {
            const char *s = json_string_value(v);
            if (!s || s[0] != '/' || strlen(s) >= sizeof c->interpreter)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an absolute path (under /usr or a bind)");
            snprintf(c->interpreter, sizeof c->interpreter, "%s", s);
        } else if (!strcmp(k, "pool_size")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 256)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer in 1..256");
            c->pool_size = (int)json_integer_value(v);
        } else if (!strcmp(k, "fault_inject_step")) {
            /* FAULT INJECTION for tests: makes every run's setup fail at this step */
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer step number");
            c->fault_fail_step = (int)json_integer_value(v);
        } else if (!strcmp(k, "cgroup")) {
            if (!json_is_boolean(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected true or false");
            if (json_is_true(v))
                return rlhf_error_set(err, RLHF_EUNSUPPORTED, w,
                                      "per-run cgroups are not implemented yet (rlimits and the pid namespace bound "
                                      "processes and memory); leave it false");
        } else if (!strcmp(k, "allow_degraded")) {
            if (!json_is_array(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected an array of feature names");
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                int b = json_is_string(e) ? feature_bit(json_string_value(e)) : 0;
                if (!b)
                    return rlhf_error_set(err, RLHF_EINVAL, w,
                                          "entry %zu: expected one of \"net\", \"ipc\", \"uts\", \"seccomp\", "
                                          "\"cgroup\" (user, pid and mount namespaces cannot be degraded)", i);
                c->allow_degraded |= (unsigned)b;
            }
        } else if (!strcmp(k, "binds")) {
            if (!json_is_array(v) || json_array_size(v) > 8)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an array of at most 8 absolute paths");
            size_t i;
            json_t *e;
            c->n_binds = 0;
            json_array_foreach(v, i, e) {
                const char *s = json_string_value(e);
                if (!s || s[0] != '/' || strlen(s) >= sizeof c->binds[0] || strstr(s, ".."))
                    return rlhf_error_set(err, RLHF_EINVAL, w, "entry %zu: expected an absolute path without ..", i);
                snprintf(c->binds[c->n_binds++], sizeof c->binds[0], "%s", s);
            }
        } else {
            return rlhf_error_set(err, RLHF_EINVAL, w,
                                  "unknown key (known: interpreter, wall_ms, cpu_s, memory_mb, max_procs, max_file_mb, "
                                  "max_open_files, tmp_mb, stdout_kb, stderr_kb, host_uid_base, pool_size, "
                                  "allow_degraded, cgroup, binds)");
        }
    }
    return check_memory_bound(c, where, err);
}

void sandbox_result_free(sandbox_result *r) {
    if (!r) return;
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
    r->out_len = r->err_len = 0;
}

static int add_op(sandbox_pool *p, int kind, const char *src, const char *dst) {
    if (p->n_ops >= SB_MAX_OPS) return -1;
    mount_op *op = &p->ops[p->n_ops++];
    op->kind = kind;
    snprintf(op->src, sizeof op->src, "%s", src ? src : "");
    snprintf(op->dst, sizeof op->dst, "%s%s", p->root, dst);
    return 0;
}

/* The root: /usr (and /lib*, /bin, /sbin as the host has them: symlinks or read-only binds),
 * a minimal /etc, /dev with null/zero/urandom, /tmp, /proc. */
static int build_ops(sandbox_pool *p, rlhf_error *err) {
    static const char *const top[] = {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"};
    static const char *const mount_points[] = {"/mnt", "/media", "/srv", "/opt", "/tmp", "/var", NULL};
    p->root[0] = 0;
    for (const char *const *m = mount_points; *m && !p->root[0]; m++) {
        struct stat ms;
        if (lstat(*m, &ms) || !S_ISDIR(ms.st_mode)) continue;
        int clash = 0;
        size_t ml = strlen(*m);
        for (int i = 0; i < p->cfg.n_binds; i++)
            clash |= !strncmp(p->cfg.binds[i], *m, ml) && (p->cfg.binds[i][ml] == '/' || !p->cfg.binds[i][ml]);
        if (!clash) snprintf(p->root, sizeof p->root, "%s", *m);
    }
    if (!p->root[0])
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox", "no directory to mount the sandbox root on "
                              "(tried /mnt, /media, /srv, /opt, /tmp, /var outside sandbox.binds)");
    snprintf(p->root_tmp, sizeof p->root_tmp, "%s/tmp", p->root);
    snprintf(p->root_proc, sizeof p->root_proc, "%s/proc", p->root);
    snprintf(p->root_old, sizeof p->root_old, "%s/.old", p->root);
    snprintf(p->root_null, sizeof p->root_null, "%s/dev/null", p->root);
    static const char *const masked[] = SB_PROC_MASKED, *const self_masked[] = SB_PROC_SELF_MASKED;
    p->n_proc_masks = 0;
    for (size_t i = 0; i < sizeof masked / sizeof masked[0]; i++)
        snprintf(p->proc_masks[p->n_proc_masks++], sizeof p->proc_masks[0], "%s/%s", p->root_proc, masked[i]);
    for (size_t i = 0; i < sizeof self_masked / sizeof self_masked[0]; i++)
        snprintf(p->proc_masks[p->n_proc_masks++], sizeof p->proc_masks[0], "%s/1/%s", p->root_proc, self_masked[i]);
    add_op(p, OP_BIND_RO, "/usr", "/usr");
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) {
        struct stat st;
        if (lstat(top[i], &st)) continue;
        if (S_ISLNK(st.st_mode)) {
            char t[256];
            ssize_t n = readlink(top[i], t, sizeof t - 1);
            if (n <= 0) continue;
            t[n] = 0;
            add_op(p, OP_SYMLINK, t, top[i]);
        } else if (S_ISDIR(st.st_mode)) {
            add_op(p, OP_BIND_RO, top[i], top[i]);
        }
    }
    add_op(p, OP_MKDIR, NULL, "/etc");
    add_op(p, OP_WRITE, "root:x:0:0::/:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
           "/etc/passwd");
    add_op(p, OP_WRITE, "root:x:0:\nnogroup:x:65534:\n", "/etc/group");
    add_op(p, OP_WRITE, "127.0.0.1 localhost sandbox\n", "/etc/hosts");
    struct stat st;
    if (!stat("/etc/ld.so.cache", &st)) {
        add_op(p, OP_WRITE, "", "/etc/ld.so.cache");
        p->ops[p->n_ops - 1].kind = OP_BIND_FILE_RO;
        snprintf(p->ops[p->n_ops - 1].src, sizeof p->ops[0].src, "/etc/ld.so.cache");
    }
    add_op(p, OP_MKDIR, NULL, "/dev");
    static const char *const devs[] = {"/dev/null", "/dev/zero", "/dev/urandom"};
    for (size_t i = 0; i < 3; i++) add_op(p, OP_BIND_DEV, devs[i], devs[i]);
    add_op(p, OP_SYMLINK, "/proc/self/fd", "/dev/fd");
    add_op(p, OP_SYMLINK, "/proc/self/fd/0", "/dev/stdin");
    add_op(p, OP_SYMLINK, "/proc/self/fd/1", "/dev/stdout");
    add_op(p, OP_SYMLINK, "/proc/self/fd/2", "/dev/stderr");
    for (int i = 0; i < p->cfg.n_binds; i++) {
        /* create the parents, then bind */
        char path[256];
        snprintf(path, sizeof path, "%s", p->cfg.binds[i]);
        for (char *s = path + 1; *s; s++)
            if (*s == '/') {
                *s = 0;
                add_op(p, OP_MKDIR, NULL, path);
                *s = '/';
            }
        if (stat(p->cfg.binds[i], &st) || !S_ISDIR(st.st_mode))
            return rlhf_error_set(err, RLHF_EINVAL, "sandbox.binds", "%s is not a directory", p->cfg.binds[i]);
        add_op(p, OP_BIND_RO, p->cfg.binds[i], p->cfg.binds[i]);
    }
    add_op(p, OP_MKDIR, NULL, "/tmp");
    add_op(p, OP_MKDIR, NULL, "/proc");
    if (add_op(p, OP_MKDIR, NULL, "/.old"))
        return rlhf_error_set(err, RLHF_EINVAL, "sandbox", "too many mount operations");
    return 0;
}

static int build_seccomp(sandbox_pool *p, rlhf_error *err) {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) return RLHF_FAIL(err, RLHF_ESYS, "seccomp_init failed");
    static const char *const denied[] = {
        "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "ptrace", "process_vm_readv",
        "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "keyctl",
        "add_key", "request_key", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
        "finit_module", "delete_module", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree",
        "fspick", "mount_setattr", "syslog", "reboot", "swapon", "swapoff", "acct", "settimeofday",
        "clock_settime", "clock_adjtime", "adjtimex", "quotactl", "lookup_dcookie", "fanotify_init", "iopl",
        "ioperm", "sethostname", "setdomainname", "vhangup", "personality", "uselib", "mknod", "mknodat",
        "pidfd_getfd", "kcmp",
        /* memory outside RLIMIT_AS: a memfd's pages need not be mapped (SysV shm is bounded by the
         * IPC namespace's limits instead, see SB_SHM_BYTES) */
        "memfd_create", "memfd_secret", NULL};
    int rc = 0;
    for (const char *const *s = denied; *s && !rc; s++) {
        int nr = seccomp_syscall_resolve_name(*s);
        if (nr == __NR_SCMP_ERROR) continue; /* not on this architecture */
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0)) rc = -1;
    }
    /* clone may make threads and processes but no namespaces; clone3 hides its flags in memory the
     * filter cannot read, so it answers ENOSYS and libc falls back to clone */
    static const unsigned long ns_flags[] = {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET,
                                             CLONE_NEWIPC,  CLONE_NEWUTS, CLONE_NEWCGROUP};
    for (size_t i = 0; i < sizeof ns_flags / sizeof ns_flags[0] && !rc; i++)
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                             SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i])))
            rc = -1;
    if (!rc && seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0)) rc = -1;
    if (rc) {
        seccomp_release(ctx);
        return RLHF_FAIL(err, RLHF_ESYS, "seccomp_rule_add failed");
    }
    int mfd = (int)syscall(SYS_memfd_create, "seccomp-bpf", MFD_CLOEXEC);
    if (mfd < 0 || seccomp_export_bpf(ctx, mfd)) {
        if (mfd >= 0) close(mfd);
        seccomp_release(ctx);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot export the seccomp program");
    }
    seccomp_release(ctx);
    off_t len = lseek(mfd, 0, SEEK_END);
    if (len <= 0 || len % (off_t)sizeof(struct sock_filter) || len / (off_t)sizeof(struct sock_filter) > 4096) {
        close(mfd);
        return RLHF_FAIL(err, RLHF_ESYS, "seccomp program has a bad size %lld", (long long)len);
    }
    p->bpf = malloc((size_t)len);
    if (!p->bpf || pread(mfd, p->bpf, (size_t)len, 0) != len) {
        close(mfd);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot read the seccomp program back");
    }
    close(mfd);
    p->bpf_len = (unsigned short)(len / (off_t)sizeof(struct sock_filter));
    return 0;
}

static int probe(sandbox_pool *p, rlhf_error *err) {
    static const char *const args[] = {"-c", "pass", NULL};
    sandbox_request req = {.program = NULL, .args = NULL, .wall_ms = 10000};
    sandbox_result r;
    char interp_save[256];
    memcpy(interp_save, p->cfg.interpreter, sizeof interp_save);
    /* the probe runs /bin/true-like work: the interpreter must exist and lie inside the sandbox's view */
    if (access(p->cfg.interpreter, X_OK))
        return rlhf_error_set(err, RLHF_EINVAL, "sandbox.interpreter", "%s is not executable: %s", p->cfg.interpreter,
                              strerror(errno));
    int inside = !strncmp(p->cfg.interpreter, "/usr/", 5) || !strncmp(p->cfg.interpreter, "/bin/", 5);
    for (int i = 0; i < p->cfg.n_binds && !inside; i++)
        inside = !strncmp(p->cfg.interpreter, p->cfg.binds[i], strlen(p->cfg.binds[i]));
    if (!inside)
        return rlhf_error_set(err, RLHF_EINVAL, "sandbox.interpreter",
                              "%s is outside the sandbox's filesystem (/usr and sandbox.binds)", p->cfg.interpreter);
    unsigned feats = p->cfg.want & ~(unsigned)SANDBOX_F_CGROUP;
    const char *truebin = access("/usr/bin/true", X_OK) == 0 ? "/usr/bin/true" : NULL;
    if (truebin) {
        snprintf(p->cfg.interpreter, sizeof p->cfg.interpreter, "%s", truebin);
        static const char *const no_args[] = {NULL};
        req.args = no_args;
    } else {
        req.args = args;
    }
    unsigned missing = 0;
    char why[600] = "";
    for (int attempt = 0; attempt < 6; attempt++) {
        sandbox_run_one(p, 0, feats, 0, &req, &r);
        sandbox_result_free(&r);
        if (r.verdict == SANDBOX_PASS) break;
        unsigned drop = 0;
        if (!strncmp(r.reason, "clone", 5)) {
            /* find the namespace the host refuses, one optional flag at a time */
            for (unsigned b = SANDBOX_F_NET; b <= SANDBOX_F_UTS && !drop; b <<= 1)
                if (feats & b) {
                    sandbox_result r2;
                    sandbox_run_one(p, 0, feats & ~b, 0, &req, &r2);
                    sandbox_result_free(&r2);
                    if (r2.verdict == SANDBOX_PASS || strncmp(r2.reason, "clone", 5)) drop = b;
                }
        } else if (r.exit_code == -ST_SECCOMP) {
            drop = SANDBOX_F_SECCOMP;
        } else if (r.exit_code == -ST_HOSTNAME) {
            drop = SANDBOX_F_UTS;
        }
        if (!drop) {
            memcpy(p->cfg.interpreter, interp_save, sizeof interp_save);
            return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox probe",
                                  "the host does not allow the sandbox's required layers (user, pid and mount "
                                  "namespaces, pivot_root, fresh /proc): %s", r.reason);
        }
        feats &= ~drop;
        missing |= drop;
        size_t l = strlen(why);
        snprintf(why + l, sizeof why - l, "%s%s (%s)", l ? "; " : "",
                 drop == SANDBOX_F_NET ? "net" : drop == SANDBOX_F_IPC ? "ipc" : drop == SANDBOX_F_UTS ? "uts" : "seccomp",
                 r.reason);
    }
    memcpy(p->cfg.interpreter, interp_save, sizeof interp_save);
    unsigned refused = missing & ~p->cfg.allow_degraded;
    if (refused)
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox probe",
                              "the host does not allow: %s; add them to sandbox.allow_degraded to run without", why);
    p->features = feats;
    snprintf(p->features_text, sizeof p->features_text, "userns(uid %d->host %lld+slot)+pidns+mountns+pivot_root+proc%s%s%s%s%s%s",
             SB_UID, (long long)p->uid_base, feats & SANDBOX_F_NET ? (p->netns_fd >= 0 ? "+netns(one per pool)" : "+netns") : "", feats & SANDBOX_F_IPC ? "+ipcns" : "",
             feats & SANDBOX_F_UTS ? "+utsns" : "", feats & SANDBOX_F_SECCOMP ? "+seccomp" : "", missing ? " DEGRADED: " : "",
             missing ? why : "");
    return 0;
}

/* A new, empty network namespace (only a down loopback) held by an fd; -1 if the host refuses
 * (then each run makes its own). Made by this thread alone: unshare/setns of CLONE_NEWNET act on
 * the calling thread only. */
static int make_shared_netns(void) {
    int own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own < 0) return -1;
    int fd = -1;
    if (unshare(CLONE_NEWNET) == 0) {
        fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (setns(own, CLONE_NEWNET)) {
            fprintf(stderr, "rewards/sandbox: cannot return to the thread's network namespace: %s\n", strerror(errno));
            abort();
        }
    }
    close(own);
    return fd;
}

/* Host uids. Every slot of every live pool on the host must have its own uid: RLIMIT_NPROC is counted
 * per uid, and a process may signal or ptrace processes of its own uid. A pool reserves its range
 * [base, base + n_slots) as a write lock on those bytes of one host-wide lock file (byte offset = uid),
 * taken with F_OFD_SETLK: open-file-description locks conflict between two pools of one process as
 * well as between processes, and the kernel drops them when the pool closes the file or its process
 * dies (SIGKILL included), so no stale reservation outlives its holder. The file lives in the first
 * of these directories that exists; every process on the host finds the same one. */
static const char *const uid_lock_dirs[] = {"/run/lock", "/var/lock", "/tmp"};
#define UID_AUTO_FIRST 100000
#define UID_AUTO_BLOCK 256
#define UID_AUTO_BLOCKS 8192

static int reserve_uids(sandbox_pool *p, rlhf_error *err) {
    const char *dir = NULL;
    struct stat st;
    for (size_t i = 0; i < sizeof uid_lock_dirs / sizeof uid_lock_dirs[0] && !dir; i++)
        if (!stat(uid_lock_dirs[i], &st) && S_ISDIR(st.st_mode)) dir = uid_lock_dirs[i];
    if (!dir) return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox", "no /run/lock, /var/lock or /tmp for the host uid reservations");
    char path[64];
    snprintf(path, sizeof path, "%s/rlhf-sandbox-uids", dir);
    p->uid_lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (p->uid_lock_fd < 0)
        return rlhf_error_set(err, RLHF_ESYS, "sandbox", "cannot open the host uid reservation file %s: %s", path,
                              strerror(errno));
    int64_t fixed = p->cfg.host_uid_base;
    int tries = fixed ? 1 : UID_AUTO_BLOCKS;
    /* start at a block chosen by the pid so that processes rarely probe each other's blocks */
    int first = (int)(getpid() % UID_AUTO_BLOCKS);
    for (int t = 0; t < tries; t++) {
        int64_t base = fixed ? fixed : UID_AUTO_FIRST + (int64_t)((first + t) % UID_AUTO_BLOCKS) * UID_AUTO_BLOCK;
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)base, .l_len = p->n_slots};
        if (fcntl(p->uid_lock_fd, F_OFD_SETLK, &fl) == 0) {
            p->uid_base = base;
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES)
            return rlhf_error_set(err, RLHF_ESYS, "sandbox", "locking host uids in %s: %s", path, strerror(errno));
    }
    if (fixed)
        return rlhf_error_set(err, RLHF_ESTATE, "sandbox.host_uid_base",
                              "host uids %lld..%lld are in use by another sandbox pool (of this or another process)",
                              (long long)fixed, (long long)fixed + p->n_slots - 1);
    return rlhf_error_set(err, RLHF_ESTATE, "sandbox", "every host uid range from %d on is in use by other sandbox pools",
                          UID_AUTO_FIRST);
}

/* Where the kernel keeps this process's argv and environment strings (fields 48-51 of
 * /proc/self/stat); left 0 when unreadable (then pid 1 cannot scrub them and says nothing). */
static void find_arg_env(sandbox_pool *p) {
    char buf[4096];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = 0;
    char *s = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!s) return;
    s += 2;
    while (*s && *s != ' ') s++; /* field 3, the state letter */
    unsigned long v[52] = {0};
    for (int field = 4; field <= 51 && *s; field++) {
        char *end;
        while (*s == ' ') s++;
        v[field] = strtoul(s, &end, 10);
        if (end == s) return;
        s = end;
    }
    if (v[49] > v[48] && v[51] >= v[50]) {
        p->arg_start = v[48], p->arg_end = v[49], p->env_start = v[50], p->env_end = v[51];
    }
}

int sandbox_pool_create(sandbox_pool **out, const sandbox_config *cfg, rlhf_error *err) {
    *out = NULL;
    sandbox_pool *p = calloc(1, sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    p->cfg = *cfg;
    p->netns_fd = -1;
    p->uid_lock_fd = -1;
    if (p->cfg.pool_size < 1) p->cfg.pool_size = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->n_slots = p->cfg.pool_size;
    p->slot_busy = calloc((size_t)p->n_slots, 1);
    int rc = p->slot_busy ? 0 : RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    if (!rc) rc = check_memory_bound(&p->cfg, "sandbox", err);
    if (!rc) rc = reserve_uids(p, err);
    if (!rc) rc = build_ops(p, err);
    find_arg_env(p);
    if (!rc && (p->cfg.want & SANDBOX_F_SECCOMP)) {
        rc = build_seccomp(p, err);
        if (rc && (p->cfg.allow_degraded & SANDBOX_F_SECCOMP)) {
            rlhf_error_clear(err);
            p->cfg.want &= ~(unsigned)SANDBOX_F_SECCOMP;
            rc = 0;
        }
    }
    if (!rc && (p->cfg.want & SANDBOX_F_NET)) p->netns_fd = make_shared_netns();
    if (!rc) rc = probe(p, err);
    if (rc) {
        sandbox_pool_destroy(&p);
        return rc;
    }
    *out = p;
    return 0;
}

void sandbox_pool_destroy(sandbox_pool **pp) {
    if (!pp || !*pp) return;
    sandbox_pool *p = *pp;
    free(p->bpf);
    if (p->netns_fd >= 0) close(p->netns_fd);
    if (p->uid_lock_fd >= 0) close(p->uid_lock_fd); /* releases the pool's host uids */
    free(p->slot_busy);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    *pp = NULL;
}
