/* serve/serve_decode.c — the worker of `rlhf serve`: continuous batching over the sampler's KV-cache
 * slots with sampler_step, token choice (or speculative decoding through model/'s step API,
 * sampler_spec_batch), stop handling, SSE events as tokens appear, and batched reward-model scoring.
 * See serve/serve_int.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "serve/serve_int.h"

/* ------------------------------------------------------------------------------------------ jobs */

void serve_job_free(serve_job *j) {
    if (!j) return;
    free(j->prompt_ids);
    for (int i = 0; i < SERVE_MAX_STOPS; i++) free(j->stops[i]);
    free(j->text);
    free(j->out_ids);
    free(j->out_lp);
    free(j->out_lq);
    free(j->out_top_ids);
    free(j->out_top_lp);
    free(j->sse);
    for (int i = 0; j->texts && i < j->n_texts; i++) free(j->texts[i]);
    free(j->texts);
    free(j->rewards);
    guided_matcher_destroy(&j->matcher);
    if (j->grammar && j->server) {
        pthread_mutex_lock(&j->server->guided_mu);
        guided_cache_release(j->server->gcache, j->grammar);
        pthread_mutex_unlock(&j->server->guided_mu);
    }
    json_decref(j->guided_spec);
    free(j);
}

/* The job's grammar (compiled once per spec: the server's cache), and its matcher; the vocabulary trie is
 * built at the first guided request. */
int serve_attach_guided(serve_server *s, serve_job *j, rlhf_error *err) {
    pthread_mutex_lock(&s->guided_mu);
    int rc = 0;
    if (!s->gcache) rc = guided_cache_create(&s->gcache, 64, err);
    if (!rc && !s->gvocab) rc = guided_vocab_create(&s->gvocab, s->tok, err);
    if (!rc) rc = guided_cache_get(s->gcache, j->guided_spec, "response_format.json_schema", &j->grammar, NULL, err);
    if (!rc) {
        j->server = s; /* serve_job_free releases the grammar */
        rc = guided_matcher_create(&j->matcher, j->grammar, s->gvocab, err);
    }
    pthread_mutex_unlock(&s->guided_mu);
    return rc;
}

