/* tests/serve/test_serve_spec.c — speculative decoding in `rlhf serve` (--draft-model, --ngram-draft,
 * --gamma, --no-adaptive) over real HTTP against the same server without it: greedy completions (plain
 * and chat, streamed and not, n > 1, requests sharing steps) identical, with the same per-token log-probs
 * and top log-probs; a stop string and max_tokens cut at the same token; sampled tokens' log-probs against
 * the reference forward; the acceptance counters of /health (a draft that is the target keeps every
 * draft, a different small random model few); startup errors. Distribution exactness of the verification
 * is model/'s (tests/model_spec, chi-square), not repeated here. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model/model.h"
#include "tests/peer/peer.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char d_dir[64], d_target[256], d_other[256], d_badvocab[256];

static int save_random(const char *path, int dim, int layers, int vocab, uint64_t seed) {
    model_config c = {.dim = dim, .n_layers = layers, .n_heads = 2, .n_kv_heads = 1, .ffn_dim = 2 * dim,
                      .vocab_size = vocab, .max_seq_len = 96, .rope_theta = 10000, .norm_eps = 1e-5f};
    model *m = NULL;
    if (model_create(&m, &c, NULL)) return -1;
    model_init_random(m, seed);
    /* larger weights than the default init: peaked distributions, greedy choices far from ties, and the
     * repetitive text the n-gram drafter feeds on */
    for (size_t i = 0; i < m->n_params; i++) m->params_mem[i] *= 4.0f;
    int rc = model_save(m, path, NULL);
    model_destroy(&m);
    return rc ? -1 : 0;
}

static int spec_init(void) {
    if (!getenv("OMP_NUM_THREADS")) setenv("OMP_NUM_THREADS", "1", 1); /* for the rlhf serve children */
    snprintf(d_dir, sizeof d_dir, "/tmp/rlhf-serve-spec-XXXXXX");
    if (!mkdtemp(d_dir)) return -1;
    snprintf(d_target, sizeof d_target, "%s/target.safetensors", d_dir);
    snprintf(d_other, sizeof d_other, "%s/other.safetensors", d_dir);
    snprintf(d_badvocab, sizeof d_badvocab, "%s/badvocab.safetensors", d_dir);
    if (save_random(d_target, 32, 2, 259, 21) || save_random(d_other, 16, 1, 259, 7) ||
        save_random(d_badvocab, 16, 1, 300, 8))
        return -1;
    return 0;
}

static int spec_clean(void) {
    if (d_dir[0]) test_remove_tree(d_dir);
    return 0;
}

/* rlhf serve --model TARGET --max-batch 4 ARGS... (args NULL-terminated) */
static int start_with(peer *p, const char *const *args) {
    char bin[4096];
    peer_bin_path("rlhf", bin, sizeof bin);
    char *argv[24] = {bin, "serve", "--port", "0", "--model", d_target, "--max-batch", "4"};
    int k = 8;
    for (int i = 0; args && args[i] && k < 23; i++) argv[k++] = (char *)args[i];
    argv[k] = NULL;
    return peer_start(p, argv, 20.0);
}

/* POSTs req (consumed) and returns the parsed 200 response, else NULL. */
static json_t *post(const peer *p, const char *path, json_t *req) {
    char *body = json_dumps(req, JSON_COMPACT), *resp = NULL;
    json_decref(req);
    long st = peer_http(p, "POST", path, body, &resp);
    free(body);
    json_t *j = st == 200 && resp ? json_loads(resp, 0, NULL) : NULL;
    if (st != 200) fprintf(stderr, "\n  POST %s: %ld %s\n", path, st, resp ? resp : "");
    free(resp);
    return j;
}

/* A streamed request (consumed): the concatenated text of its deltas; NULL unless it ended with
 * [DONE]. `finish` gets the finish_reason of the last choice chunk. */
