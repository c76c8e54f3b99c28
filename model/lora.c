/* model/lora.c — LoRA adapter sets (model.h "LoRA adapters"): their configuration, layout (one buffer, a
 * tensor table in PEFT's naming), initialisation and merging into a model's weights. The training branch
 * is model/train.c's OP_LORA (kernels lora_forward / lora_backward in model/ops.c). */
#include "model/model.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Per target: PEFT's module name, the base tensor, its name in the adapter tensor names, and PEFT's key
 * of A (B is the same with lora_B). */
static const struct {
    const char *module;
    model_tensor_id base;
    const char *key_a, *key_b;
} lora_spec[MODEL_LORA_N_TARGETS] = {
    [MODEL_LORA_Q] = {"q_proj", MODEL_T_WQ, "base_model.model.model.layers.%d.self_attn.q_proj.lora_A.weight",
                      "base_model.model.model.layers.%d.self_attn.q_proj.lora_B.weight"},
    [MODEL_LORA_K] = {"k_proj", MODEL_T_WK, "base_model.model.model.layers.%d.self_attn.k_proj.lora_A.weight",
                      "base_model.model.model.layers.%d.self_attn.k_proj.lora_B.weight"},
    [MODEL_LORA_V] = {"v_proj", MODEL_T_WV, "base_model.model.model.layers.%d.self_attn.v_proj.lora_A.weight",
                      "base_model.model.model.layers.%d.self_attn.v_proj.lora_B.weight"},
    [MODEL_LORA_O] = {"o_proj", MODEL_T_WO, "base_model.model.model.layers.%d.self_attn.o_proj.lora_A.weight",
                      "base_model.model.model.layers.%d.self_attn.o_proj.lora_B.weight"},
    [MODEL_LORA_GATE] = {"gate_proj", MODEL_T_W_GATE, "base_model.model.model.layers.%d.mlp.gate_proj.lora_A.weight",
                         "base_model.model.model.layers.%d.mlp.gate_proj.lora_B.weight"},
    [MODEL_LORA_UP] = {"up_proj", MODEL_T_W_UP, "base_model.model.model.layers.%d.mlp.up_proj.lora_A.weight",
                       "base_model.model.model.layers.%d.mlp.up_proj.lora_B.weight"},
    [MODEL_LORA_DOWN] = {"down_proj", MODEL_T_W_DOWN, "base_model.model.model.layers.%d.mlp.down_proj.lora_A.weight",
                         "base_model.model.model.layers.%d.mlp.down_proj.lora_B.weight"},
};

/* Tensor names "lora_a.wq" etc.: static strings, so the table needs no ownership. */
static const char *const lora_names[MODEL_LORA_N_TARGETS][2] = {
    [MODEL_LORA_Q] = {"lora_a.wq", "lora_b.wq"},           [MODEL_LORA_K] = {"lora_a.wk", "lora_b.wk"},
    [MODEL_LORA_V] = {"lora_a.wv", "lora_b.wv"},           [MODEL_LORA_O] = {"lora_a.wo", "lora_b.wo"},
    [MODEL_LORA_GATE] = {"lora_a.w_gate", "lora_b.w_gate"}, [MODEL_LORA_UP] = {"lora_a.w_up", "lora_b.w_up"},
    [MODEL_LORA_DOWN] = {"lora_a.w_down", "lora_b.w_down"},
};

const char *model_lora_target_name(model_lora_target t) {
    return t >= 0 && t < MODEL_LORA_N_TARGETS ? lora_spec[t].module : "?";
}

/* The default alpha is 32 whatever the rank: "LoRA Without Regret" (Schulman et al., 2025) trains every
 * rank with alpha 32 and the 1/R scale, which makes the best learning rate nearly independent of R. */
#define LORA_DEFAULT_ALPHA 32.0

