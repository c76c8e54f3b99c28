/* tests/updater/test_rl.c — RL math against hand-computed values, PPO gradient against finite
 * differences of its own objective, and run-config validation (errors name the JSON path). */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test_paths.h"
#include "updater/updater.h"

#define NEAR(a, b) CU_ASSERT(fabs((double)(a) - (double)(b)) < 1e-5)

static void test_rloo_hand_computed(void) {
    /* group 0: [1,0,0,1]: A_0 = 1 - (0+0+1)/3 = 2/3, A_1 = 0 - (1+0+1)/3 = -2/3
     * group 1: all 0.5 -> no spread, dropped
     * group 2: [2,0,1,1]: A_0 = 2 - 2/3 = 4/3, A_1 = 0 - 4/3, A_2 = 1 - 3/3 = 0 */
    float r[12] = {1, 0, 0, 1, 0.5f, 0.5f, 0.5f, 0.5f, 2, 0, 1, 1};
    float a[12];
    int keep[3];
    int dropped = rl_rloo_advantages(a, keep, r, 3, 4);
    CU_ASSERT_EQUAL(dropped, 1);
    CU_ASSERT_EQUAL(keep[0], 1);
    CU_ASSERT_EQUAL(keep[1], 0);
    CU_ASSERT_EQUAL(keep[2], 1);
    NEAR(a[0], 2.0 / 3);
    NEAR(a[1], -2.0 / 3);
    NEAR(a[2], -2.0 / 3);
    NEAR(a[3], 2.0 / 3);
    for (int i = 4; i < 8; i++) NEAR(a[i], 0);
    NEAR(a[8], 4.0 / 3);
    NEAR(a[9], -4.0 / 3);
    NEAR(a[10], 0);
    NEAR(a[11], 0);
    /* RLOO advantages of a kept group sum to zero */
    NEAR(a[8] + a[9] + a[10] + a[11], 0);
}

/* B=2, T=3; rho = [0.5, 3, (masked)], [1, 1.5, 2.5]; A = [1, -2]; N = 5 masked tokens. */
static float LOGMU[6] = {-1.0f, -2.0f, -1.0f, -0.7f, -1.2f, -3.0f};
static float MASK[6] = {1, 1, 0, 1, 1, 1};
static float ADV[2] = {1, -2};
static void make_logp(float *logp) {
    double rho[6] = {0.5, 3, 1, 1, 1.5, 2.5};
    for (int i = 0; i < 6; i++) logp[i] = (float)(LOGMU[i] + log(rho[i]));
}

static void test_tis_truncation(void) {
    float logp[6], coef[6];
    make_logp(logp);
    rl_loss_config lc = {.loss = RL_LOSS_TIS, .is_cap = 2.0f, .clip_eps = 0.2f};
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, NULL, MASK, ADV, 2, 3, &lc);
    /* coef = -min(rho, 2) * A / 5 */
    NEAR(coef[0], -0.5 * 1 / 5);
    NEAR(coef[1], -2.0 * 1 / 5); /* rho 3 truncated to 2 */
    NEAR(coef[2], 0);            /* masked */
    NEAR(coef[3], -1.0 * -2 / 5);
    NEAR(coef[4], -1.5 * -2 / 5);
    NEAR(coef[5], -2.0 * -2 / 5); /* rho 2.5 truncated */
    CU_ASSERT_EQUAL(st.n_tokens, 5);
    NEAR(st.ratio_mean, (0.5 + 3 + 1 + 1.5 + 2.5) / 5);
    NEAR(st.ratio_max, 3);
    NEAR(st.clip_frac, 2.0 / 5);
}

static double ppo_objective(const float *logp, const rl_loss_config *lc) {
    float coef[6];
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, NULL, MASK, ADV, 2, 3, lc);
    return st.loss;
}

static void test_ppo_clip(void) {
    float logp[6], coef[6];
    make_logp(logp);
    rl_loss_config lc = {.loss = RL_LOSS_PPO_CLIP, .is_cap = 2.0f, .clip_eps = 0.2f};
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, NULL, MASK, ADV, 2, 3, &lc);
    /* A=1:  rho 0.5 -> min(0.5, 0.8) unclipped: coef -0.5/5; rho 3 -> min(3, 1.2) clipped: 0
     * A=-2: rho 1 -> -2 both; rho 1.5 -> min(-3, -2.4) unclipped; rho 2.5 -> min(-5, -2.4) unclipped */
    NEAR(coef[0], -0.1);
    NEAR(coef[1], 0);
    NEAR(coef[2], 0);
    NEAR(coef[3], 0.4);
    NEAR(coef[4], 0.6);
    NEAR(coef[5], 1.0);
    NEAR(st.clip_frac, 1.0 / 5);
    NEAR(st.loss, -(0.5 + 1.2 - 2 - 3 - 5) / 5);
    /* independent oracle: central finite differences of the PPO objective w.r.t. each logp */
    for (int i = 0; i < 6; i++) {
        float lp[6];
        memcpy(lp, logp, sizeof lp);
        double h = 1e-3;
        lp[i] = (float)(logp[i] + h);
        double up = ppo_objective(lp, &lc);
        lp[i] = (float)(logp[i] - h);
        double dn = ppo_objective(lp, &lc);
        double fd = (up - dn) / (2 * h);
        CU_ASSERT(fabs(fd - coef[i]) < 2e-3);
    }
}

