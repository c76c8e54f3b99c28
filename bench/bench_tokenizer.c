/* bench/bench_tokenizer.c — encode throughput of tokenizer_create_hf on one thread.
 *   bench_tokenizer TOKENIZER_DIR CORPUS_JSONL [REPEATS]
 * The corpus is one JSON string per line (tests/model_tokenizer/gen_corpus.py). Each repeat encodes
 * every text (line by line, add_special false), then the whole corpus joined by "\n" as one text.
 * The first pass is a warm-up (it fills the word cache, as the `tokenizers` peer's own cache is
 * warm after its warm-up too). Prints the per-repeat MB/s and their medians. bench_tokenizer.sh runs
 * it beside Hugging Face's `tokenizers`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "model/model.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR CORPUS_JSONL [REPEATS]\n", argv[0]);
        return 2;
    }
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    if (repeats < 1 || repeats > 1000) repeats = 5;
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        fprintf(stderr, "bench_tokenizer: error: cannot open %s\n", argv[2]);
        return 1;
    }
    char **text = NULL, *line = NULL;
    size_t *len = NULL, lc = 0, total = 0;
    int n = 0, cap = 0;
    ssize_t k;
    while ((k = getline(&line, &lc, f)) > 0) {
        json_error_t je;
        json_t *s = json_loadb(line, (size_t)k, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!json_is_string(s)) {
            fprintf(stderr, "bench_tokenizer: error: %s line %d is not a JSON string\n", argv[2], n + 1);
            return 1;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            text = realloc(text, cap * sizeof *text);
            len = realloc(len, cap * sizeof *len);
        }
        len[n] = json_string_length(s);
        text[n] = malloc(len[n] + 1);
        memcpy(text[n], json_string_value(s), len[n]);
        total += len[n++];
        json_decref(s);
    }
    free(line);
    fclose(f);
    char *joined = malloc(total + (size_t)n + 1);
    size_t jl = 0;
    for (int i = 0; i < n; i++) memcpy(joined + jl, text[i], len[i]), jl += len[i], joined[jl++] = '\n';

    tokenizer *tok = NULL;
    rlhf_error err = {0};
    double t0 = rlhf_now();
    if (tokenizer_create_hf(&tok, argv[1], &err)) {
        rlhf_error_print("bench_tokenizer", &err);
        return 1;
    }
    printf("loaded %s in %.2f s (vocab %d); %d texts, %.2f MB\n", argv[1], rlhf_now() - t0, tok->vocab_size, n,
           total / 1e6);
    double *lines = calloc(repeats, sizeof *lines), *whole = calloc(repeats, sizeof *whole);
    long n_ids = 0;
    for (int r = -1; r < repeats; r++) {
        double a = rlhf_now();
        long ids_total = 0;
        for (int i = 0; i < n; i++) {
            int32_t *ids = NULL;
            int m = 0;
            if (tokenizer_encode(tok, text[i], len[i], 0, &ids, &m, &err)) {
                rlhf_error_print("bench_tokenizer", &err);
                return 1;
            }
            ids_total += m;
            free(ids);
        }
        double b = rlhf_now();
        int32_t *ids = NULL;
        int m = 0;
        if (tokenizer_encode(tok, joined, jl, 0, &ids, &m, &err)) {
            rlhf_error_print("bench_tokenizer", &err);
            return 1;
        }
        free(ids);
        double c = rlhf_now();
        n_ids = ids_total;
        if (r < 0) continue;
        lines[r] = total / 1e6 / (b - a);
        whole[r] = jl / 1e6 / (c - b);
        printf("repeat %d: line by line %.2f MB/s, one text %.2f MB/s\n", r, lines[r], whole[r]);
    }
    printf("tokens %ld (%.2f bytes/token)\n", n_ids, (double)total / (double)n_ids);
    printf("median: line by line %.2f MB/s, one text %.2f MB/s\n", median(lines, repeats), median(whole, repeats));
    tokenizer_destroy(&tok);
    for (int i = 0; i < n; i++) free(text[i]);
    free(text), free(len), free(joined), free(lines), free(whole);
    return 0;
}
