/* model/safetensors.c — safetensors files: a generic F32 reader/writer, and model checkpoints
 * with Hugging Face Llama tensor names.
 *
 * Readers trust nothing: every length, offset, dtype and shape is checked against the bytes
 * actually present before a tensor pointer is handed out, and every error names the file. */
#include "model/model.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* A header larger than this is treated as corrupt rather than trusted with an allocation. */
#define SAFETENSORS_MAX_HEADER (64u << 20)

/* ---------------------------------------------------------------- writing */

static int64_t tensor_numel(const safetensors_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* Builds the padded header (JSON, spaces to a multiple of 8) and the data-section size. */
static int build_header(const safetensors_tensor *ts, int n, const json_t *metadata, char **hdr_out, size_t *hdr_len,
                        size_t *data_len, rlhf_error *err) {
    *hdr_out = NULL;
    if (n < 0) return RLHF_FAIL(err, RLHF_EINVAL, "negative tensor count");
    if (metadata) {
        if (!json_is_object(metadata)) return RLHF_FAIL(err, RLHF_EINVAL, "safetensors metadata must be an object");
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)metadata, k, v) {
            if (!json_is_string(v))
                return RLHF_FAIL(err, RLHF_EINVAL, "safetensors metadata value '%s' must be a string", k);
        }
    }
    json_t *root = json_object();
    if (!root) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    size_t off = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const safetensors_tensor *t = &ts[i];
        if (!t->name || !t->name[0] || !strcmp(t->name, "__metadata__")) {
            rc = RLHF_FAIL(err, RLHF_EINVAL, "tensor %d has an empty or reserved name", i);
            break;
        }
        if (json_object_get(root, t->name)) {
            rc = RLHF_FAIL(err, RLHF_EINVAL, "duplicate tensor name '%s'", t->name);
            break;
        }
        if (t->ndim < 0 || t->ndim > SAFETENSORS_MAX_DIMS) {
            rc = RLHF_FAIL(err, RLHF_EINVAL, "tensor '%s' has %d dims (max %d)", t->name, t->ndim, SAFETENSORS_MAX_DIMS);
            break;
        }
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) rc = RLHF_FAIL(err, RLHF_EINVAL, "tensor '%s' has a negative dimension", t->name);
            json_array_append_new(shape, json_integer(t->shape[d]));
        }
        size_t bytes = (size_t)tensor_numel(t) * sizeof(float);
        if (!rc && bytes && !t->data) rc = RLHF_FAIL(err, RLHF_EINVAL, "tensor '%s' has no data", t->name);
        json_t *ent = json_pack("{s:s,s:o,s:[I,I]}", "dtype", "F32", "shape", shape, "data_offsets", (json_int_t)off,
                                (json_int_t)(off + bytes));
        if (!ent || json_object_set_new(root, t->name, ent)) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        off += bytes;
    }
    if (!rc && metadata && json_object_set(root, "__metadata__", (json_t *)metadata))
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    char *js = rc ? NULL : json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (rc) return rc;
    if (!js) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot serialise safetensors header");
    size_t len = strlen(js), padded = (len + 7) & ~(size_t)7;
    char *hdr = realloc(js, padded + 1);
    if (!hdr) {
        free(js);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    memset(hdr + len, ' ', padded - len);
    hdr[padded] = 0;
    *hdr_out = hdr;
    *hdr_len = padded;
    *data_len = off;
    return 0;
}

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int safetensors_encode(const safetensors_tensor *ts, int n, const json_t *metadata, void **buf_out, size_t *len_out,
                       rlhf_error *err) {
    *buf_out = NULL;
    *len_out = 0;
    char *hdr;
    size_t hlen, dlen;
    int rc = build_header(ts, n, metadata, &hdr, &hlen, &dlen, err);
    if (rc) return rc;
    unsigned char *buf = malloc(8 + hlen + dlen);
    if (!buf) {
        free(hdr);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate %zu bytes for safetensors", 8 + hlen + dlen);
    }
    put_le64(buf, hlen);
    memcpy(buf + 8, hdr, hlen);
    free(hdr);
    size_t off = 8 + hlen;
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)tensor_numel(&ts[i]) * sizeof(float);
        if (bytes) memcpy(buf + off, ts[i].data, bytes);
        off += bytes;
    }
    *buf_out = buf;
    *len_out = off;
    return 0;
}

