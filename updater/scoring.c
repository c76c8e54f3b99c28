/* updater/scoring.c — scoring rollout groups through the reward pipeline on threads beside the
 * optimizer, so a slow reward (sandbox runs, HTTP judges) overlaps with training instead of
 * stalling it. Raw groups go in through updater_scorer_submit, scored ones come out of updater_scorer_take. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "updater/updater_int.h"

void updater_scored_group_free(scored_group *s) {
    if (!s) return;
    wire_rollout_group_free(&s->g);
    free(s->src);
    free(s->total);
    free(s->src_errors);
    free(s->src_status);
    free(s->unscored);
    free(s->src_skipped);
    free(s->src_clipped);
    free(s->src_ms);
    free(s->metrics);
    free(s);
}

int updater_group_n_scored(const scored_group *sg) {
    int n = 0;
    for (uint32_t i = 0; i < sg->g.k; i++) n += !sg->unscored || !sg->unscored[i];
    return n;
}

void updater_group_queue_init(group_queue *q) {
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
}

void updater_group_queue_fini(group_queue *q) {
    scored_group *s = q->head;
    while (s) {
        scored_group *nx = s->next;
        updater_scored_group_free(s);
        s = nx;
    }
    q->head = q->tail = NULL;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
}

void updater_group_queue_push(group_queue *q, scored_group *s) {
    s->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = s;
    else q->head = s;
    q->tail = s;
    q->n++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

scored_group *updater_group_queue_pop(group_queue *q, double timeout_s) {
    pthread_mutex_lock(&q->mu);
    if (!q->head && !q->closed && timeout_s > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = ts.tv_sec + ts.tv_nsec * 1e-9 + timeout_s;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        while (!q->head && !q->closed)
            if (pthread_cond_timedwait(&q->cv, &q->mu, &ts) == ETIMEDOUT) break;
    }
    scored_group *s = q->head;
    if (s) {
        q->head = s->next;
        if (!q->head) q->tail = NULL;
        q->n--;
        s->next = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return s;
}

int updater_group_queue_len(group_queue *q) {
    pthread_mutex_lock(&q->mu);
    int n = q->n;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void updater_group_queue_close(group_queue *q) {
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* ---------------------------------------------------------------- scorer */

#define SCORER_MAX_BATCH 32

struct scorer {
    int n_threads;
    reward_pipeline **pipes; /* (n_threads) */
    pthread_t *threads;
    group_queue in, out;
    pthread_mutex_t mu;
    int in_flight;
    int n_sources;
    const tokenizer *tok; /* turns completion ids into the text the reward sources see */
    long step;            /* the optimizer step v2 sources see (atomic) */
    int vocab;            /* token ids must be below it (0: unchecked) */
    int failed;           /* an on_error "fail" source failed (under mu); failed_err says where */
    rlhf_error failed_err;
    updater_dist *dist;   /* rank 0 of a job that scores on every rank, else NULL */
    int n_remote;         /* follower ranks, one sending thread each (remote_main) */
    pthread_t *remote_threads;
    long remote_groups;   /* scored by other ranks (under mu) */
};

/* Scores n groups with ONE pipeline call: sandboxed sources start one checker process per call
 * (per pool slot), so batching whatever groups are waiting amortises that start-up. Each group's
 * samples share its group_id (the on_error "skip_group" policy acts per group). */
