/* run/process.c — the start-up that generator and updater processes share (see run/run.h). */
#include <string.h>

#include "run/run.h"

int run_process_open(run_process *p, const char *config_path, int role, rlhf_error *err) {
    memset(p, 0, sizeof *p);
    int rc = run_config_load(&p->cfg, config_path, NULL, 0, err);
    if (rc) return rc;
    model_set_threads(role == WIRE_ROLE_GENERATOR ? p->cfg.gen_threads : p->cfg.train_threads);
    broker_config_default(&p->broker);
    if ((rc = broker_config_parse(&p->broker, p->cfg.broker, "broker", err))) {
        broker_config_free(&p->broker);
        run_config_free(&p->cfg);
        memset(p, 0, sizeof *p);
    }
    return rc;
}

void run_process_close(run_process *p) {
    broker_config_free(&p->broker);
    run_config_free(&p->cfg);
}
