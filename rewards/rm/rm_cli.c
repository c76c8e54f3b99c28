/* rewards/rm/rm_cli.c — `rlhf train-rm`: train a reward model from preference pairs (Bradley-Terry) and
 * report held-out pairwise accuracy; `--make-synthetic` writes the synthetic preference task. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompts/prompts.h"
#include "rewards/rm/rm.h"

static const char usage[] =
    "usage: rlhf train-rm --model BASE.safetensors --data PREFS.jsonl --out RM.safetensors\n"
    "                     [--steps 200] [--batch-pairs 16] [--lr 1e-3] [--heldout 0.2] [--seed 1]\n"
    "                     [--log-every 20]\n"
    "       rlhf train-rm --make-synthetic PREFS.jsonl [--pairs 2000] [--seed 1]\n"
    "       rlhf train-rm --make-synthetic-prompts PROMPTS.jsonl [--pairs N] [--seed 1]\n"
    "       rlhf train-rm --make-synthetic-corpus CORPUS.jsonl [--pairs N] [--seed 1]\n"
    "  PREFS.jsonl: one {\"prompt\",\"chosen\",\"rejected\"} object per line (non-empty strings).\n"
    "  Prints one JSON summary line (held-out pairwise accuracy, ...) on stdout.\n";

int cmd_train_rm(int argc, char **argv) {
    const char *base = NULL, *data = NULL, *out = NULL, *synth = NULL, *synth_prompts = NULL, *synth_corpus = NULL;
    rm_train_config tc;
    rm_train_config_default(&tc);
    tc.log_every = 20;
    /* numbers are read as numbers (1e3 is a step count too) and kept as the config's integers */
    double pairs = 2000, steps = tc.steps, batch_pairs = tc.batch_pairs, seed = (double)tc.seed,
           log_every = tc.log_every;
    const rlhf_opt opts[] = {
        RLHF_OPT("--model", RLHF_OPT_STR, &base),
        RLHF_OPT("--data", RLHF_OPT_STR, &data),
        RLHF_OPT("--out", RLHF_OPT_STR, &out),
        RLHF_OPT("--make-synthetic", RLHF_OPT_STR, &synth),
        RLHF_OPT("--make-synthetic-prompts", RLHF_OPT_STR, &synth_prompts),
        RLHF_OPT("--make-synthetic-corpus", RLHF_OPT_STR, &synth_corpus),
        RLHF_OPT_RANGE("--pairs", RLHF_OPT_DOUBLE, &pairs, 1, 1e7),
        RLHF_OPT_RANGE("--steps", RLHF_OPT_DOUBLE, &steps, 0, 1e7),
        RLHF_OPT_RANGE("--batch-pairs", RLHF_OPT_DOUBLE, &batch_pairs, 1, 4096),
        RLHF_OPT_RANGE("--lr", RLHF_OPT_FLOAT, &tc.lr, 1e-9, 1),
        RLHF_OPT_RANGE("--heldout", RLHF_OPT_FLOAT, &tc.heldout_frac, 0, 0.95),
        RLHF_OPT_RANGE("--seed", RLHF_OPT_DOUBLE, &seed, 0, 1e18),
        RLHF_OPT_RANGE("--log-every", RLHF_OPT_DOUBLE, &log_every, 0, 1e9),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, "rlhf train-rm", usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    tc.steps = (int)steps;
    tc.batch_pairs = (int)batch_pairs;
    tc.seed = (uint64_t)seed;
    tc.log_every = (int)log_every;
    rlhf_error err = {0};
    if (synth_corpus) {
        if (prompt_capitals_corpus_write(synth_corpus, (int)pairs, tc.seed, &err)) {
            rlhf_error_print("rlhf train-rm", &err);
            return 1;
        }
        printf("{\"wrote\":\"%s\",\"documents\":%d}\n", synth_corpus, (int)pairs);
        if (!synth && !synth_prompts) return 0;
    }
    if (synth_prompts) {
        if (prompt_capitals_prompts_write(synth_prompts, (int)pairs, tc.seed, &err)) {
            rlhf_error_print("rlhf train-rm", &err);
            return 1;
        }
        printf("{\"wrote\":\"%s\",\"prompts\":%d}\n", synth_prompts, (int)pairs);
        if (!synth) return 0;
    }
    if (synth) {
        if (prompt_capitals_write(synth, (int)pairs, tc.seed, &err)) {
            rlhf_error_print("rlhf train-rm", &err);
            return 1;
        }
        printf("{\"wrote\":\"%s\",\"pairs\":%d}\n", synth, (int)pairs);
        return 0;
    }
    if (!base || !data || !out) {
        fprintf(stderr, "rlhf train-rm: error: --model, --data and --out are required\n%s", usage);
        return 2;
    }
    if (rlhf_check_writable(out, &err)) { /* before training, not after it */
        rlhf_error_print("rlhf train-rm", &err);
        return 1;
    }
    rm_pair *pr = NULL;
    int np = 0;
    if (rm_pairs_load(data, &pr, &np, &err)) {
        rlhf_error_print("rlhf train-rm", &err);
        return 1;
    }
    reward_model *rm = NULL;
    int rc = reward_model_from_base(&rm, base, 2 * tc.batch_pairs, tc.seed, &err);
    rm_train_report rep;
    if (!rc) rc = rm_train(rm, pr, np, &tc, &rep, stderr, &err);
    if (!rc) rc = reward_model_save(rm, out, &err);
    if (rc) {
        rlhf_error_print("rlhf train-rm", &err);
    } else {
        fprintf(stderr, "train-rm: held-out pairwise accuracy %.3f on %d pairs (before training %.3f), train %.3f\n",
                rep.heldout_accuracy, rep.n_heldout, rep.initial_heldout_accuracy, rep.train_accuracy);
        printf("{\"out\":\"%s\",\"n_train\":%d,\"n_heldout\":%d,\"heldout_accuracy\":%.4f,"
               "\"initial_heldout_accuracy\":%.4f,\"train_accuracy\":%.4f,\"final_loss\":%.4f,\"seconds\":%.2f}\n",
               out, rep.n_train, rep.n_heldout, rep.heldout_accuracy, rep.initial_heldout_accuracy, rep.train_accuracy,
               rep.final_loss, rep.seconds);
    }
    reward_model_destroy(&rm);
    rm_pairs_free(pr, np);
    return rc ? 1 : 0;
}
