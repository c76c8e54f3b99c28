/* rewards/pipeline.c — composition of reward sources: build from a JSON array, score batches,
 * apply per-source timeout, normalisation, weight and on_error policy, keep every raw score and
 * status for metrics and prompt selection. */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rewards/rewards_int.h"

enum { NORM_NONE, NORM_BATCH, NORM_RUNNING };
enum { ON_ERROR_ZERO, ON_ERROR_SKIP_GROUP, ON_ERROR_FAIL };
enum { MAX_CONCURRENCY = 64, MAX_METRICS_PER_CALL = 32 };

typedef struct pipeline_source {
    char name[64];
    char type[32];
    double weight;
    int normalize;
    int on_error;
    int64_t timeout_ms;
    double max_error_rate;  /* the run stops when more than this share of the last error_window items failed */
    int64_t error_window;
    int has_range, clip; /* range [lo, hi] from the config or the plugin; clip: "out_of_range": "clip" */
    double range_lo, range_hi;
    int n_impl;          /* concurrency: instances, each its own ctx / process */
    reward_source_impl impl[MAX_CONCURRENCY];
    /* running normalisation (Welford) over every OK score seen */
    double run_n, run_mean, run_m2;
    int64_t errors_total;
} pipeline_source;

struct reward_pipeline {
    volatile int cancel;  // reward_pipeline_cancel: sources stop waiting (read by their impl.cancel)
    pipeline_source *src; // (n_sources,)
    size_t n_sources;
    pthread_mutex_t mu; // serialises reward_pipeline_score (sources' ctx are single-threaded)
    /* per-call scratch, reused */
    rlhf_reward_item *items_buf;
    size_t items_cap;
};

static void source_release(pipeline_source *s) {
    for (int k = 0; k < s->n_impl; k++) {
        reward_source_impl *im = &s->impl[k];
        if (im->plugin && im->plugin->destroy && im->ctx) im->plugin->destroy(im->ctx);
        im->ctx = NULL;
        if (im->dl_handle) {
            dlclose(im->dl_handle);
            im->dl_handle = NULL;
        }
    }
}

void reward_pipeline_destroy(reward_pipeline **pp) {
    if (!pp || !*pp) return;
    reward_pipeline *p = *pp;
    for (size_t i = 0; i < p->n_sources; i++) source_release(&p->src[i]);
    free(p->src);
    free(p->items_buf);
    pthread_mutex_destroy(&p->mu);
    free(p);
    *pp = NULL;
}

