/* prompts/selector.c — which prompts to generate for next: uniform epochs, a DAPO-like zero-variance
 * filter, and cohesion-based selection from per-prompt statistics (docs/PROMPT_SELECTION.md). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompts/prompts_int.h"

enum { POLICY_UNIFORM, POLICY_ZERO_VARIANCE_FILTER, POLICY_COHESION };
static const char *const policy_names[] = {"uniform", "zero_variance_filter", "cohesion"};

#define RECENT_WINDOW 256 /* groups in prompts/zero_spread_share_recent */

typedef struct selector_config {
    int policy;
    double decay;                  /* EMA weight of history: ema = decay*ema + (1-decay)*x */
    double zero_spread_eps;        /* group std <= eps counts as zero spread */
    double single_source_cohesion; /* cohesion when no pair of sources contributes */
    int constant_pair;             /* PROMPT_CONSTANT_PAIR_*: a constant source against a varying one */
    double floor;                  /* cohesion: share of probability spread uniformly (no starvation) */
    double explore_bonus;          /* cohesion: + explore_bonus / sqrt(groups) */
    double cohesion_power;         /* cohesion: L = spread * max(0, cohesion)^power */
    double stale_after_epochs;     /* cohesion: stats older than this many dataset passes of feedback are forgotten */
    double optimism;               /* cohesion: unseen/stale score = mean + optimism * (best - mean) of fresh scores */
    int zv_window;                 /* zero_variance_filter: consecutive zero-spread groups that filter a prompt */
    double readmit_after_epochs;   /* zero_variance_filter: a filtered prompt returns after this many passes */
} selector_config;

/* Per-prompt statistics (PROMPT_STATS feedback + serving). Ticks are 1-based; 0 = never. */
typedef struct prompt_stat {
    uint64_t served, groups, zero_groups;
    uint64_t zero_streak;   /* consecutive most recent groups with zero spread */
    uint64_t last_update;   /* value of sel->updates after this prompt's last group */
    uint64_t last_served;   /* value of sel->served after this prompt was last served */
    double mean_reward;     /* EMA of the group's mean total reward */
    double spread;          /* EMA of the group's total-reward std */
    double cohesion;        /* EMA of the group's cohesion, over the groups that carried any (cohesion_n) */
    uint64_t cohesion_n;    /* groups in that average since it (re)started; 0 = no agreement seen yet */
    double learnability;    /* EMA of the group's spread * cohesion^power, sign kept (score: max(0, this)) */
} prompt_stat;

struct prompt_selector {
    const prompt_dataset *ds;
    size_t n;
    selector_config cfg;
    rlhf_rng rng;
    prompt_stat *st; /* (n) */
    size_t *perm;    /* (n) epoch order (uniform, zero_variance_filter) */
    size_t perm_pos;
    uint64_t epoch;  /* completed passes of the epoch order */
    uint64_t served, updates, zero_groups, trained_groups;
    double cohesion_sum; /* over trained (spread > 0) groups */
    unsigned char recent[RECENT_WINDOW]; /* 1 = zero-spread group, ring */
    uint64_t recent_n;
    double *scratch;     /* (n) */
};

const char *prompt_selector_policy(const prompt_selector *sel) { return policy_names[sel->cfg.policy]; }

/* ---------------------------------------------------------------- cohesion and spread */

double prompt_kendall_tau_b(const float *a, const float *b, int n) {
    /* tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)); n1, n2 = pairs tied in a, in b. */
    double conc = 0, disc = 0, ta = 0, tb = 0, n0 = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            int sa = (a[i] > a[j]) - (a[i] < a[j]);
            int sb = (b[i] > b[j]) - (b[i] < b[j]);
            n0 += 1;
            if (!sa) ta += 1;
            if (!sb) tb += 1;
            if (sa * sb > 0) conc += 1;
            else if (sa * sb < 0) disc += 1;
        }
    double den = (n0 - ta) * (n0 - tb);
    if (den <= 0) return NAN;
    return (conc - disc) / sqrt(den);
}

