/* tests/model_spec/test_spec.c — speculative decoding (model/speculative.c) against independent oracles:
 *   - the distribution of the first three tokens equals the target's processed distribution computed
 *     from the plain reference forward (chi-square over >= 20,000 draws, cells with expected count < 5
 *     pooled, p > 1e-4), at temperature 1 and with top-p (and top-k + min-p), for both proposers;
 *   - greedy output (tokens and log-probs) is bit-identical to plain greedy decoding;
 *   - the recorded log-probs equal the trainer's scoring forward (what `rlhf score` runs) of the same
 *     completions within 1e-5: log pi directly, log q from the scoring forward's logits put through an
 *     independent sort-based filter pipeline. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

enum { VOCAB = 12 };

static model *tiny_model(int dim, int layers, uint64_t seed, float scale) {
    model_config c = {0};
    c.dim = dim;
    c.n_layers = layers;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.ffn_dim = dim * 3 / 2;
    c.vocab_size = VOCAB;
    c.max_seq_len = 48;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    model *m = NULL;
    rlhf_error err = {0};
    if (model_create(&m, &c, &err)) return NULL;
    model_init_random(m, seed);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed ^ 0x1234);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        float *w = m->params_mem + t->offset;
        for (size_t j = 0; j < t->numel; j++) w[j] = t->cols == 1 ? 0.5f + rlhf_rng_uniform(&rng) : w[j] * scale;
    }
    return m;
}

/* q (V) <- the processed distribution of a logits row, computed in double by sorting (the oracle). */
static void oracle_q(const float *row, int V, const sample_params *p, double *q) {
    double mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmax(mx, row[i]);
    if (p->temperature == 0.0f) {
        int a = 0;
        for (int i = 0; i < V; i++)
            if (row[i] > row[a]) a = i;
        for (int i = 0; i < V; i++) q[i] = i == a;
        return;
    }
    int order[VOCAB * 8];
    double z = 0.0;
    for (int i = 0; i < V; i++) {
        q[i] = exp((row[i] - mx) / p->temperature);
        order[i] = i;
    }
    for (int i = 1; i < V; i++) /* most probable first, ties by smaller id */
        for (int j = i; j > 0 && (q[order[j]] > q[order[j - 1]] ||
                                  (q[order[j]] == q[order[j - 1]] && order[j] < order[j - 1]));
             j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int keep = V;
    if (p->top_k > 0 && p->top_k < V) keep = p->top_k;
    for (int i = 0; i < keep; i++) z += q[order[i]];
    if (p->top_p < 1.0f) {
        double acc = 0.0;
        int kp = 0;
        while (kp < keep) {
            acc += q[order[kp++]];
            if (acc >= p->top_p * z) break;
        }
        keep = kp;
    }
    if (p->min_p > 0.0f) {
        double top = q[order[0]];
        int km = 0;
        while (km < keep && q[order[km]] >= p->min_p * top) km++;
        keep = km;
    }
    z = 0.0;
    for (int i = 0; i < keep; i++) z += q[order[i]];
    double *out = calloc((size_t)V, sizeof(double));
    for (int i = 0; i < keep; i++) out[order[i]] = q[order[i]] / z;
    memcpy(q, out, (size_t)V * sizeof(double));
    free(out);
}

/* Upper tail of chi-square with k degrees of freedom (Wilson-Hilferty). */
static double chi2_upper(double x, int k) {
    double h = 2.0 / (9.0 * k), zz = (pow(x / k, 1.0 / 3.0) - (1.0 - h)) / sqrt(h);
    return 0.5 * erfc(zz / sqrt(2.0));
}

enum { PLEN = 4, NTOK = 3, NDRAW = 24000 };

/* Exact joint distribution of the first NTOK tokens after prompt (VOCAB^NTOK cells) from the
 * reference forward. */
static double *exact_joint(const model *m, const int32_t *prompt, const sample_params *p) {
    int V = VOCAB, cells = 1;
    for (int t = 0; t < NTOK; t++) cells *= V;
    double *joint = calloc((size_t)cells, sizeof(double)), q[VOCAB];
    float *lg = malloc((size_t)(PLEN + NTOK) * V * sizeof(float));
    int32_t seq[PLEN + NTOK];
    memcpy(seq, prompt, sizeof(int32_t) * PLEN);
    rlhf_error err = {0};
    /* walk prefixes: for each (t1, t2) one forward over prompt + t1 + t2 gives all three conditionals */
    for (int a = 0; a < V; a++)
        for (int b = 0; b < V; b++) {
            seq[PLEN] = a;
            seq[PLEN + 1] = b;
            CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, seq, PLEN + 2, lg, &err), 0);
            oracle_q(lg + (size_t)(PLEN - 1) * V, V, p, q);
            double pa = q[a];
            oracle_q(lg + (size_t)PLEN * V, V, p, q);
            double pb = q[b];
            oracle_q(lg + (size_t)(PLEN + 1) * V, V, p, q);
            for (int c = 0; c < V; c++) joint[(a * V + b) * V + c] = pa * pb * q[c];
        }
    free(lg);
    return joint;
}

