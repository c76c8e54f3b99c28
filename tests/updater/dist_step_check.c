/* tests/updater/dist_step_check.c — the data-parallel RL step on fixed data, for tests/updater/test_dist.c.
 *
 *   dist_step_check BASE.safetensors OUT_PREFIX STEPS [THREADS [RL_KEYS]]
 *
 * Every rank builds the policy from BASE (a tiny model) and the same config (KL penalty on, so the
 * reference pass is split too; 10 groups of k = 4 per step: three micro-batches of 16, 16 and 8
 * samples). Rank 0 makes STEPS steps' worth of groups from a fixed seed — prompts, completions of
 * varying length, behaviour log-probs, rewards — and trains on them with updater_policy_train_step;
 * ranks 1.. follow (updater_policy_follow). Rank 0 then writes OUT_PREFIX.safetensors (the weights)
 * and OUT_PREFIX.json (each step's loss, grad_norm, is_ratio/mean, entropy, kl, train/tokens).
 * Run alone it is a single updater; under `mpirun -np U`, U data-parallel ranks. RL_KEYS: more keys of
 * the "rl" object instead of the default "\"lr\":0.01,\"loss\":\"ppo_clip\"" (rl.lr among them). The
 * groups' behaviour versions are 0..2 behind the policy's version 2, so lags differ. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "updater/updater.h"

static uint64_t next(uint64_t *s) {
    *s += 0x9e3779b97f4a7c15ULL;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* One group of k samples from the RNG: prompt 3..5 tokens, completions 1..8 tokens. */
static scored_group *make_group(uint64_t *rng, int k, int vocab) {
    scored_group *s = calloc(1, sizeof *s);
    wire_rollout_group *g = &s->g;
    g->k = (uint32_t)k;
    g->n_prompt_tokens = 3 + (uint32_t)(next(rng) % 3);
    g->prompt_tokens = malloc(sizeof(int32_t) * g->n_prompt_tokens);
    for (uint32_t t = 0; t < g->n_prompt_tokens; t++) g->prompt_tokens[t] = (int32_t)(next(rng) % 256);
    g->n_tokens = malloc(sizeof(uint32_t) * k);
    uint64_t tot = 0;
    for (int i = 0; i < k; i++) tot += g->n_tokens[i] = 1 + (uint32_t)(next(rng) % 8);
    g->tokens = malloc(sizeof(int32_t) * tot);
    g->logprobs = malloc(sizeof(float) * tot);
    for (uint64_t t = 0; t < tot; t++) {
        g->tokens[t] = (int32_t)(next(rng) % (uint64_t)vocab);
        g->logprobs[t] = -0.5f - (float)(next(rng) % 1000) / 250.0f;
    }
    s->total = malloc(sizeof(float) * k);
    for (int i = 0; i < k; i++) s->total[i] = (float)(next(rng) % 5) / 4.0f;
    return s;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: dist_step_check BASE.safetensors OUT_PREFIX STEPS [THREADS [RL_KEYS]]\n");
        return 2;
    }
    const int threads = argc >= 5 ? atoi(argv[4]) : 1;
    const char *rl_extra = argc == 6 ? argv[5] : "\"lr\":0.01,\"loss\":\"ppo_clip\"";
    const int steps = atoi(argv[3]), G = 10, K = 4;
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"name\":\"dist\",\"run_dir\":\"/tmp\",\"model\":{\"base_checkpoint\":\"%s\",\"threads\":1},"
             "\"task\":{\"train\":\"/dev/null\"},\"rewards\":[{\"type\":\"regex\",\"pattern\":\"x\"}],"
             "\"rl\":{\"k\":%d,\"prompts_per_step\":%d,\"kl_beta\":0.1,%s}}",
             argv[1], K, G, rl_extra);
    rlhf_error err = {0};
    json_t *j = json_loads(doc, 0, NULL);
    run_config cfg;
    if (run_config_parse(&cfg, j, "dist_step_check", &err)) {
        fprintf(stderr, "config: %s: %s\n", err.where, err.msg);
        return 1;
    }
    json_decref(j);
    model_set_threads(threads); /* per rank; bench/bench_dist_updaters.sh varies it */
    updater_dist *dist = NULL;
    if (updater_dist_create(&dist, &err)) {
        fprintf(stderr, "%s: %s\n", err.where, err.msg);
        return 1;
    }
    policy_state ps;
    if (updater_policy_init(&ps, &cfg, &err)) {
        fprintf(stderr, "policy: %s: %s\n", err.where, err.msg);
        return 1;
    }
    ps.dist = dist;
    ps.version = 2; /* the groups are 0..2 versions behind */
    int rc = 0;
    double train_s = 0;
    if (updater_dist_rank(dist) > 0) {
        rc = updater_policy_follow(&ps, &err);
    } else {
        uint64_t rng = 12345;
        json_t *log = json_array();
        for (int s = 0; s < steps && !rc; s++) {
            double t0 = rlhf_now();
            scored_group *gs[10];
            for (int g = 0; g < G; g++) {
                gs[g] = make_group(&rng, K, ps.m->cfg.vocab_size);
                gs[g]->g.policy_version = (uint64_t)(g % 3);
                if (g % 2 && g % 3 < 2) { /* completions that span two versions: from their third token on */
                    wire_rollout_group *w = &gs[g]->g;
                    uint64_t tot = wire_rollout_group_total_tokens(w), off = 0;
                    w->token_versions = malloc(sizeof(uint64_t) * (tot ? tot : 1));
                    for (uint32_t i = 0; i < w->k; off += w->n_tokens[i++])
                        for (uint32_t t = 0; t < w->n_tokens[i]; t++)
                            w->token_versions[off + t] = w->policy_version + (t >= 2);
                }
            }
            json_t *m = json_object();
            rc = updater_policy_train_step(&ps, gs, G, m, NULL, &err);
            json_array_append_new(log, m);
            train_s += rlhf_now() - t0;
            for (int g = 0; g < G; g++) updater_scored_group_free(gs[g]);
        }
        updater_policy_release_followers(dist);
        char p[1024];
        snprintf(p, sizeof p, "%s.safetensors", argv[2]);
        if (!rc) rc = model_save(ps.m, p, &err);
        snprintf(p, sizeof p, "%s.json", argv[2]);
        if (!rc) rc = json_dump_file(log, p, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) ? RLHF_EIO : 0;
        json_decref(log);
    }
    if (rc) fprintf(stderr, "rank %d: %s: %s\n", updater_dist_rank(dist), err.where, err.msg);
    else if (updater_dist_rank(dist) == 0) fprintf(stderr, "train_s %.4f\n", train_s);
    updater_policy_fini(&ps);
    run_config_free(&cfg);
    updater_dist_destroy(&dist);
    return rc ? 1 : 0;
}
