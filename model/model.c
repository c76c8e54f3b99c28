/* model/model.c — model configuration, the flat parameter buffer, and the kernels' thread count. */
#include "model/model.h"
#include "model/kernels_int.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const config_keys[] = {"dim",          "n_layers",   "n_heads",        "n_kv_heads", "ffn_dim",
                                          "vocab_size",   "max_seq_len", "rope_theta",    "norm_eps",   "tie_embeddings",
                                          "head_dim",     "attn_bias",   "qk_norm",       "rope_scaling", "kv_share",
                                          "attention_pattern", "attention_window", NULL};

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

static int get_bool(const json_t *obj, const char *key, int *out, const char *where, rlhf_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return rlhf_error_set(err, RLHF_EINVAL, where, "key '%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int parse_rope_scaling(model_config *cfg, const json_t *rs, const char *where, rlhf_error *err) {
    if (!json_is_object(rs))
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'rope_scaling' must be an object or null");
    static const char *const keys[] = {"type", "factor", "low_freq_factor", "high_freq_factor",
                                       "original_max_position_embeddings", NULL};
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)rs, key, val) {
        int known = 0;
        for (int i = 0; keys[i]; i++) known |= !strcmp(key, keys[i]);
        if (!known) return rlhf_error_set(err, RLHF_EINVAL, where, "unknown key 'rope_scaling.%s'", key);
    }
    const char *type = json_string_value(json_object_get(rs, "type"));
    if (!type) return rlhf_error_set(err, RLHF_EINVAL, where, "key 'rope_scaling.type' must be \"linear\" or \"llama3\"");
    int rc;
    if (!strcmp(type, "linear")) {
        cfg->rope_scaling = MODEL_ROPE_LINEAR;
    } else if (!strcmp(type, "llama3")) {
        cfg->rope_scaling = MODEL_ROPE_LLAMA3;
        if ((rc = get_float(rs, "low_freq_factor", &cfg->rope_low_freq_factor, where, err)) ||
            (rc = get_float(rs, "high_freq_factor", &cfg->rope_high_freq_factor, where, err)) ||
            (rc = get_int(rs, "original_max_position_embeddings", &cfg->rope_original_max_pos, 1, where, err)))
            return rc;
        if (!json_object_get(rs, "low_freq_factor") || !json_object_get(rs, "high_freq_factor"))
            return rlhf_error_set(err, RLHF_EINVAL, where, "rope_scaling type llama3 needs low_freq_factor and high_freq_factor");
    } else {
        return rlhf_error_set(err, RLHF_EINVAL, where, "rope_scaling.type '%s' is not implemented (linear, llama3)", type);
    }
    if (!json_object_get(rs, "factor")) return rlhf_error_set(err, RLHF_EINVAL, where, "rope_scaling needs 'factor'");
    return get_float(rs, "factor", &cfg->rope_factor, where, err);
}

const char *model_attn_kind_name(model_attn_kind k) {
    return k == MODEL_ATTN_LOCAL ? "local" : k == MODEL_ATTN_GLOBAL_NOPE ? "global_nope" : "global";
}

int model_kv_layers(const model_config *c) {
    int n = 0;
    for (int l = 0; l < c->n_layers; l++) n += model_kv_source(c, l) == l;
    return n;
}

int model_kv_slot(const model_config *c, int l) {
    if (model_kv_source(c, l) != l) return -1;
    int slot = 0;
    for (int i = 0; i < l; i++) slot += model_kv_source(c, i) == i;
    return slot;
}

/* "kv_share": "none", "seed" (the last floor(3L/8) layers reuse the K/V of the layer before them, the
 * last of the first block) or a list of n_layers entries, -1 (own K/V) or an earlier producing layer. */
