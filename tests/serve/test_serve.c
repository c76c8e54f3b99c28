/* tests/serve/test_serve.c — `rlhf serve` over real HTTP (a separate process) with a real model: a tiny
 * model briefly trained here to answer every chat with "score: 7" acts as the judge; malformed and
 * oversized requests; SSE streaming; reward models (training accuracy on the synthetic preference task,
 * in-process vs remote scores, bad preference files).
 * A little over 1,000 lines: one suite whose cases share one server process and the judge model trained
 * once for all of them; splitting it would train or start them again per file. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model.h"
#include "prompts/prompts.h"
#include "rewards/judge/judge.h"
#include "rewards/rewards.h"
#include "rewards/rm/rm.h"
#include "serve/serve_int.h"
#include "tests/peer/peer.h"

static char g_dir[64];           /* scratch directory for checkpoints */
static char g_random_model[256]; /* an untrained model: varied greedy output to compare decoders on */
static char g_judge_model[256];  /* the briefly trained "score: 7" model */

static const char judge_template[] = "Q: {prompt}\nA: {completion}";

/* Trains a tiny model on "<|user|>\nQ: ...\nA: ...\n<|assistant|>\n" -> "score: 7\n" EOS (loss on the answer
 * only), the same chat layout rlhf serve renders, and saves it. Greedy decoding then answers "score: 7". */
static int train_judge_model(const char *path) {
    model_config cfg = {.dim = 32, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 64, .vocab_size = 259,
                        .max_seq_len = 128, .rope_theta = 10000, .norm_eps = 1e-5f, .tie_embeddings = 0};
    model *m = NULL;
    rlhf_error err = {0};
    if (model_create(&m, &cfg, &err)) return -1;
    model_init_random(m, 11);
    tokenizer *tok = NULL;
    tokenizer_create_bytes(&tok, 259, &err);
    enum { B = 8, T = 128 };
    model_trainer *tr = NULL;
    adamw *opt = NULL;
    adamw_config ac;
    adamw_config_default(&ac);
    ac.lr = 1e-2f;
    ac.weight_decay = 0;
    if (model_trainer_create(&tr, m, B, T, &err) || adamw_create(&opt, m, &ac, &err)) return -1;
    int32_t *tokens = malloc(sizeof(int32_t) * B * T), *targets = malloc(sizeof(int32_t) * B * T);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 5);
    const char *answer = "score: 7\n";
    int rc = 0;
    for (int step = 0; step < 120 && !rc; step++) {
        int maxlen = 0;
        for (int b = 0; b < B; b++) {
            char text[160], comp[48];
            int nc = 3 + (int)(rlhf_rng_u64(&rng) % 20);
            for (int i = 0; i < nc; i++) comp[i] = (char)(" abcdefghij=0123456789"[rlhf_rng_u64(&rng) % 22]);
            comp[nc] = 0;
            int np = snprintf(text, sizeof text, "<|user|>\nQ: %s\nA: %s\n<|assistant|>\n",
                              rlhf_rng_uniform(&rng) < 0.5f ? "grade" : "p", comp);
            snprintf(text + np, sizeof text - (size_t)np, "%s", answer);
            int32_t *ids;
            int n;
            tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err);
            int prompt_tokens = np + 1; /* BOS + prompt bytes */
            for (int t = 0; t < T; t++) {
                tokens[b * T + t] = t < n ? ids[t] : tok->eos_id;
                int next = t + 1 < n ? ids[t + 1] : (t + 1 == n ? tok->eos_id : -1);
                targets[b * T + t] = (t + 1 >= prompt_tokens && next >= 0) ? next : -1;
            }
            if (n + 1 > maxlen) maxlen = n + 1;
            free(ids);
        }
        /* compact to the longest row */
        int Tb = maxlen < T ? maxlen : T;
        for (int b = 1; b < B; b++) {
            memmove(tokens + b * Tb, tokens + b * T, sizeof(int32_t) * Tb);
            memmove(targets + b * Tb, targets + b * T, sizeof(int32_t) * Tb);
        }
        model_trainer_zero_grad(tr);
        rc = model_forward(tr, tokens, targets, B, Tb, &err) || model_backward_loss(tr, &err) ||
             adamw_step(opt, m, model_trainer_grads(tr), NULL, NULL, &err);
    }
    if (!rc) rc = model_save(m, path, &err);
    if (rc) fprintf(stderr, "train_judge_model: %s: %s\n", err.where, err.msg);
    free(tokens);
    free(targets);
    adamw_destroy(&opt);
    model_trainer_destroy(&tr);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    return rc ? -1 : 0;
}

static int start_serve(peer *p, const char *a1, const char *v1, const char *a2, const char *v2) {
    char bin[4096];
    peer_bin_path("rlhf", bin, sizeof bin);
    char *argv[12] = {bin, "serve", "--port", "0"};
    int k = 4;
    if (a1) argv[k++] = (char *)a1, argv[k++] = (char *)v1;
    if (a2) argv[k++] = (char *)a2, argv[k++] = (char *)v2;
    argv[k] = NULL;
    return peer_start(p, argv, 20.0);
}

static int suite_init(void) {
    /* Tiny models: extra threads only cost (and the machine is shared). The variable is for the child
     * processes (rlhf serve, rlhf train-rm); this process's runtime has read it already. */
    if (!getenv("OMP_NUM_THREADS")) {
        setenv("OMP_NUM_THREADS", "1", 1);
        omp_set_num_threads(1);
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf-serve-test-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_judge_model, sizeof g_judge_model, "%s/judge-model.safetensors", g_dir);
    snprintf(g_random_model, sizeof g_random_model, "%s/random-model.safetensors", g_dir);
    model_config rc_cfg = {.dim = 32, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1, .ffn_dim = 64, .vocab_size = 259,
                           .max_seq_len = 96, .rope_theta = 10000, .norm_eps = 1e-5f};
    model *rm_ = NULL;
    if (model_create(&rm_, &rc_cfg, NULL)) return -1;
    model_init_random(rm_, 21);
    /* larger weights than the default init, so greedy choices are far from ties */
    for (size_t i = 0; i < rm_->n_params; i++) rm_->params_mem[i] *= 4.0f;
    if (model_save(rm_, g_random_model, NULL)) return -1;
    model_destroy(&rm_);
    double t0 = rlhf_now();
    int rc = train_judge_model(g_judge_model);
    fprintf(stderr, "\n  trained the judge model in %.1f s\n", rlhf_now() - t0);
    return rc;
}