int prompt_group_cohesion(const prompt_stats *st, double single_source_cohesion, int constant_pair,
                          double *spread_out, double *cohesion_out) {
    int k = st->k;
    /* spread: population std of the finite totals */
    double sum = 0, sq = 0;
    int m = 0;
    for (int i = 0; i < k; i++) {
        double t = st->total ? st->total[i] : (st->n_sources == 1 ? st->rewards[i] : NAN);
        if (!isfinite(t)) continue;
        sum += t;
        m++;
    }
    double mean = m ? sum / m : 0;
    for (int i = 0; i < k; i++) {
        double t = st->total ? st->total[i] : (st->n_sources == 1 ? st->rewards[i] : NAN);
        if (isfinite(t)) sq += (t - mean) * (t - mean);
    }
    if (spread_out) *spread_out = m >= 2 ? sqrt(sq / m) : 0;

    /* cohesion: mean agreement over the pairs of sources, on the samples both scored */
    float a[256], b[256];
    double tau_sum = 0;
    int pairs = 0;
    for (int s = 0; s < st->n_sources; s++)
        for (int t = s + 1; t < st->n_sources; t++) {
            int c = 0;
            for (int i = 0; i < k && c < 256; i++) {
                float x = st->rewards[(size_t)s * k + i], y = st->rewards[(size_t)t * k + i];
                if (!isfinite(x) || !isfinite(y)) continue;
                a[c] = x;
                b[c] = y;
                c++;
            }
            if (c < 2) continue;
            double tau = prompt_kendall_tau_b(a, b, c);
            if (isnan(tau)) {
                int a_const = 1, b_const = 1;
                for (int i = 1; i < c; i++) {
                    a_const &= a[i] == a[0];
                    b_const &= b[i] == b[0];
                }
                /* both constant: neither ranks anything. One constant: it calls equal what the other
                 * ranks, which is disagreement (0) unless the caller says such sources are constant by
                 * design (skip). */
                if ((a_const && b_const) || constant_pair == PROMPT_CONSTANT_PAIR_SKIP) continue;
                tau = 0;
            }
            tau_sum += tau;
            pairs++;
        }
    if (cohesion_out) *cohesion_out = pairs ? tau_sum / pairs : single_source_cohesion;
    return pairs;
}

/* ---------------------------------------------------------------- config */

static int get_number(const json_t *v, const char *key, double lo, double hi, double *out, rlhf_error *err) {
    char where[64];
    snprintf(where, sizeof where, "selector.%s", key);
    if (!json_is_number(v)) return rlhf_error_set(err, RLHF_EINVAL, where, "must be a number");
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return rlhf_error_set(err, RLHF_EINVAL, where, "must be in [%g, %g], got %g", lo, hi, x);
    *out = x;
    return 0;
}