static int parse_kv_share(model_config *cfg, const json_t *v, const char *where, rlhf_error *err) {
    int L = cfg->n_layers;
    if (json_is_string(v)) {
        const char *name = json_string_value(v);
        if (!strcmp(name, "none")) return 0;
        if (strcmp(name, "seed") != 0)
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share': unknown preset \"%s\" (\"none\", \"seed\" "
                                  "or a list of source layers, -1 for none)", name);
        int n_share = 3 * L / 8, src = L - n_share - 1;
        for (int l = L - n_share; l < L; l++) cfg->kv_src[l] = (short)(src + 1);
        return 0;
    }
    if (!json_is_array(v))
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share' must be \"none\", \"seed\" or a list of layers");
    if ((int)json_array_size(v) != L)
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share' has %zu entries; n_layers is %d",
                              json_array_size(v), L);
    for (int l = 0; l < L; l++) {
        json_t *e = json_array_get(v, (size_t)l);
        if (!json_is_integer(e))
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share[%d]' must be an integer (a layer, or -1)", l);
        json_int_t s = json_integer_value(e);
        if (s < -1 || s >= l)
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share[%d]' is %lld: a layer shares the K/V of an "
                                  "earlier layer (0..%d) or -1", l, (long long)s, l - 1);
        cfg->kv_src[l] = (short)(s + 1);
    }
    return 0;
}

static int parse_attn_kind(const char *name, model_attn_kind *out) {
    if (!strcmp(name, "global")) *out = MODEL_ATTN_GLOBAL;
    else if (!strcmp(name, "global_nope")) *out = MODEL_ATTN_GLOBAL_NOPE;
    else if (!strcmp(name, "local")) *out = MODEL_ATTN_LOCAL;
    else return -1;
    return 0;
}

/* "attention_pattern": a preset "global", "global_nope", "local", "<n>local_1global" or
 * "<n>local_1global_nope" (blocks of n local layers then one global one, repeated), or a list of
 * n_layers names. */
static int parse_attention_pattern(model_config *cfg, const json_t *v, const char *where, rlhf_error *err) {
    int L = cfg->n_layers;
    model_attn_kind k;
    if (json_is_string(v)) {
        const char *name = json_string_value(v);
        int n_local = 0, used = 0;
        if (!parse_attn_kind(name, &k)) {
            for (int l = 0; l < L; l++) cfg->attn_kind[l] = (unsigned char)k;
            return 0;
        }
        if (sscanf(name, "%dlocal_1global%n", &n_local, &used) == 1 && n_local >= 1 && n_local <= 64 &&
            (!name[used] || !strcmp(name + used, "_nope"))) {
            model_attn_kind g = name[used] ? MODEL_ATTN_GLOBAL_NOPE : MODEL_ATTN_GLOBAL;
            for (int l = 0; l < L; l++)
                cfg->attn_kind[l] = (unsigned char)(l % (n_local + 1) == n_local ? g : MODEL_ATTN_LOCAL);
            return 0;
        }
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_pattern': unknown preset \"%s\" (global, "
                              "global_nope, local, <n>local_1global, <n>local_1global_nope, or a list)", name);
    }
    if (!json_is_array(v))
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_pattern' must be a preset name or a list");
    if ((int)json_array_size(v) != L)
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_pattern' has %zu entries; n_layers is %d",
                              json_array_size(v), L);
    for (int l = 0; l < L; l++) {
        const char *name = json_string_value(json_array_get(v, (size_t)l));
        if (!name || parse_attn_kind(name, &k))
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_pattern[%d]' must be \"global\", "
                                  "\"global_nope\" or \"local\"", l);
        cfg->attn_kind[l] = (unsigned char)k;
    }
    return 0;
}

