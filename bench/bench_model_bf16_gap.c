/* bench/bench_model_bf16_gap.c — what sampling with bf16 weights does to the behaviour log-probs that
 * the updater's ratio correction sees. Completions are sampled as a generator samples them (bf16
 * sampler, temperature 1, a line per completion), then every sampled token is re-scored with the fp32
 * weights (the updater's master copy) and with the bf16 weights again, teacher-forced in one prefill
 * step. Prints the per-token gap log pi_fp32 - log pi_bf16, the importance ratio rho = exp(gap) that
 * truncated IS would apply against its cap, and the per-sequence sum; and checks that the re-scored
 * bf16 log-probs equal the ones recorded while sampling (the recorded log-probs are those of the weights
 * sampled with).
 *
 *   bench_model_bf16_gap --checkpoint FILE --prompts FILE.jsonl [--n 200] [--k 4] [--max-tokens 32]
 *                        [--threads N] [--is-cap 2.0] [--seed 1]
 */
#include "bench/bench_util.h"
#include "model/model.h"

#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: bench_model_bf16_gap --checkpoint FILE --prompts FILE.jsonl [--n 200] [--k 4]\n"
               "         [--max-tokens 32] [--threads N] [--is-cap 2.0] [--seed 1]\n");
}

/* log softmax(row)[y], in double */
static double log_prob(const float *row, int V, int y) {
    double mx = row[0], s = 0.0;
    for (int i = 1; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    for (int i = 0; i < V; i++) s += exp((double)row[i] - mx);
    return (double)row[y] - mx - log(s);
}

/* Teacher-forced log-probs of seq[start..n) under sampler s (slot 0): one step over the whole sequence. */
static int score(sampler *s, const int32_t *seq, int n, int start, int V, float *logits, double *out,
                 rlhf_error *err) {
    int slot[512], pos[512], rows[512];
    if (n > 512 || n > sampler_max_rows(s))
        return rlhf_error_set(err, RLHF_EINVAL, "score", "sequence of %d tokens is longer than one step takes", n);
    for (int t = 0; t < n; t++) {
        slot[t] = 0;
        pos[t] = t;
    }
    int nl = 0;
    for (int t = start; t < n; t++) rows[nl++] = t - 1; /* the row before token t predicts it */
    int rc = sampler_step(s, n, slot, pos, seq, nl, rows, logits, err);
    for (int i = 0; i < nl && !rc; i++) out[i] = log_prob(logits + (size_t)i * V, V, seq[start + i]);
    return rc;
}

int main(int argc, char **argv) {
    const char *prog = "bench_model_bf16_gap", *ckpt = NULL, *prompts_path = NULL;
    int n_prompts = 200, k = 4, max_tokens = 32, threads = 0;
    double is_cap = 2.0;
    long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: error: %s needs a value\n", prog, a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--checkpoint")) ckpt = v;
        else if (!strcmp(a, "--prompts")) prompts_path = v;
        else if (!strcmp(a, "--n")) n_prompts = atoi(v);
        else if (!strcmp(a, "--k")) k = atoi(v);
        else if (!strcmp(a, "--max-tokens")) max_tokens = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--is-cap")) is_cap = atof(v);
        else if (!strcmp(a, "--seed")) seed = atol(v);
        else {
            fprintf(stderr, "%s: error: unknown option '%s'\n", prog, a);
            usage(stderr);
            return 2;
        }
    }
    if (!ckpt || !prompts_path || n_prompts < 1 || k < 1 || max_tokens < 1 || !(is_cap > 1.0)) {
        usage(stderr);
        return 2;
    }
    model_set_threads(threads);
    rlhf_error err = {0};
    model *m = NULL;
    tokenizer *tok = NULL;
    sampler *s16 = NULL, *s32 = NULL, *r16 = NULL;
    char *text = NULL;
    size_t text_len = 0;
    int rc = model_load(&m, ckpt, NULL, &err);
    if (!rc) rc = tokenizer_create_bytes(&tok, m->cfg.vocab_size, &err);
    if (!rc) rc = rlhf_read_file(prompts_path, &text, &text_len, &err);
    int n_req = n_prompts * k;
    sampler_options o16 = {.max_batch = n_req < 64 ? n_req : 64, .weights = SAMPLER_WEIGHTS_BF16};
    sampler_options one16 = {.max_batch = 1, .weights = SAMPLER_WEIGHTS_BF16};
    if (!rc) rc = sampler_create_with(&s16, m, &o16, &err);
    if (!rc) rc = sampler_create_with(&r16, m, &one16, &err);
    if (!rc) rc = sampler_create(&s32, m, 1, &err);
    if (rc) {
        rlhf_error_print(prog, &err);
        return 1;
    }
    /* prompts: the "prompt" field of the first n lines */
    int32_t **pids = calloc((size_t)n_prompts, sizeof *pids);
    int *plen = calloc((size_t)n_prompts, sizeof *plen), got = 0;
    for (char *line = strtok(text, "\n"); line && got < n_prompts && !rc; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        const char *p = json_string_value(json_object_get(j, "prompt"));
        if (p) rc = tokenizer_encode(tok, p, strlen(p), 1, &pids[got], &plen[got], &err), got++;
        json_decref(j);
    }
    if (!rc && got < n_prompts) rc = rlhf_error_set(&err, RLHF_EINVAL, prompts_path, "has %d prompts, want %d", got, n_prompts);
    sample_request *reqs = calloc((size_t)n_req, sizeof *reqs);
    sample_result *res = calloc((size_t)n_req, sizeof *res);
    static const int32_t stop_ids[2] = {'\n', TOKENIZER_BYTES_EOS};
    for (int i = 0; i < n_req && !rc; i++) {
        sample_request *r = &reqs[i];
        r->prompt = pids[i / k];
        r->prompt_len = plen[i / k];
        r->params = sample_params_default();
        int room = m->cfg.max_seq_len - r->prompt_len;
        r->params.max_new_tokens = max_tokens < room ? max_tokens : room;
        r->params.seed = (uint64_t)seed * 1000003u + (uint64_t)i;
        r->params.stop_ids = stop_ids;
        r->params.n_stop_ids = 2;
    }
    double t0 = rlhf_now();
    if (!rc) rc = sampler_run(s16, tok, reqs, n_req, res, &err);
    double t_sample = rlhf_now() - t0;
    if (rc) {
        rlhf_error_print(prog, &err);
        return 1;
    }
    size_t total = 0;
    for (int i = 0; i < n_req; i++) total += (size_t)res[i].n_tokens;
    double *gap = malloc((total ? total : 1) * sizeof(double)), *seq_gap = malloc((size_t)n_req * sizeof(double));
    int V = m->cfg.vocab_size, T = m->cfg.max_seq_len;
    float *logits = malloc((size_t)T * V * sizeof(float));
    double *lp32 = malloc((size_t)T * sizeof(double)), *lp16 = malloc((size_t)T * sizeof(double));
    int32_t *seq = malloc((size_t)T * sizeof(int32_t));
    size_t n_tok = 0, over_cap = 0, under_cap = 0;
    double max_recorded_diff = 0.0, sum_gap = 0.0, sum_abs = 0.0, sum_rho = 0.0, sum_kl = 0.0;
    for (int i = 0; i < n_req && !rc; i++) {
        sample_result *r = &res[i];
        int pl = reqs[i].prompt_len, n = pl + r->n_tokens;
        if (r->n_tokens == 0) {
            seq_gap[i] = 0.0;
            continue;
        }
        memcpy(seq, reqs[i].prompt, (size_t)pl * sizeof(int32_t));
        memcpy(seq + pl, r->tokens, (size_t)r->n_tokens * sizeof(int32_t));
        if (n > T) n = T; /* the last sampled token is never fed; it is scored from the row before it */
        rc = score(s32, seq, n, pl, V, logits, lp32, &err);
        if (!rc) rc = score(r16, seq, n, pl, V, logits, lp16, &err);
        double sg = 0.0;
        for (int t = 0; t < n - pl && !rc; t++) {
            double d = lp32[t] - lp16[t], rho = exp(d);
            max_recorded_diff = fmax(max_recorded_diff, fabs(lp16[t] - (double)r->logprobs[t]));
            gap[n_tok++] = fabs(d);
            sum_gap += d;
            sum_abs += fabs(d);
            sum_rho += rho;
            sum_kl += -d; /* E_q[log q - log p]: q = bf16 policy, p = fp32 */
            over_cap += rho > is_cap;
            under_cap += rho < 1.0 / is_cap;
            sg += d;
        }
        seq_gap[i] = fabs(sg);
    }
    if (rc) {
        rlhf_error_print(prog, &err);
        return 1;
    }
    qsort(gap, n_tok, sizeof(double), cmp_double);
    qsort(seq_gap, (size_t)n_req, sizeof(double), cmp_double);
    printf("bf16 log-prob gap: %s, dim %d, %d layers, vocab %d; %d prompts x k=%d from %s; %zu tokens sampled in %.2f s "
           "(%s kernels)\n",
           ckpt, m->cfg.dim, m->cfg.n_layers, V, n_prompts, k, prompts_path, n_tok, t_sample, sampler_kernels_name(s16));
    printf("recorded bf16 log-probs vs bf16 re-scored: max |diff| %.3g\n", max_recorded_diff);
    printf("per token |log pi_fp32 - log pi_bf16|: mean %.4g, median %.4g, p99 %.4g, max %.4g; mean signed %.3g\n",
           sum_abs / (double)n_tok, gap[n_tok / 2], gap[(size_t)(0.99 * (double)(n_tok - 1))], gap[n_tok - 1],
           sum_gap / (double)n_tok);
    printf("ratio rho = pi_fp32 / pi_bf16 per token: mean %.5f; above is_cap %.1f: %zu of %zu; below 1/is_cap: %zu; "
           "KL(bf16 || fp32) estimate %.3g nats/token\n",
           sum_rho / (double)n_tok, is_cap, over_cap, n_tok, under_cap, sum_kl / (double)n_tok);
    printf("per sequence |sum of gaps|: median %.4g, p99 %.4g, max %.4g\n", seq_gap[n_req / 2],
           seq_gap[(size_t)(0.99 * (double)(n_req - 1))], seq_gap[n_req - 1]);
    for (int i = 0; i < n_req; i++) sample_result_free(&res[i]);
    for (int i = 0; i < n_prompts; i++) free(pids[i]);
    free(pids);
    free(plen);
    free(reqs);
    free(res);
    free(gap);
    free(seq_gap);
    free(logits);
    free(lp32);
    free(lp16);
    free(seq);
    free(text);
    sampler_destroy(&s16);
    sampler_destroy(&r16);
    sampler_destroy(&s32);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    return 0;
}
