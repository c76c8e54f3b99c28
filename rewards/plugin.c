/* rewards/plugin.c — shared-object reward plugins: dlopen the .so named by the config, look up
 * rlhf_reward_plugin_entry, check the ABI version and struct size, init with the "config" JSON.
 *
 * Isolation ("isolate", default "process"): the .so runs in a worker process, `rlhf reward-plugin-host
 * PATH` (the host binary is $RLHF_PLUGIN_HOST, else this executable when it is rlhf), speaking the
 * process-plugin protocol, so a crash kills the worker, not the caller. When the worker dies on a
 * batch, the batch is scored again one item at a time (each crash restarts the worker) to find the
 * item it dies on: that item is ERROR naming the plugin, the signal and the item, the others keep
 * their scores. An item the plugin crashed on twice (same prompt, completion and record) is
 * quarantined: ERROR without calling the plugin again.
 *
 * isolate "none" calls the plugin in this process, behind a watchdog: each score_batch runs on a
 * thread of its own, on private copies of the items, while the caller waits until the batch deadline
 * (timeout_ms). A call still running then cannot be stopped safely (a thread cannot be killed without
 * leaving the plugin's locks and memory in an unknown state), so it is abandoned: its items are ERROR
 * "timeout", the thread keeps its copies and frees them if it ever returns, and its ctx is never used,
 * destroyed or dlclose'd again. The source then moves the plugin into the worker process, so from
 * then on a hang costs one timeout and a kill, not a thread. A crash under "none" is the caller's. */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rewards/rewards_int.h"

