/* tests/updater/test_loop.c — the updater's step in process, without broker or processes:
 * sampler -> reward pipeline -> session (RLOO + truncated IS + AdamW). Checks that on-policy
 * importance ratios are 1 (the sampler's behaviour log-probs agree with the trainer's), that the
 * reward rises on an easy task, that zero-spread groups are dropped and counted, and that groups
 * older than max_staleness are dropped. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "generator/generator.h"
#include "prompts/prompts.h"
#include "run/run.h"
#include "updater/updater.h"

static char g_dir[64];

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* An easy task a random byte-level model can learn in a few steps: a completion containing a digit. */
static int make_cfg2(run_config *cfg, const char *extra_set, const char *extra_set2);
static int make_cfg(run_config *cfg, const char *extra_set) { return make_cfg2(cfg, extra_set, NULL); }
static int make_cfg2(run_config *cfg, const char *extra_set, const char *extra_set2) {
    char p[256], doc[2048];
    snprintf(p, sizeof p, "%s/prompts.jsonl", g_dir);
    char lines[2048] = "";
    for (int i = 0; i < 16; i++) {
        char l[96];
        snprintf(l, sizeof l, "{\"id\":\"p%d\",\"prompt\":\"q%d:\"}\n", i, i);
        strcat(lines, l);
    }
    if (write_text(p, lines)) return -1;
    snprintf(doc, sizeof doc,
             "{\"name\":\"loop\",\"run_dir\":\"%s/run\","
             "\"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16}},\"task\":{\"train\":\"%s\"},"
             "\"rewards\":[{\"type\":\"regex\",\"pattern\":\"[0-9]\"}],"
             "\"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":30,\"seed\":3},"
             "\"generators\":{\"max_tokens\":4}}",
             g_dir, p);
    json_error_t jerr;
    json_t *j = json_loads(doc, 0, &jerr);
    rlhf_error err = {0};
    if (extra_set) run_config_apply_override(j, extra_set, &err);
    if (extra_set2) run_config_apply_override(j, extra_set2, &err);
    int rc = run_config_parse(cfg, j, "loop.json", &err);
    json_decref(j);
    if (rc) return rc;
    if ((rc = run_prepare_base(cfg, &err))) rlhf_error_print("test", &err);
    return rc;
}

/* The per-layer attention options of model.arch are checked by run_config_parse (before any process
 * starts): a combination the model cannot run is one error naming the key; a good one passes. */
static void test_config_layer_opts(void) {
    static const struct {
        const char *set, *key;
    } cases[] = {
        {"model.arch.kv_share=[-1,-1,1,-1]", "kv_share[2]"},
        {"model.arch.attention_window=0", "attention_window"},
        {"model.arch.attention_window=8", "attention_window"},
        {"model.arch.attention_pattern=[\"local\",\"global\"]", "attention_pattern"},
        {"model.arch.attention_pattern=\"windowed\"", "attention_pattern"},
        {"model.max_seq_len=12", "attention_window"}, /* the cap falls below the window of 14 */
        {NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p[256], doc[2048];
        snprintf(p, sizeof p, "%s/prompts.jsonl", g_dir);
        CU_ASSERT_EQUAL_FATAL(write_text(p, "{\"id\":\"p0\",\"prompt\":\"q0:\"}\n"), 0);
        snprintf(doc, sizeof doc,
                 "{\"name\":\"opts\",\"run_dir\":\"%s/run_opts\","
                 "\"model\":{\"arch\":{\"dim\":32,\"n_layers\":4,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
                 "\"max_seq_len\":16,\"kv_share\":[-1,-1,0,1],\"attention_pattern\":\"1local_1global_nope\","
                 "\"attention_window\":14}},\"task\":{\"train\":\"%s\"},"
                 "\"rewards\":[{\"type\":\"regex\",\"pattern\":\"[0-9]\"}]}",
                 g_dir, p);
        json_error_t jerr;
        json_t *j = json_loads(doc, 0, &jerr);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        rlhf_error err = {0};
        if (cases[i].set) {
            /* the base arch has a local layer 0: drop the pattern for the window-only case */
            if (strstr(cases[i].set, "attention_window=8"))
                json_object_del(json_object_get(json_object_get(j, "model"), "arch"), "attention_pattern");
            CU_ASSERT_EQUAL_FATAL(run_config_apply_override(j, cases[i].set, &err), 0);
        }
        run_config cfg;
        memset(&cfg, 0, sizeof cfg);
        int rc = run_config_parse(&cfg, j, "opts.json", &err);
        json_decref(j);
        if (!cases[i].set) {
            CU_ASSERT_EQUAL(rc, 0);
            if (rc) rlhf_error_print("good layer options", &err);
        } else {
            char all[1200];
            snprintf(all, sizeof all, "%s %s", err.where, err.msg);
            CU_ASSERT_NOT_EQUAL(rc, 0);
            CU_ASSERT_PTR_NOT_NULL(strstr(all, cases[i].key));
            if (!rc || !strstr(all, cases[i].key)) printf("\n  %s: rc %d, \"%s\"\n", cases[i].set, rc, all);
        }
        if (!rc) run_config_free(&cfg);
    }
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_loop_XXXXXX");
    model_set_threads(1); /* a tiny model: threads only add synchronisation on a shared 2-core machine */
    return mkdtemp(g_dir) ? 0 : -1;
}

/* Removes the scratch directory when every check passed (kept for a look otherwise). */
static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) return 0;
    }
    return 0;
}