/* Samples NDRAW completions of NTOK tokens (speculative when sp), returns the chi-square p-value of
 * their joint counts against the exact joint. */
static double draw_pvalue(const model *m, sampler *s, sampler_spec *sp, const int32_t *prompt, const sample_params *p,
                          const double *joint, uint64_t seed0) {
    int V = VOCAB, cells = V * V * V;
    sample_request *reqs = calloc(NDRAW, sizeof *reqs);
    sample_result *res = calloc(NDRAW, sizeof *res);
    for (int i = 0; i < NDRAW; i++) {
        reqs[i].prompt = prompt;
        reqs[i].prompt_len = PLEN;
        reqs[i].params = *p;
        reqs[i].params.max_new_tokens = NTOK + 2; /* drafts then cover tokens 2 and 3, and the bonus token 3 */
        reqs[i].params.seed = seed0 + (uint64_t)i * 7919u;
    }
    rlhf_error err = {0};
    int rc = sp ? sampler_run_spec(s, sp, NULL, reqs, NDRAW, res, &err) : sampler_run(s, NULL, reqs, NDRAW, res, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    (void)m;
    long *count = calloc((size_t)cells, sizeof(long));
    for (int i = 0; i < NDRAW; i++) {
        CU_ASSERT_EQUAL(res[i].n_tokens, NTOK + 2);
        if (res[i].n_tokens >= NTOK) count[(res[i].tokens[0] * V + res[i].tokens[1]) * V + res[i].tokens[2]]++;
        sample_result_free(&res[i]);
    }
    /* pool the cells with expected count < 5 into one */
    double chi = 0.0, pool_e = 0.0, pool_o = 0.0;
    int bins = 0, impossible = 0;
    for (int c = 0; c < cells; c++) {
        double e = joint[c] * NDRAW;
        if (joint[c] == 0.0 && count[c]) impossible++;
        if (e < 5.0) {
            pool_e += e;
            pool_o += (double)count[c];
            continue;
        }
        chi += (count[c] - e) * (count[c] - e) / e;
        bins++;
    }
    if (pool_e >= 5.0) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        bins++;
    }
    CU_ASSERT_EQUAL(impossible, 0); /* nothing the filters cut was ever drawn */
    double pv = impossible ? 0.0 : chi2_upper(chi, bins - 1);
    printf("\n    chi2 %.1f over %d bins, p = %.3g", chi, bins, pv);
    free(count);
    free(reqs);
    free(res);
    return pv;
}

static sample_params variant_params(int v) {
    sample_params p = sample_params_default();
    if (v == 1) {
        p.temperature = 0.9f;
        p.top_p = 0.75f;
    } else if (v == 2) {
        p.temperature = 1.2f;
        p.top_k = 6;
        p.min_p = 0.1f;
    }
    return p;
}

