/* rewards/judge_source.c — the "judge" reward source: the pipeline's adapter around the judge client
 * (rewards/judge/judge.h). Scores are the judge's normalised score in [0, 1]; a failed judgement is an ERROR
 * whose reason starts with the failure class ("http_5xx: HTTP 503 after 4 attempts"), so the pipeline
 * counts it under reward_errors/<name> and never sees a 0 for it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rewards/judge/judge.h"
#include "rewards/rewards_int.h"

typedef struct judge_source {
    judge_client *client;
} judge_source;

static int judge_source_score(void *ctx, const rlhf_reward_item *items, size_t n, double *scores_out,
                              rlhf_reward_status *status_out) {
    judge_source *js = ctx;
    judge_item *ji = calloc(n ? n : 1, sizeof *ji);
    json_t **records = calloc(n ? n : 1, sizeof *records);
    if (!ji || !records) {
        free(ji);
        free(records);
        rlhf_reward_status_set(&status_out[0], RLHF_REWARD_ERROR, "internal: out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        ji[i].prompt = items[i].prompt;
        ji[i].completion = items[i].completion;
        ji[i].deadline = items[i].deadline;
        records[i] = json_loads(items[i].record_json ? items[i].record_json : "{}", 0, NULL);
        ji[i].record = records[i];
    }
    rlhf_error err = {0};
    int rc = judge_score(js->client, ji, (int)n, &err);
    for (size_t i = 0; i < n; i++) {
        if (ji[i].ok) {
            scores_out[i] = ji[i].score;
            rlhf_reward_status_set(&status_out[i], RLHF_REWARD_OK, NULL);
        } else {
            scores_out[i] = 0; /* ignored: the status says ERROR */
            rlhf_reward_status_set(&status_out[i], RLHF_REWARD_ERROR, "%s", ji[i].detail);
        }
        json_decref(records[i]);
    }
    free(records);
    free(ji);
    return rc ? -1 : 0;
}

static void judge_source_destroy(void *ctx) {
    judge_source *js = ctx;
    if (!js) return;
    judge_client_destroy(&js->client);
    free(js);
}

static const rlhf_reward_plugin_v1 judge_vtable = {
    .abi_version = RLHF_REWARD_ABI_VERSION,
    .struct_size = sizeof(rlhf_reward_plugin_v1),
    .name = "judge",
    .init = NULL,
    .score_batch = judge_source_score,
    .destroy = judge_source_destroy,
};

int reward_source_judge_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    judge_config cfg;
    judge_config_default(&cfg);
    int rc = judge_config_parse(&cfg, src, where, err);
    if (rc) {
        judge_config_free(&cfg);
        return rc;
    }
    if (cfg.api_key_env[0] && !getenv(cfg.api_key_env)) {
        char w[320];
        snprintf(w, sizeof w, "%s.api_key_env", where);
        rc = rlhf_error_set(err, RLHF_EINVAL, w, "environment variable %s is not set", cfg.api_key_env);
        judge_config_free(&cfg);
        return rc;
    }
    const char *name = "judge";
    json_t *nm = json_object_get(src, "name");
    if (json_is_string(nm)) name = json_string_value(nm);
    judge_source *js = calloc(1, sizeof *js);
    if (!js) {
        judge_config_free(&cfg);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    /* Retry and breaker events go to stderr, which the launcher sends to logs/<process>.log. */
    rc = judge_client_create(&js->client, &cfg, name, stderr, err);
    judge_config_free(&cfg);
    if (rc) {
        free(js);
        return rc;
    }
    impl->plugin = &judge_vtable;
    impl->ctx = js;
    return 0;
}
