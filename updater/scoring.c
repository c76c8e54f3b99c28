/* updater/scoring.c — scoring rollout groups through the reward pipeline on threads beside the
 * optimizer, so a slow reward (sandbox runs, HTTP judges) overlaps with training instead of
 * stalling it. Raw groups go in through scorer_submit, scored ones come out of scorer_take. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "updater/updater_int.h"

void scored_group_free(scored_group *s) {
    if (!s) return;
    wire_rollout_group_free(&s->g);
    free(s->src);
    free(s->total);
    free(s->src_errors);
    free(s);
}

void group_queue_init(group_queue *q) {
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
}

void group_queue_destroy(group_queue *q) {
    scored_group *s = q->head;
    while (s) {
        scored_group *nx = s->next;
        scored_group_free(s);
        s = nx;
    }
    q->head = q->tail = NULL;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
}

void group_queue_push(group_queue *q, scored_group *s) {
    s->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = s;
    else q->head = s;
    q->tail = s;
    q->n++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

scored_group *group_queue_pop(group_queue *q, double timeout_s) {
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

int group_queue_len(group_queue *q) {
    pthread_mutex_lock(&q->mu);
    int n = q->n;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void group_queue_close(group_queue *q) {
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* ---------------------------------------------------------------- scorer */

struct scorer {
    int n_threads;
    reward_pipeline **pipes; /* (n_threads) */
    pthread_t *threads;
    group_queue in, out;
    pthread_mutex_t mu;
    int in_flight;
    int n_sources;
};

static int score_group(reward_pipeline *pipe, scored_group *sg, rlhf_error *err) {
    wire_rollout_group *g = &sg->g;
    int k = (int)g->k, S = (int)reward_pipeline_n_sources(pipe);
    double t0 = rlhf_now();
    rlhf_reward_item *items = calloc((size_t)k, sizeof *items);
    char **texts = calloc((size_t)k, sizeof *texts);
    char *rec = g->prompt_record ? json_dumps(g->prompt_record, JSON_COMPACT) : NULL;
    sg->n_sources = S;
    sg->src = calloc((size_t)S * k, sizeof(float));
    sg->total = calloc((size_t)k, sizeof(float));
    sg->src_errors = calloc((size_t)S, sizeof(int));
    int rc = 0;
    if (!items || !texts || !sg->src || !sg->total || !sg->src_errors) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory scoring a group");
        goto done;
    }
    size_t off = 0;
    for (int i = 0; i < k; i++) {
        int n = (int)g->n_tokens[i];
        const int32_t *ids = g->tokens + off;
        if (g->texts && g->texts[i]) {
            texts[i] = strdup(g->texts[i]);
        } else {
            /* byte-level ids: 0..255 are bytes, specials decode to nothing */
            texts[i] = malloc((size_t)n + 1);
            int m = 0;
            for (int t = 0; t < n; t++)
                if (ids[t] >= 0 && ids[t] < 256) texts[i][m++] = (char)ids[t];
            texts[i][m] = 0;
        }
        /* the completion's stop byte (newline) is not part of the answer */
        size_t tl = strlen(texts[i]);
        while (tl > 0 && (texts[i][tl - 1] == '\n' || texts[i][tl - 1] == '\r')) texts[i][--tl] = 0;
        items[i].prompt = g->prompt_text ? g->prompt_text : "";
        items[i].completion = texts[i];
        items[i].completion_ids = ids;
        items[i].n_completion_ids = n;
        items[i].record_json = rec ? rec : "{}";
        items[i].group_id = 0;
        items[i].deadline = 0;
        off += (size_t)n;
    }
    reward_scores sc;
    memset(&sc, 0, sizeof sc);
    rc = reward_pipeline_score(pipe, items, (size_t)k, &sc, err);
    if (rc == 0) {
        for (int i = 0; i < k; i++) {
            sg->total[i] = (float)sc.total[i];
            if (sc.item_status[i].code == RLHF_REWARD_SKIP) sg->skipped = 1;
            for (int s = 0; s < S; s++) {
                const rlhf_reward_status *st = &sc.status[(size_t)i * S + s];
                float v = st->code == RLHF_REWARD_OK ? (float)sc.raw[(size_t)i * S + s] : NAN;
                sg->src[(size_t)s * k + i] = v;
                if (st->code == RLHF_REWARD_ERROR) sg->src_errors[s]++;
            }
        }
    }
    reward_scores_free(&sc);