static int parse_source(pipeline_source *s, const json_t *obj, const char *where, const volatile int *cancel,
                        rlhf_error *err) {
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "a reward source must be a JSON object");
    const char *type = NULL;
    int rc = reward_get_string(obj, "type", where, 1, &type, err);
    if (rc) return rc;
    const reward_source_type *t = reward_source_type_find(type);
    char w[300];
    if (!t) {
        size_t nt;
        const reward_source_type *tab = reward_source_type_table(&nt);
        char known[512] = "";
        size_t off = 0;
        for (size_t i = 0; i < nt && off < sizeof known; i++)
            off += (size_t)snprintf(known + off, sizeof known - off, "%s%s", i ? ", " : "", tab[i].type);
        snprintf(w, sizeof w, "%s.%s", where, "type");
        return rlhf_error_set(err, RLHF_EINVAL, w, "unknown reward source type '%s' (known: %s)", type, known);
    }
    snprintf(s->type, sizeof s->type, "%s", type);
    const char *name = type;
    if ((rc = reward_get_string(obj, "name", where, 0, &name, err))) return rc;
    if (!name[0] || strlen(name) >= sizeof s->name) {
        snprintf(w, sizeof w, "%s.%s", where, "name");
        return rlhf_error_set(err, RLHF_EINVAL, w, "name must be 1..%zu characters", sizeof s->name - 1);
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->weight = 1.0;
    if ((rc = reward_get_number(obj, "weight", where, 0, &s->weight, err))) return rc;
    if (!(s->weight >= 0) || !isfinite(s->weight)) {
        snprintf(w, sizeof w, "%s.%s", where, "weight");
        return rlhf_error_set(err, RLHF_EINVAL, w, "weight must be a finite number >= 0, got %g", s->weight);
    }
    const char *norm = "none";
    if ((rc = reward_get_string(obj, "normalize", where, 0, &norm, err))) return rc;
    if (!strcmp(norm, "none")) s->normalize = NORM_NONE;
    else if (!strcmp(norm, "batch")) s->normalize = NORM_BATCH;
    else if (!strcmp(norm, "running")) s->normalize = NORM_RUNNING;
    else {
        snprintf(w, sizeof w, "%s.%s", where, "normalize");
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"none\", \"batch\" or \"running\", got \"%s\"", norm);
    }
    s->timeout_ms = 10000;
    if ((rc = reward_get_int(obj, "timeout_ms", where, 0, &s->timeout_ms, err))) return rc;
    if (s->timeout_ms <= 0 || s->timeout_ms > 86400000) {
        snprintf(w, sizeof w, "%s.%s", where, "timeout_ms");
        return rlhf_error_set(err, RLHF_EINVAL, w, "timeout_ms must be in 1..86400000, got %lld",
                              (long long)s->timeout_ms);
    }
    /* the default is the careful choice: a failed scoring is neither trained on as a 0 nor silent;
     * the item's group is left out of the step and counted */
    const char *oe = "skip_group";
    if ((rc = reward_get_string(obj, "on_error", where, 0, &oe, err))) return rc;
    if (!strcmp(oe, "zero")) s->on_error = ON_ERROR_ZERO;
    else if (!strcmp(oe, "skip_group")) s->on_error = ON_ERROR_SKIP_GROUP;
    else if (!strcmp(oe, "fail")) s->on_error = ON_ERROR_FAIL;
    else {
        snprintf(w, sizeof w, "%s.%s", where, "on_error");
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"zero\", \"skip_group\" or \"fail\", got \"%s\"", oe);
    }
    s->max_error_rate = 0.5;
    if ((rc = reward_get_number(obj, "max_error_rate", where, 0, &s->max_error_rate, err))) return rc;
    if (!(s->max_error_rate >= 0 && s->max_error_rate <= 1)) {
        snprintf(w, sizeof w, "%s.%s", where, "max_error_rate");
        return rlhf_error_set(err, RLHF_EINVAL, w, "max_error_rate must be in [0, 1] (1 = never stop), got %g",
                              s->max_error_rate);
    }
    s->error_window = 200;
    if ((rc = reward_get_int(obj, "error_window", where, 0, &s->error_window, err))) return rc;
    if (s->error_window < 1 || s->error_window > 1000000) {
        snprintf(w, sizeof w, "%s.%s", where, "error_window");
        return rlhf_error_set(err, RLHF_EINVAL, w, "error_window must be in 1..1000000 items, got %lld",
                              (long long)s->error_window);
    }
    json_t *range = json_object_get(obj, "range");
    if (range) {
        snprintf(w, sizeof w, "%s.%s", where, "range");
        if (!json_is_array(range) || json_array_size(range) != 2 || !json_is_number(json_array_get(range, 0)) ||
            !json_is_number(json_array_get(range, 1)))
            return rlhf_error_set(err, RLHF_EINVAL, w, "range must be [lo, hi], two numbers");
        s->range_lo = json_number_value(json_array_get(range, 0));
        s->range_hi = json_number_value(json_array_get(range, 1));
        if (!isfinite(s->range_lo) || !isfinite(s->range_hi) || s->range_lo > s->range_hi)
            return rlhf_error_set(err, RLHF_EINVAL, w, "range must be finite with lo <= hi, got [%g, %g]", s->range_lo,
                                  s->range_hi);
        s->has_range = 1;
    }
    const char *oor = "error";
    if ((rc = reward_get_string(obj, "out_of_range", where, 0, &oor, err))) return rc;
    if (!strcmp(oor, "clip")) s->clip = 1;
    else if (strcmp(oor, "error")) {
        snprintf(w, sizeof w, "%s.%s", where, "out_of_range");
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"error\" or \"clip\", got \"%s\"", oor);
    }
    int64_t conc = 1;
    if ((rc = reward_get_int(obj, "concurrency", where, 0, &conc, err))) return rc;
    if (conc < 1 || conc > MAX_CONCURRENCY) {
        snprintf(w, sizeof w, "%s.%s", where, "concurrency");
        return rlhf_error_set(err, RLHF_EINVAL, w, "concurrency must be in 1..%d, got %lld", MAX_CONCURRENCY,
                              (long long)conc);
    }
    if (!t->create) {
        snprintf(w, sizeof w, "%s.%s", where, "type");
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, w, "reward source type '%s' is not built into this binary", type);
    }
    for (int k = 0; k < (int)conc; k++) {
        reward_source_impl *im = &s->impl[k];
        im->timeout_ms = s->timeout_ms;
        im->cancel = cancel;
        rc = t->create(obj, where, im, err);
        if (rc) return rc;
        s->n_impl = k + 1; /* so source_release destroys what was created */
        if (!im->plugin || (!im->plugin->score_batch && !im->score_v2))
            return rlhf_error_set(err, RLHF_ESTATE, where, "source type '%s' constructor returned no score_batch", type);
    }
    /* the config's range wins over the one the plugin declares */
    if (!s->has_range && s->impl[0].has_range) {
        s->has_range = 1;
        s->range_lo = s->impl[0].range_lo;
        s->range_hi = s->impl[0].range_hi;
    }
    return 0;
}

