/* model/model.c — model configuration, the flat parameter buffer, and the kernels' thread count. */
#include "model/model.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static const char *const config_keys[] = {"dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size",
                                          "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", NULL};

static int get_int(const json_t *obj, const char *key, int *out, int required, const char *where, rlhf_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required) return rlhf_error_set(err, RLHF_EINVAL, where, "missing required key '%s'", key);
        return 0;
    }
    if (!json_is_integer(v)) return rlhf_error_set(err, RLHF_EINVAL, where, "key '%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x <= 0 || x > (1 << 30)) return rlhf_error_set(err, RLHF_EINVAL, where, "key '%s' must be in 1..2^30, got %lld", key, (long long)x);
    *out = (int)x;
    return 0;
}

static int get_float(const json_t *obj, const char *key, float *out, const char *where, rlhf_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_number(v)) return rlhf_error_set(err, RLHF_EINVAL, where, "key '%s' must be a number", key);
    double x = json_number_value(v);
    if (!(x > 0) || !isfinite(x)) return rlhf_error_set(err, RLHF_EINVAL, where, "key '%s' must be > 0, got %g", key, x);
    *out = (float)x;
    return 0;
}

int model_config_parse(model_config *cfg, const json_t *obj, const char *where, rlhf_error *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "model config must be a JSON object");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        int known = 0;
        for (int i = 0; config_keys[i]; i++) known |= !strcmp(key, config_keys[i]);
        if (!known) return rlhf_error_set(err, RLHF_EINVAL, where, "unknown model config key '%s'", key);
    }
    int rc;
    if ((rc = get_int(obj, "dim", &cfg->dim, 1, where, err))) return rc;
    if ((rc = get_int(obj, "n_layers", &cfg->n_layers, 1, where, err))) return rc;
    if ((rc = get_int(obj, "n_heads", &cfg->n_heads, 1, where, err))) return rc;
    cfg->n_kv_heads = cfg->n_heads;
    if ((rc = get_int(obj, "n_kv_heads", &cfg->n_kv_heads, 0, where, err))) return rc;
    if ((rc = get_int(obj, "ffn_dim", &cfg->ffn_dim, 1, where, err))) return rc;
    if ((rc = get_int(obj, "vocab_size", &cfg->vocab_size, 1, where, err))) return rc;
    if ((rc = get_int(obj, "max_seq_len", &cfg->max_seq_len, 1, where, err))) return rc;
    cfg->rope_theta = 10000.0f;
    cfg->norm_eps = 1e-5f;
    if ((rc = get_float(obj, "rope_theta", &cfg->rope_theta, where, err))) return rc;
    if ((rc = get_float(obj, "norm_eps", &cfg->norm_eps, where, err))) return rc;
    json_t *tie = json_object_get(obj, "tie_embeddings");
    if (tie) {
        if (!json_is_boolean(tie)) return rlhf_error_set(err, RLHF_EINVAL, where, "key 'tie_embeddings' must be true or false");
        cfg->tie_embeddings = json_is_true(tie);
    }
    return model_config_validate(cfg, where, err);
}

int model_config_validate(const model_config *c, const char *where, rlhf_error *err) {
    if (c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->ffn_dim <= 0 ||
        c->vocab_size <= 0 || c->max_seq_len <= 0)
        return rlhf_error_set(err, RLHF_EINVAL, where, "all model dimensions must be positive");
    if (c->dim % c->n_heads)
        return rlhf_error_set(err, RLHF_EINVAL, where, "dim (%d) is not divisible by n_heads (%d)", c->dim, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return rlhf_error_set(err, RLHF_EINVAL, where, "n_heads (%d) is not divisible by n_kv_heads (%d)", c->n_heads,
                              c->n_kv_heads);
    if ((c->dim / c->n_heads) % 2)
        return rlhf_error_set(err, RLHF_EINVAL, where, "head_dim (%d) must be even for RoPE", c->dim / c->n_heads);
    if (!(c->rope_theta > 0) || !(c->norm_eps > 0))
        return rlhf_error_set(err, RLHF_EINVAL, where, "rope_theta and norm_eps must be > 0");
    return 0;
}

json_t *model_config_to_json(const model_config *c) {
    return json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b}", "dim", c->dim, "n_layers", c->n_layers, "n_heads",
                     c->n_heads, "n_kv_heads", c->n_kv_heads, "ffn_dim", c->ffn_dim, "vocab_size", c->vocab_size,
                     "max_seq_len", c->max_seq_len, "rope_theta", (double)c->rope_theta, "norm_eps",
                     (double)c->norm_eps, "tie_embeddings", c->tie_embeddings);
}