/* 8 groups of 4 sampled by smp (over the model `pol`: the policy as the generators hold it), scored and
 * offered to the session. */
static void sample_step_with(updater_session *u, model *pol, sampler *smp, tokenizer *tok, prompt_dataset *ds,
                             uint64_t *seq, int *ready) {
    wire_prompt pr[8];
    wire_rollout_group gs[8];
    for (int i = 0; i < 8; i++) {
        const prompt_record *r = prompt_dataset_get(ds, (*seq + (uint64_t)i) % prompt_dataset_size(ds));
        pr[i].id = (char *)r->id;
        pr[i].text = (char *)r->prompt;
        pr[i].record = r->record;
    }
    memset(gs, 0, sizeof gs);
    static const char *const one_line[1] = {"\n"};
    gen_params gp = {.k = 4, .temperature = 1, .top_p = 1, .max_tokens = 4, .seed = 11, .stop = one_line, .n_stop = 1};
    rlhf_error err = {0};
    pol->version = u->ps.version;
    CU_ASSERT_EQUAL_FATAL(generator_sample_groups(pol, smp, tok, pr, 8, &gp, "g", *seq, gs, &err), 0);
    *seq += 8;
    for (int i = 0; i < 8; i++) {
        scored_group *sg = calloc(1, sizeof *sg);
        sg->g = gs[i];
        CU_ASSERT_EQUAL(updater_scorer_score_now(u->sc, sg, &err), 0);
        *ready = updater_session_offer(u, sg);
    }
}

static void sample_step(updater_session *u, sampler *smp, tokenizer *tok, prompt_dataset *ds, uint64_t *seq,
                        int *ready) {
    sample_step_with(u, u->ps.m, smp, tok, ds, seq, ready);
}

/* With model.lora and rl.kl_beta (no rl.ref_reset_every) the reference is the frozen base itself, read
 * without the adapters: no second copy of the model. The KL of the first step is then ~0 while the
 * adapters add nothing (B = 0: the policy is the base) and clearly not 0 once they do — which a reference
 * that included the adapters, or that was not the base, would get the other way round. */
