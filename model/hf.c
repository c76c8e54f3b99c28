/* model/hf.c — Hugging Face model directories: config.json to model_config, the (sharded)
 * safetensors weights into the parameter buffer, and the export back to a directory that
 * `transformers` loads (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM).
 *
 * Every key of config.json is either implemented, known to change nothing this model computes, or an
 * error naming the file, the key and the value: a config that asks for something the kernels do not do
 * must not load as a different model. */
#include "model/checkpoint_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- config.json */

typedef enum hf_arch { HF_LLAMA, HF_MISTRAL, HF_QWEN2, HF_QWEN3, HF_N_ARCH } hf_arch;

static const struct {
    const char *arch, *model_type;
} hf_archs[HF_N_ARCH] = {
    [HF_LLAMA] = {"LlamaForCausalLM", "llama"},
    [HF_MISTRAL] = {"MistralForCausalLM", "mistral"},
    [HF_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
    [HF_QWEN3] = {"Qwen3ForCausalLM", "qwen3"},
};

/* Keys that describe the file or a runtime choice of transformers, not the function computed
 * (max_window_layers matters only with a sliding window, refused below; pretraining_tp splits the same
 * matmuls; is_llama_config is a nanotron export marker that transformers does not read). */
static const char *const hf_inert_keys[] = {"_name_or_path", "transformers_version", "initializer_range", "use_cache",
                                            "torch_dtype", "dtype", "max_window_layers", "pretraining_tp",
                                            "is_llama_config", NULL};
/* Keys read below. */
static const char *const hf_model_keys[] = {
    "architectures",     "model_type",          "hidden_size",      "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim",       "rms_norm_eps",      "rope_theta",
    "rope_scaling",      "max_position_embeddings", "tie_word_embeddings", "attention_bias", "hidden_act",
    "bos_token_id",      "eos_token_id",        "pad_token_id",     "sliding_window",    "use_sliding_window",
    "vocab_size",        "layer_types",         "attention_dropout", "mlp_bias",         "rope_interleaved", NULL};

static int in_list(const char *const *list, const char *s) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], s)) return 1;
    return 0;
}

/* The value as short JSON text for messages. */
static const char *show(const json_t *v, char *buf, size_t cap) {
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    snprintf(buf, cap, "%s", s ? s : "(absent)");
    if (s && strlen(s) >= cap && cap > 4) memcpy(buf + cap - 4, "...", 4);
    free(s);
    return buf;
}

static int bad_value(rlhf_error *err, int code, const char *file, const char *key, const json_t *v, const char *why) {
    char b[160];
    return rlhf_error_set(err, code, file, "key '%s' = %s: %s", key, show(v, b, sizeof b), why);
}

static int hf_int(const json_t *j, const char *key, int *out, int required, const char *file, rlhf_error *err) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        if (required) return rlhf_error_set(err, RLHF_ECORRUPT, file, "missing required key '%s'", key);
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 30))
        return bad_value(err, RLHF_ECORRUPT, file, key, v, "must be an integer in 1..2^30");
    *out = (int)json_integer_value(v);
    return 0;
}

static int hf_float(const json_t *j, const char *key, float *out, const char *file, rlhf_error *err) {
    json_t *v = json_object_get(j, key);
    if (!v) return 0;
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
        return bad_value(err, RLHF_ECORRUPT, file, key, v, "must be a number > 0");
    *out = (float)json_number_value(v);
    return 0;
}

static int hf_bool(const json_t *j, const char *key, int *out, const char *file, rlhf_error *err) {
    json_t *v = json_object_get(j, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad_value(err, RLHF_ECORRUPT, file, key, v, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

/* A token id (or, for eos_token_id, a list of ids): null or in [0, vocab). */
static int hf_token_ids(const json_t *j, const char *key, int vocab, const char *file, rlhf_error *err) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return 0;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (json_is_array(v) && strcmp(key, "eos_token_id"))
        return bad_value(err, RLHF_ECORRUPT, file, key, v, "must be an integer token id or null");
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= vocab)
            return bad_value(err, RLHF_ECORRUPT, file, key, v, "must hold token ids in [0, vocab_size)");
    }
    return 0;
}