/* Decoupled PPO on the same tokens: pi_prox between mu and pi_theta. Hand-computed, then finite
 * differences of the reported objective w.r.t. each log pi_theta (logprox held fixed). */
static float LOGPROX[6];
static double dppo_objective(const float *logp, const rl_loss_config *lc) {
    float coef[6];
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, LOGPROX, MASK, ADV, 2, 3, lc);
    return st.loss;
}

static void test_decoupled_ppo(void) {
    float logp[6], coef[6];
    make_logp(logp); /* rho = pi/mu = 0.5, 3, 1, 1, 1.5, 2.5 */
    /* behaviour weights w = pi_prox/mu; the second is above the cap 5 (dropped); r = rho / w, none on a clip edge */
    double w[6] = {0.8, 6, 1, 1.2, 1.4, 2}, rho[6] = {0.5, 3, 1, 1, 1.5, 2.5}, A[6] = {1, 1, 1, -2, -2, -2};
    for (int i = 0; i < 6; i++) LOGPROX[i] = (float)(LOGMU[i] + log(w[i]));
    rl_loss_config lc = {.loss = RL_LOSS_DECOUPLED_PPO, .is_cap = 2.0f, .clip_eps = 0.2f, .behav_cap = 5.0f};
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, LOGPROX, MASK, ADV, 2, 3, &lc);
    /* r = 0.625 (A 1: 0.625 < 0.8, unclipped), 0.833 and 1.071 (inside the clip), 1.25 (A -2: -2.5 < -2.4,
     * unclipped): the gradient flows on every kept token, with w r = rho */
    double loss = 0;
    for (int i = 0; i < 6; i++) {
        if (!MASK[i] || i == 1) {
            NEAR(coef[i], 0);
            continue;
        }
        NEAR(coef[i], -rho[i] * A[i] / 5);
        double r = rho[i] / w[i], rc = r < 0.8 ? 0.8 : r > 1.2 ? 1.2 : r;
        loss -= w[i] * fmin(r * A[i], rc * A[i]) / 5;
    }
    CU_ASSERT_EQUAL(st.behav_dropped, 1);
    NEAR(st.behav_max, 6);
    NEAR(st.behav_mean, (0.8 + 6 + 1.2 + 1.4 + 2) / 5);
    NEAR(st.clip_frac, 0);
    NEAR(st.loss, loss);
    /* a clip that binds: r = 1.5 with A > 0 gives no gradient */
    float lp2[6];
    memcpy(lp2, logp, sizeof lp2);
    lp2[0] = (float)(LOGPROX[0] + log(1.5));
    rl_token_coeffs(coef, &st, lp2, LOGMU, LOGPROX, MASK, ADV, 2, 3, &lc);
    NEAR(coef[0], 0);
    NEAR(st.clip_frac, 1.0 / 5);
    /* finite differences of the objective */
    rl_token_coeffs(coef, &st, logp, LOGMU, LOGPROX, MASK, ADV, 2, 3, &lc);
    for (int i = 0; i < 6; i++) {
        float lp[6];
        memcpy(lp, logp, sizeof lp);
        double h = 1e-3;
        lp[i] = (float)(logp[i] + h);
        double up = dppo_objective(lp, &lc);
        lp[i] = (float)(logp[i] - h);
        double dn = dppo_objective(lp, &lc);
        CU_ASSERT(fabs((up - dn) / (2 * h) - coef[i]) < 2e-3);
    }
}

/* Interpolated pi_prox: alpha = lag / (lag + 1) per token; a fresh token's pi_prox is mu; the second
 * completion spans versions (lags 3, 3, 1). */
static void test_interpolate_prox(void) {
    float logp[6], lp[6];
    make_logp(logp);
    long lag[6] = {0, 0, 0, 3, 3, 1};
    rl_interpolate_prox(lp, logp, LOGMU, MASK, lag, 2, 3);
    for (int t = 0; t < 3; t++) NEAR(lp[t], MASK[t] != 0 ? LOGMU[t] : 0);
    for (int t = 3; t < 5; t++) NEAR(lp[t], LOGMU[t] + 0.75 * (logp[t] - LOGMU[t]));
    NEAR(lp[5], LOGMU[5] + 0.5 * (logp[5] - LOGMU[5]));
}

/* Every estimator x loss x aggregation against tests/oracle/rl_variants_check.py (PyTorch float64, from
 * the documented formulas; autograd gives dL/dlog pi): random batches of 3 groups x 4 samples (one group
 * without spread, one empty completion, ratios on both sides of every clip edge and past the dual clip,
 * behaviour weights above the cap), the coefficients computed in two micro-batches with the whole
 * batch's denominators (so micro-batching is checked too). */