int reward_plugin_load(const char *path, const char *config_json, const char *where, reward_source_impl *impl,
                       rlhf_error *err) {
    char w[512];
    snprintf(w, sizeof w, "%s (%s)", where, path);
    /* RTLD_LOCAL: two plugins may define the same internal names; RTLD_NOW: a missing symbol is a
     * load-time error, not a crash in the middle of training */
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return rlhf_error_set(err, RLHF_EIO, w, "cannot load plugin: %s", dlerror());
    dlerror();
    void *sym = dlsym(h, RLHF_REWARD_PLUGIN_ENTRY);
    if (!sym) {
        const char *e = dlerror();
        int rc = rlhf_error_set(err, RLHF_EINVAL, w, "missing symbol %s: %s", RLHF_REWARD_PLUGIN_ENTRY,
                                e ? e : "NULL");
        dlclose(h);
        return rc;
    }
    rlhf_reward_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    const rlhf_reward_plugin_v1 *p = entry();
    int rc = 0;
    if (!p) rc = rlhf_error_set(err, RLHF_EINVAL, w, "%s() returned NULL", RLHF_REWARD_PLUGIN_ENTRY);
    else if (p->abi_version < RLHF_REWARD_ABI_VERSION_V1 || p->abi_version > RLHF_REWARD_ABI_VERSION)
        rc = rlhf_error_set(err, RLHF_EUNSUPPORTED, w, "plugin ABI version %u, this build supports 1..%u; rebuild "
                            "the plugin against this rewards.h", p->abi_version, RLHF_REWARD_ABI_VERSION);
    /* the size says the layout: a v1 struct (also a v1 source rebuilt against this header, whose
     * abi_version is now 2) or the whole v2 struct; a v1 plugin is never read past its v1 struct */
    else if (p->struct_size != sizeof(rlhf_reward_plugin_v1) &&
             !(p->abi_version >= 2 && p->struct_size == sizeof(rlhf_reward_plugin_v2)))
        rc = rlhf_error_set(err, RLHF_EUNSUPPORTED, w, "plugin struct_size %u, expected %zu (v1) or %zu (v2) "
                            "(mismatched header)", p->struct_size, sizeof(rlhf_reward_plugin_v1),
                            sizeof(rlhf_reward_plugin_v2));
    const rlhf_reward_plugin_v2 *p2 = !rc && p->struct_size == sizeof(rlhf_reward_plugin_v2)
                                          ? (const rlhf_reward_plugin_v2 *)(const void *)p : NULL;
    if (!rc && !p->score_batch && !(p2 && p2->score_batch_v2))
        rc = rlhf_error_set(err, RLHF_EINVAL, w, "plugin has no score_batch function");
    if (!rc && p2 && p2->has_range &&
        !(isfinite(p2->range_lo) && isfinite(p2->range_hi) && p2->range_lo <= p2->range_hi))
        rc = rlhf_error_set(err, RLHF_EINVAL, w, "plugin declares a bad range [%g, %g]", p2->range_lo, p2->range_hi);
    if (!rc && p2 && p2->config_keys) {
        /* declared keys: a misspelt key is an error naming it, not a silently ignored setting */
        json_t *cj = json_loads(config_json ? config_json : "{}", JSON_DECODE_ANY, NULL);
        const char *k;
        json_t *v;
        if (json_is_object(cj))
            json_object_foreach(cj, k, v) {
                int known = 0;
                for (const char *const *a = p2->config_keys; *a && !known; a++) known = !strcmp(*a, k);
                if (!known) {
                    char keys[256] = "";
                    size_t off = 0;
                    for (const char *const *a = p2->config_keys; *a && off < sizeof keys; a++)
                        off += (size_t)snprintf(keys + off, sizeof keys - off, "%s%s", off ? ", " : "", *a);
                    rc = rlhf_error_set(err, RLHF_EINVAL, w, "config.%s: unknown key for plugin '%s' (it accepts: %s)",
                                        k, p->name ? p->name : "?", keys);
                    break;
                }
            }
        json_decref(cj);
    }
    if (rc) {
        dlclose(h);
        return rc;
    }
    void *ctx = NULL;
    if (p->init) {
        char eb[512] = "";
        if (p->init(config_json ? config_json : "{}", &ctx, eb, sizeof eb) != 0) {
            eb[sizeof eb - 1] = 0;
            rc = rlhf_error_set(err, RLHF_EINVAL, w, "plugin '%s' init failed: %s", p->name ? p->name : "?",
                                eb[0] ? eb : "(no message)");
            dlclose(h);
            return rc;
        }
    }
    impl->plugin = p;
    impl->plugin_v2 = p2;
    impl->ctx = ctx;
    impl->dl_handle = h;
    if (p2 && p2->has_range) {
        impl->has_range = 1;
        impl->range_lo = p2->range_lo;
        impl->range_hi = p2->range_hi;
    }
    return 0;
}

int reward_plugin_score_direct(const reward_source_impl *impl, const rlhf_reward_batch *b, double *scores,
                               rlhf_reward_status *status) {
    const rlhf_reward_plugin_v2 *p2 = impl->plugin_v2;
    if (p2 && p2->score_batch_v2) return p2->score_batch_v2(impl->ctx, b, scores, status);
    return impl->plugin->score_batch(impl->ctx, b->items, b->n, scores, status);
}

/* One score_batch call on its own thread. Owned jointly by the waiting caller and the thread (refs);
 * the last one out frees it, so an abandoned thread never touches freed memory. */
typedef struct guard_call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs, done, rc;
    const rlhf_reward_plugin_v1 *plugin;
    const rlhf_reward_plugin_v2 *plugin_v2; /* set for a v2 plugin: called with the batch below */
    void *ctx;
    size_t n;
    int64_t step;
    int64_t *versions;                      // (n) copy
    rlhf_reward_metric metrics[32];
    size_t n_metrics;
    rlhf_reward_item *items; // (n) pointing into the copies below
    char **strs;             // (3n) prompt, completion, record copies
    int32_t **ids;           // (n)
    double *scores;          // (n)
    rlhf_reward_status *status; // (n)
} guard_call;

