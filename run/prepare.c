/* run/prepare.c — everything a run needs, checked before any process starts: prompt datasets,
 * the selector config, every reward source, the broker config, the base checkpoint against
 * model.arch. Also fills the broker section from the rest of the config (dataset, selector, seed,
 * max_staleness, replay log) so the three kinds of process agree on one document. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "prompts/prompts.h"
#include "rewards/rewards.h"
#include "run/run.h"

static int free_tcp_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void set_default(json_t *obj, const char *key, json_t *val) {
    if (!json_object_get(obj, key)) json_object_set_new(obj, key, val);
    else json_decref(val);
}

int run_prepare_base(run_config *cfg, rlhf_error *err) {
    char p[1100], w[64];
    int rc;
    /* base model */
    if (!cfg->base_checkpoint[0]) {
        model_config arch;
        snprintf(w, sizeof w, "model.arch");
        if ((rc = model_config_parse(&arch, cfg->arch, w, err))) return rc;
        if ((rc = rlhf_mkdirs(cfg->run_dir, err))) return rc;
        snprintf(p, sizeof p, "%.1000s/base.safetensors", cfg->run_dir);
        if (access(p, F_OK) != 0) {
            model *m = NULL;
            if ((rc = model_create(&m, &arch, err))) return rc;
            model_init_random(m, cfg->seed);
            rc = model_save(m, p, err);
            model_destroy(&m);
            if (rc) return rc;
        }
        snprintf(cfg->base_checkpoint, sizeof cfg->base_checkpoint, "%.1000s", p);
        json_object_set_new(json_object_get(cfg->resolved, "model"), "base_checkpoint", json_string(p));
    }
    return 0;
}

/* Every prompt of `path`, tokenized as a generator will (with BOS), must leave generators.max_tokens
 * positions in the model's context of `seq`: a longer one would get a shorter completion budget, or none,
 * in the middle of a run. The first offending prompt is named with its length. */
static int check_prompt_lengths(const run_config *cfg, const char *key, const char *path, const tokenizer *tok,
                                int seq, rlhf_error *err) {
    prompt_dataset *ds = NULL;
    int rc = prompt_dataset_load(&ds, path, err);
    if (rc) return rc;
    size_t n = prompt_dataset_size(ds);
    for (size_t i = 0; i < n && !rc; i++) {
        const prompt_record *r = prompt_dataset_get(ds, i);
        int32_t *ids = NULL;
        int len = 0;
        if ((rc = tokenizer_encode(tok, r->prompt, strlen(r->prompt), 1, &ids, &len, err))) break;
        free(ids);
        if (len + cfg->max_tokens > seq) {
            char w[1200];
            snprintf(w, sizeof w, "%.300s: %s: %.400s", cfg->source, key, path);
            rc = rlhf_error_set(err, RLHF_EINVAL, w,
                                "prompt \"%.100s\" (line %zu) is %d tokens; with generators.max_tokens %d that is %d, "
                                "more than the model's context of %d positions",
                                r->id, i + 1, len, cfg->max_tokens, len + cfg->max_tokens, seq);
        }
    }
    prompt_dataset_destroy(&ds);
    return rc;
}

/* A dataset and the selector that will serve it: both must load. */
static int check_dataset_and_selector(const run_config *cfg, const char *dataset_key, const char *path,
                                      const char *selector_key, json_t *selector, rlhf_error *err) {
    char w[1200];
    prompt_dataset *ds = NULL;
    int rc = prompt_dataset_load(&ds, path, err);
    if (rc) {
        snprintf(w, sizeof w, "%.200s: %s: %.200s", cfg->source, dataset_key, err->where);
        snprintf(err->where, sizeof err->where, "%.250s", w);
        return rc;
    }
    prompt_selector *sel = NULL;
    rc = prompt_selector_create(&sel, ds, selector, cfg->seed, err);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
    if (rc) {
        snprintf(w, sizeof w, "%.200s: %s: %.200s", cfg->source, selector_key, err->where);
        snprintf(err->where, sizeof err->where, "%.250s", w);
    }
    return rc;
}

static int prepare_checked(run_config *cfg, rlhf_error *err);

