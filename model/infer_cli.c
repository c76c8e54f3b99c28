/* model/infer_cli.c — `rlhf init` (a fresh checkpoint from an architecture JSON) and `rlhf sample`
 * (JSONL completions from a checkpoint). */
#include "model/model.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---------------------------------------------------------------- rlhf init */

static const char init_usage[] =
    "usage: rlhf init --arch ARCH.json --out M.safetensors [--seed S]\n"
    "  ARCH.json keys: dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, max_seq_len,\n"
    "  rope_theta, norm_eps, tie_embeddings, head_dim, attn_bias, qk_norm, rope_scaling (docs/MODEL.md).\n"
    "  Weights: N(0, 0.02), output projections / sqrt(2L); biases 0, norms 1.\n";

int cmd_init(int argc, char **argv) {
    const char *prog = "rlhf init", *arch = NULL, *out = NULL;
    uint64_t seed = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--arch", RLHF_OPT_STR, &arch), RLHF_OPT("--out", RLHF_OPT_STR, &out),
                             RLHF_OPT("--seed", RLHF_OPT_U64, &seed), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, prog, init_usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (!arch || !out) {
        fprintf(stderr, "%s: error: --arch and --out are required\n%s", prog, init_usage);
        return 2;
    }
    rlhf_error err = {0};
    json_t *j = rlhf_json_load_file(arch, JSON_REJECT_DUPLICATES, &err);
    if (!j) {
        rlhf_error_print(prog, &err);
        return 1;
    }
    model_config cfg;
    model *m = NULL;
    int rc = model_config_parse(&cfg, j, arch, &err);
    json_decref(j);
    /* every command that reads a checkpoint uses the byte-level tokenizer: refuse a model none could use */
    if (!rc && cfg.vocab_size < TOKENIZER_BYTES_MIN_VOCAB)
        rc = rlhf_error_set(&err, RLHF_EINVAL, arch,
                            "vocab_size %d is below the byte-level tokenizer's %d (256 bytes + BOS, EOS, PAD)",
                            cfg.vocab_size, TOKENIZER_BYTES_MIN_VOCAB);
    if (!rc) rc = model_create(&m, &cfg, &err);
    if (!rc) {
        model_init_random(m, seed);
        rc = model_save(m, out, &err);
    }
    if (rc) {
        rlhf_error_print(prog, &err);
        model_destroy(&m);
        return 1;
    }
    fprintf(stderr, "%s: wrote %s (%zu parameters, seed %" PRIu64 ")\n", prog, out, m->n_params, seed);
    model_destroy(&m);
    return 0;
}

/* ---------------------------------------------------------------- rlhf sample */

static const char sample_usage[] =
    "usage: rlhf sample --model M (--prompt TEXT | --prompts FILE.jsonl) [options]\n"
    "  --model M          a checkpoint (.safetensors) or a Hugging Face model directory\n"
    "  --tokenizer T      \"bytes\" or a Hugging Face tokenizer directory (default: the model's own: an\n"
    "                     HF directory's tokenizer.json, the one a run checkpoint names, else byte-level)\n"
    "  --max-seq-len N    cap the model's context (an HF model's max_position_embeddings sizes buffers)\n"
    "  -n K               samples per prompt (default 1)\n"
    "  --temperature T    0 = greedy (default 1)\n"
    "  --top-p P          nucleus mass in (0, 1] (default 1 = off)\n"
    "  --top-k K          0 = off (default)\n"
    "  --min-p M          in [0, 1]: keep tokens with p >= M * max p (default 0 = off); the filters\n"
    "                     apply in the order top-k, top-p, min-p, after the temperature\n"
    "  --max-tokens N     new tokens per sample (default 64)\n"
    "  --seed S           sample j of prompt i uses its own stream derived from (S, i*K + j)\n"
    "  --stop STR         stop string (repeatable): the text is cut before it, the tokens end with the\n"
    "                     token that completed it\n"
    "  --include-stop     keep the matched stop string at the end of the text\n"
    "  --ngram-draft      speculative decoding, drafts from the other samples of the prompt (and itself)\n"
    "  --draft-model D    speculative decoding, drafts from the smaller model D (same tokenizer)\n"
    "  --gamma G          most draft tokens per verify step (default 4)\n"
    "  --no-adaptive      draft gamma tokens every step (default: per sample, from its acceptance)\n"
    "  --no-eos-stop      do not stop at the tokenizer's EOS ids (by default any of them ends a sample)\n"
    "  --batch B          sequences decoded together (default 64)\n"
    "  --threads N        OpenMP/OpenBLAS threads (default: OMP_NUM_THREADS or all cores)\n"
    "FILE.jsonl: one object per line with a string \"prompt\" (other keys such as \"id\" are echoed).\n"
    "Output, one JSON line per sample: prompt_index, sample_index, [id], text, tokens, logprobs\n"
    "(log pi at temperature 1, no filters), sampling_logprobs (log q, q the distribution sampled from:\n"
    "the behaviour log-prob an RL generator records), finish_reason, [stop], policy_version.\n";