static int parse_config(selector_config *c, const json_t *config, rlhf_error *err) {
    *c = (selector_config){
        .policy = POLICY_UNIFORM,
        .decay = 0.5,
        .zero_spread_eps = 1e-6,
        .single_source_cohesion = 1.0,
        .floor = 0.05,
        .explore_bonus = 0.005,
        .cohesion_power = 1.0,
        .stale_after_epochs = 2.0,
        .optimism = 0.0,
        .zv_window = 1,
        .readmit_after_epochs = 1.0,
    };
    if (!config || json_is_null(config)) return 0;
    if (!json_is_object(config)) return rlhf_error_set(err, RLHF_EINVAL, "selector", "config must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)config, key, v) {
        int rc = 0;
        double x = 0;
        if (!strcmp(key, "policy")) {
            const char *p = json_string_value(v);
            int found = -1;
            for (int i = 0; p && i < 3; i++)
                if (!strcmp(p, policy_names[i])) found = i;
            if (found < 0)
                return rlhf_error_set(err, RLHF_EINVAL, "selector.policy",
                                      "unknown policy %s%s%s (uniform, zero_variance_filter, cohesion)", p ? "\"" : "",
                                      p ? p : "(not a string)", p ? "\"" : "");
            c->policy = found;
        } else if (!strcmp(key, "decay")) {
            rc = get_number(v, key, 0, 0.999, &c->decay, err);
        } else if (!strcmp(key, "zero_spread_eps")) {
            rc = get_number(v, key, 0, 1e9, &c->zero_spread_eps, err);
        } else if (!strcmp(key, "single_source_cohesion")) {
            rc = get_number(v, key, -1, 1, &c->single_source_cohesion, err);
        } else if (!strcmp(key, "constant_pair")) {
            const char *p = json_string_value(v);
            if (p && !strcmp(p, "zero")) c->constant_pair = PROMPT_CONSTANT_PAIR_ZERO;
            else if (p && !strcmp(p, "skip")) c->constant_pair = PROMPT_CONSTANT_PAIR_SKIP;
            else return rlhf_error_set(err, RLHF_EINVAL, "selector.constant_pair", "must be \"zero\" or \"skip\"");
        } else if (!strcmp(key, "floor")) {
            rc = get_number(v, key, 0, 1, &c->floor, err);
        } else if (!strcmp(key, "explore_bonus")) {
            rc = get_number(v, key, 0, 1e9, &c->explore_bonus, err);
        } else if (!strcmp(key, "cohesion_power")) {
            rc = get_number(v, key, 0, 16, &c->cohesion_power, err);
        } else if (!strcmp(key, "stale_after_epochs")) {
            rc = get_number(v, key, 0, 1e9, &c->stale_after_epochs, err);
        } else if (!strcmp(key, "optimism")) {
            rc = get_number(v, key, 0, 1, &c->optimism, err);
        } else if (!strcmp(key, "readmit_after_epochs")) {
            rc = get_number(v, key, 0, 1e9, &c->readmit_after_epochs, err);
        } else if (!strcmp(key, "zv_window")) {
            rc = get_number(v, key, 1, 1000000, &x, err);
            if (rc == 0 && x != floor(x)) rc = rlhf_error_set(err, RLHF_EINVAL, "selector.zv_window", "must be an integer");
            c->zv_window = (int)x;
        } else {
            char where[300];
            snprintf(where, sizeof where, "selector.%s", key);
            return rlhf_error_set(err, RLHF_EINVAL, where,
                                  "unknown key (policy, decay, zero_spread_eps, single_source_cohesion, constant_pair, floor, "
                                  "explore_bonus, cohesion_power, stale_after_epochs, optimism, zv_window, readmit_after_epochs)");
        }
        if (rc) return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- life cycle */

static void shuffle_epoch(prompt_selector *sel) {
    for (size_t i = 0; i < sel->n; i++) sel->perm[i] = i;
    for (size_t i = sel->n; i > 1; i--) {
        size_t j = (size_t)prompts_rng_below(&sel->rng, i);
        size_t t = sel->perm[i - 1];
        sel->perm[i - 1] = sel->perm[j];
        sel->perm[j] = t;
    }
    sel->perm_pos = 0;
}

int prompt_selector_create(prompt_selector **out, const prompt_dataset *ds, const json_t *config, uint64_t seed,
                           rlhf_error *err) {
    *out = NULL;
    if (!ds || prompt_dataset_size(ds) == 0)
        return rlhf_error_set(err, RLHF_EINVAL, "selector", "empty or missing dataset");
    selector_config cfg;
    int rc = parse_config(&cfg, config, err);
    if (rc) return rc;
    prompt_selector *sel = calloc(1, sizeof *sel);
    if (!sel) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    sel->ds = ds;
    sel->n = prompt_dataset_size(ds);
    sel->cfg = cfg;
    rlhf_rng_seed(&sel->rng, seed);
    sel->st = calloc(sel->n, sizeof *sel->st);
    sel->perm = malloc(sel->n * sizeof *sel->perm);
    sel->scratch = malloc(sel->n * sizeof *sel->scratch);
    if (!sel->st || !sel->perm || !sel->scratch) {
        prompt_selector_destroy(&sel);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %zu prompts", prompt_dataset_size(ds));
    }
    shuffle_epoch(sel);
    *out = sel;
    return 0;
}

void prompt_selector_destroy(prompt_selector **psel) {
    if (!psel || !*psel) return;
    prompt_selector *sel = *psel;
    free(sel->st);
    free(sel->perm);
    free(sel->scratch);
    free(sel);
    *psel = NULL;
}

/* ---------------------------------------------------------------- scores */

static int is_stale(const prompt_selector *sel, const prompt_stat *s, double after_epochs) {
    return s->groups > 0 && (double)(sel->updates - s->last_update) > after_epochs * (double)sel->n;
}

static int is_filtered(const prompt_selector *sel, const prompt_stat *s) {
    return s->zero_streak >= (uint64_t)sel->cfg.zv_window && !is_stale(sel, s, sel->cfg.readmit_after_epochs);
}

/* Learnability of one group: its spread, scaled by how much the sources agree on it (signed: sources
 * that rank a group's samples in opposite orders count against the prompt). The selector averages this
 * per group and clips the average at 0, rather than multiplying the averaged spread by the averaged
 * cohesion: an unsolvable prompt whose spread comes from a noisy grader (cohesion 0) in some groups and
 * that shows no spread at all (both sources constant, cohesion left to the fallback) in others would
 * otherwise score spread/2 * cohesion/2 although no group of it ever taught anything. The sign is kept
 * until the average so that a prompt on which the sources agree and disagree by turns (coins) cancels
 * out instead of scoring its agreeing half. */
static double group_learnability(const selector_config *c, double spread, double cohesion) {
    double mag = c->cohesion_power == 1.0 ? fabs(cohesion) : pow(fabs(cohesion), c->cohesion_power);
    return spread * (cohesion < 0 ? -mag : mag);
}

/* Sampling probabilities of every prompt into p (n). */
static void compute_probs(const prompt_selector *sel, double *p) {
    size_t n = sel->n;
    const selector_config *c = &sel->cfg;
    if (c->policy == POLICY_UNIFORM) {
        for (size_t i = 0; i < n; i++) p[i] = 1.0 / (double)n;
        return;
    }
    if (c->policy == POLICY_ZERO_VARIANCE_FILTER) {
        size_t active = 0;
        for (size_t i = 0; i < n; i++) active += !is_filtered(sel, &sel->st[i]);
        for (size_t i = 0; i < n; i++)
            p[i] = active ? (is_filtered(sel, &sel->st[i]) ? 0 : 1.0 / (double)active) : 1.0 / (double)n;
        return;
    }
    /* cohesion: fresh prompts score L + bonus/sqrt(groups); unseen and stale ones score between the mean
     * and the best fresh score (optimism), so each is tried (again) soon; then a uniform floor is mixed in. */
    double best = 0, sum = 0;
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        const prompt_stat *s = &sel->st[i];
        if (s->groups == 0 || is_stale(sel, s, c->stale_after_epochs)) {
            p[i] = -1;
            continue;
        }
        p[i] = (s->learnability > 0 ? s->learnability : 0) + c->explore_bonus / sqrt((double)s->groups);
        if (p[i] > best) best = p[i];
        sum += p[i];
        fresh++;
    }
    double prior = fresh ? sum / (double)fresh + c->optimism * (best - sum / (double)fresh) : 1;
    if (prior <= 0) prior = 1;
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0) p[i] = prior;
        total += p[i];
    }
    for (size_t i = 0; i < n; i++)
        p[i] = c->floor / (double)n + (total > 0 ? (1 - c->floor) * p[i] / total : (1 - c->floor) / (double)n);
}

