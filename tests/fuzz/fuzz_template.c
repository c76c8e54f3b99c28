/* tests/fuzz/fuzz_template.c — the chat-template renderer (template/): parsing any bytes as a template
 * and rendering it with a message list.
 *
 * Input: the template source, then optionally a JSON message list, separated by FUZZ_SEP (without one,
 * a fixed three-message conversation). Properties: create and render either succeed or fail with an
 * error that names a location (NAME:LINE:COL or the message); a rendered string is exactly *out_len
 * bytes long. The renderer's own bounds (nesting, output size, loop steps) keep a hostile template from
 * exhausting the stack, memory or time — libFuzzer's -timeout and -rss_limit_mb catch one that does. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "template/template.h"
#include "tests/fuzz/fuzz_util.h"

static const char DEFAULT_MESSAGES[] =
    "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi \\u00e9\"},"
    "{\"role\":\"assistant\",\"content\":null}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_part parts[2];
    size_t np = fuzz_split(data, size, parts, 2);
    rlhf_error err = {0};
    template_program *p = NULL;
    if (template_create(&p, (const char *)parts[0].p, parts[0].n, "fuzz.jinja", &err) != 0) {
        FUZZ_ASSERT(p == NULL, "a failed parse returned a program");
        FUZZ_ASSERT(err.msg[0] != 0, "a failed parse gave no message");
        return 0;
    }
    json_t *msgs = np >= 2 ? json_loadb((const char *)parts[1].p, parts[1].n, 0, NULL) : json_loads(DEFAULT_MESSAGES, 0, NULL);
    for (int gen = 0; gen < 2; gen++) {
        template_chat_args a = {.messages = msgs, .add_generation_prompt = gen, .bos_token = "<s>", .eos_token = "</s>"};
        char *out = NULL;
        size_t n = 0;
        rlhf_error_clear(&err);
        int rc = template_render_chat(p, &a, &out, &n, &err);
        if (rc == 0) {
            FUZZ_ASSERT(out != NULL, "a render succeeded without output");
            FUZZ_ASSERT(strlen(out) <= n, "the output is shorter than its length");
        } else {
            FUZZ_ASSERT(err.msg[0] != 0, "a failed render gave no message");
        }
        free(out);
    }
    json_decref(msgs);
    template_destroy(&p);
    return 0;
}