static int parse_rope_scaling(model_config *cfg, const json_t *rs, const char *file, rlhf_error *err) {
    if (!rs || json_is_null(rs)) return 0;
    if (!json_is_object(rs)) return bad_value(err, RLHF_ECORRUPT, file, "rope_scaling", rs, "must be an object or null");
    json_t *rt = json_object_get(rs, "rope_type"), *t = json_object_get(rs, "type");
    if ((rt && !json_is_string(rt)) || (t && !json_is_string(t)) || (!rt && !t) ||
        (rt && t && strcmp(json_string_value(rt), json_string_value(t))))
        return bad_value(err, RLHF_ECORRUPT, file, "rope_scaling", rs,
                         "needs a string 'rope_type' (or 'type'; both must agree)");
    const char *type = json_string_value(rt ? rt : t);
    static const char *const none_keys[] = {"rope_type", "type", NULL};
    static const char *const linear_keys[] = {"rope_type", "type", "factor", NULL};
    static const char *const llama3_keys[] = {"rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings", NULL};
    const char *const *keys;
    if (!strcmp(type, "default")) {
        keys = none_keys;
    } else if (!strcmp(type, "linear")) {
        keys = linear_keys;
        cfg->rope_scaling = MODEL_ROPE_LINEAR;
    } else if (!strcmp(type, "llama3")) {
        keys = llama3_keys;
        cfg->rope_scaling = MODEL_ROPE_LLAMA3;
    } else {
        return bad_value(err, RLHF_EUNSUPPORTED, file, "rope_scaling.rope_type", json_object_get(rs, rt ? "rope_type" : "type"),
                         "not implemented (default, linear, llama3 are)");
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)rs, k, v) {
        if (!in_list(keys, k)) {
            char key[96];
            snprintf(key, sizeof key, "rope_scaling.%s", k);
            return bad_value(err, RLHF_EUNSUPPORTED, file, key, v, "not implemented for this rope_type");
        }
    }
    if (cfg->rope_scaling == MODEL_ROPE_NONE) return 0;
    for (int i = 2; keys[i]; i++) {
        char key[96];
        snprintf(key, sizeof key, "rope_scaling.%s", keys[i]);
        json_t *x = json_object_get(rs, keys[i]);
        if (!x) return rlhf_error_set(err, RLHF_ECORRUPT, file, "missing required key '%s'", key);
        int is_int = !strcmp(keys[i], "original_max_position_embeddings");
        if (!json_is_number(x) || !(json_number_value(x) > 0) || !isfinite(json_number_value(x)) ||
            (is_int && !json_is_integer(x)))
            return bad_value(err, RLHF_ECORRUPT, file, key, x, is_int ? "must be an integer > 0" : "must be a number > 0");
    }
    cfg->rope_factor = (float)json_number_value(json_object_get(rs, "factor"));
    if (cfg->rope_scaling == MODEL_ROPE_LLAMA3) {
        cfg->rope_low_freq_factor = (float)json_number_value(json_object_get(rs, "low_freq_factor"));
        cfg->rope_high_freq_factor = (float)json_number_value(json_object_get(rs, "high_freq_factor"));
        cfg->rope_original_max_pos = (int)json_integer_value(json_object_get(rs, "original_max_position_embeddings"));
    }
    return 0;
}