static int suite_clean(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------------ rlhf serve */

static void test_judge_against_serve(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_judge_model, "--max-batch", "4"), 0);
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "GET", "/v1/models", NULL, &body), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "\"judge-model\""));
    free(body);
    CU_ASSERT_EQUAL(peer_http(&srv, "GET", "/health", NULL, &body), 200);
    free(body);

    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s/", srv.base_url); /* trailing slash tolerated */
    snprintf(cfg.model, sizeof cfg.model, "judge-model");
    free(cfg.template_text);
    cfg.template_text = strdup(judge_template);
    cfg.max_tokens = 16;
    cfg.concurrency = 16;
    cfg.call_timeout_ms = 60000;
    /* the text pattern: this model was trained to answer "score: 7" in text (rlhf serve would honour a
     * json_schema response_format with guided decoding, which test_serve_guided checks) */
    cfg.response_format = JUDGE_RF_NONE;
    judge_client *jc = NULL;
    CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "served", NULL, NULL), 0);
    judge_config_free(&cfg);
    enum { N = 16 };
    judge_item it[N];
    char comp[N][32];
    memset(it, 0, sizeof it);
    for (int i = 0; i < N; i++) {
        snprintf(comp[i], sizeof comp[i], "answer %d", i * 37);
        it[i].prompt = "grade";
        it[i].completion = comp[i];
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        if (!it[i].ok) fprintf(stderr, "item %d: %s\n", i, it[i].detail);
        ok += it[i].ok && it[i].raw_score == 7;
    }
    CU_ASSERT_EQUAL(ok, N); /* 16 concurrent requests, batched by the server, all answered by the model */
    CU_ASSERT_EQUAL(judge_client_stats(jc)->rf_fallbacks, 0);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

/* response_format: every choice of a json_schema request validates against the schema (Debian's
 * python3-jsonschema, tests/guided/oracle.py), also streamed; json_object gives a JSON object; forced
 * tokens carry sampling_logprob 0; an unsupported keyword and an empty language are 400s naming the path. */
static void test_serve_guided(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_random_model, "--max-batch", "4"), 0);
    const char *schema = "{\"type\":\"object\",\"properties\":{\"city\":{\"enum\":[\"Paris\",\"Rome\"]},"
                         "\"code\":{\"type\":\"string\",\"pattern\":\"^[a-z]{2,4}$\"},\"ok\":{\"type\":\"boolean\"},"
                         "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":2},\"maxItems\":1}},"
                         "\"required\":[\"city\",\"code\",\"ok\"],\"additionalProperties\":false}";
    char req[2048], path[300], line[4096];
    snprintf(path, sizeof path, "%s/guided-serve.jsonl", g_dir);
    FILE *out = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    int n_checked = 0;
    for (int stream = 0; stream < 2; stream++) {
        snprintf(req, sizeof req,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"a city\"}],\"max_tokens\":80,\"temperature\":1,"
                 "\"seed\":3,%s\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"city\","
                 "\"strict\":true,\"schema\":%s}}}",
                 stream ? "\"stream\":true," : "\"n\":4,\"logprobs\":true,", schema);
        char *body = NULL;
        CU_ASSERT_EQUAL_FATAL(peer_http(&srv, "POST", "/v1/chat/completions", req, &body), 200);
        json_t *texts = json_array();
        if (!stream) {
            json_t *j = json_loads(body, 0, NULL);
            CU_ASSERT_PTR_NOT_NULL_FATAL(j);
            json_t *choices = json_object_get(j, "choices");
            CU_ASSERT_EQUAL(json_array_size(choices), 4);
            size_t i;
            json_t *ch;
            json_array_foreach(choices, i, ch) {
                CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ch, "finish_reason")), "stop");
                json_array_append(texts, json_object_get(json_object_get(ch, "message"), "content"));
                /* the first token, "{", is forced: log q = 0 while log pi < 0 */
                json_t *t0 = json_array_get(json_object_get(json_object_get(ch, "logprobs"), "content"), 0);
                CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(t0, "token")), "{");
                CU_ASSERT_EQUAL(json_real_value(json_object_get(t0, "sampling_logprob")), 0.0);
                CU_ASSERT(json_number_value(json_object_get(t0, "logprob")) < 0.0);
            }
            json_decref(j);
        } else {
            char acc[1024] = "";
            for (char *l = strtok(body, "\n"); l; l = strtok(NULL, "\n")) {
                if (strncmp(l, "data: {", 7) != 0) continue;
                json_t *ev = json_loads(l + 6, 0, NULL);
                const char *piece = json_string_value(
                    json_object_get(json_object_get(json_array_get(json_object_get(ev, "choices"), 0), "delta"), "content"));
                if (piece) strncat(acc, piece, sizeof acc - strlen(acc) - 1);
                json_decref(ev);
            }
            json_array_append_new(texts, json_string(acc));
        }
        free(body);
        size_t i;
        json_t *t;
        json_array_foreach(texts, i, t) {
            json_t *rec = json_pack("{s:s,s:o,s:O,s:s}", "kind", "schema", "spec", json_loads(schema, 0, NULL), "text", t,
                                    "finish", "stop");
            char *d = json_dumps(rec, JSON_COMPACT);
            fprintf(out, "%s\n", d);
            free(d);
            json_decref(rec);
            n_checked++;
        }
        json_decref(texts);
    }
    /* json_object: any JSON object */
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions",
                              "{\"prompt\":\"x\",\"max_tokens\":90,\"response_format\":{\"type\":\"json_object\"}}", &body),
                    200);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    if (!strcmp(json_string_value(json_object_get(ch, "finish_reason")), "stop")) {
        json_t *rec = json_pack("{s:s,s:{s:s},s:O,s:s}", "kind", "schema", "spec", "type", "object", "text",
                                json_object_get(ch, "text"), "finish", "stop");
        char *d = json_dumps(rec, JSON_COMPACT);
        fprintf(out, "%s\n", d);
        free(d);
        json_decref(rec);
        n_checked++;
    } else { /* a random model may nest past 90 tokens; then the text is a prefix of an object */
        CU_ASSERT_EQUAL(json_string_value(json_object_get(ch, "text"))[0], '{');
    }
    json_decref(j);
    fclose(out);
    char script[4096], cmd[8192];
    snprintf(script, sizeof script, "%s/tests/guided/oracle.py", RLHF_SOURCE_ROOT);
    snprintf(cmd, sizeof cmd, "python3 %s check %s", script, path);
    FILE *p = popen(cmd, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    while (fgets(line, sizeof line, p)) fputs(line, stderr);
    CU_ASSERT_EQUAL(pclose(p), 0);
    CU_ASSERT(n_checked >= 5);
    /* errors name the schema path */
    struct {
        const char *rf, *part;
    } bad[] = {
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{\"type\":\"object\",\"properties\":"
         "{\"n\":{\"type\":\"integer\",\"minimum\":0}}}}}",
         "response_format.json_schema.schema.properties.n.minimum: unsupported keyword"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{\"type\":\"string\",\"enum\":[1]}}}",
         "language is empty"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{}}}", "name must be a non-empty string"},
        {"{\"type\":\"yaml\"}", "response_format.type must be"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(req, sizeof req, "{\"prompt\":\"x\",\"response_format\":%s}", bad[i].rf);
        CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", req, &body), 400);
        CU_ASSERT_PTR_NOT_NULL(strstr(body, bad[i].part));
        if (!strstr(body, bad[i].part)) fprintf(stderr, "response_format %s -> %s\n", bad[i].rf, body);
        free(body);
    }
    peer_stop(&srv);
}

/* --chat-template: chat prompts are the template's text (bytes tokenizer: one id a byte, no BOS added
 * since a template writes its own), a template error is a 400 naming the template's line:column, and
 * an assistant turn with content null is accepted. */
static void test_serve_chat_template(void) {
    char tpl[128];
    snprintf(tpl, sizeof tpl, "%s/chat.jinja", g_dir);
    FILE *f = fopen(tpl, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("{% for m in messages %}\n"
          "{% if m.role == 'system' %}{{ raise_exception('no system role here') }}{% endif %}\n"
          "<|{{ m.role }}|>\n{{ m.content | trim }}\n"
          "{% endfor %}\n"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}\n", f);
    fclose(f);
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_judge_model, "--chat-template", tpl), 0);
    const char *req = "{\"messages\":[{\"role\":\"user\",\"content\":\"   Q: p\\nA: 12  \"},{\"role\":\"assistant\","
                      "\"content\":null},{\"role\":\"user\",\"content\":\"again\"}],\"max_tokens\":4,\"temperature\":0}";
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/chat/completions", req, &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    const char *want = "<|user|>\nQ: p\nA: 12\n<|assistant|>\n\n<|user|>\nagain\n<|assistant|>\n";
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), (json_int_t)strlen(want));
    json_decref(j);
    const char *sys = "{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}],\"max_tokens\":4}";
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/chat/completions", sys, &body), 400);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "chat.jinja:2:"));
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "no system role here"));
    free(body);
    peer_stop(&srv);
}

