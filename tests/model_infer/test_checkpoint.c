/* tests/model_infer/test_checkpoint.c — tokenizer and safetensors (generic and model checkpoints):
 * round trips are bit-exact, a Python reader (json + numpy only) opens our files, and every kind
 * of damaged file is rejected with an error naming the file and the problem. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/model_infer/infer_test.h"
#include "tests/test_paths.h"

/* ---------------------------------------------------------------- helpers */

static char tmpdir[256];

static void remove_tmpdir(void) { test_remove_tree(tmpdir); }

static const char *tmp_path(const char *name) {
    static char buf[32][512]; /* rotating, so a test can hold several paths at once */
    static int i;
    i = (i + 1) % 32;
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/rlhf_infer_test_XXXXXX");
        if (!mkdtemp(tmpdir)) abort();
        atexit(remove_tmpdir);
    }
    snprintf(buf[i], sizeof buf[i], "%s/%s", tmpdir, name);
    return buf[i];
}

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

/* A raw safetensors file from a header string and a data section (header padded to 8). */
static void write_raw(const char *path, const char *header, const void *data, size_t data_len) {
    size_t hl = strlen(header), padded = (hl + 7) & ~(size_t)7;
    unsigned char *buf = calloc(1, 8 + padded + data_len);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    CU_ASSERT_EQUAL(write_bytes(path, buf, 8 + padded + data_len), 0);
    free(buf);
}

/* Expects safetensors_open to fail with `code`, a message containing `needle`, and the path as `where`. */
static void expect_reject(const char *path, int code, const char *needle) {
    safetensors_file *f = NULL;
    rlhf_error err = {0};
    int rc = safetensors_open(&f, path, &err);
    CU_ASSERT_EQUAL(rc, code);
    CU_ASSERT_PTR_NULL(f);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, path));
    if (!strstr(err.msg, needle)) {
        printf("\n  expected '%s' in error: %s: %s\n", needle, err.where, err.msg);
        CU_FAIL("error message does not name the problem");
    }
    safetensors_close(&f);
}

model_config infer_test_config(int tie, int kv_heads) {
    model_config c = {0};
    c.dim = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = kv_heads;
    c.ffn_dim = 48;
    c.vocab_size = 300;
    c.max_seq_len = 40;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.tie_embeddings = tie;
    return c;
}

/* Random weights large enough that logits are O(1) and attention is far from uniform, so a wrong
 * position, mask or head mapping shows up; norm weights random around 1. */
model *infer_test_model(const model_config *c, uint64_t seed) {
    model *m = NULL;
    rlhf_error err = {0};
    if (model_create(&m, c, &err)) return NULL;
    model_init_random(m, seed);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed ^ 0xabcdef);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        float *w = m->params_mem + t->offset;
        for (size_t j = 0; j < t->numel; j++)
            w[j] = t->cols == 1 ? 0.5f + rlhf_rng_uniform(&rng) : w[j] * 12.0f;
    }
    return m;
}

/* ---------------------------------------------------------------- tokenizer */

