/* model/adamw.c — AdamW with decoupled weight decay, global-norm clipping and a warmup + cosine or
 * constant LR schedule, with its state (m, v, step) exposed as named tensors and saved to / loaded
 * from one safetensors file format (adamw_save / adamw_load). */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct adamw {
    adamw_config cfg;
    const model_tensor_info *tensors; /* the parameter set's table (names, offsets, decay mask): a model's or a
                                       * LoRA adapter set's */
    int n_tensors;
    size_t n;            /* parameters */
    float *mom;          /* first moment, model layout */
    float *var;          /* second moment */
    long step;           /* steps taken (Adam's bias correction counts these) */
    long sched_step;     /* >= 0: the learning-rate schedule's position for the next step; -1: `step` */
    float step_f;        /* "adamw.step" as a float tensor, synced on save/restore */
};

void adamw_config_default(adamw_config *c) {
    memset(c, 0, sizeof *c);
    c->lr = 3e-4f;
    c->beta1 = 0.9f;
    c->beta2 = 0.95f;
    c->eps = 1e-8f;
    c->weight_decay = 0.1f;
    c->grad_clip = 1.0f;
    c->warmup_steps = 0;
    c->total_steps = 0;
    c->min_lr_ratio = 0.1f;
    c->schedule = ADAMW_SCHEDULE_CONSTANT;
}

float adamw_lr_at(const adamw_config *c, long step) {
    if (step < c->warmup_steps) return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    if (c->schedule == ADAMW_SCHEDULE_CONSTANT || c->total_steps <= c->warmup_steps) return c->lr;
    double progress = (double)(step - c->warmup_steps) / (double)(c->total_steps - c->warmup_steps);
    if (progress > 1.0) progress = 1.0;
    double floor_lr = (double)c->lr * c->min_lr_ratio;
    return (float)(floor_lr + 0.5 * ((double)c->lr - floor_lr) * (1.0 + cos(M_PI * progress)));
}

int adamw_create_params(adamw **out, const model_tensor_info *tensors, int n_tensors, size_t n_params,
                        const adamw_config *cfg, rlhf_error *err) {
    *out = NULL;
    if (!(cfg->lr >= 0) || !(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1) ||
        !(cfg->eps > 0) || !(cfg->weight_decay >= 0) || cfg->warmup_steps < 0)
        return RLHF_FAIL(err, RLHF_EINVAL,
                         "bad AdamW config: lr %g beta1 %g beta2 %g eps %g weight_decay %g warmup %d", cfg->lr,
                         cfg->beta1, cfg->beta2, cfg->eps, cfg->weight_decay, cfg->warmup_steps);
    if (n_tensors > ADAMW_MAX_TENSORS)
        return RLHF_FAIL(err, RLHF_EINVAL, "AdamW: %d tensors, at most %d", n_tensors, ADAMW_MAX_TENSORS);
    adamw *o = calloc(1, sizeof *o);
    if (o) o->sched_step = -1;
    if (!o) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    o->cfg = *cfg;
    o->tensors = tensors;
    o->n_tensors = n_tensors;
    o->n = n_params;
    o->mom = rlhf_big_alloc(o->n * sizeof(float)); /* zeroed; out of the updater's forks (common.h) */
    o->var = rlhf_big_alloc(o->n * sizeof(float));
    if (!o->mom || !o->var) {
        adamw_destroy(&o);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate AdamW state for %zu parameters", n_params);
    }
    *out = o;
    return 0;
}

int adamw_create(adamw **out, const model *m, const adamw_config *cfg, rlhf_error *err) {
    *out = NULL;
    int rc = model_require_fp32(m, "training every weight (AdamW over the model)", err);
    if (rc) return rc;
    return adamw_create_params(out, m->tensors, m->n_tensors, m->n_params, cfg, err);
}

void adamw_destroy(adamw **po) {
    if (!po || !*po) return;
    rlhf_big_free((*po)->mom, (*po)->n * sizeof(float));
    rlhf_big_free((*po)->var, (*po)->n * sizeof(float));
    free(*po);
    *po = NULL;
}

long adamw_get_step(const adamw *o) { return o->step; }
void adamw_set_schedule_step(adamw *o, long step) { o->sched_step = step; }
adamw_config *adamw_get_config(adamw *o) { return &o->cfg; }

int adamw_step(adamw *o, model *m, float *grads, float *grad_norm_out, float *lr_out, rlhf_error *err) {
    return adamw_step_params(o, m->params_mem, m->n_params, grads, grad_norm_out, lr_out, err);
}

int adamw_step_params(adamw *o, float *params, size_t n_params, float *grads, float *grad_norm_out, float *lr_out,
                      rlhf_error *err) {
    if (n_params != o->n) return RLHF_FAIL(err, RLHF_EINVAL, "AdamW state is for a different parameter set");
    size_t n = o->n;
    double ss = 0.0;
#pragma omp parallel for simd reduction(+ : ss) schedule(static)
    for (size_t i = 0; i < n; i++) ss += (double)grads[i] * grads[i];
    float norm = (float)sqrt(ss);
    if (!isfinite(norm)) return RLHF_FAIL(err, RLHF_EINVAL, "gradient norm is not finite (%g)", norm);
    float clip = 1.0f;
    if (o->cfg.grad_clip > 0) {
        float coef = o->cfg.grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) clip = coef;
    }
    float lr = adamw_lr_at(&o->cfg, o->sched_step >= 0 ? o->sched_step : o->step);
    o->sched_step = -1;
    o->step++;
    float b1 = o->cfg.beta1, b2 = o->cfg.beta2, eps = o->cfg.eps;
    double bc1 = 1.0 - pow(b1, (double)o->step), bc2 = 1.0 - pow(b2, (double)o->step);
    /* m̂ / (sqrt(v̂) + eps) with v̂ = v / bc2 equals sqrt(bc2) · m / (sqrt(v) + eps · sqrt(bc2)): one
     * division per element instead of two (the update loop is bound by divide/sqrt throughput). */
    float bc2_sqrt = (float)sqrt(bc2);
    float step_size = (float)(lr / bc1 * sqrt(bc2)), eps_scaled = eps * bc2_sqrt;
    /* One parallel region for all tensors; tensors are independent, so no barrier between them. */