static void test_serve_completions_and_stream(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_judge_model, NULL, NULL), 0);
    const char *req = "{\"model\":\"judge-model\",\"prompt\":\"<|user|>\\nQ: p\\nA: 12\\n<|assistant|>\\n\",\"max_tokens\":12,"
                      "\"temperature\":0}";
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", req, &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    const char *text = json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_STRING_EQUAL(text, "score: 7\n");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "object")), "text_completion");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) > 0);

    /* The same request streamed: the deltas concatenate to the same text; [DONE] closes it. */
    const char *sreq = "{\"model\":\"judge-model\",\"messages\":[{\"role\":\"user\",\"content\":\"Q: p\\nA: 12\"}],"
                       "\"max_tokens\":12,\"temperature\":0,\"stream\":true}";
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/chat/completions", sreq, &body), 200);
    char acc[256] = "";
    int events = 0, done = 0, finish_seen = 0;
    for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "data: ", 6) != 0) continue;
        if (!strcmp(line + 6, "[DONE]")) {
            done = 1;
            continue;
        }
        json_t *ev = json_loads(line + 6, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ev);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ev, "object")), "chat.completion.chunk");
        json_t *ch = json_array_get(json_object_get(ev, "choices"), 0);
        const char *piece = json_string_value(json_object_get(json_object_get(ch, "delta"), "content"));
        if (piece) strncat(acc, piece, sizeof acc - strlen(acc) - 1);
        if (json_is_string(json_object_get(ch, "finish_reason"))) finish_seen = 1;
        events++;
        json_decref(ev);
    }
    free(body);
    CU_ASSERT(done);
    CU_ASSERT(finish_seen);
    CU_ASSERT(events >= 3);
    CU_ASSERT_STRING_EQUAL(acc, text);
    /* A stop string ends the completion before it, streamed or not; the stream never leaks it. */
    const char *stop_req[2] = {
        "{\"prompt\":\"<|user|>\\nQ: p\\nA: 12\\n<|assistant|>\\n\",\"max_tokens\":12,\"temperature\":0,\"stop\":[\": 7\"]}",
        "{\"prompt\":\"<|user|>\\nQ: p\\nA: 12\\n<|assistant|>\\n\",\"max_tokens\":12,\"temperature\":0,\"stop\":\": 7\","
        "\"stream\":true}"};
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", stop_req[0], &body), 200);
    json_t *sj = json_loads(body, 0, NULL);
    free(body);
    json_t *c0 = json_array_get(json_object_get(sj, "choices"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c0, "text")), "score");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c0, "finish_reason")), "stop");
    json_decref(sj);
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", stop_req[1], &body), 200);
    char sacc[64] = "";
    for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "data: {", 7) != 0) continue;
        json_t *ev = json_loads(line + 6, 0, NULL);
        const char *piece = json_string_value(json_object_get(json_array_get(json_object_get(ev, "choices"), 0), "text"));
        if (piece) strncat(sacc, piece, sizeof sacc - strlen(sacc) - 1);
        json_decref(ev);
    }
    free(body);
    CU_ASSERT_STRING_EQUAL(sacc, "score");
    /* Two stop strings completed by one token ("e" of "score"): the earlier match wins, whatever the order. */
    const char *two_stops = "{\"prompt\":\"<|user|>\\nQ: p\\nA: 12\\n<|assistant|>\\n\",\"max_tokens\":12,"
                            "\"temperature\":0,\"stop\":[\"e\",\"core\"]}";
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", two_stops, &body), 200);
    sj = json_loads(body, 0, NULL);
    free(body);
    c0 = json_array_get(json_object_get(sj, "choices"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c0, "text")), "s");
    json_decref(sj);
    /* min_p and top_k are accepted; greedy ignores them */
    const char *filters = "{\"prompt\":\"<|user|>\\nQ: p\\nA: 12\\n<|assistant|>\\n\",\"max_tokens\":12,"
                          "\"temperature\":0,\"min_p\":0.5,\"top_k\":-1,\"top_p\":0.9}";
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", filters, &body), 200);
    sj = json_loads(body, 0, NULL);
    free(body);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(json_object_get(sj, "choices"), 0), "text")),
                           "score: 7\n");
    json_decref(sj);
    /* Content as a list of text parts (newer OpenAI clients) renders the same prompt. */
    const char *preq = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Q: p\\n\"},"
                       "{\"type\":\"text\",\"text\":\"A: 12\"}]}],\"max_tokens\":12,\"temperature\":0}";
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/chat/completions", preq, &body), 200);
    json_t *pj = json_loads(body, 0, NULL);
    free(body);
    const char *ptext = json_string_value(
        json_object_get(json_object_get(json_array_get(json_object_get(pj, "choices"), 0), "message"), "content"));
    CU_ASSERT_PTR_NOT_NULL(ptext);
    if (ptext) CU_ASSERT_STRING_EQUAL(ptext, text);
    json_decref(pj);
    json_decref(j);
    peer_stop(&srv);
}