static int score_groups(reward_pipeline *pipe, const tokenizer *tok, long step, scored_group **gs, int n,
                        rlhf_error *err) {
    int S = (int)reward_pipeline_n_sources(pipe);
    double t0 = rlhf_now();
    size_t N = 0;
    for (int g = 0; g < n; g++) N += gs[g]->g.k;
    rlhf_reward_item *items = calloc(N ? N : 1, sizeof *items);
    char **texts = calloc(N ? N : 1, sizeof *texts);
    char **recs = calloc(n > 0 ? (size_t)n : 1, sizeof *recs);
    int64_t *versions = calloc(N ? N : 1, sizeof *versions);
    int rc = 0;
    if (!items || !texts || !recs || !versions) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory scoring groups");
        goto done;
    }
    size_t it = 0;
    for (int gi = 0; gi < n; gi++) {
        scored_group *sg = gs[gi];
        wire_rollout_group *g = &sg->g;
        int k = (int)g->k;
        recs[gi] = g->prompt_record ? json_dumps(g->prompt_record, JSON_COMPACT) : NULL;
        sg->n_sources = S;
        sg->src = calloc((size_t)S * k + 1, sizeof(float));
        sg->total = calloc((size_t)k + 1, sizeof(float));
        sg->src_errors = calloc((size_t)S + 1, sizeof(int));
        sg->src_skipped = calloc((size_t)S + 1, sizeof(int));
        sg->src_clipped = calloc((size_t)S + 1, sizeof(int));
        sg->src_ms = calloc((size_t)S + 1, sizeof(double));
        if (!sg->src || !sg->total || !sg->src_errors || !sg->src_skipped || !sg->src_clipped || !sg->src_ms) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory scoring a group");
            goto done;
        }
        size_t off = 0;
        for (int i = 0; i < k; i++, it++) {
            int nt = (int)g->n_tokens[i];
            const int32_t *ids = g->tokens + off;
            if (g->texts && g->texts[i]) {
                texts[it] = strdup(g->texts[i]);
            } else {
                /* The tokenizer's bytes (special ids decode to nothing). The reward sources get a C
                 * string of valid UTF-8: a NUL byte would otherwise cut the completion short (and could
                 * turn "3+3\0junk" into a right answer), so it and any invalid byte arrive as U+FFFD;
                 * completion_ids keeps the exact tokens. */
                char *bytes = NULL;
                size_t m = 0;
                rlhf_error derr = {0};
                if (tokenizer_decode(tok, ids, nt, &bytes, &m, &derr) != 0) {
                    rc = rlhf_error_set(err, derr.code, g->prompt_id ? g->prompt_id : "group",
                                        "cannot decode completion %d: %s", i, derr.msg);
                    goto done;
                }
                texts[it] = rlhf_utf8_sanitize(bytes, m);
                free(bytes);
            }
            if (!texts[it]) {
                rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory scoring a group");
                goto done;
            }
            /* the completion's stop byte (newline) is not part of the answer */
            size_t tl = strlen(texts[it]);
            while (tl > 0 && (texts[it][tl - 1] == '\n' || texts[it][tl - 1] == '\r')) texts[it][--tl] = 0;
            items[it].prompt = g->prompt_text ? g->prompt_text : "";
            items[it].completion = texts[it];
            items[it].completion_ids = ids;
            items[it].n_completion_ids = nt;
            items[it].record_json = recs[gi] ? recs[gi] : "{}";
            items[it].group_id = gi;
            items[it].deadline = 0;
            versions[it] = (int64_t)g->policy_version;
            off += (size_t)nt;
        }
    }
    reward_scores sc;
    memset(&sc, 0, sizeof sc);
    reward_score_opts opts = {.step = step, .policy_version = versions};
    rc = reward_pipeline_score_ex(pipe, items, N, &opts, &sc, err);
    /* an on_error "fail" error still leaves every score and status filled: the groups carry their
     * errors to the metrics like under any other policy */
    if (sc.n_items == N && sc.status) {
        it = 0;
        for (int gi = 0; gi < n; gi++) {
            scored_group *sg = gs[gi];
            int k = (int)sg->g.k;
            if (rc) sg->skipped = 1;
            for (int i = 0; i < k; i++)
                for (int s = 0; s < S; s++)
                    if (sc.status[(it + i) * S + s].code == RLHF_REWARD_ERROR && !sg->src_status)
                        sg->src_status = calloc((size_t)S * k, sizeof *sg->src_status);
            for (int s = 0; s < S && N; s++) sg->src_ms[s] = sc.source_ms[s] * k / (double)N;
            if (sc.n_metrics) {
                /* every group carries its batch's plugin metrics: the step's value is the mean over its
                 * groups, whichever of them are dropped before it */
                sg->metrics = malloc(sc.n_metrics * sizeof *sg->metrics);
                if (sg->metrics) {
                    memcpy(sg->metrics, sc.metrics, sc.n_metrics * sizeof *sg->metrics);
                    sg->n_metrics = sc.n_metrics;
                }
            }
            for (int i = 0; i < k; i++, it++) {
                sg->total[i] = (float)sc.total[it];
                if (sc.item_status[it].code == RLHF_REWARD_SKIP) sg->skipped = 1;
                if (!sc.scored[it]) {
                    if (!sg->unscored) sg->unscored = calloc((size_t)k, 1);
                    /* without the flags the item would train as a 0: fail the batch rather than that */
                    if (!sg->unscored) sg->skipped = 1;
                    else sg->unscored[i] = 1;
                }
                for (int s = 0; s < S; s++) {
                    const rlhf_reward_status *st = &sc.status[it * S + s];
                    float v = st->code == RLHF_REWARD_OK ? (float)sc.raw[it * S + s] : NAN;
                    sg->src[(size_t)s * k + i] = v;
                    if (st->code == RLHF_REWARD_ERROR) sg->src_errors[s]++;
                    if (st->code == RLHF_REWARD_SKIP) sg->src_skipped[s]++;
                    sg->src_clipped[s] += sc.clipped[it * S + s];
                    if (sg->src_status) sg->src_status[(size_t)s * k + i] = *st;
                }
            }
        }
    }
    if (rc && sc.n_items == N && sc.status) {
        /* name the prompt: the pipeline only knows the item's index in this batch */
        int fs = -1;
        for (int s = 0; s < S; s++)
            if (!strcmp(reward_pipeline_source_name(pipe, (size_t)s), err->where)) fs = s;
        it = 0;
        for (int gi = 0; gi < n && fs >= 0; gi++)
            for (uint32_t i = 0; i < gs[gi]->g.k; i++, it++)
                if (sc.status[it * S + fs].code == RLHF_REWARD_ERROR) {
                    char msg[sizeof err->msg], wh[sizeof err->where];
                    snprintf(wh, sizeof wh, "%s", err->where);
                    snprintf(msg, sizeof msg, "on_error \"fail\": reward source '%s' failed on prompt %s (sample %u): %s",
                             wh, gs[gi]->g.prompt_id ? gs[gi]->g.prompt_id : "?", i,
                             sc.status[it * S + fs].reason);
                    rlhf_error_set(err, RLHF_EREWARD, wh, "%s", msg);
                    gi = n;
                    break;
                }
    }
    reward_scores_free(&sc);
