/* tests/fuzz/fuzz_hf.c — Hugging Face model directories (model/hf.c): config.json and the shard index.
 *
 * Input: config.json, then either one part (model.safetensors) or two (model.safetensors.index.json and
 * the shard model-00001-of-00001.safetensors), separated by FUZZ_SEP. Every config goes through
 * model_hf_parse_config; a config it accepts whose model is small (the fuzzer is not here to allocate the
 * gigabytes a large config rightly asks for) is then loaded as a directory with model_hf_load_dir, which
 * reads the index, opens the shards and fills every tensor. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "model/checkpoint_int.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_PARAMS (1u << 20)

static double params(const model_config *c) {
    double d = c->dim, hd = model_head_dim(c), f = c->ffn_dim, v = c->vocab_size;
    double attn = d * hd * (c->n_heads * 2.0 + c->n_kv_heads * 2.0);
    return v * d * 2 + c->n_layers * (attn + 3 * d * f + 2 * d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_part parts[3];
    size_t np = fuzz_split(data, size, parts, 3);
    json_t *j = json_loadb((const char *)parts[0].p, parts[0].n, JSON_REJECT_DUPLICATES, NULL);
    model_config cfg;
    rlhf_error err;
    int rc = j ? model_hf_parse_config(&cfg, j, "config.json", 64, &err) : -1;
    json_decref(j);
    if (rc || np < 2 || params(&cfg) > MAX_PARAMS || cfg.max_seq_len > 64) return 0;
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json",
                                        "model-00001-of-00001.safetensors"};
    for (int i = 0; i < 3; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", fuzz_tmpdir(), names[i]);
        unlink(p);
    }
    fuzz_write_file("config.json", parts[0].p, parts[0].n);
    if (np == 2) {
        fuzz_write_file(names[0], parts[1].p, parts[1].n);
    } else {
        fuzz_write_file(names[1], parts[1].p, parts[1].n);
        fuzz_write_file(names[2], parts[2].p, parts[2].n);
    }
    model *m = NULL;
    model_load_options o = {.max_seq_len = 64};
    if (model_hf_load_dir(&m, fuzz_tmpdir(), &o, &err) == 0) model_destroy(&m);
    return 0;
}