static void test_serve_rejects_bad_requests(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_judge_model, "--max-body", "4096"), 0);
    struct {
        const char *method, *path, *body;
        long status;
        const char *msg_part;
    } cases[] = {
        {"POST", "/v1/chat/completions", "{not json", 400, "not JSON"},
        {"POST", "/v1/chat/completions", "[1,2]", 400, "JSON object"},
        {"POST", "/v1/chat/completions", "{\"user\":\"u\"}", 400, "messages"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\"}]}", 400, "content"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":\"hot\"}",
         400, "temperature"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":17}", 400,
         "Expected a value <= 16"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":0}", 400,
         "Expected a value >= 1"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":2.5}",
         400, "Expected a value <= 2"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":0}", 400, "Expected a value >= 1"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"model\":\"gpt-4o\"}", 404, "does not exist"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"min_p\":1.5}", 400,
         "min_p must be a number in [0, 1]"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"min_p\":-0.1}", 400,
         "min_p must be a number in [0, 1]"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"min_p\":\"lots\"}", 400, "min_p"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_p\":0}", 400, "top_p must be a number in (0, 1]"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_p\":1.01}", 400, "top_p"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_k\":-2}", 400, "top_k must be an integer"},
        {"POST", "/v1/completions", "{\"prompt\":\"a\",\"top_k\":0.5}", 400, "top_k"},
        {"POST", "/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"response_format\":{\"type\":\"json_schema\"}}", 400,
         "response_format"},
        {"POST", "/v1/completions", "{\"prompt\":42}", 400, "prompt"},
        {"POST", "/get_reward", "{\"query\":[\"a\"]}", 404, "reward model"},
        {"GET", "/v1/chat/completions", NULL, 405, "POST"},
        {"GET", "/nope", NULL, 404, "no route"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *body = NULL;
        long st = peer_http(&srv, cases[i].method, cases[i].path, cases[i].body, &body);
        CU_ASSERT_EQUAL(st, cases[i].status);
        json_t *j = json_loads(body, 0, NULL);
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        CU_ASSERT_PTR_NOT_NULL(msg);
        CU_ASSERT_PTR_NOT_NULL(json_object_get(json_object_get(j, "error"), "type"));
        if (!msg || !strstr(msg, cases[i].msg_part))
            fprintf(stderr, "case %zu: status %ld body %s\n", i, st, body);
        else
            CU_ASSERT_PTR_NOT_NULL(strstr(msg, cases[i].msg_part));
        json_decref(j);
        free(body);
    }
    /* Oversized: 8 KiB > --max-body 4096. */
    size_t big_n = 8192;
    char *big = malloc(big_n + 64);
    int off = sprintf(big, "{\"prompt\":\"");
    memset(big + off, 'a', big_n);
    strcpy(big + off + big_n, "\"}");
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", big, &body), 413);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "exceeds"));
    free(body);
    free(big);
    /* A prompt longer than max_seq_len (128) is a 400 naming the limit. */
    char longp[512];
    off = sprintf(longp, "{\"prompt\":\"");
    memset(longp + off, 'b', 300);
    strcpy(longp + off + 300, "\"}");
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", longp, &body), 400);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "max_seq_len"));
    free(body);
    /* ... and the server keeps serving. */
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":4}", &body), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "\"choices\""));
    free(body);
    peer_stop(&srv);
}

typedef struct greedy_call {
    const peer *srv;
    const char *prompt;
    int max_tokens;
    long status;
    char *text;
} greedy_call;

static void *greedy_thread(void *arg) {
    greedy_call *g = arg;
    char req[512], *body = NULL;
    snprintf(req, sizeof req, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0}", g->prompt, g->max_tokens);
    g->status = peer_http(g->srv, "POST", "/v1/completions", req, &body);
    json_t *j = json_loads(body, 0, NULL);
    const char *t = json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
    g->text = t ? strdup(t) : NULL;
    json_decref(j);
    free(body);
    return NULL;
}

/* rlhf serve decodes with its own continuous-batching loop over sampler_step; under greedy decoding it must
 * produce exactly what model/'s sampler_run produces for each prompt alone (the oracle), even when the
 * requests arrive together and share steps. */
static void test_serve_matches_sampler_run(void) {
    const char *prompts[] = {"hello", "the quick brown fox", "1 2 3 4", "a much longer prompt than the others, to "
                             "make the prefill chunks differ in size"};
    enum { NP = 4, NEW = 24 };
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m, g_random_model, NULL, NULL), 0);
    tokenizer *tok = NULL;
    tokenizer_create_bytes(&tok, m->cfg.vocab_size, NULL);
    sampler *smp = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&smp, m, 1, NULL), 0);
    char *expect[NP];
    for (int i = 0; i < NP; i++) {
        sample_request rq = {0};
        int32_t *ids;
        tokenizer_encode(tok, prompts[i], strlen(prompts[i]), 1, &ids, &rq.prompt_len, NULL);
        rq.prompt = ids;
        rq.params = sample_params_default();
        rq.params.temperature = 0;
        rq.params.max_new_tokens = NEW;
        rq.params.stop_ids = &tok->eos_id;
        rq.params.n_stop_ids = 1;
        sample_result res = {0};
        CU_ASSERT_EQUAL_FATAL(sampler_run(smp, tok, &rq, 1, &res, NULL), 0);
        expect[i] = rlhf_utf8_sanitize(res.text, res.text_len);
        sample_result_free(&res);
        free(ids);
    }
    sampler_destroy(&smp);
    tokenizer_destroy(&tok);
    model_destroy(&m);

    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_random_model, "--max-batch", "3"), 0);
    /* Round 0: the four requests at once from four threads (they share decode steps on the server, one
     * waits for a free slot); round 1: one after another. */
    for (int round = 0; round < 2; round++) {
        greedy_call calls[NP];
        pthread_t th[NP];
        for (int i = 0; i < NP; i++) {
            calls[i] = (greedy_call){.srv = &srv, .prompt = prompts[i], .max_tokens = NEW};
            if (round == 0) pthread_create(&th[i], NULL, greedy_thread, &calls[i]);
            else greedy_thread(&calls[i]);
        }
        for (int i = 0; i < NP; i++) {
            if (round == 0) pthread_join(th[i], NULL);
            CU_ASSERT_EQUAL(calls[i].status, 200);
            CU_ASSERT_PTR_NOT_NULL(calls[i].text);
            if (calls[i].text) {
                if (strcmp(calls[i].text, expect[i]))
                    fprintf(stderr, "round %d prompt %d: serve '%s' vs sampler_run '%s'\n", round, i, calls[i].text,
                            expect[i]);
                CU_ASSERT_STRING_EQUAL(calls[i].text, expect[i]);
            }
            free(calls[i].text);
        }
    }
    for (int i = 0; i < NP; i++) free(expect[i]);
    peer_stop(&srv);
}