static void test_tokenizer_round_trip(void) {
    tokenizer *tok = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 300, &err), 0);
    CU_ASSERT_STRING_EQUAL(tok->ops->kind, "bytes");
    CU_ASSERT_EQUAL(tok->bos_id, 256);
    CU_ASSERT_EQUAL(tok->eos_id, 257);
    CU_ASSERT_EQUAL(tok->pad_id, 258);
    char all[256 + 16];
    for (int i = 0; i < 256; i++) all[i] = (char)i; /* every byte, NUL included */
    memcpy(all + 256, "h\xc3\xa9llo \xe2\x82\xac", 10);
    size_t n_all = 266;
    int32_t *ids = NULL;
    int n = 0;
    CU_ASSERT_EQUAL_FATAL(tokenizer_encode(tok, all, n_all, 1, &ids, &n, &err), 0);
    CU_ASSERT_EQUAL(n, (int)n_all + 1);
    CU_ASSERT_EQUAL(ids[0], 256);
    for (int i = 0; i < 256; i++) CU_ASSERT_EQUAL(ids[1 + i], i);
    /* specials and unused ids decode to nothing */
    int32_t *with_specials = malloc((size_t)(n + 3) * sizeof *with_specials);
    memcpy(with_specials, ids, (size_t)n * sizeof *ids);
    with_specials[n] = 257;
    with_specials[n + 1] = 258;
    with_specials[n + 2] = 299;
    char *text = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(tokenizer_decode(tok, with_specials, n + 3, &text, &len, &err), 0);
    CU_ASSERT_EQUAL(len, n_all);
    CU_ASSERT_EQUAL(memcmp(text, all, n_all), 0);
    CU_ASSERT_EQUAL(text[len], 0);
    free(text);
    /* out-of-vocabulary id is an error naming the index */
    int32_t bad[2] = {65, 300};
    CU_ASSERT_EQUAL(tokenizer_decode(tok, bad, 2, &text, &len, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "index 1"));
    CU_ASSERT_PTR_NULL(text);
    /* empty text */
    free(ids);
    CU_ASSERT_EQUAL(tokenizer_encode(tok, "", 0, 0, &ids, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 0);
    free(ids);
    free(with_specials);
    tokenizer_destroy(&tok);
    CU_ASSERT_PTR_NULL(tok);
    /* a vocabulary without room for the specials is refused */
    CU_ASSERT_EQUAL(tokenizer_create_bytes(&tok, 258, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "259"));
    CU_ASSERT_PTR_NULL(tok);
}

/* ---------------------------------------------------------------- generic safetensors */

static void test_generic_round_trip(void) {
    float a[6] = {1.5f, -2.25f, NAN, INFINITY, -0.0f, 1e-38f};
    float b[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    float s[1] = {42.0f};
    safetensors_tensor ts[4] = {
        {.name = "layer.a", .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b", .ndim = 3, .shape = {1, 2, 2}, .data = b},
        {.name = "empty", .ndim = 2, .shape = {0, 5}, .data = NULL},
        {.name = "scalar", .ndim = 0, .data = s},
    };
    json_t *meta = json_pack("{s:s,s:s}", "kind", "test", "note", "h\xc3\xa9");
    const char *path = tmp_path("generic.safetensors");
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(safetensors_write(path, ts, 4, meta, &err), 0);
    /* no temp file left behind */
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%d", path, (int)getpid());
    CU_ASSERT_EQUAL(access(tmpname, F_OK), -1);
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, path, &err), 0);
    CU_ASSERT_EQUAL(f->n_tensors, 4);
    for (int i = 0; i < 4; i++) {
        const safetensors_tensor *t = safetensors_find(f, ts[i].name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_EQUAL(t->ndim, ts[i].ndim);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CU_ASSERT_EQUAL(t->shape[d], ts[i].shape[d]);
            numel *= (size_t)t->shape[d];
        }
        if (numel) CU_ASSERT_EQUAL(memcmp(t->data, ts[i].data, numel * sizeof(float)), 0); /* bit-exact, NaN too */
    }
    CU_ASSERT_PTR_NULL(safetensors_find(f, "missing"));
    CU_ASSERT_STRING_EQUAL(safetensors_meta(f, "kind"), "test");
    CU_ASSERT_STRING_EQUAL(safetensors_meta(f, "note"), "h\xc3\xa9");
    CU_ASSERT_PTR_NULL(safetensors_meta(f, "absent"));
    /* the in-memory encoding is byte-identical to the file */
    void *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(safetensors_encode(ts, 4, meta, &buf, &len, &err), 0);
    CU_ASSERT_EQUAL(len, f->size);
    CU_ASSERT_EQUAL(memcmp(buf, f->buf, len), 0);
    safetensors_file *g = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open_memory(&g, buf, len, "wire", &err), 0);
    CU_ASSERT_EQUAL(memcmp(safetensors_find(g, "b")->data, b, sizeof b), 0);
    safetensors_close(&g);
    free(buf);
    safetensors_close(&f);
    CU_ASSERT_PTR_NULL(f);
    /* writer refuses duplicates and non-string metadata */
    safetensors_tensor dup[2] = {ts[1], ts[1]};
    CU_ASSERT_EQUAL(safetensors_write(tmp_path("dup.safetensors"), dup, 2, NULL, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "duplicate"));
    json_t *badmeta = json_pack("{s:i}", "n", 1);
    CU_ASSERT_EQUAL(safetensors_write(tmp_path("badmeta.safetensors"), ts, 1, badmeta, &err), RLHF_EINVAL);
    CU_ASSERT_EQUAL(access(tmp_path("badmeta.safetensors"), F_OK), -1);
    json_decref(badmeta);
    json_decref(meta);
}