/* config.json -> cfg (max_seq_len capped at cap when cap > 0). */
int model_hf_parse_config(model_config *cfg, const json_t *j, const char *file, int cap, rlhf_error *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(j)) return rlhf_error_set(err, RLHF_ECORRUPT, file, "not a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v) {
        if (!in_list(hf_model_keys, k) && !in_list(hf_inert_keys, k))
            return bad_value(err, RLHF_EUNSUPPORTED, file, k, v, "unknown config key (not implemented)");
    }
    json_t *archs = json_object_get(j, "architectures");
    if (!json_is_array(archs) || json_array_size(archs) != 1 || !json_is_string(json_array_get(archs, 0)))
        return bad_value(err, RLHF_ECORRUPT, file, "architectures", archs, "must be a list of one architecture name");
    const char *an = json_string_value(json_array_get(archs, 0));
    int a = 0;
    while (a < HF_N_ARCH && strcmp(hf_archs[a].arch, an)) a++;
    if (a == HF_N_ARCH)
        return bad_value(err, RLHF_EUNSUPPORTED, file, "architectures", archs,
                         "not implemented (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
    json_t *mt = json_object_get(j, "model_type");
    if (mt && !(json_is_string(mt) && !strcmp(json_string_value(mt), hf_archs[a].model_type)))
        return bad_value(err, RLHF_ECORRUPT, file, "model_type", mt, "does not match the architecture");
    int rc;
    if ((rc = hf_int(j, "hidden_size", &cfg->dim, 1, file, err)) ||
        (rc = hf_int(j, "intermediate_size", &cfg->ffn_dim, 1, file, err)) ||
        (rc = hf_int(j, "num_hidden_layers", &cfg->n_layers, 1, file, err)) ||
        (rc = hf_int(j, "num_attention_heads", &cfg->n_heads, 1, file, err)) ||
        (rc = hf_int(j, "vocab_size", &cfg->vocab_size, 1, file, err)) ||
        (rc = hf_int(j, "max_position_embeddings", &cfg->max_seq_len, 1, file, err)))
        return rc;
    cfg->n_kv_heads = cfg->n_heads;
    if ((rc = hf_int(j, "num_key_value_heads", &cfg->n_kv_heads, 0, file, err))) return rc;
    /* Qwen3's modelling code takes head_dim from the config (its class default 128 differs from
     * hidden/heads), so a Qwen3 config must state it; the others default to hidden/heads. */
    if (a == HF_QWEN3 && !json_is_integer(json_object_get(j, "head_dim")))
        return rlhf_error_set(err, RLHF_ECORRUPT, file, "missing required key 'head_dim' (Qwen3ForCausalLM)");
    if ((rc = hf_int(j, "head_dim", &cfg->head_dim, 0, file, err))) return rc;
    if (!cfg->head_dim) {
        if (cfg->dim % cfg->n_heads)
            return rlhf_error_set(err, RLHF_ECORRUPT, file, "hidden_size %d is not divisible by num_attention_heads %d "
                                  "and there is no head_dim", cfg->dim, cfg->n_heads);
        cfg->head_dim = cfg->dim / cfg->n_heads;
    }
    if (cfg->n_heads % cfg->n_kv_heads)
        return rlhf_error_set(err, RLHF_ECORRUPT, file, "num_attention_heads %d is not a multiple of "
                              "num_key_value_heads %d", cfg->n_heads, cfg->n_kv_heads);
    cfg->rope_theta = 10000.0f;
    cfg->norm_eps = 1e-6f; /* the four configs' class default */
    if ((rc = hf_float(j, "rope_theta", &cfg->rope_theta, file, err)) ||
        (rc = hf_float(j, "rms_norm_eps", &cfg->norm_eps, file, err)) ||
        (rc = hf_bool(j, "tie_word_embeddings", &cfg->tie_embeddings, file, err)))
        return rc;
    json_t *act = json_object_get(j, "hidden_act");
    if (act && !(json_is_string(act) && !strcmp(json_string_value(act), "silu")))
        return bad_value(err, RLHF_EUNSUPPORTED, file, "hidden_act", act, "not implemented (silu is)");
    /* Biases: Qwen2 always has q/k/v biases (its code does not read attention_bias); Llama's and
     * Qwen3's attention_bias also puts a bias on o_proj, which this model does not have. */
    json_t *ab = json_object_get(j, "attention_bias");
    if (ab) {
        int on = 0;
        if (a == HF_QWEN2 || a == HF_MISTRAL)
            return bad_value(err, RLHF_EUNSUPPORTED, file, "attention_bias", ab, "not a key of this architecture");
        if ((rc = hf_bool(j, "attention_bias", &on, file, err))) return rc;
        if (on)
            return bad_value(err, RLHF_EUNSUPPORTED, file, "attention_bias", ab,
                             "means q/k/v/o_proj biases; an o_proj bias is not implemented");
    }
    cfg->attn_bias = a == HF_QWEN2;
    cfg->qk_norm = a == HF_QWEN3;
    json_t *mb = json_object_get(j, "mlp_bias");
    if (mb && !json_is_false(mb)) return bad_value(err, RLHF_EUNSUPPORTED, file, "mlp_bias", mb, "MLP biases are not implemented");
    json_t *ad = json_object_get(j, "attention_dropout");
    if (ad && !(json_is_number(ad) && json_number_value(ad) == 0))
        return bad_value(err, RLHF_EUNSUPPORTED, file, "attention_dropout", ad, "dropout is not implemented (0 is)");
    /* nanotron's flag (SmolLM2 configs carry false); transformers always rotates halves, as this model does */
    json_t *ri = json_object_get(j, "rope_interleaved");
    if (ri && !json_is_false(ri))
        return bad_value(err, RLHF_EUNSUPPORTED, file, "rope_interleaved", ri, "interleaved RoPE is not implemented");
    json_t *lt = json_object_get(j, "layer_types");
    if (lt) {
        int ok = json_is_array(lt);
        for (size_t i = 0; ok && i < json_array_size(lt); i++)
            ok = json_is_string(json_array_get(lt, i)) && !strcmp(json_string_value(json_array_get(lt, i)), "full_attention");
        if (!ok) return bad_value(err, RLHF_EUNSUPPORTED, file, "layer_types", lt, "only full_attention layers are implemented");
    }
    if ((rc = parse_rope_scaling(cfg, json_object_get(j, "rope_scaling"), file, err))) return rc;
    if (cap > 0 && cfg->max_seq_len > cap) cfg->max_seq_len = cap;
    /* A sliding window changes nothing while every sequence fits in it. */
    json_t *usw = json_object_get(j, "use_sliding_window"), *sw = json_object_get(j, "sliding_window");
    if (usw && !json_is_boolean(usw)) return bad_value(err, RLHF_ECORRUPT, file, "use_sliding_window", usw, "must be true or false");
    if (!json_is_false(usw) && sw && !json_is_null(sw)) {
        if (!json_is_integer(sw) || json_integer_value(sw) <= 0)
            return bad_value(err, RLHF_ECORRUPT, file, "sliding_window", sw, "must be a positive integer or null");
        if (json_integer_value(sw) < cfg->max_seq_len) {
            char why[160];
            snprintf(why, sizeof why, "sliding-window attention is not implemented (a window below max_seq_len %d is "
                     "active; cap max_seq_len to at most the window to load this model)", cfg->max_seq_len);
            return bad_value(err, RLHF_EUNSUPPORTED, file, "sliding_window", sw, why);
        }
    }
    if ((rc = hf_token_ids(j, "bos_token_id", cfg->vocab_size, file, err)) ||
        (rc = hf_token_ids(j, "eos_token_id", cfg->vocab_size, file, err)) ||
        (rc = hf_token_ids(j, "pad_token_id", cfg->vocab_size, file, err)))
        return rc;
    return model_config_validate(cfg, file, err);
}

