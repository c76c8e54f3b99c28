/* model/export_cli.c — `rlhf export`: a checkpoint (or Hugging Face directory) to a Hugging Face model
 * directory. */
#include "model/model.h"

#include <stdio.h>
#include <string.h>

static const char export_usage[] =
    "usage: rlhf export CKPT --hf DIR [--dtype bf16|f32] [--tokenizer-from DIR]\n"
    "  CKPT: a project checkpoint (.safetensors) or a Hugging Face model directory.\n"
    "  Writes DIR (must not exist, or be empty): config.json, model.safetensors, generation_config.json,\n"
    "  and the tokenizer files of --tokenizer-from (tokenizer.json, tokenizer_config.json, ...).\n"
    "  --dtype: bf16 (default; rounded to nearest even) or f32 (lossless).\n";

int cmd_export(int argc, char **argv) {
    const char *prog = "rlhf export", *out = NULL, *dtype = "bf16", *tok = NULL, *pos[1];
    int n_pos = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--hf", RLHF_OPT_STR, &out), RLHF_OPT("--dtype", RLHF_OPT_STR, &dtype),
                             RLHF_OPT("--tokenizer-from", RLHF_OPT_STR, &tok), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, prog, export_usage, opts, pos, 1, &n_pos);
    if (prc >= 0) return prc;
    if (n_pos != 1 || !out) {
        fprintf(stderr, "%s: error: CKPT and --hf DIR are required\n%s", prog, export_usage);
        return 2;
    }
    model_export_options eo = {.tokenizer_from = tok};
    if (!strcmp(dtype, "bf16")) {
        eo.dtype = SAFETENSORS_BF16;
    } else if (!strcmp(dtype, "f32")) {
        eo.dtype = SAFETENSORS_F32;
    } else {
        fprintf(stderr, "%s: error: --dtype must be bf16 or f32, got '%s'\n%s", prog, dtype, export_usage);
        return 2;
    }
    rlhf_error err = {0};
    model *m = NULL;
    if (model_load(&m, pos[0], NULL, &err) || model_export_hf(m, out, &eo, &err)) {
        rlhf_error_print(prog, &err);
        model_destroy(&m);
        return 1;
    }
    fprintf(stderr, "%s: wrote %s (%s, %zu parameters)\n", prog, out, dtype, m->n_params);
    model_destroy(&m);
    return 0;
}