int reward_pipeline_create(reward_pipeline **out, const json_t *sources, const char *where, rlhf_error *err) {
    *out = NULL;
    if (!where) where = "rewards";
    if (!json_is_array(sources))
        return rlhf_error_set(err, RLHF_EINVAL, where, "reward sources must be a JSON array of objects");
    if (json_array_size(sources) == 0)
        return rlhf_error_set(err, RLHF_EINVAL, where, "at least one reward source is required");
    reward_pipeline *p = calloc(1, sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    pthread_mutex_init(&p->mu, NULL);
    size_t n = json_array_size(sources);
    p->src = calloc(n, sizeof *p->src);
    if (!p->src) {
        reward_pipeline_destroy(&p);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        char w[256];
        snprintf(w, sizeof w, "%s[%zu]", where, i);
        int rc = parse_source(&p->src[i], json_array_get(sources, i), w, &p->cancel, err);
        p->n_sources = i + 1; // so destroy releases what was created
        if (rc) {
            reward_pipeline_destroy(&p);
            return rc;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(p->src[j].name, p->src[i].name)) {
                char wn[300];
                snprintf(wn, sizeof wn, "%s.name", w);
                rc = rlhf_error_set(err, RLHF_EINVAL, wn, "duplicate source name '%s' (also %s[%zu]); set \"name\"",
                                    p->src[i].name, where, j);
                reward_pipeline_destroy(&p);
                return rc;
            }
    }
    *out = p;
    return 0;
}

int reward_pipeline_create_str(reward_pipeline **out, const char *sources_json, const char *where, rlhf_error *err) {
    *out = NULL;
    json_error_t je;
    json_t *j = json_loads(sources_json ? sources_json : "", JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        char w[300];
        snprintf(w, sizeof w, "%s:%d:%d", where ? where : "rewards", je.line, je.column);
        return rlhf_error_set(err, RLHF_EINVAL, w, "invalid JSON: %s", je.text);
    }
    int rc = reward_pipeline_create(out, j, where, err);
    json_decref(j);
    return rc;
}

size_t reward_pipeline_n_sources(const reward_pipeline *p) { return p->n_sources; }

void reward_pipeline_cancel(reward_pipeline *p) {
    if (p) __atomic_store_n(&p->cancel, 1, __ATOMIC_SEQ_CST);
}
const char *reward_pipeline_source_name(const reward_pipeline *p, size_t s) {
    return s < p->n_sources ? p->src[s].name : NULL;
}
double reward_pipeline_source_weight(const reward_pipeline *p, size_t s) {
    return s < p->n_sources ? p->src[s].weight : 0.0;
}
double reward_pipeline_source_max_error_rate(const reward_pipeline *p, size_t s, int64_t *window) {
    if (s >= p->n_sources) return 1.0;
    if (window) *window = p->src[s].error_window;
    return p->src[s].max_error_rate;
}

void reward_reason_kind(const char *reason, char *out, size_t cap) {
    size_t o = 0;
    int sep = 0;
    if (!cap) return;
    for (const char *c = reason ? reason : ""; *c && *c != ':' && *c != '(' && o + 1 < cap; c++) {
        unsigned char ch = (unsigned char)*c;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
            if (sep && o) out[o++] = '_';
            if (o + 1 < cap) out[o++] = (char)(ch | 0x20);
            sep = 0;
        } else {
            sep = 1; /* digits too: "result 3 has no score" and "result 4 ..." are one kind */
        }
    }
    out[o] = 0;
    if (!o) snprintf(out, cap, "unknown");
}