static void run_distribution(sampler_spec_kind kind) {
    /* one thread: tokens do not depend on the thread count, and on a loaded machine many tiny parallel
     * regions per step cost far more than they save at this size */
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    model *m = tiny_model(32, 2, 11, 4.0f);
    model *dm = tiny_model(16, 1, 12, 4.0f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    sampler *s = NULL, *ds = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 64, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sampler_create(&ds, dm, 64, &err), 0);
    int32_t prompt[PLEN] = {3, 7, 1, 3};
    for (int v = 0; v < 3; v++) {
        sample_params p = variant_params(v);
        double *joint = exact_joint(m, prompt, &p);
        sampler_spec_options o = sampler_spec_options_default();
        o.kind = kind;
        o.adaptive = 0; /* draft on every step, so the acceptance rule decides every token */
        o.ngram_min = 1;
        o.draft = ds;
        sampler_spec *sp = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_spec_create(&sp, &o, &err), 0);
        printf("\n  %s, variant %d:", sampler_spec_kind_name(kind), v);
        double pv = draw_pvalue(m, s, sp, prompt, &p, joint, 1000 + 77 * (uint64_t)v);
        sampler_spec_stats stt;
        sampler_spec_get_stats(sp, &stt);
        printf(" (drafted %llu, accepted %llu)", (unsigned long long)stt.drafted, (unsigned long long)stt.accepted);
        CU_ASSERT(pv > 1e-4);
        /* both branches of the rule ran many times */
        CU_ASSERT(stt.drafted > NDRAW / 2);
        CU_ASSERT(stt.accepted > stt.drafted / 20 && stt.accepted < stt.drafted);
        if (v == 0 && kind == SAMPLER_SPEC_NGRAM) { /* the oracle itself against plain sampling */
            printf("\n  plain, variant 0:");
            CU_ASSERT(draw_pvalue(m, s, NULL, prompt, &p, joint, 99) > 1e-4);
        }
        sampler_spec_destroy(&sp);
        free(joint);
    }
    sampler_destroy(&s);
    sampler_destroy(&ds);
    model_destroy(&m);
    model_destroy(&dm);
    omp_set_num_threads(threads);
}

static void test_distribution_ngram(void) { run_distribution(SAMPLER_SPEC_NGRAM); }
static void test_distribution_draft(void) { run_distribution(SAMPLER_SPEC_DRAFT_MODEL); }

/* ---------------------------------------------------------------- greedy and log-probs */

enum { NP = 6, K = 4, NREQ = NP * K };

static void make_prompts(int32_t prompts[NP][8], int *plen) {
    rlhf_rng r;
    rlhf_rng_seed(&r, 5);
    for (int i = 0; i < NP; i++) {
        plen[i] = 3 + i % 4;
        for (int t = 0; t < plen[i]; t++) prompts[i][t] = (int32_t)(rlhf_rng_u64(&r) % VOCAB);
    }
}

static void fill_requests(sample_request *reqs, int32_t prompts[NP][8], const int *plen, sample_params p, int max_new) {
    for (int i = 0; i < NREQ; i++) {
        reqs[i].prompt = prompts[i / K];
        reqs[i].prompt_len = plen[i / K];
        reqs[i].params = p;
        reqs[i].params.max_new_tokens = max_new;
        reqs[i].params.seed = 40 + (uint64_t)i;
    }
}

