/* guided/guided_int.h — private to guided/ (and its tests and benchmark): the byte automaton that
 * regular expressions and JSON schemas compile to, and the builders the two front ends share.
 *
 * NFA: Thompson-style states, each either an epsilon state (up to two epsilon successors) or a byte-range
 * state ([lo, hi] -> one successor). A fragment is (start, end) where `end` is an epsilon state with no
 * successors yet, patched when the fragment is joined to the next one. Every construction below keeps the
 * invariant that a fragment's states all lie on paths from its start to its end, except where `never`
 * (the empty language) cuts a path; the live-state pass (guided_nfa_finish) removes what cannot reach
 * the accepting state, so an empty language shows as a start state that is not live.
 *
 * DFA: subsets of live byte-range NFA states (plus the accept flag), determinised lazily: a transition is
 * computed the first time something asks for it. Bounded: GUIDED_MAX_NFA_STATES and
 * GUIDED_MAX_DFA_STATES, so a pathological schema or regex fails with an error instead of exhausting
 * memory. */
#ifndef RLHF_GUIDED_GUIDED_INT_H
#define RLHF_GUIDED_GUIDED_INT_H

#include <stddef.h>
#include <stdint.h>

#include "guided/guided.h"

enum {
    GUIDED_MAX_NFA_STATES = 1 << 20,
    GUIDED_MAX_DFA_STATES = 50000,
    GUIDED_MAX_REPEAT = 1000,      /* {m,n}, minItems/maxItems, minLength/maxLength */
    GUIDED_MAX_DEPTH = 32,         /* nesting of schemas, regex groups */
    GUIDED_ANY_DEPTH = 3,          /* containers inside an unconstrained JSON value */
    GUIDED_MAX_REGEX_LEN = 1 << 16,
};

enum { GN_EPS = 0, GN_RANGE = 1 };

typedef struct gnfa_state {
    int32_t out1, out2; /* successors (-1: none); a range state uses out1 only */
    uint8_t kind, lo, hi;
} gnfa_state;

typedef struct gfrag {
    int32_t start, end;
} gfrag;

typedef struct gnfa {
    gnfa_state *st;
    int n, cap;
    int overflow;  /* a builder ran past GUIDED_MAX_NFA_STATES (or out of memory) */
} gnfa;

/* builders: on overflow they return a fragment of state 0 and set nfa->overflow; callers check once at
 * the end (guided_nfa_finish). */
gfrag guided_nfa_empty(gnfa *a);                    /* the empty string */
/* An epsilon edge from state `from` (an epsilon state with a free successor) to `to`; tails may be shared. */
void guided_nfa_link(gnfa *a, int32_t from, int32_t to);
gfrag guided_nfa_never(gnfa *a);                    /* no string at all */
gfrag guided_nfa_range(gnfa *a, int lo, int hi);    /* one byte in [lo, hi] */
gfrag guided_nfa_bytes(gnfa *a, const char *s, size_t n); /* exactly these bytes */
gfrag guided_nfa_cat(gnfa *a, gfrag x, gfrag y);
gfrag guided_nfa_alt(gnfa *a, gfrag x, gfrag y);
gfrag guided_nfa_star(gnfa *a, gfrag x);
gfrag guided_nfa_plus(gnfa *a, gfrag x);
gfrag guided_nfa_opt(gnfa *a, gfrag x);
/* Any one Unicode scalar value of U+0080.. as UTF-8 (no surrogates, no overlongs). */
gfrag guided_nfa_utf8_nonascii(gnfa *a);

/* A set of characters as the regex and schema front ends see it: the ASCII members, and whether every
 * non-ASCII character is in (negated classes, `.`). */
typedef struct gcharset {
    uint64_t ascii[2];
    int nonascii;
} gcharset;
/* The set as an alternation of UTF-8 byte sequences. json_body: as the characters of a JSON string's
 * body — `"` and `\` escaped, control characters (< 0x20) left out. */
gfrag guided_nfa_charset(gnfa *a, const gcharset *cs, int json_body);
/* One character of a JSON string body in any legal spelling: an unescaped character (valid UTF-8, no
 * surrogates), or an escape (\" \\ \/ \b \f \n \r \t, \uXXXX outside the surrogates). */
gfrag guided_nfa_json_char(gnfa *a);

/* Regex front end: parses `re` (syntax: guided.h) and builds its fragment. json_body: the regex is a
 * JSON Schema `pattern` matched against a JSON string's decoded text: search semantics (anchors ^ and $
 * only at the ends), characters as in guided_nfa_charset's json_body. `where` names the regex in errors. */
int guided_regex_build(gnfa *a, const char *re, size_t len, int json_body, const char *where, gfrag *out,
                       rlhf_error *err);