static void test_lora_kl_reference_is_the_base(void) {
    for (int moved = 0; moved <= 1; moved++) {
        run_config cfg;
        CU_ASSERT_EQUAL_FATAL(make_cfg2(&cfg, "rl.kl_beta=0.5", "model.lora={\"rank\":2,\"alpha\":16}"), 0);
        rlhf_error err = {0};
        updater_session u;
        CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(u.ps.lora);
        CU_ASSERT(u.ps.ref == u.ps.m && u.ps.ref_is_base);
        if (moved)
            for (size_t i = 0; i < u.ps.lora->n_params; i++) u.ps.lora->mem[i] += 0.05f * ((float)(i % 7) - 3.0f);
        model *pol = NULL;
        CU_ASSERT_EQUAL_FATAL(model_create(&pol, &u.ps.m->cfg, &err), 0);
        CU_ASSERT_EQUAL_FATAL(model_lora_merge(pol, u.ps.m, u.ps.lora, &err), 0);
        prompt_dataset *ds = NULL;
        CU_ASSERT_EQUAL_FATAL(prompt_dataset_load(&ds, cfg.train_path, &err), 0);
        tokenizer *tok = NULL;
        tokenizer_create_bytes(&tok, 259, &err);
        sampler *smp = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&smp, pol, 32, &err), 0);
        uint64_t seq = 0;
        int ready = 0;
        sample_step_with(&u, pol, smp, tok, ds, &seq, &ready);
        CU_ASSERT_EQUAL_FATAL(ready, 1);
        json_t *m = NULL;
        int src = updater_session_step(&u, &m, &err);
        if (src) fprintf(stderr, "\n  step: %s: %s\n", err.where, err.msg);
        CU_ASSERT_EQUAL_FATAL(src, 0);
        double kl = json_number_value(json_object_get(m, "kl"));
        CU_ASSERT(moved ? fabs(kl) > 1e-2 : fabs(kl) < 1e-4);
        if (moved ? fabs(kl) <= 1e-2 : fabs(kl) >= 1e-4) fprintf(stderr, "\n  adapters moved %d: kl %g\n", moved, kl);
        json_decref(m);
        sampler_destroy(&smp);
        tokenizer_destroy(&tok);
        prompt_dataset_destroy(&ds);
        model_destroy(&pol);
        updater_session_fini(&u);
        run_config_free(&cfg);
    }
}

/* consumed.log on a full filesystem (a 4 KiB tmpfs): every append either lands whole or is cut back off
 * (no torn line for the next append to run into), and the next step stops with "No space left on device"
 * naming the file instead of letting a checkpoint pass a group the audit trail lacks. */
static void test_consumed_log_disk_full(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, NULL), 0);
    rlhf_error err = {0};
    updater_session u;
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    char fs[300], path[400];
    snprintf(fs, sizeof fs, "%s/tinyfs", g_dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(fs, 0700) == 0 || errno == EEXIST, 1);
    if (mount("tmpfs", fs, "tmpfs", 0, "size=4k") != 0) {
        fprintf(stderr, "\n  cannot mount a tmpfs at %s: %s\n", fs, strerror(errno));
        CU_FAIL_FATAL("mount");
    }
    snprintf(path, sizeof path, "%s/consumed.log", fs);
    u.consumed_log = fopen(path, "a");
    CU_ASSERT_PTR_NOT_NULL_FATAL(u.consumed_log);
    scored_group sg;
    memset(&sg, 0, sizeof sg);
    char gid[64];
    memset(gid, 'g', 40);
    gid[40] = 0;
    sg.g.generator_id = gid;
    int n = 0;
    for (; n < 1000 && !u.consumed_log_err.code; n++) { /* ~55-byte lines into 4 KiB */
        sg.g.seq = (uint64_t)n;
        updater_session_mark_consumed(&u, &sg);
    }
    CU_ASSERT(u.consumed_log_err.code != 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(u.consumed_log_err.msg, "No space left on device"));
    CU_ASSERT_PTR_NOT_NULL(strstr(u.consumed_log_err.where, "consumed.log"));
    fclose(u.consumed_log);
    u.consumed_log = NULL;
    /* whole lines only: the last append that did not fit left nothing behind */
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[256];
    int lines = 0, whole = 1;
    while (fgets(line, sizeof line, f)) {
        char g2[64], extra[8];
        unsigned long long seq;
        long step;
        whole &= strchr(line, '\n') != NULL && sscanf(line, "%63s %llu %ld %7s", g2, &seq, &step, extra) == 3 &&
                 seq == (unsigned long long)lines;
        lines++;
    }
    fclose(f);
    CU_ASSERT(whole);
    CU_ASSERT(lines > 10 && lines == n - 1); /* every append before the failing one, in order */
    umount2(fs, MNT_DETACH);
    json_t *m = NULL;
    rlhf_error_clear(&err);
    CU_ASSERT(updater_session_step(&u, &m, &err) != 0);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_ENV);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "consumed.log"));
    updater_session_fini(&u);
    run_config_free(&cfg);
}