static void test_greedy_identical(void) {
    model *m = tiny_model(32, 2, 21, 4.0f);
    model *dm = tiny_model(16, 1, 22, 4.0f);
    sampler *s = NULL, *ds = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 8, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sampler_create(&ds, dm, 8, &err), 0);
    int32_t prompts[NP][8];
    int plen[NP];
    make_prompts(prompts, plen);
    sample_params p = sample_params_default();
    p.temperature = 0.0f;
    static sample_request reqs[NREQ];
    static sample_result plain[NREQ], spec[NREQ];
    fill_requests(reqs, prompts, plen, p, 40);
    /* a stop id that greedy decoding reaches mid-completion (its 9th token): whatever was verified after it
     * is dropped */
    static int32_t stop_ids[NREQ];
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, NULL, reqs, NREQ, plain, &err), 0);
    for (int i = 0; i < NREQ; i++) {
        stop_ids[i] = plain[i].tokens[plain[i].n_tokens > 8 ? 8 : plain[i].n_tokens - 1];
        sample_result_free(&plain[i]);
    }
    for (int i = 0; i < NREQ; i++) {
        if (i % 3 == 1) {
            reqs[i].params.stop_ids = &stop_ids[i];
            reqs[i].params.n_stop_ids = 1;
        }
        if (i % 3 == 2) reqs[i].params.max_new_tokens = 100; /* runs into max_seq_len: drafts near the end */
    }
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, NULL, reqs, NREQ, plain, &err), 0);
    int n_stop = 0, n_maxlen = 0;
    for (int i = 0; i < NREQ; i++) {
        n_stop += plain[i].finish == SAMPLE_FINISH_STOP;
        n_maxlen += plain[i].finish == SAMPLE_FINISH_MAX_SEQ_LEN;
    }
    CU_ASSERT(n_maxlen > 0);
    CU_ASSERT(n_stop > 0);
    for (int kind = SAMPLER_SPEC_NGRAM; kind <= SAMPLER_SPEC_DRAFT_MODEL; kind++)
        for (int adaptive = 0; adaptive < 2; adaptive++) {
            sampler_spec_options o = sampler_spec_options_default();
            o.kind = (sampler_spec_kind)kind;
            o.adaptive = adaptive;
            o.draft = ds;
            sampler_spec *sp = NULL;
            CU_ASSERT_EQUAL_FATAL(sampler_spec_create(&sp, &o, &err), 0);
            for (int rep = 0; rep < 2; rep++) { /* the second run drafts from the first one's completions too */
                CU_ASSERT_EQUAL_FATAL(sampler_run_spec(s, sp, NULL, reqs, NREQ, spec, &err), 0);
                int same = 1;
                for (int i = 0; i < NREQ; i++) {
                    same &= spec[i].n_tokens == plain[i].n_tokens &&
                            !memcmp(spec[i].tokens, plain[i].tokens, sizeof(int32_t) * (size_t)plain[i].n_tokens) &&
                            !memcmp(spec[i].logprobs, plain[i].logprobs, sizeof(float) * (size_t)plain[i].n_tokens) &&
                            !memcmp(spec[i].sampling_logprobs, plain[i].sampling_logprobs,
                                    sizeof(float) * (size_t)plain[i].n_tokens) &&
                            spec[i].finish == plain[i].finish;
                    sample_result_free(&spec[i]);
                }
                CU_ASSERT(same);
            }
            sampler_spec_stats stt;
            sampler_spec_get_stats(sp, &stt);
            printf("\n  %s adaptive=%d: drafted %llu accepted %llu", sampler_spec_kind_name(o.kind), adaptive,
                   (unsigned long long)stt.drafted, (unsigned long long)stt.accepted);
            /* drafts were verified (the adaptive run may give up on a random draft model after probing) */
            CU_ASSERT(stt.drafted > 0);
            if (!adaptive || kind == SAMPLER_SPEC_NGRAM) CU_ASSERT(stt.accepted > 0);
            sampler_spec_destroy(&sp);
        }
    for (int i = 0; i < NREQ; i++) sample_result_free(&plain[i]);
    sampler_destroy(&s);
    sampler_destroy(&ds);
    model_destroy(&m);
    model_destroy(&dm);
}

