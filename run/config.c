/* run/config.c — the run configuration: parse, validate (errors name the JSON path), apply
 * `--set a.b=c` overrides, write the resolved copy. Every key is listed in one table below, so
 * config keys are greppable and an unknown key is always an error. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "guided/guided.h"
#include "rewards/rewards.h"

#include "run/run.h"

enum { K_INT, K_NUM, K_STR, K_BOOL, K_OBJ, K_ARR, K_ANY_OBJ };
#define RUN_DEFAULT_LR "1e-4" /* rl.lr of full fine-tuning; 10x with model.lora (below) */

typedef struct key_spec {
    const char *path;   /* "rl.max_staleness" */
    int type;
    double lo, hi;      /* inclusive range for numbers */
    const char *dflt;   /* default as JSON text, NULL = required (unless section-optional) */
} key_spec;

#define BIG 1e9
/* Every accepted key. Sections ("model", "rl", ...) are objects whose keys must all be listed. */
static const key_spec SPEC[] = {
    {"name", K_STR, 0, 0, "\"run\""},
    {"run_dir", K_STR, 0, 0, "\"\""},
    {"mode", K_STR, 0, 0, "\"async\""},
    {"model", K_OBJ, 0, 0, "{}"},
    {"model.base_checkpoint", K_STR, 0, 0, "\"\""},
    {"model.arch", K_ANY_OBJ, 0, 0, "null"},
    {"model.threads", K_INT, 0, 256, "0"},
    {"model.tokenizer", K_STR, 0, 0, "\"\""},
    {"model.max_seq_len", K_INT, 0, 1 << 24, "0"},
    {"model.lora", K_ANY_OBJ, 0, 0, "null"},
    {"task", K_OBJ, 0, 0, NULL},
    {"task.name", K_STR, 0, 0, "\"custom\""},
    {"task.train", K_STR, 0, 0, NULL},
    {"task.eval", K_STR, 0, 0, "\"\""},
    {"task.chat_template", K_STR, 0, 0, "\"\""},
    {"task.eval_prompts", K_INT, 0, BIG, "0"},
    {"task.stop", K_ARR, 0, 0, "[\"\\n\"]"},
    {"task.include_stop", K_BOOL, 0, 0, "false"},
    {"task.guided", K_ANY_OBJ, 0, 0, "null"},
    {"rewards", K_ARR, 0, 0, NULL},
    {"broker", K_ANY_OBJ, 0, 0, "{}"},
    {"prompts", K_OBJ, 0, 0, "{}"},
    {"prompts.selector", K_ANY_OBJ, 0, 0, "{\"policy\": \"uniform\"}"},
    {"rl", K_OBJ, 0, 0, "{}"},
    {"rl.k", K_INT, 2, 1024, "8"},
    {"rl.prompts_per_step", K_INT, 1, 65536, "8"},
    {"rl.lr", K_NUM, 0, 1, RUN_DEFAULT_LR},
    {"rl.lr_min_ratio", K_NUM, 0, 1, "1.0"},
    {"rl.warmup_steps", K_INT, 0, BIG, "0"},
    {"rl.weight_decay", K_NUM, 0, 1, "0.0"},
    {"rl.grad_clip", K_NUM, 0, 1e6, "1.0"},
    {"rl.max_staleness", K_INT, 0, BIG, "4"},
    {"rl.is_cap", K_NUM, 1, 1e6, "2.0"},
    {"rl.loss", K_STR, 0, 0, "\"tis\""},
    {"rl.clip_eps", K_NUM, 0, 1, "0.2"},
    {"rl.behav_weight_cap", K_NUM, 1, 1e6, "5.0"},
    {"rl.clip_eps_low", K_NUM, 0, 1, "0.2"},
    {"rl.clip_eps_high", K_NUM, 0, 100, "0.2"},
    {"rl.clip_ratio_c", K_NUM, 0, 1e6, "0"},
    {"rl.advantage", K_STR, 0, 0, "\"rloo\""},
    {"rl.scale_rewards", K_STR, 0, 0, "\"group\""},
    {"rl.loss_agg", K_STR, 0, 0, "\"token_mean\""},
    {"rl.prox", K_STR, 0, 0, "\"recompute\""},
    {"rl.ppo_epochs", K_INT, 1, 64, "1"},
    {"rl.mini_batches", K_INT, 1, 1024, "1"},
    {"rl.kl_beta", K_NUM, 0, 1e6, "0.0"},
    {"rl.kl", K_OBJ, 0, 0, "{}"},
    {"rl.kl.estimator", K_STR, 0, 0, "\"k1\""},
    {"rl.kl.in", K_STR, 0, 0, "\"reward\""},
    {"rl.entropy_coef", K_NUM, 0, 1e3, "0.0"},
    {"rl.overlong", K_OBJ, 0, 0, "{}"},
    {"rl.overlong.buffer", K_INT, 0, 1 << 20, "0"},
    {"rl.overlong.penalty", K_NUM, 0, 1e6, "1.0"},
    {"rl.ref_reset_every", K_INT, 0, BIG, "0"},
    {"rl.publish_every", K_INT, 1, BIG, "1"},
    {"rl.steps", K_INT, 1, BIG, "100"},
    {"rl.checkpoint_every", K_INT, 1, BIG, "10"},
    {"rl.export_hf", K_STR, 0, 0, "\"none\""},
    {"rl.seed", K_INT, 0, 9.0e15, "1"},
    {"generators", K_OBJ, 0, 0, "{}"},
    {"generators.count", K_INT, 0, 256, "1"},
    {"generators.temperature", K_NUM, 0.01, 100, "1.0"},
    {"generators.top_p", K_NUM, 0.01, 1, "1.0"},
    {"generators.top_k", K_INT, 0, 1 << 30, "0"},
    {"generators.min_p", K_NUM, 0, 1, "0.0"},
    {"generators.behaviour_logprobs", K_STR, 0, 0, "\"sampling\""},
    {"generators.max_tokens", K_INT, 1, 1 << 20, "32"},
    {"generators.batch", K_INT, 1, 65536, "4"},
    {"generators.inflight_updates", K_BOOL, 0, 0, "true"},
    {"generators.inflight_kv", K_STR, 0, 0, "\"keep\""},
    {"generators.threads", K_INT, 0, 256, "1"},
    {"generators.weights", K_STR, 0, 0, "\"fp32\""},
    {"generators.speculative", K_OBJ, 0, 0, "{}"},
    {"generators.speculative.drafter", K_STR, 0, 0, "\"off\""},
    {"generators.speculative.gamma", K_INT, 1, 16, "4"},
    {"generators.speculative.ngram_max", K_INT, 1, 64, "8"},
    {"generators.speculative.ngram_min", K_INT, 1, 64, "2"},
    {"generators.speculative.history", K_INT, 0, 1024, "16"},
    {"generators.speculative.adaptive", K_BOOL, 0, 0, "true"},
    {"generators.speculative.draft_checkpoint", K_STR, 0, 0, "\"\""},
    {"updaters", K_OBJ, 0, 0, "{}"},
    {"updaters.count", K_INT, 1, 256, "1"},
    {"updaters.reward_threads", K_INT, 1, 256, "1"},
    {"updaters.bucket_mb", K_INT, 1, 1024, "16"},
    {"updaters.distributed_scoring", K_BOOL, 0, 0, "true"},
    {"updaters.hostfile", K_STR, 0, 0, "\"\""},
    {"checkpoint", K_OBJ, 0, 0, "{}"},
    {"checkpoint.keep", K_INT, 1, BIG, "5"}, /* RUN_CHECKPOINT_KEEP_DEFAULT */
    {"checkpoint.keep_best", K_INT, 0, BIG, "1"},
    {"eval", K_OBJ, 0, 0, "{}"},
    {"eval.every", K_INT, 0, BIG, "0"},
    {"eval.samples", K_INT, 1, 1024, "1"},
    {"eval.temperature", K_NUM, 0, 100, "0"},
    {"eval.sampled_samples", K_INT, 0, 1024, "4"},
    {"eval.sampled_temperature", K_NUM, 0, 100, "1"},
    {"log", K_OBJ, 0, 0, "{}"},
    {"log.samples_every", K_INT, 0, BIG, "10"},
    {"log.weights_hash", K_BOOL, 0, 0, "true"},
    {"launcher", K_OBJ, 0, 0, "{}"},
    {"launcher.auto_endpoint", K_BOOL, 0, 0, "false"},
    {"launcher.resolved", K_BOOL, 0, 0, "false"},
    {"launcher.replay_of", K_STR, 0, 0, "\"\""},
    {"launcher.keep_credentials", K_BOOL, 0, 0, "false"},
};
#define NSPEC (sizeof SPEC / sizeof SPEC[0])