int prompt_selector_probs(const prompt_selector *sel, double *probs_out, rlhf_error *err) {
    if (!sel || !probs_out) return RLHF_FAIL(err, RLHF_EINVAL, "null argument");
    compute_probs(sel, probs_out);
    return 0;
}

/* ---------------------------------------------------------------- serving */

static void mark_served(prompt_selector *sel, size_t i) {
    sel->served++;
    sel->st[i].served++;
    sel->st[i].last_served = sel->served;
}

/* Next index in epoch order; with the filter, skipping filtered prompts (all filtered: plain order). */
static size_t next_in_epoch(prompt_selector *sel, int filter) {
    size_t tries = 0;
    for (;;) {
        if (sel->perm_pos == sel->n) {
            sel->epoch++;
            shuffle_epoch(sel);
        }
        size_t i = sel->perm[sel->perm_pos++];
        if (!filter || !is_filtered(sel, &sel->st[i]) || ++tries > sel->n) return i;
    }
}

int prompt_selector_next(prompt_selector *sel, size_t n, size_t *idx_out, rlhf_error *err) {
    if (!sel || (n && !idx_out)) return RLHF_FAIL(err, RLHF_EINVAL, "null argument");
    if (sel->cfg.policy != POLICY_COHESION) {
        for (size_t j = 0; j < n; j++) {
            idx_out[j] = next_in_epoch(sel, sel->cfg.policy == POLICY_ZERO_VARIANCE_FILTER);
            mark_served(sel, idx_out[j]);
        }
        return 0;
    }
    /* weighted draws, without replacement within a batch (until every prompt was drawn once) */
    double *w = sel->scratch;
    double total = 0;
    for (size_t j = 0; j < n; j++) {
        if (j % sel->n == 0) {
            compute_probs(sel, w);
            total = 0;
            for (size_t i = 0; i < sel->n; i++) total += w[i];
        }
        double u = prompts_rng_double(&sel->rng) * total;
        size_t pick = sel->n, last = sel->n;
        for (size_t i = 0; i < sel->n; i++) {
            if (w[i] <= 0) continue;
            last = i;
            if (u < w[i]) {
                pick = i;
                break;
            }
            u -= w[i];
        }
        if (pick == sel->n) pick = last; /* rounding at the end of the scan */
        total -= w[pick];
        w[pick] = 0;
        idx_out[j] = pick;
        mark_served(sel, pick);
    }
    if (sel->served >= (sel->epoch + 1) * sel->n) sel->epoch = sel->served / sel->n;
    return 0;
}