static char *post_stream(const peer *p, const char *path, json_t *req, int chat, char *finish, size_t fcap) {
    json_object_set_new(req, "stream", json_true());
    char *body = json_dumps(req, JSON_COMPACT), *resp = NULL;
    json_decref(req);
    long st = peer_http(p, "POST", path, body, &resp);
    free(body);
    if (st != 200 || !resp || !strstr(resp, "data: [DONE]")) {
        free(resp);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *acc = calloc(1, cap);
    for (char *l = strtok(resp, "\n"); l; l = strtok(NULL, "\n")) {
        if (strncmp(l, "data: {", 7) != 0) continue;
        json_t *ev = json_loads(l + 6, 0, NULL), *ch = json_array_get(json_object_get(ev, "choices"), 0);
        const char *piece = json_string_value(chat ? json_object_get(json_object_get(ch, "delta"), "content")
                                                   : json_object_get(ch, "text"));
        if (piece && n + strlen(piece) < cap) {
            memcpy(acc + n, piece, strlen(piece) + 1);
            n += strlen(piece);
        }
        const char *f = json_string_value(json_object_get(ch, "finish_reason"));
        if (f) snprintf(finish, fcap, "%s", f);
        json_decref(ev);
    }
    free(resp);
    return acc;
}

/* Same JSON up to numbers within tol (strings, keys, lengths, booleans exact); `at` names the first
 * difference on stderr. */
static int json_near(const json_t *a, const json_t *b, double tol, const char *at) {
    if (json_is_number(a) && json_is_number(b)) {
        double x = json_number_value(a), y = json_number_value(b);
        if (fabs(x - y) <= tol) return 1;
        fprintf(stderr, "\n  %s: %.9g vs %.9g\n", at, x, y);
        return 0;
    }
    if (json_typeof(a) != json_typeof(b)) {
        fprintf(stderr, "\n  %s: different types\n", at);
        return 0;
    }
    char sub[512];
    if (json_is_object(a)) {
        const char *k;
        json_t *v;
        if (json_object_size(a) != json_object_size(b)) {
            fprintf(stderr, "\n  %s: different keys\n", at);
            return 0;
        }
        json_object_foreach((json_t *)a, k, v) {
            snprintf(sub, sizeof sub, "%s.%s", at, k);
            if (!json_object_get(b, k) || !json_near(v, json_object_get(b, k), tol, sub)) return 0;
        }
        return 1;
    }
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) {
            fprintf(stderr, "\n  %s: %zu vs %zu items\n", at, json_array_size(a), json_array_size(b));
            return 0;
        }
        for (size_t i = 0; i < json_array_size(a); i++) {
            snprintf(sub, sizeof sub, "%s[%zu]", at, i);
            if (!json_near(json_array_get(a, i), json_array_get(b, i), tol, sub)) return 0;
        }
        return 1;
    }
    if (json_equal((json_t *)a, (json_t *)b)) return 1;
    if (json_is_string(a)) fprintf(stderr, "\n  %s: \"%s\" vs \"%s\"\n", at, json_string_value(a), json_string_value(b));
    else fprintf(stderr, "\n  %s: differ\n", at);
    return 0;
}

/* --------------------------------------------------------------------------- the requests */

enum { N_GREEDY = 8 };
static const char *const prompts[] = {"hello there", "1 2 3 4 5", "the quick brown fox jumps"};

/* Greedy request i (stop: the stop string for request 4, taken from the plain server's output). */
static json_t *greedy_request(int i, const char *stop, const char **path, int *chat) {
    *chat = 0;
    *path = "/v1/completions";
    switch (i) {
    case 0:
    case 1:
    case 2: return json_pack("{s:s, s:i, s:f, s:i}", "prompt", prompts[i], "max_tokens", 40, "temperature", 0.0,
                             "logprobs", 0);
    case 3: /* chat with log-probs and top log-probs */
        *chat = 1;
        *path = "/v1/chat/completions";
        return json_pack("{s:[{s:s, s:s}], s:i, s:f, s:b, s:i}", "messages", "role", "user", "content", "hi",
                         "max_tokens", 30, "temperature", 0.0, "logprobs", 1, "top_logprobs", 3);
    case 4: return json_pack("{s:s, s:i, s:f, s:i, s:s}", "prompt", prompts[0], "max_tokens", 40, "temperature", 0.0,
                             "logprobs", 0, "stop", stop);
    case 5: return json_pack("{s:s, s:i, s:f, s:i}", "prompt", prompts[1], "max_tokens", 7, "temperature", 0.0,
                             "logprobs", 0);
    case 6: /* n > 1: three greedy sequences of one prompt decoded together (the n-gram drafter shares) */
        return json_pack("{s:s, s:i, s:f, s:i}", "prompt", prompts[2], "max_tokens", 30, "temperature", 0.0, "n", 3);
    default: /* a prompt whose greedy output ends at max_seq_len */
        return json_pack("{s:s, s:i, s:f, s:i}", "prompt", "a prompt long enough to reach the context limit of 96 "
                         "tokens", "max_tokens", 80, "temperature", 0.0, "logprobs", 0);
    }
}