typedef struct prompt_item {
    char *text;
    size_t len;
    json_t *id; /* echoed when present */
} prompt_item;

static void free_prompts(prompt_item *ps, int n) {
    for (int i = 0; i < n; i++) {
        free(ps[i].text);
        json_decref(ps[i].id);
    }
    free(ps);
}

/* Reads FILE.jsonl: each non-blank line an object with a string "prompt". */
static int read_prompts(const char *path, prompt_item **out, int *n_out, rlhf_error *err) {
    *out = NULL;
    *n_out = 0;
    FILE *f = fopen(path, "r");
    if (!f) return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) { /* it opens, and reads as "no prompts" */
        fclose(f);
        return rlhf_error_set(err, RLHF_EIO, path, "is a directory, not a file");
    }
    prompt_item *ps = NULL;
    int n = 0, cap = 0, lineno = 0, rc = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    char where[600];
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        size_t k = 0;
        while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\n' || line[k] == '\r')) k++;
        if (k == (size_t)len) continue;
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)len, 0, &jerr);
        if (!j) {
            rc = rlhf_error_set(err, RLHF_EINVAL, where, "invalid JSON: %s", jerr.text);
            break;
        }
        json_t *p = json_object_get(j, "prompt");
        if (!json_is_object(j) || !json_is_string(p)) {
            json_decref(j);
            rc = rlhf_error_set(err, RLHF_EINVAL, where, "expected an object with a string \"prompt\"");
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            prompt_item *np = realloc(ps, (size_t)cap * sizeof *ps);
            if (!np) {
                json_decref(j);
                rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
                break;
            }
            ps = np;
        }
        size_t pl = json_string_length(p);
        ps[n].text = malloc(pl + 1);
        if (!ps[n].text) {
            json_decref(j);
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            break;
        }
        memcpy(ps[n].text, json_string_value(p), pl + 1);
        ps[n].len = pl;
        ps[n].id = json_incref(json_object_get(j, "id"));
        n++;
        json_decref(j);
    }
    free(line);
    fclose(f);
    if (!rc && n == 0) rc = rlhf_error_set(err, RLHF_EINVAL, path, "no prompts in file");
    if (rc) {
        free_prompts(ps, n);
        return rc;
    }
    *out = ps;
    *n_out = n;
    return 0;
}

