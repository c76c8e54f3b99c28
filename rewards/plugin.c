/* rewards/plugin.c — shared-object reward plugins: dlopen the .so named by the config, look up
 * rlhf_reward_plugin_entry, check the ABI version and struct size, init with the "config" JSON. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "rewards/rewards_int.h"

int reward_plugin_load(const char *path, const char *config_json, const char *where, reward_source_impl *impl,
                       rlhf_error *err) {
    char w[512];
    snprintf(w, sizeof w, "%s (%s)", where, path);
    /* RTLD_LOCAL: two plugins may define the same internal names; RTLD_NOW: a missing symbol is a
     * load-time error, not a crash in the middle of training */
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return rlhf_error_set(err, RLHF_EIO, w, "cannot load plugin: %s", dlerror());
    dlerror();
    void *sym = dlsym(h, RLHF_REWARD_PLUGIN_ENTRY);
    if (!sym) {
        const char *e = dlerror();
        int rc = rlhf_error_set(err, RLHF_EINVAL, w, "missing symbol %s: %s", RLHF_REWARD_PLUGIN_ENTRY,
                                e ? e : "NULL");
        dlclose(h);
        return rc;
    }
    rlhf_reward_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    const rlhf_reward_plugin_v1 *p = entry();
    int rc = 0;
    if (!p) rc = rlhf_error_set(err, RLHF_EINVAL, w, "%s() returned NULL", RLHF_REWARD_PLUGIN_ENTRY);
    else if (p->abi_version != RLHF_REWARD_ABI_VERSION)
        rc = rlhf_error_set(err, RLHF_EUNSUPPORTED, w, "plugin ABI version %u, this build supports %u; rebuild "
                            "the plugin against this rewards.h", p->abi_version, RLHF_REWARD_ABI_VERSION);
    else if (p->struct_size != sizeof(rlhf_reward_plugin_v1))
        rc = rlhf_error_set(err, RLHF_EUNSUPPORTED, w, "plugin struct_size %u, expected %zu (mismatched header)",
                            p->struct_size, sizeof(rlhf_reward_plugin_v1));
    else if (!p->score_batch)
        rc = rlhf_error_set(err, RLHF_EINVAL, w, "plugin has no score_batch function");
    if (rc) {
        dlclose(h);
        return rc;
    }
    void *ctx = NULL;
    if (p->init) {
        char eb[512] = "";
        if (p->init(config_json ? config_json : "{}", &ctx, eb, sizeof eb) != 0) {
            eb[sizeof eb - 1] = 0;
            rc = rlhf_error_set(err, RLHF_EINVAL, w, "plugin '%s' init failed: %s", p->name ? p->name : "?",
                                eb[0] ? eb : "(no message)");
            dlclose(h);
            return rc;
        }
    }
    impl->plugin = p;
    impl->ctx = ctx;
    impl->dl_handle = h;
    return 0;
}

int reward_source_plugin_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"path", "config", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    const char *path = NULL;
    if ((rc = reward_get_string(src, "path", where, 1, &path, err))) return rc;
    json_t *cfg = json_object_get(src, "config");
    char *cfg_txt = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    if (!cfg_txt) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    rc = reward_plugin_load(path, cfg_txt, where, impl, err);
    free(cfg_txt);
    return rc;
}