/* ---------------------------------------------------------------- feedback */

int prompt_selector_update(prompt_selector *sel, const prompt_stats *st, rlhf_error *err) {
    if (!sel || !st || !st->prompt_id) return RLHF_FAIL(err, RLHF_EINVAL, "null argument");
    const char *id = st->prompt_id;
    long idx = prompt_dataset_find(sel->ds, id);
    if (idx < 0) return rlhf_error_set(err, RLHF_EINVAL, "PROMPT_STATS", "unknown prompt id \"%s\"", id);
    if (st->k < 1 || st->n_sources < 0 || (st->n_sources > 0 && !st->rewards) ||
        (!st->total && st->n_sources != 1))
        return rlhf_error_set(err, RLHF_EINVAL, "PROMPT_STATS",
                              "prompt \"%s\": bad group (k=%d, n_sources=%d, rewards %s, total %s)", id, st->k,
                              st->n_sources, st->rewards ? "set" : "missing", st->total ? "set" : "missing");
    double sum = 0;
    int m = 0;
    for (int i = 0; i < st->k; i++) {
        double t = st->total ? st->total[i] : st->rewards[i];
        if (isfinite(t)) {
            sum += t;
            m++;
        }
    }
    if (!m) return rlhf_error_set(err, RLHF_EINVAL, "PROMPT_STATS", "prompt \"%s\": no finite total reward", id);
    double spread, cohesion;
    int pairs = prompt_group_cohesion(st, sel->cfg.single_source_cohesion, sel->cfg.constant_pair, &spread, &cohesion);
    /* with two or more sources and no contributing pair (e.g. both gave every sample the same reward)
     * the group says nothing about agreement: it must not pull the reported cohesion toward the
     * one-source fallback. (Its learnability is unaffected: such a group has no spread, or its only
     * varying source was set aside by constant_pair "skip".) */
    int informs_cohesion = pairs > 0 || st->n_sources < 2;
    double mean = sum / m;
    int zero = spread <= sel->cfg.zero_spread_eps;

    prompt_stat *s = &sel->st[idx];
    /* statistics older than the staleness horizon describe an earlier policy: forget them */
    if (s->groups == 0 || is_stale(sel, s, sel->cfg.stale_after_epochs)) {
        s->mean_reward = mean;
        s->spread = spread;
        s->cohesion_n = 0;
        s->learnability = group_learnability(&sel->cfg, spread, cohesion);
    } else {
        double d = sel->cfg.decay;
        s->mean_reward = d * s->mean_reward + (1 - d) * mean;
        s->spread = d * s->spread + (1 - d) * spread;
        s->learnability = d * s->learnability + (1 - d) * group_learnability(&sel->cfg, spread, cohesion);
    }
    if (informs_cohesion) {
        s->cohesion = s->cohesion_n ? sel->cfg.decay * s->cohesion + (1 - sel->cfg.decay) * cohesion : cohesion;
        s->cohesion_n++;
    }
    s->groups++;
    s->zero_streak = zero ? s->zero_streak + 1 : 0;
    sel->updates++;
    s->last_update = sel->updates;
    sel->recent[sel->recent_n++ % RECENT_WINDOW] = (unsigned char)zero;
    if (zero) {
        s->zero_groups++;
        sel->zero_groups++;
    } else {
        sel->trained_groups++;
        sel->cohesion_sum += cohesion;
    }
    return 0;
}

/* ---------------------------------------------------------------- metrics and dumps */

