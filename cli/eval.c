/* cli/eval.c — `rlhf eval RUN_DIR | --config CONFIG [--checkpoint base|latest|N|PATH] [--split eval|train]
 * [--data FILE] [--n N] [--samples S] [--temperature T] [--top-p P] [--top-k K] [--min-p M]`: held-out
 * pass rate of a checkpoint of a run.
 *
 * The checkpoint is the run's latest by default (RUN_DIR/checkpoints/latest); `base` is the run's base
 * model, N the run's step_N, anything else a model file or Hugging Face directory. The prompts are
 * task.eval's, and a config without one is an error rather than a quiet switch to the training
 * prompts: `--split train` asks for those, `--data FILE` names any file.
 *
 * Samples S completions (greedy by default; the sampling filters are off unless given: the
 * generators' settings are not inherited) for the first N prompts, ending them by the task's rules
 * (EOS, task.stop, task.include_stop, generators.max_tokens), scores the texts with the run's reward
 * pipeline, and prints one JSON line:
 *   {"checkpoint": ..., "data": ..., "prompts": N, "samples": S, "pass_rate": ..., "reward_mean": ...}
 * A sample passes when the first reward source (the task's check) gives its full score (>= 1).
 *
 * `--record` (what the launcher runs for eval.every): evaluates checkpoint N of RUN_DIR exactly as the
 * run's "eval" section says (eval.samples, eval.temperature, task.eval_prompts of task.eval; the
 * options that would change that are refused, so every recorded figure is comparable) and records it
 * (updater_checkpoint_record_eval): step_N/eval.json, a line of RUN_DIR/eval.jsonl, and
 * RUN_DIR/checkpoints/best. `--checkpoint best` then names that checkpoint. The record also holds the
 * greedy figure (pass_rate_greedy, reward_mean_greedy: one completion per prompt at temperature 0) and
 * the sampled one (pass_rate_sampled, reward_mean_sampled: eval.sampled_samples completions at
 * eval.sampled_temperature; absent when eval.sampled_samples is 0); a figure that is the configured
 * evaluation itself is not computed twice. The updater copies them into metrics.jsonl
 * (eval/pass_rate_greedy, ...) and the launcher into the TensorBoard event file. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generator/generator.h"
#include "prompts/prompts.h"
#include "run/run.h"
#include "updater/updater.h"

static const char usage[] =
    "usage: rlhf eval RUN_DIR [--checkpoint base|latest|best|N|PATH] [--split eval|train] [--data FILE] [--n N]\n"
    "                 [--samples S] [--temperature T] [--top-p P] [--top-k K] [--min-p M] [--threads N]\n"
    "       rlhf eval --config CONFIG [the same options]\n"
    "       rlhf eval RUN_DIR --checkpoint N|latest --record [--threads N]\n"
    "  --checkpoint C    latest (default): the run's newest checkpoint; best: the one with the highest\n"
    "                    held-out pass rate of those evaluated during training (eval.every);\n"
    "                    base: its base model; N: checkpoints/step_N; else a model file or HF directory\n"
    "  --record          evaluate as the run's \"eval\" section says and record the result in\n"
    "                    checkpoints/step_N/eval.json, RUN_DIR/eval.jsonl and checkpoints/best, with\n"
    "                    the greedy and the sampled pass rate beside it (eval.sampled_samples,\n"
    "                    eval.sampled_temperature)\n"
    "  --split S         eval (default): task.eval's prompts (an error when the config has none);\n"
    "                    train: task.train's\n"
    "  --temperature T   0 = greedy (default)\n"
    "  --top-p P         nucleus mass in (0, 1] (default 1 = off)\n"
    "  --top-k K         0 = off (default)\n"
    "  --min-p M         in [0, 1]: keep tokens with p >= M * max p (default 0 = off)\n"
    "Completions end as the config's task says (EOS, task.stop, task.include_stop) or after\n"
    "generators.max_tokens tokens.\n";

/* The model file --checkpoint names, into cfg->base_checkpoint. */
static int pick_checkpoint(run_config *cfg, const char *which, int *step_out, rlhf_error *err) {
    char p[2200];
    const char *end = which;
    while (isdigit((unsigned char)*end)) end++;
    int step = -1;
    if (!strcmp(which, "base")) return 0;
    if (!strcmp(which, "latest")) {
        step = updater_latest_checkpoint_step(cfg->run_dir);
        if (step < 0)
            return rlhf_error_set(err, RLHF_EINVAL, cfg->run_dir,
                                  "no checkpoint yet (checkpoints/latest); --checkpoint base evaluates the base model");
    } else if (!strcmp(which, "best")) {
        long best;
        if (updater_checkpoint_ranking(cfg->run_dir, &best, 1) != 1)
            return rlhf_error_set(err, RLHF_EINVAL, "--checkpoint best",
                                  "no checkpoint of %s has a held-out evaluation yet (eval.every in the config "
                                  "evaluates during training; rlhf eval RUN_DIR --checkpoint N --record adds one)",
                                  cfg->run_dir);
        step = (int)best;
    } else if (which[0] && !*end) {
        step = atoi(which);
    } else {
        snprintf(cfg->base_checkpoint, sizeof cfg->base_checkpoint, "%s", which);
        return 0;
    }
    snprintf(p, sizeof p, "%s/checkpoints/step_%d/model.safetensors", cfg->run_dir, step);
    if (access(p, F_OK) != 0)
        return rlhf_error_set(err, RLHF_EINVAL, p, "no such checkpoint (checkpoint.keep keeps the newest %d)",
                              cfg->checkpoint_keep);
    snprintf(cfg->base_checkpoint, sizeof cfg->base_checkpoint, "%.1000s", p);
    *step_out = step;
    return 0;
}