static void call_unref(guard_call *c) {
    pthread_mutex_lock(&c->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&c->mu);
    if (left) return;
    for (size_t i = 0; c->strs && i < 3 * c->n; i++) free(c->strs[i]);
    for (size_t i = 0; c->ids && i < c->n; i++) free(c->ids[i]);
    free(c->strs);
    free(c->ids);
    free(c->items);
    free(c->scores);
    free(c->status);
    free(c->versions);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

static void *call_main(void *arg) {
    guard_call *c = arg;
    int rc;
    if (c->plugin_v2 && c->plugin_v2->score_batch_v2) {
        rlhf_reward_batch b = {.struct_size = sizeof b, .items = c->items, .n = c->n, .step = c->step,
                               .policy_version = c->versions, .metrics = c->metrics,
                               .max_metrics = sizeof c->metrics / sizeof c->metrics[0], .n_metrics = &c->n_metrics};
        rc = c->plugin_v2->score_batch_v2(c->ctx, &b, c->scores, c->status);
    } else {
        rc = c->plugin->score_batch(c->ctx, c->items, c->n, c->scores, c->status);
    }
    pthread_mutex_lock(&c->mu);
    c->rc = rc;
    c->done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    call_unref(c);
    return NULL;
}

enum { ISOLATE_PROCESS, ISOLATE_NONE };

/* An item the worker died on, by identity (a hash of prompt, completion and record). */
typedef struct crash_entry {
    uint64_t key;
    int crashes;
} crash_entry;

#define GUARD_MAX_CRASH_ENTRIES 100000 /* beyond this, new crashing items are not remembered */
#define GUARD_LOG_CRASHES 5            /* crashes logged on stderr per source; later ones only counted */

typedef struct plugin_guard {
    reward_source_impl inner;  /* the loaded plugin under isolate "none" (dl_handle owned here) */
    char *path, *config_json;
    const char *base;          /* the file name of path, for reasons */
    int isolate;
    int64_t timeout_ms, max_rss_mb, restart_every;
    const volatile int *cancel;
    int abandoned;             /* a call was abandoned: inner.ctx and the .so stay as they are, for good */
    reward_source_impl proc;   /* the worker process (proc.plugin != NULL once started) */
    void *proc_ctx_pub;        /* proc.ctx, published atomically for the resources getter */
    crash_entry *crashed;      /* (n_crashed) items the worker died on */
    size_t n_crashed, cap_crashed;
    int64_t crashes_logged;
} plugin_guard;

/* A call on private copies of the items: the caller's pointers die with its batch. */
static guard_call *call_new(const reward_source_impl *inner, const rlhf_reward_item *items, size_t n) {
    guard_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->refs = 1;
    c->plugin = inner->plugin;
    c->ctx = inner->ctx;
    c->n = n;
    size_t nn = n ? n : 1;
    c->items = calloc(nn, sizeof *c->items);
    c->strs = calloc(3 * nn, sizeof *c->strs);
    c->ids = calloc(nn, sizeof *c->ids);
    c->scores = calloc(nn, sizeof *c->scores);
    c->status = calloc(nn, sizeof *c->status);
    int ok = c->items && c->strs && c->ids && c->scores && c->status;
    for (size_t i = 0; ok && i < n; i++) {
        c->items[i] = items[i];
        ok = (c->strs[3 * i] = strdup(items[i].prompt)) && (c->strs[3 * i + 1] = strdup(items[i].completion)) &&
             (c->strs[3 * i + 2] = strdup(items[i].record_json));
        if (!ok) break;
        c->items[i].prompt = c->strs[3 * i];
        c->items[i].completion = c->strs[3 * i + 1];
        c->items[i].record_json = c->strs[3 * i + 2];
        if (items[i].completion_ids && items[i].n_completion_ids > 0) {
            size_t b = (size_t)items[i].n_completion_ids * sizeof(int32_t);
            ok = (c->ids[i] = malloc(b)) != NULL;
            if (ok) memcpy(c->ids[i], items[i].completion_ids, b);
            c->items[i].completion_ids = c->ids[i];
        }
    }
    if (!ok) {
        call_unref(c);
        return NULL;
    }
    return c;
}

/* The host binary of the worker process: $RLHF_PLUGIN_HOST, else this executable when it is rlhf (a
 * test or another program embedding librlhf would run itself with strange arguments). */
static int host_program(char *out, size_t cap, char *why, size_t wlen) {
    const char *env = getenv("RLHF_PLUGIN_HOST");
    if (env && env[0]) return snprintf(out, cap, "%s", env) < (int)cap ? 0 : -1;
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0) {
        snprintf(why, wlen, "cannot find the plugin host program (/proc/self/exe); set RLHF_PLUGIN_HOST");
        return -1;
    }
    out[n] = 0;
    const char *b = strrchr(out, '/');
    b = b ? b + 1 : out;
    if (strcmp(b, "rlhf") != 0) {
        snprintf(why, wlen, "the plugin worker is the rlhf binary and this program is %.60s: set RLHF_PLUGIN_HOST "
                            "to the rlhf binary, or isolate \"none\"", b);
        return -1;
    }
    return 0;
}

