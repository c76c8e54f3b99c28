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

/* Hash of n bytes, chained from h. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    h ^= (uint64_t)n * 0x9e3779b97f4a7c15ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ mix(w)) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
    }
    uint64_t tail = 0;
    memcpy(&tail, p + i, n - i);
    return mix(h ^ mix(tail ^ (uint64_t)(n - i)));
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
    uint64_t hw = hash_bytes(1, m->params_mem, m->n_params * sizeof(float));
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
    hex16(out, hash_bytes(1, m->params_mem, m->n_params * sizeof(float)));
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