int serve_submit(serve_server *s, serve_job *j) {
    pthread_mutex_lock(&s->mu);
    if (s->queued >= s->cfg.max_queue || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void serve_wait(serve_server *s, serve_job *j) {
    pthread_mutex_lock(&s->mu);
    while (!j->done) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

/* --------------------------------------------------------------------------------- token choice */

typedef struct cand {
    float p;
    int id;
} cand;

static int cand_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->p, y = ((const cand *)b)->p;
    return x < y ? 1 : x > y ? -1 : ((const cand *)a)->id - ((const cand *)b)->id;
}

/* The K most probable tokens of a logits row and their log-probs (temperature 1, unfiltered: the same
 * distribution as a token's own `logprob`), most probable first, ties to the lower id. */
static void top_logprobs(const float *logits, int V, int K, int32_t *ids, float *lps) {
    int n = 0;
    for (int v = 0; v < V; v++) {
        if (n == K && !(logits[v] > logits[ids[n - 1]])) continue;
        int at = n < K ? n++ : K - 1;
        while (at > 0 && logits[v] > logits[ids[at - 1]]) {
            ids[at] = ids[at - 1];
            at--;
        }
        ids[at] = v;
    }
    float mx = n ? logits[ids[0]] : 0;
    double sum = 0;
    for (int v = 0; v < V; v++) sum += exp((double)logits[v] - mx);
    for (int k = 0; k < n; k++) lps[k] = (float)((double)logits[ids[k]] - mx - log(sum));
    for (int k = n; k < K; k++) ids[k] = -1, lps[k] = -INFINITY;
}

static double log_softmax_at(const float *logits, int V, float mx, int32_t y) {
    double s = 0;
    for (int v = 0; v < V; v++) s += exp((double)logits[v] - mx);
    return (double)logits[y] - mx - log(s);
}

int32_t serve_choose_token(const float *logits, int V, const sample_params *p, rlhf_rng *rng, float *scratch,
                           float *lp_pi, float *lp_q) {
    float dummy;
    if (!lp_pi) lp_pi = &dummy;
    if (!lp_q) lp_q = &dummy;
    int amax = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[amax]) amax = v;
    if (p->temperature <= 0.0f) {
        *lp_pi = (float)log_softmax_at(logits, V, logits[amax], amax);
        *lp_q = 0.0f;
        return amax;
    }
    /* softmax at the temperature */
    float *e = scratch; // (V)
    double sum = 0;
    for (int v = 0; v < V; v++) {
        e[v] = expf((logits[v] - logits[amax]) / p->temperature);
        sum += e[v];
    }
    int filtered = (p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f || p->min_p > 0.0f;
    if (!filtered) {
        double u = rlhf_rng_uniform(rng) * sum, acc = 0;
        int32_t y = amax;
        for (int v = 0; v < V; v++) {
            acc += e[v];
            if (u < acc) {
                y = v;
                break;
            }
        }
        *lp_pi = (float)log_softmax_at(logits, V, logits[amax], y);
        *lp_q = (float)(((double)logits[y] - logits[amax]) / p->temperature - log(sum));
        return y;
    }
    cand *tmp = malloc((size_t)V * sizeof *tmp);
    if (!tmp) {
        *lp_pi = (float)log_softmax_at(logits, V, logits[amax], amax);
        *lp_q = 0.0f;
        return amax;
    }
    for (int v = 0; v < V; v++) tmp[v] = (cand){(float)(e[v] / sum), v};
    qsort(tmp, (size_t)V, sizeof *tmp, cand_desc);
    int k = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
    double mass = 0;
    for (int i = 0; i < k; i++) mass += tmp[i].p;
    if (p->top_p < 1.0f) { /* smallest prefix of the (top-k renormalised) distribution holding top_p */
        double acc = 0;
        for (int i = 0; i < k; i++) {
            acc += tmp[i].p / mass;
            if (acc >= p->top_p) {
                k = i + 1;
                break;
            }
        }
        mass = 0;
        for (int i = 0; i < k; i++) mass += tmp[i].p;
    }
    if (p->min_p > 0.0f) { /* then tokens at least min_p times as probable as the most probable one */
        int keep = 1;
        while (keep < k && tmp[keep].p >= p->min_p * tmp[0].p) keep++;
        k = keep;
        mass = 0;
        for (int i = 0; i < k; i++) mass += tmp[i].p;
    }
    double u = rlhf_rng_uniform(rng) * mass, acc = 0;
    int at = k - 1;
    for (int i = 0; i < k; i++) {
        acc += tmp[i].p;
        if (u < acc) {
            at = i;
            break;
        }
    }
    int32_t pick = tmp[at].id;
    *lp_pi = (float)log_softmax_at(logits, V, logits[amax], pick);
    *lp_q = (float)(log((double)tmp[at].p) - log(mass));
    free(tmp);
    return pick;
}

/* ------------------------------------------------------------------------------------------ SSE */

/* Appends "data: JSON\n\n" to the job's SSE buffer (caller holds s->mu). */
static void sse_event(serve_job *j, json_t *ev) {
    char *txt = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    if (!txt) return;
    size_t n = strlen(txt) + 8;
    if (j->sse_len + n + 1 > j->sse_cap) {
        size_t cap = j->sse_cap ? j->sse_cap : 1024;
        while (cap < j->sse_len + n + 1) cap *= 2;
        char *q = realloc(j->sse, cap);
        if (!q) {
            free(txt);
            return;
        }
        j->sse = q;
        j->sse_cap = cap;
    }
    j->sse_len += (size_t)sprintf(j->sse + j->sse_len, "data: %s\n\n", txt);
    free(txt);
}

static void sse_raw(serve_job *j, const char *line) {
    size_t n = strlen(line);
    if (j->sse_len + n + 1 > j->sse_cap) {
        size_t cap = j->sse_cap ? j->sse_cap : 1024;
        while (cap < j->sse_len + n + 1) cap *= 2;
        char *q = realloc(j->sse, cap);
        if (!q) return;
        j->sse = q;
        j->sse_cap = cap;
    }
    memcpy(j->sse + j->sse_len, line, n + 1);
    j->sse_len += n;
}

static json_t *chunk(serve_server *s, serve_job *j, json_t *choice) {
    json_t *ev = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:s}", "id", j->rid, "object",
                           j->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)j->created,
                           "model", s->cfg.model_id, "choices", choice, "system_fingerprint", SERVE_FINGERPRINT);
    return ev;
}