/* Starts the worker process (rlhf reward-plugin-host PATH) with the plugin's config; 0, or an RLHF_E*
 * code with err set (`where` names the source). */
static int guard_start_worker(plugin_guard *g, const char *where, rlhf_error *err) {
    char host[PATH_MAX], why[256];
    if (host_program(host, sizeof host, why, sizeof why)) return rlhf_error_set(err, RLHF_ESTATE, where, "%s", why);
    json_error_t je;
    json_t *cfg = json_loads(g->config_json, JSON_DECODE_ANY, &je);
    json_t *src = json_pack("{s:[s,s,s],s:o,s:I,s:I}", "command", host, "reward-plugin-host", g->path, "config",
                            cfg ? cfg : json_object(), "max_rss_mb", (json_int_t)g->max_rss_mb, "restart_every",
                            (json_int_t)g->restart_every);
    reward_source_impl proc = {.timeout_ms = g->timeout_ms, .cancel = g->cancel};
    int rc = src ? reward_process_create_labelled(src, where, "plugin worker", &proc, err)
                 : RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    json_decref(src);
    if (rc) return rc;
    g->proc = proc;
    __atomic_store_n(&g->proc_ctx_pub, proc.ctx, __ATOMIC_RELEASE);
    return 0;
}

/* Moves the plugin into a worker process after a timeout under isolate "none"; 0, or -1 with reason. */
static int guard_isolate(plugin_guard *g, char *reason, size_t rlen) {
    rlhf_error err = {0};
    if (guard_start_worker(g, "plugin worker", &err)) {
        snprintf(reason, rlen, "plugin worker process did not start: %.100s", err.msg);
        return -1;
    }
    fprintf(stderr, "rewards: plugin %s overran its timeout_ms (%lld); it now runs in a worker process "
                    "(rlhf reward-plugin-host)\n", g->path, (long long)g->timeout_ms);
    return 0;
}

/* FNV-1a over prompt, completion and record: what "the same item" means for quarantine. */
static uint64_t item_key(const rlhf_reward_item *it) {
    uint64_t h = 1469598103934665603ull;
    const char *parts[3] = {it->prompt, it->completion, it->record_json};
    for (int p = 0; p < 3; p++) {
        for (const unsigned char *c = (const unsigned char *)(parts[p] ? parts[p] : ""); *c; c++)
            h = (h ^ *c) * 1099511628211ull;
        h = (h ^ 0xffu) * 1099511628211ull; /* separator: ("ab","c") differs from ("a","bc") */
    }
    return h;
}

static crash_entry *crash_find(plugin_guard *g, uint64_t key) {
    for (size_t i = 0; i < g->n_crashed; i++)
        if (g->crashed[i].key == key) return &g->crashed[i];
    return NULL;
}

