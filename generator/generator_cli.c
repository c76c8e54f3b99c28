/* generator/generator_cli.c — `rlhf generator --config RUN_DIR/config.json --id N` (also
 * `rlhf-generator`): the command line and signals of a trajectory generator process; the process
 * itself is generator_main (generator/process.c). SIGTERM/SIGINT: stop after the current batch.
 * SIGUSR1: the launcher restarted the broker; reconnect. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "generator/generator.h"

static volatile sig_atomic_t g_stop, g_reconnect;
static void on_signal(int sig) {
    if (sig == SIGUSR1) g_reconnect = 1;
    else g_stop = 1;
}

int cmd_generator(int argc, char **argv);
int cmd_generator(int argc, char **argv) {
    generator_options o = {.id = -1, .stop = &g_stop, .reconnect = &g_reconnect};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: rlhf generator --config RUN_DIR/config.json --id N\n");
            return 0;
        }
        if (!strcmp(argv[i], "--config") && i + 1 < argc) o.config_path = argv[++i];
        else if (!strcmp(argv[i], "--id") && i + 1 < argc) o.id = atoi(argv[++i]);
        else {
            o.config_path = NULL;
            break;
        }
    }
    if (!o.config_path || o.id < 0) {
        fprintf(stderr, "usage: rlhf generator --config RUN_DIR/config.json --id N\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    rlhf_error err = {0};
    int rc = generator_main(&o, &err);
    if (rc) rlhf_error_print("generator", &err);
    return rc;
}