static void test_reward_rises_in_process(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, NULL), 0);
    rlhf_error err = {0};
    updater_session u;
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    prompt_dataset *ds = NULL;
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load(&ds, cfg.train_path, &err), 0);
    tokenizer *tok = NULL;
    tokenizer_create_bytes(&tok, 259, &err);
    sampler *smp = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&smp, u.ps.m, 32, &err), 0);
    uint64_t seq = 0;
    double first3 = 0, last3 = 0;
    long zero_var = 0;
    for (int step = 0; step < 24; step++) {
        int ready = 0;
        sample_step(&u, smp, tok, ds, &seq, &ready);
        CU_ASSERT_EQUAL_FATAL(ready, 1);
        json_t *m = NULL;
        CU_ASSERT_EQUAL_FATAL(updater_session_step(&u, &m, &err), 0);
        double r = json_number_value(json_object_get(m, "reward/mean"));
        zero_var += json_integer_value(json_object_get(m, "groups/dropped_zero_var"));
        if (json_integer_value(json_object_get(m, "groups/kept")) > 0) {
            /* on-policy: behaviour log-probs (sampler, KV cache) match the trainer's to float rounding */
            double rm = json_number_value(json_object_get(m, "is_ratio/mean"));
            CU_ASSERT(fabs(rm - 1.0) < 1e-3);
        }
        if (step < 3) first3 += r / 3;
        if (step >= 21) last3 += r / 3;
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "step")), step + 1);
        json_decref(m);
    }
    CU_ASSERT(last3 > first3 + 0.4);
    CU_ASSERT(last3 > 0.8);
    /* groups that all contain a digit have no spread: some are dropped by the end, and counted */
    CU_ASSERT(zero_var > 0);
    CU_ASSERT_EQUAL(u.ps.groups_dropped_zero_var, zero_var);
    CU_ASSERT_EQUAL(u.ps.version, 24);
    sampler_destroy(&smp);
    tokenizer_destroy(&tok);
    prompt_dataset_destroy(&ds);
    updater_session_fini(&u);
    run_config_free(&cfg);
}

/* The reward sources see a completion as a C string of valid UTF-8: a NUL byte the model sampled must
 * not cut it short (which would score "3+3\0junk" as "3+3"), and it and an invalid byte arrive as U+FFFD. */
/* With rl.kl_beta > 0 the penalty is part of the reward before the baseline (a KL-shaped reward), so
 * a group whose task rewards are all equal is still trained on: the penalty differs between its
 * samples. Every group here has task reward 0 (a pattern no completion matches); with the penalty the
 * step trains all 8 and the weights move; without it all 8 are dropped for zero spread. */