json_t *prompt_selector_metrics(const prompt_selector *sel) {
    double *p = malloc(sel->n * sizeof *p);
    double h = 0;
    size_t unseen = 0, filtered = 0;
    if (p) {
        compute_probs(sel, p);
        for (size_t i = 0; i < sel->n; i++)
            if (p[i] > 0) h -= p[i] * log(p[i]);
        free(p);
    }
    for (size_t i = 0; i < sel->n; i++) {
        unseen += sel->st[i].groups == 0;
        filtered += sel->cfg.policy == POLICY_ZERO_VARIANCE_FILTER && is_filtered(sel, &sel->st[i]);
    }
    size_t rn = sel->recent_n < RECENT_WINDOW ? (size_t)sel->recent_n : RECENT_WINDOW, rz = 0;
    for (size_t i = 0; i < rn; i++) rz += sel->recent[i];
    json_t *m = json_object();
    json_object_set_new(m, "prompts/groups", json_integer((json_int_t)sel->updates));
    json_object_set_new(m, "prompts/zero_spread_share",
                        json_real(sel->updates ? (double)sel->zero_groups / (double)sel->updates : 0));
    json_object_set_new(m, "prompts/zero_spread_share_recent", json_real(rn ? (double)rz / (double)rn : 0));
    json_object_set_new(m, "prompts/mean_cohesion",
                        json_real(sel->trained_groups ? sel->cohesion_sum / (double)sel->trained_groups : 0));
    json_object_set_new(m, "prompts/sampling_entropy", json_real(h));
    json_object_set_new(m, "prompts/sampling_entropy_norm", json_real(sel->n > 1 ? h / log((double)sel->n) : 1));
    json_object_set_new(m, "prompts/unseen", json_integer((json_int_t)unseen));
    json_object_set_new(m, "prompts/filtered", json_integer((json_int_t)filtered));
    json_object_set_new(m, "prompts/epoch", json_integer((json_int_t)sel->epoch));
    json_object_set_new(m, "prompts/served", json_integer((json_int_t)sel->served));
    return m;
}

int prompt_selector_dump_stats(const prompt_selector *sel, const char *path, rlhf_error *err) {
    double *p = malloc(sel->n * sizeof *p);
    if (!p) return rlhf_error_set(err, RLHF_ENOMEM, path, "out of memory");
    compute_probs(sel, p);
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) {
        free(p);
        return rc;
    }
    for (size_t i = 0; i < sel->n; i++) {
        const prompt_stat *s = &sel->st[i];
        json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:f, s:f, s:o, s:f, s:I, s:I, s:I, s:f}", "id",
                              prompt_dataset_get(sel->ds, i)->id, "served", (json_int_t)s->served, "groups",
                              (json_int_t)s->groups, "zero_groups", (json_int_t)s->zero_groups, "mean_reward",
                              s->mean_reward, "spread", s->spread, "cohesion",
                              s->cohesion_n ? json_real(s->cohesion) : json_null(), "learnability",
                              s->learnability, "zero_streak",
                              (json_int_t)s->zero_streak, "last_update", (json_int_t)s->last_update, "last_served",
                              (json_int_t)s->last_served, "prob", p[i]);
        char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (line) fprintf(af.fp, "%s\n", line);
        free(line);
        json_decref(o);
        if (!line) {
            rlhf_atomic_abort(&af);
            free(p);
            return rlhf_error_set(err, RLHF_ENOMEM, path, "out of memory");
        }
    }
    free(p);
    return rlhf_atomic_commit(&af, err);
}

/* ---------------------------------------------------------------- checkpoint state */