int safetensors_write(const char *path, const safetensors_tensor *ts, int n, const json_t *metadata,
                      rlhf_error *err) {
    char *hdr;
    size_t hlen, dlen;
    int rc = build_header(ts, n, metadata, &hdr, &hlen, &dlen, err);
    if (rc) return rc;
    rlhf_atomic_file af;
    if ((rc = rlhf_atomic_open(&af, path, err))) {
        free(hdr);
        return rc;
    }
    unsigned char lenb[8];
    put_le64(lenb, hlen);
    int ok = fwrite(lenb, 1, 8, af.fp) == 8 && fwrite(hdr, 1, hlen, af.fp) == hlen;
    free(hdr);
    for (int i = 0; i < n && ok; i++) {
        size_t numel = (size_t)tensor_numel(&ts[i]);
        if (numel) ok = fwrite(ts[i].data, sizeof(float), numel, af.fp) == numel;
    }
    if (!ok) {
        int e = errno;
        rlhf_atomic_abort(&af);
        return rlhf_error_set(err, RLHF_EIO, path, "write failed: %s", strerror(e));
    }
    return rlhf_atomic_commit(&af, err);
}

/* ---------------------------------------------------------------- reading */

static uint64_t get_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static const char *const known_dtypes[] = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
                                           "I32",  "U32", "F32", "F64", "I64", "U64", NULL};

typedef struct parsed_entry {
    const char *name; /* into the header JSON */
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    uint64_t begin, end;
} parsed_entry;

static int cmp_begin(const void *a, const void *b) {
    const parsed_entry *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int parse_entry(parsed_entry *pe, const char *name, json_t *v, uint64_t data_len, const char *src,
                       rlhf_error *err) {
    pe->name = name;
    if (!json_is_object(v)) return rlhf_error_set(err, RLHF_ECORRUPT, src, "header entry '%s' is not an object", name);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' has unknown header key '%s'", name, k);
    }
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"), *of = json_object_get(v, "data_offsets");
    if (!json_is_string(dt)) return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' has no string 'dtype'", name);
    const char *dts = json_string_value(dt);
    int known = 0;
    for (int i = 0; known_dtypes[i]; i++) known |= !strcmp(dts, known_dtypes[i]);
    if (!known) return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' has unknown dtype '%s'", name, dts);
    if (strcmp(dts, "F32"))
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, src, "tensor '%s' has dtype %s; only F32 is supported", name, dts);
    if (!json_is_array(sh) || json_array_size(sh) > SAFETENSORS_MAX_DIMS)
        return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' has no valid 'shape' array (at most %d dims)",
                              name, SAFETENSORS_MAX_DIMS);
    pe->ndim = (int)json_array_size(sh);
    uint64_t numel = 1;
    for (int d = 0; d < pe->ndim; d++) {
        json_t *e = json_array_get(sh, d);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > ((json_int_t)1 << 40))
            return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' shape[%d] is not a valid dimension", name, d);
        pe->shape[d] = json_integer_value(e);
        numel *= (uint64_t)pe->shape[d];
        if (numel > ((uint64_t)1 << 40))
            return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' shape is impossibly large", name);
    }
    if (!json_is_array(of) || json_array_size(of) != 2 || !json_is_integer(json_array_get(of, 0)) ||
        !json_is_integer(json_array_get(of, 1)))
        return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' has no valid 'data_offsets' [begin, end]", name);
    json_int_t b = json_integer_value(json_array_get(of, 0)), e = json_integer_value(json_array_get(of, 1));
    if (b < 0 || e < b)
        return rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' has invalid data_offsets [%lld, %lld]", name,
                              (long long)b, (long long)e);
    if ((uint64_t)e > data_len)
        return rlhf_error_set(err, RLHF_ECORRUPT, src,
                              "tensor '%s' data_offsets end %lld is beyond the %" PRIu64
                              "-byte data section (truncated file?)",
                              name, (long long)e, data_len);
    if ((uint64_t)(e - b) != numel * sizeof(float))
        return rlhf_error_set(err, RLHF_ECORRUPT, src,
                              "tensor '%s' shape needs %" PRIu64 " bytes but data_offsets span %lld bytes", name,
                              numel * (uint64_t)sizeof(float), (long long)(e - b));
    pe->begin = (uint64_t)b;
    pe->end = (uint64_t)e;
    return 0;
}