int reward_pipeline_source_resources(const reward_pipeline *p, size_t s, double *rss_mb, double *cpu_s,
                                     int64_t *restarts) {
    /* summed over the source's concurrency instances, each with its own child */
    if (s >= p->n_sources || !p->src[s].impl[0].resources) return 1;
    double rss = 0, cpu = 0;
    int64_t rs = 0;
    int none = 1;
    for (int k = 0; k < p->src[s].n_impl; k++) {
        double r1 = 0, c1 = 0;
        int64_t s1 = 0;
        if (p->src[s].impl[k].resources && p->src[s].impl[k].resources(p->src[s].impl[k].ctx, &r1, &c1, &s1) == 0) {
            rss += r1, cpu += c1, rs += s1;
            none = 0;
        }
    }
    *rss_mb = rss, *cpu_s = cpu, *restarts = rs;
    return none;
}

int64_t reward_pipeline_source_errors_total(const reward_pipeline *p, size_t s) {
    return s < p->n_sources ? __atomic_load_n(&p->src[s].errors_total, __ATOMIC_RELAXED) : 0;
}

void reward_scores_free(reward_scores *s) {
    if (!s) return;
    free(s->raw);
    free(s->normalized);
    free(s->status);
    free(s->total);
    free(s->item_status);
    free(s->source_ms);
    free(s->source_errors);
    free(s->scored);
    free(s->source_clipped);
    free(s->clipped);
    free(s->source_skipped);
    free(s->metrics);
    memset(s, 0, sizeof *s);
}

static int scores_alloc(reward_scores *s, size_t n, size_t S) {
    reward_scores_free(s);
    s->n_items = n;
    s->n_sources = S;
    size_t nn = n ? n : 1, ss = S ? S : 1;
    s->raw = calloc(nn * ss, sizeof *s->raw);
    s->normalized = calloc(nn * ss, sizeof *s->normalized);
    s->status = calloc(nn * ss, sizeof *s->status);
    s->total = calloc(nn, sizeof *s->total);
    s->item_status = calloc(nn, sizeof *s->item_status);
    s->source_ms = calloc(ss, sizeof *s->source_ms);
    s->source_errors = calloc(ss, sizeof *s->source_errors);
    s->scored = calloc(nn, sizeof *s->scored);
    s->source_clipped = calloc(ss, sizeof *s->source_clipped);
    s->clipped = calloc(nn * ss, 1);
    s->source_skipped = calloc(ss, sizeof *s->source_skipped);
    if (!s->raw || !s->normalized || !s->status || !s->total || !s->item_status || !s->source_ms ||
        !s->source_errors || !s->scored || !s->source_clipped || !s->source_skipped || !s->clipped) {
        reward_scores_free(s);
        return RLHF_ENOMEM;
    }
    return 0;
}

/* One instance's share of a batch (the whole batch unless the source has concurrency > 1). */
typedef struct sub_call {
    reward_source_impl *im;
    rlhf_reward_item *items;    // (n) slice of the pipeline's item copies
    size_t n;
    double *scores;             // (n) slice
    rlhf_reward_status *status; // (n) slice
    int64_t step;
    const int64_t *versions;    // (n) slice
    rlhf_reward_metric metrics[MAX_METRICS_PER_CALL];
    size_t n_metrics;
} sub_call;

static void *sub_call_run(void *arg) {
    sub_call *c = arg;
    int rc;
    c->n_metrics = 0;
    if (c->im->score_v2) {
        rlhf_reward_batch b = {.struct_size = sizeof b, .items = c->items, .n = c->n, .step = c->step,
                               .policy_version = c->versions, .metrics = c->metrics,
                               .max_metrics = MAX_METRICS_PER_CALL, .n_metrics = &c->n_metrics};
        rc = c->im->score_v2(c->im->ctx, &b, c->scores, c->status);
    } else {
        rc = c->im->plugin->score_batch(c->im->ctx, c->items, c->n, c->scores, c->status);
    }
    if (c->n_metrics > MAX_METRICS_PER_CALL) c->n_metrics = MAX_METRICS_PER_CALL;
    if (rc != 0) {
        char reason[RLHF_REWARD_REASON_MAX];
        snprintf(reason, sizeof reason, "%s", c->n && c->status[0].reason[0] ? c->status[0].reason : "score_batch failed");
        for (size_t i = 0; i < c->n; i++) rlhf_reward_status_set(&c->status[i], RLHF_REWARD_ERROR, "%s", reason);
        c->n_metrics = 0;
    }
    return NULL;
}