int model_lora_config_parse(model_lora_config *c, const json_t *obj, const char *where, rlhf_error *err) {
    memset(c, 0, sizeof *c);
    c->alpha = (float)LORA_DEFAULT_ALPHA;
    c->targets = (1u << MODEL_LORA_N_TARGETS) - 1;
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "must be an object");
    const char *key;
    json_t *v;
    int have_rank = 0;
    json_object_foreach((json_t *)obj, key, v) {
        if (!strcmp(key, "rank")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536)
                return rlhf_error_set(err, RLHF_EINVAL, where, "rank: must be an integer from 1 to 65536");
            c->rank = (int)json_integer_value(v);
            have_rank = 1;
        } else if (!strcmp(key, "alpha")) {
            if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
                return rlhf_error_set(err, RLHF_EINVAL, where, "alpha: must be a positive number");
            c->alpha = (float)json_number_value(v);
        } else if (!strcmp(key, "dropout")) {
            if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) < 1))
                return rlhf_error_set(err, RLHF_EINVAL, where, "dropout: must be a number in [0, 1)");
            c->dropout = (float)json_number_value(v);
        } else if (!strcmp(key, "targets")) {
            if (json_is_string(v) && !strcmp(json_string_value(v), "all-linear")) {
                c->targets = (1u << MODEL_LORA_N_TARGETS) - 1;
                continue;
            }
            if (!json_is_array(v) || json_array_size(v) == 0)
                return rlhf_error_set(err, RLHF_EINVAL, where,
                                      "targets: must be \"all-linear\" or a non-empty list of q_proj, k_proj, "
                                      "v_proj, o_proj, gate_proj, up_proj, down_proj");
            c->targets = 0;
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                const char *name = json_string_value(e);
                int found = -1;
                for (int t = 0; name && t < MODEL_LORA_N_TARGETS; t++)
                    if (!strcmp(name, lora_spec[t].module)) found = t;
                if (found < 0)
                    return rlhf_error_set(err, RLHF_EINVAL, where,
                                          "targets[%zu]: \"%.64s\" is not a linear layer of the model (q_proj, "
                                          "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                                          i, name ? name : "(not a string)");
                if (c->targets & (1u << found))
                    return rlhf_error_set(err, RLHF_EINVAL, where, "targets[%zu]: \"%s\" is listed twice", i, name);
                c->targets |= 1u << found;
            }
        } else {
            return rlhf_error_set(err, RLHF_EINVAL, where,
                                  "unknown key \"%.64s\" (known: rank, alpha, dropout, targets)", key);
        }
    }
    if (!have_rank) return rlhf_error_set(err, RLHF_EINVAL, where, "rank: required (e.g. 8)");
    return 0;
}

json_t *model_lora_config_to_json(const model_lora_config *c) {
    json_t *targets = json_array();
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        if (c->targets & (1u << t)) json_array_append_new(targets, json_string(lora_spec[t].module));
    return json_pack("{s:i, s:f, s:f, s:o}", "rank", c->rank, "alpha", (double)c->alpha, "dropout",
                     (double)c->dropout, "targets", targets);
}

int model_lora_check(const model_config *mc, const model_lora_config *lc, const char *where, rlhf_error *err) {
    int C = mc->dim, HD = mc->n_heads * model_head_dim(mc), KD = mc->n_kv_heads * model_head_dim(mc), F = mc->ffn_dim;
    const int side[MODEL_LORA_N_TARGETS][2] = {{HD, C}, {KD, C}, {KD, C}, {C, HD}, {F, C}, {F, C}, {C, F}};
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) {
        if (!(lc->targets & (1u << t))) continue;
        int small = side[t][0] < side[t][1] ? side[t][0] : side[t][1];
        if (lc->rank > small)
            return rlhf_error_set(err, RLHF_EINVAL, where, "rank: %d exceeds %s's smaller side %d (%d x %d)", lc->rank,
                                  lora_spec[t].module, small, side[t][0], side[t][1]);
    }
    return 0;
}

int model_lora_create(model_lora **out, const model *m, const model_lora_config *cfg, rlhf_error *err) {
    *out = NULL;
    if (cfg->rank < 1 || !(cfg->alpha > 0) || !(cfg->dropout >= 0 && cfg->dropout < 1) || !cfg->targets ||
        cfg->targets >> MODEL_LORA_N_TARGETS)
        return RLHF_FAIL(err, RLHF_EINVAL, "bad LoRA config: rank %d alpha %g dropout %g targets 0x%x", cfg->rank,
                         (double)cfg->alpha, (double)cfg->dropout, cfg->targets);
    model_lora *l = calloc(1, sizeof *l);
    if (!l) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    l->cfg = *cfg;
    l->scale = cfg->alpha / (float)cfg->rank;
    size_t off = 0, R = (size_t)cfg->rank;
    size_t offs[MODEL_LORA_N_TARGETS][2];
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) {
        if (!(cfg->targets & (1u << t))) continue;
        const model_tensor_info *base = model_tensor(m, lora_spec[t].base);
        if (!base || base->n_stack == 0) {
            free(l);
            return RLHF_FAIL(err, RLHF_EINVAL, "LoRA target %s: the model has no %s", lora_spec[t].module,
                             lora_spec[t].module);
        }
        l->n_stack[t] = base->n_stack;
        l->in_dim[t] = base->cols;
        l->out_dim[t] = base->rows;
        if ((size_t)base->cols < R || (size_t)base->rows < R) {
            int small = base->cols < base->rows ? base->cols : base->rows;
            free(l);
            return RLHF_FAIL(err, RLHF_EINVAL, "LoRA rank %d exceeds %s's smaller side %d", cfg->rank,
                             lora_spec[t].module, small);
        }
        for (int ab = 0; ab < 2; ab++) {
            model_tensor_info *ti = &l->tensors[l->n_tensors++];
            ti->id = base->id;
            ti->name = lora_names[t][ab];
            ti->hf_name = ab ? lora_spec[t].key_b : lora_spec[t].key_a;
            ti->per_layer = 1;
            ti->decay = 1; /* as torch's AdamW decays every adapter PEFT hands it, B of rank 1 included */
            ti->n_stack = base->n_stack;
            ti->rows = ab ? base->rows : (int)R;
            ti->cols = ab ? (int)R : base->cols;
            ti->numel = (size_t)ti->rows * ti->cols * ti->n_stack;
            ti->offset = off;
            offs[t][ab] = off;
            off += ti->numel;
        }
    }
    l->n_params = off;
    l->mem = rlhf_big_alloc(off * sizeof(float)); /* zeroed; out of the updater's forks (common.h) */
    if (!l->mem) {
        free(l);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate %zu LoRA parameters", off);
    }
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        if (cfg->targets & (1u << t)) {
            l->a[t] = l->mem + offs[t][0];
            l->b[t] = l->mem + offs[t][1];
        }
    *out = l;
    return 0;
}

