/* model/speculative.c — speculative decoding over the KV-cache sampler (model_infer.h, "speculative
 * decoding"): the proposers, the verification and the step API (sampler_spec_batch) that both decoding
 * loops use — sampler_run_stream_spec (model/speculative_run.c) and rlhf serve's worker.
 *
 * A generating sequence feeds its last token plus g draft tokens as g + 1 rows of one forward step
 * (sampler_step: the same path prompt rows take, so the rows see each other through the cache), and
 * takes logits for all of them. The verification then walks the rows in order with the target's
 * processed distribution q of each row (spec_dist_build: temperature, top-k, top-p, min-p, exactly the
 * filters of the plain sampler):
 *   point-mass draft x (n-gram): keep x with probability q(x); else draw from q without x, renormalised;
 *   draft model with distribution d: keep x with probability min(1, q(x)/d(x)); else draw from
 *     max(0, q - d) renormalised;
 *   every draft kept: draw one more token from the last row's q.
 * This is the standard speculative sampling argument: each emitted token is distributed as q given the
 * tokens before it. Greedy decoding keeps a draft exactly when it is the argmax. Positions past the
 * kept prefix stay in the cache as garbage and are overwritten by later steps before any row attends
 * to them (attention of position p reads 0..p only), which is the rollback.
 *
 * How many tokens to draft: per sequence an acceptance estimate alpha (decayed counts) and a cost model
 * of the step, time = a + b * rows (least squares with forgetting over the steps seen), give the number
 * g maximising E[tokens | alpha, g] / (1 + c g), c = b / (a / n + b) the cost of one extra row relative to a
 * sequence's share of a plain step (n generating sequences). g = 0 is plain decoding; a sequence at 0
 * probes with one draft token every PROBE_EVERY steps so a change of regime is noticed. */
#include "model/kernels_int.h"
#include "model/model.h"
#include "model/sampler_int.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SPEC_MAX_GAMMA = 16, HIST_PROMPTS = 512, PROBE_EVERY = 16 };

typedef struct cand {
    float z; /* temperature-scaled logit minus the largest */
    float w; /* exp(z) */
    int id;
} cand;

typedef struct hist_entry {
    uint64_t key;
    int32_t *prompt;
    int plen;
    int32_t **seq; /* (history) completions, a ring */
    int *len;
    int n, next;
    uint64_t used;
} hist_entry;

struct sampler_spec {
    sampler_spec_options o;
    sampler_spec_stats st;
    hist_entry *hist; /* (HIST_PROMPTS) */
    int n_hist;
    uint64_t clock;
    double f0, f1, f2, fy, fxy; /* cost fit sums (weights decay by 0.97 per step) */
    double dp_time, dp_tokens;  /* draft model: CPU seconds of its draft phases and the drafts they made (decayed) */
    double g_num, g_den;        /* acceptance over all sequences (decayed): a new sequence's prior */
};

/* The processed distribution of one row. w (V) holds the unnormalised weights of the tokens that
 * survive the filters (0 elsewhere); q(y) = w[y] / kept. */
typedef struct spec_dist {
    int greedy, plain, amax;
    double lse, kept;
} spec_dist;

/* One cache slot's sequence, as the step API sees it: its context is prompt ++ toks. */
typedef struct spec_slot {
    int active;
    const int32_t *prompt; /* the caller's */
    int prompt_len;
    sample_params p;
    int32_t *toks;         /* (n_toks) the committed tokens; cap allocated (kept across sequences) */
    int n_toks, cap;
    rlhf_rng rng, drng; /* acceptance and bonus draws; the draft model's own draws */
    uint64_t key;       /* hash of the prompt */
    double a_num, a_den;
    int off_steps;
    int g;                          /* draft tokens this step */
    int32_t draft[SPEC_MAX_GAMMA];
    int dfed;                       /* draft model: context tokens in the draft model's cache */
    int n_emit, n_acc;
    int32_t emit[SPEC_MAX_GAMMA + 1];
    float emit_lp[SPEC_MAX_GAMMA + 1], emit_lq[SPEC_MAX_GAMMA + 1];
} spec_slot;

sampler_spec_options sampler_spec_options_default(void) {
    sampler_spec_options o;
    memset(&o, 0, sizeof o);
    o.kind = SAMPLER_SPEC_OFF;
    o.gamma = 4;
    o.ngram_max = 8;
    o.ngram_min = 2;
    o.history = 16;
    o.adaptive = 1;
    return o;
}

const char *sampler_spec_kind_name(sampler_spec_kind k) {
    return k == SAMPLER_SPEC_NGRAM ? "ngram" : k == SAMPLER_SPEC_DRAFT_MODEL ? "draft" : "off";
}

int sampler_spec_kind_parse(sampler_spec_kind *k, const char *name, const char *where, rlhf_error *err) {
    if (!strcmp(name, "off")) *k = SAMPLER_SPEC_OFF;
    else if (!strcmp(name, "ngram")) *k = SAMPLER_SPEC_NGRAM;
    else if (!strcmp(name, "draft")) *k = SAMPLER_SPEC_DRAFT_MODEL;
    else return rlhf_error_set(err, RLHF_EINVAL, where, "drafter must be \"off\", \"ngram\" or \"draft\", got \"%s\"", name);
    return 0;
}

