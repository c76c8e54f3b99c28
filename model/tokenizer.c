/* model/tokenizer.c — the tokenizer interface, its embedded byte-level implementation and the
 * streaming decoder shared by every kind (Hugging Face BPE is in tokenizer_bpe*.c).
 *
 * Callers only use tokenizer_encode/decode/stream and the id fields, never the kind. */
#include "model/model.h"

#include <errno.h>
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
    free(t->source_dir);
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
    if (tok->ops->encode_special)
        rc = tok->ops->encode_special(tok, text, len, add_bos, &ids, &n, &cap, err);
    else {
        if (add_bos) ids[n++] = tok->bos_id;
        rc = tok->ops->encode(tok, text, len, &ids, &n, &cap, err);
    }
    if (rc) {
        free(ids);
        return rc;
    }
    *ids_out = ids;
    *n_out = n;
    return 0;
}

/* Appends the bytes of token `id` to (*s, *len, *cap), dropping up to *strip leading spaces while
 * nothing has been produced yet (*strip is set to 0 once a byte is kept). */
static int append_token(const tokenizer *tok, int32_t id, char **s, size_t *len, size_t *cap, int *strip,
                        rlhf_error *err) {
    for (;;) {
        size_t room = *cap - *len;
        size_t k = tok->ops->token_bytes(tok, id, *s + *len, room);
        if (k < room) {
            char *p = *s + *len;
            size_t skip = 0;
            while (*strip > 0 && skip < k && p[skip] == ' ') skip++, (*strip)--;
            if (skip < k) *strip = 0;
            if (skip) memmove(p, p + skip, k - skip);
            *len += k - skip;
            return 0;
        }
        size_t nc = 2 * (*len + k + 1);
        char *q = realloc(*s, nc);
        if (!q) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        *s = q;
        *cap = nc;
    }
}

static int check_id(const tokenizer *tok, int32_t id, int i, rlhf_error *err) {
    if (id >= 0 && id < tok->vocab_size) return 0;
    return RLHF_FAIL(err, RLHF_EINVAL, "token %d at index %d is outside the vocabulary (0..%d)", id, i,
                     tok->vocab_size - 1);
}

int tokenizer_decode(const tokenizer *tok, const int32_t *ids, int n, char **text_out, size_t *len_out,
                     rlhf_error *err) {
    *text_out = NULL;
    if (len_out) *len_out = 0;
    size_t cap = (size_t)n + 16, len = 0;
    char *s = malloc(cap);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int strip = tok->ops->strip_start ? tok->ops->strip_start(tok) : 0, rc;
    for (int i = 0; i < n; i++) {
        if ((rc = check_id(tok, ids[i], i, err)) || (rc = append_token(tok, ids[i], &s, &len, &cap, &strip, err))) {
            free(s);
            return rc;
        }
    }
    s[len] = 0; /* append_token leaves at least one free byte */
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
    if (dir[0] && !(t->source_dir = realpath(dir, NULL))) {
        rc = rlhf_error_set(err, RLHF_ESYS, dir, "cannot resolve the path: %s", strerror(errno));
        tokenizer_destroy(&t);
        return rc;
    }
    *out = t;
    return 0;
}
const char *tokenizer_special_text(const tokenizer *tok, int32_t id) {
    return tok->ops->special_text ? tok->ops->special_text(tok, id) : NULL;
}

/* ---------------------------------------------------------------- streaming decoder */

struct tokenizer_stream {
    const tokenizer *tok;
    char *buf; /* buf[0..held): bytes not handed out yet (an incomplete UTF-8 tail); then new output */
    size_t cap, held, out_len;
    int strip, n_pushed;
};

/* Length of the tail of s[0..n) that is the start of a UTF-8 sequence still missing bytes (0..3). Bytes
 * that can never become valid are not held: they go out as they are. */
static size_t utf8_incomplete_tail(const unsigned char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = s[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: keep looking for the lead */
        size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
        if (need <= back) return 0; /* ASCII, invalid lead, or complete */
        if (back >= 2) { /* the second byte's range depends on the lead (no overlongs, surrogates, > U+10FFFF) */
            unsigned char c1 = s[n - back + 1];
            if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
                (c == 0xF4 && c1 > 0x8F))
                return 0;
        }
        return back;
    }
    return 0;
}

int tokenizer_stream_create(tokenizer_stream **out, const tokenizer *tok, rlhf_error *err) {
    *out = NULL;
    tokenizer_stream *s = calloc(1, sizeof *s);
    if (!s || !(s->buf = malloc(s->cap = 256))) {
        free(s);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    s->tok = tok;
    tokenizer_stream_reset(s);
    *out = s;
    return 0;
}

void tokenizer_stream_reset(tokenizer_stream *s) {
    s->held = s->out_len = 0;
    s->n_pushed = 0;
    s->strip = s->tok->ops->strip_start ? s->tok->ops->strip_start(s->tok) : 0;
}

int tokenizer_stream_push(tokenizer_stream *s, int32_t id, const char **text, size_t *len, rlhf_error *err) {
    *text = "";
    *len = 0;
    if (s->out_len) { /* what was handed out last time is gone; keep the held tail at the front */
        memmove(s->buf, s->buf + s->out_len, s->held);
        s->out_len = 0;
    }
    int rc = check_id(s->tok, id, s->n_pushed, err);
    if (rc) return rc;
    s->n_pushed++;
    size_t n = s->held;
    if ((rc = append_token(s->tok, id, &s->buf, &n, &s->cap, &s->strip, err))) return rc;
    size_t tail = utf8_incomplete_tail((const unsigned char *)s->buf, n);
    s->out_len = n - tail;
    s->held = tail;
    *text = s->buf;
    *len = s->out_len;
    return 0;
}

void tokenizer_stream_flush(tokenizer_stream *s, const char **text, size_t *len) {
    if (s->out_len) {
        memmove(s->buf, s->buf + s->out_len, s->held);
        s->out_len = 0;
    }
    *text = s->buf;
    *len = s->held;
    s->out_len = s->held;
    s->held = 0;
}

void tokenizer_stream_destroy(tokenizer_stream **ps) {
    if (!ps || !*ps) return;
    free((*ps)->buf);
    free(*ps);
    *ps = NULL;
}

int model_load_for_inference(model **m_out, tokenizer **tok_out, const char *path, const char *tokenizer_spec,
                             int max_seq_len, rlhf_error *err) {
    *m_out = NULL;
    *tok_out = NULL;
    model_load_options lo = {.expect = NULL, .max_seq_len = max_seq_len};
    int rc = model_load_with(m_out, path, &lo, err);
    if (rc) return rc;
    if ((rc = tokenizer_load_for_model(tok_out, tokenizer_spec, path, (*m_out)->cfg.vocab_size, err))) model_destroy(m_out);
    return rc;
}
