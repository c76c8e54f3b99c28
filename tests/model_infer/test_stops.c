/* tests/model_infer/test_stops.c — stop strings across token boundaries, with a tokenizer whose tokens
 * are multi-byte strings and pieces of UTF-8 characters (a custom tokenizer_ops table, as a BPE
 * tokenizer would be). The oracle decodes every prefix of the token list from scratch and looks for the
 * stop strings in it: no incremental window, no knowledge of where tokens begin. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "tests/model_infer/infer_test.h"

/* The test tokenizer: id -> one of a few pieces, chosen by a per-tokenizer permutation. Pieces hold
 * several characters, newlines, and halves of "é" (C3 A9) and "€" (E2 82 AC). */
static const char *const PIECES[] = {
    "ab",   "b",    "\n",      "\n\n", "\xC3", "\xA9", "\xA9x", "\xE2\x82", "\xAC", "\xE2", "\x82\xAC!",
    "c\n",  "ba",   "end",     "</s",  ">",    "d",    "\xC3\xA9", " ",   "stop", "st",   "op",
};
enum { N_PIECES = sizeof PIECES / sizeof PIECES[0] };

typedef struct piece_tok {
    tokenizer t;
    uint64_t salt; /* which piece each id gets */
} piece_tok;

static const char *piece_of(const piece_tok *pt, int32_t id) {
    if (id == pt->t.eos_id) return ""; /* EOS decodes to nothing */
    uint64_t h = ((uint64_t)id + 1) * 0x9E3779B97F4A7C15ull ^ pt->salt;
    h ^= h >> 29;
    return PIECES[h % N_PIECES];
}

static size_t piece_bytes(const tokenizer *tok, int32_t id, char *buf, size_t cap) {
    const char *p = piece_of((const piece_tok *)tok, id);
    size_t n = strlen(p);
    memcpy(buf, p, n < cap ? n : cap);
    return n;
}

static int piece_encode(const tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n, int *cap,
                        rlhf_error *err) {
    (void)tok, (void)text, (void)len, (void)ids, (void)n, (void)cap;
    return rlhf_error_set(err, RLHF_EINVAL, "test tokenizer", "encode is not used here");
}

static const tokenizer_ops PIECE_OPS = {.kind = "test-pieces", .encode = piece_encode, .token_bytes = piece_bytes};

static void piece_tok_init(piece_tok *pt, int V, uint64_t salt) {
    memset(pt, 0, sizeof *pt);
    pt->t.ops = &PIECE_OPS;
    pt->t.vocab_size = V;
    pt->t.bos_id = -1;
    pt->t.pad_id = -1;
    pt->t.eos_id = V - 1;
    pt->t.eos_ids[0] = V - 1;
    pt->t.n_eos_ids = 1;
    pt->salt = salt;
}

/* decode(tokens[0..n)) by concatenating pieces: the oracle's own decoder */
static size_t decode_prefix(const piece_tok *pt, const int32_t *tokens, int n, char *out) {
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        const char *p = piece_of(pt, tokens[i]);
        memcpy(out + len, p, strlen(p));
        len += strlen(p);
    }
    return len;
}

/* The oracle: the first prefix of `g` (the unstopped greedy tokens) whose decoded bytes contain a stop
 * string; in it the earliest match, the first listed at a tie. Returns the token count (0: none). */
static int oracle_stop(const piece_tok *pt, const int32_t *g, int n, const char *const *stops, int ns, size_t *cut,
                       int *which) {
    char buf[2048];
    for (int len = 1; len <= n; len++) {
        size_t bl = decode_prefix(pt, g, len, buf);
        size_t best = (size_t)-1;
        for (int j = 0; j < ns; j++) {
            size_t sl = strlen(stops[j]);
            for (size_t at = 0; at + sl <= bl && at < best; at++)
                if (!memcmp(buf + at, stops[j], sl)) {
                    best = at;
                    *which = j;
                    break;
                }
        }
        if (best != (size_t)-1) {
            *cut = best;
            return len;
        }
    }
    return 0;
}

