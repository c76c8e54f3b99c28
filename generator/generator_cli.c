/* generator/generator_cli.c — `rlhf generator --config RUN_DIR/config.json --id N` (also
 * `rlhf-generator`): the command line and signals of a trajectory generator process; the process
 * itself is generator_main (generator/process.c). SIGTERM/SIGINT: stop after the current batch.
 * SIGUSR1: the launcher restarted the broker; reconnect. */
#include <signal.h>
#include <string.h>

#include "generator/generator.h"

static volatile sig_atomic_t g_stop, g_reconnect;
static void on_signal(int sig) {
    if (sig == SIGUSR1) g_reconnect = 1;
    else g_stop = 1;
}

int cmd_generator(int argc, char **argv);
int cmd_generator(int argc, char **argv) {
    static const char usage[] =
        "usage: rlhf generator --config RUN_DIR/config.json --id N [--credentials DIR] [--endpoint tcp://HOST:PORT]\n"
        "  --credentials DIR  the key pair from `rlhf credentials RUN_DIR --role generator --out DIR` (a generator\n"
        "                     on another host; default RUN_DIR/credentials)\n"
        "  --endpoint E       the broker's address as seen from here (default: the config's broker.endpoint)\n";
    generator_options o = {.id = -1, .stop = &g_stop, .reconnect = &g_reconnect};
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &o.config_path), RLHF_OPT("--id", RLHF_OPT_INT, &o.id),
                             RLHF_OPT("--credentials", RLHF_OPT_STR, &o.credentials),
                             RLHF_OPT("--endpoint", RLHF_OPT_STR, &o.endpoint), RLHF_OPT_END};
    int rc = rlhf_opts_parse(argc, argv, "rlhf generator", usage, opts, NULL, 0, NULL);
    if (rc >= 0) return rc;
    if (!o.config_path || o.id < 0) {
        fputs(usage, stderr);
        return 2;
    }
    rlhf_on_signals(on_signal, (const int[]){SIGTERM, SIGINT, SIGUSR1, 0});
    rlhf_error err = {0};
    rc = generator_main(&o, &err);
    if (rc) rlhf_error_print("generator", &err);
    return rc;
}
