/* tests/rewards/test_rewards_main.c — register_suites for test_rewards and the shared helpers. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/rewards/rewards_test.h"
#include "tests/test_paths.h"

static char root_dir[PATH_MAX];
static char scratch_dir[PATH_MAX];
static char build_dir[PATH_MAX];

const char *rt_root(void) { return root_dir; }
const char *rt_scratch(void) { return scratch_dir; }
const char *rt_build_dir(void) { return build_dir; }

int rt_build_so(const char *src, const char *flags, const char *name, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", scratch_dir, name);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -w -I%s %s -o %s %s/%s -ljansson", root_dir, flags, out, root_dir, src);
    return system(cmd) == 0 ? 0 : -1;
}

rlhf_reward_item rt_item(const char *completion, const char *record_json) {
    rlhf_reward_item it = {"prompt", completion, NULL, 0, record_json ? record_json : "{}", -1, 0};
    return it;
}

static void cleanup_scratch(void) {
    if (!scratch_dir[0]) return;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch_dir);
    if (system(cmd)) {
    }
}

int register_suites(void) {
    /* the binary lives in BUILD/tests/; fixtures are under the source root: run from there */
    if (test_build_dir(build_dir, sizeof build_dir)) return -1; /* BUILD (may be outside ROOT) */
    snprintf(root_dir, sizeof root_dir, "%s", RLHF_SOURCE_ROOT);
    if (chdir(root_dir)) return -1;
    snprintf(scratch_dir, sizeof scratch_dir, "/tmp/rlhf-test-rewards-XXXXXX");
    if (!mkdtemp(scratch_dir)) return -1;
    atexit(cleanup_scratch);
    /* .so plugins run in a worker process, `rlhf reward-plugin-host`; this binary is not rlhf */
    static char host[PATH_MAX + 16];
    snprintf(host, sizeof host, "%s/bin/rlhf", build_dir);
    setenv("RLHF_PLUGIN_HOST", host, 1);
    if (rt_register_pipeline() || rt_register_plugins() || rt_register_exec() || rt_register_cli() ||
        rt_register_isolation() || rt_register_contract())
        return -1;
    return 0;
}