/* One figure of a held-out evaluation: the pass rate and reward mean of fig->samples completions per
 * prompt at fig->temperature over the first N prompts of ds. */
typedef struct eval_figure {
    int samples;
    float temperature;
    double pass_rate, reward_mean;
} eval_figure;

static int evaluate(model *m, tokenizer *tok, scorer *sc, const prompt_dataset *ds, int N, const gen_params *base,
                    eval_figure *fig, rlhf_error *err) {
    int samples = fig->samples;
    int batch = 32;
    int rc;
    sampler *smp = NULL;
    if ((rc = sampler_create(&smp, m, batch * samples > 256 ? 256 : batch * samples, err))) return rc;
    gen_params gp = *base;
    gp.k = samples;
    gp.temperature = fig->temperature;
    long total = 0, pass = 0;
    double rsum = 0;
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
        rc = generator_sample_groups(m, smp, tok, pr, b, &gp, "eval", (uint64_t)i0, gs, err);
        scored_group *sgs = calloc((size_t)b, sizeof *sgs);
        scored_group **ps = calloc((size_t)b, sizeof *ps);
        for (int i = 0; i < b; i++) {
            sgs[i].g = gs[i];
            ps[i] = &sgs[i];
        }
        if (!rc) rc = updater_scorer_score_batch_now(sc, ps, b, err);
        for (int i = 0; i < b; i++) {
            for (int j = 0; j < samples && !rc; j++) {
                if (sgs[i].unscored && sgs[i].unscored[j]) continue; /* no source scored it: no reward */
                total++;
                rsum += sgs[i].total[j];
                if (!isnan(sgs[i].src[j]) && sgs[i].src[j] >= 1.0f - 1e-6f) pass++;
            }
            free(sgs[i].src);
            free(sgs[i].total);
            free(sgs[i].src_errors);
            free(sgs[i].src_status);
            free(sgs[i].src_skipped);
            free(sgs[i].src_clipped);
            free(sgs[i].src_ms);
            free(sgs[i].unscored);
            free(sgs[i].metrics);
        }
        free(sgs);
        free(ps);
        for (int i = 0; i < b; i++) wire_rollout_group_free(&gs[i]);
        free(gs);
        free(pr);
    }
    sampler_destroy(&smp);
    fig->pass_rate = total ? (double)pass / total : 0.0;
    fig->reward_mean = total ? rsum / total : 0.0;
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *config_path = NULL, *ckpt = "latest", *data = NULL, *split = NULL, *run_dir = NULL;
    /* -1 / NULL: not given (--record refuses what would change its comparable setting) */
    int n = -1, samples = -1, threads = 0, top_k = -1, record = 0;
    float temperature = -1.0f, top_p = -1.0f, min_p = -1.0f;
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &config_path), RLHF_OPT("--checkpoint", RLHF_OPT_STR, &ckpt),
                             RLHF_OPT("--data", RLHF_OPT_STR, &data),          RLHF_OPT("--split", RLHF_OPT_STR, &split),          RLHF_OPT("--n", RLHF_OPT_INT, &n),
                             RLHF_OPT("--samples", RLHF_OPT_INT, &samples),    RLHF_OPT("--threads", RLHF_OPT_INT, &threads),
                             RLHF_OPT("--temperature", RLHF_OPT_FLOAT, &temperature),
                             RLHF_OPT_RANGE("--top-p", RLHF_OPT_FLOAT, &top_p, 1e-9, 1.0),
                             RLHF_OPT_RANGE("--top-k", RLHF_OPT_INT, &top_k, 0, 1 << 30),
                             RLHF_OPT_RANGE("--min-p", RLHF_OPT_FLOAT, &min_p, 0.0, 1.0),
                             RLHF_OPT("--record", RLHF_OPT_FLAG, &record),
                             RLHF_OPT_END};
    int npos = 0;
    int prc = rlhf_opts_parse(argc, argv, "rlhf eval", usage, opts, &run_dir, 1, &npos);
    if (prc >= 0) return prc;
    if (record && (!run_dir || data || split || n >= 0 || samples >= 0 || temperature >= 0 || top_p >= 0 ||
                   top_k >= 0 || min_p >= 0)) {
        fprintf(stderr, "rlhf eval: error: --record takes RUN_DIR, --checkpoint and --threads only: it evaluates as "
                        "the run's \"eval\" section says, so every recorded figure is comparable\n%s", usage);
        return 2;
    }
    if (!split) split = "eval";
    if (n < 0) n = 0;
    if (samples < 0) samples = 1;
    if (temperature < 0) temperature = 0.0f;
    if (top_p < 0) top_p = 1.0f;
    if (top_k < 0) top_k = 0;
    if (min_p < 0) min_p = 0.0f;
    if (!config_path == !run_dir || samples < 1 || n < 0 || temperature < 0 ||
        (strcmp(split, "eval") && strcmp(split, "train"))) {
        fprintf(stderr, "rlhf eval: error: %s\n%s",
                !config_path == !run_dir ? "give either RUN_DIR or --config CONFIG"
                : strcmp(split, "eval") && strcmp(split, "train")
                    ? "--split must be eval or train"
                    : "--samples must be >= 1, --n and --temperature >= 0",
                usage);
        return 2;
    }
    char run_cfg[2048];
    if (run_dir) {
        snprintf(run_cfg, sizeof run_cfg, "%s/config.json", run_dir);
        if (access(run_cfg, F_OK) != 0) {
            fprintf(stderr, "rlhf eval: error: %s: no config.json here (not a run directory?)\n", run_dir);
            return 1;
        }
        config_path = run_cfg;
    }
    rlhf_error err = {0};
    run_config cfg;
    if (run_config_load(&cfg, config_path, NULL, 0, &err)) {
        rlhf_error_print("rlhf eval", &err);
        return 2;
    }
    if (record) {
        samples = cfg.eval_samples;
        temperature = cfg.eval_temperature;
    }
    model_set_threads(threads);
    prompt_dataset *ds = NULL;
    model *m = NULL;
    tokenizer *tok = NULL;
    guided_grammar *guided = NULL; /* task.guided: evaluation samples under the same mask as training */
    guided_vocab *gvocab = NULL;
    scorer *sc = NULL;
    int rc = 0;
    if (!data) {
        if (!strcmp(split, "train")) {
            data = cfg.train_path;
        } else if (cfg.eval_path[0]) {
            data = cfg.eval_path;
        } else {
            char w[1200];
            snprintf(w, sizeof w, "%.1000s: task.eval", config_path);
            rc = rlhf_error_set(&err, RLHF_EINVAL, w,
                                "not set: no held-out prompts to score (--data FILE names some; --split train "
                                "scores the training prompts)");
            goto out;
        }
    }
    if (!n) n = cfg.eval_prompts;
    int step = -1;
    if ((rc = pick_checkpoint(&cfg, ckpt, &step, &err))) goto out;
    if (record && step < 0) {
        rc = rlhf_error_set(&err, RLHF_EINVAL, "--record", "records the evaluation of one of the run's checkpoints "
                            "(--checkpoint N or latest), not of %s", ckpt);
        goto out;
    }
    if ((rc = prompt_dataset_load(&ds, data, &err))) goto out;
    if ((rc = run_load_base(&cfg, &m, &err))) goto out;
    if ((rc = run_load_tokenizer(&cfg, m, &tok, &err))) goto out;
    int N = (int)prompt_dataset_size(ds);
    if (n > 0 && n < N) N = n;
    gen_params gp;
    generator_params_from_config(&cfg, &gp); /* the task's stop rules and max_tokens */
    gp.top_p = top_p;
    gp.top_k = top_k;
    gp.min_p = min_p;
    gp.seed = cfg.seed + 424242;
    if ((rc = updater_scorer_create(&sc, cfg.rewards, "rewards", 1, tok, &err))) goto out;
    if (cfg.guided) {
        if ((rc = guided_compile_spec(&guided, cfg.guided, "task.guided", &err)) ||
            (rc = guided_vocab_create(&gvocab, tok, &err)))
            goto out;
        gp.guided = guided;
        gp.guided_vocab = gvocab;
    }
    double t0 = rlhf_now();
    eval_figure main_fig = {.samples = samples, .temperature = temperature}, greedy = {0}, sampled = {0};
    rc = evaluate(m, tok, sc, ds, N, &gp, &main_fig, &err);
    if (record && !rc) {
        /* the greedy and the sampled figure beside the configured one (eval/pass_rate_greedy,
         * eval/pass_rate_sampled in metrics.jsonl); one that is the configured evaluation is not run twice */
        greedy = (eval_figure){.samples = 1, .temperature = 0};
        if (temperature == 0) greedy = main_fig;
        else rc = evaluate(m, tok, sc, ds, N, &gp, &greedy, &err);
        sampled = (eval_figure){.samples = cfg.eval_sampled_samples, .temperature = cfg.eval_sampled_temperature};
        if (!rc && sampled.samples > 0) {
            if (temperature > 0 && samples == sampled.samples && temperature == sampled.temperature) sampled = main_fig;
            else rc = evaluate(m, tok, sc, ds, N, &gp, &sampled, &err);
        }
    }
    if (!rc) {
        json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:f, s:f, s:f}", "checkpoint", cfg.base_checkpoint, "data", data,
                              "prompts", N, "samples", samples, "pass_rate", main_fig.pass_rate,
                              "reward_mean", main_fig.reward_mean, "seconds", rlhf_now() - t0);
        json_object_set_new(o, "temperature", json_real(temperature));
        if (record) {
            json_object_set_new(o, "pass_rate_greedy", json_real(greedy.pass_rate));
            json_object_set_new(o, "reward_mean_greedy", json_real(greedy.reward_mean));
            if (sampled.samples > 0) {
                json_object_set_new(o, "pass_rate_sampled", json_real(sampled.pass_rate));
                json_object_set_new(o, "reward_mean_sampled", json_real(sampled.reward_mean));
                json_object_set_new(o, "samples_sampled", json_integer(sampled.samples));
                json_object_set_new(o, "temperature_sampled", json_real(sampled.temperature));
            }
        }
        int is_best = 0;
        if (record) {
            json_t *r = json_deep_copy(o);
            json_object_del(r, "checkpoint"); /* the step names it; the path changes when the run moves */
            rc = updater_checkpoint_record_eval(cfg.run_dir, step, r, cfg.checkpoint_keep, cfg.checkpoint_keep_best,
                                                &is_best, &err);
            json_decref(r);
            json_object_set_new(o, "step", json_integer(step));
            json_object_set_new(o, "best", json_boolean(is_best));
        }
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!rc) printf("%s\n", s);
        free(s);
        json_decref(o);
    }
out:
    if (rc) rlhf_error_print("rlhf eval", &err);
    updater_scorer_destroy(&sc);
    guided_grammar_destroy(&guided);
    guided_vocab_destroy(&gvocab);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    prompt_dataset_destroy(&ds);
    run_config_free(&cfg);
    return rc ? 1 : 0;
}