static void metric_name_clean(char *out, const char *in) {
    size_t o = 0;
    /* a metric name becomes part of a metrics.jsonl key: keep it to a plain alphabet */
    for (size_t j = 0; j < RLHF_REWARD_METRIC_NAME_MAX - 1 && in[j]; j++) {
        char ch = in[j];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                 ch == '.' || ch == '/' || ch == '-';
        out[o++] = ok ? ch : '_';
    }
    out[o] = 0;
}

/* Appends the metrics the sub-calls of source `src` reported to out; a name reported by several
 * sub-batches gets the mean of their values. */
static int add_metrics(reward_scores *out, size_t src, const sub_call *calls, int m) {
    size_t first = out->n_metrics;
    int counts[MAX_CONCURRENCY * MAX_METRICS_PER_CALL];
    for (int c = 0; c < m; c++)
        for (size_t k = 0; k < calls[c].n_metrics; k++) {
            const rlhf_reward_metric *rm = &calls[c].metrics[k];
            char name[RLHF_REWARD_METRIC_NAME_MAX];
            char raw[RLHF_REWARD_METRIC_NAME_MAX];
            memcpy(raw, rm->name, sizeof raw);
            raw[sizeof raw - 1] = 0;
            metric_name_clean(name, raw);
            if (!name[0] || !isfinite(rm->value)) continue;
            size_t j = first;
            while (j < out->n_metrics && strcmp(out->metrics[j].name, name)) j++;
            if (j == out->n_metrics) {
                reward_source_metric *nm = realloc(out->metrics, (out->n_metrics + 1) * sizeof *nm);
                if (!nm) return RLHF_ENOMEM;
                out->metrics = nm;
                memset(&nm[j], 0, sizeof nm[j]);
                nm[j].source = src;
                snprintf(nm[j].name, sizeof nm[j].name, "%s", name);
                counts[j - first] = 0;
                out->n_metrics++;
            }
            out->metrics[j].value += rm->value;
            counts[j - first]++;
        }
    for (size_t j = first; j < out->n_metrics; j++) out->metrics[j].value /= counts[j - first];
    return 0;
}

/* Runs one source over the batch; fills scores (n,) and status (n,). Never fails: every failure
 * becomes per-item ERROR statuses. A source with several instances (concurrency) scores contiguous
 * sub-batches at once, one thread per instance; each writes its own slice, so results stay in item
 * order. */