int sampler_spec_create(sampler_spec **out, const sampler_spec_options *opt, rlhf_error *err) {
    *out = NULL;
    sampler_spec_options o = opt ? *opt : sampler_spec_options_default();
    if (o.kind < SAMPLER_SPEC_OFF || o.kind > SAMPLER_SPEC_DRAFT_MODEL)
        return RLHF_FAIL(err, RLHF_EINVAL, "speculative decoding: unknown drafter %d", (int)o.kind);
    if (o.gamma < 1 || o.gamma > SPEC_MAX_GAMMA)
        return RLHF_FAIL(err, RLHF_EINVAL, "speculative decoding: gamma must be in 1..%d, got %d", SPEC_MAX_GAMMA,
                         o.gamma);
    if (o.ngram_min < 1 || o.ngram_max < o.ngram_min || o.ngram_max > 64)
        return RLHF_FAIL(err, RLHF_EINVAL, "speculative decoding: need 1 <= ngram_min <= ngram_max <= 64, got %d, %d",
                         o.ngram_min, o.ngram_max);
    if (o.history < 0 || o.history > 1024)
        return RLHF_FAIL(err, RLHF_EINVAL, "speculative decoding: history must be in 0..1024, got %d", o.history);
    if (o.kind == SAMPLER_SPEC_DRAFT_MODEL && !o.draft)
        return RLHF_FAIL(err, RLHF_EINVAL, "speculative decoding: the draft drafter needs a draft model");
    sampler_spec *sp = calloc(1, sizeof *sp);
    if (!sp || !(sp->hist = calloc(HIST_PROMPTS, sizeof *sp->hist))) {
        free(sp);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    sp->o = o;
    *out = sp;
    return 0;
}

static void hist_clear(hist_entry *h) {
    for (int i = 0; i < h->n; i++) free(h->seq[i]);
    free(h->seq);
    free(h->len);
    free(h->prompt);
    memset(h, 0, sizeof *h);
}

void sampler_spec_destroy(sampler_spec **psp) {
    if (!psp || !*psp) return;
    sampler_spec *sp = *psp;
    for (int i = 0; i < sp->n_hist; i++) hist_clear(&sp->hist[i]);
    free(sp->hist);
    free(sp);
    *psp = NULL;
}

void sampler_spec_get_stats(const sampler_spec *sp, sampler_spec_stats *out) {
    if (sp) *out = sp->st;
    else memset(out, 0, sizeof *out);
}

const sampler_spec_options *sampler_spec_options_of(const sampler_spec *sp) { return &sp->o; }

/* ---------------------------------------------------------------- the processed distribution */

static int cand_before_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (a->z != b->z) return a->z > b->z ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int cand_worse(const cand *a, const cand *b) { return a->z < b->z || (a->z == b->z && a->id > b->id); }

static void heap_sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && cand_worse(&h[l], &h[w])) w = l;
        if (r < n && cand_worse(&h[r], &h[w])) w = r;
        if (w == i) return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* d and w (V) <- the distribution the plain sampler draws from for these logits and parameters (the
 * same kernels and filter order as its choose_token; the nucleus by sorting instead of selection, which
 * keeps the same set). scratch: V candidates. */