static const char *type_name(int t) {
    switch (t) {
    case K_INT: return "an integer";
    case K_NUM: return "a number";
    case K_STR: return "a string";
    case K_BOOL: return "true or false";
    case K_OBJ: case K_ANY_OBJ: return "an object";
    case K_ARR: return "an array";
    }
    return "?";
}

static const key_spec *find_spec(const char *path) {
    for (size_t i = 0; i < NSPEC; i++)
        if (!strcmp(SPEC[i].path, path)) return &SPEC[i];
    return NULL;
}

static json_t *get_path(json_t *doc, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = doc;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
        if (!json_is_object(cur)) return NULL;
        cur = json_object_get(cur, tok);
        if (!cur) return NULL;
    }
    return cur;
}

/* Unknown keys: walk each section (top level and K_OBJ sections) and check every key is listed. */
static int check_unknown(json_t *obj, const char *prefix, const char *where, rlhf_error *err) {
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        char path[256];
        if (prefix[0]) snprintf(path, sizeof path, "%s.%s", prefix, key);
        else snprintf(path, sizeof path, "%s", key);
        const key_spec *s = find_spec(path);
        if (!s) {
            char w[512];
            snprintf(w, sizeof w, "%s: %s", where, path);
            return rlhf_error_set(err, RLHF_EINVAL, w, "unknown key");
        }
        if (s->type == K_OBJ && json_is_object(val)) {
            int rc = check_unknown(val, path, where, err);
            if (rc) return rc;
        }
    }
    return 0;
}

static int set_path(json_t *doc, const char *path, json_t *val) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = doc;
    char *save = NULL;
    char *tok = strtok_r(buf, ".", &save);
    while (tok) {
        char *next = strtok_r(NULL, ".", &save);
        if (!next) return json_object_set_new(cur, tok, val);
        json_t *child = json_object_get(cur, tok);
        if (!json_is_object(child)) {
            child = json_object();
            json_object_set_new(cur, tok, child);
        }
        cur = child;
        tok = next;
    }
    json_decref(val);
    return -1;
}

/* The value of `--set PATH=TEXT`, typed by the key's entry in SPEC: a string key takes TEXT as it is
 * (`--set name=2024` is the string "2024"; a quoted JSON string is unquoted), a number key must be a
 * JSON number, an array/object key JSON of that kind. A path below a free-form section (model.arch.dim,
 * broker.endpoint, prompts.selector.policy) has no entry: TEXT is parsed as JSON when it can be, else
 * taken as a string. NULL on a mismatch, with the error naming the key. */