static void test_kl_acts_in_equal_reward_groups(void) {
    for (int with_kl = 1; with_kl >= 0; with_kl--) {
        run_config cfg;
        CU_ASSERT_EQUAL_FATAL(make_cfg2(&cfg, with_kl ? "rl.kl_beta=0.5" : NULL,
                                        "rewards=[{\"type\":\"regex\",\"pattern\":\"^NEVER$\"}]"), 0);
        rlhf_error err = {0};
        updater_session u;
        CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
        prompt_dataset *ds = NULL;
        CU_ASSERT_EQUAL_FATAL(prompt_dataset_load(&ds, cfg.train_path, &err), 0);
        tokenizer *tok = NULL;
        tokenizer_create_bytes(&tok, 259, &err);
        sampler *smp = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&smp, u.ps.m, 32, &err), 0);
        /* the policy moves away from the reference first, so the penalty has something to measure */
        for (size_t i = 0; i < u.ps.m->n_params; i++) u.ps.m->params_mem[i] *= 1.5f;
        float *before = malloc(u.ps.m->n_params * sizeof(float));
        memcpy(before, u.ps.m->params_mem, u.ps.m->n_params * sizeof(float));
        uint64_t seq = 0;
        int ready = 0;
        sample_step(&u, smp, tok, ds, &seq, &ready);
        CU_ASSERT_EQUAL_FATAL(ready, 1);
        json_t *m = NULL;
        CU_ASSERT_EQUAL_FATAL(updater_session_step(&u, &m, &err), 0);
        CU_ASSERT_EQUAL(json_number_value(json_object_get(m, "reward/mean")), 0.0);
        double moved = 0;
        for (size_t i = 0; i < u.ps.m->n_params; i++) moved = fmax(moved, fabs(u.ps.m->params_mem[i] - before[i]));
        if (with_kl) {
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "groups/kept")), 8);
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "groups/dropped_zero_var")), 0);
            CU_ASSERT(json_number_value(json_object_get(m, "kl")) != 0.0);
            CU_ASSERT(moved > 0);
        } else {
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "groups/kept")), 0);
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "groups/dropped_zero_var")), 8);
            CU_ASSERT_EQUAL(moved, 0);
        }
        json_decref(m);
        free(before);
        sampler_destroy(&smp);
        tokenizer_destroy(&tok);
        prompt_dataset_destroy(&ds);
        updater_session_fini(&u);
        run_config_free(&cfg);
    }
}

/* The learning-rate schedule follows the RL steps: after steps that trained nothing (no group had
 * spread) the first update is at its step's place in the warmup, not at the warmup's start. */
static void test_schedule_counts_steps(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "rl.warmup_steps=4"), 0);
    rlhf_error err = {0};
    updater_session u;
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    prompt_dataset *ds = NULL;
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load(&ds, cfg.train_path, &err), 0);
    tokenizer *tok = NULL;
    tokenizer_create_bytes(&tok, 259, &err);
    sampler *smp = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&smp, u.ps.m, 32, &err), 0);
    u.ps.step = 2; /* two steps went by with nothing to train */
    uint64_t seq = 0;
    json_t *m = NULL;
    for (int tries = 0; tries < 10; tries++) { /* until a step trains (some group has spread) */
        int ready = 0;
        sample_step(&u, smp, tok, ds, &seq, &ready);
        CU_ASSERT_EQUAL_FATAL(ready, 1);
        long before = u.ps.step;
        CU_ASSERT_EQUAL_FATAL(updater_session_step(&u, &m, &err), 0);
        if (json_integer_value(json_object_get(m, "groups/kept")) > 0) {
            adamw_config ac = *adamw_get_config(u.ps.opt);
            CU_ASSERT(fabs(json_number_value(json_object_get(m, "lr")) - adamw_lr_at(&ac, before)) < 1e-9);
            CU_ASSERT(fabs(json_number_value(json_object_get(m, "lr")) - 0.01 * (before + 1) / 4) < 1e-7);
            json_decref(m);
            m = NULL;
            break;
        }
        json_decref(m);
        m = NULL;
    }
    CU_ASSERT_EQUAL(adamw_get_step(u.ps.opt), 1); /* Adam's own count: the updates taken */
    sampler_destroy(&smp);
    tokenizer_destroy(&tok);
    prompt_dataset_destroy(&ds);
    updater_session_fini(&u);
    run_config_free(&cfg);
}