/* Recorded log pi and log q against the trainer's forward of prompt + completion. */
static void test_logprobs_match_scoring(void) {
    model *m = tiny_model(32, 2, 31, 4.0f);
    model *dm = tiny_model(16, 1, 32, 4.0f);
    sampler *s = NULL, *ds = NULL;
    model_trainer *tr = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 8, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sampler_create(&ds, dm, 8, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 1, 48, &err), 0);
    int32_t prompts[NP][8];
    int plen[NP];
    make_prompts(prompts, plen);
    static sample_request reqs[NREQ];
    static sample_result res[NREQ];
    double worst_pi = 0.0, worst_q = 0.0;
    long checked = 0;
    for (int kind = SAMPLER_SPEC_NGRAM; kind <= SAMPLER_SPEC_DRAFT_MODEL; kind++)
        for (int v = 0; v < 3; v++) {
            sampler_spec_options o = sampler_spec_options_default();
            o.kind = (sampler_spec_kind)kind;
            o.adaptive = 0;
            o.ngram_min = 1;
            o.draft = ds;
            sampler_spec *sp = NULL;
            CU_ASSERT_EQUAL_FATAL(sampler_spec_create(&sp, &o, &err), 0);
            fill_requests(reqs, prompts, plen, variant_params(v), 30);
            CU_ASSERT_EQUAL_FATAL(sampler_run_spec(s, sp, NULL, reqs, NREQ, res, &err), 0);
            for (int i = 0; i < NREQ; i++) {
                int P = reqs[i].prompt_len, n = res[i].n_tokens, T = P + n;
                int32_t tokens[48], targets[48];
                memcpy(tokens, reqs[i].prompt, sizeof(int32_t) * (size_t)P);
                memcpy(tokens + P, res[i].tokens, sizeof(int32_t) * (size_t)n);
                for (int t = 0; t < T; t++) targets[t] = t + 1 < T && t + 1 >= P ? tokens[t + 1] : -1;
                CU_ASSERT_EQUAL_FATAL(model_forward(tr, tokens, targets, 1, T, &err), 0);
                const float *lp = model_trainer_logprobs(tr), *lg = model_trainer_logits(tr);
                for (int t = 0; t < n; t++) {
                    double d = fabs((double)res[i].logprobs[t] - lp[P - 1 + t]);
                    worst_pi = fmax(worst_pi, d);
                    double q[VOCAB];
                    oracle_q(lg + (size_t)(P - 1 + t) * VOCAB, VOCAB, &reqs[i].params, q);
                    double dq = fabs((double)res[i].sampling_logprobs[t] - log(q[res[i].tokens[t]]));
                    worst_q = fmax(worst_q, dq);
                    checked++;
                }
                sample_result_free(&res[i]);
            }
            sampler_spec_destroy(&sp);
        }
    printf("\n  %ld tokens: max |log pi - score| %.2g, max |log q - score's q| %.2g", checked, worst_pi, worst_q);
    CU_ASSERT(checked > 1000);
    CU_ASSERT(worst_pi < 1e-5);
    CU_ASSERT(worst_q < 1e-5);
    model_trainer_destroy(&tr);
    sampler_destroy(&s);
    sampler_destroy(&ds);
    model_destroy(&m);
    model_destroy(&dm);
}

static void test_bad_options(void) {
    sampler_spec *sp = NULL;
    rlhf_error err = {0};
    sampler_spec_options o = sampler_spec_options_default();
    o.kind = SAMPLER_SPEC_NGRAM;
    o.gamma = 0;
    CU_ASSERT_EQUAL(sampler_spec_create(&sp, &o, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "gamma"));
    o = sampler_spec_options_default();
    o.kind = SAMPLER_SPEC_DRAFT_MODEL;
    CU_ASSERT_EQUAL(sampler_spec_create(&sp, &o, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "draft model"));
    sampler_spec_kind k;
    CU_ASSERT_EQUAL(sampler_spec_kind_parse(&k, "medusa", "x", &err), RLHF_EINVAL);
    CU_ASSERT_EQUAL(sampler_spec_kind_parse(&k, "ngram", "x", &err), 0);
    CU_ASSERT_EQUAL(k, SAMPLER_SPEC_NGRAM);
    /* a draft model with another vocabulary is refused when the run starts */
    model *m = tiny_model(32, 2, 41, 4.0f);
    model_config c = m->cfg;
    c.vocab_size = VOCAB + 1;
    model *dm = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&dm, &c, &err), 0);
    sampler *s = NULL, *ds = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 2, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sampler_create(&ds, dm, 2, &err), 0);
    o.draft = ds;
    CU_ASSERT_EQUAL_FATAL(sampler_spec_create(&sp, &o, &err), 0);
    int32_t prompt[2] = {1, 2};
    sample_request rq = {.prompt = prompt, .prompt_len = 2, .params = sample_params_default()};
    sample_result r;
    CU_ASSERT_EQUAL(sampler_run_spec(s, sp, NULL, &rq, 1, &r, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "vocab_size"));
    sampler_spec_destroy(&sp);
    sampler_destroy(&s);
    sampler_destroy(&ds);
    model_destroy(&m);
    model_destroy(&dm);
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("speculative", NULL, NULL);
    CU_add_test(s, "bad options refused", test_bad_options);
    CU_add_test(s, "greedy: identical to plain decoding", test_greedy_identical);
    CU_add_test(s, "log-probs equal the scoring forward", test_logprobs_match_scoring);
    CU_add_test(s, "n-gram: first three tokens distributed as the target's q (chi-square)", test_distribution_ngram);
    CU_add_test(s, "draft model: first three tokens distributed as the target's q (chi-square)",
                test_distribution_draft);
    return 0;
}