static json_t *typed_value(const char *path, const char *vtext, rlhf_error *err) {
    json_error_t jerr;
    json_t *val = json_loads(vtext, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    const key_spec *s = find_spec(path);
    char w[300];
    snprintf(w, sizeof w, "--set %s", path);
    if (!s) return val ? val : json_string(vtext);
    int ok = 0;
    switch (s->type) {
    case K_STR:
        if (json_is_string(val)) return val;
        json_decref(val);
        return json_string(vtext);
    case K_INT: ok = json_is_integer(val); break;
    case K_NUM: ok = json_is_number(val); break;
    case K_BOOL: ok = json_is_boolean(val); break;
    case K_OBJ: ok = json_is_object(val); break;
    case K_ANY_OBJ: ok = json_is_object(val) || json_is_null(val); break;
    case K_ARR: ok = json_is_array(val); break;
    }
    if (ok) return val;
    json_decref(val);
    rlhf_error_set(err, RLHF_EINVAL, w, "must be %s, got '%.100s'", type_name(s->type), vtext);
    return NULL;
}

int run_config_apply_override(json_t *doc, const char *assignment, rlhf_error *err) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return rlhf_error_set(err, RLHF_EINVAL, "--set", "expected KEY.PATH=VALUE, got '%s'", assignment);
    char path[256];
    size_t n = (size_t)(eq - assignment);
    if (n >= sizeof path) return rlhf_error_set(err, RLHF_EINVAL, "--set", "key path too long");
    memcpy(path, assignment, n);
    path[n] = 0;
    json_t *val = typed_value(path, eq + 1, err);
    if (!val) return RLHF_EINVAL;
    if (set_path(doc, path, val) != 0)
        return rlhf_error_set(err, RLHF_EINVAL, "--set", "cannot set '%s'", path);
    return 0;
}

static int fill_defaults_and_types(json_t *doc, const char *where, rlhf_error *err) {
    for (size_t i = 0; i < NSPEC; i++) {
        const key_spec *s = &SPEC[i];
        char w[512];
        snprintf(w, sizeof w, "%s: %s", where, s->path);
        /* a key inside an optional absent section: the section default ({}) was inserted first */
        json_t *v = get_path(doc, s->path);
        if (!v) {
            if (!s->dflt) return rlhf_error_set(err, RLHF_EINVAL, w, "missing required key");
            json_error_t jerr;
            json_t *d = json_loads(s->dflt, JSON_DECODE_ANY, &jerr);
            set_path(doc, s->path, d);
            continue;
        }
        int ok = 0;
        switch (s->type) {
        case K_INT: ok = json_is_integer(v); break;
        case K_NUM: ok = json_is_number(v); break;
        case K_STR: ok = json_is_string(v); break;
        case K_BOOL: ok = json_is_boolean(v); break;
        case K_OBJ: ok = json_is_object(v); break;
        case K_ANY_OBJ: ok = json_is_object(v) || json_is_null(v); break;
        case K_ARR: ok = json_is_array(v); break;
        }
        if (!ok) return rlhf_error_set(err, RLHF_EINVAL, w, "must be %s", type_name(s->type));
        if (s->type == K_INT || s->type == K_NUM) {
            double x = json_number_value(v);
            if (!isfinite(x) || x < s->lo || x > s->hi) {
                if (s->hi >= BIG)
                    return rlhf_error_set(err, RLHF_EINVAL, w, "must be %s >= %g, got %g", type_name(s->type), s->lo, x);
                return rlhf_error_set(err, RLHF_EINVAL, w, "must be %s in [%g, %g], got %g", type_name(s->type), s->lo,
                                      s->hi, x);
            }
        }
    }
    return 0;
}

static int geti(json_t *doc, const char *p) { return (int)json_integer_value(get_path(doc, p)); }
static float getf(json_t *doc, const char *p) { return (float)json_number_value(get_path(doc, p)); }
static const char *gets(json_t *doc, const char *p) { return json_string_value(get_path(doc, p)); }