/* Counts a crash on `key`; returns the item's crash count. */
static int crash_note(plugin_guard *g, uint64_t key) {
    crash_entry *e = crash_find(g, key);
    if (e) return ++e->crashes;
    if (g->n_crashed == g->cap_crashed) {
        if (g->cap_crashed >= GUARD_MAX_CRASH_ENTRIES) return 1;
        size_t nc = g->cap_crashed ? 2 * g->cap_crashed : 16;
        crash_entry *nb = realloc(g->crashed, nc * sizeof *nb);
        if (!nb) return 1;
        g->crashed = nb;
        g->cap_crashed = nc;
    }
    g->crashed[g->n_crashed++] = (crash_entry){key, 1};
    return 1;
}

/* " (id X)" when the record has an "id" (string or integer), else "". */
static void record_id_text(const rlhf_reward_item *it, char *out, size_t cap) {
    out[0] = 0;
    json_t *rec = json_loads(it->record_json ? it->record_json : "{}", 0, NULL);
    json_t *id = json_object_get(rec, "id");
    if (json_is_string(id)) snprintf(out, cap, " (id %.40s)", json_string_value(id));
    else if (json_is_integer(id)) snprintf(out, cap, " (id %lld)", (long long)json_integer_value(id));
    json_decref(rec);
}

/* The worker died on item i: ERROR naming the plugin, how it died and the item; counted for quarantine. */
static void crash_item(plugin_guard *g, const rlhf_reward_item *items, size_t i, uint64_t key, int wstatus,
                       double *scores, rlhf_reward_status *status) {
    char how[48], idt[64];
    if (wstatus >= 0 && WIFSIGNALED(wstatus)) {
        const char *ab = sigabbrev_np(WTERMSIG(wstatus));
        snprintf(how, sizeof how, "crashed (SIG%s)", ab ? ab : "?");
    } else if (wstatus >= 0) {
        snprintf(how, sizeof how, "exited (status %d)", WEXITSTATUS(wstatus));
    } else {
        snprintf(how, sizeof how, "crashed (closed its channel)");
    }
    record_id_text(&items[i], idt, sizeof idt);
    int count = crash_note(g, key);
    scores[i] = 0;
    rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "plugin %.40s %s on item %zu%s%s", g->base, how, i, idt,
                           count >= 2 ? "; quarantined for this item" : "");
    if (g->crashes_logged < GUARD_LOG_CRASHES) {
        g->crashes_logged++;
        fprintf(stderr, "rewards: plugin %s %s on item %zu%s of a batch; the worker is restarted%s%s\n", g->path,
                how, i, idt, count >= 2 ? "; crashed twice on this item: quarantined" : "",
                g->crashes_logged == GUARD_LOG_CRASHES ? " (further crashes are only counted)" : "");
    }
}

static void copy_result(int rc, double sc, const rlhf_reward_status *st, double *score, rlhf_reward_status *out) {
    if (rc != 0) {
        *score = 0;
        rlhf_reward_status_set(out, RLHF_REWARD_ERROR, "%s", st->reason[0] ? st->reason : "score_batch failed");
    } else {
        *score = sc;
        *out = *st;
    }
}

/* Scores in the worker: quarantined items are not sent; when the worker dies, the batch is scored
 * again item by item to find the one it dies on. */
/* The worker's plugin on items sub[0..m) — the v2 call with the batch's training state when the plugin
 * takes it (vers: the items' policy versions, or NULL), else v1. */
static int worker_call(plugin_guard *g, const rlhf_reward_item *sub, size_t m, const rlhf_reward_batch *b,
                       const int64_t *vers, double *scores, rlhf_reward_status *status) {
    if (b && g->proc.score_v2) {
        rlhf_reward_batch sb = *b;
        sb.items = sub;
        sb.n = m;
        sb.policy_version = vers;
        return g->proc.score_v2(g->proc.ctx, &sb, scores, status);
    }
    return g->proc.plugin->score_batch(g->proc.ctx, sub, m, scores, status);
}

