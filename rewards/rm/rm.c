/* rewards/rm/rm.c — reward models: checkpoint I/O, batched scoring, Bradley-Terry training. See
 * rewards/rm/rm.h. */
#include "rewards/rm/rm.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------------------------- construction */

static int rm_wrap(reward_model **out, model *m, int max_batch, rlhf_error *err) {
    *out = NULL;
    if (max_batch < 1) {
        model_destroy(&m);
        return RLHF_FAIL(err, RLHF_EINVAL, "reward model max_batch must be >= 1, got %d", max_batch);
    }
    reward_model *rm = calloc(1, sizeof *rm);
    if (!rm) {
        model_destroy(&m);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    rm->m = m;
    rm->max_B = max_batch;
    rm->max_T = m->cfg.max_seq_len;
    int C = m->cfg.dim, rc;
    rm->head = calloc((size_t)C, sizeof *rm->head);
    rm->batch = malloc((size_t)rm->max_B * rm->max_T * sizeof *rm->batch);
    rm->lens = malloc((size_t)rm->max_B * sizeof *rm->lens);
    if (!rm->head || !rm->batch || !rm->lens) {
        reward_model_destroy(&rm);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    /* the tokenizer the base model came with (an HF directory's, or the one its checkpoint names) */
    if ((rc = tokenizer_load_for_model(&rm->tok, m->tokenizer_dir ? m->tokenizer_dir : "bytes", NULL,
                                       m->cfg.vocab_size, err)) ||
        (rc = model_trainer_create(&rm->tr, m, rm->max_B, rm->max_T, err))) {
        reward_model_destroy(&rm);
        return rc;
    }
    *out = rm;
    return 0;
}

void reward_model_destroy(reward_model **prm) {
    if (!prm || !*prm) return;
    reward_model *rm = *prm;
    model_trainer_destroy(&rm->tr);
    tokenizer_destroy(&rm->tok);
    model_destroy(&rm->m);
    free(rm->head);
    free(rm->batch);
    free(rm->lens);
    free(rm);
    *prm = NULL;
}

int reward_model_from_base(reward_model **out, const char *base_path, int max_batch, uint64_t seed,
                           rlhf_error *err) {
    *out = NULL;
    model *m = NULL;
    int rc = model_load(&m, base_path, NULL, err);
    if (rc) return rc;
    if ((rc = rm_wrap(out, m, max_batch, err))) return rc;
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    int C = m->cfg.dim;
    for (int c = 0; c < C; c++) (*out)->head[c] = rlhf_rng_normal(&rng) / sqrtf((float)C);
    return 0;
}

int reward_model_load(reward_model **out, const char *path, int max_batch, rlhf_error *err) {
    *out = NULL;
    safetensors_file *f = NULL;
    int rc = safetensors_open(&f, path, err);
    if (rc) return rc;
    const safetensors_tensor *h = safetensors_find(f, RM_HEAD_TENSOR);
    if (!h) {
        safetensors_close(&f);
        return rlhf_error_set(err, RLHF_ECORRUPT, path, "no tensor '%s': not a reward model checkpoint (train one "
                              "with rlhf train-rm)", RM_HEAD_TENSOR);
    }
    /* The model loader refuses tensors it does not know: give it a view without the head. */
    safetensors_file view = *f;
    view.tensors = malloc((size_t)f->n_tensors * sizeof *view.tensors);
    if (!view.tensors) {
        safetensors_close(&f);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    view.n_tensors = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, RM_HEAD_TENSOR) != 0) view.tensors[view.n_tensors++] = f->tensors[i];
    model *m = NULL;
    rc = model_from_safetensors(&m, &view, NULL, err);
    free(view.tensors);
    if (!rc && !(h->ndim == 2 && h->shape[0] == 1 && h->shape[1] == m->cfg.dim))
        rc = rlhf_error_set(err, RLHF_ECORRUPT, path, "tensor '%s' must have shape [1, %d]", RM_HEAD_TENSOR,
                            m->cfg.dim);
    if (rc) {
        model_destroy(&m);
        safetensors_close(&f);
        return rc;
    }
    if ((rc = rm_wrap(out, m, max_batch, err))) {
        safetensors_close(&f);
        return rc;
    }
    rc = safetensors_tensor_to_f32(h, (*out)->head, path, err);
    safetensors_close(&f);
    if (rc) reward_model_destroy(out);
    return rc;
}

int reward_model_save(const reward_model *rm, const char *path, rlhf_error *err) {
    void *buf = NULL;
    size_t len = 0;
    int rc = model_encode(rm->m, &buf, &len, err);
    if (rc) return rc;
    safetensors_file *f = NULL;
    rc = safetensors_open_memory(&f, buf, len, path, err);
    free(buf);
    if (rc) return rc;
    safetensors_tensor *t = malloc((size_t)(f->n_tensors + 1) * sizeof *t);
    json_t *meta = json_deep_copy(f->metadata);
    if (!t || !meta) {
        free(t);
        json_decref(meta);
        safetensors_close(&f);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    memcpy(t, f->tensors, (size_t)f->n_tensors * sizeof *t);
    safetensors_tensor *h = &t[f->n_tensors];
    memset(h, 0, sizeof *h);
    h->name = RM_HEAD_TENSOR;
    h->ndim = 2;
    h->shape[0] = 1;
    h->shape[1] = rm->m->cfg.dim;
    h->data = rm->head;
    json_object_set_new(meta, RM_META_KIND, json_string("reward_model"));
    rc = safetensors_write(path, t, f->n_tensors + 1, meta, err);
    json_decref(meta);
    free(t);
    safetensors_close(&f);
    return rc;
}

/* ------------------------------------------------------------------------------------- scoring */

/* Tokenises texts[0..n) into rm->batch (right-padded), keeping the last max_T tokens of each. */
static int rm_fill_batch(reward_model *rm, const char *const *texts, int n, int *T_out, rlhf_error *err) {
    int T = 1;
    for (int b = 0; b < n; b++) {
        int32_t *ids = NULL;
        int len = 0;
        int rc = tokenizer_encode(rm->tok, texts[b], strlen(texts[b]), 1, &ids, &len, err);
        if (rc) return rc;
        int skip = len > rm->max_T ? len - rm->max_T : 0;
        len -= skip;
        memcpy(rm->batch + (size_t)b * rm->max_T, ids + skip, (size_t)len * sizeof *ids);
        free(ids);
        rm->lens[b] = len;
        if (len > T) T = len;
    }
    /* Compact the rows to stride T and pad after each sequence (causal attention never looks there). */
    for (int b = 0; b < n; b++) {
        int32_t *dst = rm->batch + (size_t)b * T;
        memmove(dst, rm->batch + (size_t)b * rm->max_T, (size_t)rm->lens[b] * sizeof *dst);
        for (int t = rm->lens[b]; t < T; t++) dst[t] = rm->tok->pad_id;
    }
    *T_out = T;
    return 0;
}

/* rewards[b] = head . hidden[b, len_b - 1] for the batch just forwarded. */
static void rm_read_rewards(const reward_model *rm, int n, int T, double *rewards) {
    const float *hidden = model_trainer_hidden(rm->tr); // (B, T, C)
    int C = rm->m->cfg.dim;
    for (int b = 0; b < n; b++) {
        const float *h = hidden + ((size_t)b * T + rm->lens[b] - 1) * C;
        double s = 0;
        for (int c = 0; c < C; c++) s += (double)rm->head[c] * h[c];
        rewards[b] = s;
    }
}

int reward_model_score(reward_model *rm, const char *const *texts, int n, double *rewards, rlhf_error *err) {
    for (int i0 = 0; i0 < n; i0 += rm->max_B) {
        int nb = n - i0 < rm->max_B ? n - i0 : rm->max_B;
        int T, rc;
        if ((rc = rm_fill_batch(rm, texts + i0, nb, &T, err))) return rc;
        if ((rc = model_forward_hidden(rm->tr, rm->batch, nb, T, err))) return rc;
        rm_read_rewards(rm, nb, T, rewards + i0);
    }
    return 0;
}

int reward_model_score_one(reward_model *rm, const char *text, double *reward, rlhf_error *err) {
    return reward_model_score(rm, &text, 1, reward, err);
}

/* ------------------------------------------------------------------------------- preference data */

void rm_pairs_free(rm_pair *pairs, int n) {
    for (int i = 0; i < n; i++) {
        free(pairs[i].prompt);
        free(pairs[i].chosen);
        free(pairs[i].rejected);
    }
    free(pairs);
}

int rm_pairs_load(const char *path, rm_pair **out, int *n_out, rlhf_error *err) {
    *out = NULL;
    *n_out = 0;
    FILE *fp = fopen(path, "r");
    if (!fp) return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
    rm_pair *pairs = NULL;
    int n = 0, cap = 0, lineno = 0, rc = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    static const char *const fields[3] = {"prompt", "chosen", "rejected"};
    while ((len = getline(&line, &lcap, fp)) >= 0) {
        lineno++;
        char where[600];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        const char *s = line;
        while (*s && isspace((unsigned char)*s)) s++;
        if (!*s) continue;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (!j || !json_is_object(j)) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, where, j ? "not a JSON object" : "not JSON: %s", je.text);
            json_decref(j);
            break;
        }
        const char *v[3];
        for (int k = 0; k < 3 && !rc; k++) {
            json_t *x = json_object_get(j, fields[k]);
            if (!x) rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "missing \"%s\"", fields[k]);
            else if (!json_is_string(x)) rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "\"%s\" is not a string", fields[k]);
            else if (!json_string_length(x)) rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "\"%s\" is empty", fields[k]);
            else v[k] = json_string_value(x);
        }
        if (rc) {
            json_decref(j);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            rm_pair *q = realloc(pairs, (size_t)cap * sizeof *q);
            if (!q) {
                json_decref(j);
                rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
                break;
            }
            pairs = q;
        }
        pairs[n].prompt = strdup(v[0]);
        pairs[n].chosen = strdup(v[1]);
        pairs[n].rejected = strdup(v[2]);
        pairs[n].line = lineno;
        n++;
        json_decref(j);
    }
    free(line);
    fclose(fp);
    if (!rc && n == 0) rc = rlhf_error_set(err, RLHF_EINVAL, path, "no preference pairs in the file");
    if (rc) {
        rm_pairs_free(pairs, n);
        return rc;
    }
    *out = pairs;
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------------------------------------- training */