/* Reference log-probs at one position: log pi (temperature 1, unfiltered) and log q (temperature, top-k with
 * ties by smaller id, min-p; no top-p), by plain loops over the reference forward's logits. */
static void ref_logprobs(const float *row, int V, int y, double temp, int top_k, double min_p, double *lp, double *lq) {
    double mx = -INFINITY, s = 0.0, kept = 0.0;
    for (int i = 0; i < V; i++) mx = fmax(mx, row[i]);
    for (int i = 0; i < V; i++) s += exp(row[i] - mx);
    *lp = row[y] - mx - log(s);
    for (int i = 0; i < V; i++) {
        int above = 0;
        for (int j = 0; j < V; j++) above += row[j] > row[i] || (row[j] == row[i] && j < i);
        double w = exp((row[i] - mx) / temp);
        if ((top_k > 0 && above >= top_k) || w < min_p) continue;
        kept += w;
    }
    *lq = (row[y] - mx) / temp - log(kept);
}

/* "logprobs": per sampled token the model's log-prob (temperature 1) and sampling_logprob = log q of the
 * distribution drawn from, both against the reference forward; greedy: log q = 0 and the log-probs equal
 * sampler_run's. Streaming with log-probs, and top log-probs, are refused. */
static void test_serve_logprobs(void) {
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m, g_random_model, NULL, NULL), 0);
    tokenizer *tok = NULL;
    tokenizer_create_bytes(&tok, m->cfg.vocab_size, NULL);
    int V = m->cfg.vocab_size;
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_random_model, NULL, NULL), 0);
    const char *prompt = "<|user|>\nhi\n<|assistant|>\n";
    for (int variant = 0; variant < 2; variant++) { /* sampled chat; greedy completions */
        char *body = NULL;
        const char *req = variant == 0
                              ? "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":12,\"seed\":9,"
                                "\"temperature\":2,\"top_k\":5,\"min_p\":0.05,\"logprobs\":true,\"top_logprobs\":3}"
                              : "{\"prompt\":\"<|user|>\\nhi\\n<|assistant|>\\n\",\"max_tokens\":12,\"temperature\":0,"
                                "\"logprobs\":0}";
        CU_ASSERT_EQUAL(peer_http(&srv, "POST", variant == 0 ? "/v1/chat/completions" : "/v1/completions", req, &body),
                        200);
        json_t *j = json_loads(body, 0, NULL);
        free(body);
        json_t *lpj = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
        CU_ASSERT_PTR_NOT_NULL_FATAL(lpj);
        int n = (int)json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
        /* the sampled ids: chat gives each token's bytes (byte-level: one byte, or none for EOS); greedy
         * completions are sampler_run's tokens (greedy_matches_sampler_run shows they agree) */
        int32_t ids[64], *pids = NULL;
        int plen = 0;
        float lp[64], lq[64];
        tokenizer_encode(tok, prompt, strlen(prompt), 1, &pids, &plen, NULL);
        CU_ASSERT_FATAL(n > 0 && n <= 12);
        if (variant == 0) {
            json_t *content = json_object_get(lpj, "content");
            CU_ASSERT_EQUAL_FATAL(json_array_size(content), (size_t)n);
            for (int t = 0; t < n; t++) {
                json_t *e = json_array_get(content, t), *bytes = json_object_get(e, "bytes");
                ids[t] = json_array_size(bytes) == 1 ? (int32_t)json_integer_value(json_array_get(bytes, 0))
                                                     : TOKENIZER_BYTES_EOS;
                lp[t] = (float)json_real_value(json_object_get(e, "logprob"));
                lq[t] = (float)json_real_value(json_object_get(e, "sampling_logprob"));
                CU_ASSERT(json_is_array(json_object_get(e, "top_logprobs")));
            }
        } else {
            sampler *smp = NULL;
            CU_ASSERT_EQUAL_FATAL(sampler_create(&smp, m, 1, NULL), 0);
            sample_request rq = {.prompt = pids, .prompt_len = plen, .params = sample_params_default()};
            rq.params.temperature = 0;
            rq.params.max_new_tokens = 12;
            rq.params.stop_ids = tok->eos_ids;
            rq.params.n_stop_ids = tok->n_eos_ids;
            sample_result res = {0};
            CU_ASSERT_EQUAL_FATAL(sampler_run(smp, tok, &rq, 1, &res, NULL), 0);
            CU_ASSERT_EQUAL_FATAL(res.n_tokens, n);
            json_t *tl = json_object_get(lpj, "token_logprobs"), *sl = json_object_get(lpj, "sampling_logprobs");
            CU_ASSERT_EQUAL_FATAL(json_array_size(tl), (size_t)n);
            CU_ASSERT_EQUAL(json_array_size(json_object_get(lpj, "tokens")), (size_t)n);
            for (int t = 0; t < n; t++) {
                ids[t] = res.tokens[t];
                lp[t] = (float)json_real_value(json_array_get(tl, t));
                lq[t] = (float)json_real_value(json_array_get(sl, t));
                CU_ASSERT(fabsf(lp[t] - res.logprobs[t]) < 1e-4f);
                CU_ASSERT_EQUAL(lq[t], 0.0f);
            }
            sample_result_free(&res);
            sampler_destroy(&smp);
        }
        int T = plen + n;
        int32_t *seq = malloc((size_t)T * sizeof *seq);
        float *lg = malloc((size_t)T * V * sizeof(float));
        memcpy(seq, pids, (size_t)plen * sizeof *seq);
        memcpy(seq + plen, ids, (size_t)n * sizeof *seq);
        CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, seq, T, lg, NULL), 0);
        for (int t = 0; t < n; t++) {
            double rp, rq;
            ref_logprobs(lg + (size_t)(plen - 1 + t) * V, V, ids[t], 2.0, 5, 0.05, &rp, &rq);
            CU_ASSERT(fabs(lp[t] - rp) < 1e-4);
            if (variant == 0) CU_ASSERT(fabs(lq[t] - rq) < 1e-4);
            if (variant == 0) { /* top_logprobs: the 3 most probable tokens of the reference row, in order */
                const float *row = lg + (size_t)(plen - 1 + t) * V;
                int best[3] = {-1, -1, -1};
                for (int k = 0; k < 3; k++)
                    for (int v = 0; v < V; v++) {
                        int used = 0;
                        for (int q = 0; q < k; q++) used |= best[q] == v;
                        if (!used && (best[k] < 0 || row[v] > row[best[k]])) best[k] = v;
                    }
                json_t *top = json_object_get(json_array_get(json_object_get(lpj, "content"), (size_t)t), "top_logprobs");
                CU_ASSERT_EQUAL(json_array_size(top), 3);
                for (int k = 0; k < 3 && k < (int)json_array_size(top); k++) {
                    double want, ignored;
                    ref_logprobs(row, V, best[k], 1.0, 0, 0, &want, &ignored);
                    json_t *e = json_array_get(top, (size_t)k), *tb = json_object_get(e, "bytes");
                    int id = json_array_size(tb) == 1 ? (int)json_integer_value(json_array_get(tb, 0)) : -1;
                    CU_ASSERT(fabs(json_real_value(json_object_get(e, "logprob")) - want) < 1e-4);
                    if (id >= 0) CU_ASSERT_EQUAL(id, best[k]);
                }
            }
            if (!(fabs(lp[t] - rp) < 1e-4) || (variant == 0 && !(fabs(lq[t] - rq) < 1e-4)))
                fprintf(stderr, "\n  variant %d token %d: %g %g vs reference %g %g\n", variant, t, lp[t], lq[t], rp, rq);
        }
        if (variant == 0) { /* a real spread: several tokens drawn with q well below 1 */
            int spread = 0;
            for (int t = 0; t < n; t++) spread += lq[t] < -0.1f;
            printf(" (%d of %d sampled tokens had q < 0.9) ", spread, n);
            CU_ASSERT(spread >= 2);
        }
        free(seq);
        free(lg);
        free(pids);
        json_decref(j);
    }
    const char *bad[][3] = {
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"logprobs\":true,\"stream\":true}",
         "not offered with stream"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"logprobs\":\"yes\"}",
         "logprobs must be true or false"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"logprobs\":true,\"top_logprobs\":21}",
         "Invalid 'top_logprobs'"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"top_logprobs\":2}",
         "needs logprobs: true"},
        {"/v1/completions", "{\"prompt\":\"a\",\"logprobs\":2}", "logprobs must be 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *body = NULL;
        CU_ASSERT_EQUAL(peer_http(&srv, "POST", bad[i][0], bad[i][1], &body), 400);
        CU_ASSERT_PTR_NOT_NULL(body && strstr(body, bad[i][2]));
        if (!body || !strstr(body, bad[i][2])) fprintf(stderr, "\n  case %zu: %s\n", i, body ? body : "(none)");
        free(body);
    }
    peer_stop(&srv);
    tokenizer_destroy(&tok);
    model_destroy(&m);
}