static void test_variants_against_torch(void) {
    static const struct { const char *name; int adv, scale; } advs[] = {
        {"rloo", RL_ADV_RLOO, RL_SCALE_GROUP}, {"grpo", RL_ADV_GRPO, RL_SCALE_GROUP}, {"grpo", RL_ADV_GRPO, RL_SCALE_BATCH},
        {"grpo", RL_ADV_GRPO, RL_SCALE_NONE}, {"dr_grpo", RL_ADV_DR_GRPO, RL_SCALE_GROUP},
        {"reinforce_pp", RL_ADV_REINFORCE_PP, RL_SCALE_GROUP}};
    static const char *const scale_names[] = {"group", "batch", "none"};
    static const struct { const char *name; int loss; float lo, hi, c; } losses[] = {
        {"tis", RL_LOSS_TIS, 0.2f, 0.2f, 0}, {"ppo_clip", RL_LOSS_PPO_CLIP, 0.2f, 0.28f, 0},
        {"ppo_clip", RL_LOSS_PPO_CLIP, 0.2f, 0.2f, 3.0f}, {"decoupled_ppo", RL_LOSS_DECOUPLED_PPO, 0.2f, 0.2f, 0},
        {"gspo", RL_LOSS_GSPO, 0.1f, 0.15f, 0}, {"cispo", RL_LOSS_CISPO, 0.5f, 0.3f, 0}};
    static const char *const aggs[] = {"token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm"};
    enum { G = 3, K = 4, S = G * K, T = 7 };
    json_t *cases = json_array();
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 2026);
    for (size_t a = 0; a < sizeof advs / sizeof *advs; a++)
        for (size_t l = 0; l < sizeof losses / sizeof *losses; l++)
            for (int g = 0; g < 4; g++) {
                float rewards[S], adv[S], logp[S * T], logmu[S * T], logprox[S * T], mask[S * T], coef[S * T];
                int keep[G], ks[G] = {K, K, K};
                for (int s = 0; s < S; s++) rewards[s] = s < K ? 0.5f : (float)(rlhf_rng_u64(&rng) % 5) / 4.0f;
                rewards[K] = 0.0f, rewards[K + 1] = 1.0f; /* the second group has spread for sure */
                rl_advantages(adv, keep, rewards, ks, G, advs[a].adv, advs[a].scale);
                for (int s = 0; s < S; s++) {
                    int p = 1 + (int)(rlhf_rng_u64(&rng) % 2), len = s == 5 ? 0 : 1 + (int)(rlhf_rng_u64(&rng) % 5);
                    for (int t = 0; t < T; t++) {
                        size_t i = (size_t)s * T + t;
                        mask[i] = t >= p && t < p + len ? 1.0f : 0.0f;
                        logmu[i] = -0.3f - 3.0f * rlhf_rng_uniform(&rng);
                        logp[i] = logmu[i] + (-1.2f + 2.7f * rlhf_rng_uniform(&rng));   /* rho in [0.30, 4.5] */
                        logprox[i] = logmu[i] + (-0.3f + 1.3f * rlhf_rng_uniform(&rng)); /* w in [0.74, 2.7] */
                        if (logp[i] > 0) logp[i] = -1e-3f;
                    }
                }
                long n_tok = 0, n_seq = 0;
                for (int s = 0; s < S; s++) {
                    long nb = 0;
                    for (int t = 0; t < T; t++) nb += mask[(size_t)s * T + t] != 0.0f;
                    n_tok += nb, n_seq += nb > 0;
                }
                rl_loss_config lc = {.loss = losses[l].loss, .is_cap = 2.0f, .clip_low = losses[l].lo,
                                     .clip_high = losses[l].hi, .clip_c = losses[l].c, .behav_cap = 2.0f, .agg = g,
                                     .norm_tokens = (double)n_tok, .norm_seqs = (double)n_seq, .norm_len = 6};
                rl_step_stats st1, st2;
                rl_token_coeffs(coef, &st1, logp, logmu, logprox, mask, adv, 5, T, &lc);
                rl_token_coeffs(coef + 5 * T, &st2, logp + 5 * T, logmu + 5 * T, logprox + 5 * T, mask + 5 * T, adv + 5,
                                S - 5, T, &lc);
                json_t *jr = json_array(), *ja = json_array(), *jk = json_array(), *jkeep = json_array();
                json_t *jp = json_array(), *jm = json_array(), *jx = json_array(), *jmask = json_array(), *jc = json_array();
                for (int s = 0; s < S; s++) json_array_append_new(jr, json_real(rewards[s])), json_array_append_new(ja, json_real(adv[s]));
                for (int q = 0; q < G; q++) json_array_append_new(jk, json_integer(ks[q])), json_array_append_new(jkeep, json_integer(keep[q]));
                for (int i = 0; i < S * T; i++) {
                    json_array_append_new(jp, json_real(logp[i]));
                    json_array_append_new(jm, json_real(logmu[i]));
                    json_array_append_new(jx, json_real(logprox[i]));
                    json_array_append_new(jmask, json_real(mask[i]));
                    json_array_append_new(jc, json_real(coef[i]));
                }
                json_t *cfg = json_pack("{sssssssssfsfsfsfsfsfsfsf}", "advantage", advs[a].name, "scale",
                                        scale_names[advs[a].scale], "loss", losses[l].name, "agg", aggs[g], "clip_low",
                                        (double)losses[l].lo, "clip_high", (double)losses[l].hi, "clip_c", (double)losses[l].c,
                                        "is_cap", 2.0, "behav_cap", 2.0, "N", (double)n_tok, "G", (double)n_seq, "L", 6.0);
                json_array_append_new(cases, json_pack("{sososososisisososososososf}", "cfg", cfg, "rewards", jr, "k", jk,
                                                       "keep", jkeep, "B", S, "T", T, "logp", jp, "logmu", jm,
                                                       "logprox", jx, "mask", jmask, "coef", jc, "adv", ja,
                                                       "loss", st1.loss + st2.loss));
                json_object_set(json_array_get(cases, json_array_size(cases) - 1), "adv_rows", ja);
            }
    char path[] = "/tmp/rlhf_rlvar_XXXXXX.json";
    int fd = mkstemps(path, 5);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT_EQUAL_FATAL(json_dump_file(cases, path, JSON_REAL_PRECISION(17)), 0);
    json_decref(cases);
    char cmd[1200], out[64];
    snprintf(out, sizeof out, "%s.out", path);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/oracle/rl_variants_check.py %s > %s 2>&1", RLHF_SOURCE_ROOT, path, out);
    int rc = system(cmd);
    char *txt = NULL;
    size_t n = 0;
    rlhf_read_file(out, &txt, &n, NULL);
    if (rc != 0 || !txt || !strstr(txt, " 0 disagreements")) fprintf(stderr, "\n%s\n", txt ? txt : "(no output)");
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(txt && strstr(txt, "144 cases, 0 disagreements"));
    free(txt);
    unlink(out);
    unlink(path);
}