static int worker_score(plugin_guard *g, const rlhf_reward_item *items, size_t n, const rlhf_reward_batch *b,
                        double *scores, rlhf_reward_status *status) {
    uint64_t *keys = malloc(n * sizeof *keys);
    size_t *idx = malloc(n * sizeof *idx);
    rlhf_reward_item *sub = malloc(n * sizeof *sub);
    double *ssc = calloc(n, sizeof *ssc);
    rlhf_reward_status *sst = calloc(n, sizeof *sst);
    int64_t *vers = b && b->policy_version ? malloc(n * sizeof *vers) : NULL;
    if (!keys || !idx || !sub || !ssc || !sst || (b && b->policy_version && !vers)) {
        free(keys), free(idx), free(sub), free(ssc), free(sst), free(vers);
        snprintf(status[0].reason, sizeof status[0].reason, "out of memory");
        return -1;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        keys[i] = item_key(&items[i]);
        const crash_entry *e = crash_find(g, keys[i]);
        if (e && e->crashes >= 2) {
            scores[i] = 0;
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "quarantined: crashed twice on this item (plugin %.40s)",
                                   g->base);
            continue;
        }
        idx[m] = i;
        if (vers) vers[m] = b->policy_version[i];
        sub[m++] = items[i];
    }
    int ws = -1;
    int rc = m ? worker_call(g, sub, m, b, vers, ssc, sst) : 0;
    if (m && reward_process_last_death(g->proc.ctx, &ws)) {
        if (m == 1) {
            crash_item(g, items, idx[0], keys[idx[0]], ws, scores, status);
        } else {
            int found = 0;
            for (size_t k = 0; k < m; k++) {
                double s1 = 0;
                rlhf_reward_status st1;
                memset(&st1, 0, sizeof st1);
                int rc1 = worker_call(g, &sub[k], 1, b, vers ? &vers[k] : NULL, &s1, &st1);
                if (reward_process_last_death(g->proc.ctx, &ws)) {
                    crash_item(g, items, idx[k], keys[idx[k]], ws, scores, status);
                    found = 1;
                } else {
                    copy_result(rc1, s1, &st1, &scores[idx[k]], &status[idx[k]]);
                }
            }
            if (!found)
                fprintf(stderr, "rewards: plugin %s crashed on a batch of %zu items but on none of them alone; "
                                "they were scored one at a time\n", g->path, m);
        }
    } else {
        for (size_t k = 0; k < m; k++) copy_result(rc, ssc[k], &sst[k], &scores[idx[k]], &status[idx[k]]);
    }
    free(keys), free(idx), free(sub), free(ssc), free(sst), free(vers);
    return 0;
}

