/* run/identity.c — what model a run's rollouts were sampled from, as content hashes (see run/run.h).
 *
 * A replay log holds token ids and log-probs; they mean something only for the model (weights and
 * tokenizer) that produced them. The live updater writes RUN_DIR/model_identity.json once, from the
 * base model it loaded, and `rlhf replay` compares its own base with the one beside the log, so a
 * log replayed into another model is refused with both identities named instead of training quietly.
 *
 * The hash is a 64-bit multiply-xorshift over 8-byte words (not cryptographic: it tells models apart,
 * it does not defend against someone forging a collision), about 2 GB/s, so a 500 MB model costs a
 * quarter of a second once per process start. */
#include <stdlib.h>
#include <string.h>

#include "run/run.h"

static uint64_t mix(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* The word loop of hash_bytes over n8 bytes (a multiple of 8). */
static uint64_t hash_words(uint64_t h, const unsigned char *p, size_t n8) {
    for (size_t i = 0; i + 8 <= n8; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ mix(w)) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
    }
    return h;
}

/* Hash of n bytes, chained from h. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    h ^= (uint64_t)n * 0x9e3779b97f4a7c15ULL;
    size_t i = n & ~(size_t)7;
    h = hash_words(h, p, i);
    uint64_t tail = 0;
    memcpy(&tail, p + i, n - i);
    return mix(h ^ mix(tail ^ (uint64_t)(n - i)));
}

/* hash_bytes fed in pieces: the same value as one call over their concatenation (total length known
 * up front). */
typedef struct hash_stream {
    uint64_t h;
    unsigned char pend[8];
    size_t npend;
} hash_stream;

static void hash_stream_begin(hash_stream *s, uint64_t h, size_t total) {
    s->h = h ^ (uint64_t)total * 0x9e3779b97f4a7c15ULL;
    s->npend = 0;
}

static void hash_stream_feed(hash_stream *s, const unsigned char *p, size_t n) {
    if (s->npend) {
        size_t take = 8 - s->npend < n ? 8 - s->npend : n;
        memcpy(s->pend + s->npend, p, take);
        s->npend += take;
        p += take;
        n -= take;
        if (s->npend < 8) return;
        s->h = hash_words(s->h, s->pend, 8);
        s->npend = 0;
    }
    size_t w = n & ~(size_t)7;
    s->h = hash_words(s->h, p, w);
    memcpy(s->pend, p + w, n - w);
    s->npend = n - w;
}

static uint64_t hash_stream_end(const hash_stream *s) {
    uint64_t tail = 0;
    memcpy(&tail, s->pend, s->npend);
    return mix(s->h ^ mix(tail ^ (uint64_t)s->npend));
}

/* hash_bytes(1, params as fp32, n_params * 4) whichever the storage: a model keeping a frozen bf16 base
 * (model.bf16_mem) hashes as its widened values, so it has the identity of the same file loaded in fp32. */
static uint64_t hash_weights(const model *m) {
    size_t n = m->n_params * sizeof(float);
    if (!m->bf16_mem) return hash_bytes(1, m->params_mem, n);
    hash_stream hs;
    hash_stream_begin(&hs, 1, n);
    enum { CHUNK = 4096 };
    float buf[CHUNK];
    for (int t = 0; t < m->n_tensors; t++) { /* the tensors tile the buffer in order */
        const model_tensor_info *ti = &m->tensors[t];
        for (size_t o = 0; o < ti->numel; o += CHUNK) {
            size_t k = ti->numel - o < CHUNK ? ti->numel - o : CHUNK;
            model_tensor_read_f32(m, ti, o, k, buf);
            hash_stream_feed(&hs, (const unsigned char *)buf, k * sizeof(float));
        }
    }
    return hash_stream_end(&hs);
}

static void hex16(char out[17], uint64_t h) { snprintf(out, 17, "%016llx", (unsigned long long)h); }

int run_model_identity(const model *m, const tokenizer *tok, json_t **out, rlhf_error *err) {
    *out = NULL;
    json_t *cfg = model_config_to_json(&m->cfg);
    char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(cfg);
    if (!cfg_text) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot serialise the model config");
    uint64_t hc = hash_bytes(0, cfg_text, strlen(cfg_text));
    free(cfg_text);
    uint64_t hw = hash_weights(m);
    uint64_t ht = 2;
    char tok_name[64] = "bytes";
    if (tok && tok->source_dir) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", tok->source_dir);
        char *text = NULL;
        size_t n = 0;
        int rc = rlhf_read_file(path, &text, &n, err);
        if (rc) return rc;
        ht = hash_bytes(ht, text, n);
        free(text);
        hex16(tok_name, ht);
    } else {
        int v = tok ? tok->vocab_size : m->cfg.vocab_size;
        ht = hash_bytes(ht, &v, sizeof v);
    }
    char hx[4][17];
    hex16(hx[0], mix(hc ^ mix(hw ^ mix(ht))));
    hex16(hx[1], hc);
    hex16(hx[2], hw);
    *out = json_pack("{s:s, s:s, s:s, s:s, s:I}", "model", hx[0], "config", hx[1], "weights", hx[2], "tokenizer",
                     tok_name, "n_params", (json_int_t)m->n_params);
    return *out ? 0 : RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
}

void run_weights_hash(const model *m, char out[17]) {
    hex16(out, hash_weights(m));
}

void run_weights_content_hash(const void *data, size_t n, char out[17]) { hex16(out, hash_bytes(1, data, n)); }

int run_model_identity_compare(const json_t *recorded, const json_t *mine, char *what, size_t cap) {
    static const char *const parts[] = {"config", "weights", "tokenizer"};
    const char *a = json_string_value(json_object_get(recorded, "model"));
    const char *b = json_string_value(json_object_get(mine, "model"));
    if (a && b && !strcmp(a, b)) return 0;
    size_t n = 0;
    what[0] = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        const char *x = json_string_value(json_object_get(recorded, parts[i]));
        const char *y = json_string_value(json_object_get(mine, parts[i]));
        if (x && y && strcmp(x, y) && n < cap)
            n += (size_t)snprintf(what + n, cap - n, "%s%s %s vs %s", n ? ", " : "", parts[i], x, y);
    }
    if (!n) snprintf(what, cap, "model %s vs %s", a ? a : "?", b ? b : "?");
    return 1;
}
