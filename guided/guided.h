/* guided/guided.h — guided (constrained) generation: a JSON Schema or a regular expression compiles to a
 * byte automaton, and the automaton masks the tokens of a vocabulary so that every completion a sampler
 * draws under the mask is in the language. docs/GUIDED.md describes the semantics and the subset.
 *
 *   guided_grammar  compiled once per schema / regex (guided_cache keeps them); a lazily determinised DFA
 *                   over bytes whose states cache their token masks
 *   guided_vocab    a tokenizer's vocabulary as a trie of byte strings (one per tokenizer)
 *   guided_matcher  one sequence being generated: the DFA state it is in; hands the sampler its
 *                   sample_constraint (model/model_infer.h)
 *
 * Not thread-safe: a grammar (and the matchers on it) is used by one thread at a time.
 *
 * Regex syntax (ECMAScript-like, ASCII semantics): literals (UTF-8 text is literal bytes), `.` (any
 * character but \n), classes [a-z0-9_] and [^...] (ASCII members), \d \w \s \D \W \S, escapes \n \r \t
 * \f \v \0 \xHH \uHHHH (ASCII) and \ before punctuation, groups (...) and (?:...), alternation |,
 * quantifiers * + ? {n} {n,} {n,m} (lazy forms accepted: the language is the same). Anchors ^ and $ only at
 * the very start / end. Back-references, look-around, flags and named groups are refused.
 *
 * JSON Schema subset (compact JSON, no whitespace; object properties in the schema's order): type (one
 * or a list), enum, const, anyOf, object: properties, required, additionalProperties (true or false; no
 * extra keys are generated either way), array: items, minItems, maxItems, string: pattern (search
 * semantics, as JSON Schema) or minLength / maxLength, number, integer, boolean, null; annotations
 * (title, description, default, examples, $schema, $id, $comment) are ignored. Anything else is an error
 * naming its JSON path, e.g. "$.properties.age.minimum: unsupported keyword". A schema (or regex) that
 * no string satisfies is refused. */
#ifndef RLHF_GUIDED_GUIDED_H
#define RLHF_GUIDED_GUIDED_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct guided_grammar guided_grammar;

/* A JSON Schema (subset above). */
int guided_compile_schema(guided_grammar **out, const json_t *schema, rlhf_error *err);
/* A regular expression, matched against the whole completion (Python's re.fullmatch). */
int guided_compile_regex(guided_grammar **out, const char *regex, rlhf_error *err);
/* Any JSON object (OpenAI's response_format {"type": "json_object"}), nested up to 4 levels. */
int guided_compile_json_object(guided_grammar **out, rlhf_error *err);
/* A spec as configs and requests give it: {"schema": {...}} | {"regex": "..."} | {"json_object": true}.
 * `where` is the spec's JSON path for errors (e.g. "task.guided"). */
int guided_compile_spec(guided_grammar **out, const json_t *spec, const char *where, rlhf_error *err);
void guided_grammar_destroy(guided_grammar **g);
/* 1 when the bytes are a complete string of the language, else 0 (walks the DFA). */
int guided_grammar_matches(guided_grammar *g, const char *bytes, size_t len);
/* DFA states built so far (for benchmarks and tests). */
int guided_grammar_dfa_states(const guided_grammar *g);

typedef struct guided_vocab guided_vocab;
/* The vocabulary of `tok` (token_bytes of every id; special and unused ids are never allowed, except the
 * tokenizer's EOS ids, allowed exactly where the language may end). The tokenizer needs an EOS id. */
int guided_vocab_create(guided_vocab **out, const tokenizer *tok, rlhf_error *err);
void guided_vocab_destroy(guided_vocab **v);

typedef struct guided_matcher guided_matcher;
/* One sequence under grammar g and vocabulary v. A grammar serves one vocabulary (its masks are that
 * vocabulary's): another one is an error. */
int guided_matcher_create(guided_matcher **out, guided_grammar *g, const guided_vocab *v, rlhf_error *err);
void guided_matcher_destroy(guided_matcher **m);
void guided_matcher_reset(guided_matcher *m);
/* The tokens allowed next: bit i of (*bits)[i / 64] (valid until the grammar's next call), how many,
 * and the one when there is one. */
int guided_matcher_mask(guided_matcher *m, const uint64_t **bits, int *n_allowed, int32_t *only, rlhf_error *err);
/* Advances over token id (an error when the grammar does not allow it). */
int guided_matcher_accept(guided_matcher *m, int32_t id, rlhf_error *err);
/* 1 when the bytes so far are a complete string of the language. */
int guided_matcher_accepting(const guided_matcher *m);
/* The hook a sample_params carries (model/model_infer.h): valid while m lives. */
const sample_constraint *guided_matcher_constraint(guided_matcher *m);

/* Compiled grammars by spec (canonical JSON text), so a schema is compiled once. */
typedef struct guided_cache guided_cache;
int guided_cache_create(guided_cache **out, int capacity, rlhf_error *err);
void guided_cache_destroy(guided_cache **c);
/* The grammar of spec (guided_compile_spec), compiled on first use and owned by the cache; *hit: 1 when
 * it was cached. Each get holds the grammar until its guided_cache_release; when `capacity` grammars are
 * cached, a new one replaces the least recently used one that nothing holds (none: an error). */
int guided_cache_get(guided_cache *c, const json_t *spec, const char *where, guided_grammar **g, int *hit,
                     rlhf_error *err);
void guided_cache_release(guided_cache *c, guided_grammar *g);

#ifdef __cplusplus
}
#endif
#endif
