/* run/weights.c — moving a policy's parameters between a model and a WEIGHTS message: the updater
 * publishes them, generators apply them (see run/run.h). */
#include <stdlib.h>
#include <string.h>

#include "run/run.h"

int run_weights_from_model(const model *m, wire_weights *w, rlhf_error *err) {
    memset(w, 0, sizeof *w);
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

int run_weights_apply(model *m, const wire_weights *w, rlhf_error *err) {
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