static int copy_str(char *dst, size_t cap, const char *src, const char *where, const char *path, rlhf_error *err) {
    if (strlen(src) >= cap) {
        char w[512];
        snprintf(w, sizeof w, "%s: %s", where, path);
        return rlhf_error_set(err, RLHF_EINVAL, w, "string longer than %zu bytes", cap - 1);
    }
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

int run_config_parse(run_config *cfg, json_t *in, const char *where, rlhf_error *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(in)) return rlhf_error_set(err, RLHF_EINVAL, where, "config must be a JSON object");
    json_t *doc = json_deep_copy(in);
    int rc = check_unknown(doc, "", where, err);
    if (!rc) rc = fill_defaults_and_types(doc, where, err);
    if (rc) {
        json_decref(doc);
        return rc;
    }
    char w[512];
#define FAIL_AT(path, ...)                                                                                    \
    do {                                                                                                      \
        snprintf(w, sizeof w, "%s: %s", where, path);                                                         \
        rc = rlhf_error_set(err, RLHF_EINVAL, w, __VA_ARGS__);                                                \
        goto fail;                                                                                            \
    } while (0)
    if ((rc = copy_str(cfg->name, sizeof cfg->name, gets(doc, "name"), where, "name", err))) goto fail;
    if (!cfg->name[0] || strchr(cfg->name, '/')) FAIL_AT("name", "must be a non-empty name without '/'");
    if ((rc = copy_str(cfg->run_dir, sizeof cfg->run_dir, gets(doc, "run_dir"), where, "run_dir", err))) goto fail;
    if (!cfg->run_dir[0]) {
        snprintf(cfg->run_dir, sizeof cfg->run_dir, "runs/%s", cfg->name);
        json_object_set_new(doc, "run_dir", json_string(cfg->run_dir));
    }
    const char *mode = gets(doc, "mode");
    if (!strcmp(mode, "async")) cfg->mode = RUN_MODE_ASYNC;
    else if (!strcmp(mode, "sync")) cfg->mode = RUN_MODE_SYNC;
    else FAIL_AT("mode", "must be \"async\" or \"sync\", got \"%s\"", mode);

    if ((rc = copy_str(cfg->base_checkpoint, sizeof cfg->base_checkpoint, gets(doc, "model.base_checkpoint"), where,
                       "model.base_checkpoint", err)))
        goto fail;
    json_t *arch = get_path(doc, "model.arch");
    if (json_is_object(arch)) cfg->arch = json_incref(arch);
    if (!cfg->base_checkpoint[0] && !cfg->arch)
        FAIL_AT("model", "needs \"base_checkpoint\" (a safetensors file) or \"arch\" (a model config)");
    cfg->train_threads = geti(doc, "model.threads");
    if ((rc = copy_str(cfg->tokenizer_path, sizeof cfg->tokenizer_path, gets(doc, "model.tokenizer"), where,
                       "model.tokenizer", err)))
        goto fail;
    cfg->max_seq_len = geti(doc, "model.max_seq_len");
    if (cfg->arch) {
        /* the model config, its per-layer options (kv_share, attention_pattern) included, is checked here,
         * before any process starts: one error naming the key */
        model_config mc;
        snprintf(w, sizeof w, "%s: model.arch", where);
        if ((rc = model_config_parse(&mc, cfg->arch, w, err))) goto fail;
        if (cfg->max_seq_len > 0 && cfg->max_seq_len < mc.max_seq_len) {
            mc.max_seq_len = cfg->max_seq_len;
            snprintf(w, sizeof w, "%s: model.max_seq_len caps model.arch", where);
            if ((rc = model_config_validate(&mc, w, err))) goto fail;
        }
    }

    json_t *lora = get_path(doc, "model.lora");
    if (json_is_object(lora)) { /* LoRA: checked here against model.arch too (a rank wider than a projection) */
        snprintf(w, sizeof w, "%s: model.lora", where);
        if ((rc = model_lora_config_parse(&cfg->lora, lora, w, err))) goto fail;
        if (cfg->arch) {
            model_config mc;
            if ((rc = model_config_parse(&mc, cfg->arch, w, err)) || (rc = model_lora_check(&mc, &cfg->lora, w, err)))
                goto fail;
        }
    }

    if ((rc = copy_str(cfg->task_name, sizeof cfg->task_name, gets(doc, "task.name"), where, "task.name", err)))
        goto fail;
    if ((rc = copy_str(cfg->train_path, sizeof cfg->train_path, gets(doc, "task.train"), where, "task.train", err)))
        goto fail;
    if (!cfg->train_path[0]) FAIL_AT("task.train", "must name a prompt JSONL file");
    if ((rc = copy_str(cfg->eval_path, sizeof cfg->eval_path, gets(doc, "task.eval"), where, "task.eval", err)))
        goto fail;
    if ((rc = copy_str(cfg->chat_template, sizeof cfg->chat_template, gets(doc, "task.chat_template"), where,
                       "task.chat_template", err)))
        goto fail;
    cfg->eval_prompts = geti(doc, "task.eval_prompts");
    json_t *stops = get_path(doc, "task.stop");
    if (json_array_size(stops) > RUN_MAX_STOPS)
        FAIL_AT("task.stop", "at most %d stop strings, got %zu", RUN_MAX_STOPS, json_array_size(stops));
    for (size_t i = 0; i < json_array_size(stops); i++) {
        json_t *si = json_array_get(stops, i);
        char p[64];
        snprintf(p, sizeof p, "task.stop[%zu]", i);
        if (!json_is_string(si) || !json_string_length(si)) FAIL_AT(p, "must be a non-empty string");
        if (strlen(json_string_value(si)) != json_string_length(si)) FAIL_AT(p, "must not contain a NUL character");
        if (!(cfg->stop[i] = strdup(json_string_value(si)))) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            goto fail;
        }
        cfg->n_stop++;
    }
    cfg->include_stop = json_is_true(get_path(doc, "task.include_stop"));
    json_t *guided = get_path(doc, "task.guided");
    if (guided && !json_is_null(guided)) { /* compiled here once so that a bad schema is a config error */
        guided_grammar *g = NULL;
        if ((rc = guided_compile_spec(&g, guided, "task.guided", err))) goto fail;
        guided_grammar_destroy(&g);
        cfg->guided = json_incref(guided);
    }

    cfg->rewards = json_incref(get_path(doc, "rewards"));
    if (json_array_size(cfg->rewards) == 0) FAIL_AT("rewards", "must list at least one reward source");
    json_t *b = get_path(doc, "broker");
    cfg->broker = json_is_object(b) ? json_incref(b) : json_object();
    json_t *sel = get_path(doc, "prompts.selector");
    cfg->selector = json_is_object(sel) ? json_incref(sel) : NULL;

    cfg->k = geti(doc, "rl.k");
    cfg->prompts_per_step = geti(doc, "rl.prompts_per_step");
    /* LoRA's default learning rate is 10x full fine-tuning's: "LoRA Without Regret" (Schulman et al., 2025)
     * finds the best LoRA rate about 10x the best full one for RL and SFT alike, at any rank with alpha 32
     * and the 1/rank scale. Written into the resolved config, so a resume or replay reads the same. */
    json_t *in_rl = json_object_get(in, "rl");
    if (json_is_object(get_path(doc, "model.lora")) && !(json_is_object(in_rl) && json_object_get(in_rl, "lr")))
        json_object_set_new(json_object_get(doc, "rl"), "lr", json_real(10 * strtod(RUN_DEFAULT_LR, NULL)));
    cfg->lr = getf(doc, "rl.lr");
    cfg->lr_min_ratio = getf(doc, "rl.lr_min_ratio");
    cfg->warmup_steps = geti(doc, "rl.warmup_steps");
    cfg->weight_decay = getf(doc, "rl.weight_decay");
    cfg->grad_clip = getf(doc, "rl.grad_clip");
    cfg->max_staleness = geti(doc, "rl.max_staleness");
    cfg->is_cap = getf(doc, "rl.is_cap");
    const char *loss = gets(doc, "rl.loss");
    if (!strcmp(loss, "tis")) cfg->loss = RL_LOSS_TIS;
    else if (!strcmp(loss, "ppo_clip")) cfg->loss = RL_LOSS_PPO_CLIP;
    else if (!strcmp(loss, "decoupled_ppo")) cfg->loss = RL_LOSS_DECOUPLED_PPO;
    else if (!strcmp(loss, "gspo")) cfg->loss = RL_LOSS_GSPO;
    else if (!strcmp(loss, "cispo")) cfg->loss = RL_LOSS_CISPO;
    else FAIL_AT("rl.loss", "must be \"tis\", \"ppo_clip\", \"decoupled_ppo\", \"gspo\" or \"cispo\", got \"%s\"", loss);
    static const char *const adv_names[] = {"rloo", "grpo", "dr_grpo", "reinforce_pp", NULL};
    static const char *const scale_names[] = {"group", "batch", "none", NULL};
    static const char *const agg_names[] = {"token_mean", "seq_mean_token_sum", "seq_mean_token_mean",
                                            "seq_mean_token_sum_norm", NULL};
    const char *adv = gets(doc, "rl.advantage"), *scale = gets(doc, "rl.scale_rewards"), *agg = gets(doc, "rl.loss_agg");
    cfg->advantage = cfg->scale_rewards = cfg->loss_agg = -1;
    for (int i = 0; adv_names[i]; i++) if (!strcmp(adv, adv_names[i])) cfg->advantage = i;
    for (int i = 0; scale_names[i]; i++) if (!strcmp(scale, scale_names[i])) cfg->scale_rewards = i;
    for (int i = 0; agg_names[i]; i++) if (!strcmp(agg, agg_names[i])) cfg->loss_agg = i;
    if (cfg->advantage < 0)
        FAIL_AT("rl.advantage", "must be \"rloo\", \"grpo\", \"dr_grpo\" or \"reinforce_pp\", got \"%s\"", adv);
    if (cfg->scale_rewards < 0) FAIL_AT("rl.scale_rewards", "must be \"group\", \"batch\" or \"none\", got \"%s\"", scale);
    if (cfg->loss_agg < 0)
        FAIL_AT("rl.loss_agg", "must be \"token_mean\", \"seq_mean_token_sum\", \"seq_mean_token_mean\" or "
                "\"seq_mean_token_sum_norm\", got \"%s\"", agg);
    if (cfg->scale_rewards != RL_SCALE_GROUP && cfg->advantage != RL_ADV_GRPO && get_path(in, "rl.scale_rewards"))
        FAIL_AT("rl.scale_rewards", "applies to rl.advantage \"grpo\" only (the estimator is \"%s\")", adv);
    cfg->clip_ratio_c = getf(doc, "rl.clip_ratio_c");
    if (cfg->clip_ratio_c != 0 && cfg->clip_ratio_c <= 1)
        FAIL_AT("rl.clip_ratio_c", "must be 0 (off) or above 1 (the dual clip bounds a negative advantage's term at "
                "c x A), got %g", cfg->clip_ratio_c);
    cfg->behav_weight_cap = getf(doc, "rl.behav_weight_cap");
    const char *prox = gets(doc, "rl.prox");
    if (!strcmp(prox, "recompute")) cfg->prox = RL_PROX_RECOMPUTE;
    else if (!strcmp(prox, "interpolate")) cfg->prox = RL_PROX_INTERPOLATE;
    else FAIL_AT("rl.prox", "must be \"recompute\" or \"interpolate\", got \"%s\"", prox);
    cfg->ppo_epochs = geti(doc, "rl.ppo_epochs");
    cfg->mini_batches = geti(doc, "rl.mini_batches");
    if (cfg->mini_batches > cfg->prompts_per_step * cfg->k)
        FAIL_AT("rl.mini_batches", "is %d, more than the %d samples of a step (rl.prompts_per_step x rl.k): every "
                "update needs one", cfg->mini_batches, cfg->prompts_per_step * cfg->k);
    const char *exp_hf = gets(doc, "rl.export_hf");
    if (!strcmp(exp_hf, "none")) cfg->export_hf = RUN_EXPORT_HF_NONE;
    else if (!strcmp(exp_hf, "bf16")) cfg->export_hf = RUN_EXPORT_HF_BF16;
    else if (!strcmp(exp_hf, "f32")) cfg->export_hf = RUN_EXPORT_HF_F32;
    else FAIL_AT("rl.export_hf", "must be \"none\", \"bf16\" or \"f32\", got \"%s\"", exp_hf);
    cfg->clip_eps = getf(doc, "rl.clip_eps");
    /* clip_eps sets both sides; clip_eps_low / clip_eps_high override one (DAPO's clip-higher) */
    cfg->clip_eps_low = get_path(in, "rl.clip_eps_low") ? getf(doc, "rl.clip_eps_low") : cfg->clip_eps;
    cfg->clip_eps_high = get_path(in, "rl.clip_eps_high") ? getf(doc, "rl.clip_eps_high") : cfg->clip_eps;
    cfg->kl_beta = getf(doc, "rl.kl_beta");
    const char *kle = gets(doc, "rl.kl.estimator"), *kli = gets(doc, "rl.kl.in");
    if (!strcmp(kle, "k1") || !strcmp(kle, "k2") || !strcmp(kle, "k3")) cfg->kl_estimator = kle[1] - '0';
    else FAIL_AT("rl.kl.estimator", "must be \"k1\", \"k2\" or \"k3\", got \"%s\"", kle);
    if (!strcmp(kli, "reward")) cfg->kl_in_loss = 0;
    else if (!strcmp(kli, "loss")) cfg->kl_in_loss = 1;
    else FAIL_AT("rl.kl.in", "must be \"reward\" or \"loss\", got \"%s\"", kli);
    cfg->entropy_coef = getf(doc, "rl.entropy_coef");
    cfg->overlong_buffer = geti(doc, "rl.overlong.buffer");
    cfg->overlong_penalty = getf(doc, "rl.overlong.penalty");
    cfg->ref_reset_every = geti(doc, "rl.ref_reset_every");
    if (cfg->ref_reset_every > 0 && cfg->kl_beta == 0)
        FAIL_AT("rl.ref_reset_every", "resets the reference model of the KL term, and rl.kl_beta is 0 (no reference)");
    cfg->publish_every = geti(doc, "rl.publish_every");
    cfg->steps = geti(doc, "rl.steps");
    cfg->checkpoint_every = geti(doc, "rl.checkpoint_every");
    cfg->checkpoint_keep = geti(doc, "checkpoint.keep");
    cfg->checkpoint_keep_best = geti(doc, "checkpoint.keep_best");
    cfg->eval_every = geti(doc, "eval.every");
    cfg->eval_samples = geti(doc, "eval.samples");
    cfg->eval_temperature = getf(doc, "eval.temperature");
    cfg->eval_sampled_samples = geti(doc, "eval.sampled_samples");
    cfg->eval_sampled_temperature = getf(doc, "eval.sampled_temperature");
    if (cfg->eval_every > 0 && !cfg->eval_path[0])
        FAIL_AT("eval.every", "needs task.eval: the held-out prompts evaluated during training");
    if (cfg->eval_every > 0 && cfg->eval_every % cfg->checkpoint_every != 0)
        FAIL_AT("eval.every", "must be a multiple of rl.checkpoint_every (%d): each evaluation scores a checkpoint",
                cfg->checkpoint_every);
    if (cfg->eval_sampled_samples > 0 && cfg->eval_sampled_temperature <= 0)
        FAIL_AT("eval.sampled_temperature", "must be > 0: the sampled figure samples (eval.sampled_samples 0 turns it "
                "off; the greedy one is always there)");
    cfg->samples_every = geti(doc, "log.samples_every");
    cfg->weights_hash = json_is_true(get_path(doc, "log.weights_hash"));
    cfg->seed = (uint64_t)json_integer_value(get_path(doc, "rl.seed"));

    cfg->gen_count = geti(doc, "generators.count");
    /* 0: every generator joins from another host (docs/MULTI_HOST.md); sync mode splits each step's prompts
     * among generators.count generators, so it needs to know them */
    if (cfg->gen_count == 0 && cfg->mode == RUN_MODE_SYNC)
        FAIL_AT("generators.count", "0 (generators only on other hosts) needs mode \"async\"");
    cfg->temperature = getf(doc, "generators.temperature");
    cfg->top_p = getf(doc, "generators.top_p");
    cfg->top_k = geti(doc, "generators.top_k");
    cfg->min_p = getf(doc, "generators.min_p");
    const char *blp = gets(doc, "generators.behaviour_logprobs");
    if (!strcmp(blp, "sampling")) cfg->behaviour_logprobs = RUN_BEHAVIOUR_SAMPLING;
    else if (!strcmp(blp, "policy")) cfg->behaviour_logprobs = RUN_BEHAVIOUR_POLICY;
    else FAIL_AT("generators.behaviour_logprobs", "must be \"sampling\" or \"policy\", got \"%s\"", blp);
    cfg->max_tokens = geti(doc, "generators.max_tokens");
    if (cfg->overlong_buffer > cfg->max_tokens)
        FAIL_AT("rl.overlong.buffer", "is %d, more than generators.max_tokens %d (the zone ends at max_tokens)",
                cfg->overlong_buffer, cfg->max_tokens);
    cfg->gen_batch = geti(doc, "generators.batch");
    cfg->gen_inflight_updates = json_is_true(get_path(doc, "generators.inflight_updates"));
    const char *ikv = gets(doc, "generators.inflight_kv");
    if (!strcmp(ikv, "keep")) cfg->gen_inflight_recompute = 0;
    else if (!strcmp(ikv, "recompute")) cfg->gen_inflight_recompute = 1;
    else FAIL_AT("generators.inflight_kv", "must be \"keep\" or \"recompute\", got \"%s\"", ikv);
    cfg->gen_threads = geti(doc, "generators.threads");
    snprintf(w, sizeof w, "%s: generators.weights", where);
    if ((rc = sampler_weights_parse(&cfg->gen_weights, gets(doc, "generators.weights"), w, err))) goto fail;
    {
        sampler_spec_options *so = &cfg->gen_spec;
        *so = sampler_spec_options_default();
        snprintf(w, sizeof w, "%s: generators.speculative.drafter", where);
        if ((rc = sampler_spec_kind_parse(&so->kind, gets(doc, "generators.speculative.drafter"), w, err))) goto fail;
        so->gamma = geti(doc, "generators.speculative.gamma");
        so->ngram_max = geti(doc, "generators.speculative.ngram_max");
        so->ngram_min = geti(doc, "generators.speculative.ngram_min");
        so->history = geti(doc, "generators.speculative.history");
        so->adaptive = json_is_true(get_path(doc, "generators.speculative.adaptive"));
        if (so->ngram_min > so->ngram_max)
            FAIL_AT("generators.speculative.ngram_min", "is %d, more than generators.speculative.ngram_max %d",
                    so->ngram_min, so->ngram_max);
        if ((rc = copy_str(cfg->gen_draft_checkpoint, sizeof cfg->gen_draft_checkpoint,
                           gets(doc, "generators.speculative.draft_checkpoint"), where,
                           "generators.speculative.draft_checkpoint", err)))
            goto fail;
        if (so->kind == SAMPLER_SPEC_DRAFT_MODEL && !cfg->gen_draft_checkpoint[0])
            FAIL_AT("generators.speculative.draft_checkpoint",
                    "is needed with drafter \"draft\" (a checkpoint with the policy's tokenizer)");
        if (so->kind != SAMPLER_SPEC_OFF && cfg->guided)
            FAIL_AT("generators.speculative.drafter", "is \"%s\", and task.guided is set: speculative decoding does not "
                    "apply a grammar's mask yet, so it cannot be combined with guided generation (set drafter \"off\")",
                    sampler_spec_kind_name(so->kind));
        if (so->kind != SAMPLER_SPEC_DRAFT_MODEL && cfg->gen_draft_checkpoint[0])
            FAIL_AT("generators.speculative.draft_checkpoint", "is set but drafter is \"%s\", not \"draft\"",
                    sampler_spec_kind_name(so->kind));
    }

    cfg->upd_count = geti(doc, "updaters.count");

    cfg->reward_threads = geti(doc, "updaters.reward_threads");
    cfg->upd_bucket_mb = geti(doc, "updaters.bucket_mb");
    cfg->upd_distributed_scoring = json_is_true(get_path(doc, "updaters.distributed_scoring"));
    snprintf(cfg->upd_hostfile, sizeof cfg->upd_hostfile, "%s", gets(doc, "updaters.hostfile"));
    if (cfg->upd_hostfile[0] && cfg->upd_count < 2)
        FAIL_AT("updaters.hostfile", "places updater ranks on hosts, and updaters.count is %d (set it to the ranks)",
                cfg->upd_count);

    /* the synchronous baseline: generation waits for each new version, nothing stale is used */
    if (cfg->mode == RUN_MODE_SYNC) {
        json_t *given = get_path(in, "rl.max_staleness");
        if (json_is_integer(given) && json_integer_value(given) != 0)
            fprintf(stderr, "rlhf: warning: %s: rl.max_staleness: %lld is replaced by 0 in sync mode\n", where,
                    (long long)json_integer_value(given));
        cfg->max_staleness = 0;
        json_object_set_new(get_path(doc, "rl"), "max_staleness", json_integer(0));
    }
    cfg->resolved = doc;
    snprintf(cfg->source, sizeof cfg->source, "%s", where);
    return 0;