done:
    for (size_t i = 0; i < N && texts; i++) free(texts[i]);
    for (int g = 0; g < n && recs; g++) free(recs[g]);
    free(texts);
    free(recs);
    free(items);
    free(versions);
    double dt = rlhf_now() - t0;
    /* the batch's scoring time, shared out by samples */
    for (int g = 0; g < n; g++) gs[g]->score_seconds = N ? dt * gs[g]->g.k / (double)N : 0;
    return rc;
}



typedef struct worker_arg {
    scorer *s;
    int idx;
} worker_arg;

static void scorer_fail(scorer *s, const rlhf_error *err) {
    pthread_mutex_lock(&s->mu);
    if (!s->failed) {
        s->failed = 1;
        s->failed_err = *err;
    }
    pthread_mutex_unlock(&s->mu);
}

/* Pops a batch of raw groups (waits up to a second for the first): the groups with token ids outside
 * the vocabulary go straight out, skipped. 0 when the queue is closed and empty, else 1 (*n may be 0). */
static int next_batch(scorer *s, scored_group **batch, int *n) {
    *n = 0;
    scored_group *g = updater_group_queue_pop(&s->in, 1.0);
    if (!g) {
        pthread_mutex_lock(&s->in.mu);
        int closed = s->in.closed && !s->in.head;
        pthread_mutex_unlock(&s->in.mu);
        return !closed;
    }
    /* take whatever else is already waiting: one pipeline call for all of it */
    int m = 0;
    batch[m++] = g;
    while (m < SCORER_MAX_BATCH && (g = updater_group_queue_pop(&s->in, 0)) != NULL) batch[m++] = g;
    for (int i = 0; i < m; i++) {
        if (s->vocab && updater_group_check_tokens(&batch[i]->g, s->vocab, NULL) != 0) {
            batch[i]->skipped = batch[i]->bad_tokens = 1;
            updater_group_queue_push(&s->out, batch[i]);
        } else {
            batch[(*n)++] = batch[i];
        }
    }
    return 1;
}