int run_prepare(run_config *cfg, rlhf_error *err) {
    run_chat_data cd;
    int rc = run_chat_data_render(cfg, &cd, err);
    if (rc) return rc;
    rc = prepare_checked(cfg, err);
    if (rc) {
        run_chat_data_cleanup(&cd);
        return rc;
    }
    return run_chat_data_commit(cfg, &cd, err);
}

static int prepare_checked(run_config *cfg, rlhf_error *err) {
    char p[4096], w[1200];
    int rc;
    /* everything is checked before anything is created: a bad config leaves no run directory */

    /* data-parallel updaters start under mpirun (cli/launcher.c) */
    if (cfg->upd_count > 1) {
        int found = 0;
        const char *path = getenv("PATH");
        char dirs[4096];
        snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
        char *save = NULL;
        for (char *d = strtok_r(dirs, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
            snprintf(p, sizeof p, "%s/mpirun", d);
            found = access(p, X_OK) == 0;
        }
        if (!found)
            return rlhf_error_set(err, RLHF_ESYS, "updaters.count",
                                  "%d updaters run under mpirun, which is not on PATH: %s (Debian: apt-get install "
                                  "openmpi-bin libopenmpi-dev)", cfg->upd_count, strerror(ENOENT));
    }
    if (cfg->upd_hostfile[0] && access(cfg->upd_hostfile, R_OK) != 0)
        return rlhf_error_set(err, RLHF_ESYS, "updaters.hostfile", "%s: %s", cfg->upd_hostfile, strerror(errno));

    /* prompts: the training set with the selector that serves it (the broker's own when it names them) */
    json_t *b = cfg->broker;
    const char *b_dataset = json_string_value(json_object_get(b, "dataset"));
    json_t *b_selector = json_object_get(b, "selector");
    if (json_object_get(b, "dataset") && !b_dataset)
        return rlhf_error_set(err, RLHF_EINVAL, "broker.dataset", "must be a string (a prompt JSONL file)");
    if (b_selector && !json_is_object(b_selector))
        return rlhf_error_set(err, RLHF_EINVAL, "broker.selector", "must be an object");
    const char *train = b_dataset ? b_dataset : cfg->train_path;
    if ((rc = check_dataset_and_selector(cfg, b_dataset ? "broker.dataset" : "task.train", train,
                                         b_selector ? "broker.selector" : "prompts.selector",
                                         b_selector ? b_selector : cfg->selector, err)))
        return rc;
    if (b_dataset && strcmp(b_dataset, cfg->train_path) != 0 &&
        (rc = check_dataset_and_selector(cfg, "task.train", cfg->train_path, "prompts.selector", cfg->selector, err)))
        return rc;
    prompt_dataset *ds = NULL;
    if (cfg->eval_path[0]) {
        if ((rc = prompt_dataset_load(&ds, cfg->eval_path, err))) return rc;
        prompt_dataset_destroy(&ds);
    }
    /* the broker serves max_staleness = rl.max_staleness, always: a different value of the user's own is
     * refused rather than replaced (a config the launcher wrote carries its own copy, refreshed below) */
    json_t *b_stale = json_object_get(b, "max_staleness");
    if (b_stale && !json_is_true(json_object_get(json_object_get(cfg->resolved, "launcher"), "resolved")) &&
        !(json_is_integer(b_stale) && json_integer_value(b_stale) == cfg->max_staleness)) {
        snprintf(w, sizeof w, "%.1000s: broker.max_staleness", cfg->source);
        return rlhf_error_set(err, RLHF_EINVAL, w,
                              "the broker always uses rl.max_staleness (%d%s); set that instead of this key",
                              cfg->max_staleness, cfg->mode == RUN_MODE_SYNC ? " in sync mode" : "");
    }
    /* rewards */
    reward_pipeline *pipe = NULL;
    snprintf(w, sizeof w, "%.1000s: rewards", cfg->source);
    if ((rc = reward_pipeline_create(&pipe, cfg->rewards, w, err))) return rc;
    reward_pipeline_destroy(&pipe);

    int seq, both_bias_and_qk_norm, layer_opts, vocab;
    tokenizer *tok = NULL;
    if (cfg->base_checkpoint[0]) {
        model *m = NULL;
        if ((rc = run_load_base(cfg, &m, err))) return rc;
        rc = run_load_tokenizer(cfg, m, &tok, err);
        seq = m->cfg.max_seq_len;
        vocab = m->cfg.vocab_size;
        both_bias_and_qk_norm = m->cfg.attn_bias && m->cfg.qk_norm;
        layer_opts = model_uses_layer_opts(&m->cfg);
        /* model.lora against the base it will adapt (a config with model.arch was checked at parse) */
        if (!rc && cfg->lora.rank) {
            char lw[1200];
            snprintf(lw, sizeof lw, "%.600s: model.lora", cfg->source);
            rc = model_lora_check(&m->cfg, &cfg->lora, lw, err);
        }
        model_destroy(&m);
        if (rc) return rc;
    } else {
        model_config arch;
        if ((rc = model_config_parse(&arch, cfg->arch, "model.arch", err))) return rc;
        both_bias_and_qk_norm = arch.attn_bias && arch.qk_norm;
        layer_opts = model_uses_layer_opts(&arch);
        if (cfg->max_seq_len > 0 && cfg->max_seq_len < arch.max_seq_len) arch.max_seq_len = cfg->max_seq_len;
        seq = arch.max_seq_len;
        vocab = arch.vocab_size;
        /* the tokenizer the run will use must fit the vocabulary the base model will be created with */
        rc = tokenizer_load_for_model(&tok, cfg->tokenizer_path, NULL, arch.vocab_size, err);
        if (rc) {
            snprintf(w, sizeof w, "%.200s: model.arch / model.tokenizer: %.200s", cfg->source, err->where);
            snprintf(err->where, sizeof err->where, "%.250s", w);
            return rc;
        }
    }
    rc = check_prompt_lengths(cfg, b_dataset ? "broker.dataset" : "task.train", train, tok, seq, err);
    if (!rc && b_dataset && strcmp(b_dataset, cfg->train_path) != 0)
        rc = check_prompt_lengths(cfg, "task.train", cfg->train_path, tok, seq, err);
    if (!rc && cfg->eval_path[0]) rc = check_prompt_lengths(cfg, "task.eval", cfg->eval_path, tok, seq, err);
    tokenizer_destroy(&tok);
    if (rc) return rc;
    if (seq < 8) return rlhf_error_set(err, RLHF_EINVAL, cfg->base_checkpoint, "max_seq_len %d is too short", seq);
    /* found now, not at the first checkpoint: no Hugging Face architecture has both */
    if (cfg->export_hf != RUN_EXPORT_HF_NONE && both_bias_and_qk_norm)
        return rlhf_error_set(err, RLHF_EINVAL, "rl.export_hf",
                              "the model has both q/k/v biases and q/k norms, which no Hugging Face architecture "
                              "has: it cannot be exported");
    if (cfg->export_hf != RUN_EXPORT_HF_NONE && layer_opts)
        return rlhf_error_set(err, RLHF_EINVAL, "rl.export_hf",
                              "the model uses kv_share or attention_pattern, which no Hugging Face architecture has: "
                              "it cannot be exported");

    /* broker: what the rest of the config already says, unless the broker section says otherwise */
    set_default(b, "dataset", json_string(cfg->train_path));
    if (cfg->selector) set_default(b, "selector", json_incref(cfg->selector));
    set_default(b, "seed", json_integer((json_int_t)cfg->seed));
    /* a short broker queue keeps staleness low: half a step of groups (or prompts granted) waits
     * there, one step sits in the updater (being scored) while another trains. Default task, 6 seeds:
     * a queue of one step gave mean staleness 3.0, this 2.0, at the same speed (150 steps in 20.2 vs
     * 19.6 s) and a slightly earlier time to the sync reward (22.4 vs 20.7 s) */
    set_default(b, "queue_capacity", json_integer(cfg->prompts_per_step > 1 ? cfg->prompts_per_step / 2 : 1));
    /* the broker bounds staleness too (it drops what the updater would drop anyway) */
    json_object_set_new(b, "max_staleness", json_integer(cfg->max_staleness));
    /* the broker refuses groups with token ids the model does not have (one would fail training) */
    json_object_set_new(b, "vocab_size", json_integer(vocab));
    json_t *replay = json_object_get(b, "replay");
    if (!replay) {
        replay = json_object();
        json_object_set_new(b, "replay", replay);
    }
    if (json_is_object(replay)) set_default(replay, "path", json_string("rollouts.log"));
    /* an endpoint of our own choosing is re-chosen at every launch (a resumed run's old port may be
     * taken); launcher.auto_endpoint remembers that the user did not pick one */
    json_t *launcher = json_object_get(cfg->resolved, "launcher");
    int auto_ep = !json_object_get(b, "endpoint") || json_is_true(json_object_get(launcher, "auto_endpoint"));
    if (auto_ep) {
        /* One host: a Unix socket in the run's credentials directory (mode 0700), where the broker
         * authenticates with PLAIN and nothing is encrypted (docs/BROKER.md "Authentication": CURVE
         * costs a weights fan-out several times over); tcp loopback with CURVE when the path is too long
         * for a Unix socket address. */
        char e[1200];
        snprintf(e, sizeof e, "ipc://%s/%s/broker.sock", cfg->run_dir, BROKER_CREDENTIALS_DIR);
        if (strlen(e) - 6 > 100) {
            int port = free_tcp_port();
            if (port < 0) return RLHF_FAIL(err, RLHF_ESYS, "cannot find a free TCP port for the broker");
            snprintf(e, sizeof e, "tcp://127.0.0.1:%d", port);
        }
        json_object_set_new(b, "endpoint", json_string(e));
        json_object_set_new(launcher, "auto_endpoint", json_true());
    }
    broker_config bc;
    broker_config_default(&bc);
    rc = broker_config_parse(&bc, b, "broker", err);
    /* keys of other hosts with an address only this host reaches: say so now, not when nobody joins */
    if (!rc && bc.n_authorized && (auto_ep || strncmp(bc.endpoint, "tcp://", 6) != 0))
        rc = rlhf_error_set(err, RLHF_EINVAL, "broker.authorized_keys",
                            "keys of other hosts need broker.endpoint: a tcp:// address they can reach (it is %s)",
                            auto_ep ? "chosen by the launcher, on this host only" : bc.endpoint);
    broker_config_free(&bc);
    if (rc) return rc;
    json_object_set(cfg->resolved, "broker", b);
    /* what is written from here on is the launcher's resolved config: its broker section is its own */
    json_object_set_new(launcher, "resolved", json_true());

    snprintf(p, sizeof p, "%s/logs", cfg->run_dir);
    if ((rc = rlhf_mkdirs(p, err))) return rc;
    snprintf(p, sizeof p, "%s/checkpoints", cfg->run_dir);
    if ((rc = rlhf_mkdirs(p, err))) return rc;
    return run_prepare_base(cfg, err);
}

int run_load_base(const run_config *cfg, model **out, rlhf_error *err) {
    return run_load_base_keep_bf16(cfg, 0, out, err);
}

int run_load_base_keep_bf16(const run_config *cfg, int keep_bf16, model **out, rlhf_error *err) {
    model_config arch, *expect = NULL;
    if (cfg->arch) {
        char w[1200];
        snprintf(w, sizeof w, "%s/config.json: model.arch", cfg->run_dir);
        int rc = model_config_parse(&arch, cfg->arch, w, err);
        if (rc) return rc;
        expect = &arch;
    }
    if (!cfg->base_checkpoint[0]) return rlhf_error_set(err, RLHF_EINVAL, "model.base_checkpoint", "not set");
    model_load_options lo = {.expect = expect, .max_seq_len = cfg->max_seq_len, .keep_bf16 = keep_bf16};
    int rc = model_load_with(out, cfg->base_checkpoint, &lo, err);
    if (rc) return rc;
    /* an HF model states the longest context it was trained for, and every KV cache and training
     * buffer is sized by max_seq_len: a long one must be capped on purpose */
    if (!cfg->max_seq_len && (*out)->cfg.max_seq_len > RUN_MAX_SEQ_LEN_UNCAPPED) {
        rc = rlhf_error_set(err, RLHF_EINVAL, cfg->base_checkpoint,
                            "the model allows %d positions; set model.max_seq_len to the longest prompt + "
                            "completion the run needs (KV caches and training buffers are sized by it)",
                            (*out)->cfg.max_seq_len);
        model_destroy(out);
    }
    return rc;
}

int run_load_tokenizer(const run_config *cfg, const model *m, tokenizer **out, rlhf_error *err) {
    return tokenizer_load_for_model(out, cfg->tokenizer_path, cfg->base_checkpoint, m->cfg.vocab_size, err);
}