json_t *prompt_selector_save_json(const prompt_selector *sel) {
    char rng[32];
    snprintf(rng, sizeof rng, "%016" PRIx64, sel->rng.s);
    json_t *perm = json_array();
    for (size_t i = 0; i < sel->n; i++) json_array_append_new(perm, json_integer((json_int_t)sel->perm[i]));
    char recent[RECENT_WINDOW + 1];
    for (size_t i = 0; i < RECENT_WINDOW; i++) recent[i] = (char)('0' + sel->recent[i]);
    recent[RECENT_WINDOW] = 0;
    json_t *prompts = json_array();
    for (size_t i = 0; i < sel->n; i++) {
        const prompt_stat *s = &sel->st[i];
        if (!s->served && !s->groups) continue;
        json_array_append_new(
            prompts, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:I, s:f}", "id",
                               prompt_dataset_get(sel->ds, i)->id, "served", (json_int_t)s->served, "groups",
                               (json_int_t)s->groups, "zero_groups", (json_int_t)s->zero_groups, "zero_streak",
                               (json_int_t)s->zero_streak, "last_update", (json_int_t)s->last_update,
                               "last_served", (json_int_t)s->last_served, "mean_reward", s->mean_reward, "spread",
                               s->spread, "cohesion", s->cohesion, "cohesion_n", (json_int_t)s->cohesion_n,
                               "learnability", s->learnability));
    }
    return json_pack("{s:i, s:s, s:I, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:s, s:I, s:o}", "version", 1,
                     "policy", policy_names[sel->cfg.policy], "n_prompts", (json_int_t)sel->n, "rng", rng, "perm",
                     perm, "perm_pos", (json_int_t)sel->perm_pos, "epoch", (json_int_t)sel->epoch, "served",
                     (json_int_t)sel->served, "updates", (json_int_t)sel->updates, "zero_groups",
                     (json_int_t)sel->zero_groups, "trained_groups", (json_int_t)sel->trained_groups,
                     "cohesion_sum", sel->cohesion_sum, "recent", recent, "recent_n", (json_int_t)sel->recent_n,
                     "prompts", prompts);
}

static int get_u64(const json_t *obj, const char *key, uint64_t *out, const char *where, rlhf_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "`%s` missing or not a non-negative integer", key);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_real(const json_t *obj, const char *key, double *out, const char *where, rlhf_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_number(v)) return rlhf_error_set(err, RLHF_ECORRUPT, where, "`%s` missing or not a number", key);
    *out = json_number_value(v);
    return 0;
}