/* A data section whose header length is not a multiple of 4 (other writers) still loads aligned. */
static void test_generic_unaligned_header(void) {
    float d[3] = {1.0f, 2.0f, 3.0f};
    const char *hdr = "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
    size_t hl = strlen(hdr); /* 55: odd */
    unsigned char *buf = malloc(8 + hl + sizeof d);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memcpy(buf + 8 + hl, d, sizeof d);
    rlhf_error err = {0};
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open_memory(&f, buf, 8 + hl + sizeof d, "odd", &err), 0);
    const safetensors_tensor *t = safetensors_find(f, "x");
    CU_ASSERT_EQUAL(((uintptr_t)t->data) % 4, 0);
    CU_ASSERT_EQUAL(memcmp(t->data, d, sizeof d), 0);
    safetensors_close(&f);
    free(buf);
}

static void test_reject_truncated(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 1);
    const char *path = tmp_path("full.safetensors");
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_save(m, path, &err), 0);
    char *data;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(path, &data, &len, &err), 0);
    const char *cut = tmp_path("cut.safetensors");
    size_t cuts[] = {0, 5, 8, 8 + 20, len / 2, len - 4, len - 1};
    const char *needles[] = {"too short", "too short", "exceeds", "exceeds", "beyond", "beyond", "beyond"};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CU_ASSERT_EQUAL(write_bytes(cut, data, cuts[i]), 0);
        expect_reject(cut, RLHF_ECORRUPT, needles[i]);
        model *m2 = NULL;
        CU_ASSERT_EQUAL(model_load(&m2, cut, NULL, &err), RLHF_ECORRUPT);
        CU_ASSERT_PTR_NULL(m2);
    }
    /* trailing garbage is as wrong as missing bytes */
    char *longer = malloc(len + 4);
    memcpy(longer, data, len);
    memset(longer + len, 0, 4);
    CU_ASSERT_EQUAL(write_bytes(cut, longer, len + 4), 0);
    expect_reject(cut, RLHF_ECORRUPT, "trailing");
    free(longer);
    free(data);
    model_destroy(&m);
    /* a missing file */
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL(safetensors_open(&f, tmp_path("nope.safetensors"), &err), RLHF_EIO);
}

static void test_reject_corrupt_header(void) {
    float d[2] = {1, 2};
    const char *p = tmp_path("corrupt.safetensors");
    write_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", d, 8); /* unterminated */
    expect_reject(p, RLHF_ECORRUPT, "not valid JSON");
    write_raw(p, "[1,2,3]", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "not a JSON object");
    write_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "not valid JSON"); /* duplicate key */
    write_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "data_offsets");
    write_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "unknown header key");
    write_raw(p, "{\"__metadata__\":{\"a\":1},\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "__metadata__");
    write_raw(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "shape[0]");
    /* a header length field that is absurd */
    unsigned char big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    CU_ASSERT_EQUAL(write_bytes(p, big, sizeof big), 0);
    expect_reject(p, RLHF_ECORRUPT, "exceeds");
}