static void layout(model *m) {
    const model_config *c = &m->cfg;
    size_t C = c->dim, L = c->n_layers, D = model_head_dim(c), H = c->n_heads, KVH = c->n_kv_heads;
    size_t F = c->ffn_dim, V = c->vocab_size;
    struct {
        const char *name;
        int per_layer;
        size_t rows, cols;
    } spec[MODEL_N_PARAM_TENSORS] = {
        {"embed", 0, V, C},     {"attn_norm", 1, C, 1}, {"wq", 1, H * D, C},     {"wk", 1, KVH * D, C},
        {"wv", 1, KVH * D, C},  {"wo", 1, C, H * D},    {"ffn_norm", 1, C, 1},   {"w_gate", 1, F, C},
        {"w_up", 1, F, C},      {"w_down", 1, C, F},    {"final_norm", 0, C, 1}, {"lm_head", 0, V, C},
    };
    size_t off = 0;
    m->n_tensors = c->tie_embeddings ? MODEL_N_PARAM_TENSORS - 1 : MODEL_N_PARAM_TENSORS;
    for (int i = 0; i < m->n_tensors; i++) {
        model_tensor_info *t = &m->tensors[i];
        t->name = spec[i].name;
        t->per_layer = spec[i].per_layer;
        t->rows = (int)spec[i].rows;
        t->cols = (int)spec[i].cols;
        t->numel = spec[i].rows * spec[i].cols * (spec[i].per_layer ? L : 1);
        t->offset = off;
        off += t->numel;
    }
    m->n_params = off;
}

void model_params_view(const model *m, float *base, model_params *p) {
    float **slots[MODEL_N_PARAM_TENSORS] = {&p->embed,    &p->attn_norm, &p->wq,     &p->wk,
                                            &p->wv,       &p->wo,        &p->ffn_norm, &p->w_gate,
                                            &p->w_up,     &p->w_down,    &p->final_norm, &p->lm_head};
    for (int i = 0; i < m->n_tensors; i++) *slots[i] = base + m->tensors[i].offset;
    if (m->cfg.tie_embeddings) p->lm_head = p->embed;
}

int model_create(model **out, const model_config *cfg, rlhf_error *err) {
    *out = NULL;
    int rc = model_config_validate(cfg, "model config", err);
    if (rc) return rc;
    model *m = calloc(1, sizeof *m);
    if (!m) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    m->cfg = *cfg;
    layout(m);
    /* 64-byte alignment for SIMD loads; zeroed so norms etc. are defined before init */
    size_t bytes = (m->n_params * sizeof(float) + 63) & ~(size_t)63;
    m->params_mem = aligned_alloc(64, bytes);
    if (!m->params_mem) {
        size_t n = m->n_params;
        free(m);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate %zu parameters", n);
    }
    memset(m->params_mem, 0, bytes);
    model_params_view(m, m->params_mem, &m->p);
    *out = m;
    return 0;
}

void model_destroy(model **pm) {
    if (!pm || !*pm) return;
    free((*pm)->params_mem);
    free(*pm);
    *pm = NULL;
}

void model_init_random(model *m, uint64_t seed) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    float out_scale = 0.02f / sqrtf(2.0f * (float)m->cfg.n_layers);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        float *w = m->params_mem + t->offset;
        if (t->cols == 1) { /* norm weights */
            for (size_t j = 0; j < t->numel; j++) w[j] = 1.0f;
            continue;
        }
        float std = (!strcmp(t->name, "wo") || !strcmp(t->name, "w_down")) ? out_scale : 0.02f;
        for (size_t j = 0; j < t->numel; j++) w[j] = std * rlhf_rng_normal(&rng);
    }
}

int model_copy_weights(model *dst, const model *src, rlhf_error *err) {
    if (memcmp(&dst->cfg, &src->cfg, sizeof dst->cfg) != 0)
        return RLHF_FAIL(err, RLHF_EINVAL, "model configs differ");
    memcpy(dst->params_mem, src->params_mem, src->n_params * sizeof(float));
    dst->version = src->version;
    return 0;
}

/* Both counts, because this works with either OpenBLAS build. With the OpenMP build (the one
 * scripts/install-deps.sh installs) GEMMs run on the caller's OpenMP pool: OpenBLAS reads
 * omp_get_max_threads() of the calling thread at every call, so the per-thread OpenMP count is what
 * counts and different threads may use different counts; openblas_set_num_threads only sets that same
 * OpenMP count again. With a pthreads build OpenBLAS has its own process-wide count, which
 * omp_set_num_threads alone would leave at all cores. */
void model_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}