fail:
    json_decref(doc);
    run_config_free(cfg);
    return rc;
#undef FAIL_AT
}

/* Keys naming files or directories. A relative one in a config file is relative to that file's folder
 * (so a run starts the same from any directory); one given with --set, to the working directory. The
 * resolved config saves them absolute, so `--resume` works from anywhere. */
static const char *const PATH_KEYS[] = {"run_dir", "model.base_checkpoint", "model.tokenizer", "task.train",
                                        "task.eval", "task.chat_template", "broker.dataset",
                                        "generators.speculative.draft_checkpoint"};

static int is_path_key(const char *path) {
    for (size_t i = 0; i < sizeof PATH_KEYS / sizeof PATH_KEYS[0]; i++)
        if (!strcmp(PATH_KEYS[i], path)) return 1;
    return 0;
}

/* Collapses "." and ".." segments and repeated slashes of an absolute path in place
 * ("/a/cfg/../../runs/x" -> "/runs/x"), so the saved config and every message name the file plainly.
 * Lexical: the base it is joined to is already realpath'd, so only a symbolic link inside the
 * config's own relative text could make ".." mean something else, and then the kernel's meaning is
 * kept by leaving such a path as written (see resolve_path_key). */
static void normalize_abs_path(char *path) {
    char *out = path, *in = path;
    size_t n = 0; /* length of out */
    while (*in) {
        while (*in == '/') in++;
        if (!*in) break;
        const char *seg = in;
        while (*in && *in != '/') in++;
        size_t len = (size_t)(in - seg);
        if (len == 1 && seg[0] == '.') continue;
        if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--; /* the slash before the dropped segment; "/.." stays "/" */
            continue;
        }
        out[n++] = '/';
        memmove(out + n, seg, len);
        n += len;
    }
    if (n == 0) out[n++] = '/';
    out[n] = 0;
}

