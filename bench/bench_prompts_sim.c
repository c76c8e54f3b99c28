/* bench/bench_prompts_sim.c — SIMULATION of prompt selection: uniform vs zero_variance_filter vs cohesion,
 * held-out reward against generated tokens. No language model is involved; this is a toy stand-in for
 * the real ablation (which needs end-to-end runs), meant to exercise the selector's code paths on a
 * population with known learnability, and to tune its knobs.
 *
 * The toy world:
 *  - prompts belong to `skills` clusters; a prompt's success probability is sigmoid(theta[skill] + bias),
 *    where theta is the toy policy (one logit per skill) and bias the prompt's own difficulty;
 *  - prompt kinds: easy (bias +5, solved from the start), hard (bias -7: zero spread until its skill
 *    has been trained up), learnable (bias in [-3, 1]) and subjective (the two reward sources are
 *    independent coins that ignore the answer and disagree — like graders on a matter of taste) and
 *    unsolvable (--p-unsolvable, default 0: no answer is right whatever the policy, so the true outcome is
 *    always 0 and only the sources' flips give spread — a broken or impossible item in the dataset);
 *  - two reward sources: a checker that flips the true outcome with probability 0.05 and a judge that
 *    flips it with 0.15 (--flip-checker, --flip-judge); the total is their mean;
 *  - a generated sample costs `tokens` tokens whether or not it teaches anything;
 *  - training = RLOO on the group: theta[skill] += lr * mean_j A_j * (y_j - p); zero-spread groups are
 *    dropped (no update), exactly as the updater does;
 *  - held-out reward = mean true success probability over held-out (non-subjective) prompts of the same
 *    skills, computed exactly (no sampling noise).
 * Every policy runs on the same seeds (same world, same budget). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "prompts/prompts.h"

typedef struct world {
    int n_train, n_held, skills;
    int *skill;      /* (n_train + n_held) */
    double *bias;    /* (n_train + n_held) */
    int *subjective; /* (n_train + n_held) */
    int *unsolvable; /* (n_train + n_held) */
} world;

typedef struct sim_opts {
    int n_train, n_held, skills, k, batch, budget_groups, eval_every, tokens, seeds;
    double lr, p_easy, p_hard, p_subjective, p_unsolvable, flip_checker, flip_judge;
    const char *cohesion_config; /* extra knobs (JSON object) for the cohesion policy */
    const char *zvf_config;      /* extra knobs for zero_variance_filter */
} sim_opts;

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double unif(rlhf_rng *r) { return (double)(rlhf_rng_u64(r) >> 11) * 0x1.0p-53; }

static void world_make(world *w, const sim_opts *o, uint64_t seed) {
    rlhf_rng r;
    rlhf_rng_seed(&r, seed * 7919 + 1);
    int n = o->n_train + o->n_held;
    w->n_train = o->n_train;
    w->n_held = o->n_held;
    w->skills = o->skills;
    w->skill = malloc(n * sizeof *w->skill);
    w->bias = malloc(n * sizeof *w->bias);
    w->subjective = calloc(n, sizeof *w->subjective);
    w->unsolvable = calloc(n, sizeof *w->unsolvable);
    for (int i = 0; i < n; i++) {
        w->skill[i] = (int)(rlhf_rng_u64(&r) % (uint64_t)o->skills);
        double u = unif(&r);
        if (u < o->p_easy) w->bias[i] = 5;
        else if (u < o->p_easy + o->p_hard) w->bias[i] = -7;
        else if (u < o->p_easy + o->p_hard + o->p_subjective && i < o->n_train) w->subjective[i] = 1, w->bias[i] = 0;
        else if (u < o->p_easy + o->p_hard + o->p_subjective + o->p_unsolvable && i < o->n_train)
            w->unsolvable[i] = 1, w->bias[i] = 0;
        else w->bias[i] = -3 + 4 * unif(&r);
    }
}

static void world_free(world *w) {
    free(w->skill);
    free(w->bias);
    free(w->subjective);
    free(w->unsolvable);
}

static double heldout_reward(const world *w, const double *theta) {
    double s = 0;
    int m = 0;
    for (int i = w->n_train; i < w->n_train + w->n_held; i++) {
        s += sigmoid(theta[w->skill[i]] + w->bias[i]);
        m++;
    }
    return s / m;
}

typedef struct run_result {
    double *curve;  /* held-out reward at each evaluation point (n_eval) */
    int n_eval;
    double zero_share, mean_cohesion, entropy_norm;
} run_result;