int prompt_selector_load_json(prompt_selector *sel, const json_t *state, const char *where, rlhf_error *err) {
    if (!where) where = "selector state";
    if (!json_is_object(state)) return rlhf_error_set(err, RLHF_ECORRUPT, where, "not a JSON object");
    json_t *ver = json_object_get(state, "version");
    if (!json_is_integer(ver) || json_integer_value(ver) != 1)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "unsupported selector state version");
    const char *pol = json_string_value(json_object_get(state, "policy"));
    if (!pol || strcmp(pol, policy_names[sel->cfg.policy]) != 0)
        return rlhf_error_set(err, RLHF_EINVAL, where, "state is for policy %s, selector runs %s", pol ? pol : "?",
                              policy_names[sel->cfg.policy]);
    uint64_t n_prompts = 0, perm_pos = 0, epoch = 0, served = 0, updates = 0, zero_groups = 0, trained_groups = 0,
             recent_n = 0, rng = 0;
    double cohesion_sum = 0;
    int rc;
    if ((rc = get_u64(state, "n_prompts", &n_prompts, where, err)) || (rc = get_u64(state, "perm_pos", &perm_pos, where, err)) ||
        (rc = get_u64(state, "epoch", &epoch, where, err)) || (rc = get_u64(state, "served", &served, where, err)) ||
        (rc = get_u64(state, "updates", &updates, where, err)) ||
        (rc = get_u64(state, "zero_groups", &zero_groups, where, err)) ||
        (rc = get_u64(state, "trained_groups", &trained_groups, where, err)) ||
        (rc = get_u64(state, "recent_n", &recent_n, where, err)) ||
        (rc = get_real(state, "cohesion_sum", &cohesion_sum, where, err)))
        return rc;
    if (n_prompts != sel->n)
        return rlhf_error_set(err, RLHF_EINVAL, where, "state has %" PRIu64 " prompts, dataset has %zu", n_prompts,
                              sel->n);
    if (perm_pos > sel->n) return rlhf_error_set(err, RLHF_ECORRUPT, where, "perm_pos out of range");
    const char *rs = json_string_value(json_object_get(state, "rng"));
    char *end = NULL;
    if (!rs || strlen(rs) != 16 || ((rng = strtoull(rs, &end, 16)), *end) || rng == 0)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "`rng` must be 16 hex digits, non-zero");
    const char *recent = json_string_value(json_object_get(state, "recent"));
    if (!recent || strlen(recent) != RECENT_WINDOW || strspn(recent, "01") != RECENT_WINDOW)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "`recent` must be %d characters 0/1", RECENT_WINDOW);
    json_t *perm = json_object_get(state, "perm");
    if (!json_is_array(perm) || json_array_size(perm) != sel->n)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "`perm` must be an array of %zu indices", sel->n);
    /* validate everything into fresh buffers, then swap in: a bad state leaves the selector unchanged */
    size_t *newperm = malloc(sel->n * sizeof *newperm);
    prompt_stat *newst = calloc(sel->n, sizeof *newst);
    unsigned char *seen = calloc(sel->n, 1);
    rc = 0;
    if (!newperm || !newst || !seen) rc = rlhf_error_set(err, RLHF_ENOMEM, where, "out of memory");
    for (size_t i = 0; !rc && i < sel->n; i++) {
        json_t *v = json_array_get(perm, i);
        json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
        if (x < 0 || (size_t)x >= sel->n || seen[x]) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "`perm` is not a permutation of 0..%zu", sel->n - 1);
            break;
        }
        seen[x] = 1;
        newperm[i] = (size_t)x;
    }
    json_t *prompts = json_object_get(state, "prompts");
    if (!rc && !json_is_array(prompts)) rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "`prompts` must be an array");
    size_t i;
    json_t *o;
    if (!rc) json_array_foreach(prompts, i, o) {
        char w[sizeof err->where];
        snprintf(w, sizeof w, "%s: prompts[%zu]", where, i);
        const char *id = json_string_value(json_object_get(o, "id"));
        if (!id) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, w, "missing `id`");
            break;
        }
        long idx = prompt_dataset_find(sel->ds, id);
        if (idx < 0) {
            rc = rlhf_error_set(err, RLHF_EINVAL, w, "prompt id \"%s\" is not in the dataset", id);
            break;
        }
        prompt_stat *s = &newst[idx];
        if ((rc = get_u64(o, "served", &s->served, w, err)) || (rc = get_u64(o, "groups", &s->groups, w, err)) ||
            (rc = get_u64(o, "zero_groups", &s->zero_groups, w, err)) ||
            (rc = get_u64(o, "zero_streak", &s->zero_streak, w, err)) ||
            (rc = get_u64(o, "last_update", &s->last_update, w, err)) ||
            (rc = get_u64(o, "last_served", &s->last_served, w, err)) ||
            (rc = get_real(o, "mean_reward", &s->mean_reward, w, err)) ||
            (rc = get_real(o, "spread", &s->spread, w, err)) || (rc = get_real(o, "cohesion", &s->cohesion, w, err)))
            break;
        /* states written before the per-group average have no `learnability`: start it from the
         * averages they kept (the score those runs used), the next group moves it as usual */
        if (!json_object_get(o, "learnability")) s->learnability = group_learnability(&sel->cfg, s->spread, s->cohesion);
        else if ((rc = get_real(o, "learnability", &s->learnability, w, err))) break;
        /* likewise `cohesion_n`: those states averaged cohesion over every group */
        if (!json_object_get(o, "cohesion_n")) s->cohesion_n = s->groups;
        else if ((rc = get_u64(o, "cohesion_n", &s->cohesion_n, w, err))) break;
    }
    free(seen);
    if (rc) {
        free(newperm);
        free(newst);
        return rc;
    }
    free(sel->perm);
    free(sel->st);
    sel->perm = newperm;
    sel->st = newst;
    sel->perm_pos = perm_pos;
    sel->epoch = epoch;
    sel->served = served;
    sel->updates = updates;
    sel->zero_groups = zero_groups;
    sel->trained_groups = trained_groups;
    sel->cohesion_sum = cohesion_sum;
    sel->recent_n = recent_n;
    for (size_t j = 0; j < RECENT_WINDOW; j++) sel->recent[j] = (unsigned char)(recent[j] - '0');
    sel->rng.s = rng;
    return 0;
}

int prompt_selector_save(const prompt_selector *sel, const char *path, rlhf_error *err) {
    json_t *j = prompt_selector_save_json(sel);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!s) return rlhf_error_set(err, RLHF_ENOMEM, path, "cannot serialise selector state");
    size_t len = strlen(s);
    s[len] = '\n'; /* overwrites the NUL: written with its length */
    int rc = rlhf_write_file_atomic(path, s, len + 1, err);
    free(s);
    return rc;
}

int prompt_selector_load(prompt_selector *sel, const char *path, rlhf_error *err) {
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j) {
        char w[sizeof err->where];
        snprintf(w, sizeof w, "%s:%d", path, jerr.line);
        return rlhf_error_set(err, RLHF_ECORRUPT, w, "invalid selector state: %s", jerr.text);
    }
    int rc = prompt_selector_load_json(sel, j, path, err);
    json_decref(j);
    return rc;
}
