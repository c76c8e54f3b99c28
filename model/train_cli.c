/* model/train_cli.c — `rlhf pretrain` and `rlhf score`.
 *
 *   rlhf pretrain --model M --data CORPUS(.txt|.jsonl) --steps N --batch B --seq T --lr LR --out OUT
 *                 [--seed S --warmup W --schedule cosine|constant --min-lr-ratio R --weight-decay WD
 *                  --grad-clip G --threads N --log-every K]
 *     Trains on random windows of T+1 tokens of the corpus. A .txt corpus is one document; a .jsonl
 *     corpus has one object per line with "text" (or "prompt" + "completion"). Every document is
 *     BOS + bytes + EOS. Writes OUT (safetensors) and the AdamW state beside it in OUT's name with
 *     ".safetensors" replaced by ".optim.safetensors" (appended if OUT has no such suffix).
 *   rlhf score --model M --data FILE.jsonl [--out FILE --batch B --threads N]
 *     One JSON line per {"prompt","completion"} record: {"index","logprob","tokens","mean_loss"}
 *     (logprob = sum over completion tokens of log p(token | BOS + prompt + earlier tokens)). */
#include "model/model.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* ------------------------------------------------------------------ small helpers */

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* ------------------------------------------------------------------ corpus */

typedef struct {
    int32_t *ids;
    int n, cap;
} id_buf;

static int id_push(id_buf *b, int32_t id) {
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 4096;
        int32_t *p = realloc(b->ids, (size_t)cap * sizeof *p);
        if (!p) return -1;
        b->ids = p, b->cap = cap;
    }
    b->ids[b->n++] = id;
    return 0;
}

static int add_document(id_buf *b, const tokenizer *tok, const char *text, size_t len, rlhf_error *err) {
    int32_t *ids = NULL;
    int n = 0, rc = tokenizer_encode(tok, text, len, 1, &ids, &n, err);
    if (rc) return rc;
    for (int i = 0; i < n; i++)
        if (id_push(b, ids[i])) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory reading corpus");
    if (!rc && id_push(b, tok->eos_id)) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory reading corpus");
    free(ids);
    return rc;
}

/* Walks a JSONL buffer line by line; calls fn(obj, line_no) for each non-blank line. */
typedef int (*jsonl_fn)(void *ctx, json_t *obj, const char *where, rlhf_error *err);
static int for_each_jsonl(const char *path, char *data, size_t len, jsonl_fn fn, void *ctx, rlhf_error *err) {
    size_t pos = 0;
    int line = 0;
    while (pos < len) {
        char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        line++;
        char where[600];
        snprintf(where, sizeof where, "%s:%d", path, line);
        size_t s = pos;
        while (s < end && (data[s] == ' ' || data[s] == '\t' || data[s] == '\r')) s++;
        if (s < end) {
            json_error_t je;
            json_t *obj = json_loadb(data + pos, end - pos, 0, &je);
            if (!obj) return rlhf_error_set(err, RLHF_EINVAL, where, "invalid JSON: %s", je.text);
            if (!json_is_object(obj)) {
                json_decref(obj);
                return rlhf_error_set(err, RLHF_EINVAL, where, "each line must be a JSON object");
            }
            int rc = fn(ctx, obj, where, err);
            json_decref(obj);
            if (rc) return rc;
        }
        pos = end + 1;
    }
    return 0;
}

typedef struct {
    id_buf *b;
    const tokenizer *tok;
    int docs;
} corpus_ctx;

static int corpus_line(void *p, json_t *obj, const char *where, rlhf_error *err) {
    corpus_ctx *c = p;
    json_t *text = json_object_get(obj, "text");
    json_t *pr = json_object_get(obj, "prompt"), *co = json_object_get(obj, "completion");
    if (json_is_string(text)) {
        c->docs++;
        return add_document(c->b, c->tok, json_string_value(text), json_string_length(text), err);
    }
    if (json_is_string(pr) && json_is_string(co)) {
        size_t a = json_string_length(pr), b = json_string_length(co);
        char *s = malloc(a + b + 1);
        if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        memcpy(s, json_string_value(pr), a);
        memcpy(s + a, json_string_value(co), b);
        c->docs++;
        int rc = add_document(c->b, c->tok, s, a + b, err);
        free(s);
        return rc;
    }
    return rlhf_error_set(err, RLHF_EINVAL, where, "record needs a string \"text\" or \"prompt\" + \"completion\"");
}