/* 1 when some directory named by the first segments of `rel` (relative to base) is a symbolic link
 * followed by "..": lexical normalisation would then change which file is meant. */
static int dotdot_after_symlink(const char *base, const char *rel) {
    char p[4096];
    snprintf(p, sizeof p, "%s", base);
    size_t n = strlen(p);
    int after_link = 0;
    for (const char *s = rel; *s;) {
        while (*s == '/') s++;
        const char *e = s;
        while (*e && *e != '/') e++;
        size_t len = (size_t)(e - s);
        if (len == 2 && s[0] == '.' && s[1] == '.' && after_link) return 1;
        if (len && n + len + 2 < sizeof p) {
            p[n++] = '/';
            memcpy(p + n, s, len);
            n += len;
            p[n] = 0;
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISLNK(st.st_mode)) after_link = 1;
        }
        s = e;
    }
    return 0;
}

/* Makes the string at `key` absolute against `base` when it is a relative path ("" and the tokenizer
 * name "bytes" are not paths). */
static int resolve_path_key(json_t *doc, const char *key, const char *base, rlhf_error *err) {
    json_t *v = get_path(doc, key);
    const char *s = json_string_value(v);
    if (!s || !s[0] || s[0] == '/' || (!strcmp(key, "model.tokenizer") && !strcmp(s, "bytes"))) return 0;
    size_t n = strlen(base) + strlen(s) + 2;
    char *abs = malloc(n);
    if (!abs) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    snprintf(abs, n, "%s/%s", base, s);
    if (!dotdot_after_symlink(base, s)) normalize_abs_path(abs);
    json_string_set(v, abs);
    free(abs);
    return 0;
}