/* ---------------------------------------------------------------- weights */

/* dir/name; a path too long for the buffer becomes "" (which no file has), so it fails as missing. */
static void join(char *out, size_t cap, const char *dir, const char *name) {
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap) out[0] = 0;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

typedef struct hf_shards {
    int n;
    char **names;           /* shard file names (relative to the directory) */
    safetensors_file **f;   /* opened shards, same order */
    json_t *weight_map;     /* index's tensor -> shard name, or NULL for a single file */
    char index_path[4096];
} hf_shards;

static void shards_free(hf_shards *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->names[i]);
        if (s->f) safetensors_close(&s->f[i]);
    }
    free(s->names);
    free(s->f);
    json_decref(s->weight_map);
    memset(s, 0, sizeof *s);
}

static int shard_index(const hf_shards *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) return i;
    return -1;
}

/* Finds the weight files, checks every shard exists, then opens (maps) them all. */
static int shards_open(hf_shards *s, const char *dir, rlhf_error *err) {
    memset(s, 0, sizeof *s);
    char p[4096];
    join(p, sizeof p, dir, "model.safetensors");
    int rc = 0;
    if (is_file(p)) { /* as transformers: the single file first */
        if (!(s->names = calloc(1, sizeof *s->names)) || !(s->names[0] = strdup("model.safetensors")))
            return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        s->n = 1;
    } else {
        join(s->index_path, sizeof s->index_path, dir, "model.safetensors.index.json");
        if (!is_file(s->index_path))
            return rlhf_error_set(err, RLHF_EIO, dir, "no model.safetensors or model.safetensors.index.json in the "
                                  "directory");
        json_t *idx = rlhf_json_load_file(s->index_path, JSON_REJECT_DUPLICATES, err);
        if (!idx) return err ? err->code : RLHF_ECORRUPT;
        json_t *wm = json_object_get(idx, "weight_map");
        if (!json_is_object(wm) || !json_object_size(wm)) {
            json_decref(idx);
            return rlhf_error_set(err, RLHF_ECORRUPT, s->index_path, "key 'weight_map' must be a non-empty object");
        }
        s->weight_map = json_incref(wm);
        json_decref(idx);
        const char *k;
        json_t *v;
        s->names = calloc(json_object_size(wm), sizeof *s->names);
        if (!s->names) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        json_object_foreach(wm, k, v) {
            const char *fn = json_string_value(v);
            if (!fn || !fn[0] || strchr(fn, '/') || !strcmp(fn, ".") || !strcmp(fn, ".."))
                return bad_value(err, RLHF_ECORRUPT, s->index_path, "weight_map", v,
                                 "must name a file in the directory (no '/')");
            if (shard_index(s, fn) >= 0) continue;
            if (!(s->names[s->n] = strdup(fn))) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            s->n++;
        }
        for (int i = 0; i < s->n; i++) {
            join(p, sizeof p, dir, s->names[i]);
            if (!is_file(p))
                return rlhf_error_set(err, RLHF_EIO, s->index_path, "shard '%s' named in weight_map is missing", s->names[i]);
        }
    }
    if (!(s->f = calloc((size_t)s->n, sizeof *s->f))) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i = 0; i < s->n && !rc; i++) {
        join(p, sizeof p, dir, s->names[i]);
        rc = safetensors_open(&s->f[i], p, err);
    }
    return rc;
}