/* The KL estimators (values and derivatives by finite differences), the KL term in the loss and the
 * entropy bonus with the aggregation weights, and DAPO's overlong shaping. */
static void test_regularizers(void) {
    double g;
    NEAR(rl_kl_token(1, -1.0, -1.5, &g), 0.5);
    NEAR(g, 1.0);
    NEAR(rl_kl_token(2, -1.0, -1.5, &g), 0.125);
    NEAR(g, 0.5);
    NEAR(rl_kl_token(3, -1.0, -1.5, &g), exp(-0.5) - 1 + 0.5);
    NEAR(g, 1 - exp(-0.5));
    for (int est = 1; est <= 3; est++) {
        double h = 1e-5, up = rl_kl_token(est, -0.7 + h, -1.2, &g), dn = rl_kl_token(est, -0.7 - h, -1.2, &g);
        rl_kl_token(est, -0.7, -1.2, &g);
        CU_ASSERT(fabs((up - dn) / (2 * h) - g) < 1e-6);
        CU_ASSERT(rl_kl_token(3, -0.7, -1.2 + 0.3 * est, &g) >= 0); /* k3 never negative */
    }
    /* in the loss, token_mean over 5 tokens: coef gets beta * g / 5; entropy: dL/dH = -coef / 5 */
    float logp[6], logref[6] = {-1.5f, -1, -9, -1, -1, -1}, ent[6] = {1, 2, 3, 4, 5, 6}, coef[6] = {0}, dent[6];
    make_logp(logp);
    rl_loss_config lc = {.agg = RL_AGG_TOKEN_MEAN, .kl_loss_beta = 0.5f, .kl_estimator = 3, .entropy_coef = 0.01f};
    double kl = 0, added = rl_regularizers(coef, dent, logp, logref, ent, MASK, 2, 3, &lc, &kl);
    double want_kl = 0, want_added = 0;
    for (int i = 0; i < 6; i++) {
        if (!MASK[i]) {
            NEAR(coef[i], 0);
            NEAR(dent[i], 0);
            continue;
        }
        double k = rl_kl_token(3, logp[i], logref[i], &g);
        NEAR(coef[i], 0.5 * g / 5);
        NEAR(dent[i], -0.01 / 5);
        want_kl += k / 5;
        want_added += 0.5 * k / 5 - 0.01 * ent[i] / 5;
    }
    NEAR(kl, want_kl);
    NEAR(added, want_added);
    /* overlong: max_tokens 100, buffer 20: nothing up to 80, -penalty/2 at 90, -penalty at 100 */
    NEAR(rl_overlong_shaping(80, 100, 20, 1.0f), 0);
    NEAR(rl_overlong_shaping(90, 100, 20, 1.0f), -0.5);
    NEAR(rl_overlong_shaping(100, 100, 20, 2.0f), -2.0);
    NEAR(rl_overlong_shaping(100, 100, 0, 2.0f), 0);
}

static void test_kl_penalty(void) {
    float logp[6] = {-1, -2, -3, -0.5f, -0.5f, -0.5f};
    float logref[6] = {-1.5f, -1, -9, -1, -1, -1};
    float kl[2];
    rl_kl_penalty(kl, logp, logref, MASK, 2, 3);
    NEAR(kl[0], 0.5 - 1.0); /* third token masked */
    NEAR(kl[1], 1.5);
}

/* ---------------------------------------------------------------- config */

static const char *BASE =
    "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},"
    "\"rewards\":[{\"type\":\"exact_match\"}]}";