static int load_corpus(const char *path, const tokenizer *tok, id_buf *out, rlhf_error *err) {
    char *data = NULL;
    size_t len = 0;
    int rc = rlhf_read_file(path, &data, &len, err);
    if (rc) return rc;
    if (ends_with(path, ".jsonl")) {
        corpus_ctx c = {out, tok, 0};
        rc = for_each_jsonl(path, data, len, corpus_line, &c, err);
        if (!rc && c.docs == 0) rc = rlhf_error_set(err, RLHF_EINVAL, path, "corpus has no records");
    } else if (ends_with(path, ".txt")) {
        if (len == 0) rc = rlhf_error_set(err, RLHF_EINVAL, path, "corpus is empty");
        else rc = add_document(out, tok, data, len, err);
    } else {
        rc = rlhf_error_set(err, RLHF_EINVAL, path, "corpus must end in .txt or .jsonl");
    }
    free(data);
    return rc;
}

static void optim_path(char *out, size_t cap, const char *model_path) {
    size_t n = strlen(model_path);
    if (ends_with(model_path, ".safetensors"))
        snprintf(out, cap, "%.*s.optim.safetensors", (int)(n - strlen(".safetensors")), model_path);
    else
        snprintf(out, cap, "%s.optim.safetensors", model_path);
}

/* ------------------------------------------------------------------ rlhf pretrain */

static const char pretrain_usage[] =
    "usage: rlhf pretrain --model M --data CORPUS(.txt|.jsonl) --steps N --batch B --seq T\n"
    "                     --lr LR --out OUT.safetensors [--seed S] [--warmup W] [--schedule cosine|constant]\n"
    "                     [--min-lr-ratio R] [--weight-decay WD] [--grad-clip G] [--threads N] [--log-every K]\n"
    "                     [--tokenizer T] [--max-seq-len N]\n"
    "  --model M          a checkpoint (.safetensors) or a Hugging Face model directory\n"
    "  --tokenizer T      \"bytes\" or a Hugging Face tokenizer directory (default: the model's own: an\n"
    "                     HF directory's tokenizer.json, the one a run checkpoint names, else byte-level)\n"
    "  --max-seq-len N    cap the model's context (an HF model's max_position_embeddings sizes buffers)\n";