static int run(const sim_opts *o, const world *w, const char *policy, uint64_t seed, run_result *res) {
    char path[] = "/tmp/bench_prompts_sim.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < w->n_train; i++) fprintf(f, "{\"id\":\"t%d\",\"prompt\":\"p%d\"}\n", i, i);
    fclose(f);
    prompt_dataset *ds = NULL;
    prompt_selector *sel = NULL;
    rlhf_error err = {0};
    const char *extra = !strcmp(policy, "cohesion") ? o->cohesion_config
                        : !strcmp(policy, "zero_variance_filter") ? o->zvf_config : NULL;
    json_t *cfg = extra ? json_loads(extra, 0, NULL) : json_object();
    if (!cfg) {
        fprintf(stderr, "bench_prompts_sim: error: bad JSON in the %s config: %s\n", policy, extra);
        return -1;
    }
    json_object_set_new(cfg, "policy", json_string(policy));
    int rc = prompt_dataset_load(&ds, path, &err);
    unlink(path);
    if (rc == 0) rc = prompt_selector_create(&sel, ds, cfg, seed, &err);
    json_decref(cfg);
    if (rc) {
        rlhf_error_print("bench_prompts_sim", &err);
        prompt_dataset_destroy(&ds);
        return rc;
    }
    double *theta = calloc(w->skills, sizeof *theta);
    rlhf_rng r;
    rlhf_rng_seed(&r, seed * 104729 + 17); /* the same sampling stream for every policy */
    int k = o->k;
    float *rewards = malloc(2 * k * sizeof *rewards), *total = malloc(k * sizeof *total);
    int *y = malloc(k * sizeof *y);
    size_t *idx = malloc(o->batch * sizeof *idx);
    res->n_eval = o->budget_groups / o->eval_every + 1;
    res->curve = malloc(res->n_eval * sizeof *res->curve);
    res->curve[0] = heldout_reward(w, theta);
    char id[32];
    int groups = 0, e = 1;
    while (groups < o->budget_groups) {
        prompt_selector_next(sel, (size_t)o->batch, idx, NULL);
        for (int b = 0; b < o->batch && groups < o->budget_groups; b++) {
            int i = (int)idx[b];
            double p = w->unsolvable[i] ? 0 : sigmoid(theta[w->skill[i]] + w->bias[i]);
            double mean = 0;
            for (int j = 0; j < k; j++) {
                y[j] = unif(&r) < p;
                if (w->subjective[i]) {
                    rewards[j] = unif(&r) < 0.5;
                    rewards[k + j] = unif(&r) < 0.5;
                } else {
                    rewards[j] = (float)(unif(&r) < o->flip_checker ? !y[j] : y[j]);
                    rewards[k + j] = (float)(unif(&r) < o->flip_judge ? !y[j] : y[j]);
                }
                total[j] = 0.5f * (rewards[j] + rewards[k + j]);
                mean += total[j];
            }
            mean /= k;
            snprintf(id, sizeof id, "t%d", i);
            prompt_stats st = {.prompt_id = id, .k = k, .n_sources = 2, .rewards = rewards, .total = total};
            prompt_selector_update(sel, &st, NULL);
            /* RLOO: A_j = r_j - mean of the others = k/(k-1) (r_j - mean); zero spread -> dropped */
            double g = 0, spread = 0;
            for (int j = 0; j < k; j++) spread += fabs(total[j] - mean);
            if (spread > 1e-9) {
                for (int j = 0; j < k; j++) g += (double)k / (k - 1) * (total[j] - mean) * (y[j] - p);
                theta[w->skill[i]] += o->lr * g / k;
            }
            groups++;
            if (groups % o->eval_every == 0 && e < res->n_eval) res->curve[e++] = heldout_reward(w, theta);
        }
    }
    json_t *m = prompt_selector_metrics(sel);
    res->zero_share = json_real_value(json_object_get(m, "prompts/zero_spread_share"));
    res->mean_cohesion = json_real_value(json_object_get(m, "prompts/mean_cohesion"));
    res->entropy_norm = json_real_value(json_object_get(m, "prompts/sampling_entropy_norm"));
    json_decref(m);
    free(theta);
    free(rewards);
    free(total);
    free(y);
    free(idx);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
    return 0;
}

/* First evaluation index whose reward reaches `target`, or -1. */
static int first_reach(const run_result *r, double target) {
    for (int e = 0; e < r->n_eval; e++)
        if (r->curve[e] >= target - 1e-12) return e;
    return -1;
}