static const char *choice_text(json_t *resp, int chat, size_t k) {
    json_t *ch = json_array_get(json_object_get(resp, "choices"), k);
    return json_string_value(chat ? json_object_get(json_object_get(ch, "message"), "content") : json_object_get(ch, "text"));
}

/* The stop string for request 4: two printable characters from the middle of the plain greedy text of
 * prompt 0 (NULL when it has none). */
static int pick_stop(const char *text, char *stop) {
    size_t n = strlen(text);
    for (size_t i = n / 3; i + 1 < n; i++) {
        unsigned char a = (unsigned char)text[i], b = (unsigned char)text[i + 1];
        if (a >= 0x20 && a < 0x7f && b >= 0x20 && b < 0x7f) {
            stop[0] = (char)a, stop[1] = (char)b, stop[2] = 0;
            return 0;
        }
    }
    return -1;
}

typedef struct par_call {
    const peer *p;
    int i;
    json_t *resp;
} par_call;

static void *par_thread(void *arg) {
    par_call *c = arg;
    const char *path;
    int chat;
    c->resp = post(c->p, "/v1/completions", greedy_request(c->i, NULL, &path, &chat));
    return NULL;
}

/* Log pi of sampled chat tokens (and of their top log-probs) against the reference forward; log q
 * against log pi: equal at temperature 1 without filters, else q(y) >= pi(y) restricted to the kept set. */
static void check_sampled(const peer *p, int top_k) {
    json_t *resp = post(p, "/v1/chat/completions",
                        json_pack("{s:[{s:s, s:s}], s:i, s:f, s:i, s:i, s:b, s:i, s:i}", "messages", "role", "user",
                                  "content", "hi", "max_tokens", 24, "temperature", 1.0, "top_k", top_k, "seed", 5,
                                  "logprobs", 1, "top_logprobs", 2, "n", 2));
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m, d_target, NULL, NULL), 0);
    int V = m->cfg.vocab_size;
    const char *prompt = "<|user|>\nhi\n<|assistant|>\n"; /* the plain chat layout, bytes tokenizer, BOS first */
    int plen = 1 + (int)strlen(prompt), checked = 0;
    for (size_t k = 0; k < 2; k++) {
        json_t *content = json_object_get(json_object_get(json_array_get(json_object_get(resp, "choices"), k), "logprobs"),
                                          "content");
        int n = (int)json_array_size(content);
        CU_ASSERT_FATAL(n > 0 && n <= 24);
        int32_t seq[128];
        seq[0] = TOKENIZER_BYTES_BOS;
        for (int i = 0; i < plen - 1; i++) seq[1 + i] = (unsigned char)prompt[i];
        for (int t = 0; t < n; t++) {
            json_t *bytes = json_object_get(json_array_get(content, (size_t)t), "bytes");
            seq[plen + t] = json_array_size(bytes) == 1 ? (int32_t)json_integer_value(json_array_get(bytes, 0))
                                                        : TOKENIZER_BYTES_EOS;
        }
        float *lg = malloc((size_t)(plen + n) * V * sizeof(float));
        CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, seq, plen + n, lg, NULL), 0);
        for (int t = 0; t < n; t++) {
            const float *row = lg + (size_t)(plen - 1 + t) * V;
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, row[v]);
            for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
            json_t *e = json_array_get(content, (size_t)t);
            double lp = json_number_value(json_object_get(e, "logprob"));
            double lq = json_number_value(json_object_get(e, "sampling_logprob"));
            double want = row[seq[plen + t]] - mx - log(sum);
            CU_ASSERT(fabs(lp - want) < 1e-4);
            if (top_k == 0) {
                CU_ASSERT(fabs(lq - lp) < 1e-5);
            } else {
                CU_ASSERT(lq >= lp - 1e-5 && lq <= 1e-6);
            }
            json_t *top0 = json_array_get(json_object_get(e, "top_logprobs"), 0); /* the most probable token */
            int best = 0;
            for (int v = 1; v < V; v++) best = row[v] > row[best] ? v : best;
            CU_ASSERT(fabs(json_number_value(json_object_get(top0, "logprob")) - (row[best] - mx - log(sum))) < 1e-4);
            checked++;
        }
        free(lg);
    }
    printf(" (%d sampled tokens checked, top_k %d) ", checked, top_k);
    model_destroy(&m);
    json_decref(resp);
}

/* --------------------------------------------------------------------------- the test */

typedef struct spec_variant {
    const char *name;
    const char *args[8];
} spec_variant;

/* Every variant against the plain server: the greedy requests one after another and four at once (sharing
 * steps), streamed ones against the unstreamed text; sampled log-probs; the /health counters. */
