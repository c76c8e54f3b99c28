/* run/weights.c — moving a policy's parameters between a model and a WEIGHTS message: the updater
 * publishes them, generators apply them (see run/run.h). */
#include <stdlib.h>
#include <string.h>

#include "run/run.h"

int run_weights_from_model(const model *m, wire_weights *w, rlhf_error *err) {
    memset(w, 0, sizeof *w);
    int rc = model_require_fp32(m, "sending full weights", err);
    if (rc) return rc;
    w->version = m->version;
    w->n_tensors = (uint32_t)m->n_tensors;
    w->tensors = calloc((size_t)m->n_tensors, sizeof *w->tensors);
    if (!w->tensors) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *ti = &m->tensors[i];
        wire_tensor *t = &w->tensors[i];
        snprintf(t->name, sizeof t->name, "%s", ti->name);
        if (ti->per_layer) {
            t->ndim = 3;
            t->shape[0] = (uint64_t)ti->n_stack;
            t->shape[1] = (uint64_t)ti->rows;
            t->shape[2] = (uint64_t)ti->cols;
        } else {
            t->ndim = 2;
            t->shape[0] = (uint64_t)ti->rows;
            t->shape[1] = (uint64_t)ti->cols;
        }
        t->offset = ti->offset * sizeof(float);
        t->nbytes = ti->numel * sizeof(float);
    }
    w->nbytes = m->n_params * sizeof(float);
    w->data = (const uint8_t *)m->params_mem;
    return 0;
}

/* The wire table of a parameter set laid out by a tensor table. */
static int table_to_wire(const model_tensor_info *tt, int n, wire_weights *w, rlhf_error *err) {
    w->n_tensors = (uint32_t)n;
    w->tensors = calloc((size_t)n + 1, sizeof *w->tensors);
    if (!w->tensors) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        wire_tensor *t = &w->tensors[i];
        snprintf(t->name, sizeof t->name, "%s", tt[i].name);
        t->ndim = 3;
        t->shape[0] = (uint64_t)tt[i].n_stack;
        t->shape[1] = (uint64_t)tt[i].rows;
        t->shape[2] = (uint64_t)tt[i].cols;
        t->offset = tt[i].offset * sizeof(float);
        t->nbytes = tt[i].numel * sizeof(float);
    }
    return 0;
}

int run_weights_from_lora(const model_lora *l, uint64_t version, wire_weights *w, rlhf_error *err) {
    memset(w, 0, sizeof *w);
    int rc = table_to_wire(l->tensors, l->n_tensors, w, err);
    if (rc) return rc;
    w->version = version;
    w->lora = 1;
    w->nbytes = l->n_params * sizeof(float);
    w->data = (const uint8_t *)l->mem;
    run_weights_content_hash(l->mem, w->nbytes, w->content_hash);
    return 0;
}

int run_weights_apply_lora(model *m, const model *base, model_lora *l, const wire_weights *w, rlhf_error *err) {
    if (!w->lora)
        return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "version %llu holds full weights, and this run trains LoRA "
                              "adapters (model.lora): another run's updater?", (unsigned long long)w->version);
    if (w->nbytes != l->n_params * sizeof(float) || (int)w->n_tensors != l->n_tensors)
        return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "version %llu has %llu adapter bytes in %u tensors; model.lora "
                              "needs %zu bytes in %d tensors (another rank or targets?)", (unsigned long long)w->version,
                              (unsigned long long)w->nbytes, w->n_tensors, l->n_params * sizeof(float), l->n_tensors);
    for (int i = 0; i < l->n_tensors; i++) {
        const model_tensor_info *ti = &l->tensors[i];
        const wire_tensor *t = &w->tensors[i];
        if (strcmp(t->name, ti->name) != 0 || t->offset != ti->offset * sizeof(float) ||
            t->nbytes != ti->numel * sizeof(float))
            return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "adapter tensor %d is '%s' (%llu bytes), expected '%s' (%zu "
                                  "bytes)", i, t->name, (unsigned long long)t->nbytes, ti->name, ti->numel * sizeof(float));
    }
    char h[17];
    run_weights_content_hash(w->data, w->nbytes, h);
    if (!w->content_hash[0] || strcmp(h, w->content_hash) != 0)
        return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "version %llu: the adapters hash to %s, the message says "
                              "\"%s\"", (unsigned long long)w->version, h, w->content_hash);
    memcpy(l->mem, w->data, w->nbytes);
    int rc = model_lora_merge(m, base, l, err);
    if (rc) return rc;
    m->version = w->version;
    return 0;
}

int run_weights_apply(model *m, const wire_weights *w, rlhf_error *err) {
    int rc0 = model_require_fp32(m, "applying full weights", err);
    if (rc0) return rc0;
    if (w->lora)
        return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "version %llu holds LoRA adapters, and this process has no "
                              "model.lora to apply them with (another run's config?)", (unsigned long long)w->version);
    if (w->nbytes != m->n_params * sizeof(float) || (int)w->n_tensors != m->n_tensors)
        return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "version %llu has %llu bytes in %u tensors; this model needs "
                              "%zu bytes in %d tensors (another model?)",
                              (unsigned long long)w->version, (unsigned long long)w->nbytes, w->n_tensors,
                              m->n_params * sizeof(float), m->n_tensors);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *ti = &m->tensors[i];
        const wire_tensor *t = &w->tensors[i];
        if (strcmp(t->name, ti->name) != 0 || t->offset != ti->offset * sizeof(float) ||
            t->nbytes != ti->numel * sizeof(float))
            return rlhf_error_set(err, RLHF_EPROTO, "WEIGHTS", "tensor %d is '%s' (%llu bytes), expected '%s' (%zu bytes)",
                                  i, t->name, (unsigned long long)t->nbytes, ti->name, ti->numel * sizeof(float));
    }
    memcpy(m->params_mem, w->data, w->nbytes);
    m->version = w->version;
    return 0;
}