/* b: the v2 batch (training state, metrics out) when the pipeline gave one, else NULL */
static int guard_run(plugin_guard *g, const rlhf_reward_item *items, size_t n, const rlhf_reward_batch *b,
                     double *scores, rlhf_reward_status *status) {
    char reason[RLHF_REWARD_REASON_MAX] = "";
    if (n == 0) return 0;
    if (g->proc.plugin) return worker_score(g, items, n, b, scores, status);
    if (g->abandoned) {
        /* the worker could not be started at the last timeout: try again, never the abandoned ctx */
        if (guard_isolate(g, reason, sizeof reason) == 0) return worker_score(g, items, n, b, scores, status);
        for (size_t i = 0; i < n; i++) rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", reason);
        return 0;
    }
    guard_call *c = call_new(&g->inner, items, n);
    if (c && g->inner.plugin_v2) {
        c->plugin_v2 = g->inner.plugin_v2;
        c->step = b ? b->step : -1;
        if ((c->versions = malloc(n * sizeof *c->versions)) != NULL)
            for (size_t i = 0; i < n; i++) c->versions[i] = b && b->policy_version ? b->policy_version[i] : -1;
        else {
            call_unref(c);
            c = NULL;
        }
    }
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (!c) {
        snprintf(status[0].reason, sizeof status[0].reason, "out of memory");
        pthread_attr_destroy(&at);
        return -1;
    }
    c->refs = 2; /* this caller and the thread */
    if (pthread_create(&th, &at, call_main, c) != 0) {
        pthread_attr_destroy(&at);
        c->refs = 1;
        call_unref(c);
        snprintf(status[0].reason, sizeof status[0].reason, "cannot start the plugin's watchdog thread");
        return -1;
    }
    pthread_attr_destroy(&at);
    /* the pipeline's late-answer check allows 50 ms; the wait allows the same */
    double deadline = (items[0].deadline > 0 ? items[0].deadline : rlhf_now() + (double)g->timeout_ms / 1000.0) + 0.05;
    int cancelled = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->done) {
        if (g->cancel && __atomic_load_n(g->cancel, __ATOMIC_RELAXED)) {
            cancelled = 1;
            break;
        }
        double left = deadline - rlhf_now();
        if (left <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double slice = left < 0.1 ? left : 0.1; /* slices: a cancel is seen within 0.1 s */
        long ns = ts.tv_nsec + (long)(slice * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    int done = c->done, rc = c->rc;
    if (done) {
        memcpy(scores, c->scores, n * sizeof *scores);
        memcpy(status, c->status, n * sizeof *status);
        if (b && b->metrics && b->n_metrics) {
            size_t nm = c->n_metrics < b->max_metrics ? c->n_metrics : b->max_metrics;
            if (nm > sizeof c->metrics / sizeof c->metrics[0]) nm = sizeof c->metrics / sizeof c->metrics[0];
            memcpy(b->metrics, c->metrics, nm * sizeof *b->metrics);
            *b->n_metrics = nm;
        }
    }
    pthread_mutex_unlock(&c->mu);
    call_unref(c);
    if (done) return rc;
    /* abandoned: the thread may run on with the ctx, so neither is touched again */
    g->abandoned = 1;
    if (cancelled) snprintf(reason, sizeof reason, "cancelled: the pipeline is stopping");
    else snprintf(reason, sizeof reason, "timeout: score_batch did not return within %lld ms",
                  (long long)g->timeout_ms);
    for (size_t i = 0; i < n; i++) {
        scores[i] = 0;
        rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", reason);
    }
    char why[RLHF_REWARD_REASON_MAX];
    if (!cancelled && guard_isolate(g, why, sizeof why)) fprintf(stderr, "rewards: %s: %s\n", g->path, why);
    return 0;
}

static int guard_resources(void *vctx, double *rss_mb, double *cpu_s, int64_t *restarts) {
    plugin_guard *g = vctx;
    void *pc = __atomic_load_n(&g->proc_ctx_pub, __ATOMIC_ACQUIRE);
    return pc ? reward_process_resources(pc, rss_mb, cpu_s, restarts) : 1;
}

static int guard_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                       rlhf_reward_status *status) {
    return guard_run(vctx, items, n, NULL, scores, status);
}
static int guard_score_v2(void *vctx, const rlhf_reward_batch *b, double *scores, rlhf_reward_status *status) {
    return guard_run(vctx, b->items, b->n, b, scores, status);
}

static void guard_free(plugin_guard *g) {
    free(g->path);
    free(g->config_json);
    free(g->crashed);
    free(g);
}

static void guard_destroy(void *vctx) {
    plugin_guard *g = vctx;
    if (!g) return;
    if (g->proc.plugin && g->proc.plugin->destroy) g->proc.plugin->destroy(g->proc.ctx);
    if (!g->abandoned && g->inner.plugin) {
        if (g->inner.plugin->destroy && g->inner.ctx) g->inner.plugin->destroy(g->inner.ctx);
        if (g->inner.dl_handle) dlclose(g->inner.dl_handle);
    }
    /* else: a thread may still be running the plugin's code on its ctx; the .so stays mapped */
    guard_free(g);
}

static const rlhf_reward_plugin_v1 guard_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "plugin", NULL, guard_score, guard_destroy};