static void test_reject_wrong_dtype(void) {
    uint16_t h[2] = {0x3c00, 0x4000};
    const char *p = tmp_path("f16.safetensors");
    write_raw(p, "{\"x\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[0,4]}}", h, 4);
    expect_reject(p, RLHF_EUNSUPPORTED, "tensor 'x' has dtype I16");
    write_raw(p, "{\"x\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,4]}}", h, 4);
    expect_reject(p, RLHF_ECORRUPT, "unknown dtype 'Q4'");
}

static void test_reject_bad_offsets(void) {
    float d[4] = {1, 2, 3, 4};
    const char *p = tmp_path("offsets.safetensors");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", d, 16);
    expect_reject(p, RLHF_ECORRUPT, "overlaps");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", d, 16);
    expect_reject(p, RLHF_ECORRUPT, "gap");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "needs 12 bytes");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "invalid data_offsets");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "beyond");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d, 8);
    expect_reject(p, RLHF_ECORRUPT, "trailing");
}

/* Shapes whose element count overflows 64 bits wrapped to 0 and passed as empty tensors; each is
 * refused naming the tensor, while a real empty tensor (a zero dimension) still loads. */
static void test_reject_overflowing_shape(void) {
    const char *p = tmp_path("huge.safetensors");
    const char *shapes[] = {"[4294967296,4294967296]", "[1099511627776,16777216]", "[8589934592,2147483648]",
                            "[65536,65536,65536,65536]", "[1099511627776,2]"};
    char hdr[512];
    for (int i = 0; i < 5; i++) {
        snprintf(hdr, sizeof hdr, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"huge\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[4,4]}}", shapes[i]);
        float one = 1;
        write_raw(p, hdr, &one, 4);
        expect_reject(p, RLHF_ECORRUPT, "tensor 'huge' shape [");
        expect_reject(p, RLHF_ECORRUPT, "more than 2^40 elements");
    }
    float one = 1;
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"empty\":{\"dtype\":\"F32\",\"shape\":[1099511627776,0],\"data_offsets\":[4,4]}}", &one, 4);
    safetensors_file *f = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(safetensors_open(&f, p, &err), 0);
    safetensors_close(&f);
}

/* F32 NaN / Inf in a model checkpoint (hand-written bytes): model_load refuses naming the tensor. */
static void test_reject_non_finite_f32(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 3);
    const char *p = tmp_path("finite.safetensors");
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_save(m, p, &err), 0);
    model_destroy(&m);
    char *data;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(p, &data, &len, &err), 0);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)(unsigned char)data[i] << (8 * i);
    const char *name = "model.layers.1.self_attn.k_proj.weight";
    json_error_t je;
    json_t *h = json_loadb(data + 8, hl, 0, &je);
    CU_ASSERT_FATAL(h != NULL);
    json_t *t = json_object_get(h, name);
    CU_ASSERT_FATAL(t != NULL);
    size_t begin = (size_t)json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    json_decref(h);
    const float bad[] = {NAN, INFINITY, -INFINITY};
    const size_t where[] = {0, 7, 3};
    for (int i = 0; i < 3; i++) {
        char *copy = malloc(len);
        memcpy(copy, data, len);
        memcpy(copy + 8 + hl + begin + 4 * where[i], &bad[i], 4);
        const char *q = tmp_path("nonfinite.safetensors");
        CU_ASSERT_EQUAL(write_bytes(q, copy, len), 0);
        free(copy);
        model *m2 = NULL;
        rlhf_error_clear(&err);
        CU_ASSERT_EQUAL(model_load(&m2, q, NULL, &err), RLHF_ECORRUPT);
        CU_ASSERT_PTR_NULL(m2);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "nonfinite.safetensors"));
        char want[200];
        snprintf(want, sizeof want, "tensor '%s' (F32) holds a non-finite value", name);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want));
        snprintf(want, sizeof want, "at flat index %zu", where[i]);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want));
    }
    model *ok = NULL;
    CU_ASSERT_EQUAL(model_load(&ok, p, NULL, &err), 0);
    model_destroy(&ok);
    free(data);
}