static void run_source(pipeline_source *s, rlhf_reward_item *items, const rlhf_reward_item *in, size_t n,
                       const int64_t *versions, int64_t step, double *scores, rlhf_reward_status *status,
                       double *ms_out, sub_call *calls, int *n_calls, unsigned char *clipped) {
    double t0 = rlhf_now();
    double deadline = t0 + (double)s->timeout_ms / 1000.0;
    *n_calls = 0;
    if (s->impl[0].cancel && __atomic_load_n(s->impl[0].cancel, __ATOMIC_RELAXED)) {
        for (size_t i = 0; i < n; i++) {
            scores[i] = 0;
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "cancelled: the pipeline is stopping");
        }
        *ms_out = 0;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        items[i] = in[i];
        if (!items[i].record_json) items[i].record_json = "{}";
        if (!items[i].prompt) items[i].prompt = "";
        if (!items[i].completion) items[i].completion = "";
        if (items[i].deadline <= 0 || items[i].deadline > deadline) items[i].deadline = deadline;
        scores[i] = 0;
        memset(&status[i], 0, sizeof status[i]);
    }
    int m = s->n_impl < (int)n ? s->n_impl : (int)n;
    if (m < 1) m = 1;
    for (int c = 0; c < m; c++) {
        size_t lo = n * (size_t)c / (size_t)m, hi = n * (size_t)(c + 1) / (size_t)m;
        calls[c].im = &s->impl[c];
        calls[c].items = items + lo;
        calls[c].n = hi - lo;
        calls[c].scores = scores + lo;
        calls[c].status = status + lo;
        calls[c].step = step;
        calls[c].versions = versions + lo;
        calls[c].n_metrics = 0;
    }
    pthread_t th[MAX_CONCURRENCY];
    int started[MAX_CONCURRENCY] = {0};
    for (int c = 1; c < m; c++) started[c] = pthread_create(&th[c], NULL, sub_call_run, &calls[c]) == 0;
    sub_call_run(&calls[0]);
    for (int c = 1; c < m; c++) {
        if (started[c]) pthread_join(th[c], NULL);
        else sub_call_run(&calls[c]); /* no thread to be had: score it here, late rather than never */
    }
    *n_calls = m;
    double t1 = rlhf_now();
    *ms_out = (t1 - t0) * 1000.0;
    /* built-in in-process sources are not interrupted (plugins are, by their watchdog in plugin.c):
     * a batch that overran its budget is late, and late
     * answers are errors (the updater must not wait on them next time either) */
    int late = t1 > deadline + 0.05;
    for (size_t i = 0; i < n; i++) {
        status[i].reason[RLHF_REWARD_REASON_MAX - 1] = 0;
        if (status[i].code != RLHF_REWARD_OK && status[i].code != RLHF_REWARD_ERROR &&
            status[i].code != RLHF_REWARD_SKIP)
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "invalid status code %d", status[i].code);
        else if (status[i].code == RLHF_REWARD_OK && !isfinite(scores[i]))
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "non-finite score");
        else if (status[i].code == RLHF_REWARD_OK && late)
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "timeout: batch took %.0f ms > timeout_ms %lld",
                                   *ms_out, (long long)s->timeout_ms);
        else if (status[i].code == RLHF_REWARD_OK && s->has_range &&
                 (scores[i] < s->range_lo || scores[i] > s->range_hi)) {
            /* a score outside the declared range is a broken scorer, not a big reward: one 1e12
             * would swamp every advantage of the step */
            if (s->clip) {
                scores[i] = scores[i] < s->range_lo ? s->range_lo : s->range_hi;
                clipped[i] = 1;
            } else {
                rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "out of range: %g not in [%g, %g]", scores[i],
                                       s->range_lo, s->range_hi);
            }
        }
        if (status[i].code != RLHF_REWARD_OK) scores[i] = 0;
    }
}

static void normalise(pipeline_source *s, const double *raw, const rlhf_reward_status *st, size_t n, size_t stride,
                      double *out) {
    /* raw/st/out are strided columns of (n, S) arrays */
    if (s->normalize == NORM_NONE) {
        for (size_t i = 0; i < n; i++) out[i * stride] = raw[i * stride];
        return;
    }
    double mean = 0, m2 = 0, cnt = 0;
    for (size_t i = 0; i < n; i++) {
        if (st[i * stride].code != RLHF_REWARD_OK) continue;
        double x = raw[i * stride];
        cnt += 1;
        double d = x - mean;
        mean += d / cnt;
        m2 += d * (x - mean);
        if (s->normalize == NORM_RUNNING) {
            s->run_n += 1;
            double e = x - s->run_mean;
            s->run_mean += e / s->run_n;
            s->run_m2 += e * (x - s->run_mean);
        }
    }
    double mu, sd;
    if (s->normalize == NORM_BATCH) {
        mu = mean;
        sd = cnt > 1 ? sqrt(m2 / cnt) : 0;
    } else {
        mu = s->run_mean;
        sd = s->run_n > 1 ? sqrt(s->run_m2 / s->run_n) : 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (st[i * stride].code != RLHF_REWARD_OK) {
            out[i * stride] = 0;
            continue;
        }
        /* with no spread there is nothing to scale: centred value 0 rather than a division blow-up */
        out[i * stride] = sd > 1e-12 ? (raw[i * stride] - mu) / sd : 0.0;
    }
}

int reward_pipeline_score(reward_pipeline *p, const rlhf_reward_item *items, size_t n, reward_scores *out,
                          rlhf_error *err) {
    return reward_pipeline_score_ex(p, items, n, NULL, out, err);
}

