/* serve/serve_cli.c — `rlhf serve`: parse options, start the server (serve/serve.h), print
 * "rlhf serve: listening on HOST:PORT" on stdout, run until SIGINT/SIGTERM. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve.h"

static const char usage[] =
    "usage: rlhf serve --model CKPT [--reward-model RM] [--port P] [--host 127.0.0.1] [--model-id NAME]\n"
    "                  [--max-batch 8] [--max-queue 64] [--max-body BYTES] [--max-tokens 128]\n"
    "                  [--max-connections 256] [--max-per-ip 32] [--request-timeout 10] [--tokenizer T]\n"
    "                  [--max-seq-len N] [--chat-template FILE.jinja] [--api-key-env NAME]\n"
    "                  [--draft-model D | --ngram-draft] [--gamma G] [--no-adaptive]\n"
    "  --model: a checkpoint (.safetensors) or a Hugging Face model directory; --tokenizer: \"bytes\" or a\n"
    "  Hugging Face tokenizer directory (default: the model's own); --max-seq-len caps the model's context.\n"
    "  Chat requests go through --chat-template, else the chat_template of the tokenizer's or the model's\n"
    "  tokenizer_config.json (docs/CHAT_TEMPLATES.md), else the plain \"<|role|>\\ncontent\\n\" layout.\n"
    "  OpenAI-compatible: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions;\n"
    "  with --reward-model also POST /get_reward {\"query\":[...]} -> {\"rewards\":[...]}.\n"
    "  --model may be left out when --reward-model is given. --port 0 picks a free port.\n"
    "  --api-key-env NAME: every request must carry Authorization: Bearer $NAME (required with a --host that\n"
    "  is not loopback).\n"
    "  Speculative decoding: --draft-model D (a smaller checkpoint or HF directory with the model's tokenizer)\n"
    "  or --ngram-draft (drafts from the other samples of the prompt, earlier completions of it and the\n"
    "  sequence itself) proposes up to --gamma (4) tokens that the model verifies in one step; without\n"
    "  --no-adaptive each sequence drafts by its acceptance rate and the measured step cost. Tokens are\n"
    "  distributed exactly as without it (greedy output identical); log-probs, stops and max_tokens are the\n"
    "  same. Requests with a response_format (guided decoding) decode without drafts. GET /health reports\n"
    "  the acceptance counters.\n";

int cmd_serve(int argc, char **argv) {
    serve_config cfg;
    serve_config_default(&cfg);
    const char *model = NULL, *rm = NULL, *model_id = NULL, *host = NULL, *tok_spec = NULL;
    const char *chat_template = NULL, *api_key_env = NULL, *draft_model = NULL;
    int no_adaptive = 0;
    int max_body = (int)cfg.max_body;
    const rlhf_opt opts[] = {
        RLHF_OPT("--model", RLHF_OPT_STR, &model),
        RLHF_OPT("--tokenizer", RLHF_OPT_STR, &tok_spec),
        RLHF_OPT("--chat-template", RLHF_OPT_STR, &chat_template),
        RLHF_OPT("--api-key-env", RLHF_OPT_STR, &api_key_env),
        RLHF_OPT_RANGE("--max-seq-len", RLHF_OPT_INT, &cfg.max_seq_len, 2, 1 << 24),
        RLHF_OPT("--reward-model", RLHF_OPT_STR, &rm),
        RLHF_OPT("--model-id", RLHF_OPT_STR, &model_id),
        RLHF_OPT("--host", RLHF_OPT_STR, &host),
        RLHF_OPT_RANGE("--port", RLHF_OPT_INT, &cfg.port, 0, 65535),
        RLHF_OPT_RANGE("--max-batch", RLHF_OPT_INT, &cfg.max_batch, 1, 1024),
        RLHF_OPT_RANGE("--max-queue", RLHF_OPT_INT, &cfg.max_queue, 1, 1000000),
        RLHF_OPT_RANGE("--max-body", RLHF_OPT_INT, &max_body, 16, 1 << 30),
        RLHF_OPT_RANGE("--max-tokens", RLHF_OPT_INT, &cfg.max_tokens_default, 0, 1000000),
        RLHF_OPT_RANGE("--max-connections", RLHF_OPT_INT, &cfg.max_connections, 1, 100000),
        RLHF_OPT_RANGE("--max-per-ip", RLHF_OPT_INT, &cfg.max_per_ip, 1, 100000),
        RLHF_OPT_RANGE("--request-timeout", RLHF_OPT_INT, &cfg.request_timeout, 1, 86400),
        RLHF_OPT("--draft-model", RLHF_OPT_STR, &draft_model),
        RLHF_OPT("--ngram-draft", RLHF_OPT_FLAG, &cfg.ngram_draft),
        RLHF_OPT_RANGE("--gamma", RLHF_OPT_INT, &cfg.spec_gamma, 1, 16),
        RLHF_OPT("--no-adaptive", RLHF_OPT_FLAG, &no_adaptive),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, "rlhf serve", usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (draft_model && cfg.ngram_draft) {
        fprintf(stderr, "rlhf serve: error: --ngram-draft and --draft-model exclude each other\n");
        return 2;
    }
    if ((draft_model || cfg.ngram_draft) && !model) {
        fprintf(stderr, "rlhf serve: error: %s needs --model (the model whose decoding it speeds up)\n",
                draft_model ? "--draft-model" : "--ngram-draft");
        return 2;
    }
    if (draft_model) snprintf(cfg.draft_model, sizeof cfg.draft_model, "%s", draft_model);
    cfg.spec_adaptive = !no_adaptive;
    if (model) snprintf(cfg.model_path, sizeof cfg.model_path, "%s", model);
    if (rm) snprintf(cfg.rm_path, sizeof cfg.rm_path, "%s", rm);
    if (tok_spec) snprintf(cfg.tokenizer, sizeof cfg.tokenizer, "%s", tok_spec);
    if (chat_template) snprintf(cfg.chat_template, sizeof cfg.chat_template, "%s", chat_template);
    if (api_key_env) snprintf(cfg.api_key_env, sizeof cfg.api_key_env, "%s", api_key_env);
    if (model_id) snprintf(cfg.model_id, sizeof cfg.model_id, "%s", model_id);
    if (host) snprintf(cfg.host, sizeof cfg.host, "%s", host);
    cfg.max_body = (size_t)max_body;
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
        return rlhf_exit_status(&err); /* a bad option value is a usage error (2), a missing file 3 */
    }
    printf("rlhf serve: listening on %s:%d\n", cfg.host, serve_port(s));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "rlhf serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    serve_server_destroy(&s);
    return 0;
}
