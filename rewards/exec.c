/* rewards/exec.c — placeholder while the execution rewards are written */
#include "rewards/rewards_int.h"
int reward_source_exec_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    (void)src; (void)impl;
    return rlhf_error_set(err, RLHF_EUNSUPPORTED, where, "exec reward not yet available");
}
int reward_source_countdown_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    (void)src; (void)impl;
    return rlhf_error_set(err, RLHF_EUNSUPPORTED, where, "countdown reward not yet available");
}
