/* tests/fuzz/fuzz_guided.c — guided generation's compilers (guided/): JSON Schemas and regular expressions
 * as `rlhf serve` requests and run configs give them.
 *
 * Input: one flag byte, then the spec text. flags & 1: a regex, else a JSON Schema (an input that is not
 * JSON ends there). Properties: compiling returns 0 or an error with a message (no crash, hang or unbounded
 * memory: the automaton bounds of guided/guided_int.h); a compiled grammar's start mask over the byte-level
 * vocabulary is non-empty; then up to 48 tokens chosen from the masks by the remaining input bytes are each
 * accepted, every state reached still has an allowed token (the DFA keeps only live states), and when the
 * matcher accepts, the bytes it consumed are a string of the language (guided_grammar_matches). */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guided/guided.h"
#include "model/model.h"
#include "tests/fuzz/fuzz_util.h"

static tokenizer *g_tok;
static guided_vocab *g_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    rlhf_error err;
    if (tokenizer_create_bytes(&g_tok, 259, &err) || guided_vocab_create(&g_vocab, g_tok, &err)) abort();
    return 0;
}

static int32_t pick(const uint64_t *bits, int n, unsigned r) {
    int k = (int)(r % (unsigned)n);
    for (int id = 0; id < 259; id++)
        if ((bits[id >> 6] >> (id & 63)) & 1) {
            if (k-- == 0) return id;
        }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int regex = data[0] & 1;
    char *text = malloc(size);
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    size_t tlen = strlen(text);
    rlhf_error err;
    memset(&err, 0, sizeof err);
    guided_grammar *g = NULL;
    int rc;
    if (regex) {
        rc = guided_compile_regex(&g, text, &err);
    } else {
        json_t *schema = json_loadb(text, tlen, JSON_DECODE_ANY, NULL);
        if (!schema) {
            free(text);
            return 0;
        }
        rc = guided_compile_schema(&g, schema, &err);
        json_decref(schema);
    }
    FUZZ_ASSERT(rc == 0 || (err.msg[0] && !g), "a failed compile must say why and return nothing");
    if (rc) {
        free(text);
        return 0;
    }
    guided_matcher *m = NULL;
    FUZZ_ASSERT(guided_matcher_create(&m, g, g_vocab, &err) == 0, "matcher");
    char out[64];
    size_t n_out = 0;
    const uint8_t *choice = data + 1 + tlen;
    size_t n_choice = size - 1 - tlen;
    for (int step = 0; step < 48; step++) {
        const uint64_t *bits;
        int n;
        int32_t only;
        if (guided_matcher_mask(m, &bits, &n, &only, &err)) {
            FUZZ_ASSERT(strstr(err.msg, "DFA states") != NULL, "a mask fails only past the DFA bound");
            break;
        }
        FUZZ_ASSERT(n >= 1, "every reachable state has an allowed token");
        unsigned r = step < (int)n_choice ? choice[step] : (unsigned)step * 7u;
        int32_t y = n == 1 ? only : pick(bits, n, r);
        FUZZ_ASSERT(y >= 0, "the mask's count matches its bits");
        if (y == TOKENIZER_BYTES_EOS) {
            FUZZ_ASSERT(guided_matcher_accepting(m), "EOS only where the language may end");
            FUZZ_ASSERT(guided_grammar_matches(g, out, n_out), "an accepted output is in the language");
            break;
        }
        FUZZ_ASSERT(guided_matcher_accept(m, y, &err) == 0, "an allowed token is accepted");
        if (n_out < sizeof out) out[n_out] = (char)y;
        n_out++;
        if (n_out > sizeof out) break;
        if (guided_matcher_accepting(m))
            FUZZ_ASSERT(guided_grammar_matches(g, out, n_out), "an accepting state's bytes are in the language");
    }
    guided_matcher_destroy(&m);
    guided_grammar_destroy(&g);
    free(text);
    return 0;
}