static int parse_layer_opts(model_config *cfg, const json_t *obj, const char *where, rlhf_error *err) {
    json_t *share = json_object_get(obj, "kv_share"), *pat = json_object_get(obj, "attention_pattern");
    json_t *win = json_object_get(obj, "attention_window");
    if (!share && !pat && !win) return 0;
    if (cfg->n_layers > MODEL_MAX_LAYERS)
        return rlhf_error_set(err, RLHF_EINVAL, where, "keys 'kv_share'/'attention_pattern' support at most %d layers "
                              "(n_layers is %d)", MODEL_MAX_LAYERS, cfg->n_layers);
    cfg->has_layer_opts = 1;
    int rc;
    if (share && (rc = parse_kv_share(cfg, share, where, err))) return rc;
    if (pat && (rc = parse_attention_pattern(cfg, pat, where, err))) return rc;
    if (win) {
        if (!json_is_integer(win) || json_integer_value(win) <= 0 || json_integer_value(win) > cfg->max_seq_len)
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_window' must be an integer in 1..max_seq_len "
                                  "(%d)", cfg->max_seq_len);
        cfg->attention_window = (int)json_integer_value(win);
    }
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
    if ((rc = get_bool(obj, "tie_embeddings", &cfg->tie_embeddings, where, err)) ||
        (rc = get_bool(obj, "attn_bias", &cfg->attn_bias, where, err)) ||
        (rc = get_bool(obj, "qk_norm", &cfg->qk_norm, where, err)))
        return rc;
    cfg->head_dim = cfg->dim % cfg->n_heads ? 0 : cfg->dim / cfg->n_heads;
    if ((rc = get_int(obj, "head_dim", &cfg->head_dim, 0, where, err))) return rc;
    if (!cfg->head_dim)
        return rlhf_error_set(err, RLHF_EINVAL, where, "dim (%d) is not divisible by n_heads (%d) and no head_dim is given",
                              cfg->dim, cfg->n_heads);
    json_t *rs = json_object_get(obj, "rope_scaling");
    if (rs && !json_is_null(rs) && (rc = parse_rope_scaling(cfg, rs, where, err))) return rc;
    if ((rc = parse_layer_opts(cfg, obj, where, err))) return rc;
    if ((rc = model_config_validate(cfg, where, err))) return rc;
    if (cfg->has_layer_opts && !model_uses_layer_opts(cfg)) { /* e.g. "kv_share": "none": the plain model */
        memset(cfg->attn_kind, 0, sizeof cfg->attn_kind);
        memset(cfg->kv_src, 0, sizeof cfg->kv_src);
        cfg->has_layer_opts = 0;
    }
    return 0;
}

/* The per-layer options as the code can run them: a sharing layer reads an earlier layer that projects
 * its own K/V, with the same position encoding, and sees no position its source's cache does not hold
 * (a local layer may read a global RoPE layer's K/V; a global one only a global one of its kind). */
static int validate_layer_opts(const model_config *c, const char *where, rlhf_error *err) {
    if (!c->has_layer_opts) return 0;
    if (c->n_layers > MODEL_MAX_LAYERS)
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share'/'attention_pattern': at most %d layers",
                              MODEL_MAX_LAYERS);
    int any_local = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->attn_kind[l] > MODEL_ATTN_LOCAL)
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_pattern[%d]': unknown kind %d", l,
                                  c->attn_kind[l]);
        any_local |= c->attn_kind[l] == MODEL_ATTN_LOCAL;
        int s = c->kv_src[l] - 1;
        if (s < 0) continue;
        if (s >= l)
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share[%d]' is %d: only an earlier layer's K/V "
                                  "can be shared", l, s);
        if (c->kv_src[s])
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share[%d]' is %d, which itself shares layer %d's "
                                  "K/V: name the producing layer", l, s, c->kv_src[s] - 1);
        model_attn_kind kl = (model_attn_kind)c->attn_kind[l], ks = (model_attn_kind)c->attn_kind[s];
        if (kl != ks && !(kl == MODEL_ATTN_LOCAL && ks == MODEL_ATTN_GLOBAL))
            return rlhf_error_set(err, RLHF_EINVAL, where, "key 'kv_share[%d]': layer %d (%s) cannot attend with the "
                                  "K/V of layer %d (%s) (attention_pattern): the kinds must match, or a local layer "
                                  "reads a global one", l, l, model_attn_kind_name(kl), s, model_attn_kind_name(ks));
    }
    if (any_local && (c->attention_window <= 0 || c->attention_window > c->max_seq_len))
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_window' must be in 1..max_seq_len (%d) when a "
                              "layer is local, got %d", c->max_seq_len, c->attention_window);
    if (!any_local && c->attention_window)
        return rlhf_error_set(err, RLHF_EINVAL, where, "key 'attention_window' is set but no layer is local "
                              "(attention_pattern)");
    return 0;
}