/* Takes ownership of buf (malloc'd, size bytes). */
static int parse_owned(safetensors_file **out, void *buf, size_t size, const char *src, rlhf_error *err) {
    *out = NULL;
    int rc = 0;
    json_t *hdr = NULL;
    parsed_entry *ents = NULL;
    safetensors_file *f = NULL;
    const unsigned char *p = buf;
    if (size < 8) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "file is %zu bytes, too short for the 8-byte header length", size);
        goto fail;
    }
    uint64_t hlen = get_le64(p);
    if (hlen > size - 8) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src,
                            "header length %" PRIu64 " exceeds the %zu bytes after it (truncated or corrupt file)", hlen,
                            size - 8);
        goto fail;
    }
    if (hlen > SAFETENSORS_MAX_HEADER || hlen < 2) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "implausible header length %" PRIu64, hlen);
        goto fail;
    }
    if (memchr(p + 8, 0, hlen)) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "header contains a NUL byte");
        goto fail;
    }
    json_error_t jerr;
    hdr = json_loadb((const char *)p + 8, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!hdr) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "header is not valid JSON: %s (column %d)", jerr.text, jerr.column);
        goto fail;
    }
    if (!json_is_object(hdr)) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "header is not a JSON object");
        goto fail;
    }
    uint64_t data_len = size - 8 - hlen;
    size_t n_ent = json_object_size(hdr);
    json_t *meta = json_object_get(hdr, "__metadata__");
    if (meta) {
        n_ent--;
        if (!json_is_object(meta)) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "__metadata__ is not an object");
            goto fail;
        }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "__metadata__ value '%s' is not a string", k);
                goto fail;
            }
        }
    }
    ents = calloc(n_ent ? n_ent : 1, sizeof *ents);
    if (!ents) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach(hdr, k, v) {
        if (!strcmp(k, "__metadata__")) continue;
        if ((rc = parse_entry(&ents[i++], k, v, data_len, src, err))) goto fail;
    }
    qsort(ents, n_ent, sizeof *ents, cmp_begin);
    uint64_t at = 0;
    for (i = 0; i < n_ent; i++) {
        if (ents[i].begin < at) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' data overlaps tensor '%s'", ents[i].name,
                                ents[i - 1].name);
            goto fail;
        }
        if (ents[i].begin > at) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "gap in the data section before tensor '%s' (bytes %" PRIu64
                                "..%" PRIu64 " unused)", ents[i].name, at, ents[i].begin);
            goto fail;
        }
        at = ents[i].end;
    }
    if (at != data_len) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, src,
                            "data section is %" PRIu64 " bytes but the tensors cover %" PRIu64 " (trailing bytes)",
                            data_len, at);
        goto fail;
    }

    f = calloc(1, sizeof *f);
    if (!f || !(f->tensors = calloc(n_ent ? n_ent : 1, sizeof *f->tensors))) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    snprintf(f->source, sizeof f->source, "%s", src);
    /* The data section must be float-aligned; another writer may pad the header differently. */
    unsigned char *data = (unsigned char *)buf + 8 + hlen;
    if (((uintptr_t)data & 3) != 0) {
        unsigned char *nb = malloc(size + 8);
        if (!nb) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            goto fail;
        }
        /* keep header bytes first, put the data at an aligned offset */
        size_t aligned = (8 + hlen + 7) & ~(size_t)7;
        memcpy(nb, buf, 8 + hlen);
        memcpy(nb + aligned, data, data_len);
        free(buf);
        buf = nb;
        data = nb + aligned;
    }
    f->buf = buf;
    f->size = size;
    buf = NULL;
    f->n_tensors = (int)n_ent;
    for (i = 0; i < n_ent; i++) {
        safetensors_tensor *t = &f->tensors[i];
        t->name = strdup(ents[i].name);
        if (!t->name) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            goto fail;
        }
        t->ndim = ents[i].ndim;
        memcpy(t->shape, ents[i].shape, sizeof t->shape);
        t->data = (const float *)(data + ents[i].begin);
    }
    f->metadata = meta ? json_deep_copy(meta) : json_object();
    if (!f->metadata) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    free(ents);
    json_decref(hdr);
    *out = f;
    return 0;