static void spec_dist_build(const model_kernels *k, const float *logits, int V, const sample_params *sp, cand *scratch,
                            float *w, spec_dist *d) {
    memset(d, 0, sizeof *d);
    float mx = k->max_value(logits, V);
    int amax = 0;
    while (amax < V - 1 && logits[amax] != mx) amax++;
    d->amax = amax;
    double sum = k->exp_shifted(w, logits, V, mx, 1.0f);
    d->lse = (double)mx + log(sum);
    if (sp->temperature == 0.0f) {
        d->greedy = 1;
        return;
    }
    if (sp->temperature == 1.0f && (sp->top_k <= 0 || sp->top_k >= V) && sp->top_p >= 1.0f && sp->min_p <= 0.0f) {
        d->plain = 1;
        d->kept = sum;
        return;
    }
    float inv_t = 1.0f / sp->temperature;
    int n;
    double total;
    if (sp->top_k > 0 && sp->top_k < V) {
        int kk = sp->top_k;
        for (int i = 0; i < kk; i++) scratch[i] = (cand){(logits[i] - mx) * inv_t, 0.0f, i};
        for (int i = kk / 2 - 1; i >= 0; i--) heap_sift_down(scratch, kk, i);
        for (int i = kk; i < V; i++) {
            cand c = {(logits[i] - mx) * inv_t, 0.0f, i};
            if (cand_worse(&scratch[0], &c)) {
                scratch[0] = c;
                heap_sift_down(scratch, kk, 0);
            }
        }
        n = kk;
        total = 0.0;
        for (int i = 0; i < n; i++) total += (scratch[i].w = expf(scratch[i].z));
    } else {
        total = inv_t == 1.0f ? sum : k->exp_shifted(w, logits, V, mx, inv_t);
        double cut = sp->top_p < 1.0f && V > 1 ? (1.0 - (double)sp->top_p) / (double)(V - 1) * total : 0.0;
        if (sp->min_p > 0.0f && (double)sp->min_p * w[amax] > cut) cut = (double)sp->min_p * w[amax];
        n = 0;
        for (int i = 0; i < V; i++)
            if (!(w[i] < cut)) scratch[n++] = (cand){(logits[i] - mx) * inv_t, w[i], i};
    }
    int keep = n;
    if (sp->top_p < 1.0f) {
        qsort(scratch, (size_t)n, sizeof *scratch, cand_before_cmp);
        double need = (double)sp->top_p * total, acc = 0.0;
        keep = 0;
        while (keep < n) {
            acc += scratch[keep++].w;
            if (acc >= need) break;
        }
        if (keep < 1) keep = 1;
    }
    if (sp->min_p > 0.0f) {
        float wmax = 0.0f;
        for (int i = 0; i < keep; i++) wmax = scratch[i].w > wmax ? scratch[i].w : wmax;
        float floor_w = sp->min_p * wmax;
        int m = 0;
        for (int i = 0; i < keep; i++)
            if (scratch[i].w >= floor_w) scratch[m++] = scratch[i];
        keep = m;
    }
    memset(w, 0, (size_t)V * sizeof *w);
    double kept = 0.0;
    for (int i = 0; i < keep; i++) {
        w[scratch[i].id] = scratch[i].w;
        kept += scratch[i].w;
    }
    d->kept = kept;
}

static double uniform53(rlhf_rng *r) { return (double)(rlhf_rng_u64(r) >> 11) * 0x1.0p-53; }

/* A draw from w (V) (total mass `total`) skipping id `skip` (-1: none). */
static int32_t walk(const float *w, int V, double total, int skip, double u) {
    double target = u * total, acc = 0.0;
    int last = -1;
    for (int i = 0; i < V; i++) {
        if (i == skip || w[i] <= 0.0f) continue;
        acc += w[i];
        last = i;
        if (acc > target) return i;
    }
    return last >= 0 ? last : (skip == 0 ? 1 : 0);
}

static int32_t dist_draw(const spec_dist *d, const float *w, int V, rlhf_rng *rng) {
    if (d->greedy) return d->amax;
    return walk(w, V, d->kept, -1, uniform53(rng));
}

static void dist_logprobs(const spec_dist *d, const float *logits, const float *w, int32_t y, float *lp) {
    lp[0] = (float)((double)logits[y] - d->lse);
    lp[1] = d->greedy ? 0.0f : d->plain ? lp[0] : (float)(log((double)w[y]) - log(d->kept));
}

/* ---------------------------------------------------------------- the n-gram proposer */

