/* tests/fuzz/fuzz_serve.c — request bodies of `rlhf serve` (serve/): the server runs in this process on a
 * loopback port with a tiny random checkpoint (byte-level tokenizer, 32-token context) and every input is
 * POSTed to it over HTTP with curl, as a client would.
 *
 * Input: one flag byte, then the body. flags & 3: the route (/v1/completions, /v1/chat/completions,
 * /get_reward, /v1/unknown). Properties (serve/serve.h): every request gets an HTTP answer (the server
 * neither dies nor drops the connection); an error status carries OpenAI's {"error": {...}} JSON; a
 * non-streamed success is a JSON object. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/model_infer.h"
#include "serve/serve.h"
#include "tests/fuzz/fuzz_util.h"

static serve_server *g_server;
static CURL *g_curl;
static struct curl_slist *g_headers;
static int g_port;

typedef struct {
    char *p;
    size_t n;
} body;

static size_t on_body(char *d, size_t s, size_t m, void *ud) {
    body *b = ud;
    size_t k = s * m;
    char *q = realloc(b->p, b->n + k + 1);
    if (!q) abort();
    b->p = q;
    memcpy(b->p + b->n, d, k);
    b->n += k;
    b->p[b->n] = 0;
    return k;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    model_config mc = {.dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 32, .vocab_size = 259,
                       .max_seq_len = 32, .rope_theta = 10000, .norm_eps = 1e-5f, .tie_embeddings = 1};
    model *m = NULL;
    rlhf_error err;
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", fuzz_tmpdir());
    if (model_create(&m, &mc, &err) || model_save(m, path, &err)) {
        fprintf(stderr, "fuzz_serve: %s: %s\n", err.where, err.msg);
        abort();
    }
    model_destroy(&m);
    serve_config cfg;
    serve_config_default(&cfg);
    snprintf(cfg.model_path, sizeof cfg.model_path, "%s", path);
    snprintf(cfg.tokenizer, sizeof cfg.tokenizer, "bytes");
    cfg.max_body = 1 << 16;
    cfg.max_tokens_default = 8;
    if (serve_server_create(&g_server, &cfg, NULL, &err)) {
        fprintf(stderr, "fuzz_serve: %s: %s\n", err.where, err.msg);
        abort();
    }
    g_port = serve_port(g_server);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_curl = curl_easy_init();
    g_headers = curl_slist_append(NULL, "Content-Type: application/json");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const char *const routes[4] = {"/v1/completions", "/v1/chat/completions", "/get_reward", "/v1/unknown"};
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g_port, routes[data[0] & 3]);
    body b = {0};
    curl_easy_reset(g_curl);
    curl_easy_setopt(g_curl, CURLOPT_URL, url);
    curl_easy_setopt(g_curl, CURLOPT_HTTPHEADER, g_headers);
    curl_easy_setopt(g_curl, CURLOPT_POSTFIELDS, (const char *)data + 1);
    curl_easy_setopt(g_curl, CURLOPT_POSTFIELDSIZE, (long)(size - 1));
    curl_easy_setopt(g_curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(g_curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(g_curl, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(g_curl, CURLOPT_NOSIGNAL, 1L);
    CURLcode res = curl_easy_perform(g_curl);
    long status = 0;
    curl_easy_getinfo(g_curl, CURLINFO_RESPONSE_CODE, &status);
    FUZZ_ASSERT(res == CURLE_OK && status > 0, "no HTTP answer: %s", curl_easy_strerror(res));
    char *ctype = NULL;
    curl_easy_getinfo(g_curl, CURLINFO_CONTENT_TYPE, &ctype);
    int sse = ctype && strstr(ctype, "text/event-stream");
    if (!sse) {
        json_t *j = b.p ? json_loadb(b.p, b.n, 0, NULL) : NULL;
        FUZZ_ASSERT(json_is_object(j), "HTTP %ld answer is not a JSON object: %.200s", status, b.p ? b.p : "");
        if (status >= 400)
            FUZZ_ASSERT(json_is_object(json_object_get(j, "error")), "HTTP %ld without an error object", status);
        json_decref(j);
    }
    free(b.p);
    return 0;
}