int model_config_validate(const model_config *c, const char *where, rlhf_error *err) {
    if (c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->ffn_dim <= 0 ||
        c->vocab_size <= 0 || c->max_seq_len <= 0)
        return rlhf_error_set(err, RLHF_EINVAL, where, "all model dimensions must be positive");
    if (c->head_dim < 0) return rlhf_error_set(err, RLHF_EINVAL, where, "head_dim must be positive");
    if (!c->head_dim && c->dim % c->n_heads)
        return rlhf_error_set(err, RLHF_EINVAL, where, "dim (%d) is not divisible by n_heads (%d) and no head_dim is given",
                              c->dim, c->n_heads);
    if (c->n_heads % c->n_kv_heads)
        return rlhf_error_set(err, RLHF_EINVAL, where, "n_heads (%d) is not divisible by n_kv_heads (%d)", c->n_heads,
                              c->n_kv_heads);
    if (model_head_dim(c) % 2)
        return rlhf_error_set(err, RLHF_EINVAL, where, "head_dim (%d) must be even for RoPE", model_head_dim(c));
    if (!(c->rope_theta > 0) || !(c->norm_eps > 0))
        return rlhf_error_set(err, RLHF_EINVAL, where, "rope_theta and norm_eps must be > 0");
    if (c->rope_scaling != MODEL_ROPE_NONE && !(c->rope_factor > 0))
        return rlhf_error_set(err, RLHF_EINVAL, where, "rope_scaling.factor must be > 0");
    if (c->rope_scaling == MODEL_ROPE_LLAMA3 &&
        (!(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
         c->rope_original_max_pos <= 0))
        return rlhf_error_set(err, RLHF_EINVAL, where,
                              "rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor and "
                              "original_max_position_embeddings > 0");
    if (c->rope_scaling < MODEL_ROPE_NONE || c->rope_scaling > MODEL_ROPE_LLAMA3)
        return rlhf_error_set(err, RLHF_EINVAL, where, "unknown rope_scaling kind %d", (int)c->rope_scaling);
    return validate_layer_opts(c, where, err);
}

double model_rope_inv_freq(const model_config *c, int i) {
    int D = model_head_dim(c);
    double f = pow((double)c->rope_theta, -2.0 * i / (double)D);
    if (c->rope_scaling == MODEL_ROPE_LINEAR) return f / c->rope_factor;
    if (c->rope_scaling == MODEL_ROPE_LLAMA3) {
        /* wavelengths shorter than original/high_freq_factor keep their frequency, longer than
         * original/low_freq_factor are divided by factor, and the band between blends linearly in
         * original/wavelength. */
        const double pi = 3.14159265358979323846;
        double wavelen = 2.0 * pi / f, orig = c->rope_original_max_pos;
        double lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
        if (wavelen < orig / hi) return f;
        if (wavelen > orig / lo) return f / c->rope_factor;
        double smooth = (orig / wavelen - lo) / (hi - lo);
        return (1.0 - smooth) * f / c->rope_factor + smooth * f;
    }
    return f;
}

json_t *model_config_to_json(const model_config *c) {
    json_t *j = json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b}", "dim", c->dim, "n_layers", c->n_layers,
                          "n_heads", c->n_heads, "n_kv_heads", c->n_kv_heads, "ffn_dim", c->ffn_dim, "vocab_size",
                          c->vocab_size, "max_seq_len", c->max_seq_len, "rope_theta", (double)c->rope_theta,
                          "norm_eps", (double)c->norm_eps, "tie_embeddings", c->tie_embeddings);
    if (!j) return NULL;
    if (model_head_dim(c) * c->n_heads != c->dim) json_object_set_new(j, "head_dim", json_integer(c->head_dim));
    if (c->attn_bias) json_object_set_new(j, "attn_bias", json_true());
    if (c->qk_norm) json_object_set_new(j, "qk_norm", json_true());
    if (c->rope_scaling == MODEL_ROPE_LINEAR) {
        json_object_set_new(j, "rope_scaling", json_pack("{s:s,s:f}", "type", "linear", "factor", (double)c->rope_factor));
    } else if (c->rope_scaling == MODEL_ROPE_LLAMA3) {
        json_object_set_new(j, "rope_scaling",
                            json_pack("{s:s,s:f,s:f,s:f,s:i}", "type", "llama3", "factor", (double)c->rope_factor,
                                      "low_freq_factor", (double)c->rope_low_freq_factor, "high_freq_factor",
                                      (double)c->rope_high_freq_factor, "original_max_position_embeddings",
                                      c->rope_original_max_pos));
    }
    if (c->has_layer_opts) { /* explicit lists, whatever preset they came from */
        json_t *share = json_array(), *pat = json_array();
        int any_share = 0, any_other = 0;
        for (int l = 0; l < c->n_layers; l++) {
            json_array_append_new(share, json_integer(c->kv_src[l] - 1));
            json_array_append_new(pat, json_string(model_attn_kind_name((model_attn_kind)c->attn_kind[l])));
            any_share |= c->kv_src[l] != 0;
            any_other |= c->attn_kind[l] != MODEL_ATTN_GLOBAL;
        }
        if (any_share) json_object_set_new(j, "kv_share", share);
        else json_decref(share);
        if (any_other) json_object_set_new(j, "attention_pattern", pat);
        else json_decref(pat);
        if (c->attention_window) json_object_set_new(j, "attention_window", json_integer(c->attention_window));
    }
    return j;
}