static int parse_with(const char *json, const char *set, rlhf_error *err, run_config *cfg) {
    json_error_t jerr;
    json_t *doc = json_loads(json, 0, &jerr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    int rc = 0;
    if (set) rc = run_config_apply_override(doc, set, err);
    if (!rc) rc = run_config_parse(cfg, doc, "cfg.json", err);
    json_decref(doc);
    return rc;
}

/* model.lora: rl.lr defaults to 10x full fine-tuning's default (written into the resolved config); a
 * given rl.lr stays; without LoRA the default is full fine-tuning's */
static void test_config_lora_lr(void) {
    run_config cfg;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, NULL, &err, &cfg), 0);
    CU_ASSERT_DOUBLE_EQUAL(cfg.lr, 1e-4, 1e-9);
    CU_ASSERT_EQUAL(cfg.lora.rank, 0);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "model.lora={\"rank\":8}", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.lora.rank, 8);
    CU_ASSERT_DOUBLE_EQUAL(cfg.lr, 1e-3, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(json_object_get(cfg.resolved, "rl"), "lr")), 1e-3, 1e-12);
    run_config_free(&cfg);
    const char *with_lr = "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\",\"lora\":{\"rank\":4}},"
                          "\"task\":{\"train\":\"p.jsonl\"},\"rewards\":[{\"type\":\"exact_match\"}],\"rl\":{\"lr\":2e-3}}";
    CU_ASSERT_EQUAL_FATAL(parse_with(with_lr, NULL, &err, &cfg), 0);
    CU_ASSERT_DOUBLE_EQUAL(cfg.lr, 2e-3, 1e-9);
    run_config_free(&cfg);
    /* the example LoRA run of docs/MODEL.md */
    char path[4096];
    CU_ASSERT_EQUAL_FATAL(test_source_path("examples/configs/countdown-lora.json", path, sizeof path), 0);
    json_t *ex = json_load_file(path, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ex);
    CU_ASSERT_EQUAL_FATAL(run_config_parse(&cfg, ex, "countdown-lora.json", &err), 0);
    CU_ASSERT_EQUAL(cfg.lora.rank, 8);
    CU_ASSERT_DOUBLE_EQUAL(cfg.lr, 1e-3, 1e-9);
    run_config_free(&cfg);
    json_decref(ex);
    CU_ASSERT_NOT_EQUAL(parse_with(BASE, "model.lora={\"rank\":8,\"targets\":[\"wq\"]}", &err, &cfg), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "model.lora"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "targets[0]: \"wq\" is not a linear layer"));
}

static void expect_error(const char *set, const char *where, const char *msg_part) {
    rlhf_error err = {0};
    run_config cfg;
    int rc = parse_with(BASE, set, &err, &cfg);
    CU_ASSERT_EQUAL(rc, RLHF_EINVAL);
    if (rc == 0) {
        run_config_free(&cfg);
        return;
    }
    CU_ASSERT_STRING_EQUAL(err.where, where);
    if (!strstr(err.msg, msg_part)) fprintf(stderr, "\n  got '%s: %s'\n", err.where, err.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, msg_part));
}

static void test_config_defaults_and_overrides(void) {
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "rl.lr=0.003", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.max_staleness, 4);
    CU_ASSERT_EQUAL(cfg.k, 8);
    CU_ASSERT_EQUAL(cfg.loss, RL_LOSS_TIS);
    NEAR(cfg.lr, 0.003);
    CU_ASSERT_STRING_EQUAL(cfg.run_dir, "runs/t");
    /* generation defaults: one line (stop "\n", cut), no filters, log q as the behaviour log-prob */
    CU_ASSERT_EQUAL_FATAL(cfg.n_stop, 1);
    CU_ASSERT_STRING_EQUAL(cfg.stop[0], "\n");
    CU_ASSERT_EQUAL(cfg.include_stop, 0);
    CU_ASSERT_EQUAL(cfg.top_k, 0);
    NEAR(cfg.min_p, 0.0);
    CU_ASSERT_EQUAL(cfg.behaviour_logprobs, RUN_BEHAVIOUR_SAMPLING);
    /* the resolved document carries the defaults */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(cfg.resolved, "rl"), "max_staleness")), 4);
    run_config_free(&cfg);
    /* sync mode forces max_staleness 0; a bare word override is a string */
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "mode=sync", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.mode, RUN_MODE_SYNC);
    CU_ASSERT_EQUAL(cfg.max_staleness, 0);
    run_config_free(&cfg);
    /* a task's own stop strings, kept in the text; the filters; the policy's log-probs */
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.stop=[\"</s>\",\"\\n\\n\"]", &err, &cfg), 0);
    CU_ASSERT_EQUAL_FATAL(cfg.n_stop, 2);
    CU_ASSERT_STRING_EQUAL(cfg.stop[0], "</s>");
    CU_ASSERT_STRING_EQUAL(cfg.stop[1], "\n\n");
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.stop=[]", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.n_stop, 0); /* EOS and max_tokens only */
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.include_stop=true", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.include_stop, 1);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.behaviour_logprobs=policy", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.behaviour_logprobs, RUN_BEHAVIOUR_POLICY);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.min_p=0.1", &err, &cfg), 0);
    NEAR(cfg.min_p, 0.1);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.top_k=50", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.top_k, 50);
    CU_ASSERT_EQUAL(cfg.gen_spec.kind, SAMPLER_SPEC_OFF);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.speculative={\"drafter\":\"ngram\",\"gamma\":6}", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.gen_spec.kind, SAMPLER_SPEC_NGRAM);
    CU_ASSERT_EQUAL(cfg.gen_spec.gamma, 6);
    CU_ASSERT_EQUAL(cfg.gen_spec.adaptive, 1);
    run_config_free(&cfg);
}