static void test_nul_and_invalid_bytes_reach_rewards(void) {
    json_t *rewards = json_loads("[{\"type\":\"exact_match\",\"extract\":\"full\"}]", 0, NULL);
    scorer *sc = NULL;
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 259, &err), 0);
    CU_ASSERT_EQUAL_FATAL(updater_scorer_create(&sc, rewards, "rewards", 1, tok, &err), 0);
    static const char *const samples[3] = {"3+3\0junk", "3+3", "3+3\xffjunk"};
    static const int lens[3] = {8, 3, 8};
    scored_group *sg = calloc(1, sizeof *sg);
    wire_rollout_group *g = &sg->g;
    g->prompt_id = strdup("p");
    g->prompt_text = strdup("q:");
    g->generator_id = strdup("test");
    g->prompt_record = json_pack("{s:s}", "answer", "3+3\xEF\xBF\xBDjunk"); /* U+FFFD in the middle */
    g->k = 3;
    g->n_tokens = calloc(3, sizeof *g->n_tokens);
    g->tokens = calloc(19, sizeof *g->tokens);
    g->logprobs = calloc(19, sizeof *g->logprobs);
    g->finish = calloc(3, 1);
    int off = 0;
    for (int i = 0; i < 3; i++) {
        g->n_tokens[i] = (uint32_t)lens[i];
        for (int t = 0; t < lens[i]; t++) g->tokens[off++] = (unsigned char)samples[i][t];
    }
    CU_ASSERT_EQUAL_FATAL(updater_scorer_score_now(sc, sg, &err), 0);
    CU_ASSERT_EQUAL(sg->n_sources, 1);
    CU_ASSERT_DOUBLE_EQUAL(sg->src[0], 1, 1e-9); /* whole completion, NUL as U+FFFD */
    CU_ASSERT_DOUBLE_EQUAL(sg->src[1], 0, 1e-9); /* the prefix alone is not the answer */
    CU_ASSERT_DOUBLE_EQUAL(sg->src[2], 1, 1e-9); /* an invalid byte likewise */
    updater_scored_group_free(sg);
    updater_scorer_destroy(&sc);
    tokenizer_destroy(&tok);
    json_decref(rewards);
}

static void test_stale_groups_dropped(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "rl.max_staleness=1"), 0);
    rlhf_error err = {0};
    updater_session u;
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    u.ps.version = 5;
    /* versions 3, 4, 5: lags 2 (dropped), 1 and 0 (kept) */
    for (int v = 3; v <= 5; v++) {
        scored_group *sg = calloc(1, sizeof *sg);
        sg->g.k = 2;
        sg->g.policy_version = (uint64_t)v;
        sg->g.generator_id = strdup("g");
        sg->g.seq = (uint64_t)v;
        sg->n_sources = 1;
        sg->total = calloc(2, sizeof(float));
        sg->src = calloc(2, sizeof(float));
        CU_ASSERT_EQUAL(updater_session_offer(&u, sg), 0);
    }
    CU_ASSERT_EQUAL(u.ps.groups_dropped_stale, 1);
    CU_ASSERT_EQUAL(u.n_window, 2);
    CU_ASSERT_EQUAL(u.ps.groups_total, 3);
    /* the finished (dropped) group is recorded as consumed */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(u.consumed, "g")), 3);
    updater_session_fini(&u);
    run_config_free(&cfg);
}

/* A group carrying a token id the model does not have (259 here), written into a replay log and read back
 * the way a restarted updater recovers (replay_reader -> scorer), and scored the way `rlhf replay` does
 * (score_now): skipped and counted every time, never scored or trained; the good group beside it is. */
static wire_rollout_group token_group(uint64_t seq, int32_t last_token) {
    wire_rollout_group g;
    memset(&g, 0, sizeof g);
    g.prompt_id = strdup("p1");
    g.prompt_text = strdup("q1:");
    g.generator_id = strdup("g");
    g.seq = seq;
    g.k = 2;
    g.n_prompt_tokens = 3;
    g.prompt_tokens = malloc(3 * sizeof(int32_t));
    for (int i = 0; i < 3; i++) g.prompt_tokens[i] = 'q' + i;
    g.n_tokens = malloc(2 * sizeof(uint32_t));
    g.n_tokens[0] = g.n_tokens[1] = 2;
    g.finish = calloc(2, 1);
    g.tokens = malloc(4 * sizeof(int32_t));
    g.logprobs = malloc(4 * sizeof(float));
    for (int i = 0; i < 4; i++) {
        g.tokens[i] = '1' + i;
        g.logprobs[i] = -1.0f;
    }
    g.tokens[3] = last_token;
    return g;
}