static void *scorer_main(void *p) {
    worker_arg *wa = p;
    scorer *s = wa->s;
    reward_pipeline *pipe = s->pipes[wa->idx];
    free(wa);
    scored_group *batch[SCORER_MAX_BATCH];
    int n;
    while (next_batch(s, batch, &n)) {
        rlhf_error err = {0};
        if (n && score_groups(pipe, s->tok, __atomic_load_n(&s->step, __ATOMIC_RELAXED), batch, n, &err) != 0) {
            /* an on_error "fail" source (or no memory): the groups carry no usable reward and are
             * counted as skipped; the updater stops the run with the first such error */
            for (int i = 0; i < n; i++) batch[i]->skipped = 1;
            scorer_fail(s, &err);
        }
        for (int i = 0; i < n; i++) updater_group_queue_push(&s->out, batch[i]);
    }
    return NULL;
}

/* ---------------------------------------------------------------- scoring on the other ranks */

typedef struct remote_arg {
    scorer *s;
    int rank;
} remote_arg;

/* Rank 0's thread for follower `rank`: the same queue as the local threads, scored over there. An MPI
 * failure here is the job's failure (a rank that died takes the job down; the launcher restarts it). */
static void *remote_main(void *p) {
    remote_arg *ra = p;
    scorer *s = ra->s;
    int rank = ra->rank;
    free(ra);
    scored_group *batch[SCORER_MAX_BATCH];
    int n;
    while (next_batch(s, batch, &n)) {
        if (!n) continue;
        rlhf_error err = {0};
        void *req = NULL, *rep = NULL;
        size_t req_n = 0, rep_n = 0;
        int failed = 0;
        rlhf_error ferr = {0};
        int rc = updater_dist_pack_score_request(__atomic_load_n(&s->step, __ATOMIC_RELAXED), batch, n, &req, &req_n, &err);
        if (!rc) rc = updater_dist_send(s->dist, rank, req, req_n, &err);
        if (!rc) rc = updater_dist_recv(s->dist, rank, &rep, &rep_n, &err);
        if (!rc && updater_dist_unpack_scores(rep, rep_n, batch, n, &failed, &ferr))
            rc = rlhf_error_set(&err, RLHF_ECORRUPT, "updater (MPI)", "rank %d's scores do not unpack", rank);
        free(req);
        free(rep);
        if (rc || failed) {
            for (int i = 0; i < n; i++) batch[i]->skipped = 1;
            scorer_fail(s, rc ? &err : &ferr);
        } else {
            pthread_mutex_lock(&s->mu);
            s->remote_groups += n;
            pthread_mutex_unlock(&s->mu);
        }
        for (int i = 0; i < n; i++) updater_group_queue_push(&s->out, batch[i]);
    }
    return NULL;
}

int updater_scorer_attach_ranks(scorer *s, updater_dist *d) {
    if (!updater_dist_scoring_possible(d) || updater_dist_rank(d) != 0 || s->threads[0]) return 1;
    s->remote_threads = calloc((size_t)updater_dist_size(d), sizeof *s->remote_threads);
    if (!s->remote_threads) return 1;
    s->dist = d;
    s->n_remote = updater_dist_size(d) - 1;
    return 0;
}