fail:
    free(ents);
    json_decref(hdr);
    free(buf);
    safetensors_close(&f);
    return rc;
}

int safetensors_open(safetensors_file **out, const char *path, rlhf_error *err) {
    *out = NULL;
    char *data;
    size_t len;
    int rc = rlhf_read_file(path, &data, &len, err);
    if (rc) return rc;
    return parse_owned(out, data, len, path, err);
}

int safetensors_open_memory(safetensors_file **out, const void *buf, size_t len, const char *source, rlhf_error *err) {
    *out = NULL;
    void *copy = malloc(len ? len : 1);
    if (!copy) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %zu bytes", len);
    memcpy(copy, buf, len);
    return parse_owned(out, copy, len, source ? source : "(memory)", err);
}

void safetensors_close(safetensors_file **pf) {
    if (!pf || !*pf) return;
    safetensors_file *f = *pf;
    if (f->tensors)
        for (int i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    json_decref(f->metadata);
    free(f->buf);
    free(f);
    *pf = NULL;
}

const safetensors_tensor *safetensors_find(const safetensors_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char *safetensors_meta(const safetensors_file *f, const char *key) {
    return json_string_value(json_object_get(f->metadata, key));
}

/* ---------------------------------------------------------------- model checkpoints */

enum { HF_NAME_MAX = 96 };

/* One checkpoint tensor: HF name, shape and where it lives in the parameter buffer. */
typedef struct ckpt_entry {
    char name[HF_NAME_MAX];
    int ndim;
    int64_t shape[2];
    size_t offset; /* floats from params_mem */
} ckpt_entry;

/* The checkpoint's tensors in file order: embed, then per layer (in model_params order), then the
 * final norm and lm_head; names and shapes come from the model's tensor table. */
static int ckpt_layout(const model *m, ckpt_entry **out, int *n_out) {
    const model_config *c = &m->cfg;
    int L = c->n_layers, n = 0;
    for (int t = 0; t < m->n_tensors; t++) n += m->tensors[t].per_layer ? L : 1;
    ckpt_entry *e = calloc((size_t)n, sizeof *e);
    if (!e) return RLHF_ENOMEM;
    int k = 0;
    for (int pass = 0; pass < 3; pass++) { /* tensors before the layers, the layers, after them */
        for (int layer = 0; layer < (pass == 1 ? L : 1); layer++)
            for (int t = 0; t < m->n_tensors; t++) {
                const model_tensor_info *ti = &m->tensors[t];
                int before = ti->id == MODEL_T_EMBED;
                if (pass == 1 ? !ti->per_layer : (ti->per_layer || before != (pass == 0))) continue;
                snprintf(e[k].name, HF_NAME_MAX, ti->hf_name, layer);
                e[k].ndim = ti->cols > 1 ? 2 : 1;
                e[k].shape[0] = ti->rows;
                e[k].shape[1] = ti->cols > 1 ? ti->cols : 0;
                e[k].offset = ti->offset + (ti->per_layer ? (size_t)layer * ti->rows * ti->cols : 0);
                k++;
            }
    }
    *out = e;
    *n_out = k;
    return 0;
}

static int model_tensors(const model *m, safetensors_tensor **ts_out, int *n_out, json_t **meta_out, rlhf_error *err) {
    ckpt_entry *e;
    int n;
    if (ckpt_layout(m, &e, &n)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    safetensors_tensor *ts = calloc((size_t)n, sizeof *ts);
    json_t *cfg = model_config_to_json(&m->cfg);
    char *cfg_s = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(cfg);
    char ver[32];
    snprintf(ver, sizeof ver, "%" PRIu64, m->version);
    json_t *meta = cfg_s ? json_pack("{s:s,s:s,s:s}", "format", "pt", MODEL_META_CONFIG, cfg_s,
                                     MODEL_META_POLICY_VERSION, ver)
                         : NULL;
    free(cfg_s);
    if (!ts || !meta) {
        free(ts);
        free(e);
        json_decref(meta);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        /* names must outlive the call: keep them in the entry array, freed by the caller via ts[0].name */
        ts[i].name = e[i].name;
        ts[i].ndim = e[i].ndim;
        ts[i].shape[0] = e[i].shape[0];
        ts[i].shape[1] = e[i].shape[1];
        ts[i].data = m->params_mem + e[i].offset;
    }
    *ts_out = ts;
    *n_out = n;
    *meta_out = meta;
    return 0;
}

/* ts[0].name is the start of the ckpt_entry array (name is its first field). */
static void model_tensors_free(safetensors_tensor *ts, json_t *meta) {
    if (ts) free((void *)ts[0].name);
    free(ts);
    json_decref(meta);
}

int model_save(const model *m, const char *path, rlhf_error *err) {
    safetensors_tensor *ts;
    int n;
    json_t *meta;
    int rc = model_tensors(m, &ts, &n, &meta, err);
    if (rc) return rc;
    rc = safetensors_write(path, ts, n, meta, err);
    model_tensors_free(ts, meta);
    return rc;
}

int model_encode(const model *m, void **buf_out, size_t *len_out, rlhf_error *err) {
    safetensors_tensor *ts;
    int n;
    json_t *meta;
    int rc = model_tensors(m, &ts, &n, &meta, err);
    if (rc) return rc;
    rc = safetensors_encode(ts, n, meta, buf_out, len_out, err);
    model_tensors_free(ts, meta);
    return rc;
}

int model_config_compare(const model_config *got, const model_config *exp, const char *where, rlhf_error *err) {
#define CMP_INT(f)                                                                                              \
    if (got->f != exp->f)                                                                                       \
        return rlhf_error_set(err, RLHF_EINVAL, where, "model config key '" #f "' is %d, expected %d", got->f, \
                              exp->f);
    CMP_INT(dim)
    CMP_INT(n_layers)
    CMP_INT(n_heads)
    CMP_INT(n_kv_heads)
    CMP_INT(ffn_dim)
    CMP_INT(vocab_size)
    CMP_INT(max_seq_len)
    if (got->rope_theta != exp->rope_theta)
        return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'rope_theta' is %g, expected %g",
                              (double)got->rope_theta, (double)exp->rope_theta);
    if (got->norm_eps != exp->norm_eps)
        return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'norm_eps' is %g, expected %g",
                              (double)got->norm_eps, (double)exp->norm_eps);
    if (!got->tie_embeddings != !exp->tie_embeddings)
        return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'tie_embeddings' is %s, expected %s",
                              got->tie_embeddings ? "true" : "false", exp->tie_embeddings ? "true" : "false");
    if (model_head_dim(got) != model_head_dim(exp))
        return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'head_dim' is %d, expected %d",
                              model_head_dim(got), model_head_dim(exp));
    CMP_INT(attn_bias)
    CMP_INT(qk_norm)
    if (got->rope_scaling != exp->rope_scaling || got->rope_factor != exp->rope_factor ||
        got->rope_low_freq_factor != exp->rope_low_freq_factor ||
        got->rope_high_freq_factor != exp->rope_high_freq_factor ||
        got->rope_original_max_pos != exp->rope_original_max_pos)
        return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'rope_scaling' differs");
