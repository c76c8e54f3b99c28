/* run/process.c — the start-up that generator and updater processes share (see run/run.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

void run_mpirun_env(int multi_host) {
    /* root is allowed (containers, CI); shared memory between the ranks of a host (single-copy
     * mechanisms need ptrace rights a container may not give); more ranks than cores is fine; no
     * binding, since the ranks divide the cores among their OpenMP threads themselves */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl", multi_host ? "self,vader,tcp" : "self,vader", 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    setenv("OMPI_MCA_hwloc_base_binding_policy", "none", 1);
}

int run_mpirun_exec(int np, char *const *args) {
    int n = 0;
    while (args[n]) n++;
    char nps[16], self[4096];
    snprintf(nps, sizeof nps, "%d", np);
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) return -1;
    self[sl] = 0;
    char **argv = calloc((size_t)n + 6, sizeof *argv);
    if (!argv) return -1;
    int k = 0;
    argv[k++] = "mpirun";
    argv[k++] = "-np";
    argv[k++] = nps;
    argv[k++] = "--quiet";
    argv[k++] = self;
    for (int i = 0; i < n; i++) argv[k++] = args[i];
    run_mpirun_env(0);
    execvp("mpirun", argv);
    int e = errno;
    free(argv);
    errno = e;
    return -1;
}