long updater_scorer_remote_groups(scorer *s) {
    pthread_mutex_lock(&s->mu);
    long n = s->remote_groups;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int updater_scorer_serve(const json_t *rewards, const char *where, const tokenizer *tok, int vocab, updater_dist *d,
                         rlhf_error *err) {
    reward_pipeline *pipe = NULL;
    int rc = reward_pipeline_create(&pipe, rewards, where, err);
    if (rc) return rc;
    for (;;) {
        void *buf = NULL;
        size_t n = 0;
        if ((rc = updater_dist_recv(d, 0, &buf, &n, err))) break;
        if (n >= 1 && ((unsigned char *)buf)[0] == DIST_SCORE_STOP) {
            free(buf);
            break;
        }
        long step = 0;
        scored_group **gs = NULL;
        int ng = 0;
        rc = updater_dist_unpack_score_request(buf, n, &step, &gs, &ng, err);
        free(buf);
        if (rc) break;
        /* rank 0 checked the token ids before sending; a group failing here would be a corrupted
         * message, and is skipped like a bad group there */
        int m = 0;
        scored_group **ok = malloc(sizeof *ok * (size_t)(ng ? ng : 1));
        for (int i = 0; ok && i < ng; i++) {
            if (vocab && updater_group_check_tokens(&gs[i]->g, vocab, NULL) != 0) gs[i]->skipped = gs[i]->bad_tokens = 1;
            else ok[m++] = gs[i];
        }
        rlhf_error serr = {0};
        int src = !ok ? RLHF_FAIL(&serr, RLHF_ENOMEM, "out of memory")
                      : m ? score_groups(pipe, tok, step, ok, m, &serr) : 0;
        free(ok);
        void *rep = NULL;
        size_t rep_n = 0;
        rc = updater_dist_pack_scores(gs, ng, src ? &serr : NULL, &rep, &rep_n) ? RLHF_FAIL(err, RLHF_ENOMEM, "out of memory")
                                                                                 : updater_dist_send(d, 0, rep, rep_n, err);
        free(rep);
        for (int i = 0; i < ng; i++) updater_scored_group_free(gs[i]);
        free(gs);
        if (rc) break;
    }
    reward_pipeline_destroy(&pipe);
    return rc;
}

int updater_scorer_create(scorer **out, const json_t *rewards, const char *where, int n_threads, const tokenizer *tok,
                          rlhf_error *err) {
    scorer *s = calloc(1, sizeof *s);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    s->tok = tok;
    s->n_threads = n_threads;
    s->pipes = calloc((size_t)n_threads, sizeof *s->pipes);
    s->threads = calloc((size_t)n_threads, sizeof *s->threads);
    updater_group_queue_init(&s->in);
    updater_group_queue_init(&s->out);
    pthread_mutex_init(&s->mu, NULL);
    for (int i = 0; i < n_threads; i++) {
        int rc = reward_pipeline_create(&s->pipes[i], rewards, where, err);
        if (rc) {
            s->n_threads = i;
            for (int j = 0; j < i; j++) reward_pipeline_destroy(&s->pipes[j]);
            s->n_threads = 0;
            updater_scorer_destroy(&s);
            return rc;
        }
    }
    s->n_sources = (int)reward_pipeline_n_sources(s->pipes[0]);
    *out = s;
    return 0;
}

static int scorer_start(scorer *s) {
    if (s->threads[0]) return 0;
    for (int i = 0; i < s->n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        wa->s = s;
        wa->idx = i;
        if (pthread_create(&s->threads[i], NULL, scorer_main, wa) != 0) {
            free(wa);
            return -1;
        }
    }
    for (int r = 0; r < s->n_remote; r++) {
        remote_arg *ra = malloc(sizeof *ra);
        ra->s = s;
        ra->rank = r + 1;
        if (pthread_create(&s->remote_threads[r], NULL, remote_main, ra) != 0) {
            free(ra);
            s->remote_threads[r] = 0;
        }
    }
    return 0;
}

void updater_scorer_destroy(scorer **sp) {
    scorer *s = *sp;
    if (!s) return;
    updater_group_queue_close(&s->in);
    /* what is still being scored is dropped: a source waiting on a hung plugin or process stops
     * waiting now rather than at its timeout_ms, so stopping takes well under a second */
    for (int i = 0; i < s->n_threads; i++) reward_pipeline_cancel(s->pipes[i]);
    for (int i = 0; i < s->n_threads; i++)
        if (s->threads[i]) pthread_join(s->threads[i], NULL);
    /* a batch out on another rank comes back first (within its sources' timeouts) */
    for (int r = 0; r < s->n_remote; r++)
        if (s->remote_threads[r]) pthread_join(s->remote_threads[r], NULL);
    free(s->remote_threads);
    for (int i = 0; i < s->n_threads; i++) reward_pipeline_destroy(&s->pipes[i]);
    updater_group_queue_fini(&s->in);
    updater_group_queue_fini(&s->out);
    pthread_mutex_destroy(&s->mu);
    free(s->pipes);
    free(s->threads);
    free(s);
    *sp = NULL;
}

void updater_scorer_submit(scorer *s, scored_group *g) {
    scorer_start(s);
    pthread_mutex_lock(&s->mu);
    s->in_flight++;
    pthread_mutex_unlock(&s->mu);
    updater_group_queue_push(&s->in, g);
}

scored_group *updater_scorer_take(scorer *s, double timeout_s) {
    scored_group *g = updater_group_queue_pop(&s->out, timeout_s);
    if (g) {
        pthread_mutex_lock(&s->mu);
        s->in_flight--;
        pthread_mutex_unlock(&s->mu);
    }
    return g;
}

int updater_scorer_in_flight(scorer *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int updater_scorer_n_sources(const scorer *s) { return s->n_sources; }
int updater_scorer_failed(scorer *s, rlhf_error *err) {
    pthread_mutex_lock(&s->mu);
    int f = s->failed;
    if (f && err) *err = s->failed_err;
    pthread_mutex_unlock(&s->mu);
    return f;
}
double updater_scorer_max_error_rate(const scorer *s, int i, int64_t *window) {
    return reward_pipeline_source_max_error_rate(s->pipes[0], (size_t)i, window);
}
int updater_scorer_source_resources(const scorer *s, int i, double *rss_mb, double *cpu_s, int64_t *restarts) {
    /* each scoring thread has its own pipeline, hence its own child: the source's total */
    double rss = 0, cpu = 0;
    int64_t rs = 0;
    int any = 0;
    for (int k = 0; k < s->n_threads; k++) {
        double r1 = 0, c1 = 0;
        int64_t n1 = 0;
        if (reward_pipeline_source_resources(s->pipes[k], (size_t)i, &r1, &c1, &n1) == 0) {
            any = 1;
            rss += r1;
            cpu += c1;
            rs += n1;
        }
    }
    if (!any) return 1;
    *rss_mb = rss;
    *cpu_s = cpu;
    *restarts = rs;
    return 0;
}
const char *updater_scorer_source_name(const scorer *s, int i) { return reward_pipeline_source_name(s->pipes[0], (size_t)i); }

void updater_scorer_set_step(scorer *s, long step) { __atomic_store_n(&s->step, step, __ATOMIC_RELAXED); }
int updater_scorer_score_now(scorer *s, scored_group *g, rlhf_error *err) {
    if (s->vocab && updater_group_check_tokens(&g->g, s->vocab, err) != 0) {
        g->skipped = g->bad_tokens = 1;
        return RLHF_ECORRUPT;
    }
    return score_groups(s->pipes[0], s->tok, __atomic_load_n(&s->step, __ATOMIC_RELAXED), &g, 1, err);
}

void updater_scorer_set_vocab(scorer *s, int vocab) { s->vocab = vocab > 0 ? vocab : 0; }

int updater_group_check_tokens(const wire_rollout_group *g, int vocab, rlhf_error *err) {
    const char *who = g->prompt_id ? g->prompt_id : "?";
    for (uint32_t i = 0; i < g->n_prompt_tokens; i++)
        if (g->prompt_tokens[i] < 0 || g->prompt_tokens[i] >= vocab)
            return rlhf_error_set(err, RLHF_ECORRUPT, who, "group %s/%llu: prompt token %u is %d, outside the vocabulary [0, %d)",
                                  g->generator_id ? g->generator_id : "?", (unsigned long long)g->seq, i,
                                  (int)g->prompt_tokens[i], vocab);
    uint64_t n = wire_rollout_group_total_tokens(g);
    for (uint64_t i = 0; i < n; i++)
        if (g->tokens[i] < 0 || g->tokens[i] >= vocab)
            return rlhf_error_set(err, RLHF_ECORRUPT, who, "group %s/%llu: completion token %llu is %d, outside the "
                                  "vocabulary [0, %d)", g->generator_id ? g->generator_id : "?",
                                  (unsigned long long)g->seq, (unsigned long long)i, (int)g->tokens[i], vocab);
    return 0;
}

int updater_scorer_score_batch_now(scorer *s, scored_group **gs, int n, rlhf_error *err) {
    /* groups with token ids the model does not have are skipped unscored, as on the scoring threads */
    scored_group **ok = malloc(sizeof *ok * (size_t)(n > 0 ? n : 1));
    if (!ok) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (s->vocab && updater_group_check_tokens(&gs[i]->g, s->vocab, NULL) != 0) gs[i]->skipped = gs[i]->bad_tokens = 1;
        else ok[m++] = gs[i];
    }
    int rc = m ? score_groups(s->pipes[0], s->tok, __atomic_load_n(&s->step, __ATOMIC_RELAXED), ok, m, err) : 0;
    free(ok);
    return rc;
}
