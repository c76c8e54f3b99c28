/* updater/policy.c — the policy being trained: model, trainer, AdamW, optional reference model, and
 * one RL optimizer step over a set of scored rollout groups.
 *
 * One step, for the kept groups (each with reward spread, none too stale):
 *   1. (kl_beta > 0) reference forward: kl_i = sum_t (log mu_t - log ref_t) over the completion,
 *      the k1 estimate of KL(mu || ref) on mu's own samples; r_i -= kl_beta * kl_i;
 *   2. RLOO advantages per group;
 *   3. per micro-batch of sequences: policy forward -> log pi (B,T), entropy (B,T);
 *      rl_token_coeffs -> dL/dlog pi with the per-token mean over ALL completion tokens of the step
 *      (so micro-batching does not change the loss); backward accumulates parameter gradients;
 *   4. AdamW step (global-norm clipping, schedule). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "updater/updater_int.h"

int updater_policy_init(policy_state *ps, run_config *cfg, rlhf_error *err) {
    memset(ps, 0, sizeof *ps);
    ps->cfg = cfg;
    /* with model.lora the base is frozen: a BF16 base stays in bf16 (half the memory; the generators widen
     * the same bits, so both sides compute with the same base) */
    int rc = run_load_base_keep_bf16(cfg, cfg->lora.rank > 0, &ps->m, err);
    if (rc) return rc;
    ps->m->version = 0;
    if ((rc = run_load_tokenizer(cfg, ps->m, &ps->tok, err))) goto fail;
    /* checkpoints name the tokenizer, so `rlhf sample --model CKPT` and friends find it */
    free(ps->m->tokenizer_dir);
    ps->m->tokenizer_dir = NULL;
    if (ps->tok->source_dir && !(ps->m->tokenizer_dir = strdup(ps->tok->source_dir))) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    int total = cfg->prompts_per_step * cfg->k;
    ps->micro_batch = total < 16 ? total : 16;
    int T = ps->m->cfg.max_seq_len;
    if ((rc = model_trainer_create(&ps->tr, ps->m, ps->micro_batch, T, err))) goto fail;
    adamw_config ac;
    adamw_config_default(&ac);
    ac.lr = cfg->lr;
    ac.weight_decay = cfg->weight_decay;
    ac.grad_clip = cfg->grad_clip;
    /* the schedule counts optimizer updates; rl.warmup_steps and rl.steps count RL steps, each of
     * rl.ppo_epochs x rl.mini_batches updates */
    long upd = (long)cfg->ppo_epochs * cfg->mini_batches;
    ac.warmup_steps = (int)(cfg->warmup_steps * upd);
    ac.total_steps = (int)(cfg->steps * upd);
    ac.min_lr_ratio = cfg->lr_min_ratio;
    ac.schedule = cfg->lr_min_ratio < 1.0f ? ADAMW_SCHEDULE_COSINE : ADAMW_SCHEDULE_CONSTANT;
    if (cfg->lora.rank) { /* model.lora: the base stays frozen; only the adapters are in the gradient and AdamW */
        if ((rc = model_lora_create(&ps->lora, ps->m, &cfg->lora, err))) goto fail;
        model_lora_init(ps->lora, cfg->seed * 0x9E3779B97F4A7C15ull + 29);
        if ((rc = model_trainer_set_lora(ps->tr, ps->lora, cfg->seed * 0xD1B54A32D192ED03ull + 31, err))) goto fail;
        if ((rc = adamw_create_params(&ps->opt, ps->lora->tensors, ps->lora->n_tensors, ps->lora->n_params, &ac, err)))
            goto fail;
    } else if ((rc = adamw_create(&ps->opt, ps->m, &ac, err)))
        goto fail;
    if (cfg->kl_beta > 0 && ps->lora && cfg->ref_reset_every <= 0) {
        /* the reference is the base the adapters sit on: the same weights, a trainer without adapters */
        ps->ref = ps->m;
        ps->ref_is_base = 1;
        if ((rc = model_trainer_create(&ps->ref_tr, ps->ref, ps->micro_batch, T, err))) goto fail;
    } else if (cfg->kl_beta > 0) {
        if ((rc = run_load_base(cfg, &ps->ref, err))) goto fail;
        if ((rc = model_trainer_create(&ps->ref_tr, ps->ref, ps->micro_batch, T, err))) goto fail;
    }
    rlhf_rng_seed(&ps->rng, cfg->seed * 0x9E3779B97F4A7C15ull + 17);
    ps->wall_start = rlhf_now();
    return 0;
fail:
    updater_policy_fini(ps);
    return rc;
}

float *updater_policy_params(policy_state *ps, size_t *n) {
    *n = ps->lora ? ps->lora->n_params : ps->m->n_params;
    return ps->lora ? ps->lora->mem : ps->m->params_mem;
}