done:
    for (int i = 0; i < k && texts; i++) free(texts[i]);
    free(texts);
    free(items);
    free(rec);
    sg->score_seconds = rlhf_now() - t0;
    return rc;
}

typedef struct worker_arg {
    scorer *s;
    int idx;
} worker_arg;

static void *scorer_main(void *p) {
    worker_arg *wa = p;
    scorer *s = wa->s;
    reward_pipeline *pipe = s->pipes[wa->idx];
    free(wa);
    for (;;) {
        scored_group *g = group_queue_pop(&s->in, 1.0);
        if (!g) {
            pthread_mutex_lock(&s->in.mu);
            int closed = s->in.closed && !s->in.head;
            pthread_mutex_unlock(&s->in.mu);
            if (closed) break;
            continue;
        }
        rlhf_error err = {0};
        if (score_group(pipe, g, &err) != 0) {
            /* an on_error "fail" source: the group carries no usable reward; it is counted as skipped */
            rlhf_error_print("updater: scoring", &err);
            g->skipped = 1;
        }
        group_queue_push(&s->out, g);
    }
    return NULL;
}

int scorer_create(scorer **out, const json_t *rewards, const char *where, int n_threads, rlhf_error *err) {
    scorer *s = calloc(1, sizeof *s);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    s->n_threads = n_threads;
    s->pipes = calloc((size_t)n_threads, sizeof *s->pipes);
    s->threads = calloc((size_t)n_threads, sizeof *s->threads);
    group_queue_init(&s->in);
    group_queue_init(&s->out);
    pthread_mutex_init(&s->mu, NULL);
    for (int i = 0; i < n_threads; i++) {
        int rc = reward_pipeline_create(&s->pipes[i], rewards, where, err);
        if (rc) {
            s->n_threads = i;
            for (int j = 0; j < i; j++) reward_pipeline_destroy(&s->pipes[j]);
            s->n_threads = 0;
            scorer_destroy(&s);
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
    return 0;
}

void scorer_destroy(scorer **sp) {
    scorer *s = *sp;
    if (!s) return;
    group_queue_close(&s->in);
    for (int i = 0; i < s->n_threads; i++)
        if (s->threads[i]) pthread_join(s->threads[i], NULL);
    for (int i = 0; i < s->n_threads; i++) reward_pipeline_destroy(&s->pipes[i]);
    group_queue_destroy(&s->in);
    group_queue_destroy(&s->out);
    pthread_mutex_destroy(&s->mu);
    free(s->pipes);
    free(s->threads);
    free(s);
    *sp = NULL;
}

void scorer_submit(scorer *s, scored_group *g) {
    scorer_start(s);
    pthread_mutex_lock(&s->mu);
    s->in_flight++;
    pthread_mutex_unlock(&s->mu);
    group_queue_push(&s->in, g);
}

scored_group *scorer_take(scorer *s, double timeout_s) {
    scored_group *g = group_queue_pop(&s->out, timeout_s);
    if (g) {
        pthread_mutex_lock(&s->mu);
        s->in_flight--;
        pthread_mutex_unlock(&s->mu);
    }
    return g;
}

int scorer_in_flight(scorer *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int scorer_n_sources(const scorer *s) { return s->n_sources; }
const char *scorer_source_name(const scorer *s, int i) { return reward_pipeline_source_name(s->pipes[0], (size_t)i); }

int scorer_score_now(scorer *s, scored_group *g, rlhf_error *err) { return score_group(s->pipes[0], g, err); }
