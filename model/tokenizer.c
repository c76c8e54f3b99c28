/* model/tokenizer.c — the tokenizer interface and its embedded byte-level implementation.
 *
 * Callers only use tokenizer_encode/decode and the id fields, so a BPE tokenizer can be added as
 * another tokenizer_ops table without changing them. */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int ids_reserve(int32_t **ids, int *cap, int need, rlhf_error *err) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > (1 << 29)) return RLHF_FAIL(err, RLHF_ENOMEM, "token array too large (%d ids)", need);
        nc *= 2;
    }
    int32_t *p = realloc(*ids, (size_t)nc * sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %d token ids", nc);
    *ids = p;
    *cap = nc;
    return 0;
}

static int bytes_encode(const tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n, int *cap,
                        rlhf_error *err) {
    (void)tok;
    if (len > (size_t)(1 << 29)) return RLHF_FAIL(err, RLHF_EINVAL, "text too long to tokenize (%zu bytes)", len);
    int rc = ids_reserve(ids, cap, *n + (int)len, err);
    if (rc) return rc;
    for (size_t i = 0; i < len; i++) (*ids)[(*n)++] = (unsigned char)text[i];
    return 0;
}

static size_t bytes_token_bytes(const tokenizer *tok, int32_t id, char *buf, size_t cap) {
    (void)tok;
    if (id < 0 || id > 255) return 0;
    if (cap > 0) buf[0] = (char)id;
    return 1;
}

static const tokenizer_ops bytes_ops = {
    .kind = "bytes",
    .encode = bytes_encode,
    .token_bytes = bytes_token_bytes,
    .destroy_impl = NULL,
};

int tokenizer_create_bytes(tokenizer **out, int vocab_size, rlhf_error *err) {
    *out = NULL;
    if (vocab_size < TOKENIZER_BYTES_MIN_VOCAB)
        return RLHF_FAIL(err, RLHF_EINVAL,
                         "byte-level tokenizer needs vocab_size >= %d (256 bytes + BOS, EOS, PAD), got %d",
                         TOKENIZER_BYTES_MIN_VOCAB, vocab_size);
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    t->ops = &bytes_ops;
    t->vocab_size = vocab_size;
    t->bos_id = TOKENIZER_BYTES_BOS;
    t->eos_id = TOKENIZER_BYTES_EOS;
    t->pad_id = TOKENIZER_BYTES_PAD;
    t->eos_ids[0] = TOKENIZER_BYTES_EOS;
    t->n_eos_ids = 1;
    *out = t;
    return 0;
}

void tokenizer_destroy(tokenizer **pt) {
    if (!pt || !*pt) return;
    tokenizer *t = *pt;
    if (t->ops && t->ops->destroy_impl) t->ops->destroy_impl(t->impl);
    free(t);
    *pt = NULL;
}

int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, int add_bos, int32_t **ids_out, int *n_out,
                     rlhf_error *err) {
    *ids_out = NULL;
    *n_out = 0;
    int32_t *ids = NULL;
    int n = 0, cap = 0, rc;
    if ((rc = ids_reserve(&ids, &cap, 1 + (int)(len < 1024 ? len : 1024), err))) return rc;
    if (add_bos) ids[n++] = tok->bos_id;
    if ((rc = tok->ops->encode(tok, text, len, &ids, &n, &cap, err))) {
        free(ids);
        return rc;
    }
    *ids_out = ids;
    *n_out = n;
    return 0;
}

int tokenizer_decode(const tokenizer *tok, const int32_t *ids, int n, char **text_out, size_t *len_out,
                     rlhf_error *err) {
    *text_out = NULL;
    if (len_out) *len_out = 0;
    size_t cap = (size_t)n + 16, len = 0;
    char *s = malloc(cap);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) {
            free(s);
            return RLHF_FAIL(err, RLHF_EINVAL, "token %d at index %d is outside the vocabulary (0..%d)", ids[i], i,
                             tok->vocab_size - 1);
        }
        for (;;) {
            size_t k = tok->ops->token_bytes(tok, ids[i], s + len, cap - len - 1);
            if (len + k < cap) {
                len += k;
                break;
            }
            cap = 2 * (len + k + 1);
            char *p = realloc(s, cap);
            if (!p) {
                free(s);
                return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            }
            s = p;
        }
    }
    s[len] = 0;
    *text_out = s;
    if (len_out) *len_out = len;
    return 0;
}

/* ---------------------------------------------------------------- choosing a model's tokenizer */

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_tokenizer_json(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    return access(p, R_OK) == 0;
}

int tokenizer_load_for_model(tokenizer **out, const char *spec, const char *model_path, int model_vocab,
                             rlhf_error *err) {
    *out = NULL;
    char dir[4096] = "";
    const char *where = spec && spec[0] ? "tokenizer" : model_path;
    if (spec && !strcmp(spec, "bytes")) {
        /* byte-level, asked for by name */
    } else if (spec && spec[0]) {
        if (!is_dir(spec) || !has_tokenizer_json(spec))
            return rlhf_error_set(err, RLHF_EINVAL, spec, "not a directory holding tokenizer.json (a tokenizer is "
                                                          "\"bytes\" or a Hugging Face tokenizer directory)");
        snprintf(dir, sizeof dir, "%s", spec);
    } else if (model_path && is_dir(model_path)) {
        if (!has_tokenizer_json(model_path))
            return rlhf_error_set(err, RLHF_EINVAL, model_path,
                                  "the model directory has no tokenizer.json: name a tokenizer directory (or \"bytes\")");
        snprintf(dir, sizeof dir, "%s", model_path);
    } else if (model_path && model_path[0]) {
        /* a project checkpoint names the tokenizer of the run that wrote it */
        safetensors_file *f = NULL;
        int rc = safetensors_open(&f, model_path, err);
        if (rc) return rc;
        const char *t = safetensors_meta(f, MODEL_META_TOKENIZER);
        if (t && strcmp(t, "bytes") != 0) snprintf(dir, sizeof dir, "%s", t);
        safetensors_close(&f);
        if (dir[0] && (!is_dir(dir) || !has_tokenizer_json(dir)))
            return rlhf_error_set(err, RLHF_EINVAL, model_path,
                                  "the checkpoint's tokenizer %s (__metadata__.%s) has no tokenizer.json", dir,
                                  MODEL_META_TOKENIZER);
    }
    tokenizer *t = NULL;
    int rc = dir[0] ? tokenizer_create_hf(&t, dir, err) : tokenizer_create_bytes(&t, model_vocab, err);
    if (rc) return rc;
    if (t->vocab_size > model_vocab) {
        rc = rlhf_error_set(err, RLHF_EINVAL, dir[0] ? dir : where,
                            "the tokenizer has %d ids but the model's vocabulary only %d", t->vocab_size, model_vocab);
        tokenizer_destroy(&t);
        return rc;
    }
    /* a model's vocabulary is often padded past the tokenizer's (ids the tokenizer never produces) */
    t->vocab_size = model_vocab;
    *out = t;
    return 0;
}
