/* cli/eval.c — `rlhf eval --config CONFIG [--checkpoint MODEL.safetensors] [--n N]
 * [--samples S] [--temperature T] [--top-p P] [--top-k K] [--min-p M] [--data FILE]`: held-out pass
 * rate of a checkpoint.
 *
 * Samples S completions (greedy by default; the sampling filters are off unless given: the
 * generators' settings are not inherited) for the first N prompts of task.eval (or --data), ending
 * them by the task's rules (EOS, task.stop, task.include_stop, generators.max_tokens), scores the
 * texts with the run's reward pipeline, and prints one JSON line:
 *   {"checkpoint": ..., "prompts": N, "samples": S, "pass_rate": ..., "reward_mean": ...}
 * A sample passes when the first reward source (the task's check) gives its full score (>= 1). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "generator/generator.h"
#include "prompts/prompts.h"
#include "run/run.h"
#include "updater/updater.h"

static const char usage[] =
    "usage: rlhf eval --config CONFIG [--checkpoint MODEL.safetensors] [--data FILE] [--n N]\n"
    "                 [--samples S] [--temperature T] [--top-p P] [--top-k K] [--min-p M] [--threads N]\n"
    "  --temperature T   0 = greedy (default)\n"
    "  --top-p P         nucleus mass in (0, 1] (default 1 = off)\n"
    "  --top-k K         0 = off (default)\n"
    "  --min-p M         in [0, 1]: keep tokens with p >= M * max p (default 0 = off)\n"
    "Completions end as the config's task says (EOS, task.stop, task.include_stop) or after\n"
    "generators.max_tokens tokens.\n";

int cmd_eval(int argc, char **argv) {
    const char *config_path = NULL, *ckpt = NULL, *data = NULL;
    int n = 0, samples = 1, threads = 0, top_k = 0;
    float temperature = 0.0f, top_p = 1.0f, min_p = 0.0f;
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &config_path), RLHF_OPT("--checkpoint", RLHF_OPT_STR, &ckpt),
                             RLHF_OPT("--data", RLHF_OPT_STR, &data),          RLHF_OPT("--n", RLHF_OPT_INT, &n),
                             RLHF_OPT("--samples", RLHF_OPT_INT, &samples),    RLHF_OPT("--threads", RLHF_OPT_INT, &threads),
                             RLHF_OPT("--temperature", RLHF_OPT_FLOAT, &temperature),
                             RLHF_OPT_RANGE("--top-p", RLHF_OPT_FLOAT, &top_p, 1e-9, 1.0),
                             RLHF_OPT_RANGE("--top-k", RLHF_OPT_INT, &top_k, 0, 1 << 30),
                             RLHF_OPT_RANGE("--min-p", RLHF_OPT_FLOAT, &min_p, 0.0, 1.0),
                             RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf eval", usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (!config_path || samples < 1 || n < 0 || temperature < 0) {
        fprintf(stderr, "rlhf eval: error: %s\n%s",
                !config_path ? "missing --config" : "--samples must be >= 1, --n and --temperature >= 0", usage);
        return 2;
    }
    rlhf_error err = {0};
    run_config cfg;
    if (run_config_load(&cfg, config_path, NULL, 0, &err)) {
        rlhf_error_print("rlhf eval", &err);
        return 2;
    }
    model_set_threads(threads);
    if (!data) data = cfg.eval_path[0] ? cfg.eval_path : cfg.train_path;
    if (!n) n = cfg.eval_prompts;
    if (ckpt) snprintf(cfg.base_checkpoint, sizeof cfg.base_checkpoint, "%s", ckpt);
    prompt_dataset *ds = NULL;
    model *m = NULL;
    tokenizer *tok = NULL;
    sampler *smp = NULL;
    scorer *sc = NULL;
    int rc = 0;
    if ((rc = prompt_dataset_load(&ds, data, &err))) goto out;
    if ((rc = run_load_base(&cfg, &m, &err))) goto out;
    if ((rc = run_load_tokenizer(&cfg, m, &tok, &err))) goto out;
    int N = (int)prompt_dataset_size(ds);
    if (n > 0 && n < N) N = n;
    int batch = 32;
    if ((rc = sampler_create(&smp, m, batch * samples > 256 ? 256 : batch * samples, &err))) goto out;
    if ((rc = updater_scorer_create(&sc, cfg.rewards, "rewards", 1, tok, &err))) goto out;
    gen_params gp;
    generator_params_from_config(&cfg, &gp); /* the task's stop rules and max_tokens */
    gp.k = samples;
    gp.temperature = temperature;
    gp.top_p = top_p;
    gp.top_k = top_k;
    gp.min_p = min_p;
    gp.seed = cfg.seed + 424242;
    long total = 0, pass = 0;
    double rsum = 0;
    double t0 = rlhf_now();
    for (int i0 = 0; i0 < N && !rc; i0 += batch) {
        int b = N - i0 < batch ? N - i0 : batch;
        wire_prompt *pr = calloc((size_t)b, sizeof *pr);
        for (int i = 0; i < b; i++) {
            const prompt_record *r = prompt_dataset_get(ds, (size_t)(i0 + i));
            pr[i].id = (char *)r->id;
            pr[i].text = (char *)r->prompt;
            pr[i].index = (uint64_t)(i0 + i);
            pr[i].record = r->record;
        }
        wire_rollout_group *gs = calloc((size_t)b, sizeof *gs);
        rc = generator_sample_groups(m, smp, tok, pr, b, &gp, "eval", (uint64_t)i0, gs, &err);
        scored_group *sgs = calloc((size_t)b, sizeof *sgs);
        scored_group **ps = calloc((size_t)b, sizeof *ps);
        for (int i = 0; i < b; i++) {
            sgs[i].g = gs[i];
            ps[i] = &sgs[i];
        }
        if (!rc) rc = updater_scorer_score_batch_now(sc, ps, b, &err);
        for (int i = 0; i < b; i++) {
            for (int j = 0; j < samples && !rc; j++) {
                total++;
                rsum += sgs[i].total[j];
                if (!isnan(sgs[i].src[j]) && sgs[i].src[j] >= 1.0f - 1e-6f) pass++;
            }
            free(sgs[i].src);
            free(sgs[i].total);
            free(sgs[i].src_errors);
        }
        free(sgs);
        free(ps);
        for (int i = 0; i < b; i++) wire_rollout_group_free(&gs[i]);
        free(gs);
        free(pr);
    }
    if (!rc) {
        json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:f, s:f, s:f}", "checkpoint", cfg.base_checkpoint, "data", data,
                              "prompts", N, "samples", samples, "pass_rate", total ? (double)pass / total : 0.0,
                              "reward_mean", total ? rsum / total : 0.0, "seconds", rlhf_now() - t0);
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        printf("%s\n", s);
        free(s);
        json_decref(o);
    }
out:
    if (rc) rlhf_error_print("rlhf eval", &err);
    updater_scorer_destroy(&sc);
    sampler_destroy(&smp);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    prompt_dataset_destroy(&ds);
    run_config_free(&cfg);
    return rc ? 1 : 0;
}
