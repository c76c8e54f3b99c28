/* template/template.h — the Jinja subset that Hugging Face chat templates use (tokenizer_config.json
 * "chat_template"), rendered the way Hugging Face's own renderers do: lstrip_blocks and trim_blocks on,
 * one trailing newline of the template dropped, `{%-`/`-%}` whitespace control. Checked byte for byte
 * against @huggingface/jinja (tests/template). What it covers and where it deliberately differs is in
 * docs/CHAT_TEMPLATES.md; anything else is refused with the template's line and column. */
#ifndef RLHF_TEMPLATE_H
#define RLHF_TEMPLATE_H

#include <stddef.h>

#include "common/common.h"

struct json_t;
typedef struct template_program template_program;

/* Parses SRC[0..len) once; NAME (a file name or "tokenizer_config.json:chat_template") prefixes every
 * error's location, which is NAME:LINE:COL of the construct. */
int template_create(template_program **out, const char *src, size_t len, const char *name, rlhf_error *err);
void template_destroy(template_program **p);

/* Renders with the variables of CONTEXT (a JSON object; NULL for none). *out is a NUL-terminated
 * malloc'd string of *out_len bytes (out_len may be NULL). A runtime error (raise_exception, a type
 * error, an unsupported filter) names the line and column of the expression. */
int template_render(const template_program *p, const struct json_t *context, char **out, size_t *out_len,
                    rlhf_error *err);

/* The chat-template call: messages (a JSON array of {role, content, ...}), tools (an array or NULL),
 * add_generation_prompt, and the tokenizer's bos_token / eos_token (NULL: undefined in the template). */
typedef struct template_chat_args {
    const struct json_t *messages;
    const struct json_t *tools;
    int add_generation_prompt;
    const char *bos_token, *eos_token;
    const struct json_t *extra; /* more variables (e.g. enable_thinking), an object or NULL */
} template_chat_args;
int template_render_chat(const template_program *p, const template_chat_args *a, char **out, size_t *out_len,
                         rlhf_error *err);

/* The chat template of a Hugging Face model directory (DIR/tokenizer_config.json "chat_template", a
 * string or the {"name", "template"} list form, where the one named "default" is taken), with its
 * bos_token / eos_token (strings or {"content": ...} objects; NULL when absent). *tmpl is NULL when
 * the file or the key is absent (not an error: the model has no template). Caller frees the strings. */
int template_load_hf(const char *dir, char **tmpl, char **bos_token, char **eos_token, rlhf_error *err);

#endif
