/* dashboard/dashboard_cli.c — `rlhf dashboard RUN_DIR...`: serve the live dashboard (dashboard/dashboard.h)
 * of finished or running runs, several overlaid, until SIGINT/SIGTERM. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "dashboard/dashboard.h"

static const char usage[] =
    "usage: rlhf dashboard RUN_DIR... [--listen ADDR:PORT] [--token-env NAME] [--log-requests]\n"
    "Serves a page of the runs' curves (metrics.jsonl, eval.jsonl), recent rollouts (rollouts.log,\n"
    "scores.jsonl) and resolved configs, several runs overlaid; it follows running runs as they write.\n"
    "  --listen ADDR:PORT  where to listen (default " DASHBOARD_DEFAULT_LISTEN "; port 0 = any free port)\n"
    "  --token-env NAME    the environment variable holding the dashboard's token (default\n"
    "                      " DASHBOARD_DEFAULT_TOKEN_ENV "); when it is set every request needs the token\n"
    "                      (open http://ADDR:PORT/?token=TOKEN); an ADDR that is not loopback needs it\n"
    "  --log-requests      one line per request on stderr\n"
    "Prints \"rlhf dashboard: http://ADDR:PORT/\" once listening (the token is never printed).\n";

int cmd_dashboard(int argc, char **argv) {
    dashboard_config cfg;
    dashboard_config_default(&cfg);
    const char *listen = NULL, *token_env = NULL;
    int log_requests = 0, n_pos = 0;
    const rlhf_opt opts[] = {
        RLHF_OPT("--listen", RLHF_OPT_STR, &listen),
        RLHF_OPT("--token-env", RLHF_OPT_STR, &token_env),
        RLHF_OPT("--log-requests", RLHF_OPT_FLAG, &log_requests),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, "rlhf dashboard", usage, opts, cfg.run_dirs, DASHBOARD_MAX_RUNS, &n_pos);
    if (prc >= 0) return prc;
    if (n_pos < 1) {
        fprintf(stderr, "rlhf dashboard: error: give at least one RUN_DIR\n%s", usage);
        return 2;
    }
    cfg.n_runs = n_pos;
    cfg.quiet = !log_requests;
    if (listen) snprintf(cfg.listen, sizeof cfg.listen, "%s", listen);
    if (token_env) snprintf(cfg.token_env, sizeof cfg.token_env, "%s", token_env);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* the server's thread inherits it; main waits for the signal */
    signal(SIGPIPE, SIG_IGN);
    dashboard *d = NULL;
    rlhf_error err = {0};
    if (dashboard_create(&d, &cfg, &err)) {
        rlhf_error_print("rlhf dashboard", &err);
        return err.code == RLHF_EINVAL ? 2 : rlhf_exit_status(&err);
    }
    char host[64];
    int port;
    dashboard_parse_listen(cfg.listen, host, &port, NULL);
    printf("rlhf dashboard: http://%s:%d/\n", host, dashboard_port(d));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    dashboard_destroy(&d);
    return 0;
}