/* JSON Schema front end. */
int guided_schema_build(gnfa *a, const json_t *schema, gfrag *out, rlhf_error *err);
/* Any JSON object (OpenAI's json_object mode), values nested up to GUIDED_ANY_DEPTH containers. */
gfrag guided_schema_any_object(gnfa *a);

/* The compiled grammar: NFA, its lazily built DFA, and per DFA state the cached token mask. */
typedef struct gdfa_state {
    int32_t *set; /* live byte-range NFA states of the subset (sorted) */
    int n;
    int accepting;
    uint32_t hash;
    uint64_t *mask; /* the token mask for the bound vocabulary, or NULL until asked */
    int n_allowed;
    int32_t only;   /* the allowed token when n_allowed == 1 */
} gdfa_state;

struct guided_grammar {
    gnfa nfa;
    int32_t accept;    /* the accepting NFA state */
    uint8_t *live;     /* (nfa.n) the state can reach `accept` */
    gdfa_state *ds;
    int n_ds, cap_ds;
    int32_t *trans;    /* (cap_ds, 256) next DFA state; -1 dead, -2 not computed yet */
    int32_t *htab;     /* open addressing over DFA states by subset */
    int hcap;
    /* closure scratch */
    uint32_t *mark;
    uint32_t gen;
    int32_t *stack, *tmp;
    const struct guided_vocab *vocab; /* the vocabulary the cached masks belong to */
    size_t mask_bytes;                /* memory the cached masks hold */
    int no_plain_shortcut;            /* tests: always walk the full trie */
    int overflow;                     /* GUIDED_MAX_DFA_STATES reached */
    /* byte classes: bytes that no range state tells apart (intervals between range boundaries); a
     * transition computed for one byte is stored for its whole interval */
    uint8_t cls_lo[256], cls_hi[256];
    char desc[96];                    /* what it was compiled from, for errors */
};

/* Wraps a built NFA into a grammar (live states, the DFA's start state); refuses an empty language. */
int guided_grammar_from_nfa(guided_grammar **out, gnfa *a, gfrag f, const char *where, rlhf_error *err);
/* The DFA successor of state d on byte b: a state index, or -1 (dead). -3: the DFA would exceed its bound
 * (g->overflow is set). */
int32_t guided_dfa_step(guided_grammar *g, int32_t d, uint8_t b);

/* A trie of token byte strings in preorder; node 0 is the root (the empty prefix). */
typedef struct gtrie {
    int n_nodes;
    uint32_t *node;      // (n_nodes) byte | depth << 8 | (the node ends a token) << 31: what the walk reads
    int32_t *end;        // (n_nodes) one past the node's subtree in preorder
    int32_t *tok_first;  // (n_nodes) index into ids of the tokens the node's path spells, -1: none
    int32_t *tok_n;      // (n_nodes)
    int32_t *ids;        /* the trie's token ids, sorted by their bytes */
} gtrie;

/* "Plain" bytes: printable ASCII but `"` and `\`. A DFA state whose successors on every plain byte are one
 * state (inside a JSON string, a free-text state) sends every plain token of length L to the same state, so
 * the mask of such a state takes the plain tokens by length (pcum/plen) and walks only the trie of the
 * other tokens (`rest`). */
#define GUIDED_PLAIN(b) ((b) >= 0x20 && (b) < 0x7f && (b) != '"' && (b) != '\\')

/* Two levels of that shortcut: 0, plain tokens (length in bytes); 1, "text" tokens — whole characters, each
 * plain or a valid non-ASCII UTF-8 sequence (length in characters), for states whose successors on every
 * such character are one state. */
enum { GUIDED_LEVELS = 2 };

struct guided_vocab {
    int vocab_size;
    gtrie full;           /* every token */
    int max_depth;        /* longest token */
    gtrie rest[GUIDED_LEVELS];   /* the tokens outside the level's class */
    int lmax[GUIDED_LEVELS];     /* longest token of the class (bytes / characters) */
    uint64_t *plen[GUIDED_LEVELS]; // (lmax + 1, words) the class's tokens of exactly length L
    uint64_t *pcum[GUIDED_LEVELS]; // (lmax + 1, words) the class's tokens of length 1..L
    int32_t eos[8];
    int n_eos;
    char **bytes;         // (vocab_size) each token's bytes (NULL for special / unused ids)
    uint16_t *len;        // (vocab_size)
};

struct guided_matcher {
    guided_grammar *g;
    const guided_vocab *v;
    int32_t state; /* DFA state; -1 after EOS */
    uint64_t *own; /* the mask when the cache is full */
    sample_constraint hook;
};

#endif