int run_config_load(run_config *cfg, const char *path, char *const *overrides, int n_overrides, rlhf_error *err) {
    json_error_t jerr;
    /* a key given twice is a mistake either way round: jansson would silently keep the last one */
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        char w[1200];
        snprintf(w, sizeof w, "%s:%d", path, jerr.line);
        return rlhf_error_set(err, RLHF_EINVAL, w, "invalid JSON: %s", jerr.text);
    }
    char dir[4096], cwd[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    char *real_dir = realpath(dir, NULL);
    if (!getcwd(cwd, sizeof cwd) || !real_dir) {
        free(real_dir);
        json_decref(doc);
        return rlhf_error_set(err, RLHF_ESYS, path, "cannot resolve the config's folder: %s", strerror(errno));
    }
    /* RUN_DIR/config.json of a run started before paths were resolved (a launcher section without
     * "resolved") holds paths relative to the directory that run was started from: kept so */
    json_t *launcher = json_object_get(doc, "launcher");
    int old_run_config = json_is_object(launcher) && !json_object_get(launcher, "resolved");
    int rc = 0;
    for (size_t i = 0; i < sizeof PATH_KEYS / sizeof PATH_KEYS[0] && !rc; i++)
        rc = resolve_path_key(doc, PATH_KEYS[i], old_run_config ? cwd : real_dir, err);
    /* the files reward sources name (a plugin's .so, a process plugin's script) likewise */
    if (!rc && !old_run_config) rc = reward_sources_resolve_paths(json_object_get(doc, "rewards"), real_dir, err);
    free(real_dir);
    for (int i = 0; i < n_overrides && !rc; i++) {
        rc = run_config_apply_override(doc, overrides[i], err);
        char key[256];
        const char *eq = strchr(overrides[i], '=');
        if (!rc && eq && (size_t)(eq - overrides[i]) < sizeof key) {
            memcpy(key, overrides[i], (size_t)(eq - overrides[i]));
            key[eq - overrides[i]] = 0;
            if (is_path_key(key)) rc = resolve_path_key(doc, key, cwd, err);
        }
    }
    if (!rc) rc = run_config_parse(cfg, doc, path, err);
    json_decref(doc);
    if (rc) return rc;
    /* the default runs/<name> is under the working directory; saved absolute like the other paths */
    if (cfg->run_dir[0] != '/') {
        char abs[sizeof cfg->run_dir];
        if (snprintf(abs, sizeof abs, "%s/%s", cwd, cfg->run_dir) >= (int)sizeof abs) {
            run_config_free(cfg);
            return rlhf_error_set(err, RLHF_EINVAL, path, "run_dir: path too long");
        }
        memcpy(cfg->run_dir, abs, sizeof abs);
        json_object_set_new(cfg->resolved, "run_dir", json_string(abs));
    }
    return 0;
}

int run_config_write(const run_config *cfg, const char *path, rlhf_error *err) {
    char *text = json_dumps(cfg->resolved, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot serialise config");
    size_t n = strlen(text);
    char *buf = realloc(text, n + 2);
    if (!buf) {
        free(text);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    buf[n] = '\n';
    buf[n + 1] = 0;
    int rc = rlhf_write_file_atomic(path, buf, n + 1, err);
    free(buf);
    return rc;
}

void run_config_free(run_config *cfg) {
    json_decref(cfg->arch);
    json_decref(cfg->rewards);
    json_decref(cfg->broker);
    json_decref(cfg->selector);
    json_decref(cfg->resolved);
    json_decref(cfg->guided);
    cfg->arch = cfg->rewards = cfg->broker = cfg->selector = cfg->resolved = cfg->guided = NULL;
    for (int i = 0; i < cfg->n_stop; i++) free(cfg->stop[i]);
    cfg->n_stop = 0;
}