/* The tensor NAME and the shard holding it (by weight_map when sharded), or NULL with *shard = -1. */
static const safetensors_tensor *shards_find(const hf_shards *s, const char *name, int *shard) {
    *shard = 0;
    if (s->weight_map) {
        *shard = shard_index(s, json_string_value(json_object_get(s->weight_map, name)) ?: "");
        if (*shard < 0) return NULL;
    }
    return safetensors_find(s->f[*shard], name);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Loads every expected tensor and accounts for every tensor of every shard. */
static int hf_fill(model *m, const hf_shards *s, const char *dir, int keep_bf16, rlhf_error *err) {
    model_ckpt_entry *e;
    int n;
    if (model_ckpt_layout(m, &e, &n)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int rc = 0;
    if (keep_bf16) {
        const safetensors_tensor **ts = calloc((size_t)n, sizeof *ts);
        if (!ts) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        for (int i = 0; ts && i < n; i++) {
            int sh;
            ts[i] = shards_find(s, e[i].name, &sh);
        }
        if (ts) rc = model_ckpt_keep_bf16_if(m, e, ts, n, err);
        free(ts);
    }
    for (int i = 0; i < n && !rc; i++) {
        int sh;
        const safetensors_tensor *t = shards_find(s, e[i].name, &sh);
        if (!t)
            rc = rlhf_error_set(err, RLHF_ECORRUPT, sh >= 0 ? s->f[sh]->source : s->index_path[0] ? s->index_path : dir,
                                "missing tensor '%s'", e[i].name);
        else
            rc = model_ckpt_fill(m, &e[i], t, s->f[sh]->source, err);
    }
    /* every weight_map entry is in the shard it names */
    if (!rc && s->weight_map) {
        const char *k;
        json_t *v;
        json_object_foreach(s->weight_map, k, v) {
            int sh;
            if (!shards_find(s, k, &sh)) {
                rc = rlhf_error_set(err, RLHF_ECORRUPT, s->index_path, "weight_map puts tensor '%s' in '%s', which does "
                                    "not hold it", k, json_string_value(v));
                break;
            }
        }
    }
    float *tmp = NULL;
    for (int f = 0; f < s->n && !rc; f++) {
        for (int j = 0; j < s->f[f]->n_tensors && !rc; j++) {
            const safetensors_tensor *t = &s->f[f]->tensors[j];
            const char *src = s->f[f]->source;
            int sh;
            if (s->weight_map && (!shards_find(s, t->name, &sh) || sh != f)) {
                rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor '%s' is not in the index's weight_map for this "
                                    "shard", t->name);
                break;
            }
            int expected = 0;
            for (int i = 0; i < n && !expected; i++) expected = !strcmp(e[i].name, t->name);
            if (expected || ends_with(t->name, ".rotary_emb.inv_freq")) continue; /* derived buffer: recomputed */
            if (!strcmp(t->name, "lm_head.weight") && m->cfg.tie_embeddings) {
                /* tied, yet stored: accepted only as an exact copy of the embedding */
                const model_tensor_info *em = model_tensor(m, MODEL_T_EMBED);
                if (!tmp && !(tmp = malloc(em->numel * sizeof *tmp))) {
                    rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
                    break;
                }
                int sh2 = t->ndim == 2 && t->shape[0] == em->rows && t->shape[1] == em->cols;
                int same = sh2 && !safetensors_tensor_to_f32(t, tmp, src, err);
                for (size_t o = 0; same && o < em->numel; o += 4096) { /* the embedding as loaded, either storage */
                    float part[4096];
                    size_t k = em->numel - o < 4096 ? em->numel - o : 4096;
                    model_tensor_read_f32(m, em, o, k, part);
                    same = !memcmp(tmp + o, part, k * sizeof *part);
                }
                if (!same)
                    rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "tensor 'lm_head.weight' differs from "
                                        "'model.embed_tokens.weight' but config.json says tie_word_embeddings");
                continue;
            }
            rc = rlhf_error_set(err, RLHF_ECORRUPT, src, "unexpected tensor '%s' (not part of the model config.json "
                                "describes)", t->name);
        }
    }
    free(tmp);
    free(e);
    return rc;
}

