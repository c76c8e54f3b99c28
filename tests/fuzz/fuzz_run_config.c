/* tests/fuzz/fuzz_run_config.c — the run config loader with `--set` overrides (run/config.c).
 *
 * Input: the config file, then up to 8 overrides ("a.b=VALUE"), separated by FUZZ_SEP.
 * Property: a config the loader accepts, written as the resolved config.json every child of a run reads
 * (run_config_write), loads again. */
#include <stdint.h>
#include <stdlib.h>

#include "run/run.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_PARTS 9

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_part parts[MAX_PARTS];
    size_t np = fuzz_split(data, size, parts, MAX_PARTS);
    const char *path = fuzz_write_file("config.json", parts[0].p, parts[0].n);
    char *ov[MAX_PARTS];
    for (size_t i = 1; i < np; i++) ov[i - 1] = fuzz_strndup(parts[i].p, parts[i].n);
    run_config cfg;
    rlhf_error err;
    if (run_config_load(&cfg, path, ov, (int)np - 1, &err) == 0) {
        char out[512];
        snprintf(out, sizeof out, "%s/resolved.json", fuzz_tmpdir());
        int rc = run_config_write(&cfg, out, &err);
        FUZZ_ASSERT(rc == 0, "cannot write the resolved config: %s", err.msg);
        run_config again;
        rc = run_config_load(&again, out, NULL, 0, &err);
        FUZZ_ASSERT(rc == 0, "the resolved config does not load again: %s: %s", err.where, err.msg);
        run_config_free(&again);
        run_config_free(&cfg);
    }
    for (size_t i = 1; i < np; i++) free(ov[i - 1]);
    return 0;
}