#pragma omp parallel
    for (int ti = 0; ti < o->n_tensors; ti++) {
        const model_tensor_info *ti_ = &o->tensors[ti];
        /* norm weights and biases (vectors) are not decayed */
        float decay = ti_->decay ? 1.0f - lr * o->cfg.weight_decay : 1.0f;
        float *p = params + ti_->offset, *g = grads + ti_->offset;
        float *mm = o->mom + ti_->offset, *vv = o->var + ti_->offset;
        size_t len = ti_->numel;
#pragma omp for simd schedule(static) nowait
        for (size_t i = 0; i < len; i++) {
            float gi = g[i] * clip;
            g[i] = 0.0f; /* consumed: the next accumulation starts from zero without a separate pass */
            float mi = b1 * mm[i] + (1.0f - b1) * gi;
            float vi = b2 * vv[i] + (1.0f - b2) * gi * gi;
            mm[i] = mi;
            vv[i] = vi;
            p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) + eps_scaled);
        }
    }
    if (grad_norm_out) *grad_norm_out = norm;
    if (lr_out) *lr_out = lr;
    return 0;
}

/* The state tensors of o, with the step count read from / written to *step_f. */
static int state_tensors(const adamw *o, adamw_state_tensor *out, int max, float *step_f) {
    int k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < o->n_tensors; i++) {
            if (k < max) {
                snprintf(out[k].name, sizeof out[k].name, "adamw.%s.%s", pass ? "v" : "m", o->tensors[i].name);
                out[k].data = (pass ? o->var : o->mom) + o->tensors[i].offset;
                out[k].numel = o->tensors[i].numel;
            }
            k++;
        }
    *step_f = (float)o->step;
    if (k < max) {
        snprintf(out[k].name, sizeof out[k].name, "adamw.step");
        out[k].data = step_f;
        out[k].numel = 1;
    }
    return k + 1;
}

int adamw_state_tensors(adamw *o, adamw_state_tensor *out, int max) {
    return state_tensors(o, out, max, &o->step_f);
}

int adamw_state_loaded(adamw *o, rlhf_error *err) {
    float s = o->step_f;
    if (!(s >= 0) || s > 16777216.0f || s != floorf(s))
        return RLHF_FAIL(err, RLHF_ECORRUPT, "adamw.step must be a non-negative integer, got %g", s);
    o->step = (long)s;
    return 0;
}

/* The "format" metadata value of an optimizer-state file. Files written before adamw_save existed
 * (updater checkpoints) have no "format" key; adamw_load accepts them too. */
#define ADAMW_FILE_FORMAT "rlhf-adamw"

int adamw_save(const adamw *o, const char *path, rlhf_error *err) {
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    float step_f;
    int n = state_tensors(o, st, ADAMW_MAX_STATE_TENSORS, &step_f);
    safetensors_tensor t[ADAMW_MAX_STATE_TENSORS];
    memset(t, 0, sizeof t); /* dtype F32 */
    for (int i = 0; i < n; i++) {
        t[i].name = st[i].name;
        t[i].ndim = 1;
        t[i].shape[0] = (int64_t)st[i].numel;
        t[i].data = st[i].data;
    }
    json_t *meta = json_pack("{s:s}", "format", ADAMW_FILE_FORMAT);
    int rc = safetensors_write(path, t, n, meta, err);
    json_decref(meta);
    return rc;
}

int adamw_load(adamw *o, const char *path, rlhf_error *err) {
    safetensors_file *f = NULL;
    int rc = safetensors_open(&f, path, err);
    if (rc) return rc;
    const char *format = safetensors_meta(f, "format");
    if (format && strcmp(format, ADAMW_FILE_FORMAT) != 0) {
        rc = rlhf_error_set(err, RLHF_ECORRUPT, path, "not an AdamW state file: format is \"%s\", expected \"%s\"",
                            format, ADAMW_FILE_FORMAT);
        safetensors_close(&f);
        return rc;
    }
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    int n = adamw_state_tensors(o, st, ADAMW_MAX_STATE_TENSORS);
    for (int i = 0; i < n; i++) {
        const safetensors_tensor *t = safetensors_find(f, st[i].name);
        size_t numel = 1;
        if (t)
            for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        if (!t || numel != st[i].numel) {
            safetensors_close(&f);
            return rlhf_error_set(err, RLHF_ECORRUPT, path, "tensor %s missing or of the wrong size", st[i].name);
        }
        if ((rc = safetensors_tensor_to_f32(t, st[i].data, path, err))) {
            safetensors_close(&f);
            return rc;
        }
    }
    safetensors_close(&f);
    return adamw_state_loaded(o, err);
}