static uint64_t hash_tokens(const int32_t *t, int n) {
    uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)n;
    for (int i = 0; i < n; i++) h = (h ^ (uint32_t)t[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static hist_entry *hist_find(sampler_spec *sp, uint64_t key, const int32_t *prompt, int plen) {
    for (int i = 0; i < sp->n_hist; i++) {
        hist_entry *h = &sp->hist[i];
        if (h->key == key && h->plen == plen && !memcmp(h->prompt, prompt, (size_t)plen * sizeof *prompt)) return h;
    }
    return NULL;
}

/* Keeps a finished completion for later sequences of the same prompt (best effort: out of memory
 * keeps nothing). */
static void hist_add(sampler_spec *sp, const spec_slot *sl) {
    int H = sp->o.history;
    if (H <= 0 || sl->n_toks < 1) return;
    hist_entry *h = hist_find(sp, sl->key, sl->prompt, sl->prompt_len);
    if (!h) {
        if (sp->n_hist < HIST_PROMPTS) h = &sp->hist[sp->n_hist++];
        else { /* the least recently used prompt goes */
            h = &sp->hist[0];
            for (int i = 1; i < sp->n_hist; i++)
                if (sp->hist[i].used < h->used) h = &sp->hist[i];
            hist_clear(h);
        }
        h->prompt = malloc((size_t)sl->prompt_len * sizeof(int32_t));
        h->seq = calloc((size_t)H, sizeof *h->seq);
        h->len = calloc((size_t)H, sizeof *h->len);
        if (!h->prompt || !h->seq || !h->len) {
            hist_clear(h);
            return;
        }
        memcpy(h->prompt, sl->prompt, (size_t)sl->prompt_len * sizeof(int32_t));
        h->plen = sl->prompt_len;
        h->key = sl->key;
    }
    h->used = ++sp->clock;
    int32_t *copy = malloc((size_t)sl->n_toks * sizeof(int32_t));
    if (!copy) return;
    memcpy(copy, sl->toks, (size_t)sl->n_toks * sizeof(int32_t));
    int at = h->next;
    if (h->n < H) h->n++;
    else free(h->seq[at]);
    h->seq[at] = copy;
    h->len[at] = sl->n_toks;
    h->next = (at + 1) % H;
}

/* A sequence seen as prompt ++ completion. */
typedef struct vseq {
    const int32_t *p, *c;
    int plen, len;
} vseq;

static inline int32_t vs_at(const vseq *v, int i) { return i < v->plen ? v->p[i] : v->c[i - v->plen]; }

/* Best continuation in v of the context's suffix: positions j in [from, v->len) whose preceding tokens
 * match the context's last ones; updates *best_n (matched length, capped at nmax) and *best_j, *best_cont
 * (continuation length, capped at want) when better (longer match, then longer continuation). */
static void match_in(const vseq *ctx, const vseq *v, int from, int upto, int nmin, int nmax, int want, int *best_n,
                     int *best_cont, const vseq **best_v, int *best_j) {
    int L = ctx->len;
    for (int j = upto - 1; j >= from && j >= 1; j--) {
        int n = 0;
        /* both ends bounded: a longer sequence can match the whole of a short context (prompt included) */
        while (n < nmax && j - 1 - n >= 0 && L - 1 - n >= 0 && vs_at(v, j - 1 - n) == vs_at(ctx, L - 1 - n)) n++;
        if (n < nmin) continue;
        int cont = v->len - j < want ? v->len - j : want;
        if (n > *best_n || (n == *best_n && cont > *best_cont)) {
            *best_n = n;
            *best_cont = cont;
            *best_v = v;
            *best_j = j;
        }
    }
}

static int ngram_propose(sampler_spec *sp, spec_slot *st, int B, int b, int want, int32_t *out) {
    spec_slot *me = &st[b];
    vseq ctx = {me->prompt, me->toks, me->prompt_len, me->prompt_len + me->n_toks};
    int nmin = sp->o.ngram_min, nmax = sp->o.ngram_max, best_n = 0, best_cont = 0, best_j = -1;
    const vseq *best_v = NULL;
    enum { MAXV = 1100 };
    static __thread vseq vs[MAXV]; /* per-thread: proposals run one per thread */
    int nv = 0;
    for (int o = 0; o < B && nv < MAXV; o++) /* the other sequences of this prompt, decoding now */
        if (o != b && st[o].active && st[o].key == me->key && st[o].prompt_len == me->prompt_len &&
            st[o].n_toks > 0)
            vs[nv++] = (vseq){me->prompt, st[o].toks, me->prompt_len, me->prompt_len + st[o].n_toks};
    hist_entry *h = hist_find(sp, me->key, me->prompt, me->prompt_len);
    if (h)
        for (int i = 0; i < h->n && nv < MAXV; i++) { /* newest first */
            int at = ((h->next - 1 - i) % h->n + h->n) % h->n;
            vs[nv++] = (vseq){me->prompt, h->seq[at], me->prompt_len, me->prompt_len + h->len[at]};
        }
    for (int i = 0; i < nv; i++)
        match_in(&ctx, &vs[i], vs[i].plen, vs[i].len, nmin, nmax, want, &best_n, &best_cont, &best_v, &best_j);
    /* the sequence itself (prompt included): a continuation that starts before its end */
    match_in(&ctx, &ctx, 1, ctx.len, nmin, nmax, want, &best_n, &best_cont, &best_v, &best_j);
    if (!best_v || best_cont < 1) return 0;
    for (int i = 0; i < best_cont; i++) out[i] = vs_at(best_v, best_j + i);
    return best_cont;
}

/* ---------------------------------------------------------------- how many to draft */

/* Process CPU seconds: the cost fit measures the work a step takes; wall time on a shared machine would
 * carry the neighbours' load into it. */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The fit time = a + b * rows of the steps seen; 0 when it is not usable yet (too few steps, too little
 * spread in the row counts, or a slope or intercept that makes no sense). */
static int cost_fit(const sampler_spec *sp, double *a, double *b) {
    double den = sp->f0 * sp->f2 - sp->f1 * sp->f1;
    if (sp->f0 < 8.0 || den <= 1e-6 * sp->f0 * sp->f2) return 0;
    *b = (sp->f0 * sp->fxy - sp->f1 * sp->fy) / den;
    *a = (sp->fy - *b * sp->f1) / sp->f0;
    return *b > 0.0 && *a >= 0.0;
}

/* The cost of one more row for a sequence relative to its share of a plain step of n_gen rows. Without a
 * usable fit: n / (n + 8), i.e. rows nearly free for a single stream (memory-bound decoding) and nearly
 * full price for a large batch (compute-bound), the cautious side of both. */
static double cost_per_row(const sampler_spec *sp, int n_gen) {
    double a, b, n = n_gen > 0 ? n_gen : 1;
    double c = cost_fit(sp, &a, &b) ? b / (a / n + b) : n / (n + 8.0);
    return c < 0.005 ? 0.005 : c > 1.0 ? 1.0 : c;
}

/* The cost of one draft-model forward step relative to a plain target step with n_gen rows (0 for the
 * n-gram proposer, whose lookup is cheap): a draft step is shared by every drafting sequence, as the
 * target's step is, so drafting g tokens costs a sequence about g such steps. */
static double draft_step_cost(const sampler_spec *sp, int n_gen) {
    if (sp->o.kind != SAMPLER_SPEC_DRAFT_MODEL) return 0.0;
    double a, b, n = n_gen > 0 ? n_gen : 1;
    if (sp->dp_tokens <= 0.0 || !cost_fit(sp, &a, &b)) return 0.25;
    /* a draft token's share of the draft phases (its catch-up of new context included) against a
     * sequence's share of a plain step */
    double d = sp->dp_time / sp->dp_tokens / (a / n + b);
    return d < 0.0 ? 0.0 : d > 4.0 ? 4.0 : d;
}

static int choose_gamma(const sampler_spec *sp, spec_slot *sl, double c) {
    int G = sp->o.gamma;
    if (!sp->o.adaptive) return G;
    double alpha = (sl->a_num + 0.6) / (sl->a_den + 1.0);
    int best = 0;
    double best_v = 1.0, pw = alpha;
    for (int g = 1; g <= G; g++) {
        pw *= alpha; /* alpha^(g+1) */
        double e = alpha >= 0.9999 ? g + 1 : (1.0 - pw) / (1.0 - alpha);
        double v = e / (1.0 + c * g); /* c: extra target rows and draft steps, per token drafted */
        if (v > best_v * 1.02) {
            best_v = v;
            best = g;
        }
    }
    if (best == 0 && ++sl->off_steps >= PROBE_EVERY) {
        sl->off_steps = 0;
        return 1;
    }
    if (best > 0) sl->off_steps = 0;
    return best;
}

/* ---------------------------------------------------------------- the draft model */

typedef struct draft_buf {
    float *q;      /* (B, gamma, V) the draft's processed weights per drafted token */
    spec_dist *dd; /* (B, gamma) */
    float *logits; /* (max(B, rows), V) */
    int *slot, *pos, *lrows, *lslot;
    int32_t *tok;
} draft_buf;

static int32_t ctx_token(const spec_slot *sl, int i) {
    return i < sl->prompt_len ? sl->prompt[i] : sl->toks[i - sl->prompt_len];
}

/* Drafts st[b].g tokens for every slot with g > 0 with the draft model, keeping its distributions. */
static int draft_model_propose(sampler_spec *sp, spec_slot *st, int B, draft_buf *db, cand *cands, rlhf_error *err) {
    sampler *ds = sp->o.draft;
    const model_kernels *k = sampler_int_kernels(ds);
    int V = sampler_int_model(ds)->cfg.vocab_size, G = sp->o.gamma, maxr = sampler_max_rows(ds), rc;
    int DT = sampler_int_model(ds)->cfg.max_seq_len;
    for (int b = 0; b < B; b++) { /* the draft's context must fit it */
        spec_slot *sl = &st[b];
        int L = sl->prompt_len + sl->n_toks;
        if (sl->g > DT - L) sl->g = DT - L > 0 ? DT - L : 0;
    }
    for (int b = 0; b < B; b++) { /* the last context token is fed again: its logits give the first draft */
        spec_slot *sl = &st[b];
        int L = sl->prompt_len + sl->n_toks;
        if (sl->active && sl->g > 0 && sl->dfed > L - 1) sl->dfed = L - 1;
    }
    for (int round = 0; round < G; round++) {
        /* round 0: the context tokens not yet in the draft cache, in chunks of the row budget; round r > 0:
         * draft token r - 1. A slot is due in round r when its cache holds L + r - 1 tokens. */
        for (;;) {
            int R = 0, NL = 0, pending = 0;
            for (int b = 0; b < B; b++) {
                spec_slot *sl = &st[b];
                if (!sl->active || sl->g <= round) continue;
                int L = sl->prompt_len + sl->n_toks;
                if (sl->dfed != L + round - 1 && !(round == 0 && sl->dfed < L)) continue;
                int chunk = round == 0 ? L - sl->dfed : 1;
                if (chunk > maxr - R) chunk = maxr - R;
                if (chunk <= 0) {
                    pending = 1;
                    continue;
                }
                for (int t = 0; t < chunk; t++) {
                    int pos = sl->dfed + t;
                    db->slot[R] = b;
                    db->pos[R] = pos;
                    db->tok[R] = pos < L ? ctx_token(sl, pos) : sl->draft[pos - L];
                    R++;
                }
                sl->dfed += chunk;
                if (sl->dfed == L + round) {
                    db->lslot[NL] = b;
                    db->lrows[NL++] = R - 1;
                } else
                    pending = 1;
            }
            if (R == 0) break;
            if ((rc = sampler_step(ds, R, db->slot, db->pos, db->tok, NL, db->lrows, db->logits, err))) return rc;
            for (int i = 0; i < NL; i++) {
                spec_slot *sl = &st[db->lslot[i]];
                size_t at = (size_t)db->lslot[i] * G + round;
                float *w = db->q + at * V;
                spec_dist_build(k, db->logits + (size_t)i * V, V, &sl->p, cands, w, &db->dd[at]);
                sl->draft[round] = dist_draw(&db->dd[at], w, V, &sl->drng);
            }
            if (!pending) break;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- verification */

/* Verifies st->g drafts against the g + 1 rows of logits (V each) and fills st->emit. */
static void verify_slot(const sampler_spec *sp, const model_kernels *k, spec_slot *sl, int slot_index,
                        const float *logits, int V, const draft_buf *db, cand *cands, float *w) {
    const sample_params *p = &sl->p;
    int G = sp->o.gamma, draft_model = sp->o.kind == SAMPLER_SPEC_DRAFT_MODEL;
    sl->n_emit = sl->n_acc = 0;
    for (int i = 0; i <= sl->g; i++) {
        const float *row = logits + (size_t)i * V;
        spec_dist d;
        spec_dist_build(k, row, V, p, cands, w, &d);
        int32_t y;
        int accepted = 0;
        if (i == sl->g) {
            y = dist_draw(&d, w, V, &sl->rng); /* every draft kept (or none drafted): one more from q */
        } else {
            int32_t x = sl->draft[i];
            if (d.greedy) {
                accepted = x == d.amax;
                y = d.amax;
            } else if (!draft_model) {
                double u = uniform53(&sl->rng);
                accepted = u * d.kept < (double)w[x];
                y = accepted ? x : walk(w, V, d.kept - (double)w[x], x, uniform53(&sl->rng));
            } else {
                size_t at = (size_t)slot_index * G + i;
                const spec_dist *dd = &db->dd[at];
                const float *qd = db->q + at * V;
                double pq = (double)w[x] / d.kept, qq = dd->greedy ? 1.0 : (double)qd[x] / dd->kept;
                double u = uniform53(&sl->rng);
                accepted = u * qq < pq;
                if (accepted)
                    y = x;
                else { /* residual max(0, q - d), as weights over the target's scale */
                    double tot = 0.0;
                    for (int v = 0; v < V; v++) {
                        double dv = dd->greedy ? (v == x ? 1.0 : 0.0) : (double)qd[v] / dd->kept;
                        double r = (double)w[v] / d.kept - dv;
                        if (r > 0) tot += r;
                    }
                    double target = uniform53(&sl->rng) * tot, acc = 0.0;
                    y = -1;
                    for (int v = 0; v < V && tot > 0; v++) {
                        double dv = dd->greedy ? (v == x ? 1.0 : 0.0) : (double)qd[v] / dd->kept;
                        double r = (double)w[v] / d.kept - dv;
                        if (r <= 0) continue;
                        acc += r;
                        y = v;
                        if (acc > target) break;
                    }
                    if (y < 0) y = walk(w, V, d.kept, -1, uniform53(&sl->rng));
                }
            }
        }
        float lp[2];
        sl->emit[sl->n_emit] = y;
        dist_logprobs(&d, row, w, y, lp);
        sl->emit_lp[sl->n_emit] = lp[0];
        sl->emit_lq[sl->n_emit] = lp[1];
        sl->n_emit++;
        if (i < sl->g && !accepted) break;
        if (i < sl->g) sl->n_acc++;
    }
}

/* ---------------------------------------------------------------- the step API */

struct sampler_spec_batch {
    sampler_spec *sp;
    sampler *s;
    const model_kernels *k;
    int B, V, T, nth;
    spec_slot *st;  /* (B) */
    cand *cands;    /* (nth, V) per-thread scratch of the verification */
    float *wbuf;    /* (nth, V) */
    draft_buf db;
    double c_step;  /* CPU clock when the step's timed work began (after the draft model's phase) */
    int timed;      /* propose ran since the last verify */
};

int sampler_spec_batch_create(sampler_spec_batch **out, sampler_spec *sp, sampler *target, rlhf_error *err) {
    *out = NULL;
    if (!sp || !target) return RLHF_FAIL(err, RLHF_EINVAL, "speculative decoding: no spec or no target sampler");
    const model *m = sampler_int_model(target);
    int V = m->cfg.vocab_size, B = sampler_int_max_batch(target), G = sp->o.gamma;
    int draft_model = sp->o.kind == SAMPLER_SPEC_DRAFT_MODEL;
    if (draft_model) {
        const model *dm = sampler_int_model(sp->o.draft);
        if (dm->cfg.vocab_size != V)
            return RLHF_FAIL(err, RLHF_EINVAL, "draft model: vocab_size %d differs from the target's %d (the two must "
                             "share a tokenizer)", dm->cfg.vocab_size, V);
        if (sampler_int_max_batch(sp->o.draft) < B)
            return RLHF_FAIL(err, RLHF_EINVAL, "draft model: its sampler has %d slots, the target's %d",
                             sampler_int_max_batch(sp->o.draft), B);
    }
    sampler_spec_batch *bt = calloc(1, sizeof *bt);
    if (!bt) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    bt->sp = sp;
    bt->s = target;
    bt->k = sampler_int_kernels(target);
    bt->B = B;
    bt->V = V;
    bt->T = m->cfg.max_seq_len;
    bt->nth = omp_get_max_threads();
    bt->st = calloc((size_t)B, sizeof *bt->st);
    bt->cands = malloc((size_t)bt->nth * V * sizeof(cand));
    bt->wbuf = malloc((size_t)bt->nth * V * sizeof(float));
    int ok = bt->st && bt->cands && bt->wbuf;
    if (ok && draft_model) {
        draft_buf *db = &bt->db;
        int dmax = sampler_max_rows(sp->o.draft);
        int nr = dmax > B ? dmax : B;
        db->q = malloc((size_t)B * G * V * sizeof(float));
        db->dd = calloc((size_t)B * G, sizeof *db->dd);
        db->logits = malloc((size_t)B * V * sizeof(float));
        db->slot = malloc((size_t)nr * sizeof(int));
        db->pos = malloc((size_t)nr * sizeof(int));
        db->lrows = malloc((size_t)nr * sizeof(int));
        db->lslot = malloc((size_t)nr * sizeof(int));
        db->tok = malloc((size_t)nr * sizeof(int32_t));
        ok = db->q && db->dd && db->logits && db->slot && db->pos && db->lrows && db->lslot && db->tok;
    }
    if (!ok) {
        sampler_spec_batch_destroy(&bt);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for speculative decoding's buffers");
    }
    *out = bt;
    return 0;
}

void sampler_spec_batch_destroy(sampler_spec_batch **pbt) {
    if (!pbt || !*pbt) return;
    sampler_spec_batch *bt = *pbt;
    for (int b = 0; bt->st && b < bt->B; b++) free(bt->st[b].toks);
    free(bt->st);
    free(bt->cands);
    free(bt->wbuf);
    free(bt->db.q);
    free(bt->db.dd);
    free(bt->db.logits);
    free(bt->db.slot);
    free(bt->db.pos);
    free(bt->db.lrows);
    free(bt->db.lslot);
    free(bt->db.tok);
    free(bt);
    *pbt = NULL;
}

void sampler_spec_seq_begin(sampler_spec_batch *bt, int slot, const int32_t *prompt, int prompt_len,
                            const sample_params *params) {
    sampler_spec *sp = bt->sp;
    spec_slot *sl = &bt->st[slot];
    int32_t *toks = sl->toks; /* the token buffer is reused */
    int cap = sl->cap;
    memset(sl, 0, sizeof *sl);
    sl->toks = toks;
    sl->cap = cap;
    sl->active = 1;
    sl->prompt = prompt;
    sl->prompt_len = prompt_len;
    sl->p = *params;
    sl->key = hash_tokens(prompt, prompt_len);
    if (sp->g_den > 0) { /* the prior: what drafting achieved lately, worth two observations */
        sl->a_num = 2.0 * sp->g_num / sp->g_den;
        sl->a_den = 2.0;
    }
    rlhf_rng_seed(&sl->rng, params->seed);
    rlhf_rng_seed(&sl->drng, params->seed ^ 0x5be2c3a1d4f60719ull);
}

void sampler_spec_seq_end(sampler_spec_batch *bt, int slot, int finished) {
    spec_slot *sl = &bt->st[slot];
    if (finished && sl->active) hist_add(bt->sp, sl);
    sl->active = 0;
    sl->g = sl->n_emit = 0;
}

int sampler_spec_propose(sampler_spec_batch *bt, int n, const int *slots, int budget, rlhf_error *err) {
    sampler_spec *sp = bt->sp;
    spec_slot *st = bt->st;
    int B = bt->B, rc = 0;
    for (int b = 0; b < B; b++) st[b].g = 0;
    double c = cost_per_row(sp, n) + draft_step_cost(sp, n);
    double t_draft = rlhf_now();
    bt->c_step = cpu_now(); /* the step's work for the cost fit */
    bt->timed = 1;
    if (sp->o.kind == SAMPLER_SPEC_OFF) return 0;
    for (int i = 0; i < n; i++) {
        spec_slot *sl = &st[slots[i]];
        int L = sl->prompt_len + sl->n_toks;
        int want = choose_gamma(sp, sl, c);
        if (want > bt->T - L) want = bt->T - L;
        if (want > sl->p.max_new_tokens - sl->n_toks - 1) want = sl->p.max_new_tokens - sl->n_toks - 1;
        if (want > budget) want = budget;
        if (want <= 0) continue;
        sl->g = want;
        budget -= want;
    }
    if (sp->o.kind == SAMPLER_SPEC_NGRAM) {
#pragma omp parallel for schedule(dynamic, 1) if (n >= 32) num_threads(bt->nth)
        for (int b = 0; b < B; b++)
            if (st[b].g > 0) st[b].g = ngram_propose(sp, st, B, b, st[b].g, st[b].draft);
    } else {
        double c0 = cpu_now(), ndraft = 0;
        rc = draft_model_propose(sp, st, B, &bt->db, bt->cands, err);
        for (int b = 0; b < B; b++) ndraft += st[b].active ? st[b].g : 0;
        bt->c_step = cpu_now(); /* the draft phase is costed on its own */
        if (!rc && ndraft > 0) {
            sp->dp_time = 0.95 * sp->dp_time + (bt->c_step - c0);
            sp->dp_tokens = 0.95 * sp->dp_tokens + ndraft;
        }
    }
    sp->st.draft_seconds += rlhf_now() - t_draft;
    return rc;
}

int sampler_spec_drafts(const sampler_spec_batch *bt, int slot, const int32_t **draft) {
    *draft = bt->st[slot].draft;
    return bt->st[slot].g;
}

void sampler_spec_verify(sampler_spec_batch *bt, int n, const int *slots, const int *lrow, const float *logits,
                         int n_rows) {
    sampler_spec *sp = bt->sp;
    int V = bt->V, NL = 0;
    for (int i = 0; i < n; i++) NL += bt->st[slots[i]].g + 1;
    /* threads only when the rows' filtering is worth a parallel region */
#pragma omp parallel if (n > 1 && (size_t)NL * V >= 65536) num_threads(bt->nth)
    {
        int th = omp_get_thread_num();
        cand *cs = bt->cands + (size_t)th * V;
        float *w = bt->wbuf + (size_t)th * V;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n; i++)
            verify_slot(sp, bt->k, &bt->st[slots[i]], slots[i], logits + (size_t)lrow[i] * V, V, &bt->db, cs, w);
    }
    sp->st.steps++;
    if (bt->timed && n_rows == NL && NL > 0) { /* the cost fit, on steps of decode and verify rows only
                        * (prompt rows cost less: no logits, no token choice): decayed sums of (rows, CPU
                        * seconds of lookup, forward and verification) */
        double dt = cpu_now() - bt->c_step;
        sp->f0 = 0.97 * sp->f0 + 1.0;
        sp->f1 = 0.97 * sp->f1 + n_rows;
        sp->f2 = 0.97 * sp->f2 + (double)n_rows * n_rows;
        sp->fy = 0.97 * sp->fy + dt;
        sp->fxy = 0.97 * sp->fxy + n_rows * dt;
    }
    bt->timed = 0;
}

int sampler_spec_emitted(const sampler_spec_batch *bt, int slot, const int32_t **tokens, const float **lp_pi,
                         const float **lp_q) {
    const spec_slot *sl = &bt->st[slot];
    if (tokens) *tokens = sl->emit;
    if (lp_pi) *lp_pi = sl->emit_lp;
    if (lp_q) *lp_q = sl->emit_lq;
    return sl->n_emit;
}

int sampler_spec_commit(sampler_spec_batch *bt, int slot, int n_taken, rlhf_error *err) {
    sampler_spec *sp = bt->sp;
    spec_slot *sl = &bt->st[slot];
    if (n_taken > sl->n_emit) n_taken = sl->n_emit;
    if (n_taken < 0) n_taken = 0;
    int L = sl->prompt_len + sl->n_toks;
    if (sl->n_toks + n_taken > sl->cap) {
        int cap = sl->cap ? 2 * sl->cap : 64;
        while (cap < sl->n_toks + n_taken) cap *= 2;
        int32_t *t = realloc(sl->toks, (size_t)cap * sizeof *t);
        if (!t) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for a sequence's tokens");
        sl->toks = t;
        sl->cap = cap;
    }
    memcpy(sl->toks + sl->n_toks, sl->emit, (size_t)n_taken * sizeof(int32_t));
    sl->n_toks += n_taken;
    if (sl->g > 0) {
        sp->st.verifies++;
        sp->st.drafted += (uint64_t)sl->g;
        sp->st.accepted += (uint64_t)sl->n_acc;
        sp->st.spec_tokens += (uint64_t)n_taken;
        /* acceptance evidence: n_acc kept, one rejection unless all were kept; decayed */
        sl->a_num = 0.9 * sl->a_num + sl->n_acc;
        sl->a_den = 0.9 * sl->a_den + sl->n_acc + (sl->n_acc < sl->g ? 1 : 0);
        sp->g_num = 0.99 * sp->g_num + sl->n_acc;
        sp->g_den = 0.99 * sp->g_den + sl->n_acc + (sl->n_acc < sl->g ? 1 : 0);
        if (sp->o.kind == SAMPLER_SPEC_DRAFT_MODEL) { /* the draft cache keeps the kept drafts it computed */
            int keep = sl->n_acc < sl->g - 1 ? sl->n_acc : sl->g - 1;
            if (sl->dfed > L + keep) sl->dfed = L + keep;
        }
    } else
        sp->st.plain_tokens += (uint64_t)n_taken;
    sl->g = sl->n_emit = 0;
    return 0;
}
