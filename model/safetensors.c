/* model/safetensors.c — safetensors files: a generic reader (F32, BF16, F16; memory-mapped) and
 * writer (F32, BF16), and model checkpoints with Hugging Face Llama tensor names.
 *
 * Readers trust nothing: every length, offset, dtype and shape is checked against the bytes
 * actually present before a tensor pointer is handed out, and every error names the file. */
#include "model/model.h"
#include "model/checkpoint_int.h"
#include "model/kernels_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is treated as corrupt rather than trusted with an allocation. */
#define SAFETENSORS_MAX_HEADER (64u << 20)
#define SAFETENSORS_MAX_NUMEL ((uint64_t)1 << 40) /* per tensor: 4 TiB of F32, far beyond any model here */

/* ---------------------------------------------------------------- writing */

const char *safetensors_dtype_name(safetensors_dtype d) {
    return d == SAFETENSORS_F32 ? "F32" : d == SAFETENSORS_BF16 ? "BF16" : d == SAFETENSORS_F16 ? "F16" : "?";
}

size_t safetensors_dtype_size(safetensors_dtype d) { return d == SAFETENSORS_F32 ? 4 : 2; }

int64_t safetensors_numel(const safetensors_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

static size_t stored_bytes(const safetensors_tensor *t, safetensors_dtype dt) {
    return (size_t)safetensors_numel(t) * safetensors_dtype_size(dt);
}

/* IEEE half -> float, exactly (subnormals, infinities and NaN included). */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (ex == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (ex) {
        u = sign | ((ex + 112) << 23) | (man << 13);
    } else {
        float f = ldexpf((float)man, -24); /* subnormal or zero: man * 2^-24, exact in fp32 */
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int safetensors_tensor_to_f32(const safetensors_tensor *t, float *dst, const char *source, rlhf_error *err) {
    size_t n = (size_t)safetensors_numel(t);
    const unsigned char *raw = t->raw ? t->raw : (const void *)t->data;
    if (t->dtype == SAFETENSORS_F32) {
        if (!n) return 0;
        memcpy(dst, raw, n * sizeof(float));
        /* A NaN or Inf weight poisons every output downstream (scores printed as null, dropped
         * log-probs, undefined float-to-int conversions): refused here, where every loader passes.
         * One branch-free pass over the exponent bits (measured in bench/bench_safetensors). */
        uint32_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &dst[i], sizeof u);
            bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        if (!bad) return 0;
        size_t i = 0;
        while (isfinite(dst[i])) i++;
        return rlhf_error_set(err, RLHF_ECORRUPT, source, "tensor '%s' (F32) holds a non-finite value (%g) at flat "
                              "index %zu", t->name, (double)dst[i], i);
    }
    if (t->dtype != SAFETENSORS_BF16 && t->dtype != SAFETENSORS_F16)
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, source, "tensor '%s' has an unsupported dtype", t->name);
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, raw + 2 * i, 2); /* the data section need not be 2-byte aligned */
        dst[i] = t->dtype == SAFETENSORS_BF16 ? model_bf16_to_f32(h) : f16_to_f32(h);
        if (!isfinite(dst[i]))
            return rlhf_error_set(err, RLHF_ECORRUPT, source, "tensor '%s' (%s) holds a non-finite value (%g) at flat "
                                  "index %zu", t->name, safetensors_dtype_name(t->dtype), (double)dst[i], i);
    }
    return 0;
}

/* Stores n floats of src as dtype into dst (F32 copy; BF16 rounded to nearest even). */
static void store_values(unsigned char *dst, const float *src, size_t n, safetensors_dtype dtype) {
    if (dtype == SAFETENSORS_F32) {
        if (n) memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = model_bf16_round(src[i]);
        memcpy(dst + 2 * i, &h, 2);
    }
}

