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
        "       rlhf generator --config CONFIG.json --id N --connect tcp://HOST:PORT --server-key FILE --key FILE\n"
        "  --credentials DIR  the key pair from `rlhf credentials RUN_DIR --role generator --out DIR` (a generator\n"
        "                     on another host; default RUN_DIR/credentials)\n"
        "  --endpoint E       the broker's address as seen from here (default: the config's broker.endpoint)\n"
        "  --connect E        the same as --endpoint (a tcp:// address with --key)\n"
        "  --key FILE         this host's key pair (`rlhf keygen --out FILE`), listed in the broker's\n"
        "                     broker.authorized_keys as a generator; needs --server-key (docs/MULTI_HOST.md)\n"
        "  --server-key FILE  a file whose public= line is the broker's public key (e.g. broker.key.pub)\n"
        "  Joins and leaves a running run at any time: prompts a generator held when it went away are released.\n";
    generator_options o = {.id = -1, .stop = &g_stop, .reconnect = &g_reconnect};
    const char *connect = NULL;
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &o.config_path), RLHF_OPT("--id", RLHF_OPT_INT, &o.id),
                             RLHF_OPT("--credentials", RLHF_OPT_STR, &o.credentials),
                             RLHF_OPT("--endpoint", RLHF_OPT_STR, &o.endpoint),
                             RLHF_OPT("--connect", RLHF_OPT_STR, &connect), RLHF_OPT("--key", RLHF_OPT_STR, &o.key_file),
                             RLHF_OPT("--server-key", RLHF_OPT_STR, &o.server_key_file), RLHF_OPT_END};
    int rc = rlhf_opts_parse(argc, argv, "rlhf generator", usage, opts, NULL, 0, NULL);
    if (rc >= 0) return rc;
    const char *why = !o.config_path                       ? "missing --config"
                      : o.id < 0                           ? "missing --id N (N >= 0)"
                      : connect && o.endpoint              ? "--connect and --endpoint name the same thing; give one"
                      : !o.key_file != !o.server_key_file  ? "--key and --server-key go together"
                      : o.key_file && o.credentials        ? "--key/--server-key replace --credentials; give one"
                      : o.key_file && !connect && !o.endpoint ? "--key needs --connect tcp://HOST:PORT"
                                                           : NULL;
    if (why) {
        fprintf(stderr, "rlhf generator: error: %s\n%s", why, usage);
        return 2;
    }
    if (connect) o.endpoint = connect;
    rlhf_on_signals(on_signal, (const int[]){SIGTERM, SIGINT, SIGUSR1, 0});
    rlhf_error err = {0};
    rc = generator_main(&o, &err);
    if (rc) rlhf_error_print("generator", &err);
    return rc;
}