int model_hf_load_dir(model **out, const char *dir, const model_load_options *opt, rlhf_error *err) {
    *out = NULL;
    char cfg_path[4096];
    join(cfg_path, sizeof cfg_path, dir, "config.json");
    if (!is_file(cfg_path))
        return rlhf_error_set(err, RLHF_EIO, cfg_path, "missing: a model directory needs config.json (Hugging Face "
                              "layout)");
    json_t *j = rlhf_json_load_file(cfg_path, JSON_REJECT_DUPLICATES, err);
    if (!j) return err && err->code ? err->code : RLHF_ECORRUPT;
    model_config cfg;
    int rc = model_hf_parse_config(&cfg, j, cfg_path, opt ? opt->max_seq_len : 0, err);
    if (!rc && opt && opt->expect) rc = model_config_compare(&cfg, opt->expect, cfg_path, err);
    char *text = rc ? NULL : json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (rc) return rc;
    if (!text) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    hf_shards s;
    model *m = NULL;
    if (!(rc = shards_open(&s, dir, err)) && !(rc = model_create(&m, &cfg, err))) {
        m->hf_config = text;
        text = NULL;
        rc = hf_fill(m, &s, dir, opt && opt->keep_bf16, err);
    }
    shards_free(&s);
    free(text);
    /* the directory's tokenizer goes with the model (into its checkpoints, e.g. a reward model's) */
    char tp[4200];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", dir);
    if (!rc && access(tp, R_OK) == 0 && !(m->tokenizer_dir = realpath(dir, NULL)))
        rc = rlhf_error_set(err, RLHF_ESYS, dir, "cannot resolve the path: %s", strerror(errno));
    if (rc) {
        model_destroy(&m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ---------------------------------------------------------------- export */

static json_t *rope_scaling_json(const model_config *c) {
    if (c->rope_scaling == MODEL_ROPE_LINEAR)
        return json_pack("{s:s,s:f}", "rope_type", "linear", "factor", (double)c->rope_factor);
    if (c->rope_scaling == MODEL_ROPE_LLAMA3)
        return json_pack("{s:s,s:f,s:f,s:f,s:i}", "rope_type", "llama3", "factor", (double)c->rope_factor,
                         "low_freq_factor", (double)c->rope_low_freq_factor, "high_freq_factor",
                         (double)c->rope_high_freq_factor, "original_max_position_embeddings", c->rope_original_max_pos);
    return json_null();
}

/* A float key: the source's text is kept when it reads back as the same float. */
static void set_float(json_t *j, const char *key, float x) {
    json_t *v = json_object_get(j, key);
    if (v && json_is_number(v) && (float)json_number_value(v) == x) return;
    json_object_set_new(j, key, json_real((double)x));
}

static int export_config(const model *m, safetensors_dtype dtype, json_t **out, rlhf_error *err) {
    const model_config *c = &m->cfg;
    json_t *j;
    if (c->attn_bias && c->qk_norm)
        return RLHF_FAIL(err, RLHF_EUNSUPPORTED, "a model with both attn_bias and qk_norm has no Hugging Face "
                         "architecture (Qwen3's attention_bias also puts a bias on o_proj)");
    if (model_uses_layer_opts(c))
        return RLHF_FAIL(err, RLHF_EUNSUPPORTED, "a model with kv_share or attention_pattern (shared K/V, local or "
                         "NoPE layers) has no Hugging Face architecture to export to");
    if (m->hf_config) {
        json_error_t je;
        if (!(j = json_loads(m->hf_config, 0, &je)))
            return RLHF_FAIL(err, RLHF_ECORRUPT, "the model's remembered config.json is not JSON: %s", je.text);
        /* the dimensions are the model's; max_position_embeddings stays the source's unless it is shorter */
        json_t *mp = json_object_get(j, "max_position_embeddings");
        if (!json_is_integer(mp) || json_integer_value(mp) < c->max_seq_len)
            json_object_set_new(j, "max_position_embeddings", json_integer(c->max_seq_len));
    } else {
        hf_arch a = c->qk_norm ? HF_QWEN3 : c->attn_bias ? HF_QWEN2 : HF_LLAMA;
        j = json_pack("{s:[s],s:s,s:s,s:i,s:f}", "architectures", hf_archs[a].arch, "model_type", hf_archs[a].model_type,
                      "hidden_act", "silu", "max_position_embeddings", c->max_seq_len, "attention_dropout", 0.0);
        if (!j) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        if (a != HF_QWEN2) json_object_set_new(j, "attention_bias", json_false());
        if (a == HF_LLAMA) json_object_set_new(j, "mlp_bias", json_false());
        if (a != HF_LLAMA) json_object_set_new(j, "use_sliding_window", json_false());
        json_object_set_new(j, "rope_scaling", rope_scaling_json(c));
        /* a model created here speaks the byte-level tokenizer (model_infer.h) */
        if (c->vocab_size >= TOKENIZER_BYTES_MIN_VOCAB) {
            json_object_set_new(j, "bos_token_id", json_integer(TOKENIZER_BYTES_BOS));
            json_object_set_new(j, "eos_token_id", json_integer(TOKENIZER_BYTES_EOS));
            json_object_set_new(j, "pad_token_id", json_integer(TOKENIZER_BYTES_PAD));
        }
    }
    json_object_set_new(j, "hidden_size", json_integer(c->dim));
    json_object_set_new(j, "intermediate_size", json_integer(c->ffn_dim));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layers));
    json_object_set_new(j, "num_attention_heads", json_integer(c->n_heads));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->n_kv_heads));
    json_object_set_new(j, "head_dim", json_integer(model_head_dim(c)));
    json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tie_embeddings));
    set_float(j, "rms_norm_eps", c->norm_eps);
    set_float(j, "rope_theta", c->rope_theta);
    const char *tdt = dtype == SAFETENSORS_BF16 ? "bfloat16" : "float32";
    json_object_set_new(j, "torch_dtype", json_string(tdt));
    if (json_object_get(j, "dtype")) json_object_set_new(j, "dtype", json_string(tdt));
    *out = j;
    return 0;
}