/* The reference token chooser: greedy is argmax; top-k / top-p keep only the allowed ids, and the
 * frequencies follow the renormalised softmax. */
static void test_choose_token(void) {
    float logits[6] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, 1.9f};
    float scratch[12];
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 3);
    sample_params p = sample_params_default();
    p.temperature = 0;
    CU_ASSERT_EQUAL(serve_choose_token(logits, 6, &p, &rng, scratch, NULL, NULL), 0);
    p.temperature = 1;
    p.top_k = 2; /* ids 0 and 5 */
    int counts[6] = {0};
    enum { N = 20000 };
    for (int i = 0; i < N; i++) counts[serve_choose_token(logits, 6, &p, &rng, scratch, NULL, NULL)]++;
    CU_ASSERT_EQUAL(counts[0] + counts[5], N);
    double p0 = 1.0 / (1.0 + exp(1.9 - 2.0));
    CU_ASSERT_DOUBLE_EQUAL((double)counts[0] / N, p0, 0.02);
    /* top_p = 0.5: the nucleus is {0, 5} (0 alone holds ~0.29 of the mass) */
    p.top_k = 0;
    p.top_p = 0.5f;
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < N; i++) counts[serve_choose_token(logits, 6, &p, &rng, scratch, NULL, NULL)]++;
    CU_ASSERT_EQUAL(counts[0] + counts[5], N);
    /* min_p = 0.5: ids within ln 2 of the best logit, {0, 5}, at their renormalised frequencies; with
     * temperature 2 the floor lets id 1 in too (its p / p_max = exp(-0.5) >= 0.5) */
    p.top_p = 1;
    p.min_p = 0.5f;
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < N; i++) counts[serve_choose_token(logits, 6, &p, &rng, scratch, NULL, NULL)]++;
    CU_ASSERT_EQUAL(counts[0] + counts[5], N);
    CU_ASSERT_DOUBLE_EQUAL((double)counts[0] / N, p0, 0.02);
    p.temperature = 2;
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < N; i++) counts[serve_choose_token(logits, 6, &p, &rng, scratch, NULL, NULL)]++;
    CU_ASSERT_EQUAL(counts[0] + counts[5] + counts[1], N);
    CU_ASSERT(counts[1] > N / 5);
    p.temperature = 1;
    p.min_p = 0;
    /* plain temperature 1: every id appears, at its softmax frequency */
    p.top_p = 1;
    memset(counts, 0, sizeof counts);
    double z = 0;
    for (int v = 0; v < 6; v++) z += exp(logits[v]);
    for (int i = 0; i < N; i++) counts[serve_choose_token(logits, 6, &p, &rng, scratch, NULL, NULL)]++;
    for (int v = 0; v < 6; v++) CU_ASSERT_DOUBLE_EQUAL((double)counts[v] / N, exp(logits[v]) / z, 0.015);
}

/* A full queue answers 503 with Retry-After; a judge client without retries reports those as http_5xx
 * errors, one with retries waits them out and gets every answer. */