int reward_source_plugin_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"path", "config", "isolate", "max_rss_mb", "restart_every", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    const char *path = NULL, *iso = "process";
    char w[400];
    if ((rc = reward_get_string(src, "path", where, 1, &path, err))) return rc;
    if ((rc = reward_get_string(src, "isolate", where, 0, &iso, err))) return rc;
    int isolate;
    if (!strcmp(iso, "process")) isolate = ISOLATE_PROCESS;
    else if (!strcmp(iso, "none")) isolate = ISOLATE_NONE;
    else {
        snprintf(w, sizeof w, "%s.isolate", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"process\" (a worker process, the default) or \"none\" "
                              "(in this process), got \"%s\"", iso);
    }
    int64_t max_rss_mb = 0, restart_every = 0;
    if ((rc = reward_get_int(src, "max_rss_mb", where, 0, &max_rss_mb, err)) ||
        (rc = reward_get_int(src, "restart_every", where, 0, &restart_every, err)))
        return rc;
    if (max_rss_mb < 0 || restart_every < 0) {
        snprintf(w, sizeof w, "%s.%s", where, max_rss_mb < 0 ? "max_rss_mb" : "restart_every");
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be >= 0 (0 = no limit)");
    }
    if (isolate == ISOLATE_NONE && (max_rss_mb || restart_every)) {
        snprintf(w, sizeof w, "%s.%s", where, max_rss_mb ? "max_rss_mb" : "restart_every");
        return rlhf_error_set(err, RLHF_EINVAL, w, "needs isolate \"process\": a plugin in this process cannot be "
                              "restarted");
    }
    json_t *cfg = json_object_get(src, "config");
    plugin_guard *g = calloc(1, sizeof *g);
    if (!g) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    g->config_json = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    g->path = strdup(path);
    g->isolate = isolate;
    g->max_rss_mb = max_rss_mb;
    g->restart_every = restart_every;
    g->timeout_ms = impl->timeout_ms;
    g->cancel = impl->cancel;
    if (!g->config_json || !g->path) {
        guard_free(g);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    const char *b = strrchr(g->path, '/');
    g->base = b ? b + 1 : g->path;
    g->inner.timeout_ms = impl->timeout_ms;
    /* errors name the source and the .so, as reward_plugin_load does */
    snprintf(w, sizeof w, "%s (%s)", where, path);
    if (isolate == ISOLATE_PROCESS) {
        /* a plugin that does not load or refuses its config is still a create-time error: the worker
         * loads it and answers init before this returns */
        if (access(path, R_OK) != 0) rc = rlhf_error_set(err, RLHF_EIO, w, "cannot load plugin: %s", strerror(errno));
        else rc = guard_start_worker(g, w, err);
    } else {
        rc = reward_plugin_load(path, g->config_json, where, &g->inner, err);
    }
    if (rc) {
        guard_free(g);
        return rc;
    }
    impl->plugin = &guard_plugin;
    /* in a worker, what the plugin declared came back through reward-plugin-host's init reply; the
     * worker calls a v2 .so's score_batch_v2 and a v1 .so's score_batch, so the batch goes as v2 */
    if (g->inner.plugin_v2 || isolate == ISOLATE_PROCESS) impl->score_v2 = guard_score_v2;
    impl->has_range = isolate == ISOLATE_PROCESS ? g->proc.has_range : g->inner.has_range;
    impl->range_lo = isolate == ISOLATE_PROCESS ? g->proc.range_lo : g->inner.range_lo;
    impl->range_hi = isolate == ISOLATE_PROCESS ? g->proc.range_hi : g->inner.range_hi;
    impl->ctx = g;
    impl->dl_handle = NULL; /* the guard owns it */
    impl->resources = guard_resources;
    return 0;
}