void rm_train_config_default(rm_train_config *c) {
    c->steps = 200;
    c->batch_pairs = 16;
    c->lr = 1e-3f;
    c->heldout_frac = 0.2f;
    c->seed = 1;
    c->log_every = 0;
}

static char *concat(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

int rm_pairwise_accuracy(reward_model *rm, const rm_pair *pairs, const int *idx, int n, double *acc,
                         rlhf_error *err) {
    *acc = 0;
    if (n <= 0) return 0;
    int right = 0, rc = 0;
    int chunk = rm->max_B / 2 > 0 ? rm->max_B / 2 : 1;
    char **texts = calloc((size_t)chunk * 2, sizeof *texts);
    double *r = malloc((size_t)chunk * 2 * sizeof *r);
    if (!texts || !r) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i0 = 0; i0 < n && !rc; i0 += chunk) {
        int np = n - i0 < chunk ? n - i0 : chunk;
        for (int p = 0; p < np; p++) {
            const rm_pair *pr = &pairs[idx ? idx[i0 + p] : i0 + p];
            texts[2 * p] = concat(pr->prompt, pr->chosen);
            texts[2 * p + 1] = concat(pr->prompt, pr->rejected);
        }
        rc = reward_model_score(rm, (const char *const *)texts, 2 * np, r, err);
        for (int p = 0; p < np; p++) {
            if (!rc && r[2 * p] > r[2 * p + 1]) right++;
            free(texts[2 * p]);
            free(texts[2 * p + 1]);
            texts[2 * p] = texts[2 * p + 1] = NULL;
        }
    }
    free(texts);
    free(r);
    if (!rc) *acc = (double)right / n;
    return rc;
}