float *updater_policy_grads(policy_state *ps) {
    return ps->lora ? model_trainer_lora_grads(ps->tr) : model_trainer_grads(ps->tr);
}

int updater_policy_merged(const policy_state *ps, model *dst, rlhf_error *err) {
    int rc = ps->lora ? model_lora_merge(dst, ps->m, ps->lora, err) : model_copy_weights(dst, ps->m, err);
    if (!rc) dst->version = ps->m->version;
    return rc;
}

void updater_policy_fini(policy_state *ps) {
    model_trainer_destroy(&ps->tr);
    model_lora_destroy(&ps->lora);
    model_trainer_destroy(&ps->ref_tr);
    adamw_destroy(&ps->opt);
    if (ps->ref_is_base) ps->ref = NULL;
    model_destroy(&ps->m);
    model_destroy(&ps->ref);
    tokenizer_destroy(&ps->tok);
}

/* A flat view of the step's sequences: sample s is completion i of group g. */
typedef struct seq_ref {
    const wire_rollout_group *g;
    int i;            /* sample within the group */
    size_t tok_off;   /* offset of its completion in g->tokens */
} seq_ref;

/* Builds a right-padded micro-batch: tokens/targets (B, T), logmu/mask (B, T). Returns T. */
static int build_batch(const seq_ref *seqs, int B, int32_t *tokens, int32_t *targets, float *logmu, float *mask,
                       int max_T) {
    int T = 1;
    for (int b = 0; b < B; b++) {
        int L = (int)seqs[b].g->n_prompt_tokens + (int)seqs[b].g->n_tokens[seqs[b].i];
        if (L - 1 > T) T = L - 1;
    }
    if (T > max_T) T = max_T;
    for (int b = 0; b < B; b++) {
        const wire_rollout_group *g = seqs[b].g;
        int P = (int)g->n_prompt_tokens, n = (int)g->n_tokens[seqs[b].i];
        const int32_t *comp = g->tokens + seqs[b].tok_off;
        const float *lp = g->logprobs + seqs[b].tok_off;
        for (int t = 0; t < T; t++) {
            size_t o = (size_t)b * T + t;
            /* position t reads token t and predicts token t+1 of prompt ++ completion */
            int in_pos = t, out_pos = t + 1;
            tokens[o] = in_pos < P ? g->prompt_tokens[in_pos] : in_pos < P + n ? comp[in_pos - P] : 0;
            int j = out_pos - P; /* completion index of the predicted token */
            if (j >= 0 && j < n) {
                targets[o] = comp[j];
                logmu[o] = lp[j];
                mask[o] = 1.0f;
            } else {
                targets[o] = -1;
                logmu[o] = 0.0f;
                mask[o] = 0.0f;
            }
        }
    }
    return T;
}

/* Commands rank 0 broadcasts to the follower ranks (first byte of each broadcast). */
enum { DIST_CMD_STEP = 1, DIST_CMD_STOP = 2, DIST_CMD_STATE = 3 };