static void test_bad_token_groups_skipped(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, NULL), 0);
    rlhf_error err = {0};
    updater_session u;
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 1, &err), 0);
    char log[128];
    snprintf(log, sizeof log, "%s/bad_tokens.log", g_dir);
    replay_writer *w = NULL;
    replay_writer_opts o = {BROKER_FSYNC_NEVER, 1, 0};
    CU_ASSERT_EQUAL_FATAL(replay_writer_open(&w, log, &o, NULL, NULL, &err), 0);
    int32_t bad_ids[3] = {259, 1000000, -1};
    for (int i = 0; i < 4; i++) {
        wire_rollout_group g = token_group((uint64_t)i, i < 3 ? bad_ids[i] : '9');
        CU_ASSERT_EQUAL(replay_writer_append_group(w, &g, NULL, &err), 0);
        wire_rollout_group_free(&g);
    }
    CU_ASSERT_EQUAL(replay_writer_close(&w, &err), 0);
    /* recovery: every record read back goes to the scorer threads */
    replay_reader *r = NULL;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&r, log, &err), 0);
    int submitted = 0;
    for (;;) {
        scored_group *sg = calloc(1, sizeof *sg);
        replay_pos pos;
        if (replay_reader_next(r, &sg->g, &pos, &err) != 1) {
            free(sg);
            break;
        }
        updater_scorer_submit(u.sc, sg);
        submitted++;
    }
    replay_reader_close(&r);
    CU_ASSERT_EQUAL(submitted, 4);
    int bad = 0, good = 0;
    for (int i = 0; i < submitted; i++) {
        scored_group *sg = updater_scorer_take(u.sc, 30.0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(sg);
        if (sg->g.seq < 3) {
            bad += sg->bad_tokens && sg->skipped && !sg->total; /* not scored */
        } else {
            good += !sg->bad_tokens && !sg->skipped && sg->total != NULL;
        }
        updater_session_offer(&u, sg);
    }
    CU_ASSERT_EQUAL(bad, 3);
    CU_ASSERT_EQUAL(good, 1);
    CU_ASSERT_EQUAL(u.bad_tokens_total, 3);
    CU_ASSERT_EQUAL(u.n_window, 1); /* only the good group waits for training */
    /* `rlhf replay` scores in place: the same refusal, as an error naming the group */
    scored_group *sg = calloc(1, sizeof *sg);
    sg->g = token_group(9, 259);
    CU_ASSERT_EQUAL(updater_scorer_score_now(u.sc, sg, &err), RLHF_ECORRUPT);
    CU_ASSERT_TRUE(sg->skipped && sg->bad_tokens);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "outside the vocabulary [0, 259)"));
    updater_session_offer(&u, sg);
    CU_ASSERT_EQUAL(u.bad_tokens_total, 4);
    updater_session_fini(&u);
    run_config_free(&cfg);
}

int register_loop_suite(void) {
    CU_pSuite s = CU_add_suite("run_config_layer_opts", suite_init, suite_cleanup);
    CU_add_test(s, "model.arch kv_share/attention_pattern/attention_window checked at config parse, naming the key",
                test_config_layer_opts);
    s = CU_add_suite("updater_loop", suite_init, suite_cleanup);
    CU_add_test(s, "reward_rises_in_process", test_reward_rises_in_process);
    CU_add_test(s, "stale_groups_dropped", test_stale_groups_dropped);
    CU_add_test(s, "kl penalty acts in groups of equal task rewards", test_kl_acts_in_equal_reward_groups);
    CU_add_test(s, "consumed.log on a full disk: whole lines only, the next step stops naming it",
                test_consumed_log_disk_full);
    CU_add_test(s, "model.lora + kl_beta: the reference is the frozen base itself, without the adapters",
                test_lora_kl_reference_is_the_base);
    CU_add_test(s, "the lr schedule follows the RL steps, not the updates taken", test_schedule_counts_steps);
    CU_add_test(s, "nul_and_invalid_bytes_reach_rewards", test_nul_and_invalid_bytes_reach_rewards);
    CU_add_test(s, "bad_token_groups_skipped (recovery and replay)", test_bad_token_groups_skipped);
    return 0;
}
