/* bench/bench_serve.c — `rlhf serve` throughput: requests/s and generated tokens/s with 1, 8 and 32
 * concurrent clients (threads with their own libcurl handle, each sending POST /v1/completions back to back).
 * The peer is 1 client in the same run (ratio column). The server is a separate process started here on a
 * random-init model (or --model PATH), so the figures are HTTP + batching + sampling end to end.
 *
 *   bench_serve [--model CKPT] [--clients 1,8,32] [--per-client 8] [--max-tokens 32] [--max-batch 32] [--reps 3]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "bench/bench_util.h"
#include "common/common.h"
#include "model/model.h"
#include "tests/peer/peer.h"

typedef struct client_arg {
    const char *url;
    int n_requests, max_tokens, id;
    long tokens, ok;
} client_arg;

static void *client_main(void *arg) {
    client_arg *a = arg;
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char body[256];
    for (int i = 0; i < a->n_requests; i++) {
        snprintf(body, sizeof body,
                 "{\"model\":\"bench\",\"prompt\":\"client %d request %d: once upon a time\",\"max_tokens\":%d,"
                 "\"temperature\":1.0,\"seed\":%d}",
                 a->id, i, a->max_tokens, a->id * 100000 + i);
        peer_body b = {0};
        curl_easy_setopt(c, CURLOPT_URL, a->url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, peer_body_write);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
        long status = 0;
        if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200) {
            json_t *j = json_loads(b.p, 0, NULL);
            a->tokens += (long)json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
            a->ok++;
            json_decref(j);
        }
        free(b.p);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return NULL;
}

int main(int argc, char **argv) {
    const char *model_path = NULL;
    int clients[8] = {1, 8, 32}, n_clients = 3, per_client = 8, max_tokens = 32, reps = 3, max_batch = 32;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--per-client")) per_client = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-tokens")) max_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-batch")) max_batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--clients")) {
            n_clients = 0;
            for (char *s = strtok(argv[i + 1], ","); s && n_clients < 8; s = strtok(NULL, ",")) clients[n_clients++] = atoi(s);
        } else {
            fprintf(stderr, "usage: bench_serve [--model CKPT] [--clients 1,8,32] [--per-client 8] [--max-tokens 32] "
                            "[--max-batch 32] [--reps 3]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 20 || per_client < 1) return 2;
    char tmp_model[] = "/tmp/bench-serve-XXXXXX";
    char model_file[128] = "";
    rlhf_error err = {0};
    if (!model_path) {
        /* A small Llama-style model; weights random (throughput does not depend on them). */
        if (!mkdtemp(tmp_model)) return 1;
        snprintf(model_file, sizeof model_file, "%s/model.safetensors", tmp_model);
        model_config cfg = {.dim = 128, .n_layers = 4, .n_heads = 4, .n_kv_heads = 4, .ffn_dim = 384,
                            .vocab_size = 259, .max_seq_len = 256, .rope_theta = 10000, .norm_eps = 1e-5f};
        model *m = NULL;
        if (model_create(&m, &cfg, &err) || (model_init_random(m, 1), model_save(m, model_file, &err))) {
            rlhf_error_print("bench_serve", &err);
            return 1;
        }
        model_destroy(&m);
        model_path = model_file;
    }
    char bin[4096], mb[16];
    peer_bin_path("rlhf", bin, sizeof bin);
    snprintf(mb, sizeof mb, "%d", max_batch);
    char *sargv[] = {bin, "serve", "--port", "0", "--model", (char *)model_path, "--max-batch", mb, "--max-queue", "1024", "--model-id", "bench",
                     NULL};
    peer srv;
    if (peer_start(&srv, sargv, 30.0) != 0) {
        fprintf(stderr, "bench_serve: error: cannot start %s serve\n", bin);
        return 1;
    }
    char url[128];
    snprintf(url, sizeof url, "%s/v1/completions", srv.base_url);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    printf("rlhf serve --max-batch %d, model %s, %d requests per client of max_tokens %d, median of %d runs\n",
           max_batch, model_path == model_file ? "random dim=128 L=4 (bench-made)" : model_path, per_client, max_tokens,
           reps);
    printf("%8s %12s %12s %14s %10s\n", "clients", "requests/s", "tokens/s", "mean latency", "vs 1");
    double base = 0;
    for (int ci = 0; ci < n_clients; ci++) {
        int nc = clients[ci];
        double rq[20], tk[20], lat[20];
        for (int r = 0; r < reps; r++) {
            client_arg *args = calloc((size_t)nc, sizeof *args);
            pthread_t *th = calloc((size_t)nc, sizeof *th);
            int per = per_client;
            double t0 = rlhf_now();
            for (int i = 0; i < nc; i++) {
                args[i] = (client_arg){.url = url, .n_requests = per, .max_tokens = max_tokens, .id = i};
                pthread_create(&th[i], NULL, client_main, &args[i]);
            }
            long ok = 0, tokens = 0;
            for (int i = 0; i < nc; i++) {
                pthread_join(th[i], NULL);
                ok += args[i].ok;
                tokens += args[i].tokens;
            }
            double dt = rlhf_now() - t0;
            if (ok != (long)per * nc) fprintf(stderr, "bench_serve: warning: %ld of %d requests failed\n", (long)per * nc - ok, per * nc);
            rq[r] = ok / dt;
            tk[r] = tokens / dt;
            lat[r] = dt / per; /* each client's requests run back to back */
            free(args);
            free(th);
        }
        qsort(rq, (size_t)reps, sizeof rq[0], cmp_double);
        qsort(tk, (size_t)reps, sizeof tk[0], cmp_double);
        qsort(lat, (size_t)reps, sizeof lat[0], cmp_double);
        if (ci == 0) base = rq[reps / 2];
        printf("%8d %12.1f %12.1f %12.0f ms %9.2fx\n", nc, rq[reps / 2], tk[reps / 2], lat[reps / 2] * 1000,
               rq[reps / 2] / base);
    }
    peer_stop(&srv);
    if (model_file[0]) {
        unlink(model_file);
        rmdir(tmp_model);
    }
    curl_global_cleanup();
    return 0;
}