/* Length of the longest prefix of t[0..n) that does not end inside a UTF-8 sequence. */
static size_t utf8_complete(const char *t, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)t[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return n;
    unsigned c = (unsigned char)t[i - 1];
    size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return (back + 1 < need) ? i - 1 : n;
}

/* Sends newly generated text as delta events. While generating, text that could still turn out to
 * be the start of a stop string, or an incomplete UTF-8 character, is held back. */
static void stream_progress(serve_server *s, serve_job *j, int final) {
    size_t upto = j->text_len;
    if (!final) {
        size_t hold = 0;
        for (int i = 0; i < j->n_stops; i++) {
            size_t l = strlen(j->stops[i]);
            if (l - 1 > hold) hold = l - 1;
        }
        upto = upto > hold ? upto - hold : 0;
        upto = utf8_complete(j->text, upto);
    }
    if (upto <= j->emitted) return;
    char *piece = rlhf_utf8_sanitize(j->text + j->emitted, upto - j->emitted);
    if (!piece) return;
    j->emitted = upto;
    json_t *choice = j->chat ? json_pack("{s:i, s:{s:s}, s:n}", "index", 0, "delta", "content", piece, "finish_reason")
                             : json_pack("{s:i, s:s, s:n}", "index", 0, "text", piece, "finish_reason");
    free(piece);
    pthread_mutex_lock(&s->mu);
    sse_event(j, chunk(s, j, choice));
    pthread_cond_broadcast(&s->stream_cv);
    pthread_mutex_unlock(&s->mu);
}

static const char *finish_str(int f) { return f == SAMPLE_FINISH_STOP ? "stop" : "length"; }

/* Marks a generation job finished (after its last text went out). */
static void finish_job(serve_server *s, serve_job *j, int finish) {
    j->finish = finish;
    if (j->stream) {
        stream_progress(s, j, 1);
        json_t *choice = j->chat ? json_pack("{s:i, s:{}, s:s}", "index", 0, "delta", "finish_reason", finish_str(finish))
                                 : json_pack("{s:i, s:s, s:s}", "index", 0, "text", "", "finish_reason", finish_str(finish));
        json_t *ev = chunk(s, j, choice), *usage = NULL;
        /* as OpenAI: the usage only with stream_options.include_usage, in a chunk of its own (no choices) */
        if (j->include_usage) {
            usage = chunk(s, j, json_object());
            json_array_clear(json_object_get(usage, "choices"));
            json_object_set_new(usage, "usage", json_pack("{s:i, s:i, s:i}", "prompt_tokens", j->prompt_len,
                                                          "completion_tokens", j->n_tokens, "total_tokens",
                                                          j->prompt_len + j->n_tokens));
        }
        pthread_mutex_lock(&s->mu);
        sse_event(j, ev);
        if (usage) sse_event(j, usage);
        sse_raw(j, "data: [DONE]\n\n");
    } else {
        pthread_mutex_lock(&s->mu);
    }
    if (s->spec) sampler_spec_get_stats(s->spec, &s->spec_stats); /* /health counts this job's steps */
    j->done = 1;
    pthread_cond_broadcast(&s->stream_cv);
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
}