int cmd_sample(int argc, char **argv) {
    const char *prog = "rlhf sample", *model_path = NULL, *prompt = NULL, *prompts_path = NULL, *tok_spec = NULL;
    int max_seq_len = 0;
    int n_samples = 1, max_tokens = 64, top_k = 0, batch = 64, threads = 0;
    float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
    uint64_t seed = 0;
    int no_eos_stop = 0, include_stop = 0, ngram_draft = 0, gamma = 4, no_adaptive = 0;
    const char *draft_path = NULL;
    char **stops = calloc((size_t)argc + 1, sizeof *stops);
    rlhf_opt_strs stop = {stops, 0, argc};
    int status = 2;
    if (!stops) return 1;
    const rlhf_opt opts[] = {
        RLHF_OPT("--model", RLHF_OPT_STR, &model_path),
        RLHF_OPT("--tokenizer", RLHF_OPT_STR, &tok_spec),
        RLHF_OPT_RANGE("--max-seq-len", RLHF_OPT_INT, &max_seq_len, 2, 1 << 24),
        RLHF_OPT("--prompt", RLHF_OPT_STR, &prompt),
        RLHF_OPT("--prompts", RLHF_OPT_STR, &prompts_path),
        RLHF_OPT_RANGE("-n", RLHF_OPT_INT, &n_samples, 1, 1 << 20),
        RLHF_OPT_RANGE("--temperature", RLHF_OPT_FLOAT, &temperature, 0.0, 1e6),
        RLHF_OPT_RANGE("--top-p", RLHF_OPT_FLOAT, &top_p, 1e-9, 1.0),
        RLHF_OPT_RANGE("--top-k", RLHF_OPT_INT, &top_k, 0, INT_MAX),
        RLHF_OPT_RANGE("--min-p", RLHF_OPT_FLOAT, &min_p, 0.0, 1.0),
        RLHF_OPT_RANGE("--max-tokens", RLHF_OPT_INT, &max_tokens, 0, INT_MAX),
        RLHF_OPT("--seed", RLHF_OPT_U64, &seed),
        RLHF_OPT("--stop", RLHF_OPT_STRS, &stop),
        RLHF_OPT("--no-eos-stop", RLHF_OPT_FLAG, &no_eos_stop),
        RLHF_OPT("--include-stop", RLHF_OPT_FLAG, &include_stop),
        RLHF_OPT_RANGE("--batch", RLHF_OPT_INT, &batch, 1, 4096),
        RLHF_OPT_RANGE("--threads", RLHF_OPT_INT, &threads, 1, 1024),
        RLHF_OPT("--ngram-draft", RLHF_OPT_FLAG, &ngram_draft),
        RLHF_OPT("--draft-model", RLHF_OPT_STR, &draft_path),
        RLHF_OPT_RANGE("--gamma", RLHF_OPT_INT, &gamma, 1, 16),
        RLHF_OPT("--no-adaptive", RLHF_OPT_FLAG, &no_adaptive),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, prog, sample_usage, opts, NULL, 0, NULL);
    if (prc >= 0) {
        status = prc;
        goto done;
    }
    const int eos_stop = !no_eos_stop, n_stops = stop.n;
    for (int i = 0; i < n_stops; i++)
        if (!stops[i][0]) {
            fprintf(stderr, "%s: error: --stop: empty stop string\n", prog);
            goto done;
        }
    if (!model_path || (!prompt == !prompts_path)) {
        fprintf(stderr, "%s: error: --model and exactly one of --prompt / --prompts are required\n%s", prog,
                sample_usage);
        goto done;
    }
    if (ngram_draft && draft_path) {
        fprintf(stderr, "%s: error: --ngram-draft and --draft-model exclude each other\n", prog);
        goto done;
    }
    if (threads > 0) omp_set_num_threads(threads);
    status = 1;

    rlhf_error err = {0};
    model *m = NULL;
    tokenizer *tok = NULL;
    sampler *s = NULL, *ds = NULL;
    model *dm = NULL;
    sampler_spec *spec = NULL;
    prompt_item *ps = NULL;
    int n_prompts = 0;
    int32_t **ids = NULL;
    int *n_ids = NULL;
    sample_request *reqs = NULL;
    sample_result *res = NULL;
    int n_req = 0;
    if (prompts_path) {
        if (read_prompts(prompts_path, &ps, &n_prompts, &err)) goto fail;
    } else {
        ps = calloc(1, sizeof *ps);
        if (!ps || !(ps[0].text = strdup(prompt))) {
            RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
            goto fail;
        }
        ps[0].len = strlen(prompt);
        n_prompts = 1;
    }
    if (model_load_for_inference(&m, &tok, model_path, tok_spec, max_seq_len, &err)) goto fail;
    ids = calloc((size_t)n_prompts, sizeof *ids);
    n_ids = calloc((size_t)n_prompts, sizeof *n_ids);
    if ((size_t)n_prompts * (size_t)n_samples > (1u << 24)) {
        rlhf_error_set(&err, RLHF_EINVAL, prog, "%d prompts x %d samples is too many for one run", n_prompts,
                       n_samples);
        goto fail;
    }
    n_req = n_prompts * n_samples;
    reqs = calloc((size_t)n_req, sizeof *reqs);
    res = calloc((size_t)n_req, sizeof *res);
    if (!ids || !n_ids || !reqs || !res) {
        RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    for (int p = 0; p < n_prompts; p++) {
        if (tokenizer_encode(tok, ps[p].text, ps[p].len, 1, &ids[p], &n_ids[p], &err)) goto fail;
        if (n_ids[p] >= m->cfg.max_seq_len) {
            char where[600];
            if (prompts_path)
                snprintf(where, sizeof where, "%s: prompt %d", prompts_path, p);
            else
                snprintf(where, sizeof where, "--prompt");
            rlhf_error_set(&err, RLHF_EINVAL, where,
                           "prompt is %d tokens (with BOS) but the model's max_seq_len is %d: at most %d fit", n_ids[p],
                           m->cfg.max_seq_len, m->cfg.max_seq_len - 1);
            goto fail;
        }
        for (int k = 0; k < n_samples; k++) {
            sample_request *rq = &reqs[p * n_samples + k];
            rq->prompt = ids[p];
            rq->prompt_len = n_ids[p];
            rq->params = sample_params_default();
            rq->params.temperature = temperature;
            rq->params.top_p = top_p;
            rq->params.top_k = top_k;
            rq->params.min_p = min_p;
            rq->params.max_new_tokens = max_tokens;
            rq->params.seed = seed ^ ((uint64_t)(p * n_samples + k) * 0x9E3779B97F4A7C15ull);
            rq->params.stop_ids = eos_stop ? tok->eos_ids : NULL;
            rq->params.n_stop_ids = eos_stop ? tok->n_eos_ids : 0;
            rq->params.stop_strings = n_stops ? (const char *const *)stops : NULL;
            rq->params.n_stop_strings = n_stops;
            rq->params.include_stop = include_stop;
        }
    }
    if (batch > n_req) batch = n_req;
    if (sampler_create(&s, m, batch, &err)) goto fail;
    if (ngram_draft || draft_path) {
        sampler_spec_options so = sampler_spec_options_default();
        so.kind = ngram_draft ? SAMPLER_SPEC_NGRAM : SAMPLER_SPEC_DRAFT_MODEL;
        so.gamma = gamma;
        so.adaptive = !no_adaptive;
        if (draft_path) {
            model_load_options lo = {.max_seq_len = m->cfg.max_seq_len};
            if (model_load_with(&dm, draft_path, &lo, &err)) goto fail;
            if (sampler_create(&ds, dm, batch, &err)) goto fail;
            so.draft = ds;
        }
        if (sampler_spec_create(&spec, &so, &err)) goto fail;
    }
    struct timespec c0, c1; /* CPU time as well: on a shared machine wall time measures the neighbours too */
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    double t0 = rlhf_now();
    if (sampler_run_spec(s, spec, tok, reqs, n_req, res, &err)) goto fail;
    double dt = rlhf_now() - t0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    double cpu = (double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec);
    long total_tokens = 0;
    for (int r = 0; r < n_req; r++) {
        sample_result *o = &res[r];
        total_tokens += o->n_tokens;
        /* raw bytes -> valid UTF-8 (invalid bytes and NUL become U+FFFD): the JSON output is always valid */
        char *text = rlhf_utf8_sanitize(o->text ? o->text : "", o->text_len);
        json_t *toks = json_array(), *lps = json_array(), *slps = json_array();
        for (int t = 0; t < o->n_tokens; t++) {
            json_array_append_new(toks, json_integer(o->tokens[t]));
            json_array_append_new(lps, json_real(o->logprobs[t]));
            json_array_append_new(slps, json_real(o->sampling_logprobs[t]));
        }
        json_t *line = json_object();
        json_object_set_new(line, "prompt_index", json_integer(r / n_samples));
        json_object_set_new(line, "sample_index", json_integer(r % n_samples));
        if (ps[r / n_samples].id) json_object_set(line, "id", ps[r / n_samples].id);
        json_object_set_new(line, "text", text ? json_string(text) : json_null());
        json_object_set_new(line, "tokens", toks);
        json_object_set_new(line, "logprobs", lps);
        json_object_set_new(line, "sampling_logprobs", slps);
        json_object_set_new(line, "finish_reason", json_string(sample_finish_name(o->finish)));
        if (o->stop_string >= 0) { /* a stop string given as raw bytes need not be UTF-8 either */
            char *st = rlhf_utf8_sanitize(stops[o->stop_string], strlen(stops[o->stop_string]));
            json_object_set_new(line, "stop", st ? json_string(st) : json_null());
            free(st);
        }
        json_object_set_new(line, "policy_version", json_integer((json_int_t)m->version));
        char *js = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(9));
        json_decref(line);
        free(text);
        if (!js || printf("%s\n", js) < 0) {
            free(js);
            rlhf_error_set(&err, RLHF_EIO, "stdout", "write failed");
            goto fail;
        }
        free(js);
    }
    if (fflush(stdout)) {
        rlhf_error_set(&err, RLHF_EIO, "stdout", "write failed: %s", strerror(errno));
        goto fail;
    }
    fprintf(stderr, "%s: %d samples, %ld tokens in %.2f s (%.1f tokens/s, %d threads; %.2f CPU s, %.1f tokens per CPU s)\n",
            prog, n_req, total_tokens, dt, dt > 0 ? total_tokens / dt : 0.0, omp_get_max_threads(), cpu,
            cpu > 0 ? total_tokens / cpu : 0.0);
    if (spec) {
        sampler_spec_stats ss;
        sampler_spec_get_stats(spec, &ss);
        fprintf(stderr, "%s: speculative (%s): %llu of %llu draft tokens kept (acceptance %.3f), %.2f tokens per "
                "verify step, %llu verify steps, %llu plain tokens\n", prog, sampler_spec_kind_name(ngram_draft ?
                SAMPLER_SPEC_NGRAM : SAMPLER_SPEC_DRAFT_MODEL), (unsigned long long)ss.accepted,
                (unsigned long long)ss.drafted, ss.drafted ? (double)ss.accepted / (double)ss.drafted : 0.0,
                ss.verifies ? (double)ss.spec_tokens / (double)ss.verifies : 0.0, (unsigned long long)ss.verifies,
                (unsigned long long)ss.plain_tokens);
    }
    status = 0;
fail:
    if (status) rlhf_error_print(prog, &err);
    if (res)
        for (int r = 0; r < n_req; r++) sample_result_free(&res[r]);
    free(res);
    free(reqs);
    if (ids)
        for (int p = 0; p < n_prompts; p++) free(ids[p]);
    free(ids);
    free(n_ids);
    free_prompts(ps, n_prompts);
    sampler_spec_destroy(&spec);
    sampler_destroy(&ds);
    model_destroy(&dm);
    sampler_destroy(&s);
    tokenizer_destroy(&tok);
    model_destroy(&m);
done:
    free(stops);
    return status;
}