static void test_serve_spec_matches_plain(void) {
    const spec_variant variants[] = {
        {"plain", {NULL}},
        {"ngram", {"--ngram-draft", NULL}},
        {"draft=target", {"--draft-model", d_target, NULL}},
        {"draft=other, no-adaptive, gamma 3", {"--draft-model", d_other, "--no-adaptive", "--gamma", "3", NULL}},
        {"ngram, no-adaptive, gamma 6", {"--ngram-draft", "--no-adaptive", "--gamma", "6", NULL}},
    };
    enum { NV = sizeof variants / sizeof variants[0] };
    json_t *ref[N_GREEDY] = {0};
    char stop[3] = "";
    for (int v = 0; v < NV; v++) {
        peer srv;
        CU_ASSERT_EQUAL_FATAL(start_with(&srv, variants[v].args), 0);
        for (int i = 0; i < N_GREEDY; i++) {
            const char *path;
            int chat;
            if (i == 4 && v == 0) CU_ASSERT_EQUAL_FATAL(pick_stop(choice_text(ref[0], 0, 0), stop), 0);
            json_t *req = greedy_request(i, stop, &path, &chat);
            json_t *resp = post(&srv, path, req);
            CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
            if (v == 0) { /* what the cases are meant to exercise, on the plain server */
                json_t *ch = json_array_get(json_object_get(resp, "choices"), 0);
                const char *fin = json_string_value(json_object_get(ch, "finish_reason"));
                json_int_t used = json_integer_value(json_object_get(json_object_get(resp, "usage"), "completion_tokens"));
                json_int_t plen = json_integer_value(json_object_get(json_object_get(resp, "usage"), "prompt_tokens"));
                if (i == 4) CU_ASSERT(!strcmp(fin, "stop") && used < 40 && !strstr(choice_text(resp, 0, 0), stop));
                if (i == 5) CU_ASSERT(!strcmp(fin, "length") && used == 7);
                if (i == 6) CU_ASSERT_STRING_EQUAL(choice_text(resp, 0, 2), choice_text(resp, 0, 0));
                if (i == 7) CU_ASSERT(!strcmp(fin, "length") && plen + used == 96); /* the model's max_seq_len */
                ref[i] = resp;
                continue;
            }
            char at[160];
            snprintf(at, sizeof at, "%s: request %d: choices", variants[v].name, i);
            CU_ASSERT(json_near(json_object_get(resp, "choices"), json_object_get(ref[i], "choices"), 1e-5, at));
            snprintf(at, sizeof at, "%s: request %d: usage", variants[v].name, i);
            CU_ASSERT(json_near(json_object_get(resp, "usage"), json_object_get(ref[i], "usage"), 0, at));
            json_decref(resp);
        }
        /* streamed: the deltas concatenate to the unstreamed text (the stop and chat requests too) */
        const int streamed[] = {0, 3, 4};
        for (int s = 0; s < 3; s++) {
            const char *path;
            int chat;
            json_t *req = greedy_request(streamed[s], stop, &path, &chat);
            json_object_del(req, "logprobs");
            json_object_del(req, "top_logprobs");
            char finish[16] = "";
            char *text = post_stream(&srv, path, req, chat, finish, sizeof finish);
            CU_ASSERT_PTR_NOT_NULL_FATAL(text);
            CU_ASSERT_STRING_EQUAL(text, choice_text(ref[streamed[s]], chat, 0));
            CU_ASSERT_STRING_EQUAL(finish, json_string_value(json_object_get(
                                               json_array_get(json_object_get(ref[streamed[s]], "choices"), 0),
                                               "finish_reason")));
            free(text);
        }
        /* four requests at once share the server's steps (max_batch 4) */
        par_call calls[4];
        pthread_t th[4];
        for (int c = 0; c < 4; c++) {
            calls[c] = (par_call){.p = &srv, .i = c == 3 ? 5 : c};
            pthread_create(&th[c], NULL, par_thread, &calls[c]);
        }
        for (int c = 0; c < 4; c++) {
            pthread_join(th[c], NULL);
            CU_ASSERT_PTR_NOT_NULL(calls[c].resp);
            char at[160];
            snprintf(at, sizeof at, "%s: concurrent request %d", variants[v].name, calls[c].i);
            if (calls[c].resp)
                CU_ASSERT(json_near(json_object_get(calls[c].resp, "choices"),
                                    json_object_get(ref[calls[c].i], "choices"), 1e-5, at));
            json_decref(calls[c].resp);
        }
        if (v > 0) {
            check_sampled(&srv, v == 1 ? 5 : 0);
            /* a response_format request decodes plainly beside the drafted ones */
            json_t *g = post(&srv, "/v1/completions",
                             json_pack("{s:s, s:i, s:{s:s}}", "prompt", "x", "max_tokens", 12, "response_format",
                                       "type", "json_object"));
            CU_ASSERT_PTR_NOT_NULL(g);
            if (g) CU_ASSERT_EQUAL(choice_text(g, 0, 0)[0], '{');
            json_decref(g);
        }
        /* the counters */
        char *body = NULL;
        CU_ASSERT_EQUAL(peer_http(&srv, "GET", "/health", NULL, &body), 200);
        json_t *h = json_loads(body, 0, NULL), *sp = json_object_get(h, "speculative");
        free(body);
        if (v == 0) CU_ASSERT_PTR_NULL(sp);
        if (v > 0) {
            CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
            json_int_t drafted = json_integer_value(json_object_get(sp, "drafted"));
            json_int_t accepted = json_integer_value(json_object_get(sp, "accepted"));
            json_int_t verifies = json_integer_value(json_object_get(sp, "verifies"));
            printf("\n  %s: %lld of %lld drafts kept, %lld verify steps", variants[v].name, (long long)accepted,
                   (long long)drafted, (long long)verifies);
            CU_ASSERT(drafted > 0 && verifies > 0);
            if (v != 3) CU_ASSERT(accepted > 0);
            if (v == 2) { /* the target drafting for itself: every draft is kept */
                CU_ASSERT_EQUAL(accepted, drafted);
                CU_ASSERT_EQUAL(json_real_value(json_object_get(sp, "acceptance")), 1.0);
            }
            if (v == 3) CU_ASSERT(accepted < drafted / 2); /* an unrelated small model: few */
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(sp, "drafter")), v == 1 || v == 4 ? "ngram" : "draft");
        }
        json_decref(h);
        peer_stop(&srv);
    }
    for (int i = 0; i < N_GREEDY; i++) json_decref(ref[i]);
}

