/* serve/serve_cli.c — `rlhf serve`: parse options, start the server (serve/serve.h), print
 * "rlhf serve: listening on HOST:PORT" on stdout, run until SIGINT/SIGTERM. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: rlhf serve --model CKPT [--reward-model RM] [--port P] [--host 127.0.0.1] [--model-id NAME]\n"
            "                  [--max-batch 8] [--max-queue 64] [--max-body BYTES] [--max-tokens 128]\n"
            "                  [--max-connections 256]\n"
            "  OpenAI-compatible: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions;\n"
            "  with --reward-model also POST /get_reward {\"query\":[...]} -> {\"rewards\":[...]}.\n"
            "  --model may be left out when --reward-model is given. --port 0 picks a free port.\n");
}

static int parse_int(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < lo || x > hi) {
        fprintf(stderr, "rlhf serve: error: %s: expected an integer in %ld..%ld, got '%s'\n", opt, lo, hi, v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_serve(int argc, char **argv) {
    serve_config cfg;
    serve_config_default(&cfg);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "rlhf serve: error: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--model")) snprintf(cfg.model_path, sizeof cfg.model_path, "%s", v);
        else if (!strcmp(a, "--reward-model")) snprintf(cfg.rm_path, sizeof cfg.rm_path, "%s", v);
        else if (!strcmp(a, "--model-id")) snprintf(cfg.model_id, sizeof cfg.model_id, "%s", v);
        else if (!strcmp(a, "--host")) snprintf(cfg.host, sizeof cfg.host, "%s", v);
        else if (!strcmp(a, "--port")) {
            if (parse_int(a, v, 0, 65535, &x)) return 2;
            cfg.port = (int)x;
        } else if (!strcmp(a, "--max-batch")) {
            if (parse_int(a, v, 1, 1024, &x)) return 2;
            cfg.max_batch = (int)x;
        } else if (!strcmp(a, "--max-queue")) {
            if (parse_int(a, v, 1, 1000000, &x)) return 2;
            cfg.max_queue = (int)x;
        } else if (!strcmp(a, "--max-body")) {
            if (parse_int(a, v, 16, 1L << 30, &x)) return 2;
            cfg.max_body = (size_t)x;
        } else if (!strcmp(a, "--max-tokens")) {
            if (parse_int(a, v, 0, 1000000, &x)) return 2;
            cfg.max_tokens_default = (int)x;
        } else if (!strcmp(a, "--max-connections")) {
            if (parse_int(a, v, 1, 100000, &x)) return 2;
            cfg.max_connections = (int)x;
        } else {
            fprintf(stderr, "rlhf serve: error: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    /* Every thread started from here on (HTTP, worker, OpenMP) inherits the blocked set; main waits. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    serve_server *s = NULL;
    rlhf_error err = {0};
    if (serve_server_create(&s, &cfg, stderr, &err) != 0) {
        rlhf_error_print("rlhf serve", &err);
        return 1;
    }
    printf("rlhf serve: listening on %s:%d\n", cfg.host, serve_port(s));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "rlhf serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    serve_server_destroy(&s);
    return 0;
}
