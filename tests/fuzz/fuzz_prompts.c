/* tests/fuzz/fuzz_prompts.c — the prompt dataset reader (prompts/dataset.c).
 *
 * Input: one flag byte, then the JSONL file. flags & 3: split (all, train, held-out); flags & 4: skip bad
 * lines; flags & 8: held-out fraction 0.5 (else 0). Property: every record the reader kept is found by its
 * id at its own index. */
#include <stdint.h>
#include <string.h>

#include "prompts/prompts.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t flags = data[0];
    const char *path = fuzz_write_file("prompts.jsonl", data + 1, size - 1);
    prompt_dataset_opts o = {.split = (flags & 3) % 3, .heldout_fraction = (flags & 8) ? 0.5 : 0,
                             .split_seed = flags >> 4, .skip_bad = (flags & 4) != 0};
    prompt_dataset *ds = NULL;
    rlhf_error err;
    if (prompt_dataset_load_opts(&ds, path, &o, &err) == 0) {
        size_t n = prompt_dataset_size(ds);
        FUZZ_ASSERT(n > 0, "an empty dataset was accepted");
        for (size_t i = 0; i < n; i++) {
            const prompt_record *r = prompt_dataset_get(ds, i);
            FUZZ_ASSERT(r && r->id && r->prompt, "record %zu incomplete", i);
            FUZZ_ASSERT(prompt_dataset_find(ds, r->id) == (long)i, "id of record %zu found at %ld", i,
                        prompt_dataset_find(ds, r->id));
            prompt_dataset_is_heldout(ds, i);
        }
        prompt_dataset_destroy(&ds);
    }
    return 0;
}