/* Builds the padded header (JSON, spaces to a multiple of 8) and the data-section size. */
static int build_header(const safetensors_tensor *ts, int n, const json_t *metadata, safetensors_dtype dt,
                        char **hdr_out, size_t *hdr_len, size_t *data_len, rlhf_error *err) {
    *hdr_out = NULL;
    if (n < 0) return RLHF_FAIL(err, RLHF_EINVAL, "negative tensor count");
    if (dt != SAFETENSORS_F32 && dt != SAFETENSORS_BF16)
        return RLHF_FAIL(err, RLHF_EINVAL, "only F32 and BF16 are written, not %s", safetensors_dtype_name(dt));
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
        size_t bytes = stored_bytes(t, dt);
        if (!rc && bytes && !t->data) rc = RLHF_FAIL(err, RLHF_EINVAL, "tensor '%s' has no data", t->name);
        json_t *ent = json_pack("{s:s,s:o,s:[I,I]}", "dtype", safetensors_dtype_name(dt), "shape", shape,
                                "data_offsets", (json_int_t)off,
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
    const safetensors_dtype dt = SAFETENSORS_F32;
    *buf_out = NULL;
    *len_out = 0;
    char *hdr;
    size_t hlen, dlen;
    int rc = build_header(ts, n, metadata, dt, &hdr, &hlen, &dlen, err);
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
        store_values(buf + off, ts[i].data, (size_t)safetensors_numel(&ts[i]), dt);
        off += stored_bytes(&ts[i], dt);
    }
    *buf_out = buf;
    *len_out = off;
    return 0;
}

int safetensors_write(const char *path, const safetensors_tensor *ts, int n, const json_t *metadata,
                      rlhf_error *err) {
    return safetensors_write_as(path, ts, n, metadata, SAFETENSORS_F32, err);
}

int safetensors_write_as(const char *path, const safetensors_tensor *ts, int n, const json_t *metadata,
                         safetensors_dtype dt, rlhf_error *err) {
    char *hdr;
    size_t hlen, dlen;
    int rc = build_header(ts, n, metadata, dt, &hdr, &hlen, &dlen, err);
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
    enum { CHUNK = 1 << 16 };
    unsigned char *conv = NULL;
    for (int i = 0; i < n && ok; i++) {
        size_t numel = (size_t)safetensors_numel(&ts[i]);
        if (dt == SAFETENSORS_F32) {
            if (numel) ok = fwrite(ts[i].data, sizeof(float), numel, af.fp) == numel;
            continue;
        }
        if (!conv && !(conv = malloc(2 * CHUNK))) {
            errno = ENOMEM;
            ok = 0;
            break;
        }
        for (size_t at = 0; at < numel && ok; at += CHUNK) { /* BF16: converted a chunk at a time */
            size_t k = numel - at < CHUNK ? numel - at : CHUNK;
            store_values(conv, ts[i].data + at, k, dt);
            ok = fwrite(conv, 2, k, af.fp) == k;
        }
    }
    free(conv);
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
    safetensors_dtype dtype;
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
    if (!strcmp(dts, "F32"))
        pe->dtype = SAFETENSORS_F32;
    else if (!strcmp(dts, "BF16"))
        pe->dtype = SAFETENSORS_BF16;
    else if (!strcmp(dts, "F16"))
        pe->dtype = SAFETENSORS_F16;
    else
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, src, "tensor '%s' has dtype %s; only F32, BF16 and F16 are "
                              "supported", name, dts);
    uint64_t esize = safetensors_dtype_size(pe->dtype);
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
    }
    /* The element count is bounded before it is formed, so [2^32, 2^32] cannot wrap to 0 and pass as an
     * empty tensor; a zero dimension anywhere makes it empty whatever the others say. */
    for (int d = 0; d < pe->ndim; d++)
        if (pe->shape[d] == 0) numel = 0;
    for (int d = 0; d < pe->ndim && numel; d++) {
        if ((uint64_t)pe->shape[d] > SAFETENSORS_MAX_NUMEL / numel) {
            char dims[160] = "", *q = dims;
            for (int i = 0; i < pe->ndim && q < dims + 120; i++)
                q += sprintf(q, "%s%lld", i ? ", " : "", (long long)pe->shape[i]);
            return rlhf_error_set(err, RLHF_ECORRUPT, src,
                                  "tensor '%s' shape [%s] has more than 2^40 elements (overflowing sizes are refused)",
                                  name, dims);
        }
        numel *= (uint64_t)pe->shape[d];
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
    if ((uint64_t)(e - b) != numel * esize)
        return rlhf_error_set(err, RLHF_ECORRUPT, src,
                              "tensor '%s' shape needs %" PRIu64 " bytes but data_offsets span %lld bytes", name,
                              numel * esize, (long long)(e - b));
    pe->begin = (uint64_t)b;
    pe->end = (uint64_t)e;
    return 0;
}