static void fail_job(serve_server *s, serve_job *j, const char *msg) {
    j->failed = 1;
    snprintf(j->errmsg, sizeof j->errmsg, "%s", msg);
    if (j->stream) { /* headers are out: report in-band, as OpenAI does */
        pthread_mutex_lock(&s->mu);
        sse_event(j, json_pack("{s:{s:s, s:s}}", "error", "message", j->errmsg, "type", "server_error"));
        sse_raw(j, "data: [DONE]\n\n");
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    j->done = 1;
    pthread_cond_broadcast(&s->stream_cv);
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------------------------- rewards */

static void run_rewards(serve_server *s, serve_job **jobs, int n) {
    int total = 0;
    for (int i = 0; i < n; i++) total += jobs[i]->n_texts;
    const char **texts = malloc((size_t)(total ? total : 1) * sizeof *texts);
    double *r = malloc((size_t)(total ? total : 1) * sizeof *r);
    rlhf_error err = {0};
    int rc = (!texts || !r) ? RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory") : 0;
    for (int i = 0, k = 0; !rc && i < n; i++)
        for (int t = 0; t < jobs[i]->n_texts; t++) texts[k++] = jobs[i]->texts[t];
    if (!rc) rc = reward_model_score(s->rm, texts, total, r, &err);
    for (int i = 0, k = 0; i < n; i++) {
        int nt = jobs[i]->n_texts; /* read first: once done, the handler frees the job */
        if (rc) {
            char msg[300];
            snprintf(msg, sizeof msg, "reward model failed: %.200s", err.msg);
            fail_job(s, jobs[i], msg);
        } else {
            memcpy(jobs[i]->rewards, r + k, (size_t)nt * sizeof *r);
            pthread_mutex_lock(&s->mu);
            jobs[i]->done = 1;
            pthread_cond_broadcast(&s->done_cv);
            pthread_mutex_unlock(&s->mu);
        }
        k += nt;
    }
    free(texts);
    free(r);
}

/* ------------------------------------------------------------------------------ the decode loop */

typedef struct slot_state {
    serve_job *job;   /* NULL: free */
    int fed;          /* prompt positions already in this slot's KV cache */
    int32_t next;     /* the last chosen token, fed next at position prompt_len + n_tokens - 1 */
    int spec;         /* decoded speculatively: a sequence of s->spec_bt in the same slot */
    int lrow;         /* its first logits row this step, -1: none */
    rlhf_rng rng;     /* plain token choice */
} slot_state;

/* Appends token bytes to the job's text; returns 1 when a stop string completed (text cut before the
 * earliest match: with several stop strings the one that starts first, the first listed at a tie). */
static int append_token(serve_server *s, serve_job *j, int32_t id) {
    char b[64];
    size_t n = s->tok->ops->token_bytes(s->tok, id, b, sizeof b);
    if (j->text_len + n + 1 > j->text_cap) {
        size_t cap = j->text_cap ? j->text_cap * 2 : 256;
        while (cap < j->text_len + n + 1) cap *= 2;
        char *q = realloc(j->text, cap);
        if (!q) return 0;
        j->text = q;
        j->text_cap = cap;
    }
    if (n <= sizeof b) memcpy(j->text + j->text_len, b, n);
    else s->tok->ops->token_bytes(s->tok, id, j->text + j->text_len, n); /* a long token: straight in */
    size_t old = j->text_len;
    j->text_len += n;
    j->text[j->text_len] = 0;
    size_t best = (size_t)-1;
    for (int i = 0; i < j->n_stops && n; i++) {
        size_t l = strlen(j->stops[i]);
        size_t from = old + 1 > l ? old + 1 - l : 0; /* only matches that end in the new bytes */
        char *hit = memmem(j->text + from, j->text_len - from, j->stops[i], l);
        if (hit && (size_t)(hit - j->text) < best) best = (size_t)(hit - j->text);
    }
    if (best == (size_t)-1) return 0;
    j->text_len = best;
    j->text[j->text_len] = 0;
    if (j->emitted > j->text_len) j->emitted = j->text_len;
    return 1;
}

/* Records token id, chosen from logits row `row` (V), in job j: its log-probs when asked for (log pi and
 * the top log-probs computed here from the row, so they are the same numbers whichever path chose the
 * token; lq as the chooser drew it), its text, and the finish checks in the order plain decoding makes
 * them. Returns the finish reason (SAMPLE_FINISH_NONE: go on). */
static int take_token(serve_server *s, serve_job *j, int32_t id, float lq, const float *row, int V, int T) {
    if (j->logprobs && j->n_tokens == j->out_cap) {
        int cap = j->out_cap ? 2 * j->out_cap : 64;
        int32_t *ni = realloc(j->out_ids, (size_t)cap * sizeof *ni);
        if (ni) j->out_ids = ni;
        float *nl = realloc(j->out_lp, (size_t)cap * sizeof *nl);
        if (nl) j->out_lp = nl;
        float *nq = realloc(j->out_lq, (size_t)cap * sizeof *nq);
        if (nq) j->out_lq = nq;
        int ok = ni && nl && nq;
        if (ok && j->top_logprobs > 0) {
            size_t kk = (size_t)cap * (size_t)j->top_logprobs;
            int32_t *ti = realloc(j->out_top_ids, kk * sizeof *ti);
            if (ti) j->out_top_ids = ti;
            float *tl = realloc(j->out_top_lp, kk * sizeof *tl);
            if (tl) j->out_top_lp = tl;
            ok = ti && tl;
        }
        if (ok) j->out_cap = cap;
    }
    if (j->logprobs && j->n_tokens < j->out_cap) {
        float mx = row[0];
        for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        j->out_ids[j->n_tokens] = id;
        j->out_lp[j->n_tokens] = (float)log_softmax_at(row, V, mx, id);
        j->out_lq[j->n_tokens] = lq;
        if (j->top_logprobs > 0)
            top_logprobs(row, V, j->top_logprobs, j->out_top_ids + (size_t)j->n_tokens * j->top_logprobs,
                         j->out_top_lp + (size_t)j->n_tokens * j->top_logprobs);
    }
    j->n_tokens++;
    int eos = 0;
    for (int e = 0; e < s->tok->n_eos_ids; e++) eos |= id == s->tok->eos_ids[e];
    if (eos) return SAMPLE_FINISH_STOP;
    if (append_token(s, j, id)) return SAMPLE_FINISH_STOP;
    if (j->n_tokens >= j->params.max_new_tokens) return SAMPLE_FINISH_LENGTH;
    if (j->prompt_len + j->n_tokens >= T) return SAMPLE_FINISH_MAX_SEQ_LEN; /* as sampler_run */
    return SAMPLE_FINISH_NONE;
}

/* Plain token choice for slot st from its logits row: serve_choose_token, under a guided job's mask.
 * Returns the id (-1: the job failed, with msg filled) and log q in *lq. */
static int32_t choose_plain(serve_job *j, slot_state *st, const float *row, int V, float *scratch, float *masked,
                            float *lq, char *msg, size_t msg_cap) {
    if (!j->matcher) return serve_choose_token(row, V, &j->params, &st->rng, scratch, NULL, lq);
    /* guided: sample from the masked distribution; log pi stays the unmasked one (take_token) */
    const uint64_t *bits;
    int n_allowed;
    int32_t only, id;
    rlhf_error gerr = {0};
    if (guided_matcher_mask(j->matcher, &bits, &n_allowed, &only, &gerr)) {
        snprintf(msg, msg_cap, "guided generation failed: %.100s: %.150s", gerr.where, gerr.msg);
        return -1;
    }
    if (n_allowed == 1) { /* forced: no draw */
        id = only;
        *lq = 0.0f;
    } else {
        for (int v = 0; v < V; v++) masked[v] = (bits[v >> 6] >> (v & 63)) & 1 ? row[v] : -INFINITY;
        id = serve_choose_token(masked, V, &j->params, &st->rng, scratch, NULL, lq);
    }
    if (guided_matcher_accept(j->matcher, id, &gerr)) {
        snprintf(msg, msg_cap, "guided generation failed: a token outside the mask");
        return -1;
    }
    return id;
}

/* The slot's job leaves it (finished, failed or cancelled: the caller reports which to the client). */
static void slot_release(serve_server *s, slot_state *slots, int b, int finished, int *n_active) {
    if (slots[b].spec) sampler_spec_seq_end(s->spec_bt, b, finished);
    slots[b].job = NULL;
    slots[b].spec = 0;
    (*n_active)--;
}

/* Each step: admit waiting jobs into free slots; a decode row per running sequence (with speculation, its
 * last token and its drafts: sampler_spec_propose), then prompt chunks in the remaining rows; one
 * sampler_step; then each sequence's tokens — one chosen here, or with speculation the ones verification
 * emitted, taken one at a time through the same stop and length checks (take_token) until one finishes
 * the job, the rest discarded. A guided job (a matcher) is never drafted for: model/'s verification
 * takes no mask, so it is chosen here from its one row. */
void *serve_worker_main(void *arg) {
    serve_server *s = arg;
    int B = s->cfg.max_batch, V = s->m ? s->m->cfg.vocab_size : 0, T = s->m ? s->m->cfg.max_seq_len : 0;
    int R = s->smp ? sampler_max_rows(s->smp) : 0;
    /* logits rows: one per sequence, with speculation also its drafts (bounded by a step's rows and memory) */
    int LC = s->spec ? B * (sampler_spec_options_of(s->spec)->gamma + 1) : B;
    if (LC > R) LC = R;
    if (V && (size_t)LC * V > ((size_t)64 << 20)) LC = (int)(((size_t)64 << 20) / (size_t)V);
    if (LC < B) LC = B;
    slot_state *slots = calloc((size_t)B, sizeof *slots);
    int *row_slot = malloc((size_t)(R ? R : 1) * sizeof(int)), *row_pos = malloc((size_t)(R ? R : 1) * sizeof(int));
    int32_t *row_tok = malloc((size_t)(R ? R : 1) * sizeof(int32_t));
    int *logit_rows = malloc((size_t)LC * sizeof(int));
    int *gen = malloc((size_t)B * sizeof(int)), *vslot = malloc((size_t)B * sizeof(int));
    int *vrow = malloc((size_t)B * sizeof(int));
    float *logits = malloc((size_t)LC * (V ? V : 1) * sizeof(float)); // (LC, V)
    float *scratch = malloc((size_t)2 * (V ? V : 1) * sizeof(float));
    float *masked = malloc((size_t)(V ? V : 1) * sizeof(float)); /* a guided job's logits under its mask */
    serve_job **rew = NULL;
    int rew_cap = 0;
    int n_active = 0;
    for (;;) {
        /* Admit: rewards all at once; generation jobs into free slots (the rest keep waiting). */
        int nr = 0;
        pthread_mutex_lock(&s->mu);
        if (s->spec) sampler_spec_get_stats(s->spec, &s->spec_stats);
        while (!s->head && n_active == 0 && !s->stopping) pthread_cond_wait(&s->work_cv, &s->mu);
        if (!s->head && n_active == 0 && s->stopping) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        serve_job **pp = &s->head;
        while (*pp) {
            serve_job *j = *pp;
            int take = j->kind == JOB_REWARD || n_active < B;
            if (!take) {
                pp = &j->next;
                continue;
            }
            *pp = j->next;
            s->queued--;
            if (j->kind == JOB_REWARD) {
                if (nr == rew_cap) {
                    rew_cap = rew_cap ? rew_cap * 2 : 16;
                    serve_job **q = realloc(rew, (size_t)rew_cap * sizeof *q);
                    if (!q) { /* cannot happen in practice; leave it queued */
                        j->next = *pp;
                        *pp = j;
                        s->queued++;
                        break;
                    }
                    rew = q;
                }
                rew[nr++] = j;
            } else {
                int b = 0;
                while (slots[b].job) b++;
                slots[b] = (slot_state){.job = j, .fed = 0, .spec = s->spec_bt && !j->matcher};
                rlhf_rng_seed(&slots[b].rng, j->params.seed);
                if (slots[b].spec) sampler_spec_seq_begin(s->spec_bt, b, j->prompt_ids, j->prompt_len, &j->params);
                n_active++;
            }
        }
        s->tail = NULL; /* the kept jobs stay in order; find the new tail */
        for (serve_job *j = s->head; j; j = j->next) s->tail = j;
        pthread_mutex_unlock(&s->mu);
        if (nr) run_rewards(s, rew, nr);

        /* Jobs that need no step: nothing to generate, or the client left. */
        for (int b = 0; b < B; b++) {
            serve_job *j = slots[b].job;
            if (!j) continue;
            pthread_mutex_lock(&s->mu);
            int cancelled = j->cancelled;
            pthread_mutex_unlock(&s->mu);
            if (j->params.max_new_tokens == 0 || cancelled) {
                slot_release(s, slots, b, 0, &n_active);
                finish_job(s, j, SAMPLE_FINISH_LENGTH);
            }
        }
        if (!n_active) continue;

        /* One step. A sequence past its prompt feeds its last token at position prompt_len + n_tokens - 1
         * (the cache holds everything before it), with speculation followed by its drafts. */
        rlhf_error err = {0};
        int n_gen = 0, n_spec = 0, n_prefill = 0, nrow = 0, nlog = 0;
        for (int b = 0; b < B; b++) {
            slot_state *st = &slots[b];
            st->lrow = -1;
            if (!st->job) continue;
            if (st->fed < st->job->prompt_len) n_prefill++;
            else {
                n_gen++;
                if (st->spec) gen[n_spec++] = b;
            }
        }
        int rc = 0;
        if (s->spec_bt) /* every step (also with n_spec = 0): the step's cost is measured from here */
            rc = sampler_spec_propose(s->spec_bt, n_spec, gen, (LC < R ? LC : R) - n_gen - n_prefill, &err);
        for (int b = 0; b < B && !rc; b++) {
            slot_state *st = &slots[b];
            if (!st->job || st->fed < st->job->prompt_len) continue;
            const int32_t *draft = NULL;
            int g = st->spec ? sampler_spec_drafts(s->spec_bt, b, &draft) : 0;
            st->lrow = nlog;
            for (int t = 0; t <= g; t++) {
                row_slot[nrow] = b, row_pos[nrow] = st->job->prompt_len + st->job->n_tokens - 1 + t;
                row_tok[nrow] = t == 0 ? st->next : draft[t - 1];
                logit_rows[nlog++] = nrow++;
            }
        }
        for (int b = 0; b < B && nrow < R && !rc; b++) {
            slot_state *st = &slots[b];
            if (!st->job || st->fed >= st->job->prompt_len) continue;
            int chunk_len = st->job->prompt_len - st->fed;
            if (chunk_len > R - nrow) chunk_len = R - nrow;
            for (int t = 0; t < chunk_len; t++) {
                row_slot[nrow] = b, row_pos[nrow] = st->fed + t, row_tok[nrow] = st->job->prompt_ids[st->fed + t];
                nrow++;
            }
            st->fed += chunk_len;
            if (st->fed == st->job->prompt_len) st->lrow = nlog, logit_rows[nlog++] = nrow - 1;
        }
        if (!rc) rc = sampler_step(s->smp, nrow, row_slot, row_pos, row_tok, nlog, logit_rows, logits, &err);
        if (rc) {
            char msg[300];
            snprintf(msg, sizeof msg, "generation failed: %.200s", err.msg);
            for (int b = 0; b < B; b++)
                if (slots[b].job) {
                    serve_job *j = slots[b].job;
                    slot_release(s, slots, b, 0, &n_active);
                    fail_job(s, j, msg);
                }
            continue;
        }
        if (s->spec_bt) {
            int nv = 0;
            for (int b = 0; b < B; b++)
                if (slots[b].spec && slots[b].lrow >= 0) vslot[nv] = b, vrow[nv++] = slots[b].lrow;
            sampler_spec_verify(s->spec_bt, nv, vslot, vrow, logits, nrow);
        }
        for (int b = 0; b < B; b++) {
            slot_state *st = &slots[b];
            serve_job *j = st->job;
            if (!j || st->lrow < 0) continue;
            int finish = SAMPLE_FINISH_NONE;
            char msg[300] = "";
            if (st->spec) {
                const int32_t *emit;
                const float *lq;
                int n_emit = sampler_spec_emitted(s->spec_bt, b, &emit, NULL, &lq), taken = 0;
                for (int e = 0; e < n_emit && !finish; e++, taken++) {
                    finish = take_token(s, j, emit[e], lq[e], logits + (size_t)(st->lrow + e) * V, V, T);
                    st->next = emit[e];
                }
                if (sampler_spec_commit(s->spec_bt, b, taken, &err))
                    snprintf(msg, sizeof msg, "generation failed: %.200s", err.msg);
            } else {
                const float *row = logits + (size_t)st->lrow * V;
                float lq = 0.0f;
                int32_t id = choose_plain(j, st, row, V, scratch, masked, &lq, msg, sizeof msg);
                if (id >= 0) {
                    finish = take_token(s, j, id, lq, row, V, T);
                    st->next = id;
                }
            }
            if (msg[0]) {
                slot_release(s, slots, b, 0, &n_active);
                fail_job(s, j, msg);
            } else if (finish) {
                slot_release(s, slots, b, 1, &n_active);
                finish_job(s, j, finish);
            } else if (j->stream)
                stream_progress(s, j, 0);
        }
    }
    free(slots);
    free(row_slot);
    free(row_pos);
    free(row_tok);
    free(logit_rows);
    free(gen);
    free(vslot);
    free(vrow);
    free(logits);
    free(scratch);
    free(masked);
    free(rew);
    return NULL;
}