/* ---------------------------------------------------------------- model checkpoints */

static void check_model_round_trip(int tie, int kvh) {
    model_config c = infer_test_config(tie, kvh);
    model *m = infer_test_model(&c, 7);
    m->version = 12345678901ull;
    const char *p = tmp_path("model.safetensors");
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_save(m, p, &err), 0);
    model *m2 = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m2, p, &c, &err), 0);
    c.head_dim = model_head_dim(&c);
    CU_ASSERT_EQUAL(memcmp(&m2->cfg, &c, sizeof c), 0);
    CU_ASSERT_EQUAL(m2->n_params, m->n_params);
    CU_ASSERT_EQUAL(memcmp(m2->params_mem, m->params_mem, m->n_params * sizeof(float)), 0);
    CU_ASSERT_EQUAL(m2->version, m->version);
    /* HF names, shapes and the tied head's absence */
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_EQUAL(f->n_tensors, 1 + 9 * c.n_layers + 1 + !tie);
    const safetensors_tensor *k = safetensors_find(f, "model.layers.1.self_attn.k_proj.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(k->shape[0], kvh * (c.dim / c.n_heads));
    CU_ASSERT_EQUAL(k->shape[1], c.dim);
    CU_ASSERT_EQUAL(memcmp(k->data, m->p.wk + (size_t)kvh * 8 * c.dim, sizeof(float) * 8 * kvh * c.dim), 0);
    const safetensors_tensor *down = safetensors_find(f, "model.layers.0.mlp.down_proj.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(down);
    CU_ASSERT_EQUAL(down->shape[0], c.dim);
    CU_ASSERT_EQUAL(down->shape[1], c.ffn_dim);
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "model.norm.weight"));
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "model.layers.1.post_attention_layernorm.weight"));
    CU_ASSERT_EQUAL(safetensors_find(f, "lm_head.weight") == NULL, tie);
    CU_ASSERT_STRING_EQUAL(safetensors_meta(f, "format"), "pt");
    CU_ASSERT_STRING_EQUAL(safetensors_meta(f, MODEL_META_POLICY_VERSION), "12345678901");
    safetensors_close(&f);
    /* saving the loaded model gives the same bytes */
    const char *p2 = tmp_path("model2.safetensors");
    CU_ASSERT_EQUAL(model_save(m2, p2, &err), 0);
    char *a, *b;
    size_t la, lb;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(p, &a, &la, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(p2, &b, &lb, &err), 0);
    CU_ASSERT_EQUAL(la, lb);
    CU_ASSERT_EQUAL(memcmp(a, b, la), 0);
    /* and the in-memory encoding too */
    void *buf;
    size_t lbuf;
    CU_ASSERT_EQUAL_FATAL(model_encode(m, &buf, &lbuf, &err), 0);
    CU_ASSERT_EQUAL(lbuf, la);
    CU_ASSERT_EQUAL(memcmp(buf, a, la), 0);
    free(buf);
    free(a);
    free(b);
    /* load_into an existing model */
    model *m3 = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&m3, &c, &err), 0);
    CU_ASSERT_EQUAL(model_load_into(m3, p, &err), 0);
    CU_ASSERT_EQUAL(memcmp(m3->params_mem, m->params_mem, m->n_params * sizeof(float)), 0);
    CU_ASSERT_EQUAL(m3->version, m->version);
    model_destroy(&m3);
    model_destroy(&m2);
    model_destroy(&m);
}

static void test_model_round_trip(void) {
    check_model_round_trip(0, 4);
    check_model_round_trip(1, 2); /* tied head, GQA */
}

