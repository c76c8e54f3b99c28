/* tests/fuzz/fuzz_tokenizer.c — Hugging Face tokenizer.json loading and encode/decode of arbitrary bytes
 * (model/tokenizer_bpe*.c).
 *
 * Input: one flag byte, then
 *   flags & 1 == 0   text for the fixture tokenizer tests/fuzz/fixtures/llama3-small (Llama-3's real
 *                    tokenizer.json cut down by make_tokenizer_fixture.py; no normalizer, byte-level).
 *                    Properties: encode succeeds on any bytes; decode(encode(x)) == x when x is valid UTF-8
 *                    without NUL and without special-token text ("<|"); decoding token by token through a
 *                    tokenizer_stream gives the same text as tokenizer_decode; the same bytes read as ids
 *                    (any, in range or not) decode without a fault.
 *   flags & 1 == 1   a tokenizer.json (the rest of the input) in a directory with the fixture's
 *                    tokenizer_config.json; loaded, and when accepted, used to encode and decode a short
 *                    fixed text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/model_infer.h"
#include "tests/fuzz/fuzz_util.h"

static tokenizer *g_tok;

static int valid_text(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n;) {
        int l = rlhf_utf8_char_len((const char *)p + i, n - i);
        if (l <= 0 || p[i] == 0) return 0;
        i += (size_t)l;
    }
    return !memmem(p, n, "<|", 2);
}

static char *stream_decode(const tokenizer *t, const int32_t *ids, int n, size_t *len) {
    tokenizer_stream *s = NULL;
    rlhf_error err;
    if (tokenizer_stream_create(&s, t, &err)) abort();
    size_t cap = 64, used = 0;
    char *out = malloc(cap);
    if (!out) abort();
    for (int i = 0; i <= n; i++) {
        const char *piece;
        size_t pl;
        if (i < n) {
            if (tokenizer_stream_push(s, ids[i], &piece, &pl, &err)) pl = 0;
        } else {
            tokenizer_stream_flush(s, &piece, &pl);
        }
        if (used + pl + 1 > cap) {
            while (used + pl + 1 > cap) cap *= 2;
            if (!(out = realloc(out, cap))) abort();
        }
        if (pl) memcpy(out + used, piece, pl);
        used += pl;
    }
    tokenizer_stream_destroy(&s);
    *len = used;
    return out;
}

static void check_ids(const tokenizer *t, const int32_t *ids, int n, const uint8_t *orig, size_t orig_len, int exact) {
    rlhf_error err;
    char *text = NULL;
    size_t len = 0;
    int rc = tokenizer_decode(t, ids, n, &text, &len, &err);
    if (rc) return;
    size_t slen;
    char *st = stream_decode(t, ids, n, &slen);
    FUZZ_ASSERT(slen == len && memcmp(st, text, len) == 0, "stream decode (%zu bytes) != decode (%zu bytes)", slen,
                len);
    free(st);
    if (exact)
        FUZZ_ASSERT(len == orig_len && memcmp(text, orig, len) == 0, "decode(encode(x)) != x (%zu vs %zu bytes)", len,
                    orig_len);
    free(text);
}

static void text_mode(const uint8_t *p, size_t n) {
    rlhf_error err;
    int32_t *ids = NULL;
    int nid = 0;
    int rc = tokenizer_encode(g_tok, (const char *)p, n, 0, &ids, &nid, &err);
    FUZZ_ASSERT(rc == 0, "encode of %zu bytes failed: %s", n, err.msg);
    check_ids(g_tok, ids, nid, p, n, valid_text(p, n));
    free(ids);
    /* the bytes as ids: what a corrupt sampler or a hostile client could hand to decode */
    int m = (int)(n / 4);
    int32_t *raw = malloc((size_t)(m ? m : 1) * sizeof *raw);
    if (!raw) abort();
    memcpy(raw, p, (size_t)m * 4);
    check_ids(g_tok, raw, m, NULL, 0, 0);
    free(raw);
}

static void json_mode(const uint8_t *p, size_t n) {
    fuzz_write_file("tokenizer.json", p, n);
    tokenizer *t = NULL;
    rlhf_error err;
    if (tokenizer_create_hf(&t, fuzz_tmpdir(), &err) == 0) {
        static const char sample[] = "Hello, world! 123 <|end_of_text|> \xc3\xa9t\xc3\xa9\n\tok";
        int32_t *ids = NULL;
        int nid = 0;
        if (tokenizer_encode(t, sample, sizeof sample - 1, 1, &ids, &nid, &err) == 0) {
            for (int i = 0; i < nid; i++)
                FUZZ_ASSERT(ids[i] >= 0 && ids[i] < t->vocab_size, "encode gave id %d outside vocab %d", ids[i],
                            t->vocab_size);
            check_ids(t, ids, nid, NULL, 0, 0);
        }
        free(ids);
        tokenizer_destroy(&t);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    rlhf_error err;
    const char *dir = RLHF_SOURCE_ROOT "/tests/fuzz/fixtures/llama3-small";
    if (tokenizer_create_hf(&g_tok, dir, &err)) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s\n", err.where, err.msg);
        abort();
    }
    char *cfg = NULL;
    size_t len = 0;
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (rlhf_read_file(path, &cfg, &len, &err)) abort();
    fuzz_write_file("tokenizer_config.json", (const uint8_t *)cfg, len);
    free(cfg);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (data[0] & 1)
        json_mode(data + 1, size - 1);
    else
        text_mode(data + 1, size - 1);
    return 0;
}