#undef CMP_INT
    return 0;
}

static int read_config(const safetensors_file *f, model_config *cfg, uint64_t *version, rlhf_error *err) {
    const char *s = safetensors_meta(f, MODEL_META_CONFIG);
    if (!s)
        return rlhf_error_set(err, RLHF_ECORRUPT, f->source, "no model config in __metadata__ (key '%s')",
                              MODEL_META_CONFIG);
    json_error_t jerr;
    json_t *j = json_loads(s, 0, &jerr);
    char where[600];
    snprintf(where, sizeof where, "%s: __metadata__.%s", f->source, MODEL_META_CONFIG);
    if (!j) return rlhf_error_set(err, RLHF_ECORRUPT, where, "not valid JSON: %s", jerr.text);
    int rc = model_config_parse(cfg, j, where, err);
    json_decref(j);
    if (rc) return rc;
    *version = 0;
    const char *v = safetensors_meta(f, MODEL_META_POLICY_VERSION);
    if (v) {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *end || errno || v[0] == '-')
            return rlhf_error_set(err, RLHF_ECORRUPT, f->source, "__metadata__.%s '%s' is not a non-negative integer",
                                  MODEL_META_POLICY_VERSION, v);
        *version = x;
    }
    return 0;
}

/* Copies the file's tensors into m (same config), checking names and shapes. */
static int fill_weights(model *m, const safetensors_file *f, rlhf_error *err) {
    ckpt_entry *e;
    int n;
    if (ckpt_layout(m, &e, &n)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const safetensors_tensor *t = safetensors_find(f, e[i].name);
        if (!t) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, f->source, "missing tensor '%s'", e[i].name);
            break;
        }
        int same = t->ndim == e[i].ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == e[i].shape[d];
        if (!same) {
            char got[128] = "", *g = got;
            for (int d = 0; d < t->ndim && g < got + 100; d++) g += sprintf(g, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            if (e[i].ndim == 2)
                rc = rlhf_error_set(err, RLHF_ECORRUPT, f->source, "tensor '%s' has shape [%s], expected [%lld, %lld]",
                                    e[i].name, got, (long long)e[i].shape[0], (long long)e[i].shape[1]);
            else
                rc = rlhf_error_set(err, RLHF_ECORRUPT, f->source, "tensor '%s' has shape [%s], expected [%lld]",
                                    e[i].name, got, (long long)e[i].shape[0]);
            break;
        }
        memcpy(m->params_mem + e[i].offset, t->data, (size_t)(e[i].shape[0] * (e[i].ndim == 2 ? e[i].shape[1] : 1)) * sizeof(float));
    }
    if (!rc && f->n_tensors != n) {
        /* name the first tensor we did not expect */
        for (int j = 0; j < f->n_tensors; j++) {
            int found = 0;
            for (int i = 0; i < n && !found; i++) found = !strcmp(f->tensors[j].name, e[i].name);
            if (!found) {
                rc = rlhf_error_set(err, RLHF_ECORRUPT, f->source, "unexpected tensor '%s'%s", f->tensors[j].name,
                                    !strcmp(f->tensors[j].name, "lm_head.weight") ? " (config says tie_embeddings)" : "");
                break;
            }
        }
    }
    free(e);
    return rc;
}

int model_from_safetensors(model **out, const safetensors_file *f, const model_config *expect, rlhf_error *err) {
    *out = NULL;
    model_config cfg;
    uint64_t version;
    int rc = read_config(f, &cfg, &version, err);
    if (rc) return rc;
    if (expect && (rc = model_config_compare(&cfg, expect, f->source, err))) return rc;
    model *m;
    if ((rc = model_create(&m, &cfg, err))) return rc;
    if ((rc = fill_weights(m, f, err))) {
        model_destroy(&m);
        return rc;
    }
    m->version = version;
    *out = m;
    return 0;
}

int model_load(model **out, const char *path, const model_config *expect, rlhf_error *err) {
    *out = NULL;
    safetensors_file *f;
    int rc = safetensors_open(&f, path, err);
    if (rc) return rc;
    rc = model_from_safetensors(out, f, expect, err);
    safetensors_close(&f);
    return rc;
}

int model_load_into(model *m, const char *path, rlhf_error *err) {
    model *tmp;
    int rc = model_load(&tmp, path, &m->cfg, err);
    if (rc) return rc;
    rc = model_copy_weights(m, tmp, err);
    model_destroy(&tmp);
    return rc;
}