int reward_pipeline_score_ex(reward_pipeline *p, const rlhf_reward_item *items, size_t n, const reward_score_opts *opts,
                             reward_scores *out, rlhf_error *err) {
    if (!p || !out || (n && !items)) return RLHF_FAIL(err, RLHF_EINVAL, "reward_pipeline_score: NULL argument");
    size_t S = p->n_sources;
    if (out->n_items != n || out->n_sources != S || !out->raw) {
        if (scores_alloc(out, n, S)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %zu x %zu scores", n, S);
    }
    memset(out->item_status, 0, (n ? n : 1) * sizeof *out->item_status);
    memset(out->scored, 0, n ? n : 1);
    memset(out->source_clipped, 0, (S ? S : 1) * sizeof *out->source_clipped);
    memset(out->source_skipped, 0, (S ? S : 1) * sizeof *out->source_skipped);
    free(out->metrics);
    out->metrics = NULL;
    out->n_metrics = 0;
    pthread_mutex_lock(&p->mu);
    if (p->items_cap < n) {
        rlhf_reward_item *nb = realloc(p->items_buf, n * sizeof *nb);
        if (!nb) {
            pthread_mutex_unlock(&p->mu);
            return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        }
        p->items_buf = nb;
        p->items_cap = n;
    }
    double *col = malloc((n ? n : 1) * sizeof *col);
    rlhf_reward_status *cst = malloc((n ? n : 1) * sizeof *cst);
    unsigned char *cclip = calloc(n ? n : 1, 1);
    int64_t *vers = malloc((n ? n : 1) * sizeof *vers);
    sub_call *calls = calloc(MAX_CONCURRENCY, sizeof *calls);
    if (!col || !cst || !vers || !calls || !cclip) {
        free(cclip);
        free(col);
        free(cst);
        free(vers);
        free(calls);
        pthread_mutex_unlock(&p->mu);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) vers[i] = opts && opts->policy_version ? opts->policy_version[i] : -1;
    int64_t step = opts ? opts->step : -1;
    int rc = 0;
    for (size_t i = 0; i < n; i++) out->total[i] = 0;
    for (size_t s = 0; s < S; s++) {
        pipeline_source *src = &p->src[s];
        int n_calls = 0;
        memset(cclip, 0, n ? n : 1);
        if (n)
            run_source(src, p->items_buf, items, n, vers, step, col, cst, &out->source_ms[s], calls, &n_calls, cclip);
        else out->source_ms[s] = 0;
        if (add_metrics(out, s, calls, n_calls) && rc == 0) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        int64_t errs = 0, skips = 0;
        for (size_t i = 0; i < n; i++) {
            out->raw[i * S + s] = col[i];
            out->status[i * S + s] = cst[i];
            out->clipped[i * S + s] = cclip[i];
            out->source_clipped[s] += cclip[i];
            if (cst[i].code == RLHF_REWARD_ERROR) errs++;
            if (cst[i].code == RLHF_REWARD_SKIP) skips++;
        }
        out->source_errors[s] = errs;
        out->source_skipped[s] = skips;
        __atomic_add_fetch(&src->errors_total, errs, __ATOMIC_RELAXED);
        normalise(src, out->raw + s, out->status + s, n, S, out->normalized + s);
        for (size_t i = 0; i < n; i++) {
            const rlhf_reward_status *st = &out->status[i * S + s];
            if (st->code == RLHF_REWARD_OK) {
                out->total[i] += src->weight * out->normalized[i * S + s];
                out->scored[i] = 1;
                continue;
            }
            if (st->code != RLHF_REWARD_ERROR) continue;
            if (src->on_error == ON_ERROR_ZERO) {
                out->scored[i] = 1; /* "zero" trains on the failure as a 0 by choice */
            } else if (src->on_error == ON_ERROR_SKIP_GROUP) {
                for (size_t j = 0; j < n; j++) {
                    int same = j == i || (items[i].group_id >= 0 && items[j].group_id == items[i].group_id);
                    if (same && out->item_status[j].code == RLHF_REWARD_OK)
                        rlhf_reward_status_set(&out->item_status[j], RLHF_REWARD_SKIP, "%s: %s", src->name, st->reason);
                }
            } else if (src->on_error == ON_ERROR_FAIL && rc == 0) {
                rc = rlhf_error_set(err, RLHF_EIO, src->name, "reward source failed on item %zu: %s", i, st->reason);
            }
        }
    }
    free(col);
    free(cst);
    free(cclip);
    free(vers);
    free(calls);
    pthread_mutex_unlock(&p->mu);
    return rc;
}