static void test_config_errors_name_path(void) {
    expect_error("rl.max_staleness=-1", "cfg.json: rl.max_staleness", "must be an integer >= 0");
    expect_error("rl.k=\"eight\"", "--set rl.k", "must be an integer");
    expect_error("rl.colour=3", "cfg.json: rl.colour", "unknown key");
    expect_error("generators.top_p=1.5", "cfg.json: generators.top_p", "in [0.01, 1]");
    expect_error("rl.loss=grpo", "cfg.json: rl.loss", "\"decoupled_ppo\", \"gspo\" or \"cispo\"");
    expect_error("rl.advantage=ppo", "cfg.json: rl.advantage", "\"reinforce_pp\"");
    expect_error("rl.loss_agg=sum", "cfg.json: rl.loss_agg", "\"seq_mean_token_sum_norm\"");
    expect_error("rl.scale_rewards=batch", "cfg.json: rl.scale_rewards", "applies to rl.advantage \"grpo\" only");
    expect_error("rl.clip_ratio_c=0.5", "cfg.json: rl.clip_ratio_c", "must be 0 (off) or above 1");
    expect_error("rl.kl.estimator=k4", "cfg.json: rl.kl.estimator", "\"k3\"");
    expect_error("updaters.hostfile=/etc/hosts", "cfg.json: updaters.hostfile", "updaters.count is 1");
    expect_error("rl.ref_reset_every=5", "cfg.json: rl.ref_reset_every", "rl.kl_beta is 0");
    expect_error("rl.prox=exact", "cfg.json: rl.prox", "\"recompute\" or \"interpolate\"");
    expect_error("rl.ppo_epochs=0", "cfg.json: rl.ppo_epochs", "");
    expect_error("rl.mini_batches=1000", "cfg.json: rl.mini_batches", "samples of a step");
    {   /* generators only on other hosts: async yes, sync (which splits a step among known generators) no */
        rlhf_error err = {0};
        run_config cfg;
        CU_ASSERT_EQUAL(parse_with(BASE, "generators.count=0", &err, &cfg), 0);
        CU_ASSERT_EQUAL(cfg.gen_count, 0);
        run_config_free(&cfg);
        json_t *doc = json_loads(BASE, 0, NULL);
        json_object_set_new(doc, "mode", json_string("sync"));
        char *sync = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        CU_ASSERT_EQUAL(parse_with(sync, "generators.count=0", &err, &cfg), RLHF_EINVAL);
        CU_ASSERT_STRING_EQUAL(err.where, "cfg.json: generators.count");
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "needs mode \"async\""));
        free(sync);
    }
    expect_error("mode=fast", "cfg.json: mode", "async");
    expect_error("updaters.count=0", "cfg.json: updaters.count", "must be an integer in [1, 256]");
    expect_error("task=3", "--set task", "must be an object");
    expect_error("rewards=[]", "cfg.json: rewards", "at least one");
    expect_error("extra=1", "cfg.json: extra", "unknown key");
    expect_error("task.stop=\"\\n\"", "--set task.stop", "must be an array");
    expect_error("task.stop=[\"a\",\"\"]", "cfg.json: task.stop[1]", "must be a non-empty string");
    expect_error("task.stop=[\"a\",3]", "cfg.json: task.stop[1]", "must be a non-empty string");
    expect_error("task.stop=[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\",\"14\","
                 "\"15\",\"16\",\"17\"]",
                 "cfg.json: task.stop", "at most 16");
    expect_error("task.include_stop=1", "--set task.include_stop", "must be true or false");
    expect_error("generators.min_p=1.5", "cfg.json: generators.min_p", "in [0, 1]");
    expect_error("generators.min_p=-0.5", "cfg.json: generators.min_p", "in [0, 1]");
    expect_error("generators.top_k=-1", "cfg.json: generators.top_k", "must be an integer >= 0");
    expect_error("generators.top_k=0.5", "--set generators.top_k", "must be an integer");
    expect_error("generators.behaviour_logprobs=q", "cfg.json: generators.behaviour_logprobs",
                 "\"sampling\" or \"policy\"");
    /* generators.speculative */
    expect_error("generators.speculative.drafter=medusa", "cfg.json: generators.speculative.drafter",
                 "\"off\", \"ngram\" or \"draft\"");
    expect_error("generators.speculative.gamma=0", "cfg.json: generators.speculative.gamma", "");
    expect_error("generators.speculative.gamma=17", "cfg.json: generators.speculative.gamma", "");
    expect_error("generators.speculative.drafter=draft", "cfg.json: generators.speculative.draft_checkpoint",
                 "is needed");
    expect_error("generators.speculative.draft_checkpoint=/d.safetensors", "cfg.json: generators.speculative.draft_checkpoint",
                 "drafter is \"off\"");
    expect_error("generators.speculative.ngram_min=9", "cfg.json: generators.speculative.ngram_min", "ngram_max");
    expect_error("generators.speculative.beam=2", "cfg.json: generators.speculative.beam", "");
    rlhf_error err = {0};
    run_config cfg;
    /* speculative decoding applies no grammar mask: with task.guided it is refused, naming both */
    CU_ASSERT_EQUAL(parse_with("{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},"
                               "\"task\":{\"train\":\"p.jsonl\",\"guided\":{\"regex\":\"[0-9]+\"}},"
                               "\"rewards\":[{\"type\":\"exact_match\"}]}",
                               "generators.speculative.drafter=ngram", &err, &cfg),
                    RLHF_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "cfg.json: generators.speculative.drafter");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "task.guided"));
    CU_ASSERT_EQUAL(parse_with("{\"rewards\":[1]}", NULL, &err, &cfg), RLHF_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "cfg.json: task");
    json_t *empty = json_object();
    CU_ASSERT_EQUAL(run_config_apply_override(empty, "novalue", &err), RLHF_EINVAL);
    json_decref(empty);
}