/* Every tensor kind in buffer order: name, Hugging Face name, per layer, norm weight. */
static const struct {
    const char *name, *hf_name;
    int per_layer, is_norm;
} tensor_spec[MODEL_N_PARAM_TENSORS] = {
    [MODEL_T_EMBED] = {"embed", "model.embed_tokens.weight", 0, 0},
    [MODEL_T_ATTN_NORM] = {"attn_norm", "model.layers.%d.input_layernorm.weight", 1, 1},
    [MODEL_T_WQ] = {"wq", "model.layers.%d.self_attn.q_proj.weight", 1, 0},
    [MODEL_T_WK] = {"wk", "model.layers.%d.self_attn.k_proj.weight", 1, 0},
    [MODEL_T_WV] = {"wv", "model.layers.%d.self_attn.v_proj.weight", 1, 0},
    [MODEL_T_BQ] = {"bq", "model.layers.%d.self_attn.q_proj.bias", 1, 0},
    [MODEL_T_BK] = {"bk", "model.layers.%d.self_attn.k_proj.bias", 1, 0},
    [MODEL_T_BV] = {"bv", "model.layers.%d.self_attn.v_proj.bias", 1, 0},
    [MODEL_T_Q_NORM] = {"q_norm", "model.layers.%d.self_attn.q_norm.weight", 1, 1},
    [MODEL_T_K_NORM] = {"k_norm", "model.layers.%d.self_attn.k_norm.weight", 1, 1},
    [MODEL_T_WO] = {"wo", "model.layers.%d.self_attn.o_proj.weight", 1, 0},
    [MODEL_T_FFN_NORM] = {"ffn_norm", "model.layers.%d.post_attention_layernorm.weight", 1, 1},
    [MODEL_T_W_GATE] = {"w_gate", "model.layers.%d.mlp.gate_proj.weight", 1, 0},
    [MODEL_T_W_UP] = {"w_up", "model.layers.%d.mlp.up_proj.weight", 1, 0},
    [MODEL_T_W_DOWN] = {"w_down", "model.layers.%d.mlp.down_proj.weight", 1, 0},
    [MODEL_T_FINAL_NORM] = {"final_norm", "model.norm.weight", 0, 1},
    [MODEL_T_LM_HEAD] = {"lm_head", "lm_head.weight", 0, 0},
};