static void test_model_config_mismatch(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 3);
    const char *p = tmp_path("cfg.safetensors");
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_save(m, p, &err), 0);
    model_config other = c;
    other.n_layers = 3;
    model *m2 = NULL;
    CU_ASSERT_EQUAL(model_load(&m2, p, &other, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NULL(m2);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'n_layers'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, p));
    other = c;
    other.rope_theta = 500000.0f;
    CU_ASSERT_EQUAL(model_load(&m2, p, &other, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'rope_theta'"));
    other = c;
    other.tie_embeddings = 1;
    model *m3 = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&m3, &other, &err), 0);
    CU_ASSERT_EQUAL(model_load_into(m3, p, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'tie_embeddings'"));
    model_destroy(&m3);
    model_destroy(&m);
}

/* Model-level checks on files that are valid safetensors but wrong checkpoints. */
static void test_model_wrong_shape_and_names(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 5);
    rlhf_error err = {0};
    void *buf;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(model_encode(m, &buf, &len, &err), 0);
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open_memory(&f, buf, len, "ckpt", &err), 0);
    free(buf);
    /* rebuild the tensor list with one shape transposed (same byte count) */
    safetensors_tensor *ts = malloc((size_t)f->n_tensors * sizeof *ts);
    memcpy(ts, f->tensors, (size_t)f->n_tensors * sizeof *ts);
    int wq = -1;
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(ts[i].name, "model.layers.1.mlp.up_proj.weight")) wq = i;
    CU_ASSERT_FATAL(wq >= 0);
    int64_t r0 = ts[wq].shape[0];
    ts[wq].shape[0] = ts[wq].shape[1];
    ts[wq].shape[1] = r0;
    const char *p = tmp_path("shape.safetensors");
    CU_ASSERT_EQUAL_FATAL(safetensors_write(p, ts, f->n_tensors, f->metadata, &err), 0);
    model *m2 = NULL;
    CU_ASSERT_EQUAL(model_load(&m2, p, NULL, &err), RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "model.layers.1.mlp.up_proj.weight"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "shape [32, 48], expected [48, 32]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, p));
    ts[wq].shape[1] = ts[wq].shape[0];
    ts[wq].shape[0] = r0;
    /* a missing tensor */
    CU_ASSERT_EQUAL_FATAL(safetensors_write(p, ts, f->n_tensors - 1, f->metadata, &err), 0);
    CU_ASSERT_EQUAL(model_load(&m2, p, NULL, &err), RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "missing tensor"));
    /* an extra tensor */
    safetensors_tensor *more = malloc((size_t)(f->n_tensors + 1) * sizeof *more);
    memcpy(more, ts, (size_t)f->n_tensors * sizeof *ts);
    more[f->n_tensors] = ts[1];
    more[f->n_tensors].name = "model.layers.9.extra";
    CU_ASSERT_EQUAL_FATAL(safetensors_write(p, more, f->n_tensors + 1, f->metadata, &err), 0);
    CU_ASSERT_EQUAL(model_load(&m2, p, NULL, &err), RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "unexpected tensor 'model.layers.9.extra'"));
    /* no config in the metadata */
    CU_ASSERT_EQUAL_FATAL(safetensors_write(p, ts, f->n_tensors, NULL, &err), 0);
    CU_ASSERT_EQUAL(model_load(&m2, p, NULL, &err), RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, MODEL_META_CONFIG));
    /* a config with an unknown key names it */
    json_t *meta = json_pack("{s:s}", MODEL_META_CONFIG, "{\"dim\":32,\"n_layer\":2}");
    CU_ASSERT_EQUAL_FATAL(safetensors_write(p, ts, f->n_tensors, meta, &err), 0);
    CU_ASSERT_EQUAL(model_load(&m2, p, NULL, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "n_layer"));
    json_decref(meta);
    CU_ASSERT_PTR_NULL(m2);
    free(more);
    free(ts);
    safetensors_close(&f);
    model_destroy(&m);
}

