/* prompts/messages.c — datasets whose lines hold `messages` (the OpenAI list of {role, content})
 * instead of `prompt`: each is rendered once through the model's chat template with
 * add_generation_prompt, and the text becomes the line's `prompt` (its `messages` stay, for reward
 * sources). A leading bos_token is left out of that text: generators encode prompts the way Hugging Face
 * encodes with add_special_tokens, which puts the BOS id first itself (HF's apply_chat_template
 * instead encodes the template's text without special tokens: the same ids). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompts/prompts.h"

static int render_line(json_t *rec, const prompt_chat *chat, const char *where, rlhf_error *err) {
    json_t *msgs = json_object_get(rec, "messages");
    if (json_object_get(rec, "prompt"))
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "give `prompt` or `messages`, not both");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "`messages` must be a non-empty list of {role, content}");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")) ||
            !json_is_string(json_object_get(m, "content")))
            return rlhf_error_set(err, RLHF_ECORRUPT, where, "messages[%zu] needs a string `role` and `content`", i);
    }
    template_chat_args a = {.messages = msgs, .tools = json_object_get(rec, "tools"), .add_generation_prompt = 1,
                            .bos_token = chat->bos_token, .eos_token = chat->eos_token};
    char *text = NULL;
    size_t len = 0;
    rlhf_error terr = {0};
    if (template_render_chat(chat->tmpl, &a, &text, &len, &terr))
        return rlhf_error_set(err, RLHF_EINVAL, where, "chat template: %s: %s", terr.where, terr.msg);
    size_t skip = 0, bl = chat->bos_token ? strlen(chat->bos_token) : 0;
    if (bl && len >= bl && !memcmp(text, chat->bos_token, bl)) skip = bl;
    json_object_set_new(rec, "prompt", json_stringn(text + skip, len - skip));
    free(text);
    return 0;
}

int prompt_dataset_has_messages(const char *path, int *has, rlhf_error *err) {
    *has = 0;
    FILE *f = fopen(path, "r");
    if (!f) return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    while (!*has && getline(&line, &cap, f) >= 0) {
        json_t *rec = json_loads(line, 0, NULL);
        *has = json_is_object(rec) && json_object_get(rec, "messages") && !json_object_get(rec, "prompt");
        json_decref(rec);
    }
    free(line);
    fclose(f);
    return 0;
}

int prompt_dataset_render_messages(const char *in, const char *out, const prompt_chat *chat, size_t *n_rendered,
                                   rlhf_error *err) {
    *n_rendered = 0;
    FILE *f = fopen(in, "r");
    if (!f) return rlhf_error_set(err, RLHF_EIO, in, "cannot open: %s", strerror(errno));
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, out, err);
    if (rc) {
        fclose(f);
        return rc;
    }
    char *line = NULL, where[sizeof err->where];
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        snprintf(where, sizeof where, "%s:%ld", in, lineno);
        json_error_t jerr;
        json_t *rec = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
        if (!rec || !json_is_object(rec) || !json_object_get(rec, "messages") ||
            (json_object_get(rec, "prompt") && !json_object_get(rec, "messages"))) {
            /* not ours to judge: copied as is, for the dataset loader to accept or refuse */
            json_decref(rec);
            if (fwrite(line, 1, (size_t)len, af.fp) != (size_t)len) rc = rlhf_error_set(err, RLHF_EIO, out, "write failed");
            continue;
        }
        if (!chat || !chat->tmpl)
            rc = rlhf_error_set(err, RLHF_EINVAL, where,
                                "`messages` needs a chat template: the model's tokenizer_config.json has none; name "
                                "one with task.chat_template");
        else rc = render_line(rec, chat, where, err);
        char *s = rc ? NULL : json_dumps(rec, JSON_COMPACT);
        json_decref(rec);
        if (!rc && (!s || fprintf(af.fp, "%s\n", s) < 0)) rc = rlhf_error_set(err, RLHF_EIO, out, "write failed");
        free(s);
        if (!rc) (*n_rendered)++;
    }
    free(line);
    fclose(f);
    if (rc) {
        rlhf_atomic_abort(&af);
        return rc;
    }
    return rlhf_atomic_commit(&af, err);
}
