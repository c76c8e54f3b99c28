/* template/template_cli.c — `rlhf chat-template`: render a message list through a chat template (a
 * file, or a Hugging Face model directory's own), printing exactly the text the model would see. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template.h"

static const char *PROG = "rlhf chat-template";

static const char usage_text[] =
    "usage: rlhf chat-template (--template FILE | --model DIR) --messages FILE.json [--tools FILE.json]\n"
    "                          [--add-generation-prompt] [--bos TEXT] [--eos TEXT] [--vars FILE.json]\n"
    "\n"
    "Prints the prompt text the chat template makes of a message list (a JSON array of {role, content}).\n"
    "--model DIR reads DIR/tokenizer_config.json (chat_template, bos_token, eos_token); --template FILE\n"
    "takes the template from a file (bos/eos then from --bos/--eos). --vars adds variables (a JSON object,\n"
    "e.g. {\"enable_thinking\": false}). Errors name the template's line and column.\n";

int cmd_chat_template(int argc, char **argv) {
    const char *tfile = NULL, *model = NULL, *msgs = NULL, *tools = NULL, *bos = NULL, *eos = NULL, *vars = NULL;
    int gen = 0;
    const rlhf_opt opts[] = {
        RLHF_OPT("--template", RLHF_OPT_STR, &tfile),
        RLHF_OPT("--model", RLHF_OPT_STR, &model),
        RLHF_OPT("--messages", RLHF_OPT_STR, &msgs),
        RLHF_OPT("--tools", RLHF_OPT_STR, &tools),
        RLHF_OPT("--vars", RLHF_OPT_STR, &vars),
        RLHF_OPT("--bos", RLHF_OPT_STR, &bos),
        RLHF_OPT("--eos", RLHF_OPT_STR, &eos),
        RLHF_OPT("--add-generation-prompt", RLHF_OPT_FLAG, &gen),
        RLHF_OPT_END,
    };
    int npos = 0;
    int rc = rlhf_opts_parse(argc, argv, PROG, usage_text, opts, NULL, 0, &npos);
    if (rc >= 0) return rc;
    if (!msgs || (!tfile == !model)) {
        fprintf(stderr, "%s: error: give --messages and one of --template, --model\n%s", PROG, usage_text);
        return 2;
    }
    rlhf_error err = {0};
    char *text = NULL, *mbos = NULL, *meos = NULL, *out = NULL;
    size_t len = 0, out_len = 0;
    json_t *jm = NULL, *jt = NULL, *jv = NULL;
    template_program *p = NULL;
    char name[4200];
    int status = 1;
    if (tfile) {
        if (rlhf_read_file(tfile, &text, &len, &err)) goto done;
        snprintf(name, sizeof name, "%s", tfile);
    } else {
        if (template_load_hf(model, &text, &mbos, &meos, &err)) goto done;
        if (!text) {
            rlhf_error_set(&err, RLHF_EINVAL, model, "tokenizer_config.json has no chat_template");
            goto done;
        }
        len = strlen(text);
        snprintf(name, sizeof name, "%s/tokenizer_config.json:chat_template", model);
    }
    if (!(jm = rlhf_json_load_file(msgs, 0, &err))) goto done;
    if (tools && !(jt = rlhf_json_load_file(tools, 0, &err))) goto done;
    if (vars && !(jv = rlhf_json_load_file(vars, 0, &err))) goto done;
    if (jv && !json_is_object(jv)) {
        rlhf_error_set(&err, RLHF_EINVAL, vars, "--vars must hold a JSON object");
        goto done;
    }
    if (template_create(&p, text, len, name, &err)) goto done;
    template_chat_args a = {.messages = jm, .tools = jt, .add_generation_prompt = gen,
                            .bos_token = bos ? bos : mbos, .eos_token = eos ? eos : meos, .extra = jv};
    if (template_render_chat(p, &a, &out, &out_len, &err)) goto done;
    fwrite(out, 1, out_len, stdout);
    status = fflush(stdout) ? 1 : 0;
done:
    if (err.code) {
        rlhf_error_print(PROG, &err);
        status = rlhf_exit_status(&err);
    }
    template_destroy(&p);
    json_decref(jm);
    json_decref(jt);
    json_decref(jv);
    free(text);
    free(mbos);
    free(meos);
    free(out);
    return status;
}