/* The files are readable by an independent reader: tests/model_infer/st_read.py (json + numpy). */
static void test_python_reader(void) {
    if (access("/usr/bin/python3", X_OK) != 0) {
        CU_FAIL("/usr/bin/python3 is missing (scripts/install-deps.sh installs it)");
        return;
    }
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 11);
    m->version = 77;
    const char *p = tmp_path("py.safetensors");
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_save(m, p, &err), 0);
    char cmd[1024];
    const char *out = tmp_path("py.json");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/model_infer/st_read.py %s > %s", RLHF_SOURCE_ROOT, p, out);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    char *js;
    size_t len;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(out, &js, &len, &err), 0);
    json_error_t jerr;
    json_t *root = json_loads(js, 0, &jerr);
    free(js);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root);
    json_t *meta = json_object_get(root, "metadata");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(meta, "policy_version")), "77");
    /* Python parsed the config string too */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(root, "config"), "ffn_dim")), c.ffn_dim);
    json_t *tensors = json_object_get(root, "tensors");
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_EQUAL(json_object_size(tensors), (size_t)f->n_tensors);
    for (int i = 0; i < f->n_tensors; i++) {
        const safetensors_tensor *t = &f->tensors[i];
        json_t *pt = json_object_get(tensors, t->name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(pt);
        json_t *shape = json_object_get(pt, "shape");
        CU_ASSERT_EQUAL(json_array_size(shape), (size_t)t->ndim);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CU_ASSERT_EQUAL(json_integer_value(json_array_get(shape, d)), t->shape[d]);
            numel *= (size_t)t->shape[d];
        }
        /* sum in double and the first/last values as Python saw them (repr of float64 is exact) */
        double sum = 0.0;
        for (size_t j = 0; j < numel; j++) sum += t->data[j];
        double psum = json_real_value(json_object_get(pt, "sum"));
        CU_ASSERT(fabs(psum - sum) <= 1e-9 * (1.0 + fabs(sum)));
        CU_ASSERT_EQUAL(json_real_value(json_object_get(pt, "first")), (double)t->data[0]);
        CU_ASSERT_EQUAL(json_real_value(json_object_get(pt, "last")), (double)t->data[numel - 1]);
    }
    /* the values land where model.h says: embed row 3 equals Python's row 3 */
    json_t *row = json_object_get(json_object_get(tensors, "model.embed_tokens.weight"), "row3");
    CU_ASSERT_EQUAL_FATAL(json_array_size(row), (size_t)c.dim);
    for (int j = 0; j < c.dim; j++)
        CU_ASSERT_EQUAL(json_real_value(json_array_get(row, j)), (double)m->p.embed[3 * c.dim + j]);
    safetensors_close(&f);
    json_decref(root);
    model_destroy(&m);
}

void infer_register_checkpoint(void) {
    CU_pSuite s = CU_add_suite("tokenizer", NULL, NULL);
    CU_add_test(s, "byte-level round trip and specials", test_tokenizer_round_trip);
    s = CU_add_suite("safetensors", NULL, NULL);
    CU_add_test(s, "generic round trip bit-exact", test_generic_round_trip);
    CU_add_test(s, "unaligned data section", test_generic_unaligned_header);
    CU_add_test(s, "truncated files rejected", test_reject_truncated);
    CU_add_test(s, "corrupt headers rejected", test_reject_corrupt_header);
    CU_add_test(s, "wrong dtype rejected", test_reject_wrong_dtype);
    CU_add_test(s, "bad offsets rejected", test_reject_bad_offsets);
    CU_add_test(s, "shapes whose size overflows rejected naming the tensor", test_reject_overflowing_shape);
    CU_add_test(s, "F32 NaN/Inf weights rejected at load naming the tensor", test_reject_non_finite_f32);
    CU_add_test(s, "model round trip bit-exact (untied, tied+GQA)", test_model_round_trip);
    CU_add_test(s, "config mismatch names the key", test_model_config_mismatch);
    CU_add_test(s, "wrong shape / missing / extra tensors", test_model_wrong_shape_and_names);
    CU_add_test(s, "python json+numpy reader agrees", test_python_reader);
}
