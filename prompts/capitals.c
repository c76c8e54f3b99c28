/* prompts/capitals.c — the synthetic "answer in capitals" preference task: preference pairs, prompts
 * and a pretraining corpus for it, and its ground truth (share of capitals, share of real words). The
 * reward model trains on its pairs (rlhf train-rm --make-synthetic); the "capitals" reward source
 * scores with its ground truth. See prompts/prompts.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "common/common.h"
#include "prompts/prompts.h"

double prompt_capitals_truth(const char *completion) {
    int up = 0, letters = 0;
    for (const char *s = completion; *s; s++) {
        if (isupper((unsigned char)*s)) up++, letters++;
        else if (islower((unsigned char)*s)) letters++;
    }
    return letters ? (double)up / letters : 0.0;
}

static const char *const syn_topics[] = {"the sea", "a cat", "trains", "rain", "bread", "the moon", "music",
                                         "a garden", "winter", "bicycles", "coffee", "mountains"};
static const char *const syn_words[] = {"blue", "quick", "warm", "small", "bright", "quiet", "green", "soft",
                                        "tall", "round", "sharp", "calm", "wild", "sweet", "cold", "happy",
                                        "slow", "loud", "deep", "light", "dark", "fresh", "old", "new"};

double prompt_capitals_word_share(const char *completion) {
    int words = 0, known = 0;
    const char *s = completion;
    while (*s) {
        while (*s == ' ' || *s == '\n' || *s == '\t') s++;
        if (!*s) break;
        const char *e = s;
        while (*e && *e != ' ' && *e != '\n' && *e != '\t') e++;
        size_t n = (size_t)(e - s);
        if (n > 0 && s[n - 1] == '.') n--;
        words++;
        for (size_t w = 0; n > 0 && w < sizeof syn_words / sizeof syn_words[0]; w++)
            if (strlen(syn_words[w]) == n && !strncasecmp(syn_words[w], s, n)) {
                known++;
                break;
            }
        s = e;
    }
    return words ? (double)known / words : 0.0;
}

/* A few random words; each letter upper case with probability p_upper. */
static void syn_completion(rlhf_rng *rng, float p_upper, char *out, size_t cap) {
    int nw = 2 + (int)(rlhf_rng_u64(rng) % 3);
    size_t o = 0;
    for (int w = 0; w < nw; w++) {
        const char *word = syn_words[rlhf_rng_u64(rng) % (sizeof syn_words / sizeof syn_words[0])];
        if (w && o + 1 < cap) out[o++] = ' ';
        for (const char *c = word; *c && o + 1 < cap; c++)
            out[o++] = rlhf_rng_uniform(rng) < p_upper ? (char)toupper((unsigned char)*c) : *c;
    }
    if (o + 1 < cap) out[o++] = '.';
    out[o] = 0;
}

/* Appends `j` (consumed) as one compact JSON line to a synthetic-data file; on failure aborts the file,
 * so no partial output is left, and names it. */
static int write_json_line(rlhf_atomic_file *af, json_t *j, rlhf_error *err) {
    char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    int bad = !line || fprintf(af->fp, "%s\n", line) < 0;
    free(line);
    if (!bad) return 0;
    rlhf_error_set(err, RLHF_EIO, af->path, "write failed");
    rlhf_atomic_abort(af);
    return RLHF_EIO;
}

int prompt_capitals_write(const char *path, int n_pairs, uint64_t seed, rlhf_error *err) {
    if (n_pairs < 1) return rlhf_error_set(err, RLHF_EINVAL, path, "need at least one pair, got %d", n_pairs);
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) return rc;
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    for (int i = 0; i < n_pairs; i++) {
        char prompt[128], chosen[96], rejected[96];
        snprintf(prompt, sizeof prompt, "Answer in capitals: describe %s.\n",
                 syn_topics[rlhf_rng_u64(&rng) % (sizeof syn_topics / sizeof syn_topics[0])]);
        do syn_completion(&rng, 0.85f, chosen, sizeof chosen);
        while (!(prompt_capitals_truth(chosen) > 0.5));
        do syn_completion(&rng, 0.15f, rejected, sizeof rejected);
        while (!(prompt_capitals_truth(rejected) < 0.5));
        json_t *j = json_pack("{s:s, s:s, s:s}", "prompt", prompt, "chosen", chosen, "rejected", rejected);
        rc = write_json_line(&af, j, err);
        if (rc) return rc;
    }
    return rlhf_atomic_commit(&af, err);
}

int prompt_capitals_prompts_write(const char *path, int n, uint64_t seed, rlhf_error *err) {
    if (n < 1) return rlhf_error_set(err, RLHF_EINVAL, path, "need at least one prompt, got %d", n);
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) return rc;
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) {
        char prompt[128], id[32];
        snprintf(prompt, sizeof prompt, "Answer in capitals: describe %s.\n",
                 syn_topics[rlhf_rng_u64(&rng) % (sizeof syn_topics / sizeof syn_topics[0])]);
        snprintf(id, sizeof id, "caps-%d", i);
        json_t *j = json_pack("{s:s, s:s}", "id", id, "prompt", prompt);
        rc = write_json_line(&af, j, err);
        if (rc) return rc;
    }
    return rlhf_atomic_commit(&af, err);
}

int prompt_capitals_corpus_write(const char *path, int n, uint64_t seed, rlhf_error *err) {
    if (n < 1) return rlhf_error_set(err, RLHF_EINVAL, path, "need at least one document, got %d", n);
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) return rc;
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) {
        char prompt[128], completion[100];
        snprintf(prompt, sizeof prompt, "Answer in capitals: describe %s.\n",
                 syn_topics[rlhf_rng_u64(&rng) % (sizeof syn_topics / sizeof syn_topics[0])]);
        syn_completion(&rng, rlhf_rng_uniform(&rng), completion, sizeof completion - 1);
        strcat(completion, "\n");
        json_t *j = json_pack("{s:s, s:s}", "prompt", prompt, "completion", completion);
        rc = write_json_line(&af, j, err);
        if (rc) return rc;
    }
    return rlhf_atomic_commit(&af, err);
}