static void test_stop_strings_across_tokens(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 67);
    int V = c.vocab_size;
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 4, &err), 0);
    int32_t prompt[8] = {3, 14, 15, 92, 65, 35, 89, 79};
    int checked = 0, spanning = 0, partial_utf8 = 0;
    for (int trial = 0; trial < 60; trial++) {
        piece_tok pt;
        piece_tok_init(&pt, V, 0x1234567ull * (uint64_t)(trial + 1));
        /* the unstopped completion (greedy or seeded: the tokens do not depend on the tokenizer) */
        sample_request rq = {.prompt = prompt, .prompt_len = 4 + trial % 4, .params = sample_params_default()};
        rq.params.temperature = trial % 3 ? 1.0f : 0.0f;
        rq.params.seed = 77 + (uint64_t)trial;
        rq.params.max_new_tokens = 24;
        sample_result g;
        CU_ASSERT_EQUAL_FATAL(sampler_run(s, &pt.t, &rq, 1, &g, &err), 0);
        char full[2048];
        size_t full_len = decode_prefix(&pt, g.tokens, g.n_tokens, full);
        CU_ASSERT_EQUAL(g.text_len, full_len);
        CU_ASSERT_EQUAL(memcmp(g.text, full, full_len), 0);
        if (full_len < 6) {
            sample_result_free(&g);
            continue;
        }
        /* stop strings: substrings of the completion (so they hit, often across tokens and inside UTF-8
         * characters), plus one that never occurs and a fixed one that may */
        char s1[8], s2[8];
        size_t a1 = (size_t)(trial * 7) % (full_len - 3), l1 = 2 + (size_t)trial % 3;
        if (a1 + l1 > full_len) l1 = full_len - a1;
        memcpy(s1, full + a1, l1);
        s1[l1] = 0;
        size_t a2 = (size_t)(trial * 13 + 5) % (full_len - 2), l2 = 1 + (size_t)(trial / 3) % 3;
        if (a2 + l2 > full_len) l2 = full_len - a2;
        memcpy(s2, full + a2, l2);
        s2[l2] = 0;
        if (!s1[0] || !s2[0] || strlen(s1) != l1 || strlen(s2) != l2) { /* a NUL byte cannot be in a C string */
            sample_result_free(&g);
            continue;
        }
        const char *stops[4] = {"\x01never\x02", s1, s2, "\xC3\xA9"};
        for (int include = 0; include <= 1; include++) {
            sample_request r2 = rq;
            r2.params.stop_strings = stops;
            r2.params.n_stop_strings = 4;
            r2.params.include_stop = include;
            sample_result a;
            CU_ASSERT_EQUAL_FATAL(sampler_run(s, &pt.t, &r2, 1, &a, &err), 0);
            size_t cut = 0;
            int which = -1;
            int n_expect = oracle_stop(&pt, g.tokens, g.n_tokens, stops, 4, &cut, &which);
            CU_ASSERT_FATAL(n_expect > 0); /* s1 occurs in the completion */
            CU_ASSERT_EQUAL(a.finish, SAMPLE_FINISH_STOP);
            CU_ASSERT_EQUAL(a.n_tokens, n_expect);
            CU_ASSERT_EQUAL(memcmp(a.tokens, g.tokens, (size_t)a.n_tokens * sizeof(int32_t)), 0);
            CU_ASSERT_EQUAL(a.stop_string, which);
            size_t want_len = cut + (include ? strlen(stops[which]) : 0);
            CU_ASSERT_EQUAL(a.text_len, want_len);
            CU_ASSERT_EQUAL(memcmp(a.text, full, want_len), 0);
            CU_ASSERT_EQUAL(a.text[a.text_len], 0);
            if (a.n_tokens != n_expect || a.text_len != want_len || a.stop_string != which)
                printf("\n  trial %d include %d: tokens %d vs %d, text %zu vs %zu, stop %d vs %d\n", trial, include,
                       a.n_tokens, n_expect, a.text_len, want_len, a.stop_string, which);
            /* what the case covered: a match that began in an earlier token, and one of those whose
             * bytes include a multi-byte character's (the pieces split them across tokens) */
            if (!include) {
                char pre[2048];
                size_t before = decode_prefix(&pt, g.tokens, n_expect - 1, pre), sl = strlen(stops[which]);
                spanning += cut < before;
                int high = 0;
                for (size_t i = cut; i < cut + sl; i++) high |= (unsigned char)full[i] >= 0x80;
                partial_utf8 += cut < before && high;
            }
            checked++;
            sample_result_free(&a);
        }
        sample_result_free(&g);
    }
    printf("\n  stop-string cases checked: %d (match began in an earlier token: %d, of which with bytes of a "
           "multi-byte character: %d) ",
           checked, spanning, partial_utf8);
    CU_ASSERT(checked >= 60);
    CU_ASSERT(spanning >= 10);  /* the property the test is for: matches across token boundaries */
    CU_ASSERT(partial_utf8 >= 1);

    sampler_destroy(&s);
    model_destroy(&m);
}

/* EOS ids: every id in the list ends the completion; the tokens keep it; the text has no bytes of it. */
static void test_stop_ids_several(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 71);
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 2, &err), 0);
    piece_tok pt;
    piece_tok_init(&pt, c.vocab_size, 5);
    int32_t prompt[4] = {1, 2, 3, 4};
    sample_request rq = {.prompt = prompt, .prompt_len = 4, .params = sample_params_default()};
    rq.params.temperature = 0.0f;
    rq.params.max_new_tokens = 20;
    sample_result g;
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, &pt.t, &rq, 1, &g, &err), 0);
    CU_ASSERT_FATAL(g.n_tokens == 20);
    int32_t ids[2] = {g.tokens[9], g.tokens[4]}; /* the second one comes first */
    int first = 0;
    while (g.tokens[first] != ids[0] && g.tokens[first] != ids[1]) first++;
    sample_request r2 = rq;
    r2.params.stop_ids = ids;
    r2.params.n_stop_ids = 2;
    sample_result a;
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, &pt.t, &r2, 1, &a, &err), 0);
    CU_ASSERT_EQUAL(a.finish, SAMPLE_FINISH_STOP);
    CU_ASSERT_EQUAL(a.n_tokens, first + 1);
    CU_ASSERT_EQUAL(a.stop_string, -1);
    sample_result_free(&a);
    sample_result_free(&g);
    sampler_destroy(&s);
    model_destroy(&m);
}

void infer_register_stops(void) {
    CU_pSuite s = CU_add_suite("stops", NULL, NULL);
    CU_add_test(s, "stop strings across multi-byte tokens and split UTF-8 (cut or kept)", test_stop_strings_across_tokens);
    CU_add_test(s, "several stop ids", test_stop_ids_several);
}