int cmd_pretrain(int argc, char **argv);
int cmd_pretrain(int argc, char **argv) {
    const char *prog = "rlhf pretrain";
    const char *model_path = NULL, *data_path = NULL, *out_path = NULL, *tok_spec = NULL;
    int steps = 0, B = 0, T = 0, seed = 1, threads = 0, log_every = 10, max_seq_len = 0;
    adamw_config oc;
    adamw_config_default(&oc);
    oc.lr = 0;
    oc.schedule = ADAMW_SCHEDULE_COSINE;
    const char *schedule = NULL;
    const rlhf_opt opts[] = {
        RLHF_OPT("--model", RLHF_OPT_STR, &model_path),
        RLHF_OPT("--tokenizer", RLHF_OPT_STR, &tok_spec),
        RLHF_OPT_RANGE("--max-seq-len", RLHF_OPT_INT, &max_seq_len, 2, 1 << 24),
        RLHF_OPT("--data", RLHF_OPT_STR, &data_path),
        RLHF_OPT("--out", RLHF_OPT_STR, &out_path),
        RLHF_OPT_RANGE("--steps", RLHF_OPT_INT, &steps, 1, 100000000),
        RLHF_OPT_RANGE("--batch", RLHF_OPT_INT, &B, 1, 1 << 16),
        RLHF_OPT_RANGE("--seq", RLHF_OPT_INT, &T, 1, 1 << 20),
        RLHF_OPT_RANGE("--seed", RLHF_OPT_INT, &seed, 0, 2147483647),
        RLHF_OPT_RANGE("--warmup", RLHF_OPT_INT, &oc.warmup_steps, 0, 100000000),
        RLHF_OPT_RANGE("--threads", RLHF_OPT_INT, &threads, 1, 1024),
        RLHF_OPT_RANGE("--log-every", RLHF_OPT_INT, &log_every, 1, 100000000),
        RLHF_OPT_RANGE("--lr", RLHF_OPT_FLOAT, &oc.lr, 1e-12, 10),
        RLHF_OPT_RANGE("--min-lr-ratio", RLHF_OPT_FLOAT, &oc.min_lr_ratio, 0, 1),
        RLHF_OPT_RANGE("--weight-decay", RLHF_OPT_FLOAT, &oc.weight_decay, 0, 10),
        RLHF_OPT_RANGE("--grad-clip", RLHF_OPT_FLOAT, &oc.grad_clip, 0, 1e9),
        RLHF_OPT("--schedule", RLHF_OPT_STR, &schedule),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, prog, pretrain_usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (schedule && !strcmp(schedule, "cosine")) oc.schedule = ADAMW_SCHEDULE_COSINE;
    else if (schedule && !strcmp(schedule, "constant")) oc.schedule = ADAMW_SCHEDULE_CONSTANT;
    else if (schedule) {
        fprintf(stderr, "%s: error: --schedule must be cosine or constant, got '%s'\n", prog, schedule);
        return 2;
    }
    if (!model_path || !data_path || !out_path || !steps || !B || !T || !(oc.lr > 0)) {
        fprintf(stderr, "%s: error: --model, --data, --out, --steps, --batch, --seq and --lr are required\n%s", prog,
                pretrain_usage);
        return 2;
    }
    oc.total_steps = steps;
    model_set_threads(threads);

    rlhf_error err = {0};
    model *m = NULL;
    tokenizer *tok = NULL;
    model_trainer *tr = NULL;
    adamw *opt = NULL;
    id_buf corpus = {0};
    int32_t *tokens = NULL, *targets = NULL;
    int rc = model_load_for_inference(&m, &tok, model_path, tok_spec, max_seq_len, &err);
    if (!rc && T > m->cfg.max_seq_len)
        rc = rlhf_error_set(&err, RLHF_EINVAL, "--seq", "%d exceeds the model's max_seq_len %d (%s)", T,
                            m->cfg.max_seq_len, model_path);
    if (!rc) rc = load_corpus(data_path, tok, &corpus, &err);
    if (!rc && corpus.n < T + 1)
        rc = rlhf_error_set(&err, RLHF_EINVAL, data_path, "corpus has %d tokens, fewer than --seq + 1 = %d", corpus.n,
                            T + 1);
    if (!rc) rc = rlhf_check_writable(out_path, &err); /* before the steps, not after them */
    if (!rc) rc = model_trainer_create(&tr, m, B, T, &err);
    if (!rc) rc = adamw_create(&opt, m, &oc, &err);
    if (!rc) {
        tokens = malloc((size_t)B * T * sizeof *tokens);
        targets = malloc((size_t)B * T * sizeof *targets);
        if (!tokens || !targets) rc = RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
    }
    if (!rc)
        fprintf(stderr, "%s: %zu parameters, corpus %d tokens, %d steps of %dx%d, %d threads\n", prog, m->n_params,
                corpus.n, steps, B, T, omp_get_max_threads());
    rlhf_rng rng;
    rlhf_rng_seed(&rng, (uint64_t)seed);
    double t_start = rlhf_now(), t_window = t_start, loss_window = 0;
    int window_steps = 0;
    for (int s = 0; !rc && s < steps; s++) {
        for (int b = 0; b < B; b++) {
            size_t start = rlhf_rng_u64(&rng) % (size_t)(corpus.n - T);
            memcpy(tokens + (size_t)b * T, corpus.ids + start, (size_t)T * sizeof *tokens);
            memcpy(targets + (size_t)b * T, corpus.ids + start + 1, (size_t)T * sizeof *targets);
        }
        /* no zero_grad: adamw_step leaves the gradients zeroed */
        rc = model_forward(tr, tokens, targets, B, T, &err);
        if (!rc) rc = model_backward_loss(tr, &err);
        float norm = 0, lr = 0;
        if (!rc) rc = adamw_step(opt, m, model_trainer_grads(tr), &norm, &lr, &err);
        if (rc) break;
        loss_window += model_trainer_loss(tr, NULL);
        window_steps++;
        if ((s + 1) % log_every == 0 || s + 1 == steps) {
            double now = rlhf_now();
            fprintf(stderr, "step %d/%d loss %.4f lr %.3g grad_norm %.3f tokens/s %.0f\n", s + 1, steps,
                    loss_window / window_steps, lr, norm, (double)window_steps * B * T / (now - t_window));
            t_window = now, loss_window = 0, window_steps = 0;
        }
    }
    if (!rc) {
        m->version++;
        rc = model_save(m, out_path, &err);
    }
    if (!rc) {
        char op[4200];
        optim_path(op, sizeof op, out_path);
        rc = adamw_save(opt, op, &err);
        if (!rc)
            fprintf(stderr, "%s: wrote %s and %s (%.1f s)\n", prog, out_path, op, rlhf_now() - t_start);
    }
    if (rc) rlhf_error_print(prog, &err);
    free(tokens), free(targets), free(corpus.ids);
    adamw_destroy(&opt);
    model_trainer_destroy(&tr);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    return rc ? 1 : 0;
}

/* ------------------------------------------------------------------ rlhf score */

typedef struct {
    int32_t *ids;   /* BOS + prompt + completion */
    int n, n_prompt; /* total ids, ids before the completion (BOS + prompt) */
    json_t *id;      /* the record's "id", if any */
} score_rec;

typedef struct {
    score_rec *recs;
    int n, cap;
    const tokenizer *tok;
    int max_seq_len;
} score_ctx;

static int score_line(void *p, json_t *obj, const char *where, rlhf_error *err) {
    score_ctx *c = p;
    json_t *pr = json_object_get(obj, "prompt"), *co = json_object_get(obj, "completion");
    if (!json_is_string(pr) || !json_is_string(co))
        return rlhf_error_set(err, RLHF_EINVAL, where, "record needs string \"prompt\" and \"completion\"");
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 64;
        score_rec *r = realloc(c->recs, (size_t)cap * sizeof *r);
        if (!r) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        c->recs = r, c->cap = cap;
    }
    score_rec *r = &c->recs[c->n];
    memset(r, 0, sizeof *r);
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    int rc = tokenizer_encode(c->tok, json_string_value(pr), json_string_length(pr), 1, &a, &na, err);
    if (!rc) rc = tokenizer_encode(c->tok, json_string_value(co), json_string_length(co), 0, &b, &nb, err);
    if (!rc && na + nb > c->max_seq_len)
        rc = rlhf_error_set(err, RLHF_EINVAL, where, "prompt + completion is %d tokens, more than max_seq_len %d",
                            na + nb, c->max_seq_len);
    if (!rc) {
        r->ids = malloc((size_t)(na + nb) * sizeof(int32_t));
        if (!r->ids) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    if (!rc) {
        memcpy(r->ids, a, (size_t)na * sizeof(int32_t));
        if (nb) memcpy(r->ids + na, b, (size_t)nb * sizeof(int32_t));
        r->n = na + nb;
        r->n_prompt = na;
        json_t *id = json_object_get(obj, "id");
        r->id = id ? json_incref(id) : NULL;
        c->n++;
    }
    free(a), free(b);
    return rc;
}

static const char score_usage[] =
    "usage: rlhf score --model M --data FILE.jsonl [--out FILE] [--batch B] [--threads N] [--tokenizer T]\n"
    "                  [--max-seq-len N]\n"
    "  --model M          a checkpoint (.safetensors) or a Hugging Face model directory\n"
    "  --tokenizer T      \"bytes\" or a Hugging Face tokenizer directory (default: the model's own: an\n"
    "                     HF directory's tokenizer.json, the one a run checkpoint names, else byte-level)\n"
    "  --max-seq-len N    cap the model's context (an HF model's max_position_embeddings sizes buffers)\n";

int cmd_score(int argc, char **argv);
int cmd_score(int argc, char **argv) {
    const char *prog = "rlhf score";
    const char *model_path = NULL, *data_path = NULL, *out_path = NULL, *tok_spec = NULL;
    int B = 8, threads = 0, max_seq_len = 0;
    const rlhf_opt opts[] = {
        RLHF_OPT("--model", RLHF_OPT_STR, &model_path),
        RLHF_OPT("--tokenizer", RLHF_OPT_STR, &tok_spec),
        RLHF_OPT_RANGE("--max-seq-len", RLHF_OPT_INT, &max_seq_len, 2, 1 << 24),
        RLHF_OPT("--data", RLHF_OPT_STR, &data_path),
        RLHF_OPT("--out", RLHF_OPT_STR, &out_path),
        RLHF_OPT_RANGE("--batch", RLHF_OPT_INT, &B, 1, 4096),
        RLHF_OPT_RANGE("--threads", RLHF_OPT_INT, &threads, 1, 1024),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, prog, score_usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (!model_path || !data_path) {
        fprintf(stderr, "%s: error: --model and --data are required\n%s", prog, score_usage);
        return 2;
    }
    model_set_threads(threads);
    rlhf_error err = {0};
    model *m = NULL;
    tokenizer *tok = NULL;
    model_trainer *tr = NULL;
    score_ctx sc = {0};
    char *data = NULL, *outbuf = NULL;
    size_t len = 0, outlen = 0;
    FILE *mem = NULL;
    int32_t *tokens = NULL, *targets = NULL;
    int rc = model_load_for_inference(&m, &tok, model_path, tok_spec, max_seq_len, &err);
    if (!rc) rc = rlhf_read_file(data_path, &data, &len, &err);
    if (!rc) {
        sc.tok = tok;
        sc.max_seq_len = m->cfg.max_seq_len;
        rc = for_each_jsonl(data_path, data, len, score_line, &sc, &err);
    }
    if (!rc && sc.n == 0) rc = rlhf_error_set(&err, RLHF_EINVAL, data_path, "no records");
    int maxT = 1;
    for (int i = 0; i < sc.n; i++) maxT = sc.recs[i].n > maxT ? sc.recs[i].n : maxT;
    if (B > sc.n && sc.n > 0) B = sc.n;
    if (!rc) rc = model_trainer_create(&tr, m, B, maxT, &err);
    if (!rc) {
        tokens = malloc((size_t)B * maxT * sizeof *tokens);
        targets = malloc((size_t)B * maxT * sizeof *targets);
        mem = open_memstream(&outbuf, &outlen);
        if (!tokens || !targets || !mem) rc = RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
    }
    /* All output is built in memory and written at the end, so a failure leaves no partial file. */
    for (int first = 0; !rc && first < sc.n; first += B) {
        int nb = sc.n - first < B ? sc.n - first : B, T = 1;
        for (int b = 0; b < nb; b++) T = sc.recs[first + b].n > T ? sc.recs[first + b].n : T;
        for (int b = 0; b < nb; b++) {
            const score_rec *r = &sc.recs[first + b];
            for (int t = 0; t < T; t++) {
                /* position t predicts id t+1; only completion ids are scored; right padding with PAD */
                tokens[b * T + t] = t < r->n ? r->ids[t] : tok->pad_id;
                targets[b * T + t] = (t + 1 < r->n && t + 1 >= r->n_prompt) ? r->ids[t + 1] : -1;
            }
        }
        rc = model_forward(tr, tokens, targets, nb, T, &err);
        for (int b = 0; !rc && b < nb; b++) {
            const score_rec *r = &sc.recs[first + b];
            const float *lp = model_trainer_logprobs(tr) + (size_t)b * T;
            double sum = 0;
            int cnt = 0;
            for (int t = 0; t < T; t++)
                if (targets[b * T + t] >= 0) sum += lp[t], cnt++;
            json_t *o = json_pack("{s:i,s:f,s:i}", "index", first + b, "logprob", sum, "tokens", cnt);
            json_object_set_new(o, "mean_loss", cnt ? json_real(-sum / cnt) : json_null());
            if (r->id) json_object_set(o, "id", r->id);
            char *line = json_dumps(o, JSON_COMPACT);
            fprintf(mem, "%s\n", line);
            free(line);
            json_decref(o);
        }
    }
    if (mem) fclose(mem);
    if (!rc) {
        if (out_path) rc = rlhf_write_file_atomic(out_path, outbuf, outlen, &err);
        else if (fwrite(outbuf, 1, outlen, stdout) != outlen) rc = RLHF_FAIL(&err, RLHF_EIO, "cannot write stdout");
    }
    if (rc) rlhf_error_print(prog, &err);
    for (int i = 0; i < sc.n; i++) {
        free(sc.recs[i].ids);
        json_decref(sc.recs[i].id);
    }
    free(sc.recs), free(data), free(outbuf), free(tokens), free(targets);
    model_trainer_destroy(&tr);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    return rc ? 1 : 0;
}