static void test_serve_queue_bound(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--model", g_judge_model, "--max-queue", "1"), 0);
    for (int with_retries = 0; with_retries < 2; with_retries++) {
        judge_config cfg;
        judge_config_default(&cfg);
        snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
        snprintf(cfg.model, sizeof cfg.model, "judge-model");
        free(cfg.template_text);
        cfg.template_text = strdup(judge_template);
        cfg.response_format = JUDGE_RF_NONE;
        cfg.max_tokens = 16;
        cfg.concurrency = 24;
        cfg.retries = with_retries ? 20 : 0;
        cfg.breaker_failures = 1000;
        judge_client *jc = NULL;
        CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "queue", NULL, NULL), 0);
        judge_config_free(&cfg);
        enum { N = 24 };
        judge_item it[N];
        char comp[N][32];
        memset(it, 0, sizeof it);
        for (int i = 0; i < N; i++) {
            snprintf(comp[i], sizeof comp[i], "q%d answer %d", with_retries, i);
            it[i].prompt = "grade";
            it[i].completion = comp[i];
        }
        CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
        int ok = 0, busy = 0;
        for (int i = 0; i < N; i++) {
            if (it[i].ok) ok += it[i].raw_score == 7;
            else if (it[i].reason == JUDGE_ERR_HTTP_5XX && strstr(it[i].detail, "HTTP 503")) busy++;
        }
        if (!with_retries) {
            CU_ASSERT(busy > 0);      /* 24 at once against a queue of 1 */
            CU_ASSERT_EQUAL(ok + busy, N);
        } else {
            CU_ASSERT_EQUAL(ok, N);   /* Retry-After honoured until each got through */
            CU_ASSERT(judge_client_stats(jc)->retries > 0);
        }
        judge_client_destroy(&jc);
    }
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "GET", "/health", NULL, &body), 200);
    free(body);
    peer_stop(&srv);
}

/* ------------------------------------------------------------------------------ reward models */

static char g_rm_path[256], g_prefs[256];

static void test_rm_training_accuracy(void) {
    char base[256], arch[256];
    snprintf(base, sizeof base, "%s/rm-base.safetensors", g_dir);
    snprintf(arch, sizeof arch, "%s/arch.json", g_dir);
    snprintf(g_prefs, sizeof g_prefs, "%s/prefs.jsonl", g_dir);
    snprintf(g_rm_path, sizeof g_rm_path, "%s/rm.safetensors", g_dir);
    model_config cfg = {.dim = 32, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 64, .vocab_size = 259,
                        .max_seq_len = 64, .rope_theta = 10000, .norm_eps = 1e-5f};
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &cfg, NULL), 0);
    model_init_random(m, 3);
    CU_ASSERT_EQUAL_FATAL(model_save(m, base, NULL), 0);
    model_destroy(&m);
    CU_ASSERT_EQUAL_FATAL(prompt_capitals_write(g_prefs, 600, 9, NULL), 0);
    /* the generator's promise: every chosen is mostly capitals, every rejected is not */
    rm_pair *pr = NULL;
    int np = 0;
    CU_ASSERT_EQUAL_FATAL(rm_pairs_load(g_prefs, &pr, &np, NULL), 0);
    CU_ASSERT_EQUAL(np, 600);
    for (int i = 0; i < np; i++) {
        CU_ASSERT(prompt_capitals_truth(pr[i].chosen) > 0.5);
        CU_ASSERT(prompt_capitals_truth(pr[i].rejected) < 0.5);
    }
    /* through the CLI, as a user would */
    char bin[4096], cmd[8192];
    peer_bin_path("rlhf", bin, sizeof bin);
    snprintf(cmd, sizeof cmd,
             "'%s' train-rm --model '%s' --data '%s' --out '%s' --steps 40 --batch-pairs 8 --lr 3e-3 --seed 2 "
             "--log-every 0 > '%s/train.json'",
             bin, base, g_prefs, g_rm_path, g_dir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    char jpath[300];
    snprintf(jpath, sizeof jpath, "%s/train.json", g_dir);
    json_t *rep = json_load_file(jpath, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rep);
    double acc = json_number_value(json_object_get(rep, "heldout_accuracy"));
    double acc0 = json_number_value(json_object_get(rep, "initial_heldout_accuracy"));
    fprintf(stderr, "\n  RM held-out pairwise accuracy %.3f (before training %.3f, %lld held-out pairs)\n", acc, acc0,
            (long long)json_integer_value(json_object_get(rep, "n_heldout")));
    CU_ASSERT(acc >= 0.9); /* chance is 0.5 */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rep, "n_heldout")), 120);
    json_decref(rep);
    /* The trained RM prefers capitals on fresh text, independent of the pairs it saw. */
    reward_model *rm = NULL;
    CU_ASSERT_EQUAL_FATAL(reward_model_load(&rm, g_rm_path, 8, NULL), 0);
    const char *t[2] = {"Answer in capitals: describe the sea.\nBLUE DEEP COLD.",
                        "Answer in capitals: describe the sea.\nblue deep cold."};
    double r[2];
    CU_ASSERT_EQUAL(reward_model_score(rm, t, 2, r, NULL), 0);
    CU_ASSERT(r[0] > r[1]);
    /* batching (padding) does not change a reward */
    double one;
    CU_ASSERT_EQUAL(reward_model_score_one(rm, t[1], &one, NULL), 0);
    CU_ASSERT_DOUBLE_EQUAL(one, r[1], 1e-4 * (1 + fabs(one)));
    reward_model_destroy(&rm);
    rm_pairs_free(pr, np);
    /* A plain model checkpoint is not a reward model. */
    rlhf_error err = {0};
    CU_ASSERT_NOT_EQUAL(reward_model_load(&rm, base, 8, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "rm-base.safetensors"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "score.weight"));
}

static void test_rm_inprocess_vs_remote(void) {
    CU_ASSERT_FATAL(access(g_rm_path, R_OK) == 0);
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_serve(&srv, "--reward-model", g_rm_path, "--max-batch", "8"), 0);
    /* an empty batch is an empty answer, not an error */
    char *empty = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "POST", "/get_reward", "{\"query\":[]}", &empty), 200);
    CU_ASSERT_PTR_NOT_NULL(empty && strstr(empty, "{\"rewards\":[]}") ? empty : NULL);
    free(empty);
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "[{\"type\":\"rm\",\"name\":\"rm_local\",\"path\":\"%s\",\"batch_size\":8},"
             " {\"type\":\"remote_rm\",\"name\":\"rm_remote\",\"url\":\"%s\",\"batch_size\":8}]",
             g_rm_path, srv.base_url);
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, cfg, "test", &err);
    if (rc) fprintf(stderr, "%s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    rm_pair *pr = NULL;
    int np = 0;
    CU_ASSERT_EQUAL_FATAL(rm_pairs_load(g_prefs, &pr, &np, NULL), 0);
    enum { N = 20 };
    rlhf_reward_item items[N];
    memset(items, 0, sizeof items);
    for (int i = 0; i < N; i++) {
        items[i].prompt = pr[i].prompt;
        items[i].completion = i % 2 ? pr[i].chosen : pr[i].rejected;
        items[i].record_json = "{}";
        items[i].group_id = -1;
    }
    reward_scores sc = {0};
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_score(p, items, N, &sc, &err), 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(sc.status[i * 2].code, RLHF_REWARD_OK);
        CU_ASSERT_EQUAL(sc.status[i * 2 + 1].code, RLHF_REWARD_OK);
        double a = sc.raw[i * 2], b = sc.raw[i * 2 + 1];
        CU_ASSERT_DOUBLE_EQUAL(a, b, 1e-5 * (1 + fabs(a)));
    }
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    peer_stop(&srv);

    /* The remote source against nothing: every item an ERROR naming the failure, never a 0 reward. */
    snprintf(cfg, sizeof cfg, "[{\"type\":\"remote_rm\",\"url\":\"http://127.0.0.1:%d\",\"retries\":1}]",
             peer_closed_port());
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, cfg, "test", &err), 0);
    memset(&sc, 0, sizeof sc);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(sc.status[i].code, RLHF_REWARD_ERROR);
        CU_ASSERT_EQUAL(strncmp(sc.status[i].reason, "connect", 7), 0);
    }
    CU_ASSERT_EQUAL(reward_pipeline_source_errors_total(p, 0), 3);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    rm_pairs_free(pr, np);
    /* A bad URL is a config error naming the key. */
    CU_ASSERT_NOT_EQUAL(reward_pipeline_create_str(&p, "[{\"type\":\"remote_rm\",\"url\":\"nonsense\"}]", "c.json: rewards",
                                                   &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "c.json: rewards[0].url"));
}