static void layout(model *m) {
    const model_config *c = &m->cfg;
    size_t C = c->dim, L = c->n_layers, D = model_head_dim(c), H = c->n_heads, KVH = c->n_kv_heads;
    size_t F = c->ffn_dim, V = c->vocab_size;
    size_t shape[MODEL_N_PARAM_TENSORS][2] = {
        [MODEL_T_EMBED] = {V, C},      [MODEL_T_ATTN_NORM] = {C, 1},  [MODEL_T_WQ] = {H * D, C},
        [MODEL_T_WK] = {KVH * D, C},   [MODEL_T_WV] = {KVH * D, C},   [MODEL_T_BQ] = {H * D, 1},
        [MODEL_T_BK] = {KVH * D, 1},   [MODEL_T_BV] = {KVH * D, 1},   [MODEL_T_Q_NORM] = {D, 1},
        [MODEL_T_K_NORM] = {D, 1},     [MODEL_T_WO] = {C, H * D},     [MODEL_T_FFN_NORM] = {C, 1},
        [MODEL_T_W_GATE] = {F, C},     [MODEL_T_W_UP] = {F, C},       [MODEL_T_W_DOWN] = {C, F},
        [MODEL_T_FINAL_NORM] = {C, 1}, [MODEL_T_LM_HEAD] = {V, C},
    };
    size_t off = 0;
    m->n_tensors = 0;
    for (int id = 0; id < MODEL_N_PARAM_TENSORS; id++) {
        int present = 1;
        if (id == MODEL_T_BQ || id == MODEL_T_BK || id == MODEL_T_BV) present = c->attn_bias;
        if (id == MODEL_T_Q_NORM || id == MODEL_T_K_NORM) present = c->qk_norm;
        if (id == MODEL_T_LM_HEAD) present = !c->tie_embeddings;
        if (!present) continue;
        model_tensor_info *t = &m->tensors[m->n_tensors++];
        t->id = (model_tensor_id)id;
        t->name = tensor_spec[id].name;
        t->hf_name = tensor_spec[id].hf_name;
        t->per_layer = tensor_spec[id].per_layer;
        t->is_norm = tensor_spec[id].is_norm;
        t->rows = (int)shape[id][0];
        t->cols = (int)shape[id][1];
        t->decay = t->cols > 1;
        int kv = id == MODEL_T_WK || id == MODEL_T_WV || id == MODEL_T_BK || id == MODEL_T_BV || id == MODEL_T_K_NORM;
        t->n_stack = !t->per_layer ? 1 : kv ? model_kv_layers(c) : (int)L;
        t->numel = shape[id][0] * shape[id][1] * (size_t)t->n_stack;
        t->offset = off;
        off += t->numel;
    }
    m->n_params = off;
}

const model_tensor_info *model_tensor(const model *m, model_tensor_id id) {
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].id == id) return &m->tensors[i];
    return NULL;
}

void model_params_view(const model *m, float *base, model_params *p) {
    float **slots[MODEL_N_PARAM_TENSORS] = {
        [MODEL_T_EMBED] = &p->embed,   [MODEL_T_ATTN_NORM] = &p->attn_norm, [MODEL_T_WQ] = &p->wq,
        [MODEL_T_WK] = &p->wk,         [MODEL_T_WV] = &p->wv,               [MODEL_T_BQ] = &p->bq,
        [MODEL_T_BK] = &p->bk,         [MODEL_T_BV] = &p->bv,               [MODEL_T_Q_NORM] = &p->q_norm,
        [MODEL_T_K_NORM] = &p->k_norm, [MODEL_T_WO] = &p->wo,               [MODEL_T_FFN_NORM] = &p->ffn_norm,
        [MODEL_T_W_GATE] = &p->w_gate, [MODEL_T_W_UP] = &p->w_up,           [MODEL_T_W_DOWN] = &p->w_down,
        [MODEL_T_FINAL_NORM] = &p->final_norm, [MODEL_T_LM_HEAD] = &p->lm_head,
    };
    memset(p, 0, sizeof *p);
    for (int i = 0; i < m->n_tensors; i++) *slots[m->tensors[i].id] = base + m->tensors[i].offset;
    if (m->cfg.tie_embeddings) p->lm_head = p->embed;
}

int model_create(model **out, const model_config *cfg, rlhf_error *err) {
    *out = NULL;
    int rc = model_config_validate(cfg, "model config", err);
    if (rc) return rc;
    model *m = calloc(1, sizeof *m);
    if (!m) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    m->cfg = *cfg;
    m->cfg.head_dim = model_head_dim(cfg); /* 0 (= dim / n_heads) made explicit */
    layout(m);
    /* page-aligned (so 64-byte aligned for SIMD loads), zeroed so norms etc. are defined before init, and
     * left out of fork: the updater starts reward sandboxes while its trainer writes these weights */
    size_t bytes = m->n_params * sizeof(float);
    m->params_mem = rlhf_big_alloc(bytes);
    if (!m->params_mem) {
        size_t n = m->n_params;
        free(m);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate %zu parameters", n);
    }
    model_params_view(m, m->params_mem, &m->p);
    *out = m;
    return 0;
}

