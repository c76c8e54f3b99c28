/* template/template.c — a template's life cycle (parse once, render many times), the chat-template
 * call, and where a Hugging Face model directory keeps its template. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "template/template_int.h"

int template_create(template_program **out, const char *src, size_t len, const char *name, rlhf_error *err) {
    *out = NULL;
    template_program *p = calloc(1, sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    p->text_copy = malloc(len + 1);
    p->name_copy = strdup(name ? name : "template");
    if (!p->text_copy || !p->name_copy) {
        template_destroy(&p);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    memcpy(p->text_copy, src, len);
    p->text_copy[len] = 0;
    p->src = (tmpl_src){p->text_copy, len, p->name_copy};
    tmpl_tok *toks = NULL;
    int n = 0;
    int rc = template_lex(&p->src, &toks, &n, err);
    if (!rc) rc = template_parse(p, toks, n, err);
    template_toks_free(toks, n);
    if (rc) {
        template_destroy(&p);
        return rc;
    }
    *out = p;
    return 0;
}

void template_destroy(template_program **pp) {
    if (!pp || !*pp) return;
    template_program *p = *pp;
    template_list_free(&p->body);
    free(p->text_copy);
    free(p->name_copy);
    free(p);
    *pp = NULL;
}

int template_render_chat(const template_program *p, const template_chat_args *a, char **out, size_t *out_len,
                         rlhf_error *err) {
    if (!json_is_array(a->messages))
        return rlhf_error_set(err, RLHF_EINVAL, p->src.name, "messages must be a list of {role, content} objects");
    json_t *ctx = a->extra && json_is_object(a->extra) ? json_deep_copy(a->extra) : json_object();
    if (!ctx) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    json_object_set(ctx, "messages", (json_t *)a->messages);
    if (a->tools) json_object_set(ctx, "tools", (json_t *)a->tools);
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(a->add_generation_prompt));
    if (a->bos_token) json_object_set_new(ctx, "bos_token", json_string(a->bos_token));
    if (a->eos_token) json_object_set_new(ctx, "eos_token", json_string(a->eos_token));
    int rc = template_render(p, ctx, out, out_len, err);
    json_decref(ctx);
    return rc;
}

/* a special token as tokenizer_config.json writes it: "text" or {"content": "text", ...} */
static char *token_text(const json_t *v) {
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

int template_load_hf(const char *dir, char **tmpl, char **bos, char **eos, rlhf_error *err) {
    *tmpl = NULL;
    if (bos) *bos = NULL;
    if (eos) *eos = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    json_t *cfg = rlhf_json_load_file(path, JSON_DECODE_INT_AS_REAL, err); /* model_max_length can be 1e30 */
    if (!cfg) return err && err->code ? err->code : RLHF_EIO;
    int rc = 0;
    const json_t *t = json_object_get(cfg, "chat_template");
    if (json_is_string(t)) *tmpl = strdup(json_string_value(t));
    else if (json_is_array(t)) { /* [{"name": ..., "template": ...}]: the one named "default" */
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e) {
            const json_t *name = json_object_get(e, "name"), *text = json_object_get(e, "template");
            if (json_is_string(name) && !strcmp(json_string_value(name), "default") && json_is_string(text))
                *tmpl = strdup(json_string_value(text));
        }
        if (!*tmpl) rc = rlhf_error_set(err, RLHF_EINVAL, path, "chat_template is a list with no template named \"default\"");
    } else if (t && !json_is_null(t)) {
        rc = rlhf_error_set(err, RLHF_EINVAL, path, "chat_template must be a string or a list of {name, template}");
    }
    if (!rc) {
        if (bos) *bos = token_text(json_object_get(cfg, "bos_token"));
        if (eos) *eos = token_text(json_object_get(cfg, "eos_token"));
    }
    json_decref(cfg);
    return rc;
}