static const char *const hf_tokenizer_files[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json", NULL};

static int write_json(const char *dir, const char *name, const json_t *j, rlhf_error *err) {
    char p[4096];
    join(p, sizeof p, dir, name);
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps' NUL becomes the final newline */
    int rc = rlhf_write_file_atomic(p, s, n + 1, err);
    free(s);
    return rc;
}

static int fsync_path(const char *p, rlhf_error *err) {
    int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return rlhf_error_set(err, RLHF_EIO, p, "cannot sync directory: %s", strerror(e));
    }
    close(fd);
    return 0;
}

static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            join(p, sizeof p, dir, de->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

/* 1 when p exists and is a directory with nothing in it, 0 when p does not exist, -1 otherwise. */
static int empty_or_absent(const char *p) {
    struct stat st;
    if (stat(p, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return -1;
    DIR *d = opendir(p);
    if (!d) return -1;
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = 0;
    closedir(d);
    return empty ? 1 : -1;
}

static int export_into(const model *m, const char *tmp, const model_export_options *o, rlhf_error *err) {
    char p[4096], src[4096];
    int rc, have_gen = 0;
    if (o->tokenizer_from) {
        join(src, sizeof src, o->tokenizer_from, "tokenizer.json");
        int any = is_file(src);
        join(src, sizeof src, o->tokenizer_from, "tokenizer.model");
        any |= is_file(src);
        join(src, sizeof src, o->tokenizer_from, "vocab.json");
        any |= is_file(src);
        if (!any)
            return rlhf_error_set(err, RLHF_EIO, o->tokenizer_from, "no tokenizer.json, tokenizer.model or vocab.json "
                                  "to copy");
        for (int i = 0; hf_tokenizer_files[i]; i++) {
            join(src, sizeof src, o->tokenizer_from, hf_tokenizer_files[i]);
            if (!is_file(src)) continue;
            char *data;
            size_t n;
            if ((rc = rlhf_read_file(src, &data, &n, err))) return rc;
            join(p, sizeof p, tmp, hf_tokenizer_files[i]);
            rc = rlhf_write_file_atomic(p, data, n, err);
            free(data);
            if (rc) return rc;
            have_gen |= !strcmp(hf_tokenizer_files[i], "generation_config.json");
        }
    }
    json_t *cfg;
    if ((rc = export_config(m, o->dtype, &cfg, err))) return rc;
    rc = write_json(tmp, "config.json", cfg, err);
    if (!rc && !have_gen) {
        json_t *gen = json_object();
        static const char *const ids[] = {"bos_token_id", "eos_token_id", "pad_token_id", NULL};
        for (int i = 0; ids[i]; i++)
            if (json_object_get(cfg, ids[i]) && !json_is_null(json_object_get(cfg, ids[i])))
                json_object_set(gen, ids[i], json_object_get(cfg, ids[i]));
        rc = write_json(tmp, "generation_config.json", gen, err);
        json_decref(gen);
    }
    json_decref(cfg);
    if (rc) return rc;
    model_ckpt_entry *e;
    int n;
    if (model_ckpt_layout(m, &e, &n)) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    safetensors_tensor *ts = calloc((size_t)n, sizeof *ts);
    json_t *meta = json_pack("{s:s}", "format", "pt");
    if (!ts || !meta) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    } else {
        for (int i = 0; i < n; i++) {
            ts[i].name = e[i].name;
            ts[i].ndim = e[i].ndim;
            ts[i].shape[0] = e[i].shape[0];
            ts[i].shape[1] = e[i].shape[1];
            ts[i].data = m->params_mem + e[i].offset;
        }
        join(p, sizeof p, tmp, "model.safetensors");
        rc = safetensors_write_as(p, ts, n, meta, o->dtype, err);
    }
    json_decref(meta);
    free(ts);
    free(e);
    return rc;
}

int model_export_hf(const model *m, const char *dir, const model_export_options *opt, rlhf_error *err) {
    model_export_options o = {0};
    if (opt) o = *opt;
    int rc0 = model_require_fp32(m, "exporting a Hugging Face directory", err);
    if (rc0) return rc0;
    if (o.dtype != SAFETENSORS_F32 && o.dtype != SAFETENSORS_BF16)
        return RLHF_FAIL(err, RLHF_EINVAL, "export dtype must be F32 or BF16, got %s", safetensors_dtype_name(o.dtype));
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    char target[4000], tmp[4096];
    if (!len || len >= sizeof target) return RLHF_FAIL(err, RLHF_EINVAL, "bad export directory '%s'", dir);
    memcpy(target, dir, len);
    target[len] = 0;
    int state = empty_or_absent(target);
    if (state < 0)
        return rlhf_error_set(err, RLHF_EINVAL, target, "exists and is not an empty directory; export writes a new one");
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", target, (long)getpid());
    remove_dir(tmp); /* a leftover of an earlier crashed export by a process with this pid */
    if (mkdir(tmp, 0755) != 0) return rlhf_error_set(err, RLHF_EIO, tmp, "cannot create: %s", strerror(errno));
    int rc = export_into(m, tmp, &o, err);
    if (!rc) rc = fsync_path(tmp, err);
    if (!rc && rename(tmp, target) != 0)
        rc = rlhf_error_set(err, RLHF_EIO, target, "cannot rename %s into place: %s", tmp, strerror(errno));
    if (rc) {
        remove_dir(tmp);
        return rc;
    }
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", target);
    char *slash = strrchr(parent, '/');
    if (slash == parent) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(parent, sizeof parent, ".");
    return fsync_path(parent, err);
}