/* --set values take the type the key has in the config table, not whatever JSON they happen to parse as */
static void test_config_set_typed_by_schema(void) {
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "name=2024", &err, &cfg), 0);
    CU_ASSERT_STRING_EQUAL(cfg.name, "2024");
    CU_ASSERT(json_is_string(json_object_get(cfg.resolved, "name")));
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.eval=true", &err, &cfg), 0);
    CU_ASSERT_STRING_EQUAL(cfg.eval_path, "true");
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "name=\"quoted\"", &err, &cfg), 0);
    CU_ASSERT_STRING_EQUAL(cfg.name, "quoted");
    run_config_free(&cfg);
    /* below a free-form section the value is still JSON when it parses */
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "broker.queue_capacity=3", &err, &cfg), 0);
    CU_ASSERT(json_is_integer(json_object_get(cfg.broker, "queue_capacity")));
    run_config_free(&cfg);
    expect_error("rl.lr=abc", "--set rl.lr", "must be a number, got 'abc'");
    expect_error("rl.k=4.5", "--set rl.k", "must be an integer");
    expect_error("task.include_stop=yes", "--set task.include_stop", "must be true or false");
    expect_error("task.stop=x", "--set task.stop", "must be an array");
    expect_error("rewards={\"a\":1,\"a\":2}", "--set rewards", "must be an array");
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

