/* updater/updater_cli.c — `rlhf updater --config RUN_DIR/config.json` (also `rlhf-updater`): the
 * command line and signals of the policy updater process; the process itself is updater_main
 * (updater/process.c). SIGTERM/SIGINT: finish the current step, write a checkpoint, exit 0.
 * SIGUSR1: the launcher restarted the broker; reconnect. Exit status: an RLHF_EXIT_* class (0 done, 1
 * transient, 2 config, 3 environment, 4 a reward plugin crashed; docs/RUNNING.md). */
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include "updater/updater.h"

/* ---------------------------------------------------------------- a crash inside a reward plugin
 *
 * A shared-object reward plugin under isolate "none" runs in this process (by default it runs in a
 * worker process, rewards/plugin.c, and a crash there is an item's ERROR): when it faults, restarting the updater only
 * repeats the fault on the same groups (recovered from the replay log). The fault handler finds the
 * object holding the faulting instruction; when that is neither this program nor a system library it
 * is a plugin, and the process exits with RLHF_EXIT_PLUGIN after one line naming it, so the launcher
 * stops the run with the cause. Any other fault keeps its default action (the signal is the class). */

static uintptr_t fault_pc(void *uctx) {
    const ucontext_t *uc = uctx;
#if defined(__x86_64__)
    return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t)uc->uc_mcontext.pc;
#else
    (void)uc;
    return 0;
#endif
}

/* The C library, OpenMP, ZeroMQ, ...: a fault there is not blamed on a plugin (even when a plugin
 * passed the bad pointer; then the signal stays the class and supervision's crash-loop cap applies). */
static int system_object(const char *path) {
    static const char *const dirs[] = {"/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", NULL};
    for (int i = 0; dirs[i]; i++)
        if (!strncmp(path, dirs[i], strlen(dirs[i]))) return 1;
    return strstr(path, "linux-vdso") != NULL;
}

static void put(const char *s) {
    ssize_t w = write(2, s, strlen(s));
    (void)w;
}

static void on_fault(int sig, siginfo_t *si, void *uctx) {
    (void)si;
    Dl_info self, at;
    uintptr_t pc = fault_pc(uctx);
    /* dladdr is not on the async-signal-safe list, but it only reads the loader's tables, and the
     * process is ending either way */
    if (pc && dladdr((void *)pc, &at) && at.dli_fname && dladdr((void *)&on_fault, &self) &&
        at.dli_fbase != self.dli_fbase && !system_object(at.dli_fname)) {
        put("updater: error: ");
        put(at.dli_fname);
        put(": reward plugin crashed with ");
        put(sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE" : "SIGILL");
        if (at.dli_sname) {
            put(" in ");
            put(at.dli_sname);
        }
        put("; a new updater would crash again on the same groups (exit status 4: plugin)\n");
        _exit(RLHF_EXIT_PLUGIN);
    }
    /* SA_RESETHAND restored the default action: returning faults again and the signal ends the process */
}

static void install_fault_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

static volatile sig_atomic_t g_stop, g_reconnect;
static void on_signal(int sig) {
    if (sig == SIGUSR1) g_reconnect = 1;
    else g_stop = 1;
}

int cmd_updater(int argc, char **argv);
int cmd_updater(int argc, char **argv) {
    static const char usage[] = "usage: rlhf updater --config RUN_DIR/config.json\n";
    updater_options o = {.stop = &g_stop, .reconnect = &g_reconnect};
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &o.config_path), RLHF_OPT_END};
    int rc = rlhf_opts_parse(argc, argv, "rlhf updater", usage, opts, NULL, 0, NULL);
    if (rc >= 0) return rc;
    if (!o.config_path) {
        fputs(usage, stderr);
        return 2;
    }
    rlhf_on_signals(on_signal, (const int[]){SIGTERM, SIGINT, SIGUSR1, 0});
    install_fault_handler();
    rlhf_error err = {0};
    rc = updater_main(&o, &err);
    if (rc) rlhf_error_print("updater", &err);
    return rc;
}