/* Rank 0: the step's groups to the followers. */
static int broadcast_step(policy_state *ps, scored_group **groups, int n, rlhf_error *err) {
    void *body = NULL;
    size_t len = 0;
    if (updater_dist_pack_groups(groups, n, &body, &len)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    /* command, rank 0's step count (steps without a trainable group move it without a broadcast), the
     * version the groups' lag is measured against (decoupled PPO's interpolation reads it), groups */
    unsigned char *msg = malloc(len + 17);
    if (!msg) {
        free(body);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    int64_t step = ps->step;
    uint64_t lag_ref = ps->recorded_clock ? ps->recorded_version : ps->version;
    msg[0] = DIST_CMD_STEP;
    memcpy(msg + 1, &step, 8);
    memcpy(msg + 9, &lag_ref, 8);
    memcpy(msg + 17, body, len);
    free(body);
    void *b = msg;
    size_t bn = len + 17;
    int rc = updater_dist_bcast(ps->dist, &b, &bn, err);
    free(msg);
    return rc;
}

/* Each completion token's lag (B, T), laid out as build_batch lays out the batch: versions the weights
 * this step starts from are ahead of the version that sampled the token (its group's token_versions,
 * or the group's policy_version); `ref` (B) is each sample's lag reference, group lag + policy_version. */
static void build_token_lags(const seq_ref *seqs, const uint64_t *ref, int B, int T, long *lag) {
    for (int b = 0; b < B; b++) {
        const wire_rollout_group *g = seqs[b].g;
        int P = (int)g->n_prompt_tokens, n = (int)g->n_tokens[seqs[b].i];
        for (int t = 0; t < T; t++) {
            int j = t + 1 - P;
            uint64_t v = j >= 0 && j < n && g->token_versions ? g->token_versions[seqs[b].tok_off + j] : g->policy_version;
            lag[(size_t)b * T + t] = j >= 0 && j < n ? (long)ref[b] - (long)v : 0;
        }
    }
}

static int train_step(policy_state *ps, scored_group **groups, int n, json_t *metrics, rlhf_error *err);

int updater_policy_train_step(policy_state *ps, scored_group **groups, int n, json_t *metrics, const char *const *src_names,
                      rlhf_error *err) {
    (void)src_names;
    if (updater_dist_size(ps->dist) > 1 && updater_dist_rank(ps->dist) == 0) {
        int rc = broadcast_step(ps, groups, n, err);
        if (rc) return rc;
    }
    return train_step(ps, groups, n, metrics, err);
}

void updater_policy_release_followers(updater_dist *d) {
    if (updater_dist_size(d) < 2 || updater_dist_rank(d) != 0) return;
    updater_dist_stop_scoring_servers(d);
    unsigned char stop = DIST_CMD_STOP;
    void *b = &stop;
    size_t n = 1;
    rlhf_error err = {0};
    if (updater_dist_bcast(d, &b, &n, &err)) fprintf(stderr, "updater: %s: %s\n", err.where, err.msg);
}

/* The state message: command, step, the parameters (n_params floats), then every optimizer state
 * tensor as (name length u8, name, numel u64, floats). Sizes are checked against this rank's own model
 * and optimizer when applied: the ranks were started with the same config. */
int updater_policy_share_state(policy_state *ps, rlhf_error *err) {
    if (updater_dist_size(ps->dist) < 2 || updater_dist_rank(ps->dist) != 0) return 0;
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    int ns = adamw_state_tensors(ps->opt, st, ADAMW_MAX_STATE_TENSORS);
    size_t np_ = 0;
    float *params = updater_policy_params(ps, &np_);
    size_t len = 1 + 8 + 8 + np_ * sizeof(float) + 4;
    for (int i = 0; i < ns; i++) len += 1 + strlen(st[i].name) + 8 + st[i].numel * sizeof(float);
    unsigned char *msg = malloc(len), *w = msg;
    if (!msg) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int64_t step = ps->step;
    uint64_t np = np_;
    uint32_t n32 = (uint32_t)ns;
    *w++ = DIST_CMD_STATE;
    memcpy(w, &step, 8), w += 8;
    memcpy(w, &np, 8), w += 8;
    memcpy(w, params, np * sizeof(float)), w += np * sizeof(float);
    memcpy(w, &n32, 4), w += 4;
    for (int i = 0; i < ns; i++) {
        uint8_t nl = (uint8_t)strlen(st[i].name);
        uint64_t numel = st[i].numel;
        *w++ = nl;
        memcpy(w, st[i].name, nl), w += nl;
        memcpy(w, &numel, 8), w += 8;
        memcpy(w, st[i].data, numel * sizeof(float)), w += numel * sizeof(float);
    }
    void *b = msg;
    size_t bn = len;
    int rc = updater_dist_bcast(ps->dist, &b, &bn, err);
    free(msg);
    return rc;
}

int updater_policy_apply_state(policy_state *ps, const void *buf, size_t n, rlhf_error *err) {
    const unsigned char *r = buf, *end = r + n;
#define NEED(k)                                                                                                        \
    do {                                                                                                               \
        if ((size_t)(end - r) < (size_t)(k))                                                                           \
            return rlhf_error_set(err, RLHF_ECORRUPT, "updater (MPI)", "rank 0's state message is truncated");         \
    } while (0)
    NEED(1 + 8 + 8);
    if (*r++ != DIST_CMD_STATE) return rlhf_error_set(err, RLHF_ECORRUPT, "updater (MPI)", "not a state message");
    int64_t step;
    uint64_t np;
    memcpy(&step, r, 8), r += 8;
    memcpy(&np, r, 8), r += 8;
    size_t mine_np = 0;
    float *params = updater_policy_params(ps, &mine_np);
    if (np != mine_np)
        return rlhf_error_set(err, RLHF_EINVAL, "updater (MPI)", "rank 0 has %llu parameters, this rank %zu (another config?)",
                              (unsigned long long)np, mine_np);
    NEED(np * sizeof(float) + 4);
    memcpy(params, r, np * sizeof(float)), r += np * sizeof(float);
    uint32_t ns;
    memcpy(&ns, r, 4), r += 4;
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    int mine = adamw_state_tensors(ps->opt, st, ADAMW_MAX_STATE_TENSORS);
    if ((int)ns != mine)
        return rlhf_error_set(err, RLHF_EINVAL, "updater (MPI)", "rank 0 has %u optimizer tensors, this rank %d", ns, mine);
    for (uint32_t i = 0; i < ns; i++) {
        NEED(1);
        uint8_t nl = *r++;
        NEED(nl + 8);
        const char *name = (const char *)r;
        r += nl;
        uint64_t numel;
        memcpy(&numel, r, 8), r += 8;
        NEED(numel * sizeof(float));
        int j = 0;
        while (j < mine && !(strlen(st[j].name) == nl && !memcmp(st[j].name, name, nl))) j++;
        if (j == mine || st[j].numel != numel)
            return rlhf_error_set(err, RLHF_EINVAL, "updater (MPI)", "rank 0's optimizer tensor %.*s does not match this "
                                  "rank's", (int)nl, name);
        memcpy(st[j].data, r, numel * sizeof(float)), r += numel * sizeof(float);
    }
#undef NEED
    ps->step = (long)step;
    return adamw_state_loaded(ps->opt, err);
}

int updater_policy_await_state(updater_dist *d, void **buf, size_t *n, rlhf_error *err) {
    *buf = NULL;
    *n = 0;
    int rc = updater_dist_bcast(d, buf, n, err);
    if (rc) return rc;
    unsigned char cmd = *n ? ((unsigned char *)*buf)[0] : 0;
    if (cmd == DIST_CMD_STATE) return 1;
    free(*buf);
    *buf = NULL;
    if (cmd == DIST_CMD_STOP) return 0;
    return rlhf_error_set(err, RLHF_ECORRUPT, "updater (MPI)", "expected rank 0's state, got command %u", cmd);
}

int updater_policy_follow(policy_state *ps, rlhf_error *err) {
    for (;;) {
        void *b = NULL;
        size_t n = 0;
        int rc = updater_dist_bcast(ps->dist, &b, &n, err);
        if (rc) return rc;
        unsigned char cmd = n ? ((unsigned char *)b)[0] : 0;
        if (cmd == DIST_CMD_STATE) {
            rc = updater_policy_apply_state(ps, b, n, err);
            free(b);
            if (rc) return rc;
            continue;
        }
        if (cmd != DIST_CMD_STEP) {
            free(b);
            if (cmd == DIST_CMD_STOP) return 0;
            return rlhf_error_set(err, RLHF_ECORRUPT, "updater (MPI)", "unknown command %u from rank 0 (%zu bytes)", cmd, n);
        }
        scored_group **gs = NULL;
        int ng = 0;
        int64_t step = 0;
        uint64_t lag_ref = 0;
        rc = n >= 17 ? updater_dist_unpack_groups((unsigned char *)b + 17, n - 17, &gs, &ng) : RLHF_ECORRUPT;
        if (n >= 17) memcpy(&step, (unsigned char *)b + 1, 8), memcpy(&lag_ref, (unsigned char *)b + 9, 8);
        free(b);
        ps->step = (long)step;
        ps->version = lag_ref; /* group_lag on this rank then measures what it measures on rank 0 */
        ps->recorded_clock = 0;
        if (rc) return rlhf_error_set(err, rc, "updater (MPI)", "a step's groups from rank 0 do not unpack");
        json_t *m = json_object();
        rc = train_step(ps, gs, ng, m, err);
        json_decref(m);
        for (int i = 0; i < ng; i++) updater_scored_group_free(gs[i]);
        free(gs);
        if (rc) return rc;
    }
}

static int train_step(policy_state *ps, scored_group **groups, int n, json_t *metrics, rlhf_error *err) {
    const run_config *cfg = ps->cfg;
    double t0 = rlhf_now();
    /* data parallelism: this rank's share is the samples [s_lo, s_hi) — an equal split by sample, in
     * micro-batches of its own; sums over ranks follow */
    const int U = updater_dist_size(ps->dist), rank = updater_dist_rank(ps->dist);
    int k_max = 0, S = 0;
    /* a sample no reward source scored is not trained: it has no reward (not a 0), so it is neither in
     * its group's baseline nor in the loss, nor in the token count that normalises it */
    for (int g = 0; g < n; g++) {
        int ks = updater_group_n_scored(groups[g]);
        S += ks;
        if (ks > k_max) k_max = ks;
    }
    seq_ref *seqs = calloc((size_t)S, sizeof *seqs);
    float *reward = calloc((size_t)S, sizeof(float));  // (S) per-sample reward incl. KL penalty
    float *adv = calloc((size_t)S, sizeof(float));     // (S)
    float *kl = calloc((size_t)S, sizeof(float));      // (S)
    int MB = ps->micro_batch, maxT = ps->m->cfg.max_seq_len;
    size_t bt = (size_t)MB * maxT;
    int32_t *tokens = malloc(bt * sizeof(int32_t));    // (MB, T)
    int32_t *targets = malloc(bt * sizeof(int32_t));   // (MB, T)
    float *logmu = malloc(bt * sizeof(float));         // (MB, T)
    float *mask = malloc(bt * sizeof(float));          // (MB, T)
    float *coef = malloc(bt * sizeof(float));          // (MB, T)
    int *keep = calloc((size_t)n, sizeof(int));
    float *ref_rows = NULL; // (S, maxT) log ref by position: the KL term in the loss (rl.kl.in = "loss")
    int rc = 0;
    if (!seqs || !reward || !adv || !kl || !tokens || !targets || !logmu || !mask || !coef || !keep) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory in the RL step");
        goto done;
    }
    const int s_lo = (int)((long)S * rank / U), s_hi = (int)((long)S * (rank + 1) / U); // this rank's samples
    {
        int s = 0;
        for (int g = 0; g < n; g++) {
            const wire_rollout_group *wg = &groups[g]->g;
            size_t off = 0;
            for (uint32_t i = 0; i < wg->k; i++) {
                if (groups[g]->unscored && groups[g]->unscored[i]) {
                    off += wg->n_tokens[i];
                    continue;
                }
                seqs[s].g = wg;
                seqs[s].i = (int)i;
                seqs[s].tok_off = off;
                reward[s] = groups[g]->total[i];
                off += wg->n_tokens[i];
                s++;
            }
        }
    }
    /* 1. KL penalty against the reference model */
    double kl_sum = 0;
    if (ps->ref) {
        if (cfg->kl_in_loss && !(ref_rows = calloc((size_t)(S ? S : 1) * maxT, sizeof(float)))) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory in the RL step");
            goto done;
        }
        for (int s0 = s_lo; s0 < s_hi; s0 += MB) {
            int B = s_hi - s0 < MB ? s_hi - s0 : MB;
            int T = build_batch(seqs + s0, B, tokens, targets, logmu, mask, maxT);
            if ((rc = model_forward(ps->ref_tr, tokens, targets, B, T, err))) goto done;
            const float *lr = model_trainer_logprobs(ps->ref_tr); // (B, T)
            rl_kl_penalty_est(kl + s0, logmu, lr, mask, B, T, cfg->kl_estimator);
            for (int b = 0; ref_rows && b < B; b++)
                for (int t = 0; t < T; t++)
                    if (mask[(size_t)b * T + t] != 0.0f) ref_rows[(size_t)(s0 + b) * maxT + t] = lr[(size_t)b * T + t];
        }
        if (U > 1) { /* each sample's KL was computed on one rank, zeros elsewhere: the sum is exact */
            if ((rc = updater_dist_sum_f32(ps->dist, kl, (size_t)S, err))) goto done;
            if (ref_rows && (rc = updater_dist_sum_f32(ps->dist, ref_rows, (size_t)S * maxT, err))) goto done;
        }
        for (int s = 0; s < S; s++) {
            if (!cfg->kl_in_loss) reward[s] -= cfg->kl_beta * kl[s]; /* a KL-shaped reward */
            kl_sum += kl[s];
        }
    }
    /* DAPO's soft overlong punishment, on the reward before the baseline */
    long n_overlong = 0;
    for (int s = 0; cfg->overlong_buffer > 0 && s < S; s++) {
        float p = rl_overlong_shaping((int)seqs[s].g->n_tokens[seqs[s].i], cfg->max_tokens, cfg->overlong_buffer,
                                      cfg->overlong_penalty);
        reward[s] += p;
        n_overlong += p != 0.0f;
    }
    if (cfg->overlong_buffer > 0) json_object_set_new(metrics, "rewards/overlong_shaped", json_integer(n_overlong));
    /* 2. advantages (rl.advantage; groups of possibly different k) */
    {
        int *gk = malloc((size_t)(n ? n : 1) * sizeof(int)); // (n) scored samples per group
        if (!gk) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory in the RL step");
            goto done;
        }
        for (int g = 0; g < n; g++) gk[g] = updater_group_n_scored(groups[g]);
        rl_advantages(adv, keep, reward, gk, n, cfg->advantage, cfg->scale_rewards);
        free(gk);
        ps->zero_var_after_kl = 0;
        for (int g = 0; g < n; g++)
            if (!keep[g]) {
                groups[g]->fate = "zero_var";
                ps->zero_var_after_kl++;
            }
    }
    /* 3. rl.ppo_epochs passes over the batch, each split into rl.mini_batches optimizer updates (one
     * pass, one update: the usual step). Each update: forward/backward per micro-batch of this rank's
     * share of the mini-batch, the loss normalised by the mini-batch's token count over all ranks (so
     * neither micro-batching nor the rank count changes it); the gradient summed over the ranks in rank
     * order; one AdamW step. */
    const int E = cfg->ppo_epochs, M = cfg->mini_batches < S ? cfg->mini_batches : S > 0 ? S : 1;
    const int decoupled = cfg->loss == RL_LOSS_DECOUPLED_PPO;
    rl_loss_config lc = {.loss = cfg->loss, .is_cap = cfg->is_cap, .clip_eps = cfg->clip_eps,
                         .clip_low = cfg->clip_eps_low, .clip_high = cfg->clip_eps_high, .clip_c = cfg->clip_ratio_c,
                         .behav_cap = cfg->behav_weight_cap, .agg = cfg->loss_agg, .norm_len = cfg->max_tokens,
                         .kl_loss_beta = ref_rows ? cfg->kl_beta : 0.0f, .entropy_coef = cfg->entropy_coef,
                         .kl_estimator = cfg->kl_estimator};
    const int regularise = ref_rows || cfg->entropy_coef > 0;
    float *logref = regularise ? malloc(bt * sizeof(float)) : NULL; // (MB, T) log ref of this micro-batch
    float *dent = regularise ? malloc(bt * sizeof(float)) : NULL;   // (MB, T) dL/d entropy
    int *order = malloc((size_t)(S ? S : 1) * sizeof(int));            // (S) sample of each position
    seq_ref *mseqs = malloc((size_t)(S ? S : 1) * sizeof *mseqs);       // (S) in this pass's order
    float *madv = malloc((size_t)(S ? S : 1) * sizeof(float));          // (S)
    uint64_t *lag_ref = malloc((size_t)(S ? S : 1) * sizeof(uint64_t)); // (S) the version lags count from
    uint64_t *mref = malloc((size_t)(S ? S : 1) * sizeof(uint64_t));    // (S)
    long *tok_lag = decoupled ? malloc(bt * sizeof(long)) : NULL;       // (MB, T) lag of each token
    float *logprox = decoupled ? malloc(bt * sizeof(float)) : NULL;     // (MB, T) log pi_prox
    float *prox_rows = NULL;                                            // (S, maxT) log pi_prox by position
    if (!order || !mseqs || !madv || !lag_ref || !mref || (decoupled && (!logprox || !tok_lag)) ||
        (regularise && (!logref || !dent))) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory in the RL step");
        goto done3;
    }
    {
        int s = 0;
        for (int g = 0; g < n; g++)
            for (int k = updater_group_n_scored(groups[g]); k > 0; k--)
                lag_ref[s++] = groups[g]->g.policy_version + (uint64_t)group_lag(ps, groups[g]);
    }
    /* recomputed pi_prox: the weights this step starts from, before any of its updates. With one
     * update per step that is the update's own forward pass (no extra pass); otherwise one forward over
     * this rank's share, the rows summed over the ranks (each row computed on one rank, zeros elsewhere) */
    if (decoupled && cfg->prox == RL_PROX_RECOMPUTE && E * M > 1) {
        if (!(prox_rows = calloc((size_t)S * maxT, sizeof(float)))) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory in the RL step");
            goto done3;
        }
        for (int s0 = s_lo; s0 < s_hi; s0 += MB) {
            int B = s_hi - s0 < MB ? s_hi - s0 : MB;
            int T = build_batch(seqs + s0, B, tokens, targets, logmu, mask, maxT);
            if ((rc = model_forward(ps->tr, tokens, targets, B, T, err))) goto done3;
            const float *lp = model_trainer_logprobs(ps->tr); // (B, T)
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++)
                    if (mask[(size_t)b * T + t] != 0.0f) prox_rows[(size_t)(s0 + b) * maxT + t] = lp[(size_t)b * T + t];
        }
        if (U > 1 && (rc = updater_dist_sum_f32(ps->dist, prox_rows, (size_t)S * maxT, err))) goto done3;
    }
    double loss = 0, ratio_sum = 0, ratio_max = 0, clip_sum = 0, ent_sum = 0, behav_sum = 0, behav_max = 0;
    double gnorm_sum = 0, allreduce_s = 0, kl_loss_sum = 0;
    long ntok = 0, dropped = 0;
    int n_updates = 0;
    float gnorm = 0, lr = 0;
    model_trainer_zero_grad(ps->tr);
    for (int e = 0; e < E; e++) {
        for (int i = 0; i < S; i++) order[i] = i;
        if (M > 1) { /* a new order each pass, the same on every rank and in every replay of this step */
            rlhf_rng pr;
            rlhf_rng_seed(&pr, (cfg->seed + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(ps->step + 1) * 0xBF58476D1CE4E5B9ull ^
                                   (uint64_t)(e + 1) * 0x94D049BB133111EBull);
            for (int i = S - 1; i > 0; i--) {
                int j = (int)(rlhf_rng_u64(&pr) % (uint64_t)(i + 1)), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        for (int i = 0; i < S; i++) {
            mseqs[i] = seqs[order[i]];
            madv[i] = adv[order[i]];
            mref[i] = lag_ref[order[i]];
        }
        double e_ratio = 0, e_clip = 0;
        long e_tok = 0;
        for (int j = 0; j < M; j++) {
            const int m_lo = (int)((long)S * j / M), m_hi = (int)((long)S * (j + 1) / M), m_n = m_hi - m_lo;
            long n_tok_mb = 0, n_seq_mb = 0; /* the mini-batch's completion tokens and sequences, on all ranks */
            for (int i = m_lo; i < m_hi; i++) {
                n_tok_mb += mseqs[i].g->n_tokens[mseqs[i].i];
                n_seq_mb += mseqs[i].g->n_tokens[mseqs[i].i] > 0;
            }
            if (n_tok_mb == 0) continue;
            /* the aggregation's denominators are the whole update's: neither micro-batching nor the rank
             * count changes the gradient */
            lc.norm_tokens = (double)n_tok_mb;
            lc.norm_seqs = (double)n_seq_mb;
            const int r_lo = m_lo + (int)((long)m_n * rank / U), r_hi = m_lo + (int)((long)m_n * (rank + 1) / U);
            double u_loss = 0, u_ratio = 0, u_clip = 0, u_ent = 0, u_behav = 0, u_rmax = 0, u_bmax = 0, u_kl = 0;
            long u_tok = 0, u_drop = 0;
            for (int s0 = r_lo; s0 < r_hi; s0 += MB) {
                int B = r_hi - s0 < MB ? r_hi - s0 : MB;
                int T = build_batch(mseqs + s0, B, tokens, targets, logmu, mask, maxT);
                if ((rc = model_forward(ps->tr, tokens, targets, B, T, err))) goto done3;
                const float *logp = model_trainer_logprobs(ps->tr); // (B, T)
                const float *ent = model_trainer_entropy(ps->tr);   // (B, T)
                if (decoupled) {
                    if (cfg->prox == RL_PROX_INTERPOLATE) {
                        build_token_lags(mseqs + s0, mref + s0, B, T, tok_lag);
                        rl_interpolate_prox(logprox, logp, logmu, mask, tok_lag, B, T);
                    }
                    else if (!prox_rows) memcpy(logprox, logp, (size_t)B * T * sizeof(float));
                    else
                        for (int b = 0; b < B; b++)
                            memcpy(logprox + (size_t)b * T, prox_rows + (size_t)order[s0 + b] * maxT, (size_t)T * sizeof(float));
                }
                rl_step_stats st;
                rl_token_coeffs(coef, &st, logp, logmu, logprox, mask, madv + s0, B, T, &lc);
                if (st.n_tokens == 0) continue;
                u_loss += st.loss;
                if (regularise) {
                    for (int b = 0; ref_rows && b < B; b++)
                        memcpy(logref + (size_t)b * T, ref_rows + (size_t)order[s0 + b] * maxT, (size_t)T * sizeof(float));
                    double klv = 0;
                    u_loss += rl_regularizers(coef, dent, logp, ref_rows ? logref : NULL, ent, mask, B, T, &lc, &klv);
                    u_kl += klv;
                }
                u_ratio += st.ratio_mean * st.n_tokens;
                u_clip += st.clip_frac * st.n_tokens;
                u_behav += st.behav_mean * st.n_tokens;
                u_drop += st.behav_dropped;
                if (st.ratio_max > u_rmax) u_rmax = st.ratio_max;
                if (st.behav_max > u_bmax) u_bmax = st.behav_max;
                for (size_t i = 0; i < (size_t)B * T; i++)
                    if (mask[i] != 0.0f) u_ent += ent[i];
                u_tok += st.n_tokens;
                if ((rc = model_backward_logprobs(ps->tr, coef, cfg->entropy_coef > 0 ? dent : NULL, err))) goto done3;
            }
            /* 4. data parallelism: every rank's gradient and statistics summed, in rank order */
            if (U > 1) {
                double sums[8] = {u_loss, u_ratio, u_clip, u_ent, (double)u_tok, u_behav, (double)u_drop, u_kl};
                double mx[2] = {u_rmax, u_bmax};
                double t_sum = rlhf_now();
                size_t np = 0;
                updater_policy_params(ps, &np);
                if ((rc = updater_dist_sum_f32(ps->dist, updater_policy_grads(ps), np, err)) ||
                    (rc = updater_dist_sum_f64(ps->dist, sums, 8, err)) || (rc = updater_dist_max_f64(ps->dist, mx, 2, err)))
                    goto done3;
                allreduce_s += rlhf_now() - t_sum;
                u_loss = sums[0], u_ratio = sums[1], u_clip = sums[2], u_ent = sums[3], u_tok = (long)sums[4];
                u_behav = sums[5], u_drop = (long)sums[6], u_kl = sums[7], u_rmax = mx[0], u_bmax = mx[1];
            }
            /* 5. optimizer; the schedule follows the RL steps (a step with nothing trainable still moves
             * it), in updates: rl.ppo_epochs x rl.mini_batches of them per step */
            adamw_set_schedule_step(ps->opt, ps->step * cfg->ppo_epochs * cfg->mini_batches + e * cfg->mini_batches + j);
            size_t np = 0;
            float *params = updater_policy_params(ps, &np);
            if ((rc = adamw_step_params(ps->opt, params, np, updater_policy_grads(ps), &gnorm, &lr, err))) goto done3;
            model_trainer_zero_grad(ps->tr);
            n_updates++;
            gnorm_sum += gnorm;
            loss += u_loss;
            ratio_sum += u_ratio, clip_sum += u_clip, ent_sum += u_ent, behav_sum += u_behav;
            ntok += u_tok, dropped += u_drop, kl_loss_sum += u_kl;
            if (u_rmax > ratio_max) ratio_max = u_rmax;
            if (u_bmax > behav_max) behav_max = u_bmax;
            e_ratio += u_ratio, e_clip += u_clip, e_tok += u_tok;
        }
        if (E > 1) { /* how far each pass has moved the policy from the behaviour policy */
            char key[64];
            snprintf(key, sizeof key, "ppo/epoch_%d/is_ratio_mean", e + 1);
            json_object_set_new(metrics, key, json_real(e_tok ? e_ratio / e_tok : 1.0));
            snprintf(key, sizeof key, "ppo/epoch_%d/clip_frac", e + 1);
            json_object_set_new(metrics, key, json_real(e_tok ? e_clip / e_tok : 0.0));
        }
    }
    if (n_updates > 1) { /* means over the step's updates */
        loss /= n_updates;
        gnorm = (float)(gnorm_sum / n_updates);
    }
    if (U > 1) json_object_set_new(metrics, "train/allreduce_seconds", json_real(allreduce_s));
    if (decoupled) {
        json_object_set_new(metrics, "behav_weight/mean", json_real(ntok ? behav_sum / ntok : 1.0));
        json_object_set_new(metrics, "behav_weight/max", json_real(behav_max));
        json_object_set_new(metrics, "behav_weight/dropped_tokens", json_integer(dropped));
    }
    json_object_set_new(metrics, "train/updates", json_integer(n_updates));
    if (ref_rows) /* the aggregated KL term of the loss (before kl_beta), mean over the updates */
        json_object_set_new(metrics, "kl/loss_term", json_real(n_updates ? kl_loss_sum / n_updates : 0.0));
    ps->step++;
    if (cfg->ref_reset_every > 0 && ps->ref && ps->step % cfg->ref_reset_every == 0) {
        /* the reference becomes the current policy: the KL term then anchors to a recent policy */
        if ((rc = updater_policy_merged(ps, ps->ref, err))) goto done3;
        json_object_set_new(metrics, "kl/ref_reset", json_true());
    }
    double dt = rlhf_now() - t0;
    json_object_set_new(metrics, "loss", json_real(loss));
    json_object_set_new(metrics, "is_ratio/mean", json_real(ntok ? ratio_sum / ntok : 1.0));
    json_object_set_new(metrics, "is_ratio/max", json_real(ratio_max));
    json_object_set_new(metrics, "is_ratio/clip_frac", json_real(ntok ? clip_sum / ntok : 0.0));
    json_object_set_new(metrics, "entropy", json_real(ntok ? ent_sum / ntok : 0.0));
    json_object_set_new(metrics, "kl", json_real(ps->ref ? kl_sum / S : 0.0));
    json_object_set_new(metrics, "grad_norm", json_real(gnorm));
    json_object_set_new(metrics, "lr", json_real(lr));
    json_object_set_new(metrics, "train/tokens", json_integer(ntok));
    json_object_set_new(metrics, "train/seconds", json_real(dt));
    json_object_set_new(metrics, "train/tokens_per_s", json_real(dt > 0 ? ntok / dt : 0));
done3:
    free(logref);
    free(dent);
    free(order);
    free(mseqs);
    free(madv);
    free(lag_ref);
    free(mref);
    free(tok_lag);
    free(logprox);
    free(prox_rows);
done:
    free(ref_rows);
    free(seqs);
    free(reward);
    free(adv);
    free(kl);
    free(tokens);
    free(targets);
    free(logmu);
    free(mask);
    free(coef);
    free(keep);
    return rc;
}