/* A key given twice in a config file is refused, naming the file and the line. */
static void test_config_duplicate_keys(void) {
    char dir[] = "/tmp/rlhf_cfg_XXXXXX", p[256];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(p, sizeof p, "%s/dup.json", dir);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},\n"
                  " \"rl\":{\"lr\":0.1,\n \"lr\":0.2},\"rewards\":[{\"type\":\"exact_match\"}]}\n");
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL(run_config_load(&cfg, p, NULL, 0, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "dup.json:3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "duplicate"));
    if (!strstr(err.msg, "duplicate")) fprintf(stderr, "\n  got '%s: %s'\n", err.where, err.msg);
    test_remove_tree(dir);
}

/* Relative paths in a config file are relative to its folder; with --set, to the working directory.
 * Either way the resolved config holds them absolute (what --resume from elsewhere needs). */
static void test_config_relative_paths(void) {
    char dir[] = "/tmp/rlhf_cfg_XXXXXX", sub[256], p[512], want[2048], cwd[1024];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof cwd));
    snprintf(sub, sizeof sub, "%s/configs", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0755), 0);
    snprintf(p, sizeof p, "%s/run.json", sub);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"../data/m.safetensors\",\"tokenizer\":\"bytes\"},"
                  "\"task\":{\"train\":\"p.jsonl\",\"eval\":\"/abs/e.jsonl\"},"
                  "\"broker\":{\"dataset\":\"b.jsonl\"},\"rewards\":[{\"type\":\"exact_match\"}]}\n");
    rlhf_error err = {0};
    run_config cfg;
    char *sets[] = {"task.eval=rel/e.jsonl"};
    CU_ASSERT_EQUAL_FATAL(run_config_load(&cfg, p, sets, 1, &err), 0);
    snprintf(want, sizeof want, "%s/data/m.safetensors", dir); /* ".." collapsed: the file named plainly */
    CU_ASSERT_STRING_EQUAL(cfg.base_checkpoint, want);
    snprintf(want, sizeof want, "%s/configs/p.jsonl", dir);
    CU_ASSERT_STRING_EQUAL(cfg.train_path, want);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(cfg.resolved, "task"), "train")), want);
    snprintf(want, sizeof want, "%s/configs/b.jsonl", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg.broker, "dataset")), want);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, "bytes"); /* a name, not a path */
    snprintf(want, sizeof want, "%s/rel/e.jsonl", cwd);
    CU_ASSERT_STRING_EQUAL(cfg.eval_path, want);
    snprintf(want, sizeof want, "%s/runs/t", cwd); /* the default run directory: under the working directory */
    CU_ASSERT_STRING_EQUAL(cfg.run_dir, want);
    run_config_free(&cfg);
    /* a run's config.json from before the rule (launcher section, no "resolved"): working directory */
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},"
                  "\"rewards\":[{\"type\":\"exact_match\"}],\"launcher\":{\"auto_endpoint\":true}}\n");
    CU_ASSERT_EQUAL_FATAL(run_config_load(&cfg, p, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s/p.jsonl", cwd);
    CU_ASSERT_STRING_EQUAL(cfg.train_path, want);
    run_config_free(&cfg);
    /* ".." after a symbolic link means the link target's parent to the kernel: such a path is kept as
     * written, not collapsed to a different file */
    char real_deep[300], link[300];
    snprintf(real_deep, sizeof real_deep, "%s/real", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(real_deep, 0755), 0);
    snprintf(real_deep, sizeof real_deep, "%s/real/deep", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(real_deep, 0755), 0);
    snprintf(link, sizeof link, "%s/ln", sub);
    CU_ASSERT_EQUAL_FATAL(symlink(real_deep, link), 0);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"ln/../m.safetensors\"},"
                  "\"task\":{\"train\":\"./a/./b/../p.jsonl\"},\"rewards\":[{\"type\":\"exact_match\"}]}\n");
    CU_ASSERT_EQUAL_FATAL(run_config_load(&cfg, p, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s/configs/ln/../m.safetensors", dir);
    CU_ASSERT_STRING_EQUAL(cfg.base_checkpoint, want);
    snprintf(want, sizeof want, "%s/configs/a/p.jsonl", dir);
    CU_ASSERT_STRING_EQUAL(cfg.train_path, want);
    run_config_free(&cfg);
    test_remove_tree(dir);
}

/* Reward sources' files resolve like the other paths: a plugin's or reward model's "path", a process
 * command's program when it holds a '/', and a later argument naming a file under the config's
 * folder; a bare program name and other arguments stay as written. Saved so in the resolved config. */
static void test_config_reward_paths(void) {
    char dir[] = "/tmp/rlhf_cfgr_XXXXXX", sub[256], p[512], want[2048];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(sub, sizeof sub, "%s/configs", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0755), 0);
    snprintf(p, sizeof p, "%s/style.py", sub);
    write_file(p, "print()\n");
    snprintf(p, sizeof p, "%s/run.json", sub);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},\"rewards\":["
                  "{\"type\":\"plugin\",\"path\":\"plugins/kw.so\"},"
                  "{\"type\":\"process\",\"command\":[\"python3\",\"style.py\",\"--mode\",\"fast\",\"missing.py\"]},"
                  "{\"type\":\"process\",\"name\":\"p2\",\"command\":[\"./bin/scorer\",\"/abs/x\"]},"
                  "{\"type\":\"plugin\",\"name\":\"abs\",\"path\":\"/opt/r.so\"}]}\n");
    rlhf_error err = {0};
    run_config cfg;
    int rc = run_config_load(&cfg, p, NULL, 0, &err);
    if (rc) fprintf(stderr, "%s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_t *r = json_object_get(cfg.resolved, "rewards");
    snprintf(want, sizeof want, "%s/configs/plugins/kw.so", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(r, 0), "path")), want);
    json_t *cmd = json_object_get(json_array_get(r, 1), "command");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 0)), "python3");
    snprintf(want, sizeof want, "%s/configs/style.py", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 1)), want);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 2)), "--mode");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 3)), "fast");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 4)), "missing.py");
    cmd = json_object_get(json_array_get(r, 2), "command");
    snprintf(want, sizeof want, "%s/configs/./bin/scorer", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 0)), want);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 1)), "/abs/x");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(r, 3), "path")), "/opt/r.so");
    /* cfg.rewards (what the updater builds its pipeline from) is the same resolved array */
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(cfg.rewards, 0), "path")),
                           json_string_value(json_object_get(json_array_get(r, 0), "path")));
    run_config_free(&cfg);
    test_remove_tree(dir);
}

int register_loop_suite(void);
int register_reward_errors_suite(void);
int register_checkpoint_suite(void); /* tests/updater/test_checkpoint.c */
int register_dist_suite(void);       /* tests/updater/test_dist.c */
int register_unscored_suite(void);

int register_suites(void) {
    CU_pSuite s = CU_add_suite("rl_math", NULL, NULL);
    CU_add_test(s, "rloo_hand_computed", test_rloo_hand_computed);
    CU_add_test(s, "tis_truncation", test_tis_truncation);
    CU_add_test(s, "ppo_clip", test_ppo_clip);
    CU_add_test(s, "kl_penalty", test_kl_penalty);
    CU_add_test(s, "decoupled_ppo", test_decoupled_ppo);
    CU_add_test(s, "interpolate_prox", test_interpolate_prox);
    CU_add_test(s, "kl estimators, kl in the loss, entropy bonus, overlong shaping", test_regularizers);
    CU_add_test(s, "every estimator x loss x aggregation against PyTorch", test_variants_against_torch);
    CU_pSuite c = CU_add_suite("run_config", NULL, NULL);
    CU_add_test(c, "defaults_and_overrides", test_config_defaults_and_overrides);
    CU_add_test(c, "errors_name_path", test_config_errors_name_path);
    CU_add_test(c, "set_typed_by_schema", test_config_set_typed_by_schema);
    CU_add_test(c, "duplicate_keys", test_config_duplicate_keys);
    CU_add_test(c, "relative_paths", test_config_relative_paths);
    CU_add_test(c, "reward_paths", test_config_reward_paths);
    CU_add_test(c, "lora_lr_default", test_config_lora_lr);
    return register_loop_suite() || register_reward_errors_suite() || register_checkpoint_suite() ||
           register_dist_suite() || register_unscored_suite();
}