/* The ground-truth source of the synthetic task scores the share of upper-case letters. */
static void test_capitals_source(void) {
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, "[{\"type\":\"capitals\",\"weight\":0}]", "t", &err), 0);
    rlhf_reward_item items[3] = {
        {.prompt = "p", .completion = "BLUE sky", .record_json = "{}", .group_id = -1},
        {.prompt = "p", .completion = "QUIET.", .record_json = "{}", .group_id = -1},
        {.prompt = "p", .completion = "123 ...", .record_json = "{}", .group_id = -1},
    };
    reward_scores sc = {0};
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 4.0 / 7.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[2], 0.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[1], 0.0, 1e-12); /* weight 0: logged, not optimised */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    CU_ASSERT_EQUAL_FATAL(
        reward_pipeline_create_str(&p, "[{\"type\":\"capitals\",\"measure\":\"words\",\"weight\":0}]", "t", &err), 0);
    rlhf_reward_item w[2] = {
        {.prompt = "p", .completion = "BLUE Quick sky.", .record_json = "{}", .group_id = -1}, /* sky: not a task word */
        {.prompt = "p", .completion = "WEWEWEWE", .record_json = "{}", .group_id = -1},
    };
    CU_ASSERT_EQUAL_FATAL(reward_pipeline_score(p, w, 2, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 2.0 / 3.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 0.0, 1e-12);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    CU_ASSERT_NOT_EQUAL(reward_pipeline_create_str(&p, "[{\"type\":\"capitals\",\"measure\":\"x\"}]", "t", &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "t[0].measure"));
    CU_ASSERT_NOT_EQUAL(reward_pipeline_create_str(&p, "[{\"type\":\"capitals\",\"x\":1}]", "t", &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "t[0].x"));
}

static void test_bad_preference_files(void) {
    struct {
        const char *content;
        const char *where_suffix;
        const char *msg_part;
    } cases[] = {
        {"{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"p\",\"rejected\":\"b\"}\n", ":2",
         "missing \"chosen\""},
        {"\n{\"prompt\":\"p\",\"chosen\":\"\",\"rejected\":\"b\"}\n", ":2", "\"chosen\" is empty"},
        {"{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":7}\n", ":1", "\"rejected\" is not a string"},
        {"{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{oops\n", ":2", "not JSON"},
        {"", "prefs-bad.jsonl", "no preference pairs"},
    };
    char path[256];
    snprintf(path, sizeof path, "%s/prefs-bad.jsonl", g_dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CU_ASSERT_EQUAL_FATAL(rlhf_write_file_atomic(path, cases[i].content, strlen(cases[i].content), NULL), 0);
        rm_pair *pr = NULL;
        int np = 0;
        rlhf_error err = {0};
        CU_ASSERT_NOT_EQUAL(rm_pairs_load(path, &pr, &np, &err), 0);
        size_t wl = strlen(err.where), sl = strlen(cases[i].where_suffix);
        CU_ASSERT(wl >= sl && !strcmp(err.where + wl - sl, cases[i].where_suffix));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, cases[i].msg_part));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "prefs-bad.jsonl"));
    }
    /* through the CLI: one line on stderr naming file and line, exit 1 */
    const char *bad = "{\"prompt\":\"p\",\"chosen\":\"a\"}\n";
    rlhf_write_file_atomic(path, bad, strlen(bad), NULL);
    char bin[4096], cmd[8192], errp[300];
    peer_bin_path("rlhf", bin, sizeof bin);
    snprintf(errp, sizeof errp, "%s/err.txt", g_dir);
    snprintf(cmd, sizeof cmd, "'%s' train-rm --model '%s' --data '%s' --out '%s/x.safetensors' 2> '%s'", bin,
             g_judge_model, path, g_dir, errp);
    int st = system(cmd);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    char *msg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL(rlhf_read_file(errp, &msg, &len, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(msg && strstr(msg, "prefs-bad.jsonl:1: missing \"rejected\""));
    free(msg);
}

void serve_register_slow_clients(void); /* tests/serve/test_slow_clients.c */
void serve_register_spec(void);         /* tests/serve/test_serve_spec.c */
void serve_add_openai_sdk_tests(CU_pSuite s); /* tests/serve/test_openai_sdk.c */
const char *serve_test_judge_model(void);
const char *serve_test_judge_model(void) { return g_judge_model; }

int register_suites(void) {
    signal(SIGPIPE, SIG_IGN);
    serve_register_slow_clients();
    serve_register_spec();
    CU_pSuite s = CU_add_suite("serve", suite_init, suite_clean);
    CU_add_test(s, "judge_against_rlhf_serve", test_judge_against_serve);
    CU_add_test(s, "completions_and_stream", test_serve_completions_and_stream);
    CU_add_test(s, "chat_template", test_serve_chat_template);
    CU_add_test(s, "guided_response_format", test_serve_guided);
    CU_add_test(s, "rejects_bad_requests", test_serve_rejects_bad_requests);
    CU_add_test(s, "queue_bound", test_serve_queue_bound);
    CU_add_test(s, "greedy_matches_sampler_run", test_serve_matches_sampler_run);
    CU_add_test(s, "choose_token", test_choose_token);
    CU_add_test(s, "logprobs", test_serve_logprobs);
    CU_add_test(s, "rm_training_accuracy", test_rm_training_accuracy);
    CU_add_test(s, "rm_inprocess_vs_remote", test_rm_inprocess_vs_remote);
    CU_add_test(s, "capitals_ground_truth", test_capitals_source);
    CU_add_test(s, "bad_preference_files", test_bad_preference_files);
    serve_add_openai_sdk_tests(s);
    return 0;
}
