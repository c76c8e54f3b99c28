/* rewards/rm/rm_cli.c — `rlhf train-rm`: train a reward model from preference pairs (Bradley-Terry) and
 * report held-out pairwise accuracy; `--make-synthetic` writes the synthetic preference task. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompts/prompts.h"
#include "rewards/rm/rm.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: rlhf train-rm --model BASE.safetensors --data PREFS.jsonl --out RM.safetensors\n"
            "                     [--steps 200] [--batch-pairs 16] [--lr 1e-3] [--heldout 0.2] [--seed 1]\n"
            "                     [--log-every 20]\n"
            "       rlhf train-rm --make-synthetic PREFS.jsonl [--pairs 2000] [--seed 1]\n"
            "       rlhf train-rm --make-synthetic-prompts PROMPTS.jsonl [--pairs N] [--seed 1]\n"
            "       rlhf train-rm --make-synthetic-corpus CORPUS.jsonl [--pairs N] [--seed 1]\n"
            "  PREFS.jsonl: one {\"prompt\",\"chosen\",\"rejected\"} object per line (non-empty strings).\n"
            "  Prints one JSON summary line (held-out pairwise accuracy, ...) on stdout.\n");
}

static int num(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || !*v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "rlhf train-rm: error: %s: expected a number in [%g, %g], got '%s'\n", opt, lo, hi,
                v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_train_rm(int argc, char **argv) {
    const char *base = NULL, *data = NULL, *out = NULL, *synth = NULL, *synth_prompts = NULL, *synth_corpus = NULL;
    rm_train_config tc;
    rm_train_config_default(&tc);
    tc.log_every = 20;
    double pairs = 2000, x;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "rlhf train-rm: error: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--model")) base = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--make-synthetic")) synth = v;
        else if (!strcmp(a, "--make-synthetic-prompts")) synth_prompts = v;
        else if (!strcmp(a, "--make-synthetic-corpus")) synth_corpus = v;
        else if (!strcmp(a, "--pairs")) { if (num(a, v, 1, 1e7, &pairs)) return 2; }
        else if (!strcmp(a, "--steps")) { if (num(a, v, 0, 1e7, &x)) return 2; tc.steps = (int)x; }
        else if (!strcmp(a, "--batch-pairs")) { if (num(a, v, 1, 4096, &x)) return 2; tc.batch_pairs = (int)x; }
        else if (!strcmp(a, "--lr")) { if (num(a, v, 1e-9, 1, &x)) return 2; tc.lr = (float)x; }
        else if (!strcmp(a, "--heldout")) { if (num(a, v, 0, 0.95, &x)) return 2; tc.heldout_frac = (float)x; }
        else if (!strcmp(a, "--seed")) { if (num(a, v, 0, 1e18, &x)) return 2; tc.seed = (uint64_t)x; }
        else if (!strcmp(a, "--log-every")) { if (num(a, v, 0, 1e9, &x)) return 2; tc.log_every = (int)x; }
        else {
            fprintf(stderr, "rlhf train-rm: error: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
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
        fprintf(stderr, "rlhf train-rm: error: --model, --data and --out are required\n");
        usage(stderr);
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
