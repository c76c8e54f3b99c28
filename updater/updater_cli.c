/* updater/updater_cli.c — `rlhf updater --config RUN_DIR/config.json` (also `rlhf-updater`): the
 * command line and signals of the policy updater process; the process itself is updater_main
 * (updater/process.c). SIGTERM/SIGINT: finish the current step, write a checkpoint, exit 0.
 * SIGUSR1: the launcher restarted the broker; reconnect. Exit 2: bad config or input. */
#include <signal.h>
#include <string.h>

#include "updater/updater.h"

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
    rlhf_error err = {0};
    rc = updater_main(&o, &err);
    if (rc) rlhf_error_print("updater", &err);
    return rc;
}
