/* tests/e2e/test_rl_recipes.c — the RL recipes users run (docs/RL.md), each as a real run of the easy
 * task: RLOO + TIS, GRPO + PPO-clip, Dr. GRPO (its aggregation), DAPO (clip-higher, token mean,
 * overlong shaping), GSPO, CISPO, REINFORCE++, RLOO with 2 PPO epochs x 2 mini-batches, decoupled PPO
 * (interpolated), and the KL term in the loss (k3) with an entropy bonus and reference resets. Each
 * run reaches its last step with a finite loss at every step and the metrics of its variant. (Which
 * recipe learns fastest is bench/, not a test.) */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tests/e2e/e2e_util.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];

static int suite_init(void) { return e2e_suite_dir("recipes", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf); }

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

static void test_recipes(void) {
    static const struct {
        const char *name, *rl, *metric; /* metric: a key every step of this recipe logs (NULL: none special) */
    } recipes[] = {
        {"rloo_tis", "", NULL},
        {"grpo", "\"advantage\":\"grpo\",\"loss\":\"ppo_clip\",\"loss_agg\":\"seq_mean_token_mean\",", NULL},
        {"dr_grpo", "\"advantage\":\"dr_grpo\",\"loss\":\"ppo_clip\",\"loss_agg\":\"seq_mean_token_sum_norm\",", NULL},
        {"dapo", "\"advantage\":\"grpo\",\"loss\":\"ppo_clip\",\"clip_eps_low\":0.2,\"clip_eps_high\":0.28,"
                 "\"overlong\":{\"buffer\":2,\"penalty\":0.5},", "rewards/overlong_shaped"},
        {"gspo", "\"loss\":\"gspo\",\"clip_eps_low\":0.0003,\"clip_eps_high\":0.0004,", NULL},
        {"cispo", "\"loss\":\"cispo\",\"clip_eps_high\":2.0,", NULL},
        {"reinforce_pp", "\"advantage\":\"reinforce_pp\",", NULL},
        {"ppo_epochs", "\"loss\":\"ppo_clip\",\"ppo_epochs\":2,\"mini_batches\":2,", "ppo/epoch_2/clip_frac"},
        {"decoupled", "\"loss\":\"decoupled_ppo\",\"prox\":\"interpolate\",\"ppo_epochs\":2,", "behav_weight/mean"},
        {"kl_in_loss", "\"kl_beta\":0.05,\"kl\":{\"estimator\":\"k3\",\"in\":\"loss\"},\"entropy_coef\":0.01,"
                       "\"ref_reset_every\":3,", "kl/loss_term"},
    };
    for (size_t r = 0; r < sizeof recipes / sizeof *recipes; r++) {
        char cfg[256], out[256], doc[2048], m[300];
        snprintf(cfg, sizeof cfg, "%s/%s.json", g_dir, recipes[r].name);
        snprintf(out, sizeof out, "%s/%s.out", g_dir, recipes[r].name);
        snprintf(doc, sizeof doc,
                 "{\"name\":\"%s\",\"run_dir\":\"%s\",\n"
                 " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
                 "\"max_seq_len\":16},\"threads\":1},\n"
                 " \"task\":{\"train\":\"prompts.jsonl\"},\n"
                 " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
                 " \"rl\":{%s\"k\":4,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":6,\"checkpoint_every\":6,\"seed\":9},\n"
                 " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
                 recipes[r].name, recipes[r].name, recipes[r].rl);
        CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
        test_proc_opts o = {.out = out, .err = out};
        const char *a[] = {"run", cfg, "--quiet", NULL};
        int rc = test_proc_run_args(g_rlhf, g_rlhf, a, &o, 120);
        CU_ASSERT_EQUAL(rc, 0);
        snprintf(m, sizeof m, "%s/%s/metrics.jsonl", g_dir, recipes[r].name);
        char *txt = e2e_slurp(m);
        int steps = 0, finite = 1, has_metric = 1;
        char *save = NULL;
        for (char *l = txt ? strtok_r(txt, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
            json_t *j = json_loads(l, 0, NULL);
            steps++;
            json_t *loss = json_object_get(j, "loss");
            if (loss && !isfinite(json_number_value(loss))) finite = 0;
            /* steps that trained log the variant's metric (a step whose groups had no spread trains nothing) */
            if (recipes[r].metric && json_integer_value(json_object_get(j, "groups/kept")) > 0 &&
                !json_object_get(j, recipes[r].metric))
                has_metric = 0;
            json_decref(j);
        }
        free(txt);
        if (rc != 0 || steps != 6 || !finite || !has_metric)
            fprintf(stderr, "\nrecipe %s: exit %d, %d steps, finite %d, %s logged %d\n", recipes[r].name, rc, steps,
                    finite, recipes[r].metric ? recipes[r].metric : "-", has_metric);
        CU_ASSERT_EQUAL(steps, 6);
        CU_ASSERT(finite);
        CU_ASSERT(has_metric);
    }
}

void e2e_register_rl_recipes(void);
void e2e_register_rl_recipes(void) {
    CU_pSuite s = CU_add_suite("e2e_rl_recipes", suite_init, suite_cleanup);
    CU_add_test(s, "every recipe trains the easy task to its last step", test_recipes);
}