/* Frees or unmaps a file image. */
static void release_image(void *buf, size_t size, int mapped) {
    if (!buf) return;
    if (mapped)
        munmap(buf, size);
    else
        free(buf);
}

/* Takes ownership of buf (size bytes; an mmap of the file when mapped, else malloc'd). */
static int parse_owned(safetensors_file **out, void *buf, size_t size, int mapped, const char *src,
                       rlhf_error *err) {
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
    f->buf = buf;
    f->size = size;
    f->mapped = mapped;
    buf = NULL;
    /* F32 data is handed out as float pointers, so it must be 4-byte aligned; another writer may pad
     * the header differently: then the data section is copied once to aligned memory. */
    unsigned char *data = (unsigned char *)f->buf + 8 + hlen;
    if (((uintptr_t)data & 3) != 0 && data_len) {
        if (!(f->data_copy = malloc(data_len))) {
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %" PRIu64 " bytes", data_len);
            goto fail;
        }
        memcpy(f->data_copy, data, data_len);
        data = f->data_copy;
    }
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
        t->dtype = ents[i].dtype;
        t->raw = data + ents[i].begin;
        t->data = t->dtype == SAFETENSORS_F32 ? (const float *)t->raw : NULL;
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
    release_image(buf, size, mapped);
    safetensors_close(&f);
    return rc;
}

int safetensors_open(safetensors_file **out, const char *path, rlhf_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        close(fd);
        return rlhf_error_set(err, RLHF_EIO, path, "%s", S_ISDIR(st.st_mode) ? "is a directory" : e ? strerror(e)
                                                                                          : "not a regular file");
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) { /* mmap cannot map an empty file; the parser names the problem */
        close(fd);
        char *data;
        size_t n;
        int rc = rlhf_read_file(path, &data, &n, err);
        return rc ? rc : parse_owned(out, data, n, 0, path, err);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return rlhf_error_set(err, RLHF_EIO, path, "cannot map %zu bytes: %s", len, strerror(e));
    return parse_owned(out, map, len, 1, path, err);
}

int safetensors_open_memory(safetensors_file **out, const void *buf, size_t len, const char *source, rlhf_error *err) {
    *out = NULL;
    void *copy = malloc(len ? len : 1);
    if (!copy) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %zu bytes", len);
    memcpy(copy, buf, len);
    return parse_owned(out, copy, len, 0, source ? source : "(memory)", err);
}