/* Startup errors: a draft model with another vocabulary (one line naming it and both sizes), both
 * drafters, a --gamma out of range, a draft model that does not exist. */
static void test_serve_spec_errors(void) {
    char bin[4096], errf[300];
    peer_bin_path("rlhf", bin, sizeof bin);
    snprintf(errf, sizeof errf, "%s/serve-err.txt", d_dir);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing.safetensors", d_dir);
    struct {
        const char *args[6];
        int status; /* -1: any non-zero */
        const char *says[3];
    } cases[] = {
        {{"--draft-model", d_badvocab, NULL}, -1, {d_badvocab, "vocab_size 300", "259"}},
        {{"--draft-model", d_target, "--ngram-draft", NULL}, 2, {"exclude each other", NULL, NULL}},
        {{"--ngram-draft", "--gamma", "17", NULL}, 2, {"--gamma", NULL, NULL}},
        {{"--draft-model", missing, NULL}, -1, {missing, NULL, NULL}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *args[16] = {"serve", "--port", "0", "--model", d_target};
        int k = 5;
        for (int i = 0; cases[c].args[i]; i++) args[k++] = cases[c].args[i];
        args[k] = NULL;
        test_proc_opts o = {.err = errf, .out = "/dev/null", .die_with_parent = 1};
        int st = test_proc_run_args(bin, bin, args, &o, 30.0);
        if (cases[c].status >= 0) {
            CU_ASSERT_EQUAL(st, cases[c].status);
        } else {
            CU_ASSERT(st > 0 && st < 128);
        }
        FILE *f = fopen(errf, "r");
        char text[4096] = "";
        size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
        text[n] = 0;
        if (f) fclose(f);
        for (int i = 0; i < 3 && cases[c].says[i]; i++) {
            if (!strstr(text, cases[c].says[i])) fprintf(stderr, "\n  case %zu: wanted '%s' in: %s", c, cases[c].says[i], text);
            CU_ASSERT_PTR_NOT_NULL(strstr(text, cases[c].says[i]));
        }
        if (c == 0) { /* one line */
            char *nl = strchr(text, '\n');
            CU_ASSERT(nl && nl[1] == 0);
        }
    }
}

void serve_register_spec(void);
void serve_register_spec(void) {
    CU_pSuite s = CU_add_suite("serve_spec", spec_init, spec_clean);
    CU_add_test(s, "greedy_and_logprobs_match_plain", test_serve_spec_matches_plain);
    CU_add_test(s, "startup_errors", test_serve_spec_errors);
}
