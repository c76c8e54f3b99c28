/* examples/reward-plugin/keyword_reward.c — a complete shared-object reward plugin.
 *
 * Scores a completion by how many of the configured keywords it contains:
 *     score = min(max_score, per_hit * number_of_keywords_found)
 * Config (the "config" object of the reward source):
 *     {"keywords": ["because", "therefore"], "per_hit": 0.5, "max_score": 1.0}
 * A record with "skip_keywords": true is skipped (status SKIP); a completion that is not valid
 * for scoring (here: empty) is an ERROR, to show how a scorer reports failure (not a zero reward).
 *
 * Build: make            (needs rewards.h: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig after the project's
 *                          `make install PREFIX=...`, or the source tree)
 * Use:   {"type": "plugin", "path": "/abs/path/keyword_reward.so", "config": {...}, "weight": 0.5}
 *
 * Rules of the ABI (docs/REWARD_PLUGINS.md): export rlhf_reward_plugin_entry(); fill every
 * scores_out[i]/status_out[i]; a ctx is used by one thread at a time; respect items[i].deadline
 * (seconds on CLOCK_MONOTONIC) if you do slow work. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include <rewards/rewards.h> /* pkg-config --cflags rlhf-plugin, or -I<source tree> */

typedef struct keyword_ctx {
    char **keywords; // (n_keywords,)
    size_t n_keywords;
    double per_hit, max_score;
} keyword_ctx;

static void keyword_destroy(void *vctx) {
    keyword_ctx *c = vctx;
    if (!c) return;
    for (size_t i = 0; i < c->n_keywords; i++) free(c->keywords[i]);
    free(c->keywords);
    free(c);
}

static int keyword_init(const char *config_json, void **ctx_out, char *errbuf, size_t errbuf_len) {
    json_error_t je;
    json_t *cfg = json_loads(config_json, 0, &je);
    if (!json_is_object(cfg)) {
        snprintf(errbuf, errbuf_len, "config must be a JSON object");
        json_decref(cfg);
        return -1;
    }
    json_t *kw = json_object_get(cfg, "keywords");
    if (!json_is_array(kw) || json_array_size(kw) == 0) {
        snprintf(errbuf, errbuf_len, "config.keywords: expected a non-empty array of strings");
        json_decref(cfg);
        return -1;
    }
    keyword_ctx *c = calloc(1, sizeof *c);
    c->keywords = calloc(json_array_size(kw), sizeof *c->keywords);
    c->per_hit = 0.5;
    c->max_score = 1.0;
    for (size_t i = 0; i < json_array_size(kw); i++) {
        const char *s = json_string_value(json_array_get(kw, i));
        if (!s) {
            snprintf(errbuf, errbuf_len, "config.keywords[%zu]: expected a string", i);
            keyword_destroy(c);
            json_decref(cfg);
            return -1;
        }
        c->keywords[c->n_keywords++] = strdup(s);
    }
    json_t *v;
    if ((v = json_object_get(cfg, "per_hit"))) c->per_hit = json_number_value(v);
    if ((v = json_object_get(cfg, "max_score"))) c->max_score = json_number_value(v);
    json_decref(cfg);
    *ctx_out = c;
    return 0;
}

static int keyword_score_batch(void *vctx, const rlhf_reward_item *items, size_t n, double *scores_out,
                               rlhf_reward_status *status_out) {
    keyword_ctx *c = vctx;
    for (size_t i = 0; i < n; i++) {
        json_t *rec = json_loads(items[i].record_json, 0, NULL);
        int skip = json_is_true(json_object_get(rec, "skip_keywords"));
        json_decref(rec);
        if (skip) {
            rlhf_reward_status_set(&status_out[i], RLHF_REWARD_SKIP, "record asks to skip keywords");
            continue;
        }
        if (!items[i].completion[0]) {
            rlhf_reward_status_set(&status_out[i], RLHF_REWARD_ERROR, "empty completion");
            continue;
        }
        size_t hits = 0;
        for (size_t k = 0; k < c->n_keywords; k++) hits += strstr(items[i].completion, c->keywords[k]) != NULL;
        double s = c->per_hit * (double)hits;
        scores_out[i] = s < c->max_score ? s : c->max_score;
    }
    return 0;
}

/* ABI version 2: the same scoring, plus a metric of the batch (logged by the updater as
 * reward/<source name>/hit_rate) and the training state (unused here: a curriculum would read
 * batch->step or batch->policy_version[i]). */
static int keyword_score_batch_v2(void *vctx, const rlhf_reward_batch *batch, double *scores_out,
                                  rlhf_reward_status *status_out) {
    int rc = keyword_score_batch(vctx, batch->items, batch->n, scores_out, status_out);
    size_t ok = 0, hit = 0;
    for (size_t i = 0; i < batch->n; i++)
        if (status_out[i].code == RLHF_REWARD_OK) {
            ok++;
            hit += scores_out[i] > 0;
        }
    if (rc == 0 && ok && batch->max_metrics >= 1) {
        snprintf(batch->metrics[0].name, sizeof batch->metrics[0].name, "hit_rate");
        batch->metrics[0].value = (double)hit / (double)ok;
        *batch->n_metrics = 1;
    }
    return rc;
}

/* the keys init understands: the loader refuses any other by name, so "keyword" for "keywords" is a
 * clear error at start, not a setting silently ignored */
static const char *const keyword_config_keys[] = {"keywords", "per_hit", "max_score", NULL};

static const rlhf_reward_plugin_v2 keyword_plugin = {
    .v1 = {.abi_version = RLHF_REWARD_ABI_VERSION,
           .struct_size = sizeof(rlhf_reward_plugin_v2),
           .name = "keyword_reward",
           .init = keyword_init,
           .score_batch = keyword_score_batch, /* hosts that pass no training state call this one */
           .destroy = keyword_destroy},
    .score_batch_v2 = keyword_score_batch_v2,
    .config_keys = keyword_config_keys,
};

const rlhf_reward_plugin_v1 *rlhf_reward_plugin_entry(void) { return &keyword_plugin.v1; }