int main(int argc, char **argv) {
    sim_opts o = {.n_train = 1000, .n_held = 300, .skills = 20, .k = 8, .batch = 16, .budget_groups = 4000,
                  .eval_every = 50, .tokens = 24, .seeds = 9, .lr = 1.0, .p_easy = 0.3, .p_hard = 0.25,
                  .p_subjective = 0.15, .flip_checker = 0.05, .flip_judge = 0.15};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seeds")) o.seeds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--budget-groups")) o.budget_groups = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prompts")) o.n_train = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--k")) o.k = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lr")) o.lr = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--p-subjective")) o.p_subjective = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--p-unsolvable")) o.p_unsolvable = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--p-easy")) o.p_easy = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--p-hard")) o.p_hard = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--flip-checker")) o.flip_checker = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--flip-judge")) o.flip_judge = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--cohesion-config")) o.cohesion_config = argv[i + 1];
        else if (!strcmp(argv[i], "--zvf-config")) o.zvf_config = argv[i + 1];
        else {
            fprintf(stderr, "bench_prompts_sim: error: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (o.seeds < 1 || o.budget_groups < o.eval_every || o.k < 2 || o.k > 64 || o.n_train < 16 ||
        o.p_easy + o.p_hard + o.p_subjective + o.p_unsolvable > 1) {
        fprintf(stderr, "bench_prompts_sim: error: bad option values\n");
        return 2;
    }
    const char *policies[3] = {"uniform", "zero_variance_filter", "cohesion"};
    printf("SIMULATION (toy policy, not a language model): %d train / %d held-out prompts, %d skills, k=%d,\n"
           "%d groups x %d samples x %d tokens budget, %.0f%% easy, %.0f%% hard, %.0f%% subjective (sources disagree),\n"
           "%.0f%% unsolvable, "
           "checker flips %.0f%%, judge flips %.0f%%; %d seeds; medians over seeds.\n\n",
           o.n_train, o.n_held, o.skills, o.k, o.budget_groups, o.k, o.tokens, 100 * o.p_easy, 100 * o.p_hard,
           100 * o.p_subjective, 100 * o.p_unsolvable, 100 * o.flip_checker, 100 * o.flip_judge, o.seeds);
    run_result *res = calloc((size_t)3 * o.seeds, sizeof *res);
    for (int s = 0; s < o.seeds; s++) {
        world w;
        world_make(&w, &o, (uint64_t)s + 1);
        for (int p = 0; p < 3; p++)
            if (run(&o, &w, policies[p], (uint64_t)s + 1, &res[p * o.seeds + s])) return 1;
        world_free(&w);
    }
    int n_eval = res[0].n_eval;
    double *tmp = malloc(o.seeds * sizeof *tmp);
    double tokens_per_eval = (double)o.eval_every * o.k * o.tokens;
    printf("held-out reward (median) vs generated tokens:\n%12s", "tokens");
    for (int p = 0; p < 3; p++) printf(" %22s", policies[p]);
    printf("\n");
    int step = n_eval > 11 ? (n_eval - 1) / 10 : 1;
    for (int e = 0; e < n_eval; e += step) {
        printf("%12.0f", e * tokens_per_eval);
        for (int p = 0; p < 3; p++) {
            for (int s = 0; s < o.seeds; s++) tmp[s] = res[p * o.seeds + s].curve[e];
            printf(" %22.4f", median(tmp, o.seeds));
        }
        printf("\n");
    }
    printf("\n%-22s %10s %14s %14s %12s %14s\n", "policy", "final", "tokens_to_U", "ratio_vs_U", "zero_share",
           "mean_cohesion");
    for (int p = 0; p < 3; p++) {
        double fin[64], ratio[64], zs[64], mc[64], toks[64];
        int never = 0;
        for (int s = 0; s < o.seeds && s < 64; s++) {
            run_result *r = &res[p * o.seeds + s], *u = &res[s];
            fin[s] = r->curve[n_eval - 1];
            int eu = first_reach(u, u->curve[n_eval - 1]), er = first_reach(r, u->curve[n_eval - 1]);
            if (er < 0) never++;
            ratio[s] = er < 0 ? INFINITY : (double)er / (double)eu;
            toks[s] = er < 0 ? INFINITY : er * tokens_per_eval;
            zs[s] = r->zero_share;
            mc[s] = r->mean_cohesion;
        }
        int n = o.seeds < 64 ? o.seeds : 64;
        double mr = median(ratio, n), mt = median(toks, n);
        printf("%-22s %10.4f %14.0f %14.3f %12.3f %14.3f", policies[p], median(fin, n), isinf(mt) ? -1.0 : mt, mr,
               median(zs, n), median(mc, n));
        if (never) printf("  (%d of %d seeds never reach uniform's final; -1/inf = median never)", never, n);
        printf("\n");
    }
    printf("\nratio_vs_U = generated tokens to reach uniform's final held-out reward / uniform's tokens for it\n"
           "(per seed, then median). Target from issue 7 (for the REAL ablation): cohesion <= 0.70, final not lower.\n");
    for (int i = 0; i < 3 * o.seeds; i++) free(res[i].curve);
    free(res);
    free(tmp);
    return 0;
}