void model_lora_destroy(model_lora **pl) {
    if (!pl || !*pl) return;
    rlhf_big_free((*pl)->mem, (*pl)->n_params * sizeof(float));
    free(*pl);
    *pl = NULL;
}

void model_lora_init(model_lora *l, uint64_t seed) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) {
        if (!l->a[t]) continue;
        float bound = 1.0f / sqrtf((float)l->in_dim[t]);
        size_t na = (size_t)l->n_stack[t] * l->cfg.rank * l->in_dim[t];
        for (size_t i = 0; i < na; i++) l->a[t][i] = bound * (2.0f * (float)rlhf_rng_uniform(&rng) - 1.0f);
        memset(l->b[t], 0, (size_t)l->n_stack[t] * l->out_dim[t] * l->cfg.rank * sizeof(float));
    }
}

int model_lora_merge(model *dst, const model *base, const model_lora *l, rlhf_error *err) {
    int rc = model_require_fp32(dst, "merging LoRA adapters into a model", err);
    if (rc) return rc;
    if (dst != base && base->bf16_mem) { /* a base kept in bf16: every tensor widened (exactly) into dst */
        if (memcmp(&dst->cfg, &base->cfg, sizeof dst->cfg) != 0)
            return RLHF_FAIL(err, RLHF_EINVAL, "model configs differ");
        for (int i = 0; i < base->n_tensors; i++)
            model_tensor_read_f32(base, &base->tensors[i], 0, base->tensors[i].numel,
                                  dst->params_mem + base->tensors[i].offset);
        dst->version = base->version;
    } else if (dst != base && (rc = model_copy_weights(dst, base, err))) {
        return rc;
    }
    int R = l->cfg.rank;
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) {
        if (!l->a[t]) continue;
        const model_tensor_info *ti = model_tensor(dst, lora_spec[t].base);
        if (!ti || ti->n_stack != l->n_stack[t] || ti->rows != l->out_dim[t] || ti->cols != l->in_dim[t])
            return RLHF_FAIL(err, RLHF_EINVAL, "LoRA adapter %s does not fit the model's %s", lora_spec[t].module,
                             ti ? ti->name : "(missing tensor)");
        int OC = ti->rows, IC = ti->cols;
        for (int s = 0; s < ti->n_stack; s++) {
            // W (OC, IC) += scale · B (OC, R) · A (R, IC)
            float *w = dst->params_mem + ti->offset + (size_t)s * OC * IC;
            const float *a = l->a[t] + (size_t)s * R * IC, *b = l->b[t] + (size_t)s * OC * R;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, IC, R, l->scale, b, R, a, IC, 1.0f, w, IC);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- PEFT format */

/* The layer of slice s of target t's stack: s itself, except for k/v with kv_share (only the layers
 * that project their own K/V are stacked). */
static int slice_layer(const model_config *mc, int t, int s) {
    if (t != MODEL_LORA_K && t != MODEL_LORA_V) return s;
    for (int l = 0; l < mc->n_layers; l++)
        if (model_kv_slot(mc, l) == s) return l;
    return -1;
}

int model_lora_save_peft(const model_lora *l, const model *base, const char *dir, const char *base_name,
                         rlhf_error *err) {
    int rc = rlhf_mkdirs(dir, err);
    if (rc) return rc;
    int n = 0, R = l->cfg.rank;
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) n += l->a[t] ? 2 * l->n_stack[t] : 0;
    safetensors_tensor *ts = calloc((size_t)(n ? n : 1), sizeof *ts);
    char(*names)[128] = calloc((size_t)(n ? n : 1), sizeof *names);
    if (!ts || !names) {
        free(ts), free(names);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    int k = 0;
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        for (int s = 0; l->a[t] && s < l->n_stack[t]; s++)
            for (int ab = 0; ab < 2; ab++, k++) {
                snprintf(names[k], sizeof names[k], ab ? lora_spec[t].key_b : lora_spec[t].key_a,
                         slice_layer(&base->cfg, t, s));
                ts[k].name = names[k];
                ts[k].ndim = 2; /* (R, IC) and (OC, R), rank 1 included */
                ts[k].shape[0] = ab ? l->out_dim[t] : R;
                ts[k].shape[1] = ab ? R : l->in_dim[t];
                ts[k].data = ab ? l->b[t] + (size_t)s * l->out_dim[t] * R : l->a[t] + (size_t)s * R * l->in_dim[t];
            }
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    json_t *meta = json_pack("{s:s}", "format", "pt");
    rc = safetensors_write(path, ts, n, meta, err);
    json_decref(meta);
    free(ts), free(names);
    if (rc) return rc;
    json_t *targets = json_array();
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        if (l->a[t]) json_array_append_new(targets, json_string(lora_spec[t].module));
    json_t *cfg = json_pack("{s:s, s:s, s:i, s:f, s:f, s:o, s:s, s:b, s:b, s:b, s:n, s:s?}", "peft_type", "LORA",
                            "task_type", "CAUSAL_LM", "r", R, "lora_alpha", (double)l->cfg.alpha, "lora_dropout",
                            (double)l->cfg.dropout, "target_modules", targets, "bias", "none", "fan_in_fan_out", 0,
                            "inference_mode", 1, "use_rslora", 0, "modules_to_save", "base_model_name_or_path",
                            base_name);
    char *txt = cfg ? json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(cfg);
    if (!txt) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    rc = rlhf_write_file_atomic(path, txt, strlen(txt), err);
    free(txt);
    return rc;
}

int model_lora_load_peft(model_lora *l, const model *base, const char *dir, rlhf_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg) return rlhf_error_set(err, RLHF_ECORRUPT, path, "invalid JSON: %s", je.text);
    json_t *r = json_object_get(cfg, "r"), *alpha = json_object_get(cfg, "lora_alpha");
    json_t *tm = json_object_get(cfg, "target_modules");
    unsigned targets = 0;
    size_t i;
    json_t *e;
    json_array_foreach(tm, i, e) for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) if (json_is_string(e) &&
                                                                                !strcmp(json_string_value(e), lora_spec[t].module)) targets |= 1u << t;
    int ok = json_is_integer(r) && json_integer_value(r) == l->cfg.rank && json_is_number(alpha) &&
             fabs(json_number_value(alpha) - (double)l->cfg.alpha) <= 1e-6 * fabs((double)l->cfg.alpha) &&
             json_is_array(tm) && json_array_size(tm) > 0 && targets == l->cfg.targets;
    json_decref(cfg);
    if (!ok)
        return rlhf_error_set(err, RLHF_EINVAL, path, "r, lora_alpha or target_modules differ from model.lora (rank %d, "
                              "alpha %g)", l->cfg.rank, (double)l->cfg.alpha);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    safetensors_file *f = NULL;
    int rc = safetensors_open(&f, path, err);
    if (rc) return rc;
    int R = l->cfg.rank;
    for (int t = 0; !rc && t < MODEL_LORA_N_TARGETS; t++)
        for (int s = 0; !rc && l->a[t] && s < l->n_stack[t]; s++)
            for (int ab = 0; !rc && ab < 2; ab++) {
                char name[128];
                snprintf(name, sizeof name, ab ? lora_spec[t].key_b : lora_spec[t].key_a, slice_layer(&base->cfg, t, s));
                const safetensors_tensor *st = safetensors_find(f, name);
                int64_t rows = ab ? l->out_dim[t] : R, cols = ab ? R : l->in_dim[t];
                if (!st || st->ndim != 2 || st->shape[0] != rows || st->shape[1] != cols) {
                    rc = rlhf_error_set(err, RLHF_ECORRUPT, path, "tensor %s missing or not (%lld, %lld)", name,
                                        (long long)rows, (long long)cols);
                    break;
                }
                float *dst = ab ? l->b[t] + (size_t)s * l->out_dim[t] * R : l->a[t] + (size_t)s * R * l->in_dim[t];
                rc = safetensors_tensor_to_f32(st, dst, path, err);
            }
    safetensors_close(&f);
    return rc;
}