/* A matrix: every 2-D weight (its values go to bf16 storage with model_keep_bf16). */
static int is_matrix(const model_tensor_info *t) { return t->cols > 1; }

int model_keep_bf16(model *m, rlhf_error *err) {
    if (m->bf16_mem) return 0;
    m->bf16_mem = rlhf_big_alloc(m->n_params * sizeof(uint16_t));
    if (!m->bf16_mem) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate %zu bf16 parameters", m->n_params);
    const uint16_t **slot16[MODEL_N_PARAM_TENSORS] = {
        [MODEL_T_EMBED] = &m->p16.embed, [MODEL_T_WQ] = &m->p16.wq,         [MODEL_T_WK] = &m->p16.wk,
        [MODEL_T_WV] = &m->p16.wv,       [MODEL_T_WO] = &m->p16.wo,         [MODEL_T_W_GATE] = &m->p16.w_gate,
        [MODEL_T_W_UP] = &m->p16.w_up,   [MODEL_T_W_DOWN] = &m->p16.w_down, [MODEL_T_LM_HEAD] = &m->p16.lm_head,
    };
    float **slot[MODEL_N_PARAM_TENSORS] = {
        [MODEL_T_EMBED] = &m->p.embed, [MODEL_T_WQ] = &m->p.wq,         [MODEL_T_WK] = &m->p.wk,
        [MODEL_T_WV] = &m->p.wv,       [MODEL_T_WO] = &m->p.wo,         [MODEL_T_W_GATE] = &m->p.w_gate,
        [MODEL_T_W_UP] = &m->p.w_up,   [MODEL_T_W_DOWN] = &m->p.w_down, [MODEL_T_LM_HEAD] = &m->p.lm_head,
    };
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        if (!is_matrix(t)) continue;
        *slot16[t->id] = m->bf16_mem + t->offset;
        *slot[t->id] = NULL; /* a use of the fp32 matrix of such a model faults at once, not reads zeros */
    }
    if (m->cfg.tie_embeddings) m->p16.lm_head = m->p16.embed;
    m->p.lm_head = NULL;
    return 0;
}

int model_require_fp32(const model *m, const char *what, rlhf_error *err) {
    if (!m->bf16_mem) return 0;
    return RLHF_FAIL(err, RLHF_EUNSUPPORTED, "%s needs the model's weights in fp32; this model keeps a frozen bf16 "
                     "base (LoRA training only)", what);
}

void model_tensor_read_f32(const model *m, const model_tensor_info *t, size_t offset, size_t n, float *dst) {
    if (m->bf16_mem && is_matrix(t)) {
        const uint16_t *src = m->bf16_mem + t->offset + offset;
        for (size_t i = 0; i < n; i++) dst[i] = model_bf16_to_f32(src[i]);
    } else {
        memcpy(dst, m->params_mem + t->offset + offset, n * sizeof(float));
    }
}

void model_destroy(model **pm) {
    if (!pm || !*pm) return;
    rlhf_big_free((*pm)->params_mem, (*pm)->n_params * sizeof(float));
    rlhf_big_free((*pm)->bf16_mem, (*pm)->n_params * sizeof(uint16_t));
    free((*pm)->hf_config);
    free((*pm)->tokenizer_dir);
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
        if (t->is_norm || t->cols == 1) { /* norm weights 1, biases 0 */
            for (size_t j = 0; j < t->numel; j++) w[j] = t->is_norm ? 1.0f : 0.0f;
            continue;
        }
        float std = (!strcmp(t->name, "wo") || !strcmp(t->name, "w_down")) ? out_scale : 0.02f;
        for (size_t j = 0; j < t->numel; j++) w[j] = std * rlhf_rng_normal(&rng);
    }
}

int model_copy_weights(model *dst, const model *src, rlhf_error *err) {
    if (memcmp(&dst->cfg, &src->cfg, sizeof dst->cfg) != 0)
        return RLHF_FAIL(err, RLHF_EINVAL, "model configs differ");
    int rc = model_require_fp32(src, "copying weights", err);
    if (rc || (rc = model_require_fp32(dst, "copying weights", err))) return rc;
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