void safetensors_close(safetensors_file **pf) {
    if (!pf || !*pf) return;
    safetensors_file *f = *pf;
    if (f->tensors)
        for (int i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    json_decref(f->metadata);
    release_image(f->buf, f->size, f->mapped);
    free(f->data_copy);
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

/* The checkpoint's tensors in file order: embed, then per layer (in model_params order), then the
 * final norm and lm_head; names and shapes come from the model's tensor table. */
int model_ckpt_layout(const model *m, model_ckpt_entry **out, int *n_out) {
    const model_config *c = &m->cfg;
    int L = c->n_layers, n = 0;
    for (int t = 0; t < m->n_tensors; t++) n += m->tensors[t].n_stack;
    model_ckpt_entry *e = calloc((size_t)n, sizeof *e);
    if (!e) return RLHF_ENOMEM;
    int k = 0;
    for (int pass = 0; pass < 3; pass++) { /* tensors before the layers, the layers, after them */
        for (int layer = 0; layer < (pass == 1 ? L : 1); layer++)
            for (int t = 0; t < m->n_tensors; t++) {
                const model_tensor_info *ti = &m->tensors[t];
                int before = ti->id == MODEL_T_EMBED;
                if (pass == 1 ? !ti->per_layer : (ti->per_layer || before != (pass == 0))) continue;
                /* the K/V tensors stack only the layers that project their own K/V (kv_share) */
                int slice = ti->per_layer && ti->n_stack != L ? model_kv_slot(c, layer) : layer;
                if (slice < 0) continue;
                snprintf(e[k].name, MODEL_CKPT_NAME_MAX, ti->hf_name, layer);
                e[k].ndim = ti->cols > 1 ? 2 : 1;
                e[k].shape[0] = ti->rows;
                e[k].shape[1] = ti->cols > 1 ? ti->cols : 0;
                e[k].offset = ti->offset + (ti->per_layer ? (size_t)slice * ti->rows * ti->cols : 0);
                k++;
            }
    }
    *out = e;
    *n_out = k;
    return 0;
}

static int model_tensors(const model *m, safetensors_tensor **ts_out, int *n_out, json_t **meta_out, rlhf_error *err) {
    model_ckpt_entry *e;
    int n;
    int rc = model_require_fp32(m, "saving a checkpoint", err);
    if (rc) return rc;
    if (model_ckpt_layout(m, &e, &n)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
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
    if (meta && ((m->hf_config && json_object_set_new(meta, MODEL_META_HF_CONFIG, json_string(m->hf_config))) ||
                 (m->tokenizer_dir && json_object_set_new(meta, MODEL_META_TOKENIZER, json_string(m->tokenizer_dir))))) {
        json_decref(meta);
        meta = NULL;
    }
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
    for (int l = 0; l < got->n_layers; l++) {
        if (model_kv_source(got, l) != model_kv_source(exp, l))
            return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'kv_share' differs (layer %d reads layer "
                                  "%d's K/V, expected %d's)", l, model_kv_source(got, l), model_kv_source(exp, l));
        if (model_attn_kind_of(got, l) != model_attn_kind_of(exp, l))
            return rlhf_error_set(err, RLHF_EINVAL, where, "model config key 'attention_pattern' differs (layer %d is %s, "
                                  "expected %s)", l, model_attn_kind_name(model_attn_kind_of(got, l)),
                                  model_attn_kind_name(model_attn_kind_of(exp, l)));
    }
    CMP_INT(attention_window)
#undef CMP_INT
    return 0;
}

static int read_config(const safetensors_file *f, model_config *cfg, uint64_t *version, rlhf_error *err) {
    const char *s = safetensors_meta(f, MODEL_META_CONFIG);
    if (!s)
        return rlhf_error_set(err, RLHF_ECORRUPT, f->source, "no model config in __metadata__ (key '%s'); a Hugging "
                              "Face model is loaded from its directory (config.json beside the weights)",
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

int model_ckpt_fill(model *m, const model_ckpt_entry *e, const safetensors_tensor *t, const char *source,
                    rlhf_error *err) {
    int same = t->ndim == e->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == e->shape[d];
    if (!same) {
        char got[128] = "", *g = got;
        for (int d = 0; d < t->ndim && g < got + 100; d++) g += sprintf(g, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        if (e->ndim == 2)
            return rlhf_error_set(err, RLHF_ECORRUPT, source, "tensor '%s' has shape [%s], expected [%lld, %lld]",
                                  e->name, got, (long long)e->shape[0], (long long)e->shape[1]);
        return rlhf_error_set(err, RLHF_ECORRUPT, source, "tensor '%s' has shape [%s], expected [%lld]", e->name, got,
                              (long long)e->shape[0]);
    }
    if (m->bf16_mem && e->ndim == 2 && t->dtype == SAFETENSORS_BF16) {
        /* a frozen bf16 base (model_keep_bf16): the file's bits, unchanged */
        size_t n = (size_t)e->shape[0] * (size_t)e->shape[1];
        uint16_t *dst = m->bf16_mem + e->offset;
        memcpy(dst, t->raw, n * sizeof *dst);
        for (size_t i = 0; i < n; i++)
            if ((dst[i] & 0x7f80u) == 0x7f80u)
                return rlhf_error_set(err, RLHF_ECORRUPT, source, "tensor '%s' (BF16) holds a non-finite value (%g) "
                                      "at flat index %zu", e->name, (double)model_bf16_to_f32(dst[i]), i);
        return 0;
    }
    if (m->bf16_mem && e->ndim == 2)
        return rlhf_error_set(err, RLHF_EINVAL, source, "tensor '%s' is %s in a model kept in bf16", e->name,
                              safetensors_dtype_name(t->dtype));
    return safetensors_tensor_to_f32(t, m->params_mem + e->offset, source, err);
}

int model_ckpt_keep_bf16_if(model *m, const model_ckpt_entry *e, const safetensors_tensor *const *ts, int n,
                            rlhf_error *err) {
    for (int i = 0; i < n; i++)
        if (e[i].ndim == 2 && (!ts[i] || ts[i]->dtype != SAFETENSORS_BF16)) return 0;
    return model_keep_bf16(m, err);
}

/* Copies the file's tensors into m (same config), checking names and shapes. */
static int fill_weights(model *m, const safetensors_file *f, int keep_bf16, rlhf_error *err) {
    model_ckpt_entry *e;
    int n;
    if (model_ckpt_layout(m, &e, &n)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int rc = 0;
    if (keep_bf16) {
        const safetensors_tensor **ts = calloc((size_t)n, sizeof *ts);
        if (!ts) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        for (int i = 0; ts && i < n; i++) ts[i] = safetensors_find(f, e[i].name);
        if (ts) rc = model_ckpt_keep_bf16_if(m, e, ts, n, err);
        free(ts);
    }
    for (int i = 0; i < n && !rc; i++) {
        const safetensors_tensor *t = safetensors_find(f, e[i].name);
        if (!t) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, f->source, "missing tensor '%s'", e[i].name);
            break;
        }
        rc = model_ckpt_fill(m, &e[i], t, f->source, err);
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

/* model_from_safetensors with the load options. */
static int from_checkpoint(model **out, const safetensors_file *f, const model_load_options *opt, rlhf_error *err) {
    *out = NULL;
    model_config cfg;
    uint64_t version;
    int rc = read_config(f, &cfg, &version, err);
    if (rc) return rc;
    if (opt && opt->max_seq_len > 0 && cfg.max_seq_len > opt->max_seq_len) cfg.max_seq_len = opt->max_seq_len;
    if (opt && opt->expect && (rc = model_config_compare(&cfg, opt->expect, f->source, err))) return rc;
    model *m;
    if ((rc = model_create(&m, &cfg, err))) return rc;
    const char *hf = safetensors_meta(f, MODEL_META_HF_CONFIG);
    if (hf && !(m->hf_config = strdup(hf))) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    const char *tk = safetensors_meta(f, MODEL_META_TOKENIZER);
    if (!rc && tk && strcmp(tk, "bytes") != 0 && !(m->tokenizer_dir = strdup(tk)))
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    if (rc || (rc = fill_weights(m, f, opt && opt->keep_bf16, err))) {
        model_destroy(&m);
        return rc;
    }
    m->version = version;
    *out = m;
    return 0;
}

int model_from_safetensors(model **out, const safetensors_file *f, const model_config *expect, rlhf_error *err) {
    model_load_options opt = {.expect = expect};
    return from_checkpoint(out, f, &opt, err);
}

int model_load_with(model **out, const char *path, const model_load_options *opt, rlhf_error *err) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return model_hf_load_dir(out, path, opt, err);
    safetensors_file *f;
    int rc = safetensors_open(&f, path, err);
    if (rc) return rc;
    rc = from_checkpoint(out, f, opt, err);
    safetensors_close(&f);
    return rc;
}

int model_load(model **out, const char *path, const model_config *expect, rlhf_error *err) {
    model_load_options opt = {.expect = expect};
    return model_load_with(out, path, &opt, err);
}

int model_load_into(model *m, const char *path, rlhf_error *err) {
    model *tmp;
    int rc = model_load(&tmp, path, &m->cfg, err);
    if (rc) return rc;
    rc = model_copy_weights(m, tmp, err);
    model_destroy(&tmp);
    return rc;
}
