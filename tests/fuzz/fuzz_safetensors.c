/* tests/fuzz/fuzz_safetensors.c — safetensors from memory and from a file (model/safetensors.c).
 *
 * Input: one flag byte, then the file. flags & 1: parse from a file (mapped, or copied when its data
 * section is misaligned); else from memory. The harness converts every tensor the parser accepted to
 * fp32 (reading all its bytes: the parser promised they lie inside the buffer) and looks each one up by
 * name; a file parsed both ways must give the same tensor count. */
#include <stdint.h>
#include <stdlib.h>

#include "model/model_infer.h"
#include "tests/fuzz/fuzz_util.h"

static void touch(const safetensors_file *f) {
    for (int i = 0; i < f->n_tensors; i++) {
        const safetensors_tensor *t = &f->tensors[i];
        int64_t n = safetensors_numel(t);
        FUZZ_ASSERT(n >= 0, "tensor %s has %lld elements", t->name, (long long)n);
        if (n > (1 << 22)) continue; /* a large tensor is legal; converting it here would only be slow */
        float *dst = malloc((size_t)(n ? n : 1) * sizeof *dst);
        if (!dst) abort();
        rlhf_error err;
        safetensors_tensor_to_f32(t, dst, f->source, &err);
        free(dst);
        FUZZ_ASSERT(safetensors_find(f, t->name) != NULL, "tensor %s not found by name", t->name);
    }
    safetensors_meta(f, "format");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    rlhf_error err;
    safetensors_file *m = NULL, *f = NULL;
    int rm = safetensors_open_memory(&m, data + 1, size - 1, "fuzz", &err);
    if (rm == 0) touch(m);
    if (data[0] & 1) {
        const char *path = fuzz_write_file("t.safetensors", data + 1, size - 1);
        int rf = safetensors_open(&f, path, &err);
        FUZZ_ASSERT((rf == 0) == (rm == 0), "file parse %d, memory parse %d", rf, rm);
        if (rf == 0) {
            touch(f);
            FUZZ_ASSERT(f->n_tensors == m->n_tensors, "file has %d tensors, memory %d", f->n_tensors, m->n_tensors);
        }
        safetensors_close(&f);
    }
    safetensors_close(&m);
    return 0;
}