int rm_train(reward_model *rm, const rm_pair *pairs, int n_pairs, const rm_train_config *cfg, rm_train_report *rep,
             FILE *log, rlhf_error *err) {
    memset(rep, 0, sizeof *rep);
    int P = cfg->batch_pairs;
    if (P < 1 || 2 * P > rm->max_B)
        return RLHF_FAIL(err, RLHF_EINVAL, "batch_pairs %d needs a reward model built for >= %d sequences (has %d)", P,
                         2 * P, rm->max_B);
    if (n_pairs < 2) return RLHF_FAIL(err, RLHF_EINVAL, "need at least 2 preference pairs, got %d", n_pairs);
    if (cfg->steps < 0 || !(cfg->lr > 0) || !(cfg->heldout_frac >= 0 && cfg->heldout_frac < 1))
        return RLHF_FAIL(err, RLHF_EINVAL, "bad training settings (steps %d, lr %g, heldout_frac %g)", cfg->steps,
                         cfg->lr, cfg->heldout_frac);
    double t0 = rlhf_now();
    rlhf_rng rng;
    rlhf_rng_seed(&rng, cfg->seed);
    int *order = malloc((size_t)n_pairs * sizeof *order);
    int C = rm->m->cfg.dim, B = 2 * P;
    float *dhidden = NULL, *head_m = calloc((size_t)C, sizeof(float)), *head_v = calloc((size_t)C, sizeof(float));
    float *dhead = calloc((size_t)C, sizeof(float));
    char **texts = calloc((size_t)B, sizeof *texts);
    double *r = malloc((size_t)B * sizeof *r);
    double *losses = calloc((size_t)(cfg->steps > 0 ? cfg->steps : 1), sizeof *losses);
    adamw *opt = NULL;
    int rc = 0;
    if (!order || !head_m || !head_v || !dhead || !texts || !r || !losses) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    /* Split: a seeded shuffle, the tail held out. */
    for (int i = 0; !rc && i < n_pairs; i++) order[i] = i;
    for (int i = n_pairs - 1; !rc && i > 0; i--) {
        int j = (int)(rlhf_rng_u64(&rng) % (uint64_t)(i + 1));
        int tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    int n_held = (int)(n_pairs * cfg->heldout_frac);
    int n_train = n_pairs - n_held;
    if (!rc && n_train < 1) rc = RLHF_FAIL(err, RLHF_EINVAL, "no training pairs left after holding out %d", n_held);
    rep->n_train = n_train;
    rep->n_heldout = n_held;
    if (!rc && n_held > 0) rc = rm_pairwise_accuracy(rm, pairs, order + n_train, n_held, &rep->initial_heldout_accuracy, err);
    adamw_config ac;
    adamw_config_default(&ac);
    ac.lr = cfg->lr;
    ac.weight_decay = 0.0f;
    ac.warmup_steps = cfg->steps / 10;
    if (!rc) rc = adamw_create(&opt, rm->m, &ac, err);
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (int step = 0; !rc && step < cfg->steps; step++) {
        for (int p = 0; p < P; p++) {
            const rm_pair *pr = &pairs[order[rlhf_rng_u64(&rng) % (uint64_t)n_train]];
            texts[2 * p] = concat(pr->prompt, pr->chosen);
            texts[2 * p + 1] = concat(pr->prompt, pr->rejected);
            if (!texts[2 * p] || !texts[2 * p + 1]) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        }
        int T = 0;
        if (!rc) rc = rm_fill_batch(rm, (const char *const *)texts, B, &T, err);
        for (int b = 0; b < B; b++) {
            free(texts[b]);
            texts[b] = NULL;
        }
        if (rc) break;
        if ((rc = model_forward_hidden(rm->tr, rm->batch, B, T, err))) break;
        rm_read_rewards(rm, B, T, r);
        /* Bradley-Terry: L = (1/P) sum_p softplus(-(r_c - r_r)); dL/dr_c = -(1 - sigmoid(d))/P = -dL/dr_r. */
        free(dhidden);
        dhidden = calloc((size_t)B * T * C, sizeof(float)); // (B, T, C)
        if (!dhidden) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            break;
        }
        memset(dhead, 0, (size_t)C * sizeof(float));
        const float *hidden = model_trainer_hidden(rm->tr); // (B, T, C)
        double loss = 0;
        for (int p = 0; p < P; p++) {
            double d = r[2 * p] - r[2 * p + 1];
            loss += d > 0 ? log1p(exp(-d)) : -d + log1p(exp(d));
            double g = -1.0 / (1.0 + exp(d)) / P; /* dL/dr_chosen */
            for (int side = 0; side < 2; side++) {
                int b = 2 * p + side;
                float gr = (float)(side == 0 ? g : -g);
                const float *h = hidden + ((size_t)b * T + rm->lens[b] - 1) * C;
                float *dh = dhidden + ((size_t)b * T + rm->lens[b] - 1) * C;
                for (int c = 0; c < C; c++) {
                    dh[c] = gr * rm->head[c];
                    dhead[c] += gr * h[c];
                }
            }
        }
        losses[step] = loss / P;
        model_trainer_zero_grad(rm->tr);
        if ((rc = model_backward_hidden(rm->tr, dhidden, err))) break;
        if ((rc = adamw_step(opt, rm->m, model_trainer_grads(rm->tr), NULL, NULL, err))) break;
        /* Adam on the head (no decay), with the same warmed-up learning rate as the body. */
        float lr = adamw_lr_at(&ac, step);
        float bc1 = 1.0f - powf(b1, (float)(step + 1)), bc2 = 1.0f - powf(b2, (float)(step + 1));
        for (int c = 0; c < C; c++) {
            head_m[c] = b1 * head_m[c] + (1 - b1) * dhead[c];
            head_v[c] = b2 * head_v[c] + (1 - b2) * dhead[c] * dhead[c];
            rm->head[c] -= lr * (head_m[c] / bc1) / (sqrtf(head_v[c] / bc2) + eps);
        }
        if (log && cfg->log_every > 0 && (step + 1) % cfg->log_every == 0)
            fprintf(log, "train-rm: step %d/%d loss %.4f lr %.2e\n", step + 1, cfg->steps, losses[step], lr);
    }
    if (!rc) {
        int last = cfg->steps < 10 ? cfg->steps : 10;
        for (int s = cfg->steps - last; s < cfg->steps; s++) rep->final_loss += losses[s] / (last ? last : 1);
        rc = rm_pairwise_accuracy(rm, pairs, order, n_train, &rep->train_accuracy, err);
    }
    if (!rc && n_held > 0) rc = rm_pairwise_accuracy(rm, pairs, order + n_train, n_held, &rep->heldout_accuracy, err);
    rep->seconds = rlhf_now() - t0;
    adamw_destroy(&opt);
    free(order);
    free(dhidden);
    free(head_m);
    free(head_v);
    free(dhead);
    free(texts);
    free(r);
    free(losses);
    return rc;
}
